"""PoseNet checkpoint loading: the official key list, aliases, unused keys, safe formats, errors."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from blade_nodes.pose.posenet import (FULL, REDUCED, PoseNet, PoseNetCheckpointError,
                                      load_posenet, load_state, predict_smplx, remap)
from blade_nodes.pose.posenet.checkpoint import canonical_key
from blade_nodes.pose.posenet.layers import GroupLayout, SelfAttention, group_attention_mask

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIX = SHARED / "fixtures" / "blade_posenet"
needs_fixture = pytest.mark.skipif(not (FIX / "keys_full.json").is_file(),
                                   reason="PoseNet key-list fixture not present (shared/fixtures)")
PREFIX = "pose_backbone."


@pytest.fixture(scope="module")
def full_meta():
    with torch.device("meta"):
        return PoseNet(FULL)


@pytest.fixture(scope="module")
def keys_full():
    return json.loads((FIX / "keys_full.json").read_text())


@needs_fixture
def test_official_key_list_loads_exactly(full_meta, keys_full):
    entries = keys_full["keys"]
    sd = {e["key"]: torch.empty(e["shape"], device="meta") for e in entries}
    sd_mmcv = {"state_dict": dict(sd, **{"depth_head.fc.weight": torch.empty(2, device="meta")})}
    out, dropped = remap(sd_mmcv, full_meta)
    own = full_meta.state_dict()
    assert sorted(set(own) - set(out)) == []  # no missing used key
    assert sorted(set(out) - set(own)) == []  # no unexpected key
    for k, v in own.items():
        assert tuple(out[k].shape) == tuple(v.shape), k
    # every key marked used lands in the model; unused / SMPL-X keys are dropped; aliases
    # resolve to the same parameter as their canonical key, or are dropped with it
    dropped = set(dropped)
    by_key = {e["key"]: e for e in entries}
    for e in entries:
        k, status = e["key"], e["status"]
        name = canonical_key(k[len(PREFIX):])
        if status == "used":
            assert name in own and k not in dropped, k
        elif status in ("unused", "smplx_body_model"):
            assert k in dropped, k
        elif status == "alias":
            assert name == canonical_key(e["alias_of"][len(PREFIX):]), k
            if by_key[e["alias_of"]]["status"] == "used":
                assert name in own, k
            else:
                assert k in dropped, k
    n_used = sum(e["status"] == "used" for e in entries)
    assert len(own) == n_used


@needs_fixture
def test_reduced_weights_load_and_drop_nothing_needed():
    model = load_posenet(FIX / "posenet_reduced_weights.safetensors")
    assert model.cfg == REDUCED
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _small_state(model: PoseNet) -> dict[str, torch.Tensor]:
    """An official-layout state dict for ``model`` (prefix, aliases and an unused key)."""
    sd = {}
    for k, v in model.state_dict().items():
        k = k.replace("backbone.", "backbone.0.body.", 1) if k.startswith("backbone.") else k
        k = k.replace("backbone_controlnet.", "backbone_controlnet.0.body.", 1)
        sd[PREFIX + k] = v.clone()
    sd[PREFIX + "label_enc.weight"] = torch.zeros(101, 256)
    sd[PREFIX + "Tz_poss_zeromlp.3.weight"] = torch.zeros(256, 1)
    sd[PREFIX + "body_model.shapedirs"] = torch.zeros(3, 3, 10)
    return sd


#: A tiny config with a different layer split (1 box layer, 2 before the hand/face expansion).
TINY = replace(REDUCED, enc_layers=1, dim_feedforward=64, num_queries=20, num_group=3,
               num_select=5, dec_layers=3, num_box_decoder_layers=1,
               num_hand_face_decoder_layers=2)


@pytest.fixture(scope="module")
def reduced_model():
    torch.manual_seed(0)
    return PoseNet(TINY)


def test_tiny_model_runs(reduced_model):
    torch.manual_seed(1)
    for p in reduced_model.parameters():  # official zero-inits would hide wiring errors
        torch.nn.init.normal_(p, std=0.05)
    res = predict_smplx(reduced_model.eval(), torch.rand(2, 3, 96, 128), torch.tensor([2.0, 4.0]))
    assert res.body_pose.shape == (2, 63) and res.betas.shape == (2, 10)
    assert res.left_hand_pose.shape == (2, 45) and res.jaw_pose.shape == (2, 3)
    assert all(torch.isfinite(t).all() for t in (res.body_pose, res.betas, res.body_box))
    assert ((res.group >= 0) & (res.group < TINY.num_group)).all()


def test_roundtrip_pth_with_mmcv_wrapper(tmp_path, reduced_model):
    sd = _small_state(reduced_model)
    np = pytest.importorskip("numpy")
    meta = {"epoch": 2, "hook_msgs": {"best_score": np.float64(0.5)}, "arr": np.arange(3)}
    torch.save({"meta": meta, "state_dict": sd}, tmp_path / "blade.pth")
    model = load_posenet(tmp_path / "blade.pth", TINY)
    for k, v in reduced_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_missing_keys_are_named(reduced_model):
    sd = _small_state(reduced_model)
    del sd[PREFIX + "transformer.enc_output.weight"]
    with pytest.raises(PoseNetCheckpointError,
                       match=r"1 missing \[transformer\.enc_output\.weight\]; 0 unexpected"):
        load_state(PoseNet(TINY), sd)


def test_unexpected_and_shape_mismatch(reduced_model):
    sd = _small_state(reduced_model)
    sd[PREFIX + "transformer.mystery.weight"] = torch.zeros(3)
    with pytest.raises(PoseNetCheckpointError, match=r"1 unexpected \[transformer\.mystery"):
        load_state(PoseNet(TINY), sd)
    sd = _small_state(reduced_model)
    sd[PREFIX + "transformer.enc_output.weight"] = torch.zeros(256, 128)
    with pytest.raises(PoseNetCheckpointError, match=r"shape mismatch.*enc_output\.weight"):
        load_state(PoseNet(TINY), sd)


def test_foreign_checkpoint_refused(tmp_path):
    save_file({"model.diffusion.weight": torch.zeros(4, 4)}, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(PoseNetCheckpointError, match="not a BLADE PoseNet checkpoint"):
        load_posenet(tmp_path / "sd15.safetensors")
    with pytest.raises(PoseNetCheckpointError, match=r"missing \[.*\]; 1 unexpected"):
        load_posenet(tmp_path / "sd15.safetensors", TINY)


def test_truncated_and_unsafe_files_refused(tmp_path, reduced_model):
    save_file({"a": torch.zeros(1000)}, str(tmp_path / "ok.safetensors"))
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PoseNetCheckpointError, match="could not be read.*truncated"):
        load_posenet(tmp_path / "cut.safetensors")
    torch.save({"a": torch.zeros(1000)}, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(PoseNetCheckpointError, match="could not be read"):
        load_posenet(tmp_path / "cut.pth")
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": Path("x")}, tmp_path / "pickle.pth")
    with pytest.raises(PoseNetCheckpointError, match="could not be read safely"):
        load_posenet(tmp_path / "pickle.pth")
    with pytest.raises(PoseNetCheckpointError, match="file not found"):
        load_posenet(tmp_path / "nope.pth")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(PoseNetCheckpointError, match=r"expected \.safetensors or \.pth"):
        load_posenet(tmp_path / "w.onnx")


def _official_mask_loop(G: int, S: int, box: tuple[int, ...]) -> torch.Tensor:
    """Slow reference: the official prepare_for_dn2 loops for one (batch, head)."""
    m = torch.zeros(G * S, G * S, dtype=torch.bool)
    box_cols = [x for x in range(G * S) if x % S in box]
    for j in range(G * S):
        s, e = (j // S) * S, (j // S + 1) * S
        m[j, :s] = True
        m[j, e:] = True
    for x in range(G * S):
        if x % S in box:
            m[x, box_cols] = False
    return m


@pytest.mark.parametrize("G,S,box", [(3, 21, (0, 18, 19, 20)), (4, 39, (0, 18, 25, 32)),
                                     (1, 21, (0, 18, 19, 20))])
def test_group_attention_matches_dense_masked(G, S, box):
    assert torch.equal(group_attention_mask(G, S, box), _official_mask_loop(G, S, box))
    torch.manual_seed(0)
    attn = SelfAttention(32, 4)
    torch.nn.init.normal_(attn.in_proj_weight, std=0.3)
    torch.nn.init.normal_(attn.in_proj_bias, std=0.1)
    x, v = torch.randn(2, G * S, 32), torch.randn(2, G * S, 32)
    layout = GroupLayout(G, S, box)
    dense = attn(x, v, layout.dense_mask())
    torch.testing.assert_close(attn.forward_grouped(x, v, layout), dense, atol=1e-5, rtol=1e-5)


@needs_fixture
def test_load_posenet_node(tmp_path, monkeypatch):
    nodes = pytest.importorskip("nodes")
    if "BladeLoadPoseNet" not in nodes.NODE_CLASS_MAPPINGS:
        pytest.skip("BladeLoadPoseNet not registered")
    (tmp_path / "blade").mkdir()
    (tmp_path / "blade" / "posenet_reduced.safetensors").symlink_to(
        FIX / "posenet_reduced_weights.safetensors")
    monkeypatch.setenv("BLADE_MODELS_DIR", str(tmp_path))
    cls = nodes.NODE_CLASS_MAPPINGS["BladeLoadPoseNet"]
    assert cls.INPUT_TYPES()["required"]["model"][0] == ["posenet_reduced.safetensors"]
    (net,) = cls().load("posenet_reduced.safetensors")
    assert isinstance(net, PoseNet) and net.cfg == REDUCED
    with pytest.raises(ValueError, match="expected a BLADE checkpoint in models/blade"):
        cls().load("missing.pth")
