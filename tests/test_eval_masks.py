"""DAVIS mask metrics: IoU, frame-pooled JM/JR (paper protocol), file readers, resolution protocol, CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from easi3r.errors import Easi3RInputError
from easi3r.eval import (
    DAVIS16,
    DAVIS17,
    evaluate_masks,
    iou,
    jm_jr,
    read_davis_gt,
    read_pred_masks,
    subset_sequences,
)
from easi3r.eval.cli import main
from easi3r.eval.masks import loader_resize_crop

H, W = 16, 24


def _palette_png(path, labels: np.ndarray) -> None:
    """Write a DAVIS-style palette PNG (pixel values are object indices)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    img.save(path)


def _grey_png(path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _two_object_labels(i: int) -> np.ndarray:
    labels = np.zeros((H, W), np.uint8)
    labels[2:7, 1 + i : 6 + i] = 1
    labels[9:14, 10:20] = 2
    return labels


def _spec_example(tmp_path):
    """Worked protocol example: seq 'a' 10 frames predicted perfectly (our layout), seq 'b' 2 frames predicted empty
    (official layout); GT has two object labels, merged into one foreground."""
    gt_root, pred_root = tmp_path / "DAVIS", tmp_path / "pred"
    for i in range(10):
        labels = _two_object_labels(i)
        _palette_png(gt_root / "Annotations/480p/a" / f"{i:05d}.png", labels)
        _grey_png(pred_root / "a/masks" / f"{i:05d}.png", labels > 0)
    for i in range(2):
        _palette_png(gt_root / "Annotations/480p/b" / f"{i:05d}.png", _two_object_labels(i))
        _grey_png(pred_root / "b" / f"dynamic_mask_{i}.png", np.zeros((H, W), bool))
    return pred_root, gt_root


def test_iou_hand_computed():
    pred = np.array([[1, 1, 0], [0, 1, 0]], bool)
    gt = np.array([[0, 1, 1], [0, 1, 1]], bool)
    assert iou(pred, gt) == pytest.approx(2 / 5)  # |and| = 2, |or| = 5
    assert iou(pred.astype(np.uint8) * 255, gt) == pytest.approx(2 / 5)  # non-zero is foreground
    assert iou(np.zeros((2, 3)), np.zeros((2, 3))) == 1.0  # empty union
    assert iou(np.zeros((2, 3)), gt) == 0.0
    assert iou(gt, gt) == 1.0
    with pytest.raises(Easi3RInputError, match="gt must have shape"):
        iou(np.zeros((2, 3)), np.zeros((3, 2)))


def test_jm_jr_spec_example_and_strict_recall():
    ious = [np.ones(10), np.zeros(2)]
    assert jm_jr(ious, "pooled") == pytest.approx((10 / 12, 10 / 12), abs=1e-15)
    assert jm_jr(ious, "per_sequence") == pytest.approx((0.5, 0.5), abs=1e-15)
    # IoU exactly 0.5 does not count as recalled.
    assert jm_jr([np.array([0.5, 0.5, 0.75, 0.25])], "pooled") == pytest.approx((0.5, 0.25))
    # Pooled weighs frames, per-sequence weighs sequences.
    jm, jr = jm_jr([np.array([0.9, 0.9, 0.9]), np.array([0.3])], "per_sequence")
    assert (jm, jr) == pytest.approx(((0.9 + 0.3) / 2, 0.5))
    with pytest.raises(Easi3RInputError, match="mode"):
        jm_jr(ious, "mean")
    with pytest.raises(Easi3RInputError):
        jm_jr([], "pooled")


def test_file_level_spec_example(tmp_path):
    pred_root, gt_root = _spec_example(tmp_path)
    gt = read_davis_gt(gt_root, "a")
    assert gt.shape == (10, H, W) and gt.dtype == bool
    np.testing.assert_array_equal(gt[3], _two_object_labels(3) > 0)  # both labels merged

    pooled = evaluate_masks(pred_root, gt_root)
    assert pooled.mode == "pooled" and pooled.n_frames == 12
    assert pooled.jm == pytest.approx(10 / 12, abs=1e-15) and pooled.jr == pytest.approx(10 / 12, abs=1e-15)
    assert pooled.per_sequence["a"].jm == 1.0 and pooled.per_sequence["b"].jm == 0.0
    per_seq = evaluate_masks(pred_root, gt_root, sequences=["a", "b"], mode="per_sequence")
    assert per_seq.jm == pytest.approx(0.5) and per_seq.jr == pytest.approx(0.5)
    assert json.loads(json.dumps(pooled.as_dict()))["per_sequence"]["b"]["n_frames"] == 2


def test_strict_recall_on_files(tmp_path):
    labels = np.zeros((H, W), np.uint8)
    labels[0, :4] = 1
    pred = np.zeros((H, W), bool)
    pred[0, :8] = True  # IoU exactly 4 / 8
    _palette_png(tmp_path / "gt/Annotations/480p/s/00000.png", labels)
    _grey_png(tmp_path / "pred/s/masks/00000.png", pred)
    scores = evaluate_masks(tmp_path / "pred", tmp_path / "gt")
    assert scores.jm == 0.5 and scores.jr == 0.0


def test_official_layout_numeric_order_and_ignored_files(tmp_path):
    n = 12  # dynamic_mask_10/11 sort before _2 lexicographically
    for i in range(n):
        labels = np.zeros((H, W), np.uint8)
        labels[:, i] = 3
        _palette_png(tmp_path / "gt/Annotations/480p/s" / f"{i:05d}.png", labels)
        _grey_png(tmp_path / "pred/s" / f"dynamic_mask_{i}.png", labels > 0)
    _grey_png(tmp_path / "pred/s/enlarged_dynamic_mask_0.png", np.ones((H, W), bool))
    pred = read_pred_masks(tmp_path / "pred", "s")
    assert pred.shape == (n, H, W)
    np.testing.assert_array_equal(np.argmax(pred[:, 0], axis=1), np.arange(n))
    assert evaluate_masks(tmp_path / "pred", tmp_path / "gt").jm == 1.0


def test_frame_count_mismatch(tmp_path):
    gt_root = tmp_path / "gt"
    for i in range(4):
        labels = np.zeros((H, W), np.uint8)
        if i != 3:
            labels[4:8, 4:8] = 1  # frame 3 has an empty annotation: an empty prediction scores 1
        _palette_png(gt_root / "Annotations/480p/s" / f"{i:05d}.png", labels)
        _grey_png(tmp_path / "few/s/masks" / f"{i:05d}.png", labels > 0)
        _grey_png(tmp_path / "many/s/masks" / f"{i:05d}.png", labels > 0)
    _grey_png(tmp_path / "many/s/masks/00004.png", np.ones((H, W), bool))
    (tmp_path / "few/s/masks/00001.png").unlink()
    (tmp_path / "few/s/masks/00003.png").unlink()  # 2 predictions left, for frames 0 and 1 (in order)

    with pytest.warns(UserWarning, match="extra ones dropped"):
        assert evaluate_masks(tmp_path / "many", gt_root).jm == 1.0
    with pytest.warns(UserWarning, match="scored as empty"):
        scores = evaluate_masks(tmp_path / "few", gt_root)
    # Prediction files 00000 and 00002 become frames 0 and 1 (both match the GT's square); frames 2 (square
    # in GT, no prediction) -> 0, frame 3 (empty GT, empty padding) -> 1.
    np.testing.assert_array_equal(scores.per_sequence["s"].ious, [1.0, 1.0, 0.0, 1.0])


def test_resolution_protocol(tmp_path):
    labels = np.zeros((480, 854), np.uint8)
    labels[:, :427] = 2  # left half
    out = loader_resize_crop(labels, 512)
    assert out.shape == (288, 512) and out.dtype == np.uint8
    expected = np.zeros((288, 512), np.uint8)
    expected[:, :256] = 2  # nearest neighbour keeps labels, no blending at the edge
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(loader_resize_crop(labels > 0, size=(288, 512)), expected > 0)

    wide = np.zeros((480, 1138), np.uint8)
    wide[100:380, 300:800] = 1
    out = loader_resize_crop(wide, 512)
    assert out.shape == (208, 512)  # 512 x 216, centre-cropped to a multiple of 16
    np.testing.assert_array_equal(loader_resize_crop(wide, size=(208, 512)), out)
    assert loader_resize_crop(np.zeros((480, 480), np.uint8), 512).shape == (384, 512)
    assert loader_resize_crop(np.zeros((480, 854), np.uint8), 224).shape == (224, 224)
    # image_size is the int long side, size the (H, W) target: exactly one, and never mixed up.
    for kwargs in ({"image_size": (288, 512)}, {}, {"image_size": 512, "size": (288, 512)}, {"size": 512}):
        with pytest.raises(Easi3RInputError):
            loader_resize_crop(labels, **kwargs)

    # The file-level path resizes GT to the prediction's resolution on its own.
    _palette_png(tmp_path / "gt/Annotations/480p/s/00000.png", labels)
    _grey_png(tmp_path / "pred/s/masks/00000.png", expected > 0)
    assert read_davis_gt(tmp_path / "gt", "s", image_size=512).shape == (1, 288, 512)
    assert evaluate_masks(tmp_path / "pred", tmp_path / "gt").jm == 1.0


def test_subsets_and_missing_data(tmp_path):
    assert len(DAVIS16) == 20 and len(DAVIS17) == 30 and set(DAVIS16) < set(DAVIS17)
    assert subset_sequences("DAVIS16") == DAVIS16 and subset_sequences("davis17") == DAVIS17
    pred_root, gt_root = _spec_example(tmp_path)
    assert subset_sequences("davis-all", gt_root) == ("a", "b")
    with pytest.raises(Easi3RInputError, match="unknown subset"):
        subset_sequences("davis18")
    with pytest.raises(Easi3RInputError, match="no predictions for 20 sequence"):
        evaluate_masks(pred_root, gt_root, sequences="davis16")
    _grey_png(pred_root / "c/masks/00000.png", np.zeros((H, W), bool))
    with pytest.raises(Easi3RInputError, match="no DAVIS annotations found for sequence 'c'"):
        evaluate_masks(pred_root, gt_root)
    (pred_root / "d").mkdir()
    with pytest.raises(Easi3RInputError, match="no predicted masks for sequence 'd'"):
        read_pred_masks(pred_root, "d")


def test_cli_masks(tmp_path, capsys):
    pred_root, gt_root = _spec_example(tmp_path)
    out_json = tmp_path / "scores.json"
    argv = ["masks", "--pred", str(pred_root), "--gt", str(gt_root)]
    assert main([*argv, "--subset", "davis-all", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "83.33" in printed and "frame-pooled" in printed
    data = json.loads(out_json.read_text())
    assert data["jm"] == pytest.approx(10 / 12) and data["n_frames"] == 12 and data["mode"] == "pooled"

    assert main([*argv, "--mode", "per_sequence"]) == 0
    assert "50.00" in capsys.readouterr().out

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["masks", "--pred", str(tmp_path / "nowhere"), "--gt", str(gt_root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nowhere" in err
