"""Rendering: hard rasterization (``raster``) of meshes seen by OpenCV cameras."""
from .raster import Fragments, interpolate, rasterize

__all__ = ["Fragments", "interpolate", "rasterize"]
