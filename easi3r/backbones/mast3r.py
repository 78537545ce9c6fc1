"""The MASt3R network (official ``mast3r/model.py`` ``AsymmetricMASt3R``) as an Easi3R backbone.

MASt3R is DUSt3R's encoder and two decoders with one more output per view: next to the DPT point head, a
local-feature MLP on the concatenated encoder and last-decoder tokens predicts dense descriptors and their
confidence (official ``mast3r/catmlp_dpt_head.py`` ``Cat_MLP_LocalFeatures_DPT_Pts3d``). It is trained on metric
data, so its pointmaps are metric (:attr:`MASt3R.metric`). Everything Easi3R reads (points, confidences, the
cross-attention readout, the encoder features) comes from the DUSt3R code this class inherits; only the
descriptor branch is added here. State-dict names and order equal the official ones.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError
from .dust3r import DUSt3R, DUSt3RConfig, check_positive_int
from .heads import DPTHead
from .layers import Mlp

__all__ = ["CatMLPDPTHead", "MASt3R", "MASt3RConfig", "postprocess_descriptors"]

_OUTPUT_MODE = re.compile(r"pts3d\+desc(\d+)")


@dataclass(frozen=True)
class MASt3RConfig(DUSt3RConfig):
    """Architecture of a MASt3R network (defaults: the released ``MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric``).

    The encoder/decoder fields are those of :class:`DUSt3RConfig`; ``head_type`` is ``"catmlp+dpt"``.

    Attributes:
        local_feat_dim: descriptor channels ``D`` (official ``output_mode='pts3d+desc<D>'``).
        two_confs: the MLP predicts its own descriptor confidence (True), or the descriptor confidence is a copy of
            the point confidence (False, the official default).
        desc_conf_mode: ``("exp", vmin, vmax)``: descriptor confidence ``vmin + min(exp(x), vmax - vmin)``
            (official ``dust3r/heads/postprocess.py`` ``reg_dense_conf``).
        desc_mode: ``"norm"``: descriptors are divided by their L2 norm (official ``reg_desc``).
    """

    head_type: str = "catmlp+dpt"
    local_feat_dim: int = 24
    two_confs: bool = True
    desc_conf_mode: tuple[str, float, float] = ("exp", 0.0, math.inf)
    desc_mode: str = "norm"

    def __post_init__(self) -> None:
        if self.head_type != "catmlp+dpt":
            raise CheckpointError(f"unsupported head_type {self.head_type!r} (expected 'catmlp+dpt')")
        self.dust3r_config()  # validates the shared encoder/decoder fields (types, head dims, DPT depth)
        check_positive_int(self.local_feat_dim, "local_feat_dim")
        if not isinstance(self.two_confs, bool):
            raise CheckpointError(f"two_confs must be a bool, got {self.two_confs!r}")
        mode = self.desc_conf_mode
        if not (
            isinstance(mode, tuple)
            and len(mode) == 3
            and mode[0] == "exp"
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mode[1:])
            and mode[1] < mode[2]
        ):
            raise CheckpointError(f"unsupported desc_conf_mode {mode!r} (expected ('exp', vmin, vmax), vmin < vmax)")
        if self.desc_mode != "norm":
            raise CheckpointError(f"unsupported desc_mode {self.desc_mode!r} (expected 'norm')")

    def dust3r_config(self) -> DUSt3RConfig:
        """The shared encoder/decoder architecture as a :class:`DUSt3RConfig` with the DPT point head."""
        shared = {f.name: getattr(self, f.name) for f in fields(DUSt3RConfig)}
        return DUSt3RConfig(**{**shared, "head_type": "dpt"})

    @classmethod
    def from_official(cls, kwargs: dict[str, Any]) -> MASt3RConfig:
        """Build from the official ``AsymmetricMASt3R`` keyword arguments (``args.model`` or ``config.json``).

        Missing MASt3R options take the official constructor defaults (``two_confs=False``, ``desc_mode='norm'``,
        ``desc_conf_mode=None``, i.e. the point ``conf_mode``); the other options are read as
        :meth:`DUSt3RConfig.from_official` does.

        Raises:
            CheckpointError: a head other than ``'catmlp+dpt'``, an ``output_mode`` other than ``'pts3d+desc<D>'``,
                or any option :class:`MASt3RConfig` / :class:`DUSt3RConfig` does not implement (named in the message).
        """
        kw = dict(kwargs)
        head_type = kw.pop("head_type", "linear")
        if head_type != "catmlp+dpt":
            raise CheckpointError(f"unsupported head_type {head_type!r} (expected 'catmlp+dpt')")
        output_mode = kw.pop("output_mode", "pts3d")
        match = _OUTPUT_MODE.fullmatch(output_mode) if isinstance(output_mode, str) else None
        if match is None:
            raise CheckpointError(f"unsupported output_mode {output_mode!r} (expected 'pts3d+desc<D>')")
        desc_mode = kw.pop("desc_mode", "norm")
        # The official reg_desc tests ``'norm' in mode``; ('norm') in a model string is the plain string.
        if not isinstance(desc_mode, (str, tuple, list)) or "norm" not in desc_mode:
            raise CheckpointError(f"unsupported desc_mode {desc_mode!r} (expected 'norm')")
        two_confs = kw.pop("two_confs", False)
        desc_conf_mode = kw.pop("desc_conf_mode", None)
        if desc_conf_mode is None:  # official AsymmetricMASt3R.set_downstream_head: fall back to conf_mode
            desc_conf_mode = kw.get("conf_mode", ("exp", 1, math.inf))
        if isinstance(desc_conf_mode, list):
            desc_conf_mode = tuple(desc_conf_mode)
        if (
            isinstance(desc_conf_mode, tuple)
            and len(desc_conf_mode) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in desc_conf_mode[1:])
        ):
            desc_conf_mode = (desc_conf_mode[0], *(float(v) for v in desc_conf_mode[1:]))
        base = DUSt3RConfig.from_official({**kw, "head_type": "dpt"})
        shared = {f.name: getattr(base, f.name) for f in fields(DUSt3RConfig)}
        return cls(
            **{**shared, "head_type": "catmlp+dpt"},
            local_feat_dim=int(match.group(1)),
            two_confs=two_confs,
            desc_conf_mode=desc_conf_mode,
            desc_mode="norm",
        )


class CatMLPDPTHead(DPTHead):
    """The ``catmlp+dpt`` head (official ``mast3r/catmlp_dpt_head.py`` ``Cat_MLP_LocalFeatures_DPT_Pts3d``).

    :meth:`forward` is the inherited DPT point branch (raw ``(B, 4, H, W)``: xyz + confidence logit);
    :meth:`local_features` the descriptor branch ``head_local_features``.

    Args:
        enc_dim, dec_dim, dec_depth, patch_size: as :class:`~easi3r.backbones.heads.DPTHead`.
        local_feat_dim: descriptor channels ``D``.
        two_confs: one more MLP output channel for the descriptor confidence.
        hidden_factor: MLP hidden width / input width (official ``hidden_dim_factor=4.``).
    """

    def __init__(
        self,
        enc_dim: int,
        dec_dim: int,
        dec_depth: int,
        patch_size: int,
        local_feat_dim: int,
        two_confs: bool,
        hidden_factor: float = 4.0,
    ) -> None:
        super().__init__(enc_dim, dec_dim, dec_depth, patch_size)
        width = enc_dim + dec_dim
        self.local_feat_dim = local_feat_dim
        self.two_confs = two_confs
        self.head_local_features = Mlp(
            width, int(hidden_factor * width), (local_feat_dim + int(two_confs)) * patch_size**2
        )

    def local_features(self, encoder: Tensor, decoder: Tensor, size: tuple[int, int]) -> Tensor:
        """Raw descriptor map ``(B, D + two_confs, H, W)`` from the encoder tokens ``(B, N, C_enc)`` and the
        normalised last decoder tokens ``(B, N, C_dec)`` of one view; ``size`` is the image ``(H, W)`` in pixels."""
        x = self.head_local_features(torch.cat([encoder, decoder], dim=-1))
        h, w = size[0] // self.patch_size, size[1] // self.patch_size
        x = x.transpose(-1, -2).reshape(x.shape[0], -1, h, w)
        return F.pixel_shuffle(x, self.patch_size)


def postprocess_descriptors(
    raw: Tensor, local_feat_dim: int, desc_conf_mode: tuple[str, float, float] | None
) -> tuple[Tensor, Tensor | None]:
    """Official ``mast3r/catmlp_dpt_head.py`` ``postprocess`` for the descriptor channels.

    Args:
        raw: ``(B, D [+ 1], H, W)`` output of :meth:`CatMLPDPTHead.local_features`.
        local_feat_dim: ``D``.
        desc_conf_mode: ``("exp", vmin, vmax)`` for the confidence channel ``D``, or None when there is none
            (``two_confs=False``).

    Returns:
        Descriptors ``(B, H, W, D)`` divided by their L2 norm (no epsilon, as the official ``reg_desc``), and the
        confidence ``(B, H, W)`` ``vmin + min(exp(x), vmax - vmin)`` or None.
    """
    fmap = raw.permute(0, 2, 3, 1)
    desc = fmap[..., :local_feat_dim]
    desc = desc / desc.norm(dim=-1, keepdim=True)
    if desc_conf_mode is None:
        return desc, None
    _, vmin, vmax = desc_conf_mode
    return desc, vmin + fmap[..., local_feat_dim].exp().clip(max=vmax - vmin)


class MASt3R(DUSt3R):
    """MASt3R pointmap network: DUSt3R's encoder, decoders and readout, ``catmlp+dpt`` heads.

    :meth:`forward_pair` returns a :class:`~easi3r.backbones.base.PairPrediction` whose fields are computed exactly
    as :class:`DUSt3R` does, plus the descriptors in ``extras``: ``desc_1`` / ``desc_2`` ``(B, H, W, D)`` unit-norm
    descriptors of view 1 / view 2 (float32) and ``desc_conf_1`` / ``desc_conf_2`` ``(B, H, W)`` their confidences
    (official ``pred1['desc']``, ``pred1['desc_conf']``, ``pred2['desc']``, ``pred2['desc_conf']``).

    Args:
        config: the architecture (:class:`MASt3RConfig`); load released weights with :func:`easi3r.load_backbone`.
        options: keyword options of :class:`DUSt3R` (e.g. head chunking), passed through.

    Example:
        >>> net = MASt3R(MASt3RConfig(enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32,
        ...                           dec_depth=4, dec_num_heads=4, local_feat_dim=8))
        >>> enc = net.encode(torch.zeros(2, 3, 32, 48))
        >>> pred = net.forward_pair(enc[0], enc[1])
        >>> pred.pts3d_1.shape, pred.extras["desc_1"].shape, pred.extras["desc_conf_2"].shape
        (torch.Size([1, 32, 48, 3]), torch.Size([1, 32, 48, 8]), torch.Size([1, 32, 48]))
    """

    #: MASt3R regresses metric pointmaps (DUSt3R / MonST3R: up to scale).
    metric: bool = True
    config: MASt3RConfig

    def __init__(self, config: MASt3RConfig | None = None, **options: Any) -> None:
        super().__init__(config or MASt3RConfig(), **options)

    @classmethod
    def _config_class(cls) -> type[MASt3RConfig]:
        return MASt3RConfig

    def _make_head(self, cfg: DUSt3RConfig) -> nn.Module:
        """The ``catmlp+dpt`` head (official ``mast3r/catmlp_dpt_head.py`` ``mast3r_head_factory``)."""
        if not isinstance(cfg, MASt3RConfig):  # pragma: no cover - __init__ only passes a MASt3RConfig
            raise CheckpointError(f"MASt3R needs a MASt3RConfig, got {type(cfg).__name__}")
        return CatMLPDPTHead(
            cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.dec_depth, cfg.patch_size, cfg.local_feat_dim, cfg.two_confs
        )

    def _extra_outputs(
        self, view: int, head: nn.Module, kept: dict[int, Tensor], size: tuple[int, int], conf: Tensor
    ) -> dict[str, Tensor]:
        """The descriptor branch of one view: ``desc_<view>`` ``(B, H, W, D)`` and ``desc_conf_<view>``
        ``(B, H, W)``, float32 (see :meth:`DUSt3R._extra_outputs` for the arguments)."""
        if not isinstance(head, CatMLPDPTHead):  # pragma: no cover - _make_head builds only these
            return {}
        tokens = (kept[0], kept[len(self.dec_blocks)])
        dtype = next(head.parameters()).dtype
        # Official AsymmetricCroCo3DStereo.forward runs both head branches in float32 outside autocast.
        with torch.autocast(device_type=tokens[0].device.type, enabled=False):
            raw = head.local_features(tokens[0].to(dtype), tokens[1].to(dtype), size)
            mode = self.config.desc_conf_mode if self.config.two_confs else None
            desc, desc_conf = postprocess_descriptors(raw, self.config.local_feat_dim, mode)
        # two_confs=False: the official postprocess copies the point confidence.
        return {
            f"desc_{view}": desc.float(),
            f"desc_conf_{view}": conf.clone() if desc_conf is None else desc_conf.float(),
        }
