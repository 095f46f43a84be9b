"""The one camera convention of blade-nodes, written once.

Axes are OpenCV's: x right, y down, z forward (into the scene), metres.
A body is placed in camera space as ``X_cam = X_body + T`` where ``X_body`` is the
SMPL-X output with ``transl = 0`` (this is exactly what official BLADE outputs:
the global orientation already lives in the camera frame, so there is no extra R).

Intrinsics are pixels: ``u = f * X / Z + cx``, ``v = f * Y / Z + cy``. Pixel
``(row i, column j)`` covers the square ``[j, j+1) x [i, i+1)`` and its centre is
at ``(j + 0.5, i + 0.5)``. The default principal point is the image centre
``(W / 2, H / 2)``, which is the continuous centre of the image under this rule.
Image rows go top-down (row 0 is the top of the picture) in every module; any
backend that rasterises bottom-up flips once, inside ``render/``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Camera:
    """Per-image pinhole cameras of a batch (the ``BLADE_CAMERA`` socket).

    Attributes:
        focal: [B] focal length, pixels (square pixels: fx = fy).
        principal: [B, 2] principal point (cx, cy), pixels.
        translation: [B, 3] T = (Tx, Ty, Tz), metres; added to the body vertices.
        image_size: [B, 2] int64 (W, H), pixels.
    """

    focal: Tensor
    principal: Tensor
    translation: Tensor
    image_size: Tensor

    def __post_init__(self) -> None:
        b = self.focal.shape[0] if self.focal.ndim == 1 else -1
        shapes = {
            "focal": (tuple(self.focal.shape), (b,)),
            "principal": (tuple(self.principal.shape), (b, 2)),
            "translation": (tuple(self.translation.shape), (b, 3)),
            "image_size": (tuple(self.image_size.shape), (b, 2)),
        }
        for name, (got, want) in shapes.items():
            if b < 0 or got != want:
                raise ValueError(
                    f"Camera.{name}: expected shape {want if b >= 0 else '[B]'}, got {got}; "
                    "build cameras with Camera.create(...)")

    @staticmethod
    def create(focal, translation, image_size, principal=None,
               dtype: torch.dtype = torch.float32, device=None) -> "Camera":
        """Build a camera batch from numbers, lists or tensors.

        Args:
            focal: [B] or scalar, pixels.
            translation: [B, 3] or [3], metres.
            image_size: [B, 2] or [2] (W, H), pixels.
            principal: [B, 2] or [2] (cx, cy), pixels; None for the image centre.
        """
        t = torch.as_tensor(translation, dtype=dtype, device=device).reshape(-1, 3)
        b = t.shape[0]
        f = torch.as_tensor(focal, dtype=dtype, device=device).reshape(-1)
        if f.numel() == 1 and b > 1:
            f = f.expand(b).clone()
        size = torch.as_tensor(image_size, device=device).round().to(torch.int64).reshape(-1, 2)
        if size.shape[0] == 1 and b > 1:
            size = size.expand(b, 2).clone()
        if principal is None:
            pp = size.to(dtype) / 2
        else:
            pp = torch.as_tensor(principal, dtype=dtype, device=device).reshape(-1, 2)
            if pp.shape[0] == 1 and b > 1:
                pp = pp.expand(b, 2).clone()
        return Camera(f, pp, t, size)

    @property
    def batch_size(self) -> int:
        return int(self.focal.shape[0])

    def K(self) -> Tensor:
        """[B, 3, 3] intrinsic matrices, pixels."""
        return intrinsics(self.focal, self.principal)

    def index(self, i: int | slice | Tensor) -> "Camera":
        """The cameras of some frames, still batched ([1] for an int)."""
        if isinstance(i, int):
            i = slice(i, i + 1)
        return Camera(self.focal[i], self.principal[i], self.translation[i], self.image_size[i])

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Camera":
        fl = lambda x: x.to(device=device, dtype=dtype or x.dtype)
        return Camera(fl(self.focal), fl(self.principal), fl(self.translation),
                      self.image_size.to(device=device))

    def with_(self, **changes) -> "Camera":
        return replace(self, **changes)

    @staticmethod
    def cat(cams: list["Camera"]) -> "Camera":
        return Camera(torch.cat([c.focal for c in cams]), torch.cat([c.principal for c in cams]),
                      torch.cat([c.translation for c in cams]),
                      torch.cat([c.image_size for c in cams]))


def intrinsics(focal: Tensor, principal: Tensor) -> Tensor:
    """Intrinsic matrices.

    Args:
        focal: [B] pixels.
        principal: [B, 2] (cx, cy) pixels.
    Returns:
        [B, 3, 3] K = [[f, 0, cx], [0, f, cy], [0, 0, 1]].
    """
    b = focal.shape[0]
    K = torch.zeros(b, 3, 3, dtype=focal.dtype, device=focal.device)
    K[:, 0, 0] = focal
    K[:, 1, 1] = focal
    K[:, 0, 2] = principal[:, 0]
    K[:, 1, 2] = principal[:, 1]
    K[:, 2, 2] = 1
    return K


def project_points(points_cam: Tensor, focal: Tensor, principal: Tensor,
                   eps: float = 1e-8) -> Tensor:
    """Pinhole projection of camera-space points to pixel coordinates.

    Args:
        points_cam: [B, N, 3] camera-space points, metres (OpenCV axes).
        focal: [B] pixels.
        principal: [B, 2] (cx, cy) pixels.
    Returns:
        [B, N, 2] continuous pixel coordinates (u, v); the centre of pixel (i, j)
        is (j + 0.5, i + 0.5).

    Example:
        >>> p = torch.tensor([[[0.1, -0.2, 2.0]]])
        >>> project_points(p, torch.tensor([1000.]), torch.tensor([[320., 240.]]))
        tensor([[[370., 140.]]])
    """
    z = points_cam[..., 2:3].clamp_min(eps)
    return points_cam[..., :2] / z * focal[:, None, None] + principal[:, None, :]


def body_to_camera(vertices: Tensor, translation: Tensor) -> Tensor:
    """Place SMPL-X output (transl = 0) in camera space: ``X_cam = X + T``.

    Args:
        vertices: [B, N, 3] metres.
        translation: [B, 3] metres.
    Returns:
        [B, N, 3] camera-space points, metres.
    """
    return vertices + translation[:, None, :]


def default_focal(width: Tensor | float, height: Tensor | float, fov_deg: float = 60.0):
    """Focal length (pixels) giving a horizontal field of view ``fov_deg`` for the
    longer image side; the starting guess when nothing better is known."""
    import math
    side = torch.maximum(torch.as_tensor(width, dtype=torch.float32),
                         torch.as_tensor(height, dtype=torch.float32))
    return side / (2 * math.tan(math.radians(fov_deg) / 2))


def focal_from_fov(fov_deg: float, size_px: float) -> float:
    """Focal length in pixels for a field of view of ``fov_deg`` over ``size_px`` pixels."""
    import math
    return size_px / (2 * math.tan(math.radians(fov_deg) / 2))
