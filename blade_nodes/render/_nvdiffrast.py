"""CUDA back-end on nvdiffrast (private; call :func:`blade_nodes.render.rasterize`).

nvdiffrast conventions (from its documentation) and how we meet them:

- Input positions are clip space ``(x, y, z, w)``; NDC = xyz / w in [-1, 1];
  the pixel centre of column ``c`` is at ``x_ndc = 2 (c + 0.5) / W - 1`` and that
  of output row ``r`` at ``y_ndc = 2 (r + 0.5) / H - 1``, row 0 at ``y_ndc = -1``
  (OpenGL's "bottom-up" storage).
- Output ``rast[..., :4] = (u, v, z/w, triangle_id)``: ``triangle_id`` is the
  face index + 1 (0 = nothing), ``(u, v)`` are perspective-correct barycentrics
  with the point ``= u * p0 + v * p1 + (1 - u - v) * p2``.

:func:`opencv_to_clip` is the ONE place that converts our OpenCV camera. It
maps ``v`` to ``y_ndc = 2 v / H - 1`` so that nvdiffrast's row ``r`` is our
image row ``i = r`` (top-down): the row flip is done once, as a mirror inside
this projection, instead of ``torch.flip`` on every output. The mirror also
mirrors the winding, which nvdiffrast ignores (it draws both windings; we cull
ourselves), and its ``antialias`` op only compares windings of neighbouring
faces, which a mirror does not change.

Culling and the near rule are done per frame by collapsing dropped faces to a
point outside the viewport (a zero-area triangle is never drawn); this needs
per-frame geometry, so positions are un-indexed: ``[B, 3F, 4]`` with
``tri = arange(3F).view(F, 3)``, which keeps nvdiffrast's triangle id equal to
our face index.

Depth is recomputed from the barycentrics as ``sum_i b_i Z_i`` (exact for a
planar triangle under perspective-correct weights), so it does not inherit
the z-buffer's precision; ``z/w`` is only used for nvdiffrast's depth test,
with per-frame near/far planes fitted to the drawn vertices.
"""
from __future__ import annotations

import torch
from torch import Tensor

try:
    import nvdiffrast.torch as dr
except Exception:  # ImportError, or a broken build that fails on import
    dr = None

_CONTEXTS: dict[int, object] = {}


def available() -> bool:
    """True when nvdiffrast imports and a CUDA device exists."""
    return dr is not None and torch.cuda.is_available()


def _context(device: torch.device):
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _CONTEXTS:
        _CONTEXTS[idx] = dr.RasterizeCudaContext(device=torch.device("cuda", idx))
    return _CONTEXTS[idx]


def opencv_to_clip(points_cam: Tensor, focal: Tensor, principal: Tensor, height: int,
                   width: int, znear: Tensor, zfar: Tensor) -> Tensor:
    """OpenCV camera-space points to nvdiffrast clip space.

    ``w = Z``; ``x/w = 2 u / W - 1`` and ``y/w = 2 v / H - 1`` with
    ``(u, v) = (f X / Z + cx, f Y / Z + cy)``, so nvdiffrast's output row r is
    image row r, top-down; ``z/w`` maps ``Z = znear .. zfar`` to ``-1 .. 1``.

    Args:
        points_cam: [B, N, 3] metres, OpenCV axes.
        focal: [B] pixels. principal: [B, 2] (cx, cy) pixels.
        height, width: image size, pixels.
        znear, zfar: [B] metres, 0 < znear < zfar.
    Returns:
        [B, N, 4] clip-space positions (x, y, z, w).
    """
    x, y, z = points_cam.unbind(-1)
    f = focal[:, None]
    cx, cy = principal[:, 0:1], principal[:, 1:2]
    n, fa = znear[:, None], zfar[:, None]
    xc = (2 * f / width) * x + (2 * cx / width - 1) * z
    yc = (2 * f / height) * y + (2 * cy / height - 1) * z
    zc = (fa + n) / (fa - n) * z - 2 * fa * n / (fa - n)
    return torch.stack([xc, yc, zc, z], -1)


def raster(verts: Tensor, faces: Tensor, focal: Tensor, principal: Tensor, height: int,
           width: int, cull: bool, near: float) -> tuple[Tensor, Tensor, Tensor]:
    """(face_id [B,H,W] int64, depth [B,H,W], bary [B,H,W,3]) on the CUDA device."""
    out_dtype = torch.float64 if verts.dtype == torch.float64 else torch.float32
    v = verts.detach().to(torch.float32)
    b, nf = v.shape[0], faces.shape[0]
    tv = v[:, faces]  # [B, F, 3, 3] un-indexed corners
    z = tv[..., 2]
    keep = (z >= near).all(-1) & torch.isfinite(tv).all(-1).all(-1)
    if cull:
        # back-facing <=> dot((v1 - v0) x (v2 - v0), v0) > 0 (see raster.py)
        n = torch.cross(tv[:, :, 1] - tv[:, :, 0], tv[:, :, 2] - tv[:, :, 0], dim=-1)
        keep &= (n * tv[:, :, 0]).sum(-1) < 0
    inf = torch.tensor(float("inf"), device=v.device)
    zmin = torch.where(keep[..., None], z, inf).flatten(1).amin(1)
    zmax = torch.where(keep[..., None], z, -inf).flatten(1).amax(1)
    none = ~keep.any(1)  # nothing drawn in a frame: any valid planes will do
    zmin = torch.where(none, torch.ones_like(zmin), zmin)
    zmax = torch.where(none, torch.ones_like(zmax), zmax)
    znear = 0.5 * zmin  # >= near / 2 > 0 for every drawn vertex
    zfar = torch.maximum(2.0 * zmax, 2.0 * znear)
    pos = opencv_to_clip(tv.reshape(b, 3 * nf, 3), focal.float(), principal.float(),
                         height, width, znear.float(), zfar.float())
    # dropped faces: all corners at one point outside the viewport (zero area, never drawn)
    off = torch.tensor([2.0, 2.0, 0.0, 1.0], device=pos.device)
    drop = (~keep)[..., None].expand(b, nf, 3).reshape(b, 3 * nf, 1)
    pos = torch.where(drop, off, pos).contiguous()
    tri = torch.arange(3 * nf, device=v.device, dtype=torch.int32).view(nf, 3)
    rast, _ = dr.rasterize(_context(v.device), pos, tri, (height, width), grad_db=False)
    fid = rast[..., 3].round().to(torch.int64) - 1  # [B, H, W]; -1 background
    hit = fid >= 0
    u, w = rast[..., 0], rast[..., 1]
    bary = torch.stack([u, w, 1 - u - w], -1).to(out_dtype)
    bary = torch.where(hit[..., None], bary, torch.zeros((), dtype=out_dtype, device=v.device))
    zsrc = verts.detach()[:, faces, 2].to(out_dtype)  # [B, F, 3]
    corner = 3 * fid.clamp_min(0).reshape(b, -1, 1) + torch.arange(3, device=v.device)
    zc = torch.gather(zsrc.reshape(b, -1), 1, corner.reshape(b, -1))
    depth = (zc.reshape(b, height, width, 3) * bary).sum(-1)
    return fid, depth, bary
