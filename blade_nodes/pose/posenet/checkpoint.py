"""Load BLADE PoseNet weights from an official checkpoint (safe formats only).

A BLADE checkpoint (mmcv, ``epoch_2.pth``) stores the PoseNet under ``pose_backbone.``; other
prefixes (``depth_backbone.``, SMPL-X buffers, ...) are ignored. Bare AiOS keys (no prefix) are
accepted too. The remap:

1. unwrap ``state_dict`` (mmcv) and strip ``module.`` (DataParallel);
2. keep ``pose_backbone.*`` and strip the prefix (if no key has it, all keys are AiOS keys);
3. drop the SMPL-X buffers ``body_model.*`` (SMPL-X comes from the official model files);
4. aliases: the decoder head lists are registered twice (``bbox_embed.N`` and
   ``transformer.decoder.bbox_embed.N``; ``*_controlnet`` for the copy), and the shared
   ``pose_hw_embed``/``pose_hand_hw_embed``/``pose_face_hw_embed`` appear at every index; all
   names map to one canonical key (``transformer[_controlnet].decoder.<head>.<i>``, index 0 for
   the shared ones);
5. ``backbone[_controlnet].0.body.`` -> ``backbone[_controlnet].``;
6. drop tensors inference never uses: ``label_enc`` (denoising training), ``Tz_poss_zeromlp.3``
   and head indices the port does not build (intermediate SMPL heads, class heads of
   intermediate layers, the ControlNet's last-layer heads);
7. anything else must match the model exactly: missing or unexpected keys and shape mismatches
   raise :class:`PoseNetCheckpointError` naming them.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import FULL, REDUCED, PoseNetConfig
from .model import PoseNet

PREFIX = "pose_backbone."
_HEADS = ("bbox_embed", "class_embed", "pose_embed", "pose_hw_embed", "bbox_hand_embed",
          "bbox_hand_hw_embed", "pose_hand_embed", "pose_hand_hw_embed", "bbox_face_embed",
          "bbox_face_hw_embed", "pose_face_embed", "pose_face_hw_embed")
_SHARED = ("pose_hw_embed", "pose_hand_hw_embed", "pose_face_hw_embed")
_TOP_ALIAS = re.compile(r"^(%s)(_controlnet)?\.(\d+)\.(.*)$" % "|".join(_HEADS))
_SHARED_ALIAS = re.compile(r"^(transformer(?:_controlnet)?\.decoder\.(?:%s))\.\d+\.(.*)$"
                           % "|".join(_SHARED))
_BACKBONE = re.compile(r"^(backbone(?:_controlnet)?)\.0\.body\.(.*)$")
_ALWAYS_UNUSED = re.compile(r"^(label_enc\.|Tz_poss_zeromlp\.([3-9]|\d\d+)\.|body_model\.)|"
                            r"num_batches_tracked$")


class PoseNetCheckpointError(ValueError):
    """The file is not a (complete) BLADE PoseNet checkpoint for this config."""


def canonical_key(key: str) -> str:
    """Official AiOS key (prefix stripped) -> this port's parameter name."""
    m = _TOP_ALIAS.match(key)
    if m:
        branch = "transformer_controlnet" if m.group(2) else "transformer"
        key = f"{branch}.decoder.{m.group(1)}.{m.group(3)}.{m.group(4)}"
    m = _SHARED_ALIAS.match(key)
    if m:
        key = f"{m.group(1)}.0.{m.group(2)}"
    m = _BACKBONE.match(key)
    if m:
        key = f"{m.group(1)}.{m.group(2)}"
    return key


def _unused_head_index(model: nn.Module):
    """Predicate: key addresses an index of a head list that this port does not build."""
    dicts = {name: set(mod.keys()) for name, mod in model.named_modules()
             if isinstance(mod, nn.ModuleDict)}

    def unused(key: str) -> bool:
        parts = key.split(".")
        for n in range(1, len(parts)):
            prefix = ".".join(parts[:n])
            if prefix in dicts:
                return parts[n] not in dicts[prefix]
        return False
    return unused


def remap(state: dict[str, Tensor], model: PoseNet) -> tuple[dict[str, Tensor], list[str]]:
    """Official PoseNet state dict -> (this model's state dict, dropped unused keys as named in
    ``state``). Keys outside ``pose_backbone.`` are ignored silently (other BLADE networks)."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    names = {(k[7:] if k.startswith("module.") else k): k for k in state}
    if any(k.startswith(PREFIX) for k in names):
        names = {k[len(PREFIX):]: o for k, o in names.items() if k.startswith(PREFIX)}
    state = {k: state[o] for k, o in names.items()}
    unused = _unused_head_index(model)
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    # canonical names first, so a canonical tensor wins over its aliases
    for key in sorted(state, key=lambda k: canonical_key(k) != k):
        value = state[key]
        new = canonical_key(key)
        if _ALWAYS_UNUSED.search(new) or unused(new):
            dropped.append(names[key])
        elif new not in out:
            out[new] = value
    return out, dropped


def _show(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (" ..." if len(keys) > n else "")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a .safetensors or .pth/.pt/.ckpt file safely (weights_only); raise a clear error."""
    path = Path(path)
    if not path.is_file():
        raise PoseNetCheckpointError(f"{path}: file not found. Put the BLADE checkpoint "
                                     "(e.g. epoch_2.pth) in models/blade/.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        if suffix in (".pth", ".pt", ".ckpt", ".bin"):
            sd = _torch_load_safe(path)
            if not isinstance(sd, dict):
                raise PoseNetCheckpointError(f"{path.name}: expected a state dict, "
                                             f"got {type(sd).__name__}")
            return sd
    except PoseNetCheckpointError:
        raise
    except Exception as exc:  # corrupt / truncated / pickled code refused by weights_only
        if "Weights only load failed" in str(exc):
            raise PoseNetCheckpointError(
                f"{path.name}: could not be read safely: it contains Python objects that "
                "weights-only loading refuses. Convert it once, in a trusted environment, to "
                "a .safetensors of its 'state_dict' tensors and load that.") from exc
        raise PoseNetCheckpointError(
            f"{path.name}: could not be read as {suffix} ({type(exc).__name__}: "
            f"{str(exc)[:200]}). The file may be truncated or not a weights file; "
            "download it again.") from exc
    raise PoseNetCheckpointError(f"{path.name}: expected .safetensors or .pth, got {suffix!r}")


def _numpy_data_globals() -> list:
    """numpy scalar / array / dtype reconstructors (data only, no code): mmcv checkpoints keep
    numpy numbers in their ``meta`` (e.g. ``hook_msgs``), which plain weights-only loading
    refuses. Both the numpy 1 and numpy 2 module names are allowed."""
    try:
        import numpy as np
    except ImportError:
        return []
    core = getattr(np, "_core", None) or np.core
    out: list = [np.ndarray, np.dtype]
    for obj, name in ((core.multiarray.scalar, "scalar"),
                      (core.multiarray._reconstruct, "_reconstruct")):
        out += [(obj, f"numpy.core.multiarray.{name}"), (obj, f"numpy._core.multiarray.{name}")]
    out += [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32,
                                        np.int16, np.int8, np.uint8, np.bool_)]
    return out


def _torch_load_safe(path: Path):
    """``torch.load(weights_only=True)``, memory-mapped when possible (a BLADE checkpoint also
    holds the DepthNet; only the PoseNet tensors are then read), with numpy data types allowed."""
    def load(**kw):
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True, **kw)
    try:
        return load(mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zip" not in str(exc):
            raise
        return load()


def infer_config(state: dict[str, Tensor]) -> PoseNetConfig:
    """FULL or REDUCED (golden) config, recognised from the architecture in the weights."""
    keys = {canonical_key(k[len(PREFIX):] if k.startswith(PREFIX) else k) for k in state}
    if "transformer.encoder.layers.5.norm1.weight" in keys:
        return FULL
    if "transformer.encoder.layers.2.norm1.weight" in keys:
        return REDUCED
    raise PoseNetCheckpointError(
        "not a BLADE PoseNet checkpoint: no key 'pose_backbone.transformer.encoder.layers.*' "
        f"(first keys: {_show(sorted(state))}). Right file for this node?")


def load_state(model: PoseNet, state: dict[str, Tensor], name: str = "checkpoint") -> list[str]:
    """Load an official state dict into ``model`` strictly (after :func:`remap`).

    Returns the dropped (unused) keys. Raises PoseNetCheckpointError on missing / unexpected keys
    or shape mismatches."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    sd, dropped = remap(state, model)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise PoseNetCheckpointError(
            f"{name} does not match the BLADE PoseNet: {len(missing)} missing "
            f"[{_show(missing)}]; {len(unexpected)} unexpected [{_show(unexpected)}]. "
            "Use the full BLADE checkpoint (keys 'pose_backbone.*').")
    bad = [f"{k} (expected {tuple(own[k].shape)}, got {tuple(sd[k].shape)})"
           for k in own if tuple(own[k].shape) != tuple(sd[k].shape)]
    if bad:
        raise PoseNetCheckpointError(f"{name}: {len(bad)} shape mismatches [{_show(bad, 4)}]; "
                                     "the checkpoint is for another PoseNet config.")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    return dropped


def load_posenet(path: str | Path, cfg: PoseNetConfig | None = None,
                 device: str | torch.device = "cpu") -> PoseNet:
    """Build a PoseNet and load official weights.

    Args:
        path: ``.pth`` (mmcv checkpoint, ``state_dict`` wrapper optional; loaded with
            ``weights_only=True``) or ``.safetensors``; keys ``pose_backbone.*`` or bare AiOS keys.
        cfg: architecture; default: recognised from the weights (FULL or the golden REDUCED).
        device: where the model lives.
    Returns:
        the model in eval mode, float32, gradients off.
    Raises:
        PoseNetCheckpointError (a ValueError): unreadable file, wrong model, missing or
            unexpected keys (named), shape mismatch.
    """
    path = Path(path)
    state = read_state_dict(path)
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if cfg is None:
        cfg = infer_config(state)
    model = PoseNet(cfg)
    load_state(model, state, path.name)
    model.eval().requires_grad_(False)
    return model.to(device)
