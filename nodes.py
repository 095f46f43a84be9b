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

# ---------------------------------------------------------------- camera (stage 3)

# ---------------------------------------------------------------- render (stage 4)

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


NODE_CLASS_MAPPINGS = _node_classes()
NODE_DISPLAY_NAME_MAPPINGS = {name: getattr(cls, "DISPLAY_NAME", _display_name(name))
                              for name, cls in NODE_CLASS_MAPPINGS.items()}
