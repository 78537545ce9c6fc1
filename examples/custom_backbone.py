"""Host another pointmap network: subclass the Backbone adapter.

A toy adapter that keeps the DUSt3R encoder/decoder (so Easi3R's attention readout and re-weighting work unchanged)
but replaces the prediction heads with its own: here a linear layer on the embedded encoder tokens that predicts a
depth per token, unprojected with a fixed focal into points (a stand-in for e.g. MASt3R's heads).

    python examples/custom_backbone.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from easi3r import Backbone, Easi3R
from easi3r.backbones import DUSt3R, EncodedImages, PairPrediction
from easi3r.demo import DEMO_ARCHITECTURE, render_video
from easi3r.frames import load_frames


class ToyDepthBackbone(Backbone):
    """DUSt3R's encoder and decoders with a per-token depth head."""

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

    def _points(self, depth_tokens: Tensor, image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        b = depth_tokens.shape[0]
        h, w = image_size[0] // self.patch_size, image_size[1] // self.patch_size
        depth = 2.0 + torch.tanh(depth_tokens.reshape(b, 1, h, w))  # metres, in [1, 3]
        depth = F.interpolate(depth, size=image_size, mode="bilinear", align_corners=False)[:, 0]
        ys, xs = torch.meshgrid(
            torch.arange(image_size[0], device=depth.device),
            torch.arange(image_size[1], device=depth.device),
            indexing="ij",
        )
        rays = torch.stack(
            [
                (xs - image_size[1] / 2) / self.focal,
                (ys - image_size[0] / 2) / self.focal,
                torch.ones_like(xs, dtype=torch.float32),
            ],
            dim=-1,
        )
        return rays * depth[..., None], torch.full_like(depth, 2.0)

    def forward_pair(
        self, view1, view2, *, dynamic_mask1=None, dynamic_mask2=None, heads=True, readout=True, probe=None
    ) -> PairPrediction:
        enc1 = view1 if isinstance(view1, EncodedImages) else self.encode(view1)
        enc2 = view2 if isinstance(view2, EncodedImages) else self.encode(view2)
        # The inner network runs the decoders (with the readout probe and the re-weighting); its heads are skipped.
        pred = self.inner.forward_pair(
            enc1,
            enc2,
            dynamic_mask1=dynamic_mask1,
            dynamic_mask2=dynamic_mask2,
            heads=False,
            readout=readout,
            probe=probe,
        )
        if heads:
            # A toy head on the embedded encoder tokens (a real adapter would read the decoder tokens it needs).
            tokens1 = self.inner.decoder_embed(enc1.tokens)
            tokens2 = self.inner.decoder_embed(enc2.tokens)
            pred.pts3d_1, pred.conf_1 = self._points(self.depth_head(tokens1), enc1.image_size)
            pred.pts3d_2, pred.conf_2 = self._points(self.depth_head(tokens2), enc2.image_size)
        return pred


if __name__ == "__main__":
    torch.manual_seed(0)
    frames = load_frames(render_video(5).frames, size=256)
    toy = ToyDepthBackbone(DUSt3R(DEMO_ARCHITECTURE)).eval()
    rec = Easi3R(backbone=toy, device="cpu", image_size=256, iterations=20, flow=False).run(frames)
    print("toy backbone:", rec.num_frames, "frames, depths in", float(rec.depths.min()), float(rec.depths.max()))
