"""The exported rig of a batch: checked inputs, the scene frame, rest mesh, skeleton and motion.

Scene frame of every export (glTF, BVH, FBX): **OpenCV camera space rotated 180 degrees about
X** (= OpenGL camera space): x right, y up, z towards the viewer. The solved camera then sits
at the origin with identity rotation, looking down -Z with +Y up, exactly a glTF camera. The
conversion is written once, in :func:`opencv_to_gltf`.

The rest mesh stays in the SMPL-X body frame (y up, facing +z), so in a DCC tool the bind pose
stands upright; the per-frame root rotation ``C @ R(global_orient)`` and root position
``C @ (J_pelvis + T)`` put it where the camera saw it (SMPL-X rotates about the pelvis joint,
not the origin, hence ``J_pelvis`` in the root position).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from . import skinning

#: OpenCV camera axes (x right, y down, z forward) -> glTF scene axes (x right, y up, z back).
OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0])


def opencv_to_gltf(rotation: np.ndarray | None = None, translation: np.ndarray | None = None,
                   *, camera: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The one conversion from our OpenCV camera space to the glTF scene frame.

    The glTF scene frame is OpenCV camera space rotated 180 degrees about X: ``p_gltf = C p``
    with ``C = diag(1, -1, -1)`` (C is its own inverse, so the same call converts back).

    Args:
        rotation: [..., 3, 3] an object-to-world rotation expressed in OpenCV camera space
            (e.g. the SMPL-X root rotation ``R(global_orient)``), or None.
        translation: [..., 3] a position in OpenCV camera space, metres, or None.
        camera: True when ``rotation`` is the orientation of an OpenCV camera (looks +Z, y
            down): the result is then the orientation of a glTF camera (looks -Z, y up), i.e.
            ``C R C``. Our solved camera (identity in its own frame) becomes the identity.
    Returns:
        (rotation ``C R`` (or ``C R C``), translation ``C t``), same shapes, float64.

    Example:
        >>> R, t = opencv_to_gltf(np.eye(3), np.array([0.1, 0.2, 3.0]), camera=True)
        >>> R.tolist(), t.tolist()
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [0.1, -0.2, -3.0])
    """
    C = OPENCV_TO_GLTF
    R = None if rotation is None else C @ np.asarray(rotation, np.float64)
    if R is not None and camera:
        R = R @ C
    t = None if translation is None else np.asarray(translation, np.float64) @ C.T
    return R, t


class ExportError(ValueError):
    """Inputs that cannot be exported (empty batch, NaN parameters, no skeleton, ...)."""


@dataclass(frozen=True)
class Rig:
    """Everything an exporter writes, in the glTF scene frame, float64.

    Attributes:
        rest_vertices: [V, 3] shaped rest mesh (mean betas and expression of the batch), m.
        faces: [F, 3] int64.
        rest_joints: [55, 3] rest joints of that shape, m (body frame = scene frame at rest).
        parents: [55] int64, -1 for the pelvis.
        names: 55 SMPL-X joint names.
        joints4, weights4: [V, 4] the 4 largest LBS weights per vertex, renormalised.
        local_rot: [B, 55, 3, 3] joint rotations relative to the parent (entry 0 = root).
        root_rot: [B, 3, 3] pelvis rotation in the scene frame.
        root_pos: [B, 3] pelvis position in the scene frame, m.
        camera: the (broadcast) Camera or None.
        notes: human-readable remarks (varying betas, invalid frames, ...).
    """
    rest_vertices: np.ndarray
    faces: np.ndarray
    rest_joints: np.ndarray
    parents: np.ndarray
    names: tuple[str, ...]
    joints4: np.ndarray
    weights4: np.ndarray
    local_rot: np.ndarray
    root_rot: np.ndarray
    root_pos: np.ndarray
    camera: object | None
    notes: tuple[str, ...] = field(default=())

    @property
    def num_frames(self) -> int:
        return int(self.local_rot.shape[0])

    def pose(self) -> tuple[np.ndarray, np.ndarray]:
        """World joint (rotations [B, 55, 3, 3], positions [B, 55, 3]) in the scene frame."""
        return skinning.forward_kinematics(self.local_rot, self.rest_joints, self.parents,
                                           self.root_rot, self.root_pos)

    def skinned_vertices(self) -> np.ndarray:
        """[B, V, 3] the exported mesh posed by 4-weight LBS, scene frame, metres."""
        R, p = self.pose()
        return skinning.skin(self.rest_vertices, self.joints4, self.weights4, R, p,
                             self.rest_joints)


def check_body_model(body_model) -> None:
    """Raise ExportError unless ``body_model`` has an SMPL-X skeleton and skinning weights."""
    parents = getattr(body_model, "parents", None)
    inner = getattr(body_model, "smplx", None)
    weights = getattr(inner, "lbs_weights", None)
    if parents is None or weights is None or not callable(body_model):
        raise ExportError(
            f"body_model: expected a BLADE body model with a skeleton (parents and skinning "
            f"weights), got {type(body_model).__name__}; connect 'BLADE Load Body Model'")
    parents = np.asarray(torch.as_tensor(parents).cpu()).astype(np.int64).reshape(-1)
    if parents.shape != (skinning.NUM_JOINTS,) or parents[0] != -1 or \
            any(not (0 <= parents[k] < k) for k in range(1, len(parents))):
        raise ExportError(
            f"body_model: expected an SMPL-X skeleton of {skinning.NUM_JOINTS} joints with "
            f"parents before children, got {parents.shape[0]} joints; use an SMPL-X-format model")
    if tuple(weights.shape) != (body_model.num_vertices, skinning.NUM_JOINTS):
        raise ExportError(f"body_model: skinning weights have shape {tuple(weights.shape)}, "
                          f"expected [{body_model.num_vertices}, {skinning.NUM_JOINTS}]")


def check_params(params) -> None:
    from ..body import SMPLXParams, PARAM_NAMES
    if not isinstance(params, SMPLXParams):
        raise ExportError(f"smplx: expected BLADE_SMPLX parameters, got {type(params).__name__}")
    if params.batch_size == 0:
        raise ExportError("smplx: the batch is empty (0 frames); nothing to export. Check the "
                          "upstream nodes produced at least one person")
    for name in PARAM_NAMES:
        t = getattr(params, name)
        bad = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(1)
        if bool(bad.any()):
            frames = torch.nonzero(bad).reshape(-1).tolist()
            raise ExportError(f"smplx.{name}: NaN or infinite values in frame(s) {frames[:10]}; "
                              "expected finite numbers. Fix or drop those frames before export")


def check_camera(camera, batch: int):
    """The camera broadcast to ``batch`` frames, or ExportError."""
    from ..camera import Camera
    if camera is None:
        return None
    if not isinstance(camera, Camera):
        raise ExportError(f"camera: expected a BLADE_CAMERA, got {type(camera).__name__}")
    if camera.batch_size not in (1, batch):
        raise ExportError(f"camera: {camera.batch_size} cameras for {batch} frames; expected 1 "
                          f"or {batch}")
    if camera.batch_size == 1 and batch > 1:
        camera = Camera(camera.focal.expand(batch).clone(), camera.principal.expand(batch, 2).clone(),
                        camera.translation.expand(batch, 3).clone(),
                        camera.image_size.expand(batch, 2).clone())
    for name in ("focal", "principal", "translation"):
        t = getattr(camera, name)
        if not bool(torch.isfinite(t).all()):
            raise ExportError(f"camera.{name}: NaN or infinite values; expected finite numbers")
    if not bool((camera.focal > 0).all()) or not bool((camera.image_size > 0).all()):
        raise ExportError("camera: focal length and image size must be positive")
    if not bool((camera.image_size == camera.image_size[:1]).all()):
        raise ExportError("camera: frames of different image sizes cannot share one glTF camera; "
                          "export them separately")
    return camera


def check_fps(fps: float) -> float:
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise ExportError(f"fps: expected a positive frame rate, got {fps}")
    return fps


def _full_pose(params, body_model) -> torch.Tensor:
    """[B, 55, 3] axis-angle in SMPL-X joint order (hand mean added when not flat)."""
    lh, rh = params.left_hand_pose, params.right_hand_pose
    if not params.flat_hand_mean:
        hm = body_model.hands_mean.to(lh)
        lh, rh = lh + hm[0], rh + hm[1]
    pose = torch.cat([params.global_orient, params.body_pose, params.jaw_pose, params.leye_pose,
                      params.reye_pose, lh, rh], 1)
    return pose.reshape(-1, skinning.NUM_JOINTS, 3)


@torch.no_grad()
def build_rig(body_model, params, camera=None) -> Rig:
    """Check the inputs and build the exported rig.

    Args:
        body_model: BodyModel (BLADE_BODY_MODEL).
        params: SMPLXParams, batch B >= 1, finite.
        camera: Camera with 1 or B entries, or None (then T = 0).
    Raises:
        ExportError: empty batch, NaN values, a model without skeleton, camera mismatch.
    """
    from ..body import SMPLXParams
    check_body_model(body_model)
    check_params(params)
    b = params.batch_size
    camera = check_camera(camera, b)
    p = params.detach().to(device="cpu", dtype=torch.float64)
    notes = []
    keep = p.valid if p.valid is not None and bool(p.valid.any()) else torch.ones(b, dtype=torch.bool)
    if p.valid is not None and not bool(p.valid.all()):
        notes.append(f"frames {torch.nonzero(~p.valid).reshape(-1).tolist()[:20]} are marked "
                     "invalid upstream; they are exported as given")
    betas = p.betas[keep].mean(0, keepdim=True)
    expr = p.expression[keep].mean(0, keepdim=True)
    if b > 1 and float((p.betas - betas).abs().max()) > 1e-6:
        notes.append("betas vary over the batch; the exported mesh uses their mean")
    if b > 1 and float((p.expression - expr).abs().max()) > 1e-6:
        notes.append("expression varies over the batch; the exported mesh uses its mean")
    model = body_model.cpu()
    zero = SMPLXParams.zeros(1, betas.shape[1], expr.shape[1]).replace(
        betas=betas.float(), expression=expr.float())
    rest = model(zero)
    rest_v = rest.vertices[0].double().numpy()
    rest_j = rest.joints[0, :skinning.NUM_JOINTS].double().numpy()
    parents = np.asarray(model.parents.cpu()).astype(np.int64)
    j4, w4 = skinning.top_k_weights(model.smplx.lbs_weights.double().cpu().numpy(), 4)
    aa = _full_pose(p, model).numpy()
    local = skinning.axis_angle_to_matrix(aa)
    T = camera.translation.double().numpy() if camera is not None else np.zeros((b, 3))
    root_rot, root_pos = opencv_to_gltf(local[:, 0], rest_j[0] + T)
    return Rig(rest_vertices=rest_v, faces=np.asarray(model.faces.cpu()).astype(np.int64),
               rest_joints=rest_j, parents=parents, names=skinning.JOINT_NAMES, joints4=j4,
               weights4=w4, local_rot=local, root_rot=root_rot, root_pos=root_pos,
               camera=camera, notes=tuple(notes))


@dataclass(frozen=True)
class SkinError:
    """How far the exported rig (4-weight LBS, no pose correctives, mean shape) is from the
    full body model, per frame.

    Attributes:
        mean_mm, max_mm: [B] vertex distance, millimetres.
        mean_px, max_px: [B] image distance through the camera, pixels, over the vertices
            more than 5 cm in front of the camera (None without camera).
    """
    mean_mm: np.ndarray
    max_mm: np.ndarray
    mean_px: np.ndarray | None
    max_px: np.ndarray | None

    def summary(self) -> dict:
        d = {"mean_mm": float(self.mean_mm.mean()), "max_mm": float(self.max_mm.max())}
        if self.mean_px is not None:
            d.update(mean_px=float(self.mean_px.mean()), max_px=float(self.max_px.max()))
        return d


@torch.no_grad()
def skin_error(rig: Rig, body_model, params, chunk: int = 32) -> SkinError:
    """Compare the rig's skinned mesh with the full body model (transl = 0, plus T)."""
    from ..camera import project_points
    ours = opencv_to_gltf(None, rig.skinned_vertices())[1]  # back to OpenCV camera space
    b = rig.num_frames
    T = rig.camera.translation.double().numpy() if rig.camera is not None else np.zeros((b, 3))
    full = np.concatenate([body_model(params.index(slice(i, i + chunk))).vertices.double().cpu().numpy()
                           for i in range(0, b, chunk)]) + T[:, None]
    d = np.linalg.norm(ours - full, axis=-1) * 1000
    mean_px = max_px = None
    if rig.camera is not None:
        cam = rig.camera.to(dtype=torch.float64)
        uv_a = project_points(torch.from_numpy(ours), cam.focal, cam.principal)
        uv_b = project_points(torch.from_numpy(full), cam.focal, cam.principal)
        e = (uv_a - uv_b).norm(dim=-1).numpy()
        front = (full[..., 2] > 0.05) & (ours[..., 2] > 0.05)
        e = np.where(front, e, np.nan)
        mean_px, max_px = np.nanmean(e, 1), np.nanmax(e, 1)  # NaN: no vertex in front
    return SkinError(d.mean(1), d.max(1), mean_px, max_px)
