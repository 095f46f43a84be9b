"""Params interchange (JSON, NPZ, official .pth) and output-folder safety."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from blade_nodes.body import SMPLXParams
from blade_nodes.camera import Camera
from blade_nodes.io import (ParamsFileError, UnsafePathError, load_params, output_path,
                            save_params)


def _random_params(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = SMPLXParams.zeros(b)
    return SMPLXParams(**{n: torch.randn(t.shape, generator=g) for n, t in z.as_dict().items()})


def _camera(b=3):
    return Camera.create(torch.tensor([1000.0, 1200.0, 800.0][:b]),
                         torch.tensor([[0.1, -0.2, 2.0], [0.0, 0.1, 3.5], [-0.3, 0.0, 0.8]][:b]),
                         torch.tensor([[640, 480], [512, 512], [1080, 1920]][:b]),
                         principal=torch.tensor([[321.5, 240.0], [256.0, 250.0], [540.0, 960.0]][:b]))


@pytest.mark.parametrize("ext", ["json", "npz"])
def test_round_trip_exact(tmp_path, ext):
    p, cam = _random_params(), _camera()
    path = save_params(tmp_path / f"p.{ext}", p, cam)
    q, cam2 = load_params(path)
    for n, t in p.as_dict().items():
        assert torch.equal(getattr(q, n), t), n
    for f in ("focal", "principal", "translation", "image_size"):
        assert torch.equal(getattr(cam2, f), getattr(cam, f)), f
    q2, none = load_params(save_params(tmp_path / f"nocam.{ext}", p))
    assert none is None and torch.equal(q2.body_pose, p.body_pose)


def test_json_missing_pose_keys_mean_zeros(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"format": "blade-smplx/1", "frames": [{"betas": [0.5] * 10}]}))
    p, cam = load_params(path)
    assert cam is None and p.batch_size == 1
    assert torch.equal(p.body_pose, torch.zeros(1, 63)) and p.betas[0, 0] == 0.5


@pytest.mark.parametrize("frame,match", [
    ({"body_pose": [0.0] * 62}, "body_pose.*63"),
    ({"global_orient": [float("nan")] * 3}, "NaN"),
    ({"camera": {"focal_length": 1000}}, "camera lacks"),
])
def test_json_bad_frames_named(tmp_path, frame, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": "blade-smplx/1", "frames": [frame]}))
    with pytest.raises(ParamsFileError, match=match):
        load_params(path)


def test_foreign_json_and_npz(tmp_path):
    (tmp_path / "a.json").write_text("{\"people\": []}")
    with pytest.raises(ParamsFileError, match="expected .*blade-smplx/1"):
        load_params(tmp_path / "a.json")
    np.savez(tmp_path / "b.npz", body_pose=np.zeros((2, 63)))
    with pytest.raises(ParamsFileError, match="expected format"):
        load_params(tmp_path / "b.npz")
    with pytest.raises(ParamsFileError, match="not found"):
        load_params(tmp_path / "none.json")


def test_official_pth_focal_and_image_size(tmp_path):
    """camera_hw is half the frame the focal refers to (official solver renders at 1/2)."""
    d = {"smplx_betas": torch.randn(1, 10), "smplx_body_pose": torch.randn(1, 63) * 0.1,
         "smplx_global_orientation": torch.tensor([[3.1, 0.0, 0.0]]),
         "smplx_translation": torch.zeros(1, 3),
         "camera_translation": torch.tensor([[0.05, 0.2, 1.7]]),
         "camera_focal_length": torch.tensor([[1450.0]]),
         "camera_hw": torch.tensor([[640, 640]]),
         "smplx_left_hand_pose": torch.randn(1, 45) * 0.1,
         "smplx_right_hand_pose": torch.randn(1, 45) * 0.1}
    torch.save(d, tmp_path / "0.pth")
    p, cam = load_params(tmp_path / "0.pth")
    assert cam.image_size.tolist() == [[1280, 1280]]
    assert cam.principal.tolist() == [[640.0, 640.0]]
    assert float(cam.focal[0]) == 1450.0
    assert not p.flat_hand_mean
    assert torch.equal(p.body_pose, d["smplx_body_pose"])


def test_pth_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ParamsFileError, match="not a safe, readable torch file"):
        load_params(tmp_path / "evil.pth")


@pytest.mark.parametrize("prefix", ["../escape", "/etc/passwd", "a/../../b", "..", "", "C:/x", "a\\..\\..\\b"])
def test_prefix_cannot_leave_output(output_root, prefix):
    before = set(output_root.parent.rglob("*"))
    with pytest.raises(UnsafePathError):
        output_path(prefix, "json", output_root)
    assert set(output_root.parent.rglob("*")) == before


def test_symlinked_subfolder_cannot_leave_output(output_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (output_root / "link").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        output_path("link/file", "json", output_root)


def test_output_path_numbers_files(output_root):
    a = output_path("blade/person", "json", output_root)
    a.write_text("{}")
    b = output_path("blade/person", "json", output_root)
    assert a.name == "person_00001_.json" and b.name == "person_00002_.json"
    assert a.parent == output_root / "blade"


def test_save_params_node_writes_inside_output(output_root):
    import nodes
    node = nodes.BladeSaveParams()
    res = node.save(_random_params(2), "blade/p", camera=_camera(2))
    path = res["result"][0]
    assert path.startswith(str(output_root)) and os.path.exists(path)
    p, cam = nodes.BladeLoadParams().load(path)
    assert p.batch_size == 2 and cam.batch_size == 2
    with pytest.raises(UnsafePathError):
        node.save(_random_params(2), "../../evil")
