"""easi3r.batch in one process: folders, markers, reports, resuming, failing inputs, the rank assignment."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import cv2
import pytest
from PIL import Image

import easi3r.batch as batch
from easi3r import Reconstruction
from easi3r.batch import (
    FAILURES_NAME,
    MARKER_NAME,
    SUMMARY_NAME,
    assign_ranks,
    build_parser,
    count_frames,
    input_names,
    main,
    read_marker,
    run_many,
)
from easi3r.demo import render_video
from easi3r.errors import CheckpointError, Easi3RInputError

# Three-frame clips leave the end frames with one pair per role; the pipeline says so, which is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:frame\\(s\\).*single pair:UserWarning")

#: Small enough for a few seconds per input on CPU (clusters: the 48 tokens of a 64x48 frame hold no 64 clusters).
OVERRIDES: dict[str, Any] = {"image_size": 64, "iterations": 2, "flow": False, "clusters": 8}
GOOD = ("alpha", "beta", "gamma.mp4")
BAD = ("broken.mp4", "truncated")


def _write_folder(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    for k, frame in enumerate(render_video(3, 64, 48, seed=seed).frames):
        Image.fromarray(frame).save(folder / f"{k:03d}.png")
    return folder


def _write_video(path: Path, seed: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for frame in render_video(3, 64, 48, seed=seed).frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _make_inputs(base: Path) -> dict[str, Path]:
    inputs = {
        "alpha": _write_folder(base / "alpha", 0),
        "beta": _write_folder(base / "beta", 1),
        "gamma.mp4": _write_video(base / "gamma.mp4", 2),
        "broken.mp4": base / "broken.mp4",
        "truncated": _write_folder(base / "truncated", 3),
    }
    inputs["broken.mp4"].write_text("not a video\n")
    png = inputs["truncated"] / "002.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    return inputs


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


class _NoModel:
    """Stands in for ``Easi3R``: building a model at all fails the test (a rerun must not need one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise CheckpointError("the model was loaded although every input was complete")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("batch")
    inputs = _make_inputs(base / "in")
    root = base / "out"
    results = run_many(
        [inputs[k] for k in GOOD + BAD],
        root,
        backbone=tiny_checkpoint,
        device="cpu",
        overrides=OVERRIDES,
        progress=False,
    )
    return {
        "inputs": inputs,
        "root": root,
        "results": results,
        "summary": json.loads((root / SUMMARY_NAME).read_text()),
        "failures": json.loads((root / FAILURES_NAME).read_text()),
        "mtimes": {name: _mtimes(root / name) for name in ("alpha", "beta", "gamma")},
    }


def test_every_good_input_gets_a_complete_folder(first_run: dict[str, Any]) -> None:
    root, results = first_run["root"], first_run["results"]
    assert [r.name for r in results] == ["alpha", "beta", "gamma", "broken", "truncated"]
    assert [r.status for r in results] == ["done", "done", "done", "failed", "failed"]
    for r in results[:3]:
        folder = root / r.name
        for rel in ("reconstruction.npz", "trajectory.tum", "intrinsics.txt", "scene.ply", "masks/00002.png"):
            assert (folder / rel).is_file(), f"{r.name}: {rel} missing"
        marker = read_marker(folder)
        assert marker is not None
        assert marker["frames"] == r.frames == 3
        assert marker["input"] == r.input
        assert marker["config"]["image_size"] == 64 and marker["config"]["align"]["iterations"] == 2
        assert marker["config"]["flow"] is False and marker["seconds"] > 0
        assert marker["easi3r_version"]
        assert Reconstruction.load(folder).num_frames == 3
        assert r.error is None and r.rank == 0 and r.seconds > 0


def test_summary_lists_every_input(first_run: dict[str, Any]) -> None:
    summary, root = first_run["summary"], first_run["root"]
    assert summary["world_size"] == 1
    assert summary["counts"] == {"done": 3, "skipped": 0, "failed": 2}
    entries = summary["inputs"]
    assert [e["name"] for e in entries] == [r.name for r in first_run["results"]]
    for entry, r in zip(entries, first_run["results"]):
        assert entry["status"] == r.status and entry["frames"] == r.frames and entry["rank"] == 0
        assert entry["output"] == str(root / r.name) and entry["input"] == r.input
        assert entry["error"] == r.error


def test_failing_inputs_are_recorded_and_the_others_finish(first_run: dict[str, Any]) -> None:
    inputs, root = first_run["inputs"], first_run["root"]
    failures = first_run["failures"]
    assert [f["input"] for f in failures] == [str(inputs["broken.mp4"]), str(inputs["truncated"])]
    assert all(f["rank"] == 0 and "\n" not in f["error"] for f in failures)
    assert "cannot open video" in failures[0]["error"]
    assert "cannot read image" in failures[1]["error"] and "002.png" in failures[1]["error"]
    for name in ("broken", "truncated"):
        assert read_marker(root / name) is None
    broken = first_run["results"][3]
    assert broken.frames == 0 and broken.error == failures[0]["error"]
    assert first_run["results"][4].frames == 3  # counted in the folder, although unreadable


def test_rerun_skips_complete_inputs_without_loading_or_rewriting(
    first_run: dict[str, Any], tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "Easi3R", _NoModel)
    inputs, root = first_run["inputs"], first_run["root"]
    again = run_many([inputs[k] for k in GOOD], root, backbone=tiny_checkpoint, overrides=OVERRIDES, progress=False)
    assert [(r.name, r.status, r.frames, r.error) for r in again] == [
        ("alpha", "skipped", 3, None),
        ("beta", "skipped", 3, None),
        ("gamma", "skipped", 3, None),
    ]
    for name, before in first_run["mtimes"].items():
        assert _mtimes(root / name) == before, f"{name}: files were rewritten"
    summary = json.loads((root / SUMMARY_NAME).read_text())
    assert summary["counts"] == {"done": 0, "skipped": 3, "failed": 0}
    assert json.loads((root / FAILURES_NAME).read_text()) == []
    # The command line resumes the same way (exit 0, nothing run).
    args = [str(inputs[k]) for k in GOOD] + ["--out", str(root), "--backbone", str(tiny_checkpoint), "--quiet"]
    args += [f"--set={k}={json.dumps(v)}" for k, v in OVERRIDES.items()]
    assert main(args) == 0


def test_model_that_cannot_be_built_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "Easi3R", _NoModel)
    folder = _write_folder(tmp_path / "clip", 0)
    with pytest.raises(CheckpointError, match="model was loaded"):
        run_many([folder], tmp_path / "out", overrides=OVERRIDES, progress=False)
    assert not (tmp_path / "out" / SUMMARY_NAME).exists()
    args = [str(folder), "--out", str(tmp_path / "out2"), "--quiet"]
    assert main(args) == 2


def test_bad_arguments_fail_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Easi3RInputError, match="at least one input"):
        run_many([], tmp_path / "out")
    with pytest.raises(TypeError, match="no_such_option"):
        run_many([tmp_path], tmp_path / "out", overrides={"no_such_option": 1}, progress=False)
    with pytest.raises(Easi3RInputError, match="image_size"):
        run_many([tmp_path], tmp_path / "out", overrides={"image_size": 50}, progress=False)
    with pytest.raises(Easi3RInputError, match="invalid device"):
        run_many([tmp_path], tmp_path / "out", overrides={"device": "gpu0"}, progress=False)
    assert not (tmp_path / "out").exists()
    assert main([str(tmp_path), "--out", str(tmp_path / "out"), "--set", "no_such_option=1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no_such_option" in err[0]


def test_set_values_are_typed() -> None:
    args = build_parser().parse_args(
        ["in", "--out", "o", "--set", "iterations=3", "--set", "flow=false", "--set", "threshold=otsu"]
        + ["--set", "fps=None", "--set", "lr=0.5", "--set", "cyclic=True"]
    )
    assert dict(args.overrides) == {
        "iterations": 3,
        "flow": False,
        "threshold": "otsu",
        "fps": None,
        "lr": 0.5,
        "cyclic": True,
    }
    with pytest.raises(SystemExit):
        build_parser().parse_args(["in", "--out", "o", "--set", "iterations"])


def test_input_names_are_unique_and_deterministic(tmp_path: Path) -> None:
    (tmp_path / "clip").mkdir()
    (tmp_path / "Clip.mp4").write_text("")
    given = [tmp_path / "clip", tmp_path / "Clip.mp4", "other/clip.avi", "clip-2", "summary.json", "x/frames"]
    names = input_names(given)
    assert names == ["clip", "Clip-2", "clip-3", "clip-2-2", "summary", "frames"]
    assert input_names(given) == names
    (tmp_path / "summary.json").mkdir()
    assert input_names([tmp_path / "summary.json"]) == ["summary.json-2"]  # no folder shadows the root's report
    assert len({n.casefold() for n in names}) == len(names)


def test_count_frames(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path / "f", 0)
    (folder / "notes.txt").write_text("x")
    (folder / "sub").mkdir()
    assert count_frames(folder) == 3
    assert count_frames(_write_video(tmp_path / "v.mp4", 0)) == 3
    assert count_frames(folder / "000.png") == 1
    (tmp_path / "bad.mp4").write_text("not a video")
    assert count_frames(tmp_path / "bad.mp4") == 0
    assert count_frames(tmp_path / "missing.mp4") == 0
    assert count_frames(tmp_path / "f" / "notes.txt") == 0


def test_assign_ranks_is_balanced_and_deterministic() -> None:
    rng = random.Random(0)
    for world in (1, 2, 3, 5):
        for _ in range(50):
            lengths = [rng.randint(0, 300) for _ in range(rng.randint(1, 20))]
            ranks = assign_ranks(lengths, world)
            assert ranks == assign_ranks(lengths, world)
            assert all(0 <= r < world for r in ranks)
            loads = [sum(n for n, r in zip(lengths, ranks) if r == q) for q in range(world)]
            # Longest-first greedy: no rank exceeds another by more than one input (the longest one).
            assert max(loads) - min(loads) <= max(lengths)
            assert max(loads) <= sum(lengths) / world + max(lengths)
    assert assign_ranks([5, 5, 5], 2) == [0, 1, 0]  # ties: input order, lowest rank
    assert assign_ranks([1, 9, 4, 4], 2) == [1, 0, 1, 1]
    assert assign_ranks([0, 0, 0, 0], 2) == [0, 1, 0, 1]  # empty inputs are spread too
    assert assign_ranks([3, 1], 4) == [0, 1]
    with pytest.raises(Easi3RInputError):
        assign_ranks([1], 0)
    with pytest.raises(Easi3RInputError):
        assign_ranks([-1], 2)


def test_read_marker_rejects_incomplete_files(tmp_path: Path) -> None:
    assert read_marker(tmp_path) is None
    (tmp_path / MARKER_NAME).write_text('{"frames": 4')
    assert read_marker(tmp_path) is None
    (tmp_path / MARKER_NAME).write_text('{"frames": "4"}')
    assert read_marker(tmp_path) is None
    (tmp_path / MARKER_NAME).write_text(json.dumps({"frames": 4, "input": "x"}))
    assert read_marker(tmp_path) == {"frames": 4, "input": "x"}
