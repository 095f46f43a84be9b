"""ControlNet-ready maps from rasterized fragments (pure tensor functions).

Conventions (ecosystem.md §2):

- Depth: relative inverse depth (disparity), near = bright, as MiDaS / Depth
  Anything annotators write it. ``1 / Z`` is min-max normalised over the person's
  pixels (per frame, or over the whole batch so a video does not flicker) and
  mapped to ``[floor, 1]``; background is 0. ``floor > 0`` keeps the farthest body
  pixel above the black background.
- Normal: unit surface normals in OpenCV camera axes (x right, y down, z forward),
  coloured by one of :data:`NORMAL_CONVENTIONS`:

  ``normalbae`` (default; ScanNet protocol, ``control_v11p_sd15_normalbae``):
      ``R = (1 - nx) / 2, G = (1 - ny) / 2, B = (1 - nz) / 2`` in OpenCV axes, i.e.
      in OpenGL view axes ``R = (1 - x) / 2, G = (1 + y) / 2, B = (1 + z) / 2``:
      red = facing image-left, green = up, blue = toward the camera; a surface
      facing the camera is (128, 128, 255).
  ``dsine``: DSINE's annotator output, (+X left, +Y up, +Z toward the viewer)
      written as ``(n + 1) / 2``: the same colours as ``normalbae`` (listed so that
      artists who use DSINE maps find it).
  ``opengl``: the OpenGL normal-map convention (core ``SAM3DBody_Render`` "normals",
      Blender/Unity): ``R = (1 + x) / 2, G = (1 + y) / 2, B = (1 + z) / 2`` in OpenGL
      view axes: red = facing image-RIGHT (red flipped relative to normalbae).

  Background: ``black`` (0, 0, 0) (= "invalid" in BAE's training files, default)
  or ``flat`` (the camera-facing colour of the convention, (128, 128, 255)).
- Part map: 24 DensePose-style parts (I = 1..24, 0 background), ``I * 255 / 24``
  stored as 8 bits then coloured with viridis ("MagicAnimate", background replaced
  per zero channel by (68, 1, 84)) or parula ("CivitAI", background black), as
  comfyui_controlnet_aux's DensePose preprocessor writes them.

Library images are [B, 3, H, W] float 0..1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .raster import Fragments, interpolate

DEPTH_NORMALIZE = ("frame", "batch")
NORMAL_CONVENTIONS = ("normalbae", "opengl", "dsine")
NORMAL_BACKGROUNDS = ("black", "flat")
PART_COLORMAPS = ("viridis", "parula")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")


# ---------------------------------------------------------------- depth
def depth_map(frags: Fragments, normalize: str = "frame", floor: float = 0.15) -> Tensor:
    """Inverse depth, near bright, normalised inside the person.

    Args:
        frags: fragments of B frames ([B, H, W] depth in metres, 0 = background).
        normalize: ``"frame"`` (min-max per frame) or ``"batch"`` (one min-max over
            every frame's person pixels: no flicker in a video).
        floor: value of the farthest person pixel, 0..1 (the nearest is 1).
    Returns:
        [B, H, W] float 0..1; 0 for background (and for frames without a person).
    Raises:
        ValueError: unknown ``normalize`` or ``floor`` outside [0, 1).
    """
    _choice("normalize", normalize, DEPTH_NORMALIZE)
    if not 0.0 <= float(floor) < 1.0:
        raise ValueError(f"floor: expected a value in [0, 1), got {floor}")
    return inverse_depth_normalize(frags.depth, frags.mask, normalize, floor)


def inverse_depth_normalize(depth: Tensor, mask: Tensor, normalize: str = "frame",
                            floor: float = 0.15, lo_hi: tuple[float, float] | None = None) -> Tensor:
    """``depth_map`` on raw tensors.

    Args:
        depth: [B, H, W] metres (> 0 inside ``mask``).
        mask: [B, H, W] bool.
        lo_hi: fixed (min, max) of 1/Z in 1/m instead of measuring it (used to
            normalise frames rendered one by one over the whole batch).
    Returns:
        [B, H, W] float32 0..1.
    """
    _choice("normalize", normalize, DEPTH_NORMALIZE)
    inv = torch.where(mask, 1.0 / depth.clamp_min(1e-9), torch.zeros_like(depth)).to(torch.float64)
    big = torch.finfo(torch.float64).max
    if lo_hi is not None:
        lo = torch.full((inv.shape[0], 1, 1), float(lo_hi[0]), dtype=inv.dtype, device=inv.device)
        hi = torch.full_like(lo, float(lo_hi[1]))
    else:
        lo = torch.where(mask, inv, torch.full_like(inv, big)).flatten(1).amin(1)[:, None, None]
        hi = torch.where(mask, inv, torch.full_like(inv, -big)).flatten(1).amax(1)[:, None, None]
        if normalize == "batch":
            lo = lo.amin().expand_as(lo)
            hi = hi.amax().expand_as(hi)
    span = (hi - lo)
    t = torch.where(span > 0, (inv - lo) / span.clamp_min(1e-300), torch.ones_like(inv))
    out = floor + (1.0 - floor) * t.clamp(0, 1)
    return torch.where(mask, out, torch.zeros_like(out)).to(torch.float32)


def inverse_depth_range(depth: Tensor, mask: Tensor) -> tuple[float, float] | None:
    """(min, max) of 1/Z (1/m) over ``mask``, or None when the mask is empty."""
    if not bool(mask.any()):
        return None
    inv = 1.0 / depth[mask].to(torch.float64)
    return float(inv.min()), float(inv.max())


# ---------------------------------------------------------------- normals
def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals (outward for an outward-wound mesh).

    Args:
        verts: [B, V, 3] any right-handed frame, metres.
        faces: [F, 3] int64.
    Returns:
        [B, V, 3] unit normals in the frame of ``verts`` (0 for unused vertices).
    """
    f = faces.to(device=verts.device, dtype=torch.int64)
    v0, v1, v2 = verts[:, f[:, 0]], verts[:, f[:, 1]], verts[:, f[:, 2]]
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)  # length = 2 * area
    vn = torch.zeros_like(verts)
    for k in range(3):
        vn.index_add_(1, f[:, k], fn)
    return F.normalize(vn, dim=-1, eps=1e-12)


def normal_image(verts_cam: Tensor, faces: Tensor, frags: Fragments) -> Tensor:
    """Per-pixel unit normals in OpenCV camera axes, facing the camera.

    Smooth (interpolated vertex) normals. Where the visible face is seen from its
    back side (inside of an open mesh), the normal is flipped so that it faces the
    camera.

    Args:
        verts_cam: [B, V, 3] camera-space vertices, metres.
        faces: [F, 3] int64.
        frags: fragments of ``verts_cam``.
    Returns:
        [B, H, W, 3] unit normals (x right, y down, z forward); 0 for background.
    """
    f = faces.to(device=verts_cam.device, dtype=torch.int64)
    n = interpolate(vertex_normals(verts_cam, f), f, frags)
    # back-facing visible faces: flip (geometric normal . view ray > 0)
    b = verts_cam.shape[0]
    fid = frags.face_id.clamp_min(0)
    v0, v1, v2 = (verts_cam[:, f[:, k]] for k in range(3))
    back_face = (torch.cross(v1 - v0, v2 - v0, dim=-1) * v0).sum(-1) > 0  # [B, F]
    back = torch.gather(back_face, 1, fid.reshape(b, -1)).reshape(fid.shape) & frags.mask
    n = torch.where(back[..., None], -n, n)
    return F.normalize(n, dim=-1, eps=1e-12) * frags.mask[..., None]


def normal_colors(normals: Tensor, mask: Tensor, convention: str = "normalbae",
                  background: str = "black") -> Tensor:
    """Colour per-pixel normals with a ControlNet convention (module doc).

    Args:
        normals: [B, H, W, 3] unit normals in OpenCV camera axes.
        mask: [B, H, W] bool, person pixels.
        convention: one of ``NORMAL_CONVENTIONS``.
        background: ``"black"`` or ``"flat"`` (camera-facing colour).
    Returns:
        [B, 3, H, W] float 0..1.
    """
    _choice("convention", convention, NORMAL_CONVENTIONS)
    _choice("background", background, NORMAL_BACKGROUNDS)
    sign = torch.tensor([-1.0, -1.0, -1.0], dtype=normals.dtype, device=normals.device)
    if convention == "opengl":
        sign[0] = 1.0  # R = (1 + x_gl) / 2 with x_gl = x_cv
    rgb = (1.0 + normals * sign) / 2
    if background == "flat":
        bg = (1.0 + torch.tensor([0.0, 0.0, -1.0], dtype=normals.dtype,
                                 device=normals.device) * sign) / 2
    else:
        bg = torch.zeros(3, dtype=normals.dtype, device=normals.device)
    rgb = torch.where(mask[..., None], rgb, bg.expand_as(rgb))
    return rgb.clamp(0, 1).permute(0, 3, 1, 2).to(torch.float32)


def normal_map(verts_cam: Tensor, faces: Tensor, frags: Fragments, convention: str = "normalbae",
               background: str = "black") -> Tensor:
    """Normal map of a rendered mesh (module doc for the colours).

    Args:
        verts_cam: [B, V, 3] camera-space vertices, metres.
        faces: [F, 3] int64.
        frags: fragments of ``verts_cam``.
        convention: ``"normalbae"`` (default), ``"opengl"`` or ``"dsine"``.
        background: ``"black"`` or ``"flat"``.
    Returns:
        [B, 3, H, W] float 0..1.

    Example:
        >>> from blade_nodes.render import rasterize
        >>> v = torch.tensor([[[-1., -1., 2.], [1., -1., 2.], [0., 1., 2.]]])
        >>> fr = rasterize(v, torch.tensor([[0, 2, 1]]), torch.tensor([8.]),
        ...                torch.tensor([[8., 8.]]), 16, 16)
        >>> [round(float(c) * 255) for c in normal_map(v, torch.tensor([[0, 2, 1]]), fr)[0, :, 8, 8]]
        [128, 128, 255]
    """
    _choice("convention", convention, NORMAL_CONVENTIONS)
    _choice("background", background, NORMAL_BACKGROUNDS)
    return normal_colors(normal_image(verts_cam, faces, frags), frags.mask, convention, background)


# ---------------------------------------------------------------- overlay
BODY_COLOR = (0.72, 0.78, 0.88)


def shade(normals: Tensor, mask: Tensor, color: tuple[float, float, float] = BODY_COLOR,
          ambient: float = 0.3) -> Tensor:
    """Headlight Lambert shading (light at the camera).

    Args:
        normals: [B, H, W, 3] unit normals, OpenCV camera axes.
        mask: [B, H, W] bool.
    Returns:
        [B, 3, H, W] float 0..1 (0 outside the mask).
    """
    lam = (-normals[..., 2]).clamp(0, 1)  # n . (toward camera) for rays near the axis
    k = (ambient + (1 - ambient) * lam) * mask
    c = torch.tensor(color, dtype=normals.dtype, device=normals.device)
    return (k[..., None] * c).permute(0, 3, 1, 2).to(torch.float32)


def overlay(shaded: Tensor, mask: Tensor, image: Tensor | None = None, opacity: float = 0.8,
            background: float = 0.5) -> Tensor:
    """The shaded mesh over the input image (or a flat grey).

    Args:
        shaded: [B, 3, H, W] 0..1 shaded body (from :func:`shade`).
        mask: [B, H, W] bool or 0..1.
        image: [B, 3, H, W] (or [1, 3, H, W]) 0..1, or None for grey.
        opacity: body opacity over the image, 0..1.
        background: grey level when there is no image.
    Returns:
        [B, 3, H, W] float 0..1.
    """
    m = mask.to(shaded.dtype)[:, None] * float(opacity)
    if image is None:
        base = torch.full_like(shaded, float(background))
    else:
        base = image.to(shaded).expand_as(shaded)
    return (base * (1 - m) + shaded * m).clamp(0, 1)


# ---------------------------------------------------------------- DensePose-style part map
# DensePose's 24 fine parts (I = 1..24), named after the DensePose paper's list.
DENSEPOSE_PARTS = (
    "torso_back", "torso_front", "right_hand", "left_hand", "left_foot", "right_foot",
    "right_upper_leg_back", "left_upper_leg_back", "right_upper_leg_front",
    "left_upper_leg_front", "right_lower_leg_back", "left_lower_leg_back",
    "right_lower_leg_front", "left_lower_leg_front", "left_upper_arm_front",
    "right_upper_arm_front", "left_upper_arm_back", "right_upper_arm_back",
    "left_lower_arm_front", "right_lower_arm_front", "left_lower_arm_back",
    "right_lower_arm_back", "right_head", "left_head")

# matplotlib's viridis and MATLAB's parula at 9 stops (RGB 0..255); OpenCV's
# COLORMAP_VIRIDIS / COLORMAP_PARULA interpolate 256 entries between such anchors.
_VIRIDIS = ((68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
            (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37))
_PARULA = ((53, 42, 135), (15, 92, 221), (18, 125, 216), (7, 156, 207), (21, 177, 180),
           (89, 189, 140), (165, 190, 107), (225, 185, 82), (249, 251, 14))


def _colormap(values: Tensor, stops: tuple) -> Tensor:
    """[...] 0..255 -> [..., 3] 0..1 by linear interpolation between ``stops``."""
    s = torch.tensor(stops, dtype=torch.float32, device=values.device) / 255
    x = values.to(torch.float32) / 255 * (len(stops) - 1)
    i0 = x.floor().clamp(0, len(stops) - 2).long()
    t = (x - i0)[..., None]
    return s[i0] * (1 - t) + s[i0 + 1] * t


def part_colors(parts: Tensor, colormap: str = "viridis") -> Tensor:
    """Colour a part-index image like comfyui_controlnet_aux's DensePose preprocessor.

    Args:
        parts: [B, H, W] int, 0 background, 1..24 DensePose parts.
        colormap: ``"viridis"`` (MagicAnimate; background (68, 1, 84)) or ``"parula"``
            (CivitAI DensePose ControlNet; background black).
    Returns:
        [B, 3, H, W] float 0..1.
    """
    _choice("colormap", colormap, PART_COLORMAPS)
    level = (parts.to(torch.float32) * (255.0 / 24)).floor()  # uint8 as the annotator stores it
    if colormap == "viridis":
        rgb = _colormap(level, _VIRIDIS)
    else:
        rgb = _colormap(level, _PARULA) * (parts > 0)[..., None]
    return rgb.permute(0, 3, 1, 2).clamp(0, 1)
