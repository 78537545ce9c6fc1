"""A consistent synthetic :class:`~easi3r.result.Reconstruction` for the result, export and viz tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import roma
import torch

from easi3r.result import ATTENTION_KEYS, Reconstruction

__all__ = ["make_reconstruction"]


def make_reconstruction(
    T: int = 4, H: int = 32, W: int = 48, h: int = 2, w: int = 3, seed: int = 0, **kw: Any
) -> Reconstruction:
    """A consistent synthetic result: world points are the unprojected depths of random rigid cameras.

    ``kw`` overrides any field (e.g. ``fps=None``) before validation. The same arguments give the same result.
    """
    rng = np.random.default_rng(seed)
    # roma.random_rotmat draws from torch's global generator: fork it so that the caller's stream is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rotations = roma.random_rotmat(T, dtype=torch.float64).numpy()
    c2w = np.tile(np.eye(4), (T, 1, 1))
    c2w[:, :3, :3] = rotations
    c2w[:, :3, 3] = rng.normal(size=(T, 3))
    K = np.tile(np.array([[40.0, 0, W / 2 - 0.3], [0, 41.0, H / 2 + 0.2], [0, 0, 1]]), (T, 1, 1))
    depths = rng.uniform(1.0, 3.0, size=(T, H, W)).astype(np.float32)
    ys, xs = np.mgrid[0:H, 0:W]
    pix = np.stack([xs, ys, np.ones_like(xs)], -1).astype(np.float64)
    cam = (pix @ np.linalg.inv(K[0]).T)[None] * depths[..., None]
    pts = np.einsum("tij,thwj->thwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]
    masks = np.zeros((T, H, W), bool)
    for t in range(T):  # a moving block, so that masks and overlays have structure
        masks[t, 8:20, 4 + 6 * t : 20 + 6 * t] = True
    images = np.zeros((T, H, W, 3), np.uint8)
    images[..., 0] = (xs * 255 // (W - 1))[None]
    images[..., 1] = (ys * 255 // (H - 1))[None]
    images[..., 2] = (np.arange(T) * 60)[:, None, None]
    attention = {k: rng.uniform(0, 1, size=(T, h, w)).astype(np.float32) for k in ATTENTION_KEYS}
    args: dict[str, Any] = dict(
        images=images,
        masks=masks,
        dynamic_maps=rng.uniform(0, 1, size=(T, h, w)).astype(np.float32),
        attention=attention,
        cam2world=c2w,
        intrinsics=K,
        depths=depths,
        points=pts.astype(np.float32),
        confidence=rng.uniform(1.0, 1.5, size=(T, H, W)).astype(np.float32),
        frame_names=[f"frame_{t:02d}.png" for t in range(T)],
        fps=10.0,
        cluster_labels=rng.integers(0, 5, size=(T, h, w)),
        threshold=0.42,
        backbone="synthetic",
    )
    args.update(kw)
    return Reconstruction(**args)
