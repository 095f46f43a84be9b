"""Blender (``bpy``) as an optional helper: FBX conversion and the glTF round-trip check.

Blender is never imported into this process: :mod:`blade_nodes.io.blender_side` runs in a
child Python that has ``bpy`` — this interpreter when ``bpy`` is importable here, else the one
named by ``$BLADE_BPY_PYTHON`` (bpy 5.x wheels need Python 3.13, ComfyUI often runs 3.11:
``python3.13 -m venv v && v/bin/pip install bpy`` then ``BLADE_BPY_PYTHON=v/bin/python``).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SIDE = Path(__file__).with_name("blender_side.py")
WHY_NO_FBX = ("FBX needs Blender's Python module 'bpy' (pip install bpy; bpy 5.x needs Python "
              "3.13) in this Python, or $BLADE_BPY_PYTHON set to a Python that has it; the GLB is "
              "converted with Blender's own FBX exporter.")


class BlenderError(RuntimeError):
    """Blender is missing or its importer/exporter failed."""


def bpy_python() -> str | None:
    """A Python executable that can ``import bpy``, or None."""
    if importlib.util.find_spec("bpy") is not None:
        return sys.executable
    env = os.environ.get("BLADE_BPY_PYTHON")
    if env and Path(env).is_file():
        return env
    return None


def fbx_available() -> bool:
    return bpy_python() is not None


def _run(cmd: str, src: Path, dst: Path, timeout: float = 600) -> None:
    py = bpy_python()
    if py is None:
        raise BlenderError(WHY_NO_FBX)
    r = subprocess.run([py, str(SIDE), cmd, str(src), str(dst)], capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0 or not Path(dst).is_file():
        raise BlenderError(f"Blender ({py}) failed on '{cmd}' of {Path(src).name}:\n"
                           f"{(r.stderr or r.stdout)[-2000:]}")


def glb_to_fbx(glb: str | Path, fbx: str | Path) -> Path:
    """Convert an exported GLB to FBX with Blender's exporter (armature, mesh, camera, baked
    animation; axes -Z forward, Y up)."""
    _run("fbx", Path(glb), Path(fbx))
    return Path(fbx)


def evaluate_glb(glb: str | Path, out_npz: str | Path) -> dict[str, np.ndarray]:
    """Import a GLB in Blender and evaluate/project its mesh at every keyframe (see
    :func:`blade_nodes.io.blender_side.evaluate`)."""
    _run("eval", Path(glb), Path(out_npz))
    with np.load(out_npz, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def evaluate_bvh(bvh: str | Path, out_npz: str | Path) -> dict[str, np.ndarray]:
    """Import a BVH with Blender's BVH importer; pose-bone heads per frame (see
    :func:`blade_nodes.io.blender_side.evaluate_bvh`)."""
    _run("bvh", Path(bvh), Path(out_npz))
    with np.load(out_npz, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
