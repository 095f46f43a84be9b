"""Stage 4: every ControlNet-ready map of an SMPL-X body seen by its solved cameras.

:func:`render_maps` poses the body, places it in each frame's camera
(``X_cam = X + T``, :mod:`blade_nodes.camera.convention`), rasterizes frame by frame
(each frame with its own focal length, principal point and translation) and
derives depth, normal, silhouette, OpenPose (image + POSE_KEYPOINT), overlay and
a DensePose-style part map. The output size is the cameras' image size.

Keypoint visibility (OpenPose map and POSE_KEYPOINT): a keypoint is visible when
the body model has it, it lies in front of the camera (Z > near) and its
projection falls inside the frame (0 <= u < W, 0 <= v < H). With
``hide_occluded`` it must also not be hidden by the body: its depth may exceed
the rendered surface depth at its pixel by at most ``occlusion_tolerance``
metres (joints sit inside the limbs, so the tolerance must cover a limb's
half-thickness; 0.15 m by default). Visible points get c = 1.0 exactly,
others (0, 0, 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import maps, openpose
from .raster import BACKENDS, rasterize

Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class RenderConfig:
    """Options of :func:`render_maps`.

    Attributes:
        depth_normalize: "frame" (min-max of 1/Z per frame) or "batch" (one range
            for the whole batch: no flicker in video).
        depth_floor: value of the farthest body pixel in the depth map, 0..1.
        normal_convention: "normalbae" (default), "opengl" or "dsine" (maps.py).
        normal_background: "black" or "flat" (camera-facing colour).
        draw_body, draw_hands, draw_face: parts of the OpenPose map. Hands and face not
            drawn are null in POSE_KEYPOINT; the body is always written there (the
            controlnet_aux renderer cannot take a null body).
        xinsir_sticks: thicker limbs for xinsir's SDXL OpenPose ControlNet.
        hide_occluded: also hide keypoints behind the body (module doc).
        occlusion_tolerance: metres, see module doc.
        overlay_opacity: body opacity over the image, 0..1.
        part_colormap: "viridis" (MagicAnimate) or "parula" (CivitAI DensePose).
        near: metres; geometry closer than this is not drawn.
        backend: rasterizer back-end ("auto", "cpu", "numba", "torch", "nvdiffrast").
    """

    depth_normalize: str = "frame"
    depth_floor: float = 0.15
    normal_convention: str = "normalbae"
    normal_background: str = "black"
    draw_body: bool = True
    draw_hands: bool = True
    draw_face: bool = True
    xinsir_sticks: bool = False
    hide_occluded: bool = False
    occlusion_tolerance: float = 0.15
    overlay_opacity: float = 0.8
    part_colormap: str = "viridis"
    near: float = 1e-3
    backend: str = "auto"

    def __post_init__(self) -> None:
        for name, options in (("depth_normalize", maps.DEPTH_NORMALIZE),
                              ("normal_convention", maps.NORMAL_CONVENTIONS),
                              ("normal_background", maps.NORMAL_BACKGROUNDS),
                              ("part_colormap", maps.PART_COLORMAPS), ("backend", BACKENDS)):
            if getattr(self, name) not in options:
                raise ValueError(f"RenderConfig.{name}: expected one of {options}, "
                                 f"got {getattr(self, name)!r}")
        for name in ("depth_floor", "overlay_opacity"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"RenderConfig.{name}: expected a value in [0, 1], got {v}")
        if float(self.depth_floor) >= 1.0:
            raise ValueError("RenderConfig.depth_floor: expected < 1")
        if float(self.occlusion_tolerance) < 0:
            raise ValueError(f"RenderConfig.occlusion_tolerance: expected >= 0 metres, got "
                             f"{self.occlusion_tolerance}")


@dataclass(frozen=True)
class RenderResult:
    """Maps of B frames at the cameras' size (H, W); library images are [B, 3, H, W] 0..1.

    Attributes:
        depth: [B, H, W] 0..1 inverse depth, near bright, 0 background.
        normal: [B, 3, H, W] 0..1 normal map (``RenderConfig.normal_convention``).
        mask: [B, H, W] float 0/1 silhouette.
        openpose: [B, 3, H, W] 0..1 OpenPose map (annotator style).
        pose_keypoint: list of B POSE_KEYPOINT frame dicts (pixels, c = 1.0 visible).
        overlay: [B, 3, H, W] 0..1 shaded body over the image (or grey).
        parts: [B, 3, H, W] 0..1 DensePose-style part colours.
        part_index: [B, H, W] int64, 0 background, 1..24 DensePose part.
        body_2d: [B, 18, 2] OpenPose-18 body keypoints, pixels (u, v).
        body_visible: [B, 18] bool.
    """

    depth: Tensor
    normal: Tensor
    mask: Tensor
    openpose: Tensor
    pose_keypoint: list = field(repr=False)
    overlay: Tensor = field(repr=False)
    parts: Tensor = field(repr=False)
    part_index: Tensor = field(repr=False)
    body_2d: Tensor = field(repr=False)
    body_visible: Tensor = field(repr=False)


# ---------------------------------------------------------------- DensePose-style parts
# SMPL-X skeleton joint -> coarse part (DensePose fine parts are split front/back
# or left/right afterwards). Joint ids: smplx.joint_names.JOINT_NAMES[:55].
_COARSE = {
    "torso": (0, 3, 6, 9, 13, 14), "head": (12, 15, 22, 23, 24),
    "left_upper_leg": (1,), "right_upper_leg": (2,), "left_lower_leg": (4,),
    "right_lower_leg": (5,), "left_foot": (7, 10), "right_foot": (8, 11),
    "left_upper_arm": (16,), "right_upper_arm": (17,), "left_lower_arm": (18,),
    "right_lower_arm": (19,), "left_hand": (20, *range(25, 40)),
    "right_hand": (21, *range(40, 55)),
}


def vertex_parts(lbs_weights: Tensor, rest_verts: Tensor, faces: Tensor) -> Tensor:
    """DensePose-style part (1..24) of every vertex, from skinning weights.

    An approximation of DensePose's part split (not its official UV assignment):
    each vertex takes the part of its dominant skinning joint; torso, legs and arms
    are split into front/back by the sign of the rest-pose normal's z (the body
    faces +z at rest), the head into right/left by the sign of x (+x is the body's
    left).

    Args:
        lbs_weights: [V, 55] skinning weights.
        rest_verts: [V, 3] rest-pose vertices, model frame (y up, facing +z), metres.
        faces: [F, 3] int64.
    Returns:
        [V] int64 in 1..24 (``maps.DENSEPOSE_PARTS[i - 1]``).
    """
    joint = lbs_weights[:, :55].argmax(1)
    coarse_of_joint = {}
    for name, joints in _COARSE.items():
        for j in joints:
            coarse_of_joint[j] = name
    lut = {n: i + 1 for i, n in enumerate(maps.DENSEPOSE_PARTS)}
    n = maps.vertex_normals(rest_verts[None].to(torch.float32), faces)[0]
    front = n[:, 2] >= 0
    right_side = rest_verts[:, 0] < 0
    out = torch.zeros(joint.shape[0], dtype=torch.int64)
    names = [coarse_of_joint.get(int(j), "torso") for j in joint.tolist()]
    for v, name in enumerate(names):
        if name == "torso":
            out[v] = lut["torso_front" if front[v] else "torso_back"]
        elif name == "head":
            out[v] = lut["right_head" if right_side[v] else "left_head"]
        elif name.endswith(("hand", "foot")):
            out[v] = lut[name]
        else:
            out[v] = lut[f"{name}_{'front' if front[v] else 'back'}"]
    return out


def _model_vertex_parts(body_model) -> Tensor:
    cached = getattr(body_model, "_blade_vertex_parts", None)
    if cached is not None:
        return cached
    s = body_model.smplx
    parts = vertex_parts(s.lbs_weights.detach().cpu(), s.v_template.detach().cpu(),
                         body_model.faces.cpu())
    try:
        object.__setattr__(body_model, "_blade_vertex_parts", parts)
    except Exception:  # pragma: no cover - a model that refuses attributes
        pass
    return parts


# ---------------------------------------------------------------- keypoints
def _project(points_cam: Tensor, focal: Tensor, principal: Tensor) -> Tensor:
    z = points_cam[..., 2:3].clamp_min(1e-9)
    return points_cam[..., :2] / z * focal[:, None, None] + principal[:, None, :]


def keypoint_visibility(points_cam: Tensor, uv: Tensor, available: Tensor, width: int,
                        height: int, near: float = 1e-3, depth: Tensor | None = None,
                        tolerance: float = 0.15) -> Tensor:
    """Which keypoints are visible (module doc).

    Args:
        points_cam: [B, K, 3] camera-space keypoints, metres.
        uv: [B, K, 2] their projections, pixels.
        available: [K] bool, the body model has the keypoint.
        width, height: frame size, pixels.
        depth: [B, H, W] rendered depth (0 background) to hide occluded points, or None.
        tolerance: metres a point may lie behind the rendered surface.
    Returns:
        [B, K] bool.
    """
    u, v = uv[..., 0], uv[..., 1]
    vis = available.to(uv.device)[None] & (points_cam[..., 2] > near) & torch.isfinite(uv).all(-1)
    vis &= (u >= 0) & (u < width) & (v >= 0) & (v < height)
    if depth is not None:
        b = torch.arange(uv.shape[0], device=uv.device)[:, None].expand_as(u)
        jj = u.clamp(0, width - 1).floor().long()
        ii = v.clamp(0, height - 1).floor().long()
        surf = depth[b, ii, jj]
        vis &= (surf <= 0) | (points_cam[..., 2] - surf <= tolerance)
    return vis


# ---------------------------------------------------------------- stage function
def _broadcast(n: int, b: int, what: str) -> None:
    if n not in (1, b):
        raise ValueError(f"{what}: expected 1 or {b} frames (one per frame of the batch), got {n}; "
                         "give one camera per frame or a single camera for all")


def render_maps(body_model, params, camera, image: Tensor | None = None,
                cfg: RenderConfig = RenderConfig(), progress: Progress = None) -> RenderResult:
    """Render every map of a batch, each frame with its own camera.

    Args:
        body_model: :class:`blade_nodes.body.BodyModel`.
        params: :class:`blade_nodes.body.SMPLXParams`, B frames (or 1, broadcast);
            frames with ``valid == False`` are rendered empty.
        camera: :class:`blade_nodes.camera.Camera`, B cameras (or 1, broadcast); every
            camera must have the same image size.
        image: [B, 3, H, W] (or [1, 3, H, W]) 0..1 picture under the overlay, resized
            bilinearly to the cameras' size when it differs; None for grey.
        cfg: :class:`RenderConfig`.
        progress: progress(frame, B) after each frame; may raise to cancel.
    Returns:
        :class:`RenderResult` on the CPU.
    Raises:
        ValueError: batch sizes or image sizes disagree.
    """
    bp, bc = params.batch_size, camera.batch_size
    b = max(bp, bc)
    _broadcast(bp, b, "smplx")
    _broadcast(bc, b, "camera")
    sizes = camera.image_size.cpu()
    if bool((sizes != sizes[:1]).any()):
        raise ValueError(f"camera.image_size: expected one size for the whole batch, got "
                         f"{sorted({tuple(s) for s in sizes.tolist()})}; render frames of "
                         "different sizes separately")
    width, height = int(sizes[0, 0]), int(sizes[0, 1])
    if width <= 0 or height <= 0:
        raise ValueError(f"camera.image_size: expected positive (W, H), got ({width}, {height})")
    if image is not None:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image: expected [B, 3, H, W], got {tuple(image.shape)}")
        _broadcast(image.shape[0], b, "image")
        if tuple(image.shape[-2:]) != (height, width):
            image = F.interpolate(image.float(), size=(height, width), mode="bilinear",
                                  align_corners=False)
        image = image.float().cpu().clamp(0, 1)

    ref = body_model.smplx.v_template
    dev = ref.device
    with torch.no_grad():
        out = body_model(params)
    idx = torch.arange(b) if bp == b else torch.zeros(b, dtype=torch.long)
    cidx = torch.arange(b) if bc == b else torch.zeros(b, dtype=torch.long)
    verts = out.vertices.detach()[idx.to(dev)]
    joints = out.joints.detach()[idx.to(dev)]
    cam = camera.index(cidx) if bc != b else camera
    focal = cam.focal.to(dev, ref.dtype)
    principal = cam.principal.to(dev, ref.dtype)
    trans = cam.translation.to(dev, ref.dtype)
    verts_cam = verts + trans[:, None]
    joints_cam = joints + trans[:, None]
    faces = body_model.faces.to(dev)
    valid = torch.ones(b, dtype=torch.bool) if params.valid is None \
        else params.valid.cpu().bool()[idx]
    vparts = _model_vertex_parts(body_model).to(dev)

    # keypoints of every part, camera space and pixels
    parts_fmt = {"body": "openpose18", "left_hand": "left_hand21", "right_hand": "right_hand21",
                 "face": "face70"}
    kp = {}
    for part, fmt in parts_fmt.items():
        km = body_model.keypoint_map(fmt)
        pc = km(joints_cam)
        kp[part] = (pc, _project(pc, focal, principal), km.available)

    depth_raw = torch.zeros(b, height, width)
    mask = torch.zeros(b, height, width, dtype=torch.bool)
    normal = torch.zeros(b, 3, height, width)
    shaded = torch.zeros(b, 3, height, width)
    part_index = torch.zeros(b, height, width, dtype=torch.int64)
    openpose_img = torch.zeros(b, 3, height, width)
    pose_kps: list[dict] = []
    body_vis = torch.zeros(b, 18, dtype=torch.bool)
    stick = openpose.xinsir_stick_scale(height, width) if cfg.xinsir_sticks else 1
    for i in range(b):
        people: list[openpose.OpenPosePerson] = []
        if bool(valid[i]):
            sl = slice(i, i + 1)
            fr = rasterize(verts_cam[sl], faces, focal[sl], principal[sl], height, width,
                           near=cfg.near, backend=cfg.backend)
            n_img = maps.normal_image(verts_cam[sl], faces, fr)
            m = fr.mask
            depth_raw[i] = fr.depth[0].float().cpu()
            mask[i] = m[0].cpu()
            normal[i] = maps.normal_colors(n_img, m, cfg.normal_convention,
                                           cfg.normal_background)[0].cpu()
            shaded[i] = maps.shade(n_img, m)[0].cpu()
            corner = fr.bary.argmax(-1, keepdim=True)  # nearest corner of the visible face
            vid = torch.gather(faces[fr.face_id.clamp_min(0)], -1, corner)[..., 0]
            part_index[i] = torch.where(m, vparts[vid], torch.zeros_like(vid))[0].cpu()
            vis = {}
            for part, (pc, uv, avail) in kp.items():
                vis[part] = keypoint_visibility(
                    pc[sl], uv[sl], avail, width, height, cfg.near,
                    fr.depth if cfg.hide_occluded else None, cfg.occlusion_tolerance)[0].cpu()
            np_uv = {part: kp[part][1][i].detach().cpu().double().numpy() for part in kp}
            np_vis = {part: vis[part].numpy() for part in vis}
            body_vis[i] = vis["body"]
            people.append(openpose.OpenPosePerson(
                body=np_uv["body"], body_visible=np_vis["body"],
                left_hand=np_uv["left_hand"], left_hand_visible=np_vis["left_hand"],
                right_hand=np_uv["right_hand"], right_hand_visible=np_vis["right_hand"],
                face=np_uv["face"], face_visible=np_vis["face"]))
        canvas = openpose.draw_openpose(people, height, width, draw_body_parts=cfg.draw_body,
                                        draw_hands=cfg.draw_hands, draw_faces=cfg.draw_face,
                                        stick_scale=stick)
        openpose_img[i] = torch.from_numpy(canvas).permute(2, 0, 1).float() / 255
        frame = openpose.pose_keypoint_frame(people, height, width, hands=cfg.draw_hands,
                                             face=cfg.draw_face)
        pose_kps.append(frame)
        if progress is not None:
            progress(i + 1, b)

    depth = maps.inverse_depth_normalize(depth_raw, mask, cfg.depth_normalize, cfg.depth_floor)
    over = maps.overlay(shaded, mask, image, cfg.overlay_opacity)
    parts_rgb = maps.part_colors(part_index, cfg.part_colormap)
    body_uv = kp["body"][1].detach().cpu().float()
    return RenderResult(depth=depth, normal=normal, mask=mask.float(), openpose=openpose_img,
                        pose_keypoint=pose_kps, overlay=over, parts=parts_rgb,
                        part_index=part_index, body_2d=body_uv, body_visible=body_vis)

