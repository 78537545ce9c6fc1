"""Shared fixtures: the official reference data copied into the project, and the tiny network run on it.

The network outputs over the fixture's 18 pairs take a minute or two on CPU, so the whole pipeline runs once per
session (:func:`fixture_run`) and the tests that need network outputs read its intermediates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REF = Path(__file__).parent / "data" / "reference"


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


FRAME_FILES = [REF / "frames" / f"frame_{k:02d}.png" for k in range(6)]

#: Alignment iterations of the end-to-end run (the alignment itself is checked at 100 in test_align_reference).
E2E_ITERATIONS = 10


@pytest.fixture(scope="session")
def fixture_frames() -> list[Path]:
    return list(FRAME_FILES)


@pytest.fixture(scope="session")
def fixture_run(tiny_checkpoint):
    """``Easi3R(<tiny checkpoint>).run(<fixture frames>)`` once per session, with every intermediate kept.

    Returns ``(reconstruction, trace)``. The network work (both passes over the 18 pairs at 384x512) dominates
    the suite's run time, so every test that needs network outputs on the fixture reads them from here.
    """
    from easi3r.pipeline import Easi3R, Trace

    runner = Easi3R(backbone=tiny_checkpoint, device="cpu", iterations=E2E_ITERATIONS)
    trace = Trace(keep_pair_maps=True)
    rec = runner.run(FRAME_FILES, progress=False, trace=trace)
    return rec, trace


@pytest.fixture(scope="session")
def reference_outputs(fixture_run) -> dict[str, torch.Tensor]:
    """Our pipeline's network outputs on the fixture pairs (pass-2 re-weighted by *our* pass-1 masks)."""
    _, trace = fixture_run
    p1, p2 = trace.pass1, trace.pass2
    pm = p2.pointmaps
    return {
        "edges": trace.edges,
        "features": trace.features,
        "p1_cross_attn_1": p1.pair_maps[0],
        "p1_cross_attn_2": p1.pair_maps[1],
        "p2_cross_attn_1": p2.pair_maps[0],
        "p2_cross_attn_2": p2.pair_maps[1],
        "pts_1": pm.pts_1,
        "pts_2": pm.pts_2,
        "conf_1": pm.conf_1,
        "conf_2": pm.conf_2,
    }


@pytest.fixture(scope="session")
def reference_maps(reference_outputs) -> dict[str, torch.Tensor]:
    keys = ("edges", "features", "p1_cross_attn_1", "p1_cross_attn_2", "p2_cross_attn_1", "p2_cross_attn_2")
    return {k: reference_outputs[k] for k in keys}


@pytest.fixture(scope="session")
def reference_pass2(reference_outputs) -> dict[str, torch.Tensor]:
    return {k: reference_outputs[k] for k in ("edges", "pts_1", "pts_2", "conf_1", "conf_2")}
