"""Render docs/open_body_poses.png: the open body in five poses (front and side views).

    .venv/bin/python docs/make_open_body_poses.py [out.png]

Builds the open body first if needed (needs `anny` then). Flat-shaded painter's-algorithm
rendering with Pillow (front row: front view; back row: seen from the body's left).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from blade_nodes.body import SMPLXParams, load_body_model  # noqa: E402
from blade_nodes.body.open_body import SMPLX_JOINT_NAMES, ensure_open_body  # noqa: E402

IX = {n: i for i, n in enumerate(SMPLX_JOINT_NAMES)}


def pose(**rots) -> torch.Tensor:
    """[63] body pose from joint-name -> axis-angle (radians) keyword arguments."""
    bp = torch.zeros(21, 3)
    for name, aa in rots.items():
        bp[IX[name] - 1] = torch.tensor(aa, dtype=torch.float32)
    return bp.reshape(63)


d = math.radians
POSES = [
    ("T-pose, betas 0", pose(), {}, {}),
    ("A-pose, left elbow 90°", pose(left_shoulder=(0, 0, -d(60)), right_shoulder=(0, 0, d(60)),
                                    left_elbow=(0, -d(90), 0)), {}, {}),
    ("walking, beta0 = +2 (tall)", pose(left_hip=(-d(30), 0, 0), right_hip=(d(20), 0, 0),
                                        right_knee=(d(35), 0, 0), left_knee=(d(10), 0, 0),
                                        left_shoulder=(0, d(20), -d(70)),
                                        right_shoulder=(0, d(20), d(70)),
                                        left_elbow=(0, -d(20), 0), right_elbow=(0, d(30), 0)),
     {0: 2.0}, {}),
    ("sitting, beta1 = +2 (heavy)", pose(left_hip=(-d(90), 0, d(5)), right_hip=(-d(90), 0, -d(5)),
                                         left_knee=(d(90), 0, 0), right_knee=(d(90), 0, 0),
                                         left_shoulder=(0, 0, -d(65)),
                                         right_shoulder=(0, 0, d(65)),
                                         left_elbow=(0, -d(70), 0), right_elbow=(0, d(70), 0)),
     {1: 2.0}, {}),
    ("waving, beta3 = +2 (female), jaw open", pose(
        right_shoulder=(0, 0, -d(40)), right_elbow=(0, 0, -d(80)),
        left_shoulder=(0, 0, -d(70)), neck=(0, d(20), 0), head=(d(10), 0, 0),
        spine2=(0, 0, d(5))), {3: 2.0}, {"jaw": (d(20), 0, 0)}),
]


def render(verts: np.ndarray, faces: np.ndarray, view: str, size: int = 360):
    """A flat-shaded PIL image (painter's algorithm, orthographic, 2 m tall field)."""
    from PIL import Image, ImageDraw
    if view == "side":  # look from the body's left (+X) toward -X
        v = np.stack([-verts[:, 2], verts[:, 1], verts[:, 0]], 1)
    else:               # look from the front (+Z)
        v = verts.copy()
    tri = v[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    keep = n[:, 2] > 0                       # facing the viewer
    tri, n = tri[keep], n[keep]
    order = np.argsort(tri[:, :, 2].mean(1))
    light = np.array([0.3, 0.4, 1.0])
    light /= np.linalg.norm(light)
    shade = np.clip(n @ light, 0, 1)
    scale = size / 2.0
    px = np.stack([(tri[:, :, 0] + 1.0) * scale, (1.0 - tri[:, :, 1]) * scale], -1)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i in order:
        s = shade[i]
        c = (int(255 * (0.35 + 0.6 * s)), int(255 * (0.3 + 0.5 * s)), int(255 * (0.25 + 0.45 * s)))
        draw.polygon([tuple(p) for p in px[i]], fill=c)
    return img


def main(out: Path) -> None:
    from PIL import Image, ImageDraw

    model = load_body_model(ensure_open_body())
    faces = model.faces.numpy()
    size = 360
    sheet = Image.new("RGB", (size * len(POSES), 2 * size + 24), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (title, bp, betas, extra) in enumerate(POSES):
        p = SMPLXParams.zeros(1, model.num_betas, model.num_expression)
        b = torch.zeros(1, model.num_betas)
        for i, val in betas.items():
            b[0, i] = val
        kw = {"betas": b, "body_pose": bp[None]}
        if "jaw" in extra:
            kw["jaw_pose"] = torch.tensor([extra["jaw"]], dtype=torch.float32)
        with torch.no_grad():
            out_k = model(p.replace(**kw))
        verts = out_k.vertices[0].numpy().astype(np.float64)
        verts[:, 1] -= verts[:, 1].min() + 0.95   # feet at y = -0.95
        sheet.paste(render(verts, faces, "front", size), (k * size, 24))
        sheet.paste(render(verts, faces, "side", size), (k * size, 24 + size))
        draw.text((k * size + 6, 6), title, fill=(0, 0, 0))
    sheet.save(out)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "open_body_poses.png")
