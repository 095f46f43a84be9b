"""Stage 1: pelvis depth Tz for a batch of photos (the ``BLADE_TZ`` socket)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from .metric import MetricTzConfig, metric_depth_map, surface_tz
from .preprocess import CropConfig, _mask_to_bool, check_image, prepare_crop

__all__ = ["PelvisDepth", "TzConfig", "estimate_tz", "METHODS", "manual_tz"]

METHODS = ("auto", "depthnet", "metric_depth", "manual")
"""``auto``: the BLADE DepthNet if the model has the Tz head, else metric depth."""
MIN_TZ, MAX_TZ = 0.05, 1000.0


@dataclass(frozen=True)
class PelvisDepth:
    """Pelvis depth of each image of a batch (``BLADE_TZ``).

    Attributes:
        tz: [B] float32 pelvis depth along the camera axis, metres (> 0).
        method: "depthnet", "metric_depth" or "manual".
        valid: [B] bool; False where Tz is a fallback (empty mask, no depth in the mask).
        messages: notes for the user (missing mask, fallbacks).
        box: [B, 4] DepthNet crop square (left, top, right, bottom), photo pixels, or None.
    """

    tz: Tensor
    method: str
    valid: Tensor
    messages: tuple[str, ...] = ()
    box: Tensor | None = None

    def __post_init__(self) -> None:
        if self.tz.ndim != 1 or self.valid.shape != self.tz.shape:
            raise ValueError(f"PelvisDepth: expected tz [B] and valid [B], got "
                             f"{tuple(self.tz.shape)} and {tuple(self.valid.shape)}")


def tz_values(tz, batch: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """[B] pelvis depths, metres, from a BLADE_TZ (anything with a ``.tz`` [B] tensor), a
    tensor, a list or a number; one value is repeated for every image.

    Raises:
        ValueError: not depths, or not one per image.
    """
    value = getattr(tz, "tz", tz)
    try:
        t = torch.as_tensor(value).detach().to("cpu", dtype).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"tz: expected BLADE_TZ (pelvis depth in metres), got "
                         f"{type(tz).__name__}; connect BLADE Estimate Tz") from None
    if t.numel() == 1 and batch > 1:
        t = t.expand(batch).clone()
    if t.numel() != batch:
        raise ValueError(f"tz: expected {batch} values (one per image), got {t.numel()} depths "
                         f"for {batch} images; run BLADE Estimate Tz on the same image batch")
    return t


@dataclass(frozen=True)
class TzConfig:
    """Settings of :func:`estimate_tz` (crop for the DepthNet, metric-depth correction)."""

    crop: CropConfig = field(default_factory=CropConfig)
    metric: MetricTzConfig = field(default_factory=MetricTzConfig)


def manual_tz(value: float | Sequence[float], batch: int) -> PelvisDepth:
    """The artist's typed distance for every image (or one value per image).

    Args:
        value: metres, one number or ``batch`` numbers.
        batch: number of images.
    Raises:
        ValueError: not finite, outside [0.05, 1000] m, or the wrong count.
    """
    vals = [float(value)] * batch if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(vals) != batch:
        raise ValueError(f"manual Tz: got {len(vals)} values for {batch} images; give one value "
                         "or one per image")
    for v in vals:
        if not math.isfinite(v) or not MIN_TZ <= v <= MAX_TZ:
            raise ValueError(f"manual Tz: expected a distance in metres between {MIN_TZ} and "
                             f"{MAX_TZ}, got {v}; type the camera-to-pelvis distance")
    return PelvisDepth(tz=torch.tensor(vals, dtype=torch.float32), method="manual",
                       valid=torch.ones(batch, dtype=torch.bool))


def _fill_invalid(tz: Tensor, valid: Tensor, messages: list[str]) -> Tensor:
    """Invalid frames take the nearest valid frame's Tz (batches are usually video)."""
    if valid.all() or not valid.any():
        if not valid.any():
            messages.append("no frame has a usable person mask; Tz values are rough "
                            "whole-frame guesses")
        return tz
    idx = valid.nonzero().flatten()
    out = tz.clone()
    for i in (~valid).nonzero().flatten().tolist():
        j = idx[(idx - i).abs().argmin()].item()
        out[i] = tz[j]
    messages.append(f"frames {(~valid).nonzero().flatten().tolist()}: Tz copied from the "
                    "nearest frame with a person")
    return out


def estimate_tz(image: Tensor, mask: Tensor | None = None, *, method: str = "auto",
                model=None, manual: float | Sequence[float] | None = None,
                cfg: TzConfig = TzConfig(),
                progress: Callable[[int, int], None] | None = None) -> PelvisDepth:
    """Pelvis depth Tz for a batch of photos.

    Args:
        image: [B, 3, H, W] RGB 0..1, H, W >= 64, finite.
        mask: [B, H, W] (or [1, H, W]) person mask 0..1, or None (whole image, with a message).
        method: one of :data:`METHODS`.
        model: :class:`~.depthnet.BladeDepthNet` (``depthnet`` or ``metric_depth`` through its
            DAv2 head) or :class:`~.depthnet.MetricDepthNet` (``metric_depth``); unused for
            ``manual``.
        manual: metres for ``manual`` (one value or one per image).
        cfg: :class:`TzConfig`.
        progress: progress(step, total); may raise to cancel.
    Returns:
        :class:`PelvisDepth` (tensors on the CPU).
    Raises:
        ValueError: bad image/mask, unknown method, or a model that cannot do the method.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    check_image(image)
    b = image.shape[0]
    if method == "auto":
        if model is None:
            if manual is None:
                raise ValueError("method 'auto' needs a depth model (BLADE DepthNet or Depth "
                                 "Anything metric) or a manual Tz")
            method = "manual"
        else:
            method = "depthnet" if getattr(model, "has_tz_head", False) else "metric_depth"
    if method == "manual":
        if manual is None:
            raise ValueError("method 'manual' needs manual_tz (metres)")
        return manual_tz(manual, b)
    if model is None:
        raise ValueError(f"method {method!r} needs a depth model: connect BLADE Load DepthNet")
    if method == "depthnet" and not getattr(model, "has_tz_head", False):
        raise ValueError("method 'depthnet' needs the BLADE checkpoint (it has the Tz head); the "
                         f"loaded model {getattr(model, 'name', '')!r} is a plain Depth Anything "
                         "model: use method 'metric_depth'")
    step = lambda i, n=3: progress(i, n) if progress else None  # noqa: E731
    step(0)
    image = image.float().cpu()
    messages: list[str] = []
    if method == "depthnet":
        crop = prepare_crop(image, mask, cfg.crop)
        messages += crop.messages
        step(1)
        param = next(model.parameters())
        with torch.inference_mode():
            tz = model(crop.pixel_values.to(param.device, param.dtype)).tz.float().cpu()
        step(2)
        valid = ~crop.empty & torch.isfinite(tz)
        tz = _fill_invalid(tz, valid, messages)
        step(3)
        return PelvisDepth(tz=tz, method=method, valid=valid, messages=tuple(messages),
                           box=crop.box)
    # metric depth
    h, w = image.shape[-2:]
    if mask is None:
        messages.append("no mask given: Tz is the median depth of the central third of the "
                        "image; connect a person mask for a reliable Tz")
        person = torch.zeros(b, h, w, dtype=torch.bool)
        person[:, h // 3: 2 * h // 3, w // 3: 2 * w // 3] = True
    else:
        person = _mask_to_bool(mask, b, h, w, cfg.crop.mask_threshold, messages)
    step(1)
    depth = metric_depth_map(model, image, cfg.metric)
    step(2)
    tz, valid = surface_tz(depth, person, cfg.metric)
    if (~valid).any():
        messages.append(f"frames {(~valid).nonzero().flatten().tolist()}: the mask is empty; "
                        "no depth to measure")
        centre = torch.zeros_like(person)
        centre[:, h // 3: 2 * h // 3, w // 3: 2 * w // 3] = True
        guess, _ = surface_tz(depth, centre, cfg.metric)
        tz = torch.where(valid, tz, guess)
        tz = _fill_invalid(tz, valid, messages)
    step(3)
    return PelvisDepth(tz=tz, method=method, valid=valid, messages=tuple(messages))
