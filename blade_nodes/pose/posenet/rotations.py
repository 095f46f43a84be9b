"""Rotation conversions used by the PoseNet, matching the official AiOS numerics.

* :func:`rot6d_to_rotmat` is detrsmpl's ``rot6d_to_rotmat`` (column-pair 6-D layout; NOT
  PyTorch3D's ``rotation_6d_to_matrix``).
* :func:`rotmat_to_axis_angle` is detrsmpl's ``rotmat_to_aa``: PyTorch3D 0.7.4
  ``matrix_to_quaternion`` (best-conditioned candidate, no sign standardisation) followed by
  ``quaternion_to_axis_angle``. Angles are in radians.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rot6d_to_rotmat(x: Tensor) -> Tensor:
    """6-D rotation -> rotation matrix.

    Args:
        x: [..., 6]; reshaped to 3x2 row-major, so column a1 = (x0, x2, x4), a2 = (x1, x3, x5).
    Returns:
        [..., 3, 3] with columns b1 = normalize(a1), b2 = Gram-Schmidt(a2), b3 = b1 x b2.
    """
    shape = x.shape[:-1]
    m = x.reshape(-1, 3, 2)
    a1, a2 = m[:, :, 0], m[:, :, 1]
    b1 = F.normalize(a1, dim=1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=1)
    b3 = torch.cross(b1, b2, dim=1)
    return torch.stack((b1, b2, b3), dim=-1).reshape(*shape, 3, 3)


def _sqrt_positive_part(x: Tensor) -> Tensor:
    return torch.where(x > 0, torch.sqrt(torch.clamp(x, min=0)), torch.zeros_like(x))


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> quaternions [..., 4] (w, x, y, z), PyTorch3D 0.7.4 formula
    (the sign follows the best-conditioned candidate; w may be negative)."""
    batch = matrix.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(matrix.reshape(*batch, 9), dim=-1)
    q_abs = _sqrt_positive_part(torch.stack([
        1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22,
        1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], dim=-1))
    cand = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
    ], dim=-2)
    cand = cand / (2.0 * q_abs[..., None].clamp(min=0.1))
    best = q_abs.argmax(dim=-1)
    idx = best[..., None, None].expand(*batch, 1, 4)
    return torch.gather(cand, -2, idx).squeeze(-2)


def quaternion_to_axis_angle(q: Tensor) -> Tensor:
    """Quaternions [..., 4] (w, x, y, z) -> axis-angle [..., 3], radians (PyTorch3D 0.7.4)."""
    norms = torch.norm(q[..., 1:], p=2, dim=-1, keepdim=True)
    half = torch.atan2(norms, q[..., :1])
    angles = 2 * half
    small = angles.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(angles), angles)
    ratio = torch.where(small, 0.5 - angles * angles / 48, torch.sin(half) / safe)
    return q[..., 1:] / ratio


def rotmat_to_axis_angle(matrix: Tensor) -> Tensor:
    """[..., 3, 3] -> [..., 3] axis-angle (radians), detrsmpl ``rotmat_to_aa``."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))
