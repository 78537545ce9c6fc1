"""Cost of Easi3R's attention readout inside the DUSt3R network (not a test).

Full ViT-L / ViT-B / DPT configuration with random weights, one 512x288 pair, on CPU by default. Three variants of
``forward_pair`` on pre-encoded tokens (decoders + heads), timed alternately (median of ``--repeats``):

* ``plain``: SDPA attention, no readout;
* ``readout``: SDPA attention + the O(N) readout (mean query . keys), what easi3r runs;
* ``naive``: explicit attention (logits, softmax, @v) and every layer's full ``(B, heads, N, N)`` logit matrix kept,
  as the official implementation does.

Peak memory is measured per variant in a fresh subprocess: on CUDA ``max_memory_allocated``; on CPU the resident set
size sampled every millisecond by a thread during ``forward_pair``, minus the level just before it (weights and the
encoded tokens are not counted). The bytes the readout and the naive recorder hold
are reported too. Run: ``python benchmarks/bench_backbone.py [--device cuda] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from common import peak_rss_during, randomize_weights_

from easi3r.backbones import CrossAttentionReadout, DUSt3R, ScoreMatrixRecorder, create_backbone


def build(device: str):
    """The fused network, its explicit-attention twin (the same weight tensors, shared), and one encoded pair."""
    torch.manual_seed(0)
    net = create_backbone("dust3r").eval().requires_grad_(False)
    randomize_weights_(net)
    net = net.to(device)
    explicit = DUSt3R(net.config, head_chunk_size=net.head_chunk_size, fused_attention=False)
    explicit.load_state_dict(net.state_dict(), assign=True)
    explicit.eval().requires_grad_(False)
    img = torch.randn(2, 3, 288, 512, device=device)
    with torch.inference_mode():
        enc = net.encode(img)
    return {"fused": net, "explicit": explicit}, enc


def run_variant(nets, enc, variant: str):
    net = nets["explicit" if variant == "naive" else "fused"]
    probe = {"plain": None, "readout": CrossAttentionReadout(), "naive": ScoreMatrixRecorder()}[variant]
    with torch.inference_mode():
        pred = net.forward_pair(enc[0], enc[1], readout=variant != "plain", probe=probe)
    return pred, probe


def held_bytes(probe) -> int:
    if probe is None:
        return 0
    total = sum(t.numel() * t.element_size() for d in probe.scores.values() for t in d.values())
    if isinstance(probe, ScoreMatrixRecorder):
        total += sum(t.numel() * t.element_size() for d in probe.matrices.values() for t in d.values())
    return total


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child(variant: str, device: str) -> None:
    """One variant in a fresh process: peak memory above the level after building the model and encoding."""
    net, enc = build(device)
    run_variant(net, enc, "plain")  # warm-up: allocator pools and kernels are set up before measuring
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _, probe = run_variant(net, enc, variant)
        sync(device)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        (_, probe), peak = peak_rss_during(lambda: run_variant(net, enc, variant))
    print(json.dumps({"peak": peak, "held": held_bytes(probe)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.device)
        return

    variants = ("plain", "readout", "naive")
    net, enc = build(args.device)
    print(
        f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"tokens per image {enc.tokens.shape[1]}"
    )
    run_variant(net, enc, "readout")  # warm-up
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:  # interleaved so that machine load affects every variant alike
            sync(args.device)
            t0 = time.perf_counter()
            run_variant(net, enc, v)
            sync(args.device)
            times[v].append(time.perf_counter() - t0)
    ref_pred, _ = run_variant(net, enc, "naive")
    fast_pred, _ = run_variant(net, enc, "readout")
    err = (ref_pred.cross_attn_1 - fast_pred.cross_attn_1).abs().max().item()
    del net, enc

    mem = {}
    for v in variants:
        out = subprocess.run(
            [sys.executable, __file__, "--child", v, "--device", args.device],
            capture_output=True,
            text=True,
            check=True,
        )
        mem[v] = json.loads(out.stdout.strip().splitlines()[-1])

    med = {v: statistics.median(t) for v, t in times.items()}
    print(f"\n{'variant':<10}{'median s':>10}{'peak MiB':>11}{'held by probe MiB':>20}")
    for v in variants:
        print(f"{v:<10}{med[v]:>10.3f}{mem[v]['peak'] / 2**20:>11.1f}{mem[v]['held'] / 2**20:>20.3f}")
    print(
        f"\nreadout vs plain time:             {med['readout'] / med['plain']:.3f}x "
        f"(overhead {100 * (med['readout'] / med['plain'] - 1):+.1f} %, target <= +5 %)"
    )
    print(f"readout vs naive time:             {med['readout'] / med['naive']:.3f}x")
    print(
        f"readout memory / naive matrices:   {mem['readout']['held'] / mem['naive']['held']:.5f} "
        f"({100 * mem['readout']['held'] / mem['naive']['held']:.3f} %, target <= 1 %)"
    )
    print(f"peak memory readout / naive:       {mem['readout']['peak'] / max(mem['naive']['peak'], 1):.3f}x")
    print(f"max |readout - naive readout|:     {err:.2e}")


if __name__ == "__main__":
    main()
