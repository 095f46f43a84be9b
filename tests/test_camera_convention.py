"""The one camera convention (OpenCV axes, pixel centres at +0.5)."""
from __future__ import annotations

import doctest

import pytest
import torch

import blade_nodes.camera.convention as conv
from blade_nodes.camera import Camera, body_to_camera, project_points


def test_doctests():
    assert doctest.testmod(conv).failed == 0


def test_projection_equation_and_default_principal():
    cam = Camera.create([500.0, 800.0], [[0.0, 0.0, 2.0], [0.1, 0.2, 3.0]], [[640, 480], [300, 200]])
    assert cam.principal.tolist() == [[320.0, 240.0], [150.0, 100.0]]
    pts = torch.tensor([[[0.2, -0.1, 0.0]], [[0.0, 0.0, 0.0]]])
    uv = project_points(body_to_camera(pts, cam.translation), cam.focal, cam.principal)
    torch.testing.assert_close(uv[0, 0], torch.tensor([500 * 0.2 / 2 + 320, 500 * -0.1 / 2 + 240]))
    torch.testing.assert_close(uv[1, 0], torch.tensor([800 * 0.1 / 3 + 150, 800 * 0.2 / 3 + 100]))
    K = cam.K()
    assert K.shape == (2, 3, 3) and K[1, 0, 2] == 150 and K[0, 0, 0] == 500


def test_camera_rejects_bad_shapes():
    with pytest.raises(ValueError, match="Camera.translation: expected shape"):
        Camera(torch.ones(2), torch.ones(2, 2), torch.ones(3, 3), torch.ones(2, 2, dtype=torch.long))


def test_index_and_cat():
    cam = Camera.create([500.0, 800.0, 900.0], torch.rand(3, 3), [640, 480])
    parts = [cam.index(i) for i in range(3)]
    back = Camera.cat(parts)
    assert torch.equal(back.focal, cam.focal) and back.batch_size == 3


def test_load_body_model_node(monkeypatch, tmp_path, synthetic_smplx_path):
    import nodes
    monkeypatch.setenv("BLADE_MODELS_DIR", str(tmp_path))
    (tmp_path / "smplx").mkdir()
    (tmp_path / "smplx" / "SMPLX_FEMALE.npz").write_bytes(synthetic_smplx_path.read_bytes())
    choices = nodes.BladeLoadBodyModel.INPUT_TYPES()["required"]["model"][0]
    assert "SMPLX_FEMALE.npz" in choices and any("open" in c for c in choices)
    (model,) = nodes.BladeLoadBodyModel().load("SMPLX_FEMALE.npz")
    assert model.gender == "female"
    with pytest.raises(ValueError, match="not found.*smplx"):
        nodes.BladeLoadBodyModel().load("SMPLX_NEUTRAL.npz")
