"""blade-nodes library: BLADE single-view SMPL-X body and perspective camera, in plain PyTorch.

Stages: ``depth`` (pelvis depth Tz), ``pose`` (SMPL-X parameters), ``camera`` (the one
camera convention and the silhouette solver), ``render`` (rasterizer and ControlNet maps),
``body`` (SMPL-X-format body models), ``io`` (files). Never imports ComfyUI.
"""
__version__ = "0.1.0"

# numba's on-disk cache (``__pycache__`` beside the sources) records the module's import
# name. ComfyUI imports this package as ``custom_nodes.<folder>.blade_nodes``, tests and
# the demo as ``blade_nodes``; a cache written under one name breaks loading under the
# other. So kernels are cached only under the canonical name (ComfyUI compiles them once
# per session instead).
NUMBA_CACHE = __name__ == "blade_nodes"
