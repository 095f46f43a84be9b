"""BLADE PoseNet: AiOS (SMPL-X, ResNet-50, deformable DETR) with a Tz-conditioned ControlNet copy.

Inference only. Two complete branches see the same normalised 400x400 image:

* the original AiOS branch (``backbone``, ``input_proj``, ``transformer``), which produces the
  class scores, boxes, key points and the hand / jaw / expression features;
* the ControlNet copy (``*_controlnet``), whose backbone maps and position encodings (levels 0-2)
  get ``Tz_zeromlp[l](tz)`` / ``Tz_poss_zeromlp[l](tz)`` added. Its decoder hidden states at the
  body slots are added, position by position, to the original branch's body features before the
  SMPL-X body-pose / betas / camera heads.

Only what BLADE uses is computed: no SMPL-X layer, no heads of intermediate decoder layers, no
final reference update, and the decoder group attention never builds the dense (L x L) mask.
Module and parameter names follow the official state dict so the remap stays small
(see ``checkpoint.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn

from .config import PoseNetConfig
from .layers import (MLP, DecoderLayer, EncoderLayer, GroupLayout, ResNetBackbone, inverse_sigmoid,
                     sine_embed_box, sine_position_map)


def _heads(indices, make) -> nn.ModuleDict:
    return nn.ModuleDict({str(i): make() for i in sorted(set(indices))})


@lru_cache(maxsize=8)
def _encoder_constants(shapes: tuple[tuple[int, int], ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token encoder reference points [S, 2], two-stage proposals (logit boxes) [S, 4] and
    their validity [S] for a padding-free multi-scale layout (valid ratios 1)."""
    refs, props = [], []
    for lvl, (h, w) in enumerate(shapes):
        ry, rx = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w),
                                indexing="ij")
        refs.append(torch.stack((rx.reshape(-1) / w, ry.reshape(-1) / h), -1))
        gy, gx = torch.meshgrid(torch.linspace(0, h - 1, h), torch.linspace(0, w - 1, w),
                                indexing="ij")
        grid = (torch.stack((gx, gy), -1) + 0.5) / torch.tensor([w, h], dtype=torch.float32)
        wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
        props.append(torch.cat((grid, wh), -1).view(-1, 4))
    prop = torch.cat(props, 0)
    valid = ((prop > 0.01) & (prop < 0.99)).all(-1)
    prop = torch.log(prop / (1 - prop)).masked_fill(~valid[:, None], float("inf"))
    return torch.cat(refs, 0), prop, valid


@dataclass(frozen=True)
class BranchOutput:
    """One branch up to the input of its last decoder layer (B images, G groups, S slots per
    group = cfg.slots_full_stage, C = hidden width, N tokens).

    last_in: [B, G*S, C] un-normed queries entering the last decoder layer.
    reference: [B, G*S, 4] sigmoided reference boxes entering it (cx, cy, w, h, 0..1).
    memory: [B, N, C] encoder output. shapes: (h, w) per feature level.
    two_stage_indices / two_stage_scores: [B, num_queries] encoder query selection.
    group_indices / group_scores: [B, G] person-group selection after layer nb-1.
    trace: intermediates for debugging (only with ``trace=True``), else None.
    """

    last_in: Tensor
    reference: Tensor
    memory: Tensor
    shapes: tuple
    two_stage_indices: Tensor
    two_stage_scores: Tensor
    group_indices: Tensor
    group_scores: Tensor
    trace: dict | None = None


class Encoder(nn.Module):
    def __init__(self, cfg: PoseNetConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.hidden_dim, cfg.dim_feedforward, cfg.num_feature_levels, cfg.nheads,
                         cfg.enc_n_points) for _ in range(cfg.enc_layers))

    def forward(self, src: Tensor, pos: Tensor, reference: Tensor, shapes) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos, reference, shapes)
        return src


class Decoder(nn.Module):
    """Deformable decoder with the AiOS group expansion (box -> 21 slots -> 39 slots).

    ``with_output_heads`` adds the heads applied to the last layer for boxes, key points and
    class logits (the original branch); the ControlNet copy only needs the heads that move its
    reference boxes, because only its hidden states are used.
    """

    def __init__(self, cfg: PoseNetConfig, with_output_heads: bool):
        super().__init__()
        c, nd = cfg.hidden_dim, cfg.dec_layers
        nb, nhf = cfg.num_box_decoder_layers, cfg.num_hand_face_decoder_layers
        self.cfg = cfg
        self.layers = nn.ModuleList(
            DecoderLayer(c, cfg.dim_feedforward, cfg.num_feature_levels, cfg.nheads,
                         cfg.dec_n_points) for _ in range(nd))
        self.norm = nn.LayerNorm(c)
        self.ref_point_head = MLP(2 * c, c, c, 2)
        nbp, nhp, nfp = cfg.num_body_points, cfg.num_hand_points, cfg.num_face_points
        self.hw = nn.Embedding(nbp, 2)
        self.keypoint_embed = nn.Embedding(nbp, c)
        self.lhand_box_embed = nn.Embedding(1, c)
        self.rhand_box_embed = nn.Embedding(1, c)
        self.face_box_embed = nn.Embedding(1, c)
        self.hw_lhand_bbox = nn.Embedding(1, 2)
        self.hw_rhand_bbox = nn.Embedding(1, 2)
        self.hw_face_bbox = nn.Embedding(1, 2)
        self.hw_lhand_kps = nn.Embedding(nhp, 2)
        self.hw_rhand_kps = nn.Embedding(nhp, 2)
        self.hw_face_kps = nn.Embedding(nfp, 2)
        self.lhand_keypoint_embed = nn.Embedding(nhp, c)
        self.rhand_keypoint_embed = nn.Embedding(nhp, c)
        self.face_keypoint_embed = nn.Embedding(nfp, c)

        # Head indices as in the official lists: layer l >= nb uses index l - nb (body points,
        # part boxes) or l - nhf (hand / face points); index [-1] seeds the expansions.
        upd = range(nb, nd - 1)  # layers whose reference update is used
        last = [nd - 1] if with_output_heads else []
        mlp2 = lambda: MLP(c, c, 2, 3)  # noqa: E731
        self.bbox_embed = _heads(list(range(nd - 1)) + last, lambda: MLP(c, c, 4, 3))
        self.class_embed = _heads([nb - 1] + last, lambda: nn.Linear(c, cfg.num_classes))
        part = [l - nb for l in list(upd) + last]
        self.pose_embed = _heads(part + [nd - nb], mlp2)
        self.pose_hw_embed = _heads([0], mlp2)  # one module shared by every layer
        self.bbox_hand_embed = _heads(part + [nd - nb], mlp2)
        self.bbox_hand_hw_embed = _heads(part, mlp2)
        self.bbox_face_embed = _heads(part + [nd - nb], mlp2)
        self.bbox_face_hw_embed = _heads(part, mlp2)
        pts = [l - nhf for l in list(range(nhf, nd - 1)) + last]
        self.pose_hand_embed = _heads(pts + [nd - nhf], mlp2)
        self.pose_hand_hw_embed = _heads([0], mlp2)
        self.pose_face_embed = _heads(pts + [nd - nhf], mlp2)
        self.pose_face_hw_embed = _heads([0], mlp2)

        self.layout_box = GroupLayout(cfg.num_group, cfg.slots_box_stage, cfg.box_slots_box_stage)
        self.layout_full = GroupLayout(cfg.num_group, cfg.slots_full_stage,
                                       cfg.box_slots_full_stage)

    # -- reference updates ------------------------------------------------------------------
    @staticmethod
    def _move(ref_unsig: Tensor, d_xy: Tensor, d_hw: Tensor) -> Tensor:
        return (ref_unsig + torch.cat((d_xy[..., :2], d_hw), -1)).sigmoid()

    def _update_box_stage(self, lid: int, out: Tensor, ref: Tensor) -> Tensor:
        """Reference update of a 21-slot layer. out [B,G,21,C], ref [B,G,21,4] -> new ref."""
        i, n = str(lid - self.cfg.num_box_decoder_layers), self.cfg.num_body_points
        ru = inverse_sigmoid(ref)
        body = (self.bbox_embed[str(lid)](out[:, :, :1]) + ru[:, :, :1]).sigmoid()
        kp = out[:, :, 1:n + 1]
        kps = self._move(ru[:, :, 1:n + 1], self.pose_embed[i](kp), self.pose_hw_embed["0"](kp))
        hands = out[:, :, n + 1:n + 3]
        hand = self._move(ru[:, :, n + 1:n + 3], self.bbox_hand_embed[i](hands),
                          self.bbox_hand_hw_embed[i](hands))
        fo = out[:, :, n + 3:n + 4]
        face = self._move(ru[:, :, n + 3:n + 4], self.bbox_face_embed[i](fo),
                          self.bbox_face_hw_embed[i](fo))
        return torch.cat((body, kps, hand, face), 2)

    def _update_full_stage(self, lid: int, out: Tensor, ref: Tensor) -> Tensor:
        """Reference update of a 39-slot layer. out [B,G,39,C], ref [B,G,39,4] -> new ref."""
        cfg = self.cfg
        i, j = str(lid - cfg.num_box_decoder_layers), str(lid - cfg.num_hand_face_decoder_layers)
        n, lb = cfg.num_body_points, cfg.lhand_box_slot
        rb, fb = cfg.rhand_box_slot, cfg.face_box_slot
        ru = inverse_sigmoid(ref)
        pieces = [(self.bbox_embed[str(lid)](out[:, :, :1]) + ru[:, :, :1]).sigmoid()]
        kp = out[:, :, 1:n + 1]
        pieces.append(self._move(ru[:, :, 1:n + 1], self.pose_embed[i](kp),
                                 self.pose_hw_embed["0"](kp)))
        for box, end, pt, pt_hw, bx, bx_hw in (
                (lb, rb, self.pose_hand_embed[j], self.pose_hand_hw_embed["0"],
                 self.bbox_hand_embed[i], self.bbox_hand_hw_embed[i]),
                (rb, fb, self.pose_hand_embed[j], self.pose_hand_hw_embed["0"],
                 self.bbox_hand_embed[i], self.bbox_hand_hw_embed[i]),
                (fb, cfg.slots_full_stage, self.pose_face_embed[j], self.pose_face_hw_embed["0"],
                 self.bbox_face_embed[i], self.bbox_face_hw_embed[i])):
            bo = out[:, :, box:box + 1]
            pieces.append(self._move(ru[:, :, box:box + 1], bx(bo), bx_hw(bo)))
            po = out[:, :, box + 1:end]
            pieces.append(self._move(ru[:, :, box + 1:end], pt(po), pt_hw(po)))
        return torch.cat(pieces, 2)

    # -- expansions -------------------------------------------------------------------------
    @staticmethod
    def _children(parent_out: Tensor, parent_ref: Tensor, embed: Tensor, head: nn.Module,
                  hw: Tensor) -> tuple[Tensor, Tensor]:
        """New queries seeded from a parent box: content = parent + embed, xy = parent xy moved by
        head, wh = sigmoid(hw) * parent wh. parent_out [B,G,C], parent_ref [B,G,4]."""
        out = parent_out[:, :, None] + embed[None, None]
        xy = (inverse_sigmoid(parent_ref[:, :, None, :2]) + head(out)[..., :2]).sigmoid()
        wh = hw.sigmoid()[None, None] * parent_ref[:, :, None, 2:]
        return out, torch.cat((xy, wh), -1)

    def _expand_groups(self, out: Tensor, ref: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Keep the top num_group queries (class_embed[nb-1]) and expand each into 21 slots."""
        cfg = self.cfg
        nb, last = cfg.num_box_decoder_layers, str(cfg.dec_layers - cfg.num_box_decoder_layers)
        scores = self.class_embed[str(nb - 1)](out).max(-1)[0]
        top_s, top_i = torch.topk(scores, cfg.num_group, dim=1)
        C = out.shape[-1]
        box_out = torch.gather(out, 1, top_i[..., None].expand(-1, -1, C))
        box_ref = torch.gather(ref, 1, top_i[..., None].expand(-1, -1, 4))
        kp_o, kp_r = self._children(box_out, box_ref, self.keypoint_embed.weight,
                                    self.pose_embed[last], self.hw.weight)
        outs, refs = [box_out[:, :, None], kp_o], [box_ref[:, :, None], kp_r]
        hand, face = self.bbox_hand_embed[last], self.bbox_face_embed[last]
        for emb, head, hw in ((self.lhand_box_embed, hand, self.hw_lhand_bbox),
                              (self.rhand_box_embed, hand, self.hw_rhand_bbox),
                              (self.face_box_embed, face, self.hw_face_bbox)):
            o, r = self._children(box_out, box_ref, emb.weight, head, hw.weight)
            outs.append(o)
            refs.append(r)
        return torch.cat(outs, 2).flatten(1, 2), torch.cat(refs, 2).flatten(1, 2), top_i, top_s

    def _expand_parts(self, out: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
        """21 -> 39 slots: hand / face key-point queries after their boxes."""
        cfg = self.cfg
        n, last = cfg.num_body_points, str(cfg.dec_layers - cfg.num_hand_face_decoder_layers)
        outs, refs = [out[:, :, :n + 1]], [ref[:, :, :n + 1]]
        for slot, emb, head, hw in (
                (n + 1, self.lhand_keypoint_embed, self.pose_hand_embed[last], self.hw_lhand_kps),
                (n + 2, self.rhand_keypoint_embed, self.pose_hand_embed[last], self.hw_rhand_kps),
                (n + 3, self.face_keypoint_embed, self.pose_face_embed[last], self.hw_face_kps)):
            o, r = self._children(out[:, :, slot], ref[:, :, slot], emb.weight, head, hw.weight)
            outs += [out[:, :, slot:slot + 1], o]
            refs += [ref[:, :, slot:slot + 1], r]
        return torch.cat(outs, 2), torch.cat(refs, 2)

    def forward(self, tgt: Tensor, ref_unsig: Tensor, memory: Tensor, shapes,
                trace: dict | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Every layer but the last. tgt [B,Q,C] content queries; ref_unsig [B,Q,4] logit
        boxes; memory [B,N,C].

        Returns (queries entering the last layer [B,G*S,C], their references [B,G*S,4],
        group indices [B,G], group scores [B,G]); run :meth:`last_layer` on them."""
        cfg = self.cfg
        nb, nhf, nd = cfg.num_box_decoder_layers, cfg.num_hand_face_decoder_layers, cfg.dec_layers
        B = tgt.shape[0]
        G = cfg.num_group
        out, ref = tgt, ref_unsig.sigmoid()
        group_i = group_s = None
        if trace is not None:
            trace["ref.0"] = ref
        for lid, layer in enumerate(self.layers[:-1]):
            layout = None if lid < nb else (self.layout_box if lid < nhf else self.layout_full)
            query_pos = self.ref_point_head(sine_embed_box(ref))
            out = layer(out, query_pos, ref, memory, shapes, layout)
            if trace is not None:
                trace[f"hs.{lid}"] = self.norm(out)
            if lid < nb:
                new = (self.bbox_embed[str(lid)](out) + inverse_sigmoid(ref)).sigmoid()
            elif lid < nhf:
                new = self._update_box_stage(lid, out.view(B, G, cfg.slots_box_stage, -1),
                                             ref.view(B, G, cfg.slots_box_stage, 4))
            else:
                new = self._update_full_stage(lid, out.view(B, G, cfg.slots_full_stage, -1),
                                              ref.view(B, G, cfg.slots_full_stage, 4))
                new = new.flatten(1, 2)
            if lid == nb - 1:
                out, new, group_i, group_s = self._expand_groups(out, new)
            if lid == nhf - 1:
                o, new = self._expand_parts(out.view(B, G, cfg.slots_box_stage, -1), new)
                out, new = o.flatten(1, 2), new.flatten(1, 2)
            elif nb <= lid < nhf:
                new = new.flatten(1, 2)
            ref = new.detach()
            if trace is not None:
                trace[f"ref.{lid + 1}"] = ref
        return out, ref, group_i, group_s

    def last_layer(self, out: Tensor, ref: Tensor, memory: Tensor, shapes,
                   rows: Tensor | None = None) -> Tensor:
        """The last decoder layer and the decoder LayerNorm.

        Args:
            out / ref: [B, G*S, C] / [B, G*S, 4] from :meth:`forward`.
            rows: [B, R] int64 query rows to compute (the others only serve as keys), or None
                for all rows.
        Returns: [B, R, C] (or [B, G*S, C]) LayerNorm-ed hidden states.
        """
        layer = self.layers[-1]
        query_pos = self.ref_point_head(sine_embed_box(ref))
        if rows is None:
            return self.norm(layer(out, query_pos, ref, memory, shapes, self.layout_full))
        return self.norm(layer.forward_rows(out, query_pos, ref, memory, shapes,
                                            self.layout_full, rows))


class Transformer(nn.Module):
    """Deformable encoder, two-stage query selection and the group decoder of one branch."""

    def __init__(self, cfg: PoseNetConfig, with_output_heads: bool):
        super().__init__()
        c = cfg.hidden_dim
        self.cfg = cfg
        self.level_embed = nn.Parameter(torch.zeros(cfg.num_feature_levels, c))
        self.encoder = Encoder(cfg)
        self.enc_output = nn.Linear(c, c)
        self.enc_output_norm = nn.LayerNorm(c)
        self.enc_out_class_embed = nn.Linear(c, cfg.num_classes)
        self.enc_out_bbox_embed = MLP(c, c, 4, 3)
        self.decoder = Decoder(cfg, with_output_heads)

    def forward(self, srcs: list[Tensor], poss: list[Tensor], trace: bool = False) -> BranchOutput:
        """srcs/poss: per level [B, C, h, w] projected features and position encodings."""
        shapes = tuple((s.shape[2], s.shape[3]) for s in srcs)
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[l][None, None]
                         for l, p in enumerate(poss)], 1)
        enc_ref, proposals, valid = (t.to(src.device) for t in _encoder_constants(shapes))
        B = src.shape[0]
        memory = self.encoder(src, pos, enc_ref[None].expand(B, -1, -1), shapes)

        # two-stage selection: score every token, keep the top num_queries as decoder queries
        mem = memory.masked_fill(~valid[None, :, None], 0.0)
        mem = self.enc_output_norm(self.enc_output(mem))
        scores = self.enc_out_class_embed(mem).max(-1)[0]
        top_s, top_i = torch.topk(scores, self.cfg.num_queries, dim=1)
        C = mem.shape[-1]
        tgt = torch.gather(mem, 1, top_i[..., None].expand(-1, -1, C))
        ref_unsig = self.enc_out_bbox_embed(tgt) + proposals[top_i]

        tr = {"memory": memory} if trace else None
        out, ref, gi, gs = self.decoder(tgt, ref_unsig, memory, shapes, tr)
        return BranchOutput(out, ref, memory, shapes, top_i, top_s, gi, gs, tr)

    def last_layer(self, branch: BranchOutput, rows: Tensor | None = None) -> Tensor:
        """Normed last-layer hidden states of ``branch`` for ``rows`` [B, R] (None = all)."""
        return self.decoder.last_layer(branch.last_in, branch.reference, branch.memory,
                                       branch.shapes, rows)


@dataclass(frozen=True)
class PoseNetRaw:
    """Network outputs (B images, G groups, K classes, S slots per group, C width). Rotations
    are still 6-D (AiOS column-pair layout). The heads are evaluated for G' groups: the selected
    one (G' = 1, default) or all of them (``all_groups=True``).

    logits: [B, G, K] class logits of every person group (original branch, last layer).
    group / label / score: [B] the selected person: top-1 of sigmoid(logits) over (group,
        class) (int64, int64, probability 0..1).
    groups: [B, G'] int64 group index of each evaluated row below.
    pose6d: [B, G', 22*6] root + 21 body joints. lhand6d / rhand6d: [B, G', 15*6].
    jaw6d: [B, G', 6]. betas: [B, G', 10]. expression: [B, G', 10].
    cam: [B, G', 3] (s, tx, ty) weak perspective.
    body_feat: [B, G', 21*C] fused body features (original + ControlNet hidden states).
    hs: [B, G', S, C] normed last-layer states of the original branch; reference: [B, G', S, 4].
    main / controlnet: the two branches up to their last decoder layer.
    """

    logits: Tensor
    group: Tensor
    label: Tensor
    score: Tensor
    groups: Tensor
    pose6d: Tensor
    lhand6d: Tensor
    rhand6d: Tensor
    jaw6d: Tensor
    betas: Tensor
    expression: Tensor
    cam: Tensor
    body_feat: Tensor
    hs: Tensor
    reference: Tensor
    main: BranchOutput
    controlnet: BranchOutput
    srcs: tuple | None = None

    def row_of(self, group: Tensor) -> Tensor:
        """[B] position in ``groups`` of the group index ``group`` [B] (must be evaluated)."""
        hit = self.groups == group[:, None]
        if not bool(hit.any(1).all()):
            raise ValueError("group: not evaluated; run the model with all_groups=True")
        return hit.int().argmax(1)


class PoseNet(nn.Module):
    """The BLADE PoseNet. ``forward(image, tz)`` -> :class:`PoseNetRaw`.

    Args of forward:
        image: [B, 3, H, W] normalised RGB ((x/255 - mean) / std, ImageNet constants), H = W =
            cfg.image_size for BLADE (see ``preprocess.py``).
        tz: [B, 1] pelvis depth in metres (BLADE's DepthNet Tz), conditions the ControlNet.
    """

    def __init__(self, cfg: PoseNetConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden_dim
        self.backbone = ResNetBackbone(cfg.resnet_layers, cfg.resnet_width_per_group)
        self.backbone_controlnet = ResNetBackbone(cfg.resnet_layers, cfg.resnet_width_per_group)

        def projections():
            levels = [nn.Sequential(nn.Conv2d(ch, c, 1), nn.GroupNorm(32, c))
                      for ch in cfg.backbone_channels]
            levels.append(nn.Sequential(nn.Conv2d(cfg.backbone_channels[-1], c, 3, 2, 1),
                                        nn.GroupNorm(32, c)))
            return nn.ModuleList(levels)

        self.input_proj = projections()
        self.input_proj_controlnet = projections()
        self.transformer = Transformer(cfg, with_output_heads=True)
        self.transformer_controlnet = Transformer(cfg, with_output_heads=False)
        self.Tz_zeromlp = nn.ModuleList(nn.Linear(1, ch) for ch in cfg.backbone_channels)
        # the official 4th Tz position layer is never applied (level 3 gets its encoding later)
        self.Tz_poss_zeromlp = nn.ModuleList(nn.Linear(1, c) for _ in cfg.backbone_channels)

        last = str(cfg.dec_layers - cfg.num_box_decoder_layers - 1)
        nbody = len(cfg.body_head_slots)
        nhand, nface = len(cfg.lhand_head_slots), len(cfg.face_head_slots)
        head = lambda i, o: nn.ModuleDict({last: MLP(c * i, c, o, 3)})  # noqa: E731
        self.smpl_pose_embed = head(nbody, 22 * 6)
        self.smpl_beta_embed = head(nbody, 10)
        self.smpl_cam_embed = head(nbody, 3)
        self.smpl_hand_pose_embed = head(nhand, 15 * 6)
        self.smpl_expr_embed = head(nface, 10)
        self.smpl_jaw_embed = head(nface, 6)
        for name, slots in (("body", cfg.body_head_slots), ("lhand", cfg.lhand_head_slots),
                            ("rhand", cfg.rhand_head_slots), ("face", cfg.face_head_slots)):
            self.register_buffer(f"_slots_{name}", torch.tensor(slots), persistent=False)

    def _features(self, backbone, proj, image: Tensor, tz: Tensor | None,
                  tz_feat=None, tz_pos=None) -> tuple[list[Tensor], list[Tensor]]:
        cfg = self.cfg
        feats = backbone(image)
        if tz is not None:
            feats = [f + m(tz)[..., None, None] for f, m in zip(feats, tz_feat)]
        srcs = [p(f) for p, f in zip(proj, feats)]
        srcs.append(proj[len(feats)](feats[-1]))
        half = cfg.hidden_dim // 2
        poss = [sine_position_map(s.shape[2], s.shape[3], half, cfg.pos_temperature, s.device,
                                  s.dtype).expand(s.shape[0], -1, -1, -1) for s in srcs]
        if tz is not None:
            poss = [p + m(tz)[..., None, None] for p, m in zip(poss[:-1], tz_pos)] + [poss[-1]]
        return srcs, poss

    def forward(self, image: Tensor, tz: Tensor, trace: bool = False,
                all_groups: bool = False) -> PoseNetRaw:
        """image [B,3,H,W] normalised; tz [B,1] metres. ``all_groups`` evaluates the last
        decoder layer and the SMPL-X heads for every group (for checks); by default only the
        selected person's rows are computed (slot 0 of every group for the scores, then that
        group's slots), which gives the same numbers for that person."""
        cfg = self.cfg
        srcs, poss = self._features(self.backbone, self.input_proj, image, None)
        srcs_c, poss_c = self._features(self.backbone_controlnet, self.input_proj_controlnet,
                                        image, tz, self.Tz_zeromlp, self.Tz_poss_zeromlp)
        main = self.transformer(srcs, poss, trace)
        ctrl = self.transformer_controlnet(srcs_c, poss_c, trace)
        B, G, S = image.shape[0], cfg.num_group, cfg.slots_full_stage
        dev = image.device
        cls_head = self.transformer.decoder.class_embed[str(cfg.dec_layers - 1)]
        if all_groups:
            hs = self.transformer.last_layer(main).view(B, G, S, -1)
            hs_c = self.transformer_controlnet.last_layer(ctrl).view(B, G, S, -1)
            if trace:
                main.trace["hs.%d" % (cfg.dec_layers - 1)] = hs.flatten(1, 2)
                ctrl.trace["hs.%d" % (cfg.dec_layers - 1)] = hs_c.flatten(1, 2)
            logits = cls_head(hs[:, :, 0])
            groups = torch.arange(G, device=dev).expand(B, G)
            hs_c_body = hs_c[:, :, self._slots_body]
            reference = main.reference.view(B, G, S, 4)
        else:
            box_rows = (torch.arange(G, device=dev) * S).expand(B, G)
            logits = cls_head(self.transformer.last_layer(main, box_rows))
        group, label, score = _select(logits, cfg.num_select)
        if not all_groups:
            groups = group[:, None]
            rows = group[:, None] * S + torch.arange(S, device=dev)
            hs = self.transformer.last_layer(main, rows).view(B, 1, S, -1)
            body_rows = group[:, None] * S + self._slots_body
            hs_c_body = self.transformer_controlnet.last_layer(ctrl, body_rows).view(
                B, 1, len(cfg.body_head_slots), -1)
            reference = torch.gather(main.reference, 1, rows[..., None].expand(-1, -1, 4))
            reference = reference.view(B, 1, S, 4)
        last = str(cfg.dec_layers - cfg.num_box_decoder_layers - 1)
        body = (hs[:, :, self._slots_body] + hs_c_body).flatten(2)
        lhand = hs[:, :, self._slots_lhand].flatten(2)
        rhand = hs[:, :, self._slots_rhand].flatten(2)
        face = hs[:, :, self._slots_face].flatten(2)
        hand = self.smpl_hand_pose_embed[last]
        return PoseNetRaw(
            logits=logits, group=group, label=label, score=score, groups=groups,
            pose6d=self.smpl_pose_embed[last](body),
            lhand6d=hand(lhand),
            rhand6d=hand(rhand),
            jaw6d=self.smpl_jaw_embed[last](face),
            betas=self.smpl_beta_embed[last](body),
            expression=self.smpl_expr_embed[last](face),
            cam=self.smpl_cam_embed[last](body),
            body_feat=body, hs=hs, reference=reference,
            main=main, controlnet=ctrl,
            srcs=(tuple(srcs), tuple(srcs_c)) if trace else None,
        )

    def decode_boxes(self, raw: PoseNetRaw, group: Tensor | None = None) -> dict[str, Tensor]:
        """Boxes and body key points of one group per image, normalised to the input frame.

        Args:
            group: [B] int64 group per image (default: the selected person, ``raw.group``).
        Returns: dict with ``body_box``, ``lhand_box``, ``rhand_box``, ``face_box`` [B, 4]
            (cx, cy, w, h, 0..1) and ``body_keypoints`` [B, 17, 2] (x, y, 0..1, COCO order).
        """
        cfg, dec = self.cfg, self.transformer.decoder
        group = raw.group if group is None else group
        pos = raw.row_of(group)
        ar = torch.arange(group.shape[0], device=group.device)
        hs = raw.hs[ar, pos]  # B, S, C
        ru = inverse_sigmoid(raw.reference[ar, pos])
        i = str(cfg.dec_layers - 1 - cfg.num_box_decoder_layers)
        n = cfg.num_body_points
        out = {"body_box": (dec.bbox_embed[str(cfg.dec_layers - 1)](hs[:, 0]) + ru[:, 0]).sigmoid()}
        hand, hand_hw = dec.bbox_hand_embed[i], dec.bbox_hand_hw_embed[i]
        for name, slot, bx, bx_hw in (
                ("lhand_box", cfg.lhand_box_slot, hand, hand_hw),
                ("rhand_box", cfg.rhand_box_slot, hand, hand_hw),
                ("face_box", cfg.face_box_slot, dec.bbox_face_embed[i], dec.bbox_face_hw_embed[i])):
            out[name] = Decoder._move(ru[:, slot], bx(hs[:, slot]), bx_hw(hs[:, slot]))
        out["body_keypoints"] = (dec.pose_embed[i](hs[:, 1:n + 1])[..., :2]
                                 + ru[:, 1:n + 1, :2]).sigmoid()
        return out


def _select(logits: Tensor, num_select: int) -> tuple[Tensor, Tensor, Tensor]:
    """Official person selection (``PostProcess_SMPLX_Multi_Infer``), rank 0.

    logits [B, G, K] -> (group [B], label [B], score [B]): top-1 of sigmoid(logits) flattened
    over (group, class) (top-k with k = num_select, element 0); group = index // K,
    label = index % K."""
    B, G, K = logits.shape
    scores, idx = torch.topk(logits.sigmoid().reshape(B, G * K), min(num_select, G * K), dim=1)
    return idx[:, 0] // K, idx[:, 0] % K, scores[:, 0]
