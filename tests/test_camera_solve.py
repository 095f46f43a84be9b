"""Camera solver (stage 3): edge silhouette, f/Tx/Ty recovery, determinism, bad inputs."""
from __future__ import annotations

import math

import pytest
import torch

from blade_nodes.camera.silhouette import edge_silhouette, face_adjacency, silhouette
from blade_nodes.camera.solve import CameraFit, SolveConfig, solve_camera, solve_camera_body
from blade_nodes.render import rasterize

FAST = SolveConfig(iterations=30, max_size=160)


def ellipsoid(centre, radii, n=10, m=20):
    """A closed, outward-wound UV ellipsoid: ([V, 3] float64, [F, 3] int64)."""
    th = torch.linspace(0, math.pi, n + 1, dtype=torch.float64)[1:-1]
    ph = torch.arange(m, dtype=torch.float64) * 2 * math.pi / m
    T, P = torch.meshgrid(th, ph, indexing="ij")
    ring = torch.stack([torch.sin(T) * torch.cos(P), -torch.cos(T),
                        torch.sin(T) * torch.sin(P)], -1)
    pole = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    pts = torch.cat([-pole, ring.reshape(-1, 3), pole])
    pts = pts * torch.tensor(radii, dtype=torch.float64) + torch.tensor(centre, dtype=torch.float64)
    idx = lambda i, j: 1 + i * m + (j % m)  # noqa: E731
    faces = [[0, idx(0, j + 1), idx(0, j)] for j in range(m)]
    for i in range(n - 2):
        for j in range(m):
            faces += [[idx(i, j), idx(i, j + 1), idx(i + 1, j + 1)],
                      [idx(i, j), idx(i + 1, j + 1), idx(i + 1, j)]]
    last = pts.shape[0] - 1
    faces += [[last, idx(n - 2, j), idx(n - 2, j + 1)] for j in range(m)]
    return pts, torch.tensor(faces)


def figure():
    """A small stick figure of ellipsoids (torso, head, legs, arms), body frame, metres."""
    parts = [((0, -0.25, 0), (0.17, 0.3, 0.1)), ((0, -0.7, 0), (0.1, 0.12, 0.1)),
             ((-0.1, 0.35, 0), (0.07, 0.4, 0.07)), ((0.1, 0.35, 0), (0.07, 0.4, 0.07)),
             ((-0.35, -0.45, 0.05), (0.3, 0.05, 0.05)), ((0.35, -0.4, -0.1), (0.3, 0.05, 0.05))]
    vs, fs, off = [], [], 0
    for c, r in parts:
        v, f = ellipsoid(c, r)
        vs.append(v)
        fs.append(f + off)
        off += v.shape[0]
    return torch.cat(vs), torch.cat(fs)


def render_mask(verts, faces, f, t, h, w):
    fr = rasterize((verts + torch.as_tensor(t, dtype=verts.dtype))[None], faces,
                   torch.tensor([f], dtype=verts.dtype),
                   torch.tensor([[w / 2, h / 2]], dtype=verts.dtype), h, w)
    return fr.mask[0].float()


@pytest.fixture(scope="module")
def scene():
    v, f = figure()
    cams = [(180.0, (0.08, -0.05, 3.0)), (120.0, (-0.15, 0.1, 2.5)), (260.0, (0.0, 0.12, 4.0))]
    masks = torch.stack([render_mask(v, f, fo, t, 160, 128) for fo, t in cams])
    return v, f, cams, masks


# ----------------------------------------------------------------------- silhouette
def test_edge_silhouette_area_and_gradient_of_a_triangle():
    # one triangle facing the camera (counter-clockwise in the y-down image; back faces are
    # culled): coverage sum = exact area; d area / d f = 2 area / f
    v = torch.tensor([[[-0.31, -0.22, 2.0], [0.27, -0.19, 2.0], [0.03, 0.33, 2.0]]],
                     dtype=torch.float64)
    faces = torch.tensor([[0, 2, 1]])
    back = edge_silhouette(v, faces[:, [0, 2, 1]], torch.tensor([150.0], dtype=torch.float64),
                           torch.tensor([[64.0, 64.0]], dtype=torch.float64), 128, 128)[1]
    assert back.sum() == 0
    focal = torch.tensor([150.0], dtype=torch.float64, requires_grad=True)
    pp = torch.tensor([[64.0, 64.0]], dtype=torch.float64)
    sil, hard = edge_silhouette(v, faces, focal, pp, 128, 128)
    uv = v[0, :, :2] / 2.0 * 150.0
    exact = 0.5 * abs(float(torch.linalg.det(torch.stack([uv[1] - uv[0], uv[2] - uv[0]]))))
    area = sil.sum()
    area.backward()
    assert abs(float(area.detach()) - exact) / exact < 0.01
    assert abs(float(hard.sum()) - exact) / exact < 0.05
    # the 1-D edge rule loses a little at the three corners (about 1 pixel of outline each)
    assert float(focal.grad) == pytest.approx(2 * exact / 150.0, rel=0.04)


def test_edge_silhouette_gradient_matches_area_derivative_on_closed_mesh():
    v, f = ellipsoid((0, 0, 0), (0.3, 0.8, 0.2), n=24, m=48)
    focal = torch.tensor([256.0], dtype=torch.float64, requires_grad=True)
    vc = (v + torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64))[None]
    sil, _ = edge_silhouette(vc, f, focal, torch.tensor([[128.0, 128.0]], dtype=torch.float64),
                             256, 256)
    sil.sum().backward()
    # the image of a fixed-depth scene scales with f about the principal point: A ~ f^2
    assert float(focal.grad) == pytest.approx(2 * float(sil.sum().detach()) / 256.0, rel=0.02)
    assert (face_adjacency(f) >= 0).all()  # closed mesh: every edge has a neighbour


def test_silhouette_backend_checks():
    v, f = ellipsoid((0, 0, 3), (0.3, 0.3, 0.3))
    with pytest.raises(ValueError, match="backend"):
        silhouette(v[None], f, torch.tensor([50.0]), torch.tensor([[32.0, 32.0]]), 64, 64,
                   backend="opengl")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA path (nvdiffrast) needs a GPU")
def test_cuda_silhouette_matches_cpu():  # pragma: no cover - no GPU in CI
    pytest.importorskip("nvdiffrast")
    v, f = ellipsoid((0, 0, 3), (0.3, 0.8, 0.2), n=24, m=48)
    focal = torch.tensor([256.0], dtype=torch.float64)
    pp = torch.tensor([[128.0, 128.0]], dtype=torch.float64)
    cpu, _ = silhouette(v[None], f, focal, pp, 256, 256, backend="cpu")
    fc = focal.float().cuda().requires_grad_(True)
    gpu, _ = silhouette(v[None].float().cuda(), f.cuda(), fc, pp.float().cuda(), 256, 256,
                        backend="cuda")
    assert float((gpu.cpu() - cpu).abs().sum()) / float(cpu.sum()) < 0.01
    gpu.sum().backward()
    assert float(fc.grad) == pytest.approx(2 * float(cpu.sum()) / 256.0, rel=0.05)


# ----------------------------------------------------------------------- solver
def test_recovers_focal_and_translation(scene):
    v, f, cams, masks = scene
    tz = torch.tensor([t[2] for _, t in cams])
    fit = solve_camera(v[None].float(), f, masks[:2], tz[:2], cfg=FAST)
    assert isinstance(fit, CameraFit) and fit.valid.all()
    for i in range(2):
        fo, t = cams[i]
        assert abs(float(fit.camera.focal[i]) / fo - 1) < 0.01, fit.camera.focal
        err_px = (fit.camera.translation[i, :2] - torch.tensor(t[:2])).abs().max() * fo / t[2]
        assert err_px < 0.5, fit.camera.translation
        assert float(fit.camera.translation[i, 2]) == pytest.approx(t[2])
        assert float(fit.iou[i]) > 0.97
    # the start really was off
    assert (fit.init_camera.focal - torch.tensor([180.0, 120.0])).abs().min() > 10


def test_deterministic_and_batch_independent(scene):
    v, f, cams, masks = scene
    tz = torch.tensor([t[2] for _, t in cams])
    alone = solve_camera(v[None].float(), f, masks[1:2], tz[1:2], cfg=FAST)
    again = solve_camera(v[None].float(), f, masks[1:2], tz[1:2], cfg=FAST)
    batch = solve_camera(v[None].float(), f, masks, tz, cfg=FAST)
    for a, b in ((alone, again), (alone, None)):
        b = batch if b is None else b
        j = 1 if b is batch else 0
        assert torch.equal(a.camera.focal[0], b.camera.focal[j])
        assert torch.equal(a.camera.translation[0], b.camera.translation[j])
        assert torch.equal(a.iou[0], b.iou[j])


def test_opt_tz_stays_near_its_estimate(scene):
    v, f, cams, masks = scene
    fit = solve_camera(v[None].float(), f, masks[:1], torch.tensor([3.3]),
                       cfg=SolveConfig(iterations=20, max_size=160, opt_tz=True))
    tz = float(fit.camera.translation[0, 2])
    assert 2.7 < tz < 3.6 and fit.valid.all()


def test_keypoint_term_and_init(scene):
    v, f, cams, masks = scene
    fo, t = cams[0]
    k3 = v[::40].float()  # any body points serve as "keypoints"
    X = k3.double() + torch.tensor(t, dtype=torch.float64)
    uv = X[:, :2] / X[:, 2:] * fo + torch.tensor([64.0, 80.0], dtype=torch.float64)
    kp = torch.cat([uv.float(), torch.ones(k3.shape[0], 1)], 1)[None]
    fit = solve_camera(v[None].float(), f, masks[:1], torch.tensor([t[2]]), keypoints=kp,
                       keypoints_3d=k3[None], cfg=SolveConfig(iterations=10, max_size=160))
    assert abs(float(fit.camera.focal[0]) / fo - 1) < 0.01
    with pytest.raises(ValueError, match="give both or neither"):
        solve_camera(v[None].float(), f, masks[:1], torch.tensor([3.0]), keypoints=kp)


# ----------------------------------------------------------------------- bad inputs
def test_bad_frames_are_flagged_not_raised(scene):
    v, f, cams, masks = scene
    bad = torch.stack([torch.zeros(160, 128), torch.ones(160, 128), masks[0], masks[0]])
    tz = torch.tensor([3.0, 3.0, float("nan"), -1.0])
    fit = solve_camera(v[None].float(), f, bad, tz, cfg=FAST)
    assert not fit.valid.any()
    assert torch.equal(fit.iou, torch.zeros(4))
    assert torch.equal(fit.camera.focal, fit.init_camera.focal)
    assert torch.equal(fit.camera.translation, fit.init_camera.translation)
    assert torch.isfinite(fit.camera.translation).all()
    text = " ".join(fit.messages)
    for word in ("empty", "whole image", "nan", "-1.0"):
        assert word in text, text


def test_batch_mismatch_and_shapes_raise_clearly(scene):
    v, f, cams, masks = scene
    with pytest.raises(ValueError, match="tz: expected 3 values"):
        solve_camera(v[None].float(), f, masks, torch.tensor([3.0, 3.0]), cfg=FAST)
    with pytest.raises(ValueError, match="does not match the mask batch"):
        solve_camera(v[None].float().expand(2, -1, -1), f, masks, torch.tensor([3.0]), cfg=FAST)
    with pytest.raises(ValueError, match=r"mask: expected a \[B, H, W\]"):
        solve_camera(v[None].float(), f, torch.zeros(1, 1, 4, 4, 4), torch.tensor([3.0]))
    with pytest.raises(ValueError, match="solve_camera_body"):
        solve_camera(v[None].float(), f, masks[:1], torch.tensor([3.0]),
                     cfg=SolveConfig(opt_pose=True))


def test_interrupt_leaves_inputs_untouched(scene):
    v, f, cams, masks = scene
    m0, v0 = masks.clone(), v.clone()

    class Stop(Exception):
        pass

    def progress(step, total):
        if step >= 5:
            raise Stop

    with pytest.raises(Stop):
        solve_camera(v[None].float(), f, masks, torch.tensor([3.0, 2.5, 4.0]), cfg=FAST,
                     progress=progress)
    assert torch.equal(masks, m0) and torch.equal(v, v0)


# ----------------------------------------------------------------------- body model path
def test_body_path_with_pose_refinement(synthetic_body):
    from blade_nodes.body import SMPLXParams

    params = SMPLXParams.zeros(2).replace(
        global_orient=torch.tensor([[math.pi, 0.0, 0.0]] * 2))
    g = torch.Generator().manual_seed(0)
    moved = params.replace(body_pose=0.3 * torch.randn(2, 63, generator=g))
    with torch.no_grad():
        out = synthetic_body(params)
        tgt = synthetic_body(moved)  # the mask shows another pose
    t = torch.tensor([0.05, -0.02, 3.0])
    pel = out.joints[:, 0]
    masks = torch.stack([render_mask(tgt.vertices[i].double(), synthetic_body.faces, 70.0,
                                     t.double(), 64, 64) for i in range(2)])
    tz = pel[:, 2] + t[2]  # pelvis depth
    # init "none" (f = max(H, W)): the start search on the 20k-face blob is slow and is
    # covered by the ellipsoid tests
    cfg = SolveConfig(iterations=6, max_size=64, opt_pose=True, init="none")
    fit = solve_camera_body(synthetic_body, params, masks, tz, cfg=cfg)
    assert fit.params is not None and fit.params.batch_size == 2
    assert fit.valid.all() and (fit.iou > 0.5).all()
    # the start translation converts the pelvis depth to SMPL-X transl
    assert torch.allclose(fit.init_camera.translation[:, 2], tz - pel[:, 2], atol=1e-5)
    assert not torch.equal(fit.params.body_pose, params.body_pose)  # pose was refined
    again = solve_camera_body(synthetic_body, params.index(1), masks[1:], tz[1:], cfg=cfg)
    assert torch.equal(again.camera.focal[0], fit.camera.focal[1])
    assert torch.equal(again.params.body_pose[0], fit.params.body_pose[1])
    with pytest.raises(ValueError, match="smplx: batch 2 does not match the mask batch 3"):
        solve_camera_body(synthetic_body, params, masks[[0, 1, 1]], torch.tensor([3.0]),
                          cfg=cfg)


# ----------------------------------------------------------------------- node
def test_node_solves_and_checks_sizes(synthetic_body):
    import nodes
    from blade_nodes.body import SMPLXParams

    params = SMPLXParams.zeros(1).replace(global_orient=torch.tensor([[math.pi, 0.0, 0.0]]))
    with torch.no_grad():
        out = synthetic_body(params)
    t = torch.tensor([0.02, 0.01, 3.0], dtype=torch.float64)
    mask = render_mask(out.vertices[0].double(), synthetic_body.faces, 60.0, t, 48, 64)[None]
    tz = type("TZ", (), {"tz": out.joints[:, 0, 2] + 3.0})()  # any object with .tz
    image = torch.rand(1, 48, 64, 3)
    node = nodes.BladeSolveCamera()
    kp = [{"people": [{"pose_keypoints_2d": [30.0, 20.0, 1.0] * 18}],
           "canvas_width": 64, "canvas_height": 48}]
    cam, smplx, preview, miou = node.solve(params, synthetic_body, tz, mask, image,
                                           iterations=4, backend="cpu", keypoints=kp)
    assert cam.focal.shape == (1,) and smplx.batch_size == 1
    assert preview.shape == image.shape and 0 < miou <= 1
    # same aspect ratio: resized; another aspect ratio: a clear message
    node.solve(params, synthetic_body, tz, torch.nn.functional.interpolate(
        mask[None], size=(96, 128))[0], image, iterations=0, backend="cpu")
    with pytest.raises(ValueError, match="another aspect ratio"):
        node.solve(params, synthetic_body, tz, torch.zeros(1, 64, 64), image, iterations=0)


def test_numba_and_torch_outline_walks_agree(monkeypatch):
    from blade_nodes.camera import silhouette as sil_mod

    if sil_mod._pairs_numba is None:
        pytest.skip("numba not installed: only the torch walk exists")
    v, f = figure()
    vc = v + torch.tensor([0.05, 0.02, 3.0], dtype=torch.float64)
    args = (vc, f, torch.tensor(300.0, dtype=torch.float64),
            torch.tensor([96.0, 96.0], dtype=torch.float64), 192, 192)
    a = sil_mod.edge_terms(*args)
    monkeypatch.setattr(sil_mod, "_pairs_numba", None)
    b = sil_mod.edge_terms(*args)
    def key(t):
        return sorted((int(i), round(float(x), 9)) for i, x in zip(t.index, t.value))
    assert len(key(a)) > 100 and key(a) == key(b)


def test_fast_face_ids_match_the_rasterizer():
    from blade_nodes.camera.silhouette import _face_ids

    v, f = figure()
    vc = v + torch.tensor([0.05, 0.02, 3.0], dtype=torch.float64)
    fo = torch.tensor(300.0, dtype=torch.float64)
    pp = torch.tensor([96.0, 90.0], dtype=torch.float64)
    fast = _face_ids(vc, f, fo, pp, 180, 192, True)
    ref = rasterize(vc[None], f, fo[None], pp[None], 180, 192, cull_backfaces=True).face_id[0]
    assert torch.equal(fast, ref)


def test_solves_inside_no_grad(scene):
    """The solver optimises whatever the caller's grad mode (a notebook's no_grad)."""
    v, f, cams, masks = scene
    tz = torch.tensor([t[2] for _, t in cams])
    with torch.no_grad():
        fit = solve_camera(v[None].float(), f, masks[:1], tz[:1], cfg=FAST)
    fo, _ = cams[0]
    assert abs(float(fit.camera.focal[0]) / fo - 1) < 0.01
