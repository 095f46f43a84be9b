"""Joint-error metrics (blade_official.md §5): MPJPE and PA-MPJPE."""
from __future__ import annotations

import torch
from torch import Tensor


def procrustes_align(pred: Tensor, gt: Tensor) -> Tensor:
    """Similarity-align ``pred`` to ``gt`` (rotation, scale, translation; no reflection).

    Args:
        pred, gt: [N, J, 3] joints, metres.
    Returns:
        [N, J, 3] ``pred`` after the best similarity transform onto ``gt``.
    """
    mp, mg = pred.mean(1, keepdim=True), gt.mean(1, keepdim=True)
    p, q = pred - mp, gt - mg
    U, S, Vt = torch.linalg.svd(p.transpose(1, 2) @ q)
    d = torch.sign(torch.linalg.det(U @ Vt))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], 1))
    R = U @ D @ Vt
    s = (S * torch.diagonal(D, dim1=1, dim2=2)).sum(1) / (p ** 2).sum((1, 2))
    return s[:, None, None] * p @ R + mg


def joint_errors(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample MPJPE (both root-aligned on joint 0, the pelvis) and PA-MPJPE.

    Args:
        pred, gt: [N, J, 3] joints, metres.
    Returns:
        ([N] MPJPE, [N] PA-MPJPE), millimetres.
    """
    mpjpe = ((pred - pred[:, :1]) - (gt - gt[:, :1])).norm(dim=-1).mean(1) * 1000
    pa = (procrustes_align(pred, gt) - gt).norm(dim=-1).mean(1) * 1000
    return mpjpe, pa
