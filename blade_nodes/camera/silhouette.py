"""Differentiable silhouettes of triangle meshes seen by OpenCV pinhole cameras.

Two back-ends with the same meaning (a pixel's value is the fraction of it the mesh
covers, with gradients only where coverage changes, i.e. at the outline):

- ``"cpu"``: an exact edge-based method (chosen by measurement, ../shared/docs/
  perf_anchors.md §1b and §4, where it was the fastest unbiased-enough option; a
  SoftRas-style blur is biased and is NOT used). A hard z-buffer raster (the visibility
  pass of :mod:`blade_nodes.render`'s CPU kernel, back faces culled, no gradient) gives
  the covered pixels. For
  every horizontal or vertical pair of neighbouring pixels of which exactly one is
  covered, the segment between the two pixel centres is walked across the mesh, from
  the triangle seen at the covered pixel through adjacent front-facing triangles,
  until it leaves the mesh through a *contour* edge (a boundary edge, or one whose
  neighbour faces away). The crossing parameter ``s`` in (0, 1) of that edge (the
  distance from the covered centre to the contour, in pixel spacings) is
  differentiable in the edge's projected end points; the 1-D box-filter coverage
  correction ``s - 1/2`` is added to the uncovered pixel (``s > 1/2``) or to the
  covered one (``s < 1/2``). Like nvdiffrast's ``antialias``, a horizontal pair only
  takes edges steeper than 45 degrees and a vertical pair the others, so each outline
  crossing counts once and the gradient of the covered area is the edge's length.
  When the walk finds no contour (a triangle soup, or more than ``max_walk`` small
  triangles between the two centres) the exit edge of the first triangle is used.
- ``"cuda"``: nvdiffrast ``rasterize`` + ``antialias`` (the same analytic-coverage
  idea, on the GPU).

Conventions are :mod:`blade_nodes.camera.convention`'s: OpenCV axes, pixels, pixel
``(i, j)`` centred at ``(j + 0.5, i + 0.5)``, rows top-down.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import NUMBA_CACHE

__all__ = ["silhouette", "edge_silhouette", "edge_terms", "EdgeTerms", "face_adjacency",
           "BACKENDS"]

BACKENDS = ("auto", "cpu", "cuda")

_ADJ_CACHE: dict[str, Tensor] = {}


def face_adjacency(faces: Tensor) -> Tensor:
    """Neighbour of each face across each of its edges.

    Args:
        faces: [F, 3] int64 vertex indices.
    Returns:
        [F, 3] int64: ``adj[t, k]`` is a face sharing the edge
        ``(faces[t, k], faces[t, (k + 1) % 3])`` with ``t``, or -1 when none does
        (an open boundary). Non-manifold edges get one of their other faces.
        Cached per distinct face array.
    """
    f = faces.detach().to("cpu", torch.int64).contiguous()
    key = hashlib.sha1(f.numpy().tobytes()).hexdigest() + str(tuple(f.shape))
    hit = _ADJ_CACHE.get(key)
    if hit is not None:
        return hit
    fn = f.numpy()
    nf = fn.shape[0]
    a = np.concatenate([fn[:, 0], fn[:, 1], fn[:, 2]])
    b = np.concatenate([fn[:, 1], fn[:, 2], fn[:, 0]])
    owner = np.tile(np.arange(nf), 3)
    slot = np.repeat(np.arange(3), nf)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((owner, hi, lo))  # stable, so the result is deterministic
    lo, hi, owner, slot = lo[order], hi[order], owner[order], slot[order]
    adj = -np.ones((nf, 3), np.int64)
    same_next = (lo[1:] == lo[:-1]) & (hi[1:] == hi[:-1])
    # pair each half-edge with the next of the same edge (and the last with the first)
    idx = np.nonzero(same_next)[0]
    adj[owner[idx], slot[idx]] = owner[idx + 1]
    adj[owner[idx + 1], slot[idx + 1]] = owner[idx]
    out = torch.from_numpy(adj)
    if len(_ADJ_CACHE) > 8:
        _ADJ_CACHE.clear()
    _ADJ_CACHE[key] = out
    return out


def _edge_fn(a: Tensor, b: Tensor, p: Tensor) -> Tensor:
    """cross(b - a, p - a) for [..., 2] points."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - \
        (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


@torch.no_grad()
def _walk(uv: Tensor, faces: Tensor, adj: Tensor, t0: Tensor, p0: Tensor, p1: Tensor,
          max_walk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Walk the segments p0 -> p1 from face t0 to a contour edge.

    Args:
        uv: [V, 2] float64 projected vertices, pixels.
        faces: [F, 3] int64; adj: [F, 3] from :func:`face_adjacency`.
        t0: [N] start faces (seen at p0); p0, p1: [N, 2] pixel centres.
    Returns:
        (face [N], edge slot [N] in 0..2, ok [N] bool): the edge of ``face`` through
        which the segment leaves the mesh; ``ok`` False where none was found in (0, 1).
    """
    n = t0.shape[0]
    face = t0.clone()
    slot = torch.zeros(n, dtype=torch.int64)
    done = torch.zeros(n, dtype=torch.bool)
    ok = torch.zeros(n, dtype=torch.bool)
    first_face = t0.clone()
    first_slot = torch.full((n,), -1, dtype=torch.int64)
    active = torch.arange(n)
    nxt = torch.tensor([1, 2, 0])
    for step in range(max_walk):
        if active.numel() == 0:
            break
        t = face[active]
        tri = uv[faces[t]]  # [n, 3, 2]
        area = _edge_fn(tri[:, 0], tri[:, 1], tri[:, 2])
        sgn = torch.where(area >= 0, 1.0, -1.0).to(uv.dtype)
        a, b = tri, tri[:, nxt]
        q0, q1 = p0[active, None, :], p1[active, None, :]
        e0 = _edge_fn(a, b, q0) * sgn[:, None]
        e1 = _edge_fn(a, b, q1) * sgn[:, None]
        dec = e1 < e0
        s = torch.where(dec, e0 / torch.where(dec, e0 - e1, torch.ones_like(e0)),
                        torch.full_like(e0, float("inf")))
        s_min, k = s.min(1)
        if step == 0:
            first_slot[active] = torch.where(torch.isfinite(s_min), k, -1)
        inside = torch.isfinite(s_min) & (s_min < 1) & (s_min > -1e-9)
        nb = adj[t, k]
        # contour: no neighbour, or the neighbour faces the other way in the image
        ntri = uv[faces[nb.clamp_min(0)]]
        narea = _edge_fn(ntri[:, 0], ntri[:, 1], ntri[:, 2])
        contour = (nb < 0) | (narea * area <= 0)
        found = inside & contour
        ok[active[found]] = True
        slot[active[found]] = k[found]
        stop = found | ~inside
        done[active[stop]] = True
        cont = ~stop
        face[active[cont]] = nb[cont]
        active = active[cont]
    # fallback: the exit edge of the first triangle (the plain "edgeaa" shortcut)
    fb = ~ok & (first_slot >= 0)
    face = torch.where(ok, face, first_face)
    slot = torch.where(ok, slot, first_slot.clamp_min(0))
    return face, slot, ok | fb


def _walk_one(uv, faces, adj, t0, x0, y0, x1, y1, max_walk):
    """One segment of :func:`_walk` (plain Python, compiled by numba): (face, slot, ok)."""
    t = t0
    first_slot = -1
    for step in range(max_walk):
        ax, ay = uv[faces[t, 0], 0], uv[faces[t, 0], 1]
        bx, by = uv[faces[t, 1], 0], uv[faces[t, 1], 1]
        cx, cy = uv[faces[t, 2], 0], uv[faces[t, 2], 1]
        area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        sgn = 1.0 if area >= 0 else -1.0
        best = np.inf
        kb = -1
        for k in range(3):
            i0 = faces[t, k]
            i1 = faces[t, (k + 1) % 3]
            ex0, ey0 = uv[i0, 0], uv[i0, 1]
            dx, dy = uv[i1, 0] - ex0, uv[i1, 1] - ey0
            e0 = (dx * (y0 - ey0) - dy * (x0 - ex0)) * sgn
            e1 = (dx * (y1 - ey0) - dy * (x1 - ex0)) * sgn
            if e1 < e0:
                s = e0 / (e0 - e1)
                if s < best:
                    best = s
                    kb = k
        if step == 0:
            first_slot = kb
        if kb < 0 or not (best < 1.0 and best > -1e-9):
            break
        nb = adj[t, kb]
        contour = nb < 0
        if not contour:
            qx, qy = uv[faces[nb, 0], 0], uv[faces[nb, 0], 1]
            rx, ry = uv[faces[nb, 1], 0], uv[faces[nb, 1], 1]
            sx, sy = uv[faces[nb, 2], 0], uv[faces[nb, 2], 1]
            narea = (rx - qx) * (sy - qy) - (ry - qy) * (sx - qx)
            contour = narea * area <= 0
        if contour:
            return t, kb, True
        t = nb
    # no contour: the exit edge of the first triangle (the plain "edgeaa" shortcut)
    return t0, max(first_slot, 0), first_slot >= 0


def _pairs_loop(fid, uv, faces, adj, max_walk, out_i, out_f):
    """Outline pairs of a face-id image, walked to their contour edge (numba).

    For each horizontal / vertical neighbour pair with exactly one covered pixel whose
    contour edge has the pair's orientation (steep edges for horizontal pairs), writes
    ``out_i[n] = (covered pixel, uncovered pixel, edge vertex a, edge vertex b)`` (flat
    pixel indices) and ``out_f[n] = (x0, y0, x1, y1)`` (the two pixel centres). Returns n.
    """
    h, w = fid.shape
    n = 0
    for d in range(2):  # 0: horizontal pairs, 1: vertical pairs
        for r in range(h - d):
            for c in range(w - 1 + d):
                r2 = r + d
                c2 = c + 1 - d
                a = fid[r, c] >= 0
                b = fid[r2, c2] >= 0
                if a == b:
                    continue
                if a:
                    fr, fc, br, bc = r, c, r2, c2
                else:
                    fr, fc, br, bc = r2, c2, r, c
                x0, y0, x1, y1 = fc + 0.5, fr + 0.5, bc + 0.5, br + 0.5
                t, k, ok = _walk_one(uv, faces, adj, fid[fr, fc], x0, y0, x1, y1, max_walk)
                if not ok:
                    continue
                ia = faces[t, k]
                ib = faces[t, (k + 1) % 3]
                steep = abs(uv[ib, 1] - uv[ia, 1]) > abs(uv[ib, 0] - uv[ia, 0])
                if steep != (d == 0):
                    continue
                out_i[n, 0] = fr * w + fc
                out_i[n, 1] = br * w + bc
                out_i[n, 2] = ia
                out_i[n, 3] = ib
                out_f[n, 0] = x0
                out_f[n, 1] = y0
                out_f[n, 2] = x1
                out_f[n, 3] = y1
                n += 1
    return n


try:
    import numba as _numba
    _walk_one = _numba.njit(cache=NUMBA_CACHE, nogil=True)(_walk_one)  # called by _pairs_loop
    _pairs_numba = _numba.njit(cache=NUMBA_CACHE, nogil=True)(_pairs_loop)
except ImportError:  # pragma: no cover - numba is optional; edge_terms then uses torch
    _pairs_numba = None


def _face_ids(verts: Tensor, faces: Tensor, focal: Tensor, principal: Tensor, height: int,
              width: int, cull: bool) -> Tensor:
    """[H, W] int64 visible face per pixel centre (-1 background), CPU, no gradient.

    :func:`blade_nodes.render.rasterize_face_ids`: the rasterizer without its depth and
    barycentric pass (the silhouette needs neither: about 2x faster). verts: [V, 3]
    camera space, metres; focal: scalar tensor, pixels; principal: [2] (cx, cy), pixels.
    """
    from ..render import rasterize_face_ids

    return rasterize_face_ids(verts[None], faces, focal.reshape(1), principal.reshape(1, 2),
                              height, width, cull_backfaces=cull, backend="cpu")[0]


@dataclass(frozen=True)
class EdgeTerms:
    """The CPU silhouette of one frame as hard coverage plus differentiable corrections.

    ``sil = hard.float().flatten().index_add(0, index, value)`` is the coverage image;
    gradients live only in ``value``.

    Attributes:
        hard: [H, W] bool, pixel centres covered (the z-buffer raster).
        index: [N] int64 flat pixel index (row * W + col) of each correction.
        value: [N] float64 coverage correction in -1/2..1/2, differentiable w.r.t. the
            vertices and the focal length.
    """

    hard: Tensor
    index: Tensor
    value: Tensor

    def image(self) -> Tensor:
        """[H, W] float32 coverage (differentiable)."""
        h, w = self.hard.shape
        out = self.hard.to(torch.float32).reshape(-1)
        return out.index_add(0, self.index, self.value.to(torch.float32)).reshape(h, w)


def edge_terms(verts_cam: Tensor, faces: Tensor, focal: Tensor, principal: Tensor,
               height: int, width: int, *, max_walk: int = 8,
               adjacency: Tensor | None = None, cull: bool = True) -> EdgeTerms:
    """Hard raster and edge coverage corrections of ONE frame (CPU).

    Args:
        verts_cam: [V, 3] camera-space vertices, metres (differentiable).
        faces: [F, 3] int64.
        focal: [] or [1] pixels (differentiable). principal: [2] (cx, cy) pixels.
        height, width: pixels.
        max_walk: most triangles crossed looking for the contour.
        adjacency: [F, 3] from :func:`face_adjacency` (computed when None).
        cull: skip back faces in the hard raster (same coverage for closed meshes, faster).
    Returns:
        :class:`EdgeTerms` on the CPU.
    """
    adj = face_adjacency(faces) if adjacency is None else adjacency
    faces = faces.to("cpu", torch.int64)
    focal = focal.reshape(())
    principal = principal.reshape(2)
    vd = verts_cam.detach().to("cpu", torch.float64)
    fd = focal.detach().to("cpu", torch.float64)
    pd = principal.detach().to("cpu", torch.float64)
    # back faces never add coverage to a closed mesh's silhouette (official: culled too)
    fid = _face_ids(vd, faces, fd, pd, height, width, cull)
    fg = fid >= 0
    empty = EdgeTerms(fg, torch.zeros(0, dtype=torch.int64),
                      verts_cam.new_zeros(0, dtype=torch.float64) + 0 * focal)
    uv_all = vd[:, :2] / vd[:, 2:].clamp_min(1e-9) * fd + pd
    if _pairs_numba is not None:
        cap = int((fg[:, :-1] != fg[:, 1:]).sum() + (fg[:-1, :] != fg[1:, :]).sum())
        if cap == 0:
            return empty
        out_i = np.empty((cap, 4), np.int64)
        out_f = np.empty((cap, 4), np.float64)
        n = _pairs_numba(fid.numpy(), uv_all.numpy(), faces.numpy(), adj.numpy(), int(max_walk),
                         out_i, out_f)
        if n == 0:
            return empty
        oi, of = torch.from_numpy(out_i[:n]), torch.from_numpy(out_f[:n])
        fidx, bidx, ia, ib = oi.unbind(1)
        p0, p1 = of[:, :2], of[:, 2:]
    else:
        ph = fg[:, :-1] != fg[:, 1:]
        pv = fg[:-1, :] != fg[1:, :]
        rh, ch = torch.nonzero(ph, as_tuple=True)
        rv, cv = torch.nonzero(pv, as_tuple=True)
        if rh.numel() + rv.numel() == 0:
            return empty
        lh = fg[rh, ch]  # True: the left pixel is covered
        tv = fg[rv, cv]  # True: the upper pixel is covered
        fr = torch.cat([rh, torch.where(tv, rv, rv + 1)])
        fc = torch.cat([torch.where(lh, ch, ch + 1), cv])
        br = torch.cat([rh, torch.where(tv, rv + 1, rv)])
        bc = torch.cat([torch.where(lh, ch + 1, ch), cv])
        horiz = torch.zeros(fr.numel(), dtype=torch.bool)
        horiz[:rh.numel()] = True
        p0 = torch.stack([fc, fr], 1).to(torch.float64) + 0.5
        p1 = torch.stack([bc, br], 1).to(torch.float64) + 0.5
        face, slot, ok = _walk(uv_all, faces, adj, fid[fr, fc], p0, p1, max_walk)
        ia = faces[face, slot]
        ib = faces[face, (slot + 1) % 3]
        d = uv_all[ib] - uv_all[ia]
        steep = d[:, 1].abs() > d[:, 0].abs()
        keep = ok & (steep == horiz)
        ia, ib, p0, p1 = ia[keep], ib[keep], p0[keep], p1[keep]
        fidx = (fr * width + fc)[keep]
        bidx = (br * width + bc)[keep]
        if ia.numel() == 0:
            return empty
    # differentiable part: only the end points of the crossed edges
    dev = verts_cam.device
    both = torch.cat([ia, ib]).to(dev)
    vv = verts_cam[both].to(torch.float64)
    uv = vv[:, :2] / vv[:, 2:].clamp_min(1e-9) * focal.to(torch.float64) + \
        principal.to(device=dev, dtype=torch.float64)
    uv = uv.cpu()
    a, b = uv[:ia.numel()], uv[ia.numel():]
    e0 = _edge_fn(a, b, p0)
    e1 = _edge_fn(a, b, p1)
    den = e0 - e1
    den = torch.where(den.abs() > 1e-12, den, torch.full_like(den, 1e-12))
    c = (e0 / den).clamp(0.0, 1.0) - 0.5
    # s > 1/2: the outline is inside the uncovered pixel, which gains s - 1/2;
    # s < 1/2: the covered pixel loses 1/2 - s
    pos = c.detach() > 0
    index = torch.where(pos, bidx, fidx)
    return EdgeTerms(fg, index, c)


def edge_silhouette(verts_cam: Tensor, faces: Tensor, focal: Tensor, principal: Tensor,
                    height: int, width: int, *, max_walk: int = 8,
                    adjacency: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """CPU differentiable silhouette (hard raster + exact edge coverage term).

    Args:
        verts_cam: [B, V, 3] camera-space vertices, metres (differentiable).
        faces: [F, 3] int64 vertex indices.
        focal: [B] pixels (differentiable). principal: [B, 2] (cx, cy) pixels.
        height, width: image size, pixels.
        max_walk: most triangles crossed looking for the contour.
        adjacency: [F, 3] from :func:`face_adjacency` (computed when None).
    Returns:
        (sil [B, H, W] float32 coverage 0..1 (outline pixels fractional; may leave
        0..1 slightly where two corrections meet), hard [B, H, W] bool raster coverage).
    """
    adj = face_adjacency(faces) if adjacency is None else adjacency
    terms = [edge_terms(verts_cam[i], faces, focal[i], principal[i], height, width,
                        max_walk=max_walk, adjacency=adj) for i in range(verts_cam.shape[0])]
    return torch.stack([t.image() for t in terms]), torch.stack([t.hard for t in terms])


def _cuda_silhouette(verts_cam: Tensor, faces: Tensor, focal: Tensor, principal: Tensor,
                     height: int, width: int) -> tuple[Tensor, Tensor]:
    """nvdiffrast rasterize + antialias: [B, H, W] coverage and [B, H, W] bool."""
    from ..render import _nvdiffrast as nv

    if not nv.available():
        raise ValueError("backend='cuda' needs nvdiffrast and a CUDA device "
                         "(pip install -r requirements-gpu.txt), or use backend='cpu'")
    z = verts_cam.detach()[..., 2]
    zmin = z.amin(1).clamp_min(1e-3)
    zmax = z.amax(1)
    znear = 0.5 * zmin
    zfar = torch.maximum(2.0 * zmax, 2.0 * znear)
    pos = nv.opencv_to_clip(verts_cam.float(), focal.float(), principal.float(), height, width,
                            znear.float(), zfar.float()).contiguous()
    tri = faces.to(device=verts_cam.device, dtype=torch.int32).contiguous()
    rast, _ = nv.dr.rasterize(nv._context(verts_cam.device), pos, tri, (height, width),
                              grad_db=False)
    hard = rast[..., 3:4] > 0
    aa = nv.dr.antialias(hard.float(), rast, pos, tri)
    return aa[..., 0], hard[..., 0]


def resolve_backend(backend: str, device: torch.device) -> str:
    """"cpu" or "cuda" for a request ("auto": cuda when the tensors are on CUDA and
    nvdiffrast imports)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            from ..render import _nvdiffrast as nv
            return "cuda" if nv.available() else "cpu"
        return "cpu"
    return backend


def silhouette(verts_cam: Tensor, faces: Tensor, focal: Tensor, principal: Tensor,
               height: int, width: int, backend: str = "auto",
               adjacency: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Differentiable silhouette (coverage) of meshes, one camera per frame.

    Args:
        verts_cam: [B, V, 3] camera-space vertices, metres.
        faces: [F, 3] int64.
        focal: [B] pixels. principal: [B, 2] (cx, cy) pixels.
        height, width: pixels.
        backend: "auto", "cpu" (edge method) or "cuda" (nvdiffrast).
        adjacency: [F, 3] precomputed :func:`face_adjacency` (cpu back-end).
    Returns:
        (sil [B, H, W] float32 coverage on the vertices' device, differentiable w.r.t.
        ``verts_cam`` and ``focal``; hard [B, H, W] bool raster coverage).
    Raises:
        ValueError: unknown or unavailable backend.
    """
    name = resolve_backend(backend, verts_cam.device)
    if name == "cuda":
        return _cuda_silhouette(verts_cam, faces, focal, principal, height, width)
    dev = verts_cam.device
    sil, hard = edge_silhouette(verts_cam.cpu(), faces.cpu(), focal.cpu(), principal.cpu(),
                                height, width, adjacency=adjacency)
    return sil.to(dev), hard.to(dev)
