"""``easi3r run``: every configuration field is an option, ``--config`` round-trips, inputs and the output folder are
checked before any work, errors are one line with exit code 2 (a traceback only with ``--debug``)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from easi3r.cli import build_parser, load_config_file, main, resolve_config
from easi3r.config import AlignConfig, Easi3RConfig
from easi3r.demo import render_video

FAST = ["--image-size", "64", "--iterations", "2", "--no-flow", "--clusters", "8", "--quiet"]


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for k, f in enumerate(render_video(4, 64, 48, seed=5).frames):
        Image.fromarray(f).save(folder / f"{k:02d}.png")
    return folder


def _value_for(annotation: object, default: object) -> tuple[str, object]:
    """A valid non-default value of a field and its command-line spelling."""
    args = typing.get_args(annotation)
    literals = [a for a in args if isinstance(a, str)] or list(typing.get_args(annotation))
    if annotation is bool:
        return ("--no-{}" if default else "--{}"), (not default)
    if isinstance(default, bool):
        return ("--no-{}" if default else "--{}"), (not default)
    if isinstance(default, int):
        return "--{} " + str(default + 1), default + 1
    if isinstance(default, float):
        value = default / 2 if default else 0.25
        return "--{} " + repr(value), value
    if typing.get_origin(annotation) is typing.Literal:
        other = next(a for a in literals if a != default)
        return "--{} " + str(other), other
    raise AssertionError(f"no test value for {annotation!r}")


def test_every_config_field_is_an_option() -> None:
    parser = build_parser()
    for cls in (Easi3RConfig, AlignConfig):
        hints = typing.get_type_hints(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            if f.name in ("align", "device"):  # nested config / the --device option
                continue
            default = getattr(defaults, f.name)
            special = {"fps": ("--{} 2.5", 2.5), "max_frames": ("--{} 50", 50), "threshold": ("--{} 0.3", 0.3),
                       "image_size": ("--{} 224", 224), "flow_weights": ("--{} raft.pth", "raft.pth"),
                       "sam2": ("--{} sam2.1_hiera_tiny.pt", "sam2.1_hiera_tiny.pt")}  # fmt: skip
            if f.name in special:
                spelled, value = special[f.name]
            else:
                spelled, value = _value_for(hints[f.name], default)
            argv = ["run", "x", "--out", "o", *spelled.format(f.name.replace("_", "-")).split()]
            config = resolve_config(parser.parse_args(argv))
            got = getattr(config.align if cls is AlignConfig else config, f.name)
            assert got == value, (f.name, got, value)


def test_help_is_grouped_by_stage() -> None:
    text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]
    for title in ("frames:", "pairs and network:", "segmentation:", "alignment:", "output files:"):
        assert title in text


def test_config_file_round_trip(tmp_path: Path, frames: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "a"
    assert (
        main(["run", str(frames), "--out", str(out), "--backbone", str(tiny_checkpoint), *FAST, "--window", "2"]) == 0
    )
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["window"] == 2 and saved["config"]["align"]["iterations"] == 2
    again = load_config_file(out / "config.json")
    assert again.to_dict() == saved["config"]
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("window: 3\nalign:\n  iterations: 4\n")
    assert load_config_file(yaml_file).window == 3 and load_config_file(yaml_file).align.iterations == 4
    # --config then options on top of it; the second run's config.json equals the first but for the override.
    out2 = tmp_path / "b"
    assert main(["run", str(frames), "--out", str(out2), "--backbone", str(tiny_checkpoint),
                 "--config", str(out / "config.json"), "--quiet", "--clusters", "6"]) == 0  # fmt: skip
    second = json.loads((out2 / "config.json").read_text())["config"]
    assert {k: v for k, v in second.items() if k != "clusters"} == {
        k: v for k, v in saved["config"].items() if k != "clusters"
    }
    assert second["clusters"] == 6
    a, b = np.load(out / "reconstruction.npz"), np.load(out2 / "reconstruction.npz")
    assert a["masks"].shape == b["masks"].shape


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--lr", "nan"], "lr must be finite"), (["--threshold", "1.5"], "threshold must be in"),
     (["--flow-weight", "-1"], "flow_weight must be in"), (["--image-size", "70"], "multiple of 16"),
     (["--align-overlap", "1"], "align_overlap"), (["--device", "mps"], "mps")],
)  # fmt: skip
def test_bad_values_are_one_line_errors(
    option: list[str], message: str, frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = time.monotonic()
    code = main(["run", str(frames), "--out", str(tmp_path / "o"), "--backbone", "no/such-hub-model", *option])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert "Traceback" not in "\n".join(err)
    assert time.monotonic() - start < 5  # refused before any backbone is fetched


def test_output_folder_checked_before_any_work(
    tmp_path: Path, frames: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, words in ((a_file, "is a file"), (a_file / "sub", "lies under")):
        # A hub id that cannot be fetched: reaching it would take many seconds and end in another error.
        start = time.monotonic()
        code = main(["run", str(frames), "--out", str(out), "--backbone", "no/such-hub-model", "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], err
        assert time.monotonic() - start < 5
        assert main(["demo", "--out", str(out), "--quiet"]) == 2
        assert words in capsys.readouterr().err
    assert a_file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path: Path, frames: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["run", str(frames), "--out", str(locked / "o"), "--quiet"]) == 2
    assert "not writable" in capsys.readouterr().err


def test_missing_input_and_debug_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: input {str(tmp_path / 'nope')!r} does not exist"]
    assert main(["--debug", "run", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_degenerate_frames_end_to_end_from_the_cli(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """All-white frames (hardening item 1) through ``easi3r run``: a finite result, never a raw linear-algebra
    error or a traceback."""
    folder = tmp_path / "white"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(np.full((48, 64, 3), 255, np.uint8)).save(folder / f"{k}.png")
    code = main(["run", str(folder), "--out", str(tmp_path / "o"), "--backbone", str(tiny_checkpoint), *FAST])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "LinAlgError" not in err
    assert code == 0, err
    rec = np.load(tmp_path / "o" / "reconstruction.npz")
    assert np.isfinite(rec["cam2world"]).all() and np.isfinite(rec["depths"]).all()
    assert (rec["intrinsics"][:, 0, 0] > 0).all()
