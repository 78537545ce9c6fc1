"""The Easi3R method end to end: frames -> pass 1 -> masks -> re-weighted pass 2 -> alignment -> reconstruction.

This module only orchestrates; every stage lives in its own module and is public, so a notebook can stop after
any of them:

1. :func:`easi3r.frames.load_frames` -> :class:`~easi3r.frames.Frames`;
2. :func:`easi3r.pairs.make_pairs` -> ``(P, 2)`` edges (official order kept);
3. :func:`encode_frames`: the encoder runs **once per frame**; every pass reuses the tokens, and the k-means
   labels of the cluster fusion are computed once from them (both passes use the same tokens and seed);
4. :func:`run_pass` (pass 1): decoders only, the readout streams into an
   :class:`~easi3r.attention.AttentionAccumulator`; nothing per pair is kept;
5. :func:`easi3r.segment.segment` -> masks (channel fusion, Easi3R Eq. 9, cluster fusion, multi-Otsu);
6. :func:`run_pass` (pass 2): the reference decoder re-weighted by the pass-1 masks; its attention gives the
   final masks (as the official code does). In global alignment mode its heads also give the pairwise pointmaps;
7. alignment: :func:`easi3r.align.global_align` on every pair at once, or :func:`easi3r.align.window_align`
   window by window. In window mode the pass-2 pointmaps are **not** kept: each window's pairs are run through
   the re-weighted network again when that window is aligned (:class:`NetworkPointmaps`; deterministic, the same
   re-weighting as pass 2), so only one window's pointmaps are ever resident;
8. assembled into a :class:`~easi3r.result.Reconstruction`.

Memory: besides one window's (or, in global mode, every pair's) pointmaps, the only state that grows with the
number of frames ``T`` is per frame: the frames, the encoder tokens, the attention statistics and the outputs.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import check_finite, check_shape
from .align import Alignment, FlowProvider, global_align, window_align
from .align.flow import make_flow_provider
from .align.model import KnownMode
from .align.sharded import sharded_global_align
from .attention import AttentionAccumulator
from .backbones import Backbone, EncodedImages, load_backbone
from .config import Easi3RConfig, Precision
from .device import check_precision, network_precision, resolve_device
from .distributed import DistContext, all_gather_objects, broadcast_object, gather_objects, init_distributed
from .errors import Easi3RInputError
from .frames import Frames, MaskSource, is_video_path, load_frames, load_masks, processed_focals
from .pairs import make_pairs
from .refine import RefinedMasks, SAM2VideoRefiner
from .result import Reconstruction
from .segment import MaskRefiner, Segmentation, apply_refiner, cluster_labels, segment

__all__ = ["Easi3R", "NetworkPointmaps", "PairPointmaps", "PassOutput", "Trace", "encode_frames", "run_pass"]

logger = logging.getLogger("easi3r")


@dataclass
class PairPointmaps:
    """Pass-2 network outputs of a set of pairs (the only per-pair state of the pipeline).

    Attributes:
        edges: ``(P, 2)`` int64 ``(view-1 frame, view-2 frame)``.
        pts_1: ``(P, H, W, 3)`` view-1 points in view 1's camera. pts_2: view-2 points in view 1's camera.
        conf_1, conf_2: ``(P, H, W)`` raw confidences (>= 1).
    """

    edges: Tensor
    pts_1: Tensor
    pts_2: Tensor
    conf_1: Tensor
    conf_2: Tensor


@dataclass
class PassOutput:
    """One pass over the pairs: streamed attention statistics, and the pointmaps when heads were run.

    ``pair_maps`` holds the per-pair readout ``(cross_attn_1, cross_attn_2)``, each ``(P, h, w, C)``, only when
    asked for (``keep_maps=True``): the pipeline itself never needs them.
    """

    attention: AttentionAccumulator | None
    pointmaps: PairPointmaps | None
    pair_maps: tuple[Tensor, Tensor] | None = None


def _my_batches(n_items: int, batch_size: int, ctx: DistContext | None) -> list[int]:
    """Start indices of the batches this rank runs: whole batches, round-robin over the ranks, so that every
    batch has the composition it has in one process (bit-identical network outputs whatever the world size)."""
    starts = list(range(0, n_items, batch_size))
    return starts if ctx is None or not ctx.distributed else starts[ctx.rank :: ctx.world_size]


def encode_frames(
    backbone: Backbone,
    images: Tensor,
    *,
    batch_size: int = 4,
    progress: bool = False,
    ctx: DistContext | None = None,
    precision: Precision = "fp32",
) -> EncodedImages:
    """Encoder tokens of every frame, computed once and in batches (the encoder's activations, not its output,
    dominate its memory).

    Args:
        images: ``(T, 3, H, W)`` normalised frames (any device; moved to the backbone's).
        batch_size: frames per encoder call.
        ctx: with several processes, each rank encodes a share of the batches and the tokens are all-gathered.
        precision: the encoder's arithmetic (:data:`~easi3r.config.Precision`; ``"bf16"`` stores bfloat16 tokens).

    Returns:
        :class:`EncodedImages` of the ``T`` frames on the backbone's device.
    """
    parts: dict[int, EncodedImages] = {}
    mine = _my_batches(len(images), batch_size, ctx)
    with torch.inference_mode(), network_precision(precision, backbone.device):
        for s in tqdm(mine, desc="encode", unit="batch", disable=not progress, leave=False):
            parts[s] = backbone.encode(images[s : s + batch_size].to(backbone.device))
    if ctx is not None and ctx.distributed:
        gathered: dict[int, EncodedImages] = {}
        for shard in all_gather_objects(ctx, {k: v.to("cpu") for k, v in parts.items()}):
            gathered.update(shard)
        parts = {k: v.to(backbone.device) for k, v in gathered.items()}
    return EncodedImages.concat([parts[k] for k in sorted(parts)])


def run_pass(
    backbone: Backbone,
    encoded: EncodedImages,
    edges: Tensor,
    *,
    masks: Tensor | None = None,
    heads: bool = False,
    readout: bool = True,
    batch_size: int = 4,
    keep_maps: bool = False,
    progress: bool = True,
    desc: str = "pass",
    ctx: DistContext | None = None,
    precision: Precision = "fp32",
) -> PassOutput:
    """Run the decoders over every edge in batches, streaming the readout into per-frame statistics.

    Args:
        backbone: the network.
        encoded: encoder tokens of all ``T`` frames (:meth:`Backbone.encode`), on the backbone's device.
        edges: ``(P, 2)`` int64 edges.
        masks: ``(T, H, W)`` bool dynamic masks for the re-weighted pass (None: plain attention).
        heads: run the heads and keep the pointmaps.
        readout: accumulate the cross-attention statistics (False: ``attention`` is None).
        batch_size: pairs per network call (batch composition = consecutive edges, so a pair's outputs depend
            only on the edge list and the batch size).
        keep_maps: also return the per-pair readout maps (inspection and tests; O(P) memory).
        ctx: with several processes, this rank runs its share of whole batches (:func:`_my_batches`); its
            accumulator then holds only its pairs (merge with :func:`gather_attention`) and its pointmaps are
            those of its pairs (``pointmaps.edges`` says which).
        precision: the decoders' arithmetic (:data:`~easi3r.config.Precision`); readout and pointmaps are float32.

    Returns:
        :class:`PassOutput`; its accumulator lives on CPU in float64, its pointmaps on the backbone's device.
    """
    starts = _my_batches(len(edges), batch_size, ctx)
    if ctx is not None and ctx.distributed:
        edges = edges[_rank_rows(len(edges), batch_size, ctx.rank, ctx.world_size)]
        starts = list(range(0, len(edges), batch_size))
    num_frames = len(encoded)
    acc = AttentionAccumulator(num_frames, encoded.grid, backbone.attention_channels) if readout else None
    device = encoded.tokens.device
    pointmaps = None
    if heads:
        # Written in place batch by batch: concatenating lists at the end would hold every pointmap twice.
        n, (hh, ww) = len(edges), encoded.size
        pointmaps = PairPointmaps(
            edges,
            pts_1=torch.empty(n, hh, ww, 3, device=device),
            pts_2=torch.empty(n, hh, ww, 3, device=device),
            conf_1=torch.empty(n, hh, ww, device=device),
            conf_2=torch.empty(n, hh, ww, device=device),
        )
    maps: tuple[list[Tensor], list[Tensor]] = ([], [])
    dev_masks = masks.to(device) if masks is not None else None
    bar = tqdm(total=len(edges), desc=desc, unit="pair", disable=not progress, leave=False)
    with torch.inference_mode(), network_precision(precision, device):
        for start in starts:
            e = edges[start : start + batch_size]
            i, j = e[:, 0].to(device), e[:, 1].to(device)
            pred = backbone.forward_pair(
                encoded[i],
                encoded[j],
                dynamic_mask1=dev_masks[i] if dev_masks is not None else None,
                dynamic_mask2=dev_masks[j] if dev_masks is not None else None,
                heads=heads,
                readout=readout,
            )
            if acc is not None:
                if pred.cross_attn_1 is None or pred.cross_attn_2 is None:
                    raise Easi3RInputError(f"{type(backbone).__name__}.forward_pair returned no readout maps")
                acc.add(e, pred.cross_attn_1, pred.cross_attn_2)
                if keep_maps:
                    maps[0].append(pred.cross_attn_1.cpu())
                    maps[1].append(pred.cross_attn_2.cpu())
            if pointmaps is not None:
                if pred.pts3d_1 is None or pred.pts3d_2 is None or pred.conf_1 is None or pred.conf_2 is None:
                    raise Easi3RInputError(f"{type(backbone).__name__}.forward_pair returned no pointmaps")
                rows = slice(start, start + len(e))
                pointmaps.pts_1[rows] = pred.pts3d_1
                pointmaps.pts_2[rows] = pred.pts3d_2
                pointmaps.conf_1[rows] = pred.conf_1
                pointmaps.conf_2[rows] = pred.conf_2
            bar.update(len(e))
    bar.close()
    pair_maps = (torch.cat(maps[0]), torch.cat(maps[1])) if keep_maps and maps[0] else None
    return PassOutput(acc, pointmaps, pair_maps)


def gather_attention(ctx: DistContext, acc: AttentionAccumulator) -> AttentionAccumulator:
    """The attention statistics of every rank's pairs, merged in rank order (exact Chan/Welford merges, so the
    result equals one process's up to float64 rounding)."""
    if not ctx.distributed:
        return acc
    shards = all_gather_objects(ctx, acc)
    merged = shards[0]
    for other in shards[1:]:
        merged = merged.merge(other)
    return merged


def _rank_rows(n_items: int, batch_size: int, rank: int, world_size: int) -> Tensor:
    """Global indices of the items (edges) that ``rank`` runs, in the order it runs them."""
    starts = list(range(0, n_items, batch_size))[rank::world_size]
    if not starts:
        return torch.zeros(0, dtype=torch.int64)
    return torch.cat([torch.arange(s, min(s + batch_size, n_items)) for s in starts])


def gather_pointmaps(ctx: DistContext, pointmaps: PairPointmaps, n_edges: int, batch_size: int) -> PairPointmaps | None:
    """Every rank's pass-2 pointmaps, in the global edge order, on rank 0 only (None on the other ranks)."""
    if not ctx.distributed:
        return pointmaps
    cpu = PairPointmaps(*(t.to("cpu") for t in dataclasses.astuple(pointmaps)))
    shards = gather_objects(ctx, cpu)
    if shards is None:
        return None
    device = pointmaps.pts_1.device
    rows = torch.cat([_rank_rows(n_edges, batch_size, r, ctx.world_size) for r in range(ctx.world_size)])
    order = torch.argsort(rows)

    def stack(name: str) -> Tensor:
        return torch.cat([getattr(shard, name) for shard in shards])[order].to(device)

    return PairPointmaps(stack("edges"), stack("pts_1"), stack("pts_2"), stack("conf_1"), stack("conf_2"))


def _to_cpu(aligned: Alignment) -> Alignment:
    return dataclasses.replace(
        aligned, **{f.name: getattr(aligned, f.name).to("cpu") for f in dataclasses.fields(aligned)
                    if isinstance(getattr(aligned, f.name), Tensor)}
    )  # fmt: skip


def _to_device(aligned: Alignment | None, device: torch.device) -> Alignment:
    if aligned is None:
        raise Easi3RInputError("rank 0 produced no alignment")
    return dataclasses.replace(
        aligned, **{f.name: getattr(aligned, f.name).to(device) for f in dataclasses.fields(aligned)
                    if isinstance(getattr(aligned, f.name), Tensor)}
    )  # fmt: skip


@dataclass
class NetworkPointmaps:
    """Pointmaps of any subset of the pairs, computed on demand by the re-weighted network (window alignment).

    Calling it with edge indices runs decoders and heads on those pairs only, re-weighted by ``masks`` as in
    pass 2, so a window's pointmaps exist only while that window is aligned. The network is deterministic for a
    given batch composition; the batches are consecutive runs of the requested edges.

    Attributes:
        backbone, encoded: the network and the encoder tokens of all frames.
        edges: ``(P, 2)`` all edges of the video.
        masks: ``(T, H, W)`` bool re-weighting masks (pass-1 masks), or None for plain attention.
        batch_size: pairs per network call.
        precision: the decoders' arithmetic (:data:`~easi3r.config.Precision`).
    """

    backbone: Backbone
    encoded: EncodedImages
    edges: Tensor
    masks: Tensor | None
    batch_size: int = 4
    progress: bool = False
    precision: Precision = "fp32"

    def __call__(self, edge_indices: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(K,)`` int64 edge indices -> ``pts_1, pts_2 (K, H, W, 3)``, ``conf_1, conf_2 (K, H, W)``."""
        out = run_pass(
            self.backbone,
            self.encoded,
            self.edges[edge_indices.cpu()],
            masks=self.masks,
            heads=True,
            readout=False,
            batch_size=self.batch_size,
            progress=self.progress,
            desc="pointmaps",
            precision=self.precision,
        )
        pm = out.pointmaps
        if pm is None:  # run_pass always returns pointmaps when heads=True
            raise Easi3RInputError("no pointmaps were computed")
        return pm.pts_1, pm.pts_2, pm.conf_1, pm.conf_2


@dataclass
class Trace:
    """Intermediates of one :meth:`Easi3R.run`, filled in when passed as ``run(..., trace=Trace())``.

    Attributes:
        keep_pair_maps: also keep every pair's readout maps in ``pass1`` / ``pass2`` (memory O(pairs)).
        frames, edges: the inputs of the stages.
        features: ``(T, h, w, C)`` encoder tokens on CPU (copied only because a trace asked for them).
        cluster_labels: ``(T, h, w)`` int64 k-means labels (computed once, used by both segmentations).
        pass1, pass2: :class:`PassOutput` of both passes (``pass2`` is None when re-weighting is off).
        segmentation1, segmentation2: masks and maps of each pass (``segmentation2`` gives the final masks).
        refined1, refined2: the SAM2 refinement of each pass's masks (None without SAM2): ``refined1.union``
            re-weights pass 2, ``refined2.union`` is excluded from the flow term, ``refined2.sam2`` is output.
        alignment: the :class:`~easi3r.align.Alignment`; ``alignment_mode``: ``"global"`` or ``"window"``.
    """

    keep_pair_maps: bool = False
    frames: Frames | None = None
    edges: Tensor | None = None
    features: Tensor | None = None
    cluster_labels: Tensor | None = None
    pass1: PassOutput | None = None
    pass2: PassOutput | None = None
    segmentation1: Segmentation | None = None
    segmentation2: Segmentation | None = None
    refined1: RefinedMasks | None = None
    refined2: RefinedMasks | None = None
    alignment: Alignment | None = None
    alignment_mode: str | None = None


class Easi3R:
    """Training-free dynamic masks, cameras and 4D points from a video (Easi3R, ICCV 2025).

    Args:
        backbone: registry name (``"dust3r"``, ``"monst3r"``, ...), hub repo id, checkpoint path or a
            :class:`~easi3r.backbones.Backbone`.
        device: ``None`` picks CUDA when available (overrides ``config.device``).
        config: an :class:`~easi3r.config.Easi3RConfig` (default: the official demo's settings).
        mask_refiner: optional callable ``(images (T,H,W,3) uint8, masks (T,H,W) bool) -> masks`` applied to the
            attention masks of both passes.
        sam2_refiner: a :class:`~easi3r.refine.SAM2VideoRefiner` (default: built from ``config.sam2`` when set, before
            any frame is read). Official semantics (``refine_motion_mask_w_sam2``): the union of SAM2 and
            attention masks re-weights pass 2 and is excluded from the flow term; the SAM2 masks are output.
        flow_provider: optical flow for the alignment's flow term (default: OpenCV DIS).
        dist: the multi-process context (:func:`easi3r.distributed.init_distributed`). None: detected — under
            ``torchrun`` (or in a process group the caller initialised) this process joins it and uses
            ``cuda:{LOCAL_RANK}`` when CUDA is available, else the CPU with gloo; otherwise one process.
        **overrides: :class:`Easi3RConfig` fields by name (alignment fields may be given flat, e.g.
            ``iterations=100``). Unknown names raise :class:`TypeError`.

    Example:
        >>> rec = Easi3R("monst3r").run("video.mp4")  # doctest: +SKIP
        >>> rec.save("out/")  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: str | Backbone = "monst3r",
        device: str | torch.device | None = None,
        config: Easi3RConfig | None = None,
        *,
        mask_refiner: MaskRefiner | None = None,
        flow_provider: FlowProvider | None = None,
        sam2_refiner: SAM2VideoRefiner | None = None,
        dist: DistContext | None = None,
        **overrides: Any,
    ) -> None:
        cfg = (config or Easi3RConfig()).with_overrides(**overrides)
        wanted = device if device is not None else cfg.device
        self.dist = dist if dist is not None else init_distributed(wanted)
        self.device = self.dist.device if self.dist.distributed else resolve_device(wanted)
        self.config = dataclasses.replace(cfg, device=str(self.device))
        check_precision(self.config.precision, self.device)
        self.backbone = load_backbone(backbone, self.device)
        # The backbone's own preprocessing (e.g. 224 px for a 224 model), unless the caller chose it.
        pre = self.backbone.preprocessing
        if config is None:
            chosen = {k: getattr(pre, k) for k in ("image_size", "crop") if k not in overrides}
            self.config = dataclasses.replace(self.config, **chosen)
        self.backbone_name = backbone if isinstance(backbone, str) else type(backbone).__name__
        self.mask_refiner = mask_refiner
        if flow_provider is None and self.config.flow and self.config.flow_model != "dis":
            # Built now, so that missing weights or torchvision fail before any frame is read.
            flow_provider = make_flow_provider(
                self.config.flow_model, weights=self.config.flow_weights, device=self.device
            )
        self.flow_provider = flow_provider
        if sam2_refiner is None and self.config.sam2 is not None:
            sam2_refiner = SAM2VideoRefiner.from_pretrained(self.config.sam2, device=self.device)
        self.sam2 = sam2_refiner

    # -- stages --------------------------------------------------------------------------------------------------
    def load(self, frames: Any) -> Frames:
        """Frames from any source :func:`easi3r.load_frames` accepts, with this config's size/fps/frame cap."""
        cfg = self.config
        limit = cfg.frame_limit(is_video_path(frames))
        loaded = load_frames(frames, cfg.image_size, fps=cfg.fps, max_frames=limit, crop=cfg.crop)
        if len(loaded) < 2:
            raise Easi3RInputError(
                f"Easi3R needs at least 2 frames (the attention statistics compare pairs), got {len(loaded)}"
            )
        return loaded

    def pairs(self, num_frames: int) -> Tensor:
        """``(P, 2)`` int64 edges of this config's graph."""
        cfg = self.config
        return torch.from_numpy(make_pairs(num_frames, cfg.graph, cfg.window, cyclic=cfg.cyclic)).long()

    def encode(self, frames: Frames, *, progress: bool = True) -> EncodedImages:
        """Encoder tokens of every frame, computed once (batches of ``pair_batch_size`` frames)."""
        return encode_frames(
            self.backbone,
            frames.images,
            batch_size=self.config.pair_batch_size,
            progress=progress,
            ctx=self.dist,
            precision=self.config.precision,
        )

    def cluster(self, encoded: EncodedImages) -> Tensor:
        """``(T, h, w)`` int64 k-means labels of the encoder tokens (the cluster fusion's clusters), on CPU.

        With several processes k-means runs on rank 0 only and the labels are broadcast."""
        labels = None
        if self.dist.is_main:
            features = encoded.token_grid().float().cpu()
            labels = cluster_labels(features, n_clusters=self.config.clusters, random_state=self.config.cluster_seed)
        shared = broadcast_object(self.dist, labels)
        if shared is None:
            raise Easi3RInputError("rank 0 produced no cluster labels")
        return shared

    def segment(
        self, output: PassOutput, labels: Tensor, frames: Frames, *, progress: bool = False, desc: str = "segment"
    ) -> Segmentation:
        """Masks from a pass's attention statistics and the k-means labels (then the optional refiner).

        With several processes every rank's statistics are merged, rank 0 segments and broadcasts the result."""
        if output.attention is None:
            raise Easi3RInputError("this pass ran without the attention readout; nothing to segment")
        attention = gather_attention(self.dist, output.attention)
        seg = None
        if self.dist.is_main:
            seg = segment(attention, labels, frames.size, threshold=self.config.threshold, progress=progress, desc=desc)
            if self.mask_refiner is not None:
                seg.masks = torch.as_tensor(apply_refiner(self.mask_refiner, frames.rgb, seg.masks))
        shared = broadcast_object(self.dist, seg)
        if shared is None:
            raise Easi3RInputError("rank 0 produced no segmentation")
        return shared

    def align(
        self,
        mode: str,
        edges: Tensor,
        frames: Frames,
        masks: Tensor,
        *,
        pointmaps: PairPointmaps | None,
        source: NetworkPointmaps | None,
        progress: bool = True,
        **known: Any,
    ) -> Alignment:
        """Global (every pair's pointmaps at once) or window-wise alignment (pointmaps fetched per window).

        ``known``: ``known_focal`` / ``known_poses`` / ``known_mode`` of :func:`~easi3r.align.global_align`."""
        cfg = self.config
        common: dict[str, Any] = dict(
            **known,
            config=cfg.align_config(),
            images=frames.rgb,
            masks=masks.to(self.device),
            flow_provider=self.flow_provider,
            metric=bool(self.backbone.metric),
            progress=progress,
        )
        if mode == "global":
            if pointmaps is None:
                raise Easi3RInputError("global alignment needs the pass-2 pointmaps")
            n_batches = -(-len(edges) // cfg.pair_batch_size)
            if self.dist.distributed and n_batches >= self.dist.world_size:
                # Data-parallel over pairs: each rank keeps its own pairs' pointmaps; per-frame gradients summed.
                rows = _rank_rows(len(edges), cfg.pair_batch_size, self.dist.rank, self.dist.world_size)
                return sharded_global_align(
                    self.dist,
                    edges,
                    rows,
                    pointmaps.pts_1,
                    pointmaps.pts_2,
                    pointmaps.conf_1,
                    pointmaps.conf_2,
                    n_frames=len(frames),
                    **common,
                )
            # Fewer pair batches than ranks: rank 0 aligns every pair (the others' pointmaps are gathered to it).
            gathered = gather_pointmaps(self.dist, pointmaps, len(edges), cfg.pair_batch_size)
            aligned = None
            if gathered is not None:
                aligned = global_align(
                    gathered.edges.to(self.device),
                    gathered.pts_1,
                    gathered.pts_2,
                    gathered.conf_1,
                    gathered.conf_2,
                    n_frames=len(frames),
                    **common,
                )
            del gathered
            if not self.dist.distributed:
                return aligned  # type: ignore[return-value]  # one process: global_align returned a result
            shared = broadcast_object(self.dist, _to_cpu(aligned) if aligned is not None else None)
            return _to_device(shared, self.device)
        if source is None:
            raise Easi3RInputError("window alignment needs a pointmap source")
        return window_align(
            edges.to(self.device),
            source,
            len(frames),
            window=cfg.align_window,
            overlap=cfg.align_overlap,
            dist=self.dist,
            **common,
        )

    def _known_cameras(self, frames: Frames, intrinsics: Any, cam2world: Any, mode: str) -> dict[str, Any]:
        """The alignment's ``known_*`` arguments from user cameras (intrinsics at the original resolution)."""
        if mode not in ("pin", "init"):
            raise Easi3RInputError(f"known_mode must be 'pin' or 'init', got {mode!r}")
        known: dict[str, Any] = {}
        if intrinsics is not None:
            known["known_focal"] = torch.from_numpy(processed_focals(intrinsics, frames)).float().to(self.device)
        if cam2world is not None:
            poses = torch.as_tensor(np.asarray(cam2world, dtype=np.float32))
            check_shape(poses, "T 4 4", "cam2world", dims={"T": len(frames)})
            check_finite(poses, "cam2world")
            known["known_poses"] = poses.to(self.device)
        if known:
            known["known_mode"] = mode
        return known

    # -- the whole method ---------------------------------------------------------------------------------------
    def run(
        self,
        frames: Any,
        *,
        masks: MaskSource | None = None,
        intrinsics: Any = None,
        cam2world: Any = None,
        known_mode: KnownMode = "pin",
        progress: bool = True,
        trace: Trace | None = None,
    ) -> Reconstruction:
        """Run Easi3R on ``frames`` (folder, video, list of paths/arrays/PIL images, ``(T,H,W,3)`` array, Frames).

        Args:
            frames: the video.
            masks: your own dynamic masks (the official ``use_gt_davis_masks``): a folder of PNGs (one per frame,
                sorted by name), a list of paths / ``(H, W)`` arrays or a ``(T, H, W)`` array; any non-zero value is
                dynamic; at the frames' original or processed resolution (see :func:`easi3r.frames.load_masks`).
                Pass 1 is skipped, pass 2 re-weights with them, the flow term excludes them and they are the
                output masks.
            intrinsics: known intrinsics at the frames' **original** resolution: a focal in pixels (scalar or
                ``(T,)``) or ``(3, 3)`` / ``(T, 3, 3)`` matrices; rescaled to the processed resolution.
            cam2world: known ``(T, 4, 4)`` camera-to-world poses (OpenCV axes).
            known_mode: ``"pin"`` (the known values are kept exactly) or ``"init"`` (they initialise the
                optimisation, which refines them; official ``preset_pose(..., requires_grad=True)``).
            progress: tqdm bars for every stage.
            trace: a :class:`Trace` to fill with the intermediates (attention statistics, masks of both passes,
                pointmaps, alignment state). Without one, nothing beyond the outputs is kept.

        Returns:
            A :class:`~easi3r.result.Reconstruction` (masks, attention maps, cameras, depths, points).
        """
        cfg = self.config
        logger.debug("stage: load")
        frames = self.load(frames)
        # Everything the user gave is checked here, before any network work.
        given = None if masks is None else torch.from_numpy(load_masks(masks, frames))
        known = self._known_cameras(frames, intrinsics, cam2world, known_mode)
        edges = self.pairs(len(frames))
        mode = cfg.alignment_mode(len(frames))
        logger.debug("stage: encode (%d frames, %d pairs, %s alignment)", len(frames), len(edges), mode)
        encoded = self.encode(frames, progress=progress)
        logger.debug("stage: k-means")
        labels = self.cluster(encoded)
        batch = cfg.pair_batch_size
        keep = trace is not None and trace.keep_pair_maps
        if trace is not None:
            trace.frames, trace.edges, trace.cluster_labels, trace.alignment_mode = frames, edges, labels, mode
            trace.features = encoded.token_grid().float().cpu()

        # Pointmaps come from the last pass (pass 2, or pass 1 without re-weighting), and only in global mode.
        pointmaps, refined, reweight_masks = None, None, given
        if given is None:
            heads_1 = mode == "global" and not cfg.reweight
            logger.debug("stage: pass 1")
            first = run_pass(self.backbone, encoded, edges, heads=heads_1, batch_size=batch, keep_maps=keep,
                             progress=progress, desc="pass 1 (attention)", ctx=self.dist,
                             precision=cfg.precision)  # fmt: skip
            seg = seg_1 = self.segment(first, labels, frames, progress=progress, desc="masks (pass 1)")
            pointmaps = first.pointmaps
            if self.sam2 is not None:
                refined = self.sam2.refine(frames.rgb, seg_1.masks, progress=progress)
            if trace is not None:
                trace.pass1, trace.segmentation1, trace.refined1 = first, seg_1, refined
            del first
            # With SAM2, the union (attention | SAM2) re-weights pass 2 (official: pass-1 aligner's dynamic_masks).
            reweight_masks = refined.union if refined is not None else seg_1.masks
        if not cfg.reweight:
            reweight_masks = None
        if cfg.reweight or given is not None:
            # With given masks pass 1 is skipped: this pass re-weights with them (or is the plain pass).
            logger.debug("stage: pass 2")
            second = run_pass(self.backbone, encoded, edges, masks=reweight_masks, heads=mode == "global",
                              batch_size=batch, keep_maps=keep, progress=progress,
                              desc="pass 2 (re-weighted)", ctx=self.dist, precision=cfg.precision)  # fmt: skip
            # The official pipeline recomputes the masks from the re-weighted pass: those are the outputs.
            seg = self.segment(second, labels, frames, progress=progress, desc="masks (pass 2)")
            pointmaps = second.pointmaps
            if self.sam2 is not None and given is None:
                refined = self.sam2.refine(frames.rgb, seg.masks, progress=progress)
            if trace is not None:
                trace.pass2, trace.segmentation2, trace.refined2 = second, seg, refined
            del second
        if given is not None:
            # Official use_gt_davis_masks: the given masks re-weight, are excluded from the flow term and are output.
            seg.masks = given
        # The flow term excludes the union; the SAM2 masks alone are output (official sam2_dynamic_masks).
        flow_masks = refined.union if refined is not None else seg.masks
        out_masks = refined.sam2 if refined is not None else seg.masks

        source = None
        if mode == "window":
            source = NetworkPointmaps(
                self.backbone, encoded, edges, reweight_masks, batch_size=batch, precision=cfg.precision
            )
        logger.debug("stage: alignment")
        aligned = self.align(
            mode, edges, frames, flow_masks, pointmaps=pointmaps, source=source, progress=progress, **known
        )
        del pointmaps, source, encoded
        if trace is not None:
            trace.alignment = aligned
        logger.debug("stage: assemble")
        return Reconstruction(
            images=frames.rgb,
            masks=out_masks.cpu().numpy(),
            dynamic_maps=seg.refined.cpu().numpy().astype(np.float32),
            attention={k: v.cpu().numpy().astype(np.float32) for k, v in seg.fused.as_dict().items()},
            cam2world=aligned.cam2world.detach().cpu().double().numpy(),
            intrinsics=aligned.intrinsics.detach().cpu().double().numpy(),
            depths=aligned.depths.detach().cpu().float().numpy(),
            points=aligned.points.detach().cpu().float().numpy(),
            confidence=aligned.confidence.detach().cpu().float().numpy(),
            frame_names=list(frames.names),
            original_sizes=list(frames.original_sizes),
            image_size=cfg.image_size,
            crop=frames.crop,
            metric=bool(self.backbone.metric),
            fps=frames.fps,
            cluster_labels=labels.numpy(),
            threshold=float(seg.threshold.threshold),
            conf_threshold=cfg.export_conf_thr,
            backbone=str(self.backbone_name),
        )
