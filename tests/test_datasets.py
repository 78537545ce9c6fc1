"""Benchmark datasets: specs, ground-truth readers, synthetic layouts, ground truth as prediction, model runs."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from easi3r.config import Easi3RConfig
from easi3r.datasets import (
    DATASETS,
    get_spec,
    list_sequences,
    run_benchmark,
    write_oracle_predictions,
    write_synthetic_dataset,
)
from easi3r.datasets.groundtruth import read_iphone_cameras, read_sintel_cameras, read_tum_groundtruth
from easi3r.datasets.specs import select_frames, sequence_overrides
from easi3r.datasets.synthetic import DEFAULT_SEQUENCES
from easi3r.errors import Easi3RInputError
from easi3r.export.tum import write_tum

#: The fixture checkpoint's run settings: small enough for a few seconds per sequence on CPU.
FAST: dict[str, Any] = {"image_size": 64, "iterations": 2, "flow": False, "clusters": 8}

pytestmark = pytest.mark.filterwarnings("ignore:frame\\(s\\).*single pair:UserWarning")


def _subset(name: str, seqs: tuple[str, ...] | None = None) -> str:
    return ",".join(seqs if seqs is not None else DEFAULT_SEQUENCES[name])


# ---------------------------------------------------------------------------------------------------- specs


def test_specs_cover_the_five_datasets() -> None:
    assert list(DATASETS) == ["davis", "dycheck", "tum-dynamics", "bonn", "sintel"]
    assert get_spec("TUM").name == "tum-dynamics" and get_spec("iphone").name == "dycheck"
    assert get_spec("dycheck").overrides == {"crop": False}
    assert len(get_spec("davis").subsets["davis16"] or ()) == 20
    assert len(get_spec("davis").subsets["davis17"] or ()) == 30
    assert len(get_spec("sintel").sequences or ()) == 14 and len(get_spec("bonn").sequences or ()) == 5
    with pytest.raises(Easi3RInputError, match="unknown dataset"):
        get_spec("kitti")


def test_window_rules() -> None:
    davis, tum = get_spec("davis"), get_spec("tum-dynamics")
    # ceil((N - 1) / 2) clamp for short sequences; DAVIS > 95 frames -> window 4, other datasets keep 5.
    assert [sequence_overrides(tum, n, 5)["window"] for n in (2, 3, 4, 6, 11, 12, 200)] == [1, 1, 2, 3, 5, 5, 5]
    assert sequence_overrides(davis, 95, 5) == {"window": 5}
    assert sequence_overrides(davis, 96, 5) == {"window": 4}
    assert sequence_overrides(davis, 96, 3) == {"window": 3}
    assert select_frames(7, 2) == [0, 2, 4, 6] and select_frames(7, 1, 2) == [0, 1]
    with pytest.raises(Easi3RInputError):
        select_frames(7, 0)


def test_sequence_listing(tmp_path: Path) -> None:
    write_synthetic_dataset("bonn", tmp_path / "bonn", sequences=("crowd2", "balloon2"), frames=3)
    spec = get_spec("bonn")
    assert list_sequences(spec, tmp_path / "bonn", "all") == ("balloon2", "crowd2")
    assert list_sequences(spec, tmp_path / "bonn", "crowd2") == ("crowd2",)
    with pytest.raises(Easi3RInputError, match="no frames for 3 sequence"):
        list_sequences(spec, tmp_path / "bonn")  # the official list: 3 of its 5 sequences are absent here
    with pytest.raises(Easi3RInputError, match="does not exist"):
        list_sequences(spec, tmp_path / "nowhere")
    write_synthetic_dataset("davis", tmp_path / "davis", sequences=("dog", "zebra"), frames=2)
    assert list_sequences(get_spec("davis"), tmp_path / "davis") == ("dog", "zebra")
    with pytest.raises(Easi3RInputError, match="no frames for 19 sequence"):
        list_sequences(get_spec("davis"), tmp_path / "davis", "davis16")


# ------------------------------------------------------------------------------------------- ground truth


def test_groundtruth_readers_roundtrip(tmp_path: Path) -> None:
    clips = write_synthetic_dataset("sintel", tmp_path / "s", sequences=("alley_2",), frames=3)
    c2w, K = read_sintel_cameras(tmp_path / "s" / "camdata_left" / "alley_2")
    np.testing.assert_allclose(c2w, clips["alley_2"].cam2world, atol=1e-12)
    np.testing.assert_allclose(K, np.broadcast_to(clips["alley_2"].intrinsics, (3, 3, 3)))

    clips = write_synthetic_dataset("dycheck", tmp_path / "d", sequences=("apple",), frames=3)
    c2w, K, names = read_iphone_cameras(tmp_path / "d" / "apple" / "prepare_all_stride10" / "camera")
    assert names == ["0_00000", "0_00010", "0_00020"]
    np.testing.assert_allclose(c2w, clips["apple"].cam2world, atol=1e-12)

    clips = write_synthetic_dataset("tum-dynamics", tmp_path / "t", sequences=("walk",), frames=3)
    gt = read_tum_groundtruth(tmp_path / "t" / "walk" / "groundtruth_all_stride30.txt")
    np.testing.assert_allclose(gt, clips["walk"].cam2world, atol=1e-8)


def test_groundtruth_readers_reject_bad_files(tmp_path: Path) -> None:
    (tmp_path / "cam").mkdir()
    (tmp_path / "cam" / "frame_0001.cam").write_bytes(b"\x00" * 20)
    with pytest.raises(Easi3RInputError, match="truncated"):
        read_sintel_cameras(tmp_path / "cam")
    (tmp_path / "cam" / "frame_0001.cam").write_bytes(b"\x00" * 200)
    with pytest.raises(Easi3RInputError, match="not a Sintel camera file"):
        read_sintel_cameras(tmp_path / "cam")
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "0_00000.json").write_text('{"K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}')
    with pytest.raises(Easi3RInputError, match="cannot read camera file"):
        read_iphone_cameras(tmp_path / "json")
    with pytest.raises(Easi3RInputError, match="no camera JSON"):
        read_iphone_cameras(tmp_path / "cam")


# ----------------------------------------------------------------------------- ground truth as the prediction


@pytest.mark.parametrize("name", list(DATASETS))
def test_ground_truth_as_prediction_is_perfect(tmp_path: Path, name: str) -> None:
    root, pred, out = tmp_path / "data", tmp_path / "pred", tmp_path / "out"
    write_synthetic_dataset(name, root, frames=4)
    subset = _subset(name)
    assert write_oracle_predictions(name, root, pred, subset=subset) == list(DEFAULT_SEQUENCES[name])
    result = run_benchmark(name, root, out, predictions=pred, subset=subset, progress=False)
    assert [r.status for r in result.sequences] == ["ok", "ok"]
    assert not (out / "runs").exists()  # nothing was run
    mean = result.summary["mean"]
    if name == "davis":
        for key in ("JM", "JR", "FM", "FR", "J&F"):
            assert result.summary["pooled"][key] == 1.0 and mean[key] == 1.0
        assert mean["JD"] == 0.0 and mean["FD"] == 0.0
        assert result.sequences[0].per_frame["J"] == [1.0] * 4
    else:
        assert mean["ate"] < 1e-8 and mean["rte"] < 1e-8 and mean["rre_deg"] < 1e-6
    if name == "dycheck":
        # Nearly collinear synthetic camera centres leave the Sim(3) rotation about their line weakly determined:
        # ~1e-7 of rotation noise from the 9-decimal trajectory file, on points ~5 units away.
        for key in ("accuracy", "completeness", "distance", "accuracy_median"):
            assert mean[key] < 1e-5
        assert mean["n_points"] == 64 * 48 * 4
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["sequence"] for r in rows][:2] == list(DEFAULT_SEQUENCES[name])
    assert rows[-1]["sequence"] == "mean" and rows[0]["status"] == "ok"
    md = (out / "results.md").read_text()
    assert "| Easi3R (monst3r) |" in md and "## Configuration" in md and get_spec(name).source in md
    per_seq = json.loads((out / "eval" / f"{DEFAULT_SEQUENCES[name][0]}.json").read_text())
    assert per_seq["status"] == "ok" and per_seq["frames"] == 4


def test_degenerate_and_failed_sequences_are_reported(tmp_path: Path) -> None:
    root, pred, out = tmp_path / "data", tmp_path / "pred", tmp_path / "out"
    seqs = ("walk_a", "walk_b", "walk_c")
    write_synthetic_dataset("tum-dynamics", root, sequences=seqs, frames=4)
    write_oracle_predictions("tum-dynamics", root, pred)
    # walk_b: a camera that never moves (the Sim(3) fit is undetermined); walk_c: no predictions at all.
    write_tum(pred / "walk_b" / "trajectory.tum", np.tile(np.eye(4), (4, 1, 1)))
    for f in (pred / "walk_c").iterdir():
        f.unlink()
    (pred / "walk_c").rmdir()
    result = run_benchmark("tum-dynamics", root, out, predictions=pred, progress=False)
    status = {r.sequence: (r.status, r.error) for r in result.sequences}
    assert status["walk_a"] == ("ok", None)
    assert status["walk_b"][0] == "degenerate" and "all src positions are equal" in str(status["walk_b"][1])
    assert status["walk_c"][0] == "failed" and "no predictions" in str(status["walk_c"][1])
    assert result.summary["mean"]["ate"] < 1e-8  # the mean is over the scored sequence
    md = (out / "results.md").read_text()
    assert "Not scored: 1 degenerate, 1 failed" in md and "| walk_b | degenerate |" in md and "| 1/3 |" in md


def test_inputs_are_checked_before_any_run(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_synthetic_dataset("dycheck", root, sequences=("apple",), frames=3)
    (root / "apple" / "prepare_all_stride10" / "depth_npy" / "0_00010.npy").unlink()
    with pytest.raises(Easi3RInputError, match="no ground-truth depth"):
        run_benchmark("dycheck", root, tmp_path / "out", backbone="/no/such/checkpoint.pth", progress=False)
    write_synthetic_dataset("tum-dynamics", root / "tum", sequences=("walk",), frames=3)
    gt = root / "tum" / "walk" / "groundtruth_all_stride30.txt"
    gt.write_text("\n".join(gt.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(Easi3RInputError, match="2 ground-truth poses for 3 frames"):
        run_benchmark("tum", root / "tum", tmp_path / "out", backbone="/no/such/checkpoint.pth", progress=False)
    with pytest.raises(Easi3RInputError, match="unknown Easi3RConfig option"):
        run_benchmark("tum", root / "tum", tmp_path / "out", overrides={"iteratons": 3}, progress=False)
    assert not (tmp_path / "out" / "runs").exists()


def test_strided_davis_scores_the_matching_annotations(tmp_path: Path) -> None:
    root, pred, out = tmp_path / "data", tmp_path / "pred", tmp_path / "out"
    write_synthetic_dataset("davis", root, sequences=("dog",), frames=6)
    write_oracle_predictions("davis", root, pred)
    # Keep the predictions of frames 0, 2, 4 only: with --stride 2 they must pair with annotations 0, 2, 4.
    masks = sorted((pred / "dog" / "masks").iterdir())
    for k, f in enumerate(masks):
        if k % 2:
            f.unlink()
        else:
            f.rename(f.with_name(f"x{k:05d}.png"))
    result = run_benchmark("davis", root, out, predictions=pred, stride=2, progress=False)
    assert result.sequences[0].frames == 3 and result.summary["pooled"]["JM"] == 1.0
    assert any("every 2-th" in n for n in result.notes)


# ----------------------------------------------------------------------------------------- model end to end


def _expect_config(result_config: dict[str, Any], notes: list[str], name: str) -> None:
    assert result_config["image_size"] == 64 and result_config["align"]["iterations"] == 2
    assert result_config["alignment"] == "global" and result_config["align"]["flow_threshold"] == 20.0
    if name == "dycheck":
        if "crop" in {f.name for f in dataclasses.fields(Easi3RConfig)}:
            assert result_config["crop"] is False
        else:  # the crop field is added by another change; until then the setting is reported as not applied
            assert any("crop=False not applied" in n for n in notes)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["davis", "dycheck", "bonn", "sintel"])
def test_model_run_end_to_end(tmp_path: Path, tiny_checkpoint: Path, name: str) -> None:
    root, out = tmp_path / "data", tmp_path / "out"
    seqs = DEFAULT_SEQUENCES[name] if name == "davis" else DEFAULT_SEQUENCES[name][:1]
    write_synthetic_dataset(name, root, sequences=seqs, frames=4)
    if name == "davis":  # a 3-frame sequence runs with window 1, the 4-frame one with window 2
        (root / "JPEGImages/480p" / seqs[1] / "00003.jpg").unlink()
        (root / "Annotations/480p" / seqs[1] / "00003.png").unlink()
    kwargs: dict[str, Any] = {"backbone": tiny_checkpoint, "overrides": FAST, "device": "cpu", "progress": False}
    result = run_benchmark(name, root, out, subset=",".join(seqs), **kwargs)
    assert [r.status for r in result.sequences] == ["ok"] * len(seqs), [r.error for r in result.sequences]
    _expect_config(result.config, result.notes, name)
    assert result.backbone == "tiny_dust3r"
    summary = json.loads((out / "runs" / "summary.json").read_text())
    assert summary["counts"] == {"done": len(seqs), "skipped": 0, "failed": 0}
    mean = result.summary["mean"]
    if name == "davis":
        assert [r.window for r in result.sequences] == [2, 1]
        assert 0.0 <= result.summary["pooled"]["JM"] <= 1.0 and 0.0 <= result.summary["pooled"]["FM"] <= 1.0
        assert (out / "runs" / seqs[1] / "masks" / "00002.png").is_file()
    else:
        assert np.isfinite(mean["ate"]) and mean["ate"] >= 0 and np.isfinite(mean["rre_deg"])
    if name == "dycheck":
        assert np.isfinite(mean["accuracy"]) and mean["completeness"] > 0
    assert "| Easi3R (tiny_dust3r) |" in (out / "results.md").read_text()
    # Resumable: a second call finds the completed-run markers and runs nothing (the checkpoint is not even loaded).
    again = run_benchmark(name, root, out, subset=",".join(seqs), **{**kwargs, "backbone": "/no/such.pth"})
    assert json.loads((out / "runs" / "summary.json").read_text())["counts"]["skipped"] == len(seqs)
    assert again.summary == result.summary


def _to_official_layout(folder: Path) -> None:
    """Rewrite an easi3r prediction folder as the official launcher's files (base_opt.py savers)."""
    from PIL import Image

    from easi3r.eval.outputs import read_pred_trajectory
    from easi3r.export.tum import canonical_unitquat

    if (folder / "masks").is_dir():
        for k, f in enumerate(sorted((folder / "masks").iterdir())):
            Image.open(f).save(folder / f"dynamic_mask_{k}.png")
            f.unlink()
        (folder / "masks").rmdir()
        return
    poses = read_pred_trajectory(folder)
    quat = canonical_unitquat(poses[:, :3, :3])[:, [3, 0, 1, 2]]  # scalar first, as c2w_to_tumpose
    rows = np.concatenate([np.arange(len(poses))[:, None], poses[:, :3, 3], quat], axis=1)
    (folder / "pred_traj.txt").write_text("".join(" ".join(repr(float(v)) for v in r) + "\n" for r in rows))
    (folder / "trajectory.tum").unlink()
    if (folder / "depths.npz").is_file():
        with np.load(folder / "depths.npz") as data:
            for k, d in enumerate(data["depths"]):
                np.save(folder / f"frame_{k:04d}.npy", d.astype(np.float32))
        (folder / "depths.npz").unlink()
        (folder / "intrinsics.txt").rename(folder / "pred_intrinsics.txt")


@pytest.mark.parametrize("name", ["davis", "dycheck"])
def test_official_output_files_are_read(tmp_path: Path, name: str) -> None:
    root, pred, out = tmp_path / "data", tmp_path / "pred", tmp_path / "out"
    write_synthetic_dataset(name, root, sequences=DEFAULT_SEQUENCES[name][:1], frames=12)
    write_oracle_predictions(name, root, pred)
    _to_official_layout(pred / DEFAULT_SEQUENCES[name][0])
    result = run_benchmark(name, root, out, predictions=pred, progress=False)
    assert result.sequences[0].status == "ok", result.sequences[0].error
    mean = result.summary["mean"]
    if name == "davis":  # dynamic_mask_10.png sorts after dynamic_mask_2.png only by its integer index
        assert result.summary["pooled"]["JM"] == 1.0 and mean["FM"] == 1.0
    else:
        assert mean["ate"] < 1e-8 and mean["accuracy"] < 1e-5 and mean["distance"] < 1e-5


def test_wrong_predictions_score_what_they_should(tmp_path: Path) -> None:
    from PIL import Image

    from easi3r.eval.masks import read_davis_gt
    from easi3r.eval.outputs import read_pred_trajectory

    # DAVIS: the object is in every frame; predicting nothing on the last 4 of 8 frames gives J = F = 0 there.
    root, pred = tmp_path / "davis", tmp_path / "pred_davis"
    write_synthetic_dataset("davis", root, sequences=("dog",), frames=8)
    write_oracle_predictions("davis", root, pred)
    assert read_davis_gt(root, "dog").any(axis=(1, 2)).all()
    for f in sorted((pred / "dog" / "masks").iterdir())[4:]:
        Image.fromarray(np.zeros((48, 64), dtype=np.uint8)).save(f)
    result = run_benchmark("davis", root, tmp_path / "out_davis", predictions=pred, progress=False)
    assert result.sequences[0].per_frame["J"] == [1.0] * 4 + [0.0] * 4
    assert result.sequences[0].per_frame["F"] == [1.0] * 4 + [0.0] * 4
    pooled, mean = result.summary["pooled"], result.summary["mean"]
    assert pooled["JM"] == pooled["JR"] == pooled["FM"] == pooled["J&F"] == 0.5
    assert mean["JD"] == mean["FD"] == 1.0  # decay bins v[0:3] (all 1) and v[5:8] (all 0)

    # Poses: a similarity transform of the ground truth is still perfect (Sim(3) alignment); noise is not.
    root, pred = tmp_path / "tum", tmp_path / "pred_tum"
    write_synthetic_dataset("tum-dynamics", root, sequences=("walk",), frames=6)
    write_oracle_predictions("tum-dynamics", root, pred)
    gt = read_pred_trajectory(pred / "walk")
    c, s = np.cos(0.7), np.sin(0.7)
    sim = np.array([[c, -s, 0, 1.0], [s, c, 0, -2.0], [0, 0, 1, 0.5], [0, 0, 0, 1]])
    moved = sim @ gt
    moved[:, :3, 3] *= 3.0
    write_tum(pred / "walk" / "trajectory.tum", moved)
    result = run_benchmark("tum", root, tmp_path / "out_tum", predictions=pred, progress=False)
    assert result.summary["mean"]["ate"] < 1e-7 and result.summary["mean"]["rre_deg"] < 1e-5
    noisy = gt.copy()
    noisy[:, :3, 3] += np.random.default_rng(0).normal(0, 0.05, (6, 3))
    write_tum(pred / "walk" / "trajectory.tum", noisy)
    result = run_benchmark("tum", root, tmp_path / "out_tum", predictions=pred, progress=False)
    assert 0.005 < result.summary["mean"]["ate"] < 0.1
