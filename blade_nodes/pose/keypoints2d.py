"""POSE_KEYPOINT (comfyui_controlnet_aux / DWPose / OpenPose JSON) -> per-frame tensors.

A POSE_KEYPOINT value is a list with one dict per frame (a bare dict is one frame)::

    {"people": [{"pose_keypoints_2d": [x, y, c] * 18 flat,
                 "hand_left_keypoints_2d": [x, y, c] * 21 or None,
                 "hand_right_keypoints_2d": [x, y, c] * 21 or None,
                 "face_keypoints_2d": [x, y, c] * 70 or None}, ...],
     "canvas_width": W, "canvas_height": H}

Body points may come as OpenPose-18 (controlnet_aux, DWPose), COCO-17 or BODY_25; all are
stored in BODY_25 order (``blade_nodes.body.keypoints.BODY25``), the superset, with the
points a format lacks marked missing. Coordinates are pixels, or normalised 0..1 when every
present point of a person has |x| <= 1 and |y| <= 1 (the controlnet_aux drawing rule); both
become pixels of the *image* (the canvas is rescaled to the image when only the size, not
the aspect, differs).

A point is present when its confidence c >= ``min_conf`` and it is not the (0, 0) filler the
encoders write for missing points. Problems never raise: each frame gets a message and
``valid`` False, so one bad frame does not sink a batch.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["PoseKeypoints2D", "parse_pose_keypoints", "BODY25_FROM_OPENPOSE18",
           "BODY25_FROM_COCO17", "NUM_BODY", "NUM_HAND", "NUM_FACE", "MIN_BODY_POINTS",
           "LIMB_SLOTS"]

NUM_BODY, NUM_HAND, NUM_FACE = 25, 21, 70
MIN_BODY_POINTS = 6
# BODY_25 slots of the 12 limb points (shoulders, elbows, wrists, hips, knees, ankles): the
# points whose absence leaves a limb unmeasured (OpenPose-18, COCO-17 and BODY_25 all have them)
LIMB_SLOTS = (2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14)
# BODY_25 slot of each OpenPose-18 point (BODY_25 = OpenPose-18 with mid-hip at 8 + 6 foot points)
BODY25_FROM_OPENPOSE18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
# BODY_25 slot of each COCO-17 point (nose, l/r eye, l/r ear, l/r shoulder, elbow, wrist, hip, ...)
BODY25_FROM_COCO17 = (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11)
_BODY_LAYOUTS = {18: ("openpose18", BODY25_FROM_OPENPOSE18), 17: ("coco17", BODY25_FROM_COCO17),
                 25: ("body25", tuple(range(25)))}
_ASPECT_TOL = 0.02


@dataclass(frozen=True)
class PoseKeypoints2D:
    """2D keypoints of one chosen person per frame, in image pixels.

    Attributes:
        body: [B, 25, 3] (x px, y px, confidence) in BODY_25 order; confidence 0 = missing.
        left_hand: [B, 21, 3] OpenPose hand order (wrist, thumb 1-4, index 1-4, ...).
        right_hand: [B, 21, 3].
        face: [B, 70, 3] OpenPose face order (68 iBUG points, then right and left pupil).
        image_size: [B, 2] int64 (W, H) of the image the pixels refer to.
        valid: [B] bool; False where the frame cannot be fitted (see ``problems``).
        problems: per frame, None or a sentence saying what is wrong and how to fix it.
        notes: batch-level remarks (rescaled canvas, reused frame) for the user.
        body_format: per frame "openpose18", "coco17", "body25" or "" when unknown.
    """

    body: Tensor
    left_hand: Tensor
    right_hand: Tensor
    face: Tensor
    image_size: Tensor
    valid: Tensor
    problems: tuple[str | None, ...]
    notes: tuple[str, ...] = ()
    body_format: tuple[str, ...] = ()

    @property
    def batch_size(self) -> int:
        return int(self.body.shape[0])

    def num_body_points(self) -> Tensor:
        """[B] int64 number of present body points."""
        return (self.body[..., 2] > 0).sum(1)

    def num_limb_points(self) -> Tensor:
        """[B] int64 number of present limb points (``LIMB_SLOTS``, 0-12), the same count
        for every keypoint format: 12 means every limb is seen from shoulder / hip to tip."""
        return (self.body[:, list(LIMB_SLOTS), 2] > 0).sum(1)

    def has_hands(self) -> Tensor:
        """[B, 2] bool: (left, right) hand has at least 6 present points."""
        return torch.stack([(self.left_hand[..., 2] > 0).sum(1) >= 6,
                            (self.right_hand[..., 2] > 0).sum(1) >= 6], 1)

    def index(self, i: int) -> "PoseKeypoints2D":
        s = slice(i, i + 1)
        return PoseKeypoints2D(self.body[s], self.left_hand[s], self.right_hand[s], self.face[s],
                               self.image_size[s], self.valid[s], self.problems[s], self.notes,
                               self.body_format[s])

    @staticmethod
    def from_tensors(body: Tensor, image_size, left_hand: Tensor | None = None,
                     right_hand: Tensor | None = None, face: Tensor | None = None,
                     min_body_points: int = MIN_BODY_POINTS) -> "PoseKeypoints2D":
        """Build from pixel tensors (a bench, a test, another detector).

        Args:
            body: [B, 25, 3] BODY_25 order (x px, y px, conf).
            image_size: [B, 2] or [2] (W, H) pixels.
            left_hand, right_hand: [B, 21, 3] or None (missing).
            face: [B, 70, 3] or None.
        """
        b = body.shape[0]
        if tuple(body.shape[1:]) != (NUM_BODY, 3):
            raise ValueError(f"body keypoints: expected [B, {NUM_BODY}, 3] in BODY_25 order, "
                             f"got {tuple(body.shape)}")
        z = lambda n: torch.zeros(b, n, 3)  # noqa: E731
        size = torch.as_tensor(image_size).to(torch.int64).reshape(-1, 2).expand(b, 2).clone()
        kp = PoseKeypoints2D(body.float(), (z(NUM_HAND) if left_hand is None else left_hand).float(),
                             (z(NUM_HAND) if right_hand is None else right_hand).float(),
                             (z(NUM_FACE) if face is None else face).float(), size,
                             torch.ones(b, dtype=torch.bool), (None,) * b, (), ("body25",) * b)
        n = kp.num_body_points()
        problems = tuple(None if int(n[i]) >= min_body_points else _too_few(int(n[i]), min_body_points)
                         for i in range(b))
        return PoseKeypoints2D(kp.body, kp.left_hand, kp.right_hand, kp.face, size,
                               torch.tensor([p is None for p in problems]), problems, (),
                               kp.body_format)


def _too_few(n: int, need: int) -> str:
    return (f"only {n} visible body keypoints, need at least {need}; use a pose detector "
            "(DWPose) on a photo where the person is visible")


def _triplets(values: Any, expected: Sequence[int], what: str) -> tuple[Tensor | None, str | None]:
    """Flat [x, y, c]*N -> ([N, 3] float tensor, None) or (None, problem)."""
    if values is None:
        return None, None
    try:
        t = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError):
        return None, f"{what} is not a flat list of numbers"
    if t.numel() == 0:
        return None, None
    if t.numel() % 3 or t.numel() // 3 not in expected:
        return None, (f"{what} has {t.numel()} numbers; expected "
                      f"{' or '.join(str(3 * n) for n in expected)} ([x, y, c] per point)")
    t = t.reshape(-1, 3)
    t[~torch.isfinite(t).all(1)] = 0
    return t, None


def _person_parts(person: dict) -> dict[str, Tensor | None]:
    body, _ = _triplets(person.get("pose_keypoints_2d"), (18, 17, 25), "pose_keypoints_2d")
    lh, _ = _triplets(person.get("hand_left_keypoints_2d"), (21,), "hand_left_keypoints_2d")
    rh, _ = _triplets(person.get("hand_right_keypoints_2d"), (21,), "hand_right_keypoints_2d")
    face, _ = _triplets(person.get("face_keypoints_2d"), (70, 68), "face_keypoints_2d")
    return {"body": body, "left_hand": lh, "right_hand": rh, "face": face}


def _present(t: Tensor, min_conf: float) -> Tensor:
    """[N] bool: confidence high enough and not the (0, 0, *) filler."""
    return (t[:, 2] >= min_conf) & (t[:, 2] > 0) & ((t[:, 0] != 0) | (t[:, 1] != 0))


def _to_pixels(parts: dict[str, Tensor | None], min_conf: float, size: tuple[int, int],
               canvas: tuple[float, float]) -> dict[str, Tensor | None]:
    """Parts in image pixels; missing points become (0, 0, 0), confidences are clamped to 1."""
    (W, H), (cw, ch) = size, canvas
    present = {k: _present(t, min_conf) for k, t in parts.items() if t is not None}
    pts = [t[present[k], :2] for k, t in parts.items() if t is not None]
    pts = torch.cat(pts) if pts else torch.zeros(0, 2)
    normalised = len(pts) > 0 and bool((pts.abs() <= 1.0).all())
    sx, sy = (W, H) if normalised else (W / cw, H / ch)
    scale = torch.tensor([sx, sy, 1.0])
    out: dict[str, Tensor | None] = {}
    for name, t in parts.items():
        if t is None:
            out[name] = None
            continue
        t = torch.where(present[name][:, None], t * scale, torch.zeros(()))
        t[:, 2] = torch.where(present[name], t[:, 2].clamp(max=1.0), torch.zeros(()))
        out[name] = t
    return out


def _choose_person(people: list[dict], index: int, min_conf: float, mask: Tensor | None,
                   size: tuple[int, int], canvas: tuple[float, float]
                   ) -> tuple[int | None, str | None]:
    """Index of the person to use, or (None, problem). ``index`` -1: automatic."""
    if index >= 0:
        if index >= len(people):
            return None, (f"person index {index} is out of range: this frame has {len(people)} "
                          f"{'person' if len(people) == 1 else 'people'} (indices 0.."
                          f"{len(people) - 1}); lower person_index or use -1 (automatic)")
        return index, None
    best, best_score = None, -math.inf
    for i, person in enumerate(people):
        parts = _to_pixels(_person_parts(person), min_conf, size, canvas)
        pts = [t[t[:, 2] > 0, :2] for t in parts.values() if t is not None]
        pts = torch.cat(pts) if pts else torch.zeros(0, 2)
        if len(pts) == 0:
            continue
        if mask is not None:
            h, w = mask.shape
            col = pts[:, 0].long().clamp(0, w - 1)
            row = pts[:, 1].long().clamp(0, h - 1)
            score = float((mask[row, col] > 0.5).float().mean())
        else:
            ext = pts.max(0).values - pts.min(0).values
            score = float(ext[0] * ext[1])
        if score > best_score:
            best, best_score = i, score
    if best is None:
        return None, "no person with visible keypoints in this frame"
    return best, None


def _frames(pose_keypoint: Any) -> list:
    if isinstance(pose_keypoint, dict):
        return [pose_keypoint]
    if isinstance(pose_keypoint, (list, tuple)):
        return list(pose_keypoint)
    raise ValueError(f"keypoints: expected POSE_KEYPOINT (a list of per-frame dicts with "
                     f"'people', or one such dict), got {type(pose_keypoint).__name__}; connect "
                     "a DWPose/OpenPose estimator's POSE_KEYPOINT output")


def parse_pose_keypoints(pose_keypoint: Any, image_size: Sequence[int] | Tensor,
                         batch_size: int | None = None, person_index: int = 0,
                         min_conf: float = 0.3, mask: Tensor | None = None,
                         min_body_points: int = MIN_BODY_POINTS) -> PoseKeypoints2D:
    """Read POSE_KEYPOINT into pixel tensors of one person per frame.

    Args:
        pose_keypoint: list of per-frame dicts (or one dict), see the module docstring.
        image_size: (W, H) of the images, pixels.
        batch_size: number of images; None takes the number of frames. A single frame is
            reused for every image; any other count mismatch raises.
        person_index: which person of ``people`` (0-based); -1 picks automatically (the
            person with most body points inside ``mask`` when given, else the largest).
        min_conf: points with a lower confidence count as missing (DWPose drops < 0.3;
            controlnet_aux writes 1.0 for present points).
        mask: [B, H, W] person mask 0..1, image size, used by ``person_index`` -1; or None.
        min_body_points: a frame with fewer present body points is flagged invalid.
    Returns:
        :class:`PoseKeypoints2D` (invalid frames have all confidences 0 and a problem).
    Raises:
        ValueError: not a POSE_KEYPOINT value, or a frame count that does not match.
    """
    frames = _frames(pose_keypoint)
    W, H = (int(v) for v in torch.as_tensor(image_size).reshape(-1)[:2].tolist())
    b = len(frames) if batch_size is None else int(batch_size)
    notes: list[str] = []
    if len(frames) == 0:
        raise ValueError("keypoints: the POSE_KEYPOINT list is empty; expected one dict per image")
    if len(frames) != b:
        if len(frames) == 1:
            notes.append(f"one keypoint frame reused for all {b} images")
            frames = frames * b
        else:
            raise ValueError(f"keypoints: got {len(frames)} frames of keypoints for {b} images; "
                             "expected one frame per image (run the pose estimator on the same "
                             "image batch)")
    body = torch.zeros(b, NUM_BODY, 3)
    hands = torch.zeros(2, b, NUM_HAND, 3)
    face = torch.zeros(b, NUM_FACE, 3)
    problems: list[str | None] = [None] * b
    formats = [""] * b
    rescaled = set()
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            problems[i] = f"frame {i} is a {type(frame).__name__}, not a dict with 'people'"
            continue
        if "animals" in frame and "people" not in frame:
            problems[i] = "animal keypoints (ap10k) cannot drive a human body model"
            continue
        people = frame.get("people") or []
        if not isinstance(people, list) or not people:
            problems[i] = ("no person in the keypoints; check the pose estimator found someone "
                           "in this image")
            continue
        cw = frame.get("canvas_width") or W
        ch = frame.get("canvas_height") or H
        try:
            cw, ch = float(cw), float(ch)
        except (TypeError, ValueError):
            cw, ch = float(W), float(H)
        if cw <= 0 or ch <= 0:
            cw, ch = float(W), float(H)
        if abs(cw / ch - W / H) > _ASPECT_TOL * (W / H):
            problems[i] = (f"keypoints were made for a {cw:.0f}x{ch:.0f} canvas but the image is "
                           f"{W}x{H} (another aspect ratio); run the pose estimator on this image")
            continue
        if (round(cw), round(ch)) != (W, H):
            rescaled.add((round(cw), round(ch)))
        m = None if mask is None else mask[min(i, mask.shape[0] - 1)]
        if m is not None and tuple(m.shape) != (H, W):
            m = None
        who, why = _choose_person([p if isinstance(p, dict) else {} for p in people],
                                  person_index, min_conf, m, (W, H), (cw, ch))
        if who is None:
            problems[i] = why
            continue
        person = people[who] if isinstance(people[who], dict) else {}
        errors = []
        parts = {}
        for key, name, expect in (("pose_keypoints_2d", "body", (18, 17, 25)),
                                  ("hand_left_keypoints_2d", "left_hand", (21,)),
                                  ("hand_right_keypoints_2d", "right_hand", (21,)),
                                  ("face_keypoints_2d", "face", (70, 68))):
            t, err = _triplets(person.get(key), expect, key)
            if err:
                errors.append(err)
            parts[name] = t
        if parts["body"] is None:
            problems[i] = "; ".join(errors) if errors else \
                "the chosen person has no body keypoints (pose_keypoints_2d is empty)"
            continue
        for name, t in _to_pixels(parts, min_conf, (W, H), (cw, ch)).items():
            if t is None:
                continue
            if name == "body":
                fmt, slots = _BODY_LAYOUTS[len(t)]
                formats[i] = fmt
                body[i, list(slots)] = t
            elif name == "face":
                face[i, :len(t)] = t
            else:
                hands[0 if name == "left_hand" else 1, i] = t
        n = int((body[i, :, 2] > 0).sum())
        if n < min_body_points:
            problems[i] = _too_few(n, min_body_points)
    if rescaled:
        notes.append("keypoints rescaled from canvas " +
                     ", ".join(f"{w}x{h}" for w, h in sorted(rescaled)) + f" to the image {W}x{H}")
    valid = torch.tensor([p is None for p in problems], dtype=torch.bool)
    keep = valid[:, None, None].float()
    return PoseKeypoints2D(body * keep, hands[0] * keep, hands[1] * keep, face * keep,
                           torch.tensor([[W, H]] * b, dtype=torch.int64), valid, tuple(problems),
                           tuple(notes), tuple(formats))


def load_pose_keypoint_file(path: str | Path) -> list[dict]:
    """Read a POSE_KEYPOINT ``.json`` file (saved by comfyui_controlnet_aux, an OpenPose
    editor, or BLADE Render): a list with one dict per frame, or one bare dict.

    Returns:
        a list of frame dicts ``{"people": [...], "canvas_width": W, "canvas_height": H}``.
    Raises:
        ValueError: missing file, not JSON, or not POSE_KEYPOINT frames.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path: expected a POSE_KEYPOINT .json file, got {str(p)!r} (not "
                         "found). Put it in ComfyUI's input folder or give an absolute path.")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p.name}: expected JSON, got a parse error: {e}") from None
    frames = [data] if isinstance(data, dict) else data
    if not isinstance(frames, list) or not frames or not all(
            isinstance(f, dict) and ("people" in f or "animals" in f) for f in frames):
        raise ValueError(f"{p.name}: expected a list of frames (or one frame) like "
                         "{\"people\": [...], \"canvas_width\": W, \"canvas_height\": H}; "
                         "got something else. Save keypoints from DWPose/OpenPose as JSON.")
    return frames
