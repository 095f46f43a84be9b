"""The rig that exporters write: SMPL-X skeleton, 4-weight linear blend skinning, no correctives.

Small and pure (numpy, float64). The glTF/BVH exporters, their tests and the Blender round trip
all pose the exported mesh with these functions, so "what a DCC tool shows" can be compared with
the full body model (which adds pose correctives and uses every LBS weight).

SMPL-X skinning with shaped rest joints ``J`` ([55, 3]) is LBS whose per-joint matrices are
``A_k = [R_k | p_k - R_k J_k]``, where ``R_k`` is the joint's world rotation and ``p_k`` its
posed world position. A glTF skin reproduces this exactly with joint nodes whose rest local
translations are ``J_k - J_parent``, whose rotations are the SMPL-X local rotations, and whose
inverse bind matrices are translations by ``-J_k``.
"""
from __future__ import annotations

import numpy as np

NUM_JOINTS = 55
# SMPL-X joint order of the 55 skeleton joints (as smplx.joint_names.JOINT_NAMES[:55])
JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "jaw", "left_eye_smplhf", "right_eye_smplhf",
    "left_index1", "left_index2", "left_index3", "left_middle1", "left_middle2", "left_middle3",
    "left_pinky1", "left_pinky2", "left_pinky3", "left_ring1", "left_ring2", "left_ring3",
    "left_thumb1", "left_thumb2", "left_thumb3",
    "right_index1", "right_index2", "right_index3", "right_middle1", "right_middle2",
    "right_middle3", "right_pinky1", "right_pinky2", "right_pinky3", "right_ring1", "right_ring2",
    "right_ring3", "right_thumb1", "right_thumb2", "right_thumb3")


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Rodrigues: [..., 3] axis-angle (radians) -> [..., 3, 3] rotation matrices."""
    aa = np.asarray(aa, np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    axis = aa / np.maximum(theta, 1e-12)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    Kx = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    s = np.sin(theta)[..., None]
    c = np.cos(theta)[..., None]
    return np.eye(3) + s * Kx + (1 - c) * (Kx @ Kx)


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """[..., 3, 3] rotations -> [..., 4] unit quaternions (x, y, z, w), w >= 0 (glTF order)."""
    R = np.asarray(R, np.float64)
    m = R.reshape(-1, 3, 3)
    q = np.empty((m.shape[0], 4))
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cands = np.stack([  # 4 * (w^2, x^2, y^2, z^2): pick the largest for stability
        1 + tr, 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
        1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], 1)
    k = cands.argmax(1)
    for i in range(m.shape[0]):
        a = m[i]
        if k[i] == 0:
            s = 2 * np.sqrt(max(cands[i, 0], 1e-300))
            q[i] = [(a[2, 1] - a[1, 2]) / s, (a[0, 2] - a[2, 0]) / s, (a[1, 0] - a[0, 1]) / s, s / 4]
        elif k[i] == 1:
            s = 2 * np.sqrt(cands[i, 1])
            q[i] = [s / 4, (a[0, 1] + a[1, 0]) / s, (a[0, 2] + a[2, 0]) / s, (a[2, 1] - a[1, 2]) / s]
        elif k[i] == 2:
            s = 2 * np.sqrt(cands[i, 2])
            q[i] = [(a[0, 1] + a[1, 0]) / s, s / 4, (a[1, 2] + a[2, 1]) / s, (a[0, 2] - a[2, 0]) / s]
        else:
            s = 2 * np.sqrt(cands[i, 3])
            q[i] = [(a[0, 2] + a[2, 0]) / s, (a[1, 2] + a[2, 1]) / s, s / 4, (a[1, 0] - a[0, 1]) / s]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 3] < 0] *= -1
    return q.reshape(*R.shape[:-2], 4)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """[..., 4] quaternions (x, y, z, w) -> [..., 3, 3] rotation matrices."""
    q = np.asarray(q, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).reshape(*q.shape[:-1], 3, 3)


def continuous_quaternions(q: np.ndarray) -> np.ndarray:
    """[T, ..., 4] quaternion tracks with signs flipped so consecutive keys are on one side
    (shortest-path interpolation between keyframes)."""
    q = np.array(q, np.float64)
    for t in range(1, q.shape[0]):
        flip = (q[t] * q[t - 1]).sum(-1) < 0
        q[t][flip] *= -1
    return q


def top_k_weights(weights: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest skinning weights per vertex, renormalised to sum to 1.

    Args:
        weights: [V, J] LBS weights.
    Returns:
        (joints [V, k] int64 joint indices, weights [V, k] float64 summing to 1), largest first.
    """
    w = np.asarray(weights, np.float64)
    idx = np.argsort(-w, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(w, idx, 1)
    s = top.sum(1, keepdims=True)
    top = np.where(s > 0, top / np.where(s > 0, s, 1), np.eye(1, k)[0])  # no weight: root only
    idx = np.where((s > 0) & (top > 0), idx, 0)  # unused slots point at joint 0 (glTF rule)
    return idx.astype(np.int64), top


def forward_kinematics(local_rot: np.ndarray, rest_joints: np.ndarray, parents: np.ndarray,
                       root_rotation: np.ndarray, root_position: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """World rotations and positions of the joints.

    Args:
        local_rot: [B, J, 3, 3] rotation of each joint relative to its parent (joint 0's entry
            is ignored: ``root_rotation`` replaces it).
        rest_joints: [J, 3] shaped rest joints, metres, body frame.
        parents: [J] parent index, -1 for the root.
        root_rotation: [B, 3, 3] world rotation of the root joint.
        root_position: [B, 3] world position of the root joint, metres.
    Returns:
        (rotations [B, J, 3, 3], positions [B, J, 3]), world frame.
    """
    b, j = local_rot.shape[:2]
    Rw = np.empty((b, j, 3, 3))
    pw = np.empty((b, j, 3))
    Rw[:, 0] = root_rotation
    pw[:, 0] = root_position
    for k in range(1, j):
        p = int(parents[k])
        Rw[:, k] = Rw[:, p] @ local_rot[:, k]
        pw[:, k] = pw[:, p] + np.einsum("bij,j->bi", Rw[:, p], rest_joints[k] - rest_joints[p])
    return Rw, pw


def skin(rest_vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray,
         rotations: np.ndarray, positions: np.ndarray, rest_joints: np.ndarray) -> np.ndarray:
    """Linear blend skinning with few weights per vertex (no pose correctives).

    Args:
        rest_vertices: [V, 3] shaped rest mesh, metres.
        joints, weights: [V, K] joint indices and weights.
        rotations, positions: [B, J, 3, 3] / [B, J, 3] world joint transforms (forward_kinematics).
        rest_joints: [J, 3] rest joints the mesh is bound to.
    Returns:
        [B, V, 3] posed vertices, world frame.
    """
    t = positions - np.einsum("bjik,jk->bji", rotations, rest_joints)  # [B, J, 3]
    Rv = np.einsum("vk,bvkij->bvij", weights, rotations[:, joints])      # [B, V, 3, 3]
    tv = np.einsum("vk,bvki->bvi", weights, t[:, joints])
    return np.einsum("bvij,vj->bvi", Rv, rest_vertices) + tv
