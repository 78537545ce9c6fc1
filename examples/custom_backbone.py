"""Host another pointmap network: subclass the Backbone adapter.

A toy adapter that keeps the DUSt3R encoder/decoder (so Easi3R's attention readout and re-weighting work unchanged)
but replaces the prediction heads with its own: here a linear layer on the embedded encoder tokens that predicts a
depth per token, unprojected with a fixed focal into points (a stand-in for e.g. MASt3R's heads).

    python examples/custom_backbone.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from easi3r import Backbone, Easi3R
from easi3r.backbones import CrossAttentionReadout, DUSt3R, EncodedImages, PairPrediction, TokenMasks
from easi3r.demo import DEMO_ARCHITECTURE, render_video
from easi3r.frames import load_frames


class ToyDepthBackbone(Backbone):
    """DUSt3R's encoder and decoders with a per-token depth head.

    An adapter implements :meth:`Backbone.encode` and :meth:`Backbone.decode`; the inherited
    :meth:`Backbone.forward_pair` (what Easi3R calls) validates the pair and the masks and calls ``decode``.
    """

    def __init__(self, inner: DUSt3R, focal: float = 256.0) -> None:
        super().__init__()
        self.inner = inner
        self.patch_size = inner.patch_size
        self.focal = focal
        self.depth_head = nn.Linear(inner.config.dec_embed_dim, 1)

    @property
    def attention_channels(self) -> int:
        return self.inner.attention_channels

    def encode(self, images: Tensor) -> EncodedImages:
        return self.inner.encode(images)

    def _points(self, depth_tokens: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Points ``(B, H, W, 3)`` and confidences ``(B, H, W)`` of images of ``size = (H, W)`` from ``(B, N, 1)``
        per-token depth logits."""
        h, w = size[0] // self.patch_size, size[1] // self.patch_size
        depth = 2.0 + torch.tanh(rearrange(depth_tokens, "b (h w) 1 -> b 1 h w", h=h, w=w))  # metres, in [1, 3]
        depth = F.interpolate(depth, size=size, mode="bilinear", align_corners=False)[:, 0]
        ys, xs = torch.meshgrid(
            torch.arange(size[0], device=depth.device),
            torch.arange(size[1], device=depth.device),
            indexing="ij",
        )
        rays = torch.stack(
            [
                (xs - size[1] / 2) / self.focal,
                (ys - size[0] / 2) / self.focal,
                torch.ones_like(xs, dtype=torch.float32),
            ],
            dim=-1,
        )
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
        # Backbone.forward_pair has checked the inputs and turned the masks into token masks. The inner network runs
        # the decoders (with the readout probe and the re-weighting); its heads are skipped.
        pred = self.inner.decode(enc_1, enc_2, reweight=reweight, heads=False, probe=probe)
        if heads:
            # A toy head on the embedded encoder tokens (a real adapter would read the decoder tokens it needs).
            tokens_1 = self.inner.decoder_embed(enc_1.tokens)
            tokens_2 = self.inner.decoder_embed(enc_2.tokens)
            pred.pts3d_1, pred.conf_1 = self._points(self.depth_head(tokens_1), enc_1.size)
            pred.pts3d_2, pred.conf_2 = self._points(self.depth_head(tokens_2), enc_2.size)
        return pred


if __name__ == "__main__":
    torch.manual_seed(0)
    frames = load_frames(render_video(5).frames, size=256)
    toy = ToyDepthBackbone(DUSt3R(DEMO_ARCHITECTURE)).eval()
    rec = Easi3R(backbone=toy, device="cpu", image_size=256, iterations=20, flow=False).run(frames)
    print("toy backbone:", rec.num_frames, "frames, depths in", float(rec.depths.min()), float(rec.depths.max()))
