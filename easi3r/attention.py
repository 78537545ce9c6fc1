"""Per-frame aggregation of cross-attention maps, channel fusion and the dynamic map (Easi3R Eq. 5-9).

The backbone gives, for every pair (edge) ``(i, j)`` (view 1 = frame ``i``, the reference; view 2 = frame ``j``,
the source), two query-averaged cross-attention logit maps of shape ``(h, w, C)`` (``C`` = decoder layers x
heads):

* ``cross_attn_1``: reference-decoder map, indexed by view-2 key tokens, so it lives on frame ``j``'s grid.
  Collected over all edges ``(., t)`` it forms the **src** group of frame ``t`` (official ``cross_att_k_i``).
* ``cross_attn_2``: source-decoder map, indexed by view-1 key tokens, so it lives on frame ``i``'s grid.
  Collected over all edges ``(t, .)`` it forms the **ref** group of frame ``t`` (official ``cross_att_k_j``).

So the paper's four maps keep its src/ref names: **src** = the frame in its view-2 (source) role, role 0 of
:class:`AttentionAccumulator`; **ref** = the frame in its view-1 (reference) role, role 1.

Per group the mean and the unbiased standard deviation over the pairs are taken (after the corner-token fix;
Eq. 5-8), each of the four ``(T, h, w, C)`` statistics is fused over channels (global min-max, channel mean,
global min-max) and the dynamic map is Eq. 9, ``(1 - A_src_mu) * A_src_sigma * A_ref_mu * (1 - A_ref_sigma)``
normalised per frame. Official counterparts: Easi3R ``dust3r/cloud_opt/base_opt.py``,
``BasePCOptimizer.aggregate_attention_maps`` and the ``fuse_attention_channels`` / dynamic-map code of
``BasePCOptimizer.__init__``.

:class:`AttentionAccumulator` streams pair batches into per-frame statistics without keeping anything per
pair; ``easi3r._reference.aggregate_attention`` is the plain (private) reference it is tested against.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._checks import check_dtype, check_shape
from .errors import Easi3RInputError

__all__ = [
    "ROLES",
    "AttentionAccumulator",
    "AttentionStats",
    "ChannelFusion",
    "FusedAttention",
    "channel_fusion",
    "dynamic_map",
    "fix_corner_token",
    "fuse_attention",
    "fuse_channels",
    "minmax_normalize",
]

#: Role names in the order of the first axis of :attr:`AttentionStats.counts`: src = the frame as view 2 (source),
#: ref = the frame as view 1 (reference).
ROLES = ("src", "ref")

_EPS = 1e-6  # the official min-max denominators all add this constant
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


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

    Raises:
        Easi3RInputError: fewer than 3 dimensions, or ``h < 2`` or ``w < 2``.
    """
    dims = check_shape(maps, "* h w C", "attention maps")
    if min(dims["h"], dims["w"]) < 2:
        raise Easi3RInputError(f"attention maps must have h, w >= 2, got shape {tuple(maps.shape)}")
    out = maps.clone()
    out[..., 0, 0, :] = (maps[..., 0, 1, :] + maps[..., 1, 0, :]) / 2
    return out


def _as_edges(edges: Tensor | np.ndarray | Sequence[Sequence[int]], num_frames: int, device: torch.device) -> Tensor:
    e = torch.as_tensor(np.asarray(edges) if not isinstance(edges, Tensor) else edges)
    check_shape(e, "B 2", "edges")
    check_dtype(e, _INT_DTYPES, "edges")
    e = e.to(device=device, dtype=torch.long)
    if e.numel() and (int(e.min()) < 0 or int(e.max()) >= num_frames):
        raise Easi3RInputError(
            f"edges must index frames in [0, {num_frames}), got range [{int(e.min())}, {int(e.max())}]"
        )
    return e


def _check_maps(name: str, maps: Tensor, dims: dict[str, int]) -> None:
    """``maps`` must be a float ``(B, h, w, C)`` tensor with the sizes of ``dims``."""
    if not isinstance(maps, Tensor):
        raise Easi3RInputError(f"{name} must be a torch.Tensor, got {type(maps).__name__}")
    check_shape(maps, "B h w C", name, dims=dims)
    check_dtype(maps, _FLOAT_DTYPES, name)


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

        Raises:
            Easi3RInputError: edges that are not ``(B, 2)`` integer frame indices, or maps of the wrong shape/dtype.
        """
        e = _as_edges(edges, self.num_frames, self.device)
        dims = {"B": e.shape[0], "h": self.grid[0], "w": self.grid[1], "C": self.channels}
        _check_maps("cross_attn_1", cross_attn_1, dims)
        _check_maps("cross_attn_2", cross_attn_2, dims)
        b = e.shape[0]
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
    """:func:`fuse_channels` together with its intermediates (see :class:`ChannelFusion`); ``x``: ``(T, h, w, C)``."""
    check_shape(x, "T h w C", "channel fusion input")
    lo, hi = x.min(), x.max()
    xn = (x - lo) / (hi - lo + _EPS)
    fused = minmax_normalize(xn.mean(dim=-1))
    return ChannelFusion(raw_minmax=torch.stack([lo, hi]), channel_mean=x.mean(dim=-1), fused=fused)


def fuse_channels(x: Tensor) -> Tensor:
    """Fuse the layer x head channels of one statistic (the channel fusion under Easi3R Eq. 5-8).

    Global min-max over the whole tensor (``+1e-6``), mean over channels, global min-max again (``+1e-6``,
    over all frames and tokens, not per frame): official Easi3R ``dust3r/cloud_opt/base_opt.py``, the
    ``fuse_attention_channels`` of ``BasePCOptimizer.__init__``.

    Args:
        x: ``(T, h, w, C)`` float.

    Returns:
        ``(T, h, w)`` in ``[0, 1)``, same dtype and device.
    """
    return channel_fusion(x).fused


def fuse_attention(stats: AttentionStats) -> FusedAttention:
    """Fuse the channels of the four ``(T, h, w, C)`` statistics into the ``(T, h, w)`` maps ``A_src_mu,
    A_src_sigma, A_ref_mu, A_ref_sigma`` (Eq. 5-8), with :func:`fuse_channels`."""
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

    Raises:
        Easi3RInputError: the four maps are not all ``(T, h, w)`` of one shape.
    """
    dims: dict[str, int] = {}
    for name, m in fused.as_dict().items():
        dims = check_shape(m, "T h w", f"fused {name}", dims=dims)
    d = (1 - fused.src_mean) * fused.src_std * fused.ref_mean * (1 - fused.ref_std)
    return minmax_normalize(d, dims=(1, 2))
