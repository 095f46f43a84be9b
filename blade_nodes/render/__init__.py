"""Rendering: hard rasterization (``raster``) of meshes seen by OpenCV cameras."""
from .raster import Fragments, interpolate, rasterize, rasterize_face_ids

__all__ = ["Fragments", "interpolate", "rasterize", "rasterize_face_ids"]
