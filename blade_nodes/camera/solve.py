"""Stage 3: per-image camera (f, Tx, Ty; optionally Tz, root and body pose) from a mask.

Follows the official BLADE solver (../shared/docs/blade_official.md §4) with its
quirks fixed:

- Start: ``T = (0, 0, Tz - pelvis_z)`` where ``Tz`` is the pelvis depth (``BLADE_TZ``)
  and ``pelvis_z`` the pelvis joint's z of the posed body at ``transl = 0``; ``f`` from
  the image size (``max(H, W)``, ~53 degrees, as official). Then a closed-form start:
  the official keypoint initialisation (§4.2) when 2D keypoints are given, else
  matching the silhouette's area and centroid to the mask's, checked by hard IoU over a
  grid of focal lengths (and of shifts when the start is poor, e.g. a mask that shows
  a small part of the body).
- Coarse to fine in a window around the mask (integer downscales, so every level is
  exactly the same camera): blurred levels minimise the squared difference of the
  Gaussian-smoothed silhouette and mask, the finest level ``1 - soft IoU`` of the
  unblurred ones. (The official soft IoU of *blurred* masks is biased: it is maximised
  by a silhouette larger than the mask wherever the blur makes values fractional.)
  Plus an optional keypoint reprojection term (official weighting) and priors (log Tz
  towards its estimate, pose towards its start). The silhouette is exact-edge
  differentiable (:mod:`.silhouette`), not a SoftRas blur.
- Keep the best iterate by the hard IoU at the finest level (the start included).
- Every frame is solved alone with its own optimiser state and its own body-model
  forward pass, so a frame's result does not depend on the batch it came in (the
  official solver's learning rates, resolution and loss normalisers did), and the CPU
  path is deterministic (no random numbers, no atomics). On CUDA, nvdiffrast's antialias
  backward uses atomic adds, so results may differ in the last bits.
- Not optimised (unlike official): hand poses (the silhouette barely sees them) and betas.
- Units: f in pixels of the mask, T in metres, OpenCV axes (:mod:`.convention`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..depth.tz import tz_values
from .convention import Camera
from .silhouette import (EdgeTerms, _face_ids, edge_terms, face_adjacency, resolve_backend,
                         silhouette)

__all__ = ["SolveConfig", "CameraFit", "solve_camera", "solve_camera_body", "mask_iou",
           "keypoint_init"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SolveConfig:
    """Settings of :func:`solve_camera`.

    Attributes:
        iterations: optimisation steps per image, split over ``stages``.
        stages: (scale, blur sigma in pixels of that level, share of the iterations) per
            level, coarse to fine; scale 1 is the working resolution. sigma 0 means the
            IoU loss, sigma > 0 the blurred squared difference.
        max_size: long side of the working resolution, pixels (larger masks are solved
            downscaled; f is reported in the mask's pixels).
        opt_tz: also optimise Tz (pulled towards the given pelvis depth).
        opt_pose: also optimise the root orientation and body pose (solve_camera_body
            only; pulled towards their start).
        backend: "auto", "cpu" or "cuda" silhouette (see :mod:`.silhouette`).
        lr_f: Adam step of log f. lr_t: step of Tx, Ty as a fraction of the long image
            side (moved in the image). lr_tz: step of log Tz. lr_pose: radians.
        stage_lr: learning-rate factor of each stage (cosine decay to 10 % inside).
        tz_prior: weight of (log(Tz / Tz_given))^2.
        pose_prior, orient_prior: weights of the mean squared change of the body pose and
            of the root orientation (axis-angle, radians), as official (2, 1).
        kpt_weight: weight of the mean absolute keypoint error in units of the keypoint
            box size (official: 6). kpt_conf: keypoints below this confidence are ignored.
        init: "auto" (keypoints when given, else mask moments), "mask", "keypoints" or
            "none" (f = max(H, W), T = (0, 0, Tz)).
        fallback_tz: metres, used (and the frame flagged) when Tz is NaN or <= 0.
        min_mask_pixels: masks with fewer pixels are flagged as empty.
        min_level_size: smallest long side of a coarse level, pixels.
        wide_search_below: when the start's IoU is below this, also search shifts.
    """

    iterations: int = 60
    stages: tuple[tuple[float, float, float], ...] = (
        (0.25, 2.0, 0.4), (0.5, 1.0, 0.35), (1.0, 0.0, 0.25))
    max_size: int = 512
    opt_tz: bool = False
    opt_pose: bool = False
    backend: str = "auto"
    lr_f: float = 0.02
    lr_t: float = 0.01
    lr_tz: float = 0.02
    lr_pose: float = 0.01
    stage_lr: tuple[float, ...] = (1.0, 0.5, 0.25)
    tz_prior: float = 0.1
    pose_prior: float = 2.0
    orient_prior: float = 1.0
    kpt_weight: float = 6.0
    kpt_conf: float = 0.5
    init: str = "auto"
    fallback_tz: float = 3.0
    min_mask_pixels: int = 16
    min_level_size: int = 96
    wide_search_below: float = 0.7

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"SolveConfig.iterations: expected >= 0, got {self.iterations}")
        if not self.stages or len(self.stage_lr) < len(self.stages):
            raise ValueError("SolveConfig.stages: expected at least one stage and one "
                             "stage_lr per stage")
        if self.init not in ("auto", "mask", "keypoints", "none"):
            raise ValueError(f"SolveConfig.init: expected auto/mask/keypoints/none, got "
                             f"{self.init!r}")


@dataclass(frozen=True)
class CameraFit:
    """Result of :func:`solve_camera` for a batch of B images.

    Attributes:
        camera: fitted cameras (``BLADE_CAMERA``): focal [B] pixels of the mask,
            principal [B, 2] = mask centre, translation [B, 3] metres (added to the
            body at transl = 0), image_size [B, 2] (W, H) of the mask.
        iou: [B] hard silhouette IoU of the fitted body vs ``mask > 0.5`` at the mask's
            resolution, 0..1; 0 for flagged frames.
        valid: [B] bool; False for flagged frames (empty or full mask, bad Tz), whose
            camera is the initial one.
        iterations: [B] int64 optimisation steps taken.
        init_camera: the starting cameras (before the closed-form start).
        params: refined SMPL-X parameters (:func:`solve_camera_body`), else None.
        messages: notes for the user (flagged frames and why).
    """

    camera: Camera
    iou: Tensor
    valid: Tensor
    iterations: Tensor
    init_camera: Camera
    params: object | None = None
    messages: tuple[str, ...] = ()


# --------------------------------------------------------------------------- helpers
@lru_cache(maxsize=16)
def _gauss_kernel_cpu(sigma: float) -> Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _gauss_kernel(sigma: float, dtype, device) -> Tensor:
    return _gauss_kernel_cpu(float(sigma)).to(device=device, dtype=dtype)


def _blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [H, W] (zero padding)."""
    if sigma <= 0:
        return img
    k = _gauss_kernel(sigma, img.dtype, img.device)
    r = k.numel() // 2
    x = img[None, None]
    x = F.conv2d(x, k.view(1, 1, 1, -1), padding=(0, r))
    x = F.conv2d(x, k.view(1, 1, -1, 1), padding=(r, 0))
    return x[0, 0]


def _soft_iou(p: Tensor, g: Tensor) -> Tensor:
    inter = (p * g).sum()
    return (inter + 1e-6) / ((p + g - p * g).sum() + 1e-6)


def _silhouette_loss(sil: Tensor, lvl) -> Tensor:
    """Differentiable stage loss on full images (the CUDA path); see :func:`_iou_surrogate`."""
    G = _blur(sil, lvl.sigma)
    if lvl.sigma > 0:
        return (lvl.valid * (G - lvl.target_b) ** 2).sum() / lvl.target.sum().clamp_min(1.0)
    return 1 - _soft_iou(G, lvl.target)


def _iou_surrogate(terms: EdgeTerms, lvl) -> Tensor:
    """A scalar whose value is the stage loss and whose gradient is that loss's, computed
    in closed form inside the bounding box of the render and the target.

    Stage loss, on the silhouette S clipped to the image (S * valid): with blur
    (sigma > 0) the squared difference of blur(S) and the blurred mask, over the image
    and divided by the mask area; without blur 1 - soft IoU(S, mask). (The soft IoU of
    blurred masks, as in the official solver, is maximised by a silhouette larger than
    the mask wherever the blur makes values fractional, so it is only used unblurred.)
    The blur is linear and symmetric, so dL/dS = blur(dL/dG) with G = blur(S); only the
    edge corrections carry gradients, so the backward pass touches ~N outline pixels.
    """
    sigma = lvl.sigma
    h, w = terms.hard.shape
    occ = terms.hard | lvl.support
    rows = torch.nonzero(occ.any(1)).flatten()
    cols = torch.nonzero(occ.any(0)).flatten()
    if rows.numel() == 0:
        return terms.value.sum() * 0
    r = max(1, int(math.ceil(3 * sigma))) if sigma > 0 else 0
    r0, r1 = max(0, int(rows[0]) - r - 1), min(h, int(rows[-1]) + r + 2)
    c0, c1 = max(0, int(cols[0]) - r - 1), min(w, int(cols[-1]) + r + 2)
    hh, ww = r1 - r0, c1 - c0
    ir, ic = terms.index // w - r0, terms.index % w - c0
    inside = (ir >= 0) & (ir < hh) & (ic >= 0) & (ic < ww)
    local = (ir * ww + ic).clamp(0, hh * ww - 1)
    with torch.no_grad():
        V = lvl.valid[r0:r1, c0:c1]
        val = terms.value.detach().to(V.dtype) * inside
        S = terms.hard[r0:r1, c0:c1].to(V.dtype).reshape(-1).index_add(0, local, val)
        S = S.reshape(hh, ww) * V
        G = _blur(S, sigma)
        if sigma > 0:  # mean squared difference of the blurred images / mask area
            T = lvl.target_b[r0:r1, c0:c1]
            area = lvl.target.sum().clamp_min(1.0)
            value = ((G - T) ** 2).sum() / area
            dG = 2 * (G - T) / area
        else:  # 1 - soft IoU
            T = lvl.target[r0:r1, c0:c1]
            inter = (G * T).sum() + 1e-6
            union = (G + T - G * T).sum() + 1e-6
            value = 1 - inter / union
            dG = -(T * union - inter * (1 - T)) / union ** 2
        dS = (_blur(dG, sigma) * V).reshape(-1)
    wgt = (dS[local] * inside).to(torch.float64)
    return value.double() + (wgt * terms.value).sum() - (wgt * terms.value.detach()).sum()


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """Hard IoU of two [..., H, W] bool masks over the last two dims (0 when both empty)."""
    inter = (a & b).flatten(-2).sum(-1).float()
    union = (a | b).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))


def keypoint_init(kp3d: Tensor, kp2d: Tensor, good: Tensor, f: float, t: Tensor,
                  principal: Tensor, iters: int = 3) -> tuple[float, Tensor]:
    """The official closed-form start (blade_official.md §4.2), one image.

    Args:
        kp3d: [K, 3] body-frame keypoints (transl = 0), metres.
        kp2d: [K, 2] detections, pixels. good: [K] bool.
        f: starting focal, pixels. t: [3] starting translation, metres.
        principal: [2] (cx, cy) pixels.
    Returns:
        (f, t): f rescaled by the mean ratio of centred distances; Tx, Ty from
        back-projecting each detection at its joint's depth; Tz unchanged.
    """
    t = t.clone()
    if int(good.sum()) < 2:
        return f, t
    J = kp3d[good].double()
    d = kp2d[good].double()
    c = principal.double()
    for _ in range(iters):
        X = J + t
        z = X[:, 2].clamp_min(1e-3)
        p = X[:, :2] / z[:, None] * f + c
        dp = (p - p.mean(0)).norm(dim=1)
        dd = (d - d.mean(0)).norm(dim=1)
        ok = dp > 1e-6
        if ok.any():
            ratio = float((dd[ok] / dp[ok]).mean())
            if math.isfinite(ratio) and ratio > 0:
                f = f * min(max(ratio, 0.2), 5.0)
        Xb = (d - c) * z[:, None] / f
        t[:2] = (Xb - J[:, :2]).mean(0)
    return f, t


# --------------------------------------------------------------------------- geometry
class _Fixed:
    """Fixed body-frame vertices (and keypoints) of one frame."""

    def __init__(self, verts: Tensor, kp3d: Tensor | None):
        self.verts = verts
        self.kp3d = kp3d
        self.tensors: list[Tensor] = []

    def __call__(self) -> tuple[Tensor, Tensor | None]:
        return self.verts, self.kp3d

    def prior(self, cfg: SolveConfig) -> Tensor:
        return torch.zeros((), dtype=torch.float64, device=self.verts.device)


class _Posed:
    """One frame of a body model whose root/body pose may be optimised."""

    def __init__(self, body_model, params, kmap, opt_pose: bool, device):
        self.body = body_model
        self.device = device  # where the solve runs (the body model may live elsewhere)
        self.params = params
        self.kmap = kmap
        self.go0 = params.global_orient.detach().clone()
        self.bp0 = params.body_pose.detach().clone()
        self.go = self.go0.clone().requires_grad_(opt_pose)
        self.bp = self.bp0.clone().requires_grad_(opt_pose)
        self.tensors = [self.go, self.bp] if opt_pose else []
        self._cache = None

    def __call__(self) -> tuple[Tensor, Tensor | None]:
        if not self.tensors and self._cache is not None:
            return self._cache
        with torch.set_grad_enabled(bool(self.tensors)):
            out = self.body(self.params.replace(global_orient=self.go, body_pose=self.bp))
        kp = self.kmap(out.joints)[0].to(self.device) if self.kmap is not None else None
        res = (out.vertices[0].to(self.device), kp)
        if not self.tensors:
            self._cache = res
        return res

    def prior(self, cfg: SolveConfig) -> Tensor:
        if not self.tensors:
            return torch.zeros((), dtype=torch.float64)
        return (cfg.pose_prior * ((self.bp - self.bp0) ** 2).mean()
                + cfg.orient_prior * ((self.go - self.go0) ** 2).mean()).double()


# --------------------------------------------------------------------------- one frame
@dataclass
class _FrameResult:
    f: float
    t: Tensor  # [3] float64
    iou: float
    valid: bool
    iters: int
    f0: float
    t0: Tensor
    pose: tuple[Tensor, Tensor] | None = None
    message: str | None = None


def _check_frame(mask: Tensor, tz: float, cfg: SolveConfig) -> str | None:
    fg = mask > 0.5
    n = int(fg.sum())
    if n < cfg.min_mask_pixels:
        return f"the mask is empty ({n} pixels above 0.5); draw or detect the person first"
    if n == fg.numel():
        return "the mask covers the whole image; it has no outline to fit"
    if not math.isfinite(tz) or tz <= 0:
        return (f"Tz is {tz} (expected a positive pelvis depth in metres); used "
                f"{cfg.fallback_tz} m and did not optimise")
    return None


@dataclass
class _Level:
    """One resolution of the solve: the window downscaled by an integer factor k."""
    k: int
    h: int
    w: int
    sigma: float
    pp: Tensor  # [2] principal point in this level's pixels
    target: Tensor  # [h, w] mask coverage (area average), 0 outside the image
    valid: Tensor  # [h, w] fraction of each pixel inside the image
    target_b: Tensor  # blurred target
    support: Tensor  # [h, w] bool, where target_b > 0

    def render(self, verts_cam: Tensor, faces: Tensor, focal: Tensor, backend: str) -> Tensor:
        """[h, w] bool hard silhouette (back faces culled, as the differentiable one)."""
        if backend == "cpu" or verts_cam.device.type == "cpu":
            return _face_ids(verts_cam.detach().to("cpu", torch.float64), faces.cpu(),
                             (focal.detach() / self.k).to("cpu", torch.float64),
                             self.pp.to("cpu", torch.float64), self.h, self.w, True) >= 0
        from ..render import rasterize
        return rasterize(verts_cam[None], faces, (focal / self.k)[None], self.pp[None], self.h,
                         self.w, backend="auto", cull_backfaces=True).mask[0]


def _window(mask: Tensor, ks: list[int]) -> tuple[int, int, int, int]:
    """(x0, y0, Wc, Hc): the mask's box with a margin, sizes multiples of lcm(ks); may
    extend past the image (those pixels are marked invalid)."""
    H, W = mask.shape
    fg = mask > 0.5
    rows = torch.nonzero(fg.any(1)).flatten()
    cols = torch.nonzero(fg.any(0)).flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    margin = max(8, int(0.3 * max(r1 - r0, c1 - c0)))
    x0, x1 = max(0, c0 - margin), min(W, c1 + margin)
    y0, y1 = max(0, r0 - margin), min(H, r1 + margin)
    m = math.lcm(*ks)
    wc, hc = -(-(x1 - x0) // m) * m, -(-(y1 - y0) // m) * m
    x0 -= (wc - (x1 - x0)) // 2
    y0 -= (hc - (y1 - y0)) // 2
    return x0, y0, wc, hc


def _levels(mask: Tensor, cfg: SolveConfig) -> tuple[list[_Level], tuple[int, int]]:
    H, W = mask.shape
    dev = mask.device
    fg = mask > 0.5
    rows = torch.nonzero(fg.any(1)).flatten()
    cols = torch.nonzero(fg.any(0)).flatten()
    # long side of the window (see _window), which never exceeds the image's by much
    approx = min(max(int(rows[-1] - rows[0]), int(cols[-1] - cols[0])) * 1.6 + 16, max(H, W))
    k_fine = max(1, math.ceil(approx / cfg.max_size))
    ks = []
    for s, _, _ in cfg.stages:
        k = k_fine * max(1, round(1 / s))
        k = max(k_fine, min(k, int(approx // cfg.min_level_size)))
        ks.append(k)
    x0, y0, wc, hc = _window(mask, ks)
    levels = [_make_level(mask, x0, y0, wc, hc, k, sigma)
              for k, (_, sigma, _) in zip(ks, cfg.stages)]
    return levels, (x0, y0)


def _make_level(mask: Tensor, x0: int, y0: int, wc: int, hc: int, k: int, sigma: float) -> _Level:
    """The window [x0, x0 + wc) x [y0, y0 + hc) of the mask (zeros and invalid outside the
    image), downscaled by k (area average)."""
    H, W = mask.shape
    dev = mask.device
    tgt = torch.zeros(hc, wc, dtype=torch.float32, device=dev)
    val = torch.zeros(hc, wc, dtype=torch.float32, device=dev)
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(W, x0 + wc), min(H, y0 + hc)
    tgt[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = mask[iy0:iy1, ix0:ix1]
    val[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = 1
    pp = torch.tensor([W / 2 - x0, H / 2 - y0], dtype=torch.float64, device=dev)
    t = F.avg_pool2d(tgt[None, None], k)[0, 0] if k > 1 else tgt
    v = F.avg_pool2d(val[None, None], k)[0, 0] if k > 1 else val
    tb = _blur(t, sigma)
    return _Level(k, hc // k, wc // k, sigma, pp / k, t, v, tb, tb > 0)


def _full_level(mask: Tensor, size: int = 128) -> _Level:
    """The whole image at about ``size`` pixels on the long side (for the start)."""
    H, W = mask.shape
    k = max(1, math.ceil(max(H, W) / size))
    wc, hc = -(-W // k) * k, -(-H // k) * k
    return _make_level(mask, 0, 0, wc, hc, k, 0.0)


def _moment_init(verts: Tensor, faces: Tensor, lvl: _Level, f: float, t: Tensor,
                 tz_ref: float, iters: int = 4) -> tuple[float, Tensor]:
    """Match the rendered silhouette's area and centroid to the mask's (hard renders)."""
    h, w = lvl.h, lvl.w
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5,
                            torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
    g = lvl.target.detach().double().cpu()
    v = lvl.valid.detach().double().cpu()
    at = float(g.sum())
    ct = torch.stack([(g * xs).sum(), (g * ys).sum()]) / max(at, 1e-9)
    verts = verts.detach().double().cpu()
    ppl = lvl.pp.double().cpu()
    t = t.clone().cpu()
    for _ in range(iters):
        r = lvl.render(verts + t, faces.cpu(), torch.tensor(f, dtype=torch.float64), "cpu")
        r = r.double() * v
        ar = float(r.sum())
        if ar < 1:
            break
        cr = torch.stack([(r * xs).sum(), (r * ys).sum()]) / ar
        ratio = min(max(math.sqrt(at / ar), 0.25), 4.0)
        f = f * ratio
        cr = ppl + (cr - ppl) * ratio
        du = ct - cr  # pixels at this level
        t[:2] = t[:2] + du * lvl.k / f * tz_ref
    return f, t


def _two_class_iou(r: Tensor, gt: Tensor, valid: Tensor) -> float:
    """Mean of the person and background IoU inside the image (a mask that fills most of
    the image still constrains the camera through its background)."""
    r = r & valid
    fg = float(mask_iou(r, gt))
    bg = float(mask_iou(~r & valid, ~gt & valid))
    return 0.5 * (fg + bg)


@torch.no_grad()
def _search_init(verts: Tensor, faces: Tensor, lvl: _Level, f: float, t: Tensor,
                 tz_ref: float, wide: bool = False) -> tuple[float, Tensor, float]:
    """Keep the best hard IoU over focal lengths 0.5x-2x around ``f`` (each with the
    silhouette's centroid moved onto the mask's), then a finer grid around the best.
    ``wide`` also tries shifts of 25 % of the image around each centroid match
    (for masks that show a small part of the body). Returns (f, t, IoU).

    Area matching alone fails when the mask is cut by the image border (the visible
    part of a larger body can have the area of a smaller one); IoU does not.
    """
    h, w = lvl.h, lvl.w
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5,
                            torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
    g = lvl.target.detach().double().cpu()
    v = lvl.valid.detach().double().cpu()
    gt = g > 0.5
    ct = torch.stack([(g * xs).sum(), (g * ys).sum()]) / max(float(g.sum()), 1e-9)
    verts = verts.detach().double().cpu()
    faces = faces.cpu()

    def render(fv, tv):
        fv = torch.tensor(fv, dtype=torch.float64)
        return lvl.render(verts + tv, faces, fv, "cpu") & (v > 0.5)

    def iou(fv, tv):
        return _two_class_iou(render(fv, tv), gt, v > 0.5)

    best = (iou(f, t), f, t.clone().cpu())
    grids = [torch.logspace(math.log10(0.5), math.log10(2.0), 9).tolist(),
             [0.92, 0.96, 1.04, 1.08]]
    if wide:
        grids[0] = torch.logspace(math.log10(0.3), math.log10(3.0), 13).tolist()
    for gi, grid in enumerate(grids):
        f_c, t_c = best[1], best[2]
        for sc in grid:
            f2, t2 = f_c * sc, t_c.clone()
            for _ in range(3 if wide else 2):  # the render is cut by the border too
                r = render(f2, t2).double()
                a = float(r.sum())
                if a < 1:
                    break
                cr = torch.stack([(r * xs).sum(), (r * ys).sum()]) / a
                t2[:2] = t2[:2] + (ct - cr) * lvl.k / f2 * tz_ref
            shifts = [(0.0, 0.0)]
            if wide and gi == 0:
                shifts = [(dx * w, dy * h) for dx in (-0.25, 0.0, 0.25)
                          for dy in (-0.25, 0.0, 0.25)]
            for dx, dy in shifts:
                t3 = t2.clone()
                t3[0] += dx * lvl.k / f2 * tz_ref
                t3[1] += dy * lvl.k / f2 * tz_ref
                q = iou(f2, t3)
                if q > best[0]:
                    best = (q, f2, t3)
    return best[1], best[2], best[0]


@torch.no_grad()
def _pattern_search(verts: Tensor, faces: Tensor, lvl: _Level, f: float, t: Tensor,
                    tz_ref: float, q: float, max_evals: int = 80) -> tuple[float, Tensor, float]:
    """Compass search of the hard IoU over (f, Tx, Ty) on a small image: steps of 8 % in
    f and 4 pixels in x, y, halved when no neighbour improves, down to 1/4 pixel.

    It moves the start out of the basins that centroid matching leaves it in when the
    mask is cut by the image border (close-ups), cheaply (one small render per step).
    Returns (f, t, IoU).
    """
    v = lvl.valid.detach().cpu() > 0.5
    gt = lvl.target.detach().cpu() > 0.5
    verts = verts.detach().double().cpu()
    faces = faces.cpu()
    t = t.clone().cpu()

    def iou(fv, tv):
        r = lvl.render(verts + tv, faces, torch.tensor(fv, dtype=torch.float64), "cpu")
        return _two_class_iou(r, gt, v)

    q = iou(f, t)
    step_f, step_px, evals = 0.08, 4.0, 0
    while step_px >= 0.25 and evals < max_evals:
        moved = False
        for kind, sign in (("f", 1), ("f", -1), ("x", 1), ("x", -1), ("y", 1), ("y", -1)):
            f2, t2 = f, t.clone()
            if kind == "f":
                f2 = f * (1 + sign * step_f)
            else:
                t2[0 if kind == "x" else 1] += sign * step_px * lvl.k / f * tz_ref
            q2 = iou(f2, t2)
            evals += 1
            if q2 > q:
                f, t, q, moved = f2, t2, q2, True
        if not moved:
            step_f, step_px = step_f / 2, step_px / 2
    return f, t, q


@torch.no_grad()
def _level_iou(geom, faces, camera_now, lvl: _Level, backend: str) -> float:
    """Hard IoU of the current body and camera at a level, inside the image (no gradient)."""
    verts, _ = geom()
    fv, T = camera_now()
    r = lvl.render(verts.detach().double() + T.detach(), faces, fv.detach(), backend)
    inside = lvl.valid > 0.5
    return float(mask_iou(r.to(lvl.target.device) & inside, lvl.target > 0.5))


def _solve_frame(geom, faces: Tensor, adj: Tensor, mask: Tensor, tz: float, kp2d: Tensor | None,
                 pelvis_z: float, cfg: SolveConfig, backend: str, tick: Callable[[], None]
                 ) -> _FrameResult:
    dev = mask.device
    H, W = mask.shape
    pp = torch.tensor([W / 2, H / 2], dtype=torch.float64, device=dev)
    f0 = float(max(H, W))
    problem = _check_frame(mask, tz, cfg)
    tz_used = tz if math.isfinite(tz) and tz > 0 else cfg.fallback_tz
    t0 = torch.tensor([0.0, 0.0, tz_used - pelvis_z], dtype=torch.float64, device=dev)
    if problem is not None:
        return _FrameResult(f0, t0, 0.0, False, 0, f0, t0, None, problem)
    levels, _ = _levels(mask.float(), cfg)

    # -- closed-form start
    f, t = f0, t0.clone()
    use_kp = kp2d is not None and cfg.init in ("auto", "keypoints")
    verts_0, kp3d_0 = geom()
    good = None
    if kp2d is not None and kp3d_0 is not None:
        good = (kp2d[:, 2] > cfg.kpt_conf) & (kp2d[:, 0] >= 0) & (kp2d[:, 0] < W) & \
            (kp2d[:, 1] >= 0) & (kp2d[:, 1] < H) & torch.isfinite(kp2d).all(1)
    if use_kp and good is not None and int(good.sum()) >= 2:
        f, t = keypoint_init(kp3d_0.detach().cpu(), kp2d[:, :2].cpu(), good.cpu(), f, t.cpu(),
                             pp.cpu())
        t = t.to(dev)
    elif cfg.init in ("auto", "mask"):
        full = _full_level(mask.float(), 128)
        f, t = _moment_init(verts_0, faces, full, f, t, tz_used)
        f, t, q = _search_init(verts_0, faces, full, f, t, tz_used)
        if q < cfg.wide_search_below:  # a poor start: search shifts too, on a small image
            f, t, _ = _search_init(verts_0, faces, _full_level(mask.float(), 80), f, t, tz_used,
                                   wide=True)
            f, t, q = _search_init(verts_0, faces, full, f, t, tz_used)
        f, t, q = _pattern_search(verts_0, faces, full, f, t, tz_used, q)
        t = t.to(dev)

    # -- optimisation variables
    zref = tz_used
    logf = torch.tensor(math.log(f), dtype=torch.float64, device=dev, requires_grad=True)
    txy = (t[:2] / zref).clone().requires_grad_(True)
    logtz = torch.tensor(math.log(tz_used), dtype=torch.float64, device=dev,
                         requires_grad=cfg.opt_tz)
    logtz0 = math.log(tz_used)
    groups = [{"params": [logf], "lr": cfg.lr_f, "base": cfg.lr_f},
              {"params": [txy], "lr": cfg.lr_t * max(H, W) / f, "base": cfg.lr_t * max(H, W) / f}]
    if cfg.opt_tz:
        groups.append({"params": [logtz], "lr": cfg.lr_tz, "base": cfg.lr_tz})
    if geom.tensors:
        groups.append({"params": geom.tensors, "lr": cfg.lr_pose, "base": cfg.lr_pose})
    opt = torch.optim.Adam(groups, betas=(0.8, 0.99))

    def camera_now():
        tzt = torch.exp(logtz) - pelvis_z
        T = torch.cat([txy * zref, tzt[None]])
        return torch.exp(logf), T

    def snapshot():
        fv, T = camera_now()
        pose = tuple(x.detach().clone() for x in geom.tensors) or None
        return float(fv.detach()), T.detach().clone(), pose

    shares = [s[2] for s in cfg.stages]
    counts = [int(round(cfg.iterations * s / sum(shares))) for s in shares]
    counts[-1] = max(0, cfg.iterations - sum(counts[:-1]))
    fine = levels[-1]
    fine_inside = fine.valid > 0.5
    fine_target = fine.target > 0.5
    best = (_level_iou(geom, faces, camera_now, fine, backend), snapshot())
    steps = 0
    kp_scale = None
    if kp2d is not None and good is not None and int(good.sum()) >= 2:
        box = kp2d[good, :2]
        kp_scale = float((box.amax(0) - box.amin(0)).amax().clamp_min(1.0))
    for si, (lvl, n) in enumerate(zip(levels, counts)):
        last = si == len(levels) - 1
        lr_mult = cfg.stage_lr[si]
        for it in range(n):
            tick()
            cos = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * it / max(1, n)))
            for g in opt.param_groups:
                g["lr"] = g["base"] * lr_mult * cos
            opt.zero_grad(set_to_none=True)
            verts, kp3d = geom()
            fv, T = camera_now()
            vc = verts.double() + T
            if backend == "cpu":
                terms = edge_terms(vc, faces, fv / lvl.k, lvl.pp, lvl.h, lvl.w, adjacency=adj)
                hard = terms.hard
                loss = _iou_surrogate(terms, lvl)
            else:
                sil, hard = silhouette(vc[None], faces, (fv / lvl.k)[None], lvl.pp[None], lvl.h,
                                       lvl.w, backend=backend)
                hard = hard[0]
                loss = _silhouette_loss(sil[0].float() * lvl.valid, lvl)
            loss = loss.double()
            if cfg.opt_tz:
                loss = loss + cfg.tz_prior * (logtz - logtz0) ** 2
            loss = loss + geom.prior(cfg).to(loss.device)
            if kp_scale is not None and kp3d is not None and cfg.kpt_weight > 0:
                X = kp3d[good].double() + T
                uv = X[:, :2] / X[:, 2:].clamp_min(1e-3) * fv + pp
                loss = loss + cfg.kpt_weight * ((uv - kp2d[good, :2].double()).abs().mean()
                                                / kp_scale)
            if last:
                hi = float(mask_iou(hard.to(dev) & fine_inside, fine_target))
                if hi > best[0]:
                    best = (hi, snapshot())
            loss.backward()
            opt.step()
            with torch.no_grad():  # official clamps: f in [10, 1e4], Tz in [0.3, 50]
                logf.clamp_(math.log(10.0), math.log(1e4))
                logtz.clamp_(math.log(max(0.05, min(0.3, tz_used))), math.log(max(50.0, tz_used)))
            steps += 1
    # the last update, evaluated once at the finest level
    if steps:
        hi = _level_iou(geom, faces, camera_now, fine, backend)
        if hi > best[0]:
            best = (hi, snapshot())
    f_b, t_b, pose_b = best[1]
    return _FrameResult(f_b, t_b, best[0], True, steps, f0, t0, pose_b, None)


def _final_iou(verts: Tensor, faces: Tensor, f: float, t: Tensor, mask: Tensor,
               backend: str) -> float:
    from ..render import rasterize
    H, W = mask.shape
    fr = rasterize((verts.detach().double() + t.to(verts.device))[None], faces,
                   torch.tensor([f], dtype=torch.float64, device=verts.device),
                   torch.tensor([[W / 2, H / 2]], dtype=torch.float64, device=verts.device), H, W,
                   backend="cpu" if backend == "cpu" else "auto")
    return float(mask_iou(fr.mask[0].to(mask.device), mask > 0.5))


# --------------------------------------------------------------------------- inputs
def _desc(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


def _check_mask(mask) -> Tensor:
    if not isinstance(mask, Tensor) or mask.ndim not in (2, 3) or mask.numel() == 0:
        raise ValueError(f"mask: expected a [B, H, W] tensor (0..1), got "
                         f"{_desc(mask)}")
    mask = mask[None] if mask.ndim == 2 else mask
    if min(mask.shape[-2:]) < 8:
        raise ValueError(f"mask: expected at least 8x8 pixels, got {tuple(mask.shape[-2:])}")
    return torch.nan_to_num(mask.detach().float(), nan=0.0).clamp(0, 1)


def _check_keypoints(keypoints, b: int, k: int | None) -> Tensor | None:
    if keypoints is None:
        return None
    if not isinstance(keypoints, Tensor) or keypoints.ndim != 3 or keypoints.shape[-1] != 3 \
            or keypoints.shape[0] != b:
        raise ValueError(f"keypoints: expected a [{b}, K, 3] tensor (x, y pixels, confidence), "
                         f"got {_desc(keypoints)}")
    if k is not None and keypoints.shape[1] != k:
        raise ValueError(f"keypoints: expected K = {k} points (the 3D keypoints' count), got "
                         f"{keypoints.shape[1]}")
    return keypoints.detach().float()


def _run(frames, faces: Tensor, mask: Tensor, tzv: Tensor, kps: Tensor | None,
         pelvis_z: list[float], cfg: SolveConfig, progress: Progress | None,
         final_verts) -> tuple[list[_FrameResult], list[str]]:
    b = mask.shape[0]
    total = b * cfg.iterations
    done = [0]

    def tick():
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    if progress is not None:
        progress(0, total)
    dev = mask.device
    backend = resolve_backend(cfg.backend, dev)
    adj = face_adjacency(faces) if backend == "cpu" else None
    faces = faces.to(device=dev, dtype=torch.int64)
    results, messages = [], []
    for i in range(b):
        start = done[0]
        geom = frames(i)
        r = _solve_frame(geom, faces, adj, mask[i], float(tzv[i]),
                         None if kps is None else kps[i].to(dev), pelvis_z[i], cfg, backend, tick)
        done[0] = start + cfg.iterations
        if r.valid:
            r.iou = _final_iou(final_verts(i, geom, r), faces, r.f, r.t, mask[i], backend)
        else:
            messages.append(f"image {i}: {r.message}")
        if progress is not None:
            progress(done[0], total)
        results.append(r)
    return results, messages


def _camera(results: list[_FrameResult], mask: Tensor, init: bool = False) -> Camera:
    H, W = mask.shape[-2:]
    f = [r.f0 if init or not r.valid else r.f for r in results]
    t = torch.stack([(r.t0 if init or not r.valid else r.t).cpu() for r in results]).float()
    return Camera.create(torch.tensor(f), t, (W, H))


@torch.enable_grad()  # an optimisation: works inside a caller's no_grad too
def solve_camera(verts: Tensor, faces: Tensor, mask: Tensor, tz, *,
                 pelvis: Tensor | None = None, keypoints: Tensor | None = None,
                 keypoints_3d: Tensor | None = None, cfg: SolveConfig = SolveConfig(),
                 progress: Progress | None = None) -> CameraFit:
    """Fit focal length and Tx, Ty (and optionally Tz) so the silhouette matches ``mask``.

    Args:
        verts: [B, V, 3] posed vertices, body frame (SMPL-X with transl = 0), metres.
        faces: [F, 3] int64 triangle indices.
        mask: [B, H, W] person mask, 0..1 (thresholded at 0.5 for IoU).
        tz: [B] pelvis depth, metres (> 0), or an object with ``.tz`` (BLADE_TZ).
        pelvis: [B, 3] body-frame pelvis joint, metres; the start translation is
            ``(0, 0, tz - pelvis_z)``. None: ``tz`` is the translation's z.
        keypoints: [B, K, 3] 2D detections (x, y pixels of the mask, confidence).
        keypoints_3d: [B, K, 3] body-frame points matching ``keypoints``, metres.
        cfg: :class:`SolveConfig` (``opt_pose`` needs :func:`solve_camera_body`).
        progress: progress(step, total); may raise to cancel (nothing is kept).
    Returns:
        :class:`CameraFit`.
    Raises:
        ValueError: shapes or batch sizes disagree, or opt_pose without a body model.
    """
    mask = _check_mask(mask)
    b = mask.shape[0]
    if not isinstance(verts, Tensor) or verts.ndim != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts: expected [B, V, 3] body-frame vertices, got "
                         f"{_desc(verts)}")
    if verts.shape[0] not in (1, b):
        raise ValueError(f"verts: batch {verts.shape[0]} does not match the mask batch {b}; "
                         "give one body per mask (or one body for all)")
    if cfg.opt_pose:
        raise ValueError("SolveConfig.opt_pose needs the body model: use solve_camera_body")
    tzv = tz_values(tz, b, torch.float64)
    if (keypoints is None) != (keypoints_3d is None):
        raise ValueError("keypoints and keypoints_3d: give both or neither")
    kps = _check_keypoints(keypoints, b, None if keypoints_3d is None else keypoints_3d.shape[1])
    if keypoints_3d is not None and keypoints_3d.shape[0] not in (1, b):
        raise ValueError(f"keypoints_3d: batch {keypoints_3d.shape[0]} does not match {b}")
    if pelvis is not None and (pelvis.ndim != 2 or pelvis.shape[0] not in (1, b)):
        raise ValueError(f"pelvis: expected [B, 3], got {tuple(pelvis.shape)}")
    dev = mask.device
    verts = verts.detach().to(dev)

    def frames(i):
        v = verts[i if verts.shape[0] > 1 else 0]
        k = None if keypoints_3d is None else \
            keypoints_3d[i if keypoints_3d.shape[0] > 1 else 0].detach().to(dev)
        return _Fixed(v, k)

    pz = [0.0 if pelvis is None else float(pelvis[i if pelvis.shape[0] > 1 else 0, 2])
          for i in range(b)]
    results, messages = _run(frames, faces, mask, tzv, kps, pz, cfg, progress,
                             lambda i, geom, r: geom.verts)
    return CameraFit(
        camera=_camera(results, mask), iou=torch.tensor([r.iou for r in results]),
        valid=torch.tensor([r.valid for r in results]),
        iterations=torch.tensor([r.iters for r in results], dtype=torch.int64),
        init_camera=_camera(results, mask, init=True), params=None, messages=tuple(messages))


@torch.enable_grad()  # an optimisation: works inside a caller's no_grad too
def solve_camera_body(body_model, params, mask: Tensor, tz, *, keypoints: Tensor | None = None,
                      keypoint_format: str = "coco17", cfg: SolveConfig = SolveConfig(),
                      progress: Progress | None = None) -> CameraFit:
    """:func:`solve_camera` for a body model and SMPL-X parameters (``opt_pose`` allowed).

    Each frame's body is posed alone (batch 1), so results do not depend on the batch.

    Args:
        body_model: a :class:`blade_nodes.body.BodyModel` (BLADE_BODY_MODEL).
        params: :class:`blade_nodes.body.SMPLXParams` with B (or 1) frames.
        mask: [B, H, W] 0..1. tz: [B] pelvis depth (SMPL-X joint 0 z), metres, or BLADE_TZ.
        keypoints: [B, K, 3] (x, y pixels, confidence) in ``keypoint_format`` order.
        keypoint_format: a format of :mod:`blade_nodes.body.keypoints`.
        cfg, progress: as :func:`solve_camera`.
    Returns:
        :class:`CameraFit` with ``params`` = the refined parameters (root and body pose
        changed only with ``opt_pose``; other fields as given).
    Raises:
        ValueError: batch sizes disagree.
    """
    mask = _check_mask(mask)
    b = mask.shape[0]
    pb = params.batch_size
    if pb not in (1, b):
        raise ValueError(f"smplx: batch {pb} does not match the mask batch {b}; give one set "
                         "of parameters per mask (or one for all)")
    tzv = tz_values(tz, b, torch.float64)
    kmap = body_model.keypoint_map(keypoint_format) if keypoints is not None else None
    kps = _check_keypoints(keypoints, b, None if kmap is None else len(kmap.keypoint_names))
    if kps is not None:  # unavailable points of the format never count
        kps = kps.clone()
        kps[:, ~kmap.available, 2] = 0
    dev = mask.device
    bdev = body_model.faces.device  # the body model is used where it is (never moved)
    one = [params.index(i if pb > 1 else 0).to(device=bdev) for i in range(b)]
    pelvis_z = []
    for i in range(b):
        with torch.no_grad():
            pelvis_z.append(float(body_model(one[i]).joints[0, 0, 2]))

    def frames(i):
        return _Posed(body_model, one[i], kmap, cfg.opt_pose, dev)

    def final_verts(i, geom, r):
        if r.pose is None:
            return geom()[0].detach()
        with torch.no_grad():
            p = one[i].replace(global_orient=r.pose[0].to(bdev), body_pose=r.pose[1].to(bdev))
            return body_model(p).vertices[0].to(dev)

    results, messages = _run(frames, body_model.faces, mask, tzv, kps, pelvis_z, cfg, progress,
                             final_verts)
    refined = []
    for i, r in enumerate(results):
        p = one[i]
        if r.pose is not None and r.valid:
            p = p.replace(global_orient=r.pose[0].detach().to(bdev),
                          body_pose=r.pose[1].detach().to(bdev))
        refined.append(p.to(device=params.betas.device))
    out_params = type(params).cat(refined)
    return CameraFit(
        camera=_camera(results, mask), iou=torch.tensor([r.iou for r in results]),
        valid=torch.tensor([r.valid for r in results]),
        iterations=torch.tensor([r.iters for r in results], dtype=torch.int64),
        init_camera=_camera(results, mask, init=True), params=out_params,
        messages=tuple(messages))
