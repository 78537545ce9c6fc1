"""The network precisions (``Easi3RConfig.precision``) against float32: time per stage, peak memory, and what they
change in the outputs (masks, cameras, depths).

Not a test. The published DUSt3R ViT-L / ViT-B / DPT architecture with random weights (``--arch small``: a tiny one,
to smoke-run the script), the synthetic 512x336 video of ``bench_end_to_end.py``, the pipeline's defaults (pairs,
MST + 300 Adam iterations, flow on unless ``--flow off``). Each precision runs ``Easi3R(net, precision=...).run``
in a fresh subprocess; peak memory is the resident set size above the level after building the model (CPU, sampled
every millisecond) or the peak allocated bytes above the weights (CUDA).

Compared with the ``fp32`` run of the same script: the mask IoU over all frames, the largest dynamic-map difference,
the camera trajectory after Sim(3) alignment onto the fp32 one (ATE as a fraction of the fp32 trajectory's extent,
RRE in degrees) and the median relative depth difference. **With random weights these measure how far rounding
moves an untrained network, not a trained one**; the figures for the published weights need those weights.

    python benchmarks/bench_precision.py                                  # CPU: fp32 and bf16, T = 6
    python benchmarks/bench_precision.py --device cuda --frames 50        # CUDA: fp32, tf32 and bf16
    python benchmarks/bench_precision.py --arch small --frames 4 --iterations 10   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_end_to_end import HEIGHT, WIDTH, _build  # noqa: E402
from common import peak_rss_during, run_with_stage_times  # noqa: E402


def child(precision: str, frames: int, device_name: str, arch: str, iterations: int, flow: bool, out: str) -> None:
    import numpy as np
    import torch

    from easi3r import Easi3R

    net, video, device = _build(device_name, fused=True, frames=frames, arch=arch)
    runner = Easi3R(backbone=net, device=device, image_size=WIDTH, flow=flow, iterations=iterations,
                    precision=precision)  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    (rec, total, stages), peak = peak_rss_during(lambda: run_with_stage_times(runner, video, device))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    np.savez(out, masks=rec.masks, dynamic=rec.dynamic_maps, cam2world=rec.cam2world, depths=rec.depths)
    print("RESULT " + json.dumps({"total": total, "stages": stages, "peak": peak}))


def compare(ref: Any, other: Any) -> dict[str, float]:
    """What ``other`` changes relative to ``ref`` (both ``np.load`` results of :func:`child`)."""
    import numpy as np

    from easi3r.eval.poses import pose_metrics

    c2w_ref = ref["cam2world"]
    extent = float(np.linalg.norm(c2w_ref[:, :3, 3] - c2w_ref[:, :3, 3].mean(0), axis=1).max())
    poses = pose_metrics(other["cam2world"], c2w_ref)
    mine, theirs = other["masks"].astype(bool), ref["masks"].astype(bool)
    depth_rel = np.abs(other["depths"] - ref["depths"]) / np.maximum(np.abs(ref["depths"]), 1e-12)
    return {
        "iou": float((mine & theirs).sum() / max((mine | theirs).sum(), 1)),  # pooled over all frames
        "dyn": float(np.abs(other["dynamic"] - ref["dynamic"]).max()),
        "ate": poses.ate / max(extent, 1e-12),
        "rre": poses.rre_deg,
        "depth": float(np.median(depth_rel)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="vitl", choices=["vitl", "small"])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--flow", default="on", choices=["off", "on"])
    parser.add_argument("--precisions", nargs="+", default=None, help="default: fp32 bf16 (+ tf32 on CUDA)")
    parser.add_argument("--child", nargs=7, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        precision, frames, device, arch, iterations, flow, out = args.child
        child(precision, int(frames), device, arch, int(iterations), flow == "on", out)
        return
    import numpy as np
    import torch

    cuda = args.device.startswith("cuda")
    precisions = args.precisions or (["fp32", "tf32", "bf16"] if cuda else ["fp32", "bf16"])
    if precisions[0] != "fp32":
        precisions = ["fp32", *[p for p in precisions if p != "fp32"]]
    unit = "peak GPU MiB" if cuda else "peak RSS MiB"
    print(f"torch {torch.__version__}, {args.device}, CPU threads {torch.get_num_threads()}, {WIDTH}x{HEIGHT}, "
          f"architecture {args.arch}, random weights, T = {args.frames}, {args.iterations} iterations, "
          f"flow {args.flow}; differences against fp32")  # fmt: skip
    print(f"{'precision':>9} {'total s':>8} {unit:>13} {'mask IoU':>8} {'max |dyn|':>9} {'ATE/extent':>10} "
          f"{'RRE deg':>8} {'depth rel':>9}  stages (s)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ref = None
        for precision in precisions:
            out = str(Path(tmp) / f"{precision}.npz")
            cmd = [sys.executable, __file__, "--child", precision, str(args.frames), args.device, args.arch,
                   str(args.iterations), args.flow, out]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"child failed ({precision}):\n{proc.stderr[-3000:]}")
            r = json.loads(line[7:])
            arrays = dict(np.load(out))
            if ref is None:
                ref = arrays
            d = compare(ref, arrays)
            stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items())
            print(f"{precision:>9} {r['total']:>8.1f} {r['peak'] / 2**20:>13.0f} {d['iou']:>8.4f} {d['dyn']:>9.2e} "
                  f"{d['ate']:>10.2e} {d['rre']:>8.3f} {d['depth']:>9.2e}  {stages}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
