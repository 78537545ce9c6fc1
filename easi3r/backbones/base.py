"""The backbone adapter contract: what Easi3R needs from a pointmap network.

A :class:`Backbone` turns two batches of normalised images (view 1 = reference, view 2 = source) into pointmaps and
exposes, through a probe passed into its decoder, the cross-attention statistics Easi3R reads. Subclass it to host
another DUSt3R-like network (same encoder/decoder, other heads: see ``examples/custom_backbone.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Backbone", "CrossAttentionReadout", "EncodedImages", "PairPrediction", "ScoreMatrixRecorder"]


@dataclass
class EncodedImages:
    """Encoder output of a batch of images, computed once per frame and reused by every pair.

    Attributes:
        tokens: ``(B, N, C)`` encoder tokens after the encoder norm, row-major over the ``h x w`` patch grid.
        positions: ``(B, N, 2)`` int64 token positions (row, column).
        image_size: ``(H, W)`` in pixels, shared by the batch.
        patch_size: token size in pixels.
    """

    tokens: Tensor
    positions: Tensor
    image_size: tuple[int, int]
    patch_size: int = 16

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: Tensor | slice | list[int] | int) -> EncodedImages:
        """Select images (e.g. the view-1 frames of a batch of pairs)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return EncodedImages(self.tokens[index], self.positions[index], self.image_size, self.patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(h, w) = (H / patch_size, W / patch_size)``."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    def to(self, device: torch.device | str) -> EncodedImages:
        return EncodedImages(self.tokens.to(device), self.positions.to(device), self.image_size, self.patch_size)


@dataclass
class PairPrediction:
    """Output of :meth:`Backbone.forward_pair` for ``B`` pairs (float32, batch first).

    Attributes:
        pts3d_1: ``(B, H, W, 3)`` view-1 points in view-1's camera frame, or None when heads were skipped.
        conf_1: ``(B, H, W)`` view-1 confidence (``1 + exp(x)``, >= 1), or None.
        pts3d_2: ``(B, H, W, 3)`` view-2 points expressed in **view-1's** camera frame, or None.
        conf_2: ``(B, H, W)`` view-2 confidence, or None.
        cross_attn_1: ``(B, h, w, L*Hd)`` reference-decoder cross-attention logits averaged over view-1 queries,
            indexed by view-2 key token; channel ``layer * Hd + head``. None when not requested.
        cross_attn_2: ``(B, h, w, L*Hd)`` the same for the source decoder, indexed by view-1 key token.
        features_1: ``(B, h, w, C)`` view-1 encoder tokens after the encoder norm.
    """

    pts3d_1: Tensor | None
    conf_1: Tensor | None
    pts3d_2: Tensor | None
    conf_2: Tensor | None
    cross_attn_1: Tensor | None
    cross_attn_2: Tensor | None
    features_1: Tensor


class CrossAttentionReadout:
    """Decoder probe collecting Easi3R's readout with O(N) memory per layer.

    For every cross-attention layer it stores ``mean_q(q) . k * scale`` of shape ``(B, heads, Nk)``, which equals the
    query-mean of the pre-softmax logits exactly (the mean is linear). Call it as ``probe(branch, layer)`` to get the
    callable a decoder block expects.
    """

    def __init__(self) -> None:
        self.scores: dict[int, dict[int, Tensor]] = {1: {}, 2: {}}

    def __call__(self, branch: int, layer: int):
        def record(q: Tensor, k: Tensor, scale: float) -> None:
            q_mean = q.mean(dim=-2)
            self.scores[branch][layer] = torch.einsum("bhd,bhnd->bhn", q_mean, k) * scale

        return record

    def maps(self, branch: int, grid: tuple[int, int]) -> Tensor:
        """Stacked maps of one decoder branch: ``(B, h, w, L*heads)``, channel ``layer * heads + head``."""
        layers = [self.scores[branch][i] for i in sorted(self.scores[branch])]
        x = torch.stack(layers, dim=1)  # (B, L, heads, Nk)
        b, n_layers, heads, n = x.shape
        return x.reshape(b, n_layers * heads, n).transpose(1, 2).reshape(b, grid[0], grid[1], n_layers * heads)


class ScoreMatrixRecorder(CrossAttentionReadout):
    """Reference probe that materialises and keeps every layer's full ``(B, heads, Nq, Nk)`` logit matrix, as the
    official code does. Used to test the readout and as the naive baseline of the benchmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.matrices: dict[int, dict[int, Tensor]] = {1: {}, 2: {}}

    def __call__(self, branch: int, layer: int):
        def record(q: Tensor, k: Tensor, scale: float) -> None:
            logits = (q @ k.transpose(-2, -1)) * scale
            self.matrices[branch][layer] = logits
            self.scores[branch][layer] = logits.mean(dim=-2)

        return record


class Backbone(nn.Module, ABC):
    """Base class of pointmap networks usable by Easi3R.

    Subclasses implement :meth:`encode` and :meth:`forward_pair`. ``patch_size`` is the token size in pixels;
    ``attention_channels`` the number of readout channels (decoder layers x heads).
    """

    patch_size: int = 16

    @property
    @abstractmethod
    def attention_channels(self) -> int:
        """Number of readout channels ``L * Hd``."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @abstractmethod
    def encode(self, images: Tensor) -> EncodedImages:
        """Encode ``images (B, 3, H, W)`` normalised to [-1, 1] into :class:`EncodedImages`."""

    @abstractmethod
    def forward_pair(
        self,
        view1: Tensor | EncodedImages,
        view2: Tensor | EncodedImages,
        *,
        dynamic_mask1: Tensor | None = None,
        dynamic_mask2: Tensor | None = None,
        heads: bool = True,
        readout: bool = True,
    ) -> PairPrediction:
        """Run the decoders (and heads) on ``B`` pairs.

        Args:
            view1, view2: images ``(B, 3, H, W)`` or their :meth:`encode` output (encode once, reuse per pair).
            dynamic_mask1, dynamic_mask2: ``(B, H, W)`` bool dynamic masks at image resolution. When both are given,
                the reference decoder's cross-attention drops (static view-1 query, dynamic view-2 key) weights after
                the softmax, without renormalising (Easi3R's second pass). The source decoder is untouched.
            heads: run the prediction heads (False: point/conf fields are None).
            readout: compute the cross-attention readout maps.
        """
