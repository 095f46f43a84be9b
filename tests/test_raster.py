"""blade_nodes.render.raster: convention, culling, near plane, interpolation,
parity with a slow pure-numpy reference, determinism, and the nvdiffrast path."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blade_nodes.camera.convention import project_points
from blade_nodes.render import Fragments, interpolate, rasterize, rasterize_face_ids
from blade_nodes.render import _cpu, _nvdiffrast
from blade_nodes.render.raster import resolve_backend

CPU_BACKENDS = ["numba", "torch"] if _cpu.HAVE_NUMBA else ["torch"]


# ---------------------------------------------------------------------------
# meshes
# ---------------------------------------------------------------------------

def uv_sphere(n_lat=10, n_lon=16, radius=0.3):
    """Closed UV sphere, outward (counter-clockwise) winding. [V, 3] f64, [F, 3] i64."""
    th = torch.linspace(0, math.pi, n_lat + 1, dtype=torch.float64)[1:-1]
    ph = torch.linspace(0, 2 * math.pi, n_lon + 1, dtype=torch.float64)[:-1]
    t, p = torch.meshgrid(th, ph, indexing="ij")
    ring = torch.stack([torch.sin(t) * torch.cos(p), -torch.cos(t), torch.sin(t) * torch.sin(p)],
                       -1).reshape(-1, 3)
    verts = torch.cat([torch.tensor([[0, -1.0, 0]], dtype=torch.float64), ring,
                       torch.tensor([[0, 1.0, 0]], dtype=torch.float64)]) * radius
    idx = lambda i, j: 1 + i * n_lon + (j % n_lon)  # noqa: E731
    last = len(verts) - 1
    faces = []
    for j in range(n_lon):
        faces += [(0, idx(0, j + 1), idx(0, j)), (last, idx(n_lat - 2, j), idx(n_lat - 2, j + 1))]
    for i in range(n_lat - 2):
        for j in range(n_lon):
            a, b, c, d = idx(i, j), idx(i, j + 1), idx(i + 1, j), idx(i + 1, j + 1)
            faces += [(a, b, c), (b, d, c)]
    faces = torch.tensor(faces)
    v = verts[faces]
    n = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    flip = (n * v.mean(1)).sum(-1) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return verts, faces


def quad(x0, y0, x1, y1, z):
    """Fronto-parallel rectangle at depth z facing the camera (front-facing)."""
    v = torch.tensor([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=torch.float64)
    # image-CCW (y down): (x0,y0) -> (x0,y1) -> (x1,y1) is counter-clockwise on screen
    f = torch.tensor([[0, 3, 2], [0, 2, 1]])
    return v, f


def cam(b, f=60.0, h=48, w=64):
    return torch.full((b,), f, dtype=torch.float64), torch.tensor([[w / 2, h / 2]] * b,
                                                                   dtype=torch.float64)


# ---------------------------------------------------------------------------
# slow reference (pure numpy, one face at a time, same rules as raster.py)
# ---------------------------------------------------------------------------

def slow_raster(verts, faces, focal, pp, h, w, cull=False, near=1e-3):
    """Per-pixel-centre coverage with canonical edges and the top-left tie rule;
    nearest 1/z wins, ties keep the lower face id. Returns (face_id, depth, count)."""
    V = verts.numpy().astype(np.float64)
    F = faces.numpy()
    u = V[:, 0] / V[:, 2] * focal + pp[0]
    v = V[:, 1] / V[:, 2] * focal + pp[1]
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    best = np.zeros((h, w))
    fid = -np.ones((h, w), np.int64)
    count = np.zeros((h, w), np.int64)
    for k, (a, b, c) in enumerate(F):
        if min(V[a, 2], V[b, 2], V[c, 2]) < near:
            continue
        area = (u[b] - u[a]) * (v[c] - v[a]) - (v[b] - v[a]) * (u[c] - u[a])
        if area == 0 or (cull and area > 0):
            continue
        s = np.sign(area)
        inside = np.ones((h, w), bool)
        ws = []
        for p, q in ((b, c), (c, a), (a, b)):  # edge opposite a, b, c
            o = p if p < q else q                 # canonical origin: smaller vertex id
            dx, dy = (u[q] - u[p]) * s, (v[q] - v[p]) * s
            e = dx * (ii - v[o]) - dy * (jj - u[o])
            topleft = (-dy > 0) or (-dy == 0 and dx > 0)
            inside &= (e > 0) | ((e == 0) & topleft)
            ws.append(e)
        iz = (ws[0] / V[a, 2] + ws[1] / V[b, 2] + ws[2] / V[c, 2]) / abs(area)
        count += inside
        win = inside & (iz > best)
        best[win] = iz[win]
        fid[win] = k
    depth = np.where(fid >= 0, 1.0 / np.where(best > 0, best, 1.0), 0.0)
    return fid, depth, count


# ---------------------------------------------------------------------------
# convention
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_vertex_lands_at_projection_and_depth_is_z(backend):
    """A corner at (X, Y, Z) lands within 0.5 px of (f X/Z + cx, f Y/Z + cy); depth = Z."""
    gen = torch.Generator().manual_seed(0)
    h, w = 48, 64
    for _ in range(10):
        z = 1.0 + 4.0 * torch.rand((), generator=gen, dtype=torch.float64).item()
        f = 40.0 + 80.0 * torch.rand((), generator=gen, dtype=torch.float64).item()
        pp = torch.tensor([[w / 2 + 3 * torch.randn((), generator=gen).item(),
                            h / 2 + 3 * torch.randn((), generator=gen).item()]], dtype=torch.float64)
        # corner P inside the image, the quad extends right and down off-screen
        uv = torch.tensor([5.0, 5.0]) + torch.rand(2, generator=gen) * torch.tensor([w - 20.0, h - 20.0])
        X = (uv[0].item() - pp[0, 0].item()) * z / f
        Y = (uv[1].item() - pp[0, 1].item()) * z / f
        v, fc = quad(X, Y, X + 10 * z, Y + 10 * z, z)
        fr = rasterize(v[None], fc, torch.tensor([f], dtype=torch.float64), pp, h, w,
                       backend=backend)
        ys, xs = torch.nonzero(fr.face_id[0] >= 0, as_tuple=True)
        u_true, v_true = project_points(torch.tensor([[[X, Y, z]]]), torch.tensor([f]), pp)[0, 0]
        # the covered region starts at the first pixel centre past the corner, so the
        # continuous edge between that column and the previous one is within 0.5 px
        assert abs(xs.min().item() - u_true.item()) <= 0.5
        assert abs(ys.min().item() - v_true.item()) <= 0.5
        # exactly the pixel centres right of / below the corner are covered
        assert xs.min().item() + 0.5 >= u_true.item() > xs.min().item() - 0.5
        assert (fr.depth[0][fr.face_id[0] >= 0] - z).abs().max().item() < 1e-4


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_depth_on_slanted_plane_is_camera_z_per_pixel(backend):
    """Depth is camera-space Z of the plane point seen through each pixel centre."""
    h, w = 40, 50
    f = torch.tensor([45.0], dtype=torch.float64)
    pp = torch.tensor([[23.0, 21.0]], dtype=torch.float64)
    # plane Z = 2 + 0.05 X - 0.03 Y, a large quad covering the view
    xy = torch.tensor([[-3, -3], [3, -3], [3, 3], [-3, 3]], dtype=torch.float64)  # metres
    z = 2 + 0.05 * xy[:, 0] - 0.03 * xy[:, 1]
    v = torch.cat([xy, z[:, None]], 1)
    fr = rasterize(v[None].float(), torch.tensor([[0, 3, 2], [0, 2, 1]]), f, pp, h, w,
                   backend=backend)
    jj, ii = torch.meshgrid(torch.arange(w) + 0.5, torch.arange(h) + 0.5, indexing="xy")
    xn = (jj - pp[0, 0]) / f
    yn = (ii - pp[0, 1]) / f
    z_true = 2 / (1 - 0.05 * xn + 0.03 * yn)  # Z = 2 + 0.05 Z xn - 0.03 Z yn
    m = fr.face_id[0] >= 0
    assert m.float().mean() > 0.9
    assert fr.depth.dtype == torch.float32
    assert (fr.depth[0][m].double() - z_true[m]).abs().max() < 1e-4


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batch_of_four_cameras_each_aligned(backend):
    verts, faces = uv_sphere(8, 12, 0.25)
    b, h, w = 4, 40, 48
    T = torch.tensor([[0.1, -0.05, 2.0], [-0.2, 0.1, 3.0], [0.0, 0.2, 2.5], [0.3, 0.0, 4.0]],
                     dtype=torch.float64)
    focal = torch.tensor([50.0, 70.0, 60.0, 90.0], dtype=torch.float64)
    pp = torch.tensor([[24, 20], [20, 22], [26, 18], [25, 21]], dtype=torch.float64)
    vc = verts[None] + T[:, None]
    fr = rasterize(vc, faces, focal, pp, h, w, backend=backend)
    for i in range(b):
        one = rasterize(vc[i:i + 1], faces, focal[i:i + 1], pp[i:i + 1], h, w, backend=backend)
        assert torch.equal(one.face_id[0], fr.face_id[i])
        ref_fid, ref_depth, _ = slow_raster(vc[i], faces, focal[i].item(), pp[i].tolist(), h, w)
        assert np.array_equal(fr.face_id[i].numpy(), ref_fid)
        assert np.abs(fr.depth[i].numpy() - ref_depth).max() < 1e-4
        # the sphere centre projects to the silhouette's centre in each frame
        uv = project_points(T[i:i + 1, None], focal[i:i + 1], pp[i:i + 1])[0, 0]
        ys, xs = torch.nonzero(fr.face_id[i] >= 0, as_tuple=True)
        assert abs((xs.double() + 0.5).mean() - uv[0]) < 0.5
        assert abs((ys.double() + 0.5).mean() - uv[1]) < 0.5


# ---------------------------------------------------------------------------
# culling, near plane, coverage rule
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backface_culling(backend):
    v, fc = quad(-0.5, -0.5, 0.5, 0.5, 2.0)
    f, pp = cam(1)
    front = rasterize(v[None], fc, f, pp, 48, 64, cull_backfaces=True, backend=backend)
    back = rasterize(v[None], fc[:, [0, 2, 1]], f, pp, 48, 64, cull_backfaces=True,
                     backend=backend)
    back_nocull = rasterize(v[None], fc[:, [0, 2, 1]], f, pp, 48, 64, backend=backend)
    assert front.mask.sum() > 100
    assert back.mask.sum() == 0
    assert torch.equal(back_nocull.mask, front.mask)
    # a closed sphere looks the same with or without culling
    sv, sf = uv_sphere()
    vc = (sv + torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64))[None]
    a = rasterize(vc, sf, f, pp, 48, 64, cull_backfaces=True, backend=backend)
    b = rasterize(vc, sf, f, pp, 48, 64, backend=backend)
    assert torch.equal(a.face_id, b.face_id)
    # culled faces are never visible: every visible face points at the camera
    tv = vc[0][sf[a.face_id[a.mask]]]
    n = torch.linalg.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0])
    assert ((n * tv[:, 0]).sum(-1) < 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_near_plane_drops_straddling_faces(backend):
    f, pp = cam(1)
    v = torch.tensor([[-1, -1, 2.0], [1, -1, 2.0], [0, 1, 2.0],     # face 0: all in front
                      [-1, -1, 1.0], [1, -1, 1.0], [0, 1, -0.5]],   # face 1: one vertex behind
                     dtype=torch.float64)
    fc = torch.tensor([[0, 1, 2], [3, 4, 5]])
    fr = rasterize(v[None], fc, f, pp, 48, 64, backend=backend)
    assert set(fr.face_id.unique().tolist()) == {-1, 0}
    fr = rasterize(v[None], fc, f, pp, 48, 64, near=2.5, backend=backend)
    assert fr.mask.sum() == 0
    assert (fr.depth == 0).all() and (fr.bary == 0).all()


def test_top_left_rule_no_cracks_no_overlap():
    """A grid with vertices exactly on pixel centres: every centre in the grid is
    owned by exactly one triangle (slow reference) and the kernel agrees."""
    n, h, w = 6, 24, 24
    f, pp = torch.tensor([10.0], dtype=torch.float64), torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    z = 1.0
    g = torch.arange(n + 1, dtype=torch.float64) * 3 + 3.5  # pixel centres
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    verts = torch.stack([xx / 10, yy / 10, torch.full_like(xx, z)], -1).reshape(-1, 3)
    faces = []
    for i in range(n):
        for j in range(n):
            a, b, c, d = i * (n + 1) + j, i * (n + 1) + j + 1, (i + 1) * (n + 1) + j, (i + 1) * (n + 1) + j + 1
            faces += [(a, c, b), (b, c, d)] if (i + j) % 2 else [(a, c, d), (a, d, b)]
    faces = torch.tensor(faces)
    fid, _, count = slow_raster(verts, faces, 10.0, [0.0, 0.0], h, w)
    ii, jj = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    interior = (ii > 3.5) & (ii < 21.5) & (jj > 3.5) & (jj < 21.5)
    assert (count[interior] == 1).all()
    assert count.max() == 1
    for be in CPU_BACKENDS:
        fr = rasterize(verts[None], faces, f, pp, h, w, backend=be)
        assert np.array_equal(fr.face_id[0].numpy(), fid), be


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_parity_with_slow_reference_random_mesh(backend):
    gen = torch.Generator().manual_seed(3)
    verts, faces = uv_sphere(9, 14, 0.3)
    verts = verts * (1 + 0.2 * torch.rand(len(verts), 1, generator=gen, dtype=torch.float64))
    # a second, intersecting sphere in front to exercise occlusion
    v2 = verts * 0.6 + torch.tensor([0.15, 0.1, -0.2], dtype=torch.float64)
    V = torch.cat([verts, v2]) + torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    Fc = torch.cat([faces, faces + len(verts)])
    f, pp = torch.tensor([55.0], dtype=torch.float64), torch.tensor([[31.0, 25.5]], dtype=torch.float64)
    for cull in (False, True):
        fr = rasterize(V[None], Fc, f, pp, 48, 64, cull_backfaces=cull, backend=backend)
        fid, depth, _ = slow_raster(V, Fc, 55.0, [31.0, 25.5], 48, 64, cull=cull)
        assert np.array_equal(fr.face_id[0].numpy(), fid)
        assert np.abs(fr.depth[0].numpy() - depth).max() < 1e-5


# ---------------------------------------------------------------------------
# interpolation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_interpolate_reproduces_depth_and_linear_attribute(backend):
    verts, faces = uv_sphere(12, 18, 0.4)
    vc = (verts + torch.tensor([0.1, -0.05, 2.0], dtype=torch.float64))[None]
    f, pp = torch.tensor([70.0], dtype=torch.float64), torch.tensor([[30.0, 26.0]], dtype=torch.float64)
    fr = rasterize(vc, faces, f, pp, 52, 60, backend=backend)
    m = fr.mask[0]
    assert (fr.bary[0][m].sum(-1) - 1).abs().max() < 1e-6
    assert (fr.bary[0][m] >= -1e-6).all() and (fr.bary[~fr.mask] == 0).all()
    # depth from interpolating Z equals the rendered depth
    z = interpolate(vc[..., 2:3], faces, fr)[..., 0]
    assert (z - fr.depth).abs().max() < 1e-5
    # a linear function of camera-space position, read at the surface point seen
    # through the pixel centre, X = Z ((u - cx) / f, (v - cy) / f, 1)
    coef = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)
    attr = (vc @ coef)[..., None] + 0.25
    got = interpolate(attr, faces, fr)[0, ..., 0]
    jj, ii = torch.meshgrid(torch.arange(60) + 0.5, torch.arange(52) + 0.5, indexing="xy")
    d = fr.depth[0].double()
    X = torch.stack([d * (jj - 30.0) / 70.0, d * (ii - 26.0) / 70.0, d], -1)
    want = X @ coef + 0.25
    assert (got[m] - want[m]).abs().max() < 1e-5
    assert (got[~m] == 0).all()
    # differentiable with respect to the attribute
    a = attr.clone().requires_grad_(True)
    interpolate(a, faces, fr).sum().backward()
    assert a.grad.abs().sum() > 0


# ---------------------------------------------------------------------------
# determinism, dtypes, errors
# ---------------------------------------------------------------------------

def test_deterministic_and_backends_agree():
    verts, faces = uv_sphere(16, 24, 0.35)
    vc = (verts + torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64))[None].float()
    f, pp = torch.tensor([80.0]), torch.tensor([[32.0, 32.0]])
    runs = [rasterize(vc, faces, f, pp, 64, 64, backend=be) for be in CPU_BACKENDS for _ in range(2)]
    for r in runs[1:]:
        assert torch.equal(r.face_id, runs[0].face_id)
        assert (r.depth - runs[0].depth).abs().max() < 1e-6
    assert torch.equal(runs[0].face_id, rasterize(vc, faces, f, pp, 64, 64).face_id)
    assert torch.equal(runs[0].depth, runs[1].depth) and torch.equal(runs[0].bary, runs[1].bary)
    assert runs[0].face_id.dtype == torch.int64 and runs[0].depth.dtype == torch.float32
    d64 = rasterize(vc.double(), faces, f, pp, 64, 64)
    assert d64.depth.dtype == torch.float64 and torch.equal(d64.face_id, runs[0].face_id)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_face_ids_entry_point_equals_rasterize(backend):
    """rasterize_face_ids == rasterize(...).face_id bit for bit: batch, culling, near
    plane (faces straddling it), float32/float64 vertices, int32 faces."""
    gen = torch.Generator().manual_seed(5)
    verts, faces = uv_sphere(11, 17, 0.4)
    vc = torch.stack([verts + torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64),
                      verts * 1.3 + torch.tensor([0.2, -0.1, 0.45], dtype=torch.float64),
                      verts + 0.02 * torch.randn(verts.shape, generator=gen, dtype=torch.float64)
                      + torch.tensor([-0.1, 0.0, 1.5], dtype=torch.float64)])
    f, pp = torch.tensor([60.0, 45.0, 70.0]), torch.tensor([[32.0, 24.0], [30.5, 20.0], [33.0, 26.0]])
    for dt in (torch.float64, torch.float32):
        for cull in (False, True):
            for near in (1e-3, 0.3):
                fr = rasterize(vc.to(dt), faces, f, pp, 48, 64, cull_backfaces=cull, near=near,
                               backend=backend)
                ids = rasterize_face_ids(vc.to(dt), faces.int(), f, pp, 48, 64,
                                         cull_backfaces=cull, near=near, backend=backend)
                assert ids.dtype == torch.int64 and ids.shape == (3, 48, 64)
                assert torch.equal(ids, fr.face_id)
                assert (fr.depth[ids < 0] == 0).all() and (fr.depth[ids >= 0] > 0).all()
    # the near plane dropped faces of the second frame (it straddles z = 0.3)
    assert not torch.equal(rasterize_face_ids(vc, faces, f, pp, 48, 64, near=0.3, backend=backend),
                           rasterize_face_ids(vc, faces, f, pp, 48, 64, backend=backend))
    with pytest.raises(ValueError, match=r"faces: expected vertex indices in \[0, "):
        rasterize_face_ids(vc, faces - 1, f, pp, 48, 64, backend=backend)
    # no gradient, and results held across calls stay intact
    vg = vc.clone().requires_grad_(True)
    fr = rasterize(vg, faces, f, pp, 48, 64, backend=backend)
    keep = [fr.face_id.clone(), fr.depth.clone(), fr.bary.clone()]
    assert not (fr.depth.requires_grad or fr.bary.requires_grad)
    rasterize(vg * 1.1, faces, f, pp, 48, 64, backend=backend)
    assert all(torch.equal(a, b) for a, b in zip(keep, (fr.face_id, fr.depth, fr.bary)))


def test_fragments_frozen_and_errors():
    v, fc = quad(-0.5, -0.5, 0.5, 0.5, 2.0)
    f, pp = cam(1)
    fr = rasterize(v[None], fc, f, pp, 48, 64)
    assert isinstance(fr, Fragments)
    with pytest.raises(Exception):
        fr.depth = fr.depth  # frozen
    with pytest.raises(ValueError, match="verts_cam"):
        rasterize(v, fc, f, pp, 48, 64)
    for be in CPU_BACKENDS:  # numba checks the index range inside its kernel
        with pytest.raises(ValueError, match=r"faces: expected vertex indices in \[0, 4\)"):
            rasterize(v[None], fc + 10, f, pp, 48, 64, backend=be)
        with pytest.raises(ValueError, match=r"got \[-1, 2\]"):
            rasterize(v[None], fc - 1, f, pp, 48, 64, backend=be)
    with pytest.raises(ValueError, match="focal"):
        rasterize(v[None], fc, f.repeat(2), pp, 48, 64)
    with pytest.raises(ValueError, match="backend"):
        rasterize(v[None], fc, f, pp, 48, 64, backend="opengl")
    with pytest.raises(ValueError, match="CUDA"):
        rasterize(v[None], fc, f, pp, 48, 64, backend="nvdiffrast")
    assert resolve_backend("auto", torch.device("cpu")) in ("numba", "torch")


# ---------------------------------------------------------------------------
# nvdiffrast path
# ---------------------------------------------------------------------------

def test_opencv_to_clip_pixel_mapping():
    """nvdiffrast puts the centre of output column c, row r at NDC
    (2 (c + 0.5) / W - 1, 2 (r + 0.5) / H - 1); our projection must send a point
    with pixel coordinates (u, v) to NDC (2 u / W - 1, 2 v / H - 1), i.e. row = v - 0.5."""
    gen = torch.Generator().manual_seed(4)
    p = torch.randn(2, 20, 3, generator=gen, dtype=torch.float64) * 0.3 + torch.tensor([0, 0, 3.0])
    f = torch.tensor([500.0, 700.0], dtype=torch.float64)
    pp = torch.tensor([[250.0, 190.0], [240.0, 210.0]], dtype=torch.float64)
    h, w = 400, 480
    clip = _nvdiffrast.opencv_to_clip(p, f, pp, h, w, torch.tensor([1.0, 1.0]),
                                      torch.tensor([10.0, 10.0]))
    ndc = clip[..., :3] / clip[..., 3:]
    uv = project_points(p, f, pp)
    assert torch.allclose((ndc[..., 0] + 1) * w / 2, uv[..., 0], atol=1e-9)
    assert torch.allclose((ndc[..., 1] + 1) * h / 2, uv[..., 1], atol=1e-9)
    assert torch.allclose(clip[..., 3], p[..., 2])
    assert (ndc[..., 2].abs() < 1).all()


class _FakeDr:
    """nvdiffrast.torch.rasterize emulated on the CPU, by its documented conventions:
    clip-space input, row r at y_ndc = 2 (r + 0.5) / H - 1, output (u, v, z/w, id + 1)
    with the point = u p0 + v p1 + (1 - u - v) p2. Checks our conversions only."""

    @staticmethod
    def rasterize(ctx, pos, tri, resolution, grad_db=False):
        h, w = resolution
        x, y, z, ww = pos.double().unbind(-1)
        # pixel coordinates as nvdiffrast sees them (row index grows with y_ndc)
        px = (x / ww + 1) * w / 2
        py = (y / ww + 1) * h / 2
        cam_pts = torch.stack([px * ww, py * ww, ww], -1)  # f = 1, c = 0 pinhole
        b = pos.shape[0]
        fr = rasterize(cam_pts, tri.long(), torch.ones(b, dtype=torch.float64),
                       torch.zeros(b, 2, dtype=torch.float64), h, w, backend="cpu")
        zw = interpolate((z / ww)[..., None], tri.long(), fr)[..., 0]
        out = torch.stack([fr.bary[..., 0].double(), fr.bary[..., 1].double(), zw,
                           (fr.face_id + 1).double()], -1).float()
        return out, None


def test_nvdiffrast_conversion_with_emulated_rasterizer(monkeypatch):
    monkeypatch.setattr(_nvdiffrast, "dr", _FakeDr)
    monkeypatch.setattr(_nvdiffrast, "_context", lambda device: None)
    verts, faces = uv_sphere(10, 16, 0.3)
    T = torch.tensor([[0.05, 0.0, 2.0], [-0.1, 0.1, 2.5], [0.0, -0.1, 3.0], [0.1, 0.05, 2.2]],
                     dtype=torch.float64)
    vc = (verts[None] + T[:, None]).float()
    f = torch.tensor([60.0, 70.0, 90.0, 55.0])
    pp = torch.tensor([[32.0, 24.0], [30.0, 26.0], [34.0, 22.0], [31.0, 25.0]])
    for cull in (False, True):
        fid, depth, bary = _nvdiffrast.raster(vc, faces, f, pp, 48, 64, cull, 1e-3)
        ref = rasterize(vc, faces, f, pp, 48, 64, cull_backfaces=cull, backend="cpu")
        assert (fid == ref.face_id).float().mean() >= 0.995
        same = (fid == ref.face_id) & (fid >= 0)
        assert (depth - ref.depth)[same].abs().max() < 1e-4
        assert (bary - ref.bary)[same].abs().max() < 1e-3
        assert (depth[fid < 0] == 0).all() and (bary[fid < 0] == 0).all()


@pytest.mark.skipif(not _nvdiffrast.available(),
                    reason="needs nvdiffrast and a CUDA device (pip install 'blade-nodes[gpu]' "
                           "on a machine with an NVIDIA GPU)")
def test_nvdiffrast_matches_cpu_on_gpu():
    verts, faces = uv_sphere(40, 60, 0.4)
    T = torch.tensor([[0.05, 0.0, 2.0], [-0.1, 0.1, 2.5], [0.0, -0.1, 3.0], [0.1, 0.05, 2.2]],
                     dtype=torch.float64)
    vc = (verts[None] + T[:, None]).float()
    f = torch.tensor([300.0, 350.0, 420.0, 280.0])
    pp = torch.tensor([[128.0, 128.0], [120.0, 130.0], [136.0, 124.0], [126.0, 131.0]])
    for cull in (False, True):
        gpu = rasterize(vc.cuda(), faces.cuda(), f.cuda(), pp.cuda(), 256, 256,
                        cull_backfaces=cull, backend="auto")
        cpu = rasterize(vc, faces, f, pp, 256, 256, cull_backfaces=cull, backend="cpu")
        assert gpu.face_id.is_cuda
        fid = gpu.face_id.cpu()
        assert (fid == cpu.face_id).float().mean() >= 0.995
        same = (fid == cpu.face_id) & (fid >= 0)
        assert (gpu.depth.cpu() - cpu.depth)[same].abs().max() < 1e-4
        # each frame aligned with its own camera
        for i in range(4):
            uv = project_points(T[i:i + 1, None].float(), f[i:i + 1], pp[i:i + 1])[0, 0]
            ys, xs = torch.nonzero(fid[i] >= 0, as_tuple=True)
            assert abs((xs.float() + 0.5).mean() - uv[0]) < 0.5
            assert abs((ys.float() + 0.5).mean() - uv[1]) < 0.5
