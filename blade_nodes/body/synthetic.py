"""A synthetic SMPL-X-format file for tests and benches (random but valid content).

It has the real counts (V = 10,475, F = 20,908, 55 joints, the SMPL-X kinematic tree)
because smplx gathers fixed SMPL-X vertex ids (up to 9,929); its geometry is a blob,
not a human. Use the open body for anything that needs a human shape.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

NUM_VERTICES = 10475
NUM_FACES = 20908
# SMPL-X kinematic tree: parent of each of the 55 joints (-1 for the pelvis)
SMPLX_PARENTS = np.array(
    [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
     20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
     21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53], dtype=np.int64)


def write_synthetic_smplx(path: str | Path, seed: int = 0, num_shape: int = 20) -> Path:
    """Write a valid SMPL-X-format ``.npz`` with random content.

    Args:
        path: output file (``.npz``).
        seed: RNG seed; same seed, same bytes of content.
        num_shape: columns of ``shapedirs`` (< 400 makes smplx use 10 betas + 10 expression).
    Returns:
        the path written.
    """
    rng = np.random.default_rng(seed)
    v, f, j = NUM_VERTICES, NUM_FACES, 55
    v_template = rng.normal(size=(v, 3)) * np.array([0.2, 0.8, 0.1])
    a = rng.integers(0, v, size=f)
    faces = np.stack([a, (a + 1 + rng.integers(0, 5, size=f)) % v,
                      (a + 7 + rng.integers(0, 5, size=f)) % v], 1)
    jreg = rng.random((j, v)) ** 8
    jreg /= jreg.sum(1, keepdims=True)
    weights = rng.random((v, j)) ** 8
    weights /= weights.sum(1, keepdims=True)
    kintree = np.stack([SMPLX_PARENTS, np.arange(j)]).astype(np.int64)
    lmk_bary = rng.dirichlet(np.ones(3), size=51)
    data = dict(
        v_template=v_template.astype(np.float32), f=faces.astype(np.int64),
        shapedirs=(rng.normal(size=(v, 3, num_shape)) * 0.01).astype(np.float32),
        posedirs=np.zeros((v, 3, 486), np.float32),
        J_regressor=jreg.astype(np.float32), weights=weights.astype(np.float32),
        kintree_table=kintree,
        hands_componentsl=np.eye(45, dtype=np.float32), hands_componentsr=np.eye(45, dtype=np.float32),
        hands_meanl=(rng.normal(size=45) * 0.1).astype(np.float32),
        hands_meanr=(rng.normal(size=45) * 0.1).astype(np.float32),
        lmk_faces_idx=rng.integers(0, f, size=51).astype(np.int64),
        lmk_bary_coords=lmk_bary.astype(np.float32),
        dynamic_lmk_faces_idx=rng.integers(0, f, size=(79, 17)).astype(np.int64),
        dynamic_lmk_bary_coords=rng.dirichlet(np.ones(3), size=(79, 17)).astype(np.float32),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **data)
    return path
