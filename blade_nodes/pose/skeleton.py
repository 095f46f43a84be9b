"""The 127 SMPL-X joints of a :class:`~blade_nodes.body.BodyModel` without skinning every vertex.

Fitting to 2D keypoints only needs the skeleton joints (regressed from the shaped rest mesh:
linear in betas, so ``J_regressor @ shapedirs`` is precomputed) and the few vertices that
smplx turns into extra joints (nose, eyes, ears, toes, heels, fingertips) and face landmarks
(3 vertices per landmark triangle). :class:`SparseSkeleton` skins only those (~170 of 10,475
vertices) and walks the kinematic tree level by level instead of joint by joint. Its output
equals ``BodyModel(params).joints`` to float precision (tested), at a fraction of the cost.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SparseSkeleton", "axis_angle_to_matrix", "matrix_to_axis_angle"]


def axis_angle_to_matrix(aa: Tensor) -> Tensor:
    """Rodrigues' formula, smooth at zero.

    Args:
        aa: [..., 3] axis-angle, radians.
    Returns:
        [..., 3, 3] rotation matrices.
    """
    theta2 = (aa * aa).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    theta = torch.sqrt(theta2.clamp_min(1e-12))
    small = theta2 < 1e-6
    # sin(t)/t and (1 - cos t)/t^2 with Taylor branches near zero
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device)
    return eye + a * K + b * (K @ K)


def matrix_to_axis_angle(R: Tensor) -> Tensor:
    """Rotation matrices to axis-angle (angle in [0, pi]).

    Args:
        R: [..., 3, 3].
    Returns:
        [..., 3] axis-angle, radians.
    """
    # via a unit quaternion (Shepperd's method: the best-conditioned of four candidates)
    m = R
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack([
        torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0],
                     m[..., 1, 2] + m[..., 2, 1], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], -2)  # [..., 4, 4]; candidate k has 4 q_k^2 at position k
    diag = torch.stack([1 + tr, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    k = diag.argmax(-1)
    q = torch.gather(cands, -2, k[..., None, None].expand(*k.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    q = torch.where(q[..., :1] < 0, -q, q)  # w >= 0: angle in [0, pi]
    w, v = q[..., 0], q[..., 1:]
    s = v.norm(dim=-1)
    angle = 2 * torch.atan2(s, w)
    scale = torch.where(s > 1e-8, angle / s.clamp_min(1e-12), 2 / w.clamp_min(1e-12))
    return v * scale[..., None]


class SparseSkeleton(nn.Module):
    """Posed SMPL-X joints from rotation matrices, skinning only the landmark vertices.

    Built from a loaded ``BodyModel`` (reads its smplx buffers; the body model is not kept).
    Face-contour models (144 joints) are not supported: use ``BodyModel`` then.

    Attributes:
        num_joints: J of the output (127).
        num_betas, num_expression: sizes of the shape inputs.
    """

    def __init__(self, body_model):
        super().__init__()
        sm = body_model.smplx
        if sm.use_face_contour:
            raise ValueError("SparseSkeleton: face-contour models (144 joints) are not "
                             "supported; load the body model without use_face_contour")
        dtype = sm.v_template.dtype
        extra = sm.vertex_joint_selector.extra_joints_idxs.long()
        lmk_faces = sm.faces_tensor[sm.lmk_faces_idx.long()].long()  # [L, 3]
        vids, inverse = torch.unique(torch.cat([extra, lmk_faces.reshape(-1)]),
                                     return_inverse=True)
        n_extra = extra.numel()
        shapedirs = torch.cat([sm.shapedirs, sm.expr_dirs], -1)  # [V, 3, NB+NE]
        self.num_betas = int(sm.shapedirs.shape[-1])
        self.num_expression = int(sm.expr_dirs.shape[-1])
        self.num_joints = 55 + n_extra + lmk_faces.shape[0]
        jreg = sm.J_regressor  # [55, V]
        self.register_buffer("j_template", jreg @ sm.v_template)  # [55, 3]
        self.register_buffer("j_dirs", torch.einsum("jv,vcs->jcs", jreg, shapedirs))
        self.register_buffer("v_template", sm.v_template[vids].clone())  # [M, 3]
        self.register_buffer("v_dirs", shapedirs[vids].clone())  # [M, 3, S]
        nv = sm.v_template.shape[0]
        posedirs = sm.posedirs.reshape(-1, nv, 3)[:, vids].reshape(sm.posedirs.shape[0], -1)
        self.register_buffer("posedirs", posedirs.clone())  # [486, M*3]
        self.register_buffer("weights", sm.lbs_weights[vids].clone())  # [M, 55]
        self.register_buffer("extra_slot", inverse[:n_extra].clone())  # [21]
        self.register_buffer("lmk_slot", inverse[n_extra:].reshape(-1, 3).clone())  # [L, 3]
        self.register_buffer("lmk_bary", sm.lmk_bary_coords.to(dtype).clone())  # [L, 3]
        parents = sm.parents.long()
        self.register_buffer("parents", parents.clone())
        depth = [0] * len(parents)
        for j in range(1, len(parents)):
            depth[j] = depth[int(parents[j])] + 1
        # joints grouped by tree depth; each level's parents are positions in the level above
        levels = [[j for j in range(len(parents)) if depth[j] == d] for d in range(max(depth) + 1)]
        for d, level in enumerate(levels):
            self.register_buffer(f"_level{d}", torch.tensor(level), persistent=False)
            if d:
                above = levels[d - 1]
                self.register_buffer(f"_parent_pos{d}",
                                     torch.tensor([above.index(int(parents[j])) for j in level]),
                                     persistent=False)
        self._num_levels = len(levels)
        order = [j for level in levels for j in level]
        self.register_buffer("_unsort", torch.argsort(torch.tensor(order)), persistent=False)

    def forward(self, rotmats: Tensor, betas: Tensor, expression: Tensor | None = None) -> Tensor:
        """Pose the skeleton.

        Args:
            rotmats: [B, 55, 3, 3] local joint rotations (global orient, 21 body, jaw, leye,
                reye, 15 left-hand, 15 right-hand joints: smplx's full-pose order), hands
                absolute (flat hand mean).
            betas: [B, NB] shape (cut or zero-padded to the model's NB).
            expression: [B, NE] or None (zeros).
        Returns:
            [B, 127, 3] joints, metres, body frame (transl = 0), the order of
            ``BodyModel(params).joints``.
        """
        b = rotmats.shape[0]
        dtype = self.v_template.dtype
        betas = _fit(betas.to(dtype), self.num_betas)
        expr = torch.zeros(b, self.num_expression, dtype=dtype, device=betas.device) \
            if expression is None else _fit(expression.to(dtype), self.num_expression)
        shape = torch.cat([betas, expr], -1)  # [B, S]
        J = self.j_template + torch.einsum("jcs,bs->bjc", self.j_dirs, shape)  # [B, 55, 3]
        v = self.v_template + torch.einsum("mcs,bs->bmc", self.v_dirs, shape)  # [B, M, 3]
        eye = torch.eye(3, dtype=dtype, device=rotmats.device)
        pose_feature = (rotmats[:, 1:] - eye).reshape(b, -1)
        v = v + (pose_feature @ self.posedirs).reshape(b, -1, 3)
        # forward kinematics, one tree level at a time (no in-place writes: cheap autograd)
        rel = J.clone()
        rel[:, 1:] = J[:, 1:] - J[:, self.parents[1:]]
        Rs, ts = [rotmats[:, :1]], [J[:, :1]]
        for d in range(1, self._num_levels):
            level, pos = getattr(self, f"_level{d}"), getattr(self, f"_parent_pos{d}")
            Rp, tp = Rs[-1][:, pos], ts[-1][:, pos]
            Rs.append(Rp @ rotmats[:, level])
            ts.append(tp + (Rp @ rel[:, level, :, None])[..., 0])
        R = torch.cat(Rs, 1)[:, self._unsort]
        t = torch.cat(ts, 1)[:, self._unsort]
        # skinning of the selected vertices: x' = sum_j w_j (R_j (x - J_j) + t_j)
        Rw = torch.einsum("mj,bjkl->bmkl", self.weights, R)  # [B, M, 3, 3]
        tw = torch.einsum("mj,bjk->bmk", self.weights,
                          t - (R @ J[..., None])[..., 0])  # [B, M, 3]
        verts = (Rw @ v[..., None])[..., 0] + tw
        extra = verts[:, self.extra_slot]
        lmk = torch.einsum("blfc,lf->blc", verts[:, self.lmk_slot], self.lmk_bary)
        return torch.cat([t, extra, lmk], 1)


def _fit(t: Tensor, n: int) -> Tensor:
    if t.shape[1] == n:
        return t
    if t.shape[1] > n:
        return t[:, :n]
    return torch.nn.functional.pad(t, (0, n - t.shape[1]))
