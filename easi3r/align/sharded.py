"""Global alignment data-parallel over pairs: each process holds only its own pairs' pointmaps.

With ``N`` processes (:class:`~easi3r.distributed.DistContext`), rank ``r`` holds the pointmaps of its share of the
edges; every rank holds all per-frame parameters (depths, poses, focals) and the pairwise similarities of its own
edges only. The loss of :func:`~easi3r.align.optimize.global_align` is a sum over edges (divided by the total pixel
count ``P H W``), so

* **loss and gradients**: each rank evaluates its edges' terms with the global normaliser; the gradients of the
  per-frame parameters are all-reduced (summed) after every backward pass, so every rank takes the same Adam
  step; the pairwise parameters are local and need no communication. The pairwise-scale normalisation (official
  ``get_pw_norm_scale_factor``: geometric mean of all edges' scales) is a differentiable all-reduce of the sum of
  the log-scales; the flow term's masked mean is all-reduced as numerator and denominator; the temporal
  smoothness term (per frame) is counted on rank 0 only.
* **MST initialisation**: the edge scores (one float per edge) and the per-frame confidence ``im_conf``
  (elementwise max) are all-reduced; every rank computes the same maximum spanning tree, then the pointmaps of
  the few edges the initialisation reads (the tree's pairs in both directions, and each frame's best-scoring edge
  as view 1 for its focal) — ``O(T)`` pairs, not ``O(P)`` — are exchanged, and every rank runs the same
  :func:`~easi3r.align.mst.mst_initialisation` on them. The per-edge similarities are initialised by each owner.

The result equals one process's up to floating-point summation order (the same tree, the same steps).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from ..config import AlignConfig
from ..distributed import DistContext, all_gather_objects
from ..errors import Easi3RInputError
from .flow import FlowProvider, induced_flow, masked_smooth_l1_parts
from .geometry import intrinsics_inverse
from .model import KnownMode, PointmapAligner
from .mst import MSTInit, edge_scores, image_confidence, mst_initialisation
from .optimize import Alignment, attach_flow, learning_rate

__all__ = ["sharded_global_align"]

Pointmaps = tuple[Tensor, Tensor, Tensor, Tensor]


def _all_reduce(ctx: DistContext, x: Tensor, op: Any = dist.ReduceOp.SUM) -> Tensor:
    """All-reduce (no autograd) through the backend's device (NCCL needs CUDA tensors); returns ``x`` updated."""
    staged = x.to(ctx.device)
    dist.all_reduce(staged, op=op)
    x.copy_(staged)
    return x


class _AllReduceSum(torch.autograd.Function):
    """``y = sum_r x_r`` on every rank; the gradient of each ``x_r`` is ``sum_r dL_r / dy`` (the total loss being
    the sum of the ranks' losses), i.e. the backward pass is an all-reduce too."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: DistContext) -> Tensor:
        ctx.group = group
        return _all_reduce(group, x.detach().clone())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _all_reduce(ctx.group, grad.detach().clone()), None


def _sum_with_grad(ctx: DistContext, x: Tensor) -> Tensor:
    """Differentiable all-reduce sum (:class:`_AllReduceSum`)."""
    out: Tensor = _AllReduceSum.apply(x, ctx)  # type: ignore[no-untyped-call]  # autograd.Function.apply is untyped
    return out


class _ShardedAligner(PointmapAligner):
    """A :class:`PointmapAligner` over this rank's edges, whose loss terms are this rank's share of the global
    loss (see the module docstring). Built by :func:`sharded_global_align` only."""

    def __init__(self, ctx: DistContext, n_edges_total: int, im_conf: Tensor, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, _require_every_frame=False, **kwargs)
        self.ctx = ctx
        self.n_edges_total = n_edges_total
        self.im_conf = im_conf.to(self.im_conf)
        self._counts_global_terms = ctx.is_main

    def get_pw_norm_scale_factor(self) -> Tensor:
        if not self.normalise_pw_scale:
            return self.pw_params.new_ones(())
        mean_log = _sum_with_grad(self.ctx, self.pw_params[:, -1].sum()) / self.n_edges_total
        factor: Tensor = (math.log(self.scale_anchor) - mean_log).exp()
        return factor

    def alignment_loss(self) -> tuple[Tensor, Tensor]:
        l_1, l_2 = super().alignment_loss()  # divided by this rank's P_r H W
        share = self.n_edges / self.n_edges_total
        return l_1 * share, l_2 * share

    def flow_loss(self) -> Tensor:
        """The flow term over every process's pairs: the masked means' numerators and denominators are summed
        across processes (the same value on every rank)."""
        if self.flow_12 is None or self.flow_21 is None or self.static_1 is None or self.static_2 is None:
            raise Easi3RInputError("set_flow() must be called before the flow term")
        pose, K, depth = self.get_cam2world(), self.get_intrinsics(), self.get_depthmaps()
        K_inv = intrinsics_inverse(K)
        e1, e2 = self.edges[:, 0], self.edges[:, 1]
        thr = self.config.flow_pixel_threshold
        total = pose.new_zeros(())
        for ego, obs, static in (
            (induced_flow(depth[e1], pose[e1], pose[e2], K_inv[e1], K[e2]), self.flow_12, self.static_1),
            (induced_flow(depth[e2], pose[e2], pose[e1], K_inv[e2], K[e1]), self.flow_21, self.static_2),
        ):
            part, count = masked_smooth_l1_parts(ego, obs, static, thr)
            numerator = _sum_with_grad(self.ctx, part)
            denominator = _all_reduce(self.ctx, count.detach().clone())
            total = total + numerator / (denominator + 1e-6)
        return total


def _needed_edges(edges: Tensor, scores: Tensor, n_frames: int) -> list[int]:
    """Edges the MST initialisation reads: the maximum spanning tree's pairs (both directions) and, for each
    frame, its best-scoring edge as view 1 (the focal fallback)."""
    from scipy.sparse.csgraph import minimum_spanning_tree

    from .mst import _sparse_graph

    pairs = [(int(i), int(j)) for i, j in edges.tolist()]
    graph = _sparse_graph(pairs, scores.tolist(), n_frames)
    tree = minimum_spanning_tree(graph).tocoo()
    index = {e: k for k, e in enumerate(pairs)}
    need: set[int] = set()
    for i, j in zip(tree.row.tolist(), tree.col.tolist()):
        need.update(index[e] for e in ((i, j), (j, i)) if e in index)
    best: dict[int, tuple[float, int]] = {}
    for k, ((i, _), s) in enumerate(zip(pairs, scores.tolist())):
        if i not in best or s > best[i][0]:
            best[i] = (s, k)
    need.update(k for _, k in best.values())
    return sorted(need)


@torch.no_grad()
def _sharded_init(aligner: _ShardedAligner, edges_all: Tensor, rows: Tensor) -> MSTInit:
    """MST initialisation of a sharded aligner (module docstring): identical per-frame state on every rank."""
    ctx, cfg = aligner.ctx, aligner.config
    n, h, w = aligner.n_frames, aligner.height, aligner.width
    scores = torch.zeros(len(edges_all), dtype=torch.float64)
    scores[rows] = edge_scores(aligner.conf_1, aligner.conf_2).double().cpu()
    scores = _all_reduce(ctx, scores)
    need = _needed_edges(edges_all, scores, n)
    local = {int(r): k for k, r in enumerate(rows.tolist())}
    mine = {
        # clone: a pickled view would carry its whole storage (every pair of this rank) to every rank
        e: tuple(t[local[e]].cpu().clone() for t in (aligner.pred_1, aligner.pred_2, aligner.conf_1, aligner.conf_2))
        for e in need
        if e in local
    }
    shared: dict[int, tuple[Tensor, ...]] = {}
    for shard in all_gather_objects(ctx, mine):
        shared.update(shard)
    dev = aligner.grid.device
    stack = [torch.stack([shared[e][k] for e in need]).to(dev) for k in range(4)]
    mst = mst_initialisation(
        edges_all[need].to(dev),
        stack[0].reshape(len(need), h, w, 3),
        stack[1].reshape(len(need), h, w, 3),
        stack[2],
        stack[3],
        aligner.im_conf,
        min_conf_thr=cfg.min_conf_thr,
        pnp_iterations=cfg.pnp_iterations,
        pnp_reprojection_error=cfg.pnp_reprojection_error,
        known_focals=None if aligner.known_focal is None else aligner.known_focal.tolist(),
    )
    return aligner._init_from_mst(mst)


def sharded_global_align(
    ctx: DistContext,
    edges: Tensor,
    rows: Tensor,
    pts_1: Tensor,
    pts_2: Tensor,
    conf_1: Tensor,
    conf_2: Tensor,
    *,
    n_frames: int,
    config: AlignConfig | None = None,
    images: np.ndarray | Tensor | None = None,
    masks: Tensor | None = None,
    flow_provider: FlowProvider | None = None,
    metric: bool = False,
    known_focal: float | Tensor | None = None,
    known_poses: Tensor | None = None,
    known_mode: KnownMode = "pin",
    progress: bool = True,
) -> Alignment:
    """:func:`~easi3r.align.optimize.global_align` with the pairs divided among the processes of ``ctx``.

    Args:
        ctx: the process group (every rank calls this function).
        edges: ``(P, 2)`` all edges of the video (every rank passes the same).
        rows: ``(P_r,)`` int64 indices into ``edges`` of this rank's pairs.
        pts_1, pts_2: ``(P_r, H, W, 3)`` this rank's pairwise pointmaps; ``conf_1``, ``conf_2``: ``(P_r, H, W)``.
        n_frames, config, images, masks, flow_provider, metric, known_focal, known_poses, known_mode, progress: as
            :func:`~easi3r.align.optimize.global_align`
            (``images`` / ``masks`` of all frames).

    Returns:
        The same :class:`~easi3r.align.optimize.Alignment` on every rank (``pw_poses`` / ``pw_scale`` of all
        edges, gathered), equal to one process's up to floating-point summation order.
    """
    cfg = AlignConfig() if config is None else config
    if not ctx.distributed:
        raise Easi3RInputError("sharded_global_align needs a process group of several ranks")
    im_conf = image_confidence(edges[rows].to(conf_1.device), conf_1, conf_2, n_frames).cpu()
    im_conf = _all_reduce(ctx, im_conf, dist.ReduceOp.MAX)
    known = dict(known_focal=known_focal, known_poses=known_poses, known_mode=known_mode)
    own = (edges[rows], pts_1, pts_2, conf_1, conf_2)
    aligner = _ShardedAligner(ctx, len(edges), im_conf, *own, config=cfg, n_frames=n_frames, metric=metric, **known)
    attach_flow(aligner, images, masks, flow_provider)
    mst = _sharded_init(aligner, edges, rows)
    with torch.no_grad():
        init_loss = float(_all_reduce(ctx, aligner().detach().cpu().reshape(1))[0])
    shared = [p for p in (aligner.log_depth, aligner.pose_params, aligner.focal_params) if p.requires_grad]
    params = [p for p in aligner.parameters() if p.requires_grad]
    loss_value = float("nan")
    if params and cfg.iterations > 0:
        optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.9), eps=1e-8)
        bar = tqdm(range(cfg.iterations), desc="global alignment", disable=not progress, leave=False)
        for it in bar:
            lr = learning_rate(it, cfg.iterations, cfg.lr, cfg.lr_min, cfg.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad()
            loss = aligner(it)
            loss.backward()
            for p in shared:
                if p.grad is not None:
                    _all_reduce(ctx, p.grad)
            optimizer.step()
            loss_value = float(_all_reduce(ctx, loss.detach().cpu().reshape(1))[0])
            bar.set_postfix_str(f"lr={lr:.2e} loss={loss_value:.5g}")
    else:
        loss_value = init_loss
    with torch.no_grad():
        pw = all_gather_objects(ctx, (rows.cpu(), aligner.get_pw_poses().cpu(), aligner.get_pw_scale().cpu()))
        order = torch.argsort(torch.cat([r for r, _, _ in pw]))
        dev = aligner.grid.device
        poses = torch.cat([p for _, p, _ in pw])[order].to(dev)
        scales = torch.cat([s for _, _, s in pw])[order].to(dev)
        return Alignment.from_aligner(
            aligner, loss=loss_value, init_loss=init_loss, mst=mst, pw_poses=poses, pw_scale=scales
        )
