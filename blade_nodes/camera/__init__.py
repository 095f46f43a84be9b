"""Cameras (the one convention, ``convention.py``) and the camera solver."""
from .convention import Camera, intrinsics, project_points, body_to_camera, default_focal, focal_from_fov

__all__ = ["Camera", "intrinsics", "project_points", "body_to_camera", "default_focal",
           "focal_from_fov"]
