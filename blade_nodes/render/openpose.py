"""OpenPose maps in the controlnet_aux annotator style, and POSE_KEYPOINT dicts.

The drawing reproduces comfyui_controlnet_aux ``dwpose/util.py`` (``draw_bodypose``,
``draw_handpose``, ``draw_facepose``) pixel for pixel without OpenCV: the three
OpenCV primitives it calls (``ellipse2Poly`` + ``fillConvexPoly`` for limbs,
``circle`` filled for joints, ``line`` of thickness 2 for hand edges) are ported
below as integer algorithms. ``tests/test_openpose.py`` measures the agreement
against OpenCV when ``cv2`` is installed.

Facts (ecosystem.md §3.3):

- Body: 18 points in OpenPose-COCO order, 17 limbs drawn first as filled ellipses
  (half-axes ``int(length / 2)`` and ``stickwidth = 4``, colour ``int(0.6 * c)``),
  then joints as filled discs of radius 4 in the full colour.
- Hands: 20 edges, thickness 2, HSV rainbow ``hsv(i / 20, 1, 1)``; joints blue
  discs of radius 4; a point whose integer pixel coordinate is <= 0.01 is skipped.
- Face: white discs of radius 3, same skip rule.
- Pixel coordinates: a point at continuous ``(u, v)`` (pixel centres at +0.5, see
  :mod:`blade_nodes.camera.convention`) is drawn on pixel ``(int(v), int(u))``,
  exactly as the annotator draws pixel-coordinate POSE_KEYPOINT data, so our
  POSE_KEYPOINT re-rendered by ``RenderPeopleKps`` gives the same image.

Colours are RGB (the canvas of controlnet_aux is RGB; the nose is red).
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------- annotator constants
BODY_NAMES = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
              "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
              "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear")
# 0-based pairs of the 17 drawn limbs, in drawing order (source: 1-based limbSeq)
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
         (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
          (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
          (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
              (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18),
              (18, 19), (19, 20))
STICK_WIDTH = 4
JOINT_RADIUS = 4
HAND_JOINT_COLOR = (0, 0, 255)
HAND_LINE_THICKNESS = 2
FACE_RADIUS = 3
FACE_COLOR = (255, 255, 255)
EPS = 0.01


def limb_color(i: int) -> tuple[int, int, int]:
    """Fill colour of limb ``i`` (60 % brightness, truncated as the annotator does)."""
    return tuple(int(float(c) * 0.6) for c in COLORS[i])


def _hsv_to_rgb_matplotlib(h: float) -> np.ndarray:
    """matplotlib.colors.hsv_to_rgb([h, 1, 1]) (same float operations)."""
    i = int(h * 6.0)
    f = h * 6.0 - i
    p, q, t = 0.0, 1.0 * (1.0 - f), 1.0 * (1.0 - (1.0 - f))
    i %= 6
    rgb = [(1.0, t, p), (q, 1.0, p), (p, 1.0, t), (p, q, 1.0), (t, p, 1.0), (1.0, p, q)][i]
    return np.array(rgb, dtype=np.float64)


def hand_edge_color(i: int) -> tuple[int, int, int]:
    """RGB colour of hand edge ``i``: HSV rainbow ×255, rounded as OpenCV's
    ``saturate_cast`` does (half to even)."""
    rgb = _hsv_to_rgb_matplotlib(i / float(len(HAND_EDGES))) * 255
    return tuple(int(np.rint(c)) for c in rgb)


# ---------------------------------------------------------------- OpenCV primitive ports
_XY_SHIFT = 16
_XY_ONE = 1 << _XY_SHIFT


# OpenCV's float table of sin(k degrees), k = 0..450, written with 7 decimals
_SIN_TABLE = [float(np.float32(round(math.sin(math.radians(k)), 7))) for k in range(451)]


def ellipse2poly(center: tuple[int, int], axes: tuple[int, int], angle: int,
                 arc_start: int = 0, arc_end: int = 360, delta: int = 1) -> np.ndarray:
    """Port of ``cv2.ellipse2Poly`` (integer version).

    Returns:
        [N, 2] int64 polygon vertices (x, y), consecutive duplicates removed.
    """
    while angle < 0:
        angle += 360
    while angle > 360:
        angle -= 360
    if arc_start > arc_end:
        arc_start, arc_end = arc_end, arc_start
    while arc_start < 0:
        arc_start += 360
        arc_end += 360
    while arc_end > 360:
        arc_end -= 360
        arc_start -= 360
    if arc_end - arc_start > 360:
        arc_start, arc_end = 0, 360
    alpha = _SIN_TABLE[450 - angle]  # cos(angle)
    beta = _SIN_TABLE[angle]  # sin(angle)
    pts = []
    i = arc_start
    while i < arc_end + delta:
        a = min(i, arc_end)
        if a < 0:
            a += 360
        x = axes[0] * _SIN_TABLE[450 - a]
        y = axes[1] * _SIN_TABLE[a]
        px = center[0] + x * alpha - y * beta
        py = center[1] + x * beta + y * alpha
        pts.append((px, py))
        i += delta
    out = []
    prev = None
    for px, py in pts:
        p = (int(np.rint(px)), int(np.rint(py)))
        if p != prev:
            out.append(p)
            prev = p
    if len(out) == 1:
        out = [tuple(center), tuple(center)]
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def _hline(img: np.ndarray, y: int, x1: int, x2: int, color) -> None:
    img[y, x1:x2 + 1] = color


def _line8(img: np.ndarray, p1: tuple[int, int], p2: tuple[int, int], color) -> None:
    """Port of OpenCV's 8-connected ``Line`` (Bresenham, left to right), clipped."""
    h, w = img.shape[:2]
    ok, p1, p2 = _clip_line(w, h, p1, p2)
    if not ok:
        return
    (x1, y1), (x2, y2) = p1, p2
    dx, dy = x2 - x1, y2 - y1
    if dx < 0:  # leftToRight: swap the end points
        x1, y1, x2, y2 = x2, y2, x1, y1
        dx, dy = -dx, -dy
    sy = -1 if dy < 0 else 1
    dy = abs(dy)
    steep = dy > dx
    if steep:
        dx, dy = dy, dx
    err = dx - (dy + dy)
    plus_delta = dx + dx
    minus_delta = -(dy + dy)
    x, y = x1, y1
    for _ in range(dx + 1):
        img[y, x] = color
        mask = err < 0
        err += minus_delta + (plus_delta if mask else 0)
        # minusStep = pixel step along the major axis; plusStep = step along the minor one
        if steep:
            y += sy
            if mask:
                x += 1
        else:
            x += 1
            if mask:
                y += sy


def _clip_line(w: int, h: int, p1, p2):
    """Port of ``cv::clipLine`` for an image of size (w, h)."""
    x1, y1 = p1
    x2, y2 = p2
    right, bottom = w - 1, h - 1
    if w <= 0 or h <= 0:
        return False, p1, p2
    c1 = (x1 < 0) + (x1 > right) * 2 + (y1 < 0) * 4 + (y1 > bottom) * 8
    c2 = (x2 < 0) + (x2 > right) * 2 + (y2 < 0) * 4 + (y2 > bottom) * 8
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += int((a - y1) * (x2 - x1) / (y2 - y1)) if y2 != y1 else 0
            y1 = a
            c1 = (x1 < 0) + (x1 > right) * 2
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += int((a - y2) * (x2 - x1) / (y2 - y1)) if y2 != y1 else 0
            y2 = a
            c2 = (x2 < 0) + (x2 > right) * 2
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += int((a - x1) * (y2 - y1) / (x2 - x1)) if x2 != x1 else 0
                x1 = a
                c1 = 0
            if c2:
                a = 0 if c2 == 1 else right
                y2 += int((a - x2) * (y2 - y1) / (x2 - x1)) if x2 != x1 else 0
                x2 = a
                c2 = 0
    return (c1 | c2) == 0, (x1, y1), (x2, y2)


def _line2(img: np.ndarray, p1: tuple[int, int], p2: tuple[int, int], color) -> None:
    """Port of OpenCV's fixed-point ``Line2`` (end points with 16 fractional bits)."""
    h, w = img.shape[:2]
    ok, (x1, y1), (x2, y2) = _clip_line(w << _XY_SHIFT, h << _XY_SHIFT, p1, p2)
    if not ok:
        return
    dx, dy = x2 - x1, y2 - y1
    ax, ay = abs(dx), abs(dy)

    def put(x: int, y: int) -> None:
        if 0 <= x < w and 0 <= y < h:
            img[y, x] = color

    if ax > ay:
        if dx < 0:
            dy = -dy
            x1, x2, y1, y2 = x2, x1, y2, y1
        x_step, y_step = _XY_ONE, _cdiv(dy << _XY_SHIFT, ax | 1)
        ecount = (x2 - x1) >> _XY_SHIFT
    else:
        if dy < 0:
            dx = -dx
            x1, x2, y1, y2 = x2, x1, y2, y1
        x_step, y_step = _cdiv(dx << _XY_SHIFT, ay | 1), _XY_ONE
        ecount = (y2 - y1) >> _XY_SHIFT
    x1 += _XY_ONE >> 1
    y1 += _XY_ONE >> 1
    put((x2 + (_XY_ONE >> 1)) >> _XY_SHIFT, (y2 + (_XY_ONE >> 1)) >> _XY_SHIFT)
    if ax > ay:
        x1 >>= _XY_SHIFT
        while ecount >= 0:
            put(x1, y1 >> _XY_SHIFT)
            x1 += 1
            y1 += y_step
            ecount -= 1
    else:
        y1 >>= _XY_SHIFT
        while ecount >= 0:
            put(x1 >> _XY_SHIFT, y1)
            x1 += x_step
            y1 += 1
            ecount -= 1


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncation toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def fill_convex_poly(img: np.ndarray, pts: np.ndarray, color, shift: int = 0,
                     outline: bool = True) -> None:
    """Port of OpenCV's ``FillConvexPoly`` (8-connected, not anti-aliased).

    Args:
        img: [H, W, 3] uint8 canvas, modified in place.
        pts: [N, 2] int64 vertices (x, y), fixed point with ``shift`` fractional bits.
        outline: draw the edges too, as OpenCV does.
    """
    h, w = img.shape[:2]
    v = [(int(x), int(y)) for x, y in pts]
    npts = len(v)
    if npts == 0:
        return
    delta = (1 << shift) >> 1
    delta1 = delta2 = _XY_ONE >> 1
    if outline:
        p0 = v[-1]
        for p in v:
            if shift == 0:
                _line8(img, p0, p, color)
            else:
                s_ = _XY_SHIFT - shift
                _line2(img, (p0[0] << s_, p0[1] << s_), (p[0] << s_, p[1] << s_), color)
            p0 = p
    xs_all = [p[0] for p in v]
    ys_all = [p[1] for p in v]
    ymin_raw = min(ys_all)
    imin = ys_all.index(ymin_raw)
    xmin = (min(xs_all) + delta) >> shift
    xmax = (max(xs_all) + delta) >> shift
    ymin = (ymin_raw + delta) >> shift
    ymax = (max(ys_all) + delta) >> shift
    if npts < 3 or xmax < 0 or ymax < 0 or xmin >= w or ymin >= h:
        return
    ymax = min(ymax, h - 1)
    edges = npts
    e_idx = [imin, imin]
    e_di = [1, npts - 1]
    e_x = [-_XY_ONE, -_XY_ONE]
    e_dx = [0, 0]
    y = ymin
    e_ye = [y, y]
    while True:
        for i in range(2):
            if y >= e_ye[i]:
                idx0 = e_idx[i]
                di = e_di[i]
                idx = idx0 + di
                if idx >= npts:
                    idx -= npts
                while True:
                    edges -= 1
                    if edges + 1 <= 0:
                        break
                    ty = (v[idx][1] + delta) >> shift
                    if ty > y:
                        xs = v[idx0][0] << (_XY_SHIFT - shift)
                        xe = v[idx][0] << (_XY_SHIFT - shift)
                        e_ye[i] = ty
                        e_dx[i] = _cdiv((xe - xs) * 2 + (ty - y), 2 * (ty - y))
                        e_x[i] = xs
                        e_idx[i] = idx
                        break
                    idx0 = idx
                    idx += di
                    if idx >= npts:
                        idx -= npts
        if edges < 0:
            break
        if y >= 0:
            left, right = (1, 0) if e_x[0] > e_x[1] else (0, 1)
            xx1 = (e_x[left] + delta1) >> _XY_SHIFT
            xx2 = (e_x[right] + delta2) >> _XY_SHIFT
            if xx2 >= 0 and xx1 < w:
                _hline(img, y, max(xx1, 0), min(xx2, w - 1), color)
        e_x[0] += e_dx[0]
        e_x[1] += e_dx[1]
        y += 1
        if y > ymax:
            break


def fill_circle(img: np.ndarray, center: tuple[int, int], radius: int, color) -> None:
    """Port of OpenCV's filled ``Circle`` (``cv2.circle(..., thickness=-1)``, LINE_8)."""
    h, w = img.shape[:2]
    cx, cy = center
    err, dx, dy, plus, minus = 0, radius, 0, 1, (radius << 1) - 1

    def span(y: int, x1: int, x2: int) -> None:
        if 0 <= y < h:
            x1, x2 = max(x1, 0), min(x2, w - 1)
            if x1 <= x2:
                img[y, x1:x2 + 1] = color

    while dx >= dy:
        span(cy - dy, cx - dx, cx + dx)
        span(cy + dy, cx - dx, cx + dx)
        span(cy - dx, cx - dy, cx + dy)
        span(cy + dx, cx - dy, cx + dy)
        dy += 1
        err += plus
        plus += 2
        mask = -1 if err > 0 else 0  # (err <= 0) - 1
        err -= minus & mask
        dx += mask
        minus -= mask & 2


def thick_line(img: np.ndarray, p0: tuple[int, int], p1: tuple[int, int], color,
               thickness: int) -> None:
    """Port of OpenCV's ``ThickLine`` for thickness > 1 (LINE_8, round caps).

    Pixel-exact against OpenCV for end points inside the image (the only case the
    annotator draws: hand edges join visible points); lines clipped at the border may
    differ by a few outline pixels.
    """
    x0, y0 = p0[0] << _XY_SHIFT, p0[1] << _XY_SHIFT
    x1, y1 = p1[0] << _XY_SHIFT, p1[1] << _XY_SHIFT
    dx = (x0 - x1) / _XY_ONE
    dy = (y1 - y0) / _XY_ONE
    r = dx * dx + dy * dy
    odd = thickness & 1
    th = thickness << (_XY_SHIFT - 1)
    if abs(r) > 2.220446049250313e-16:
        r = (th + odd * _XY_ONE * 0.5) / math.sqrt(r)
        dpx = int(np.rint(dy * r))
        dpy = int(np.rint(dx * r))
        pts = np.array([[x0 + dpx, y0 + dpy], [x0 - dpx, y0 - dpy],
                        [x1 - dpx, y1 - dpy], [x1 + dpx, y1 + dpy]], dtype=np.int64)
        fill_convex_poly(img, pts, color, shift=_XY_SHIFT)
    for px, py in ((x0, y0), (x1, y1)):
        c = ((px + (_XY_ONE >> 1)) >> _XY_SHIFT, (py + (_XY_ONE >> 1)) >> _XY_SHIFT)
        fill_circle(img, c, (th + (_XY_ONE >> 1)) >> _XY_SHIFT, color)


# ---------------------------------------------------------------- people and drawing
@dataclass(frozen=True)
class OpenPosePerson:
    """One person's 2D keypoints for an OpenPose map; pixel coordinates (u, v), pixel
    centres at +0.5. A part that is not wanted is None.

    Attributes:
        body: [18, 2] float, OpenPose-COCO order (``BODY_NAMES``).
        body_visible: [18] bool.
        left_hand, right_hand: [21, 2] float (OpenPose hand order) or None.
        left_hand_visible, right_hand_visible: [21] bool or None.
        face: [70, 2] float (68 iBUG points + 2 pupils) or None.
        face_visible: [70] bool or None.
    """

    body: np.ndarray
    body_visible: np.ndarray
    left_hand: np.ndarray | None = None
    left_hand_visible: np.ndarray | None = None
    right_hand: np.ndarray | None = None
    right_hand_visible: np.ndarray | None = None
    face: np.ndarray | None = None
    face_visible: np.ndarray | None = None


def _points(xy: np.ndarray | None, vis: np.ndarray | None) -> list | None:
    if xy is None:
        return None
    return [(float(p[0]), float(p[1])) if bool(ok) else None for p, ok in zip(xy, vis)]


def draw_body(canvas: np.ndarray, kps: list, stick_scale: int = 1) -> None:
    """Body limbs then joints, in place (``draw_bodypose`` of the annotator, pixels)."""
    for li, (a, b) in enumerate(LIMBS):
        k1, k2 = kps[a], kps[b]
        if k1 is None or k2 is None:
            continue
        Y = np.array([k1[0], k2[0]])
        X = np.array([k1[1], k2[1]])
        mX, mY = np.mean(X), np.mean(Y)
        length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
        poly = ellipse2poly((int(mY), int(mX)), (int(length / 2), STICK_WIDTH * stick_scale),
                            int(angle), 0, 360, 1)
        fill_convex_poly(canvas, poly, limb_color(li))
    for k, color in zip(kps, COLORS):
        if k is None:
            continue
        fill_circle(canvas, (int(k[0]), int(k[1])), JOINT_RADIUS, color)


def draw_hand(canvas: np.ndarray, kps: list | None) -> None:
    """Hand edges (rainbow) then blue joints, in place (``draw_handpose``)."""
    if not kps:
        return
    for ie, (e1, e2) in enumerate(HAND_EDGES):
        k1, k2 = kps[e1], kps[e2]
        if k1 is None or k2 is None:
            continue
        x1, y1, x2, y2 = int(k1[0]), int(k1[1]), int(k2[0]), int(k2[1])
        if x1 > EPS and y1 > EPS and x2 > EPS and y2 > EPS:
            thick_line(canvas, (x1, y1), (x2, y2), hand_edge_color(ie), HAND_LINE_THICKNESS)
    for k in kps:
        if k is None:
            continue
        x, y = int(k[0]), int(k[1])
        if x > EPS and y > EPS:
            fill_circle(canvas, (x, y), JOINT_RADIUS, HAND_JOINT_COLOR)


def draw_face(canvas: np.ndarray, kps: list | None) -> None:
    """Face points as white discs, in place (``draw_facepose``)."""
    if not kps:
        return
    for k in kps:
        if k is None:
            continue
        x, y = int(k[0]), int(k[1])
        if x > EPS and y > EPS:
            fill_circle(canvas, (x, y), FACE_RADIUS, FACE_COLOR)


def xinsir_stick_scale(height: int, width: int) -> int:
    """Limb half-width factor of comfyui_controlnet_aux's ``scale_stick_for_xinsr_cn``."""
    m = max(height, width)
    return 1 if m < 500 else min(2 + m // 1000, 7)


def draw_openpose(people: list[OpenPosePerson], height: int, width: int, *,
                  draw_body_parts: bool = True, draw_hands: bool = True, draw_faces: bool = True,
                  stick_scale: int = 1) -> np.ndarray:
    """An OpenPose map on a black canvas.

    Args:
        people: persons, drawn in order (body, left hand, right hand, face each).
        height, width: canvas size, pixels.
        stick_scale: limb half-width factor (1 = annotator default; see
            :func:`xinsir_stick_scale`).
    Returns:
        [H, W, 3] uint8 RGB.
    """
    canvas = np.zeros((int(height), int(width), 3), dtype=np.uint8)
    for p in people:
        if draw_body_parts:
            draw_body(canvas, _points(p.body, p.body_visible), stick_scale)
        if draw_hands:
            draw_hand(canvas, _points(p.left_hand, p.left_hand_visible))
            draw_hand(canvas, _points(p.right_hand, p.right_hand_visible))
        if draw_faces:
            draw_face(canvas, _points(p.face, p.face_visible))
    return canvas


def _flat(xy: np.ndarray | None, vis: np.ndarray | None) -> list[float] | None:
    if xy is None:
        return None
    out: list[float] = []
    for p, ok in zip(xy, vis):
        out += [float(p[0]), float(p[1]), 1.0] if bool(ok) else [0.0, 0.0, 0.0]
    return out


def pose_keypoint_frame(people: list[OpenPosePerson], height: int, width: int, *,
                        hands: bool = True, face: bool = True) -> dict:
    """One frame of ComfyUI's POSE_KEYPOINT (comfyui_controlnet_aux format).

    Visible points are written as ``[u, v, 1.0]`` in pixels of the canvas (c is exactly
    1.0: the decoder drops c < 1), others as ``[0, 0, 0]``; a part that is not
    wanted is None (JSON null).

    Returns:
        ``{"people": [{"pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d",
        "hand_right_keypoints_2d"}], "canvas_width": W, "canvas_height": H}``.
    """
    return {
        "people": [{
            "pose_keypoints_2d": _flat(p.body, p.body_visible),
            "face_keypoints_2d": _flat(p.face, p.face_visible) if face else None,
            "hand_left_keypoints_2d": _flat(p.left_hand, p.left_hand_visible) if hands else None,
            "hand_right_keypoints_2d": _flat(p.right_hand, p.right_hand_visible) if hands else None,
        } for p in people],
        "canvas_width": int(width),
        "canvas_height": int(height),
    }
