"""BVH export: the SMPL-X skeleton and the batch's motion, for tools that only take BVH.

Same scene frame as the glTF export (:func:`blade_nodes.io.rig.opencv_to_gltf`: y up, the
camera at the origin looking down -Z), units metres times ``scale`` (100 for centimetres).

- HIERARCHY: 55 joints named as SMPL-X joints, parents as in the body model. Every OFFSET is
  the rest offset ``J_k - J_parent`` of the shaped body (mean betas of the batch); the root's
  OFFSET is the rest pelvis position, so summed offsets give the rest joints. Joints without
  children end in an ``End Site`` half as long as their own bone.
- MOTION: one frame per image, ``Frame Time`` = 1 / fps. The root has
  ``Xposition Yposition Zposition Zrotation Xrotation Yrotation``; every other joint
  ``Zrotation Xrotation Yrotation``. Root positions are absolute (the pelvis position in the
  scene, as Blender's BVH importer reads them). Rotations are degrees, local to the parent,
  composed in the listed order: ``R = Rz(z) @ Rx(x) @ Ry(y)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import skinning
from .gltf import ExportReport
from .rig import ExportError, Rig, build_rig, check_fps


def matrix_to_euler_zxy(R: np.ndarray) -> np.ndarray:
    """[..., 3, 3] rotations -> [..., 3] angles (z, x, y), radians, with R = Rz Rx Ry."""
    R = np.asarray(R, np.float64)
    x = np.arcsin(np.clip(R[..., 2, 1], -1, 1))
    z = np.arctan2(-R[..., 0, 1], R[..., 1, 1])
    y = np.arctan2(-R[..., 2, 0], R[..., 2, 2])
    lock = np.abs(R[..., 2, 1]) > 1 - 1e-9  # gimbal lock: put everything in z
    if np.any(lock):
        z = np.where(lock, np.arctan2(R[..., 1, 0], R[..., 0, 0]), z)
        y = np.where(lock, 0.0, y)
    return np.stack([z, x, y], -1)


def euler_zxy_to_matrix(zxy: np.ndarray) -> np.ndarray:
    """[..., 3] (z, x, y) radians -> [..., 3, 3] = Rz @ Rx @ Ry."""
    z, x, y = (np.asarray(zxy, np.float64)[..., i] for i in range(3))
    o, l = np.zeros_like(z), np.ones_like(z)
    m = lambda *r: np.stack(r, -1).reshape(*z.shape, 3, 3)
    Rz = m(np.cos(z), -np.sin(z), o, np.sin(z), np.cos(z), o, o, o, l)
    Rx = m(l, o, o, o, np.cos(x), -np.sin(x), o, np.sin(x), np.cos(x))
    Ry = m(np.cos(y), o, np.sin(y), o, l, o, -np.sin(y), o, np.cos(y))
    return Rz @ Rx @ Ry


def write_bvh(path: str | Path, rig: Rig, fps: float = 30.0, scale: float = 1.0) -> Path:
    """Write ``rig`` as BVH (see module docstring)."""
    fps = check_fps(fps)
    scale = float(scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ExportError(f"scale: expected a positive number (1 = metres, 100 = cm), got {scale}")
    children = {k: [int(c) for c in np.nonzero(rig.parents == k)[0]] for k in range(len(rig.parents))}
    order: list[int] = []
    lines = ["HIERARCHY"]
    fmt = lambda v: " ".join(f"{x * scale:.6f}" for x in v)

    def emit(k: int, depth: int) -> None:
        ind = "\t" * depth
        p = int(rig.parents[k])
        off = rig.rest_joints[k] - (rig.rest_joints[p] if p >= 0 else 0)
        lines.append(f"{ind}{'ROOT' if p < 0 else 'JOINT'} {rig.names[k]}")
        lines.append(f"{ind}{{")
        lines.append(f"{ind}\tOFFSET {fmt(off)}")
        lines.append(f"{ind}\tCHANNELS " + ("6 Xposition Yposition Zposition " if p < 0 else "3 ")
                     + "Zrotation Xrotation Yrotation")
        order.append(k)
        for c in children[k]:
            emit(c, depth + 1)
        if not children[k]:
            lines.append(f"{ind}\tEnd Site")
            lines.append(f"{ind}\t{{")
            lines.append(f"{ind}\t\tOFFSET {fmt(0.5 * off)}")
            lines.append(f"{ind}\t}}")
        lines.append(f"{ind}}}")

    emit(0, 0)
    local = rig.local_rot.copy()
    local[:, 0] = rig.root_rot
    ang = np.degrees(matrix_to_euler_zxy(local[:, order]))  # [B, 55, 3]
    lines += ["MOTION", f"Frames: {rig.num_frames}", f"Frame Time: {1.0 / fps:.8f}"]
    for b in range(rig.num_frames):
        vals = [f"{x * scale:.6f}" for x in rig.root_pos[b]] + [f"{a:.6f}" for a in ang[b].reshape(-1)]
        lines.append(" ".join(vals))
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def export_bvh(path: str | Path, body_model, params, camera=None, fps: float = 30.0,
               scale: float = 1.0) -> ExportReport:
    """Export a batch's skeleton and motion as BVH.

    Args:
        path: file to write.
        body_model, params, camera: as :func:`blade_nodes.io.gltf.export_glb` (the camera only
            places the root: ``T`` is added to the pelvis position).
        fps: frame rate; scale: units per metre (1 = metres, 100 = centimetres).
    Raises:
        ExportError (a ValueError): empty batch, NaN values, no skeleton, bad fps/scale.
    """
    fps = check_fps(fps)
    rig = build_rig(body_model, params, camera)
    write_bvh(path, rig, fps, scale)
    return ExportReport(Path(path), "bvh", rig.num_frames, skinning.NUM_JOINTS,
                        int(rig.rest_vertices.shape[0]), fps, None, rig.notes)
