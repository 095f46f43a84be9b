"""BLADE DepthNet: pelvis depth Tz from a 518x518 person crop.

Architecture (official ``blade.py`` ``build_depthnet`` / ``predict_pelvis_tz``):

    crop [B,3,518,518] (ImageNet-normalised RGB)
      -> Depth Anything V2 metric (transformers ``DepthAnythingForDepthEstimation``):
         DINOv2 backbone -> DPT neck; the finest fused map (official ``path_1``,
         ``neck(...)[-1]``) [B, F, 296, 296]
      -> bilinear resize to 224x224 (align_corners=True)
      -> interface: (Conv3x3 s2 -> BatchNorm -> ReLU) x 2 -> [B, D, 56, 56]
      -> 3136 tokens, no positional encoding
      -> transformer decoder (post-norm, ReLU FFN) with one learned query
      -> Linear(D, 1) -> 10 * sigmoid -> Tz [B] metres.

The DAv2 depth head (``head.conv1..3``) is kept: it turns the same neck output into a metric
depth map (Hypersim-trained for the BLADE checkpoint), which ``metric.py`` can use.

Checkpoints: the official mmcv ``.pth`` (``state_dict`` with ``depth_backbone.*``,
``depth_interface.*``, ``depth_head.*`` and PoseNet keys, which are ignored) or a converted
``.safetensors`` written by :func:`save_depthnet` (our parameter names + config in metadata).
"""
from __future__ import annotations

import json
import math
import re
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DepthNetConfig", "BladeDepthNet", "DepthNetOutput", "load_depthnet", "save_depthnet",
    "remap_official", "CheckpointError", "VITL", "VITB", "VITS", "read_state_dict",
    "depthnet_from_state_dict", "infer_config", "MetricDepthNet", "dav2_from_official",
]


class CheckpointError(ValueError):
    """A weight file that cannot be used: unreadable, unsafe, truncated or of another model."""


# --------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class DepthNetConfig:
    """Every size of a BLADE DepthNet (DAv2 metric backbone + interface + Tz head).

    ``out_indices`` are transformers' 1-based stage indices (official 0-based block ``i`` is
    ``i + 1``). The defaults are the full ViT-L model of the official checkpoint.
    """

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    image_size: int = 518
    patch_size: int = 14
    out_indices: tuple[int, ...] = (5, 12, 18, 24)
    neck_hidden_sizes: tuple[int, ...] = (256, 512, 1024, 1024)
    fusion_hidden_size: int = 256
    head_hidden_size: int = 32
    dav2_max_depth: int = 20
    # BLADE-specific parts
    feature_size: int = 224
    interface_channels: int = 256
    decoder_heads: int = 4
    decoder_ffn: int = 1024
    decoder_layers: int = 2
    max_tz: float = 10.0
    crop_size: int = 518

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"DepthNetConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")
        if self.interface_channels % self.decoder_heads:
            raise ValueError(f"DepthNetConfig: interface_channels {self.interface_channels} is not "
                             f"divisible by decoder_heads {self.decoder_heads}")
        if len(self.out_indices) != 4 or len(self.neck_hidden_sizes) != 4:
            raise ValueError("DepthNetConfig: expected 4 out_indices and 4 neck_hidden_sizes, got "
                             f"{self.out_indices} and {self.neck_hidden_sizes}")

    def to_transformers(self):
        """The equivalent transformers ``DepthAnythingConfig`` (eager attention is not forced)."""
        from transformers import DepthAnythingConfig, Dinov2Config

        backbone = Dinov2Config(
            hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, mlp_ratio=4, hidden_act="gelu",
            layer_norm_eps=1e-6, image_size=self.image_size, patch_size=self.patch_size,
            qkv_bias=True, layerscale_value=1.0, use_swiglu_ffn=False,
            out_indices=list(self.out_indices), apply_layernorm=True,
            reshape_hidden_states=False)
        return DepthAnythingConfig(
            backbone_config=backbone, patch_size=self.patch_size,
            reassemble_hidden_size=self.hidden_size, reassemble_factors=[4, 2, 1, 0.5],
            neck_hidden_sizes=list(self.neck_hidden_sizes),
            fusion_hidden_size=self.fusion_hidden_size, head_in_index=-1,
            head_hidden_size=self.head_hidden_size, depth_estimation_type="metric",
            max_depth=int(self.dav2_max_depth))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "DepthNetConfig":
        data = json.loads(text)
        for key in ("out_indices", "neck_hidden_sizes"):
            data[key] = tuple(data[key])
        known = set(DepthNetConfig.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"DepthNet config has unknown fields {sorted(unknown)}; "
                                  "written by a newer blade-nodes?")
        return DepthNetConfig(**data)


VITL = DepthNetConfig()
"""The official BLADE DepthNet (DAv2 metric ViT-L)."""
VITB = DepthNetConfig(hidden_size=768, num_layers=12, num_heads=12, out_indices=(3, 6, 9, 12),
                      neck_hidden_sizes=(96, 192, 384, 768), fusion_hidden_size=128,
                      interface_channels=128, decoder_ffn=512)
"""A ViT-B sized DepthNet (no official weights; bench and tests only)."""
VITS = DepthNetConfig(hidden_size=384, num_layers=12, num_heads=6, out_indices=(3, 6, 9, 12),
                      neck_hidden_sizes=(48, 96, 192, 384), fusion_hidden_size=64,
                      interface_channels=64, decoder_ffn=256)
"""A ViT-S sized DepthNet (no official weights; bench and tests only)."""

# DAv2's own encoder table (official dpt.py `intermediate_layer_idx`, 0-based -> +1 here).
_KNOWN_ENCODERS = {  # hidden -> (heads, out_indices)
    384: (6, (3, 6, 9, 12)),
    768: (12, (3, 6, 9, 12)),
    1024: (16, (5, 12, 18, 24)),
    1536: (24, (10, 20, 30, 40)),
}


# --------------------------------------------------------------------------------------------
# Model


def _official_interpolate_pos_encoding(self, embeddings: Tensor, height: int, width: int) -> Tensor:
    """Official DINOv2 (DAv2) positional-embedding interpolation (bicubic, +0.1 offset).

    transformers resizes to ``size=(h, w)``; the official code uses
    ``scale_factor=((h + 0.1) / sqrt(N), (w + 0.1) / sqrt(N))``, which gives different values
    whenever interpolation happens. At 518x518 with a 518 model both skip it.
    """
    num_patches = embeddings.shape[1] - 1
    num_positions = self.position_embeddings.shape[1] - 1
    if num_patches == num_positions and height == width:
        return self.position_embeddings
    pos = self.position_embeddings.float()
    cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
    dim = embeddings.shape[-1]
    ph, pw = self.patch_embeddings.patch_size
    h0, w0 = height // ph + 0.1, width // pw + 0.1
    side = int(math.sqrt(num_positions))
    patch_pos = F.interpolate(
        patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(h0 / math.sqrt(num_positions), w0 / math.sqrt(num_positions)),
        mode="bicubic")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((cls_pos, patch_pos), dim=1).to(embeddings.dtype)


class TzDecoder(nn.Module):
    """BLADE ``DiNOZNet``: one learned query attends to the interface tokens; 10*sigmoid."""

    def __init__(self, cfg: DepthNetConfig):
        super().__init__()
        d = cfg.interface_channels
        self.query = nn.Embedding(1, d)
        layer = nn.TransformerDecoderLayer(d_model=d, nhead=cfg.decoder_heads,
                                           dim_feedforward=cfg.decoder_ffn, dropout=0.1,
                                           batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers=cfg.decoder_layers)
        self.z_out = nn.Linear(d, 1)
        self.max_tz = float(cfg.max_tz)

    def forward(self, feat: Tensor) -> Tensor:
        """feat: [B, D, h, w] interface output. Returns Tz [B] metres in (0, max_tz)."""
        b, d = feat.shape[:2]
        memory = feat.reshape(b, d, -1).permute(0, 2, 1)
        tgt = self.query.weight.unsqueeze(0).expand(b, -1, -1)
        out = self.decoder(tgt, memory)
        return torch.sigmoid(self.z_out(out.reshape(b, -1))).squeeze(1) * self.max_tz


@dataclass(frozen=True)
class DepthNetOutput:
    """Outputs of one DepthNet call.

    Attributes:
        tz: [B] pelvis depth, metres, in (0, max_tz).
        feature: [B, F, 8h, 8w] finest fused DPT map (official ``path_1``), or None.
        depth: [B, H, W] DAv2 metric depth map at the input size, metres, or None.
    """

    tz: Tensor | None
    feature: Tensor | None = None
    depth: Tensor | None = None


class BladeDepthNet(nn.Module):
    """BLADE DepthNet built from a :class:`DepthNetConfig` (tiny config -> tiny model).

    Submodules: ``dav2`` (transformers ``DepthAnythingForDepthEstimation``), ``interface``
    (Conv-BN-ReLU-Conv-BN-ReLU) and ``tz_head`` (:class:`TzDecoder`).
    """

    has_tz_head = True

    def __init__(self, cfg: DepthNetConfig = VITL):
        super().__init__()
        from transformers import DepthAnythingForDepthEstimation

        self.cfg = cfg
        self.dav2 = DepthAnythingForDepthEstimation(cfg.to_transformers())
        emb = self.dav2.backbone.embeddings
        emb.interpolate_pos_encoding = types.MethodType(_official_interpolate_pos_encoding, emb)
        f, d = cfg.fusion_hidden_size, cfg.interface_channels
        self.interface = nn.Sequential(
            nn.Conv2d(f, d, 3, stride=2, padding=1), nn.BatchNorm2d(d), nn.ReLU(),
            nn.Conv2d(d, d, 3, stride=2, padding=1), nn.BatchNorm2d(d), nn.ReLU())
        self.tz_head = TzDecoder(cfg)
        self.eval()

    def neck_features(self, pixel_values: Tensor) -> list[Tensor]:
        """All four fused DPT maps (coarse to fine); one backbone call for the whole batch."""
        h, w = pixel_values.shape[-2:]
        p = self.cfg.patch_size
        feats = self.dav2.backbone.forward_with_filtered_kwargs(pixel_values).feature_maps
        return self.dav2.neck(list(feats), h // p, w // p)

    def forward(self, pixel_values: Tensor, *, want_tz: bool = True, want_depth: bool = False,
                want_feature: bool = False) -> DepthNetOutput:
        """Run the DepthNet.

        Args:
            pixel_values: [B, 3, H, W] ImageNet-normalised RGB, H and W multiples of 14
                (518 for BLADE).
            want_tz: run the interface and Tz head.
            want_depth: also return the DAv2 metric depth map.
            want_feature: also return the fused feature ``path_1``.
        Returns:
            :class:`DepthNetOutput`.
        """
        h, w = pixel_values.shape[-2:]
        p = self.cfg.patch_size
        fused = self.neck_features(pixel_values)
        path_1 = fused[-1]
        tz = depth = None
        if want_tz:
            s = self.cfg.feature_size
            feat = F.interpolate(path_1, size=(s, s), mode="bilinear", align_corners=True)
            tz = self.tz_head(self.interface(feat))
        if want_depth:
            depth = self.dav2.head(fused, h // p, w // p)
        return DepthNetOutput(tz=tz, feature=path_1 if want_feature else None, depth=depth)


# --------------------------------------------------------------------------------------------
# Official checkpoint -> our parameter names

OFFICIAL_PREFIXES = ("depth_backbone.", "depth_interface.", "depth_head.")
# Present in the official checkpoint, unused by the Tz forward; dropped on purpose.
IGNORED_OFFICIAL = ("depth_head.dec_z.conv.weight", "depth_head.dec_z.conv.bias")

# (regex on the official name without "depth_backbone.", replacement) for the DAv2 part.
_DAV2_RENAMES: tuple[tuple[str, str], ...] = (
    (r"pretrained\.cls_token", "backbone.embeddings.cls_token"),
    (r"pretrained\.mask_token", "backbone.embeddings.mask_token"),
    (r"pretrained\.pos_embed", "backbone.embeddings.position_embeddings"),
    (r"pretrained\.patch_embed\.proj\.", "backbone.embeddings.patch_embeddings.projection."),
    (r"pretrained\.blocks\.(\d+)\.norm([12])\.", r"backbone.encoder.layer.\1.norm\2."),
    (r"pretrained\.blocks\.(\d+)\.ls([12])\.gamma", r"backbone.encoder.layer.\1.layer_scale\2.lambda1"),
    (r"pretrained\.blocks\.(\d+)\.mlp\.fc([12])\.", r"backbone.encoder.layer.\1.mlp.fc\2."),
    (r"pretrained\.blocks\.(\d+)\.attn\.proj\.", r"backbone.encoder.layer.\1.{attn_out}."),
    (r"pretrained\.norm\.", "backbone.layernorm."),
    (r"depth_head\.projects\.(\d)\.", r"neck.reassemble_stage.layers.\1.projection."),
    (r"depth_head\.resize_layers\.([013])\.", r"neck.reassemble_stage.layers.\1.resize."),
    (r"depth_head\.scratch\.output_conv1\.", "head.conv1."),
    (r"depth_head\.scratch\.output_conv2\.0\.", "head.conv2."),
    (r"depth_head\.scratch\.output_conv2\.2\.", "head.conv3."),
)
_QKV = re.compile(r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_RN = re.compile(r"depth_head\.scratch\.layer([1-4])_rn\.weight$")
_REFINE = re.compile(r"depth_head\.scratch\.refinenet([1-4])\.(out_conv|resConfUnit([12])\.conv([12]))\.(weight|bias)$")


def _attention_names(model: BladeDepthNet) -> tuple[tuple[str, str, str], str]:
    """transformers 5.x names attention ``q_proj/k_proj/v_proj/o_proj``; 4.x nests them."""
    keys = model.dav2.state_dict().keys()
    if "backbone.encoder.layer.0.attention.q_proj.weight" in keys:
        return ("attention.q_proj", "attention.k_proj", "attention.v_proj"), "attention.o_proj"
    return (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
            "attention.output.dense")


def _rename_dav2(key: str, value: Tensor, qkv_names, out_name) -> dict[str, Tensor] | None:
    m = _QKV.match(key)
    if m:
        i, kind = m.groups()
        parts = value.chunk(3, dim=0)
        return {f"backbone.encoder.layer.{i}.{n}.{kind}": p.contiguous()
                for n, p in zip(qkv_names, parts)}
    m = _RN.match(key)
    if m:
        return {f"neck.convs.{int(m.group(1)) - 1}.weight": value}
    m = _REFINE.match(key)
    if m:
        k, what, unit, conv, kind = m.groups()
        j = 4 - int(k)
        if what == "out_conv":
            return {f"neck.fusion_stage.layers.{j}.projection.{kind}": value}
        return {f"neck.fusion_stage.layers.{j}.residual_layer{unit}.convolution{conv}.{kind}": value}
    for pattern, repl in _DAV2_RENAMES:
        new, n = re.subn("^" + pattern, repl.replace("{attn_out}", out_name), key)
        if n:
            return {new: value}
    return None


def remap_official(state_dict: Mapping[str, Tensor], model: BladeDepthNet
                   ) -> tuple[dict[str, Tensor], list[str]]:
    """Rename an official BLADE ``state_dict`` to ``model``'s parameter names.

    Args:
        state_dict: official keys (``module.`` prefixes allowed); non-depth keys are ignored.
        model: the target (decides the transformers attention naming).
    Returns:
        (renamed dict, official depth keys that no rule maps).
    """
    qkv_names, out_name = _attention_names(model)
    out: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if not key.startswith(OFFICIAL_PREFIXES) or key in IGNORED_OFFICIAL:
            continue
        if key.startswith("depth_backbone."):
            new = _rename_dav2(key[len("depth_backbone."):], value, qkv_names, out_name)
            if new is None:
                unmapped.append(key)
                continue
            out.update({"dav2." + k: v for k, v in new.items()})
        elif key.startswith("depth_interface."):
            out["interface." + key[len("depth_interface."):]] = value
        else:  # depth_head.dec_z.* -> tz_head.*
            rest = key[len("depth_head."):]
            if not rest.startswith("dec_z."):
                unmapped.append(key)
                continue
            out["tz_head." + rest[len("dec_z."):]] = value
    return out, unmapped


def infer_config(sd: Mapping[str, Tensor]) -> DepthNetConfig:
    """Sizes of a DepthNet from an official-layout state dict (known DINOv2 widths only)."""
    def get(name: str) -> Tensor:
        for k in (name, "module." + name):
            if k in sd:
                return sd[k]
        raise CheckpointError(f"checkpoint has no {name!r}; cannot tell the model size")

    hidden = int(get("depth_backbone.pretrained.cls_token").shape[-1])
    if hidden not in _KNOWN_ENCODERS:
        raise CheckpointError(
            f"checkpoint encoder width {hidden} is not a known DINOv2 size "
            f"({sorted(_KNOWN_ENCODERS)}); pass config=DepthNetConfig(...) explicitly")
    heads, out_idx = _KNOWN_ENCODERS[hidden]
    blocks = {int(m.group(1)) for k in sd
              if (m := re.search(r"depth_backbone\.pretrained\.blocks\.(\d+)\.", k))}
    n_pos = int(get("depth_backbone.pretrained.pos_embed").shape[1]) - 1
    patch = int(get("depth_backbone.pretrained.patch_embed.proj.weight").shape[-1])
    neck = tuple(int(get(f"depth_backbone.depth_head.projects.{i}.weight").shape[0]) for i in range(4))
    fusion = int(get("depth_backbone.depth_head.scratch.layer1_rn.weight").shape[0])
    head_hidden = int(get("depth_backbone.depth_head.scratch.output_conv2.0.weight").shape[0])
    iface = int(get("depth_interface.0.weight").shape[0])
    ffn = int(get("depth_head.dec_z.decoder.layers.0.linear1.weight").shape[0])
    if sorted(blocks) != list(range(max(out_idx))):
        raise CheckpointError(
            f"checkpoint has encoder blocks {_ranges(sorted(blocks))}; a {hidden}-wide DINOv2 "
            f"needs blocks 0-{max(out_idx) - 1}. Truncated or partial checkpoint?")
    dec_layers = {int(m.group(1)) for k in sd
                  if (m := re.search(r"depth_head\.dec_z\.decoder\.layers\.(\d+)\.", k))}
    return DepthNetConfig(
        hidden_size=hidden, num_layers=len(blocks), num_heads=heads,
        image_size=int(round(math.sqrt(n_pos))) * patch, patch_size=patch, out_indices=out_idx,
        neck_hidden_sizes=neck, fusion_hidden_size=fusion, head_hidden_size=head_hidden,
        interface_channels=iface, decoder_ffn=ffn, decoder_layers=len(dec_layers))


# --------------------------------------------------------------------------------------------
# Loading and saving


def _ranges(ints: list[int]) -> str:
    return f"{ints[0]}-{ints[-1]} ({len(ints)} blocks)" if ints else "none"


def _show(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def read_state_dict(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read tensors safely: safetensors, or ``torch.load(weights_only=True)``.

    Returns:
        (flat state dict, safetensors metadata or {}).
    Raises:
        CheckpointError: missing, truncated, unsafe or unknown file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(
                f"{path.name}: not a readable safetensors file ({type(e).__name__}: {e}). "
                "Truncated download? Download it again.") from e
        return sd, meta
    if path.suffix not in (".pth", ".pt", ".ckpt", ".bin"):
        raise CheckpointError(f"{path.name}: expected .safetensors or .pth/.pt/.ckpt, got {path.suffix!r}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Weights only load failed" in str(e) or "weights_only" in str(e):
            raise CheckpointError(
                f"{path.name}: contains Python objects that safe loading refuses ({msg}). "
                "Convert it once in a trusted environment to safetensors (tensors of "
                "'state_dict' only) and load that instead.") from e
        raise CheckpointError(
            f"{path.name}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {msg}). "
            "Truncated or corrupt download? Download it again.") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name}: expected a dict of tensors (or one under "
                              f"'state_dict'), got {type(obj).__name__}")
    return obj, {}


def _check_finite(model: nn.Module, name: str) -> None:
    bad = [k for k, v in model.state_dict().items()
           if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{name}: {len(bad)} tensors contain NaN/Inf ({_show(bad)}); "
                              "the file is corrupt or from a diverged training run")


def load_depthnet(path: str | Path, config: DepthNetConfig | None = None) -> BladeDepthNet:
    """Load a BLADE DepthNet from the official checkpoint or a converted safetensors.

    Args:
        path: official mmcv ``.pth`` (``state_dict`` with ``depth_backbone.*``,
            ``depth_interface.*``, ``depth_head.*``; PoseNet keys ignored), a safetensors with
            the same official keys, or a safetensors written by :func:`save_depthnet`.
        config: model sizes; None = from the file's metadata or inferred from tensor shapes.
    Returns:
        BladeDepthNet in eval mode, float32, CPU.
    Raises:
        CheckpointError: unreadable/unsafe/truncated file, a checkpoint of another model, or
            a partial one (the message lists missing and unexpected keys).
    """
    path = Path(path)
    sd, meta = read_state_dict(path)
    return depthnet_from_state_dict(sd, meta, path.name, config)


def depthnet_from_state_dict(sd: Mapping[str, Tensor], meta: Mapping[str, str], name: str,
                             config: DepthNetConfig | None = None) -> BladeDepthNet:
    """:func:`load_depthnet` after reading; ``name`` is used in messages."""
    converted = meta.get("format") == "blade-nodes-depthnet"
    if not converted:
        has_depth = [k for k in sd if k.removeprefix("module.").startswith(OFFICIAL_PREFIXES)]
        if not has_depth:
            raise CheckpointError(
                f"{name} is not a BLADE checkpoint: none of its {len(sd)} keys start with "
                f"{', '.join(OFFICIAL_PREFIXES)} (first keys: {_show(list(sd), 4)}). "
                "Use the official BLADE epoch_2.pth; a plain Depth Anything checkpoint belongs "
                "in models/depthanything (metric-depth method).")
    if config is None:
        config = (DepthNetConfig.from_json(meta["config"]) if converted and "config" in meta
                  else infer_config(sd))
    model = BladeDepthNet(config)
    if converted:
        target, unmapped = sd, []
    else:
        target, unmapped = remap_official(sd, model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in target]
    unexpected = sorted(set(target) - set(expected)) + unmapped
    wrong_shape = [f"{k} {tuple(target[k].shape)} vs {tuple(v.shape)}"
                   for k, v in expected.items() if k in target and target[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        parts = [f"{name} does not match the BLADE DepthNet ({config.hidden_size}-wide, "
                 f"{config.num_layers} layers):"]
        if missing:
            parts.append(f"{len(missing)} missing [{_show(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected [{_show(unexpected)}]")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} with wrong shape [{_show(wrong_shape, 3)}]")
        if not converted:
            absent = [p + "*" for p in OFFICIAL_PREFIXES
                      if not any(k.removeprefix("module.").startswith(p) for k in sd)]
            if absent:
                parts.append(f"the file has no {', '.join(absent)} keys at all.")
        parts.append("Is it the complete official BLADE checkpoint (epoch_2.pth)?")
        raise CheckpointError(" ".join(parts))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in target.items()}, strict=True)
    _check_finite(model, name)
    return model.eval()


def save_depthnet(model: BladeDepthNet, path: str | Path) -> Path:
    """Write ``model`` as safetensors (our names + config) for fast loading by load_depthnet."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_depthnet: expected a .safetensors path, got {path.name!r}")
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "blade-nodes-depthnet",
                                       "config": model.cfg.to_json()})
    return path


# --------------------------------------------------------------------------------------------
# Plain Depth Anything V2 metric model (no Tz head)


class MetricDepthNet(nn.Module):
    """A Depth Anything V2 metric model without the BLADE Tz head (metric-depth method).

    ``dav2`` is a transformers ``DepthAnythingForDepthEstimation`` with
    ``depth_estimation_type='metric'``; ``max_depth`` its depth range, metres.
    """

    has_tz_head = False

    def __init__(self, dav2: nn.Module, name: str = ""):
        super().__init__()
        cfg = dav2.config
        if getattr(cfg, "depth_estimation_type", None) != "metric":
            raise CheckpointError(
                f"{name or 'model'}: a relative-depth Depth Anything model has no metres; use a "
                "Metric checkpoint (e.g. Depth-Anything-V2-Metric-Indoor-Large-hf)")
        self.dav2 = dav2.eval()
        self.name = name
        self.max_depth = float(cfg.max_depth)
        self.patch_size = int(cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0])

    def forward(self, pixel_values: Tensor) -> Tensor:
        """pixel_values: [B, 3, H, W] normalised, H, W multiples of 14. Returns [B, H, W] metres."""
        return self.dav2(pixel_values=pixel_values).predicted_depth


def dav2_from_official(sd: Mapping[str, Tensor], name: str, max_depth: int) -> MetricDepthNet:
    """A metric model from an official DAv2 ``.pth`` (keys ``pretrained.*``, ``depth_head.*``).

    The official positional-embedding interpolation is installed, so non-518 inputs match the
    official model.
    """
    prefixed = {"depth_backbone." + k.removeprefix("module."): v for k, v in sd.items()}
    hidden = int(prefixed["depth_backbone.pretrained.cls_token"].shape[-1])
    if hidden not in _KNOWN_ENCODERS:
        raise CheckpointError(f"{name}: encoder width {hidden} is not a known DINOv2 size")
    heads, out_idx = _KNOWN_ENCODERS[hidden]
    blocks = {int(m.group(1)) for k in prefixed
              if (m := re.search(r"depth_backbone\.pretrained\.blocks\.(\d+)\.", k))}
    if sorted(blocks) != list(range(max(out_idx))):
        raise CheckpointError(f"{name}: encoder blocks {_ranges(sorted(blocks))}, expected "
                              f"0-{max(out_idx) - 1}. Truncated or partial checkpoint?")
    cfg = DepthNetConfig(
        hidden_size=hidden, num_layers=len(blocks), num_heads=heads, out_indices=out_idx,
        image_size=int(round(math.sqrt(prefixed["depth_backbone.pretrained.pos_embed"].shape[1] - 1))) * 14,
        neck_hidden_sizes=tuple(int(prefixed[f"depth_backbone.depth_head.projects.{i}.weight"].shape[0])
                                for i in range(4)),
        fusion_hidden_size=int(prefixed["depth_backbone.depth_head.scratch.layer1_rn.weight"].shape[0]),
        head_hidden_size=int(prefixed["depth_backbone.depth_head.scratch.output_conv2.0.weight"].shape[0]),
        dav2_max_depth=int(max_depth))
    from transformers import DepthAnythingForDepthEstimation
    dav2 = DepthAnythingForDepthEstimation(cfg.to_transformers())
    emb = dav2.backbone.embeddings
    emb.interpolate_pos_encoding = types.MethodType(_official_interpolate_pos_encoding, emb)
    holder = nn.Module()
    holder.dav2 = dav2
    target, unmapped = remap_official(prefixed, holder)  # type: ignore[arg-type]
    target = {k[len("dav2."):]: v for k, v in target.items() if k.startswith("dav2.")}
    expected = dav2.state_dict()
    missing = [k for k in expected if k not in target]
    if missing or unmapped:
        raise CheckpointError(f"{name} does not match Depth Anything V2: {len(missing)} missing "
                              f"[{_show(missing)}], {len(unmapped)} unmapped [{_show(unmapped)}]")
    dav2.load_state_dict(target, strict=True)
    out = MetricDepthNet(dav2, name)
    _check_finite(out, name)
    return out
