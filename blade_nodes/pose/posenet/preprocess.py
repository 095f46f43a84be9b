"""Image -> PoseNet input (BLADE demo path, ``BLADE.prepare_data`` with ``is_demo``).

Steps, as the official code does them:

1. ImageNet normalisation of RGB 0..255: (x - (123.675, 116.28, 103.53)) / (58.395, 57.12, 57.375).
2. scale = min(400/H, 400/W); new_h = int(H * scale), new_w = int(W * scale) (truncated).
3. Bilinear resize of the *normalised* image with antialiasing (torchvision ``resize``,
   ``antialias=True``; here ``F.interpolate(..., antialias=True)``, the same kernel).
4. Paste centred on a 400x400 canvas filled with normalised black (-2.1179, -2.0357, -1.8044), at
   row (400 - new_h) // 2, column (400 - new_w) // 2. The padding is not masked (AiOS sees a
   plain 400x400 image).

Non-square photos: this letterbox is what BLADE's in-the-wild path amounts to as well. There the
photo is first padded centred to a square with black (``ImageOps.expand``, left = pad // 2) and
resized to 1280 (LANCZOS), then the square frame is resized to 400. Both put the whole photo,
centred, on black padding. They differ only in resampling and by at most one 400-px pixel of
offset rounding. No part of the photo is cropped. :class:`Letterbox` maps PoseNet-frame pixels
back to photo pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
PAD_FILL = (-2.1179, -2.0357, -1.8044)


@dataclass(frozen=True)
class Letterbox:
    """Placement of the photo inside the square PoseNet frame.

    Attributes:
        size: PoseNet frame side in pixels (400).
        photo_hw: (H, W) of the photo in pixels.
        resized_hw: (new_h, new_w) of the photo inside the frame.
        offset_xy: (column, row) of the photo's top-left corner in the frame, pixels.
    """

    size: int
    photo_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    offset_xy: tuple[int, int]

    def to_photo(self, xy: Tensor) -> Tensor:
        """[..., 2] pixel coordinates (x, y) in the PoseNet frame -> photo pixels."""
        sx = self.resized_hw[1] / self.photo_hw[1]
        sy = self.resized_hw[0] / self.photo_hw[0]
        off = xy.new_tensor(self.offset_xy)
        return (xy - off) / xy.new_tensor((sx, sy))


def letterbox_for(h: int, w: int, size: int = 400) -> Letterbox:
    scale = min(size / h, size / w)
    nh, nw = int(h * scale), int(w * scale)
    return Letterbox(size, (h, w), (nh, nw), ((size - nw) // 2, (size - nh) // 2))


def preprocess(image: Tensor, size: int = 400) -> tuple[Tensor, Letterbox]:
    """RGB image -> normalised, letterboxed PoseNet input.

    Args:
        image: [B, 3, H, W] float RGB in 0..1 (library convention).
        size: frame side (400 for BLADE).
    Returns:
        ([B, 3, size, size] normalised float32 tensor, :class:`Letterbox`).
    Raises:
        ValueError: wrong shape or an empty image.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected [B, 3, H, W] RGB 0..1, got shape {tuple(image.shape)}; "
                         "convert a ComfyUI IMAGE with image.permute(0, 3, 1, 2)")
    B, _, h, w = image.shape
    if h < 1 or w < 1 or B < 1:
        raise ValueError(f"image: expected a non-empty image, got shape {tuple(image.shape)}")
    box = letterbox_for(h, w, size)
    x = image.float() * 255.0
    mean = x.new_tensor(MEAN)[None, :, None, None]
    std = x.new_tensor(STD)[None, :, None, None]
    x = (x - mean) / std
    nh, nw = box.resized_hw
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    out = x.new_tensor(PAD_FILL)[None, :, None, None].expand(B, 3, size, size).clone()
    c, r = box.offset_xy
    out[:, :, r:r + nh, c:c + nw] = x
    return out, box
