"""Hyper-parameters of the BLADE PoseNet (AiOS SMPL-X with a Tz ControlNet branch).

Values come from ``aios_repo/config/aios_smplx_controlnet.py`` as BLADE resolves it
(``backbone=resnet50 num_person=1 threshold=0.1``, ``--eval --inference``); see
``shared/fixtures/blade_posenet/posenet_config.json``. Every submodule of
:class:`~blade_nodes.pose.posenet.model.PoseNet` is sized from one :class:`PoseNetConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class PoseNetConfig:
    """Architecture of the PoseNet.

    Attributes:
        resnet_layers: Bottleneck blocks per ResNet stage (ResNet-50: 3, 4, 6, 3).
        resnet_width_per_group: torchvision ``width_per_group`` (64 for ResNet-50).
        hidden_dim: transformer width (256; the Tz position MLP is hard-coded to it).
        nheads: attention heads (8).
        enc_layers / dec_layers: deformable encoder / decoder layers (6 / 6).
        dim_feedforward: FFN width in encoder and decoder (2048).
        num_feature_levels: multi-scale levels (4: strides 8, 16, 32 and an extra stride-2 conv).
        enc_n_points / dec_n_points: deformable sampling points per head and level (4 / 4).
        num_queries: two-stage queries kept from the encoder (900).
        num_group: person groups kept after decoder layer 1 (100).
        num_body_points / num_hand_points / num_face_points: key-point queries per group (17/6/6).
        num_box_decoder_layers: decoder layers before the first group expansion (2).
        num_hand_face_decoder_layers: decoder layers before the hand/face expansion (4).
        num_classes: class logits per query (2).
        num_select: post-processing top-k over (group, class) (50); rank 0 is the person.
        pos_temperature: temperature of the sine position encoding of the feature maps (20).
        image_size: square PoseNet input side in pixels (400).
    """

    resnet_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    resnet_width_per_group: int = 64
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    num_queries: int = 900
    num_group: int = 100
    num_body_points: int = 17
    num_hand_points: int = 6
    num_face_points: int = 6
    num_box_decoder_layers: int = 2
    num_hand_face_decoder_layers: int = 4
    num_classes: int = 2
    num_select: int = 50
    pos_temperature: float = 20.0
    image_size: int = 400
    backbone_channels: tuple[int, int, int] = field(default=(512, 1024, 2048))

    def __post_init__(self) -> None:
        if self.hidden_dim != 256:
            raise ValueError(f"hidden_dim: expected 256 (Tz_poss_zeromlp is 256 wide in BLADE), "
                             f"got {self.hidden_dim}")
        if self.num_feature_levels != 4:
            raise ValueError(f"num_feature_levels: expected 4, got {self.num_feature_levels}")
        if not (0 < self.num_box_decoder_layers < self.num_hand_face_decoder_layers
                < self.dec_layers):
            raise ValueError("expected 0 < num_box_decoder_layers < num_hand_face_decoder_layers "
                             f"< dec_layers, got {self.num_box_decoder_layers}, "
                             f"{self.num_hand_face_decoder_layers}, {self.dec_layers}")
        if self.num_select > self.num_group * self.num_classes:
            raise ValueError(f"num_select ({self.num_select}) must be <= num_group * num_classes "
                             f"({self.num_group * self.num_classes})")

    # ---- query slot layout -------------------------------------------------------------
    @property
    def slots_box_stage(self) -> int:
        """Queries per group after the first expansion: body box, body points, 3 part boxes."""
        return self.num_body_points + 4

    @property
    def slots_full_stage(self) -> int:
        """Queries per group after the hand/face expansion (39 for 17/6/6)."""
        return self.num_body_points + 2 * self.num_hand_points + self.num_face_points + 4

    @property
    def lhand_box_slot(self) -> int:
        return self.num_body_points + 1

    @property
    def rhand_box_slot(self) -> int:
        return self.num_body_points + self.num_hand_points + 2

    @property
    def face_box_slot(self) -> int:
        return self.num_body_points + 2 * self.num_hand_points + 3

    @property
    def box_slots_box_stage(self) -> tuple[int, ...]:
        """Box slots in the 21-slot layout: body, lhand, rhand, face."""
        n = self.num_body_points
        return (0, n + 1, n + 2, n + 3)

    @property
    def box_slots_full_stage(self) -> tuple[int, ...]:
        """Box slots in the 39-slot layout: body, lhand, rhand, face."""
        return (0, self.lhand_box_slot, self.rhand_box_slot, self.face_box_slot)

    @property
    def body_head_slots(self) -> tuple[int, ...]:
        """Slots (39-layout) concatenated for the SMPL body pose / betas / cam heads."""
        return tuple(range(self.num_body_points + 2)) + (self.rhand_box_slot, self.face_box_slot)

    @property
    def lhand_head_slots(self) -> tuple[int, ...]:
        """Slots for the left-hand pose head: body box, lhand box, lhand points, rhand box."""
        return (0,) + tuple(range(self.lhand_box_slot, self.rhand_box_slot + 1))

    @property
    def rhand_head_slots(self) -> tuple[int, ...]:
        """Slots for the right-hand pose head: body box, lhand box, rhand box, rhand points."""
        return (0, self.lhand_box_slot) + tuple(range(self.rhand_box_slot, self.face_box_slot))

    @property
    def face_head_slots(self) -> tuple[int, ...]:
        """Slots for the jaw / expression heads: body box, face box, face points."""
        return (0,) + tuple(range(self.face_box_slot, self.slots_full_stage))


#: The official BLADE PoseNet (ResNet-50 backbones, 6+6 layers, 900 queries, 100 groups).
FULL = PoseNetConfig()

#: The reduced config of the golden fixture (same code paths, smaller): ResNet(Bottleneck,
#: [1,1,1,1], width_per_group=16), 3 encoder layers, FFN 256, 300 queries, 30 groups.
REDUCED = replace(FULL, resnet_layers=(1, 1, 1, 1), resnet_width_per_group=16, enc_layers=3,
                  dim_feedforward=256, num_queries=300, num_group=30)
