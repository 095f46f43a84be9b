"""BLADE DepthNet vs the official code's golden data (../shared/fixtures/blade_depthnet)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from blade_nodes.depth.depthnet import (IGNORED_OFFICIAL, VITL, BladeDepthNet, CheckpointError,
                                        DepthNetConfig, infer_config, load_depthnet,
                                        remap_official, save_depthnet)
from blade_nodes.depth.models import load_depth_model
from conftest import SHARED

pytest.importorskip("transformers", reason="transformers (pinned 5.23.0) is not installed; "
                    "it is a requirement of the depth stage")

FIX = SHARED / "fixtures" / "blade_depthnet"
pytestmark = pytest.mark.skipif(not (FIX / "tiny_state_dict.safetensors").is_file(),
                                reason=f"golden fixtures missing: {FIX}")

# tiny_config.json, in our config's terms (heads / out_indices cannot be read from shapes)
TINY = DepthNetConfig(hidden_size=64, num_layers=6, num_heads=4, image_size=126,
                      out_indices=(2, 3, 5, 6), neck_hidden_sizes=(16, 32, 64, 64),
                      fusion_hidden_size=16, head_hidden_size=32, interface_channels=32,
                      decoder_heads=4, decoder_ffn=64, decoder_layers=2)


@pytest.fixture(scope="module")
def official_sd():
    return load_file(FIX / "tiny_state_dict.safetensors")


@pytest.fixture(scope="module")
def golden():
    return load_file(FIX / "golden_io.safetensors")


@pytest.fixture(scope="module")
def tiny(official_sd):
    torch.manual_seed(0)
    model = BladeDepthNet(TINY)
    sd, unmapped = remap_official(official_sd, model)
    assert unmapped == []
    model.load_state_dict(sd, strict=True)
    return model.eval()


def test_tiny_config_matches_fixture():
    cfg = json.loads((FIX / "tiny_config.json").read_text())["transformers_equivalent"]
    ours = TINY.to_transformers()
    assert list(ours.backbone_config.out_indices) == cfg["Dinov2Config"]["out_indices"]
    assert ours.backbone_config.hidden_size == cfg["Dinov2Config"]["hidden_size"]
    assert list(ours.neck_hidden_sizes) == cfg["DepthAnythingConfig"]["neck_hidden_sizes"]
    assert ours.fusion_hidden_size == cfg["DepthAnythingConfig"]["fusion_hidden_size"]


def test_full_official_key_list_maps_exactly():
    entries = json.loads((FIX / "keys_full.json").read_text())["keys"]
    sd = {e["key"]: torch.empty(e["shape"], dtype=getattr(torch, e["dtype"]), device="meta")
          for e in entries}
    assert infer_config(sd) == VITL
    with torch.device("meta"):
        model = BladeDepthNet(VITL)
    mapped, unmapped = remap_official(sd, model)
    expected = model.state_dict()
    assert unmapped == []
    assert sorted(set(expected) - set(mapped)) == []          # nothing missing
    assert sorted(set(mapped) - set(expected)) == []          # nothing unexpected
    assert [k for k in expected if mapped[k].shape != expected[k].shape] == []
    # the only official depth keys left out are the never-called dec_z.conv
    used = sum(v.numel() for v in expected.values())
    ignored = sum(sd[k].numel() for k in IGNORED_OFFICIAL)
    assert used + ignored == sum(v.numel() for v in sd.values())


@pytest.mark.parametrize("case", ["case1", "case2"])
def test_tiny_reproduces_official(tiny, golden, case):
    x = golden[f"{case}.input"]
    with torch.no_grad():
        out = tiny(x, want_feature=True, want_depth=True)
    torch.testing.assert_close(out.feature, golden[f"{case}.path_1"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.tz, golden[f"{case}.pred_z"][:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.depth, 20 * golden[f"{case}.dav2_depth_sigmoid"][:, 0],
                               atol=1e-4, rtol=0)


def test_interface_output_matches(tiny, golden):
    feats = {}
    hook = tiny.interface.register_forward_hook(lambda m, i, o: feats.update(out=o, inp=i[0]))
    with torch.no_grad():
        tiny(golden["case1.input"])
    hook.remove()
    torch.testing.assert_close(feats["inp"][:, :, ::8, ::8], golden["case1.head_input_224_stride8"],
                               atol=2e-5, rtol=0)
    torch.testing.assert_close(feats["out"], golden["case1.interface_out"], atol=2e-5, rtol=0)


def _mmcv_checkpoint(official_sd):
    sd = {"module." + k: v for k, v in official_sd.items()}
    sd["module.pose_backbone.transformer.level_embed"] = torch.randn(4, 8)  # PoseNet: ignored
    return {"meta": {"epoch": 2, "mmcv_version": "1.7.0"}, "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}}


def test_load_mmcv_pth_and_converted_safetensors(tmp_path, official_sd, golden):
    pth = tmp_path / "epoch_2.pth"
    torch.save(_mmcv_checkpoint(official_sd), pth)
    model = load_depthnet(pth, config=TINY)
    x = golden["case1.input"]
    with torch.no_grad():
        tz = model(x).tz
    torch.testing.assert_close(tz, golden["case1.pred_z"][:, 0], atol=1e-5, rtol=0)
    st = save_depthnet(model, tmp_path / "blade.safetensors")
    again = load_depth_model(st)  # config comes from the metadata
    assert again.cfg == TINY
    with torch.no_grad():
        assert torch.equal(again(x).tz, tz)


def test_partial_checkpoint_lists_missing(tmp_path, official_sd):
    sd = {k: v for k, v in official_sd.items() if not k.startswith("depth_head.")}
    save_file(sd, tmp_path / "partial.safetensors")
    with pytest.raises(CheckpointError, match=r"\d+ missing \[tz_head\.") as e:
        load_depthnet(tmp_path / "partial.safetensors", config=TINY)
    assert "no depth_head.* keys" in str(e.value)


def test_missing_encoder_block_is_caught(tmp_path):
    entries = json.loads((FIX / "keys_full.json").read_text())["keys"]
    sd = {e["key"]: torch.empty(e["shape"], device="meta") for e in entries
          if ".blocks.23." not in e["key"]}
    with pytest.raises(CheckpointError, match="needs blocks 0-23"):
        infer_config(sd)


def test_other_model_is_refused(tmp_path):
    save_file({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "sam.safetensors")
    with pytest.raises(CheckpointError, match="neither a BLADE nor a Depth Anything"):
        load_depth_model(tmp_path / "sam.safetensors")
    with pytest.raises(CheckpointError, match="not a BLADE checkpoint"):
        load_depthnet(tmp_path / "sam.safetensors")


def test_unknown_width_asks_for_config(official_sd):
    with pytest.raises(CheckpointError, match="pass config="):
        infer_config(official_sd)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(tmp_path, official_sd, suffix):
    path = tmp_path / f"cut{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": official_sd}, path)
    else:
        save_file(official_sd, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="(?i)truncated"):
        load_depth_model(path)


def test_unsafe_pickle_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "cfg": _Unsafe()}, path)
    with pytest.raises(CheckpointError, match="safe loading refuses"):
        load_depth_model(path)


class _Unsafe:
    pass


def test_nan_weights_refused(tmp_path, official_sd):
    sd = dict(official_sd)
    sd["depth_head.dec_z.z_out.weight"] = torch.full_like(sd["depth_head.dec_z.z_out.weight"], float("nan"))
    save_file(sd, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match="NaN"):
        load_depthnet(tmp_path / "nan.safetensors", config=TINY)


def test_missing_file():
    with pytest.raises(CheckpointError, match="no such file"):
        load_depthnet("/nonexistent/epoch_2.pth")
