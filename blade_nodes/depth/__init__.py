"""Stage 1: pelvis depth Tz (BLADE DepthNet, metric depth, or typed in).

transformers is imported lazily (when a model is built), so importing this package is cheap.
"""
from .depthnet import (BladeDepthNet, CheckpointError, DepthNetConfig, MetricDepthNet, VITB, VITL,
                       VITS, load_depthnet, save_depthnet)
from .metric import MetricTzConfig
from .models import download_metric_model, find_depth_model, list_depth_models, load_depth_model
from .preprocess import CropConfig, prepare_crop
from .tz import METHODS, PelvisDepth, TzConfig, estimate_tz, manual_tz

__all__ = ["BladeDepthNet", "CheckpointError", "DepthNetConfig", "MetricDepthNet", "VITB", "VITL",
           "VITS", "load_depthnet", "save_depthnet", "MetricTzConfig", "download_metric_model",
           "find_depth_model", "list_depth_models", "load_depth_model", "CropConfig",
           "prepare_crop", "METHODS", "PelvisDepth", "TzConfig", "estimate_tz", "manual_tz"]
