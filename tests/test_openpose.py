"""OpenPose maps: annotator colours and pixels, disc centres, POSE_KEYPOINT decoding."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from blade_nodes.render import openpose as op

H, W = 96, 128

# ecosystem.md §3.3: the 18 colours of controlnet_aux, RGB
ANNOTATOR_COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
                    (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255),
                    (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255),
                    (255, 0, 255), (255, 0, 170), (255, 0, 85)]


def random_person(rng, n_hidden=3, hands=True, face=True):
    def pts(k, spread):
        c = np.array([W / 2, H / 2])
        return c + rng.uniform(-spread, spread, size=(k, 2)) * np.array([W / 2, H / 2])

    def vis(k):
        v = np.ones(k, bool)
        v[rng.choice(k, size=min(n_hidden, k), replace=False)] = False
        return v

    return op.OpenPosePerson(
        body=pts(18, 0.9), body_visible=vis(18),
        left_hand=pts(21, 0.3) if hands else None, left_hand_visible=vis(21) if hands else None,
        right_hand=pts(21, 0.3) if hands else None, right_hand_visible=vis(21) if hands else None,
        face=pts(70, 0.2) if face else None, face_visible=vis(70) if face else None)


def test_colours_equal_the_annotators():
    assert [tuple(c) for c in op.COLORS] == ANNOTATOR_COLORS
    assert op.limb_color(0) == (153, 0, 0) and op.limb_color(1) == (153, 51, 0)
    assert [op.limb_color(i) for i in range(17)] == [
        tuple(int(c * 0.6) for c in ANNOTATOR_COLORS[i]) for i in range(17)]
    assert op.hand_edge_color(0) == (255, 0, 0)
    import colorsys
    for i in range(20):
        want = [c * 255 for c in colorsys.hsv_to_rgb(i / 20, 1, 1)]
        assert max(abs(a - b) for a, b in zip(op.hand_edge_color(i), want)) <= 0.5 + 1e-9
    assert op.STICK_WIDTH == 4 and op.JOINT_RADIUS == 4 and len(op.LIMBS) == 17


def test_every_joint_disc_is_centred_on_its_keypoint():
    rng = np.random.default_rng(1)
    body = rng.uniform([5, 5], [W - 5, H - 5], size=(18, 2))
    for k in range(18):
        vis = np.zeros(18, bool)
        vis[k] = True
        img = op.draw_openpose([op.OpenPosePerson(body, vis)], H, W)
        ys, xs = np.nonzero(img.any(-1))
        assert len(ys) > 0
        # disc centre (pixel centres at +0.5) within half a pixel of the keypoint
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
        assert abs(cx - body[k, 0]) <= 0.5 + 1e-9 and abs(cy - body[k, 1]) <= 0.5 + 1e-9
        assert (int(cx), int(cy)) == (int(body[k, 0]), int(body[k, 1]))
        assert set(map(tuple, img[ys, xs])) == {ANNOTATOR_COLORS[k]}
        assert xs.max() - xs.min() == 2 * op.JOINT_RADIUS  # radius-4 disc


def test_limbs_under_joints():
    body = np.array([[W / 2, H / 2 + 20 * math.sin(i)] for i in range(18)])
    body[1] = (30, 30)
    body[2] = (90, 60)
    vis = np.zeros(18, bool)
    vis[[1, 2]] = True
    img = op.draw_openpose([op.OpenPosePerson(body, vis)], H, W)
    mid = ((30 + 90) // 2, (30 + 60) // 2)
    assert tuple(img[mid[1], mid[0]]) == op.limb_color(0)  # neck - right shoulder limb
    assert tuple(img[30, 30]) == ANNOTATOR_COLORS[1] and tuple(img[60, 90]) == ANNOTATOR_COLORS[2]


# ---------------------------------------------------------------- against the annotator
cv2 = None
try:  # test-only comparison; OpenCV is not a dependency of the pack
    import cv2  # type: ignore  # noqa: F811
except ImportError:
    pass


def annotator_draw(people, h, w):
    """comfyui_controlnet_aux dwpose/util.py draw_bodypose/handpose/facepose with pixel
    coordinates (is_normalized False), re-typed for the comparison."""
    canvas = np.zeros((h, w, 3), np.uint8)
    limb_seq = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11],
                [2, 12], [12, 13], [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18]]
    edges = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [0, 9], [9, 10],
             [10, 11], [11, 12], [0, 13], [13, 14], [14, 15], [15, 16], [0, 17], [17, 18],
             [18, 19], [19, 20]]
    import colorsys

    def hsv(i):  # matplotlib.colors.hsv_to_rgb for s = v = 1
        return np.array(op._hsv_to_rgb_matplotlib(i))

    for p in people:
        kps = [tuple(x) if v else None for x, v in zip(p.body, p.body_visible)]
        for (a, b), color in zip(limb_seq, ANNOTATOR_COLORS):
            k1, k2 = kps[a - 1], kps[b - 1]
            if k1 is None or k2 is None:
                continue
            Y = np.array([k1[0], k2[0]])
            X = np.array([k1[1], k2[1]])
            mX, mY = np.mean(X), np.mean(Y)
            length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
            poly = cv2.ellipse2Poly((int(mY), int(mX)), (int(length / 2), 4), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, [int(float(c) * 0.6) for c in color])
        for k, color in zip(kps, ANNOTATOR_COLORS):
            if k is not None:
                cv2.circle(canvas, (int(k[0]), int(k[1])), 4, color, thickness=-1)
        for hand, hv in ((p.left_hand, p.left_hand_visible), (p.right_hand, p.right_hand_visible)):
            if hand is None:
                continue
            kk = [tuple(x) if v else None for x, v in zip(hand, hv)]
            for ie, (e1, e2) in enumerate(edges):
                if kk[e1] is None or kk[e2] is None:
                    continue
                x1, y1, x2, y2 = int(kk[e1][0]), int(kk[e1][1]), int(kk[e2][0]), int(kk[e2][1])
                if x1 > 0.01 and y1 > 0.01 and x2 > 0.01 and y2 > 0.01:
                    cv2.line(canvas, (x1, y1), (x2, y2), hsv(ie / 20.0) * 255, thickness=2)
            for k in kk:
                if k is not None and int(k[0]) > 0.01 and int(k[1]) > 0.01:
                    cv2.circle(canvas, (int(k[0]), int(k[1])), 4, (0, 0, 255), thickness=-1)
        if p.face is not None:
            for x, v in zip(p.face, p.face_visible):
                if v and int(x[0]) > 0.01 and int(x[1]) > 0.01:
                    cv2.circle(canvas, (int(x[0]), int(x[1])), 3, (255, 255, 255), thickness=-1)
    return canvas


@pytest.mark.skipif(cv2 is None, reason="opencv-python(-headless) not installed (test-only check)")
def test_pixels_equal_the_annotator_drawing():
    rng = np.random.default_rng(0)
    total = diff = 0
    for _ in range(25):
        people = [random_person(rng) for _ in range(2)]
        ours = op.draw_openpose(people, H, W)
        ref = annotator_draw(people, H, W)
        diff += int((ours != ref).any(-1).sum())
        total += H * W
    assert diff == 0, f"{diff} of {total} pixels differ from the annotator"


@pytest.mark.skipif(cv2 is None, reason="opencv-python(-headless) not installed (test-only check)")
def test_primitives_equal_opencv():
    rng = np.random.default_rng(3)
    for _ in range(100):
        c = (int(rng.integers(-10, 140)), int(rng.integers(-10, 100)))
        axes = (int(rng.integers(0, 60)), int(rng.integers(1, 12)))
        ang = int(rng.integers(-180, 181))
        poly = cv2.ellipse2Poly(c, axes, ang, 0, 360, 1)
        np.testing.assert_array_equal(op.ellipse2poly(c, axes, ang), poly)
        a = np.zeros((H, W, 3), np.uint8)
        b = a.copy()
        cv2.fillConvexPoly(a, poly, (1, 2, 3))
        op.fill_convex_poly(b, poly.astype(np.int64), (1, 2, 3))
        np.testing.assert_array_equal(a, b)
        # hand edges join visible points only: end points inside the image
        p1 = (int(rng.integers(1, W)), int(rng.integers(1, H)))
        p2 = (int(rng.integers(1, W)), int(rng.integers(1, H)))
        a[:] = 0
        b[:] = 0
        cv2.line(a, p1, p2, (4, 5, 6), thickness=2)
        op.thick_line(b, p1, p2, (4, 5, 6), 2)
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- POSE_KEYPOINT
def decode_like_controlnet_aux(frame):
    """comfyui_controlnet_aux decode_json_as_poses: points with c < 1.0 are dropped."""
    def decompress(numbers):
        if not numbers:
            return None
        assert len(numbers) % 3 == 0
        return [None if c < 1.0 else (x, y) for x, y, c in
                (numbers[i:i + 3] for i in range(0, len(numbers), 3))]
    return [dict(body=decompress(p.get("pose_keypoints_2d")),
                 left=decompress(p.get("hand_left_keypoints_2d")),
                 right=decompress(p.get("hand_right_keypoints_2d")),
                 face=decompress(p.get("face_keypoints_2d"))) for p in frame.get("people", [])], \
        frame["canvas_height"], frame["canvas_width"]


def test_pose_keypoint_decodes_under_controlnet_aux_rules():
    rng = np.random.default_rng(2)
    person = random_person(rng)
    frame = json.loads(json.dumps(op.pose_keypoint_frame([person], H, W)))
    decoded, h, w = decode_like_controlnet_aux(frame)
    assert (h, w) == (H, W)
    body = decoded[0]["body"]
    assert len(body) == 18
    for k in range(18):
        if person.body_visible[k]:
            assert body[k] == pytest.approx(tuple(person.body[k]))
        else:
            assert body[k] is None
    cs = frame["people"][0]["pose_keypoints_2d"][2::3]
    assert set(cs) <= {0.0, 1.0} and cs.count(1.0) == int(person.body_visible.sum())
    assert len(decoded[0]["face"]) == 70 and len(decoded[0]["left"]) == 21
    # re-rendering the decoded points gives our image (same drawing rules)
    redrawn = op.OpenPosePerson(
        body=np.array([p if p else (0, 0) for p in body], float),
        body_visible=np.array([p is not None for p in body]),
        left_hand=np.array([p if p else (0, 0) for p in decoded[0]["left"]], float),
        left_hand_visible=np.array([p is not None for p in decoded[0]["left"]]),
        right_hand=np.array([p if p else (0, 0) for p in decoded[0]["right"]], float),
        right_hand_visible=np.array([p is not None for p in decoded[0]["right"]]),
        face=np.array([p if p else (0, 0) for p in decoded[0]["face"]], float),
        face_visible=np.array([p is not None for p in decoded[0]["face"]]))
    np.testing.assert_array_equal(op.draw_openpose([redrawn], H, W),
                                  op.draw_openpose([person], H, W))


def test_parts_not_drawn_are_null():
    person = random_person(np.random.default_rng(4))
    frame = op.pose_keypoint_frame([person], H, W, hands=False, face=False)
    p = frame["people"][0]
    assert p["hand_left_keypoints_2d"] is None and p["face_keypoints_2d"] is None
    assert len(p["pose_keypoints_2d"]) == 54


def test_only_joints_inside_the_frame_are_visible(synthetic_body):
    """A camera that cuts the body: points outside the image get c = 0, inside c = 1.0."""
    from blade_nodes.body import SMPLXParams
    from blade_nodes.camera import Camera
    from blade_nodes.render.render import RenderConfig, render_maps
    cam = Camera.create(80.0, [0.6, 0.0, 3.0], [40, 48])
    res = render_maps(synthetic_body, SMPLXParams.zeros(1), cam, cfg=RenderConfig(backend="cpu"))
    flat = res.pose_keypoint[0]["people"][0]["pose_keypoints_2d"]
    uv = res.body_2d[0]
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < 40) & (uv[:, 1] >= 0) & (uv[:, 1] < 48)
    assert 0 < int(inside.sum()) < 18, "the camera should cut the body for this test"
    for k in range(18):
        x, y, c = flat[3 * k:3 * k + 3]
        if bool(inside[k]):
            assert c == 1.0 and (x, y) == pytest.approx(tuple(uv[k].tolist()))
        else:
            assert (x, y, c) == (0.0, 0.0, 0.0)
    # the map shows exactly the visible joints' discs at their keypoints
    img = (res.openpose[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    for k in torch.nonzero(inside).squeeze(1).tolist():
        u, v = (int(t) for t in uv[k].tolist())
        assert tuple(img[v, u]) in {ANNOTATOR_COLORS[j] for j in range(18)} | {(0, 0, 255),
                                                                              (255, 255, 255)}


def test_occluded_keypoints_can_be_hidden():
    from blade_nodes.render.render import keypoint_visibility
    pts = torch.tensor([[[0.0, 0.0, 3.0], [0.0, 0.0, 3.5]]])
    uv = torch.tensor([[[5.5, 5.5], [5.5, 5.5]]])
    depth = torch.full((1, 10, 10), 3.0)
    vis = keypoint_visibility(pts, uv, torch.tensor([True, True]), 10, 10, depth=depth,
                              tolerance=0.15)
    assert vis.tolist() == [[True, False]]
    assert keypoint_visibility(pts, uv, torch.tensor([True, False]), 10, 10).tolist() == [[True, False]]
