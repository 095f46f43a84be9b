"""Building blocks of the PoseNet: frozen-BN ResNet, sine encodings, MLP, deformable attention.

Pure PyTorch, inference only. Shapes use B batch, L queries, S flattened multi-scale tokens,
C = hidden width, H heads, D = C / H.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# ---------------------------------------------------------------------------------------------
# ResNet with frozen batch norm (torchvision ResNet structure, Bottleneck v1.5, no fc)
# ---------------------------------------------------------------------------------------------
class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics: y = x * w / sqrt(var + 1e-5) + (b - mean * scale)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale_bias(self) -> tuple[Tensor, Tensor]:
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        scale, bias = self.scale_bias()
        return x * scale[None, :, None, None] + bias[None, :, None, None]


def conv_bn(x: Tensor, conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> Tensor:
    """bn(conv(x)) with the frozen BN folded into the convolution (one pass over the map)."""
    scale, bias = bn.scale_bias()
    return F.conv2d(x, conv.weight * scale[:, None, None, None], bias, conv.stride, conv.padding)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, width_per_group: int):
        super().__init__()
        width = int(planes * (width_per_group / 64.0))
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            FrozenBatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(conv_bn(x, self.conv1, self.bn1), inplace=True)
        y = F.relu(conv_bn(y, self.conv2, self.bn2), inplace=True)
        y = conv_bn(y, self.conv3, self.bn3)
        idt = x if self.downsample is None else conv_bn(x, self.downsample[0], self.downsample[1])
        return y.add_(idt).relu_()


class ResNetBackbone(nn.Module):
    """torchvision-layout ResNet (Bottleneck) returning the stride 8, 16, 32 maps.

    Args:
        layers: blocks per stage, (3, 4, 6, 3) for ResNet-50.
        width_per_group: 64 for ResNet-50.
    Forward: x [B, 3, H, W] normalised image ->
        [C3 [B, 512, H/8, W/8], C4 [B, 1024, H/16, W/16], C5 [B, 2048, H/32, W/32]].
    """

    def __init__(self, layers: tuple[int, int, int, int], width_per_group: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Bottleneck(inplanes, planes, stride, width_per_group))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.relu(conv_bn(x, self.conv1, self.bn1), inplace=True)
        x = F.max_pool2d(x, 3, 2, 1)
        x = self.layer1(x)
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


# ---------------------------------------------------------------------------------------------
# Position encodings
# ---------------------------------------------------------------------------------------------
def sine_position_map(h: int, w: int, num_feats: int, temperature: float,
                      device=None, dtype=torch.float32) -> Tensor:
    """Normalised sine encoding of a padding-free h x w map (``PositionEmbeddingSineHW``).

    Returns [1, 2 * num_feats, h, w]: the y features first, then x; each pair is (sin, cos).
    """
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    py = y[:, None] / dim_t  # h, F
    px = x[:, None] / dim_t  # w, F
    py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)
    px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat((py[:, None, :].expand(h, w, num_feats),
                     px[None, :, :].expand(h, w, num_feats)), dim=2)
    return pos.permute(2, 0, 1)[None].to(dtype)


def sine_embed_box(boxes: Tensor) -> Tensor:
    """4-D sine embedding of sigmoided boxes (cx, cy, w, h) -> [..., 512] ordered (y, x, w, h)."""
    scale = 2 * math.pi
    dim_t = torch.arange(128, dtype=torch.float32, device=boxes.device)
    dim_t = 10000 ** (2 * (dim_t // 2) / 128)
    out = []
    for i in (1, 0, 2, 3):
        p = boxes[..., i, None] * scale / dim_t
        out.append(torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2))
    return torch.cat(out, dim=-1)


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """Linear layers with ReLU between them (``layers.{i}`` as in the official MLP)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


# ---------------------------------------------------------------------------------------------
# Multi-scale deformable attention (pure PyTorch; the official ms_deform_attn_core_pytorch)
# ---------------------------------------------------------------------------------------------
def ms_deform_attn_core(value: Tensor, shapes: list[tuple[int, int]], locations: Tensor,
                        weights: Tensor) -> Tensor:
    """Bilinear multi-scale sampling, zeros padding, align_corners=False.

    Args:
        value: [B, S, H, D] projected tokens of all levels.
        shapes: per level (h, w); sum(h * w) == S.
        locations: [B, L, H, n_levels, P, 2] sampling points in 0..1 (x, y).
        weights: [B, L, H, n_levels, P] attention weights (softmaxed over levels x points).
    Returns: [B, L, H * D].
    """
    B, S, M, D = value.shape
    _, L, _, NL, P, _ = locations.shape
    values = value.split([h * w for h, w in shapes], dim=1)
    # points before queries (B*M, NL, P, L, 2): the sampled maps come out as (D, P, L), so the
    # weighted sum over points runs over contiguous L-long rows (the official code samples
    # (L, P) and sums a trailing size-P axis; same sum, different memory order)
    grids = (2 * locations - 1).permute(0, 2, 3, 4, 1, 5).flatten(0, 1)
    w_ = weights.permute(0, 2, 3, 4, 1).reshape(B * M, 1, NL, P, L)
    out = None
    for lvl, (h, w) in enumerate(shapes):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(B * M, D, h, w)
        s = F.grid_sample(v, grids[:, lvl], mode="bilinear", padding_mode="zeros",
                          align_corners=False)  # B*M, D, P, L
        part = s.mul_(w_[:, :, lvl]).sum(2)  # in place: one (D, P, L) buffer less
        out = part if out is None else out + part
    return out.view(B, M * D, L).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR), parameter names as official."""

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.d_model, self.n_levels = d_model, n_levels
        self.n_heads, self.n_points = n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def forward(self, query: Tensor, reference: Tensor, value_in: Tensor,
                shapes: list[tuple[int, int]], value: Tensor | None = None) -> Tensor:
        """query [B, L, C]; reference [B, L, 2] (points) or [B, L, 4] (boxes), 0..1, the same for
        every level (valid ratios are 1: the PoseNet input has no padding mask);
        value_in [B, S, C] tokens (or pass an already projected ``value`` [B, S, H, D])."""
        B, L, _ = query.shape
        M, NL, P = self.n_heads, self.n_levels, self.n_points
        if value is None:
            value = self.project_value(value_in)
        off = self.sampling_offsets(query).view(B, L, M, NL, P, 2)
        attn = F.softmax(self.attention_weights(query).view(B, L, M, NL * P), -1)
        attn = attn.view(B, L, M, NL, P)
        if reference.shape[-1] == 2:
            norm = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
            loc = reference[:, :, None, None, None, :] + off / norm[None, None, None, :, None, :]
        else:
            loc = (reference[:, :, None, None, None, :2]
                   + off / P * reference[:, :, None, None, None, 2:] * 0.5)
        return self.output_proj(ms_deform_attn_core(value, shapes, loc, attn))

    def project_value(self, value_in: Tensor) -> Tensor:
        B, S, _ = value_in.shape
        return self.value_proj(value_in).view(B, S, self.n_heads, self.d_model // self.n_heads)


# ---------------------------------------------------------------------------------------------
# Encoder / decoder layers (post-norm, ReLU, dropout 0)
# ---------------------------------------------------------------------------------------------
class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, reference: Tensor,
                shapes: list[tuple[int, int]]) -> Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference, src, shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src), inplace=True)))


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` parameters (in_proj_weight/bias, out_proj) with two kernels:
    dense (optionally masked) attention, and the block-structured group attention of the
    PoseNet decoder that never forms the (L x L) mask."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def _qkv(self, qk_in: Tensor, v_in: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, L, C = v_in.shape
        H = self.n_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(qk_in, w_q, b_q).view(B, L, H, C // H).transpose(1, 2)
        k = F.linear(qk_in, w_k, b_k).view(B, L, H, C // H).transpose(1, 2)
        v = F.linear(v_in, w_v, b_v).view(B, L, H, C // H).transpose(1, 2)
        return q, k, v

    def _out(self, o: Tensor) -> Tensor:
        B, H, L, D = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(B, L, H * D))

    def forward(self, qk_in: Tensor, v_in: Tensor, blocked: Tensor | None = None) -> Tensor:
        """Dense attention. blocked: [L, L] bool, True = may not attend (nn.MultiheadAttention
        convention)."""
        q, k, v = self._qkv(qk_in, v_in)
        mask = None if blocked is None else ~blocked
        return self._out(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    def forward_rows(self, qk_in: Tensor, v_in: Tensor, layout: "GroupLayout",
                     rows: Tensor) -> Tensor:
        """Group-masked attention for a subset of query rows only (keys: all rows).

        rows: [B, R] int64 query positions. Returns [B, R, C]."""
        B, L, C = v_in.shape
        H = self.n_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q_in = torch.gather(qk_in, 1, rows[..., None].expand(-1, -1, C))
        q = F.linear(q_in, w_q, b_q).view(B, -1, H, C // H).transpose(1, 2)
        k = F.linear(qk_in, w_k, b_k).view(B, L, H, C // H).transpose(1, 2)
        v = F.linear(v_in, w_v, b_v).view(B, L, H, C // H).transpose(1, 2)
        allowed = ~layout.mask_rows(rows)[:, None]
        return self._out(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))

    def forward_grouped(self, qk_in: Tensor, v_in: Tensor, layout: "GroupLayout") -> Tensor:
        """Attention restricted by the PoseNet group mask (see :func:`group_attention_mask`):
        every query sees its own group; box slots also see the box slots of all groups."""
        q, k, v = self._qkv(qk_in, v_in)
        B, H, L, D = q.shape
        G, S = layout.num_group, layout.slots
        bi = layout.box_slots.to(q.device)
        q = q.reshape(B, H, G, S, D) * D ** -0.5
        k = k.reshape(B, H, G, S, D)
        v = v.reshape(B, H, G, S, D)
        within = q @ k.transpose(-1, -2)  # B,H,G,S,S
        out = F.softmax(within, dim=-1) @ v  # rows of non-box slots are final
        nb = bi.numel()
        kb = k[:, :, :, bi].reshape(B, H, G * nb, D)
        vb = v[:, :, :, bi].reshape(B, H, G * nb, D)
        qb = q[:, :, :, bi].reshape(B, H, G * nb, D)
        cross = (qb @ kb.transpose(-1, -2)).view(B, H, G, nb, G * nb)
        cross = cross.masked_fill(layout.own_group(q.device), float("-inf"))
        p = F.softmax(torch.cat((within[:, :, :, bi], cross), dim=-1), dim=-1)
        pc = p[..., S:].reshape(B, H, G * nb, G * nb)
        out_b = p[..., :S] @ v + (pc @ vb).view(B, H, G, nb, D)
        out = out.index_copy(3, bi, out_b)
        return self._out(out.reshape(B, H, L, D))


class GroupLayout:
    """Slot layout of the expanded decoder queries, with its attention structure built once.

    ``num_group`` groups of ``slots`` queries; ``box_slots`` are the slots that attend across
    groups (to the box slots of every group)."""

    def __init__(self, num_group: int, slots: int, box_slots: tuple[int, ...]):
        self.num_group, self.slots = num_group, slots
        self.box_slots = torch.tensor(box_slots, dtype=torch.long)
        nb = len(box_slots)
        g = torch.arange(num_group)
        own = (g[:, None] == g.repeat_interleave(nb)[None, :])  # G, G*nb
        self._own = own[:, None, :].expand(num_group, nb, num_group * nb).contiguous()
        self._own_dev: dict = {}

    def own_group(self, device) -> Tensor:
        key = str(device)
        if key not in self._own_dev:
            self._own_dev[key] = self._own.to(device)
        return self._own_dev[key]

    def dense_mask(self) -> Tensor:
        return group_attention_mask(self.num_group, self.slots, tuple(self.box_slots.tolist()))

    def mask_rows(self, rows: Tensor) -> Tensor:
        """Rows ``rows`` [B, R] of the dense mask: [B, R, G*S] bool, True = blocked."""
        S = self.slots
        cols = torch.arange(self.num_group * S, device=rows.device)
        box = self.box_slots.to(rows.device)
        box_r = torch.isin(rows % S, box)
        box_c = torch.isin(cols % S, box)
        allowed = ((rows // S)[..., None] == (cols // S)) | (box_r[..., None] & box_c)
        return ~allowed


def group_attention_mask(num_group: int, slots: int, box_slots: tuple[int, ...]) -> Tensor:
    """The official decoder self-attention mask (``prepare_for_dn2``), vectorised.

    Returns [G*S, G*S] bool, True = blocked. Query i may attend to key j when both are in the same
    group, or when both are box slots."""
    idx = torch.arange(num_group * slots)
    grp, slot = idx // slots, idx % slots
    is_box = torch.isin(slot, torch.tensor(box_slots))
    allowed = (grp[:, None] == grp[None, :]) | (is_box[:, None] & is_box[None, :])
    return ~allowed


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = SelfAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward_rows(self, tgt: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor,
                     shapes: list[tuple[int, int]], layout: GroupLayout, rows: Tensor) -> Tensor:
        """The layer's output for query rows ``rows`` [B, R] only -> [B, R, C] (the other rows
        still act as keys / values of the self-attention)."""
        def pick(t: Tensor) -> Tensor:
            return torch.gather(t, 1, rows[..., None].expand(-1, -1, t.shape[-1]))
        sa = self.self_attn.forward_rows(tgt + query_pos, tgt, layout, rows)
        t = self.norm2(pick(tgt) + sa)
        t = self.norm1(t + self.cross_attn(t + pick(query_pos), pick(reference), memory, shapes))
        return self.norm3(t + self.linear2(F.relu(self.linear1(t), inplace=True)))

    def forward(self, tgt: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor,
                shapes: list[tuple[int, int]], layout: GroupLayout | None = None) -> Tensor:
        """tgt/query_pos [B, L, C]; reference [B, L, 4] sigmoided boxes; memory [B, S, C]."""
        q = tgt + query_pos
        if layout is None:
            sa = self.self_attn(q, tgt)
        else:
            sa = self.self_attn.forward_grouped(q, tgt, layout)
        tgt = self.norm2(tgt + sa)
        tgt = self.norm1(tgt + self.cross_attn(tgt + query_pos, reference, memory, shapes))
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt), inplace=True)))
