"""The whole run (passes, masks, global alignment) of easi3r against a naive pipeline shaped like the official code.

Not a test. The published DUSt3R ViT-L / ViT-B / DPT architecture with random weights (the cost does not depend on
them), a synthetic 512x336 video (the demo's textured plane with a moving square), the pipeline's default pairs
(``swinstride-5-noncyclic``: 18 pairs at T = 6) and its default alignment settings (MST init, 300 Adam iterations).

* ``easi3r``: ``Easi3R(net, ...).run(frames)``, exactly what a user calls. Stage times come from the ``easi3r``
  logger's stage markers.
* ``naive``: what the official code does. For every pair both images are encoded again, every attention is explicit
  with every layer's full score matrix materialised, the heads run in both passes, every pair's outputs (pointmaps,
  confidences, readout maps, encoder features) are kept in lists and aggregated at the end, the k-means runs in both
  segmentations; the alignment is the same MST initialisation and Adam schedule with the point-distance loss written
  as the official batchify ``PointCloudOptimizer`` does (every edge's world points gathered and its pairwise
  transform applied as full ``(P, H*W, 3)`` tensors, autograd; checked equal to the library's loss at the start).
  With ``--flow on`` both variants use the same flow term (OpenCV DIS, the library's code), so the flow share of
  the ratio is not inflated.

Both variants produce the same masks (checked). The cameras are not compared: the RANSAC-PnP of the official
initialisation turns float rounding differences of the pointmaps into different starting cameras. Each variant
runs in a fresh subprocess; peak memory is the resident set size sampled every millisecond minus the level after
building the model, i.e. the memory above the weights (on CUDA: peak allocated bytes).

    python benchmarks/bench_end_to_end.py                          # T = 6 and 16, flow off and on
    python benchmarks/bench_end_to_end.py --frames 6 --flow off     # the quickest row pair
    python benchmarks/bench_end_to_end.py --frames 50 --device cuda
    python benchmarks/bench_end_to_end.py --arch small --frames 4 --flow off   # a smoke run of the script
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import naive_pass, peak_rss_during, randomize_weights_, rss_bytes, run_with_stage_times, sync  # noqa: E402

WIDTH, HEIGHT = 512, 336


def _build(device: str, fused: bool, frames: int, arch: str) -> tuple[Any, Any, Any]:
    import torch

    from easi3r.backbones import DUSt3RConfig, create_backbone
    from easi3r.backbones.heads import DPTHead
    from easi3r.demo import render_video

    torch.manual_seed(0)
    cfg = "dust3r" if arch == "vitl" else DUSt3RConfig(enc_embed_dim=64, enc_depth=2, enc_num_heads=4,
                                                       dec_embed_dim=48, dec_depth=4, dec_num_heads=4)  # fmt: skip
    net = create_backbone(cfg, fused_attention=fused).eval().requires_grad_(False)
    randomize_weights_(net)
    if not fused:  # the naive variant: the official NCHW layout of the DPT heads too
        for module in net.modules():
            if isinstance(module, DPTHead):
                module.channels_last = False
            elif isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                module.weight.data = module.weight.data.contiguous()
    video = render_video(frames, WIDTH, HEIGHT, seed=0)
    return net.to(device), video.frames, torch.device(device)


def _easi3r(net: Any, frames: Any, device: Any, flow: bool, iterations: int) -> dict[str, Any]:
    from easi3r import Easi3R

    runner = Easi3R(backbone=net, device=device, image_size=WIDTH, flow=flow, iterations=iterations)
    rec, total, stages = run_with_stage_times(runner, frames, device)
    return {"total": total, "stages": stages, "masks": rec.masks}


def _official_batchify_loss(aligner: Any, log_1: Any, log_2: Any) -> Any:
    """``l_1 + l_2`` the way the official batchify ``PointCloudOptimizer.forward`` writes it: full per-edge tensors."""
    world = aligner.get_pts3d().reshape(aligner.n_frames, -1, 3)
    pw = aligner.get_pw_poses()
    rot, trans = pw[:, None, :3, :3], pw[:, None, :3, 3]
    a_1 = (rot @ aligner.pred_1[..., None])[..., 0] + trans
    a_2 = (rot @ aligner.pred_2[..., None])[..., 0] + trans
    n = aligner.n_edges * aligner.pred_1.shape[1]
    l_1 = (log_1 * (world[aligner.edges[:, 0]] - a_1).norm(dim=-1)).sum() / n
    l_2 = (log_2 * (world[aligner.edges[:, 1]] - a_2).norm(dim=-1)).sum() / n
    return l_1 + l_2


def _naive(net: Any, frames: Any, device: Any, flow: bool, iterations: int) -> dict[str, Any]:
    import torch

    from easi3r import Easi3R
    from easi3r._reference import aggregate_attention
    from easi3r.align import PointmapAligner
    from easi3r.align.model import relative_pose_loss
    from easi3r.align.optimize import attach_flow, learning_rate
    from easi3r.attention import dynamic_map, fuse_attention
    from easi3r.segment import cluster_fuse, compute_masks

    # Only the loader and the settings come from the pipeline (same frames, pairs and alignment config).
    runner = Easi3R(backbone=net, device=device, image_size=WIDTH, flow=flow, iterations=iterations)
    times: dict[str, float] = {}
    t = time.perf_counter()
    loaded = runner.load(frames)
    times["load"] = time.perf_counter() - t
    images = loaded.images.to(device)
    edges = runner.pairs(len(loaded)).to(device)
    size = tuple(images.shape[-2:])
    n = len(loaded)

    def one_pass(masks: Any) -> list[Any]:
        return naive_pass(net, images, edges, masks)

    def masks_of(stored: list[Any]) -> Any:
        maps1 = torch.cat([p.cross_attn_1 for p, _ in stored]).cpu()
        maps2 = torch.cat([p.cross_attn_2 for p, _ in stored]).cpu()
        stats = aggregate_attention(edges.cpu(), maps1, maps2, n)
        dyn = dynamic_map(fuse_attention(stats))
        features = {}
        for (i, _), (_, grid) in zip(edges.tolist(), stored):  # last writer wins, as the official code
            features[i] = grid.float().cpu()
        refined, _ = cluster_fuse(dyn, torch.stack([features[t] for t in range(n)]))
        return compute_masks(refined, size)[0]

    t = time.perf_counter()
    first = one_pass(None)
    times["pass 1"] = time.perf_counter() - t
    t = time.perf_counter()
    masks = masks_of(first)  # k-means on pass 1's features
    times["masks"] = time.perf_counter() - t
    t = time.perf_counter()
    second = one_pass(masks.to(device))
    masks = masks_of(second)  # the official code segments again after pass 2 (k-means again): the output masks
    times["pass 2"] = time.perf_counter() - t

    t = time.perf_counter()
    cfg = runner.config.align_config()
    pts_1 = torch.cat([p.pts3d_1 for p, _ in second])
    pts_2 = torch.cat([p.pts3d_2 for p, _ in second])
    conf_1 = torch.cat([p.conf_1 for p, _ in second])
    conf_2 = torch.cat([p.conf_2 for p, _ in second])
    aligner = PointmapAligner(edges, pts_1, pts_2, conf_1, conf_2, config=cfg)
    attach_flow(aligner, loaded.rgb if flow else None, masks.to(device), None)
    aligner.init_mst()
    log_1 = aligner.conf_1.log().reshape(aligner.n_edges, -1)
    log_2 = aligner.conf_2.log().reshape(aligner.n_edges, -1)
    with torch.no_grad():
        mine, lib = float(_official_batchify_loss(aligner, log_1, log_2)), float(sum(aligner.alignment_loss()))
    if abs(mine - lib) > 1e-4 * abs(lib):
        raise SystemExit(f"the naive loss {mine} is not the library's {lib}")
    params = [p for p in aligner.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.9), eps=1e-8)
    for it in range(cfg.iterations):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, cfg.iterations, cfg.lr, cfg.lr_min, cfg.schedule)
        optimizer.zero_grad()
        loss = _official_batchify_loss(aligner, log_1, log_2)
        # The other terms exactly as PointmapAligner.forward adds them (same code in both variants).
        if cfg.temporal_smoothing_weight > 0:
            loss = loss + cfg.temporal_smoothing_weight * relative_pose_loss(
                aligner.get_cam2world(), cfg.translation_weight
            )
        if aligner.flow_weight > 0 and aligner.flow_12 is not None and it >= aligner.flow_start_iteration:
            term = aligner.flow_loss()
            if not (cfg.flow_threshold > 0 and float(term.detach()) > cfg.flow_threshold):
                loss = loss + aligner.flow_weight * term
        loss.backward()
        optimizer.step()
    sync(device)
    times["alignment"] = time.perf_counter() - t
    return {"total": sum(times.values()), "stages": times, "masks": masks.cpu().numpy()}


def child(variant: str, frames: int, flow: bool, device_name: str, arch: str, iterations: int) -> None:
    import numpy as np
    import torch

    net, video, device = _build(device_name, fused=variant == "easi3r", frames=frames, arch=arch)
    fn = _easi3r if variant == "easi3r" else _naive
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    result, peak = peak_rss_during(lambda: fn(net, video, device, flow, iterations))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    masks = np.asarray(result["masks"]).astype(bool)
    out = {
        "total": result["total"],
        "stages": result["stages"],
        "peak": peak,
        "rss_base": rss_bytes(),
        "dynamic": int(masks.sum()),
        "mask_hash": int(np.packbits(masks).astype(np.int64).sum() % 1_000_003),
    }
    print("RESULT " + json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[6, 16])
    parser.add_argument("--flow", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="vitl", choices=["vitl", "small"], help="vitl: the published architecture")
    parser.add_argument("--iterations", type=int, default=300, help="alignment iterations (official 300)")
    parser.add_argument("--child", nargs=6, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, frames, flow, device, arch, iterations = args.child
        child(variant, int(frames), flow == "on", device, arch, int(iterations))
        return
    import torch

    unit = "peak GPU MiB above weights" if args.device.startswith("cuda") else "peak RSS MiB above weights"
    print(f"torch {torch.__version__}, {args.device}, CPU threads {torch.get_num_threads()}, {WIDTH}x{HEIGHT}, "
          f"architecture {args.arch}, random weights, {args.iterations} alignment iterations")  # fmt: skip
    print(f"{'T':>3} {'flow':>4} {'variant':>8} {'total s':>8} {unit:>28}  stages (s)")
    for frames in args.frames:
        for flow in args.flow:
            res = {}
            for variant in ("easi3r", "naive"):
                cmd = [sys.executable, __file__, "--child", variant, str(frames), flow, args.device, args.arch,
                       str(args.iterations)]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"child failed ({variant}, T={frames}, flow {flow}):\n{proc.stderr[-3000:]}")
                r = res[variant] = json.loads(line[7:])
                stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items())
                print(f"{frames:>3} {flow:>4} {variant:>8} {r['total']:>8.1f} {r['peak'] / 2**20:>28.0f}  {stages}",
                      flush=True)  # fmt: skip
            e, nv = res["easi3r"], res["naive"]
            same = e["dynamic"] == nv["dynamic"] and e["mask_hash"] == nv["mask_hash"]
            not_passes = ("load", "alignment", "assemble", "save")
            passes_e = sum(v for k, v in e["stages"].items() if k not in not_passes)
            passes_n = sum(v for k, v in nv["stages"].items() if k not in not_passes)
            print(
                f"T={frames} flow {flow}: passes+masks {passes_n / passes_e:.2f}x faster (target >= 3.0x), "
                f"end to end {nv['total'] / e['total']:.2f}x (target >= 4x), peak above weights "
                f"{e['peak'] / nv['peak']:.2f}x of naive (target <= 0.5x); same masks: {same}",
                flush=True,
            )


if __name__ == "__main__":
    main()
