"""Shared test fixtures: tiny synthetic data only, CPU, no network."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def synthetic_smplx_path(tmp_path_factory) -> Path:
    """A random but valid SMPL-X-format file (real vertex/face counts)."""
    from blade_nodes.body.synthetic import write_synthetic_smplx
    return write_synthetic_smplx(tmp_path_factory.mktemp("smplx") / "SMPLX_NEUTRAL.npz")


@pytest.fixture(scope="session")
def synthetic_body(synthetic_smplx_path):
    from blade_nodes.body import load_body_model
    return load_body_model(synthetic_smplx_path)


@pytest.fixture()
def output_root(tmp_path, monkeypatch) -> Path:
    """A fresh output folder used by the library and the nodes."""
    root = tmp_path / "output"
    root.mkdir()
    monkeypatch.setenv("BLADE_OUTPUT_DIR", str(root))
    return root
