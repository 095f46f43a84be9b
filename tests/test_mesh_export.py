"""Mesh export: GLB/OBJ/PLY inside the output folder only, glTF axes, Preview3D camera."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from blade_nodes.io import UnsafePathError
from blade_nodes.io import mesh


def tetra():
    v = torch.tensor([[[0.0, 0.0, 3.0], [0.3, 0.0, 3.1], [0.0, -0.4, 3.2], [0.1, 0.1, 2.8]]])
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
    return v, f


def load_vertices(path):
    import trimesh
    m = trimesh.load(str(path), process=False, force="mesh")
    return np.asarray(m.vertices), np.asarray(m.faces)


@pytest.mark.parametrize("fmt", mesh.MESH_FORMATS)
def test_export_roundtrip_in_gltf_axes(output_root, fmt):
    v, f = tetra()
    paths = mesh.export_meshes(v, f, "blade/body", fmt, output_root)
    assert len(paths) == 1 and paths[0].is_file() and paths[0].suffix == f".{fmt}"
    assert output_root.resolve() in paths[0].resolve().parents
    verts, faces = load_vertices(paths[0])
    want = v[0].double().numpy() * np.array([1.0, -1.0, -1.0])  # y up, camera looks down -z
    np.testing.assert_allclose(verts, want, atol=1e-5)
    np.testing.assert_array_equal(faces, f.numpy())


def test_one_numbered_file_per_frame(output_root):
    v, f = tetra()
    paths = mesh.export_meshes(torch.cat([v, v + 0.1]), f, "seq", "ply", output_root)
    assert [p.name for p in paths] == ["seq_00001_.ply", "seq_00002_.ply"]
    assert mesh.relative_to_output(paths[1], output_root) == "seq_00002_.ply"


@pytest.mark.parametrize("prefix", ["../evil", "/tmp/evil", "a/../../evil", "..\\evil", ""])
def test_prefix_escape_is_refused(output_root, prefix):
    v, f = tetra()
    with pytest.raises(UnsafePathError):
        mesh.export_meshes(v, f, prefix, "glb", output_root)
    assert not list(output_root.parent.glob("evil*"))


def test_unknown_format_is_refused(output_root):
    v, f = tetra()
    with pytest.raises(ValueError, match="format"):
        mesh.export_meshes(v, f, "x", "fbx", output_root)


def test_load3d_camera_fields():
    v, _ = tetra()
    info = mesh.load3d_camera(v[0], focal=500.0, image_height=480)
    assert set(info) >= {"position", "target", "zoom", "cameraType"}
    assert info["cameraType"] == "perspective" and info["zoom"] == 1
    assert info["position"] == {"x": 0.0, "y": 0.0, "z": 0.0}
    assert info["target"]["z"] == pytest.approx(-3.0)  # middle of z in [2.8, 3.2], glTF -z
    assert info["fov"] == pytest.approx(2 * np.degrees(np.arctan(240 / 500)))
    default = mesh.load3d_camera(None)
    assert default["target"] == {"x": 0.0, "y": 0.0, "z": 0.0} and default["position"]["z"] > 0


def test_save_mesh_node(synthetic_body, output_root, monkeypatch):
    import nodes
    from blade_nodes.body import SMPLXParams
    from blade_nodes.camera import Camera
    monkeypatch.setattr(nodes, "output_dir", lambda: output_root)
    cam = Camera.create([500.0, 600.0], [[0.0, 0.0, 3.0], [0.1, 0.0, 4.0]], [64, 48])
    out = nodes.BladeSaveMesh().save(SMPLXParams.zeros(2), synthetic_body, cam, "glb",
                                     "blade/mesh", preview_frame=1)
    rel, info = out["result"]
    assert rel == "blade/mesh_00002_.glb" and len(out["ui"]["text"]) == 2
    verts, _ = load_vertices(output_root / rel)
    with torch.no_grad():
        body = synthetic_body(SMPLXParams.zeros(1)).vertices[0].double().numpy()
    np.testing.assert_allclose(verts, (body + [0.1, 0.0, 4.0]) * [1, -1, -1], atol=1e-4)
    assert info["target"]["z"] < -3.0
    with pytest.raises(UnsafePathError):
        nodes.BladeSaveMesh().save(SMPLXParams.zeros(1), synthetic_body, None, "obj", "../x")
