"""The Easi3R method end to end: frames -> pass 1 -> masks -> re-weighted pass 2 -> global alignment.

:class:`Easi3R` is a thin stateful shell (it holds the backbone and the configuration); every stage is also a
public method or function so a notebook can stop after any of them:

1. :func:`easi3r.load_frames` -> :class:`~easi3r.frames.Frames`;
2. :func:`easi3r.pairs.make_pairs` -> ``(P, 2)`` edges (reference order kept);
3. :meth:`Easi3R.encode`: the encoder runs **once per frame**; both passes reuse the tokens;
4. :func:`run_pass` (pass 1): decoders only (``heads=False``), the readout maps stream into an
   :class:`~easi3r.attention.AttentionAccumulator`; nothing per pair is kept;
5. :func:`segment` -> masks (fusion, Eq. 9, k-means fusion, multi-Otsu);
6. :func:`run_pass` (pass 2): the reference decoder re-weighted by the pass-1 masks, with heads; the pairwise
   pointmaps are kept for alignment and the pass-2 attention gives the final masks (as the official code does);
7. :func:`easi3r.align.global_align` -> cameras, intrinsics, depths; assembled into a
   :class:`~easi3r.result.Reconstruction`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .align import global_align
from .attention import AttentionAccumulator, FusedAttention, dynamic_map, fuse_attention
from .backbones import Backbone, EncodedImages, load_backbone
from .config import Easi3RConfig
from .device import resolve_device
from .errors import Easi3RInputError
from .frames import Frames, load_frames
from .pairs import make_pairs
from .result import Reconstruction
from .segment import MaskRefiner, ThresholdResult, apply_refiner, cluster_fuse, compute_masks

__all__ = [
    "Easi3R",
    "PairPointmaps",
    "PassOutput",
    "Segmentation",
    "Trace",
    "encode_frames",
    "run_pass",
    "segment",
]


@dataclass
class PairPointmaps:
    """Pass-2 network outputs kept for global alignment (the only per-pair state of the pipeline).

    Attributes:
        edges: ``(P, 2)`` int64 ``(view-1 frame, view-2 frame)``.
        pts_i: ``(P, H, W, 3)`` view-1 points in view-1's camera. pts_j: view-2 points in view-1's camera.
        conf_i, conf_j: ``(P, H, W)`` raw confidences (>= 1).
    """

    edges: Tensor
    pts_i: Tensor
    pts_j: Tensor
    conf_i: Tensor
    conf_j: Tensor


@dataclass
class PassOutput:
    """One pass over the pairs: streamed attention statistics, and the pointmaps when heads were run.

    ``pair_maps`` holds the per-pair readout ``(cross_attn_1, cross_attn_2)``, each ``(P, h, w, C)``, only when
    asked for (``keep_maps=True``): the pipeline itself never needs them.
    """

    attention: AttentionAccumulator
    pointmaps: PairPointmaps | None
    pair_maps: tuple[Tensor, Tensor] | None = None


@dataclass
class Segmentation:
    """Motion segmentation of one pass (all on CPU).

    Attributes:
        fused: the four channel-fused maps ``(T, h, w)`` (src/ref mean/std).
        dynamic_map: ``(T, h, w)`` Eq. 9, per-frame normalised.
        refined: ``(T, h, w)`` cluster-fused dynamic map (what the masks threshold).
        labels: ``(T, h, w)`` k-means labels.
        masks: ``(T, H, W)`` bool dynamic masks.
        threshold: the chosen threshold and how.
    """

    fused: FusedAttention
    dynamic_map: Tensor
    refined: Tensor
    labels: Tensor
    masks: Tensor
    threshold: ThresholdResult


def encode_frames(backbone: Backbone, images: Tensor, *, batch_size: int = 4, progress: bool = False) -> EncodedImages:
    """Encoder tokens of every frame, computed once and in batches (the encoder's activations, not its output,
    dominate its memory).

    Args:
        images: ``(T, 3, H, W)`` normalised frames (any device; moved to the backbone's).
    """
    parts = []
    with torch.inference_mode():
        for s in tqdm(
            range(0, len(images), batch_size), desc="encode", unit="batch", disable=not progress, leave=False
        ):
            parts.append(backbone.encode(images[s : s + batch_size].to(backbone.device)))
    return EncodedImages(
        torch.cat([p.tokens for p in parts]),
        torch.cat([p.positions for p in parts]),
        parts[0].image_size,
        parts[0].patch_size,
    )


def run_pass(
    backbone: Backbone,
    encoded: EncodedImages,
    edges: Tensor,
    *,
    masks: Tensor | None = None,
    heads: bool = False,
    batch_size: int = 4,
    keep_maps: bool = False,
    progress: bool = True,
    desc: str = "pass",
) -> PassOutput:
    """Run the decoders over every edge in batches, streaming the readout into per-frame statistics.

    Args:
        backbone: the network.
        encoded: encoder tokens of all ``T`` frames (:meth:`Backbone.encode`), on the backbone's device.
        edges: ``(P, 2)`` int64 edges.
        masks: ``(T, H, W)`` bool dynamic masks for the re-weighted pass (None: plain attention).
        heads: run the heads and keep the pointmaps (pass 2).
        batch_size: pairs per network call.
        keep_maps: also return the per-pair readout maps (inspection and tests; O(P) memory).

    Returns:
        :class:`PassOutput`; its accumulator lives on CPU in float64, its pointmaps on the backbone's device.
    """
    num_frames = len(encoded)
    acc = AttentionAccumulator(num_frames, encoded.grid, backbone.attention_channels)
    device = encoded.tokens.device
    pointmaps = None
    if heads:
        # Written in place batch by batch: concatenating lists at the end would hold every pointmap twice.
        n, (hh, ww) = len(edges), encoded.image_size
        pointmaps = PairPointmaps(
            edges,
            pts_i=torch.empty(n, hh, ww, 3, device=device),
            pts_j=torch.empty(n, hh, ww, 3, device=device),
            conf_i=torch.empty(n, hh, ww, device=device),
            conf_j=torch.empty(n, hh, ww, device=device),
        )
    maps: tuple[list[Tensor], list[Tensor]] = ([], [])
    dev_masks = masks.to(device) if masks is not None else None
    bar = tqdm(total=len(edges), desc=desc, unit="pair", disable=not progress, leave=False)
    with torch.inference_mode():
        for start in range(0, len(edges), batch_size):
            e = edges[start : start + batch_size]
            i, j = e[:, 0].to(device), e[:, 1].to(device)
            pred = backbone.forward_pair(
                encoded[i],
                encoded[j],
                dynamic_mask1=dev_masks[i] if dev_masks is not None else None,
                dynamic_mask2=dev_masks[j] if dev_masks is not None else None,
                heads=heads,
            )
            acc.add(e, pred.cross_attn_1, pred.cross_attn_2)
            if keep_maps:
                maps[0].append(pred.cross_attn_1.cpu())
                maps[1].append(pred.cross_attn_2.cpu())
            if pointmaps is not None:
                rows = slice(start, start + len(e))
                pointmaps.pts_i[rows] = pred.pts3d_1
                pointmaps.pts_j[rows] = pred.pts3d_2
                pointmaps.conf_i[rows] = pred.conf_1
                pointmaps.conf_j[rows] = pred.conf_2
            bar.update(len(e))
    bar.close()
    pair_maps = (torch.cat(maps[0]), torch.cat(maps[1])) if keep_maps else None
    return PassOutput(acc, pointmaps, pair_maps)


def segment(
    attention: AttentionAccumulator,
    features: Tensor,
    image_size: tuple[int, int],
    *,
    clusters: int = 64,
    seed: int = 42,
    threshold: str | float = "multiotsu",
    progress: bool = False,
    desc: str = "segment",
) -> Segmentation:
    """Attention statistics -> fused maps -> dynamic map -> cluster fusion -> thresholded masks.

    Args:
        attention: the accumulator of a pass.
        features: ``(T, h, w, C)`` encoder features (k-means input).
        image_size: ``(H, W)`` of the masks.
        clusters, seed, threshold: see :class:`~easi3r.config.Easi3RConfig`.
        progress: a three-step bar (fusion, k-means, threshold).
    """
    with tqdm(total=3, desc=desc, unit="step", disable=not progress, leave=False) as bar:
        bar.set_postfix_str("fusing attention")
        fused = fuse_attention(attention.stats())
        dyn = dynamic_map(fused)
        bar.update()
        bar.set_postfix_str(f"k-means ({clusters} clusters)")
        refined, labels = cluster_fuse(dyn, features.float().cpu(), n_clusters=clusters, random_state=seed)
        bar.update()
        bar.set_postfix_str("threshold")
        masks, chosen = compute_masks(refined, image_size, threshold)
        bar.update()
    return Segmentation(fused, dyn, refined, labels, masks, chosen)


@dataclass
class Trace:
    """Intermediates of one :meth:`Easi3R.run`, filled in when passed as ``run(..., trace=Trace())``.

    Attributes:
        keep_pair_maps: also keep every pair's readout maps in ``pass1`` / ``pass2`` (memory O(pairs)).
        frames, edges, features: the inputs of the stages (``features``: ``(T, h, w, C)`` encoder tokens).
        pass1, pass2: :class:`PassOutput` of both passes (``pass2`` is None when re-weighting is off).
        segmentation1, segmentation2: masks and maps of each pass (``segmentation2`` gives the final masks).
        alignment: the :class:`~easi3r.align.Alignment`.
    """

    keep_pair_maps: bool = False
    frames: Frames | None = None
    edges: Tensor | None = None
    features: Tensor | None = None
    pass1: PassOutput | None = None
    pass2: PassOutput | None = None
    segmentation1: Segmentation | None = None
    segmentation2: Segmentation | None = None
    alignment: Any = None


class Easi3R:
    """Training-free dynamic masks, cameras and 4D points from a video (Easi3R, ICCV 2025).

    Args:
        backbone: registry name (``"dust3r"``, ``"monst3r"``, ...), hub repo id, checkpoint path or a
            :class:`~easi3r.backbones.Backbone`.
        device: ``None`` picks CUDA when available (overrides ``config.device``).
        config: an :class:`~easi3r.config.Easi3RConfig` (default: the official demo's settings).
        mask_refiner: optional callable ``(images (T,H,W,3) uint8, masks (T,H,W) bool) -> masks`` applied to the
            attention masks of both passes (e.g. SAM2 propagation).
        flow_provider: optical flow for the alignment's flow term (default: OpenCV DIS).
        **overrides: :class:`Easi3RConfig` fields by name (alignment fields may be given flat, e.g.
            ``iterations=100``). Unknown names raise :class:`TypeError`.

    Example:
        >>> rec = Easi3R("monst3r").run("video.mp4")  # doctest: +SKIP
        >>> rec.save("out/")  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: str | Backbone = "dust3r",
        device: str | torch.device | None = None,
        config: Easi3RConfig | None = None,
        *,
        mask_refiner: MaskRefiner | None = None,
        flow_provider: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        **overrides: Any,
    ) -> None:
        cfg = (config or Easi3RConfig()).with_overrides(**overrides)
        self.device = resolve_device(device if device is not None else cfg.device)
        self.config = dataclasses.replace(cfg, device=str(self.device))
        self.backbone = load_backbone(backbone, self.device)
        self.backbone_name = backbone if isinstance(backbone, str) else type(backbone).__name__
        self.mask_refiner = mask_refiner
        self.flow_provider = flow_provider

    # -- stages --------------------------------------------------------------------------------------------------
    def load(self, frames: Any) -> Frames:
        """Frames from any source :func:`easi3r.load_frames` accepts, with this config's size/fps/max_frames."""
        cfg = self.config
        loaded = load_frames(frames, cfg.image_size, fps=cfg.fps, max_frames=cfg.max_frames)
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
        return encode_frames(self.backbone, frames.images, batch_size=self.config.pair_batch_size, progress=progress)

    def segment(
        self,
        output: PassOutput,
        encoded: EncodedImages,
        frames: Frames,
        *,
        progress: bool = False,
        desc: str = "segment",
    ) -> Segmentation:
        """Masks from a pass's attention statistics (and the optional refiner)."""
        cfg = self.config
        h, w = encoded.grid
        features = encoded.tokens.reshape(len(encoded), h, w, -1)
        seg = segment(
            output.attention,
            features,
            frames.size,
            clusters=cfg.clusters,
            seed=cfg.cluster_seed,
            threshold=cfg.threshold,
            progress=progress,
            desc=desc,
        )
        if self.mask_refiner is not None:
            seg.masks = apply_refiner(self.mask_refiner, frames.uint8, seg.masks)
        return seg

    # -- the whole method ---------------------------------------------------------------------------------------
    def run(self, frames: Any, *, progress: bool = True, trace: Trace | None = None) -> Reconstruction:
        """Run Easi3R on ``frames`` (folder, video, list of paths/arrays/PIL images, ``(T,H,W,3)`` array, Frames).

        Args:
            frames: the video.
            progress: tqdm bars for every stage.
            trace: a :class:`Trace` to fill with the intermediates (attention statistics, masks of both passes,
                pointmaps, alignment state).

        Returns:
            A :class:`~easi3r.result.Reconstruction` (masks, attention maps, cameras, depths, points).
        """
        cfg = self.config
        trace = trace if trace is not None else Trace()
        frames = self.load(frames)
        edges = self.pairs(len(frames))
        encoded = self.encode(frames, progress=progress)
        batch, keep = cfg.pair_batch_size, trace.keep_pair_maps
        trace.frames, trace.edges = frames, edges
        trace.features = encoded.tokens.reshape(len(encoded), *encoded.grid, -1).cpu()

        first = run_pass(
            self.backbone,
            encoded,
            edges,
            heads=not cfg.reweight,
            batch_size=batch,
            keep_maps=keep,
            progress=progress,
            desc="pass 1 (attention)",
        )
        seg = self.segment(first, encoded, frames, progress=progress, desc="masks (pass 1)")
        trace.pass1, trace.segmentation1 = first, seg
        if cfg.reweight:
            second = run_pass(
                self.backbone,
                encoded,
                edges,
                masks=seg.masks,
                heads=True,
                batch_size=batch,
                keep_maps=keep,
                progress=progress,
                desc="pass 2 (re-weighted)",
            )
            # The official pipeline recomputes the masks from the re-weighted pass: those are the outputs.
            seg = self.segment(second, encoded, frames, progress=progress, desc="masks (pass 2)")
            trace.pass2, trace.segmentation2 = second, seg
            pointmaps = second.pointmaps
        else:
            pointmaps = first.pointmaps
        del encoded

        assert pointmaps is not None
        aligned = global_align(
            pointmaps.edges.to(self.device),
            pointmaps.pts_i,
            pointmaps.pts_j,
            pointmaps.conf_i,
            pointmaps.conf_j,
            config=cfg.align_config(),
            images=frames.uint8,
            masks=seg.masks.to(self.device),
            flow_provider=self.flow_provider,
            progress=progress,
        )
        trace.alignment = aligned
        return Reconstruction(
            images=frames.uint8,
            masks=seg.masks.cpu().numpy(),
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
            fps=frames.fps,
            cluster_labels=seg.labels.cpu().numpy(),
            threshold=float(seg.threshold.threshold),
            conf_threshold=cfg.export_conf_thr,
            backbone=str(self.backbone_name),
        )
