"""Stage 1 Tz: crop preprocessing, estimate_tz (DepthNet / metric depth / manual), bad inputs."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from blade_nodes.depth.depthnet import BladeDepthNet, DepthNetConfig, MetricDepthNet
from blade_nodes.depth.metric import MetricTzConfig, metric_depth_map, surface_tz
from blade_nodes.depth.models import (CheckpointError, find_depth_model, list_depth_models,
                                      load_depth_model)
from blade_nodes.depth.preprocess import (CropConfig, mask_boxes, normalize, prepare_crop,
                                          remove_background, square_crop)
from blade_nodes.depth.tz import PelvisDepth, estimate_tz, manual_tz
from conftest import SHARED

pytest.importorskip("transformers", reason="transformers (pinned 5.23.0) is not installed; "
                    "it is a requirement of the depth stage")

PRE = SHARED / "fixtures" / "blade_depthnet" / "preprocess_io.safetensors"

TINY = DepthNetConfig(hidden_size=32, num_layers=4, num_heads=2, image_size=56,
                      out_indices=(1, 2, 3, 4), neck_hidden_sizes=(8, 8, 16, 16),
                      fusion_hidden_size=8, head_hidden_size=8, interface_channels=8,
                      decoder_heads=2, decoder_ffn=16, decoder_layers=1, crop_size=56)
CROP = CropConfig(size=56, frame_size=128)


@pytest.fixture(scope="module")
def depthnet():
    torch.manual_seed(0)
    return BladeDepthNet(TINY).eval()


@pytest.fixture(scope="module")
def metric_dir(tmp_path_factory):
    """A tiny random transformers Depth Anything metric model saved in transformers format."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    torch.manual_seed(1)
    bb = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=56,
                      patch_size=14, out_indices=[1, 2, 3, 4], apply_layernorm=True,
                      reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=bb, reassemble_hidden_size=32,
                              neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8,
                              head_hidden_size=8, depth_estimation_type="metric", max_depth=20)
    root = tmp_path_factory.mktemp("models")
    d = root / "depthanything" / "tiny-metric-hf"
    DepthAnythingForDepthEstimation(cfg).save_pretrained(d)
    rel = root / "depthanything" / "tiny-relative-hf"
    DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=bb, reassemble_hidden_size=32, neck_hidden_sizes=[8, 8, 16, 16],
        fusion_hidden_size=8, head_hidden_size=8)).save_pretrained(rel)
    return d


def _scene(b=3, h=96, w=144):
    g = torch.Generator().manual_seed(3)
    image = torch.rand(b, 3, h, w, generator=g)
    mask = torch.zeros(b, h, w)
    mask[:, 20:80, 50:90] = 1.0
    return image, mask


# ---------------------------------------------------------------- preprocessing (golden)

@pytest.mark.skipif(not PRE.is_file(), reason=f"preprocessing fixture missing: {PRE}")
def test_official_crop_fixture():
    g = load_file(PRE)
    img = g["image_rgb_uint8"].permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(normalize(img), g["posenet_img"], atol=1e-6, rtol=0)
    person = g["mask_uint8"][:, 0] > 0
    boxes, empty = mask_boxes(person)
    assert not empty.any()
    torch.testing.assert_close(boxes, g["tight_box_xyxy_px"])
    torch.testing.assert_close(remove_background(g["posenet_img"], person),
                               g["posenet_img_bg_removed"], atol=0, rtol=0)
    crop, square = square_crop(g["posenet_img_bg_removed"], boxes, 1.25, 518)
    torch.testing.assert_close(square, g["square_box_xyxy_px"], atol=1e-4, rtol=0)
    torch.testing.assert_close(crop, g["depthnet_img_recrop"], atol=1e-5, rtol=0)


def test_empty_mask_box_is_whole_frame():
    m = torch.zeros(2, 10, 20, dtype=torch.bool)
    m[1, 2:4, 5:9] = True
    boxes, empty = mask_boxes(m)
    assert empty.tolist() == [True, False]
    assert boxes[0].tolist() == [0, 0, 19, 9] and boxes[1].tolist() == [5, 2, 8, 3]


def test_prepare_crop_box_in_photo_pixels():
    image, mask = _scene(b=1)
    out = prepare_crop(image, mask, CROP)
    assert out.pixel_values.shape == (1, 3, 56, 56)
    left, top, right, bottom = out.box[0].tolist()
    # tight box x 50..89, y 20..79 -> side 60*1.25 = 75 around (69.5, 49.5)
    assert right - left == pytest.approx(75, abs=1.5) and bottom - top == pytest.approx(75, abs=1.5)
    assert (left + right) / 2 == pytest.approx(69.5, abs=1.0)
    assert out.frame_mask[0].float().mean() == pytest.approx((40 * 60) / 75 ** 2, abs=0.05)


# ---------------------------------------------------------------- estimate_tz: DepthNet

def test_depthnet_batch_one_backbone_call(depthnet):
    image, mask = _scene()
    calls = []
    hook = depthnet.dav2.backbone.register_forward_hook(lambda *a: calls.append(1))
    steps = []
    out = estimate_tz(image, mask, method="auto", model=depthnet, cfg=_cfg(),
                      progress=lambda i, n: steps.append((i, n)))
    hook.remove()
    assert isinstance(out, PelvisDepth) and out.method == "depthnet"
    assert len(calls) == 1 and steps[-1] == (3, 3)
    assert out.tz.shape == (3,) and out.valid.all()
    assert ((out.tz > 0) & (out.tz < 10)).all()
    # same as running each image alone (batching does not mix images)
    single = estimate_tz(image[1:2], mask[1:2], method="depthnet", model=depthnet, cfg=_cfg())
    torch.testing.assert_close(single.tz, out.tz[1:2], atol=1e-5, rtol=0)


def test_depthnet_empty_frame_is_flagged_not_fatal(depthnet):
    image, mask = _scene()
    mask[1] = 0
    out = estimate_tz(image, mask, model=depthnet, cfg=_cfg())
    assert out.valid.tolist() == [True, False, True]
    assert torch.isfinite(out.tz).all()
    assert out.tz[1] in (out.tz[0], out.tz[2])
    assert any("[1]" in m and "empty" in m for m in out.messages)


def test_depthnet_no_mask_warns(depthnet):
    image, _ = _scene(b=1)
    out = estimate_tz(image, None, model=depthnet, cfg=_cfg())
    assert out.valid.all() and any("no mask" in m for m in out.messages)


def _cfg():
    from blade_nodes.depth.tz import TzConfig
    return TzConfig(crop=CROP)


# ---------------------------------------------------------------- manual

def test_manual_every_image():
    image, _ = _scene(b=4)
    out = estimate_tz(image, method="manual", manual=3.5)
    assert out.tz.tolist() == [3.5] * 4 and out.method == "manual" and out.valid.all()
    assert manual_tz([2.0, 3.0], 2).tz.tolist() == [2.0, 3.0]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), 5000.0])
def test_manual_rejects(bad):
    with pytest.raises(ValueError, match="manual Tz"):
        manual_tz(bad, 2)


# ---------------------------------------------------------------- metric depth

def test_metric_model_folder_and_tz(metric_dir):
    model = load_depth_model(metric_dir)
    assert isinstance(model, MetricDepthNet) and not model.has_tz_head
    image, mask = _scene(b=2, h=70, w=112)
    cfg = MetricTzConfig(short_side=56, max_long_side=112, surface_to_pelvis_m=0.1, erode_px=2)
    from blade_nodes.depth.tz import TzConfig
    out = estimate_tz(image, mask, model=model, cfg=TzConfig(crop=CROP, metric=cfg))
    assert out.method == "metric_depth" and out.valid.all()
    depth = metric_depth_map(model, image, cfg)
    assert depth.shape == (2, 70, 112) and (depth > 0).all() and (depth <= 20).all()
    core = mask.clone().bool()
    core[:, :22] = core[:, 78:] = False
    core[:, :, :52] = core[:, :, 88:] = False
    expected = torch.stack([depth[i][core[i]].median() for i in range(2)]) + 0.1
    torch.testing.assert_close(out.tz, expected)


def test_depthnet_can_do_metric_depth(depthnet):
    image, mask = _scene(b=2)
    out = estimate_tz(image, mask, method="metric_depth", model=depthnet,
                      cfg=__import__("blade_nodes.depth.tz", fromlist=["TzConfig"]).TzConfig(
                          metric=MetricTzConfig(short_side=56, max_long_side=112)))
    assert out.method == "metric_depth" and torch.isfinite(out.tz).all()


def test_surface_tz_ignores_boundary_and_adds_offset():
    depth = torch.full((2, 40, 40), 9.0)
    person = torch.zeros(2, 40, 40, dtype=torch.bool)
    person[:, 10:30, 10:30] = True
    depth[:, 10:30, 10:30] = 3.0
    depth[:, 10:30, 10] = 6.0           # boundary blend with the background
    person[1] = False                    # empty
    tz, valid = surface_tz(depth, person, MetricTzConfig(erode_px=1, surface_to_pelvis_m=0.1))
    assert valid.tolist() == [True, False]
    assert tz[0].item() == pytest.approx(3.1)


def test_relative_model_refused(metric_dir):
    with pytest.raises(CheckpointError, match="relative"):
        load_depth_model(metric_dir.parent / "tiny-relative-hf")


def test_depthnet_method_needs_tz_head(metric_dir):
    image, mask = _scene(b=1)
    with pytest.raises(ValueError, match="metric_depth"):
        estimate_tz(image, mask, method="depthnet", model=load_depth_model(metric_dir))


def test_model_listing(metric_dir, tmp_path, monkeypatch):
    root = metric_dir.parent.parent
    (root / "blade").mkdir(exist_ok=True)
    (root / "blade" / "epoch_2.pth").write_bytes(b"")
    (root / "blade" / "notes.txt").write_text("x")
    monkeypatch.setenv("BLADE_MODELS_DIR", str(root))
    names = list_depth_models()
    assert "blade/epoch_2.pth" in names and "depthanything/tiny-metric-hf" in names
    assert not any("notes" in n for n in names)
    assert find_depth_model("depthanything/tiny-metric-hf") == metric_dir
    assert list_depth_models([tmp_path], [tmp_path]) == []
    with pytest.raises(FileNotFoundError, match="models/blade"):
        find_depth_model("blade/missing.pth")


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("make, match", [
    (lambda: torch.rand(1, 3, 50, 200), "too small"),
    (lambda: torch.rand(1, 1, 100, 100), r"\[B, 3, H, W\]"),
    (lambda: torch.full((2, 3, 80, 80), float("nan")), "NaN"),
])
def test_bad_images(make, match):
    with pytest.raises(ValueError, match=match):
        estimate_tz(make(), method="manual", manual=3.0)


def test_bad_masks(depthnet):
    image, mask = _scene(b=2)
    with pytest.raises(ValueError, match="NaN"):
        estimate_tz(image, mask * float("nan"), model=depthnet, cfg=_cfg())
    with pytest.raises(ValueError, match="batch of 3 masks for 2 images"):
        estimate_tz(image, torch.zeros(3, 96, 144), model=depthnet, cfg=_cfg())
    out = estimate_tz(image, mask[:1, ::2, ::2], model=depthnet, cfg=_cfg())  # broadcast + resize
    assert out.valid.all() and any("resized" in m for m in out.messages)


def test_unknown_method_and_missing_model():
    image, _ = _scene(b=1)
    with pytest.raises(ValueError, match="expected one of"):
        estimate_tz(image, method="zoe")
    with pytest.raises(ValueError, match="needs a depth model"):
        estimate_tz(image, method="depthnet")
    with pytest.raises(ValueError, match="needs a depth model"):
        estimate_tz(image)
