"""Peak memory and time of ``Easi3R.run`` against the number of frames: global vs window-wise alignment.

Every measurement runs in a fresh process (``ru_maxrss`` only ever rises), on a synthetic video (the demo's
textured plane with a moving square) and a small randomly initialised network with linear heads; a sampler thread
records the resident set size at every pipeline stage (the ``easi3r`` logger's debug stage markers), so the
stage that sets the peak is named. The per-frame slope is a least-squares fit of peak RSS against ``T``; the
projection to 1,000 frames extrapolates it.

    python benchmarks/bench_long_video.py                       # 512 px, T = 16 32 64 128, both modes
    python benchmarks/bench_long_video.py --image-size 224 --frames 16 64 --modes window
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import randomize_weights_, rss_bytes  # noqa: E402


def _child(args: argparse.Namespace) -> None:
    import torch

    from easi3r import Easi3R
    from easi3r.backbones import DUSt3R, DUSt3RConfig
    from easi3r.demo import render_video

    torch.set_num_threads(args.threads)
    width = args.image_size
    height = args.image_size * 21 // 32  # 512 -> 336, 224 -> 147 (cropped to 144 by the loader)
    video = render_video(args.frames, width, height, seed=0)
    # Small on purpose (the memory of a run is what is measured): 4 decoder layers x 12 heads = 48 readout channels.
    cfg = DUSt3RConfig(enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=48, dec_depth=4,
                       dec_num_heads=12, head_type="linear")  # fmt: skip
    net = DUSt3R(cfg)
    randomize_weights_(net, seed=0)

    stages: list[tuple[str, int]] = []
    current = ["setup"]
    peaks: dict[str, int] = {}
    done = threading.Event()

    class Marker(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if msg.startswith("stage: "):
                current[0] = msg[7:].split(" (")[0]
                stages.append((current[0], rss_bytes()))

    logger = logging.getLogger("easi3r")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Marker())

    def sample() -> None:
        while not done.is_set():
            peaks[current[0]] = max(peaks.get(current[0], 0), rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    base = rss_bytes()
    thread.start()
    t0 = time.perf_counter()
    runner = Easi3R(backbone=net, device="cpu", image_size=args.image_size, iterations=args.iterations, flow=False,
                    alignment=args.mode, align_window=args.align_window)  # fmt: skip
    rec = runner.run(video.frames, progress=False)
    elapsed = time.perf_counter() - t0
    done.set()
    thread.join()
    out = {
        "frames": args.frames,
        "mode": args.mode,
        "size": list(rec.size),
        "seconds": elapsed,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "base_mb": base / 2**20,
        "stage_peaks_mb": {k: v / 2**20 for k, v in peaks.items()},
    }
    print("RESULT " + json.dumps(out))


def _measure(args: argparse.Namespace, frames: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--frames", str(frames), "--modes", mode,
           "--image-size", str(args.image_size), "--iterations", str(args.iterations),
           "--align-window", str(args.align_window), "--threads", str(args.threads)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"child failed (T={frames}, {mode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--modes", nargs="+", default=["global", "window"], choices=["global", "window"])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--align-window", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.frames, args.mode = args.frames[0], args.modes[0]
        _child(args)
        return

    print(f"Easi3R.run, synthetic video at image size {args.image_size}, linear-head random net, "
          f"{args.iterations} alignment iterations, no flow, align_window={args.align_window}, "
          f"{args.threads} threads; one fresh process per row")  # fmt: skip
    print(f"{'mode':<7} {'T':>5} {'size':>9} {'time s':>8} {'peak MB':>9}  stage that sets the peak")
    results: dict[str, list[dict]] = {m: [] for m in args.modes}
    for mode in args.modes:
        for frames in args.frames:
            r = _measure(args, frames, mode)
            results[mode].append(r)
            stage = max(r["stage_peaks_mb"], key=r["stage_peaks_mb"].get)
            h, w = r["size"]
            print(
                f"{mode:<7} {frames:>5} {w:>4}x{h:<4} {r['seconds']:>8.1f} {r['maxrss_mb']:>9.0f}  {stage}", flush=True
            )
    print()
    for mode, rows in results.items():
        if len(rows) < 2:
            continue
        t = np.array([r["frames"] for r in rows], dtype=float)
        peak = np.array([r["maxrss_mb"] for r in rows])
        slope, intercept = np.polyfit(t, peak, 1)
        first, last = rows[0], rows[-1]
        pair_slope = (last["maxrss_mb"] - first["maxrss_mb"]) / (last["frames"] - first["frames"])
        print(f"{mode}: slope {slope:.2f} MB/frame (fit), {pair_slope:.2f} MB/frame between T={first['frames']} and "
              f"T={last['frames']}; projected peak at T=1000: {intercept + 1000 * slope:.0f} MB")  # fmt: skip
        grows = {
            k: last["stage_peaks_mb"].get(k, 0) - first["stage_peaks_mb"].get(k, 0) for k in last["stage_peaks_mb"]
        }
        top = max(grows, key=grows.get)
        print(f"  stage whose peak grows most with T: {top} (+{grows[top]:.0f} MB from T={first['frames']} to "
              f"T={last['frames']})")  # fmt: skip


if __name__ == "__main__":
    main()
