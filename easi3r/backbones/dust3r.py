"""The DUSt3R / MonST3R network (``AsymmetricCroCo3DStereo``) as an Easi3R :class:`~easi3r.backbones.base.Backbone`.

Layer names and order follow the official state dict exactly, so official checkpoints load without renaming.
MonST3R is the same graph with other weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .base import Backbone, CrossAttentionReadout, EncodedImages, PairPrediction
from .heads import DPTHead, LinearHead, postprocess
from .layers import Block, DecoderBlock, PatchEmbed, RoPE2D, check_head_dim

__all__ = ["DUSt3R", "DUSt3RConfig"]


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
        if self.head_type not in ("dpt", "linear"):
            raise CheckpointError(f"unsupported head_type {self.head_type!r} (expected 'dpt' or 'linear')")
        if self.head_type == "dpt" and self.dec_depth < 4:
            raise CheckpointError(f"a DPT head needs at least 4 decoder layers, got dec_depth={self.dec_depth}")
        try:
            check_head_dim(self.enc_embed_dim, self.enc_num_heads)
            check_head_dim(self.dec_embed_dim, self.dec_num_heads)
        except ValueError as err:
            raise CheckpointError(str(err)) from None

    # -- conversion from / to the official constructor keyword arguments ------------------------------------------
    @classmethod
    def from_official(cls, kwargs: dict[str, Any]) -> DUSt3RConfig:
        """Build from the official ``AsymmetricCroCo3DStereo`` keyword arguments (``args.model`` or ``config.json``).

        Options that only matter for training (``freeze``, ``landscape_only``, ``patch_embed_cls``, ``mask_ratio``) are
        accepted and ignored; options that change the computation in ways this class does not implement raise
        :class:`CheckpointError`.
        """
        kw = dict(kwargs)
        pos_embed = str(kw.pop("pos_embed", "RoPE100"))
        if not pos_embed.startswith("RoPE"):
            raise CheckpointError(f"unsupported pos_embed {pos_embed!r}: only RoPE position embeddings are implemented")
        rope_base = float(pos_embed[4:] or 100)
        output_mode = kw.pop("output_mode", "pts3d")
        if output_mode != "pts3d":
            raise CheckpointError(f"unsupported output_mode {output_mode!r} (expected 'pts3d')")
        depth_mode = tuple(kw.pop("depth_mode", ("exp", -math.inf, math.inf)))
        if depth_mode[0] != "exp" or not (math.isinf(depth_mode[1]) and math.isinf(depth_mode[2])):
            raise CheckpointError(f"unsupported depth_mode {depth_mode!r} (expected ('exp', -inf, inf))")
        conf_mode = tuple(kw.pop("conf_mode", ("exp", 1, math.inf)))
        if conf_mode[0] != "exp" or conf_mode[1] != 1 or not math.isinf(conf_mode[2]):
            raise CheckpointError(f"unsupported conf_mode {conf_mode!r} (expected ('exp', 1, inf))")
        for ignored in ("freeze", "landscape_only", "patch_embed_cls", "mask_ratio", "norm_im2_in_dec"):
            kw.pop(ignored, None)
        img_size = kw.pop("img_size", (512, 512))
        if isinstance(img_size, int):
            img_size = (img_size, img_size)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise CheckpointError(f"unsupported model option(s): {', '.join(unknown)}")
        return cls(img_size=tuple(img_size), rope_base=rope_base, **kw)

    def to_official(self) -> dict[str, Any]:
        """The official ``config.json`` keyword arguments for this architecture."""
        kw = asdict(self)
        rope = kw.pop("rope_base")
        kw.update(
            pos_embed=f"RoPE{rope:g}",
            output_mode="pts3d",
            depth_mode=["exp", -math.inf, math.inf],
            conf_mode=["exp", 1, math.inf],
            patch_embed_cls="PatchEmbedDust3R",
            landscape_only=False,
            freeze="none",
            img_size=list(self.img_size),
        )
        return kw


class DUSt3R(Backbone):
    """DUSt3R / MonST3R pointmap network.

    Args:
        config: the architecture (:class:`DUSt3RConfig`); build pretrained ones with :func:`easi3r.load_backbone`.

    Example:
        >>> net = DUSt3R(DUSt3RConfig(enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=48,
        ...                           dec_depth=4, dec_num_heads=4))
        >>> enc = net.encode(torch.zeros(2, 3, 64, 96))
        >>> pred = net.forward_pair(enc[0], enc[1])
        >>> pred.pts3d_1.shape, pred.cross_attn_1.shape
        (torch.Size([1, 64, 96, 3]), torch.Size([1, 4, 6, 16]))
    """

    #: Pairs per head evaluation (None: the whole batch). The heads' full-resolution activations dominate the
    #: memory of a forward pass; chunking them costs no speed on CPU and little on GPU.
    head_chunk_size: int | None = 1

    def __init__(self, config: DUSt3RConfig | None = None) -> None:
        super().__init__()
        cfg = config or DUSt3RConfig()
        self.config = cfg
        self.patch_size = cfg.patch_size
        rope = RoPE2D(cfg.rope_base)
        # Registration order (and mask_token as a direct parameter) reproduces the official key order.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_embed_dim))
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.enc_embed_dim)
        self.enc_blocks = nn.ModuleList(
            [Block(cfg.enc_embed_dim, cfg.enc_num_heads, cfg.mlp_ratio, rope) for _ in range(cfg.enc_depth)]
        )
        self.enc_norm = nn.LayerNorm(cfg.enc_embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(cfg.enc_embed_dim, cfg.dec_embed_dim)
        self.dec_blocks = nn.ModuleList(
            [DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio, rope) for _ in range(cfg.dec_depth)]
        )
        self.dec_norm = nn.LayerNorm(cfg.dec_embed_dim, eps=1e-6)
        self.dec_blocks2 = nn.ModuleList(
            [DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio, rope) for _ in range(cfg.dec_depth)]
        )
        if cfg.head_type == "dpt":
            self.downstream_head1 = DPTHead(cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.dec_depth, cfg.patch_size)
            self.downstream_head2 = DPTHead(cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.dec_depth, cfg.patch_size)
            self._hooks = set(self.downstream_head1.hooks)
        else:
            self.downstream_head1 = LinearHead(cfg.dec_embed_dim, cfg.patch_size)
            self.downstream_head2 = LinearHead(cfg.dec_embed_dim, cfg.patch_size)
            self._hooks = {cfg.dec_depth}

    @property
    def attention_channels(self) -> int:
        return self.config.dec_depth * self.config.dec_num_heads

    def set_fused_attention(self, fused: bool) -> None:
        """Switch every attention between ``scaled_dot_product_attention`` (True) and the explicit reference."""
        for module in self.modules():
            if hasattr(module, "fused"):
                module.fused = fused

    # -- encoder -------------------------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> EncodedImages:
        """``images (B, 3, H, W)`` in [-1, 1] -> encoder tokens after ``enc_norm`` (:class:`EncodedImages`)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x, pos = self.patch_embed(images.to(self.dtype))
        for block in self.enc_blocks:
            x = block(x, pos)
        return EncodedImages(self.enc_norm(x), pos, (images.shape[-2], images.shape[-1]), self.patch_size)

    # -- decoders + heads ----------------------------------------------------------------------------------------
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
        """See :meth:`Backbone.forward_pair`. ``probe`` replaces the default readout recorder (e.g. a
        :class:`~easi3r.backbones.base.ScoreMatrixRecorder`)."""
        enc1 = view1 if isinstance(view1, EncodedImages) else self.encode(view1)
        enc2 = view2 if isinstance(view2, EncodedImages) else self.encode(view2)
        if len(enc1) != len(enc2):
            raise ValueError(f"view batches differ in size: {len(enc1)} vs {len(enc2)}")
        query_dynamic = key_dynamic = None
        if (dynamic_mask1 is None) != (dynamic_mask2 is None):
            raise ValueError("re-weighting needs both dynamic_mask1 and dynamic_mask2 (or neither)")
        if dynamic_mask1 is not None:
            from ..reweight import token_masks  # the mask -> token rule lives with the re-weighting step

            query_dynamic = token_masks(dynamic_mask1.to(enc1.tokens.device), self.patch_size)
            key_dynamic = token_masks(dynamic_mask2.to(enc2.tokens.device), self.patch_size)
        if probe is None and readout:
            probe = CrossAttentionReadout()

        f1, f2 = self.decoder_embed(enc1.tokens), self.decoder_embed(enc2.tokens)
        p1, p2 = enc1.positions, enc2.positions
        keep1: dict[int, Tensor] = {0: enc1.tokens}
        keep2: dict[int, Tensor] = {0: enc2.tokens}
        depth = len(self.dec_blocks)
        for layer, (blk1, blk2) in enumerate(zip(self.dec_blocks, self.dec_blocks2), start=1):
            # Both branches read the previous layer of the other one (simultaneous update).
            n1 = blk1(
                f1,
                f2,
                p1,
                p2,
                probe=probe(1, layer - 1) if probe else None,
                query_dynamic=query_dynamic,
                key_dynamic=key_dynamic,
            )
            n2 = blk2(f2, f1, p2, p1, probe=probe(2, layer - 1) if probe else None)
            f1, f2 = n1, n2
            if heads and layer in self._hooks:
                keep1[layer], keep2[layer] = f1, f2

        pts1 = conf1 = pts2 = conf2 = None
        if heads:
            keep1[depth], keep2[depth] = self.dec_norm(keep1[depth]), self.dec_norm(keep2[depth])
            pts1, conf1 = self._head(self.downstream_head1, keep1, enc1.image_size)
            pts2, conf2 = self._head(self.downstream_head2, keep2, enc2.image_size)

        h, w = enc1.grid
        return PairPrediction(
            pts3d_1=pts1,
            conf_1=conf1,
            pts3d_2=pts2,
            conf_2=conf2,
            cross_attn_1=probe.maps(1, enc2.grid).float() if probe else None,
            cross_attn_2=probe.maps(2, enc1.grid).float() if probe else None,
            features_1=enc1.tokens.reshape(len(enc1), h, w, -1).float(),
        )

    def _head(self, head: nn.Module, kept: dict[int, Tensor], image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        depth = len(self.dec_blocks)
        tokens = [kept.get(i) for i in range(depth + 1)]
        dtype = next(head.parameters()).dtype
        batch = tokens[depth].shape[0]
        step = self.head_chunk_size or batch
        pts, conf = [], []
        # Heads run outside autocast, like the official inference. Their full-resolution activations dominate peak
        # memory, so the pairs of a batch go through them in chunks.
        with torch.autocast(device_type=tokens[depth].device.type, enabled=False):
            for s in range(0, batch, step):
                chunk = [t[s : s + step].to(dtype) if t is not None else None for t in tokens]
                p, c = postprocess(head(chunk, image_size))
                pts.append(p.float())
                conf.append(c.float())
        return torch.cat(pts), torch.cat(conf)
