"""SMPL-X-family body models, loaded safely and usable with any batch size.

``load_body_model`` reads an SMPL-X-format file (``.npz`` or ``.pkl``: real SMPL-X, or the
built-in open body) and wraps ``smplx.SMPLX``. The wrapper passes every per-sample input
with the caller's batch size, so smplx's construction-time ``batch_size`` never matters,
and keeps the model's own parameters out of autograd.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..io.paths import cache_root
from .keypoints import KeypointMap, keypoint_map
from .params import SMPLXParams
from .safe_pickle import load_model_pickle

REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights",
                 "kintree_table", "hands_componentsl", "hands_componentsr", "hands_meanl",
                 "hands_meanr", "lmk_faces_idx", "lmk_bary_coords")
EXPECTED_FILES = ("SMPLX_NEUTRAL.npz", "SMPLX_MALE.npz", "SMPLX_FEMALE.npz",
                  "SMPLX_NEUTRAL.pkl", "SMPLX_MALE.pkl", "SMPLX_FEMALE.pkl")
WHERE_TO_GET = ("SMPL-X files need a free registration (non-commercial licence) at "
                "smpl-x.is.tue.mpg.de ('SMPL-X v1.1 NPZ+PKL'); or use the built-in open body "
                "(python -m blade_nodes open-body --path).")


class BodyModelError(ValueError):
    """A body-model file is missing, unreadable or not an SMPL-X-format model."""


@dataclass(frozen=True)
class BodyOutput:
    """A posed body.

    Attributes:
        vertices: [B, V, 3] metres, body frame (transl = 0; add the camera's T).
        joints: [B, J, 3] metres: 55 skeleton joints, then extra vertex joints and face
            landmarks in ``smplx.joint_names.JOINT_NAMES`` order (J = 127, or 144 with
            the face contour).
    """
    vertices: Tensor
    joints: Tensor


def _gender_from_name(name: str) -> str:
    up = name.upper()
    for g in ("FEMALE", "MALE", "NEUTRAL"):
        if g in up:
            return g.lower()
    return "neutral"


def read_model_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Read a body-model file's arrays without executing pickled code.

    Raises:
        BodyModelError: missing file, unreadable file, disallowed content, or missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise BodyModelError(f"body model file not found: {path}. {WHERE_TO_GET}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        elif suffix == ".pkl":
            arrays = load_model_pickle(path)
        else:
            raise BodyModelError(f"{path.name}: expected an SMPL-X .npz or .pkl file, got "
                                 f"'{suffix or 'no extension'}'")
    except BodyModelError:
        raise
    except ValueError as e:  # object arrays in an npz, refused pickle globals
        raise BodyModelError(f"{path.name}: refused: {e}") from None
    except Exception as e:
        raise BodyModelError(f"{path.name}: not a readable body-model file "
                             f"({type(e).__name__}: {e})") from None
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise BodyModelError(
            f"{path.name} is not an SMPL-X model file: missing {', '.join(missing)}. "
            f"Expected one of {', '.join(EXPECTED_FILES[:3])}. {WHERE_TO_GET}")
    return arrays


def _safe_npz_for(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """An ``.npz`` holding only numeric arrays that smplx can open itself.

    smplx opens files with ``pickle.load``/``allow_pickle=True``: it only ever sees a file
    that has been checked (an npz that loaded with ``allow_pickle=False``) or one we wrote.
    """
    if path.suffix.lower() == ".npz":
        return path
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    out = cache_root() / "converted" / f"{path.stem}-{digest}.npz"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.npz")
        clean = {k: np.asarray(v) for k, v in arrays.items()
                 if np.asarray(v).dtype != object}
        np.savez(tmp, **clean)
        os.replace(tmp, out)
    return out


class BodyModel(nn.Module):
    """An SMPL-X-format body model (the ``BLADE_BODY_MODEL`` socket).

    Attributes:
        kind: "smplx" or "open-body".
        gender: "neutral", "male" or "female".
        name: file name it was loaded from.
        num_betas, num_expression: sizes the model uses (inputs are padded/cut to these).
        faces: [F, 3] int64 buffer.
        parents: [55] int64 buffer (-1 for the root).
        hands_mean: [2, 45] buffer (left, right) mean hand pose, axis-angle.
    """

    def __init__(self, path: str | Path, gender: str | None = None, num_betas: int = 10,
                 num_expression: int = 10, use_face_contour: bool = False):
        super().__init__()
        import smplx

        path = Path(path)
        arrays = read_model_arrays(path)
        self.name = path.name
        self.path = str(path)
        kind = arrays.get("blade_body_kind")
        self.kind = str(np.asarray(kind)) if kind is not None else "smplx"
        self.gender = gender or _gender_from_name(path.name)
        try:
            # smplx prints capacity warnings with print(); they are not the user's concern
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                self.smplx = smplx.SMPLX(
                    model_path=str(_safe_npz_for(path, arrays)), ext="npz", gender=self.gender,
                    num_betas=num_betas, num_expression_coeffs=num_expression,
                    use_pca=False, flat_hand_mean=True, use_face_contour=use_face_contour,
                    batch_size=1)
        except Exception as e:
            raise BodyModelError(f"{path.name}: smplx could not build a model from it "
                                 f"({type(e).__name__}: {e})") from None
        for p in self.smplx.parameters():
            p.requires_grad_(False)
        if "blade_vertex_ids" in arrays:  # a non-SMPL-X mesh names its own landmark vertices
            ids = torch.as_tensor(np.asarray(arrays["blade_vertex_ids"]), dtype=torch.long)
            sel = self.smplx.vertex_joint_selector
            if ids.shape != sel.extra_joints_idxs.shape:
                raise BodyModelError(f"{path.name}: blade_vertex_ids has {ids.numel()} ids, "
                                     f"expected {sel.extra_joints_idxs.numel()}")
            sel.extra_joints_idxs = ids
        v = self.smplx.v_template.shape[0]
        if int(self.smplx.vertex_joint_selector.extra_joints_idxs.max()) >= v:
            raise BodyModelError(f"{path.name}: {v} vertices, too few for SMPL-X's landmark "
                                 "vertex ids and no 'blade_vertex_ids' in the file")
        self.num_betas = int(self.smplx.num_betas)
        self.num_expression = int(self.smplx.num_expression_coeffs)
        self.register_buffer("faces", torch.as_tensor(np.asarray(arrays["f"]).astype(np.int64)),
                             persistent=False)
        self.register_buffer("parents", self.smplx.parents.clone(), persistent=False)
        hm = np.stack([np.asarray(arrays["hands_meanl"], np.float32).reshape(45),
                       np.asarray(arrays["hands_meanr"], np.float32).reshape(45)])
        self.register_buffer("hands_mean", torch.as_tensor(hm), persistent=False)

    @property
    def num_vertices(self) -> int:
        return int(self.smplx.v_template.shape[0])

    @property
    def num_joints(self) -> int:
        return 55 + int(self.smplx.vertex_joint_selector.extra_joints_idxs.numel()) + \
            int(self.smplx.lmk_faces_idx.numel()) + (17 if self.smplx.use_face_contour else 0)

    def keypoint_map(self, fmt: str) -> KeypointMap:
        """The map from this model's joints to keypoint format ``fmt`` (see keypoints.py)."""
        return keypoint_map(fmt, self.num_joints)

    def _fit(self, t: Tensor, n: int) -> Tensor:
        if t.shape[1] == n:
            return t
        if t.shape[1] > n:
            return t[:, :n]
        return torch.nn.functional.pad(t, (0, n - t.shape[1]))

    def forward(self, params: SMPLXParams) -> BodyOutput:
        """Pose the body.

        Args:
            params: SMPL-X parameters, batch B; betas/expression padded with zeros or cut
                to this model's sizes.
        Returns:
            BodyOutput with vertices [B, V, 3] and joints [B, J, 3], metres, transl = 0.
        """
        ref = self.smplx.v_template
        p = params.to(device=ref.device, dtype=ref.dtype)
        lh, rh = p.left_hand_pose, p.right_hand_pose
        if not p.flat_hand_mean:
            lh = lh + self.hands_mean[0]
            rh = rh + self.hands_mean[1]
        b = p.batch_size
        out = self.smplx(
            betas=self._fit(p.betas, self.num_betas),
            expression=self._fit(p.expression, self.num_expression),
            global_orient=p.global_orient, body_pose=p.body_pose,
            left_hand_pose=lh, right_hand_pose=rh, jaw_pose=p.jaw_pose,
            leye_pose=p.leye_pose, reye_pose=p.reye_pose,
            transl=torch.zeros(b, 3, dtype=ref.dtype, device=ref.device),
            return_verts=True)
        return BodyOutput(out.vertices, out.joints)

    def rest_joints(self, betas: Tensor | None = None) -> Tensor:
        """[B, 55, 3] skeleton joints of the shaped body at zero pose, metres."""
        betas = torch.zeros(1, self.num_betas) if betas is None else betas
        params = SMPLXParams.zeros(betas.shape[0], self.num_betas, self.num_expression)
        return self.forward(params.replace(betas=self._fit(betas.float(), self.num_betas))).joints[:, :55]


def load_body_model(path: str | Path, gender: str | None = None, num_betas: int = 10,
                    num_expression: int = 10) -> BodyModel:
    """Load an SMPL-X-format body model (real SMPL-X ``.npz``/``.pkl`` or the open body).

    Raises:
        BodyModelError: with the file name and what to do.
    """
    return BodyModel(path, gender=gender, num_betas=num_betas, num_expression=num_expression)


def find_body_models(dirs: list[str | Path]) -> list[Path]:
    """SMPL-X-format files (``*.npz``, ``*.pkl``) in ``dirs`` (not recursive), sorted by name."""
    found: dict[str, Path] = {}
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.suffix.lower() in (".npz", ".pkl") and p.is_file() and p.name not in found:
                found[p.name] = p
    return [found[k] for k in sorted(found)]


def missing_model_message(dirs: list[str | Path]) -> str:
    return (f"No SMPL-X model file in {', '.join(str(d) for d in dirs) or '(no folder)'}. "
            f"Put {' / '.join(EXPECTED_FILES[:3])} there. {WHERE_TO_GET}")
