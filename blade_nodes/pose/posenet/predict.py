"""Stage function: photo + Tz -> SMPL-X parameters of the most confident person."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ...body.params import SMPLXParams
from ...depth.tz import tz_values
from .model import PoseNet, PoseNetRaw, _select
from .preprocess import preprocess
from .rotations import rot6d_to_rotmat, rotmat_to_axis_angle


@dataclass(frozen=True)
class PoseNetResult:
    """SMPL-X parameters of the selected person per image (B images). Angles are axis-angle in
    radians, in the OpenCV camera frame of the photo (x right, y down, z forward).

    Attributes:
        betas: [B, 10] neutral SMPL-X shape.
        global_orient: [B, 3] root rotation (an upright person facing the camera: about pi
            around x).
        body_pose: [B, 63] 21 body joints.
        left_hand_pose / right_hand_pose: [B, 45] 15 joints each, full (no PCA), **relative to
            the SMPL-X mean hand**: evaluate SMPL-X with ``flat_hand_mean=False`` (BLADE and
            AiOS do), or add ``hands_mean`` before using a flat-hand model.
        jaw_pose: [B, 3] predicted jaw (BLADE itself uses zero jaw and eye poses).
        expression: [B, 10] (BLADE uses it only for its initial mesh).
        score: [B] sigmoid class probability of the selected (group, class), 0..1.
        label: [B] int64 class of that score (both AiOS classes compete).
        group: [B] int64 selected person group (0..num_group-1).
        cam_trans: [B, 3] AiOS weak-perspective camera as a translation (tx/s, ty/s, 1/s);
            not metric and not used by BLADE.
        body_box: [B, 4] person box (x0, y0, x1, y1), photo pixels.
        body_keypoints: [B, 17, 2] COCO body key points (x, y), photo pixels.
        flat_hand_mean: always False (see the hand poses).
    """

    betas: Tensor
    global_orient: Tensor
    body_pose: Tensor
    left_hand_pose: Tensor
    right_hand_pose: Tensor
    jaw_pose: Tensor
    expression: Tensor
    score: Tensor
    label: Tensor
    group: Tensor
    cam_trans: Tensor
    body_box: Tensor
    body_keypoints: Tensor
    flat_hand_mean: bool = False

    def params(self) -> SMPLXParams:
        """The SMPL-X fields as :class:`SMPLXParams` (eye poses zero, hands relative to the
        mean hand: ``flat_hand_mean`` False)."""
        return SMPLXParams.from_dict({n: getattr(self, n) for n in (
            "betas", "global_orient", "body_pose", "left_hand_pose", "right_hand_pose",
            "jaw_pose", "expression")}, flat_hand_mean=self.flat_hand_mean)


def select_person(logits: Tensor, num_select: int) -> tuple[Tensor, Tensor, Tensor]:
    """Official person selection (``PostProcess_SMPLX_Multi_Infer``), rank 0.

    Args:
        logits: [B, G, K] class logits.
    Returns:
        (group [B] int64, label [B] int64, score [B]): top-1 of sigmoid(logits) flattened over
        (group, class); group = index // K, label = index % K.
    """
    return _select(logits, num_select)


def smplx_from_raw(raw: PoseNetRaw, group: Tensor | None = None) -> dict[str, Tensor]:
    """Axis-angle SMPL-X parameters of one group per image (``group`` [B] int64; default the
    selected person ``raw.group``)."""
    group = raw.group if group is None else group
    pos = raw.row_of(group)
    ar = torch.arange(group.shape[0], device=group.device)

    def pick(t: Tensor) -> Tensor:
        return t[ar, pos]

    rot = torch.cat([rot6d_to_rotmat(pick(t).reshape(-1, n, 6)) for t, n in
                     ((raw.pose6d, 22), (raw.lhand6d, 15), (raw.rhand6d, 15), (raw.jaw6d, 1))], 1)
    aa = rotmat_to_axis_angle(rot).flatten(1)  # B, 159
    cam = pick(raw.cam)
    s = cam[:, 0] + 1e-9
    return {
        "global_orient": aa[:, 0:3], "body_pose": aa[:, 3:66], "left_hand_pose": aa[:, 66:111],
        "right_hand_pose": aa[:, 111:156], "jaw_pose": aa[:, 156:159],
        "betas": pick(raw.betas), "expression": pick(raw.expression),
        "cam_trans": torch.stack((cam[:, 1] / s, cam[:, 2] / s, 1.0 / s), -1),
    }


def _check_tz(tz: Tensor | float, batch: int) -> Tensor:
    tz = tz_values(tz, batch)
    if not torch.isfinite(tz).all() or (tz <= 0).any():
        raise ValueError(f"tz: expected finite pelvis depths > 0 m, got {tz.tolist()}; "
                         "connect BLADE's depth estimate (metres)")
    return tz[:, None]


def predict_smplx(model: PoseNet, image: Tensor, tz: Tensor | float,
                  progress: Callable[[int, int], None] | None = None) -> PoseNetResult:
    """Run the BLADE PoseNet on photos and return the most confident person per photo.

    Args:
        model: a loaded :class:`PoseNet` (``load_posenet``).
        image: [B, 3, H, W] RGB 0..1, any size; letterboxed to cfg.image_size (400) as BLADE does
            (whole photo centred on black padding, see ``preprocess.py``).
        tz: [B], [B, 1] or a scalar: pelvis depth in metres (BLADE DepthNet Tz), > 0.
        progress: progress(step, total), called 3 times; may raise to cancel.
    Returns:
        :class:`PoseNetResult` (hand poses relative to the mean hand, flat_hand_mean=False).
    Raises:
        ValueError: bad image shape or tz.
    """
    total = 3
    if progress:
        progress(0, total)
    x, box = preprocess(image, model.cfg.image_size)
    tz = _check_tz(tz, x.shape[0])
    p = next(model.parameters())
    x, tz = x.to(p.device, p.dtype), tz.to(p.device, p.dtype)
    with torch.inference_mode():
        if progress:
            progress(1, total)
        raw = model(x, tz)
        if progress:
            progress(2, total)
        params = smplx_from_raw(raw)
        parts = model.decode_boxes(raw)
    size = model.cfg.image_size
    cxcy, wh = parts["body_box"][:, :2] * size, parts["body_box"][:, 2:] * size
    corners = torch.stack((cxcy - wh / 2, cxcy + wh / 2), 1)  # B, 2, 2
    body_box = box.to_photo(corners).flatten(1)
    keypoints = box.to_photo(parts["body_keypoints"] * size)
    if progress:
        progress(3, total)
    return PoseNetResult(score=raw.score, label=raw.label, group=raw.group, body_box=body_box,
                         body_keypoints=keypoints, **params)
