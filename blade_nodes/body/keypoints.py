"""Keypoint maps from SMPL-X joints to 2D keypoint formats.

Each format is a list of keypoints; each keypoint is the weighted mean of named SMPL-X
joints (``smplx.joint_names.JOINT_NAMES`` order: 55 skeleton joints, 5 face vertices,
6 feet vertices, 10 fingertips, 51 face landmarks, then 17 face-contour landmarks when
the model is built with ``use_face_contour``), or ``None`` when SMPL-X has no such point.

Formats:
    ``coco17``     COCO body: nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles.
    ``openpose18`` OpenPose COCO-18 body as drawn by controlnet_aux (neck = mean of shoulders).
    ``body25``     OpenPose BODY_25 (adds mid-hip and six foot points).
    ``hand21``     OpenPose hand: wrist, then thumb, index, middle, ring, pinky (4 points each,
                   base to tip). Use ``left_hand21`` / ``right_hand21``.
    ``face68``     iBUG-68 face: 0-16 jaw contour (only with face contour), 17-67 SMPL-X's 51
                   landmarks. ``face70`` adds right and left pupil (OpenPose face order).

SMPL-X hip joints sit inside the pelvis, a few centimetres medial and lower than COCO's
hip keypoints; fitters should weight hips lower (``HIP_NAMES``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor
from smplx.joint_names import JOINT_NAMES as SMPLX_JOINT_NAMES

Spec = str | tuple[str, ...] | None

COCO17: tuple[tuple[str, Spec], ...] = (
    ("nose", "nose"), ("left_eye", "left_eye"), ("right_eye", "right_eye"),
    ("left_ear", "left_ear"), ("right_ear", "right_ear"),
    ("left_shoulder", "left_shoulder"), ("right_shoulder", "right_shoulder"),
    ("left_elbow", "left_elbow"), ("right_elbow", "right_elbow"),
    ("left_wrist", "left_wrist"), ("right_wrist", "right_wrist"),
    ("left_hip", "left_hip"), ("right_hip", "right_hip"),
    ("left_knee", "left_knee"), ("right_knee", "right_knee"),
    ("left_ankle", "left_ankle"), ("right_ankle", "right_ankle"),
)

OPENPOSE18: tuple[tuple[str, Spec], ...] = (
    ("nose", "nose"), ("neck", ("left_shoulder", "right_shoulder")),
    ("right_shoulder", "right_shoulder"), ("right_elbow", "right_elbow"),
    ("right_wrist", "right_wrist"), ("left_shoulder", "left_shoulder"),
    ("left_elbow", "left_elbow"), ("left_wrist", "left_wrist"),
    ("right_hip", "right_hip"), ("right_knee", "right_knee"), ("right_ankle", "right_ankle"),
    ("left_hip", "left_hip"), ("left_knee", "left_knee"), ("left_ankle", "left_ankle"),
    ("right_eye", "right_eye"), ("left_eye", "left_eye"),
    ("right_ear", "right_ear"), ("left_ear", "left_ear"),
)

BODY25: tuple[tuple[str, Spec], ...] = (
    *OPENPOSE18[:8], ("mid_hip", ("left_hip", "right_hip")), *OPENPOSE18[8:],
    ("left_big_toe", "left_big_toe"), ("left_small_toe", "left_small_toe"),
    ("left_heel", "left_heel"), ("right_big_toe", "right_big_toe"),
    ("right_small_toe", "right_small_toe"), ("right_heel", "right_heel"),
)


def _hand(side: str) -> tuple[tuple[str, Spec], ...]:
    out: list[tuple[str, Spec]] = [("wrist", f"{side}_wrist")]
    for finger in ("thumb", "index", "middle", "ring", "pinky"):
        for k in (1, 2, 3):
            out.append((f"{finger}{k}", f"{side}_{finger}{k}"))
        out.append((f"{finger}_tip", f"{side}_{finger}"))  # fingertip vertex
    return tuple(out)


LEFT_HAND21 = _hand("left")
RIGHT_HAND21 = _hand("right")

_CONTOUR = tuple(f"right_contour_{i}" for i in range(1, 9)) + ("contour_middle",) + \
    tuple(f"left_contour_{i}" for i in range(8, 0, -1))
FACE68: tuple[tuple[str, Spec], ...] = tuple(
    [(f"jaw_{i}", name) for i, name in enumerate(_CONTOUR)]
    + [(SMPLX_JOINT_NAMES[76 + i], SMPLX_JOINT_NAMES[76 + i]) for i in range(51)])
FACE70 = FACE68 + (("right_pupil", "right_eye"), ("left_pupil", "left_eye"))

FORMATS: dict[str, tuple[tuple[str, Spec], ...]] = {
    "coco17": COCO17, "openpose18": OPENPOSE18, "body25": BODY25,
    "left_hand21": LEFT_HAND21, "right_hand21": RIGHT_HAND21,
    "face68": FACE68, "face70": FACE70,
}
HIP_NAMES = ("left_hip", "right_hip", "mid_hip")
# The 22 body joints of SMPL-X (pelvis .. right wrist): the usual MPJPE set.
BODY_JOINTS_22 = tuple(range(22))


@dataclass(frozen=True)
class KeypointMap:
    """A format's keypoints as weights over SMPL-X joints.

    Attributes:
        name: format name (a key of ``FORMATS``).
        keypoint_names: K names.
        weights: [K, J] each row sums to 1 (0 for unavailable keypoints).
        available: [K] bool, False where the model has no such point.
    """
    name: str
    keypoint_names: tuple[str, ...]
    weights: Tensor
    available: Tensor

    def __call__(self, joints: Tensor) -> Tensor:
        """[B, J, D] SMPL-X joints -> [B, K, D] keypoints (unavailable ones are 0)."""
        w = self.weights.to(joints)
        if joints.shape[-2] != w.shape[1]:
            raise ValueError(f"keypoint map '{self.name}' expects {w.shape[1]} joints, got "
                             f"{joints.shape[-2]}")
        return torch.einsum("kj,bjd->bkd", w, joints)


@lru_cache(maxsize=32)
def keypoint_map(fmt: str, num_joints: int = 127) -> KeypointMap:
    """Weights turning a body model's joints into keypoints of format ``fmt``.

    Args:
        fmt: one of ``FORMATS``.
        num_joints: how many joints the body model outputs (127, or 144 with face contour).
    Raises:
        ValueError: unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown keypoint format {fmt!r}; choose one of {sorted(FORMATS)}")
    index = {n: i for i, n in enumerate(SMPLX_JOINT_NAMES[:num_joints])}
    spec = FORMATS[fmt]
    w = torch.zeros(len(spec), num_joints)
    for k, (_, src) in enumerate(spec):
        names = (src,) if isinstance(src, str) else (src or ())
        if names and all(n in index for n in names):
            for n in names:
                w[k, index[n]] = 1.0 / len(names)
    return KeypointMap(fmt, tuple(n for n, _ in spec), w, w.sum(1) > 0)
