"""Per-frame aggregation of cross-attention maps, channel fusion and the dynamic map (Eq. 9).

The backbone gives, for every pair (edge) ``(i, j)`` (view 1 = frame ``i``, view 2 = frame ``j``), two
query-averaged cross-attention logit maps of shape ``(h, w, C)`` (``C`` = decoder layers x heads):

* ``cross_attn_1``: reference-decoder map, indexed by view-2 key tokens, so it lives on frame ``j``'s grid.
  Collected over all edges ``(., t)`` it forms the **src** group of frame ``t`` (official ``cross_att_k_i``).
* ``cross_attn_2``: source-decoder map, indexed by view-1 key tokens, so it lives on frame ``i``'s grid.
  Collected over all edges ``(t, .)`` it forms the **ref** group of frame ``t`` (official ``cross_att_k_j``).

Per group the mean and the unbiased standard deviation over the pairs are taken (after the corner-token fix),
each of the four ``(T, h, w, C)`` statistics is fused over channels (global min-max, channel mean, global
min-max) and the dynamic map is ``(1 - A_src_mu) * A_src_sigma * A_ref_mu * (1 - A_ref_sigma)`` normalised per
frame (pipeline.md §3-§4).

:class:`AttentionAccumulator` streams pair batches into per-frame statistics without keeping anything per
pair; :func:`aggregate_attention` is the plain reference it is tested against.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import Easi3RInputError

__all__ = [
    "ROLES",
    "AttentionAccumulator",
    "AttentionStats",
    "ChannelFusion",
    "FusedAttention",
    "aggregate_attention",
    "channel_fusion",
    "dynamic_map",
    "fix_corner_token",
    "fuse_attention",
    "fuse_channels",
    "minmax_normalize",
]

#: Role names in the order of the first axis of :attr:`AttentionStats.counts`.
ROLES = ("src", "ref")

_EPS = 1e-6  # the official min-max denominators all add this constant


@dataclass(frozen=True)
class AttentionStats:
    """Per-frame statistics of the cross-attention maps over the pairs of each role.

    Attributes:
        src_mean, src_std: ``(T, h, w, C)`` float32, mean / unbiased std of the ``cross_attn_1`` maps of all
            edges whose view 2 is the frame (frame as source).
        ref_mean, ref_std: ``(T, h, w, C)`` float32, the same for the ``cross_attn_2`` maps of all edges whose
            view 1 is the frame (frame as reference).
        counts: ``(2, T)`` int64, number of pairs per role (row 0 = src, row 1 = ref) and frame.
    """

    src_mean: Tensor
    src_std: Tensor
    ref_mean: Tensor
    ref_std: Tensor
    counts: Tensor


@dataclass(frozen=True)
class FusedAttention:
    """The four channel-fused maps of Eq. 5-8, each ``(T, h, w)`` float32 in ``[0, 1)``.

    ``src_mean`` = official ``cross_att_k_i_mean_fused``, ``src_std`` = ``cross_att_k_i_var_fused``,
    ``ref_mean`` = ``cross_att_k_j_mean_fused``, ``ref_std`` = ``cross_att_k_j_var_fused``.
    """

    src_mean: Tensor
    src_std: Tensor
    ref_mean: Tensor
    ref_std: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        """The maps by name (``src_mean, src_std, ref_mean, ref_std``)."""
        return {
            "src_mean": self.src_mean,
            "src_std": self.src_std,
            "ref_mean": self.ref_mean,
            "ref_std": self.ref_std,
        }


@dataclass(frozen=True)
class ChannelFusion:
    """Intermediate values of :func:`fuse_channels` (the official fixture stores all three).

    Attributes:
        raw_minmax: ``(2,)`` global ``[min, max]`` of the un-normalised input ``(T, h, w, C)``.
        channel_mean: ``(T, h, w)`` mean over the ``C`` channels of the un-normalised input.
        fused: ``(T, h, w)`` the fused map (what :func:`fuse_channels` returns).
    """

    raw_minmax: Tensor
    channel_mean: Tensor
    fused: Tensor


def fix_corner_token(maps: Tensor) -> Tensor:
    """Replace the top-left token by the mean of its right and lower neighbours.

    The official pipeline does this before aggregating because token (0, 0) carries an outlier response.

    Args:
        maps: ``(..., h, w, C)`` with ``h, w >= 2``.

    Returns:
        A new tensor of the same shape and dtype; the input is not modified.
    """
    if maps.ndim < 3 or maps.shape[-3] < 2 or maps.shape[-2] < 2:
        raise Easi3RInputError(f"attention maps must be (..., h, w, C) with h, w >= 2, got {tuple(maps.shape)}")
    out = maps.clone()
    out[..., 0, 0, :] = (maps[..., 0, 1, :] + maps[..., 1, 0, :]) / 2
    return out


def _as_edges(edges: Tensor | np.ndarray | Sequence[Sequence[int]], num_frames: int, device: torch.device) -> Tensor:
    e = torch.as_tensor(np.asarray(edges) if not isinstance(edges, Tensor) else edges)
    if e.ndim != 2 or e.shape[1] != 2:
        raise Easi3RInputError(f"edges must be (B, 2) frame indices, got shape {tuple(e.shape)}")
    if e.dtype.is_floating_point or e.dtype == torch.bool:
        raise Easi3RInputError(f"edges must hold integer frame indices, got dtype {e.dtype}")
    e = e.to(device=device, dtype=torch.long)
    if e.numel() and (int(e.min()) < 0 or int(e.max()) >= num_frames):
        raise Easi3RInputError(
            f"edges must index frames in [0, {num_frames}), got range [{int(e.min())}, {int(e.max())}]"
        )
    return e


def _check_maps(name: str, maps: Tensor, batch: int, grid: tuple[int, int], channels: int) -> None:
    if not isinstance(maps, Tensor):
        raise Easi3RInputError(f"{name} must be a torch.Tensor, got {type(maps).__name__}")
    expected = (batch, *grid, channels)
    if tuple(maps.shape) != expected:
        raise Easi3RInputError(f"{name} must have shape (B, h, w, C) = {expected}, got {tuple(maps.shape)}")
    if not maps.dtype.is_floating_point:
        raise Easi3RInputError(f"{name} must be a floating-point tensor, got {maps.dtype}")


def _finish_std(m2: Tensor, counts: Tensor) -> Tensor:
    """Unbiased std from per-frame sums of squared deviations ``m2 (T, ...)`` and ``counts (T,)``."""
    denom = (counts - 1).clamp(min=1).to(m2.dtype)
    var = m2 / denom.view(-1, *([1] * (m2.ndim - 1)))
    # A single pair has no spread; the official code yields NaN here, which would poison every global
    # min-max downstream, so it is reported as 0 instead.
    var = torch.where((counts <= 1).view(-1, *([1] * (m2.ndim - 1))), torch.zeros_like(var), var)
    return var.clamp(min=0).sqrt()


def _check_counts(counts: Tensor) -> None:
    for r, role in enumerate(ROLES):
        missing = torch.nonzero(counts[r] == 0).flatten().tolist()
        if missing:
            raise Easi3RInputError(
                f"frame {missing[0]} has no pair in the {role!r} role "
                f"(every frame must appear as view {2 if role == 'src' else 1} of at least one edge)"
            )
        single = torch.nonzero(counts[r] == 1).flatten().tolist()
        if single:
            warnings.warn(
                f"frame(s) {single} have a single pair in the {role!r} role: their attention std is set to 0 "
                "(the official code gives NaN)",
                stacklevel=3,
            )


class AttentionAccumulator:
    """Streaming per-frame, per-role mean and unbiased std of cross-attention maps.

    Statistics are kept as counts, running means and sums of squared deviations (Chan et al.'s parallel
    update of Welford's algorithm), in float64 by default: a batch is reduced to its own per-frame mean and
    deviation sum with ``index_add_`` and combined with the running state. This is exact to rounding,
    independent of the order and batching of the pairs, and stable where the spread across pairs is tiny
    compared with the values (plain sums of squares cancel catastrophically there). Two accumulators fed
    with disjoint pair sets combine with :meth:`merge` / ``+=`` into the accumulator of the union (so pairs
    can be sharded across processes; gather the states and merge them).

    Memory is ``O(T * h * w * C)`` whatever the number of pairs: nothing per pair is kept.

    Args:
        num_frames: number of frames ``T``.
        grid: token grid ``(h, w)``.
        channels: number of channels ``C`` (decoder layers x heads, 144 for DUSt3R).
        device: where the state lives (default CPU); incoming maps are moved there.
        dtype: accumulation dtype (float64 default; float32 halves memory at ~1e-7 relative cost).

    Example:
        >>> acc = AttentionAccumulator(6, (24, 32), 144)
        >>> acc.add(edges, pred.cross_attn_1, pred.cross_attn_2)  # doctest: +SKIP
        >>> fused = fuse_attention(acc.stats())  # doctest: +SKIP
    """

    def __init__(
        self,
        num_frames: int,
        grid: tuple[int, int],
        channels: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if int(num_frames) < 1:
            raise Easi3RInputError(f"num_frames must be >= 1, got {num_frames}")
        if len(grid) != 2 or min(grid) < 2:
            raise Easi3RInputError(f"grid must be (h, w) with h, w >= 2, got {tuple(grid)}")
        if int(channels) < 1:
            raise Easi3RInputError(f"channels must be >= 1, got {channels}")
        if not dtype.is_floating_point:
            raise Easi3RInputError(f"dtype must be a floating-point dtype, got {dtype}")
        self.num_frames = int(num_frames)
        self.grid = (int(grid[0]), int(grid[1]))
        self.channels = int(channels)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        shape = (len(ROLES), self.num_frames, *self.grid, self.channels)
        self._mean = torch.zeros(shape, device=self.device, dtype=dtype)
        self._m2 = torch.zeros(shape, device=self.device, dtype=dtype)
        self._count = torch.zeros(len(ROLES), self.num_frames, device=self.device, dtype=torch.long)

    @property
    def counts(self) -> Tensor:
        """``(2, T)`` int64 pairs seen per role (row 0 = src, row 1 = ref) and frame (a copy)."""
        return self._count.clone()

    def _update(self, role: int, frames: Tensor, maps: Tensor) -> None:
        flat = fix_corner_token(maps.to(device=self.device, dtype=self.dtype)).flatten(1)  # (B, h*w*C)
        # Work on the frames present in this batch only, so a batch costs O(B), not O(T), per token.
        rows, local = torch.unique(frames, return_inverse=True)
        n_b = torch.zeros(len(rows), device=self.device, dtype=torch.long).index_add_(0, local, torch.ones_like(local))
        sum_b = flat.new_zeros(len(rows), flat.shape[1]).index_add_(0, local, flat)
        mean_b = sum_b / n_b.to(self.dtype).unsqueeze(1)
        dev = flat - mean_b[local]
        m2_b = torch.zeros_like(sum_b).index_add_(0, local, dev * dev)
        self._combine(role, rows, n_b, mean_b, m2_b)

    def _combine(self, role: int, rows: Tensor, n_b: Tensor, mean_b: Tensor, m2_b: Tensor) -> None:
        """Chan's pairwise merge of (count, mean, M2) into the given frame ``rows`` of one role."""
        mean_all = self._mean[role].view(self.num_frames, -1)
        m2_all = self._m2[role].view(self.num_frames, -1)
        mean_a, m2_a, n_a = mean_all[rows], m2_all[rows], self._count[role, rows]
        n = n_a + n_b
        na = n_a.to(self.dtype).unsqueeze(1)
        nb = n_b.to(self.dtype).unsqueeze(1)
        nn = n.to(self.dtype).clamp(min=1).unsqueeze(1)  # rows with n == 0 stay all-zero
        delta = mean_b - mean_a
        mean_all[rows] = mean_a + delta * (nb / nn)
        m2_all[rows] = m2_a + m2_b + delta * delta * (na * nb / nn)
        self._count[role, rows] = n

    def add(
        self,
        edges: Tensor | np.ndarray | Sequence[Sequence[int]],
        cross_attn_1: Tensor,
        cross_attn_2: Tensor,
    ) -> None:
        """Stream one batch of pairs into the statistics.

        Args:
            edges: ``(B, 2)`` integer ``(view-1 frame i, view-2 frame j)`` per pair.
            cross_attn_1: ``(B, h, w, C)`` reference-decoder maps on frame ``j``'s grid (src role of ``j``).
            cross_attn_2: ``(B, h, w, C)`` source-decoder maps on frame ``i``'s grid (ref role of ``i``).
        """
        e = _as_edges(edges, self.num_frames, self.device)
        b = e.shape[0]
        _check_maps("cross_attn_1", cross_attn_1, b, self.grid, self.channels)
        _check_maps("cross_attn_2", cross_attn_2, b, self.grid, self.channels)
        if b == 0:
            return
        self._update(0, e[:, 1], cross_attn_1)
        self._update(1, e[:, 0], cross_attn_2)

    def merge(self, other: AttentionAccumulator) -> AttentionAccumulator:
        """Fold ``other`` (disjoint pairs of the same video) into this accumulator; returns ``self``."""
        if not isinstance(other, AttentionAccumulator):
            raise Easi3RInputError(f"can only merge another AttentionAccumulator, got {type(other).__name__}")
        if (other.num_frames, other.grid, other.channels) != (self.num_frames, self.grid, self.channels):
            raise Easi3RInputError(
                "cannot merge accumulators of different layouts: "
                f"(T, grid, C) = {(self.num_frames, self.grid, self.channels)} vs "
                f"{(other.num_frames, other.grid, other.channels)}"
            )
        all_rows = torch.arange(self.num_frames, device=self.device)
        for role in range(len(ROLES)):
            self._combine(
                role,
                all_rows,
                other._count[role].to(self.device),
                other._mean[role].to(device=self.device, dtype=self.dtype).view(self.num_frames, -1),
                other._m2[role].to(device=self.device, dtype=self.dtype).view(self.num_frames, -1),
            )
        return self

    def __iadd__(self, other: AttentionAccumulator) -> AttentionAccumulator:
        return self.merge(other)

    def stats(self) -> AttentionStats:
        """The per-frame statistics, float32 (as the official float32 pipeline).

        Warns (``UserWarning``) for frames with a single pair in a role (their std is 0).

        Raises:
            Easi3RInputError: a frame has no pair in one of the roles.
        """
        _check_counts(self._count)
        mean = self._mean.to(torch.float32)
        std = torch.stack([_finish_std(self._m2[r], self._count[r]) for r in range(len(ROLES))]).float()
        return AttentionStats(
            src_mean=mean[0], src_std=std[0], ref_mean=mean[1], ref_std=std[1], counts=self._count.clone()
        )


def aggregate_attention(
    edges: Tensor | np.ndarray | Sequence[Sequence[int]],
    maps1: Tensor | Sequence[Tensor],
    maps2: Tensor | Sequence[Tensor],
    num_frames: int,
) -> AttentionStats:
    """Plain reference aggregation: stack every group and call ``mean`` / ``std(unbiased)``.

    Follows the official ``aggregate_attention_maps`` step by step (corner fix on the stacked group, then
    mean and std over the pair axis) and computes in the maps' dtype. Keeps every map in memory; use
    :class:`AttentionAccumulator` in the pipeline.

    Args:
        edges: ``(P, 2)`` integer ``(i, j)`` per pair.
        maps1: ``(P, h, w, C)`` (or a list of ``(h, w, C)``) ``cross_attn_1`` maps (src role of ``j``).
        maps2: ``(P, h, w, C)`` (or a list of ``(h, w, C)``) ``cross_attn_2`` maps (ref role of ``i``).
        num_frames: ``T``.

    Returns:
        :class:`AttentionStats` (float32; a single-pair group gets std 0 with a warning).
    """
    m1 = maps1 if isinstance(maps1, Tensor) else torch.stack(list(maps1))
    m2 = maps2 if isinstance(maps2, Tensor) else torch.stack(list(maps2))
    if m1.ndim != 4 or m1.shape != m2.shape:
        raise Easi3RInputError(
            f"maps1 and maps2 must both be (P, h, w, C), got {tuple(m1.shape)} and {tuple(m2.shape)}"
        )
    e = _as_edges(edges, int(num_frames), torch.device("cpu"))
    if e.shape[0] != m1.shape[0]:
        raise Easi3RInputError(f"edges has {e.shape[0]} pairs but the maps have {m1.shape[0]}")
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


def minmax_normalize(x: Tensor, dims: int | tuple[int, ...] | None = None, eps: float = _EPS) -> Tensor:
    """``(x - min) / (max - min + eps)`` over ``dims`` (all elements when None), as the official code.

    The ``eps`` keeps constant inputs finite (they map to 0) and makes the maximum slightly below 1.
    """
    if dims is None:
        lo, hi = x.min(), x.max()
    else:
        lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    return (x - lo) / (hi - lo + eps)


def channel_fusion(x: Tensor) -> ChannelFusion:
    """:func:`fuse_channels` together with its intermediates (see :class:`ChannelFusion`)."""
    if x.ndim != 4:
        raise Easi3RInputError(f"channel fusion expects (T, h, w, C), got shape {tuple(x.shape)}")
    lo, hi = x.min(), x.max()
    xn = (x - lo) / (hi - lo + _EPS)
    fused = minmax_normalize(xn.mean(dim=-1))
    return ChannelFusion(raw_minmax=torch.stack([lo, hi]), channel_mean=x.mean(dim=-1), fused=fused)


def fuse_channels(x: Tensor) -> Tensor:
    """Fuse the layer x head channels of one statistic (pipeline.md §3).

    Global min-max over the whole tensor (``+1e-6``), mean over channels, global min-max again (``+1e-6``,
    over all frames and tokens, not per frame).

    Args:
        x: ``(T, h, w, C)`` float.

    Returns:
        ``(T, h, w)`` in ``[0, 1)``, same dtype and device.
    """
    return channel_fusion(x).fused


def fuse_attention(stats: AttentionStats) -> FusedAttention:
    """Fuse the channels of the four statistics into ``A_src_mu, A_src_sigma, A_ref_mu, A_ref_sigma``."""
    return FusedAttention(
        src_mean=fuse_channels(stats.src_mean),
        src_std=fuse_channels(stats.src_std),
        ref_mean=fuse_channels(stats.ref_mean),
        ref_std=fuse_channels(stats.ref_std),
    )


def dynamic_map(fused: FusedAttention) -> Tensor:
    """Eq. 9: ``(1 - A_src_mu) * A_src_sigma * A_ref_mu * (1 - A_ref_sigma)``, min-max per frame (``+1e-6``).

    A token is dynamic when, as a source, it draws little but varying attention and, as a reference, it draws
    much but stable attention.

    Args:
        fused: the four ``(T, h, w)`` fused maps.

    Returns:
        ``(T, h, w)`` in ``[0, 1)``, same dtype and device; a constant frame gives zeros.
    """
    shapes = {tuple(m.shape) for m in fused.as_dict().values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise Easi3RInputError(f"fused maps must all be (T, h, w), got shapes {sorted(shapes)}")
    d = (1 - fused.src_mean) * fused.src_std * fused.ref_mean * (1 - fused.ref_std)
    return minmax_normalize(d, dims=(1, 2))
