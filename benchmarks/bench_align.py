"""Speed and memory of the vectorised global-alignment loss versus a per-edge Python loop.

For each number of frames T, synthetic 512x288 pairwise pointmaps are generated for a swinstride graph (window 5,
non-cyclic, symmetrised: P = 2 * sum_k (T - k) edges), the aligner state is set near the ground truth, and Adam
iterations (loss + backward + step) are timed with

* ``vectorised``: :class:`easi3r.align.PointmapAligner` (all edges at once, streamed over pixel blocks, gradient
  formed in the forward pass);
* ``loop``: the same loss written the straightforward way, one edge at a time with autograd (the reference's
  non-batch form, :func:`easi3r.align._reference.alignment_loss_loop`), on the same aligner state.

Both give the same loss value (checked). Each (implementation, T) case runs in its own subprocess so that memory
figures do not mix. Memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the
iterations; on CPU the process's resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``
just before the iterations) minus the resident set at that point, i.e. the extra memory the iterations need on top
of the inputs (the inputs themselves, ~40 bytes per edge-pixel, are reported separately).

Usage::

    python benchmarks/bench_align.py                       # T = 16 32 64, 3 timed iterations each
    python benchmarks/bench_align.py --frames 16 --iters 5 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch

from easi3r.align import PointmapAligner
from easi3r.align._reference import alignment_loss_loop
from easi3r.align.geometry import encode_rotation_translation
from easi3r.config import AlignConfig
from easi3r.pairs import make_pairs


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    import roma

    return roma.rotvec_to_rotmat(angles)


def make_problem(n: int, height: int, width: int, window: int, device: str, seed: int = 0) -> dict:
    """Synthetic pairwise pointmaps of a smooth surface seen along a smooth camera path (float32)."""
    g = torch.Generator().manual_seed(seed)
    f = 0.8 * width
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    rays = torch.stack(((xs - width / 2) / f, (ys - height / 2) / f, torch.ones_like(xs)), -1)
    s = torch.linspace(0, 1, n)
    poses = torch.eye(4).repeat(n, 1, 1)
    poses[:, :3, :3] = _rotation(torch.stack((0.05 * torch.sin(3 * s), 0.1 * torch.sin(2 * s), 0.02 * s), -1))
    poses[:, :3, 3] = torch.stack((s - 0.5, 0.1 * torch.sin(4 * s), 0.5 * s), -1)
    depth = 3 + 0.4 * torch.sin(xs / 37 + 2 * s[:, None, None]) * torch.cos(ys / 23) + s[:, None, None]
    cam = rays[None] * depth[..., None]  # (T, H, W, 3)
    edges = make_pairs(n, "swinstride", window).tolist()
    p = len(edges)
    pts_1 = torch.empty(p, height, width, 3)
    pts_2 = torch.empty(p, height, width, 3)
    conf_1 = torch.empty(p, height, width)
    conf_2 = torch.empty(p, height, width)
    scales = torch.exp(torch.empty(p).uniform_(-0.5, 0.5, generator=g))
    for e, (i, j) in enumerate(edges):  # one edge at a time keeps the generation peak near the data size
        rel = torch.linalg.inv(poses[i]) @ poses[j]
        pts_1[e] = cam[i] * scales[e] * (1 + 0.003 * torch.randn(height, width, 1, generator=g))
        pts_2[e] = (cam[j] @ rel[:3, :3].T + rel[:3, 3]) * scales[e] + 0.01 * torch.randn(height, width, 3, generator=g)
        conf_1[e] = 1 + torch.exp(1 + 0.3 * torch.randn(height, width, generator=g))
        conf_2[e] = 1 + torch.exp(0.8 + 0.3 * torch.randn(height, width, generator=g))
    dev = torch.device(device)
    return {
        "edges": torch.tensor(edges, device=dev),
        "pts_1": pts_1.to(dev),
        "pts_2": pts_2.to(dev),
        "conf_1": conf_1.to(dev),
        "conf_2": conf_2.to(dev),
        "poses": poses,
        "depth": depth,
        "scales": scales,
        "focal": f,
    }


@torch.no_grad()
def set_state_near_truth(al: PointmapAligner, prob: dict, seed: int = 1) -> None:
    """Ground-truth state in the aligner's normalised world (geometric-mean pairwise scale 0.5), perturbed."""
    g = torch.Generator().manual_seed(seed)
    k = prob["scales"]
    c = 0.5 * float(k.log().mean().exp())  # world = c * true world makes sigma_e = c / k_e average to 0.5
    poses = prob["poses"]
    dev = al.grid.device
    al.log_depth.data[:] = (c * prob["depth"]).log().reshape(al.n_frames, -1).to(dev)
    al.pose_params.data[:] = encode_rotation_translation(poses[:, :3, :3], c * poses[:, :3, 3]).to(dev)
    al.focal_params.data[:] = 20 * math.log(prob["focal"])
    ei = al.edges[:, 0].cpu()
    pw = torch.cat(
        (encode_rotation_translation(poses[ei, :3, :3], k[:, None] * poses[ei, :3, 3]), (c / k).log()[:, None]), dim=1
    )
    al.pw_params.data[:] = pw.to(dev)
    for p in (al.log_depth, al.pose_params, al.pw_params):
        p.data += 1e-3 * torch.randn(p.shape, generator=g).to(dev)


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def worker(impl: str, n: int, args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    prob = make_problem(n, args.height, args.width, args.window, args.device)
    gen_s = time.perf_counter() - t0
    al = PointmapAligner(
        prob["edges"], prob["pts_1"], prob["pts_2"], prob["conf_1"], prob["conf_2"], config=AlignConfig(flow_weight=0.0)
    )
    set_state_near_truth(al, prob)
    if impl == "loop":
        log_1 = al.conf_1.log().reshape(al.n_edges, -1)
        log_2 = al.conf_2.log().reshape(al.n_edges, -1)
        loss_fn = lambda: alignment_loss_loop(al, log_1, log_2)  # noqa: E731
    else:
        loss_fn = lambda: al(0)  # noqa: E731
    with torch.no_grad():
        loss0 = float(loss_fn())
    opt = torch.optim.Adam([p for p in al.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.9))

    def step() -> float:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        return float(loss.detach())

    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        hwm_ok = _reset_hwm()
        base = _rss_kb("VmRSS") * 1024
    step()  # warm-up (allocator, Adam state), counted in the memory peak but not in the timing
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.iters
    if cuda:
        extra = torch.cuda.max_memory_allocated() - base
        how = "cuda max_memory_allocated"
    else:
        extra = _rss_kb("VmHWM") * 1024 - base if hwm_ok else -1
        how = "VmHWM after clear_refs" if hwm_ok else "unavailable"
    inputs = sum(t.numel() * t.element_size() for t in (al.pred_1, al.pred_2, al.conf_1, al.conf_2))
    return {
        "impl": impl,
        "T": n,
        "P": al.n_edges,
        "iter_s": dt,
        "loss0": loss0,
        "extra_mb": extra / 2**20,
        "inputs_mb": inputs / 2**20,
        "gen_s": gen_s,
        "memory": how,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per case (after 1 warm-up)")
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--impls", nargs="+", default=["vectorised", "loop"], choices=["vectorised", "loop"])
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return

    print(
        f"global alignment loss+backward+Adam step, {args.width}x{args.height}, swinstride-{args.window} "
        f"non-cyclic symmetrised, device {args.device}, {args.iters} timed iterations"
    )
    rows: dict[tuple[str, int], dict] = {}
    passthrough = [
        "--iters",
        str(args.iters),
        "--height",
        str(args.height),
        "--width",
        str(args.width),
        "--window",
        str(args.window),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    for n in args.frames:
        for impl in args.impls:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", impl, str(n), *passthrough],
                capture_output=True,
                text=True,
                env=os.environ.copy(),
            )
            if out.returncode != 0:
                print(f"  {impl} T={n}: failed\n{out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows[(impl, n)] = r
            print(
                f"  {impl:10s} T={n:3d} P={r['P']:4d}  {1 / r['iter_s']:7.3f} it/s  ({r['iter_s']:.3f} s/it)  "
                f"extra memory {r['extra_mb']:8.1f} MiB  inputs {r['inputs_mb']:7.1f} MiB  "
                f"loss {r['loss0']:.7g}  [{r['threads']} threads]",
                flush=True,
            )
    print("\nratios (vectorised / loop):")
    for n in args.frames:
        v, lp = rows.get(("vectorised", n)), rows.get(("loop", n))
        if not v or not lp:
            continue
        rel = abs(v["loss0"] - lp["loss0"]) / abs(lp["loss0"])
        print(
            f"  T={n:3d}: speed x{lp['iter_s'] / v['iter_s']:.2f}   "
            f"extra memory x{v['extra_mb'] / lp['extra_mb']:.3f}   "
            f"same loss: {'yes' if rel < 1e-5 else 'NO'} (rel diff {rel:.1e})"
        )
    vec = [(n, rows[("vectorised", n)]) for n in args.frames if ("vectorised", n) in rows]
    if len(vec) > 1:
        print(
            "\nvectorised extra memory per frame (MiB): " + ", ".join(f"T={n}: {r['extra_mb'] / n:.1f}" for n, r in vec)
        )


if __name__ == "__main__":
    main()
