"""Body-model layer on the synthetic SMPL-X fixture; safe loading and clear errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from blade_nodes.body import (BodyModelError, SMPLXParams, keypoint_map, load_body_model,
                              find_body_models)
from blade_nodes.body.safe_pickle import load_model_pickle


@pytest.mark.parametrize("batch", [1, 5])
def test_forward_shapes_any_batch(synthetic_body, batch):
    out = synthetic_body(SMPLXParams.zeros(batch))
    assert out.vertices.shape == (batch, 10475, 3)
    assert out.joints.shape == (batch, 127, 3)


def test_zero_pose_is_template(synthetic_body):
    out = synthetic_body(SMPLXParams.zeros(2))
    torch.testing.assert_close(out.vertices[1], synthetic_body.smplx.v_template, atol=1e-5, rtol=0)


def test_pose_changes_vertices_and_betas_are_padded(synthetic_body):
    p = SMPLXParams.zeros(1, num_betas=3)  # fewer betas than the model: padded with zeros
    p2 = p.replace(body_pose=torch.full((1, 63), 0.3))
    a, b = synthetic_body(p).vertices, synthetic_body(p2).vertices
    assert (a - b).abs().max() > 1e-3


def test_hand_mean_convention(synthetic_body):
    """flat_hand_mean=False adds the model's mean hand (official BLADE outputs)."""
    rel = SMPLXParams.zeros(1).replace(flat_hand_mean=False)
    absolute = SMPLXParams.zeros(1).replace(left_hand_pose=synthetic_body.hands_mean[:1].clone(),
                                            right_hand_pose=synthetic_body.hands_mean[1:].clone())
    torch.testing.assert_close(synthetic_body(rel).vertices, synthetic_body(absolute).vertices)


def test_gradients_flow_to_params(synthetic_body):
    p = SMPLXParams.zeros(2)
    pose = p.body_pose.clone().requires_grad_(True)
    synthetic_body(p.replace(body_pose=pose)).vertices.sum().backward()
    assert pose.grad is not None and torch.isfinite(pose.grad).all()
    assert all(not q.requires_grad for q in synthetic_body.parameters())


def test_keypoint_maps(synthetic_body):
    out = synthetic_body(SMPLXParams.zeros(1))
    op = synthetic_body.keypoint_map("openpose18")
    kp = op(out.joints)
    assert kp.shape == (1, 18, 3)
    names = op.keypoint_names
    j = out.joints[0]
    torch.testing.assert_close(kp[0, names.index("neck")], (j[16] + j[17]) / 2)
    torch.testing.assert_close(kp[0, names.index("left_wrist")], j[20])
    coco = keypoint_map("coco17")
    assert coco.available.all() and coco.keypoint_names[0] == "nose"
    hand = keypoint_map("right_hand21")
    assert hand.available.all() and hand.weights.shape == (21, 127)
    face = keypoint_map("face68")
    assert int(face.available.sum()) == 51  # no contour without use_face_contour
    assert keypoint_map("face70", 144).available.all()
    with pytest.raises(ValueError, match="unknown keypoint format"):
        keypoint_map("coco99")


def test_missing_file_names_what_to_do(tmp_path):
    with pytest.raises(BodyModelError, match="not found.*SMPL-X files need a free registration"):
        load_body_model(tmp_path / "SMPLX_NEUTRAL.npz")


def test_not_a_body_model(tmp_path):
    np.savez(tmp_path / "SMPLX_NEUTRAL.npz", weights=np.zeros(3))
    with pytest.raises(BodyModelError, match="not an SMPL-X model file: missing v_template"):
        load_body_model(tmp_path / "SMPLX_NEUTRAL.npz")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(BodyModelError, match="expected an SMPL-X .npz or .pkl"):
        load_body_model(tmp_path / "x.txt")


def test_npz_with_object_array_is_refused(tmp_path):
    np.savez(tmp_path / "SMPLX_NEUTRAL.npz", v_template=np.array([{"a": 1}], dtype=object))
    with pytest.raises(BodyModelError, match="refused"):
        load_body_model(tmp_path / "SMPLX_NEUTRAL.npz")


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /tmp/blade_pwned",))


def test_pickle_with_disallowed_class_is_refused(tmp_path):
    path = tmp_path / "SMPLX_NEUTRAL.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Evil()}, protocol=2))
    with pytest.raises(BodyModelError, match="refused to load posix.system|refused to load os.system"):
        load_body_model(path)


def test_chumpy_style_pickle_loads(tmp_path, synthetic_smplx_path, monkeypatch):
    """An official-style pickle: chumpy objects (state {'x': array}) and a sparse regressor."""
    import io
    import scipy.sparse
    monkeypatch.setenv("BLADE_CACHE_DIR", str(tmp_path / "cache"))
    with np.load(synthetic_smplx_path) as z:
        data = {k: z[k] for k in z.files}
    data["J_regressor"] = scipy.sparse.csc_matrix(data["J_regressor"])

    class Ch:  # pickled under the module name chumpy.ch, like the official files
        def __init__(self, x):
            self.x = x

        def __getstate__(self):
            return {"x": self.x}
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    data["shapedirs"] = Ch(data["shapedirs"])
    buf = io.BytesIO()

    class P(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, Ch):
                return (_make_stub, (), obj.__getstate__())
            return NotImplemented
    P(buf, protocol=2).dump(data)
    raw = buf.getvalue().replace(b"tests.test_body_model\n_make_stub", b"chumpy.ch\nCh")
    raw = raw.replace(b"test_body_model\n_make_stub", b"chumpy.ch\nCh")
    (tmp_path / "SMPLX_NEUTRAL.pkl").write_bytes(raw)
    arrays = load_model_pickle(tmp_path / "SMPLX_NEUTRAL.pkl")
    np.testing.assert_array_equal(arrays["shapedirs"], data["shapedirs"].x)
    assert isinstance(arrays["J_regressor"], np.ndarray)
    model = load_body_model(tmp_path / "SMPLX_NEUTRAL.pkl")
    assert model(SMPLXParams.zeros(2)).vertices.shape == (2, 10475, 3)


def _make_stub():
    return object.__new__(object)


def test_find_body_models(tmp_path, synthetic_smplx_path):
    (tmp_path / "SMPLX_MALE.npz").write_bytes(synthetic_smplx_path.read_bytes())
    (tmp_path / "readme.txt").write_text("x")
    assert [p.name for p in find_body_models([tmp_path, tmp_path / "nope"])] == ["SMPLX_MALE.npz"]
    m = load_body_model(tmp_path / "SMPLX_MALE.npz")
    assert m.gender == "male" and m.kind == "smplx"
