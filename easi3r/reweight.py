"""Attention re-weighting of the second pass (pipeline.md §2): image masks -> token masks, and a reference.

In pass 2 the reference decoder's cross-attention zeroes, after the softmax and without renormalising, the
weight of every (static view-1 query, dynamic view-2 key) pair: static reference tokens stop attending to
moving source content, so the pointmaps are computed from the static scene. Dynamic queries keep their full
attention. :func:`reweight_attention_reference` spells this out with the full probability matrix; the
backbone's memory-efficient attention is tested against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import Easi3RInputError

__all__ = ["reweight_attention_reference", "token_masks"]


def token_masks(masks: Tensor, patch: int = 16) -> Tensor:
    """Patch-level dynamic masks: a token is dynamic if **any** pixel of its ``patch x patch`` cell is.

    Equivalent to the official ``MaxPool2d(patch, patch)`` on the float mask, flattened row-major.

    Args:
        masks: ``(B, H, W)`` bool image masks (True = dynamic); ``H`` and ``W`` multiples of ``patch``.
        patch: patch size in pixels (16 for DUSt3R/MonST3R).

    Returns:
        ``(B, (H/patch) * (W/patch))`` bool, token index ``row * (W/patch) + col``, on the masks' device.
    """
    if not isinstance(masks, Tensor) or masks.ndim != 3:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise Easi3RInputError(f"masks must be a (B, H, W) tensor, got {shape}")
    if masks.dtype != torch.bool:
        raise Easi3RInputError(f"masks must be bool (True = dynamic), got {masks.dtype}")
    if int(patch) < 1:
        raise Easi3RInputError(f"patch must be >= 1, got {patch}")
    b, h, w = masks.shape
    if h % patch or w % patch:
        raise Easi3RInputError(f"mask size (H, W) = {(h, w)} must be a multiple of the patch size {patch}")
    cells = masks.reshape(b, h // patch, patch, w // patch, patch)
    return cells.any(dim=4).any(dim=2).reshape(b, -1)


def reweight_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    qmask: Tensor | None,
    kmask: Tensor | None,
    scale: float,
) -> Tensor:
    """Plain re-weighted attention: softmax, zero static-query x dynamic-key weights (no renormalising), @ V.

    Materialises the ``(B, heads, Nq, Nk)`` probabilities: a test reference only.

    Args:
        q: ``(B, heads, Nq, D)`` queries (view-1 tokens).
        k, v: ``(B, heads, Nk, D)`` keys and values (view-2 tokens).
        qmask: ``(B, Nq)`` bool, True = dynamic query token (or None: no masking).
        kmask: ``(B, Nk)`` bool, True = dynamic key token (or None: no masking).
        scale: logit scale, normally ``D ** -0.5``.

    Returns:
        ``(B, heads, Nq, D)``, dtype of ``q``.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise Easi3RInputError(
            f"q, k, v must be (B, heads, N, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise Easi3RInputError(
            f"incompatible q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} (expected "
            "q (B,heads,Nq,D), k = v (B,heads,Nk,D))"
        )
    probs = F.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)
    if (qmask is None) != (kmask is None):
        raise Easi3RInputError("qmask and kmask must be given together (or both None)")
    if qmask is not None and kmask is not None:
        b, _, nq, _ = q.shape
        nk = k.shape[2]
        if tuple(qmask.shape) != (b, nq) or tuple(kmask.shape) != (b, nk):
            raise Easi3RInputError(
                f"qmask must be (B, Nq) = {(b, nq)} and kmask (B, Nk) = {(b, nk)}, "
                f"got {tuple(qmask.shape)} and {tuple(kmask.shape)}"
            )
        if qmask.dtype != torch.bool or kmask.dtype != torch.bool:
            raise Easi3RInputError(f"qmask and kmask must be bool, got {qmask.dtype} and {kmask.dtype}")
        blocked = (~qmask)[:, None, :, None] & kmask[:, None, None, :]  # (B, 1, Nq, Nk), same for all heads
        probs = probs.masked_fill(blocked, 0.0)
    return probs @ v
