"""BLADE PoseNet (AiOS SMPL-X + Tz ControlNet), inference-only pure-PyTorch port.

Typical use::

    model = load_posenet("models/blade/epoch_2.pth")      # BLADE_POSENET
    res = predict_smplx(model, image, tz)                 # image [B,3,H,W] 0..1, tz [B] metres
    res.betas, res.global_orient, res.body_pose, res.left_hand_pose, ...
"""
from .checkpoint import PoseNetCheckpointError, load_posenet, load_state, remap
from .config import FULL, REDUCED, PoseNetConfig
from .model import PoseNet, PoseNetRaw
from .predict import PoseNetResult, predict_smplx, select_person, smplx_from_raw
from .preprocess import Letterbox, preprocess

__all__ = ["FULL", "REDUCED", "Letterbox", "PoseNet", "PoseNetCheckpointError", "PoseNetConfig",
           "PoseNetRaw", "PoseNetResult", "load_posenet", "load_state", "predict_smplx",
           "preprocess", "remap", "select_person", "smplx_from_raw"]
