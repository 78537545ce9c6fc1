"""Spread of the alignment across thread counts: official MST initialisation versus ``robust_init``.

The network's float rounding depends on the intra-op thread count, by ~1e-6 relative; the official RANSAC-PnP of
the MST initialisation (10 iterations) turns that into different initial cameras, and the optimisation keeps
them. For each thread count (default 1 and 2) a fresh process (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set before
torch loads) runs the fixture end to end: the tiny official-format checkpoint on the six fixture frames (both
passes), then the pipeline's global alignment twice on the same pass-2 pointmaps and masks: with the official
initialisation (``robust_init=False``) and with the robust one (``robust_init=True``: 1000 RANSAC iterations, then
Levenberg-Marquardt on the inliers). The parent prints, per initialisation, the largest differences between
thread counts of the camera-to-world matrices and of the world points (same units as the reconstruction).

Usage::

    python benchmarks/bench_init_spread.py                      # threads 1 and 2, 300 iterations (the default)
    python benchmarks/bench_init_spread.py --threads 1 2 4 --iterations 100
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "tests" / "data" / "reference"


def worker(out: Path, iterations: int) -> None:
    """One process: the fixture through the network, then both initialisations' alignments; saved to ``out``."""
    import dataclasses

    import torch

    from easi3r.align import global_align
    from easi3r.pipeline import Easi3R, Trace

    runner = Easi3R(backbone=REF / "tiny_dust3r.pth", device="cpu", iterations=0)
    trace = Trace()
    runner.run([REF / "frames" / f"frame_{k:02d}.png" for k in range(6)], progress=False, trace=trace)
    if trace.pass2 is None or trace.pass2.pointmaps is None or trace.segmentation2 is None or trace.frames is None:
        raise SystemExit("the pipeline kept no pass-2 pointmaps")
    pm, masks = trace.pass2.pointmaps, trace.segmentation2.masks
    results: dict[str, np.ndarray] = {"masks": masks.numpy()}
    for robust in (False, True):
        cfg = dataclasses.replace(runner.config.align_config(), iterations=iterations, robust_init=robust)
        al = global_align(
            pm.edges, pm.pts_1, pm.pts_2, pm.conf_1, pm.conf_2, config=cfg, images=trace.frames.rgb,
            masks=masks, progress=False,
        )  # fmt: skip
        key = "robust" if robust else "official"
        results[f"{key}_cam2world"] = al.cam2world.double().numpy()
        results[f"{key}_points"] = al.points.double().numpy()
    results["threads"] = np.array(torch.get_num_threads())
    np.savez(out, **results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=300, help="alignment iterations (official demo: 300)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.iterations)
        return
    runs: dict[int, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.threads:
            out = Path(tmp) / f"threads_{n}.npz"
            env = dict(os.environ, OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
            cmd = [sys.executable, __file__, "--worker", str(out), "--iterations", str(args.iterations)]
            subprocess.run(cmd, env=env, check=True, cwd=ROOT)
            with np.load(out) as data:
                runs[n] = {k: data[k] for k in data.files}
            print(f"threads={n}: done (torch used {int(runs[n]['threads'])})", flush=True)
    print(f"\nmax |difference| between thread counts ({args.iterations} iterations):")
    print(f"{'pair':>8} {'masks':>8} {'init':>9} {'cam2world':>10} {'points':>10}")
    for a, b in itertools.combinations(args.threads, 2):
        ra, rb = runs[a], runs[b]
        same_masks = "same" if np.array_equal(ra["masks"], rb["masks"]) else "differ"
        for key in ("official", "robust"):
            cam = np.abs(ra[f"{key}_cam2world"] - rb[f"{key}_cam2world"]).max()
            pts = np.abs(ra[f"{key}_points"] - rb[f"{key}_points"]).max()
            print(f"{f'{a} vs {b}':>8} {same_masks:>8} {key:>9} {cam:10.3g} {pts:10.3g}")


if __name__ == "__main__":
    main()
