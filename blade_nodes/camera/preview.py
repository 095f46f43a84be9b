"""Preview of a camera fit: the shaded body over the photo, the mask's outline on top."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .convention import Camera

OUTLINE = (1.0, 0.25, 0.1)


def fit_preview(image: Tensor, verts: Tensor, faces: Tensor, camera: Camera,
                mask: Tensor | None = None, opacity: float = 0.6) -> Tensor:
    """The body seen by its fitted camera, shaded over the image.

    Args:
        image: [B, 3, H, W] 0..1 (the camera's image size).
        verts: [B, V, 3] body-frame vertices (SMPL-X, transl = 0), metres.
        faces: [F, 3] int64.
        camera: B cameras (focal, principal in pixels of the image; translation metres).
        mask: [B, H, W] 0..1 or None; its outline (where it crosses 0.5) is drawn in orange.
        opacity: body opacity, 0..1.
    Returns:
        [B, 3, H, W] float 0..1.
    """
    from ..render import rasterize
    from ..render.maps import normal_image, overlay, shade

    b, _, h, w = image.shape
    verts_cam = verts.detach().float() + camera.translation.to(verts.device).float()[:, None]
    frags = rasterize(verts_cam, faces, camera.focal.float().to(verts.device),
                      camera.principal.float().to(verts.device), h, w, backend="cpu")
    shaded = shade(normal_image(verts_cam, faces, frags), frags.mask)
    out = overlay(shaded.cpu(), frags.mask.cpu(), image.detach().float().cpu(), opacity=opacity)
    if mask is not None:
        m = (mask.detach().float().cpu() > 0.5).float()[:, None]
        grown = F.max_pool2d(m, 3, 1, 1)
        edge = (grown - m) > 0  # [B, 1, H, W], the pixels just outside the mask
        col = torch.tensor(OUTLINE).view(1, 3, 1, 1)
        out = torch.where(edge, col.expand_as(out), out)
    return out
