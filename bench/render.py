"""Rasterizer speed: ms per render at 256/512/1024 for each back-end against a
compiled single-thread numba z-buffer timed in the same run (perf_anchors §1).

Mesh: a procedurally generated closed, body-shaped UV sphere with about the
size of SMPL-X (10,498 vertices / 20,992 faces), 3 m from the camera.
Framings as in perf_anchors §1: "full" (height fills 95 % of the image, ~14 %
coverage) and "close" (height 200 % of the image, upper body, ~35 % coverage).

Timed calls are interleaved (one of each method per round). Timed per back-end: the
whole public call ``rasterize(verts_cam, ...)`` (input checks, projection, buffers,
conversion to torch); with numba also ``rasterize_face_ids`` (no depth /
barycentrics). Timed for the reference: its two kernels only, on pre-projected
vertices, with preallocated outputs (24 B/px), as in perf_anchors §1. Reported:
min / median ms, ratio of the mins to the reference, and the transient peak RSS
of one steady-state call (VmHWM after the timed calls minus RSS before them,
VmHWM reset after warm-up; Linux only).

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python bench/render.py [--framing full|close]
        [--sizes 256 512 1024] [--reps 15] [--backends numba torch]
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba  # noqa: E402  (the reference needs it; it is also the CPU back-end)

from blade_nodes.render import rasterize, rasterize_face_ids  # noqa: E402


# ---------------------------------------------------------------------------
# test mesh
# ---------------------------------------------------------------------------

def body_mesh(n_lat: int = 83, n_lon: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """A closed body-shaped surface: a UV sphere squeezed into a 1.7 m column
    with a head, shoulders and a waist. Outward (counter-clockwise) winding.

    Returns:
        verts: [V, 3] float32 metres, body frame (y down, centred);
        faces: [F, 3] int64. V = (n_lat - 1) n_lon + 2, F = 2 n_lon (n_lat - 1).
    """
    th = torch.linspace(0, math.pi, n_lat + 1, dtype=torch.float64)[1:-1]
    ph = torch.linspace(0, 2 * math.pi, n_lon + 1, dtype=torch.float64)[:-1]
    t, p = torch.meshgrid(th, ph, indexing="ij")
    h = -torch.cos(t)  # -1 (top) .. 1 (bottom)
    # radius profile along the height: head, neck, shoulders, waist, legs
    prof = (0.55 + 0.45 * torch.exp(-((h + 0.82) / 0.12) ** 2)
            - 0.35 * torch.exp(-((h + 0.68) / 0.05) ** 2)
            + 0.5 * torch.exp(-((h + 0.55) / 0.1) ** 2)
            - 0.15 * torch.exp(-((h - 0.05) / 0.1) ** 2))
    r = torch.sin(t) * prof
    x = 0.28 * r * torch.cos(p) * (1 + 0.05 * torch.sin(7 * p) * torch.sin(9 * t))
    z = 0.11 * r * torch.sin(p)
    y = 0.85 * h
    ring = torch.stack([x, y, z], -1).reshape(-1, 3)
    verts = torch.cat([torch.tensor([[0, -0.85, 0]], dtype=torch.float64), ring,
                       torch.tensor([[0, 0.85, 0]], dtype=torch.float64)])
    faces = []
    idx = lambda i, j: 1 + i * n_lon + (j % n_lon)  # noqa: E731
    last = len(verts) - 1
    for j in range(n_lon):
        faces.append((0, idx(0, j + 1), idx(0, j)))
        faces.append((last, idx(n_lat - 2, j), idx(n_lat - 2, j + 1)))
    for i in range(n_lat - 2):
        for j in range(n_lon):
            a, b, c, d = idx(i, j), idx(i, j + 1), idx(i + 1, j), idx(i + 1, j + 1)
            faces += [(a, b, c), (b, d, c)]
    faces = torch.tensor(faces, dtype=torch.int64)
    # make the winding outward: the normal of a face should point away from the centre
    v = verts[faces]
    n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
    flip = (n * v.mean(1)).sum(-1) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return verts.float(), faces


def framing(verts: torch.Tensor, size: int, kind: str):
    """Camera-space vertices [1, V, 3], focal [1], principal [1, 2] for a framing."""
    tz = 3.0
    height_m = float(verts[:, 1].max() - verts[:, 1].min())
    if kind == "full":
        f = 0.95 * size * tz / height_m
        shift = torch.tensor([0.0, 0.0, tz])
    else:  # close: body height 200 % of the image, centred on the upper torso
        f = 2.0 * size * tz / height_m
        shift = torch.tensor([0.0, 0.45, tz])
    vc = (verts + shift)[None].float()
    return vc, torch.tensor([f]), torch.tensor([[size / 2, size / 2]])


# ---------------------------------------------------------------------------
# reference: plain single-thread numba z-buffer (perf_anchors §1 "numba1")
# ---------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def ref_raster(pu, pv, piz, faces, zbuf, fid, depth, bary):
    """pu, pv, piz: [V] projected u, v (px), 1/z; outputs [H, W](,3) preallocated."""
    h, w = zbuf.shape
    zbuf[:] = 0.0
    fid[:] = -1
    for k in range(faces.shape[0]):
        a, b, c = faces[k, 0], faces[k, 1], faces[k, 2]
        x0, y0, x1, y1, x2, y2 = pu[a], pv[a], pu[b], pv[b], pu[c], pv[c]
        area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
        if area == 0.0:
            continue
        ia = 1.0 / area
        j0 = max(int(math.ceil(min(x0, x1, x2) - 0.5)), 0)
        j1 = min(int(math.floor(max(x0, x1, x2) - 0.5)), w - 1)
        i0 = max(int(math.ceil(min(y0, y1, y2) - 0.5)), 0)
        i1 = min(int(math.floor(max(y0, y1, y2) - 0.5)), h - 1)
        if j0 > j1 or i0 > i1:
            continue
        # edge functions at the first pixel centre, stepped incrementally
        px, py = j0 + 0.5, i0 + 0.5
        e0r = ((x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)) * ia
        e1r = ((x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)) * ia
        e0dx, e0dy = -(y2 - y1) * ia, (x2 - x1) * ia
        e1dx, e1dy = -(y0 - y2) * ia, (x0 - x2) * ia
        for i in range(i0, i1 + 1):
            e0, e1 = e0r, e1r
            for j in range(j0, j1 + 1):
                e2 = 1.0 - e0 - e1
                if e0 >= 0.0 and e1 >= 0.0 and e2 >= 0.0:
                    iz = e0 * piz[a] + e1 * piz[b] + e2 * piz[c]
                    if iz > zbuf[i, j]:
                        zbuf[i, j] = iz
                        fid[i, j] = k
                e0 += e0dx
                e1 += e1dx
            e0r += e0dy
            e1r += e1dy
    for i in range(h):
        for j in range(w):
            k = fid[i, j]
            if k < 0:
                depth[i, j] = 0.0
                bary[i, j, 0] = 0.0
                bary[i, j, 1] = 0.0
                bary[i, j, 2] = 0.0
                continue
            a, b, c = faces[k, 0], faces[k, 1], faces[k, 2]
            x0, y0, x1, y1, x2, y2 = pu[a], pv[a], pu[b], pv[b], pu[c], pv[c]
            px, py = j + 0.5, i + 0.5
            area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
            l0 = ((x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)) / area
            l1 = ((x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)) / area
            l2 = 1.0 - l0 - l1
            q0, q1, q2 = l0 * piz[a], l1 * piz[b], l2 * piz[c]
            q = q0 + q1 + q2
            depth[i, j] = 1.0 / q
            bary[i, j, 0] = q0 / q
            bary[i, j, 1] = q1 / q
            bary[i, j, 2] = q2 / q


# ---------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------

def _rss_kib(field: str) -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def timeit_interleaved(fns: dict, reps: int) -> dict:
    """{name: (min ms, median ms, transient peak MiB)}.

    Every function gets 3 untimed calls, then the timed calls are interleaved
    (one of each per round) so that load from other processes on a shared
    machine hits all methods alike; the ratios of the mins are the robust figure.
    The transient peak is measured on one further call per function.
    """
    for fn in fns.values():
        for _ in range(3):
            fn()
    ts = {k: [] for k in fns}
    for r in range(max(reps.values()) if isinstance(reps, dict) else reps):
        for k, fn in fns.items():
            if isinstance(reps, dict) and r >= reps[k]:
                continue
            t0 = time.perf_counter()
            fn()
            ts[k].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for k, fn in fns.items():
        ok = _reset_hwm()
        before = _rss_kib("VmRSS:")
        fn()
        peak = (_rss_kib("VmHWM:") - before) / 1024 if ok else float("nan")
        out[k] = (min(ts[k]), statistics.median(ts[k]), max(peak, 0.0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--framing", choices=["full", "close"], default="full")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--backends", nargs="+", default=["numba", "torch"])
    args = ap.parse_args()

    verts, faces = body_mesh()
    print(f"# bench/render.py  framing={args.framing}  mesh {len(verts)} v / {len(faces)} f  "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)  numba {numba.__version__}"
          f"  {platform.processor() or platform.machine()}  load {os.getloadavg()[0]:.1f}")
    backends = list(args.backends)
    if torch.cuda.is_available():
        backends.append("nvdiffrast")
    rows = []
    for size in args.sizes:
        vc, f, pp = framing(verts, size, args.framing)
        # reference on pre-projected float64 vertices, preallocated outputs
        p = vc[0].double()
        pu = (p[:, 0] / p[:, 2] * f.double() + size / 2).numpy()
        pv = (p[:, 1] / p[:, 2] * f.double() + size / 2).numpy()
        piz = (1.0 / p[:, 2]).numpy()
        fn = faces.numpy()
        zb = np.empty((size, size), np.float32)
        fid = np.empty((size, size), np.int32)
        dep = np.empty((size, size), np.float32)
        bar = np.empty((size, size, 3), np.float32)
        fns = {"ref": lambda: ref_raster(pu, pv, piz, fn, zb, fid, dep, bar)}
        reps = {"ref": args.reps}
        for be in backends:
            dev = "cuda" if be == "nvdiffrast" else "cpu"
            a = (vc.to(dev), faces.to(dev), f.to(dev), pp.to(dev), size, size)
            sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

            def call(a=a, be=be, sync=sync):
                out = rasterize(*a, backend=be)
                sync()
                return out
            fns[be] = call
            reps[be] = args.reps if not (be == "torch" and size >= 1024) else max(3, args.reps // 3)
        if "numba" in backends:  # the face-id-only entry point (silhouettes)
            a = (vc, faces, f, pp, size, size)
            fns["numba face_id only"] = lambda a=a: rasterize_face_ids(*a, backend="numba")
            reps["numba face_id only"] = args.reps
        res = timeit_interleaved(fns, reps)
        fns["ref"]()
        cover = float((fid >= 0).mean())
        ref_fid = torch.from_numpy(fid.astype(np.int64))
        rows.append((size, "numba reference (1 thread)", *res["ref"], 1.0, cover))
        for be in [k for k in fns if k != "ref"]:
            fr = fns[be]()
            ids = fr if isinstance(fr, torch.Tensor) else fr.face_id
            agree = float((ids[0].cpu() == ref_fid).float().mean())
            rows.append((size, f"blade_nodes {be}", *res[be], res[be][0] / res["ref"][0], agree))
    print()
    print("| size | method | ms min | ms median | x ref (min) | transient peak MiB | "
          "coverage (ref) / face-id agreement |")
    print("|---|---|---|---|---|---|---|")
    for size, name, mn, md, peak, ratio, extra in rows:
        print(f"| {size}² | {name} | {mn:.2f} | {md:.2f} | {ratio:.2f} | {peak:.0f} | {extra:.4f} |")


if __name__ == "__main__":
    main()
