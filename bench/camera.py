"""Camera solver benchmark (stage 3): synthetic perspective scenes with known cameras.

Body: the open body (human-shaped, SMPL-X format) when it is available, else the SMPL-X
test fixture (a random blob: fine for the solver's maths, not for realism; the table says
which). Per case: random body pose (root yaw +-45 deg, tilt +-10 deg, body joints N(0, 0.2)
rad), pelvis depth 0.3-5 m (log-uniform), horizontal FoV 30-110 deg, image long side
256-512 px, pelvis projected anywhere in the central 60 % of the image (random Tx, Ty).
Cases whose mask is almost empty (< 0.3 %) or almost full (> 90 %) are redrawn.

Conditions:
  clean          true mask, true Tz, opt_tz off
  noisy          boundary displaced by a smooth random field (std 3 px, correlation 6 px,
                 through the signed distance), true Tz
  clean+tz10%    true mask, Tz given with 10 % log-normal error, opt_tz on
  noisy+kp       noisy mask plus BODY_25 keypoints (projected body keypoints + 2 px noise):
                 closed-form keypoint start and the reprojection term
  pose.1         (--pose) true mask, the solver's body has every joint 0.1 rad off
  pose.1+opt     (--pose) the same with opt_pose (root and body pose refined)

Metrics (blade_official.md §5): f error = |f - f_gt| / f_gt (%); Txy error = distance of the
pelvis in camera x, y (mm); Tz error = |pelvis z - z_gt| (m); IoU = both silhouettes
rendered (ground-truth body and camera vs fitted camera) at the image size. Reference timed
in the same run: one hard raster of the body at the image size (ms).

Run: python bench/camera.py [--n 20] [--iterations 60] [--seed 0]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blade_nodes.body import SMPLXParams, load_body_model  # noqa: E402
from blade_nodes.camera.solve import (SolveConfig, mask_iou, solve_camera,  # noqa: E402
                                     solve_camera_body)
from blade_nodes.render import rasterize  # noqa: E402

SIZES = ((256, 256), (384, 512), (512, 384), (512, 512), (320, 448), (448, 256))


def load_body():
    try:
        from blade_nodes.body.open_body import open_body_path, ensure_open_body
        path = open_body_path()
        if not path.is_file():
            path = ensure_open_body()
        return load_body_model(path), "open body"
    except Exception as e:  # noqa: BLE001 - any failure falls back to the fixture
        from blade_nodes.body.synthetic import write_synthetic_smplx
        print(f"open body unavailable ({type(e).__name__}: {e}); using the SMPL-X fixture")
        path = write_synthetic_smplx(Path(tempfile.mkdtemp()) / "SMPLX_NEUTRAL.npz")
        return load_body_model(path), "SMPL-X fixture (random blob, not a human)"


def axis_angle(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    return Rotation.from_matrix(R).as_rotvec()


def rot(axis: str, a: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    return Rotation.from_euler(axis, a).as_matrix()


def render(verts: torch.Tensor, faces, f: float, t: torch.Tensor, w: int, h: int) -> torch.Tensor:
    fr = rasterize((verts.double() + t.double())[None], faces,
                   torch.tensor([f], dtype=torch.float64),
                   torch.tensor([[w / 2, h / 2]], dtype=torch.float64), h, w)
    return fr.mask[0]


def noisy(mask: torch.Tensor, rng: np.random.Generator, std: float = 3.0, corr: float = 6.0):
    from scipy.ndimage import distance_transform_edt, gaussian_filter
    m = mask.numpy()
    sd = distance_transform_edt(~m) - distance_transform_edt(m)  # > 0 outside
    field = gaussian_filter(rng.standard_normal(m.shape), corr)
    field *= std / field.std()
    return torch.from_numpy(sd < field)


def make_case(body, rng: np.random.Generator, fov_u: float | None = None,
              depth_u: float | None = None):
    """One random scene; ``fov_u``, ``depth_u`` in [0, 1) pick the FoV and the pelvis depth
    (for stratified sampling), else they are random."""
    for attempt in range(1000):
        if attempt == 20:  # this depth and FoV cannot frame a usable mask: draw both again
            fov_u = depth_u = None
        yaw, tilt = rng.uniform(-45, 45), rng.uniform(-10, 10)
        R = rot("y", math.radians(yaw)) @ rot("x", math.radians(tilt)) @ rot("x", math.pi)
        params = SMPLXParams.zeros(1).replace(
            global_orient=torch.tensor(axis_angle(R), dtype=torch.float32)[None],
            body_pose=torch.tensor(rng.normal(0, 0.2, 63), dtype=torch.float32)[None])
        with torch.no_grad():
            out = body(params)
        verts, pelvis = out.vertices[0], out.joints[0, 0]
        kp3d = body.keypoint_map("body25")(out.joints)[0]
        # the pose estimate the solver gets in the pose conditions: 0.1 rad off per joint
        wrong = params.replace(body_pose=params.body_pose + torch.tensor(
            rng.normal(0, 0.1, 63), dtype=torch.float32)[None])
        w, h = SIZES[rng.integers(len(SIZES))]
        fov = 30 + 80 * (rng.uniform() if fov_u is None else fov_u)
        f = w / (2 * math.tan(math.radians(fov) / 2))
        du = rng.uniform() if depth_u is None else depth_u
        z = math.exp(math.log(0.3) + du * (math.log(5.0) - math.log(0.3)))
        u, v = rng.uniform(-0.3, 0.3) * w, rng.uniform(-0.3, 0.3) * h
        p_cam = torch.tensor([u * z / f, v * z / f, z], dtype=torch.float64)
        t = p_cam - pelvis.double()
        m = render(verts, body.faces, f, t, w, h)
        cover = float(m.float().mean())
        if 0.003 < cover < 0.9:
            return dict(verts=verts, pelvis=pelvis, f=f, t=t, w=w, h=h, mask=m, z=z, fov=fov,
                        cover=cover, kp3d=kp3d, params=params, wrong=wrong)
    raise RuntimeError("no usable scene in 1000 draws")


def keypoints_2d(c, rng: np.random.Generator, noise_px: float = 2.0):
    """BODY_25 detections: the body's keypoints projected, plus Gaussian pixel noise."""
    X = c["kp3d"].double() + c["t"]
    uv = X[:, :2] / X[:, 2:] * c["f"] + torch.tensor([c["w"] / 2, c["h"] / 2], dtype=torch.float64)
    uv = uv + torch.from_numpy(rng.normal(0, noise_px, uv.shape))
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < c["w"]) & (uv[:, 1] >= 0) & (uv[:, 1] < c["h"])
    return torch.cat([uv, inside[:, None].double()], 1).float()


def pct(xs, q):
    return float(np.percentile(np.asarray(xs), q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--verbose", action="store_true", help="one line per case")
    ap.add_argument("--pose", action="store_true",
                    help="add the pose conditions (body model every step: slower)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    body, body_name = load_body()
    rng = np.random.default_rng(args.seed)
    # FoV and depth stratified (independently) so that small runs cover both ranges
    perm = rng.permutation(args.n)
    cases = [make_case(body, rng, (i + rng.uniform()) / args.n,
                       (perm[i] + rng.uniform()) / args.n) for i in range(args.n)]
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} body={body_name} "
          f"n={args.n} iterations={args.iterations} load={os.getloadavg()[0]:.1f}")
    # warm-up (numba compile, caches)
    c0 = cases[0]
    solve_camera(c0["verts"][None], body.faces, c0["mask"][None].float(), torch.tensor([c0["z"]]),
                 pelvis=c0["pelvis"][None], cfg=SolveConfig(iterations=4))
    conditions = {
        "clean": dict(noise=False, tz_err=0.0, opt_tz=False),
        "noisy": dict(noise=True, tz_err=0.0, opt_tz=False),
        "clean+tz10%": dict(noise=False, tz_err=0.10, opt_tz=True),
        "noisy+kp": dict(noise=True, tz_err=0.0, opt_tz=False, kp=True),
    }
    if args.pose:
        conditions["pose.1"] = dict(noise=False, tz_err=0.0, opt_tz=False, pose=False)
        conditions["pose.1+opt"] = dict(noise=False, tz_err=0.0, opt_tz=False, pose=True)
    rows = []
    for name, cond in conditions.items():
        r = dict(cpu=[], f=[], txy=[], tz=[], tz_in=[], iou=[], it=[], s=[], ref=[], mask_iou=[])
        crng = np.random.default_rng(args.seed + 1)
        for c in cases:
            m = noisy(c["mask"], crng) if cond["noise"] else c["mask"]
            tz_in = c["z"] * math.exp(crng.normal(0, cond["tz_err"])) if cond["tz_err"] else c["z"]
            cfg = SolveConfig(iterations=args.iterations, opt_tz=cond["opt_tz"],
                              opt_pose=bool(cond.get("pose")))
            t0, c0 = time.perf_counter(), time.process_time()
            kp = dict(keypoints=keypoints_2d(c, crng)[None], keypoints_3d=c["kp3d"][None]) \
                if cond.get("kp") else {}
            if "pose" in cond:  # the solver sees a wrong pose (and may refine it)
                fit = solve_camera_body(body, c["wrong"], m[None].float(), torch.tensor([tz_in]),
                                        cfg=cfg)
            else:
                fit = solve_camera(c["verts"][None], body.faces, m[None].float(),
                                   torch.tensor([tz_in]), pelvis=c["pelvis"][None], cfg=cfg, **kp)
            r["s"].append(time.perf_counter() - t0)
            r["cpu"].append(time.process_time() - c0)
            t0 = time.perf_counter()
            gt = render(c["verts"], body.faces, c["f"], c["t"], c["w"], c["h"])
            r["ref"].append(time.perf_counter() - t0)
            T = fit.camera.translation[0].double()
            fp = float(fit.camera.focal[0])
            if "pose" in cond:  # the fitted body (wrong or refined pose) with its camera
                with torch.no_grad():
                    vp = body(fit.params).vertices[0]
                # pelvis error: the fitted body's pelvis joint, not the true one
                with torch.no_grad():
                    pel = body(fit.params).joints[0, 0].double() + T
                    pel_gt = c["pelvis"].double() + c["t"]
                r["txy_override"] = 1000 * float((pel[:2] - pel_gt[:2]).norm())
                pred = render(vp, body.faces, fp, T, c["w"], c["h"])
            else:
                r.pop("txy_override", None)
                pred = render(c["verts"], body.faces, fp, T, c["w"], c["h"])
            r["f"].append(100 * abs(fp - c["f"]) / c["f"])
            r["txy"].append(r.get("txy_override", 1000 * float((T[:2] - c["t"][:2]).norm())))
            r["tz"].append(abs(float(T[2] - c["t"][2])))
            r["tz_in"].append(abs(tz_in - c["z"]))
            r["iou"].append(float(mask_iou(pred, gt)))
            r["mask_iou"].append(float(mask_iou(m, gt)))
            r["it"].append(int(fit.iterations[0]))
            if args.verbose:
                print(f"  {name:<12} {c['w']}x{c['h']} z={c['z']:.2f} fov={c['fov']:.0f} "
                      f"cover={c['cover']:.3f} f_err={r['f'][-1]:6.2f}% txy={r['txy'][-1]:6.1f}mm "
                      f"iou={r['iou'][-1]:.4f} s={r['s'][-1]:.2f}")
        rows.append((name, r))
    print(f"\n{'condition':<12} {'f err % med/p90':>16} {'Txy mm med/p90':>16} "
          f"{'Tz m med/p90':>14} {'(Tz in)':>8} {'mIoU':>7} {'IoU p10':>7} {'mask IoU':>8} "
          f"{'iters':>5} {'s/img med':>9} {'cpu s':>6} {'raster ms':>9}")
    for name, r in rows:
        print(f"{name:<12} {statistics.median(r['f']):7.2f} /{pct(r['f'], 90):6.2f} "
              f"{statistics.median(r['txy']):7.1f} /{pct(r['txy'], 90):6.1f} "
              f"{statistics.median(r['tz']):6.3f} /{pct(r['tz'], 90):5.3f} "
              f"{statistics.median(r['tz_in']):8.3f} {statistics.mean(r['iou']):7.4f} "
              f"{pct(r['iou'], 10):7.4f} {statistics.mean(r['mask_iou']):8.4f} "
              f"{statistics.median(r['it']):5.0f} {statistics.median(r['s']):9.3f} "
              f"{statistics.median(r['cpu']):6.3f} "
              f"{1e3 * statistics.median(r['ref']):9.2f}")
    print("\nmask IoU: the given mask vs the true silhouette (1 for clean). Tz in: error of the "
          "Tz given to the solver. s/img: wall seconds inside solve_camera (1 thread); cpu s: "
          "the process CPU time of the same call (less sensitive to other jobs on the machine); "
          "raster ms: one hard raster of the body at the image size (reference, same run).")
    print(f"cases: depth {min(c['z'] for c in cases):.2f}-{max(c['z'] for c in cases):.2f} m, "
          f"FoV {min(c['fov'] for c in cases):.0f}-{max(c['fov'] for c in cases):.0f} deg, "
          f"coverage {min(c['cover'] for c in cases):.3f}-{max(c['cover'] for c in cases):.3f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    # intrinsic cost: the fastest of 3 runs of the same clean solve, per image size
    print(f"\n{'image':>9} {'cover':>6} {'min s (3 runs)':>14} {'ms/iter':>8} {'raster ms':>9}")
    seen = set()
    for c in cases:
        if (c["w"], c["h"]) in seen:
            continue
        seen.add((c["w"], c["h"]))
        ts, rs = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            solve_camera(c["verts"][None], body.faces, c["mask"][None].float(),
                         torch.tensor([c["z"]]), pelvis=c["pelvis"][None],
                         cfg=SolveConfig(iterations=args.iterations))
            ts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            render(c["verts"], body.faces, c["f"], c["t"], c["w"], c["h"])
            rs.append(time.perf_counter() - t0)
        print(f"{c['w']:>4}x{c['h']:<4} {c['cover']:6.3f} {min(ts):14.3f} "
              f"{1e3 * min(ts) / args.iterations:8.2f} {1e3 * min(rs):9.2f}")


if __name__ == "__main__":
    main()
