"""SMPL-X parameters of a batch (the ``BLADE_SMPLX`` socket)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

# name -> size of the last dimension (None: variable, betas and expression)
POSE_SIZES: dict[str, int] = {
    "global_orient": 3, "body_pose": 63, "left_hand_pose": 45, "right_hand_pose": 45,
    "jaw_pose": 3, "leye_pose": 3, "reye_pose": 3,
}
PARAM_NAMES: tuple[str, ...] = ("betas", *POSE_SIZES, "expression")


@dataclass(frozen=True)
class SMPLXParams:
    """SMPL-X parameters for each image of a batch; poses are axis-angle, radians.

    Attributes:
        betas: [B, NB] shape coefficients.
        global_orient: [B, 3] root rotation, in the OpenCV camera frame.
        body_pose: [B, 63] 21 body joints.
        left_hand_pose, right_hand_pose: [B, 45] 15 finger joints each.
        jaw_pose, leye_pose, reye_pose: [B, 3].
        expression: [B, NE] expression coefficients.
        flat_hand_mean: True when hand poses are absolute rotations (our default);
            False when they are relative to the model's mean hand, as in official
            BLADE/AiOS outputs (``flat_hand_mean=False``); the body model adds the
            mean then.
        valid: [B] bool; False marks a frame a stage could not handle (its values are
            a neutral fallback). None means every frame is valid.
    """

    betas: Tensor
    global_orient: Tensor
    body_pose: Tensor
    left_hand_pose: Tensor
    right_hand_pose: Tensor
    jaw_pose: Tensor
    leye_pose: Tensor
    reye_pose: Tensor
    expression: Tensor
    flat_hand_mean: bool = True
    valid: Tensor | None = None

    def __post_init__(self) -> None:
        b = self.betas.shape[0] if self.betas.ndim == 2 else None
        if b is None:
            raise ValueError(f"SMPLXParams.betas: expected shape [B, NB], got {tuple(self.betas.shape)}")
        for name in PARAM_NAMES:
            t = getattr(self, name)
            want = POSE_SIZES.get(name)
            if t.ndim != 2 or t.shape[0] != b or (want is not None and t.shape[1] != want):
                raise ValueError(
                    f"SMPLXParams.{name}: expected shape [{b}, {want or 'N'}], got {tuple(t.shape)}")
            if not torch.is_floating_point(t):
                raise ValueError(f"SMPLXParams.{name}: expected a float tensor, got {t.dtype}")
        if self.valid is not None and tuple(self.valid.shape) != (b,):
            raise ValueError(f"SMPLXParams.valid: expected shape [{b}], got {tuple(self.valid.shape)}")

    @property
    def batch_size(self) -> int:
        return int(self.betas.shape[0])

    @staticmethod
    def zeros(batch_size: int, num_betas: int = 10, num_expression: int = 10,
              dtype: torch.dtype = torch.float32, device=None) -> "SMPLXParams":
        """Neutral parameters: mean shape, zero pose (a T-pose facing the camera's -z)."""
        z = lambda n: torch.zeros(batch_size, n, dtype=dtype, device=device)
        return SMPLXParams(z(num_betas), *(z(n) for n in POSE_SIZES.values()), z(num_expression))

    @staticmethod
    def from_dict(d: dict, batch_size: int | None = None, num_betas: int = 10,
                  num_expression: int = 10, dtype: torch.dtype = torch.float32,
                  flat_hand_mean: bool = True) -> "SMPLXParams":
        """Build from a mapping of name -> array-like [B, N] (or [N] for B = 1).

        Missing pose keys become zeros. Raises ValueError naming a key with a wrong shape.
        """
        tensors = {}
        for name in PARAM_NAMES:
            if name in d and d[name] is not None:
                t = torch.as_tensor(d[name], dtype=dtype)
                if t.ndim == 1:
                    t = t[None]
                if t.ndim != 2:
                    raise ValueError(f"'{name}': expected [frames, N] values, got shape {tuple(t.shape)}")
                tensors[name] = t
        if batch_size is None:
            batch_size = next((t.shape[0] for t in tensors.values()), 1)
        sizes = {"betas": num_betas, **POSE_SIZES, "expression": num_expression}
        for name in PARAM_NAMES:
            if name not in tensors:
                tensors[name] = torch.zeros(batch_size, sizes[name], dtype=dtype)
            elif tensors[name].shape[0] != batch_size:
                raise ValueError(f"'{name}': expected {batch_size} frames, got {tensors[name].shape[0]}")
            want = POSE_SIZES.get(name)
            if want is not None and tensors[name].shape[1] != want:
                raise ValueError(f"'{name}': expected {want} values per frame (axis-angle), "
                                 f"got {tensors[name].shape[1]}")
        return SMPLXParams(**tensors, flat_hand_mean=flat_hand_mean)

    def as_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in PARAM_NAMES}

    def replace(self, **changes) -> "SMPLXParams":
        return replace(self, **changes)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "SMPLXParams":
        moved = {n: t.to(device=device, dtype=dtype or t.dtype) for n, t in self.as_dict().items()}
        valid = None if self.valid is None else self.valid.to(device)
        return replace(self, **moved, valid=valid)

    def detach(self) -> "SMPLXParams":
        return replace(self, **{n: t.detach() for n, t in self.as_dict().items()})

    def index(self, i: int | slice | Tensor) -> "SMPLXParams":
        """Some frames, still batched ([1, ...] for an int)."""
        if isinstance(i, int):
            i = slice(i, i + 1)
        valid = None if self.valid is None else self.valid[i]
        return replace(self, **{n: t[i] for n, t in self.as_dict().items()}, valid=valid)

    @staticmethod
    def cat(items: list["SMPLXParams"]) -> "SMPLXParams":
        if not items:
            raise ValueError("SMPLXParams.cat: nothing to concatenate")
        if len({p.flat_hand_mean for p in items}) > 1:
            raise ValueError("SMPLXParams.cat: hand-pose conventions differ (flat_hand_mean)")
        out = {}
        for name in PARAM_NAMES:
            ts = [getattr(p, name) for p in items]
            width = max(t.shape[1] for t in ts)
            out[name] = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in ts])
        if all(p.valid is None for p in items):
            valid = None
        else:
            valid = torch.cat([p.valid if p.valid is not None else
                               torch.ones(p.batch_size, dtype=torch.bool) for p in items])
        return SMPLXParams(**out, flat_hand_mean=items[0].flat_hand_mean, valid=valid)

    def is_valid(self) -> Tensor:
        """[B] bool: flagged frames False."""
        if self.valid is None:
            return torch.ones(self.batch_size, dtype=torch.bool, device=self.betas.device)
        return self.valid
