"""Naive references of the network's fast paths, as the official code computes them (tests and benchmarks only).

* :func:`reference_attention`: explicit attention (logits, softmax, product with the values), with Easi3R's
  re-weighting applied to the materialised ``(B, heads, Nq, Nk)`` probabilities, as the official
  ``croco/models/blocks.py`` ``CrossAttention.forward`` and Easi3R's patched attention do. The network runs it when
  built with ``fused_attention=False``; the fused paths of :func:`easi3r.backbones.layers.attention` are tested
  against it.
* :class:`ScoreMatrixRecorder`: a decoder probe that keeps every layer's full logit matrix (the official
  implementation stores them all) and reads the readout from them; the O(N) probe
  :class:`~easi3r.backbones.base.CrossAttentionReadout` is tested against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_dtype, check_shape
from .base import AttentionProbe, CrossAttentionReadout
from .reweight import TokenMasks, dropped_weights

__all__ = ["ScoreMatrixRecorder", "reference_attention"]


def reference_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float, masks: TokenMasks | None = None) -> Tensor:
    """Explicit softmax attention; with ``masks``, the :func:`~easi3r.backbones.reweight.dropped_weights` are zeroed
    after the softmax and the rows are **not** renormalised.

    Args:
        q: ``(B, heads, Nq, D)`` queries (view-1 tokens in the reference decoder).
        k: ``(B, heads, Nk, D)`` keys and v: ``(B, heads, Nk, Dv)`` values (view-2 tokens).
        scale: logit scale, normally ``D ** -0.5``.
        masks: ``(B, Nq)`` / ``(B, Nk)`` bool dynamic tokens of the queries / keys, or None (plain attention).

    Returns:
        ``(B, heads, Nq, Dv)``, dtype of ``q``.

    Raises:
        Easi3RInputError: shapes that do not fit together, or masks that are not bool.
    """
    dims = check_shape(q, "B heads Nq D", "q")
    dims = check_shape(k, "B heads Nk D", "k", dims=dims)
    dims = check_shape(v, "B heads Nk Dv", "v", dims=dims)
    probs = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
    if masks is not None:
        check_shape(masks.query, "B Nq", "query mask", dims=dims)
        check_shape(masks.key, "B Nk", "key mask", dims=dims)
        check_dtype(masks.query, (torch.bool,), "query mask")
        check_dtype(masks.key, (torch.bool,), "key mask")
        probs = probs.masked_fill(dropped_weights(masks), 0.0)
    return probs @ v


class ScoreMatrixRecorder(CrossAttentionReadout):
    """Reference probe that materialises and keeps every layer's full ``(B, heads, Nq, Nk)`` logit matrix, as the
    official code does. Used to test the readout and as the naive baseline of the benchmarks.

    Attributes:
        matrices: ``matrices[branch][layer]``, the pre-softmax logits ``q . k * scale`` of that cross-attention
            (branch 1: reference decoder, queries from view 1; branch 2: source decoder, queries from view 2).
    """

    def __init__(self) -> None:
        super().__init__()
        self.matrices: dict[int, dict[int, Tensor]] = {1: {}, 2: {}}

    def __call__(self, branch: int, layer: int) -> AttentionProbe:
        def record(q: Tensor, k: Tensor, scale: float) -> None:
            logits = (q @ k.transpose(-2, -1)) * scale
            self.matrices[branch][layer] = logits
            self.scores[branch][layer] = logits.mean(dim=-2)

        return record
