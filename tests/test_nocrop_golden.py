"""Golden test: ``load_frames(..., crop=False)`` against the official ``load_images(..., crop=False)``.

The data in ``tests/data/nocrop/`` was produced by the official Easi3R ``dust3r.utils.image.load_images``
(Inception3D/Easi3R @ 146a77d) on eight synthetic PNGs of varied sizes; see its README. With
``crop=False`` the official ``crop_img`` resizes the long side to ``size`` and then, instead of centre
cropping to multiples of 16, resizes the whole image (LANCZOS) to the crop size, so no content is lost and the
aspect ratio changes slightly. ``size == 224`` ignores ``crop`` (always the centre square).

The square image (250x250) makes the official code raise ``TypeError`` (PIL rejects the float height
``2 * (3 * halfw / 4)``); the expected output here is the official one with that size cast to int, i.e. the
4:3 rule of ``crop=True`` (512x512 -> 512x384 by LANCZOS).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from easi3r.frames import load_frames

DATA = Path(__file__).parent / "data" / "nocrop"
GOLD = np.load(DATA / "nocrop.npz")
FILES = [str(name) for name in GOLD["files"]]
SQUARE = FILES.index("img_3_250x250.png")


def _sha256(images: torch.Tensor) -> str:
    """sha256 of the float32 bytes of one ``(3, H, W)`` network input, as stored by the driver."""
    return hashlib.sha256(np.ascontiguousarray(images.numpy().astype(np.float32)).tobytes()).hexdigest()


def _expected_512_nocrop(k: int) -> str:
    return f"s512_nocrop_intsize_{k}" if k == SQUARE else f"s512_nocrop_{k}"


def test_fixture_is_consistent() -> None:
    """The stored uint8 images are the official float tensors: ``(u8 / 255 - 0.5) / 0.5`` hashes to the
    stored sha256 (guards against a corrupted or regenerated fixture)."""
    assert str(GOLD[f"s512_nocrop_{SQUARE}_error"]).startswith("TypeError")
    for k in range(len(FILES)):
        key = _expected_512_nocrop(k)
        u8 = torch.from_numpy(GOLD[f"{key}_u8"].transpose(2, 0, 1).copy())
        assert _sha256((u8.float() / 255 - 0.5) / 0.5) == str(GOLD[f"{key}_sha256"]), FILES[k]
        assert tuple(GOLD[f"{key}_true_shape"][0]) == u8.shape[1:], FILES[k]


@pytest.mark.parametrize("k", range(len(FILES)), ids=FILES)
def test_nocrop_512_bit_exact(k: int) -> None:
    key = _expected_512_nocrop(k)
    frames = load_frames(DATA / "frames" / FILES[k], 512, crop=False)
    expected_u8 = GOLD[f"{key}_u8"]
    assert frames.rgb.shape == (1, *expected_u8.shape)
    diff = np.abs(frames.rgb[0].astype(np.int16) - expected_u8.astype(np.int16))
    assert diff.max() == 0, f"{FILES[k]}: {np.count_nonzero(diff)} uint8 values differ (max {diff.max()})"
    assert _sha256(frames.images[0]) == str(GOLD[f"{key}_sha256"])
    assert frames.true_shape.tolist() == GOLD[f"{key}_true_shape"].tolist()


@pytest.mark.parametrize("k", range(len(FILES)), ids=FILES)
def test_nocrop_224_is_the_official_square(k: int) -> None:
    frames = load_frames(DATA / "frames" / FILES[k], 224, crop=False)
    assert _sha256(frames.images[0]) == str(GOLD[f"s224_nocrop_{k}_sha256"])
    assert frames.true_shape.tolist() == GOLD[f"s224_nocrop_{k}_true_shape"].tolist()


@pytest.mark.parametrize("size", [512, 224])
@pytest.mark.parametrize("k", range(len(FILES)), ids=FILES)
def test_crop_default_bit_exact(k: int, size: int) -> None:
    """The default (crop=True) path on the same varied sizes, against the official ``crop=True`` hashes."""
    frames = load_frames(DATA / "frames" / FILES[k], size)
    assert _sha256(frames.images[0]) == str(GOLD[f"s{size}_crop_{k}_sha256"])
    assert frames.true_shape.tolist() == GOLD[f"s{size}_crop_{k}_true_shape"].tolist()
