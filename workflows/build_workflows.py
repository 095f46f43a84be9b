"""Builds the shipped workflows from compact graph descriptions and the LIVE node signatures.

    .venv/bin/python workflows/build_workflows.py            # rewrite workflows/*.json (+ api/)
    .venv/bin/python workflows/build_workflows.py --check    # exit 1 when a file is stale
    .venv/bin/python workflows/build_workflows.py --inputs   # also re-make workflows/inputs/*
    .venv/bin/python workflows/build_workflows.py --record-core http://127.0.0.1:8188
                                # refresh tests/data/comfy_core_nodes.json from a running ComfyUI

Signatures come from three places, all in the shape of ComfyUI's ``GET /object_info``:
- our nodes: ``nodes.NODE_CLASS_MAPPINGS`` imported from the repository root (live INPUT_TYPES);
- ComfyUI core: ``tests/data/comfy_core_nodes.json`` (recorded from ComfyUI 0.3.75);
- other packs: ``tests/data/comfy_other_packs_nodes.json`` (hand-written from their sources,
  documented there).

UI-format rules followed (docs: ecosystem §3.1.9): ``widgets_values`` is positional, one value
per widget input in INPUT_TYPES order (required, then optional), socket-only types skipped,
plus the value the frontend inserts after an INT with ``control_after_generate`` (or named
``seed``/``noise_seed``); links are ``[id, origin, origin_slot, target, target_slot, type]``
with ``target_slot`` an index into the target's saved ``inputs`` list (sockets, plus widget
inputs that carry a link, marked ``widget: {name}``).

Run it again whenever a node's inputs change: ``tests/test_workflows.py`` fails when a
shipped file differs from what this script builds from the live nodes.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
API_DIR = HERE / "api"
INPUTS_DIR = HERE / "inputs"
CORE_SNAPSHOT = REPO / "tests" / "data" / "comfy_core_nodes.json"
OTHER_SNAPSHOT = REPO / "tests" / "data" / "comfy_other_packs_nodes.json"

SAMPLE_PNG = "blade_sample.png"
SAMPLE_KEYPOINTS = "blade_sample_keypoints.json"
FRAMES_PNG = "blade_sample_frames.png"
FRAMES_KEYPOINTS = "blade_sample_frames_keypoints.json"
SAMPLE_SIZE = (384, 480)    # (W, H) of the shipped photo
FRAMES_SIZE = (256, 320)    # (W, H) of the shipped frames
N_FRAMES = 4

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Custom widget types registered by other packs' JavaScript (value stored like a STRING).
EXTRA_WIDGET_TYPES = {"COLORCODE"}
SEED_NAMES = {"seed", "noise_seed"}


# ---------------------------------------------------------------- signatures
def _our_info() -> dict[str, dict]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import nodes  # noqa: PLC0415 (the pack's nodes.py, repository root)
    out = {}
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        out[name] = {
            "input": {k: {n: list(v) for n, v in spec.get(k, {}).items()}
                      for k in ("required", "optional") if k in spec},
            "input_order": {k: list(spec[k]) for k in ("required", "optional") if k in spec},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
            "pack": "blade-nodes",
        }
    return out


def load_signatures() -> dict[str, dict]:
    """node type -> /object_info-like entry (plus "pack": blade-nodes / core / pack name)."""
    info: dict[str, dict] = {}
    for name, entry in json.loads(CORE_SNAPSHOT.read_text())["nodes"].items():
        info[name] = dict(entry, pack="core")
    for name, entry in json.loads(OTHER_SNAPSHOT.read_text())["nodes"].items():
        info[name] = dict(entry)
    ours = _our_info()
    clash = set(ours) & set(info)
    if clash:
        raise ValueError(f"node ids of blade-nodes taken by core/other packs: {sorted(clash)}")
    info.update(ours)
    return info


def _spec(entry: dict, name: str) -> tuple[Any, dict]:
    for sec in ("required", "optional"):
        if name in entry["input"].get(sec, {}):
            v = entry["input"][sec][name]
            return v[0], (v[1] if len(v) > 1 and isinstance(v[1], dict) else {})
    raise KeyError(name)


def input_names(entry: dict) -> list[tuple[str, str]]:
    """(section, name) of every input, in the order the frontend builds them."""
    order = entry.get("input_order") or {k: list(v) for k, v in entry["input"].items()}
    return [(sec, n) for sec in ("required", "optional") for n in order.get(sec, [])]


def is_widget(kind: Any, opts: dict) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES or kind in EXTRA_WIDGET_TYPES


def combo_choices(kind: Any, opts: dict) -> list | None:
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(opts.get("options", []))
    return None


def has_control(name: str, kind: Any, opts: dict) -> bool:
    return kind == "INT" and (bool(opts.get("control_after_generate")) or name in SEED_NAMES)


def widget_slots(entry: dict) -> list[tuple[str, Any, dict, bool]]:
    """(name, kind, options, is_control_value) per widgets_values position."""
    slots = []
    for _, name in input_names(entry):
        kind, opts = _spec(entry, name)
        if not is_widget(kind, opts):
            continue
        slots.append((name, kind, opts, False))
        if has_control(name, kind, opts):
            slots.append((name, "CONTROL", {}, True))
    return slots


def default_value(kind: Any, opts: dict):
    if "default" in opts:
        return opts["default"]
    choices = combo_choices(kind, opts)
    if choices is not None:
        return choices[0] if choices else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind, "")


# ---------------------------------------------------------------- graph description
@dataclass(frozen=True)
class Out:
    node: "Node"
    name: str


@dataclass(eq=False)
class Node:
    type: str
    values: dict[str, Any]
    title: str | None = None
    size: tuple[int, int] | None = None
    column: int | None = None
    id: int = 0

    def __getitem__(self, output: str) -> Out:
        return Out(self, output)


@dataclass
class Graph:
    name: str
    description: str
    nodes: list[Node] = field(default_factory=list)
    notes: list[tuple[str, int]] = field(default_factory=list)   # (markdown, column)
    needs: list[str] = field(default_factory=list)   # other packs the workflow needs
    api: bool = True

    def add(self, type_: str, title: str | None = None, size=None, column=None, **values) -> Node:
        n = Node(type_, values, title, size, column, len(self.nodes) + 1)
        self.nodes.append(n)
        return n

    def note(self, text: str, column: int = 0) -> None:
        self.notes.append((text, column))


# ---------------------------------------------------------------- building
def _resolve(graph: Graph, info: dict):
    """Per node: schema entry, socket links, widget values; raises on any mismatch."""
    plans = {}
    for n in graph.nodes:
        if n.type not in info:
            raise ValueError(f"{graph.name}: unknown node type {n.type}")
        entry = info[n.type]
        names = {name for _, name in input_names(entry)}
        unknown = set(n.values) - names
        if unknown:
            raise ValueError(f"{graph.name}: {n.type} has no input(s) {sorted(unknown)}; "
                             f"inputs are {sorted(names)}")
        links, widgets = {}, {}
        for sec, name in input_names(entry):
            kind, opts = _spec(entry, name)
            v = n.values.get(name)
            if isinstance(v, Out):
                src = info[v.node.type]
                if v.name not in src["output_name"]:
                    raise ValueError(f"{graph.name}: {v.node.type} has no output {v.name!r} "
                                     f"(outputs {src['output_name']})")
                slot = src["output_name"].index(v.name)
                otype = src["output"][slot]
                want = "COMBO" if isinstance(kind, list) else kind
                if otype != want and "*" not in (otype, want):
                    raise ValueError(f"{graph.name}: {v.node.type}.{v.name} is {otype}, "
                                     f"{n.type}.{name} wants {want}")
                links[name] = (v.node, slot, otype)
            if is_widget(kind, opts):
                if name in n.values and not isinstance(v, Out):
                    widgets[name] = v
                else:
                    widgets[name] = default_value(kind, opts)
                    if widgets[name] is None and name not in links:
                        raise ValueError(f"{graph.name}: {n.type}.{name} needs a value")
            elif name not in links and sec == "required":
                raise ValueError(f"{graph.name}: {n.type}.{name} ({kind}) is not connected")
        plans[n.id] = (entry, links, widgets)
    return plans


def _order(graph: Graph, plans) -> list[Node]:
    done, order = set(), []
    pending = list(graph.nodes)
    while pending:
        for n in pending:
            if all(src.id in done for src, _, _ in plans[n.id][1].values()):
                order.append(n)
                done.add(n.id)
                pending.remove(n)
                break
        else:
            raise ValueError(f"{graph.name}: the graph has a cycle")
    return order


def _columns(order: list[Node], plans) -> dict[int, int]:
    col = {}
    for n in order:
        deps = [col[src.id] + 1 for src, _, _ in plans[n.id][1].values()]
        col[n.id] = n.column if n.column is not None else max(deps, default=0)
    return col


def _size(n: Node, entry: dict, n_sockets: int, n_widgets: int) -> list[int]:
    if n.size:
        return list(n.size)
    rows = max(n_sockets, len(entry["output"]))
    return [320, 46 + 22 * rows + 26 * n_widgets]


def build_ui(graph: Graph, info: dict) -> dict:
    plans = _resolve(graph, info)
    order = _order(graph, plans)
    col = _columns(order, plans)
    link_id = 0
    links, ui_nodes = [], {}
    out_links: dict[tuple[int, int], list[int]] = {}
    for n in order:
        entry, nlinks, widgets = plans[n.id]
        inputs = []
        for sec, name in input_names(entry):
            kind, opts = _spec(entry, name)
            widget = is_widget(kind, opts)
            if widget and name not in nlinks:
                continue
            item = {"name": name, "type": "COMBO" if isinstance(kind, list) else kind}
            if sec == "optional":
                item["shape"] = 7
            if widget:
                item["widget"] = {"name": name}
            if name in nlinks:
                src, slot, otype = nlinks[name]
                link_id += 1
                links.append([link_id, src.id, slot, n.id, len(inputs), otype])
                out_links.setdefault((src.id, slot), []).append(link_id)
                item["link"] = link_id
            else:
                item["link"] = None
            inputs.append(item)
        values = []
        for name, kind, opts, control in widget_slots(entry):
            values.append("fixed" if control else widgets[name])
        node = {"id": n.id, "type": n.type, "pos": [0, 0],
                "size": _size(n, entry, sum(1 for i in inputs if "widget" not in i), len(values)),
                "flags": {}, "order": order.index(n), "mode": 0, "inputs": inputs,
                "outputs": [], "properties": {"Node name for S&R": n.type},
                "widgets_values": values}
        if n.title:
            node["title"] = n.title
        ui_nodes[n.id] = node
    for n in order:
        entry = plans[n.id][0]
        ui_nodes[n.id]["outputs"] = [
            {"name": entry["output_name"][i], "type": t, "links": out_links.get((n.id, i), []),
             "slot_index": i} for i, t in enumerate(entry["output"])]
    # layout: one column per dependency depth, notes above their column
    x_of, y_next = {}, {}
    width = {}
    for n in order:
        width[col[n.id]] = max(width.get(col[n.id], 0), ui_nodes[n.id]["size"][0])
    x = 0
    for c in sorted(width):
        x_of[c] = x
        x += width[c] + 60
    note_nodes = []
    next_id = len(graph.nodes)
    for text, c in graph.notes:
        next_id += 1
        h = 60 + 20 * max(text.count("\n") + 1, len(text) // 48 + 1)
        y = y_next.get(c, 0)
        note_nodes.append({"id": next_id, "type": "MarkdownNote", "pos": [x_of.get(c, 0), y],
                           "size": [max(width.get(c, 320), 380), h], "flags": {},
                           "order": len(order) + len(note_nodes), "mode": 0, "inputs": [],
                           "outputs": [], "properties": {}, "widgets_values": [text],
                           "color": "#432", "bgcolor": "#653"})
        y_next[c] = y + h + 40
    for n in order:
        c = col[n.id]
        y = y_next.get(c, 0)
        ui_nodes[n.id]["pos"] = [x_of[c], y]
        y_next[c] = y + ui_nodes[n.id]["size"][1] + 50
    all_nodes = [ui_nodes[n.id] for n in graph.nodes] + note_nodes
    extra = {"ds": {"scale": 0.7, "offset": [40, 40]}, "blade_nodes": {
        "workflow": graph.name, "description": graph.description,
        "generated_by": "workflows/build_workflows.py (do not edit by hand)"}}
    if graph.needs:
        extra["blade_nodes"]["needs_packs"] = graph.needs
    return {"last_node_id": next_id, "last_link_id": link_id, "nodes": all_nodes,
            "links": links, "groups": [], "config": {}, "extra": extra, "version": 0.4}


def build_api(graph: Graph, info: dict) -> dict:
    plans = _resolve(graph, info)
    prompt = {}
    for n in _order(graph, plans):
        entry, nlinks, widgets = plans[n.id]
        inputs: dict[str, Any] = {}
        for _, name in input_names(entry):
            if name in nlinks:
                src, slot, _ = nlinks[name]
                inputs[name] = [str(src.id), slot]
            elif name in widgets:
                inputs[name] = widgets[name]
        prompt[str(n.id)] = {"class_type": n.type, "inputs": inputs,
                             "_meta": {"title": n.title or n.type}}
    return prompt


# ---------------------------------------------------------------- validation (tests use it)
def validate_ui(wf: dict, info: dict, input_files: set[str] | None = None) -> list[str]:
    """Problems of a UI-format workflow against the signatures ([] when it is sound)."""
    errs = []
    nodes_by_id = {n["id"]: n for n in wf.get("nodes", [])}
    if len(nodes_by_id) != len(wf.get("nodes", [])):
        errs.append("duplicate node ids")
    for link in wf.get("links", []):
        lid, o, oslot, t, tslot, ltype = link
        if o not in nodes_by_id or t not in nodes_by_id:
            errs.append(f"link {lid}: missing node {o} or {t}")
            continue
        src, dst = nodes_by_id[o], nodes_by_id[t]
        try:
            out, inp = src["outputs"][oslot], dst["inputs"][tslot]
        except IndexError:
            errs.append(f"link {lid}: slot out of range")
            continue
        if lid not in (out.get("links") or []) or inp.get("link") != lid:
            errs.append(f"link {lid}: not recorded on both ends")
        if not (out["type"] == ltype == inp["type"] or "*" in (out["type"], inp["type"])):
            errs.append(f"link {lid}: {src['type']}.{out['name']} ({out['type']}) -> "
                        f"{dst['type']}.{inp['name']} ({inp['type']}), link says {ltype}")
        if src["type"] in info and out["type"] != info[src["type"]]["output"][oslot]:
            errs.append(f"link {lid}: output {oslot} of {src['type']} is "
                        f"{info[src['type']]['output'][oslot]}, workflow says {out['type']}")
    for n in wf.get("nodes", []):
        t = n["type"]
        if t in FRONTEND_ONLY:
            continue
        if t not in info:
            errs.append(f"node {n['id']}: unknown type {t}")
            continue
        entry = info[t]
        linked = {i["name"] for i in n.get("inputs", []) if i.get("link") is not None}
        for i in n.get("inputs", []):
            try:
                kind, opts = _spec(entry, i["name"])
            except KeyError:
                errs.append(f"node {n['id']} ({t}): no input named {i['name']}")
                continue
            want = "COMBO" if isinstance(kind, list) else kind
            if i["type"] != want:
                errs.append(f"node {n['id']} ({t}).{i['name']}: type {i['type']}, node has {want}")
        for sec, name in input_names(entry):
            kind, opts = _spec(entry, name)
            if sec == "required" and not is_widget(kind, opts) and name not in linked:
                errs.append(f"node {n['id']} ({t}): required input {name} not connected")
        slots = widget_slots(entry)
        vals = n.get("widgets_values") or []
        if len(vals) != len(slots):
            errs.append(f"node {n['id']} ({t}): {len(vals)} widget values, the node has "
                        f"{len(slots)} ({[s[0] for s in slots]})")
            continue
        for (name, kind, opts, control), v in zip(slots, vals):
            where = f"node {n['id']} ({t}).{name} = {v!r}"
            if control:
                if v not in ("fixed", "increment", "decrement", "randomize"):
                    errs.append(f"{where}: not a control_after_generate value")
                continue
            if name in linked:
                continue
            problem = check_value(kind, opts, v)
            if problem:
                errs.append(f"{where}: {problem}")
            if t == "LoadImage" and name == "image" and input_files is not None \
                    and v not in input_files:
                errs.append(f"{where}: not shipped in workflows/inputs")
    return errs


def check_value(kind: Any, opts: dict, v: Any) -> str | None:
    choices = combo_choices(kind, opts)
    if choices is not None:
        if not isinstance(v, str):
            return "combo value is not a string"
        if choices and v not in choices:
            return f"not one of {choices}"
        return None
    if kind == "INT":
        if not isinstance(v, int) or isinstance(v, bool):
            return "not an integer"
    elif kind == "FLOAT":
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return "not a number"
    elif kind == "BOOLEAN":
        if not isinstance(v, bool):
            return "not a boolean"
    elif kind in ("STRING", *EXTRA_WIDGET_TYPES):
        if not isinstance(v, str):
            return "not a string"
    if kind in ("INT", "FLOAT"):
        if "min" in opts and v < opts["min"]:
            return f"below min {opts['min']}"
        if "max" in opts and v > opts["max"]:
            return f"above max {opts['max']}"
    return None


# ---------------------------------------------------------------- the workflows
def _open_body() -> str:
    import nodes  # noqa: PLC0415
    return nodes.OPEN_BODY


SD15_TABLE = """| BLADE map | SD1.5 ControlNet | SDXL ControlNet |
|---|---|---|
| depth | control_v11f1p_sd15_depth | diffusers/controlnet-depth-sdxl-1.0, xinsir/controlnet-depth-sdxl-1.0, xinsir union promax (type depth) |
| normal (normalbae) | control_v11p_sd15_normalbae | xinsir union promax (type normal) |
| openpose | control_v11p_sd15_openpose | thibaud/controlnet-openpose-sdxl-1.0; xinsir/controlnet-openpose-sdxl-1.0 (turn on xinsir_sticks); union promax (type openpose) |
| densepose (parula colours) | CivitAI DensePose ControlNet (model 120149) | none known |

Union models need core's *SetUnionControlNetType* before *Apply ControlNet*. SDXL: use an SDXL checkpoint and a latent of about 1 megapixel (e.g. 896x1120 for this 4:5 photo)."""


def _pipeline(g: Graph, image: Out, person_mask: Out, keypoints: Out, frames: bool = False,
              tz_guess: float = 1.0):
    """The four BLADE stages shared by the photo workflows; returns (body, pose, camera, render)."""
    body = g.add("BladeLoadBodyModel", model=_open_body(), column=1)
    tz = g.add("BladeEstimateTz", image=image, mask=person_mask, method="manual",
               manual_tz=tz_guess, column=2)
    pose = g.add("BladeEstimatePose", image=image, tz=tz["tz"], body_model=body["body_model"],
                 keypoints=keypoints, mask=person_mask, refine_tz=True, column=3)
    cam = g.add("BladeSolveCamera", smplx=pose["smplx"], body_model=body["body_model"],
                tz=tz["tz"], mask=person_mask, image=image, keypoints=keypoints, opt_tz=True,
                column=4)
    g.add("PreviewImage", title="Camera fit (mask outline)", images=cam["preview"],
          size=(300, 330), column=5)
    render_values = {"depth_normalize": "batch"} if frames else {}
    render = g.add("BladeRender", smplx=cam["smplx"], body_model=body["body_model"],
                   camera=cam["camera"], image=image, column=5, **render_values)
    return body, pose, cam, render


def _previews(g: Graph, render: Node, prefix: str, column: int = 6) -> None:
    for name in ("overlay", "depth", "normal", "openpose", "densepose"):
        g.add("SaveImage", title=f"Save {name}", images=render[name],
              filename_prefix=f"{prefix}/{name}", size=(300, 330), column=column)
    sil = g.add("MaskToImage", mask=render["silhouette"], column=column)
    g.add("PreviewImage", title="Preview silhouette", images=sil["IMAGE"], size=(300, 330),
          column=column + 1)


def _sample_photo(g: Graph):
    """The sample RGBA photo, its person mask (inverted alpha) and its keypoint file."""
    img = g.add("LoadImage", title="Photo (alpha = person mask)", image=SAMPLE_PNG,
                size=(300, 400), column=0)
    mask = g.add("InvertMask", title="Person mask", mask=img["MASK"], column=1)
    kps = g.add("BladeLoadPoseKeypoints", path=SAMPLE_KEYPOINTS, column=1)
    return img, mask, kps


def photo_to_renders(keypoints_node: bool = True) -> Graph:
    g = Graph("blade_photo_to_renders",
              "(a) One photo with an alpha person mask + POSE_KEYPOINT file -> Tz, SMPL-X pose, "
              "perspective camera -> ControlNet maps, previews, saved PNGs and a GLB in Preview 3D.")
    g.note("## BLADE: photo to renders\nLoad Image gives the photo and `1 - alpha` as MASK; "
           "*Invert Mask* turns it into the person mask. The sample "
           f"(`{SAMPLE_PNG}`, `{SAMPLE_KEYPOINTS}`) is copied into ComfyUI's input folder when "
           "the pack loads. For a learned Tz, add *BLADE Load DepthNet* (models/blade/"
           "epoch_2.pth or a Depth Anything V2 metric folder) and connect it to *Estimate Tz* "
           "with method `auto`.", column=0)
    img, mask, kps = _sample_photo(g)
    body, pose, cam, render = _pipeline(g, img["IMAGE"], mask["MASK"], kps["pose_keypoint"])
    _previews(g, render, "blade/photo")
    mesh = g.add("BladeSaveMesh", smplx=cam["smplx"], body_model=body["body_model"],
                 camera=cam["camera"], filename_prefix="blade/photo/mesh", column=6)
    g.add("Preview3D", model_file=mesh["model_file"], camera_info=mesh["camera_info"],
          size=(400, 450), column=7)
    g.add("BladeSaveParams", smplx=cam["smplx"], camera=cam["camera"],
          filename_prefix="blade/photo/params", column=6)
    return g


def renders_to_controlnet() -> Graph:
    g = Graph("blade_renders_to_controlnet",
              "(b) The photo pipeline of (a), its depth and OpenPose maps into two stacked core "
              "ControlNets, an SD1.5 checkpoint, KSampler, VAE decode and save.")
    g.note("## Which ControlNet fits which map\n" + SD15_TABLE + "\n\nFiles: checkpoints go "
           "in `models/checkpoints`, ControlNets in `models/controlnet` (SD1.5: "
           "huggingface.co/lllyasviel/ControlNet-v1-1, the `.pth` files). Pick yours in the "
           "two loaders.", column=0)
    img, mask, kps = _sample_photo(g)
    body, pose, cam, render = _pipeline(g, img["IMAGE"], mask["MASK"], kps["pose_keypoint"])
    g.add("PreviewImage", title="Preview depth", images=render["depth"], size=(300, 330),
          column=6)
    g.add("PreviewImage", title="Preview openpose", images=render["openpose"], size=(300, 330),
          column=6)
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly-fp16.safetensors",
                 column=4)
    pos = g.add("CLIPTextEncode", title="Positive prompt", clip=ckpt["CLIP"],
                text="photo of a person in a red rain jacket and jeans, city street, soft "
                     "daylight, detailed", column=5)
    neg = g.add("CLIPTextEncode", title="Negative prompt", clip=ckpt["CLIP"],
                text="nude, deformed hands, extra limbs, blurry, low quality", column=5)
    cn_depth = g.add("ControlNetLoader", title="ControlNet: depth",
                     control_net_name="control_v11f1p_sd15_depth.pth", column=5)
    cn_pose = g.add("ControlNetLoader", title="ControlNet: openpose",
                    control_net_name="control_v11p_sd15_openpose.pth", column=6)
    a1 = g.add("ControlNetApplyAdvanced", title="Apply depth", positive=pos["CONDITIONING"],
               negative=neg["CONDITIONING"], control_net=cn_depth["CONTROL_NET"],
               image=render["depth"], strength=0.7, end_percent=0.8, vae=ckpt["VAE"], column=7)
    a2 = g.add("ControlNetApplyAdvanced", title="Apply openpose", positive=a1["positive"],
               negative=a1["negative"], control_net=cn_pose["CONTROL_NET"],
               image=render["openpose"], strength=0.9, vae=ckpt["VAE"], column=8)
    lat = g.add("EmptyLatentImage", width=512, height=640, batch_size=1, column=8)
    ks = g.add("KSampler", model=ckpt["MODEL"], positive=a2["positive"], negative=a2["negative"],
               latent_image=lat["LATENT"], seed=1234, steps=25, cfg=6.5,
               sampler_name="dpmpp_2m", scheduler="karras", column=9)
    dec = g.add("VAEDecode", samples=ks["LATENT"], vae=ckpt["VAE"], column=10)
    g.add("SaveImage", images=dec["IMAGE"], filename_prefix="blade/controlnet",
          size=(400, 500), column=11)
    return g


def video_frames() -> Graph:
    g = Graph("blade_video_frames",
              "(c) A batch of frames (an animated PNG loads as a batch) -> per-frame Tz, pose, "
              "camera -> renders with one depth range for the whole sequence, an animated "
              "preview and a rigged GLB animation.")
    g.note("## BLADE: video frames\nLoad Image reads every frame of an animated PNG/WebP as "
           "one batch (same size). The keypoint file holds one dict per frame. *BLADE Render* "
           "uses `depth_normalize = batch`: one near..far range for the sequence, so the depth "
           "video does not flicker. For a video file use core *Load Video* + *Get Video "
           "Components* and a per-frame mask (e.g. RMBG, see the DWPose workflow).", column=0)
    img = g.add("LoadImage", title="Frames (animated PNG, alpha = person)", image=FRAMES_PNG,
                size=(300, 400), column=0)
    mask = g.add("InvertMask", title="Person masks", mask=img["MASK"], column=1)
    kps = g.add("BladeLoadPoseKeypoints", path=FRAMES_KEYPOINTS, column=1)
    body, pose, cam, render = _pipeline(g, img["IMAGE"], mask["MASK"], kps["pose_keypoint"],
                                        frames=True, tz_guess=1.0)
    for name in ("depth", "openpose", "overlay"):
        g.add("SaveAnimatedWEBP", title=f"Animated {name}", images=render[name],
              filename_prefix=f"blade/frames/anim_{name}", fps=4.0, size=(300, 380), column=6)
    g.add("SaveImage", title="Save depth frames", images=render["depth"],
          filename_prefix="blade/frames/depth", size=(300, 330), column=7)
    g.add("BladeExportAnimation", smplx=cam["smplx"], body_model=body["body_model"],
          camera=cam["camera"], format="glb", fps=4.0, filename_prefix="blade/frames/animation",
          column=7)
    return g


def photo_dwpose() -> Graph:
    g = Graph("blade_photo_dwpose",
              "(d) As (a), but the keypoints come from comfyui_controlnet_aux's DWPose and the "
              "person mask from ComfyUI-RMBG: any photo, no side files.")
    g.needs = ["comfyui_controlnet_aux (Fannovel16): DWPreprocessor",
               "ComfyUI-RMBG (1038lab): RMBG"]
    g.api = False
    g.note("## Needs two other packs\n- **comfyui_controlnet_aux** (Fannovel16) for *DWPose "
           "Estimator* (`DWPreprocessor`): downloads yzd-v/DWPose on first use.\n- "
           "**ComfyUI-RMBG** (1038lab) for *Remove Background (RMBG)*: the person mask "
           "(downloads its model on first use).\nInstall both with ComfyUI-Manager (*Install "
           "Missing Custom Nodes*). Any other person-mask node works too (SAM, BiRefNet...): "
           "connect its MASK (1 = person).", column=0)
    img = g.add("LoadImage", title="Photo", image=SAMPLE_PNG, size=(300, 400), column=0)
    seg = g.add("RMBG", title="Person mask (ComfyUI-RMBG)", image=img["IMAGE"], model="RMBG-2.0",
                column=1)
    dw = g.add("DWPreprocessor", title="DWPose (comfyui_controlnet_aux)", image=img["IMAGE"],
               detect_hand="enable", detect_body="enable", detect_face="enable",
               resolution=512, column=1)
    body, pose, cam, render = _pipeline(g, img["IMAGE"], seg["MASK"], dw["POSE_KEYPOINT"])
    _previews(g, render, "blade/dwpose")
    g.add("PreviewImage", title="DWPose map", images=dw["IMAGE"], size=(300, 330), column=2)
    return g


WORKFLOWS = {
    "blade_photo_to_renders": photo_to_renders,
    "blade_renders_to_controlnet": renders_to_controlnet,
    "blade_video_frames": video_frames,
    "blade_photo_dwpose": photo_dwpose,
}


def build_all() -> dict[Path, dict]:
    """Every shipped workflow file (path -> JSON), built from the live signatures."""
    info = load_signatures()
    files = {}
    for name, make in WORKFLOWS.items():
        g = make()
        files[HERE / f"{name}.json"] = build_ui(g, info)
        if g.api:
            files[API_DIR / f"{name}.api.json"] = build_api(g, info)
    return files


def dumps(wf: dict) -> str:
    return json.dumps(wf, indent=1, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------- sample inputs
def make_sample_inputs(out_dir: Path = INPUTS_DIR, seed: int = 0) -> list[Path]:
    """The sample photo, frames and keypoint files, rendered from the open body with the
    demo's synthetic scene (``blade_nodes.demo.make_scene``), scaled down to ship small."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from blade_nodes.body import load_body_model
    from blade_nodes.body.open_body import ensure_open_body
    from blade_nodes.demo import make_scene

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    body = load_body_model(ensure_open_body())

    def shrink(scene, size):
        w, h = size
        _, _, H, W = scene.image.shape
        img = F.interpolate(scene.image, size=(h, w), mode="area")[0]
        mask = F.interpolate(scene.mask[:, None].float(), size=(h, w), mode="area")[0, 0]
        # the demo's backdrop has fine noise that PNG cannot compress: smooth it (person kept)
        soft = F.avg_pool2d(F.pad(img[None], (3, 3, 3, 3), mode="replicate"), 7, 1)[0]
        img = torch.where(mask[None] > 0, img, soft)
        rgba = torch.cat([img, mask[None]]).clamp(0, 1).mul(255).round().to(torch.uint8)
        sx, sy = w / W, h / H
        kps = json.loads(json.dumps(scene.pose_keypoint))
        for frame in kps:
            frame["canvas_width"], frame["canvas_height"] = w, h
            for person in frame["people"]:
                for key, vals in person.items():
                    if not isinstance(vals, list):
                        continue
                    for i in range(0, len(vals), 3):
                        if vals[i + 2] > 0:
                            vals[i] = round(vals[i] * sx, 2)
                            vals[i + 1] = round(vals[i + 1] * sy, 2)
        return Image.fromarray(rgba.permute(1, 2, 0).numpy(), "RGBA"), kps[0]

    written = []
    photo, kp = shrink(make_scene(body, seed), SAMPLE_SIZE)
    photo.save(out_dir / SAMPLE_PNG, optimize=True)
    (out_dir / SAMPLE_KEYPOINTS).write_text(json.dumps([kp]))
    written += [out_dir / SAMPLE_PNG, out_dir / SAMPLE_KEYPOINTS]
    frames, kps = [], []
    for i in range(N_FRAMES):
        im, kp = shrink(make_scene(body, seed + 1 + i), FRAMES_SIZE)
        frames.append(im)
        kps.append(kp)
    frames[0].save(out_dir / FRAMES_PNG, save_all=True, append_images=frames[1:],
                   duration=250, loop=0, optimize=True, disposal=0, blend=0)
    (out_dir / FRAMES_KEYPOINTS).write_text(json.dumps(kps))
    written += [out_dir / FRAMES_PNG, out_dir / FRAMES_KEYPOINTS]
    return written


# ---------------------------------------------------------------- README pictures
PICTURES = {   # picture -> (title, [(label, output file glob)])
    "workflow_photo_to_renders.png": ("(a) photo to renders", [
        ("photo", f"input:{SAMPLE_PNG}"), ("overlay", "blade/photo/overlay_*.png"),
        ("depth", "blade/photo/depth_*.png"), ("normal", "blade/photo/normal_*.png"),
        ("openpose", "blade/photo/openpose_*.png"), ("densepose", "blade/photo/densepose_*.png")]),
    "workflow_renders_to_controlnet.png": ("(b) ControlNet inputs (generation needs a checkpoint)", [
        ("photo", f"input:{SAMPLE_PNG}"), ("depth -> ControlNet", "blade/photo/depth_*.png"),
        ("openpose -> ControlNet", "blade/photo/openpose_*.png")]),
    "workflow_video_frames.png": ("(c) frames, one depth range for the batch", [
        *((f"frame {i}", f"input:{FRAMES_PNG}#{i}") for i in range(N_FRAMES)),
        *((f"depth {i}", f"blade/frames/depth_*.png#{i}") for i in range(N_FRAMES)),
        *((f"overlay {i}", f"blade/frames/anim_overlay_*.webp#{i}") for i in range(N_FRAMES))]),
}


def make_pictures(output_dir: Path, docs_dir: Path = REPO / "docs", height: int = 200) -> list[Path]:
    """Contact sheets of real workflow outputs (a ComfyUI output folder, e.g. from
    ``comfy_accept.sh --keep``: <run>/base/output) for the README, quantised to stay small."""
    from PIL import Image, ImageDraw, ImageSequence

    def frame(path: Path, i: int) -> Image.Image:
        im = Image.open(path)
        return [f.convert("RGB") for f in ImageSequence.Iterator(im)][i].copy()

    written = []
    for pic, (title, cells) in PICTURES.items():
        tiles = []
        for label, spec in cells:
            spec, _, idx = spec.partition("#")
            i = int(idx or 0)
            if spec.startswith("input:"):
                img = frame(INPUTS_DIR / spec[6:], i)
            else:
                found = sorted(Path(output_dir).glob(spec))
                if not found:
                    raise FileNotFoundError(f"{spec} in {output_dir}")
                multi = getattr(Image.open(found[0]), "n_frames", 1) > 1
                img = frame(found[0], i) if multi else frame(found[i], 0)
            img = img.resize((round(img.width * height / img.height), height), Image.LANCZOS)
            tiles.append((label, img))
        per_row = 4 if len(tiles) > 6 else len(tiles)
        rows = [tiles[k:k + per_row] for k in range(0, len(tiles), per_row)]
        w = max(sum(t.width for _, t in r) + 8 * (len(r) + 1) for r in rows)
        h = 28 + len(rows) * (height + 26)
        sheet = Image.new("RGB", (w, h), (250, 250, 250))
        d = ImageDraw.Draw(sheet)
        d.text((8, 8), title, fill=(0, 0, 0))
        y = 28
        for r in rows:
            x = 8
            for label, t in r:
                sheet.paste(t, (x, y))
                d.text((x, y + height + 4), label, fill=(40, 40, 40))
                x += t.width + 8
            y += height + 26
        out = docs_dir / pic
        sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
        written.append(out)
    return written


# ---------------------------------------------------------------- snapshot of core nodes
CORE_NODES = ["LoadImage", "LoadImageMask", "PreviewImage", "SaveImage", "MaskToImage",
              "ImageToMask", "InvertMask", "CheckpointLoaderSimple", "ControlNetLoader",
              "ControlNetApplyAdvanced", "SetUnionControlNetType", "CLIPTextEncode", "KSampler",
              "EmptyLatentImage", "VAEDecode", "Preview3D", "LoadImageOutput", "ImageScale",
              "SolidMask", "JoinImageWithAlpha", "SplitImageWithAlpha", "ImageBatch",
              "RepeatImageBatch", "LoadVideo", "GetVideoComponents", "SaveAnimatedWEBP",
              "SaveAnimatedPNG"]
FILE_INPUTS = {("LoadImage", "image"), ("LoadImageMask", "image"), ("LoadImageOutput", "image"),
               ("CheckpointLoaderSimple", "ckpt_name"), ("ControlNetLoader", "control_net_name"),
               ("LoadVideo", "file")}
KEEP_KEYS = ("input", "input_order", "output", "output_name")


def record_core(url: str) -> None:
    import urllib.request
    info = json.load(urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=120))
    version = json.load(urllib.request.urlopen(url.rstrip("/") + "/system_stats", timeout=30))
    snap = {"comfyui": version.get("system", {}).get("comfyui_version", "?"),
            "recorded_from": "GET /object_info, ComfyUI --cpu, no custom nodes "
                             "(workflows/build_workflows.py --record-core)",
            "nodes": {}}
    for name in CORE_NODES:
        entry = info[name]
        for sec in entry["input"].values():   # file lists depend on the machine
            for k, v in sec.items():
                if (name, k) in FILE_INPUTS:
                    if isinstance(v[0], list):
                        v[0] = []
                    elif len(v) > 1 and "options" in v[1]:
                        v[1]["options"] = []
        snap["nodes"][name] = {k: entry[k] for k in KEEP_KEYS if k in entry}
    CORE_SNAPSHOT.write_text(json.dumps(snap, indent=1) + "\n")
    print(f"wrote {CORE_SNAPSHOT} ({len(snap['nodes'])} nodes)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report stale files")
    ap.add_argument("--inputs", action="store_true", help="also re-make workflows/inputs")
    ap.add_argument("--record-core", metavar="URL", help="refresh the core snapshot first")
    ap.add_argument("--pictures", metavar="OUTPUT_DIR",
                    help="README pictures from a ComfyUI output folder of the workflows' runs")
    args = ap.parse_args(argv)
    if args.record_core:
        record_core(args.record_core)
    if args.inputs:
        for p in make_sample_inputs():
            print(f"wrote {p.relative_to(REPO)} ({p.stat().st_size // 1024} KB)")
    if args.pictures:
        for p in make_pictures(Path(args.pictures)):
            print(f"wrote {p.relative_to(REPO)} ({p.stat().st_size // 1024} KB)")
        return 0
    stale = 0
    for path, wf in build_all().items():
        text = dumps(wf)
        if path.exists() and path.read_text() == text:
            continue
        stale += 1
        if args.check:
            print(f"stale: {path.relative_to(REPO)}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
