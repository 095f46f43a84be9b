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
- priors without licensed data: L2 on the body pose (stronger on joints 2D keypoints barely
  see: spine, collars, neck, head, feet), knees and elbows only bend one way (hinge) and
  barely twist sideways, L2 on betas and hand poses.

Optimisation: Adam (element-wise, hence batch-independent and deterministic on CPU) in two
stages: root rotation and pelvis position on torso points, then everything. Several starts
(facing the camera, facing away, both profiles) run in the same batch; the lowest objective
wins per image.

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
from .keypoints2d import NUM_BODY, NUM_FACE, NUM_HAND, PoseKeypoints2D
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
        pose_prior, shape_prior, hand_prior: L2 weights on body pose, betas, hand poses.
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
    shape_prior: float = 0.5
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

    def __post_init__(self) -> None:
        if self.starts not in (1, 2, 3, 4):
            raise ValueError(f"FitConfig.starts: expected 1..4, got {self.starts}")
        if self.iterations < 1:
            raise ValueError(f"FitConfig.iterations: expected >= 1, got {self.iterations}")


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
                         f_range[idx] if estimate_f else None)
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
               f_range: Tensor | None = None) -> dict:
    """The optimisation over the valid frames ``idx`` (n of them) times the starts.

    ``f_range`` [n, 2] (lowest, highest) focal: estimate f within it; None: f is fixed.
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
    d_root = torch.zeros(N, 3, device=dev, requires_grad=True)
    body_pose = pose0.clone().requires_grad_(True)
    lhand = lh0.clone().requires_grad_(True)
    rhand = rh0.clone().requires_grad_(True)
    betas = betas0.clone().requires_grad_(True)
    duv = torch.zeros(N, 2, device=dev, requires_grad=True)  # pelvis shift, units of 10 % person size
    log_tz = torch.zeros(N, device=dev, requires_grad=True)
    eye = torch.eye(3, device=dev)
    joint_prior = _JOINT_PRIOR.to(dev)[:, None]
    lim_lo, lim_hi = (t.to(dev) for t in POSE_LIMITS)
    hand_on = has_hand.to(dtype) if cfg.fit_hands else torch.zeros_like(has_hand, dtype=dtype)
    tau2 = 0.01 ** 2  # unit of the data term: 1 % of the person size
    sigma2 = cfg.robust_sigma ** 2

    anneal = [1.0]  # pose-prior multiplier, lowered during stage 2 (coarse to fine)

    def forward(R_root, bp, lh, rh, b) -> Tensor:
        """[N, J, 3] body-frame joints (transl = 0)."""
        local = axis_angle_to_matrix(torch.cat([bp.reshape(N, 21, 3), lh.reshape(N, 15, 3),
                                                rh.reshape(N, 15, 3)], 1))
        rot = torch.cat([R_root[:, None], local[:, :21], eye.expand(N, 3, 3, 3), local[:, 21:]], 1)
        return skel(rot, b)

    estimate_f = f_range is not None
    if estimate_f:  # closed-form start of f: the start pose's keypoint spread at depth Tz
        with torch.no_grad():
            j0 = forward(R0, pose0, lh0 * hand_on[:, :1], rh0 * hand_on[:, 1:], betas0)
            k0 = torch.einsum("kj,bjc->bkc", W_map, j0)[:, parts["body"]]
            pc0 = torch.cat([(uv0 - pp_n) * (tz_n / f_n)[:, None],
                             tz_n[:, None]], 1)
            f_start = _closed_form_focal(k0.cpu(), body_xy.cpu(), body_ok.cpu(), f_n.cpu(),
                                         pp_n.cpu(), pc0.cpu(), j0[:, 0].cpu()).to(dev, dtype)
        log_f_lo, log_f_hi = rep(f_range).log().unbind(1)
        f_start = torch.minimum(torch.maximum(f_start, log_f_lo.exp()), log_f_hi.exp())
    else:
        f_start = f_n
    log_f = f_start.log().clone().requires_grad_(estimate_f)

    def energy(stage: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        R_root = axis_angle_to_matrix(d_root) @ R0
        lh = lhand * hand_on[:, :1]
        rh = rhand * hand_on[:, 1:]
        joints = forward(R_root, body_pose, lh, rh, betas)
        kp3 = torch.einsum("kj,bjc->bkc", W_map, joints)
        pelvis_body = joints[:, 0]
        t_z = tz_n * torch.exp(log_tz) if cfg.refine_tz else tz_n
        f_n = torch.exp(log_f)
        uv = uv0 + duv * (0.1 * scale[:, None])
        pelvis_cam = torch.cat([(uv - pp_n) * (t_z / f_n)[:, None], t_z[:, None]], 1)
        cam = kp3 - pelvis_body[:, None] + pelvis_cam[:, None]
        z = cam[..., 2:].clamp_min(0.02)
        proj = cam[..., :2] / z * f_n[:, None, None] + pp_n[:, None]
        d2 = ((proj - xy) ** 2).sum(-1) / (scale[:, None] ** 2)
        rho = _gmof(d2, sigma2) / tau2
        if stage == 1:
            data = (torso_w * rho).sum(1) / torso_w.sum(1).clamp_min(1e-6)
        else:
            data = torch.zeros(N, device=dev)
            for name, sl in parts.items():
                ww = w[:, sl]
                data = data + part_w[name] * (ww * rho[:, sl]).sum(1) / ww.sum(1).clamp_min(1e-6)
        bp = body_pose.reshape(N, 21, 3)
        prior = anneal[0] * cfg.pose_prior * (joint_prior * (bp - prior_mean.reshape(N, 21, 3)) ** 2).sum((1, 2))
        # joint limits (knees and elbows bend one way, hips barely extend, ...)
        limits = (torch.relu(lim_lo - bp) ** 2 + torch.relu(bp - lim_hi) ** 2).sum((1, 2))
        prior = prior + cfg.limit_prior * limits
        # knees and elbows are hinges: little rotation off their bending axis
        side = (bp[:, [3, 4], 1:] ** 2).sum((1, 2)) + (bp[:, [17, 18], 2] ** 2).sum(1)
        prior = prior + cfg.hinge_prior * side
        prior = prior + cfg.shape_prior * (betas ** 2).sum(1)
        prior = prior + cfg.hand_prior * ((lh ** 2).sum(1) + (rh ** 2).sum(1))
        if cfg.refine_tz:
            prior = prior + (log_tz / cfg.tz_sigma) ** 2
        if estimate_f:  # keep f inside the plausible field-of-view range
            prior = prior + 100.0 * (torch.relu(log_f_lo - log_f) ** 2
                                     + torch.relu(log_f - log_f_hi) ** 2)
        # reprojection RMS over body points, px (for the report)
        with torch.no_grad():
            okb = conf[:, parts["body"]] > 0
            e2 = ((proj[:, parts["body"]] - xy[:, parts["body"]]) ** 2).sum(-1)
            rms = torch.sqrt((e2 * okb).sum(1) / okb.sum(1).clamp_min(1))
        return data + prior, rms, t_z, pelvis_cam, pelvis_body

    n1 = max(1, int(round(cfg.iterations * cfg.stage1_fraction))) if cfg.iterations > 1 else 0
    n2 = cfg.iterations - n1
    step = 0
    every = max(1, cfg.iterations // 50)
    f_par = [log_f] if estimate_f else []
    stages = [(1, n1, [d_root, duv] + f_par),
              (2, n2, [d_root, duv, body_pose, betas, lhand, rhand] + f_par
               + ([log_tz] if cfg.refine_tz else []))]
    for stage, iters, params in stages:
        if iters <= 0:
            continue
        opt = torch.optim.Adam([{"params": [p], "lr": cfg.lr * (0.5 if p is duv else
                                                              0.2 if p is log_tz else
                                                              cfg.focal_lr / cfg.lr
                                                              if p is log_f else 1.0)}
                                for p in params])
        for k in range(iters):
            if stage == 2:  # pose prior from cfg.anneal x down to 1x over the first half
                anneal[0] = 1.0 + (cfg.anneal - 1.0) * max(0.0, 1.0 - 2.0 * k / iters)
            opt.zero_grad(set_to_none=True)
            e = energy(stage)[0]
            e.sum().backward()
            opt.step()
            step += 1
            if progress and step % every == 0:
                progress(step, cfg.iterations)
    anneal[0] = 1.0
    with torch.no_grad():
        e, rms, t_z, pelvis_cam, pelvis_body = energy(2)
        best = e.reshape(n, S).argmin(1)  # [n]
        rows = torch.arange(n, device=dev) * S + best
        R_root = axis_angle_to_matrix(d_root[rows]) @ R0[rows]
        lh = (lhand * hand_on[:, :1])[rows]
        rh = (rhand * hand_on[:, 1:])[rows]
        params = {"global_orient": matrix_to_axis_angle(R_root), "body_pose": body_pose[rows],
                  "left_hand_pose": lh, "right_hand_pose": rh,
                  "betas": torch.nn.functional.pad(betas[rows], (0, max(0, body_model.num_betas - nbetas)))}
        return {"params": {k: v.detach().cpu() for k, v in params.items()},
                "tz": t_z[rows].cpu(), "pelvis_cam": pelvis_cam[rows].cpu(),
                "pelvis_body": pelvis_body[rows].cpu(), "loss": e[rows].cpu(),
                "rms": rms[rows].cpu(), "start": best.cpu(),
                "focal": torch.exp(log_f)[rows].detach().cpu()}
