"""blade-nodes library: BLADE single-view SMPL-X body and perspective camera, in plain PyTorch.

Stages: ``depth`` (pelvis depth Tz), ``pose`` (SMPL-X parameters), ``camera`` (the one
camera convention and the silhouette solver), ``render`` (rasterizer and ControlNet maps),
``body`` (SMPL-X-format body models), ``io`` (files). Never imports ComfyUI.
"""
__version__ = "0.1.0"
