"""Runs INSIDE a Python that has ``bpy`` (Blender as a module); stdlib + numpy + bpy only.

Kept standalone (never imports blade_nodes or torch) so it can run in a separate interpreter,
e.g. Python 3.13 for bpy 5.x while ComfyUI runs 3.11, and so Blender's global state never
lives inside the ComfyUI process. Called by :mod:`blade_nodes.io.blender`:

    python blender_side.py fbx  IN.glb OUT.fbx
    python blender_side.py eval IN.glb OUT.npz
    python blender_side.py bvh  IN.bvh OUT.npz

``eval`` imports the GLB with Blender's own glTF importer, sets the render size from the
camera's extras (glTF has no image size; the user does the same in Blender), applies the lens
shift given there for an off-centre principal point, and for every keyframe evaluates the
skinned mesh (armature modifier) and projects its vertices with
``bpy_extras.object_utils.world_to_camera_view``. It writes ``px`` [B, V', 2] (pixels,
OpenCV rows top-down), ``depth`` [B, V'], ``world`` [B, V', 3] (converted back to the glTF
axes) and ``blender_version``. V' counts the vertices that faces use (the importer drops
unused ones, keeping the order).

``bvh`` imports a BVH with Blender's BVH importer (Y up, -Z forward, as written) and writes
``heads`` [B, J, 3] (pose-bone heads per keyframe, glTF axes, BVH units) and ``names`` [J].
"""
from __future__ import annotations

import json
import struct
import sys

import numpy as np


def _glb_json(path: str) -> dict:
    with open(path, "rb") as fh:
        head = fh.read(20)
        n = struct.unpack("<I", head[12:16])[0]
        return json.loads(fh.read(n))


def _reset(fps: float | None = None):
    import bpy
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    if fps:
        scene.render.fps = int(round(fps))
        scene.render.fps_base = 1.0
    return scene


def _import(path: str):
    import bpy
    res = bpy.ops.import_scene.gltf(filepath=path)
    if "FINISHED" not in res:
        raise RuntimeError(f"Blender's glTF importer failed on {path}: {res}")


def to_fbx(glb: str, fbx: str) -> None:
    import bpy
    doc = _glb_json(glb)
    fps = doc.get("asset", {}).get("extras", {}).get("blade", {}).get("fps")
    _reset(fps)
    _import(glb)
    bpy.ops.export_scene.fbx(filepath=fbx, use_selection=False, add_leaf_bones=False,
                             bake_anim=True, bake_anim_use_all_actions=False,
                             object_types={"ARMATURE", "MESH", "CAMERA"}, axis_forward="-Z",
                             axis_up="Y")


def evaluate(glb: str, out: str) -> None:
    import bpy
    from bpy_extras.object_utils import world_to_camera_view
    doc = _glb_json(glb)
    blade = doc.get("asset", {}).get("extras", {}).get("blade", {})
    fps, frames = blade.get("fps", 30), int(blade.get("frames", 1))
    scene = _reset(fps)
    _import(glb)
    mesh = next(o for o in scene.objects if o.type == "MESH")
    cams = [o for o in scene.objects if o.type == "CAMERA"]
    cam = cams[0] if cams else None
    if cam is not None:
        ex = doc["cameras"][0]["extras"]["blade"]
        w, h = int(ex["width"]), int(ex["height"])
        scene.render.resolution_x, scene.render.resolution_y = w, h
        scene.render.resolution_percentage = 100
        scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
        scene.camera = cam
        sx, sy = ex.get("blender_shift_x", 0.0), ex.get("blender_shift_y", 0.0)
        if isinstance(sx, list) or isinstance(sy, list):
            sx, sy = (sx[0] if isinstance(sx, list) else sx), (sy[0] if isinstance(sy, list) else sy)
        cam.data.shift_x, cam.data.shift_y = float(sx), float(sy)
    worlds, pxs, depths = [], [], []
    for f in range(frames):
        scene.frame_set(f)
        dg = bpy.context.evaluated_depsgraph_get()
        ev = mesh.evaluated_get(dg)
        me = ev.to_mesh()
        co = np.empty(len(me.vertices) * 3, np.float64)
        me.vertices.foreach_get("co", co)
        ev.to_mesh_clear()
        M = np.array(ev.matrix_world, np.float64)
        co = co.reshape(-1, 3) @ M[:3, :3].T + M[:3, 3]
        worlds.append(np.stack([co[:, 0], co[:, 2], -co[:, 1]], 1))  # Blender Z-up -> glTF Y-up
        if cam is not None:
            from mathutils import Vector
            cam_ev = cam.evaluated_get(dg)
            ndc = np.array([tuple(world_to_camera_view(scene, cam_ev, Vector(p))) for p in co])
            pxs.append(np.stack([ndc[:, 0] * w, (1 - ndc[:, 1]) * h], 1))
            depths.append(ndc[:, 2])
    res = {"world": np.stack(worlds), "blender_version": np.array(bpy.app.version_string)}
    if cam is not None:
        res.update(px=np.stack(pxs), depth=np.stack(depths))
    np.savez(out, **res)


def evaluate_bvh(path: str, out: str) -> None:
    import bpy
    scene = _reset()
    bpy.ops.import_anim.bvh(filepath=path, global_scale=1.0, axis_forward="-Z", axis_up="Y",
                            update_scene_fps=True, update_scene_duration=True)
    arm = next(o for o in scene.objects if o.type == "ARMATURE")
    names = [b.name for b in arm.data.bones]
    with open(path) as fh:
        frames = int(next(line for line in fh if line.startswith("Frames:")).split()[1])
    M = np.array(arm.matrix_world, np.float64)
    heads = []
    for f in range(scene.frame_start, scene.frame_start + frames):
        scene.frame_set(f)
        h = np.array([tuple(arm.pose.bones[n].head) for n in names], np.float64)
        h = h @ M[:3, :3].T + M[:3, 3]
        heads.append(np.stack([h[:, 0], h[:, 2], -h[:, 1]], 1))
    np.savez(out, heads=np.stack(heads), names=np.array(names),
             blender_version=np.array(bpy.app.version_string))


if __name__ == "__main__":
    cmd, src, dst = sys.argv[1:4]
    {"fbx": to_fbx, "eval": evaluate, "bvh": evaluate_bvh}[cmd](src, dst)
