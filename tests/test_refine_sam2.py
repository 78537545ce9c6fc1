"""SAM2 refinement (easi3r.refine): the official parity split on a fake predictor (exact), the frame
preparation, weight resolution (local file, hub cache, offline), and the real ``sam2`` package with random
weights end to end (skipped where ``sam2`` is not installed)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.sam2_tiny import (
    FakeVideoPredictor,
    expected_parity_split,
    save_sam2_checkpoint,
    tiny_sam2_refiner,
)

from easi3r.errors import CheckpointError, Easi3RInputError, Easi3RRuntimeError
from easi3r.refine import (
    DEFAULT_SAM2,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OFFICIAL_CONFIG,
    TINY_CONFIG,
    MissingDependencyError,
    SAM2VideoRefiner,
    init_inference_state,
    propagate_parity_split,
    resolve_sam2_weights,
    sam2_frames,
    union_masks,
)

HAVE_SAM2 = importlib.util.find_spec("sam2") is not None
needs_sam2 = pytest.mark.skipif(not HAVE_SAM2, reason="the sam2 package is not installed (pip install easi3r[sam2])")


def _random_masks(t: int = 6, h: int = 6, w: int = 8, seed: int = 0) -> np.ndarray:
    masks = np.random.default_rng(seed).random((t, h, w)) > 0.5
    assert len({m.tobytes() for m in masks}) == t  # every frame differs: a wrong frame choice shows
    return masks


def _frames(t: int = 6, h: int = 6, w: int = 8, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


# -- the parity split on a fake predictor (exact) -----------------------------------------------------------------
@pytest.mark.parametrize("t", [2, 5, 6])
def test_parity_split_is_exact_and_calls_like_the_official(t):
    masks = _random_masks(t)
    fake = FakeVideoPredictor()
    state = {"num_frames": t, "prompts": {}}
    out = propagate_parity_split(fake, state, torch.from_numpy(masks))
    np.testing.assert_array_equal(out.numpy(), expected_parity_split(masks))
    odd, even = list(range(1, t, 2)), list(range(0, t, 2))
    expected_calls = (
        [("reset_state",)] + [("add_new_mask", i, 1) for i in odd] + [("propagate_in_video", 0)]
        + [("reset_state",)] + [("add_new_mask", i, 1) for i in even] + [("propagate_in_video", 0)]
    )  # fmt: skip
    assert fake.calls == expected_calls


def test_refiner_outputs_sam2_masks_and_their_union():
    masks, images = _random_masks(), _frames()
    fake = FakeVideoPredictor(image_size=16)
    refined = SAM2VideoRefiner(fake, device="cpu").refine(images, masks, progress=False)
    sam2 = expected_parity_split(masks)
    assert refined.sam2.dtype == torch.bool and refined.sam2.shape == (6, 6, 8)
    np.testing.assert_array_equal(refined.sam2.numpy(), sam2)
    np.testing.assert_array_equal(refined.union.numpy(), masks | sam2)
    assert not np.array_equal(sam2, masks | sam2)  # the two outputs are really different here
    assert fake.calls[0] == ("init_state", 6, True)


def test_inference_state_holds_the_real_frames():
    fake = FakeVideoPredictor(image_size=16)
    frames = sam2_frames(_frames(), 16)
    state = init_inference_state(fake, frames, 6, 8)
    assert state["images"] is frames
    assert (state["video_height"], state["video_width"]) == (6, 8)
    assert state["cached_features"] == {}  # the placeholder's frame-0 features are dropped
    with pytest.raises(Easi3RInputError, match=r"frames must have shape \(T, 3, S, S\) with S = 16"):
        init_inference_state(fake, sam2_frames(_frames(), 8), 6, 8)


def test_union_masks():
    a = torch.tensor([[[True, False, False, True]]])
    s = torch.tensor([[[False, True, False, True]]])
    assert union_masks(a, s).tolist() == [[[True, True, False, True]]]
    with pytest.raises(Easi3RInputError, match="sam2 must have shape"):
        union_masks(a, s[..., :3])
    with pytest.raises(Easi3RInputError, match="attention must have dtype bool"):
        union_masks(a.float(), s)


def test_bad_inputs_fail_before_sam2_runs():
    fake = FakeVideoPredictor()
    refiner = SAM2VideoRefiner(fake, device="cpu")
    masks, images = _random_masks(), _frames()
    with pytest.raises(Easi3RInputError, match="images must have shape"):
        refiner.refine(images[:, :5], masks)
    with pytest.raises(Easi3RInputError, match="images must have dtype uint8"):
        refiner.refine(images.astype(np.float32), masks)
    with pytest.raises(Easi3RInputError, match="masks must have dtype bool"):
        refiner.refine(images, masks.astype(np.uint8))
    with pytest.raises(Easi3RInputError, match="at least 2 frames"):
        refiner.refine(images[:1], masks[:1])
    assert fake.calls == []


def test_missing_frames_are_an_error():
    class Skipping(FakeVideoPredictor):
        def propagate_in_video(self, inference_state, start_frame_idx=None):
            for item in super().propagate_in_video(inference_state, start_frame_idx):
                if item[0] != 2:
                    yield item

    with pytest.raises(Easi3RRuntimeError, match=r"no mask for frame\(s\) \[2\]"):
        propagate_parity_split(Skipping(), {"num_frames": 4}, torch.from_numpy(_random_masks(4)))


# -- frames as the official code feeds them ----------------------------------------------------------------------
def test_sam2_frames_match_the_vendored_loader():
    images = _frames(2, 12, 16)
    out = sam2_frames(images, 32)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    # The vendored load_video_frames on rgb01 = u8 / 255 (the float round trip through [-1, 1] changes at most
    # one ulp): bicubic, align_corners=False, then ImageNet normalisation.
    rgb01 = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255
    ref = F.interpolate(rgb01, size=(32, 32), mode="bicubic", align_corners=False)
    ref = (ref - torch.tensor(IMAGENET_MEAN, dtype=torch.float64)[:, None, None]) / torch.tensor(
        IMAGENET_STD, dtype=torch.float64
    )[:, None, None]
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    # A constant frame stays constant: (c / 255 - mean) / std.
    flat = sam2_frames(np.full((1, 5, 7, 3), 51, np.uint8), 16)
    expected = (0.2 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(flat[0, :, 8, 8], expected, atol=1e-6, rtol=0)


# -- weights -----------------------------------------------------------------------------------------------------
def test_resolve_local_files(tmp_path):
    official = tmp_path / "sam2.1_hiera_large.pt"
    official.write_bytes(b"x")
    assert resolve_sam2_weights(str(official)) == (OFFICIAL_CONFIG, official)
    tiny = tmp_path / "sam2.1_hiera_tiny.pt"
    tiny.write_bytes(b"x")
    assert resolve_sam2_weights(str(tiny)) == (TINY_CONFIG, tiny)
    other = tmp_path / "mine.pt"
    other.write_bytes(b"x")
    assert resolve_sam2_weights(str(other)) == (OFFICIAL_CONFIG, other)
    assert resolve_sam2_weights(str(other), TINY_CONFIG) == (TINY_CONFIG, other)
    with pytest.raises(Easi3RInputError, match="SAM2 checkpoint not found: .*nope.pt"):
        resolve_sam2_weights(str(tmp_path / "nope.pt"))
    with pytest.raises(Easi3RInputError, match="unknown SAM2 weights 'large'"):
        resolve_sam2_weights("large")


def test_resolve_hub_id_from_the_cache_offline(monkeypatch, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--facebook--sam2.1-hiera-large"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "sam2.1_hiera_large.pt").write_bytes(b"weights")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    config, path = resolve_sam2_weights(DEFAULT_SAM2)
    assert config == OFFICIAL_CONFIG
    assert path.read_bytes() == b"weights" and path.name == "sam2.1_hiera_large.pt"


def test_offline_without_weights_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(Easi3RRuntimeError) as info:
        resolve_sam2_weights(DEFAULT_SAM2)
    message = str(info.value)
    assert "\n" not in message
    assert "sam2.1_hiera_large.pt" in message and "facebook/sam2.1-hiera-large" in message
    assert "--sam2 /path/to/sam2.1_hiera_large.pt" in message


@pytest.mark.skipif(HAVE_SAM2, reason="sam2 is installed")
def test_missing_package_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"pip install 'easi3r\[sam2\]'") as info:
        SAM2VideoRefiner.from_pretrained(None)
    assert isinstance(info.value, ImportError)


# -- the real sam2 package, random weights -----------------------------------------------------------------------
# Without the compiled sam2._C (CPU-only installs) SAM2 skips its hole filling with this warning.
no_hole_filling_warning = pytest.mark.filterwarnings("ignore:cannot import name '_C':UserWarning")


@needs_sam2
@pytest.mark.slow
@no_hole_filling_warning
def test_real_sam2_random_weights_end_to_end():
    refiner = tiny_sam2_refiner()
    assert refiner.predictor.image_size == 128
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    masks = np.zeros((3, 48, 64), bool)
    masks[:, 10:30, 20:40] = True
    masks[1, 0:5, 0:5] = True
    refined = refiner.refine(images, masks, progress=False)
    assert refined.sam2.shape == (3, 48, 64) and refined.sam2.dtype == torch.bool
    assert refined.union.shape == (3, 48, 64) and refined.union.dtype == torch.bool
    assert torch.equal(refined.union, torch.from_numpy(masks) | refined.sam2)
    assert 0 < int(refined.sam2.sum()) < refined.sam2.numel()  # random weights still give a non-trivial mask


@needs_sam2
@no_hole_filling_warning
def test_real_sam2_checkpoint_round_trip(tmp_path):
    refiner = tiny_sam2_refiner(seed=3)
    path = save_sam2_checkpoint(tmp_path / "sam2.1_hiera_tiny.pt", refiner)
    loaded = SAM2VideoRefiner.from_pretrained(str(path), device="cpu", hydra_overrides=["++model.image_size=128"])
    ref, got = refiner.predictor.state_dict(), loaded.predictor.state_dict()  # type: ignore[attr-defined]
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    bad = tmp_path / "bad.pt"
    torch.save({"weights": {}}, bad)
    with pytest.raises(CheckpointError, match="cannot build SAM2 from checkpoint .*bad.pt"):
        SAM2VideoRefiner.from_pretrained(str(bad), config_name=TINY_CONFIG, device="cpu")
