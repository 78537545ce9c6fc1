"""Shared fixtures: the official reference data copied into the project, and the tiny network run on it.

The network outputs over the fixture's 18 pairs take a minute or two on CPU, so they are computed once per
session and cached under pytest's cache directory, keyed by a hash of the backbone sources and the fixture
files, so a change to the network code always recomputes them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

REF = Path(__file__).parent / "data" / "reference"
PKG = Path(__file__).parents[1] / "easi3r"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REF


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return REF / "tiny_dust3r.pth"


@pytest.fixture(scope="session")
def preprocess_npz():
    return np.load(REF / "preprocess.npz")


@pytest.fixture(scope="session")
def pipeline_npz():
    return np.load(REF / "pipeline.npz")


@pytest.fixture(scope="session")
def tiny_backbone(tiny_checkpoint):
    from easi3r import load_backbone

    return load_backbone(tiny_checkpoint, device="cpu")


def _source_hash() -> str:
    h = hashlib.sha256()
    for path in sorted((PKG / "backbones").glob("*.py")) + [PKG / "reweight.py"]:
        h.update(path.read_bytes())
    for name in ("tiny_dust3r.pth", "preprocess.npz", "pipeline.npz"):
        h.update((REF / name).read_bytes())
    return h.hexdigest()[:16]


def _run_reference_pairs(backbone) -> dict[str, np.ndarray]:
    """Both passes over the fixture's pair list; pass 2 uses the official pass-1 masks (pipeline.npz)."""
    pre = np.load(REF / "preprocess.npz")
    pl = np.load(REF / "pipeline.npz")
    edges = torch.from_numpy(pl["pairs"]).long()
    masks = torch.from_numpy(pl["p1_dynamic_masks"]).bool()
    out: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        enc = backbone.encode(torch.from_numpy(pre["img"]))
        for s in range(0, len(edges), 3):
            e = edges[s : s + 3]
            p1 = backbone.forward_pair(enc[e[:, 0]], enc[e[:, 1]], heads=False)
            p2 = backbone.forward_pair(
                enc[e[:, 0]], enc[e[:, 1]], dynamic_mask1=masks[e[:, 0]], dynamic_mask2=masks[e[:, 1]]
            )
            for key, val in (
                ("p1_cross_attn_1", p1.cross_attn_1), ("p1_cross_attn_2", p1.cross_attn_2),
                ("p2_cross_attn_1", p2.cross_attn_1), ("p2_cross_attn_2", p2.cross_attn_2),
                ("pts_i", p2.pts3d_1), ("pts_j", p2.pts3d_2), ("conf_i", p2.conf_1), ("conf_j", p2.conf_2),
            ):
                out.setdefault(key, []).append(val)
    arrays = {k: torch.cat(v).numpy() for k, v in out.items()}
    arrays["edges"] = edges.numpy()
    arrays["features"] = enc.tokens.reshape(len(enc), *enc.grid, -1).numpy()
    return arrays


@pytest.fixture(scope="session")
def reference_outputs(request, tiny_backbone) -> dict[str, torch.Tensor]:
    """Our network's outputs on the fixture pairs: pass-1/pass-2 readout maps, pass-2 pointmaps, features."""
    cache = request.config.cache.mkdir("easi3r_reference") / f"outputs_{_source_hash()}.npz"
    if cache.exists():
        arrays = dict(np.load(cache))
    else:
        arrays = _run_reference_pairs(tiny_backbone)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(cache)
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


@pytest.fixture(scope="session")
def reference_maps(reference_outputs) -> dict[str, torch.Tensor]:
    keys = ("edges", "features", "p1_cross_attn_1", "p1_cross_attn_2", "p2_cross_attn_1", "p2_cross_attn_2")
    return {k: reference_outputs[k] for k in keys}


@pytest.fixture(scope="session")
def reference_pass2(reference_outputs) -> dict[str, torch.Tensor]:
    return {k: reference_outputs[k] for k in ("edges", "pts_i", "pts_j", "conf_i", "conf_j")}
