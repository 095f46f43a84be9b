"""DepthNet input: the official mask-based square crop (``crop_depth_images_using_segmask``).

Official in-the-wild path (blade_official.md §1.8, §2.7): the photo is padded centred to a square
with black, resized to the square "posenet frame" (1280² for one image), ImageNet-normalised; the
person box (any non-zero mask pixel) is enlarged ×1.25, made square, shifted into the frame and
sampled to 518² with ``grid_sample`` (bilinear, align_corners=True, zero padding in normalised
space = mean grey). Differences here, stated: the frame resize is bilinear with antialiasing
(official: PIL LANCZOS on uint8), and the mask is carried into the frame by area averaging
(any person pixel in the area counts), the official demo requires a frame-sized mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CropConfig", "DepthCrop", "normalize", "mask_boxes", "square_crop",
           "remove_background", "prepare_crop", "check_image", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN_255 = (123.675, 116.28, 103.53)
_STD_255 = (58.395, 57.12, 57.375)
OFFICIAL_BACKGROUND = (-2.1179, -2.0357, -1.8044)
"""Normalised 'black' the official ``prepare_data`` writes outside a user mask (4 decimals)."""
MIN_SIDE = 64


@dataclass(frozen=True)
class CropConfig:
    """Settings of the DepthNet crop.

    Attributes:
        scale: box enlargement (official 1.25).
        size: crop side, pixels (official 518).
        frame_size: side of the square frame the crop is taken from (official 1280 for one
            image, 800 for batches); None = the padded photo at its own resolution.
        mask_threshold: mask values above this are person (official: any non-zero, 0.0).
        remove_background: fill non-person pixels with normalised black before cropping (the
            official path when the user supplies the mask; the MediaPipe path and training keep
            the background).
    """

    scale: float = 1.25
    size: int = 518
    frame_size: int | None = 1280
    mask_threshold: float = 0.0
    remove_background: bool = False


@dataclass(frozen=True)
class DepthCrop:
    """A batch of DepthNet inputs.

    Attributes:
        pixel_values: [B, 3, size, size] ImageNet-normalised crops.
        box: [B, 4] crop square (left, top, right, bottom) in the photo's pixel coordinates
            (pixel centres at integers, as the official code), may extend past the photo.
        empty: [B] bool, True where the mask had no person pixel (crop = whole frame).
        frame_mask: [B, size, size] bool person mask resampled into the crop, or None.
        messages: human-readable notes (no mask, empty frames).
    """

    pixel_values: Tensor
    box: Tensor
    empty: Tensor
    frame_mask: Tensor | None
    messages: tuple[str, ...]


def check_image(image: Tensor, name: str = "image") -> None:
    """Raise ValueError unless ``image`` is a finite [B, 3, H, W] batch with H, W >= 64."""
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] != 3:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{name}: expected [B, 3, H, W] RGB 0..1, got {got}")
    if image.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty")
    h, w = image.shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"{name}: {w}x{h} px is too small; expected at least "
                         f"{MIN_SIDE}x{MIN_SIDE} px (the person should be clearly visible)")
    bad = (~torch.isfinite(image)).flatten(1).any(1)
    if bad.any():
        raise ValueError(f"{name}: frames {bad.nonzero().flatten().tolist()} contain NaN/Inf "
                         "values; fix the node that produced the image")


def normalize(image: Tensor) -> Tensor:
    """ImageNet normalisation, official float order ((x*255 - mean) * (1/std)).

    Args:
        image: [B, 3, H, W] RGB 0..1.
    Returns:
        [B, 3, H, W] float32 normalised.
    """
    mean = torch.tensor(_MEAN_255, dtype=torch.float64).view(1, 3, 1, 1)
    inv_std = 1.0 / torch.tensor(_STD_255, dtype=torch.float64).view(1, 3, 1, 1)
    return ((image.double() * 255.0 - mean) * inv_std).float()


def mask_boxes(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Tight boxes of boolean masks (torchvision ``masks_to_boxes`` semantics).

    Args:
        mask: [B, H, W] bool.
    Returns:
        boxes: [B, 4] float32 (x_min, y_min, x_max, y_max), inclusive pixel indices; an empty
            mask gives the whole frame [0, 0, W-1, H-1] (official fallback).
        empty: [B] bool.
    """
    b, h, w = mask.shape
    rows = mask.any(2)
    cols = mask.any(1)
    empty = ~rows.any(1)
    ar_y = torch.arange(h).expand(b, h)
    ar_x = torch.arange(w).expand(b, w)
    big = max(h, w) + 1
    y1 = torch.where(rows, ar_y, big).amin(1)
    y2 = torch.where(rows, ar_y, -1).amax(1)
    x1 = torch.where(cols, ar_x, big).amin(1)
    x2 = torch.where(cols, ar_x, -1).amax(1)
    boxes = torch.stack([x1, y1, x2, y2], 1).float()
    whole = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0])
    boxes = torch.where(empty[:, None], whole, boxes)
    return boxes, empty


def square_crop(frame: Tensor, boxes: Tensor, scale: float = 1.25, size: int = 518
                ) -> tuple[Tensor, Tensor]:
    """Official square crop around ``boxes`` (float32 arithmetic in the official order).

    Args:
        frame: [B, C, H, W] normalised image (any C).
        boxes: [B, 4] float32 tight boxes (x1, y1, x2, y2), pixel indices.
        scale: box enlargement.
        size: output side, pixels.
    Returns:
        crop: [B, C, size, size]; outside the frame = 0 (normalised mean grey).
        square: [B, 4] float32 (left, top, right, bottom) of the shifted square, pixels.
    """
    b, _, h, w = frame.shape
    boxes = boxes.float()
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    wh = (boxes[:, 2:] - boxes[:, :2]) * scale
    side = wh.max(1).values
    lo = centre - side[:, None] / 2
    hi = centre + side[:, None] / 2
    limit = torch.tensor([w - 1.0, h - 1.0])
    shift = torch.clamp(-lo, min=0) - torch.clamp(hi - limit, min=0)
    lo, hi = lo + shift, hi + shift
    n_lo = 2 * lo / limit - 1
    n_hi = 2 * hi / limit - 1
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = (n_hi[:, 0] - n_lo[:, 0]) / 2
    theta[:, 0, 2] = (n_hi[:, 0] + n_lo[:, 0]) / 2
    theta[:, 1, 1] = (n_hi[:, 1] - n_lo[:, 1]) / 2
    theta[:, 1, 2] = (n_hi[:, 1] + n_lo[:, 1]) / 2
    grid = F.affine_grid(theta, [b, frame.shape[1], size, size], align_corners=True)
    crop = F.grid_sample(frame, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return crop, torch.cat([lo, hi], 1)


def remove_background(frame: Tensor, person: Tensor) -> Tensor:
    """Official ``prepare_data``: normalised pixels where ``person`` is False -> black constants.

    Args:
        frame: [B, 3, H, W] normalised. person: [B, H, W] bool.
    """
    bg = torch.tensor(OFFICIAL_BACKGROUND, dtype=frame.dtype).view(1, 3, 1, 1)
    return torch.where(person[:, None], frame, bg)


def _to_frame(image: Tensor, person: Tensor | None, frame_size: int | None):
    """Pad centred to a square with black, resize to frame_size. Returns frame, mask, (pad, s)."""
    _, _, h, w = image.shape
    side = max(h, w)
    left, top = (side - w) // 2, (side - h) // 2
    img = F.pad(image, (left, side - w - left, top, side - h - top), value=0.0)
    msk = None
    if person is not None:
        msk = F.pad(person.float(), (left, side - w - left, top, side - h - top), value=0.0)
    scale = 1.0
    if frame_size is not None and frame_size != side:
        scale = frame_size / side
        img = F.interpolate(img, size=(frame_size, frame_size), mode="bilinear",
                            align_corners=False, antialias=frame_size < side).clamp(0, 1)
        if msk is not None:
            msk = F.adaptive_avg_pool2d(msk[:, None], frame_size)[:, 0]
    return img, (msk > 0 if msk is not None else None), (left, top, scale)


def prepare_crop(image: Tensor, mask: Tensor | None, cfg: CropConfig = CropConfig()) -> DepthCrop:
    """Photo (+ person mask) -> DepthNet crops, as the official in-the-wild path.

    Args:
        image: [B, 3, H, W] RGB 0..1, H and W >= 64, finite.
        mask: [B, H, W] or [1, H, W] person mask 0..1 (resized to the image if its size
            differs), or None (whole image, with a message).
        cfg: :class:`CropConfig`.
    Returns:
        :class:`DepthCrop`.
    Raises:
        ValueError: bad image shape, size or values; mask batch does not match.
    """
    check_image(image)
    b, _, h, w = image.shape
    messages: list[str] = []
    person = None
    if mask is None:
        messages.append("no mask given: the whole image is used as the person box; "
                        "connect a person mask for a reliable Tz")
    else:
        person = _mask_to_bool(mask, b, h, w, cfg.mask_threshold, messages)
    img, fmask, (left, top, s) = _to_frame(image, person, cfg.frame_size)
    frame = normalize(img)
    fh, fw = frame.shape[-2:]
    if person is None:
        boxes = torch.tensor([[0.0, 0.0, fw - 1.0, fh - 1.0]]).expand(b, 4)  # official
        empty = torch.zeros(b, dtype=torch.bool)
    else:
        boxes, empty = mask_boxes(fmask)
        if empty.any():
            messages.append(f"frames {empty.nonzero().flatten().tolist()}: the mask is empty "
                            "(no person pixel); Tz there is a fallback, not a measurement")
        if cfg.remove_background:
            frame = remove_background(frame, fmask)
    crop, square = square_crop(frame, boxes, cfg.scale, cfg.size)
    crop_mask = None
    if fmask is not None:
        crop_mask = square_crop(fmask[:, None].float(), boxes, cfg.scale, cfg.size)[0][:, 0] > 0.5
    # square box back to photo pixel coordinates
    box = (square + 0.5) / s - 0.5 - torch.tensor([left, top, left, top], dtype=square.dtype)
    return DepthCrop(pixel_values=crop, box=box, empty=empty, frame_mask=crop_mask,
                     messages=tuple(messages))


def _mask_to_bool(mask: Tensor, b: int, h: int, w: int, threshold: float,
                  messages: list[str]) -> Tensor:
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask: expected a [B, H, W] tensor, got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(f"mask: expected [B, H, W], got {tuple(mask.shape)}")
    if mask.shape[0] not in (1, b):
        raise ValueError(f"mask: batch of {mask.shape[0]} masks for {b} images; expected 1 or "
                         f"{b} (one per image)")
    if not torch.isfinite(mask).all():
        raise ValueError("mask: contains NaN/Inf values; fix the node that produced the mask")
    mask = mask.float()
    if tuple(mask.shape[-2:]) != (h, w):
        messages.append(f"mask {mask.shape[-1]}x{mask.shape[-2]} resized to the image {w}x{h}")
        mask = F.interpolate(mask[:, None], size=(h, w), mode="bilinear",
                             align_corners=False)[:, 0]
    return (mask > threshold).expand(b, h, w)
