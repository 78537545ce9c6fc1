"""Global alignment of pairwise pointmaps (DUSt3R / MonST3R / Easi3R ``PointCloudOptimizer``).

Entry points: :func:`global_align` (every pair at once, the official mode) and :func:`window_align` (MonST3R's
window-wise mode: overlapping windows aligned one at a time, stitched by Sim(3)). Building blocks:
:class:`PointmapAligner` (state, loss, accessors),
:func:`mst_initialisation` (spanning-tree init), flow providers (:func:`make_flow_provider`: :class:`DISFlow`,
:class:`RAFTFlow`) and the flow term.
"""

from __future__ import annotations

from .flow import (
    FLOW_MODELS,
    DISFlow,
    FlowModel,
    FlowProvider,
    RAFTFlow,
    compute_edge_flows,
    induced_flow,
    make_flow_provider,
    masked_smooth_l1,
)
from .geometry import align_poses_sim3, estimate_focal, signed_expm1, signed_log1p
from .model import KnownMode, PointmapAligner, alignment_residual_sum, relative_pose_loss
from .mst import MSTEdge, MSTInit, edge_scores, image_confidence, mst_initialisation, ransac_pnp
from .optimize import Alignment, global_align, learning_rate, run_optimisation
from .window import InMemoryPointmaps, PointmapSource, plan_windows, window_align, window_edge_indices

__all__ = [
    "FLOW_MODELS",
    "Alignment",
    "DISFlow",
    "InMemoryPointmaps",
    "PointmapSource",
    "FlowModel",
    "FlowProvider",
    "KnownMode",
    "RAFTFlow",
    "MSTEdge",
    "MSTInit",
    "PointmapAligner",
    "align_poses_sim3",
    "alignment_residual_sum",
    "compute_edge_flows",
    "edge_scores",
    "estimate_focal",
    "global_align",
    "image_confidence",
    "induced_flow",
    "learning_rate",
    "make_flow_provider",
    "masked_smooth_l1",
    "mst_initialisation",
    "plan_windows",
    "ransac_pnp",
    "relative_pose_loss",
    "run_optimisation",
    "signed_expm1",
    "signed_log1p",
    "window_align",
    "window_edge_indices",
]
