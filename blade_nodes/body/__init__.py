"""Body models: SMPL-X-format files, parameters and keypoint maps."""
from .params import SMPLXParams, PARAM_NAMES, POSE_SIZES
from .keypoints import KeypointMap, keypoint_map, FORMATS
from .model import (BodyModel, BodyModelError, BodyOutput, load_body_model,
                    find_body_models, missing_model_message)

__all__ = ["SMPLXParams", "PARAM_NAMES", "POSE_SIZES", "KeypointMap", "keypoint_map", "FORMATS",
           "BodyModel", "BodyModelError", "BodyOutput", "load_body_model", "find_body_models",
           "missing_model_message"]
