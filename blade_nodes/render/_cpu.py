"""CPU rasterizer kernels (private; call :func:`blade_nodes.render.rasterize`).

Two implementations of the same rules (see ``raster.py`` for the rules):

- ``raster_numba``: a compiled single-thread z-buffer (numba), one compiled
  call per render (``_frames``): projection, a loop over triangles with exact
  per-pixel edge functions and a 1/z depth test (face culling and the near
  plane decided in the same loop), then a per-pixel resolve pass that computes
  depth and perspective-correct barycentrics from the winning face (a
  visibility buffer; skipped for :func:`~blade_nodes.render.rasterize_face_ids`).
  Chosen by measurement: ``bench/render.py``.
- ``raster_torch``: a vectorised torch fallback used only when numba is not
  installed (20-80x slower than numba; see ``bench/render.py``).

Both are deterministic: equal 1/z (as float32) keeps the lower face id.
"""
from __future__ import annotations

import threading

import numpy as np
import torch
from torch import Tensor

from .. import NUMBA_CACHE

try:  # numba is an optional (but recommended) runtime dependency
    import numba as _numba
except ImportError:  # pragma: no cover - exercised only without numba
    _numba = None

HAVE_NUMBA = _numba is not None
_ZDTYPE = np.float32  # z-buffer of 1/z: float32 halves its memory traffic
_ZCAST = np.float32


# ---------------------------------------------------------------------------
# numba kernel
# ---------------------------------------------------------------------------

_TINY = float(np.nextafter(0.0, 1.0))  # w > 0  <=>  w >= _TINY, exactly (float64)


def _edge_setup(ax, ay, bx, by, ia, ib, s):
    """Canonical edge a->b: returns (ox, oy, dx, dy, thr).

    The edge function ``w(p) = dx * (py - oy) - dy * (px - ox)`` is evaluated
    from the endpoint with the smaller vertex index, so two triangles sharing an
    edge get exactly opposite values (watertight, no double coverage); the sign
    ``s`` (+-1, exact) is folded into (dx, dy) so that w > 0 inside. A pixel
    centre is inside when ``w >= thr`` for all three edges: ``thr = 0`` for a
    "top-left" edge (inward normal towards +u, or +v when the edge is
    horizontal), the smallest positive float otherwise, so of two neighbours
    exactly one owns a centre that lies exactly on their shared edge.
    """
    # selects, not branches (the index order is random across a mesh)
    swap = ia > ib
    ox = bx if swap else ax
    oy = by if swap else ay
    dx = (bx - ax) * s  # from b: (ax - bx) * (-s) == (bx - ax) * s exactly
    dy = (by - ay) * s
    # gradient of w: (-dy) along u, dx along v
    thr = 0.0 if (-dy > 0.0 or (dy == 0.0 and dx > 0.0)) else _TINY
    return ox, oy, dx, dy, thr


def _project_frame(verts, f, cx, cy, near, proj):
    """(u px, v px, 1/z) per vertex of one frame, float64; 1/z is NaN below ``near``.

    verts: [V, 3] camera space (float32 or float64, read as float64); proj: [V, 3] out.
    """
    for n in range(verts.shape[0]):
        z = np.float64(verts[n, 2])
        iz = 1.0 / z
        proj[n, 0] = np.float64(verts[n, 0]) * iz * f + cx
        proj[n, 1] = np.float64(verts[n, 1]) * iz * f + cy
        proj[n, 2] = iz if z >= near else np.nan


def _visibility(proj, faces, cull, zbuf, fid):
    """Pass 1: id of the face with the largest 1/z at each pixel centre, or -1.

    A face is drawn when its screen area is finite and non-zero, its three 1/z
    are finite (no vertex below the near plane) and, with ``cull``, it is
    front-facing (screen-space signed area, y down, < 0).

    proj: [V, 3] float64 (u, v, 1/z); faces: [F, 3] int64 (indices checked by
    the caller); zbuf: [H, W] float32 scratch; fid: [H, W] int64 out.
    """
    height, width = fid.shape
    nf = faces.shape[0]
    for i in range(height):
        for j in range(width):
            zbuf[i, j] = 0.0
            fid[i, j] = -1
    for k in range(nf):
        i0 = faces[k, 0]
        i1 = faces[k, 1]
        i2 = faces[k, 2]
        x0 = proj[i0, 0]
        y0 = proj[i0, 1]
        x1 = proj[i1, 0]
        y1 = proj[i1, 1]
        x2 = proj[i2, 0]
        y2 = proj[i2, 1]
        area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
        # back-facing <=> screen-space signed area (y down) > 0
        if cull and area > 0.0:
            continue
        if not (np.isfinite(area) and area != 0.0):
            continue
        # pixel-centre bounding box (most small triangles contain no centre)
        lo_u = max(min(x0, x1, x2) - 0.5, 0.0)
        hi_u = min(max(x0, x1, x2) - 0.5, width - 1.0)
        jmin = int(np.ceil(lo_u))
        jmax = int(np.floor(hi_u))
        if jmin > jmax:
            continue
        lo_v = max(min(y0, y1, y2) - 0.5, 0.0)
        hi_v = min(max(y0, y1, y2) - 0.5, height - 1.0)
        imin = int(np.ceil(lo_v))
        imax = int(np.floor(hi_v))
        if imin > imax:
            continue
        pz0 = proj[i0, 2]
        pz1 = proj[i1, 2]
        pz2 = proj[i2, 2]
        if not np.isfinite(pz0 + pz1 + pz2):  # a vertex below the near plane
            continue
        s = 1.0 if area > 0.0 else -1.0
        # edge opposite vertex 0 is (1, 2), opposite 1 is (2, 0), opposite 2 is (0, 1)
        ox0, oy0, dx0, dy0, t0 = _edge_setup(x1, y1, x2, y2, i1, i2, s)
        ox1, oy1, dx1, dy1, t1 = _edge_setup(x2, y2, x0, y0, i2, i0, s)
        ox2, oy2, dx2, dy2, t2 = _edge_setup(x0, y0, x1, y1, i0, i1, s)
        inv_area = 1.0 / abs(area)
        iz0 = pz0 * inv_area
        iz1 = pz1 * inv_area
        iz2 = pz2 * inv_area
        for i in range(imin, imax + 1):
            py = i + 0.5
            r0 = dx0 * (py - oy0)
            r1 = dx1 * (py - oy1)
            r2 = dx2 * (py - oy2)
            for j in range(jmin, jmax + 1):
                px = j + 0.5
                w0 = r0 - dy0 * (px - ox0)
                w1 = r1 - dy1 * (px - ox1)
                w2 = r2 - dy2 * (px - ox2)
                # one branch, not three (& does not short-circuit)
                if (w0 >= t0) & (w1 >= t1) & (w2 >= t2):
                    # depth test on 1/z rounded to the z-buffer's dtype (float32):
                    # equal values keep the earlier (lower) face id
                    iz = _ZCAST(w0 * iz0 + w1 * iz1 + w2 * iz2)
                    if iz > zbuf[i, j]:
                        zbuf[i, j] = iz
                        fid[i, j] = k


def _resolve(proj, faces, fid, depth, bary):
    """Pass 2: depth and perspective-correct barycentrics of the winning face.

    proj: [V, 3] float64; fid: [H, W] int64 from pass 1; depth: [H, W] and
    bary: [H, W, 3] outputs (background: 0).
    """
    height, width = fid.shape
    for i in range(height):
        py = i + 0.5
        for j in range(width):
            k = fid[i, j]
            if k < 0:
                depth[i, j] = 0.0
                bary[i, j, 0] = 0.0
                bary[i, j, 1] = 0.0
                bary[i, j, 2] = 0.0
                continue
            px = j + 0.5
            i0 = faces[k, 0]
            i1 = faces[k, 1]
            i2 = faces[k, 2]
            x0 = proj[i0, 0]
            y0 = proj[i0, 1]
            x1 = proj[i1, 0]
            y1 = proj[i1, 1]
            x2 = proj[i2, 0]
            y2 = proj[i2, 1]
            w0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
            w1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
            w2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
            q0 = w0 * proj[i0, 2]
            q1 = w1 * proj[i1, 2]
            q2 = w2 * proj[i2, 2]
            q = q0 + q1 + q2
            # depth = 1 / (sum_i l_i / z_i) with l_i = w_i / sum(w)
            depth[i, j] = (w0 + w1 + w2) / q
            bary[i, j, 0] = q0 / q
            bary[i, j, 1] = q1 / q
            bary[i, j, 2] = q2 / q


def _faces_ok(faces, nv):
    """True when every index of ``faces`` [F, 3] (C-contiguous) lies in [0, nv)."""
    flat = faces.reshape(-1)
    if flat.shape[0] == 0:
        return True
    lo = flat[0]
    hi = lo
    for k in range(flat.shape[0]):  # min / max: vectorised by LLVM, no early exit
        x = flat[k]
        lo = min(lo, x)
        hi = max(hi, x)
    return lo >= 0 and hi < nv


def _frames(verts, focal, principal, faces, near, cull, proj, zbuf, fid, depth, bary):
    """Every frame, start to end: projection, visibility and (when ``depth`` has
    frames) the resolve pass. One compiled call per render.

    verts: [B, V, 3] camera space; focal: [B], principal: [B, 2] float64;
    faces: [F, 3] int64; proj: [V, 3] float64 scratch; zbuf: [H, W] scratch;
    fid: [B, H, W] int64 out; depth: [B, H, W] and bary: [B, H, W, 3] out, or
    0-frame arrays for a face-id-only render.
    Returns False (and draws nothing) when a face index is out of range.
    """
    if not _faces_ok(faces, verts.shape[1]):
        return False
    with_bary = depth.shape[0] > 0
    for b in range(verts.shape[0]):
        _project_frame(verts[b], focal[b], principal[b, 0], principal[b, 1], near, proj)
        _visibility(proj, faces, cull, zbuf, fid[b])
        if with_bary:
            _resolve(proj, faces, fid[b], depth[b], bary[b])
    return True


if HAVE_NUMBA:
    _jit = _numba.njit(cache=NUMBA_CACHE, nogil=True, fastmath=False, error_model="numpy")
    _edge_setup = _numba.njit(cache=NUMBA_CACHE, inline="always")(_edge_setup)
    _project_frame = _jit(_project_frame)
    _visibility = _jit(_visibility)
    _resolve = _jit(_resolve)
    _faces_ok = _jit(_faces_ok)
    _frames = _jit(_frames)


def _project(verts: Tensor, focal: Tensor, principal: Tensor, faces: Tensor, near: float,
             cull: bool) -> tuple[Tensor, Tensor]:
    """float64 (u, v, 1/z) per vertex and the mask of faces to draw.

    Returns:
        proj: [B, V, 3] float64 (u px, v px, 1/z in 1/m); keep: [B, F] bool.
    """
    v = verts.detach().to(torch.float64)
    z = v[..., 2]
    iz = 1.0 / z
    f = focal.detach().to(torch.float64)[:, None]
    pp = principal.detach().to(torch.float64)
    u = v[..., 0] * iz * f + pp[:, None, 0]
    w = v[..., 1] * iz * f + pp[:, None, 1]
    proj = torch.stack([u, w, iz], -1)
    ok = (z >= near) & torch.isfinite(proj).all(-1)
    keep = ok[:, faces].all(-1)
    if cull:
        # back-facing <=> the screen-space signed area (y down) is positive,
        # equivalently dot((v1 - v0) x (v2 - v0), v0) > 0 in camera space.
        p = proj[:, faces]  # [B, F, 3, 3]
        a = ((p[:, :, 1, 0] - p[:, :, 0, 0]) * (p[:, :, 2, 1] - p[:, :, 0, 1])
             - (p[:, :, 1, 1] - p[:, :, 0, 1]) * (p[:, :, 2, 0] - p[:, :, 0, 0]))
        keep &= a < 0
    return proj, keep


_SCRATCH = threading.local()


def _scratch(height: int, width: int, nverts: int):
    """This thread's reused z-buffer ([H, W] float32) and projection ([V, 3] float64).

    Kept between calls (4 B per pixel of the largest image so far, 24 B per
    vertex of the largest mesh) so that a steady-state render neither
    allocates nor page-faults fresh memory for them.
    """
    n = height * width
    if getattr(_SCRATCH, "n", 0) < n:
        _SCRATCH.z = np.empty(n, _ZDTYPE)
        _SCRATCH.n = n
    if getattr(_SCRATCH, "nv", 0) < nverts:
        _SCRATCH.p = np.empty((nverts, 3), np.float64)
        _SCRATCH.nv = nverts
    return _SCRATCH.z[:n].reshape(height, width), _SCRATCH.p[:nverts]


_EMPTY = np.empty((0, 0, 0), np.float32), np.empty((0, 0, 0, 3), np.float32)


def _outputs(b: int, height: int, width: int, dtype) -> tuple:
    """face_id [B, H, W] int64, depth [B, H, W] and bary [B, H, W, 3] ``dtype``: views
    of ONE fresh block.

    One block, not three: glibc lets freed heap memory stay mapped up to twice the
    largest block freed so far, so a steady-state loop of renders reuses one block
    without page faults, while three separate ones (largest: bary) exceed that bound
    and are returned to the OS and faulted in again at every call (measured: +60 %
    at 512² and 1024², bench/render.py). The tensors share the block's lifetime.
    """
    n = b * height * width
    ds = np.dtype(dtype).itemsize
    buf = np.empty(n * (8 + 4 * ds), np.uint8)
    fid = buf[:8 * n].view(np.int64).reshape(b, height, width)
    depth = buf[8 * n:(8 + ds) * n].view(dtype).reshape(b, height, width)
    bary = buf[(8 + ds) * n:].view(dtype).reshape(b, height, width, 3)
    return fid, depth, bary


def _f64(t: Tensor) -> np.ndarray:
    """A small CPU tensor as a C-contiguous float64 array (exact conversion)."""
    if t.dtype in (torch.float32, torch.float64):
        return np.ascontiguousarray(t.detach().numpy(), dtype=np.float64)
    return t.detach().to(torch.float64).contiguous().numpy()


def raster_numba(verts: Tensor, faces: Tensor, focal: Tensor, principal: Tensor, height: int,
                 width: int, cull: bool, near: float, with_bary: bool = True):
    """Fragments tensors from the numba kernels, all on the CPU.

    Args:
        verts: [B, V, 3] float camera space; faces: [F, 3] integer (indices not
            yet checked); focal: [B]; principal: [B, 2].
    Returns:
        (face_id [B, H, W] int64, depth [B, H, W], bary [B, H, W, 3]) with depth
        and bary float64 for float64 vertices, else float32; with ``with_bary``
        False only face_id. None when a face index is outside [0, V).
    """
    v = verts.detach()
    if v.dtype not in (torch.float32, torch.float64):
        v = v.to(torch.float64)  # exact for float16 / bfloat16
    v = v.numpy()
    if not v.flags.c_contiguous:
        v = np.ascontiguousarray(v)
    f = _f64(focal)
    pp = _f64(principal)
    fc = faces.detach()
    if fc.dtype != torch.int64:
        fc = fc.to(torch.int64)
    fc = fc.numpy()
    if not fc.flags.c_contiguous:
        fc = np.ascontiguousarray(fc)
    b = v.shape[0]
    zbuf, proj = _scratch(height, width, v.shape[1])
    if with_bary:
        fid, depth, bary = _outputs(b, height, width,
                                    np.float64 if verts.dtype == torch.float64 else np.float32)
        ok = _frames(v, f, pp, fc, near, cull, proj, zbuf, fid, depth, bary)
        return (torch.from_numpy(fid), torch.from_numpy(depth), torch.from_numpy(bary)) \
            if ok else None
    fid = np.empty((b, height, width), np.int64)
    ok = _frames(v, f, pp, fc, near, cull, proj, zbuf, fid, *_EMPTY)
    fid = torch.from_numpy(fid)
    return fid if ok else None


# ---------------------------------------------------------------------------
# torch fallback (same rules, vectorised over fragments)
# ---------------------------------------------------------------------------

_CHUNK = 1 << 22  # candidate fragments per chunk


def _edge_torch(pa, pb, ia, ib, s, px, py):
    """Canonical edge function (see ``_edge_setup``), vectorised.

    pa, pb: [N, 2] endpoints; ia, ib: [N] vertex ids; s: [N] +-1;
    px, py: [N] pixel centres. Returns (w [N], topleft [N]).
    """
    swap = ia > ib
    o = torch.where(swap[:, None], pb, pa)
    d = torch.where(swap[:, None], pa - pb, pb - pa)
    sg = torch.where(swap, -s, s)
    w = sg * (d[:, 0] * (py - o[:, 1]) - d[:, 1] * (px - o[:, 0]))
    gx = -d[:, 1] * sg
    gy = d[:, 0] * sg
    tl = (gx > 0) | ((gx == 0) & (gy > 0))
    return w, tl


def raster_torch(verts, faces, focal, principal, height, width, cull, near):
    """Fragments tensors (face_id int64, depth, bary) with pure torch ops."""
    proj, keep = _project(verts.cpu(), focal.cpu(), principal.cpu(), faces.cpu(), near, cull)
    faces = faces.cpu().to(torch.int64)
    nb = proj.shape[0]
    out_dtype = torch.float64 if verts.dtype == torch.float64 else torch.float32
    fid_all = torch.full((nb, height, width), -1, dtype=torch.int64)
    depth_all = torch.zeros((nb, height, width), dtype=out_dtype)
    bary_all = torch.zeros((nb, height, width, 3), dtype=out_dtype)
    for b in range(nb):
        p = proj[b][faces]  # [F, 3, 3]
        area = ((p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1])
                - (p[:, 1, 1] - p[:, 0, 1]) * (p[:, 2, 0] - p[:, 0, 0]))
        lo_u = (p[..., 0].amin(1) - 0.5).clamp_min(0).ceil()
        hi_u = (p[..., 0].amax(1) - 0.5).clamp_max(width - 1).floor()
        lo_v = (p[..., 1].amin(1) - 0.5).clamp_min(0).ceil()
        hi_v = (p[..., 1].amax(1) - 0.5).clamp_max(height - 1).floor()
        ok = keep[b] & (area != 0) & torch.isfinite(area) & (lo_u <= hi_u) & (lo_v <= hi_v)
        ks = ok.nonzero().squeeze(1)
        nu = (hi_u[ks] - lo_u[ks] + 1).long()
        nv = (hi_v[ks] - lo_v[ks] + 1).long()
        counts = nu * nv
        # best (1/z, -face) per pixel as one int64 key; 1/z > 0 so its float bits sort
        best = torch.full((height * width,), torch.iinfo(torch.int64).min, dtype=torch.int64)
        starts = torch.cumsum(counts, 0) - counts
        total = int(counts.sum())
        c0 = 0
        while c0 < total:
            # faces whose fragments start in [c0, c0 + CHUNK) (at least one face)
            sel = ((starts >= c0) & (starts < c0 + _CHUNK)).nonzero().squeeze(1)
            fk = ks[sel]
            cnt = counts[sel]
            c0 = int(starts[sel[-1]] + cnt[-1])
            rep = torch.repeat_interleave(torch.arange(len(fk)), cnt)
            local = torch.arange(int(cnt.sum())) - torch.repeat_interleave(
                torch.cumsum(cnt, 0) - cnt, cnt)
            k = fk[rep]
            nuk = nu[sel][rep]
            jj = lo_u[k].long() + local % nuk
            ii = lo_v[k].long() + local // nuk
            px = jj.to(torch.float64) + 0.5
            py = ii.to(torch.float64) + 0.5
            pk = p[k]
            fv = faces[k]
            s = torch.where(area[k] > 0, 1.0, -1.0).to(torch.float64)
            inside = torch.ones_like(px, dtype=torch.bool)
            ws = []
            for a_, b_ in ((1, 2), (2, 0), (0, 1)):
                w, tl = _edge_torch(pk[:, a_, :2], pk[:, b_, :2], fv[:, a_], fv[:, b_], s, px, py)
                inside &= (w > 0) | ((w == 0) & tl)
                ws.append(w)
            iz = (ws[0] * pk[:, 0, 2] + ws[1] * pk[:, 1, 2] + ws[2] * pk[:, 2, 2]) / area[k].abs()
            iz32 = iz[inside].to(torch.float32)
            pix = (ii * width + jj)[inside]
            key = (iz32.view(torch.int32).to(torch.int64) << 32) | (0x7FFFFFFF - k[inside])
            best.scatter_reduce_(0, pix, key, reduce="amax")
        hit = best != torch.iinfo(torch.int64).min
        fid = torch.full((height * width,), -1, dtype=torch.int64)
        fid[hit] = 0x7FFFFFFF - (best[hit] & 0xFFFFFFFF)
        fid_all[b] = fid.view(height, width)
        # resolve
        idx = hit.nonzero().squeeze(1)
        k = fid[idx]
        py = (idx // width).to(torch.float64) + 0.5
        px = (idx % width).to(torch.float64) + 0.5
        pk = p[k]
        x, y, izv = pk[..., 0], pk[..., 1], pk[..., 2]
        w0 = (x[:, 2] - x[:, 1]) * (py - y[:, 1]) - (y[:, 2] - y[:, 1]) * (px - x[:, 1])
        w1 = (x[:, 0] - x[:, 2]) * (py - y[:, 2]) - (y[:, 0] - y[:, 2]) * (px - x[:, 2])
        w2 = (x[:, 1] - x[:, 0]) * (py - y[:, 0]) - (y[:, 1] - y[:, 0]) * (px - x[:, 0])
        q = torch.stack([w0 * izv[:, 0], w1 * izv[:, 1], w2 * izv[:, 2]], -1)
        qs = q.sum(-1)
        depth_all[b].view(-1)[idx] = ((w0 + w1 + w2) / qs).to(out_dtype)
        bary_all[b].view(-1, 3)[idx] = (q / qs[:, None]).to(out_dtype)
    return fid_all, depth_all, bary_all
