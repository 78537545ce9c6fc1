"""One video on 1 vs 2 processes (torchrun, gloo on CPU): time per stage and peak memory per process.

Each configuration runs in fresh processes (``ru_maxrss`` only rises); a logging handler on the ``easi3r`` logger's
stage markers times the stages (encode + both passes, alignment). Global mode keeps only each rank's own pairs'
pointmaps (data-parallel alignment), so the pointmap share of the per-process peak should halve with 2 processes;
on a 2-core machine little speed-up is expected (both processes share the cores).

    python benchmarks/bench_distributed.py                  # T = 16, 512 px synthetic video, global and window
    python benchmarks/bench_distributed.py --frames 32 --modes global
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import randomize_weights_  # noqa: E402


def _child(args: argparse.Namespace) -> None:
    import torch

    from easi3r import Easi3R
    from easi3r.backbones import DUSt3R, DUSt3RConfig
    from easi3r.demo import render_video

    torch.set_num_threads(1)
    video = render_video(args.frames, args.image_size, args.image_size * 21 // 32, seed=0)
    net = DUSt3R(DUSt3RConfig(enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=48, dec_depth=12,
                              dec_num_heads=12, head_type="linear"))  # fmt: skip
    randomize_weights_(net, seed=0)
    marks: list[tuple[str, float]] = []

    class Marker(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if msg.startswith("stage: "):
                marks.append((msg[7:].split(" (")[0], time.perf_counter()))

    logger = logging.getLogger("easi3r")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Marker())
    runner = Easi3R(backbone=net, device="cpu", image_size=args.image_size, iterations=args.iterations, flow=False,
                    alignment=args.mode, align_window=args.align_window)  # fmt: skip
    runner.run(video.frames, progress=False)
    marks.append(("end", time.perf_counter()))
    times = {name: marks[k + 1][1] - t for k, (name, t) in enumerate(marks[:-1])}
    passes = sum(v for k, v in times.items() if k in ("encode", "k-means", "pass 1", "pass 2"))
    out = {
        "rank": runner.dist.rank,
        "world": runner.dist.world_size,
        "passes_s": passes,
        "alignment_s": times.get("alignment", 0.0),
        "total_s": marks[-1][1] - marks[0][1],
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("RESULT " + json.dumps(out), flush=True)


def _measure(args: argparse.Namespace, mode: str, nproc: int) -> list[dict]:
    child = [__file__, "--child", "--frames", str(args.frames), "--modes", mode, "--image-size", str(args.image_size),
             "--iterations", str(args.iterations), "--align-window", str(args.align_window)]  # fmt: skip
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    proc = subprocess.run([*launcher, *child], capture_output=True, text=True, env=env, timeout=3600, check=False)
    rows = [json.loads(ln[7:]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if len(rows) != nproc:
        raise SystemExit(f"{mode} x{nproc} failed:\n{proc.stderr[-3000:]}")
    return sorted(rows, key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--modes", nargs="+", default=["global", "window"], choices=["global", "window"])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--align-window", type=int, default=8)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.modes[0]
        _child(args)
        return
    print(f"T={args.frames}, synthetic video at {args.image_size} px, linear-head random net, {args.iterations} "
          f"alignment iterations, no flow, 1 thread per process")  # fmt: skip
    print(f"{'mode':<7} {'procs':>5} {'passes s':>9} {'align s':>8} {'total s':>8} {'peak MB / process':>20}")
    for mode in args.modes:
        base = None
        for nproc in (1, 2):
            rows = _measure(args, mode, nproc)
            slowest = {k: max(r[k] for r in rows) for k in ("passes_s", "alignment_s", "total_s")}
            peaks = " / ".join(f"{r['maxrss_mb']:.0f}" for r in rows)
            print(f"{mode:<7} {nproc:>5} {slowest['passes_s']:>9.1f} {slowest['alignment_s']:>8.1f} "
                  f"{slowest['total_s']:>8.1f} {peaks:>20}", flush=True)  # fmt: skip
            if base is None:
                base = (slowest, rows[0]["maxrss_mb"])
            else:
                nan = float("nan")
                speed = {k: base[0][k] / slowest[k] if slowest[k] > 0 else nan for k in slowest}
                ratio = max(r["maxrss_mb"] for r in rows) / base[1]
                print(f"        speed-up x2: passes {speed['passes_s']:.2f}, alignment {speed['alignment_s']:.2f}, "
                      f"total {speed['total_s']:.2f}; peak per process {ratio:.2f}x of one process")  # fmt: skip


if __name__ == "__main__":
    main()
