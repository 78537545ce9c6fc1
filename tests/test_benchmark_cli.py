"""``easi3r benchmark`` and ``easi3r eval points`` through their command-line entry points."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from easi3r.datasets import write_oracle_predictions, write_synthetic_dataset
from easi3r.datasets.cli import add_benchmark_parser
from easi3r.datasets.cli import main as benchmark_main
from easi3r.eval.cli import main as eval_main

pytestmark = pytest.mark.filterwarnings("ignore:frame\\(s\\).*single pair:UserWarning")


def test_benchmark_predictions_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, pred, out = tmp_path / "davis", tmp_path / "pred", tmp_path / "out"
    write_synthetic_dataset("davis", root, frames=3)
    write_oracle_predictions("davis", root, pred)
    code = benchmark_main(["davis", "--root", str(root), "--out", str(out), "--predictions", str(pred),
                           "--method", "GT", "--backbone", "oracle", "--quiet"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "2/2 sequences scored" in text
    md = (out / "results.md").read_text()
    assert "| GT (oracle) | 100.00 | 100.00 | 100.00 | 100.00 | 100.00 | 2/2 |" in md


def test_benchmark_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmark_main(["kitti", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'kitti'") and err.count("\n") == 1
    assert benchmark_main(["sintel", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark_main(["davis", "--root", str(tmp_path), "--out", "o", "--iterations", "many"])


def test_add_benchmark_parser_registers_the_command(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_benchmark_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["benchmark", "bonn", "--root", "r", "--out", "o", "--window", "3", "--no-flow"])
    assert args.dataset == "bonn" and args.window == 3 and args.flow is False and callable(args.func)
    assert not hasattr(args, "iterations")  # options left out keep the dataset's official value


@pytest.mark.slow
def test_benchmark_runs_the_model(tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, out = tmp_path / "tum", tmp_path / "out"
    write_synthetic_dataset("tum-dynamics", root, sequences=("rgbd_dataset_freiburg3_walking_xyz",), frames=5)
    argv = ["tum", "--root", str(root), "--out", str(out), "--backbone", str(tiny_checkpoint), "--device", "cpu",
            "--image-size", "64", "--iterations", "2", "--no-flow", "--clusters", "8", "--max-frames", "4"]  # fmt: skip
    assert benchmark_main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    (seq,) = result["sequences"]
    assert seq["status"] == "ok" and seq["frames"] == 4 and seq["window"] == 2
    assert np.isfinite(seq["metrics"]["ate"]) and result["config"]["align"]["iterations"] == 2
    assert len(list((out / "inputs" / seq["sequence"]).iterdir())) == 4  # --max-frames caps the staged frames
    assert "| Easi3R (tiny_dust3r) |" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- eval points


def test_eval_points_dycheck_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, pred = tmp_path / "iphone", tmp_path / "pred"
    write_synthetic_dataset("dycheck", root, sequences=("apple",), frames=3)
    write_oracle_predictions("dycheck", root, pred)
    out = tmp_path / "m.json"
    code = eval_main(["points", "--pred", str(pred / "apple"), "--gt", str(root / "apple" / "prepare_all_stride10"),
                      "--json", str(out)])  # fmt: skip
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["accuracy"] < 1e-5 and metrics["completeness"] < 1e-5 and metrics["n_points"] == 64 * 48 * 3
    assert "accuracy" in capsys.readouterr().out
    (pred / "apple" / "depths.npz").unlink()
    assert eval_main(["points", "--pred", str(pred / "apple"), "--gt", str(root / "apple/prepare_all_stride10")]) == 2
    assert "no depth maps" in capsys.readouterr().err


def test_eval_points_clouds(tmp_path: Path) -> None:
    # A unit grid and the same grid shifted by 0.1 along x: every nearest neighbour is 0.1 away.
    grid = np.stack(np.meshgrid(np.arange(4.0), np.arange(3.0), np.arange(2.0), indexing="ij"), -1).reshape(-1, 3)
    np.save(tmp_path / "gt.npy", grid)
    np.save(tmp_path / "pred.npy", grid + [0.1, 0.0, 0.0])
    out = tmp_path / "m.json"
    argv = ["points", "--pred", str(tmp_path / "pred.npy"), "--gt", str(tmp_path / "gt.npy"), "--corresponding"]
    assert eval_main([*argv, "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    for key in ("accuracy", "completeness", "distance", "accuracy_median"):
        assert m[key] == pytest.approx(0.1)
    assert eval_main(["points", "--pred", str(tmp_path / "pred.npy"), "--gt", str(tmp_path)]) == 2
