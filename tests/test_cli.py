"""The ``easi3r`` command line: demo offline, run on the fixture frames, info, typed errors."""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest

from easi3r.cli import main

EXPECTED = [
    "trajectory.tum",
    "intrinsics.txt",
    "depths.npz",
    "confidence.npz",
    "reconstruction.npz",
    "dynamic_maps.npz",
    "scene.ply",
    "scene.glb",
    "colmap/cameras.txt",
    "colmap/images.txt",
    "colmap/points3D.txt",
]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _check_outputs(out, frames: int) -> None:
    for rel in EXPECTED:
        assert (out / rel).is_file(), rel
    for folder in ("masks", "attention", "images"):
        assert len(list((out / folder).glob("*.png"))) == frames, folder
    data = np.load(out / "reconstruction.npz")
    assert data["cam2world"].shape == (frames, 4, 4)
    assert np.isfinite(data["depths"]).all()


def test_demo_runs_offline_and_writes_every_file(tmp_path, capsys, no_network):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet", "--frames", "5", "--iterations", "5"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOMLY INITIALISED" in printed and "NOT meaningful" in printed
    _check_outputs(out, 5)


def test_run_on_fixture_frames_with_tiny_checkpoint(tmp_path, fixture_frames, tiny_checkpoint, no_network):
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in fixture_frames[:4]:
        shutil.copy(path, folder / path.name)
    out = tmp_path / "out"
    code = main(
        [
            "run",
            str(folder),
            "--out",
            str(out),
            "--backbone",
            str(tiny_checkpoint),
            "--device",
            "cpu",
            "--image-size",
            "256",
            "--iterations",
            "3",
            "--window",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    _check_outputs(out, 4)


def test_info_lists_the_registry(capsys):
    assert main(["info"]) == 0
    printed = capsys.readouterr().out
    for name in ("dust3r", "monst3r", "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt", "CC BY-NC-SA 4.0"):
        assert name in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "/no/such/folder", "--out", "x", "--backbone", "CKPT", "--device", "cpu"], "/no/such/folder"),
        (["run", "FRAMES", "--out", "x", "--backbone", "/no/such.pth", "--device", "cpu"], "no/such.pth"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, capsys, fixture_frames, tiny_checkpoint, argv, message):
    argv = [a.replace("CKPT", str(tiny_checkpoint)).replace("FRAMES", str(fixture_frames[0].parent)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_eval_poses_through_the_main_cli(tmp_path, capsys):
    import roma
    import torch

    from easi3r.export.tum import write_tum

    g = torch.Generator().manual_seed(0)
    gt = np.tile(np.eye(4), (8, 1, 1))
    gt[:, :3, :3] = roma.random_rotmat(8, generator=g, dtype=torch.float64).numpy()
    gt[:, :3, 3] = np.cumsum(np.random.default_rng(0).normal(size=(8, 3)), axis=0)
    pred = gt.copy()
    pred[:, :3, 3] *= 2.5  # a pure change of scale: zero error after Sim(3) alignment
    write_tum(tmp_path / "gt.tum", gt)
    write_tum(tmp_path / "pred.tum", pred)
    out_json = tmp_path / "scores.json"
    code = main(
        [
            "eval",
            "poses",
            "--pred",
            str(tmp_path / "pred.tum"),
            "--gt",
            str(tmp_path / "gt.tum"),
            "--json",
            str(out_json),
        ]
    )
    assert code == 0
    import json

    scores = json.loads(out_json.read_text())
    flat = json.dumps(scores)
    assert "ate" in flat
    errors = [v for k, v in _numbers(scores) if k in ("ate", "rte", "rre_deg")]
    assert len(errors) == 3 and all(abs(v) < 1e-6 for v in errors)


def _numbers(obj, key=None):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, k)
    elif isinstance(obj, (int, float)):
        yield key, obj
