"""The DUSt3R / MonST3R network (``AsymmetricCroCo3DStereo``) as an Easi3R :class:`~easi3r.backbones.base.Backbone`.

Layer names and order follow the official state dict exactly, so official checkpoints load without renaming.
MonST3R is the same graph with other weights.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, Easi3RInputError
from .base import Backbone, CrossAttentionReadout, EncodedImages, PairPrediction, Preprocessing
from .checkpoint import build_with_weights
from .heads import DPTHead, LinearHead, postprocess
from .layers import Block, DecoderBlock, PatchEmbed, RoPE2D, check_head_dim
from .reweight import TokenMasks

__all__ = ["DUSt3R", "DUSt3RConfig", "check_positive_int"]

_POSITIVE_INTS = (
    "enc_embed_dim",
    "enc_depth",
    "enc_num_heads",
    "dec_embed_dim",
    "dec_depth",
    "dec_num_heads",
    "patch_size",
)
_ROPE = re.compile(r"RoPE(\d+(?:\.\d*)?)?")


def check_positive_int(value: Any, name: str) -> None:
    """Raise :class:`CheckpointError` naming the model option ``name`` unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"model option {name} must be a positive int, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mode(value: Any, name: str) -> tuple[Any, ...]:
    """An official ``(kind, vmin, vmax)`` mode option as a tuple; CheckpointError naming ``name`` otherwise."""
    if not (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and isinstance(value[0], str)
        and all(_is_number(v) for v in value[1:])
    ):
        raise CheckpointError(f"model option {name} must be ('exp', vmin, vmax), got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class DUSt3RConfig:
    """Architecture of a DUSt3R-family network (defaults: the published ViT-L encoder / ViT-B decoder, DPT head).

    Attributes:
        enc_embed_dim, enc_depth, enc_num_heads: encoder width, blocks and heads.
        dec_embed_dim, dec_depth, dec_num_heads: width, blocks and heads of each of the two decoders.
        head_type: ``"dpt"`` or ``"linear"``.
        patch_size: token size in pixels. img_size: training resolution (informational; any multiple of 16 works).
        mlp_ratio: MLP hidden width / embedding width. rope_base: RoPE frequency base ("RoPE100").
    """

    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    head_type: str = "dpt"
    patch_size: int = 16
    img_size: tuple[int, int] = (512, 512)
    mlp_ratio: float = 4.0
    rope_base: float = 100.0

    def __post_init__(self) -> None:
        self._check_fields()
        if self.head_type not in ("dpt", "linear"):
            raise CheckpointError(f"unsupported head_type {self.head_type!r} (expected 'dpt' or 'linear')")
        if self.head_type == "dpt" and self.dec_depth < 4:
            raise CheckpointError(f"a DPT head needs at least 4 decoder layers, got dec_depth={self.dec_depth}")
        check_head_dim(self.enc_embed_dim, self.enc_num_heads)
        check_head_dim(self.dec_embed_dim, self.dec_num_heads)

    def _check_fields(self) -> None:
        """Types and ranges of the shared encoder/decoder fields, one at a time (the first bad one is named)."""
        for name in _POSITIVE_INTS:
            check_positive_int(getattr(self, name), name)
        if not isinstance(self.head_type, str):
            raise CheckpointError(f"model option head_type must be a str, got {self.head_type!r}")
        size = self.img_size
        if not (
            isinstance(size, tuple)
            and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise CheckpointError(f"model option img_size must be a positive int or (H, W) ints, got {size!r}")
        for name in ("mlp_ratio", "rope_base"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise CheckpointError(f"model option {name} must be a positive finite number, got {value!r}")

    # -- conversion from the official constructor keyword arguments ----------------------------------------------
    @classmethod
    def from_official(cls, kwargs: dict[str, Any]) -> DUSt3RConfig:
        """Build from the official ``AsymmetricCroCo3DStereo`` keyword arguments (``args.model`` or ``config.json``).

        Options that only matter for training (``freeze``, ``landscape_only``, ``patch_embed_cls``, ``mask_ratio``) are
        accepted and ignored; options that change the computation in ways this class does not implement raise
        :class:`CheckpointError`.
        """
        kw = dict(kwargs)
        pos_embed = kw.pop("pos_embed", "RoPE100")
        rope = _ROPE.fullmatch(pos_embed) if isinstance(pos_embed, str) else None
        if rope is None:
            raise CheckpointError(
                f"unsupported pos_embed {pos_embed!r}: only RoPE position embeddings ('RoPE<base>') are implemented"
            )
        rope_base = float(rope.group(1) or 100)
        output_mode = kw.pop("output_mode", "pts3d")
        if output_mode != "pts3d":
            raise CheckpointError(f"unsupported output_mode {output_mode!r} (expected 'pts3d')")
        depth_mode = _mode(kw.pop("depth_mode", ("exp", -math.inf, math.inf)), "depth_mode")
        if depth_mode[0] != "exp" or not (math.isinf(depth_mode[1]) and math.isinf(depth_mode[2])):
            raise CheckpointError(f"unsupported depth_mode {depth_mode!r} (expected ('exp', -inf, inf))")
        conf_mode = _mode(kw.pop("conf_mode", ("exp", 1, math.inf)), "conf_mode")
        if conf_mode[0] != "exp" or conf_mode[1] != 1 or not math.isinf(conf_mode[2]):
            raise CheckpointError(f"unsupported conf_mode {conf_mode!r} (expected ('exp', 1, inf))")
        for ignored in ("freeze", "landscape_only", "patch_embed_cls", "mask_ratio", "norm_im2_in_dec"):
            kw.pop(ignored, None)
        img_size = kw.pop("img_size", (512, 512))
        if isinstance(img_size, int) and not isinstance(img_size, bool):
            img_size = (img_size, img_size)
        elif isinstance(img_size, list):
            img_size = tuple(img_size)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise CheckpointError(f"unsupported model option(s): {', '.join(unknown)}")
        return cls(img_size=img_size, rope_base=rope_base, **kw)


class DUSt3R(Backbone):
    """DUSt3R / MonST3R pointmap network (official ``dust3r/model.py`` ``AsymmetricCroCo3DStereo``).

    Args:
        config: the architecture (:class:`DUSt3RConfig`); build pretrained ones with :func:`easi3r.load_backbone`.
        head_chunk_size: pairs per head evaluation (None: the whole batch). The heads' full-resolution activations
            dominate the memory of a forward pass; chunking them costs no speed on CPU and little on GPU.
        fused_attention: every attention through ``scaled_dot_product_attention`` (True) or through the explicit
            reference :func:`~easi3r.backbones._reference.reference_attention` (False: the official computation,
            for tests and benchmarks).

    Raises:
        Easi3RInputError: ``head_chunk_size`` neither None nor a positive int.

    Example:
        >>> net = DUSt3R(DUSt3RConfig(enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=48,
        ...                           dec_depth=4, dec_num_heads=4))
        >>> enc = net.encode(torch.zeros(2, 3, 64, 96))
        >>> pred = net.forward_pair(enc[0], enc[1])
        >>> pred.pts3d_1.shape, pred.cross_attn_1.shape
        (torch.Size([1, 64, 96, 3]), torch.Size([1, 4, 6, 16]))
    """

    def __init__(
        self, config: DUSt3RConfig | None = None, *, head_chunk_size: int | None = 1, fused_attention: bool = True
    ) -> None:
        super().__init__()
        if head_chunk_size is not None and (
            isinstance(head_chunk_size, bool) or not isinstance(head_chunk_size, int) or head_chunk_size < 1
        ):
            raise Easi3RInputError(f"head_chunk_size must be None or a positive int, got {head_chunk_size!r}")
        cfg = config or DUSt3RConfig()
        self.config = cfg
        self.head_chunk_size = head_chunk_size
        self.fused_attention = fused_attention
        self.patch_size = cfg.patch_size
        rope = RoPE2D(cfg.rope_base)

        def decoder() -> nn.ModuleList:
            return nn.ModuleList(
                [
                    DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio, rope, fused=fused_attention)
                    for _ in range(cfg.dec_depth)
                ]
            )

        # Registration order (and mask_token as a direct parameter) reproduces the official key order.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_embed_dim))
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.enc_embed_dim)
        self.enc_blocks = nn.ModuleList(
            [
                Block(cfg.enc_embed_dim, cfg.enc_num_heads, cfg.mlp_ratio, rope, fused=fused_attention)
                for _ in range(cfg.enc_depth)
            ]
        )
        self.enc_norm = nn.LayerNorm(cfg.enc_embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(cfg.enc_embed_dim, cfg.dec_embed_dim)
        self.dec_blocks = decoder()
        self.dec_norm = nn.LayerNorm(cfg.dec_embed_dim, eps=1e-6)
        self.dec_blocks2 = decoder()
        self.downstream_head1 = self._make_head(cfg)
        self.downstream_head2 = self._make_head(cfg)
        head = self.downstream_head1
        self._hooks = set(head.hooks) if isinstance(head, DPTHead) else {cfg.dec_depth}
        # Training resolution -> frame preprocessing (224 models: short side 224, square crop).
        self.preprocessing = Preprocessing(image_size=max(16, max(cfg.img_size) // 16 * 16))

    def _make_head(self, cfg: DUSt3RConfig) -> nn.Module:
        """One view's prediction head (official ``dust3r/heads/__init__.py`` ``head_factory``): maps the kept
        decoder layers to a raw ``(B, 4, H, W)`` map. Subclasses with other heads override it."""
        if cfg.head_type == "dpt":
            return DPTHead(cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.dec_depth, cfg.patch_size)
        return LinearHead(cfg.dec_embed_dim, cfg.patch_size)

    def _extra_outputs(
        self, view: int, head: nn.Module, kept: dict[int, Tensor], size: tuple[int, int], conf: Tensor
    ) -> dict[str, Tensor]:
        """Family-specific outputs of one view for :attr:`PairPrediction.extras` (none for DUSt3R / MonST3R).

        Args:
            view: 1 (reference) or 2 (source).
            head: that view's head. kept: its kept token maps by layer (0: encoder; the last one normalised).
            size: image ``(H, W)`` in pixels. conf: its point confidence ``(B, H, W)``.
        """
        return {}

    @classmethod
    def from_checkpoint(cls, config: dict[str, Any] | None, state_dict: dict[str, Tensor], **options: Any) -> DUSt3R:
        """Parse ``config`` with :meth:`DUSt3RConfig.from_official` (or take ``options["architecture"]``), build the
        network on the meta device and make the checkpoint tensors its weights (no copy; see
        :func:`~easi3r.backbones.checkpoint.build_with_weights`). The other ``options`` are :class:`DUSt3R`'s
        keyword options; ``source`` names the checkpoint in messages.

        Raises:
            CheckpointError: no configuration and no ``architecture``, an unsupported configuration (the field is
                named), or weights that do not match.
        """
        source = str(options.pop("source", "checkpoint"))
        architecture = options.pop("architecture", None)
        config_class = cls._config_class()
        if config is not None:
            arch = config_class.from_official(config)
        elif isinstance(architecture, config_class):
            arch = architecture
        elif architecture is None:
            raise CheckpointError(f"{source}: the checkpoint carries no model configuration; pass architecture=")
        else:
            raise CheckpointError(
                f"{source}: architecture must be a {config_class.__name__}, got {type(architecture).__name__}"
            )
        return build_with_weights(lambda: cls(arch, **options), state_dict, source)

    @classmethod
    def _config_class(cls) -> type[DUSt3RConfig]:
        return DUSt3RConfig

    @property
    def attention_channels(self) -> int:
        return self.config.dec_depth * self.config.dec_num_heads

    # -- encoder -------------------------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> EncodedImages:
        """``images (B, 3, H, W)`` in [-1, 1], ``H`` and ``W`` multiples of the patch size -> encoder tokens after
        ``enc_norm`` (:class:`EncodedImages`).

        Raises:
            Easi3RInputError: not a ``(B, 3, H, W)`` tensor, or a size that is not a multiple of the patch size.
        """
        if not isinstance(images, Tensor):
            raise Easi3RInputError(f"images must be a (B, 3, H, W) tensor, got {type(images).__name__}")
        x, pos = self.patch_embed(images.to(self.dtype))
        for block in self.enc_blocks:
            x = block(x, pos)
        return EncodedImages(self.enc_norm(x), pos, (images.shape[-2], images.shape[-1]), self.patch_size)

    # -- decoders + heads ----------------------------------------------------------------------------------------
    def decode(
        self,
        enc_1: EncodedImages,
        enc_2: EncodedImages,
        *,
        reweight: TokenMasks | None,
        heads: bool,
        probe: CrossAttentionReadout | None,
    ) -> PairPrediction:
        """See :meth:`Backbone.decode`: the two decoders of the official ``AsymmetricCroCo3DStereo._decoder``
        (``dec_blocks`` for view 1, the reference; ``dec_blocks2`` for view 2, the source), then the heads
        (``_downstream_head``). ``reweight`` applies to the reference decoder's cross-attention only."""
        x_1, x_2 = self.decoder_embed(enc_1.tokens), self.decoder_embed(enc_2.tokens)
        pos_1, pos_2 = enc_1.positions, enc_2.positions
        kept_1: dict[int, Tensor] = {0: enc_1.tokens}
        kept_2: dict[int, Tensor] = {0: enc_2.tokens}
        depth = len(self.dec_blocks)
        for layer, (block_1, block_2) in enumerate(zip(self.dec_blocks, self.dec_blocks2), start=1):
            # Both branches read the previous layer of the other one (simultaneous update).
            probe_1 = probe(1, layer - 1) if probe else None
            probe_2 = probe(2, layer - 1) if probe else None
            if layer == depth and not heads:
                # Without heads nothing reads the last layer's output: only its readout is taken (pass 1 saves
                # the last cross-attention's values and product and the last MLP, ~5 % of its decoder work).
                if probe_1 is not None and probe_2 is not None:
                    cast(DecoderBlock, block_1).readout(x_1, x_2, pos_1, pos_2, probe=probe_1)
                    cast(DecoderBlock, block_2).readout(x_2, x_1, pos_2, pos_1, probe=probe_2)
                break
            x_1, x_2 = (
                block_1(x_1, x_2, pos_1, pos_2, probe=probe_1, reweight=reweight),
                block_2(x_2, x_1, pos_2, pos_1, probe=probe_2),
            )
            if heads and layer in self._hooks:
                kept_1[layer], kept_2[layer] = x_1, x_2

        pts_1 = conf_1 = pts_2 = conf_2 = None
        extras: dict[str, Tensor] = {}
        if heads:
            kept_1[depth], kept_2[depth] = self.dec_norm(kept_1[depth]), self.dec_norm(kept_2[depth])
            pts_1, conf_1 = self._head(self.downstream_head1, kept_1, enc_1.size)
            pts_2, conf_2 = self._head(self.downstream_head2, kept_2, enc_2.size)
            extras.update(self._extra_outputs(1, self.downstream_head1, kept_1, enc_1.size, conf_1))
            extras.update(self._extra_outputs(2, self.downstream_head2, kept_2, enc_2.size, conf_2))
        return PairPrediction(
            pts3d_1=pts_1,
            conf_1=conf_1,
            pts3d_2=pts_2,
            conf_2=conf_2,
            cross_attn_1=probe.maps(1, enc_2.grid).float() if probe else None,
            cross_attn_2=probe.maps(2, enc_1.grid).float() if probe else None,
            extras=extras,
        )

    def _head(self, head: nn.Module, kept: dict[int, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Points ``(B, H, W, 3)`` and confidences ``(B, H, W)`` (float32) of one view from its kept layers."""
        depth = len(self.dec_blocks)
        last = kept[depth]
        dtype = next(head.parameters()).dtype
        batch = last.shape[0]
        step = self.head_chunk_size or batch
        pts, conf = [], []
        # Heads run outside autocast, like the official inference. Their full-resolution activations dominate peak
        # memory, so the pairs of a batch go through them in chunks.
        with torch.autocast(device_type=last.device.type, enabled=False):
            for s in range(0, batch, step):
                chunk = [t[s : s + step].to(dtype) if t is not None else None for t in map(kept.get, range(depth + 1))]
                p, c = postprocess(head(chunk, size))
                pts.append(p.float())
                conf.append(c.float())
        return torch.cat(pts), torch.cat(conf)
