"""Subprocess tooling for the multi-process tests: torchrun on 127.0.0.1 with gloo, bounded in time, every process
ended (each run gets its own session; its whole process group is killed on timeout and checked to be gone)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import easi3r
from easi3r.distributed import TIMEOUT_ENV, TORCHRUN_ENV

REPO = Path(easi3r.__file__).resolve().parents[1]
TESTS = REPO / "tests"
TIMEOUT_S = 300
TORCHRUN_2 = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def env(collective_timeout_s: int = 120) -> dict[str, str]:
    """The parent's environment without torchrun variables, one thread per process, gloo on loopback only."""
    out = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    out.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    if sys.platform.startswith("linux"):
        out["GLOO_SOCKET_IFNAME"] = "lo"
    # A peer that vanished without torchrun noticing still ends the survivors well inside the test's limit.
    out[TIMEOUT_ENV] = str(collective_timeout_s)
    out["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), out.get("PYTHONPATH", "")])
    return out


def group_gone(pgid: int, wait_s: float = 10.0) -> bool:
    """Whether every process of the process group ``pgid`` has ended (waiting up to ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def run_python(args: list[str], timeout_s: int = TIMEOUT_S) -> dict[str, Any]:
    """Run ``python ARGS`` in a new session; kill its process group on timeout or when anything is left."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{args[:6]} did not end within {timeout_s} s; stderr tail: {err[-2000:]}")
    elapsed = time.monotonic() - start
    gone = group_gone(proc.pid)
    if not gone:
        os.killpg(proc.pid, signal.SIGKILL)
    return {"rc": proc.returncode, "out": out, "err": err, "seconds": elapsed, "group_gone": gone}
