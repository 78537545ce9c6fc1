"""Prediction heads of DUSt3R: the DPT head, the linear head, and the exp post-processing.

Official ``dust3r/heads/dpt_head.py`` (``DPTOutputAdapter_fix``, ``PixelwiseTaskWithDPT``),
``dust3r/heads/linear_head.py`` (``LinearPts3d``) and ``dust3r/heads/postprocess.py`` (``postprocess``,
``reg_dense_depth``, ``reg_dense_conf``), with the same state-dict names.

Both heads map decoder tokens of one view to a ``(B, 4, H, W)`` raw map (xyz + confidence logit), which
:func:`postprocess` turns into points and confidences:

.. math:: \\mathbf{p} = \\frac{\\mathbf{x}}{\\max(\\lVert\\mathbf{x}\\rVert, 10^{-8})}
          \\,(e^{\\lVert\\mathbf{x}\\rVert} - 1), \\qquad c = 1 + e^{x_c}.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..errors import Easi3RRuntimeError

__all__ = ["DPTHead", "LinearHead", "postprocess"]


def postprocess(raw: Tensor) -> tuple[Tensor, Tensor]:
    """``raw (B, 4, H, W)`` -> points ``(B, H, W, 3)`` (depth_mode ('exp', -inf, inf)) and confidence ``(B, H, W)``
    (conf_mode ('exp', 1, inf)), both float32."""
    fmap = rearrange(raw, "b c h w -> b h w c")
    xyz = fmap[..., :3]
    d = xyz.norm(dim=-1, keepdim=True)
    pts = xyz / d.clip(min=1e-8) * torch.expm1(d)
    conf = 1 + fmap[..., 3].exp()
    return pts, conf


class _ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv2(F.relu(self.conv1(F.relu(x)))) + x
        return out


class _FusionBlock(nn.Module):
    """RefineNet fusion: ``out_conv(up2(rcu2(a [+ rcu1(b)])))`` with align_corners=True upsampling."""

    def __init__(self, features: int) -> None:
        super().__init__()
        # out_conv first: the official key order lists it before the residual units.
        self.out_conv = nn.Conv2d(features, features, 1, bias=True)
        self.resConfUnit1 = _ResidualConvUnit(features)
        self.resConfUnit2 = _ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        out: Tensor = self.out_conv(x)
        return out


class _Scratch(nn.Module):
    def __init__(self, layer_dims: tuple[int, ...], features: int) -> None:
        super().__init__()
        self.layer1_rn = nn.Conv2d(layer_dims[0], features, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(layer_dims[1], features, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(layer_dims[2], features, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(layer_dims[3], features, 3, padding=1, bias=False)
        # The official module also lists the same convs as ``layer_rn.{0..3}``: checkpoints carry both names.
        self.layer_rn = nn.ModuleList([self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn])
        self.refinenet1 = _FusionBlock(features)
        self.refinenet2 = _FusionBlock(features)
        self.refinenet3 = _FusionBlock(features)
        self.refinenet4 = _FusionBlock(features)


class _Interpolate(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class _DPT(nn.Module):
    def __init__(
        self, token_dims: tuple[int, ...], layer_dims: tuple[int, ...], features: int, last_dim: int, out_channels: int
    ) -> None:
        super().__init__()
        self.scratch = _Scratch(layer_dims, features)
        self.head = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1),
            _Interpolate(),
            nn.Conv2d(features // 2, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, out_channels, 1),
        )
        self.act_postprocess = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(token_dims[0], layer_dims[0], 1),
                    nn.ConvTranspose2d(layer_dims[0], layer_dims[0], 4, stride=4),
                ),
                nn.Sequential(
                    nn.Conv2d(token_dims[1], layer_dims[1], 1),
                    nn.ConvTranspose2d(layer_dims[1], layer_dims[1], 2, stride=2),
                ),
                nn.Sequential(nn.Conv2d(token_dims[2], layer_dims[2], 1)),
                nn.Sequential(
                    nn.Conv2d(token_dims[3], layer_dims[3], 1),
                    nn.Conv2d(layer_dims[3], layer_dims[3], 3, stride=2, padding=1),
                ),
            ]
        )


class DPTHead(nn.Module):
    """DPT head on four hooked token maps (state-dict prefix ``dpt.``).

    Args:
        enc_dim: encoder width (hook 0 is the encoder output). dec_dim: decoder width (the other hooks).
        dec_depth: number of decoder layers L; hooks are ``[0, L*2//4, L*3//4, L]`` into
            ``[encoder, dec_1, ..., dec_{L-1}, dec_norm(dec_L)]``.
        patch_size: token size in pixels.
        channels_last: run the convolutions on channels-last (NHWC) activations. Same maths, other kernels: the
            raw output moves by float32 rounding (1.1e-5 absolute at most on random ViT-L tokens); 1.19x faster and
            0.75x the peak memory for one ViT-L view at 512x336 on CPU (``benchmarks/bench_heads.py``). False is the
            reference (the official NCHW layout).
    """

    layer_dims = (96, 192, 384, 768)
    features = 256
    last_dim = 128

    def __init__(
        self,
        enc_dim: int,
        dec_dim: int,
        dec_depth: int,
        patch_size: int = 16,
        out_channels: int = 4,
        *,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.hooks = (0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth)
        self.patch_size = patch_size
        self.channels_last = channels_last
        self.dpt = _DPT(
            (enc_dim, dec_dim, dec_dim, dec_dim), self.layer_dims, self.features, self.last_dim, out_channels
        )
        if channels_last:
            # CPU (oneDNN) and cuDNN pick their NHWC kernels from the weights' layout, not only the input's. Loading a
            # checkpoint (``load_state_dict(assign=True)``) replaces the weights, so the layout is set again after it.
            self._to_channels_last()
            self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]  # untyped in torch
                lambda module, _keys: module._to_channels_last()
            )

    @torch.no_grad()
    def _to_channels_last(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)

    def forward(self, tokens: Sequence[Tensor | None], size: tuple[int, int]) -> Tensor:
        """Raw ``(B, 4, H, W)`` map of images of ``size = (H, W)`` pixels.

        Args:
            tokens: the ``L+1`` per-layer token maps ``(B, N, C_l)``, ``N = (H / p) * (W / p)`` row-major; only the
                hooked entries are read (the others may be None).
        """
        h, w = size[0] // self.patch_size, size[1] // self.patch_size
        dpt = self.dpt
        layers = []
        for i, hook in enumerate(self.hooks):
            x = tokens[hook]
            if x is None:
                raise Easi3RRuntimeError(f"DPT head: decoder layer {hook} was not kept")
            # Not einops: this transpose + reshape gives a size-1 batch dimension other strides than
            # ``rearrange``, which selects another convolution kernel (last-bit differences) in the DPT layers.
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            layers.append(dpt.scratch.layer_rn[i](dpt.act_postprocess[i](x)))
        # Crop: with an odd token grid the stride-2 level upsamples one row/column too many.
        path = dpt.scratch.refinenet4(layers[3])[:, :, : layers[2].shape[2], : layers[2].shape[3]]
        path = dpt.scratch.refinenet3(path, layers[2])
        path = dpt.scratch.refinenet2(path, layers[1])
        path = dpt.scratch.refinenet1(path, layers[0])
        out: Tensor = dpt.head(path)
        return out


class LinearHead(nn.Module):
    """Linear head: one ``Linear(dec_dim -> 4 * p^2)`` per token, pixel-shuffled to full resolution."""

    def __init__(self, dec_dim: int, patch_size: int = 16, out_channels: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(dec_dim, out_channels * patch_size**2)

    def forward(self, tokens: Sequence[Tensor | None], size: tuple[int, int]) -> Tensor:
        """Raw ``(B, 4, H, W)`` map of images of ``size = (H, W)`` pixels from the last entry of ``tokens``, the
        ``(B, N, C)`` normed last decoder layer (``N = (H / p) * (W / p)`` row-major)."""
        last = tokens[-1]
        if last is None:
            raise Easi3RRuntimeError("linear head: the last decoder layer was not kept")
        h, w = size[0] // self.patch_size, size[1] // self.patch_size
        x = self.proj(last)
        # Not einops: see DPTHead.forward (the strides of a size-1 batch, hence the kernels after, would change).
        x = x.transpose(-1, -2).reshape(x.shape[0], -1, h, w)
        return F.pixel_shuffle(x, self.patch_size)
