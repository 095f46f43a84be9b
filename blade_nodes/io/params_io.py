"""The params interchange format ``blade-smplx/1`` (JSON and NPZ) and official BLADE ``.pth``.

JSON::

    {"format": "blade-smplx/1", "flat_hand_mean": true,
     "frames": [{"betas": [...], "global_orient": [3], "body_pose": [63],
                 "left_hand_pose": [45], "right_hand_pose": [45], "jaw_pose": [3],
                 "leye_pose": [3], "reye_pose": [3], "expression": [...],
                 "camera": {"focal_length": f, "principal_point": [cx, cy],
                            "translation": [Tx, Ty, Tz], "image_size": [W, H]}}]}

``camera`` is optional per frame (all frames or none); missing pose keys mean zeros.
NPZ: the same keys stacked over frames (``focal_length`` [B], ``principal_point`` [B, 2],
``translation`` [B, 3], ``image_size`` [B, 2]) plus ``format``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..body.params import PARAM_NAMES, SMPLXParams
from ..camera.convention import Camera

FORMAT = "blade-smplx/1"
CAMERA_KEYS = ("focal_length", "principal_point", "translation", "image_size")


class ParamsFileError(ValueError):
    """A params file that cannot be read; the message says what is wrong."""


def _finite(name: str, values) -> list:
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ParamsFileError(f"'{name}' holds NaN or infinite values")
    return arr.tolist()


def params_to_dict(params: SMPLXParams, camera: Camera | None = None) -> dict:
    frames = []
    for i in range(params.batch_size):
        fr = {n: _finite(n, getattr(params, n)[i].detach().cpu().double()) for n in PARAM_NAMES}
        if camera is not None:
            fr["camera"] = {
                "focal_length": float(camera.focal[i]),
                "principal_point": camera.principal[i].detach().cpu().double().tolist(),
                "translation": camera.translation[i].detach().cpu().double().tolist(),
                "image_size": [int(x) for x in camera.image_size[i]],
            }
        if params.valid is not None:
            fr["valid"] = bool(params.valid[i])
        frames.append(fr)
    return {"format": FORMAT, "flat_hand_mean": params.flat_hand_mean, "frames": frames}


def save_params(path: str | Path, params: SMPLXParams, camera: Camera | None = None) -> Path:
    """Write ``.json`` or ``.npz`` (by suffix). Raises ParamsFileError on NaN or a batch mismatch."""
    path = Path(path)
    if camera is not None and camera.batch_size != params.batch_size:
        raise ParamsFileError(f"camera has {camera.batch_size} frames, params {params.batch_size}")
    if path.suffix == ".json":
        path.write_text(json.dumps(params_to_dict(params, camera), indent=1))
    elif path.suffix == ".npz":
        arrays = {n: getattr(params, n).detach().cpu().double().numpy() for n in PARAM_NAMES}
        for n, a in arrays.items():
            _finite(n, a)
        arrays["format"] = np.array(FORMAT)
        arrays["flat_hand_mean"] = np.array(params.flat_hand_mean)
        if camera is not None:
            arrays.update(focal_length=camera.focal.detach().cpu().double().numpy(),
                          principal_point=camera.principal.detach().cpu().double().numpy(),
                          translation=camera.translation.detach().cpu().double().numpy(),
                          image_size=camera.image_size.cpu().numpy())
        np.savez(path, **arrays)
    else:
        raise ParamsFileError(f"{path.name}: save as .json or .npz")
    return path


def _camera_from(values: dict, n: int, where: str) -> Camera:
    try:
        f = np.asarray(values["focal_length"], np.float64).reshape(n)
        pp = np.asarray(values["principal_point"], np.float64).reshape(n, 2)
        t = np.asarray(values["translation"], np.float64).reshape(n, 3)
        size = np.asarray(values["image_size"], np.float64).reshape(n, 2)
    except KeyError as e:
        raise ParamsFileError(f"{where}: camera lacks {e.args[0]!r}; needs {', '.join(CAMERA_KEYS)}") from None
    except ValueError as e:
        raise ParamsFileError(f"{where}: camera values have wrong shapes ({e}); expected "
                              "focal_length [1], principal_point [2], translation [3], "
                              "image_size [2] per frame") from None
    for name, a in (("focal_length", f), ("principal_point", pp), ("translation", t), ("image_size", size)):
        if not np.all(np.isfinite(a)):
            raise ParamsFileError(f"{where}: camera {name} holds NaN or infinite values")
    if np.any(f <= 0) or np.any(size <= 0):
        raise ParamsFileError(f"{where}: focal_length and image_size must be positive")
    return Camera.create(torch.tensor(f, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
                         torch.tensor(size), principal=torch.tensor(pp, dtype=torch.float32))


def _params_from(values: dict, where: str, flat_hand_mean: bool) -> SMPLXParams:
    for n in PARAM_NAMES:
        if n in values and values[n] is not None:
            if not np.all(np.isfinite(np.asarray(values[n], np.float64))):
                raise ParamsFileError(f"{where}: '{n}' holds NaN or infinite values")
    try:
        return SMPLXParams.from_dict(values, flat_hand_mean=flat_hand_mean)
    except (ValueError, TypeError) as e:
        raise ParamsFileError(f"{where}: {e}") from None


def load_params(path: str | Path) -> tuple[SMPLXParams, Camera | None]:
    """Read a ``.json``/``.npz`` in blade-smplx/1 format, or an official BLADE ``.pth``.

    Returns:
        (params, camera or None)
    Raises:
        ParamsFileError: missing file, unknown format, wrong shapes, NaN.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsFileError(f"params file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ParamsFileError(f"{path.name}: not valid JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("frames"), list):
            raise ParamsFileError(f"{path.name}: expected {{'format': '{FORMAT}', 'frames': [...]}}")
        frames = doc["frames"]
        if not frames:
            raise ParamsFileError(f"{path.name}: 'frames' is empty")
        flat = bool(doc.get("flat_hand_mean", True))
        params = SMPLXParams.cat([_params_from(fr, f"{path.name} frame {i}", flat)
                                  for i, fr in enumerate(frames)])
        if any("valid" in fr for fr in frames):
            params = params.replace(valid=torch.tensor([bool(fr.get("valid", True)) for fr in frames]))
        with_cam = [("camera" in fr) for fr in frames]
        if any(with_cam) and not all(with_cam):
            raise ParamsFileError(f"{path.name}: some frames have a camera and some do not")
        camera = None
        if all(with_cam):
            camera = Camera.cat([_camera_from(fr["camera"], 1, f"{path.name} frame {i}")
                                 for i, fr in enumerate(frames)])
        return params, camera
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                values = {k: z[k] for k in z.files}
        except Exception as e:
            raise ParamsFileError(f"{path.name}: not a readable .npz ({type(e).__name__}: {e})") from None
        if str(values.get("format", "")) != FORMAT:
            raise ParamsFileError(f"{path.name}: expected format '{FORMAT}' in the npz")
        flat = bool(values.get("flat_hand_mean", True))
        params = _params_from(values, path.name, flat)
        camera = None
        if any(k in values for k in CAMERA_KEYS):
            camera = _camera_from(values, params.batch_size, path.name)
        return params, camera
    if suffix in (".pth", ".pt"):
        return load_official_result(path)
    raise ParamsFileError(f"{path.name}: expected .json, .npz or an official BLADE .pth")


def load_official_result(path: str | Path) -> tuple[SMPLXParams, Camera]:
    """Read an official BLADE per-image result ``.pth`` (safe loading).

    The official ``camera_hw`` is the silhouette raster size, half of the posenet frame
    that ``camera_focal_length`` refers to, so the image is ``2 * camera_hw`` and the
    principal point its centre. Hand poses are relative to the mean hand
    (``flat_hand_mean=False``). Returns params and camera in the posenet frame.
    """
    path = Path(path)
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ParamsFileError(f"{path.name}: not a safe, readable torch file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from None
    need = ("smplx_betas", "smplx_body_pose", "smplx_global_orientation", "camera_translation",
            "camera_focal_length", "camera_hw")
    if not isinstance(d, dict) or any(k not in d for k in need):
        got = sorted(d)[:8] if isinstance(d, dict) else type(d).__name__
        raise ParamsFileError(f"{path.name}: not an official BLADE result; needs {', '.join(need)}, got {got}")
    g = lambda k: torch.as_tensor(d[k]).detach().float().reshape(-1, torch.as_tensor(d[k]).shape[-1])
    values = {"betas": g("smplx_betas"), "body_pose": g("smplx_body_pose"),
              "global_orient": g("smplx_global_orientation")}
    for side in ("left", "right"):
        if f"smplx_{side}_hand_pose" in d:
            values[f"{side}_hand_pose"] = g(f"smplx_{side}_hand_pose")
    params = _params_from(values, path.name, flat_hand_mean=False)
    b = params.batch_size
    hw = torch.as_tensor(d["camera_hw"]).reshape(b, 2).double()
    size = torch.stack([hw[:, 1], hw[:, 0]], 1) * 2  # (W, H) of the frame f refers to
    f = torch.as_tensor(d["camera_focal_length"]).double().reshape(b)
    t = torch.as_tensor(d["camera_translation"]).double().reshape(b, 3)
    if not (torch.isfinite(f).all() and torch.isfinite(t).all()) or (f <= 0).any():
        raise ParamsFileError(f"{path.name}: camera values are NaN or non-positive")
    return params, Camera.create(f.float(), t.float(), size)
