"""ControlNet maps: normal colour conventions on a sphere, inverse depth, per-frame cameras."""
from __future__ import annotations

import pytest
import torch

from blade_nodes.camera import Camera, project_points
from blade_nodes.render import rasterize
from blade_nodes.render import maps
from blade_nodes.render.render import RenderConfig, render_maps

H = W = 96


def sphere(radius: float = 0.5, center=(0.0, 0.0, 3.0)):
    import trimesh
    m = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    v = torch.tensor(m.vertices, dtype=torch.float32) + torch.tensor(center)
    return v[None], torch.tensor(m.faces, dtype=torch.int64)


def sphere_normals(convention="normalbae", background="black", focal=150.0):
    v, f = sphere()
    # principal point on the centre of pixel (H/2, W/2): that pixel sees the sphere's pole
    fr = rasterize(v, f, torch.tensor([focal]), torch.tensor([[W / 2 + 0.5, H / 2 + 0.5]]), H, W)
    img = maps.normal_map(v, f, fr, convention, background)
    return (img[0] * 255).round().permute(1, 2, 0).to(torch.int64), fr  # [H, W, 3] 0..255


def _extremes(fr):
    """Pixels near the sphere's left, top and right rims and its centre (row, col)."""
    m = fr.mask[0]
    cols = m[H // 2].nonzero().squeeze(1)
    rows = m[:, W // 2].nonzero().squeeze(1)
    left = (H // 2, int(cols.min()) + 1)
    right = (H // 2, int(cols.max()) - 1)
    top = (int(rows.min()) + 1, W // 2)
    return left, top, right, (H // 2, W // 2)


def test_sphere_normalbae_colours():
    rgb, fr = sphere_normals()
    left, top, right, centre = _extremes(fr)
    r, g, b = rgb[left].tolist()
    assert r > 200 and r > max(g, b) + 30, f"left rim should be red-dominant, got {(r, g, b)}"
    r, g, b = rgb[top].tolist()
    assert g > 200 and g > max(r, b) + 30, f"top rim should be green-dominant, got {(r, g, b)}"
    r, g, b = rgb[right].tolist()
    assert r < 40, f"right rim should have little red, got {(r, g, b)}"
    assert (rgb[centre] - torch.tensor([128, 128, 255])).abs().max() <= 2, rgb[centre]
    assert rgb[0, 0].tolist() == [0, 0, 0]  # black background


def test_opengl_flips_red_only_and_dsine_equals_normalbae():
    bae, fr = sphere_normals("normalbae")
    gl, _ = sphere_normals("opengl")
    dsine, _ = sphere_normals("dsine")
    m = fr.mask[0]
    assert torch.equal(dsine, bae)
    assert torch.equal(gl[..., 1:][m], bae[..., 1:][m])
    assert ((gl[..., 0] + bae[..., 0])[m] - 255).abs().max() <= 1  # R_gl = 255 - R_bae
    left, *_ = _extremes(fr)
    assert gl[left][0] < 40  # OpenGL: a surface facing image-left has little red


def test_flat_background():
    rgb, fr = sphere_normals(background="flat")
    assert rgb[0, 0].tolist() == [128, 128, 255]
    rgb_gl, _ = sphere_normals("opengl", background="flat")
    assert rgb_gl[0, 0].tolist() == [128, 128, 255]


def test_unknown_convention_is_refused():
    v, f = sphere()
    fr = rasterize(v, f, torch.tensor([150.0]), torch.tensor([[48.0, 48.0]]), 8, 8)
    with pytest.raises(ValueError, match="convention"):
        maps.normal_map(v, f, fr, "directx")


def test_depth_is_inverse_near_bright_and_normalised_in_person():
    v, f = sphere()
    fr = rasterize(v, f, torch.tensor([150.0]), torch.tensor([[48.0, 48.0]]), H, W)
    d = maps.depth_map(fr, "frame", floor=0.15)[0]
    m = fr.mask[0]
    assert d[~m].abs().max() == 0
    assert abs(float(d[m].max()) - 1.0) < 1e-6 and abs(float(d[m].min()) - 0.15) < 1e-6
    # the sphere's centre is nearest: brightest
    assert float(d[H // 2, W // 2]) > 0.99
    inv = 1 / fr.depth[0][m]
    order = torch.argsort(inv)
    assert torch.all(d[m][order][1:] >= d[m][order][:-1] - 1e-6)  # monotone in 1/Z


def test_depth_batch_normalisation_has_one_range():
    v1, f = sphere(center=(0.0, 0.0, 3.0))
    v2, _ = sphere(center=(0.0, 0.0, 5.0))
    v = torch.cat([v1, v2])
    fr = rasterize(v, f, torch.tensor([150.0, 150.0]), torch.tensor([[48.0, 48.0]] * 2), H, W)
    per_frame = maps.depth_map(fr, "frame")
    batch = maps.depth_map(fr, "batch")
    assert abs(float(per_frame[1].max()) - 1) < 1e-6
    assert float(batch[1].max()) < 0.5  # the far sphere is darker over the batch
    assert abs(float(batch[0].max()) - 1) < 1e-6 and abs(float(batch[1][fr.mask[1]].min()) - 0.15) < 1e-6


def test_part_colours_background():
    parts = torch.zeros(1, 2, 2, dtype=torch.int64)
    parts[0, 0, 0] = 24
    vir = (maps.part_colors(parts, "viridis")[0] * 255).round()
    par = (maps.part_colors(parts, "parula")[0] * 255).round()
    assert vir[:, 1, 1].tolist() == [68, 1, 84]
    assert par[:, 1, 1].tolist() == [0, 0, 0]
    assert vir[:, 0, 0].tolist() == [253, 231, 37]


# ---------------------------------------------------------------- render_maps with a body
def four_cameras():
    return Camera.create([60.0, 80.0, 70.0, 90.0],
                         [[0.0, 0.2, 4.0], [0.5, 0.0, 5.0], [-0.4, 0.3, 4.5], [0.2, -0.3, 6.0]],
                         [48, 64], principal=[[24, 32], [20, 30], [28, 34], [24, 28]])


def test_four_frames_each_aligned_with_its_own_camera(synthetic_body):
    from blade_nodes.body import SMPLXParams
    torch.manual_seed(0)
    params = SMPLXParams.zeros(4).replace(global_orient=torch.randn(4, 3) * 0.3)
    cam = four_cameras()
    calls = []
    res = render_maps(synthetic_body, params, cam, cfg=RenderConfig(backend="cpu"),
                      progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert res.mask.shape == (4, 64, 48) and res.openpose.shape == (4, 3, 64, 48)
    with torch.no_grad():
        out = synthetic_body(params)
    verts_cam = out.vertices + cam.translation[:, None]
    for i in range(4):
        ci = cam.index(i)
        fr = rasterize(verts_cam[i:i + 1], synthetic_body.faces, ci.focal, ci.principal, 64, 48)
        assert torch.equal(res.mask[i].bool(), fr.mask[0]), f"frame {i} not rendered with camera {i}"
        kp = synthetic_body.keypoint_map("openpose18")(out.joints[i:i + 1] + ci.translation[:, None])
        uv = project_points(kp, ci.focal, ci.principal)[0]
        torch.testing.assert_close(res.body_2d[i], uv, atol=1e-3, rtol=0)
    # the four frames really differ (a single shared camera would make this fail)
    assert not torch.equal(res.mask[0], res.mask[1])


def test_single_camera_broadcasts_and_size_mismatch_is_refused(synthetic_body):
    from blade_nodes.body import SMPLXParams
    params = SMPLXParams.zeros(2)
    cam = Camera.create(60.0, [0.0, 0.0, 4.0], [32, 40])
    res = render_maps(synthetic_body, params, cam, cfg=RenderConfig(backend="cpu"))
    assert torch.equal(res.mask[0], res.mask[1])
    bad = Camera.cat([cam, Camera.create(60.0, [0.0, 0.0, 4.0], [40, 40])])
    with pytest.raises(ValueError, match="one size"):
        render_maps(synthetic_body, params, bad)
    with pytest.raises(ValueError, match="frames"):
        render_maps(synthetic_body, SMPLXParams.zeros(3), bad)


def test_invalid_frame_renders_empty(synthetic_body):
    from blade_nodes.body import SMPLXParams
    params = SMPLXParams.zeros(2).replace(valid=torch.tensor([True, False]))
    cam = Camera.create(60.0, [0.0, 0.0, 4.0], [32, 40])
    res = render_maps(synthetic_body, params, cam, cfg=RenderConfig(backend="cpu"))
    assert res.mask[0].sum() > 0 and res.mask[1].sum() == 0
    assert res.pose_keypoint[1]["people"] == []


def test_render_node_outputs(synthetic_body, monkeypatch):
    import nodes
    from blade_nodes.body import SMPLXParams
    cam = Camera.create(60.0, [0.0, 0.0, 4.0], [32, 40])
    image = torch.rand(1, 20, 16, 3)
    out = nodes.BladeRender().render(SMPLXParams.zeros(1), synthetic_body, cam, image)
    res = out["result"]
    types = nodes.BladeRender.RETURN_TYPES
    assert len(res) == len(types)
    for value, kind in zip(res, types):
        if kind == "IMAGE":
            assert value.shape == (1, 40, 32, 3) and 0 <= float(value.min()) <= float(value.max()) <= 1
        elif kind == "MASK":
            assert value.shape == (1, 40, 32)
        elif kind == "POSE_KEYPOINT":
            assert isinstance(value, list) and value[0]["canvas_width"] == 32
    assert "openpose_json" in out["ui"]
