"""The open body (SMPL-X-format model built from Anny): file format and acceptance checks.

Uses the cached file (``open_body_path()``) when it exists; otherwise builds it once per
session into a temporary folder (needs ``anny``; about 7 s with a warm Anny cache, about
70 s the very first time Anny builds its own cache). Skips when neither is available.
"""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from blade_nodes.body import SMPLXParams, load_body_model
from blade_nodes.body import open_body as ob

HAVE_ANNY = importlib.util.find_spec("anny") is not None
IX = {n: i for i, n in enumerate(ob.SMPLX_JOINT_NAMES)}


@pytest.fixture(scope="session")
def open_body_file(tmp_path_factory):
    cached = ob.open_body_path()
    if cached.is_file():
        return cached
    if not HAVE_ANNY:
        pytest.skip("open body not built (no cached file at "
                    f"{cached}) and 'anny' is not installed to build it: pip install anny")
    return ob.build_open_body(tmp_path_factory.mktemp("open_body") / ob.FILE_NAME)


@pytest.fixture(scope="session")
def arrays(open_body_file):
    with np.load(open_body_file, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def body(open_body_file):
    return load_body_model(open_body_file)


def _forward(body, b=1, betas=None, body_pose=None, jaw_pose=None):
    p = SMPLXParams.zeros(b, body.num_betas, body.num_expression)
    kw = {}
    if betas is not None:
        kw["betas"] = betas
    if body_pose is not None:
        kw["body_pose"] = body_pose
    if jaw_pose is not None:
        kw["jaw_pose"] = jaw_pose
    with torch.no_grad():
        return body(p.replace(**kw) if kw else p)


def _pose(**rots):
    bp = torch.zeros(21, 3)
    for name, aa in rots.items():
        bp[IX[name] - 1] = torch.tensor(aa, dtype=torch.float32)
    return bp.reshape(1, 63)


def test_file_format(arrays):
    v = arrays["v_template"].shape[0]
    f = arrays["f"]
    assert arrays["v_template"].shape == (v, 3) and v > 9929
    assert f.ndim == 2 and f.shape[1] == 3 and f.min() >= 0 and f.max() < v
    assert arrays["shapedirs"].shape == (v, 3, 400)
    assert np.abs(arrays["shapedirs"][:, :, 6:]).max() == 0
    assert np.abs(arrays["shapedirs"][:, :, :6]).max() > 1e-3
    assert arrays["posedirs"].shape == (v, 3, 486)
    assert arrays["J_regressor"].shape == (55, v)
    np.testing.assert_allclose(arrays["J_regressor"].sum(1), 1.0, atol=1e-4)
    w = arrays["weights"]
    assert w.shape == (v, 55) and w.min() >= 0
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    assert (w.sum(0) > 0).all(), "every SMPL-X joint (jaw, eyes, fingers too) drives vertices"
    assert list(arrays["kintree_table"][0]) == list(ob.SMPLX_PARENTS)
    assert arrays["lmk_faces_idx"].shape == (51,) and arrays["lmk_faces_idx"].max() < len(f)
    np.testing.assert_allclose(arrays["lmk_bary_coords"].sum(1), 1.0, atol=1e-5)
    ids = arrays["blade_vertex_ids"]
    assert ids.dtype == np.int64 and ids.shape == (21,) and ids.max() < v
    assert str(arrays["blade_body_kind"]) == ob.BODY_KIND
    assert list(arrays["blade_beta_names"]) == ["height", "weight", "muscle", "gender", "age",
                                                "proportions"]


def test_plain_smplx_loads_it(open_body_file, body):
    import smplx
    m = smplx.SMPLX(model_path=str(open_body_file), ext="npz", use_pca=False,
                    flat_hand_mean=True, num_betas=10)
    b = 2
    z = lambda n: torch.zeros(b, n)  # noqa: E731
    betas = z(10)
    betas[1, 0] = 1.5
    with torch.no_grad():
        out = m(betas=betas, expression=z(10), global_orient=z(3), body_pose=z(63),
                left_hand_pose=z(45), right_hand_pose=z(45), jaw_pose=z(3), leye_pose=z(3),
                reye_pose=z(3), transl=z(3))
        ours = _forward(body, b, betas=betas)
    assert out.joints.shape == (b, 127, 3)
    torch.testing.assert_close(out.joints[:, :55], ours.joints[:, :55], atol=1e-5, rtol=0)
    assert body.kind == ob.BODY_KIND


def test_rest_pose_is_a_t_pose(body):
    out = _forward(body)
    v, j = out.vertices[0], out.joints[0]
    stature = float(v[:, 1].max() - v[:, 1].min())
    assert 1.55 <= stature <= 1.9, stature
    assert float(j[IX["pelvis"]].norm()) < 0.5
    for side, sx in (("left", 1.0), ("right", -1.0)):
        for a, b in (("shoulder", "elbow"), ("elbow", "wrist")):
            d = j[IX[f"{side}_{b}"]] - j[IX[f"{side}_{a}"]]
            assert float(d[0]) * sx > 0, f"{side} arm points outward"
            elev = math.degrees(math.asin(abs(float(d[1])) / float(d.norm())))
            assert elev < 5.0, (side, a, b, elev)
    y = {n: float(j[IX[n], 1]) for n in IX}
    for side in ("left", "right"):
        assert y["head"] > y["neck"] > y["pelvis"] > y[f"{side}_knee"] > y[f"{side}_ankle"]
    # facing +Z: the nose is in front of the head joint; left is +X
    nose = out.joints[0, 55]
    assert float(nose[2]) > float(j[IX["head"], 2]) + 0.05
    assert float(j[IX["left_hip"], 0]) > 0 > float(j[IX["right_hip"], 0])


def test_beta0_changes_height_monotonically(body):
    betas = torch.zeros(3, body.num_betas)
    betas[0, 0], betas[2, 0] = -2.0, 2.0
    v = _forward(body, 3, betas=betas).vertices
    stature = (v[:, :, 1].max(1).values - v[:, :, 1].min(1).values).tolist()
    assert stature[0] + 0.05 < stature[1] < stature[2] - 0.05, stature


def test_betas_change_the_shape(body):
    betas = torch.zeros(7, body.num_betas)
    for k in range(6):
        betas[k + 1, k] = 2.0
    v = _forward(body, 7, betas=betas).vertices
    moved = (v[1:] - v[:1]).norm(dim=-1).amax(dim=1)
    assert (moved > 0.01).all(), moved


def test_left_elbow_bend_is_local(body, arrays):
    rest = _forward(body).vertices[0]
    bent = _forward(body, body_pose=_pose(left_elbow=(0.0, -math.pi / 2, 0.0))).vertices[0]
    moved = (bent - rest).norm(dim=1).numpy()
    parents = ob.SMPLX_PARENTS
    sub = {IX["left_elbow"]}
    for j in range(55):
        if parents[j] in sub:
            sub.add(j)
    arm = arrays["weights"][:, sorted(sub)].sum(1) > 0
    assert moved[~arm].max() < 1e-3, "only the left forearm and hand may move"
    assert moved[arm].max() > 0.2
    # the moving vertices are the left forearm and hand: outboard of the left shoulder
    sh_x = float(_forward(body).joints[0, IX["left_shoulder"], 0])
    assert arrays["v_template"][moved > 1e-3, 0].min() > sh_x


def test_jaw_moves_only_the_lower_face(body):
    out = _forward(body)
    rest, j = out.vertices[0], out.joints[0]
    opened = _forward(body, jaw_pose=torch.tensor([[0.3, 0.0, 0.0]])).vertices[0]
    moved = (opened - rest).norm(dim=1)
    assert moved.max() > 0.01
    # chin, lips, tongue and the skin under the chin; nothing below the shoulders or behind
    assert rest[moved > 1e-4, 1].min() > float(j[IX["left_shoulder"], 1])
    assert float(rest[moved > 1e-3, 1].max()) < float(out.joints[0, 55 + 2, 1])  # below eyes


def _coco_errors(body, arrays, body_pose):
    out = _forward(body, body_pose=body_pose)
    ours = body.keypoint_map("coco17")(out.joints)[0].numpy()
    names = list(arrays["blade_anny_keypoint_names"])
    anny_kp = arrays["blade_anny_keypoints"].astype(np.float64) @ out.vertices[0].numpy()
    order = [names.index(n) for n in body.keypoint_map("coco17").keypoint_names]
    return np.linalg.norm(ours - anny_kp[order], axis=1)


@pytest.mark.parametrize("pose_name", ["rest", "a_pose", "walk"])
def test_coco17_matches_annys_regressor(body, arrays, pose_name):
    d = math.radians
    poses = {
        "rest": _pose(),
        "a_pose": _pose(left_shoulder=(0, 0, -d(50)), right_shoulder=(0, 0, d(50)),
                        left_elbow=(0, -d(30), 0)),
        "walk": _pose(left_hip=(-d(30), 0, 0), right_hip=(d(20), 0, 0),
                      right_knee=(d(40), 0, 0), spine2=(0, d(15), 0)),
    }
    err = _coco_errors(body, arrays, poses[pose_name])
    assert err.max() < 0.03, dict(zip(body.keypoint_map("coco17").keypoint_names,
                                      np.round(err * 100, 2)))


def test_extra_vertex_joints_are_sensible(body):
    j = _forward(body).joints[0]
    nose, reye, leye, rear, lear = (j[55 + k] for k in range(5))
    assert float(leye[0]) > 0 > float(reye[0]) and float(lear[0]) > 0 > float(rear[0])
    assert float(nose[2]) > float(leye[2]) > float(lear[2])
    for side in ("left", "right"):
        ankle = j[IX[f"{side}_ankle"]]
        heel = j[55 + ob.EXTRA_VERTEX_NAMES.index(f"{side}_heel")]
        toe = j[55 + ob.EXTRA_VERTEX_NAMES.index(f"{side}_big_toe")]
        assert float(toe[2]) > float(ankle[2]) > float(heel[2])
        wrist_x = float(j[IX[f"{side}_wrist"], 0])
        for finger in ("thumb", "index", "middle", "ring", "pinky"):
            tip = j[55 + ob.EXTRA_VERTEX_NAMES.index(f"{side}_{finger}")]
            assert abs(float(tip[0])) > abs(wrist_x) + 0.05, (side, finger)


def test_runtime_does_not_need_anny(open_body_file):
    code = ("import sys; sys.modules['anny'] = None; sys.modules['warp'] = None\n"
            "from blade_nodes.body import load_body_model\n"
            f"m = load_body_model({str(open_body_file)!r})\n"
            "assert m.kind == 'open-body-anny'\n"
            "assert 'anny' not in [k for k, v in sys.modules.items() if v is not None]\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=str(ob.Path(__file__).resolve().parents[1]))
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.skipif(not HAVE_ANNY, reason="needs anny to compare with its own regressor")
def test_stored_keypoint_regressor_is_annys(arrays):
    import anny
    from anny.keypoints import KeypointsRegressor
    kp = KeypointsRegressor.coco(anny.Anny(skinning_method="lbs"))
    assert list(kp.labels) == list(arrays["blade_anny_keypoint_names"])
    np.testing.assert_allclose(kp.regression_weights.numpy(), arrays["blade_anny_keypoints"],
                               atol=1e-6)


def test_cache_path_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BLADE_OPEN_BODY", str(tmp_path / "x.npz"))
    assert ob.open_body_path() == (tmp_path / "x.npz").absolute()
    monkeypatch.delenv("BLADE_OPEN_BODY")
    monkeypatch.setenv("BLADE_CACHE_DIR", str(tmp_path / "cache"))
    p = ob.open_body_path()
    assert p.name == ob.FILE_NAME and str(p).startswith(str(tmp_path / "cache"))


def test_face_landmarks_are_laid_out_like_ibug(body):
    j = _forward(body).joints[0]
    lm = j[76:127]          # iBUG 17..67
    y = lambda k: float(lm[k - 17, 1])  # noqa: E731
    x = lambda k: float(lm[k - 17, 0])  # noqa: E731
    assert min(y(k) for k in range(17, 27)) > max(y(k) for k in range(36, 48))  # brows > eyes
    assert min(y(k) for k in range(36, 48)) > y(30) > max(y(k) for k in range(48, 68))
    assert x(36) < x(39) < 0 < x(42) < x(45)     # subject's right eye at -X
    assert x(48) < x(51) < x(54)
    head_z = float(j[IX["head"], 2])
    assert float(lm[:, 2].min()) > head_z + 0.03, "landmarks lie on the front of the face"


@pytest.mark.skipif(not HAVE_ANNY, reason="building needs anny")
def test_build_leaves_grad_mode_alone(tmp_path):
    """The demo and the nodes build on first use, then fit with gradients in-process."""
    import torch
    from blade_nodes.body.open_body import build_open_body
    assert torch.is_grad_enabled()
    build_open_body(tmp_path / "ob.npz")
    assert torch.is_grad_enabled()
