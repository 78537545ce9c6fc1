"""Plain per-edge references of the vectorised alignment loss (private: what tests and benchmarks compare against).

:func:`~easi3r.align.model.alignment_residual_sum` streams all edges at once over pixel blocks and forms its
gradient during the forward pass; the functions here are the same sums written the straightforward way, one edge
at a time with autograd (the official non-batch ``PointCloudOptimizer.forward`` form, official
``dust3r/cloud_opt/optimizer.py``). They keep every per-edge intermediate in the graph: use them on small inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from .model import PointmapAligner

__all__ = ["alignment_loss_loop", "residual_sum_loop"]


def residual_sum_loop(world: Tensor, transforms: Tensor, pred: Tensor, weight: Tensor, index: Tensor) -> Tensor:
    """``sum_e sum_p weight[e,p] * || world[index[e], p] - (A_e pred[e,p] + b_e) ||``, one edge at a time.

    Args:
        world: ``(T, N, 3)`` points per frame. transforms: ``(P, 4, 4)`` (``A_e = [:3, :3]``, ``b_e = [:3, 3]``).
        pred: ``(P, N, 3)`` per-edge points. weight: ``(P, N)``. index: ``(P,)`` frame of each edge.

    Returns:
        ``()`` tensor, differentiable by autograd w.r.t. every input.
    """
    total = world.new_zeros(())
    for e in range(pred.shape[0]):
        moved = pred[e] @ transforms[e, :3, :3].T + transforms[e, :3, 3]
        total = total + ((world[index[e]] - moved).norm(dim=-1) * weight[e]).sum()
    return total


def alignment_loss_loop(aligner: PointmapAligner, log_conf_1: Tensor, log_conf_2: Tensor) -> Tensor:
    """``l_1 + l_2`` of :meth:`PointmapAligner.alignment_loss <easi3r.align.PointmapAligner.alignment_loss>`, per
    edge with autograd (the reference's non-batch form) on the aligner's current state.

    Args:
        aligner: the aligner (its buffers ``pred_1, pred_2`` and parameters are used).
        log_conf_1, log_conf_2: ``(P, H*W)`` log of the view-1 / view-2 confidences (precomputed: the official code
            stores ``log(conf)``).

    Returns:
        ``()`` tensor.
    """
    world = aligner.get_pts3d().reshape(aligner.n_frames, -1, 3)
    pw = aligner.get_pw_poses()
    edges = aligner.edges
    total = residual_sum_loop(world, pw, aligner.pred_1, log_conf_1, edges[:, 0]) + residual_sum_loop(
        world, pw, aligner.pred_2, log_conf_2, edges[:, 1]
    )
    return total / float(aligner.n_edges * aligner.pred_1.shape[1])
