"""An offline end-to-end check: a rendered synthetic video and a small **randomly initialised** backbone.

Nothing here needs a download. The masks and geometry this produces are **not meaningful**: the network's weights are
random. Its only learned-looking part is the last linear layer of each head, fitted in closed form (ridge regression)
so that the pointmaps describe a plausible fronto-parallel plane; without that, random pointmaps make the focal
estimate degenerate and the alignment has nothing to align. The demo proves that every stage runs and every output
file is written on a machine without network access.

The scene: a textured background plane at depth 5, a camera translating (and slightly turning) in front of it, and
an independently moving textured square at depth 3. Camera convention: OpenCV (x right, y down, z forward).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from .backbones.base import EncodedImages
from .backbones.dust3r import DUSt3R, DUSt3RConfig
from .errors import Easi3RInputError

__all__ = ["SyntheticVideo", "demo_backbone", "render_video", "run_demo"]

#: Architecture of the demo network: tiny encoder/decoder, linear heads (cheap on CPU).
DEMO_ARCHITECTURE = DUSt3RConfig(
    enc_embed_dim=64,
    enc_depth=4,
    enc_num_heads=4,
    dec_embed_dim=48,
    dec_depth=6,
    dec_num_heads=4,
    head_type="linear",
)


@dataclass
class SyntheticVideo:
    """A rendered clip with its ground truth.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB.
        depths: ``(T, H, W)`` float32 z-depth.
        masks: ``(T, H, W)`` bool, True on the moving square.
        cam2world: ``(T, 4, 4)`` float64 camera-to-world (OpenCV convention).
        intrinsics: ``(3, 3)`` float64 pinhole matrix.
    """

    frames: NDArray[np.uint8]
    depths: NDArray[np.float32]
    masks: NDArray[np.bool_]
    cam2world: NDArray[np.float64]
    intrinsics: NDArray[np.float64]


def _texture(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    r = 0.5 + 0.25 * np.sin(7.0 * x) + 0.25 * np.sin(5.0 * y + 1.0)
    g = 0.5 + 0.3 * np.sin(4.0 * x + 3.0 * y)
    checker = ((np.floor(3 * x) + np.floor(3 * y)) % 2).astype(np.float64)
    b = 0.3 + 0.4 * checker
    return np.stack([r, g, b], axis=-1)


def render_video(num_frames: int = 6, width: int = 256, height: int = 192, *, seed: int = 0) -> SyntheticVideo:
    """Render the demo scene by ray casting (numpy only).

    Args:
        num_frames: frames T (>= 1). width, height: image size in pixels (>= 16 each).
        seed: jitter of the camera path (a local generator; the global numpy state is untouched).

    Returns:
        The clip: frames and ground truth at ``(height, width)``.

    Raises:
        Easi3RInputError: a non-positive frame count or an image smaller than one 16 px patch.
    """
    _check_int("num_frames", num_frames, 1)
    _check_int("width", width, 16)
    _check_int("height", height, 16)
    rng = np.random.default_rng(seed)
    f = 0.9 * width
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    rays_cam = np.stack([(u - K[0, 2]) / f, (v - K[1, 2]) / f, np.ones_like(u)], axis=-1)
    frames, depths, masks, poses = [], [], [], []
    for k in range(num_frames):
        yaw = np.deg2rad(1.5 * k + rng.normal(0, 0.2))
        R = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        c = np.array([0.08 * k, 0.03 * k, 0.03 * k]) + rng.normal(0, 0.005, 3)
        d = rays_cam @ R.T  # world directions
        t_bg = (5.0 - c[2]) / d[..., 2]
        p_bg = c + t_bg[..., None] * d
        color = _texture(p_bg[..., 0], p_bg[..., 1])
        t = t_bg
        # The moving square lives on z = 3 and slides across the view independently of the camera.
        centre = np.array([0.5 - 0.15 * k, -0.2 + 0.1 * k])
        t_obj = (3.0 - c[2]) / d[..., 2]
        p_obj = c + t_obj[..., None] * d
        local = p_obj[..., :2] - centre
        hit = (np.abs(local) < 0.45).all(axis=-1) & (t_obj < t_bg)
        stripes = (np.floor(local[..., 0] * 8) % 2)[..., None]
        obj_color = np.where(stripes > 0, [0.85, 0.15, 0.1], [0.6, 0.6, 0.1])
        disc = (np.linalg.norm(local, axis=-1) < 0.2)[..., None]
        obj_color = np.where(disc, [0.95, 0.9, 0.3], obj_color)
        color = np.where(hit[..., None], obj_color, color)
        t = np.where(hit, t_obj, t)
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = R, c
        frames.append(np.clip(color * 255 + 0.5, 0, 255).astype(np.uint8))
        depths.append(t.astype(np.float32))  # rays have unit camera-z, so the ray parameter is the z-depth
        masks.append(hit)
        poses.append(pose)
    return SyntheticVideo(np.stack(frames), np.stack(depths), np.stack(masks), np.stack(poses), K)


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise Easi3RInputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def demo_backbone(images: Tensor, *, seed: int = 0, depth: float = 2.0) -> DUSt3R:
    """A tiny random network whose linear heads are fitted to see a fronto-parallel plane at ``depth``.

    Args:
        images: ``(T, 3, H, W)`` normalised frames the heads are fitted on (the demo video).
        seed: weight initialisation seed (a local :class:`torch.Generator`; the global RNG is untouched).
        depth: depth of the plane the fitted heads predict, in scene units.

    Returns:
        An eval-mode :class:`DUSt3R` with random encoder/decoder weights. **Its outputs are not meaningful.**
    """
    # The constructor's default initialisation draws from the global generator; every value it draws is
    # overwritten below, and fork_rng gives the caller back the global state as it was.
    with torch.random.fork_rng(devices=[]):
        net = DUSt3R(DEMO_ARCHITECTURE).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        params = dict(net.named_parameters())
        for name, p in params.items():
            if "norm" in name:
                continue  # LayerNorm defaults (ones, zeros) are deterministic
            if name.endswith("bias"):
                weight = params.get(name[: -len("bias")] + "weight")
                bound = 1.0 / weight[0].numel() ** 0.5 if weight is not None and weight.ndim > 1 else 0.0
                p.uniform_(-bound, bound, generator=generator)  # nn.Linear's default bias distribution
                continue
            fan_in = p[0].numel()
            p.normal_(0, 1.2 / fan_in**0.5, generator=generator)
        b, _, h, w = images.shape
        f = 1.0 * w
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
        )
        plane = torch.stack([(xs - w / 2) / f * depth, (ys - h / 2) / f * depth, torch.full_like(xs, depth)], -1)
        # Invert the exp post-processing: raw = direction * log1p(norm).
        norm = plane.norm(dim=-1, keepdim=True)
        raw = plane / norm * torch.log1p(norm)
        target = torch.cat([raw, torch.full_like(raw[..., :1], 0.5)], dim=-1)  # conf = 1 + e^0.5
        patch = net.patch_size
        # Per token the head emits [channel][dy][dx]; arrange the target the same way.
        target = target.reshape(h // patch, patch, w // patch, patch, 4).permute(0, 2, 4, 1, 3)
        target = target.reshape((h // patch) * (w // patch), -1)
        enc = net.encode(images)
        n = min(b, 4)
        tokens1, tokens2 = _final_tokens(net, enc, n)
        for head, tokens in (("downstream_head1", tokens1), ("downstream_head2", tokens2)):
            proj = cast(nn.Linear, net.get_submodule(f"{head}.proj"))
            x = torch.cat(
                [tokens.reshape(-1, tokens.shape[-1]), torch.ones(tokens.shape[0] * tokens.shape[1], 1)], dim=1
            )
            y = target.repeat(n, 1)
            lam = 1e-2 * x.shape[0]
            sol = torch.linalg.solve(x.T @ x + lam * torch.eye(x.shape[1]), x.T @ y)
            proj.weight.copy_(sol[:-1].T)
            proj.bias.copy_(sol[-1])
    return net


def _final_tokens(net: DUSt3R, enc: EncodedImages, n: int) -> tuple[Tensor, Tensor]:
    """Normalised last-layer decoder tokens of both branches for the fitting pairs (i, i+1)."""
    idx1 = list(range(n))
    idx2 = [(i + 1) % len(enc) for i in range(n)]
    e1, e2 = enc[idx1], enc[idx2]
    f1, f2 = net.decoder_embed(e1.tokens), net.decoder_embed(e2.tokens)
    for blk1, blk2 in zip(net.dec_blocks, net.dec_blocks2):
        f1, f2 = blk1(f1, f2, e1.positions, e2.positions), blk2(f2, f1, e2.positions, e1.positions)
    return net.dec_norm(f1), net.dec_norm(f2)


def run_demo(
    out_dir: str | os.PathLike[str], *, progress: bool = True, num_frames: int = 6, iterations: int = 60
) -> dict[str, Path]:
    """Render the synthetic video, run the whole pipeline with the random demo network, save every file.

    Args:
        out_dir: destination folder of :meth:`~easi3r.result.Reconstruction.save`.
        progress: show progress bars.
        num_frames: frames of the synthetic video (>= 2: the pipeline needs a pair).
        iterations: alignment iterations.

    Returns:
        The mapping of written files (:meth:`~easi3r.result.Reconstruction.save`).

    Raises:
        Easi3RInputError: ``num_frames < 2`` or invalid pipeline settings.
    """
    from .frames import load_frames
    from .pipeline import Easi3R

    _check_int("num_frames", num_frames, 2)
    video = render_video(num_frames)
    frames = load_frames(video.frames, image_size=256)
    net = demo_backbone(frames.images)
    runner = Easi3R(backbone=net, device="cpu", image_size=256, iterations=iterations, window=5)
    # dataclasses.replace builds (and validates) a new result with the final backbone name.
    rec = dataclasses.replace(runner.run(frames, progress=progress), backbone="demo (random weights)")
    return rec.save(out_dir, progress=progress)
