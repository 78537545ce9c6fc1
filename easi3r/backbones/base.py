"""The backbone adapter contract: what Easi3R needs from a pointmap network.

A :class:`Backbone` turns two batches of normalised images (view 1 = reference, view 2 = source) into pointmaps and
exposes, through a probe passed into its decoder, the cross-attention statistics Easi3R reads. Subclass it to host
another pointmap network and register it by name (:func:`~easi3r.backbones.registry.register_backbone`; see
``examples/custom_backbone.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from .._checks import check_dtype, check_shape
from ..errors import CheckpointError, Easi3RInputError
from .reweight import TokenMasks, token_masks

__all__ = ["AttentionProbe", "Backbone", "CrossAttentionReadout", "EncodedImages", "PairPrediction", "Preprocessing"]

#: Called by a cross-attention layer with its rotated queries ``(B, heads, Nq, D)``, keys ``(B, heads, Nk, D)`` and
#: the logit scale. The decoder binds the branch and layer index before handing it to a block.
AttentionProbe = Callable[[Tensor, Tensor, float], None]


@dataclass
class EncodedImages:
    """Encoder output of a batch of images, computed once per frame and reused by every pair.

    Attributes:
        tokens: ``(B, N, C)`` encoder tokens after the encoder norm, row-major over the ``h x w`` patch grid.
        positions: ``(B, N, 2)`` int64 token positions (row, column).
        size: ``(H, W)`` image size in pixels, shared by the batch.
        patch_size: token size in pixels.
    """

    tokens: Tensor
    positions: Tensor
    size: tuple[int, int]
    patch_size: int = 16

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: Tensor | slice | list[int] | int) -> EncodedImages:
        """Select images (e.g. the view-1 frames of a batch of pairs)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return EncodedImages(self.tokens[index], self.positions[index], self.size, self.patch_size)

    @classmethod
    def concat(cls, parts: Sequence[EncodedImages]) -> EncodedImages:
        """Concatenate batches of one image size along the batch dimension (e.g. frames encoded in chunks)."""
        if not parts or any(p.size != parts[0].size or p.patch_size != parts[0].patch_size for p in parts):
            raise Easi3RInputError("concat needs one or more EncodedImages of one image size and patch size")
        tokens = torch.cat([p.tokens for p in parts])
        return cls(tokens, torch.cat([p.positions for p in parts]), parts[0].size, parts[0].patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(h, w) = (H / patch_size, W / patch_size)``."""
        return self.size[0] // self.patch_size, self.size[1] // self.patch_size

    def token_grid(self) -> Tensor:
        """The tokens on their patch grid: ``(B, h, w, C)`` (a view of :attr:`tokens`)."""
        return rearrange(self.tokens, "b (h w) c -> b h w c", h=self.grid[0], w=self.grid[1])

    def to(self, device: torch.device | str) -> EncodedImages:
        return EncodedImages(self.tokens.to(device), self.positions.to(device), self.size, self.patch_size)


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
        extras: family-specific outputs by name (e.g. MASt3R's ``desc_1``, ``desc_conf_1``, ``desc_2``,
            ``desc_conf_2``); empty for DUSt3R / MonST3R and when the heads were skipped. The encoder tokens are in
            :class:`EncodedImages`, not here.
    """

    pts3d_1: Tensor | None
    conf_1: Tensor | None
    pts3d_2: Tensor | None
    conf_2: Tensor | None
    cross_attn_1: Tensor | None
    cross_attn_2: Tensor | None
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Preprocessing:
    """How frames must be prepared for a network (official ``dust3r/utils/image.py`` ``load_images``).

    Attributes:
        image_size: long side in pixels (224: short side 224 and a square centre crop, as the official loader
            does for 224 models), a multiple of 16.
        crop: centre-crop to a multiple of 16 (True, official) or resize to it (MonST3R ``--no_crop``).
        mean, std: per-channel normalisation of ``[0, 1]`` pixels, ``(x - mean) / std`` (0.5, 0.5 for the DUSt3R
            family: images in [-1, 1]).

    Raises:
        Easi3RInputError: an image size that is not a positive multiple of 16, or a non-positive std.
    """

    image_size: int = 512
    crop: bool = True
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 16 or size % 16:
            raise Easi3RInputError(f"Preprocessing.image_size must be a positive multiple of 16, got {size!r}")
        if not isinstance(self.crop, bool):
            raise Easi3RInputError(f"Preprocessing.crop must be a bool, got {self.crop!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not (isinstance(value, tuple) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
                raise Easi3RInputError(f"Preprocessing.{name} must be a tuple of 3 floats, got {value!r}")
        if min(self.std) <= 0:
            raise Easi3RInputError(f"Preprocessing.std must be positive, got {self.std!r}")


class CrossAttentionReadout:
    """Decoder probe collecting Easi3R's readout with O(N) memory per layer.

    For every cross-attention layer it stores ``mean_q(q) . k * scale`` of shape ``(B, heads, Nk)``, which equals the
    query-mean of the pre-softmax logits exactly (the mean is linear):

    .. math:: \\frac{1}{N_q}\\sum_q \\frac{q\\cdot k}{\\sqrt d} = \\frac{\\bar q \\cdot k}{\\sqrt d},

    so no ``(Nq, Nk)`` matrix is formed (the official Easi3R code keeps every layer's matrix and averages it in
    ``dust3r/model.py`` ``_get_attn_k``, as :class:`~easi3r.backbones._reference.ScoreMatrixRecorder` does). Call it
    as ``probe(branch, layer)`` to get the :data:`AttentionProbe` a decoder block expects; branch 1 is the reference
    decoder (queries from view 1), branch 2 the source decoder (queries from view 2).

    Attributes:
        scores: ``scores[branch][layer]``, the ``(B, heads, Nk)`` readout of that cross-attention.
    """

    def __init__(self) -> None:
        self.scores: dict[int, dict[int, Tensor]] = {1: {}, 2: {}}

    def __call__(self, branch: int, layer: int) -> AttentionProbe:
        def record(q: Tensor, k: Tensor, scale: float) -> None:
            q_mean = q.mean(dim=-2)
            self.scores[branch][layer] = torch.einsum("bhd,bhnd->bhn", q_mean, k) * scale

        return record

    def maps(self, branch: int, grid: tuple[int, int]) -> Tensor:
        """Stacked maps of one decoder branch on the key view's token grid ``(h, w)``: ``(B, h, w, L*heads)``,
        channel ``layer * heads + head``."""
        layers = torch.stack([self.scores[branch][i] for i in sorted(self.scores[branch])], dim=1)
        return rearrange(layers, "b l heads (h w) -> b h w (l heads)", h=grid[0], w=grid[1])


class Backbone(nn.Module, ABC):
    """Base class of pointmap networks usable by Easi3R.

    Subclasses implement :meth:`encode` and :meth:`decode`; :meth:`forward_pair` validates the inputs, encodes
    images when needed, turns the dynamic masks into token masks and calls :meth:`decode`. ``patch_size`` is the
    token size in pixels; ``attention_channels`` the number of readout channels (decoder layers x heads).

    Attributes:
        metric: the pointmaps are in metres (MASt3R) rather than up to scale (DUSt3R, MonST3R): with a metric
            backbone the world stays in the network's metres.
        preprocessing: how frames must be prepared (:class:`Preprocessing`); :func:`~easi3r.load_backbone` sets it
            from the registry entry, or from the checkpoint's training image size.
    """

    patch_size: int = 16
    metric: bool = False
    preprocessing: Preprocessing = Preprocessing()

    @classmethod
    def from_checkpoint(cls, config: dict[str, Any] | None, state_dict: dict[str, Tensor], **options: Any) -> Backbone:
        """Build the network a checkpoint describes and load its weights (used by :func:`~easi3r.load_backbone`).

        Args:
            config: the constructor keyword arguments stored with the weights (official ``args.model`` or
                ``config.json``), or None.
            state_dict: the tensors by name.
            options: ``source`` (str: how error messages name the checkpoint), ``architecture`` (the adapter's own
                configuration object, for a checkpoint that carries none; may be None) and the adapter's options
                (e.g. :class:`~easi3r.backbones.dust3r.DUSt3R`'s ``head_chunk_size``).

        Raises:
            CheckpointError: always, unless a subclass implements it (register a factory instead).
        """
        source = options.get("source", "checkpoint")
        raise CheckpointError(f"{source}: {cls.__name__} cannot be built from a checkpoint (register a factory)")

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
    def decode(
        self,
        enc_1: EncodedImages,
        enc_2: EncodedImages,
        *,
        reweight: TokenMasks | None,
        heads: bool,
        probe: CrossAttentionReadout | None,
    ) -> PairPrediction:
        """Run the decoders (and heads) on ``B`` encoded pairs of one batch size (checked by the caller).

        Args:
            enc_1, enc_2: view 1 (reference) and view 2 (source).
            reweight: dynamic tokens of view 1 (``query``) and view 2 (``key``) for the re-weighted reference-decoder
                cross-attention (:mod:`easi3r.backbones.reweight`), or None.
            heads: run the prediction heads (False: point/conf fields are None).
            probe: the readout recorder passed to the cross-attention layers, or None (no readout maps).
        """

    def forward_pair(
        self,
        view1: Tensor | EncodedImages,
        view2: Tensor | EncodedImages,
        *,
        dynamic_mask1: Tensor | None = None,
        dynamic_mask2: Tensor | None = None,
        heads: bool = True,
        readout: bool = True,
        probe: CrossAttentionReadout | None = None,
    ) -> PairPrediction:
        """Run the decoders (and heads) on ``B`` pairs.

        Args:
            view1, view2: images ``(B, 3, H, W)`` or their :meth:`encode` output (encode once, reuse per pair).
                View 1 is the reference, view 2 the source.
            dynamic_mask1, dynamic_mask2: ``(B, H, W)`` bool dynamic masks of view 1 / view 2 at image resolution.
                When both are given, the reference decoder's cross-attention drops (static view-1 query, dynamic
                view-2 key) weights after the softmax, without renormalising (Easi3R's second pass, paper Sec. 3.3).
                The source decoder is untouched.
            heads: run the prediction heads (False: point/conf fields are None).
            readout: compute the cross-attention readout maps.
            probe: replaces the default readout recorder (e.g. the reference
                :class:`~easi3r.backbones._reference.ScoreMatrixRecorder`); ``readout`` is then ignored.

        Raises:
            Easi3RInputError: batches of different sizes, only one mask, or masks that are not ``(B, H, W)`` bool
                of their view's image size.
        """
        enc_1 = view1 if isinstance(view1, EncodedImages) else self.encode(view1)
        enc_2 = view2 if isinstance(view2, EncodedImages) else self.encode(view2)
        if len(enc_1) != len(enc_2):
            raise Easi3RInputError(f"view batches differ in size: {len(enc_1)} vs {len(enc_2)}")
        if (dynamic_mask1 is None) != (dynamic_mask2 is None):
            raise Easi3RInputError("re-weighting needs both dynamic_mask1 and dynamic_mask2 (or neither)")
        reweight = None
        if dynamic_mask1 is not None and dynamic_mask2 is not None:
            reweight = TokenMasks(
                self._token_masks(dynamic_mask1, enc_1, "dynamic_mask1"),
                self._token_masks(dynamic_mask2, enc_2, "dynamic_mask2"),
            )
        if probe is None and readout:
            probe = CrossAttentionReadout()
        return self.decode(enc_1, enc_2, reweight=reweight, heads=heads, probe=probe)

    @staticmethod
    def _token_masks(mask: Tensor, enc: EncodedImages, name: str) -> Tensor:
        check_shape(mask, "B H W", name, dims={"B": len(enc), "H": enc.size[0], "W": enc.size[1]})
        check_dtype(mask, (torch.bool,), name)
        return token_masks(mask.to(enc.tokens.device), enc.patch_size)
