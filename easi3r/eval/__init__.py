"""Evaluation toolkit: DAVIS mask scores (J/F, JM/JR), trajectory errors (ATE/RTE/RRE), 4D point metrics.

The protocols reproduce the official Easi3R evaluation scripts (see each module's docstring).
"""

from __future__ import annotations

from .davis import DavisScores, boundary_map, db_statistics, evaluate_davis, f_measure
from .masks import (
    DAVIS16,
    DAVIS17,
    MaskScores,
    SequenceScore,
    evaluate_masks,
    iou,
    jm_jr,
    read_davis_gt,
    read_pred_masks,
    subset_sequences,
)
from .points import accuracy_completeness, distance, dycheck_point_metrics, point_metrics, unproject_depth
from .poses import PoseMetrics, align_trajectory, pose_metrics, umeyama_sim3

__all__ = [
    "DAVIS16",
    "DAVIS17",
    "DavisScores",
    "MaskScores",
    "PoseMetrics",
    "SequenceScore",
    "accuracy_completeness",
    "align_trajectory",
    "boundary_map",
    "db_statistics",
    "distance",
    "dycheck_point_metrics",
    "evaluate_davis",
    "evaluate_masks",
    "f_measure",
    "iou",
    "jm_jr",
    "point_metrics",
    "pose_metrics",
    "read_davis_gt",
    "read_pred_masks",
    "subset_sequences",
    "umeyama_sim3",
    "unproject_depth",
]
