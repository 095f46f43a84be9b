"""Stage 2 without weights: POSE_KEYPOINT parsing, sparse skeleton, keypoint fit, node glue."""
from __future__ import annotations

import math

import pytest
import torch

from blade_nodes.body import SMPLXParams
from blade_nodes.body.keypoints import FORMATS
from blade_nodes.camera import project_points
from blade_nodes.pose.estimate import (PoseNetUnavailable, estimate_pose, partial_view_note,
                                      report, tz_values)
from blade_nodes.pose.fit import POSE_LIMITS, FitConfig, fit_smplx_to_keypoints
from blade_nodes.pose.keypoints2d import (BODY25_FROM_COCO17, BODY25_FROM_OPENPOSE18,
                                          PoseKeypoints2D, parse_pose_keypoints)
from blade_nodes.pose.skeleton import SparseSkeleton, axis_angle_to_matrix, matrix_to_axis_angle

W, H = 640, 480
FAST = FitConfig(iterations=80, starts=2)

# A human-proportioned SMPL-X skeleton (T-pose, metres, y up, left at +x): joints 0-24
_REST = {0: (0, 0, 0), 1: (.06, -.09, 0), 3: (0, .11, -.01), 4: (.1, -.47, 0), 6: (0, .24, 0),
         7: (.09, -.88, -.03), 9: (0, .30, .02), 10: (.12, -.94, .1), 12: (0, .52, -.01),
         13: (.07, .42, 0), 15: (0, .62, .04), 16: (.17, .45, -.01), 18: (.43, .44, -.03),
         20: (.69, .45, -.03), 22: (0, .6, .05), 23: (.03, .68, .08)}
_PAIRS = {1: 2, 4: 5, 7: 8, 10: 11, 13: 14, 16: 17, 18: 19, 20: 21, 23: 24}


@pytest.fixture(scope="module")
def human_body(tmp_path_factory):
    """The synthetic SMPL-X file with a human skeleton: joints are one-hot on 55 vertices
    placed like a person (the mesh itself stays a blob; use skeleton keypoints only)."""
    import numpy as np
    from blade_nodes.body import load_body_model
    from blade_nodes.body.synthetic import write_synthetic_smplx
    path = write_synthetic_smplx(tmp_path_factory.mktemp("human") / "SMPLX_NEUTRAL.npz", seed=3)
    data = dict(np.load(path))
    rest = np.zeros((55, 3), np.float32)
    for j, xyz in _REST.items():
        rest[j] = xyz
        if j in _PAIRS:
            rest[_PAIRS[j]] = (-xyz[0], xyz[1], xyz[2])
    for k in range(15):  # fingers: three joints per finger beyond each wrist
        off = np.array([0.03 * (1 + k % 3), 0.0, 0.02 * (k // 3 - 2)], np.float32)
        rest[25 + k] = rest[20] + off
        rest[40 + k] = rest[21] + off * np.array([-1, 1, 1], np.float32)
    ids = np.arange(10000, 10055)
    data["v_template"][ids] = rest
    jreg = np.zeros_like(data["J_regressor"])
    jreg[np.arange(55), ids] = 1.0
    data["J_regressor"] = jreg
    np.savez(path, **data)
    return load_body_model(path)


def _flat(points):
    return [float(v) for p in points for v in p]


def _person(n_body=18, scale=(1.0, 1.0), hands=True, offset=0.0):
    g = torch.Generator().manual_seed(n_body)
    body = [(100 + offset + 10 * i, 50 + 20 * i, 1.0) for i in range(n_body)]
    body = [(x * scale[0], y * scale[1], c) for x, y, c in body]
    person = {"pose_keypoints_2d": _flat(body), "face_keypoints_2d": None,
              "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None}
    if hands:
        hand = (torch.rand(21, 2, generator=g) * 50 + 200)
        person["hand_left_keypoints_2d"] = _flat([(x * scale[0], y * scale[1], 1.0)
                                                  for x, y in hand.tolist()])
    return person


# ----------------------------------------------------------------------------- parsing
def test_slot_tables_match_the_foundation_maps():
    names25 = [n for n, _ in FORMATS["body25"]]
    assert [names25[s] for s in BODY25_FROM_OPENPOSE18] == [n for n, _ in FORMATS["openpose18"]]
    assert [names25[s] for s in BODY25_FROM_COCO17] == [n for n, _ in FORMATS["coco17"]]


def test_pixel_and_normalised_coordinates_agree():
    px = [{"people": [_person()], "canvas_width": W, "canvas_height": H}]
    nm = [{"people": [_person(scale=(1 / W, 1 / H))], "canvas_width": W, "canvas_height": H}]
    a = parse_pose_keypoints(px, (W, H))
    b = parse_pose_keypoints(nm, (W, H))
    assert a.valid.all() and b.valid.all()
    torch.testing.assert_close(a.body, b.body, atol=1e-3, rtol=0)
    torch.testing.assert_close(a.left_hand, b.left_hand, atol=1e-3, rtol=0)
    # OpenPose-18 point 8 (right hip) lands in BODY_25 slot 9; slot 8 (mid-hip) stays missing
    assert a.body[0, 9, 0] == pytest.approx(100 + 80) and a.body[0, 8, 2] == 0
    assert a.body_format == ("openpose18",)


def test_missing_hands_bare_dict_and_coco17():
    frame = {"people": [_person(n_body=17, hands=False)], "canvas_width": W, "canvas_height": H}
    kp = parse_pose_keypoints(frame, (W, H))  # a bare dict is one frame
    assert kp.batch_size == 1 and kp.valid.all()
    assert kp.left_hand[..., 2].sum() == 0 and kp.right_hand[..., 2].sum() == 0
    assert not kp.has_hands().any()
    assert kp.body_format == ("coco17",)
    assert kp.body[0, 16, 0] == pytest.approx(110)  # COCO left eye -> BODY_25 slot 16


def test_multiple_people_and_index_out_of_range():
    frame = {"people": [_person(), _person(offset=300.0)], "canvas_width": W, "canvas_height": H}
    second = parse_pose_keypoints([frame], (W, H), person_index=1)
    assert second.valid.all() and second.body[0, 0, 0] == pytest.approx(400)
    bad = parse_pose_keypoints([frame, frame], (W, H), person_index=2)
    assert not bad.valid.any()
    assert "person index 2 is out of range" in bad.problems[0] and "2 people" in bad.problems[0]


def test_auto_person_uses_the_mask():
    frame = {"people": [_person(), _person(offset=300.0)], "canvas_width": W, "canvas_height": H}
    mask = torch.zeros(1, H, W)
    mask[:, :, 380:] = 1
    kp = parse_pose_keypoints([frame], (W, H), person_index=-1, mask=mask)
    assert kp.body[0, 0, 0] == pytest.approx(400)


def test_bad_frames_are_flagged_not_raised():
    frames = [
        {"people": [], "canvas_width": W, "canvas_height": H},                   # nobody
        {"people": [_person(n_body=18)], "canvas_width": 512, "canvas_height": 512},  # aspect
        {"people": [{"pose_keypoints_2d": _flat([(10.0, 10.0, 1.0)] * 3 + [(0, 0, 0)] * 15)}],
         "canvas_width": W, "canvas_height": H},                                 # 3 points
        {"people": [_person()], "canvas_width": W // 2, "canvas_height": H // 2},  # rescaled ok
    ]
    kp = parse_pose_keypoints(frames, (W, H))
    assert kp.valid.tolist() == [False, False, False, True]
    assert "no person" in kp.problems[0]
    assert "512x512" in kp.problems[1]
    assert "only 3 visible body keypoints" in kp.problems[2]
    assert any("rescaled" in n for n in kp.notes)
    assert kp.body[3, 0, 0] == pytest.approx(200)  # 100 px on a half-size canvas


def test_frame_count_mismatch_raises_clearly():
    frame = {"people": [_person()], "canvas_width": W, "canvas_height": H}
    with pytest.raises(ValueError, match="2 frames of keypoints for 3 images"):
        parse_pose_keypoints([frame, frame], (W, H), batch_size=3)
    assert parse_pose_keypoints([frame], (W, H), batch_size=3).batch_size == 3
    with pytest.raises(ValueError, match="POSE_KEYPOINT"):
        parse_pose_keypoints("nope", (W, H))


# ----------------------------------------------------------------------------- skeleton
def test_sparse_skeleton_matches_body_model(synthetic_body):
    g = torch.Generator().manual_seed(0)
    B = 3
    r = lambda n, s: torch.randn(B, n, generator=g) * s  # noqa: E731
    p = SMPLXParams.zeros(B).replace(betas=r(10, 1), global_orient=r(3, 1), body_pose=r(63, .4),
                                     left_hand_pose=r(45, .3), right_hand_pose=r(45, .3),
                                     jaw_pose=r(3, .2), expression=r(10, 1))
    full = torch.cat([p.global_orient, p.body_pose, p.jaw_pose, p.leye_pose, p.reye_pose,
                      p.left_hand_pose, p.right_hand_pose], 1).reshape(B, 55, 3)
    got = SparseSkeleton(synthetic_body)(axis_angle_to_matrix(full), p.betas, p.expression)
    torch.testing.assert_close(got, synthetic_body(p).joints, atol=1e-5, rtol=1e-5)


def test_rotation_round_trip_including_pi():
    aa = torch.tensor([[math.pi, 0, 0], [0, 0, math.pi], [0.1, -0.2, 0.3], [0, 0, 0],
                       [2.2214415, 0, 2.2214415]])
    R = axis_angle_to_matrix(aa)
    torch.testing.assert_close(axis_angle_to_matrix(matrix_to_axis_angle(R)), R, atol=1e-5,
                               rtol=0)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (x,))


# ----------------------------------------------------------------------------- fitting
def _scene(body, B=2, seed=0, noise=0.0):
    """A known pose seen by a 500 px camera, BODY_25 keypoints with all points visible."""
    g = torch.Generator().manual_seed(seed)
    pose = torch.zeros(B, 21, 3)
    # in the image plane of a person facing the camera (no depth flips to guess)
    pose[:, 0, 2] = 0.3 + 0.3 * torch.rand(B, generator=g)    # left leg out to the side
    pose[:, 15, 2] = -0.9 - 0.4 * torch.rand(B, generator=g)  # left arm lowered
    pose[:, 16, 2] = 0.3 + 0.4 * torch.rand(B, generator=g)   # right arm a little lowered
    pose[:, 2, 2] = 0.15                                      # spine bends sideways
    orient = torch.tensor([math.pi, 0.0, 0.0]).expand(B, 3)
    gt = SMPLXParams.zeros(B).replace(body_pose=pose.reshape(B, 63), global_orient=orient.clone())
    tz = torch.tensor([2.5, 3.5])[:B]
    joints = body(gt).joints
    T = torch.stack([torch.full((B,), 0.1), torch.zeros(B), tz], 1) - joints[:, 0]
    cam = joints + T[:, None]
    kmap = body.keypoint_map("body25")
    uv = project_points(kmap(cam), torch.full((B,), 500.0), torch.tensor([[W / 2, H / 2]] * B))
    uv = uv + noise * torch.randn(uv.shape, generator=g)
    conf = kmap.available.float().clone()
    conf[[0, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]] = 0  # face and feet: blob vertices
    body25 = torch.cat([uv, conf.expand(B, -1)[..., None]], -1)
    return gt, cam, tz, PoseKeypoints2D.from_tensors(body25, (W, H))


def test_fit_recovers_a_known_pose_and_keeps_tz(human_body):
    gt, cam, tz, kp = _scene(human_body)
    fit = fit_smplx_to_keypoints(human_body, kp, tz, focal=500.0, cfg=FAST)
    assert fit.valid.all()
    assert (fit.reprojection_px < 3.0).all(), fit.reprojection_px
    joints = human_body(fit.params).joints + fit.camera.translation[:, None]
    # the contract: (pelvis + T).z == Tz
    torch.testing.assert_close(joints[:, 0, 2], tz, atol=1e-4, rtol=0)
    assert ((joints[:, 0] - cam[:, 0]).norm(dim=-1) < 0.05).all()  # pelvis placed, metres
    j, c = joints[:, :22] - joints[:, :1], cam[:, :22] - cam[:, :1]
    err = (j - c).norm(dim=-1).mean(1)  # MPJPE, metres, 22 body joints
    neutral = SMPLXParams.zeros(2).replace(global_orient=gt.global_orient)
    nj = human_body(neutral).joints[:, :22]
    base = ((nj - nj[:, :1]) - c).norm(dim=-1).mean(1)
    # the relaxed-stance prior leaves a few cm on in-plane poses; neutral is ~11 cm off
    assert (err < 0.07).all() and (err < 0.6 * base).all(), (err, base)


def test_fit_is_deterministic(human_body):
    _, _, tz, kp = _scene(human_body, noise=2.0)
    cfg = FitConfig(iterations=30, starts=2)
    a = fit_smplx_to_keypoints(human_body, kp, tz, focal=500.0, cfg=cfg)
    b = fit_smplx_to_keypoints(human_body, kp, tz, focal=500.0, cfg=cfg)
    for name, t in a.params.as_dict().items():
        assert torch.equal(t, getattr(b.params, name)), name
    assert torch.equal(a.camera.translation, b.camera.translation)


def test_batch_is_independent_of_its_neighbours(human_body):
    _, _, tz, kp = _scene(human_body, noise=1.0)
    cfg = FitConfig(iterations=20, starts=2)
    both = fit_smplx_to_keypoints(human_body, kp, tz, focal=500.0, cfg=cfg)
    one = fit_smplx_to_keypoints(human_body, kp.index(1), tz[1:], focal=500.0, cfg=cfg)
    torch.testing.assert_close(one.params.body_pose, both.params.body_pose[1:], atol=1e-4,
                               rtol=0)


def test_bad_frames_are_neutral_and_flagged(human_body):
    _, _, tz, kp = _scene(human_body)
    frames = [{"people": [], "canvas_width": W, "canvas_height": H},
              {"people": [{"pose_keypoints_2d": _flat(kp.body[1, list(BODY25_FROM_OPENPOSE18)]
                                                      .tolist())}],
               "canvas_width": W, "canvas_height": H}]
    parsed = parse_pose_keypoints(frames, (W, H))
    calls = []
    fit = fit_smplx_to_keypoints(human_body, parsed, tz, focal=500.0,
                                 cfg=FitConfig(iterations=10, starts=1),
                                 progress=lambda i, n: calls.append((i, n)))
    assert fit.valid.tolist() == [False, True]
    assert fit.params.valid.tolist() == [False, True]
    assert fit.params.body_pose[0].abs().sum() == 0 and "no person" in fit.problems[0]
    assert torch.isfinite(fit.camera.translation).all()
    assert calls[0] == (0, 10) and calls[-1] == (10, 10)
    # all frames bad: still no crash
    none = fit_smplx_to_keypoints(human_body, parsed.index(0), tz[:1], focal=500.0)
    assert not none.valid.any()


def test_progress_can_cancel(human_body):
    _, _, tz, kp = _scene(human_body)

    def stop(i, n):
        if i > 5:
            raise InterruptedError("cancelled")
    with pytest.raises(InterruptedError):
        fit_smplx_to_keypoints(human_body, kp, tz, focal=500.0, cfg=FAST, progress=stop)


def test_refine_tz_moves_toward_the_truth(human_body):
    _, _, tz, kp = _scene(human_body, B=1)
    cfg = FitConfig(iterations=120, starts=1, refine_tz=True, tz_sigma=0.5)
    fit = fit_smplx_to_keypoints(human_body, kp, tz * 1.2, focal=500.0, cfg=cfg)
    assert abs(float(fit.tz[0] - tz[0])) < abs(float(tz[0] * 0.2))
    joints = human_body(fit.params).joints + fit.camera.translation[:, None]
    torch.testing.assert_close(joints[:, 0, 2], fit.tz, atol=1e-4, rtol=0)


def test_limits_are_mirrored():
    lo, hi = POSE_LIMITS
    assert lo[3, 0] == 0 and hi[3, 0] > 2  # left knee bends about +x only
    assert hi[17, 1] <= 0.05 and lo[18, 1] >= -0.05  # elbows bend one way, mirrored
    torch.testing.assert_close(lo[1], torch.stack([lo[0, 0], -hi[0, 1], -hi[0, 2]]))


# ----------------------------------------------------------------------------- stage + node
def test_estimate_pose_needs_an_input_and_tz_contract(human_body):
    img = torch.zeros(2, 3, H, W)
    with pytest.raises(ValueError, match="connect 'keypoints'"):
        estimate_pose(human_body, img, 2.0)
    with pytest.raises(ValueError, match="3 depths for 2 images"):
        tz_values(torch.ones(3), 2)

    class Tz:  # any object with a .tz tensor is accepted
        tz = torch.tensor([2.0, 3.0])
    assert tz_values(Tz(), 2).tolist() == [2.0, 3.0]


def test_posenet_call_site_says_what_is_missing(human_body, monkeypatch):
    import importlib
    real = importlib.import_module

    def fake(name, *a, **k):
        if name.endswith("pose.posenet"):
            raise ImportError("no module")
        return real(name, *a, **k)
    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(PoseNetUnavailable, match="PoseNet support not available yet"):
        estimate_pose(human_body, torch.zeros(1, 3, H, W), 2.0, posenet=object())


def test_node_runs_on_keypoints(human_body):
    import nodes
    _, _, tz, kp = _scene(human_body)
    frames = [{"people": [{"pose_keypoints_2d": _flat(kp.body[i, list(BODY25_FROM_OPENPOSE18)]
                                                      .tolist())}],
               "canvas_width": W, "canvas_height": H} for i in range(2)]
    frames[1] = {"people": [], "canvas_width": W, "canvas_height": H}
    node = nodes.BladeEstimatePose()
    out = node.estimate(torch.zeros(2, H, W, 3), type("Tz", (), {"tz": tz})(), human_body,
                        keypoints=frames, iterations=20, focal_length=500.0)
    params, camera, text = out["result"]
    assert params.valid.tolist() == [True, False]
    assert camera.batch_size == 2 and "frame 1: no person" in text
    with pytest.raises(ValueError, match="needs 2D keypoints or a PoseNet"):
        node.estimate(torch.zeros(1, H, W, 3), tz[:1], human_body)


def test_focal_is_estimated_when_unknown(human_body):
    """A wide-angle close-range frame (HFoV 95 deg, pelvis at 1.0 / 1.6 m), true Tz, no focal:
    the estimate lands within 5 % of the truth (the 60-degree guess is 45 % off)."""
    from blade_nodes.camera import focal_from_fov
    f_true = focal_from_fov(95.0, W)
    g = torch.Generator().manual_seed(4)
    B = 2
    pose = torch.zeros(B, 21, 3)
    pose[:, 0, 0] = -0.3                                       # left leg a little forward
    pose[:, 15, 2] = -0.9 - 0.3 * torch.rand(B, generator=g)  # arms lowered
    pose[:, 16, 2] = 0.9 + 0.3 * torch.rand(B, generator=g)
    orient = axis_angle_to_matrix(torch.tensor([math.pi, 0.0, 0.0]).expand(B, 3)) @ \
        axis_angle_to_matrix(torch.tensor([[0.0, 0.3, 0.0], [0.0, -0.5, 0.0]]))
    gt = SMPLXParams.zeros(B).replace(body_pose=pose.reshape(B, 63),
                                      global_orient=matrix_to_axis_angle(orient))
    tz = torch.tensor([1.0, 1.6])
    joints = human_body(gt).joints
    T = torch.stack([torch.tensor([0.05, -0.1]), torch.tensor([0.05, 0.1]), tz], 1) - joints[:, 0]
    kmap = human_body.keypoint_map("body25")
    uv = project_points(kmap(joints + T[:, None]), torch.full((B,), f_true),
                        torch.tensor([[W / 2, H / 2]] * B))
    conf = kmap.available.float().clone()
    conf[[0, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]] = 0
    kp = PoseKeypoints2D.from_tensors(torch.cat([uv, conf.expand(B, -1)[..., None]], -1), (W, H))
    fit = fit_smplx_to_keypoints(human_body, kp, tz, cfg=FitConfig(iterations=120, starts=2))
    err = (fit.camera.focal / f_true - 1).abs()
    assert (err < 0.05).all(), (fit.camera.focal, f_true)
    assert (fit.reprojection_px < 3.0).all(), fit.reprojection_px
    # switched off: the 60-degree guess, unchanged
    off = fit_smplx_to_keypoints(human_body, kp, tz,
                                 cfg=FitConfig(iterations=10, starts=1, estimate_focal=False))
    torch.testing.assert_close(off.camera.focal, torch.full((B,), focal_from_fov(60.0, W)))


def test_limb_flips_keep_the_image_and_swap_depth(human_body):
    """The flip search's candidates: the whole left arm mirrored about its shoulder, and the
    left forearm alone about the elbow (hinge kept), leave the joints' image nearly in place
    and swap the mirrored segment's depth direction."""
    from blade_nodes.pose.fit import _LIMBS, _global_rotations, _hinge_flip, _reflect
    pose = torch.zeros(1, 21, 3)
    pose[0, 15] = torch.tensor([0.0, -0.5, -0.9])  # left arm down, a little toward the camera
    pose[0, 17, 1] = -1.0                           # elbow bent
    orient = torch.tensor([[math.pi, 0.0, 0.0]])
    p = SMPLXParams.zeros(1).replace(body_pose=pose.reshape(1, 63), global_orient=orient)
    T = torch.tensor([[0.0, 0.0, 3.0]])

    def cam_joints(bp):
        return human_body(p.replace(body_pose=bp.reshape(1, 63))).joints[0] + T

    def uv(X):
        return X[:, :2] / X[:, 2:] * 500.0

    X = cam_joints(pose)
    G = _global_rotations(axis_angle_to_matrix(orient), pose.reshape(1, 63),
                          [int(j) for j in human_body.parents[:22]])
    js, je, jw, axis = _LIMBS[0]
    # whole limb about the shoulder
    whole = pose.clone()
    Gs = _reflect(G[js], X[js][None], X[je][None], axis)
    whole[0, js - 1] = matrix_to_axis_angle(G[human_body.parents[js]].transpose(1, 2) @ Gs)[0]
    Xw = cam_joints(whole)
    # lower segment about the elbow
    twist, bend = _hinge_flip(G[js], G[je], X[js][None], X[je][None], X[jw][None], je, axis)
    lower = pose.clone()
    lower[0, js - 1] = matrix_to_axis_angle(axis_angle_to_matrix(pose[:, js - 1])
                                            @ axis_angle_to_matrix(twist))[0]
    lower[0, je - 1] = bend[0]
    Xl = cam_joints(lower)
    for Y, a, b in ((Xw, js, je), (Xw, je, jw), (Xl, je, jw)):
        assert (Y[b, 2] - Y[a, 2]) * (X[b, 2] - X[a, 2]) < 0, (a, b)  # depth direction swapped
    px = lambda Y, j: float((uv(Y[[j]]) - uv(X[[j]])).norm())  # noqa: E731  at 500 px focal
    assert px(Xw, je) < 0.5 and px(Xl, jw) < 2.0, (px(Xw, je), px(Xl, jw))  # exact flips
    assert px(Xw, jw) < 15.0  # the rest of the limb follows (the fit refines it)
    torch.testing.assert_close(Xl[je], X[je], atol=1e-5, rtol=0)  # the twist keeps the elbow
    assert bend[0, axis] <= 0.05  # the left elbow still bends its own way


def test_load_pose_keypoint_file(tmp_path):
    import json
    import nodes
    frame = {"people": [{"pose_keypoints_2d": [10.0, 20.0, 1.0] * 18}],
             "canvas_width": 64, "canvas_height": 64}
    (tmp_path / "list.json").write_text(json.dumps([frame, frame]))
    (tmp_path / "bare.json").write_text(json.dumps(frame))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "blade-smplx/1"}))
    node = nodes.BladeLoadPoseKeypoints()
    assert len(node.load(str(tmp_path / "list.json"))[0]) == 2
    assert node.load(str(tmp_path / "bare.json"))[0] == [frame]
    with pytest.raises(ValueError, match="parse error"):
        node.load(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="expected a list of frames"):
        node.load(str(tmp_path / "other.json"))
    with pytest.raises(ValueError, match="not found"):
        node.load(str(tmp_path / "missing.json"))


def test_fit_runs_inside_no_grad(synthetic_body):
    """Library stages that optimise must not depend on the caller's grad mode."""
    from blade_nodes.pose.keypoints2d import PoseKeypoints2D
    body = torch.zeros(1, 25, 3)
    body[0, :, 0] = torch.linspace(20, 44, 25)
    body[0, :, 1] = torch.linspace(10, 54, 25)
    body[0, :, 2] = 1.0
    kp = PoseKeypoints2D.from_tensors(body, image_size=(64, 64))
    with torch.no_grad():
        fit = fit_smplx_to_keypoints(synthetic_body, kp, torch.tensor([3.0]),
                                     cfg=FitConfig(iterations=4, starts=1))
    assert fit.params.batch_size == 1


def _cut_arm_scene(body):
    """One frame, the left arm raised and cut off by the image's top border (the picture is
    cropped 25 px above the left shoulder): shoulder visible, elbow and wrist missing.
    Returns keypoints, tz, image size (W, H), principal point, true elbow / wrist y."""
    pose = torch.zeros(1, 21, 3)
    pose[:, 0, 2] = 0.3                      # left leg out to the side (stays in view)
    pose[:, 15, 2] = 1.3                     # left arm raised
    gt = SMPLXParams.zeros(1).replace(body_pose=pose.reshape(1, 63),
                                      global_orient=torch.tensor([[math.pi, 0.0, 0.0]]))
    joints = body(gt).joints
    tz = torch.tensor([2.5])
    T = torch.tensor([[0.1, 0.0, 2.5]]) - joints[:, 0]
    kmap = body.keypoint_map("body25")
    uv = project_points(kmap(joints + T[:, None]), torch.full((1,), 500.0),
                        torch.tensor([[W / 2, H / 2]]))
    top = float(uv[0, 5, 1]) - 25.0          # crop: the shoulder 25 px below the top
    uv = uv - torch.tensor([0.0, top])
    conf = kmap.available.float().clone()
    conf[[0, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]] = 0
    conf = conf.expand(1, -1).clone()
    conf[0, [6, 7]] = 0                       # elbow and wrist: above the border
    size = (W, int(H - top))
    body25 = torch.cat([uv * conf[..., None], conf[..., None]], -1)
    return (PoseKeypoints2D.from_tensors(body25, size), tz, size, (W / 2, H / 2 - top),
            uv[0, 6, 1].item(), uv[0, 7, 1].item())


def test_missing_limb_points_are_pushed_out_of_the_image(human_body):
    kp, tz, size, pp, elbow_y, wrist_y = _cut_arm_scene(human_body)
    assert elbow_y < 0 and wrist_y < 0  # the scene: truly cut off
    cfgs = {"off": FitConfig(iterations=80, starts=1, truncation_weight=0.0),
            "on": FitConfig(iterations=80, starts=1, truncation_weight=1.0, truncation_sigma=0.5)}
    y = {}
    for name, cfg in cfgs.items():
        fit = fit_smplx_to_keypoints(human_body, kp, tz, focal=500.0, principal=pp, cfg=cfg)
        cam = human_body(fit.params).joints + fit.camera.translation[:, None]
        uv = project_points(human_body.keypoint_map("body25")(cam), fit.camera.focal,
                            fit.camera.principal)
        y[name] = uv[0, [6, 7], 1]
        assert fit.reprojection_px[0] < 3.0, (name, fit.reprojection_px)
    margin = 0.02 * max(size)
    # without the cue the unseen arm hangs at the prior, inside the picture; with it the
    # elbow and wrist leave through the top border, where the arm really is
    assert (y["off"] > margin + 10.0).all(), y["off"]
    assert (y["on"] < margin + 4.0).all(), y["on"]


def test_truncation_cue_leaves_frames_without_cut_limbs_alone(human_body):
    """Fully visible frames, and a missing elbow whose wrist is seen (occluded, not cut off),
    give bit-identical fits with the cue on and off."""
    _, _, tz, kp = _scene(human_body, noise=1.0)
    body = kp.body.clone()
    body[1, 3] = 0  # right elbow missing, right wrist (slot 4) present
    kp = PoseKeypoints2D.from_tensors(body, (W, H))
    on = fit_smplx_to_keypoints(human_body, kp, tz, focal=500.0,
                                cfg=FitConfig(iterations=40, starts=2, truncation_weight=1.0,
                                              truncation_sigma=0.5, truncation_band=0.0))
    off = fit_smplx_to_keypoints(human_body, kp, tz, focal=500.0,
                                 cfg=FitConfig(iterations=40, starts=2, truncation_weight=0.0))
    for name, t in on.params.as_dict().items():
        if isinstance(t, torch.Tensor):
            assert torch.equal(t, getattr(off.params, name)), name
    assert torch.equal(on.loss, off.loss)


def test_joint_error_metrics():
    from blade_nodes.pose.metrics import joint_errors
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(2, 22, 3, generator=g, dtype=torch.float64)
    angle = torch.tensor(0.7, dtype=torch.float64)
    R = torch.tensor([[torch.cos(angle), -torch.sin(angle), 0], [torch.sin(angle), torch.cos(angle), 0],
                      [0, 0, 1]], dtype=torch.float64)
    moved = 1.3 * gt @ R.T + torch.tensor([0.1, -0.2, 2.0], dtype=torch.float64)
    mpjpe, pa = joint_errors(moved, gt)
    assert pa.abs().max() < 1e-9 and (mpjpe > 10).all()  # similarity: PA only
    shifted = gt + torch.tensor([0.3, 0.0, 1.0], dtype=torch.float64)
    mpjpe, pa = joint_errors(shifted, gt)
    assert mpjpe.abs().max() < 1e-9
    noisy = gt.clone()
    noisy[:, 5] += torch.tensor([0.022, 0.0, 0.0], dtype=torch.float64)
    mpjpe, _ = joint_errors(noisy, gt)
    torch.testing.assert_close(mpjpe, torch.full((2,), 1000 * 0.022 / 22, dtype=torch.float64))


def test_betas_stay_within_the_shape_limit(human_body):
    """Keypoints of an implausible body (betas at 6 SD): the fit may not follow them past
    ``shape_limit`` (1.5 here), while without the limit it does (so the limit holds them)."""
    gt, _, tz, _ = _scene(human_body, B=1)
    betas = torch.zeros(1, human_body.num_betas)
    betas[0, :3] = torch.tensor([6.0, -6.0, 6.0])
    gt = gt.replace(betas=betas)
    joints = human_body(gt).joints
    T = torch.tensor([[0.1, 0.0, float(tz[0])]]) - joints[:, 0]
    kmap = human_body.keypoint_map("body25")
    uv = project_points(kmap(joints + T[:, None]), torch.tensor([500.0]),
                        torch.tensor([[W / 2, H / 2]]))
    conf = kmap.available.float().clone()
    conf[[0, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]] = 0
    kp = PoseKeypoints2D.from_tensors(torch.cat([uv, conf[None, :, None]], -1), (W, H))
    free = FitConfig(iterations=80, starts=1, shape_prior=0.0, shape_limit=100.0)
    held = FitConfig(iterations=80, starts=1, shape_prior=0.0, shape_limit=1.5)
    b_free = fit_smplx_to_keypoints(human_body, kp, tz, focal=500.0, cfg=free).params.betas
    b_held = fit_smplx_to_keypoints(human_body, kp, tz, focal=500.0, cfg=held).params.betas
    assert b_free.abs().max() > 2.0, b_free
    assert b_held.abs().max() < 1.7, b_held
    with pytest.raises(ValueError, match="shape_limit"):
        FitConfig(shape_limit=0.0)


def test_partial_view_frames_are_named_in_the_report(human_body):
    """Frame 1 has its legs cut off (knees and ankles missing): the report says its limbs
    are the prior's guess; frame 0 (whole body) is not named."""
    _, _, tz, kp = _scene(human_body)
    pts = kp.body[:, list(BODY25_FROM_OPENPOSE18)].clone()
    assert kp.num_limb_points().tolist() == [12, 12]
    pts[1, [9, 10, 12, 13]] = 0  # OpenPose-18: right knee, ankle, left knee, ankle
    frames = [{"people": [{"pose_keypoints_2d": _flat(pts[i].tolist())}],
               "canvas_width": W, "canvas_height": H} for i in range(2)]
    est = estimate_pose(human_body, torch.zeros(2, 3, H, W), tz, keypoints=frames,
                        focal=500.0, cfg=FitConfig(iterations=20, starts=1))
    text = report(est)
    assert "frame(s) 1 (8/12): limbs out of view" in text, text
    assert "0 (" not in text
    many = partial_view_note(torch.tensor([3] * 10 + [12]), torch.ones(11, dtype=torch.bool))
    assert many and many[0].startswith("frame(s) 0 (3/12), 1 (3/12)") and "2 more" in many[0]
    assert partial_view_note(torch.tensor([3]), torch.tensor([False])) == []
