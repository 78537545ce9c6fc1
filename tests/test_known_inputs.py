"""Your own masks and cameras in the pipeline (official ``use_gt_davis_masks``, ``preset_focal``/``preset_pose``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from easi3r import Easi3R, Easi3RInputError
from easi3r.frames import load_frames, load_masks, processed_focals
from easi3r.pipeline import Trace, run_pass

FAST = dict(device="cpu", iterations=3, flow=False)


@pytest.fixture(scope="module")
def runner(tiny_checkpoint: Path) -> Easi3R:
    return Easi3R(tiny_checkpoint, **FAST)


def test_given_masks_drive_pass_2_and_are_the_output(
    runner: Easi3R, fixture_frames: list[Path], pipeline_npz: dict[str, np.ndarray]
) -> None:
    """The fixture's official pass-2 masks as input: pass 1 is skipped, pass 2 re-weights with them exactly."""
    given = pipeline_npz["p2_dynamic_masks"].astype(bool)
    trace = Trace()
    rec = runner.run(fixture_frames, masks=given, progress=False, trace=trace)
    np.testing.assert_array_equal(rec.masks, given)
    assert trace.pass1 is None and trace.pass2 is not None
    # Pass 2's pointmaps are those of a pass re-weighted by exactly these masks.
    frames = runner.load(fixture_frames)
    encoded = runner.encode(frames, progress=False)
    expected = run_pass(runner.backbone, encoded, trace.edges, masks=torch.from_numpy(given), heads=True,
                        progress=False).pointmaps  # fmt: skip
    got = trace.pass2.pointmaps
    assert expected is not None and got is not None
    assert torch.equal(got.pts_1, expected.pts_1) and torch.equal(got.conf_2, expected.conf_2)


def test_masks_at_the_original_resolution_are_preprocessed_like_the_frames(
    tmp_path: Path, fixture_frames: list[Path]
) -> None:
    frames = load_frames(fixture_frames[:3])  # 160x120 -> 512x384
    folder = tmp_path / "masks"
    folder.mkdir()
    original = np.zeros((120, 160), np.uint8)
    original[30:90, 40:120] = 255
    for k in range(3):
        Image.fromarray(original).save(folder / f"{k:02d}.png")
    masks = load_masks(folder, frames)
    assert masks.shape == (3, 384, 512) and masks.dtype == np.bool_
    # The square scales by 3.2; any non-zero after the bicubic upsampling is dynamic, so it grows by a few pixels.
    ys, xs = np.nonzero(masks[0])
    assert (
        abs(ys.min() - 96) <= 3 and abs(ys.max() - 288) <= 3 and abs(xs.min() - 128) <= 3 and abs(xs.max() - 384) <= 3
    )
    # Processed-size masks are used as given.
    np.testing.assert_array_equal(load_masks(masks, frames), masks)
    with pytest.raises(Easi3RInputError, match="2 masks for 3 frames"):
        load_masks(masks[:2], frames)
    with pytest.raises(Easi3RInputError, match="expected the frame's original size 160x120"):
        load_masks(np.zeros((3, 50, 50)), frames)


def test_known_intrinsics_at_the_original_resolution_come_out_exactly(
    runner: Easi3R, fixture_frames: list[Path]
) -> None:
    f0 = 140.0  # pixels of the 160x120 originals
    K0 = np.array([[f0, 0, 80.0], [0, f0, 60.0], [0, 0, 1]])
    frames = runner.load(fixture_frames)
    assert np.allclose(processed_focals(K0, frames), f0 * 3.2)
    pinned = runner.run(fixture_frames, intrinsics=K0, progress=False)
    back = pinned.intrinsics_at((160, 120))
    np.testing.assert_allclose(back[:, 0, 0], f0, rtol=1e-6)
    np.testing.assert_allclose(back[:, 1, 1], f0, rtol=1e-6)
    moved = runner.run(fixture_frames, intrinsics=f0, known_mode="init", progress=False)
    assert not np.allclose(moved.intrinsics_at((160, 120))[:, 0, 0], f0, rtol=1e-6)  # init: optimised further
    with pytest.raises(Easi3RInputError, match="intrinsics"):
        runner.run(fixture_frames, intrinsics=np.eye(4), progress=False)
    with pytest.raises(Easi3RInputError, match="known_mode"):
        runner.run(fixture_frames, intrinsics=f0, known_mode="fix", progress=False)


def test_known_poses_are_pinned(runner: Easi3R, fixture_frames: list[Path]) -> None:
    free = runner.run(fixture_frames, progress=False)
    pinned = runner.run(fixture_frames, cam2world=free.cam2world, progress=False)
    np.testing.assert_allclose(pinned.cam2world, free.cam2world.astype(np.float32), atol=1e-6)
