"""easi3r.distributed and the batch runner on two gloo processes started by ``torchrun`` (127.0.0.1 only).

Every subprocess runs in its own session with a wall-clock limit; its whole process group is killed on timeout and
checked to be gone afterwards.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers.procs import run_python
from PIL import Image

from easi3r.batch import MARKER_NAME, SUMMARY_NAME
from easi3r.demo import render_video
from easi3r.distributed import (
    TIMEOUT_ENV,
    TORCHRUN_ENV,
    DistContext,
    all_gather_objects,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown,
)
from easi3r.errors import Easi3RInputError

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

TIMEOUT_S = 300
SETTINGS = ["--set", "image_size=64", "--set", "iterations=2", "--set", "flow=false", "--set", "clusters=8"]
NAMES = ("alpha", "beta", "gamma")


def _run(args: list[str]) -> dict[str, Any]:
    return run_python(args, TIMEOUT_S)


def _torchrun(module: str, inputs: list[Path], root: Path, backbone: Path) -> dict[str, Any]:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", module]
    return _run([*launcher, *map(str, inputs), "--out", str(root), "--backbone", str(backbone), *SETTINGS, "--quiet"])


def _write_inputs(base: Path) -> list[Path]:
    folders = []
    for seed, name in enumerate(NAMES):
        folder = base / name
        folder.mkdir(parents=True)
        for k, frame in enumerate(render_video(3, 64, 48, seed=seed).frames):
            Image.fromarray(frame).save(folder / f"{k:03d}.png")
        folders.append(folder)
    return folders


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the context without a launcher ------------------------------------------------------------------------------
@pytest.fixture
def no_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (*TORCHRUN_ENV, TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.mark.usefixtures("no_torchrun_env")
def test_single_process_context_makes_collectives_no_ops() -> None:
    ctx = init_distributed("cpu")
    assert ctx == DistContext.single("cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.backend, ctx.owns_group) == (0, 1, 0, "none", False)
    assert ctx.device == torch.device("cpu") and ctx.is_main and not ctx.distributed
    assert all_gather_objects(ctx, {"a": 1}) == [{"a": 1}]
    assert broadcast_object(ctx, [3]) == [3]
    barrier(ctx)
    shutdown(ctx)
    assert not dist.is_initialized()
    with pytest.raises(Easi3RInputError, match="source rank"):
        broadcast_object(ctx, 1, src=1)


@pytest.mark.usefixtures("no_torchrun_env")
def test_torchrun_variables_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert init_distributed("cpu").world_size == 1  # WORLD_SIZE 1: no group is created
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(Easi3RInputError, match=TIMEOUT_ENV):
        init_distributed("cpu")
    monkeypatch.setenv(TIMEOUT_ENV, "0")
    with pytest.raises(Easi3RInputError, match="timeout"):
        init_distributed("cpu")
    monkeypatch.setenv(TIMEOUT_ENV, "5")
    monkeypatch.setenv("RANK", "first")
    with pytest.raises(Easi3RInputError, match="RANK"):
        init_distributed("cpu")
    assert not dist.is_initialized()


@pytest.mark.usefixtures("no_torchrun_env")
def test_a_rank_without_its_gpu_is_told_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(Easi3RInputError, match=r"wants cuda:3 but this node has 1 GPU"):
        init_distributed("cuda:3")


@pytest.mark.usefixtures("no_torchrun_env")
def test_a_callers_group_is_used_and_left_to_the_caller() -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        ctx = init_distributed("cpu")
        assert (ctx.backend, ctx.owns_group, ctx.world_size) == ("gloo", False, 1)
        shutdown(ctx)
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


# -- two processes -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, Any]:
    """The same three inputs: once in one process, then on two ranks (each run recorded right after it ended)."""
    base = tmp_path_factory.mktemp("dist")
    inputs = _write_inputs(base / "in")
    single = base / "single"
    cli = ["-m", "easi3r.batch", *map(str, inputs), "--out", str(single), "--backbone", str(tiny_checkpoint)]
    one = _run([*cli, *SETTINGS, "--quiet"])
    assert one["rc"] == 0, one["err"][-3000:]
    root = base / "two"
    two = _torchrun("easi3r.batch", inputs, root, tiny_checkpoint)
    assert two["rc"] == 0, two["err"][-3000:]
    return {
        "inputs": inputs,
        "single": single,
        "root": root,
        "two": two,
        "summary": json.loads((root / SUMMARY_NAME).read_text()),
        "mtimes": {n: (root / n / "reconstruction.npz").stat().st_mtime_ns for n in NAMES},
    }


@pytest.mark.slow
def test_two_ranks_reproduce_the_single_process_outputs(runs: dict[str, Any]) -> None:
    assert runs["two"]["group_gone"]
    summary = runs["summary"]
    assert summary["world_size"] == 2 and summary["counts"] == {"done": 3, "skipped": 0, "failed": 0}
    assert [e["rank"] for e in summary["inputs"]] == [0, 1, 0]  # equal lengths: round robin in input order
    for name in NAMES:
        assert (runs["root"] / name / MARKER_NAME).is_file()
        with (
            np.load(runs["single"] / name / "reconstruction.npz") as a,
            np.load(runs["root"] / name / "reconstruction.npz") as b,
        ):
            np.testing.assert_array_equal(a["masks"], b["masks"])
            np.testing.assert_allclose(a["cam2world"], b["cam2world"], rtol=0, atol=1e-5)
            np.testing.assert_allclose(a["intrinsics"], b["intrinsics"], rtol=0, atol=1e-5)
            assert list(a["frame_names"]) == list(b["frame_names"])


@pytest.mark.slow
def test_restart_after_a_finished_run_skips_everything(runs: dict[str, Any], tiny_checkpoint: Path) -> None:
    again = _torchrun("easi3r.batch", runs["inputs"], runs["root"], tiny_checkpoint)
    assert again["rc"] == 0, again["err"][-3000:]
    assert again["group_gone"]
    summary = json.loads((runs["root"] / SUMMARY_NAME).read_text())
    assert [(e["status"], e["rank"]) for e in summary["inputs"]] == [("skipped", 0), ("skipped", 1), ("skipped", 0)]
    assert {n: (runs["root"] / n / "reconstruction.npz").stat().st_mtime_ns for n in NAMES} == runs["mtimes"]


@pytest.mark.slow
def test_a_failing_rank_ends_the_whole_run(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from helpers.batch_fail_rank import FAILING_RANK, MESSAGE

    inputs = _write_inputs(tmp_path / "in")
    result = _torchrun("helpers.batch_fail_rank", inputs, tmp_path / "out", tiny_checkpoint)
    assert result["rc"] != 0
    assert result["seconds"] < TIMEOUT_S
    lines = [line for line in result["err"].splitlines() if line.startswith("error: ")]
    assert lines == [f"error: rank {FAILING_RANK}/2: unexpected RuntimeError: {MESSAGE}"], result["err"][-3000:]
    assert result["group_gone"], "processes of the failed run were left behind"
    assert not (tmp_path / "out" / SUMMARY_NAME).exists()
