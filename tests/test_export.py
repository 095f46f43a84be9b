"""Export for Blender/DCC tools: GLB (two independent readers + our skinning), BVH, FBX, bad inputs."""
from __future__ import annotations

import importlib.util
import json
import math
import re
import struct
import sys

import numpy as np
import pytest
import torch

from conftest import REPO

from blade_nodes.body import SMPLXParams
from blade_nodes.camera import Camera
from blade_nodes.io import UnsafePathError, blender, rig as rigmod, skinning
from blade_nodes.io.bvh import export_bvh, euler_zxy_to_matrix, matrix_to_euler_zxy
from blade_nodes.io.gltf import export_glb
from blade_nodes.io.rig import ExportError, opencv_to_gltf


def _bench():
    spec = importlib.util.spec_from_file_location("blade_bench_roundtrip",
                                                  REPO / "bench" / "blender_roundtrip.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _bench()


def _batch(b=4, seed=0, depth=4.0, focal=None):
    g = torch.Generator().manual_seed(seed)
    p = SMPLXParams.zeros(b).replace(
        body_pose=0.3 * torch.randn(b, 63, generator=g),
        left_hand_pose=0.3 * torch.randn(b, 45, generator=g),
        global_orient=torch.tensor([[math.pi, 0.0, 0.0]]) + 0.2 * torch.randn(b, 3, generator=g),
        betas=torch.randn(1, 10, generator=g).expand(b, 10).clone())
    f = torch.full((b,), 400.0) if focal is None else torch.as_tensor(focal, dtype=torch.float32)
    T = torch.tensor([0.1, -0.05, depth]) + 0.05 * torch.randn(b, 3, generator=g)
    return p, Camera.create(f, T, (320, 240))


def _glb_json(path):
    with open(path, "rb") as fh:
        magic, version, total = struct.unpack("<III", fh.read(12))
        n, kind = struct.unpack("<II", fh.read(8))
        assert (magic, version, kind) == (0x46546C67, 2, 0x4E4F534A)
        return json.loads(fh.read(n))


# ------------------------------------------------------------------------------ rig maths
def test_opencv_to_gltf_is_the_180_degree_turn_about_x():
    R, t = opencv_to_gltf(np.eye(3), np.array([0.1, 0.2, 3.0]), camera=True)
    assert np.allclose(R, np.eye(3)) and np.allclose(t, [0.1, -0.2, -3.0])
    Rx = skinning.axis_angle_to_matrix(np.array([math.pi, 0, 0]))
    assert np.allclose(opencv_to_gltf(Rx)[0], np.eye(3), atol=1e-12)  # BLADE's upright root


def test_rig_with_all_weights_is_the_body_model(synthetic_body):
    """With all 55 weights (synthetic body: no pose correctives) the rig IS the body model:
    checks the pelvis offset, the scene-frame turn and the forward kinematics."""
    import dataclasses
    p, cam = _batch()
    rig = rigmod.build_rig(synthetic_body, p, cam)
    j, w = skinning.top_k_weights(synthetic_body.smplx.lbs_weights.double().numpy(), 55)
    err = rigmod.skin_error(dataclasses.replace(rig, joints4=j, weights4=w), synthetic_body, p)
    assert err.max_mm.max() < 0.01
    j4, w4 = rig.joints4, rig.weights4
    assert j4.shape == (synthetic_body.num_vertices, 4) and np.allclose(w4.sum(1), 1)
    full = synthetic_body.smplx.lbs_weights.double().numpy()
    assert np.all(np.take_along_axis(full, j4, 1)[:, 3] >= np.sort(full, 1)[:, -5] - 1e-12)


def test_quaternion_and_euler_roundtrip():
    R = skinning.axis_angle_to_matrix(np.random.default_rng(0).normal(size=(50, 3)))
    assert np.allclose(skinning.quaternion_to_matrix(skinning.matrix_to_quaternion(R)), R, atol=1e-12)
    assert np.allclose(euler_zxy_to_matrix(matrix_to_euler_zxy(R)), R, atol=1e-9)


# ------------------------------------------------------------------------------ GLB
def test_glb_loads_in_pygltflib_and_trimesh(synthetic_body, tmp_path):
    import pygltflib
    import trimesh
    from smplx.joint_names import JOINT_NAMES
    p, cam = _batch(b=5)
    path = tmp_path / "a.glb"
    rep = export_glb(path, synthetic_body, p, cam, fps=24)
    assert rep.num_frames == 5 and rep.skin is not None
    gl = pygltflib.GLTF2().load(str(path))
    skin = gl.skins[0]
    names = [gl.nodes[j].name for j in skin.joints]
    assert names == list(JOINT_NAMES[:55]) == list(skinning.JOINT_NAMES)
    parent = {c: i for i, n in enumerate(gl.nodes) for c in (n.children or [])}
    got_parents = [names.index(gl.nodes[parent[j]].name) if j in parent else -1 for j in skin.joints]
    assert got_parents == synthetic_body.parents.tolist()
    anim = gl.animations[0]
    paths = sorted((c.target.node, c.target.path) for c in anim.channels)
    assert paths == sorted([(j, "rotation") for j in skin.joints] + [(skin.joints[0], "translation")])
    times = bench._accessor(gl, gl.binary_blob(), anim.samplers[0].input)
    assert np.allclose(times, np.arange(5) / 24)
    cam_nodes = [n for n in gl.nodes if n.camera is not None]
    assert len(cam_nodes) == 1 and gl.cameras[0].type == "perspective"
    persp = gl.cameras[0].perspective
    assert persp.yfov == pytest.approx(2 * math.atan(120 / 400), rel=1e-6)
    assert persp.aspectRatio == pytest.approx(320 / 240)
    ex = gl.cameras[0].extras["blade"]
    assert (ex["f"], ex["cx"], ex["cy"], ex["width"], ex["height"]) == (400.0, 160.0, 120.0, 320, 240)
    assert "principal_point_note" not in ex   # centred principal point
    scene = trimesh.load(str(path))
    assert isinstance(scene, trimesh.Scene) and scene.has_camera
    geom = list(scene.geometry.values())[0]
    assert len(geom.faces) == synthetic_body.faces.shape[0]


def test_independent_reader_reproduces_our_projection(synthetic_body, tmp_path):
    """pygltflib scene graph + numpy skinning + the glTF camera vs our OpenCV projection of
    our 4-weight skinning: same pixels (checks rig, animation and camera conversion)."""
    p, cam = _batch(b=4, focal=[380.0, 400.0, 420.0, 440.0])  # per-frame focal: animated yfov
    path = tmp_path / "b.glb"
    export_glb(path, synthetic_body, p, cam, fps=30, measure=False)
    rig = rigmod.build_rig(synthetic_body, p, cam)
    ours, depth = bench.our_projection(rig)
    assert depth.min() > 0.1
    theirs = bench.read_glb_posed(path)
    rows = bench.compare(ours, theirs["px"], depth)
    assert max(r[0] for r in rows) <= 0.01 and max(r[1] for r in rows) <= 0.1, rows
    assert np.abs(theirs["world"] - rig.skinned_vertices()).max() < 1e-5  # metres, float32 file
    doc = _glb_json(path)
    assert doc["extensionsUsed"] == ["KHR_animation_pointer"]


def test_off_centre_principal_point_is_reported(synthetic_body, tmp_path):
    p, cam = _batch(b=2)
    cam = cam.with_(principal=cam.principal + torch.tensor([20.0, -10.0]))
    rep = export_glb(tmp_path / "c.glb", synthetic_body, p, cam, measure=False)
    assert any("principal point" in n for n in rep.notes)
    ex = _glb_json(tmp_path / "c.glb")["cameras"][0]["extras"]["blade"]
    assert "cannot store" in ex["principal_point_note"]
    assert ex["cx"] == 180.0 and ex["cy"] == 110.0
    assert ex["blender_shift_x"] == pytest.approx(-20 / 240) and ex["blender_shift_y"] == pytest.approx(-10 / 240)


def test_open_body_four_weight_error_under_1cm():
    from blade_nodes.body import load_body_model
    from blade_nodes.body.open_body import open_body_path
    if not open_body_path().is_file():
        pytest.skip("open body not built here (python -m blade_nodes open-body)")
    body = load_body_model(open_body_path())
    p = bench.shipped_params()
    for i in range(p.batch_size):
        cam = Camera.create([1000.0], [[0.0, 0.2, 2.5]], (1000, 1000))
        err = rigmod.skin_error(rigmod.build_rig(body, p.index(i), cam), body, p.index(i))
        assert err.mean_mm[0] <= 10.0 and err.mean_px[0] <= 1.0


# ------------------------------------------------------------------------------ BVH
def parse_bvh(text: str):
    """A small independent BVH reader: joints (name, parent, offset, channels) and frames."""
    tok = text.split()
    joints, stack, i = [], [], 0
    while tok[i] != "MOTION":
        t = tok[i]
        if t in ("ROOT", "JOINT"):
            joints.append({"name": tok[i + 1], "parent": stack[-1] if stack else -1})
            i += 2
        elif t == "End":
            joints.append({"name": None, "parent": stack[-1]})
            i += 2
        elif t == "{":
            stack.append(len(joints) - 1)
            i += 1
        elif t == "}":
            stack.pop()
            i += 1
        elif t == "OFFSET":
            joints[-1]["offset"] = np.array([float(x) for x in tok[i + 1:i + 4]])
            i += 4
        elif t == "CHANNELS":
            n = int(tok[i + 1])
            joints[-1]["channels"] = tok[i + 2:i + 2 + n]
            i += 2 + n
        else:
            i += 1
    nframes = int(tok[tok.index("Frames:") + 1])
    ftime = float(tok[tok.index("Frame") + 2])
    start = tok.index("Frame") + 3
    data = np.array([float(x) for x in tok[start:]]).reshape(nframes, -1)
    return joints, data, ftime


def bvh_fk(joints, data):
    """World joint positions [F, J, 3] of the named joints (ZXY order as in CHANNELS)."""
    named = [k for k, j in enumerate(joints) if j["name"]]
    out = np.zeros((data.shape[0], len(named), 3))
    for f in range(data.shape[0]):
        col, world = 0, {}
        for k, j in enumerate(joints):
            if not j["name"]:
                continue
            R, t = np.eye(3), j["offset"].copy()
            for ch in j["channels"]:
                v = data[f, col]
                col += 1
                if ch.endswith("position"):
                    t["XYZ".index(ch[0])] = v  # absolute root position
                else:
                    a = math.radians(v)
                    c, s = math.cos(a), math.sin(a)
                    Ra = {"X": [[1, 0, 0], [0, c, -s], [0, s, c]], "Y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
                          "Z": [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[ch[0]]
                    R = R @ np.array(Ra)
            if j["parent"] < 0:
                world[k] = (R, t)
            else:
                Rp, tp = world[j["parent"]]
                world[k] = (Rp @ R, tp + Rp @ j["offset"])
            out[f, named.index(k)] = world[k][1]
    return out


def test_bvh_parses_back(synthetic_body, tmp_path):
    p, cam = _batch(b=6)
    rep = export_bvh(tmp_path / "m.bvh", synthetic_body, p, cam, fps=25, scale=100.0)
    joints, data, ftime = parse_bvh((tmp_path / "m.bvh").read_text())
    named = [j for j in joints if j["name"]]
    assert sorted(j["name"] for j in named) == sorted(skinning.JOINT_NAMES) and rep.num_frames == 6
    order = [[j["name"] for j in named].index(n) for n in skinning.JOINT_NAMES]  # DFS -> SMPL-X
    by_name = {j["name"]: j for j in named}
    parents = [skinning.JOINT_NAMES.index(joints[by_name[n]["parent"]]["name"])
               if by_name[n]["parent"] >= 0 else -1 for n in skinning.JOINT_NAMES]
    assert parents == synthetic_body.parents.tolist()
    assert data.shape == (6, 6 + 3 * 54) and ftime == pytest.approx(1 / 25)
    # summed rest offsets = the body's rest joints (cm here), within 1 mm
    rest = synthetic_body.rest_joints(p.betas[:1]).double()[0].numpy() * 100
    acc = {}
    for k, j in enumerate(joints):
        if j["name"]:
            acc[k] = j["offset"] + (acc[j["parent"]] if j["parent"] >= 0 else 0)
    got = np.stack([acc[k] for k, j in enumerate(joints) if j["name"]])[order]
    assert np.abs(got - rest).max() < 0.1
    # FK of the parsed motion = the body model's posed joints in the scene frame, within 1 mm
    posed = synthetic_body(p).joints[:, :55].double().numpy() + cam.translation.double().numpy()[:, None]
    want = opencv_to_gltf(None, posed)[1] * 100
    assert np.abs(bvh_fk(joints, data)[:, order] - want).max() < 0.1


# ------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_have_clear_messages(synthetic_body, tmp_path):
    p, cam = _batch(b=2)
    with pytest.raises(ExportError, match="empty"):
        export_glb(tmp_path / "e.glb", synthetic_body, SMPLXParams.zeros(0), None)
    bad = p.replace(body_pose=p.body_pose.clone().index_fill_(0, torch.tensor([1]), float("nan")))
    with pytest.raises(ExportError, match=r"body_pose.*frame\(s\) \[1\]"):
        export_glb(tmp_path / "n.glb", synthetic_body, bad, cam)
    with pytest.raises(ExportError, match="skeleton"):
        export_bvh(tmp_path / "s.bvh", object(), p, cam)
    with pytest.raises(ExportError, match="3 cameras for 2 frames"):
        export_glb(tmp_path / "c.glb", synthetic_body, p, Camera.cat([cam, cam.index(0)]))
    with pytest.raises(ExportError, match="fps"):
        export_glb(tmp_path / "f.glb", synthetic_body, p, cam, fps=0)
    assert not list(tmp_path.iterdir())  # nothing written


def test_node_writes_only_into_the_output_folder(synthetic_body, output_root, monkeypatch):
    import nodes
    p, cam = _batch(b=3)
    node = nodes.BladeExportAnimation()
    out = node.export(p, synthetic_body, "glb", 30.0, "blade/anim", camera=cam)
    rel = out["result"][0]
    assert re.fullmatch(r"blade/anim_00001_\.glb", rel) and (output_root / rel).is_file()
    out = node.export(p, synthetic_body, "bvh", 30.0, "blade/anim", bvh_scale=100.0)
    assert (output_root / out["result"][0]).suffix == ".bvh"
    before = set(output_root.parent.rglob("*"))
    for prefix in ("../escape", "/tmp/abs", "a/../../b"):
        with pytest.raises(UnsafePathError):
            node.export(p, synthetic_body, "glb", 30.0, prefix, camera=cam)
    assert set(output_root.parent.rglob("*")) == before
    # without bpy, fbx is not offered and the tooltip says why
    monkeypatch.setattr(blender, "bpy_python", lambda: None)
    spec = nodes.BladeExportAnimation.INPUT_TYPES()["required"]["format"]
    assert spec[0] == ["glb", "bvh"] and "bpy" in spec[1]["tooltip"]
    with pytest.raises(ValueError, match="bpy"):
        node.export(p, synthetic_body, "fbx", 30.0, "blade/anim")


# ------------------------------------------------------------------------------ Blender
needs_bpy = pytest.mark.skipif(
    blender.bpy_python() is None,
    reason="Blender's Python module 'bpy' is not importable here and $BLADE_BPY_PYTHON is unset "
           "(bpy 5.x needs Python 3.13: python3.13 -m venv v; v/bin/pip install bpy)")


@needs_bpy
def test_blender_roundtrip_matches_our_projection(synthetic_body, tmp_path):
    p, cam = _batch(b=4, focal=[300.0, 310.0, 320.0, 330.0])
    path = tmp_path / "r.glb"
    export_glb(path, synthetic_body, p, cam, fps=30, measure=False)
    rig = rigmod.build_rig(synthetic_body, p, cam)
    ours, depth = bench.our_projection(rig)
    res = blender.evaluate_glb(path, tmp_path / "r.npz")
    used = np.unique(rig.faces)
    rows = bench.compare(ours, res["px"], depth, used)
    assert max(r[0] for r in rows) <= 0.1 and max(r[1] for r in rows) <= 0.5, rows


@needs_bpy
def test_fbx_through_blender(synthetic_body, tmp_path):
    p, cam = _batch(b=2)
    export_glb(tmp_path / "x.glb", synthetic_body, p, cam, measure=False)
    blender.glb_to_fbx(tmp_path / "x.glb", tmp_path / "x.fbx")
    assert (tmp_path / "x.fbx").read_bytes()[:18] == b"Kaydara FBX Binary"
