"""Pass 1 + segmentation + pass 2 of easi3r against a naive pipeline that works the way the official code does.

Not a test. Random weights (the cost does not depend on them), 512x288 frames, ``swinstride-5-noncyclic`` pairs.

* ``easi3r``: frames encoded once; pass 1 runs the decoders only (no heads) with the O(N) readout streamed into
  per-frame statistics; pass 2 (re-weighted, fused SDPA) keeps only the pointmaps alignment needs.
* ``naive``: for every pair both images are encoded again, every attention is explicit and every layer's full score
  matrix is materialised (as the official code does), the heads run in both passes, and every pair's outputs
  (pointmaps, confidences, readout maps, encoder features) are stored in lists and aggregated at the end.

Both variants produce the same masks (checked). Each variant runs in a fresh subprocess; peak memory is the resident
set size sampled every millisecond minus the level after building the model and frames (weights not counted).

Run: ``python benchmarks/bench_passes.py`` (cases ``medium`` T=16 and ``vitl`` T=6; ``--cases medium`` for one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from common import naive_pass, peak_rss_during, randomize_weights_

from easi3r._reference import aggregate_attention
from easi3r.attention import dynamic_map, fuse_attention
from easi3r.backbones import DUSt3R, DUSt3RConfig, create_backbone
from easi3r.pairs import make_pairs
from easi3r.pipeline import encode_frames, run_pass
from easi3r.segment import cluster_fuse, cluster_labels, compute_masks, segment

CASES = {
    # ViT-B encoder, a 12 x 12 decoder of width 384 (the official readout's 144 channels), DPT heads.
    "medium": dict(
        frames=16,
        config=DUSt3RConfig(
            enc_embed_dim=768, enc_depth=12, enc_num_heads=12, dec_embed_dim=384, dec_depth=12, dec_num_heads=12
        ),
    ),
    "vitl": dict(frames=6, config=None),  # the published ViT-L / ViT-B / DPT architecture
}
SIZE = (288, 512)


def build(case: str, fused_attention: bool):
    torch.manual_seed(0)
    cfg = CASES[case]["config"]
    net = (
        DUSt3R(cfg, fused_attention=fused_attention)
        if cfg is not None
        else create_backbone("dust3r", fused_attention=fused_attention)
    )
    net = net.eval().requires_grad_(False)
    randomize_weights_(net)
    T = CASES[case]["frames"]
    images = torch.randn(T, 3, *SIZE) * 0.5
    edges = torch.from_numpy(make_pairs(T, "swinstride", 5)).long()
    return net, images, edges


def easi3r_passes(net, images, edges):
    enc = encode_frames(net, images)
    labels = cluster_labels(enc.token_grid().float().cpu())  # once per video: both passes share the tokens
    first = run_pass(net, enc, edges, heads=False, progress=False)
    seg = segment(first.attention, labels, SIZE)
    second = run_pass(net, enc, edges, masks=seg.masks, heads=True, progress=False)
    return seg.masks, second.pointmaps


def naive_passes(net, images, edges):
    def one_pass(masks):
        return naive_pass(net, images, edges, masks)

    def masks_of(stored):
        maps1 = torch.cat([p.cross_attn_1 for p, _ in stored])
        maps2 = torch.cat([p.cross_attn_2 for p, _ in stored])
        stats = aggregate_attention(edges, maps1, maps2, len(images))
        dyn = dynamic_map(fuse_attention(stats))
        features = {}
        for (i, _), (_, grid) in zip(edges.tolist(), stored):  # last writer wins, as the official code
            features[i] = grid
        feats = torch.stack([features[t] for t in range(len(images))])
        refined, _ = cluster_fuse(dyn, feats)
        return compute_masks(refined, SIZE)[0]

    first = one_pass(None)
    masks = masks_of(first)
    second = one_pass(masks)
    return masks, (first, second)


def child(case: str, variant: str) -> None:
    # The naive variant's network runs every attention explicitly (same weights: same seed).
    net, images, edges = build(case, fused_attention=variant == "easi3r")
    fn = easi3r_passes if variant == "easi3r" else naive_passes
    t0 = time.perf_counter()
    (masks, _), peak = peak_rss_during(lambda: fn(net, images, edges))
    elapsed = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "time": elapsed,
                "peak": peak,
                "pairs": len(edges),
                "masks": masks.flatten().nonzero().flatten()[:2000].tolist(),
                "dynamic": int(masks.sum()),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, frames {SIZE[1]}x{SIZE[0]}")
    print(f"{'case':<8}{'T':>4}{'pairs':>7}{'variant':>9}{'time s':>9}{'peak MiB':>10}")
    for case in args.cases:
        res = {}
        for variant in ("easi3r", "naive"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", case, variant], capture_output=True, text=True, check=True
            )
            res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            r = res[variant]
            print(
                f"{case:<8}{CASES[case]['frames']:>4}{r['pairs']:>7}{variant:>9}{r['time']:>9.1f}"
                f"{r['peak'] / 2**20:>10.0f}",
                flush=True,
            )
        same = res["easi3r"]["masks"] == res["naive"]["masks"] and res["easi3r"]["dynamic"] == res["naive"]["dynamic"]
        print(
            f"{case}: speed-up {res['naive']['time'] / res['easi3r']['time']:.2f}x (target >= 2.5x), "
            f"peak memory {res['easi3r']['peak'] / res['naive']['peak']:.3f}x of naive (target <= 0.5x), "
            f"same masks: {same}"
        )


if __name__ == "__main__":
    main()
