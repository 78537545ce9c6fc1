"""One video on two processes (``torchrun --nproc-per-node 2 -m easi3r run ...``, gloo on 127.0.0.1): the same
outputs as one process, for window-wise and global alignment; a failing rank ends the whole run.

The batches of pairs (and of frames for the encoder) are divided among the ranks whole, so every pair's network
outputs are bit-identical to the single-process run; the attention statistics are merged exactly (Welford), so
with one thread per process the outputs are equal, not merely close.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from helpers.procs import TORCHRUN_2, run_python
from PIL import Image

from easi3r.demo import render_video

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="gloo is not available"),
]

COMMON = ["--image-size", "96", "--iterations", "5", "--no-flow", "--clusters", "8", "--quiet"]


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("video")
    for k, frame in enumerate(render_video(6, 96, 64, seed=3).frames):
        Image.fromarray(frame).save(folder / f"{k:02d}.png")
    return folder


def _arrays(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "reconstruction.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("alignment", [["--alignment", "window", "--align-window", "4"], ["--alignment", "global"]],
                         ids=["window", "global"])  # fmt: skip
def test_two_processes_equal_one(frames: Path, tiny_checkpoint: Path, tmp_path: Path, alignment: list[str]) -> None:
    args = ["run", str(frames), "--backbone", str(tiny_checkpoint), *COMMON, *alignment]
    one = run_python(["-m", "easi3r", *args, "--out", str(tmp_path / "one")])
    two = run_python([*TORCHRUN_2, "-m", "easi3r", *args, "--out", str(tmp_path / "two")])
    assert one["rc"] == 0, one["err"][-2000:]
    assert two["rc"] == 0, two["err"][-2000:]
    assert two["group_gone"]
    a, b = _arrays(tmp_path / "one"), _arrays(tmp_path / "two")
    assert a.keys() == b.keys()
    np.testing.assert_array_equal(a["masks"], b["masks"])
    np.testing.assert_array_equal(a["cluster_labels"], b["cluster_labels"])
    for key in ("dynamic_maps", "attention_src_mean", "attention_src_std", "attention_ref_mean", "attention_ref_std"):
        np.testing.assert_allclose(b[key], a[key], atol=1e-6, rtol=0, err_msg=key)
    if "window" in alignment:
        # Every window is aligned whole on one rank, as in one process.
        for key in ("cam2world", "intrinsics", "depths", "points"):
            np.testing.assert_allclose(b[key], a[key], atol=1e-5, rtol=1e-5, err_msg=key)
    else:
        # The ranks sum their shares of the loss gradient with an all-reduce, whose float32 summation order differs
        # from one process's. Adam divides each step by the gradient's running RMS, so a parameter whose gradient
        # is ~0 (a low-confidence pixel's depth) can take a different step of up to lr = 0.01 per iteration: the
        # bulk must agree to float32 rounding, a rare pixel only within Adam's step bound.
        for key in ("cam2world", "intrinsics", "depths", "points"):
            rel = np.abs(b[key] - a[key]) / np.abs(a[key]).max()  # relative to the array's scale
            q = float(np.quantile(rel, 0.999))
            assert q < 1e-5 and float(rel.max()) < 5 * 0.01, (key, q, float(rel.max()))
    # Only rank 0 wrote, and it wrote the same files.
    files_one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    files_two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert files_one == files_two


def test_failing_rank_ends_the_run(frames: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from helpers.video_fail_rank import MESSAGE

    args = ["run", str(frames), "--backbone", str(tiny_checkpoint), *COMMON, "--out", str(tmp_path / "out")]
    result = run_python([*TORCHRUN_2, "-m", "helpers.video_fail_rank", *args])
    assert result["rc"] != 0
    assert result["group_gone"], "a process of the failed run is still alive"
    assert result["seconds"] < 200
    errors = [ln for ln in result["err"].splitlines() if ln.startswith("error:")]
    assert any(MESSAGE in ln for ln in errors), result["err"][-2000:]
    assert not (tmp_path / "out" / "reconstruction.npz").exists()
