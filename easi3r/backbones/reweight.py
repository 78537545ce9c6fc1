"""Easi3R's attention re-weighting (second pass, paper Sec. 3.3): image masks -> token masks -> masked attention.

In pass 2 the reference decoder's cross-attention zeroes, after the softmax and without renormalising, the weight of
every (static view-1 query, dynamic view-2 key) pair: static reference tokens stop attending to moving source content,
so the pointmaps are computed from the static scene. Dynamic queries keep their full attention. This module is the one
home of both rules: which tokens are dynamic (:func:`token_masks`) and which attention weights are dropped
(:func:`dropped_weights`), with the memory-efficient evaluation the network runs (:func:`reweighted_attention`). The
explicit version that materialises the probabilities is :func:`easi3r.backbones._reference.reference_attention`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .._checks import check_dtype, check_shape
from ..errors import Easi3RInputError

__all__ = ["TokenMasks", "dropped_weights", "reweighted_attention", "token_masks"]


@dataclass(frozen=True)
class TokenMasks:
    """Token-level dynamic masks of one attention (True = dynamic token).

    Attributes:
        query: ``(B, Nq)`` bool, the query tokens' view (view 1 in the reference decoder).
        key: ``(B, Nk)`` bool, the key tokens' view (view 2 in the reference decoder).
    """

    query: Tensor
    key: Tensor


def token_masks(masks: Tensor, patch: int = 16) -> Tensor:
    """Patch-level dynamic masks: a token is dynamic if **any** pixel of its ``patch x patch`` cell is.

    Equivalent to the official ``MaxPool2d(patch, patch)`` on the float mask, flattened row-major.

    Args:
        masks: ``(B, H, W)`` bool image masks (True = dynamic); ``H`` and ``W`` multiples of ``patch``.
        patch: patch size in pixels (16 for DUSt3R/MonST3R).

    Returns:
        ``(B, (H/patch) * (W/patch))`` bool, token index ``row * (W/patch) + col``, on the masks' device.

    Example:
        >>> m = torch.zeros(1, 32, 48, dtype=torch.bool)
        >>> m[0, 17, 33] = True
        >>> token_masks(m).tolist()
        [[False, False, False, False, False, True]]
    """
    if not isinstance(masks, Tensor):
        raise Easi3RInputError(f"masks must be a (B, H, W) tensor, got {type(masks).__name__}")
    dims = check_shape(masks, "B H W", "masks")
    check_dtype(masks, (torch.bool,), "masks")
    if int(patch) < 1:
        raise Easi3RInputError(f"patch must be >= 1, got {patch}")
    h, w = dims["H"], dims["W"]
    if h % patch or w % patch:
        raise Easi3RInputError(f"mask size (H, W) = {(h, w)} must be a multiple of the patch size {patch}")
    cells = rearrange(masks, "b (h ph) (w pw) -> b (h w) (ph pw)", ph=patch, pw=patch)
    return cells.any(dim=-1)


def dropped_weights(masks: TokenMasks) -> Tensor:
    """The attention weights the re-weighting sets to zero: ``(B, 1, Nq, Nk)`` bool, True where a **static** query
    meets a **dynamic** key (the same for every head)."""
    return (~masks.query)[:, None, :, None] & masks.key[:, None, None, :]


def reweighted_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float, masks: TokenMasks) -> Tensor:
    """Softmax attention with the :func:`dropped_weights` zeroed after the softmax, without materialising it.

    For a static query, dropping its weights on dynamic keys without renormalising equals ordinary attention over
    values whose dynamic rows are zeroed (the softmax denominator still includes those keys). So one
    ``scaled_dot_product_attention`` over ``[v | v * static_key]`` gives both outputs, and each query picks its half.

    Args:
        q: ``(B, heads, Nq, D)`` queries, k: ``(B, heads, Nk, D)`` keys, v: ``(B, heads, Nk, Dv)`` values.
        scale: logit scale, ``D ** -0.5``.
        masks: the dynamic tokens of the queries and the keys.

    Returns:
        ``(B, heads, Nq, Dv)``.
    """
    v_static = v * (~masks.key)[:, None, :, None].to(v.dtype)
    both = F.scaled_dot_product_attention(q, k, torch.cat((v, v_static), dim=-1), scale=scale)
    plain, reweighted = both[..., : v.shape[-1]], both[..., v.shape[-1] :]
    return torch.where(masks.query[:, None, :, None], plain, reweighted)
