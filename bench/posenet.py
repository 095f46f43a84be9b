"""Speed and memory of the BLADE PoseNet port (full config, random weights, CPU float32).

    .venv/bin/python bench/posenet.py [--threads 2] [--reps 3] [--batch 1] [--no-dense]

Prints seconds per image (median), a per-stage breakdown and peak resident memory. The official
code cannot run here conveniently (compiled CUDA ops, mmcv, SMPL-X files), so its cost is the
anchor from the issue / shared/docs/golden_posenet.md section 8, measured on this kind of 2-core
CPU with the official pure-PyTorch deformable attention: 13.4-14.2 s per image (issue) and
9.9-11.2 s per image, 3.2 GB peak (golden doc), full config, batch 1. As a reference timed in
the same run, the port is also timed with the official *dense* masked decoder self-attention
(the (L x L) boolean mask of prepare_for_dn2) instead of the group-structured kernel.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from blade_nodes.pose.posenet import FULL, PoseNet  # noqa: E402
from blade_nodes.pose.posenet.layers import SelfAttention  # noqa: E402

ANCHOR = "official: 13.4-14.2 s/img (issue), 9.9-11.2 s/img + 3.2 GB (golden doc sec. 8)"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(seed: int = 0) -> PoseNet:
    torch.manual_seed(seed)
    model = PoseNet(FULL).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in model.named_parameters():  # non-zero everywhere, O(1) activations
            if p.ndim >= 2:
                p.normal_(0, p[0].numel() ** -0.5)
            elif name.endswith("weight"):
                p.normal_(1, 0.1)
            else:
                p.normal_(0, 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean") or name.endswith(".bias"):
                b.normal_(0, 0.1)
            elif name.endswith(".weight"):
                b.normal_(1, 0.1)
    return model


def timed_stages(model: PoseNet) -> dict[str, float]:
    acc: dict[str, float] = defaultdict(float)
    stages = {"backbones": [model.backbone, model.backbone_controlnet],
              "encoders": [model.transformer.encoder, model.transformer_controlnet.encoder],
              "decoders": [model.transformer.decoder, model.transformer_controlnet.decoder]}
    for stage, mods in stages.items():
        for m in mods:
            m.register_forward_pre_hook(lambda *_: acc.__setitem__("_t0", time.perf_counter()))
            m.register_forward_hook(
                lambda *_, s=stage: acc.__setitem__(s, acc[s] + time.perf_counter() - acc["_t0"]))
    return acc


def median_s(fn, reps: int, after_warmup=None) -> tuple[float, float]:
    """(median wall seconds, mean process CPU seconds) per call, after one warm-up call.

    On a shared machine the wall time includes waiting for other processes; the CPU time (all
    threads) does not: with --threads 1 it approximates the uncontended single-thread wall time.
    """
    fn()  # warm-up
    if after_warmup is not None:
        after_warmup()
    times = []
    c0 = time.process_time()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (time.process_time() - c0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--no-dense", action="store_true", help="skip the dense-mask reference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} batch={args.batch} "
          f"config=FULL (ResNet-50 x2, 6+6 layers, 900 queries, 100 groups)")
    rss0 = rss_mb()
    model = build()
    rss_model = rss_mb()
    acc = timed_stages(model)
    x = torch.randn(args.batch, 3, 400, 400)
    tz = torch.full((args.batch, 1), 4.0)

    def run():
        with torch.inference_mode():
            return model(x, tz)

    ours, ours_cpu = (t / args.batch for t in median_s(run, args.reps, acc.clear))
    stages = {k: v / args.reps / args.batch for k, v in acc.items() if not k.startswith("_")}
    peak = rss_mb()
    print(f"{'variant':<34} {'s/img':>7} {'CPU s/img':>10} {'peak RSS MB':>12}")
    print(f"{'port (group attention)':<34} {ours:7.2f} {ours_cpu:10.2f} {peak:12.0f}")
    print("  stages, mean wall s/img: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
          + f"; rest (projections, heads) {max(0.0, ours - sum(stages.values())):.2f}")
    print(f"  RSS before build {rss0:.0f} MB, after build {rss_model:.0f} MB")
    if not args.no_dense:
        grouped = SelfAttention.forward_grouped
        masks = {}

        def dense(self, qk, v, layout):
            key = (layout.num_group, layout.slots)
            if key not in masks:
                masks[key] = layout.dense_mask()
            return self.forward(qk, v, masks[key])
        SelfAttention.forward_grouped = dense
        try:
            ref, ref_cpu = (t / args.batch for t in median_s(run, max(1, args.reps - 1)))
        finally:
            SelfAttention.forward_grouped = grouped
        print(f"{'port, dense official mask (ref)':<34} {ref:7.2f} {ref_cpu:10.2f} "
              f"{rss_mb():12.0f}")
    print(f"{'official code (anchor, not run)':<34} {'13.4-14.2':>7} {'':>10} {'3200':>12}")
    print("load average (1 min): %.1f on %d cores" % (os.getloadavg()[0], os.cpu_count() or 0))
    print(ANCHOR)
    print("budget: <= 5 s/img, peak <= 3 GB (3072 MB)")


if __name__ == "__main__":
    main()
