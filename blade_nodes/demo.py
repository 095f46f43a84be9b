"""The main job: a synthetic close-range photo through every stage, scored against truth.

``python -m blade_nodes demo --out DIR`` builds the open body if needed, renders a
close-range wide-angle "photo" of it in a natural pose (pelvis at 0.6-0.9 m, horizontal
field of view about 95 degrees) with its mask and 2D keypoints (2 px noise), then runs

1. Tz: no depth weights can be downloaded here, so the demo types a guess (1.0 m) as an
   artist would (method ``manual``); later stages refine it;
2. pose: the Tz-conditioned SMPL-X fit to the keypoints (stage 2 without weights);
3. camera: f, Tx, Ty (and Tz) solved against the mask silhouette;
4. renders: depth, normal, OpenPose, overlay, parts; a GLB with the solved camera,

and writes ``metrics.json`` with the errors against the ground truth.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .body import SMPLXParams, load_body_model
from .camera import Camera, focal_from_fov

WIDTH, HEIGHT = 512, 640
HFOV_DEG = 95.0
TZ_GUESS_M = 1.0
KEYPOINT_NOISE_PX = 2.0


@dataclass(frozen=True)
class Scene:
    """A synthetic photo with its ground truth.

    Attributes:
        image: [1, 3, H, W] 0..1 RGB photo.
        mask: [1, H, W] 0/1 person mask.
        pose_keypoint: POSE_KEYPOINT list (one frame), pixels, with keypoint noise.
        params: true SMPL-X parameters. camera: true camera. tz: [1] true pelvis depth, m.
    """
    image: Tensor
    mask: Tensor
    pose_keypoint: list
    params: SMPLXParams
    camera: Camera
    tz: Tensor


def _axis_angle(*rotations: tuple[str, float]) -> list[float]:
    from scipy.spatial.transform import Rotation
    r = Rotation.identity()
    for axis, angle in rotations:
        r = r * Rotation.from_euler(axis, angle)
    return r.as_rotvec().tolist()


def natural_pose(seed: int = 0) -> SMPLXParams:
    """A relaxed standing pose facing the camera (OpenCV frame), slightly turned."""
    rng = np.random.default_rng(seed)
    j = lambda s: s  # noqa: E731 (body_pose index of SMPL-X joint s is s - 1)
    body = np.zeros((21, 3))
    jitter = lambda a: a + rng.uniform(-0.1, 0.1)  # noqa: E731
    body[j(1) - 1] = [jitter(-0.35), 0, 0.05]       # left hip: step forward
    body[j(4) - 1] = [jitter(0.55), 0, 0]           # left knee bent
    body[j(2) - 1] = [jitter(0.10), 0, -0.05]       # right hip
    body[j(5) - 1] = [jitter(0.15), 0, 0]           # right knee
    body[j(16) - 1] = [0, -0.2, jitter(-1.05)]      # left shoulder: arm down, a bit forward
    body[j(17) - 1] = [0, 0.5, jitter(1.0)]         # right shoulder
    body[j(18) - 1] = [0, jitter(-0.9), 0]          # left elbow bent forward
    body[j(19) - 1] = [0, jitter(1.5), 0]           # right elbow bent more
    body[j(15) - 1] = [0.1, jitter(0.25), 0]        # head turned
    body[j(3) - 1] = [0.08, 0.05, 0]
    orient = _axis_angle(("x", math.pi), ("y", float(rng.uniform(0.15, 0.35))))
    p = SMPLXParams.zeros(1)
    return p.replace(body_pose=torch.tensor(body, dtype=torch.float32).reshape(1, 63),
                     global_orient=torch.tensor([orient], dtype=torch.float32),
                     betas=torch.tensor(rng.uniform(-0.8, 0.8, (1, 10)), dtype=torch.float32)
                     * (torch.arange(10) < 4))


def _background(h: int, w: int, seed: int) -> Tensor:
    """A soft room-like backdrop: vertical gradient, floor, faint texture."""
    rng = np.random.default_rng(seed + 1)
    y = np.linspace(0, 1, h)[:, None, None]
    wall = np.array([0.78, 0.74, 0.68]) * (1 - 0.25 * y) + 0.02 * rng.standard_normal((h, w, 1))
    floor = (y > 0.82) * np.array([-0.25, -0.22, -0.18])
    img = np.clip(wall + floor, 0, 1).astype(np.float32)
    return torch.from_numpy(img).permute(2, 0, 1)[None]


def make_scene(body_model, seed: int = 0) -> Scene:
    """Render the close-range synthetic photo (pelvis at 0.6-0.9 m, HFoV 95 degrees)."""
    from .render.render import RenderConfig, render_maps
    rng = np.random.default_rng(seed)
    params = natural_pose(seed)
    tz = float(rng.uniform(0.6, 0.9))
    f = focal_from_fov(HFOV_DEG, WIDTH)
    with torch.no_grad():
        out = body_model(params)
    v, pelvis = out.vertices[0], out.joints[0, 0]
    # centre the body's box in the picture, pelvis at depth tz
    t = torch.tensor([0.0, 0.0, tz - float(pelvis[2])])
    for _ in range(3):
        pc = v + t
        uv = pc[:, :2] / pc[:, 2:] * f
        centre = (uv.min(0).values + uv.max(0).values) / 2
        t[:2] -= centre * float(pc[:, 2].median()) / f
    t[:2] += torch.tensor(rng.uniform(-0.03, 0.03, 2), dtype=torch.float32)
    camera = Camera.create([f], t[None], [WIDTH, HEIGHT])
    bg = _background(HEIGHT, WIDTH, seed)
    res = render_maps(body_model, params, camera, image=bg,
                      cfg=RenderConfig(overlay_opacity=1.0, draw_face=False))
    photo = res.overlay
    mask = res.mask
    kps = json.loads(json.dumps(res.pose_keypoint))
    for frame in kps:
        for person in frame["people"]:
            for key in ("pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d"):
                vals = person.get(key)
                if not vals:
                    continue
                for i in range(0, len(vals), 3):
                    if vals[i + 2] >= 1.0:
                        vals[i] += float(rng.normal(0, KEYPOINT_NOISE_PX))
                        vals[i + 1] += float(rng.normal(0, KEYPOINT_NOISE_PX))
    return Scene(photo, mask, kps, params, camera,
                 torch.tensor([float(pelvis[2]) + float(t[2])]))


def _save_png(path: Path, img: Tensor) -> None:
    """[3, H, W] or [H, W] 0..1 -> 8-bit PNG."""
    from PIL import Image
    a = img.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    arr = a.permute(1, 2, 0).numpy() if a.ndim == 3 else a.numpy()
    Image.fromarray(arr).save(path)


def _save_rgba(path: Path, img: Tensor, mask: Tensor) -> None:
    from PIL import Image
    rgb = img.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    a = mask.detach().clamp(0, 1).mul(255).round().to(torch.uint8).numpy()[..., None]
    Image.fromarray(np.concatenate([rgb, a], -1), "RGBA").save(path)


def joint_errors(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """MPJPE (pelvis-aligned), PA-MPJPE and camera-space error, mm, on [22, 3] joints."""
    from .pose.metrics import joint_errors as batch_errors
    p, g = torch.as_tensor(pred, dtype=torch.float64)[None], torch.as_tensor(gt, dtype=torch.float64)[None]
    mpjpe, pa = batch_errors(p, g)
    return {
        "mpjpe_mm": float(mpjpe[0]),
        "pa_mpjpe_mm": float(pa[0]),
        "camera_space_joint_err_mm": float(np.linalg.norm(pred - gt, axis=1).mean() * 1000),
    }


@dataclass(frozen=True)
class StageRun:
    """Stages 2-4 from one Tz: the results and their errors against the truth."""
    params: SMPLXParams
    camera: Camera
    fit_tz: float
    iou: float
    metrics: dict
    seconds: dict


def run_stages(body, scene: Scene, tz, refine_tz: bool) -> StageRun:
    """Pose (keypoint fit at depth ``tz``), then the camera solve against the mask."""
    from .camera.solve import SolveConfig, solve_camera_body
    from .pose.estimate import estimate_pose
    from .pose.fit import FitConfig

    times = {}
    t0 = time.perf_counter()
    est = estimate_pose(body, scene.image, tz, keypoints=scene.pose_keypoint,
                        cfg=FitConfig(refine_tz=refine_tz))
    fit = est.fit
    times["pose_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    solved = solve_camera_body(body, fit.params, scene.mask, fit.tz,
                               cfg=SolveConfig(opt_tz=refine_tz, opt_pose=True, iterations=100))
    times["camera_s"] = time.perf_counter() - t0
    params = solved.params if solved.params is not None else fit.params
    cam = solved.camera
    with torch.no_grad():
        gt_j = (body(scene.params).joints[0, :22] + scene.camera.translation[0]).double().numpy()
        pj = body(params).joints[0, :22]
        pr_j = (pj + cam.translation[0]).double().numpy()
        pelvis_z = float(pj[0, 2] + cam.translation[0, 2])
    errs = joint_errors(pr_j, gt_j)
    metrics = {
        "tz_err_m": abs(pelvis_z - float(scene.tz[0])),
        "f_err_pct": abs(float(cam.focal[0]) / float(scene.camera.focal[0]) - 1) * 100,
        "miou": float(solved.iou.mean()),
        **errs,
        "txy_err_mm": float(torch.linalg.norm(cam.translation[0, :2]
                                              - scene.camera.translation[0, :2])) * 1000,
        "pose_reprojection_px": float(fit.reprojection_px[0]),
        "estimate": {"tz_m": pelvis_z, "focal_px": float(cam.focal[0]),
                     "pose_focal_px": float(fit.camera.focal[0]), "pose_tz_m": float(fit.tz[0])},
    }
    return StageRun(params, cam, float(fit.tz[0]), float(solved.iou[0]), metrics, times)


def run_demo(out: Path, seed: int = 0, log=print) -> dict:
    """Run every stage on a synthetic photo and write the results into ``out``.

    Two runs of stages 2-4 are scored: the pipeline as a user without depth weights
    runs it (a typed Tz guess, refined by the pose fit and the camera solve) — the
    headline numbers — and the same stages given the true Tz, which shows what they
    reach when stage 1 is exact (what the BLADE DepthNet is for).

    Returns:
        the metrics dictionary also written to ``out/metrics.json``.
    """
    from .body.open_body import ensure_open_body
    from .depth.tz import estimate_tz
    from .io import save_params
    from .io.gltf import export_glb
    from .render.render import RenderConfig, render_maps

    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    body = load_body_model(ensure_open_body())
    times["body_model_s"] = time.perf_counter() - t0
    log(f"body model: {body.name} ({body.num_vertices} vertices)")

    t0 = time.perf_counter()
    scene = make_scene(body, seed)
    times["scene_s"] = time.perf_counter() - t0
    _save_rgba(out / "photo.png", scene.image[0], scene.mask[0])
    (out / "keypoints.json").write_text(json.dumps(scene.pose_keypoint))
    log(f"photo: {WIDTH}x{HEIGHT}, f = {float(scene.camera.focal[0]):.1f} px "
        f"(HFoV {HFOV_DEG:g} deg), true pelvis depth {float(scene.tz[0]):.3f} m")

    # 1. Tz: no DepthNet / Depth Anything weights can be fetched here: a typed guess
    t0 = time.perf_counter()
    tz = estimate_tz(scene.image, scene.mask, method="manual", manual=TZ_GUESS_M)
    times["tz_s"] = time.perf_counter() - t0
    log(f"1 Tz: {tz.method} {float(tz.tz[0]):.3f} m (a typed guess: no depth weights offline)")

    # 2-3. pose and camera, from the guess (headline) and from the true Tz (reference)
    run = run_stages(body, scene, tz, refine_tz=True)
    times.update(run.seconds)
    log(f"2 pose + 3 camera: f {float(run.camera.focal[0]):.1f} px, "
        f"T {[round(x, 3) for x in run.camera.translation[0].tolist()]}, IoU {run.iou:.4f}")
    ref = run_stages(body, scene, scene.tz, refine_tz=False)
    log(f"  given the true Tz: f {float(ref.camera.focal[0]):.1f} px, IoU {ref.iou:.4f}")

    # 4. renders and files (from the headline run)
    t0 = time.perf_counter()
    res = render_maps(body, run.params, run.camera, image=scene.image, cfg=RenderConfig())
    times["render_s"] = time.perf_counter() - t0
    _save_png(out / "depth.png", res.depth[0])
    _save_png(out / "normal.png", res.normal[0])
    _save_png(out / "openpose.png", res.openpose[0])
    _save_png(out / "overlay.png", res.overlay[0])
    _save_png(out / "parts.png", res.parts[0])
    _save_png(out / "silhouette.png", res.mask[0])
    (out / "pose_keypoint.json").write_text(json.dumps(res.pose_keypoint))
    ref_res = render_maps(body, ref.params, ref.camera, image=scene.image, cfg=RenderConfig())
    _save_png(out / "overlay_true_tz.png", ref_res.overlay[0])
    save_params(out / "params.json", run.params, run.camera)
    glb = export_glb(out / "body.glb", body, run.params, run.camera)
    log(f"4 renders: depth/normal/openpose/overlay/parts PNGs, {glb.path.name}")

    m = run.metrics
    metrics = {
        "tz_err_m": m["tz_err_m"], "f_err_pct": m["f_err_pct"], "miou": m["miou"],
        "mpjpe_mm": m["mpjpe_mm"], "pa_mpjpe_mm": m["pa_mpjpe_mm"],
        "camera_space_joint_err_mm": m["camera_space_joint_err_mm"],
        "txy_err_mm": m["txy_err_mm"],
        "pipeline": {"tz_method": f"{tz.method} (typed guess {TZ_GUESS_M} m, refined by the "
                                  "pose fit and the camera solve)", **m},
        "given_true_tz": ref.metrics,
        "truth": {"tz_m": float(scene.tz[0]), "focal_px": float(scene.camera.focal[0]),
                  "image_size": [WIDTH, HEIGHT], "hfov_deg": HFOV_DEG},
        "seconds": {k: round(v, 3) for k, v in times.items()},
        "notes": ["joint errors on the 22 SMPL-X body joints; mpjpe_mm is pelvis-aligned",
                  f"2D keypoints are the true projections plus {KEYPOINT_NOISE_PX:g} px noise",
                  "headline numbers: the pipeline with a typed Tz guess (no depth weights "
                  "here); given_true_tz: the same stages 2-4 with the true Tz"],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log("headline: " + json.dumps({k: round(v, 4) for k, v in metrics.items()
                                   if isinstance(v, float)}))
    log("given true Tz: " + json.dumps({k: round(v, 4) for k, v in ref.metrics.items()
                                        if isinstance(v, float)}))
    return metrics
