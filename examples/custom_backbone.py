"""A third-party backbone adapter that registers itself by name, then runs Easi3R through that name.

The adapter wraps any DUSt3R-family :class:`~easi3r.backbones.base.Backbone` through its public ``encode`` /
``decode`` only (so Easi3R's attention readout and re-weighting work unchanged), skips the wrapped heads and puts its
own in their place: a parameter-free toy head that turns each encoder token into a depth in [1, 3] metres and
unprojects it with a fixed focal (a stand-in for another family's heads). Registering it with
:func:`easi3r.backbones.register_backbone` makes ``Easi3R("toy-depth")`` and ``easi3r.load_backbone("toy-depth")``
work without editing easi3r. It runs on the tiny random checkpoint of the test data (no download)::

    python examples/custom_backbone.py
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from easi3r import Backbone, Easi3R, load_backbone
from easi3r.backbones import (
    CrossAttentionReadout,
    EncodedImages,
    PairPrediction,
    Preprocessing,
    TokenMasks,
    register_backbone,
)

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "reference"


class ToyDepthBackbone(Backbone):
    """Wraps a backbone's encoder and decoders and predicts points with a toy per-token depth head.

    An adapter implements :meth:`Backbone.encode` and :meth:`Backbone.decode`; the inherited
    :meth:`Backbone.forward_pair` (what Easi3R calls) validates the pair and the masks and calls ``decode``.

    Args:
        inner: the wrapped network (its heads are not run).
        focal: focal length of the toy unprojection, in pixels.
    """

    metric = True  # the toy depths are "metres"

    def __init__(self, inner: Backbone, focal: float = 64.0) -> None:
        super().__init__()
        self.inner = inner
        self.patch_size = inner.patch_size
        self.focal = focal

    @property
    def attention_channels(self) -> int:
        return self.inner.attention_channels

    def encode(self, images: Tensor) -> EncodedImages:
        return self.inner.encode(images)

    def _points(self, enc: EncodedImages) -> tuple[Tensor, Tensor]:
        """Points ``(B, H, W, 3)`` (metres, camera frame) and confidences ``(B, H, W)`` from the encoder tokens."""
        size = enc.size
        logits = rearrange(enc.tokens.float().mean(dim=-1), "b (h w) -> b 1 h w", h=enc.grid[0], w=enc.grid[1])
        depth = 2.0 + torch.tanh(logits)
        depth = F.interpolate(depth, size=size, mode="bilinear", align_corners=False)[:, 0]
        ys, xs = torch.meshgrid(
            torch.arange(size[0], device=depth.device, dtype=torch.float32),
            torch.arange(size[1], device=depth.device, dtype=torch.float32),
            indexing="ij",
        )
        rays = torch.stack([(xs - size[1] / 2) / self.focal, (ys - size[0] / 2) / self.focal, torch.ones_like(xs)], -1)
        return rays * depth[..., None], torch.full_like(depth, 2.0)

    def decode(
        self,
        enc_1: EncodedImages,
        enc_2: EncodedImages,
        *,
        reweight: TokenMasks | None,
        heads: bool,
        probe: CrossAttentionReadout | None,
    ) -> PairPrediction:
        # forward_pair has checked the inputs and turned the masks into token masks. The wrapped network runs its
        # decoders (with the readout probe and the re-weighting); its heads are skipped.
        pred = self.inner.decode(enc_1, enc_2, reweight=reweight, heads=False, probe=probe)
        if heads:
            pred.pts3d_1, pred.conf_1 = self._points(enc_1)
            pts_2, pred.conf_2 = self._points(enc_2)
            pred.pts3d_2 = pts_2 + torch.tensor([0.1, 0.0, 0.0])  # "view 2 in view 1's frame": a toy baseline
        return pred


@register_backbone("toy-depth", preprocessing=Preprocessing(image_size=64), metric=True, size="2 MB", license="MIT")
def toy_depth() -> Backbone:
    """The registry entry's factory: a ready network (here the wrapped tiny test checkpoint)."""
    return ToyDepthBackbone(load_backbone(DATA / "tiny_dust3r.pth", "cpu"))


if __name__ == "__main__":
    frames = [DATA / "frames" / f"frame_{k:02d}.png" for k in range(4)]
    pipeline = Easi3R("toy-depth", device="cpu", image_size=64, iterations=5, flow=False, clusters=8)
    rec = pipeline.run(frames, progress=False)
    print(
        f"toy-depth (metric={pipeline.backbone.metric}, preprocessing={pipeline.backbone.preprocessing.image_size}px):",
        rec.num_frames,
        "frames, depths in",
        round(float(rec.depths.min()), 3),
        round(float(rec.depths.max()), 3),
    )
