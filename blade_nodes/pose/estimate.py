"""Stage 2 entry point: SMPL-X per image from 2D keypoints and/or the BLADE PoseNet, with Tz.

``estimate_pose`` is what the ``BladeEstimatePose`` node calls:

- keypoints only: :func:`~blade_nodes.pose.fit.fit_smplx_to_keypoints` (no weights needed);
- PoseNet only: the network's SMPL-X, the pelvis placed on the centre of its person box at
  depth Tz (stage 3 solves the camera properly);
- both: the PoseNet result refined on the keypoints (one start, pose prior around it).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from ..body.params import SMPLXParams
from ..depth.tz import tz_values
from ..camera.convention import Camera, default_focal
from .fit import FitConfig, PoseFit, fit_smplx_to_keypoints
from .keypoints2d import parse_pose_keypoints

__all__ = ["estimate_pose", "PoseEstimate", "PoseNetUnavailable", "tz_values", "report",
           "partial_view_note"]


class PoseNetUnavailable(ValueError):
    """The PoseNet port is not installed in this copy of the pack."""


@dataclass(frozen=True)
class PoseEstimate:
    """Result of :func:`estimate_pose`.

    Attributes:
        fit: the :class:`PoseFit` (params [B] with ``valid``, camera [B], tz [B], errors).
        source: "keypoints", "posenet" or "posenet+keypoints".
        notes: remarks for the user (rescaled canvas, reused keypoint frame, ...).
    """

    fit: PoseFit
    source: str
    notes: tuple[str, ...] = ()


def _posenet_predict(posenet, image: Tensor, tz: Tensor, progress) -> tuple[SMPLXParams, Tensor]:
    """Call site of the PoseNet port (``blade_nodes/pose/posenet``).

    Returns SMPL-X params (hands relative to the mean hand) and the person boxes [B, 4] px.
    """
    # --- PoseNet call site: blade_nodes.pose.posenet.predict_smplx(model, image, tz, progress)
    try:
        module = importlib.import_module(f"{__package__}.posenet")
        predict = getattr(module, "predict_smplx")
    except (ImportError, AttributeError) as e:
        raise PoseNetUnavailable(
            "PoseNet support not available yet in this version of blade-nodes "
            f"({type(e).__name__}: {e}). Disconnect 'posenet' and connect 'keypoints' "
            "(POSE_KEYPOINT from DWPose / OpenPose) instead.") from None
    res = predict(posenet, image, tz, progress=progress)
    return res.params(), res.body_box.float().cpu()


def estimate_pose(body_model, image: Tensor, tz, keypoints: Any = None, mask: Tensor | None = None,
                  posenet=None, person_index: int = 0, focal=None, principal=None,
                  cfg: FitConfig = FitConfig(),
                  progress: Callable[[int, int], None] | None = None) -> PoseEstimate:
    """SMPL-X parameters and a camera per image, the pelvis at depth Tz.

    Args:
        body_model: :class:`~blade_nodes.body.BodyModel`.
        image: [B, 3, H, W] RGB 0..1.
        tz: BLADE_TZ (``.tz`` [B] metres), a [B] tensor or a number.
        keypoints: POSE_KEYPOINT (list of per-frame dicts, or one dict) or None.
        mask: [B, H, W] person mask 0..1 or None (used to pick the person when
            ``person_index`` is -1).
        posenet: a loaded BLADE PoseNet or None.
        person_index: which person of the keypoints (0-based), -1: automatic.
        focal: [B] or one number, pixels, or None: estimated by the keypoint fit
            (``cfg.estimate_focal``; PoseNet only: 60 degrees over the longer side).
        principal: [B, 2] or (cx, cy) pixels, or None (image centre).
        cfg: fit settings.
        progress: progress(step, total); may raise to cancel.
    Returns:
        :class:`PoseEstimate`; frames that cannot be fitted are valid=False and neutral.
    Raises:
        ValueError: neither keypoints nor posenet, bad image/tz, or PoseNet unavailable.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected [B, 3, H, W], got {tuple(image.shape)}")
    B, _, H, W = image.shape
    if keypoints is None and posenet is None:
        raise ValueError("BLADE Estimate Pose needs 2D keypoints or a PoseNet: connect "
                         "'keypoints' (POSE_KEYPOINT from a DWPose / OpenPose estimator of "
                         "comfyui_controlnet_aux) or 'posenet' (BLADE Load PoseNet)")
    tzv = tz_values(tz, B)
    if mask is not None and mask.ndim == 2:
        mask = mask[None]
    init, box, notes = None, None, []
    if posenet is not None:
        init, box = _posenet_predict(posenet, image, tzv, None)
    if keypoints is None:
        return PoseEstimate(_posenet_only(body_model, init, box, tzv, (W, H), focal, principal),
                            "posenet")
    kp = parse_pose_keypoints(keypoints, (W, H), batch_size=B, person_index=person_index,
                              mask=mask, min_body_points=cfg.min_body_points)
    notes.extend(kp.notes)
    if init is not None:
        cfg = FitConfig(**{**cfg.__dict__, "starts": 1})
    fit = fit_smplx_to_keypoints(body_model, kp, tzv, focal=focal, principal=principal, cfg=cfg,
                                 progress=progress, init=init)
    if init is not None and not fit.valid.all():  # frames without keypoints keep the PoseNet's
        bad = ~fit.valid
        pn = _posenet_only(body_model, init, box, tzv, (W, H), focal, principal)
        merged = {n: torch.where(bad[:, None], getattr(pn.params, n).to(getattr(fit.params, n)),
                                 getattr(fit.params, n)) for n in fit.params.as_dict()
                  if getattr(pn.params, n).shape == getattr(fit.params, n).shape}
        params = fit.params.replace(**merged, valid=torch.ones(B, dtype=torch.bool))
        cam = fit.camera.with_(translation=torch.where(bad[:, None], pn.camera.translation,
                                                       fit.camera.translation))
        notes.append(f"{int(bad.sum())} frame(s) without usable keypoints keep the PoseNet result")
        fit = PoseFit(params, cam, fit.tz, fit.loss, fit.reprojection_px,
                      torch.ones(B, dtype=torch.bool), fit.start, fit.problems)
    if init is None:
        notes.extend(partial_view_note(kp.num_limb_points(), fit.valid))
    return PoseEstimate(fit, "keypoints" if init is None else "posenet+keypoints", tuple(notes))


PARTIAL_VIEW_LIMB_POINTS = 10
"""Frames with fewer of the 12 limb points than this get a partial-view note."""


def partial_view_note(limb_points: Tensor, valid: Tensor) -> list[str]:
    """A note naming the fitted frames with limbs out of view (``limb_points`` [B] of 12).

    Their unseen limbs come from the pose prior, not from the image: bench/pose_fit.py
    measures a median PA-MPJPE about twice as large there as with the whole body in view.
    """
    part = (valid & (limb_points < PARTIAL_VIEW_LIMB_POINTS)).nonzero().flatten().tolist()
    if not part:
        return []
    shown = ", ".join(f"{i} ({int(limb_points[i])}/12)" for i in part[:8])
    more = f" and {len(part) - 8} more" if len(part) > 8 else ""
    return [f"frame(s) {shown}{more}: limbs out of view (limb points seen / 12); their pose "
            f"is the prior's guess, not measured - frame the whole body, or connect a PoseNet"]


def _posenet_only(body_model, params: SMPLXParams, box: Tensor, tz: Tensor, size, focal,
                  principal) -> PoseFit:
    """PoseNet params with the pelvis on the centre of the person box at depth Tz."""
    B = params.batch_size
    W, H = size
    f = default_focal(W, H).expand(B).clone() if focal is None else \
        torch.as_tensor(focal, dtype=torch.float32).reshape(-1).expand(B).clone()
    pp = torch.tensor([[W / 2, H / 2]]).expand(B, 2).clone() if principal is None else \
        torch.as_tensor(principal, dtype=torch.float32).reshape(-1, 2).expand(B, 2).clone()
    centre = (box[:, :2] + box[:, 2:]) / 2
    pelvis_cam = torch.cat([(centre - pp) * (tz / f)[:, None], tz[:, None]], 1)
    with torch.no_grad():
        pelvis = body_model(params).joints[:, 0].detach().cpu().float()
    cam = Camera.create(f, pelvis_cam - pelvis, torch.tensor([[W, H]]).expand(B, 2), principal=pp)
    ones = torch.ones(B, dtype=torch.bool)
    return PoseFit(params.replace(valid=ones), cam, tz, torch.zeros(B),
                   torch.full((B,), float("nan")), ones, torch.full((B,), -1), (None,) * B)


def report(est: PoseEstimate) -> str:
    """A short text per batch: source, frames fitted, reprojection error, problems."""
    fit = est.fit
    B = int(fit.valid.shape[0])
    lines = [f"pose from {est.source}: {int(fit.valid.sum())}/{B} frames fitted"]
    ok = fit.valid & torch.isfinite(fit.reprojection_px)
    if ok.any():
        lines.append(f"body keypoint error (RMS px): median {fit.reprojection_px[ok].median():.1f}, "
                     f"max {fit.reprojection_px[ok].max():.1f}")
    for i, p in enumerate(fit.problems):
        if p:
            lines.append(f"frame {i}: {p} (neutral body, valid = False)")
    lines.extend(est.notes)
    return "\n".join(lines)
