"""Stage 2 without weights: fit SMPL-X to 2D keypoints with the pelvis at a known depth Tz.

Per image the fit solves betas, global orientation, body pose (and hands when hand keypoints
exist) plus the pelvis position across the image (Tx, Ty), with the pelvis joint held at
depth Tz in the camera (optionally refined). The camera is a pinhole with the principal point
at the centre and focal f: given, or (``FitConfig.estimate_focal``) estimated: since Tz is
known, the person's metric size fixes f (f ~ pixel extent x Tz / metric extent). A closed-form
start (:func:`blade_nodes.camera.solve.keypoint_init`, the mean-shape skeleton of each start at
depth Tz) is followed by log f optimised jointly with the pose (perspective adds a weak
constraint of its own).

Objective (per image and start, all independent, so a batch gives the same results as
single images):

- 2D data: Geman-McClure of the reprojection error of each present keypoint, divided by the
  person's size in the image (the diagonal of the box around the body keypoints), weighted by
  confidence; body, each hand and the face are averaged separately. Units: squared
  residuals of 1 % of the person's size.
- truncation cue (``FitConfig.truncation_weight``): limb keypoints missing in a frame whose
  body reaches the image border are pushed out of the image (a saturating hinge).
- priors without licensed data: L2 on the body pose (stronger on joints 2D keypoints barely
  see: spine, collars, neck, head, feet), knees and elbows only bend one way (hinge) and
  barely twist sideways, L2 on betas and hand poses.

Optimisation: Adam (element-wise, hence batch-independent and deterministic on CPU) in two
stages: root rotation and pelvis position on torso points, then everything. Several starts
(facing the camera, facing away, both profiles) run in the same batch; the lowest objective
wins per image. 2D keypoints cannot tell whether a limb points toward or away from the
camera, so after most of stage 2 a limb flip search (``FitConfig.flip_search``) tries the
mirrored alternatives of each limb on the winning start (all candidates in one batch) and
keeps the ones that lower the objective, prior included.

Joints come from :class:`~blade_nodes.pose.skeleton.SparseSkeleton` (no full mesh pass).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..body.keypoints import keypoint_map
from ..body.params import SMPLXParams
from ..camera.convention import Camera, default_focal
from .keypoints2d import LIMB_SLOTS, NUM_BODY, NUM_FACE, NUM_HAND, PoseKeypoints2D
from .skeleton import SparseSkeleton, axis_angle_to_matrix, matrix_to_axis_angle

__all__ = ["FitConfig", "PoseFit", "fit_smplx_to_keypoints", "START_ORIENTS", "POSE_LIMITS",
           "neutral_params"]

# Global orientations (axis-angle, OpenCV camera frame) of the starts, in order of use.
# R_x(pi) turns SMPL-X's y-up, +z-facing body upright in the camera, facing it;
# the profiles are R_x(pi) R_y(+-pi/2).
_H = math.pi / math.sqrt(2)
START_ORIENTS = (
    (math.pi, 0.0, 0.0),    # upright, facing the camera
    (0.0, 0.0, math.pi),    # upright, facing away
    (_H, 0.0, _H),          # profile, facing image right
    (_H, 0.0, -_H),         # profile, facing image left
)

# BODY_25 slots
_TORSO = (1, 2, 5, 8, 9, 12)            # neck, shoulders, mid-hip, hips
_HEAD = (0, 15, 16, 17, 18)             # nose, eyes, ears: tell the yaw's sign
_HIPS = (8, 9, 12)
# a missing limb point (LIMB_SLOTS) may mean "outside the image" (head points are left out: a
# missing ear or eye is usually self-occlusion)
_FOOT_SLOTS = (19, 20, 21, 22, 23, 24)  # counted only where the detector reports feet
# BODY_25 limb chains, root to tip: the image border cuts a limb from its tip on, so a missing
# point with a present point further along its chain is taken as occluded, not cut off
_CHAINS = ((2, 3, 4), (5, 6, 7), (9, 10, 11, 22, 23, 24), (12, 13, 14, 19, 20, 21))

# Joint limits (radians, axis-angle components x, y, z) of the left-side and central body
# joints in SMPL-X's frame (y up, facing +z, the body's left at +x), generous anatomical
# ranges written by hand (no data); right-side joints mirror them: (x, -y, -z).
_LEFT_LIMITS = {
    1: ((-2.4, 0.6), (-0.8, 0.8), (-0.6, 1.3)),    # hip: flexion is -x, abduction +z
    4: ((0.0, 2.7), (-0.3, 0.3), (-0.2, 0.2)),     # knee: bends about +x only
    7: ((-0.9, 1.0), (-0.6, 0.6), (-0.6, 0.6)),    # ankle
    10: ((-0.4, 0.4), (-0.3, 0.3), (-0.3, 0.3)),   # foot
    13: ((-0.4, 0.4), (-0.5, 0.4), (-0.4, 0.6)),   # collar
    16: ((-1.6, 1.6), (-2.1, 1.1), (-1.8, 1.7)),   # shoulder: arm forward is -y, up is +z
    18: ((-1.2, 1.2), (-2.7, 0.05), (-0.35, 0.35)),  # elbow: bends about -y only
    20: ((-1.3, 1.3), (-0.7, 0.7), (-1.3, 1.3)),   # wrist
}
_CENTRE_LIMITS = {
    3: ((-0.4, 0.8), (-0.5, 0.5), (-0.4, 0.4)),    # spine 1-3: forward bend is +x
    6: ((-0.4, 0.6), (-0.5, 0.5), (-0.4, 0.4)),
    9: ((-0.4, 0.6), (-0.5, 0.5), (-0.4, 0.4)),
    12: ((-0.7, 0.9), (-0.9, 0.9), (-0.6, 0.6)),   # neck
    15: ((-0.6, 0.7), (-0.8, 0.8), (-0.5, 0.5)),   # head
}
_MIRROR = {1: 2, 4: 5, 7: 8, 10: 11, 13: 14, 16: 17, 18: 19, 20: 21}


def _limit_table() -> tuple[Tensor, Tensor]:
    """[21, 3] lower and upper limits of body_pose, radians."""
    lo, hi = torch.full((21, 3), -math.pi), torch.full((21, 3), math.pi)
    for j, axes in {**_LEFT_LIMITS, **_CENTRE_LIMITS}.items():
        for a, (l, h) in enumerate(axes):
            lo[j - 1, a], hi[j - 1, a] = l, h
    for left, right in _MIRROR.items():
        for a, (l, h) in enumerate(_LEFT_LIMITS[left]):
            lo[right - 1, a], hi[right - 1, a] = (l, h) if a == 0 else (-h, -l)
    return lo, hi


POSE_LIMITS = _limit_table()

# The pose prior's centre: a relaxed stance rather than the T-pose (legs slightly flexed,
# arms lowered and a little forward, elbows slightly bent). Where 2D keypoints cannot tell
# whether a limb points toward or away from the camera, this favours the forward solution,
# as people reach and step forward far more than backward.
_NATURAL = {1: (-0.25, 0.0, 0.05), 4: (0.35, 0.0, 0.0), 16: (0.0, -0.35, -0.9),
            18: (0.0, -0.6, 0.0)}


def _natural_pose() -> Tensor:
    pose = torch.zeros(21, 3)
    for j, (x, y, z) in _NATURAL.items():
        pose[j - 1] = torch.tensor([x, y, z])
        pose[_MIRROR[j] - 1] = torch.tensor([x, -y, -z])
    return pose


NATURAL_POSE = _natural_pose()
"""[21, 3] centre of the pose prior (axis-angle body_pose)."""
"""(lower [21, 3], upper [21, 3]) limits of ``body_pose`` used by the joint-limit prior."""

# per-joint pose-prior multipliers (joint j at row j - 1)
_JOINT_PRIOR = torch.ones(21)
for _j, _w in ((3, 4.0), (6, 4.0), (9, 4.0),      # spine 1-3: weakly seen
               (12, 2.0), (15, 2.0),              # neck, head
               (13, 4.0), (14, 4.0),              # collars
               (7, 2.0), (8, 2.0), (10, 4.0), (11, 4.0),  # ankles, feet
               (20, 2.0), (21, 2.0)):             # wrists
    _JOINT_PRIOR[_j - 1] = _w


@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_smplx_to_keypoints`.

    Attributes:
        iterations: Adam steps in all (``stage1_fraction`` of them on the torso first).
        starts: 1 (facing the camera), 2 (+ facing away) or 4 (+ both profiles).
        lr: Adam step for rotations (radians) and betas; the pelvis uses half of it.
        stage1_fraction: share of the iterations spent on root rotation + pelvis position.
        robust_sigma: Geman-McClure scale as a fraction of the person's size (0.1: errors
            beyond ~10 % of the body size count less and less: mislabelled points).
        hip_weight: weight of hip keypoints (SMPL-X hips sit inside the pelvis).
        hand_weight, face_weight: weight of the hand / face terms relative to the body.
        pose_prior, hand_prior: L2 weights on body pose and hand poses.
        shape_prior: L2 weight on betas (unit: one population standard deviation). 0.05 is
            the MAP weight of a unit-Gaussian shape prior against ~12 points with 2-4 px noise
            on a 400 px person (the data term is a mean in units of 1 % of the person's size).
            Measured (bench/pose_fit.py, n=256): 0.5 (the earlier value) left betas near 0 and
            cost 1.9-4.5 mm median PA-MPJPE (50 deg 49.9 -> 47.0, 90 deg 52.5 -> 50.6, whole
            body at 90 deg 42.6 -> 38.1); 0.02 measured the same as 0.05 within noise. With
            keypoints that are not the model's (bench row "detector bias": hips 30 % and
            shoulders 15 % wider apart) 0.05 still gives 50.9 mm against 56.5 (0.5) and 52.7
            (0.02): betas do not chase the offsets.
        shape_limit: betas beyond +-this many standard deviations are pushed back by the
            ``limit_prior`` hinge (a weak shape prior must not buy a 2D fit with an
            implausible body, e.g. from a detector's systematic keypoint offsets).
        limit_prior: weight of the joint-limit hinges (``POSE_LIMITS``).
        hinge_prior: L2 weight on knee and elbow rotation off their bending axis.
        natural_prior: 1 centres the pose prior on ``NATURAL_POSE`` (favours limbs forward),
            0 on the T-pose; the body pose also starts there.
        anneal: the pose prior starts this many times stronger in stage 2 and relaxes to
            1x over its first half (keeps limbs on the plausible side of depth flips).
        fit_hands: solve finger poses where hand keypoints exist.
        refine_tz: let Tz move (log-normal prior around the given Tz, ``tz_sigma``).
        tz_sigma: relative spread of the Tz prior when refining (0.25: 25 %).
        min_body_points: frames with fewer present body points are flagged invalid.
        estimate_focal: when no focal is given, estimate it (closed-form start, then log f
            optimised with the pose); False: assume 60 degrees over the longer side.
        focal_lr: Adam step of log f (0.03: 3 % per step at most).
        fov_range: (min, max) horizontal field of view in degrees over the longer side that an
            estimated focal is softly kept in.
        flip_search: after ``flip_at`` of stage 2, keep the best start per image and try depth
            flips of each limb (whole limb, lower or upper segment mirrored toward / away from
            the camera), each refined ``flip_iterations`` steps; the best option per limb is
            combined and refined against the unflipped fit, the lower objective wins.
        flip_at: share of stage 2 before the flip search (0.5..0.95: after the annealing).
        flip_iterations: refinement steps of every flip candidate (part of ``iterations``).
            Measured (bench/pose_fit.py): the candidates reach the same 2D error, and the
            unflipped fit's objective is already the lower or tied one, although flipped
            candidates are often closer to the truth: the prior, not the optimiser, sets
            the accuracy there. The search is a safety net against optimiser traps.
        truncation_weight: weight of the truncation cue in stage 2 (0: off). A limb keypoint
            the detector did not report (shoulder, elbow, wrist, hip, knee, ankle; feet only
            where the frame has a foot point) is taken as cut off by the image border and
            pushed out of the image: a hinge on how far it projects inside the image
            rectangle shrunk by ``truncation_margin``, divided by the person's size, squared,
            in the data term's units (a point just inside counts like a present point off by
            that much, times this weight), saturating (Geman-McClure, scale ``truncation_sigma``) so that points
            predicted deep inside the image, more likely occluded than cut off, barely pull.
            Not counted: a missing point with a present point further along its limb (the
            border cuts limbs from the tip), and frames where no present body point lies
            within ``truncation_band`` of the border (nothing is cut off there). Frames
            without such points are fitted exactly as with the cue off. The cue is left out
            of the objective that picks starts and limb flips (a constant penalty on an
            occluded point would bias those choices toward throwing it out of the image).
            Measured (bench/pose_fit.py): n=256, 50 deg, shape_prior 0.05: median PA-MPJPE
            49.5 -> 47.0 mm (n=64 had shown 56.1 -> 50.8 with shape_prior 0.5; medians of 64
            frames move by +-7 mm between draws); per-frame mean gain 1-4 mm. Stronger or wider
            settings (weight 0.3, sigma 0.3) made every row worse: randomly dropped in-image
            points get pushed out. Even with every missing point truly outside, the gain is
            ~3 mm: "outside the image" leaves a cut-off limb mostly unconstrained.
        truncation_margin: the rectangle is shrunk by this fraction of the image's longer side
            (detectors miss points right at the border).
        truncation_sigma: saturation scale of the cue, fraction of the person's size.
        truncation_band: a frame counts as cut off when a present body point lies within this
            fraction of the image's longer side from the border (0: every frame).
    """

    iterations: int = 200
    starts: int = 4
    lr: float = 0.05
    stage1_fraction: float = 0.25
    robust_sigma: float = 0.1
    hip_weight: float = 0.5
    hand_weight: float = 0.3
    face_weight: float = 0.1
    pose_prior: float = 0.2
    shape_prior: float = 0.05
    shape_limit: float = 3.0
    hand_prior: float = 0.05
    limit_prior: float = 100.0
    hinge_prior: float = 2.0
    natural_prior: float = 1.0
    anneal: float = 10.0
    fit_hands: bool = True
    refine_tz: bool = False
    tz_sigma: float = 0.25
    min_body_points: int = 6
    estimate_focal: bool = True
    focal_lr: float = 0.03
    fov_range: tuple[float, float] = (15.0, 140.0)
    flip_search: bool = True
    flip_at: float = 0.6
    flip_iterations: int = 10
    truncation_weight: float = 0.1
    truncation_margin: float = 0.02
    truncation_sigma: float = 0.05
    truncation_band: float = 0.05

    def __post_init__(self) -> None:
        if self.starts not in (1, 2, 3, 4):
            raise ValueError(f"FitConfig.starts: expected 1..4, got {self.starts}")
        if self.iterations < 1:
            raise ValueError(f"FitConfig.iterations: expected >= 1, got {self.iterations}")
        if not 0.5 <= self.flip_at <= 0.95:
            raise ValueError(f"FitConfig.flip_at: expected 0.5..0.95, got {self.flip_at}")
        if not self.shape_limit > 0:
            raise ValueError(f"FitConfig.shape_limit: expected > 0 standard deviations, got "
                             f"{self.shape_limit}")


@dataclass(frozen=True)
class PoseFit:
    """Result of :func:`fit_smplx_to_keypoints`.

    Attributes:
        params: SMPL-X parameters [B] (flat_hand_mean True); ``valid`` set per frame.
        camera: [B] cameras: focal (given or estimated) and principal point, translation T with
            (pelvis + T).z == Tz (the refined Tz when refining), image size.
        tz: [B] pelvis depth of the result, metres (the given one unless refined).
        loss: [B] final objective of the chosen start (0 for invalid frames).
        reprojection_px: [B] RMS 2D error over present body keypoints, pixels (NaN if invalid).
        valid: [B] bool; False: the frame could not be fitted, params are neutral.
        start: [B] int64 index of the winning start (see START_ORIENTS), -1 if invalid.
        problems: per frame None or the reason it is invalid.
    """

    params: SMPLXParams
    camera: Camera
    tz: Tensor
    loss: Tensor
    reprojection_px: Tensor
    valid: Tensor
    start: Tensor
    problems: tuple[str | None, ...] = ()


def neutral_params(batch: int, num_betas: int = 10, num_expression: int = 10) -> SMPLXParams:
    """Mean shape, zero pose, upright and facing the camera (OpenCV frame)."""
    p = SMPLXParams.zeros(batch, num_betas, num_expression)
    return p.replace(global_orient=torch.tensor(START_ORIENTS[0]).expand(batch, 3).clone())


def _maps(num_joints: int) -> tuple[Tensor, Tensor]:
    """[K, J] weights of BODY_25 + left hand + right hand + face70, and [K] availability."""
    maps = [keypoint_map(f, num_joints) for f in ("body25", "left_hand21", "right_hand21", "face70")]
    return torch.cat([m.weights for m in maps]), torch.cat([m.available for m in maps])


def _as_batch(x, b: int, name: str, dtype=torch.float32) -> Tensor:
    t = torch.as_tensor(x, dtype=dtype).reshape(-1)
    if t.numel() == 1:
        t = t.expand(b).clone()
    if t.numel() != b:
        raise ValueError(f"{name}: expected 1 or {b} values (one per image), got {t.numel()}")
    return t


def _gmof(d2: Tensor, sigma2: float) -> Tensor:
    return sigma2 * d2 / (d2 + sigma2)


@torch.enable_grad()  # an optimisation: works inside a caller's no_grad too
def fit_smplx_to_keypoints(body_model, keypoints: PoseKeypoints2D, tz, image_size=None,
                           focal=None, cfg: FitConfig = FitConfig(),
                           progress: Callable[[int, int], None] | None = None,
                           principal=None, init: SMPLXParams | None = None) -> PoseFit:
    """Fit SMPL-X to 2D keypoints per image, the pelvis at depth ``tz``.

    Args:
        body_model: a :class:`~blade_nodes.body.BodyModel` (SMPL-X or the open body).
        keypoints: parsed keypoints (``parse_pose_keypoints`` or ``PoseKeypoints2D.from_tensors``),
            B frames, image pixels.
        tz: [B] (or one number) pelvis depth, metres, > 0.
        image_size: [B, 2] or (W, H) pixels; None takes ``keypoints.image_size``.
        focal: [B] or one number, pixels; None: estimated (``cfg.estimate_focal``, reported
            in ``PoseFit.camera.focal``) or, with that off, 60 degrees over the longer side.
        cfg: :class:`FitConfig`.
        progress: progress(step, total) with total = cfg.iterations; may raise to cancel.
        principal: [B, 2] or (cx, cy) pixels; None: the image centre.
        init: SMPL-X parameters [B] to start from (e.g. a PoseNet's): one start per image,
            and the pose prior pulls toward ``init``'s body pose instead of zero.
    Returns:
        :class:`PoseFit` with B results; frames with bad input are valid=False, neutral.
    Raises:
        ValueError: sizes that disagree with the batch (a programming error, not bad data).
    """
    B = keypoints.batch_size
    dtype = torch.float32
    size = keypoints.image_size if image_size is None else \
        torch.as_tensor(image_size).to(torch.int64).reshape(-1, 2).expand(B, 2).clone()
    tz = _as_batch(tz, B, "tz")
    estimate_f = focal is None and cfg.estimate_focal
    f = default_focal(size[:, 0].float(), size[:, 1].float()) if focal is None \
        else _as_batch(focal, B, "focal")
    side = size.max(1).values.float()
    f_range = torch.stack([side / (2 * math.tan(math.radians(cfg.fov_range[1]) / 2)),
                           side / (2 * math.tan(math.radians(cfg.fov_range[0]) / 2))], 1)
    pp = size.to(dtype) / 2 if principal is None else \
        torch.as_tensor(principal, dtype=dtype).reshape(-1, 2).expand(B, 2).clone()
    problems = list(keypoints.problems) if keypoints.problems else [None] * B
    valid = keypoints.valid.clone()
    nbody = keypoints.num_body_points()
    for i in range(B):
        if problems[i] is None and int(nbody[i]) < cfg.min_body_points:
            problems[i] = (f"only {int(nbody[i])} visible body keypoints, need at least "
                           f"{cfg.min_body_points}")
        if problems[i] is None and not (math.isfinite(float(tz[i])) and float(tz[i]) > 0):
            problems[i] = f"pelvis depth Tz = {float(tz[i])} m; expected a finite value > 0"
        if problems[i] is None and not (math.isfinite(float(f[i])) and float(f[i]) > 0):
            problems[i] = f"focal length {float(f[i])} px; expected a finite value > 0"
        valid[i] = problems[i] is None
    if init is not None and init.batch_size != B:
        raise ValueError(f"init: expected {B} frames of SMPL-X parameters, got {init.batch_size}")

    nb, ne = body_model.num_betas, body_model.num_expression
    out_params = neutral_params(B, nb, ne)
    out_tz = tz.clone()
    out_pelvis = torch.stack([torch.zeros(B), torch.zeros(B), tz], 1)
    out_pelvis_body = torch.zeros(B, 3)
    loss = torch.zeros(B)
    rms = torch.full((B,), float("nan"))
    start = torch.full((B,), -1, dtype=torch.int64)
    idx = torch.nonzero(valid).flatten()
    if progress:
        progress(0, cfg.iterations)
    if len(idx):
        res = _fit_valid(body_model, keypoints, idx, tz[idx], f[idx], pp[idx], cfg, progress,
                         None if init is None else init.index(idx).to(dtype=dtype),
                         f_range[idx] if estimate_f else None, size[idx])
        for name, value in res["params"].items():
            full = getattr(out_params, name).clone()
            full[idx] = value.to(full)
            out_params = out_params.replace(**{name: full})
        out_tz[idx] = res["tz"]
        out_pelvis[idx] = res["pelvis_cam"]
        out_pelvis_body[idx] = res["pelvis_body"]
        loss[idx] = res["loss"]
        rms[idx] = res["rms"]
        start[idx] = res["start"]
        f = f.clone()
        f[idx] = res["focal"]
    if not valid.all():  # neutral frames: pelvis joint on the principal point at depth Tz
        rest = body_model.rest_joints()[0, 0].detach().cpu().float()
        bad = ~valid
        out_pelvis_body[bad] = rest * torch.tensor([1.0, -1.0, -1.0])  # rotated by R_x(pi)
        tz_safe = torch.where(torch.isfinite(tz) & (tz > 0), tz, torch.full_like(tz, 2.5))
        out_pelvis[bad] = torch.stack([tz * 0, tz * 0, tz_safe], 1)[bad]
        out_tz[bad] = tz_safe[bad]
    if progress:
        progress(cfg.iterations, cfg.iterations)
    T = out_pelvis - out_pelvis_body
    camera = Camera.create(f, T, size, principal=pp)
    return PoseFit(params=out_params.replace(valid=valid.clone()), camera=camera, tz=out_tz,
                   loss=loss, reprojection_px=rms, valid=valid, start=start,
                   problems=tuple(problems))


def _closed_form_focal(kp3: Tensor, xy: Tensor, ok: Tensor, f: Tensor, pp: Tensor,
                       pelvis_cam: Tensor, pelvis_body: Tensor) -> Tensor:
    """[N] focal from the keypoint spread, per row (the official closed form, ``keypoint_init``).

    kp3 [N, K, 3] body-frame keypoints of the start pose, xy [N, K, 2] detections, ok [N, K],
    f [N] starting focal, pp [N, 2], pelvis_cam / pelvis_body [N, 3] (T = cam - body).
    """
    from ..camera.solve import keypoint_init
    out = f.clone()
    T = pelvis_cam - pelvis_body
    for r in range(kp3.shape[0]):
        fr, _ = keypoint_init(kp3[r], xy[r], ok[r], float(f[r]), T[r], pp[r])
        out[r] = fr
    return out


def _fit_valid(body_model, kp: PoseKeypoints2D, idx: Tensor, tz: Tensor, f: Tensor, pp: Tensor,
               cfg: FitConfig, progress, init: SMPLXParams | None,
               f_range: Tensor | None = None, size: Tensor | None = None) -> dict:
    """The optimisation over the valid frames ``idx`` (n of them) times the starts.

    ``f_range`` [n, 2] (lowest, highest) focal: estimate f within it; None: f is fixed.
    ``size`` [n, 2] (W, H) pixels of each image (the truncation cue); None: the keypoints'.
    """
    dev = body_model.faces.device
    dtype = torch.float32
    skel = SparseSkeleton(body_model).to(dev)
    n = len(idx)
    S = 1 if init is not None else cfg.starts
    N = n * S
    rep = lambda t: t.to(dev).repeat_interleave(S, 0)  # noqa: E731  frame-major: row = i*S + s

    # targets [N, K, 3] and weights
    W_map, avail = _maps(skel.num_joints)
    W_map, avail = W_map.to(dev), avail.to(dev)
    target = torch.cat([kp.body[idx], kp.left_hand[idx], kp.right_hand[idx], kp.face[idx]], 1)
    target = rep(target)
    xy, conf = target[..., :2], target[..., 2] * avail.to(dtype)
    nb, nh, nf = NUM_BODY, NUM_HAND, NUM_FACE
    parts = {"body": slice(0, nb), "lhand": slice(nb, nb + nh), "rhand": slice(nb + nh, nb + 2 * nh),
             "face": slice(nb + 2 * nh, nb + 2 * nh + nf)}
    type_w = torch.ones(target.shape[1], device=dev)
    type_w[list(_HIPS)] = cfg.hip_weight
    w = conf * type_w
    has_hand = torch.stack([(conf[:, parts["lhand"]] > 0).sum(1) >= 6,
                            (conf[:, parts["rhand"]] > 0).sum(1) >= 6], 1)  # [N, 2]
    w[:, parts["lhand"]] *= has_hand[:, :1]
    w[:, parts["rhand"]] *= has_hand[:, 1:]
    body_xy = xy[:, parts["body"]]
    body_ok = conf[:, parts["body"]] > 0
    big = torch.tensor(1e9, device=dev)
    lo = torch.where(body_ok[..., None], body_xy, big).min(1).values
    hi = torch.where(body_ok[..., None], body_xy, -big).max(1).values
    scale = (hi - lo).norm(dim=-1).clamp_min(10.0)  # [N] person size, px
    part_w = {"body": 1.0, "lhand": cfg.hand_weight, "rhand": cfg.hand_weight,
              "face": cfg.face_weight}
    torso_w = torch.zeros_like(w)
    torso_w[:, list(_TORSO)] = w[:, list(_TORSO)]
    torso_w[:, list(_HEAD)] = 0.5 * w[:, list(_HEAD)]

    f_n, pp_n, tz_n = rep(f), rep(pp), rep(tz)
    # pelvis image position init: mid-hip, else mean of hips/shoulders, else all body points
    def pick(slots):
        c = conf[:, list(slots)] > 0
        s = (xy[:, list(slots)] * c[..., None]).sum(1)
        k = c.sum(1, keepdim=True)
        return s / k.clamp_min(1), k[:, 0] > 0
    uv0, ok = pick((9, 12))
    uv_torso, ok_t = pick((2, 5, 9, 12))
    uv_all, _ = pick(range(nb))
    uv0 = torch.where(ok[:, None], uv0, torch.where(ok_t[:, None], uv_torso, uv_all))

    # parameters
    nbetas = skel.num_betas
    if init is not None:
        R0 = axis_angle_to_matrix(init.global_orient.to(dev))
        pose0 = init.body_pose.to(dev).clone()
        lh0, rh0 = init.left_hand_pose.to(dev), init.right_hand_pose.to(dev)
        if not init.flat_hand_mean:
            lh0, rh0 = lh0 + body_model.hands_mean[0], rh0 + body_model.hands_mean[1]
        betas0 = torch.nn.functional.pad(init.betas.to(dev), (0, max(0, nbetas - init.betas.shape[1])))[:, :nbetas]
        prior_mean = pose0.clone()
    else:
        R0 = axis_angle_to_matrix(torch.tensor(START_ORIENTS[:S], dtype=dtype, device=dev)).repeat(n, 1, 1)
        # start from the prior's centre: limbs begin on the forward side of their flips
        pose0 = (NATURAL_POSE.reshape(1, 63) * cfg.natural_prior).to(dev).repeat(N, 1)
        lh0 = torch.zeros(N, 45, device=dev)
        rh0 = torch.zeros(N, 45, device=dev)
        betas0 = torch.zeros(N, nbetas, device=dev)
        prior_mean = (NATURAL_POSE.reshape(1, 63) * cfg.natural_prior).to(dev).expand(N, 63)
    # truncation cue: missing limb points of each row, and the image rectangle shrunk
    size = kp.image_size[idx] if size is None else size
    img = rep(size.to(dtype))
    miss = torch.zeros(N, nb, device=dev)
    miss[:, list(LIMB_SLOTS)] = 1.0
    has_feet = body_ok[:, list(_FOOT_SLOTS)].any(1, keepdim=True)
    miss[:, list(_FOOT_SLOTS)] = has_feet.to(dtype)
    miss = miss * (~body_ok).to(dtype)
    for chain in _CHAINS:
        for a, slot in enumerate(chain[:-1]):
            miss[:, slot] *= (~body_ok[:, list(chain[a + 1:])].any(1)).to(dtype)
    margin = cfg.truncation_margin * img.max(1).values
    if cfg.truncation_band > 0:  # only frames where the body reaches the image border
        band = cfg.truncation_band * img.max(1).values[:, None, None]
        near = (body_xy < band) | (body_xy > img[:, None] - band)
        miss = miss * (near.any(-1) & body_ok).any(1, keepdim=True).to(dtype)
    C = {"xy": xy, "conf": conf, "w": w, "torso_w": torso_w, "scale": scale, "uv0": uv0,
         "pp": pp_n, "tz": tz_n, "hand_on": _hand_on_rows(has_hand, cfg, dtype),
         "prior_mean": prior_mean.reshape(N, 63).contiguous(), "R0": R0,
         "miss": miss, "box_lo": margin[:, None].expand(N, 2).contiguous(),
         "box_hi": img - margin[:, None]}
    eye = torch.eye(3, device=dev)
    joint_prior = _JOINT_PRIOR.to(dev)[:, None]
    lim_lo, lim_hi = (t.to(dev) for t in POSE_LIMITS)
    parents = [int(p) for p in skel.parents[:22].tolist()]
    tau2 = 0.01 ** 2  # unit of the data term: 1 % of the person size
    sigma2 = cfg.robust_sigma ** 2
    trunc2 = cfg.truncation_sigma ** 2

    def forward(R_root, bp, lh, rh, b) -> Tensor:
        """[M, J, 3] body-frame joints (transl = 0)."""
        M = bp.shape[0]
        local = axis_angle_to_matrix(torch.cat([bp.reshape(M, 21, 3), lh.reshape(M, 15, 3),
                                                rh.reshape(M, 15, 3)], 1))
        rot = torch.cat([R_root[:, None], local[:, :21], eye.expand(M, 3, 3, 3), local[:, 21:]], 1)
        return skel(rot, b)

    hand_on = C["hand_on"]
    estimate_f = f_range is not None
    if estimate_f:  # closed-form start of f: the start pose's keypoint spread at depth Tz
        with torch.no_grad():
            j0 = forward(R0, pose0, lh0 * hand_on[:, :1], rh0 * hand_on[:, 1:], betas0)
            k0 = torch.einsum("kj,bjc->bkc", W_map, j0)[:, parts["body"]]
            pc0 = torch.cat([(uv0 - pp_n) * (tz_n / f_n)[:, None], tz_n[:, None]], 1)
            f_start = _closed_form_focal(k0.cpu(), body_xy.cpu(), body_ok.cpu(), f_n.cpu(),
                                         pp_n.cpu(), pc0.cpu(), j0[:, 0].cpu()).to(dev, dtype)
        C["log_f_lo"], C["log_f_hi"] = rep(f_range).log().unbind(1)
        f_start = torch.minimum(torch.maximum(f_start, C["log_f_lo"].exp()), C["log_f_hi"].exp())
    else:
        f_start = f_n
    P = {"d_root": torch.zeros(N, 3, device=dev), "body_pose": pose0.clone(),
         "lhand": lh0.clone(), "rhand": rh0.clone(), "betas": betas0.clone(),
         "duv": torch.zeros(N, 2, device=dev),  # pelvis shift, units of 10 % person size
         "log_tz": torch.zeros(N, device=dev), "log_f": f_start.log().clone()}

    def state(C: dict, P: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Root rotation [M, 3, 3], body-frame joints [M, J, 3], pelvis in camera [M, 3], Tz [M]."""
        R_root = axis_angle_to_matrix(P["d_root"]) @ C["R0"]
        joints = forward(R_root, P["body_pose"], P["lhand"] * C["hand_on"][:, :1],
                         P["rhand"] * C["hand_on"][:, 1:], P["betas"])
        t_z = C["tz"] * torch.exp(P["log_tz"]) if cfg.refine_tz else C["tz"]
        uv = C["uv0"] + P["duv"] * (0.1 * C["scale"][:, None])
        f_cur = torch.exp(P["log_f"])
        pelvis_cam = torch.cat([(uv - C["pp"]) * (t_z / f_cur)[:, None], t_z[:, None]], 1)
        return R_root, joints, pelvis_cam, t_z

    def energy(C: dict, P: dict, stage: int, anneal: float = 1.0) -> dict:
        M = P["d_root"].shape[0]
        _, joints, pelvis_cam, t_z = state(C, P)
        kp3 = torch.einsum("kj,bjc->bkc", W_map, joints)
        pelvis_body = joints[:, 0]
        f_cur = torch.exp(P["log_f"])
        cam = kp3 - pelvis_body[:, None] + pelvis_cam[:, None]
        z = cam[..., 2:].clamp_min(0.02)
        xy = C["xy"]
        proj = cam[..., :2] / z * f_cur[:, None, None] + C["pp"][:, None]
        d2 = ((proj - xy) ** 2).sum(-1) / (C["scale"][:, None] ** 2)
        rho = _gmof(d2, sigma2) / tau2
        if stage == 1:
            tw = C["torso_w"]
            data = (tw * rho).sum(1) / tw.sum(1).clamp_min(1e-6)
            trunc = torch.zeros(M, device=dev)
        else:
            data = torch.zeros(M, device=dev)
            trunc = torch.zeros(M, device=dev)
            for name, sl in parts.items():
                ww = C["w"][:, sl]
                data = data + part_w[name] * (ww * rho[:, sl]).sum(1) / ww.sum(1).clamp_min(1e-6)
            if cfg.truncation_weight > 0:  # missing limb points belong outside the image
                sl = parts["body"]
                pb = proj[:, sl]
                inside = torch.minimum(pb - C["box_lo"][:, None],
                                       C["box_hi"][:, None] - pb).amin(-1)  # [M, 25] px
                front = (cam[:, sl, 2] > 0.05).to(inside.dtype)
                t2 = (torch.relu(inside) / C["scale"][:, None]) ** 2
                pen = (C["miss"] * front * _gmof(t2, trunc2)).sum(1) / tau2
                trunc = cfg.truncation_weight * pen / C["w"][:, sl].sum(1).clamp_min(1e-6)
        bp = P["body_pose"].reshape(M, 21, 3)
        lh = P["lhand"] * C["hand_on"][:, :1]
        rh = P["rhand"] * C["hand_on"][:, 1:]
        prior = anneal * cfg.pose_prior * (joint_prior * (bp - C["prior_mean"].reshape(M, 21, 3))
                                           ** 2).sum((1, 2))
        # joint limits (knees and elbows bend one way, hips barely extend, ...)
        limits = (torch.relu(lim_lo - bp) ** 2 + torch.relu(bp - lim_hi) ** 2).sum((1, 2))
        prior = prior + cfg.limit_prior * limits
        # knees and elbows are hinges: little rotation off their bending axis
        side = (bp[:, [3, 4], 1:] ** 2).sum((1, 2)) + (bp[:, [17, 18], 2] ** 2).sum(1)
        prior = prior + cfg.hinge_prior * side
        prior = prior + cfg.shape_prior * (P["betas"] ** 2).sum(1)
        prior = prior + cfg.limit_prior * (torch.relu(P["betas"].abs() - cfg.shape_limit)
                                           ** 2).sum(1)
        prior = prior + cfg.hand_prior * ((lh ** 2).sum(1) + (rh ** 2).sum(1))
        if cfg.refine_tz:
            prior = prior + (P["log_tz"] / cfg.tz_sigma) ** 2
        if estimate_f:  # keep f inside the plausible field-of-view range
            lf = P["log_f"]
            prior = prior + 100.0 * (torch.relu(C["log_f_lo"] - lf) ** 2
                                     + torch.relu(lf - C["log_f_hi"]) ** 2)
        # reprojection RMS over body points, px (for the report)
        with torch.no_grad():
            okb = C["conf"][:, parts["body"]] > 0
            e2 = ((proj[:, parts["body"]] - xy[:, parts["body"]]) ** 2).sum(-1)
            rms = torch.sqrt((e2 * okb).sum(1) / okb.sum(1).clamp_min(1))
        # "sel" (picks starts and limb flips) leaves the truncation cue out: a missing point
        # may be occluded rather than cut off, and a constant penalty on it would bias the
        # discrete choices toward poses that throw such points out of the image
        return {"e": data + prior + trunc, "sel": data + prior, "rms": rms, "tz": t_z, "pelvis_cam": pelvis_cam,
                "pelvis_body": pelvis_body}

    n1 = max(1, int(round(cfg.iterations * cfg.stage1_fraction))) if cfg.iterations > 1 else 0
    n2 = cfg.iterations - n1
    counter = [0]
    every = max(1, cfg.iterations // 50)
    lrs = {"duv": 0.5 * cfg.lr, "log_tz": 0.2 * cfg.lr, "log_f": cfg.focal_lr}
    stage2 = ["d_root", "duv", "body_pose", "betas", "lhand", "rhand"] + \
        (["log_f"] if estimate_f else []) + (["log_tz"] if cfg.refine_tz else [])

    def run(C: dict, P: dict, stage: int, iters: int, names: list[str], A: dict,
            anneal_iters: int = 0) -> None:
        """Adam on P[names] (in place). ``A``: its moments per name (row-aligned with P, so
        rows can be selected or repeated mid-way) and step count "t". The pose prior anneals
        over ``anneal_iters`` steps."""
        b1, b2, eps = 0.9, 0.999, 1e-8
        for k in names:
            A.setdefault(k, (torch.zeros_like(P[k]), torch.zeros_like(P[k])))
        for it in range(iters):
            a = 1.0 + (cfg.anneal - 1.0) * max(0.0, 1.0 - it / anneal_iters) if anneal_iters \
                else 1.0
            for k in names:
                P[k] = P[k].detach().requires_grad_(True)
            e = energy(C, P, stage, a)["e"].sum()
            grads = torch.autograd.grad(e, [P[k] for k in names])
            A["t"] = t = A.get("t", 0) + 1
            with torch.no_grad():
                for k, g in zip(names, grads):
                    m, v = A[k]
                    m = m.mul(b1).add_(g, alpha=1 - b1)
                    v = v.mul(b2).addcmul_(g, g, value=1 - b2)
                    A[k] = (m, v)
                    denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(eps)
                    P[k] = P[k].detach() - lrs.get(k, cfg.lr) / (1 - b1 ** t) * m / denom
            counter[0] += 1
            if progress and counter[0] % every == 0:
                progress(min(counter[0], cfg.iterations), cfg.iterations)
        for k in names:
            P[k] = P[k].detach()

    def take_adam(A: dict, rows: Tensor) -> dict:
        return {k: v if k == "t" else (v[0][rows], v[1][rows]) for k, v in A.items()}

    def take(D: dict, rows: Tensor) -> dict:
        return {k: v[rows].detach() for k, v in D.items()}

    run(C, P, 1, n1, ["d_root", "duv"] + (["log_f"] if estimate_f else []), {})
    # stage 2: the pose prior relaxes from cfg.anneal x to 1x over the first half
    k_flip = min(cfg.flip_iterations, n2 // 4) if cfg.flip_search else 0
    n2a = n2 if not k_flip else max(1, int(round(n2 * cfg.flip_at)))
    half = max(1, n2 // 2)
    A: dict = {}
    run(C, P, 2, n2a, stage2, A, anneal_iters=half)
    start_of = torch.arange(S, device=dev).repeat(n)
    with torch.no_grad():
        e = energy(C, P, 2)["sel"]
        best = e.reshape(n, S).argmin(1)
    if k_flip:
        # keep the best start per image, search limb depth flips, refine on the winners
        rows = torch.arange(n, device=dev) * S + best
        C, P, A = take(C, rows), take(P, rows), take_adam(A, rows)
        start_of = start_of[rows]
        Cc, Pc = _flip_candidates(C, P, state, parents, n)
        k = Pc["body_pose"].shape[0] // n
        Ac = take_adam(A, torch.arange(n, device=dev).repeat(k))
        run(Cc, Pc, 2, k_flip, stage2, Ac)
        with torch.no_grad():
            ec = energy(Cc, Pc, 2)["sel"].reshape(-1, n)  # [1 + 3 * limbs, n]
            P2 = {k: v.clone() for k, v in take(Pc, torch.arange(n, device=dev)).items()}
            bp = P2["body_pose"].reshape(n, 21, 3)
            cand_bp = Pc["body_pose"].reshape(-1, n, 21, 3)
            for li, (js, je, _, _) in enumerate(_LIMBS):
                opts = torch.tensor([0] + [1 + 3 * li + o for o in range(3)], device=dev)
                pick_ = opts[ec[opts].argmin(0)]  # [n]
                sel = cand_bp[pick_, torch.arange(n, device=dev)]
                bp[:, js - 1], bp[:, je - 1] = sel[:, js - 1], sel[:, je - 1]
            P2["body_pose"] = bp.reshape(n, 63)
            P = {k: torch.cat([take(Pc, torch.arange(n, device=dev))[k], P2[k]]) for k in P}
            C = {k: torch.cat([v, v]) for k, v in C.items()}
            A = take_adam(Ac, torch.cat([torch.arange(n, device=dev)] * 2))
        run(C, P, 2, n2 - n2a - k_flip, stage2, A)
        with torch.no_grad():
            out = energy(C, P, 2)
            pick2 = out["sel"].reshape(2, n).argmin(0)
            rows = pick2 * n + torch.arange(n, device=dev)
            start_of = start_of.repeat(2)
    else:
        run(C, P, 2, n2 - n2a, stage2, A)
        with torch.no_grad():
            out = energy(C, P, 2)
            best = out["sel"].reshape(n, S).argmin(1)  # [n]
            rows = torch.arange(n, device=dev) * S + best
    if progress:
        progress(min(counter[0], cfg.iterations), cfg.iterations)
    with torch.no_grad():
        R_root = axis_angle_to_matrix(P["d_root"][rows]) @ C["R0"][rows]
        lh = (P["lhand"] * C["hand_on"][:, :1])[rows]
        rh = (P["rhand"] * C["hand_on"][:, 1:])[rows]
        params = {"global_orient": matrix_to_axis_angle(R_root),
                  "body_pose": P["body_pose"][rows], "left_hand_pose": lh, "right_hand_pose": rh,
                  "betas": torch.nn.functional.pad(P["betas"][rows],
                                                   (0, max(0, body_model.num_betas - nbetas)))}
        return {"params": {k: v.detach().cpu() for k, v in params.items()},
                "tz": out["tz"][rows].cpu(), "pelvis_cam": out["pelvis_cam"][rows].cpu(),
                "pelvis_body": out["pelvis_body"][rows].cpu(), "loss": out["e"][rows].cpu(),
                "rms": out["rms"][rows].cpu(), "start": start_of[rows].cpu(),
                "focal": torch.exp(P["log_f"])[rows].cpu()}


# (upper joint, hinge joint, end joint, local hinge axis) of the four limbs
_LIMBS = ((16, 18, 20, 1), (17, 19, 21, 1), (1, 4, 7, 0), (2, 5, 8, 0))


def _hand_on_rows(has_hand: Tensor, cfg: FitConfig, dtype) -> Tensor:
    """[N, 2] 1 where a hand's pose is solved (enough hand points and ``cfg.fit_hands``)."""
    return has_hand.to(dtype) if cfg.fit_hands else torch.zeros_like(has_hand, dtype=dtype)


def _global_rotations(R_root: Tensor, body_pose: Tensor, parents: list[int]) -> list[Tensor]:
    """Camera-frame rotations [M, 3, 3] of body joints 0..21."""
    local = axis_angle_to_matrix(body_pose.reshape(-1, 21, 3))
    G = [R_root]
    for j in range(1, 22):
        G.append(G[parents[j]] @ local[:, j - 1])
    return G


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)


def _depth_flip(a: Tensor, b: Tensor) -> Tensor:
    """Unit direction from ``a`` to the other point of ``b``'s camera ray at ``b``'s distance
    from ``a`` (the perspective depth flip of segment a->b; [M, 3] camera points). Without
    such a point, the orthographic mirror."""
    r = _unit(b)
    t = 2 * (r * a).sum(-1, keepdim=True) - b.norm(dim=-1, keepdim=True)
    d = _unit(b - a)
    ortho = _unit(d - 2 * (d * r).sum(-1, keepdim=True) * r)
    return torch.where(t > 0.05, _unit(t * r - a), ortho)


def _rotation_between(a: Tensor, b: Tensor) -> Tensor:
    """[M, 3, 3] smallest rotation taking unit vectors a to b [M, 3]."""
    axis = torch.cross(a, b, dim=-1)
    angle = torch.atan2(axis.norm(dim=-1), (a * b).sum(-1))
    return axis_angle_to_matrix(_unit(axis) * angle[:, None])


def _reflect(G: Tensor, point: Tensor, child: Tensor, axis: int) -> Tensor:
    """Depth flip of a segment's frame: reflect ``G`` [M, 3, 3] about the plane through
    ``point`` [M, 3] (camera) perpendicular to the camera ray, then flip the local ``axis``
    (the hinge below it), which keeps a proper rotation and the hinge's bend; a last small
    rotation puts the segment's end ``child`` [M, 3] back on its own camera ray."""
    r = _unit(point)
    Mr = torch.eye(3, device=G.device, dtype=G.dtype) - 2 * r[:, :, None] * r[:, None, :]
    D = torch.ones(3, device=G.device, dtype=G.dtype)
    D[axis] = -1
    F = Mr @ G * D  # (Mr G) diag(D)
    bone = G.transpose(1, 2) @ _unit(child - point)[..., None]  # the segment, local frame
    return _rotation_between((F @ bone)[..., 0], _depth_flip(point, child)) @ F


def _hinge_flip(Gs: Tensor, Ge: Tensor, Xs: Tensor, Xe: Tensor, Xw: Tensor, je: int,
                axis: int, samples: int = 64) -> tuple[Tensor, Tensor]:
    """Depth flip of the lower segment of a hinged limb (forearm, shin), the hinge kept.

    The lower segment's end moves to the other point of its camera ray at the same distance
    from the hinge joint (depth flip); the upper segment keeps its direction and twists about
    it (``twist`` [M, 3], local axis-angle applied after the upper joint's rotation), the
    hinge takes the bend (``bend`` [M, 3], a pure rotation about its axis within
    ``POSE_LIMITS``) that puts the lower segment there.
    Gs, Ge [M, 3, 3]: camera-frame rotations of the upper and hinge joints; Xs, Xe, Xw [M, 3]:
    camera positions of the upper, hinge and end joints.
    """
    unit = _unit
    u, d = unit(Xe - Xs), unit(Xw - Xe)
    d_new = _depth_flip(Xe, Xw)
    b = (Gs.transpose(1, 2) @ u[..., None])[..., 0]        # upper bone, upper-joint frame
    v = (Gs.transpose(1, 2) @ d_new[..., None])[..., 0]    # wanted lower bone, same frame
    q = (Ge.transpose(1, 2) @ d[..., None])[..., 0]        # lower bone in the hinge's frame
    lo, hi = (float(t[je - 1, axis]) for t in POSE_LIMITS)
    theta = torch.linspace(lo, hi, samples, device=Gs.device, dtype=Gs.dtype)
    aa = torch.zeros(samples, 3, device=Gs.device, dtype=Gs.dtype)
    aa[:, axis] = theta
    c = torch.einsum("sij,mj->msi", axis_angle_to_matrix(aa), q)  # [M, S, 3] bent lower bones
    # the twist about b keeps the angle to b: pick the bend whose angle matches
    k = ((c * b[:, None]).sum(-1) - (v * b).sum(-1, keepdim=True)).abs().argmin(1)
    ck = c[torch.arange(len(k)), k]
    perp = lambda x: x - (x * b).sum(-1, keepdim=True) * b  # noqa: E731
    p1, p2 = unit(perp(ck)), unit(perp(v))
    phi = torch.atan2((b * torch.cross(p1, p2, dim=-1)).sum(-1), (p1 * p2).sum(-1))
    bend = torch.zeros_like(Xs)
    bend[:, axis] = theta[k]
    return b * phi[:, None], bend


def _flip_candidates(C: dict, P: dict, state, parents: list[int], n: int) -> tuple[dict, dict]:
    """Rows [original; per limb: whole limb flipped, lower segment flipped, upper segment
    flipped] x n images (blocks of n rows), each limb changed alone.

    A depth flip reflects a segment about the plane through its upper joint perpendicular to
    the camera ray: its image stays put (up to perspective), it swaps toward / away from
    the camera. Whole limb: the upper joint's frame is reflected (the hinge below keeps its
    angle); lower: the lower joint's frame; upper: both, which puts the lower segment back.
    """
    def flips(P: dict, kind: str) -> list[Tensor]:
        with torch.no_grad():
            R_root, joints, pelvis_cam, _ = state(C, P)
            X = joints - joints[:, :1] + pelvis_cam[:, None]
            G = _global_rotations(R_root, P["body_pose"], parents)
            out = []
            for js, je, jw, axis in _LIMBS:
                bp = P["body_pose"].reshape(n, 21, 3).clone()
                if kind == "whole":
                    Gs = _reflect(G[js], X[:, js], X[:, je], axis)
                    bp[:, js - 1] = matrix_to_axis_angle(G[parents[js]].transpose(1, 2) @ Gs)
                else:  # lower segment about the hinge: upper twist + new bend
                    twist, bend = _hinge_flip(G[js], G[je], X[:, js], X[:, je], X[:, jw], je, axis)
                    bp[:, js - 1] = matrix_to_axis_angle(
                        axis_angle_to_matrix(bp[:, js - 1]) @ axis_angle_to_matrix(twist))
                    bp[:, je - 1] = bend
                out.append(bp.reshape(n, 63))
            return out

    whole = flips(P, "whole")
    lower = flips(P, "lower")
    upper = []
    for li, bp in enumerate(whole):  # lower-segment flip of the whole-limb flip
        upper.append(flips({**P, "body_pose": bp}, "lower")[li])
    poses = [P["body_pose"]]
    for li in range(len(_LIMBS)):
        poses += [whole[li], lower[li], upper[li]]
    k = len(poses)
    Cc = {key: v.repeat(k, *([1] * (v.ndim - 1))) for key, v in C.items()}
    Pc = {key: v.repeat(k, *([1] * (v.ndim - 1))) for key, v in P.items()}
    Pc["body_pose"] = torch.cat(poses)
    return Cc, Pc
