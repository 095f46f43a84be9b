"""Tz from a metric depth map (Depth Anything V2 metric), corrected from surface to pelvis.

A metric depth network sees the *visible surface*. The pelvis joint lies inside the body,
behind that surface, so

    Tz = median(depth over the eroded person mask) + surface_to_pelvis_m.

Why these choices (numbers from ``bench/tz.py`` section B: a body mesh rendered with an exact
depth map, i.e. geometry only, no network error):
- the median ignores the mask's boundary pixels where depth maps blend person and background
  (erosion by ``erode_px`` removes most of them first), and arms/legs sticking out;
- on the open body (Anny, T-pose) at 2-8 m: the median visible depth lies
  0.10 m in front of the pelvis seen from the front, 0.13 m at 45 deg yaw, 0.17-0.19 m from the
  side (the near arm and hip), 0.10 m at 135 deg and 0.06 m from the back; independent of the
  distance to within 5 mm. 0.10 m (the frontal value, and close to the 0.11 m mean over yaws)
  is the default correction; the residual is -0.04..+0.09 m, i.e. about -1..+3 % of Tz at 3 m.
- the depth network's own error dominates: Depth Anything V2 metric models are trained on one
  domain (Hypersim indoor, max 20 m; Virtual KITTI outdoor, max 80 m) and on full photos; their
  scale drifts with the unknown camera field of view. The map is therefore computed on the whole
  photo (never the person crop, which would change the apparent field of view).
This is not BLADE's learned Tz; it is a fallback when the BLADE checkpoint is not available.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .preprocess import normalize

__all__ = ["MetricTzConfig", "metric_depth_map", "surface_tz", "erode"]


@dataclass(frozen=True)
class MetricTzConfig:
    """Settings of the metric-depth Tz.

    Attributes:
        short_side: the network's input short side, pixels (rounded up to a multiple of 14;
            Depth Anything's processor default 518).
        max_long_side: cap on the input long side, pixels (cost grows with the area).
        surface_to_pelvis_m: added to the median visible depth, metres.
        erode_px: person mask erosion before the median, pixels of the photo.
    """

    short_side: int = 518
    max_long_side: int = 1036
    surface_to_pelvis_m: float = 0.10
    erode_px: int = 3


def _input_size(h: int, w: int, cfg: MetricTzConfig, patch: int) -> tuple[int, int]:
    s = cfg.short_side / min(h, w)
    s = min(s, cfg.max_long_side / max(h, w))
    return (max(patch, int(math.ceil(h * s / patch)) * patch),
            max(patch, int(math.ceil(w * s / patch)) * patch))


def metric_depth_map(model, image: Tensor, cfg: MetricTzConfig = MetricTzConfig()) -> Tensor:
    """Metric depth of whole photos, one network call for the batch.

    Args:
        model: :class:`~.depthnet.MetricDepthNet` or :class:`~.depthnet.BladeDepthNet` (its
            DAv2 head).
        image: [B, 3, H, W] RGB 0..1.
        cfg: :class:`MetricTzConfig`.
    Returns:
        [B, H, W] depth of the visible surface along the optical axis, metres (float32, CPU).
    """
    h, w = image.shape[-2:]
    patch = 14
    ih, iw = _input_size(h, w, cfg, patch)
    x = F.interpolate(image, size=(ih, iw), mode="bicubic", align_corners=False,
                      antialias=ih < h).clamp(0, 1)
    param = next(model.parameters())
    x = normalize(x).to(param.device, param.dtype)
    with torch.inference_mode():
        if getattr(model, "has_tz_head", False):
            depth = model(x, want_tz=False, want_depth=True).depth
        else:
            depth = model(x)
    depth = F.interpolate(depth[:, None].float(), size=(h, w), mode="bilinear",
                          align_corners=False)[:, 0]
    return depth.cpu()


def erode(mask: Tensor, px: int) -> Tensor:
    """Binary erosion by a (2 px + 1)² square. mask: [B, H, W] bool -> same."""
    if px <= 0:
        return mask
    inv = (~mask).float()[:, None]
    grown = F.max_pool2d(inv, 2 * px + 1, stride=1, padding=px)[:, 0]
    return grown < 0.5


def surface_tz(depth: Tensor, person: Tensor, cfg: MetricTzConfig = MetricTzConfig()
               ) -> tuple[Tensor, Tensor]:
    """Pelvis depth from a metric depth map and a person mask.

    Args:
        depth: [B, H, W] metric depth, metres.
        person: [B, H, W] bool person mask.
        cfg: :class:`MetricTzConfig` (erosion, surface-to-pelvis offset).
    Returns:
        tz: [B] metres (NaN where the mask is empty or the depth is not finite there).
        valid: [B] bool.
    """
    core = erode(person, cfg.erode_px)
    tz = torch.full((depth.shape[0],), float("nan"))
    for i in range(depth.shape[0]):
        m = core[i] if core[i].any() else person[i]
        vals = depth[i][m]
        vals = vals[torch.isfinite(vals) & (vals > 0)]
        if vals.numel():
            tz[i] = vals.median() + cfg.surface_to_pelvis_m
    return tz, torch.isfinite(tz)
