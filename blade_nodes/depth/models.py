"""Finding and loading depth models (BLADE DepthNet or a Depth Anything V2 metric model).

Search paths: callers pass lists of directories (ComfyUI's ``folder_paths``); outside ComfyUI
the default is ``$BLADE_MODELS_DIR/<kind>`` with ``BLADE_MODELS_DIR`` defaulting to ``./models``.
Kinds: ``blade`` (official ``epoch_2.pth`` or a converted ``*.safetensors``) and
``depthanything`` (a transformers folder with ``config.json`` + ``*.safetensors``, or an
official DAv2 metric ``.pth``). Nothing is downloaded unless ``download=True`` is passed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from .depthnet import (BladeDepthNet, CheckpointError, MetricDepthNet, OFFICIAL_PREFIXES,
                       dav2_from_official, depthnet_from_state_dict, read_state_dict,
                       save_depthnet)

__all__ = ["model_dirs", "list_depth_models", "find_depth_model", "load_depth_model",
           "download_metric_model", "DEFAULT_METRIC_REPO", "WEIGHT_SUFFIXES"]

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")
DEFAULT_METRIC_REPO = "depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf"


def model_dirs(kind: str, dirs: Sequence[str | Path] | None = None) -> list[Path]:
    """Directories searched for ``kind`` models: ``dirs`` or ``$BLADE_MODELS_DIR/<kind>``."""
    if dirs:
        return [Path(d) for d in dirs]
    return [Path(os.environ.get("BLADE_MODELS_DIR", "models")) / kind]


def _entries(d: Path) -> list[str]:
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES:
            out.append(p.name)
        elif p.is_dir() and (p / "config.json").is_file():
            out.append(p.name)
    return out


def list_depth_models(blade_dirs: Sequence[str | Path] | None = None,
                      depthanything_dirs: Sequence[str | Path] | None = None) -> list[str]:
    """Choices for a loader: ``blade/<file>`` and ``depthanything/<file or folder>``."""
    names = []
    for kind, dirs in (("blade", blade_dirs), ("depthanything", depthanything_dirs)):
        for d in model_dirs(kind, dirs):
            names += [f"{kind}/{n}" for n in _entries(d) if f"{kind}/{n}" not in names]
    return names


def find_depth_model(name: str, blade_dirs: Sequence[str | Path] | None = None,
                     depthanything_dirs: Sequence[str | Path] | None = None) -> Path:
    """Path of a ``list_depth_models`` choice (or an existing path). Raises FileNotFoundError."""
    p = Path(name)
    if p.exists():
        return p
    kind, _, rest = name.partition("/")
    dirs = {"blade": blade_dirs, "depthanything": depthanything_dirs}.get(kind)
    searched = []
    if kind in ("blade", "depthanything"):
        for d in model_dirs(kind, dirs):
            searched.append(str(d))
            if (d / rest).exists():
                return d / rest
    raise FileNotFoundError(
        f"depth model {name!r} not found (searched {searched or 'nothing'}). Put the official "
        "BLADE epoch_2.pth in models/blade, or a Depth Anything V2 metric model folder "
        "(transformers format) in models/depthanything.")


def _max_depth_from_name(name: str) -> int | None:
    low = name.lower()
    if "hypersim" in low or "indoor" in low:
        return 20
    if "vkitti" in low or "outdoor" in low:
        return 80
    return None


def load_depth_model(path: str | Path, save_safetensors: bool = False
                     ) -> BladeDepthNet | MetricDepthNet:
    """Load whatever depth model ``path`` holds (safe loading only).

    Args:
        path: official BLADE ``.pth``/converted ``.safetensors`` -> :class:`BladeDepthNet`;
            a transformers Depth Anything folder or an official DAv2 metric ``.pth``
            -> :class:`MetricDepthNet`.
        save_safetensors: for an official BLADE ``.pth``, also write
            ``<stem>.depthnet.safetensors`` beside it (much faster to load next time).
    Raises:
        CheckpointError: unreadable, unsafe, truncated, partial, or another model's file.
    """
    path = Path(path)
    if path.is_dir():
        return _load_transformers_dir(path)
    sd, meta = read_state_dict(path)
    keys = [k.removeprefix("module.") for k in sd]
    if meta.get("format") == "blade-nodes-depthnet" or any(k.startswith(OFFICIAL_PREFIXES) for k in keys):
        model = depthnet_from_state_dict(sd, meta, path.name)
        if save_safetensors and path.suffix != ".safetensors":
            save_depthnet(model, path.with_name(path.stem + ".depthnet.safetensors"))
        return model
    if any(k.startswith("pretrained.blocks.") for k in keys) and any(
            k.startswith("depth_head.scratch.") for k in keys):
        md = _max_depth_from_name(path.name)
        if md is None:
            raise CheckpointError(
                f"{path.name}: an official Depth Anything V2 checkpoint, but its depth range is "
                "not in the name; rename it to contain 'hypersim' (indoor, 20 m) or 'vkitti' "
                "(outdoor, 80 m)")
        return dav2_from_official(sd, path.name, md)
    if any(k.startswith("backbone.embeddings.") for k in keys):
        raise CheckpointError(
            f"{path.name}: transformers-format weights need their config.json; put the whole "
            "model folder (config.json + model.safetensors) in models/depthanything")
    raise CheckpointError(
        f"{path.name} is neither a BLADE nor a Depth Anything checkpoint (first keys: "
        f"{', '.join(list(sd)[:4])}). Right file for this node?")


def _load_transformers_dir(path: Path) -> MetricDepthNet:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json; expected a transformers model folder")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: unreadable JSON ({e})") from e
    if cfg.get("model_type") != "depth_anything":
        raise CheckpointError(f"{path.name}: config model_type is {cfg.get('model_type')!r}, "
                              "expected 'depth_anything' (a Depth Anything V2 metric model)")
    if cfg.get("depth_estimation_type") != "metric":
        raise CheckpointError(f"{path.name}: a relative-depth model has no metres; use a Metric "
                              "checkpoint (e.g. Depth-Anything-V2-Metric-Indoor-Large-hf)")
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{path.name}: no *.safetensors weights (pickled .bin files are "
                              "not loaded for safety)")
    from transformers import DepthAnythingForDepthEstimation
    try:
        dav2 = DepthAnythingForDepthEstimation.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True)
    except Exception as e:
        raise CheckpointError(f"{path.name}: transformers could not load it "
                              f"({type(e).__name__}: {str(e)[:300]}). Truncated download?") from e
    return MetricDepthNet(dav2.float(), path.name)


def download_metric_model(repo_id: str = DEFAULT_METRIC_REPO,
                          dirs: Sequence[str | Path] | None = None) -> Path:
    """Download a transformers Depth Anything V2 metric model into the first search dir.

    Only called when the user explicitly asks for a download.
    """
    from huggingface_hub import snapshot_download

    dest = model_dirs("depthanything", dirs)[0] / repo_id.split("/")[-1]
    snapshot_download(repo_id, local_dir=str(dest),
                      allow_patterns=["config.json", "*.safetensors", "preprocessor_config.json"])
    return dest
