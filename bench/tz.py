"""Stage 1 (Tz) benchmarks.

Section A: seconds and peak RSS per image for BLADE DepthNets with ViT-S/B/L DAv2 backbones
(random init, 518x518, batch 1, CPU float32, inference_mode). The reference is measured in the
same process: the transformers Depth Anything V2 forward (backbone + neck + DPT depth head),
and the DINOv2 backbone alone. One configuration per subprocess so memory does not carry over.
Peak = VmHWM reset (/proc/self/clear_refs 5) before each kind of call.

Section B: how the median visible depth inside a person mask relates to the true pelvis depth
(the metric-depth correction), measured on the open body (Anny) mesh rendered with an exact
depth map, for several yaw angles and distances: geometry only, no network error.

Usage: python bench/tz.py [--threads 2] [--skip-l] [--only A|B]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REPS = {"S": 3, "B": 2, "L": 1}


def _rss() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM", "VmRSS")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) / 2**20  # GiB
    return out


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def one_config(size: str, threads: int) -> dict:
    import torch
    from blade_nodes.depth.depthnet import VITB, VITL, VITS, BladeDepthNet

    torch.set_num_threads(threads)
    cfg = {"S": VITS, "B": VITB, "L": VITL}[size]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = BladeDepthNet(cfg).eval()
    build = time.perf_counter() - t0
    x = torch.randn(1, 3, 518, 518)
    rss_built = _rss()["VmRSS"]

    def backbone():
        return model.dav2.backbone.forward_with_filtered_kwargs(x).feature_maps

    def dav2():
        return model.dav2(pixel_values=x).predicted_depth

    def blade():
        return model(x).tz

    res = {"size": size, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
           "build_s": build, "rss_built_GiB": rss_built}
    with torch.inference_mode():
        blade()  # untimed first call (allocator warm-up)
        for name, fn in (("backbone", backbone), ("dav2", dav2), ("blade", blade)):
            _reset_peak()
            times = []
            for _ in range(REPS[size]):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            res[name] = (min(times), statistics.median(times))
            res[name + "_peak_GiB"] = _rss()["VmHWM"]
    return res


def section_a(threads: int, skip_l: bool) -> None:
    import torch
    import transformers
    print(f"## A. DepthNet cost per image, 518x518, batch 1, CPU float32, {threads} threads "
          f"(torch {torch.__version__}, transformers {transformers.__version__})")
    print("random init; backbone = DINOv2 only; DAv2 = transformers DepthAnything forward "
          "(backbone+neck+DPT head); BLADE = backbone+neck+interface+Tz decoder")
    print(f"{'cfg':>4} {'params M':>8} {'backbone s':>11} {'DAv2 s':>8} {'BLADE s':>8} "
          f"{'BLADE/DAv2':>10} {'head s':>7} {'head/bb':>8} {'peak DAv2':>10} {'peak BLADE':>11}")
    for size in ("S", "B") + (() if skip_l else ("L",)):
        out = subprocess.run([sys.executable, __file__, "--one", size, "--threads", str(threads)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        bb, dv, bl = r["backbone"][0], r["dav2"][0], r["blade"][0]
        head = bl - bb
        print(f"{'ViT-' + size:>4} {r['params_M']:8.1f} {bb:11.2f} {dv:8.2f} {bl:8.2f} "
              f"{bl / dv:10.3f} {head:7.2f} {head / bb:8.1%} {r['dav2_peak_GiB']:9.2f}G "
              f"{r['blade_peak_GiB']:10.2f}G   (min of {REPS[size]}; medians "
              f"{r['backbone'][1]:.2f}/{r['dav2'][1]:.2f}/{r['blade'][1]:.2f})")
    print("head s = BLADE - backbone (neck + resize + interface + decoder); peak = process VmHWM "
          "during that kind of call, includes the model weights and ~0.4 GB of libraries.\n")


def section_b() -> None:
    import numpy as np
    import torch
    from blade_nodes.body.open_body import open_body_path
    from blade_nodes.render import rasterize
    from blade_nodes.depth.metric import MetricTzConfig, surface_tz

    path = open_body_path()
    print("## B. Median visible depth in the mask vs true pelvis depth (open body mesh, exact "
          "depth map, 256x256, f = 1.2 x width)")
    if not path.is_file():
        print(f"skipped: open body file not built ({path}); run "
              "blade_nodes.body.open_body.ensure_open_body() once\n")
        return
    data = np.load(path, allow_pickle=False)
    v = torch.from_numpy(data["v_template"]).double()
    faces = torch.from_numpy(data["f"]).long()
    # T-pose -> arms down ~60 deg would need skinning; the T-pose is the conservative case.
    # body frame: Y up, facing +Z, pelvis at origin -> camera (OpenCV): x right, y down, z fwd;
    # the person faces the camera: X_cam = (x, -y, -z) (180 deg about x) after by yaw about the vertical.
    size, f = 256, 1.2 * 256
    cfg0 = MetricTzConfig(erode_px=2, surface_to_pelvis_m=0.0)
    print(f"{'dist m':>6} " + " ".join(f"{'yaw ' + str(y):>8}" for y in (0, 45, 90, 135, 180))
          + "   (offset = pelvis z - median visible z, metres)")
    allv = []
    for dist in (2.0, 3.0, 5.0, 8.0):
        row = []
        for yaw in (0, 45, 90, 135, 180):
            a = np.deg2rad(yaw)
            rot = torch.tensor([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
            flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
            vc = (v @ rot.T) @ flip.T + torch.tensor([0.0, 0.0, dist], dtype=torch.float64)
            # frame the body: focal chosen so the body fits at every distance
            focal = torch.tensor([f * dist / 3.0])
            fr = rasterize(vc[None].float(), faces, focal, torch.tensor([[size / 2, size / 2]]),
                           size, size, backend="torch")
            person = fr.face_id >= 0
            tz, _ = surface_tz(fr.depth.float(), person, cfg0)
            off = dist - tz.item()
            row.append(off)
            allv.append(off)
        print(f"{dist:6.1f} " + " ".join(f"{o:8.3f}" for o in row))
    print(f"mean {statistics.mean(allv):.3f} m, min {min(allv):.3f}, max {max(allv):.3f}; "
          f"default correction MetricTzConfig.surface_to_pelvis_m = "
          f"{MetricTzConfig().surface_to_pelvis_m} m\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-l", action="store_true")
    ap.add_argument("--only", choices=["A", "B"])
    ap.add_argument("--one", choices=["S", "B", "L"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_config(args.one, args.threads)))
        return
    if args.only in (None, "B"):
        section_b()
    if args.only in (None, "A"):
        section_a(args.threads, args.skip_l)


if __name__ == "__main__":
    main()
