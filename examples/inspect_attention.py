"""Notebook-style tour of the intermediates: attention statistics, dynamic map, clusters, masks.

    python examples/inspect_attention.py [path/to/frames] [--backbone dust3r] [--out attention.png]

Without an input it uses the synthetic demo video and a random network (maps are then not meaningful).
"""

from __future__ import annotations

import argparse

import numpy as np

from easi3r import Easi3R
from easi3r.pipeline import Trace
from easi3r.viz import attention_grid

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("input", nargs="?")
parser.add_argument("--backbone", default="dust3r")
parser.add_argument("--out", default="attention.png")
args = parser.parse_args()

# %% Run with a Trace to keep every intermediate (here without global alignment iterations: masks only).
if args.input is None:
    from easi3r.demo import demo_backbone, render_video
    from easi3r.frames import load_frames

    frames = load_frames(render_video(6).frames, image_size=256)
    runner = Easi3R(backbone=demo_backbone(frames.images), image_size=256, iterations=0, flow=False)
else:
    frames, runner = args.input, Easi3R(backbone=args.backbone, iterations=0, flow=False)
trace = Trace(keep_pair_maps=True)
rec = runner.run(frames, trace=trace)

# %% Pass 1: per-frame statistics of the cross-attention over the pairs of each role.
stats = trace.pass1.attention.stats()
print("pairs per frame (src role, ref role):", stats.counts.tolist())
print("src mean maps:", tuple(stats.src_mean.shape), "(frames, h, w, layers x heads)")
maps1, maps2 = trace.pass1.pair_maps
print("per-pair readout kept for inspection:", tuple(maps1.shape))

# %% The four fused maps and the dynamic map (Eq. 9) of both passes.
for name, seg in (("pass 1", trace.segmentation1), ("pass 2", trace.segmentation2)):
    fused = seg.fused
    print(
        f"{name}: threshold {seg.threshold.threshold:.4f} ({seg.threshold.method}, {seg.threshold.n_classes} "
        f"classes), {100 * seg.masks.float().mean():.1f} % dynamic"
    )
    for key, value in fused.as_dict().items():
        print(f"   {key:<9} min {value.min():.3f}  max {value.max():.3f}")

# %% Clusters: how many k-means clusters does each frame use, and which are dynamic?
labels = rec.cluster_labels
for t in range(rec.num_frames):
    dyn_clusters = np.unique(labels[t][rec.dynamic_maps[t] > rec.threshold])
    print(f"frame {t}: {len(np.unique(labels[t]))} clusters, dynamic ones: {dyn_clusters.tolist()}")

# %% Figure: rows = frames, columns = the four maps, the dynamic map and the mask overlay.
fig = attention_grid(rec)
fig.savefig(args.out, dpi=80)
print("saved", args.out)
