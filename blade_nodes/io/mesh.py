"""Mesh export (GLB, OBJ, PLY with trimesh) and the LOAD3D_CAMERA of ComfyUI's Preview3D.

Space of the written mesh: glTF / three.js view space of the solved camera,
metres: x right, y UP, z toward the viewer (the camera sits at the origin and
looks down -z). It is the OpenCV camera space (x right, y down, z forward) turned
180 degrees about x, ``(x, y, z) -> (x, -y, -z)``: a rotation, so the winding
(outward normals) is kept, and Preview3D shows the person upright. Without a
camera the body is written at ``transl = 0`` in the same axes (pelvis near the
origin).

:func:`load3d_camera` gives Preview3D's ``camera_info`` (``LOAD3D_CAMERA``:
``position``, ``target`` as ``{x, y, z}``, ``zoom``, ``cameraType``) for that space:
the eye at the origin and the orbit target on the optical axis at the body's
depth, so the preview opens from the solved viewpoint. The viewer's field of view
is not part of ``LOAD3D_CAMERA``; the extra key ``fov`` (vertical, degrees) says
which one matches the photo (set it in the viewer).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch import Tensor

from .paths import inside, output_path, output_root

MESH_FORMATS = ("glb", "obj", "ply")


def opencv_to_gltf_points(points: np.ndarray) -> np.ndarray:
    """[..., 3] OpenCV camera-space points -> glTF view space (x, -y, -z), via the one
    conversion of :func:`blade_nodes.io.rig.opencv_to_gltf`."""
    from .rig import opencv_to_gltf
    return opencv_to_gltf(None, np.asarray(points, dtype=np.float64))[1]


def write_mesh(path: str | Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Write one triangle mesh; the format follows the extension (.glb, .obj, .ply).

    Args:
        path: destination file (the caller keeps it inside the output folder).
        vertices: [V, 3] float, metres, in the space the file should hold.
        faces: [F, 3] int vertex indices (counter-clockwise = outward).
    Returns:
        the path written.
    Raises:
        ValueError: unknown extension.
    """
    import trimesh

    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext not in MESH_FORMATS:
        raise ValueError(f"mesh format: expected one of {MESH_FORMATS}, got {ext!r}")
    mesh = trimesh.Trimesh(vertices=np.asarray(vertices, dtype=np.float64),
                           faces=np.asarray(faces, dtype=np.int64), process=False)
    data = mesh.export(file_type=ext)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def export_meshes(vertices_cv: Tensor, faces: Tensor, filename_prefix: str, fmt: str = "glb",
                  root: str | Path | None = None) -> list[Path]:
    """Write one numbered mesh file per frame into the output folder.

    Args:
        vertices_cv: [B, V, 3] vertices in OpenCV camera space (or body space), metres;
            written in glTF axes (module doc).
        faces: [F, 3] int64.
        filename_prefix: name inside the output folder ("blade/mesh"); see
            :func:`blade_nodes.io.output_path`.
        fmt: "glb", "obj" or "ply".
        root: output folder (default ``output_root()``).
    Returns:
        B absolute paths, in frame order.
    Raises:
        UnsafePathError: the prefix would leave the output folder.
        ValueError: unknown format or bad shapes.
    """
    if fmt not in MESH_FORMATS:
        raise ValueError(f"format: expected one of {MESH_FORMATS}, got {fmt!r}")
    if vertices_cv.ndim != 3 or vertices_cv.shape[-1] != 3:
        raise ValueError(f"vertices: expected [B, V, 3], got {tuple(vertices_cv.shape)}")
    root = Path(root) if root is not None else output_root()
    v = opencv_to_gltf_points(vertices_cv.detach().cpu().double().numpy())
    f = faces.detach().cpu().numpy()
    paths = []
    for i in range(v.shape[0]):
        path = output_path(filename_prefix, fmt, root)
        inside(root, path)  # never write outside the output folder
        paths.append(write_mesh(path, v[i], f))
    return paths


def relative_to_output(path: str | Path, root: str | Path | None = None) -> str:
    """``path`` relative to the output folder with forward slashes (what Preview3D loads)."""
    root = Path(root) if root is not None else output_root()
    return inside(root, path).relative_to(Path(root).resolve()).as_posix()


def load3d_camera(vertices_cv: Tensor | None = None, focal: float | None = None,
                  image_height: int | None = None, default_distance: float = 2.5) -> dict:
    """Preview3D's ``camera_info`` (``LOAD3D_CAMERA``) for a mesh written by this module.

    Args:
        vertices_cv: [V, 3] the frame's OpenCV camera-space vertices, metres, or None
            when the mesh was written without a camera.
        focal: focal length in pixels and ``image_height`` in pixels give the extra
            ``fov`` key (vertical field of view, degrees).
        default_distance: metres from the body when there is no camera.
    Returns:
        ``{"position": {x, y, z}, "target": {x, y, z}, "zoom": 1,
        "cameraType": "perspective"[, "fov": deg]}`` in glTF axes.
    """
    if vertices_cv is None:
        position = (0.0, 0.0, float(default_distance))
        target = (0.0, 0.0, 0.0)
    else:
        z = vertices_cv[..., 2]
        depth = float((z.amin() + z.amax()) / 2)  # middle of the body's depth range
        position = (0.0, 0.0, 0.0)
        target = (0.0, 0.0, -depth)
    info = {"position": dict(zip("xyz", position)), "target": dict(zip("xyz", target)),
            "zoom": 1, "cameraType": "perspective"}
    if focal is not None and image_height is not None and focal > 0:
        info["fov"] = math.degrees(2 * math.atan(float(image_height) / (2 * float(focal))))
    return info
