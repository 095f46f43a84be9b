"""Rigged, animated glTF 2.0 binary (.glb) export of a BLADE batch, with the solved camera.

Written by hand with numpy (no runtime dependency: a GLB is one JSON chunk and one binary
chunk); tests read it back with two independent readers (pygltflib, trimesh) and Blender.

What the file holds (scene frame: see :mod:`blade_nodes.io.rig`, OpenCV camera space rotated
180 degrees about X):

- mesh ``blade_body``: the shaped rest mesh (mean betas and expression of the batch), skinned
  with the 4 largest SMPL-X LBS weights per vertex (renormalised);
- skin ``blade_smplx``: 55 joint nodes named as SMPL-X joints, parents as in the body model,
  rest local translations ``J_k - J_parent``, inverse bind matrices ``translate(-J_k)``;
- animation ``blade_motion``: one keyframe per image (time ``i / fps``), joint rotations as
  quaternions (LINEAR = slerp between keys), pelvis translation;
- camera ``blade_camera`` (when given): perspective, ``yfov = 2 atan(H / 2f)``,
  ``aspectRatio = W / H``, at the origin with identity rotation (glTF cameras look down -Z
  with +Y up, which is our OpenCV camera turned by :func:`~blade_nodes.io.rig.opencv_to_gltf`).
  A focal length that changes over the batch animates ``yfov`` through ``KHR_animation_pointer``
  (optional extension; Blender reads it). ``f``, ``cx``, ``cy`` (pixels) and the image size are
  in the camera's extras. A principal point away from the image centre cannot be stored in
  glTF; the extras say so and give Blender's lens shift that restores it.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import skinning
from .rig import Rig, SkinError, build_rig, check_fps, skin_error

FLOAT, UBYTE, UINT = 5126, 5121, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
PRINCIPAL_NOTE = ("glTF cameras cannot store a principal point away from the image centre: "
                  "the file's camera assumes (W/2, H/2). cx, cy and f are kept here in pixels; "
                  "in Blender set the camera's shift_x/shift_y to the values given here to "
                  "restore the off-centre principal point (render size W x H, sensor fit "
                  "Vertical as the glTF importer sets it).")


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how faithful the rig is.

    Attributes:
        path: the file written.
        format: "glb", "bvh" or "fbx".
        num_frames, num_joints, num_vertices: sizes.
        fps: frame rate of the animation.
        skin: SkinError of the 4-weight, no-corrective rig against the full body model.
        notes: remarks (varying shape, off-centre principal point, invalid frames, ...).
    """
    path: Path
    format: str
    num_frames: int
    num_joints: int
    num_vertices: int
    fps: float
    skin: SkinError | None = None
    notes: tuple[str, ...] = field(default=())

    def text(self) -> str:
        s = (f"{self.format.upper()} {self.path.name}: {self.num_frames} frame(s) at "
             f"{self.fps:g} fps, {self.num_joints} joints, {self.num_vertices} vertices")
        if self.skin is not None:
            m = self.skin.summary()
            s += (f"; 4-weight rig vs full body model: mean {m['mean_mm']:.2f} mm, "
                  f"max {m['max_mm']:.2f} mm")
            if "mean_px" in m:
                s += f" ({m['mean_px']:.2f} px mean, {m['max_px']:.2f} px max)"
        for n in self.notes:
            s += f"\n- {n}"
        return s


class _Glb:
    """Collects buffer views/accessors into one binary buffer."""

    def __init__(self):
        self.chunks: list[bytes] = []
        self.size = 0
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def accessor(self, data: np.ndarray, ctype: int, atype: str, target: int | None = None,
                 minmax: bool = False) -> int:
        dtype = {FLOAT: np.float32, UBYTE: np.uint8, UINT: np.uint32}[ctype]
        arr = np.ascontiguousarray(data, dtype=dtype)
        raw = arr.tobytes()
        view = {"buffer": 0, "byteOffset": self.size, "byteLength": len(raw)}
        if target is not None:
            view["target"] = target
        pad = (-len(raw)) % 4
        self.chunks.append(raw + b"\0" * pad)
        self.size += len(raw) + pad
        self.views.append(view)
        ncomp = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}[atype]
        acc = {"bufferView": len(self.views) - 1, "componentType": ctype,
               "count": int(arr.size // ncomp), "type": atype}
        if minmax:
            flat = arr.reshape(-1, ncomp)
            acc["min"] = [float(x) if ctype == FLOAT else int(x) for x in flat.min(0)]
            acc["max"] = [float(x) if ctype == FLOAT else int(x) for x in flat.max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def write(self, path: Path, doc: dict) -> None:
        doc["buffers"] = [{"byteLength": self.size}]
        doc["bufferViews"] = self.views
        doc["accessors"] = self.accessors
        js = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        js += b" " * ((-len(js)) % 4)
        binary = b"".join(self.chunks)
        total = 12 + 8 + len(js) + 8 + len(binary)
        with open(path, "wb") as fh:
            fh.write(struct.pack("<III", 0x46546C67, 2, total))
            fh.write(struct.pack("<II", len(js), 0x4E4F534A) + js)
            fh.write(struct.pack("<II", len(binary), 0x004E4942) + binary)


def camera_gltf(camera) -> tuple[dict, np.ndarray, list[str]]:
    """glTF camera JSON for a (broadcast) Camera batch.

    Returns:
        (camera dict with extras, per-frame yfov [B] radians, notes).
    """
    f = camera.focal.double().cpu().numpy()
    pp = camera.principal.double().cpu().numpy()
    w, h = (int(x) for x in camera.image_size[0].tolist())
    yfov = 2 * np.arctan(h / (2 * f))
    vary = lambda a: bool(np.abs(a - a[0]).max() > 1e-9 * max(1.0, abs(a[0])))
    as_value = lambda a: [float(x) for x in a] if vary(a) else float(a[0])
    extras = {"f": as_value(f), "cx": as_value(pp[:, 0]), "cy": as_value(pp[:, 1]),
              "width": w, "height": h, "units": "pixels",
              "convention": "OpenCV intrinsics u = f X/Z + cx, v = f Y/Z + cy; pixel centres at "
                            "+0.5; this glTF camera looks down -Z with +Y up",
              "horizontal_fov_deg": as_value(np.degrees(2 * np.arctan(w / (2 * f))))}
    notes = []
    off = np.abs(pp - np.array([w / 2, h / 2])).max()
    if off > 0.5:
        extras["principal_point_note"] = PRINCIPAL_NOTE
        # Blender's glTF importer sets sensor_fit VERTICAL: lens shift is in units of H
        extras["blender_shift_x"] = as_value((w / 2 - pp[:, 0]) / h)
        extras["blender_shift_y"] = as_value((pp[:, 1] - h / 2) / h)
        notes.append(f"principal point up to {off:.1f} px away from the image centre: glTF cannot "
                     "store it (see the camera's extras for cx, cy and Blender's lens shift)")
    cam = {"type": "perspective", "name": "blade_camera",
           "perspective": {"yfov": float(yfov[0]), "aspectRatio": w / h, "znear": 0.01},
           "extras": {"blade": extras}}
    return cam, yfov, notes


def write_glb(path: str | Path, rig: Rig, fps: float = 30.0, extras: dict | None = None) -> Path:
    """Write ``rig`` as a .glb file (see module docstring for the contents)."""
    fps = check_fps(fps)
    path = Path(path)
    g = _Glb()
    b, nj = rig.num_frames, skinning.NUM_JOINTS
    # mesh
    pos = g.accessor(rig.rest_vertices, FLOAT, "VEC3", ARRAY_BUFFER, minmax=True)
    jnt = g.accessor(rig.joints4, UBYTE, "VEC4", ARRAY_BUFFER)
    wgt = g.accessor(rig.weights4, FLOAT, "VEC4", ARRAY_BUFFER)
    idx = g.accessor(rig.faces.reshape(-1), UINT, "SCALAR", ELEMENT_ARRAY_BUFFER)
    mesh = {"name": "blade_body", "primitives": [{
        "attributes": {"POSITION": pos, "JOINTS_0": jnt, "WEIGHTS_0": wgt},
        "indices": idx, "mode": 4}]}
    # skeleton nodes 0..54, mesh node 55, camera node 56
    nodes = []
    for k in range(nj):
        p = int(rig.parents[k])
        t = rig.rest_joints[k] - (rig.rest_joints[p] if p >= 0 else 0)
        node = {"name": rig.names[k], "translation": [float(x) for x in t]}
        children = [int(c) for c in np.nonzero(rig.parents == k)[0]]
        if children:
            node["children"] = children
        nodes.append(node)
    ibm = np.tile(np.eye(4), (nj, 1, 1))
    ibm[:, :3, 3] = -rig.rest_joints
    ibm_acc = g.accessor(ibm.transpose(0, 2, 1).reshape(nj, 16), FLOAT, "MAT4")  # column-major
    nodes.append({"name": "blade_body", "mesh": 0, "skin": 0})
    scene_nodes = [0, nj]
    # animation
    times = g.accessor(np.arange(b) / fps, FLOAT, "SCALAR", minmax=True)
    quats = skinning.matrix_to_quaternion(rig.local_rot)             # [B, 55, 4]
    quats[:, 0] = skinning.matrix_to_quaternion(rig.root_rot)
    quats = skinning.continuous_quaternions(quats)
    samplers, channels = [], []
    for k in range(nj):
        samplers.append({"input": times, "interpolation": "LINEAR",
                         "output": g.accessor(quats[:, k], FLOAT, "VEC4")})
        channels.append({"sampler": k, "target": {"node": k, "path": "rotation"}})
    samplers.append({"input": times, "interpolation": "LINEAR",
                     "output": g.accessor(rig.root_pos, FLOAT, "VEC3")})
    channels.append({"sampler": nj, "target": {"node": 0, "path": "translation"}})
    doc: dict = {
        "asset": {"version": "2.0", "generator": "blade-nodes",
                  "extras": {"blade": {"fps": fps, "frames": b, "scene_frame":
                                       "OpenCV camera space rotated 180 deg about X (OpenGL "
                                       "camera space); camera at the origin looking -Z",
                                       **(extras or {})}}},
        "scene": 0, "meshes": [mesh],
        "skins": [{"name": "blade_smplx", "joints": list(range(nj)), "skeleton": 0,
                   "inverseBindMatrices": ibm_acc}],
    }
    ext_used = []
    if rig.camera is not None:
        cam, yfov, _ = camera_gltf(rig.camera)
        doc["cameras"] = [cam]
        nodes.append({"name": "blade_camera", "camera": 0})  # identity: see opencv_to_gltf
        scene_nodes.append(nj + 1)
        if b > 1 and np.abs(yfov - yfov[0]).max() > 1e-9:
            samplers.append({"input": times, "interpolation": "LINEAR",
                             "output": g.accessor(yfov, FLOAT, "SCALAR")})
            channels.append({"sampler": len(samplers) - 1, "target": {
                "path": "pointer", "extensions": {"KHR_animation_pointer": {
                    "pointer": "/cameras/0/perspective/yfov"}}}})
            ext_used.append("KHR_animation_pointer")
    doc["nodes"] = nodes
    doc["scenes"] = [{"name": "blade", "nodes": scene_nodes}]
    doc["animations"] = [{"name": "blade_motion", "samplers": samplers, "channels": channels}]
    if ext_used:
        doc["extensionsUsed"] = ext_used
    g.write(path, doc)
    return path


def export_glb(path: str | Path, body_model, params, camera=None, fps: float = 30.0,
               measure: bool = True) -> ExportReport:
    """Export a batch as a rigged, animated .glb (with the solved camera when given).

    Args:
        path: file to write (callers inside ComfyUI pass ``io.output_path(...)``).
        body_model: BodyModel.
        params: SMPLXParams, batch B >= 1 (one keyframe per frame).
        camera: Camera with 1 or B entries, or None (body at the origin, no camera).
        fps: frame rate, keyframe i at time i / fps.
        measure: compare the 4-weight rig with the full body model (reported, and stored in
            the file's asset extras).
    Returns:
        ExportReport.
    Raises:
        ExportError (a ValueError): empty batch, NaN values, no skeleton, camera mismatch.
    """
    fps = check_fps(fps)
    rig = build_rig(body_model, params, camera)
    err = skin_error(rig, body_model, params) if measure else None
    notes = list(rig.notes)
    if rig.camera is not None:
        notes += camera_gltf(rig.camera)[2]
    extras = {"skin_error_vs_full_body_model": err.summary()} if err is not None else {}
    if notes:
        extras["notes"] = notes
    write_glb(path, rig, fps, extras)
    return ExportReport(Path(path), "glb", rig.num_frames, skinning.NUM_JOINTS,
                        int(rig.rest_vertices.shape[0]), fps, err, tuple(notes))
