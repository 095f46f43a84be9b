"""Blender round trip of the rigged GLB export, and the 4-weight rig's error.

    .venv/bin/python bench/blender_roundtrip.py [--body open|synthetic] [--out DIR]

1. Exports a 10-frame batch (the shipped open-body poses and in-betweens, pelvis at
   0.6-0.9 m, a close-range wide-angle camera: 640x480, f 300-320 px per frame, horizontal
   FoV 90-94 deg, so the camera's yfov is animated) as GLB.
2. Blender (when a Python with ``bpy`` is found: this one, or ``$BLADE_BPY_PYTHON``) imports
   it with its own glTF importer, evaluates the armature-deformed mesh at every frame and
   projects it with ``world_to_camera_view`` through the imported camera. We project the same
   vertices posed by the same skinning (4-weight LBS of :mod:`blade_nodes.io.skinning`, no
   pose correctives) with our OpenCV camera. Table: px difference per frame.
   The same check is also done with an independent reader (pygltflib scene graph + numpy
   skinning, NOT Blender), always.
3. Table: the exported rig (4 weights, no correctives, mean shape) against the full body
   model, mm and px, on the 10 frames and on the 5 shipped poses one by one.

Pixel statistics use the vertices in front of the camera (depth > 5 cm); all are, here.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from blade_nodes.body import SMPLXParams, load_body_model  # noqa: E402
from blade_nodes.camera import Camera, project_points  # noqa: E402
from blade_nodes.io import blender, rig as rigmod, skinning  # noqa: E402
from blade_nodes.io.gltf import export_glb  # noqa: E402

d = math.radians
IX = {n: i for i, n in enumerate(skinning.JOINT_NAMES)}


def _pose(**rots) -> torch.Tensor:
    bp = torch.zeros(21, 3)
    for name, aa in rots.items():
        bp[IX[name] - 1] = torch.tensor(aa, dtype=torch.float32)
    return bp.reshape(63)


# the five poses shipped with the open body (docs/make_open_body_poses.py): body pose, betas, jaw
SHIPPED_POSES = [
    ("T-pose", _pose(), {}, 0.0),
    ("A-pose, left elbow 90", _pose(left_shoulder=(0, 0, -d(60)), right_shoulder=(0, 0, d(60)),
                                    left_elbow=(0, -d(90), 0)), {}, 0.0),
    ("walking, beta0 +2", _pose(left_hip=(-d(30), 0, 0), right_hip=(d(20), 0, 0),
                                right_knee=(d(35), 0, 0), left_knee=(d(10), 0, 0),
                                left_shoulder=(0, d(20), -d(70)), right_shoulder=(0, d(20), d(70)),
                                left_elbow=(0, -d(20), 0), right_elbow=(0, d(30), 0)), {0: 2.0}, 0.0),
    ("sitting, beta1 +2", _pose(left_hip=(-d(90), 0, d(5)), right_hip=(-d(90), 0, -d(5)),
                                left_knee=(d(90), 0, 0), right_knee=(d(90), 0, 0),
                                left_shoulder=(0, 0, -d(65)), right_shoulder=(0, 0, d(65)),
                                left_elbow=(0, -d(70), 0), right_elbow=(0, d(70), 0)), {1: 2.0}, 0.0),
    ("waving, beta3 +2, jaw", _pose(right_shoulder=(0, 0, -d(40)), right_elbow=(0, 0, -d(80)),
                                    left_shoulder=(0, 0, -d(70)), neck=(0, d(20), 0),
                                    head=(d(10), 0, 0), spine2=(0, 0, d(5))), {3: 2.0}, d(20)),
]


def _rotvec(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    return Rotation.from_matrix(R).as_rotvec()


def shipped_params(betas: bool = True) -> SMPLXParams:
    """The 5 shipped poses, facing the camera (upright in OpenCV axes)."""
    n = len(SHIPPED_POSES)
    p = SMPLXParams.zeros(n)
    bp = torch.stack([s[1] for s in SHIPPED_POSES])
    be = torch.zeros(n, 10)
    if betas:
        for i, s in enumerate(SHIPPED_POSES):
            for k, v in s[2].items():
                be[i, k] = v
    jaw = torch.tensor([[s[3], 0, 0] for s in SHIPPED_POSES], dtype=torch.float32)
    go = torch.tensor([[math.pi, 0, 0]] * n)
    return p.replace(body_pose=bp, betas=be, jaw_pose=jaw, global_orient=go)


def sequence_batch(frames: int = 10, seed: int = 0) -> tuple[SMPLXParams, Camera]:
    """A 10-frame batch: shipped poses and in-betweens, one shape (beta0 = +1), yaw turning
    -20..+20 deg, pelvis depth 0.6..0.9 m, f 300..320 px on 640x480 (HFoV 90-94 deg)."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.stack([s[1] for s in SHIPPED_POSES])                    # [5, 63]
    s = torch.linspace(0, len(keys) - 1, frames)
    i0 = s.floor().long().clamp(max=len(keys) - 2)
    a = (s - i0)[:, None]
    bp = keys[i0] * (1 - a) + keys[i0 + 1] * a + 0.03 * torch.randn(frames, 63, generator=g)
    from scipy.spatial.transform import Rotation
    yaw = np.radians(np.linspace(-20, 20, frames))
    go = np.stack([_rotvec(Rotation.from_rotvec([math.pi, 0, 0]).as_matrix()
                           @ Rotation.from_rotvec([0, y, 0]).as_matrix()) for y in yaw])
    betas = torch.zeros(frames, 10)
    betas[:, 0] = 1.0
    hands = 0.15 * torch.randn(frames, 90, generator=g)
    p = SMPLXParams.zeros(frames).replace(
        body_pose=bp, global_orient=torch.tensor(go, dtype=torch.float32), betas=betas,
        left_hand_pose=hands[:, :45], right_hand_pose=hands[:, 45:],
        jaw_pose=torch.zeros(frames, 3).index_fill_(1, torch.tensor([0]), d(10)))
    z = torch.linspace(0.6, 0.9, frames)
    T = torch.stack([0.05 * torch.sin(torch.arange(frames) * 0.7), 0.15 + 0 * z, z], 1)
    cam = Camera.create(torch.linspace(300, 320, frames), T, (640, 480))
    return p, cam


# ------------------------------------------------------------- independent reader (not Blender)
def _accessor(gl, data: bytes, i: int) -> np.ndarray:
    acc = gl.accessors[i]
    view = gl.bufferViews[acc.bufferView]
    dt = {5126: np.float32, 5121: np.uint8, 5123: np.uint16, 5125: np.uint32}[acc.componentType]
    n = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}[acc.type]
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    arr = np.frombuffer(data, dt, acc.count * n, start)
    return arr.reshape(acc.count, n) if n > 1 else arr


def _trs(t, r, s) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = skinning.quaternion_to_matrix(np.asarray(r, np.float64)) * np.asarray(s)[None]
    M[:3, 3] = t
    return M


def read_glb_posed(path: str | Path) -> dict:
    """Pose and project a GLB with pygltflib + numpy only (independent of our writer's code
    paths: JSON/accessors, node TRS, animation keys, inverse bind matrices, glTF camera).

    Returns dict: world [B, V, 3] (glTF scene), px [B, V, 2], depth [B, V] (camera -z), or
    without camera just world.
    """
    import pygltflib
    gl = pygltflib.GLTF2().load(str(path))
    data = gl.binary_blob()
    prim = gl.meshes[0].primitives[0]
    pos = _accessor(gl, data, prim.attributes.POSITION).astype(np.float64)
    jts = _accessor(gl, data, prim.attributes.JOINTS_0).astype(np.int64)
    wts = _accessor(gl, data, prim.attributes.WEIGHTS_0).astype(np.float64)
    skin = gl.skins[0]
    ibm = _accessor(gl, data, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)
    anim = gl.animations[0]
    times = _accessor(gl, data, anim.samplers[0].input)
    tracks, pointer = {}, {}
    for ch in anim.channels:
        out = _accessor(gl, data, anim.samplers[ch.sampler].output).astype(np.float64)
        if ch.target.path == "pointer":
            pointer[ch.target.extensions["KHR_animation_pointer"]["pointer"]] = out
        else:
            tracks[(ch.target.node, ch.target.path)] = out
    parent = {c: i for i, n in enumerate(gl.nodes) for c in (n.children or [])}
    cam_node = next((i for i, n in enumerate(gl.nodes) if n.camera is not None), None)
    res = {"world": [], "px": [], "depth": []}
    for f in range(len(times)):
        local = []
        for i, n in enumerate(gl.nodes):
            t = tracks.get((i, "translation"), [n.translation or [0, 0, 0]] * (f + 1))[f]
            r = tracks.get((i, "rotation"), [n.rotation or [0, 0, 0, 1]] * (f + 1))[f]
            local.append(_trs(t, r, n.scale or [1, 1, 1]))
        world = [None] * len(gl.nodes)

        def w(i):
            if world[i] is None:
                world[i] = local[i] if i not in parent else w(parent[i]) @ local[i]
            return world[i]
        J = np.stack([w(j) @ ibm[k] for k, j in enumerate(skin.joints)])
        M = np.einsum("vk,vkij->vij", wts, J[jts])
        v = np.einsum("vij,vj->vi", M[:, :3, :3], pos) + M[:, :3, 3]
        res["world"].append(v)
        if cam_node is not None:
            cam = gl.cameras[gl.nodes[cam_node].camera]
            yfov = pointer.get("/cameras/0/perspective/yfov", [cam.perspective.yfov] * (f + 1))[f]
            yfov = float(np.asarray(yfov).reshape(-1)[0])
            ex = cam.extras["blade"]
            W, H = ex["width"], ex["height"]
            view = np.linalg.inv(w(cam_node))
            pc = v @ view[:3, :3].T + view[:3, 3]
            ty = math.tan(yfov / 2)
            aspect = cam.perspective.aspectRatio or W / H
            xn = pc[:, 0] / -pc[:, 2] / (aspect * ty)
            yn = pc[:, 1] / -pc[:, 2] / ty
            res["px"].append(np.stack([(xn + 1) / 2 * W, (1 - yn) / 2 * H], 1))
            res["depth"].append(-pc[:, 2])
    return {k: np.stack(v) for k, v in res.items() if v}


def our_projection(rig) -> tuple[np.ndarray, np.ndarray]:
    """Our OpenCV projection of the rig's 4-weight skinned mesh: (px [B, V, 2], depth [B, V])."""
    ocv = rigmod.opencv_to_gltf(None, rig.skinned_vertices())[1]
    c = rig.camera.to(dtype=torch.float64)
    return project_points(torch.from_numpy(ocv), c.focal, c.principal).numpy(), ocv[..., 2]


def compare(px_a, px_b, depth, used=None) -> list[tuple[float, float]]:
    """Per frame (mean, max) px distance over vertices with depth > 5 cm."""
    rows = []
    for f in range(px_a.shape[0]):
        a = px_a[f] if used is None else px_a[f][used]
        dd = depth[f] if used is None else depth[f][used]
        e = np.linalg.norm(a - px_b[f], axis=-1)[dd > 0.05]
        rows.append((float(e.mean()), float(e.max())))
    return rows


def load_body(kind: str):
    if kind == "open":
        from blade_nodes.body.open_body import ensure_open_body
        return load_body_model(ensure_open_body()), "open body (Anny)"
    from blade_nodes.body.synthetic import write_synthetic_smplx
    tmp = Path(tempfile.mkdtemp()) / "SMPLX_NEUTRAL.npz"
    return load_body_model(write_synthetic_smplx(tmp)), "synthetic blob"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--body", choices=["open", "synthetic"], default="open")
    ap.add_argument("--out", default=None, help="folder for the GLB and Blender's dump")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="blade_rt_"))
    out.mkdir(parents=True, exist_ok=True)
    body, body_name = load_body(args.body)
    params, cam = sequence_batch()
    glb = out / "roundtrip.glb"
    t0 = time.perf_counter()
    report = export_glb(glb, body, params, cam, fps=30)
    t_exp = time.perf_counter() - t0
    rig = rigmod.build_rig(body, params, cam)
    ours, depth = our_projection(rig)
    used = np.unique(rig.faces)
    print(f"# Blender round trip ({body_name}, {rig.num_frames} frames, {glb.stat().st_size / 1e6:.2f} MB,"
          f" export {t_exp:.2f} s)")
    print(f"camera: 640x480, f {float(cam.focal.min()):.0f}-{float(cam.focal.max()):.0f} px, HFoV "
          f"{math.degrees(2 * math.atan(320 / float(cam.focal.max()))):.1f}-"
          f"{math.degrees(2 * math.atan(320 / float(cam.focal.min()))):.1f} deg, pelvis depth "
          f"{float(cam.translation[:, 2].min()):.2f}-{float(cam.translation[:, 2].max()):.2f} m, "
          f"nearest vertex {float(depth.min()):.2f} m")
    blend = None
    py = blender.bpy_python()
    if py is None:
        print("Blender: not available (no 'bpy' here and $BLADE_BPY_PYTHON unset): Blender "
              "columns left out")
    else:
        t0 = time.perf_counter()
        blend = blender.evaluate_glb(glb, out / "blender_eval.npz")
        print(f"Blender: bpy {blend['blender_version']} via {py} ({time.perf_counter() - t0:.1f} s)")
    indep = read_glb_posed(glb)
    r_ind = compare(ours, indep["px"], depth)
    r_bl = compare(ours, blend["px"], depth, used) if blend is not None else None
    err = rigmod.skin_error(rig, body, params)
    hdr = ("| frame | f px | Blender vs ours mean px | max px | Blender mesh vs ours max mm | "
           "pygltflib reader (not Blender) mean px | max px | rig vs full body mean mm | max mm | "
           "mean px | max px |")
    print()
    print(hdr)
    print("|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|")
    skinned = rig.skinned_vertices()
    for f in range(rig.num_frames):
        if blend is not None:
            wmm = np.abs(blend["world"][f] - skinned[f][used]).max() * 1000
            bl = f"{r_bl[f][0]:.5f} | {r_bl[f][1]:.4f} | {wmm:.4f}"
        else:
            bl = "n/a | n/a | n/a"
        print(f"| {f} | {float(cam.focal[f]):.1f} | {bl} | {r_ind[f][0]:.5f} | {r_ind[f][1]:.4f} | "
              f"{err.mean_mm[f]:.2f} | {err.max_mm[f]:.2f} | {err.mean_px[f]:.3f} | {err.max_px[f]:.2f} |")
    ok = True
    if r_bl is not None:
        worst_mean = max(r[0] for r in r_bl)
        worst_max = max(r[1] for r in r_bl)
        ok = worst_mean <= 0.1 and worst_max <= 0.5
        print(f"\nBlender vs ours: worst frame mean {worst_mean:.5f} px, worst max {worst_max:.4f} px "
              f"-> {'PASS' if ok else 'FAIL'} (mean <= 0.1, max <= 0.5 every frame)")
    # off-centre principal point: Blender's lens shift from the extras
    if blend is not None:
        cam2 = cam.with_(principal=cam.principal + torch.tensor([25.0, -18.0]))
        cam2 = Camera(cam2.focal.new_full((rig.num_frames,), 310.0), cam2.principal, cam2.translation,
                      cam2.image_size)
        glb2 = out / "roundtrip_offcentre.glb"
        export_glb(glb2, body, params, cam2, fps=30, measure=False)
        rig2 = rigmod.build_rig(body, params, cam2)
        b2 = blender.evaluate_glb(glb2, out / "blender_eval2.npz")
        o2, dep2 = our_projection(rig2)
        r2 = compare(o2, b2["px"], dep2, used)
        print(f"off-centre principal point (+25, -18 px, constant f 310), Blender camera with the "
              f"lens shift stored in the extras: worst frame mean {max(r[0] for r in r2):.5f} px, "
              f"max {max(r[1] for r in r2):.4f} px")
    # BVH through Blender's BVH importer: joints vs the body model
    from blade_nodes.io.bvh import export_bvh
    export_bvh(out / "roundtrip.bvh", body, params, cam, fps=30, scale=1.0)
    posed = body(params).joints[:, :55].double().numpy() + cam.translation.double().numpy()[:, None]
    want = rigmod.opencv_to_gltf(None, posed)[1]
    if blend is not None:
        bv = blender.evaluate_bvh(out / "roundtrip.bvh", out / "blender_bvh.npz")
        names = list(bv["names"])
        got = bv["heads"][:, [names.index(n) for n in skinning.JOINT_NAMES]]
        e = np.linalg.norm(got - want, axis=-1) * 1000
        print(f"BVH in Blender's BVH importer: {len(names)} bones, {got.shape[0]} frames, joints vs "
              f"body model max {e.max():.4f} mm")
    # the 4-weight cut on the shipped poses
    print(f"\n# Exported rig (4 weights, no pose correctives) vs full body model, {body_name}, "
          "shipped poses one by one (pelvis at 2.5 m, f 1000 px, 1000x1000)")
    print("| pose | mean mm | max mm | mean px | max px |")
    print("|---|---|---|---|---|")
    sp = shipped_params()
    for i, (name, *_rest) in enumerate(SHIPPED_POSES):
        p1 = sp.index(i)
        c1 = Camera.create([1000.0], [[0.0, 0.2, 2.5]], (1000, 1000))
        r1 = rigmod.build_rig(body, p1, c1)
        e1 = rigmod.skin_error(r1, body, p1)
        print(f"| {name} | {e1.mean_mm[0]:.3f} | {e1.max_mm[0]:.2f} | {e1.mean_px[0]:.3f} | "
              f"{e1.max_px[0]:.2f} |")
    print(f"\nexport report: {report.text()}")
    return 0 if ok else 1


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    raise SystemExit(main())
