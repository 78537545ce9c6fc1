"""Plain references of the package's streaming / vectorised computations (private: for tests and benchmarks).

Each function here is the straightforward form of a fast implementation elsewhere in :mod:`easi3r`, written to
follow the official code step by step and to keep everything in memory; the tests compare the fast form against
it. Nothing in the pipeline calls this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ._checks import check_shape
from .attention import AttentionStats, _as_edges, _check_counts, fix_corner_token
from .errors import Easi3RInputError

__all__ = ["aggregate_attention"]


def aggregate_attention(
    edges: Tensor | np.ndarray | Sequence[Sequence[int]],
    cross_attn_1: Tensor | Sequence[Tensor],
    cross_attn_2: Tensor | Sequence[Tensor],
    num_frames: int,
) -> AttentionStats:
    """Reference of :class:`easi3r.attention.AttentionAccumulator`: stack every group, ``mean`` / ``std(unbiased)``.

    Follows the official Easi3R ``dust3r/cloud_opt/base_opt.py`` ``BasePCOptimizer.aggregate_attention_maps``
    step by step (corner fix on the stacked group, then mean and std over the pair axis; Eq. 5-8 before the
    channel fusion) and computes in the maps' dtype. Keeps every map in memory.

    Args:
        edges: ``(P, 2)`` integer ``(i, j)`` per pair (frame of view 1, frame of view 2).
        cross_attn_1: ``(P, h, w, C)`` (or a list of ``(h, w, C)``) maps on frame ``j``'s grid (src role of ``j``).
        cross_attn_2: ``(P, h, w, C)`` (or a list of ``(h, w, C)``) maps on frame ``i``'s grid (ref role of ``i``).
        num_frames: ``T``.

    Returns:
        :class:`~easi3r.attention.AttentionStats` (float32; a single-pair group gets std 0 with a warning).

    Raises:
        Easi3RInputError: maps of different or wrong shapes, bad edges, or a frame with no pair in a role.
    """
    m1 = cross_attn_1 if isinstance(cross_attn_1, Tensor) else torch.stack(list(cross_attn_1))
    m2 = cross_attn_2 if isinstance(cross_attn_2, Tensor) else torch.stack(list(cross_attn_2))
    dims = check_shape(m1, "P h w C", "cross_attn_1")
    e = _as_edges(edges, int(num_frames), torch.device("cpu"))
    check_shape(m2, "P h w C", "cross_attn_2", dims=dims)
    if e.shape[0] != dims["P"]:
        raise Easi3RInputError(f"edges has {e.shape[0]} pairs but the maps have {dims['P']}")
    out: dict[str, list[Tensor]] = {"src_mean": [], "src_std": [], "ref_mean": [], "ref_std": []}
    counts = torch.zeros(2, int(num_frames), dtype=torch.long)
    for r, (role, maps, col) in enumerate((("src", m1, 1), ("ref", m2, 0))):
        for t in range(int(num_frames)):
            idx = torch.nonzero(e[:, col] == t).flatten().to(maps.device)
            counts[r, t] = idx.numel()
            group = maps[idx]  # (P_t, h, w, C)
            if idx.numel() == 0:
                out[f"{role}_mean"].append(torch.zeros_like(maps[0]))
                out[f"{role}_std"].append(torch.zeros_like(maps[0]))
                continue
            group = fix_corner_token(group)
            out[f"{role}_mean"].append(group.mean(0))
            std = group.std(0) if idx.numel() > 1 else torch.zeros_like(group[0])
            out[f"{role}_std"].append(std)
    _check_counts(counts)
    return AttentionStats(**{k: torch.stack(v).float() for k, v in out.items()}, counts=counts)
