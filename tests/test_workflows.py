"""The shipped workflows (workflows/*.json, workflows/api/*.api.json) against the live nodes.

Checks, without ComfyUI: every file parses; every node type is ours, a recorded core type
(tests/data/comfy_core_nodes.json) or a documented other-pack type
(tests/data/comfy_other_packs_nodes.json, only in workflows that say they need that pack);
every link joins matching socket types; widget values fit each node's widget order, types and
ranges; and every file is exactly what workflows/build_workflows.py builds from the live
INPUT_TYPES (so a changed node makes this fail until the generator is re-run).
"""
from __future__ import annotations

import copy
import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "workflows"))
import build_workflows as bw  # noqa: E402

UI_FILES = sorted(bw.HERE.glob("*.json"))
API_FILES = sorted(bw.API_DIR.glob("*.json"))
INPUT_FILES = {p.name for p in bw.INPUTS_DIR.glob("*")}


@pytest.fixture(scope="module")
def info():
    return bw.load_signatures()


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_workflow_is_shipped():
    names = {p.stem for p in UI_FILES}
    assert names == set(bw.WORKFLOWS), "run: python workflows/build_workflows.py"
    assert len(API_FILES) >= 3


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_is_sound(path, info):
    wf = _load(path)
    assert isinstance(wf.get("nodes"), list) and wf["nodes"] and isinstance(wf["links"], list)
    assert wf["last_node_id"] >= max(n["id"] for n in wf["nodes"])
    assert wf["last_link_id"] >= max((link[0] for link in wf["links"]), default=0)
    problems = bw.validate_ui(wf, info, INPUT_FILES)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_node_types_are_ours_core_or_declared_packs(path, info):
    wf = _load(path)
    needs = " ".join(wf.get("extra", {}).get("blade_nodes", {}).get("needs_packs", []))
    for n in wf["nodes"]:
        t = n["type"]
        if t in bw.FRONTEND_ONLY:
            continue
        assert t in info, f"{t} is neither ours nor a recorded core/other-pack node"
        pack = info[t]["pack"]
        if pack not in ("blade-nodes", "core"):
            assert pack in needs, f"{path.name} uses {t} of {pack} without saying it needs it"


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_twin_is_sound(path, info):
    prompt = _load(path)
    assert prompt and all("class_type" in v and "inputs" in v for v in prompt.values())
    for nid, node in prompt.items():
        t = node["class_type"]
        assert info[t]["pack"] in ("blade-nodes", "core"), f"{t}: API twins use core + ours only"
        entry = info[t]
        for sec, name in bw.input_names(entry):
            kind, opts = bw._spec(entry, name)
            v = node["inputs"].get(name)
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                src = prompt[v[0]]
                otype = info[src["class_type"]]["output"][v[1]]
                want = "COMBO" if isinstance(kind, list) else kind
                assert otype == want, f"node {nid} {t}.{name}: {otype} into {want}"
            elif v is not None:
                assert bw.is_widget(kind, opts), f"node {nid} {t}.{name}: value for a socket"
                problem = bw.check_value(kind, opts, v)
                assert problem is None, f"node {nid} {t}.{name} = {v!r}: {problem}"
            else:
                assert sec == "optional", f"node {nid} {t}: required input {name} missing"
        assert set(node["inputs"]) <= {n for _, n in bw.input_names(entry)}


def test_api_twins_match_their_ui_workflows():
    for path in API_FILES:
        ui = _load(bw.HERE / path.name.replace(".api.json", ".json"))
        prompt = _load(path)
        ui_types = sorted(n["type"] for n in ui["nodes"] if n["type"] not in bw.FRONTEND_ONLY)
        assert sorted(v["class_type"] for v in prompt.values()) == ui_types


def test_files_are_what_the_generator_builds_from_the_live_nodes():
    stale = [str(p.relative_to(REPO)) for p, wf in bw.build_all().items()
             if not p.exists() or p.read_text(encoding="utf-8") != bw.dumps(wf)]
    assert not stale, f"stale (run python workflows/build_workflows.py): {stale}"


def test_validator_catches_shifted_widgets_and_wrong_links(info):
    wf = _load(bw.HERE / "blade_renders_to_controlnet.json")
    ks = next(n for n in wf["nodes"] if n["type"] == "KSampler")
    bad = copy.deepcopy(wf)
    k = next(n for n in bad["nodes"] if n["id"] == ks["id"])
    del k["widgets_values"][1]            # the control_after_generate value
    assert any("widget values" in p for p in bw.validate_ui(bad, info))
    bad = copy.deepcopy(wf)
    k = next(n for n in bad["nodes"] if n["id"] == ks["id"])
    k["widgets_values"][2] = 0            # steps below min 1
    assert any("below min" in p for p in bw.validate_ui(bad, info))
    bad = copy.deepcopy(wf)
    bad["links"][0][5] = "LATENT"
    assert any(f"link {bad['links'][0][0]}" in p for p in bw.validate_ui(bad, info))
    render = next(n for n in wf["nodes"] if n["type"] == "BladeRender")
    bad = copy.deepcopy(wf)
    r = next(n for n in bad["nodes"] if n["id"] == render["id"])
    r["widgets_values"][0] = "no-such-mode"   # depth_normalize combo
    assert any("not one of" in p for p in bw.validate_ui(bad, info))


def test_sample_inputs_are_small_and_readable():
    from PIL import Image, ImageSequence

    from blade_nodes.pose.keypoints2d import parse_pose_keypoints
    for name, frames in ((bw.SAMPLE_PNG, 1), (bw.FRAMES_PNG, bw.N_FRAMES)):
        p = bw.INPUTS_DIR / name
        assert p.stat().st_size < 300_000, f"{name} is {p.stat().st_size} bytes"
        im = Image.open(p)
        seq = [f.convert("RGBA") for f in ImageSequence.Iterator(im)]
        assert len(seq) == frames
        alpha = seq[0].getchannel("A").getextrema()
        assert alpha == (0, 255), f"{name}: the alpha channel must be the person mask"
    for name, size, frames in ((bw.SAMPLE_KEYPOINTS, bw.SAMPLE_SIZE, 1),
                               (bw.FRAMES_KEYPOINTS, bw.FRAMES_SIZE, bw.N_FRAMES)):
        data = json.loads((bw.INPUTS_DIR / name).read_text())
        assert isinstance(data, list) and len(data) == frames
        assert (data[0]["canvas_width"], data[0]["canvas_height"]) == size
        kp = parse_pose_keypoints(data, size, batch_size=frames)
        assert kp.batch_size == frames
