"""A small driver for the browser tests: the system's headless Chromium through Playwright, and servers run as
subprocesses on a free 127.0.0.1 port that stop at the end of the ``with`` block.

Chromium comes from the system packages (Debian ``chromium``; ``.ci/browser.sh`` installs it and Playwright);
Playwright's own browser download (``playwright install``) is never used. :func:`skip_reason` says why the tests
cannot run here (no Playwright, no Chromium), so they skip with that reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM_FLAGS", "browser_page", "find_chromium", "free_port", "serve", "skip_reason", "wait_for"]

#: Flags that work on a closed network without a GPU: no sandbox (containers), no background connections
#: (refused here), software rendering.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-unsafe-swiftshader",
)


def find_chromium() -> str | None:
    """``$EASI3R_CHROMIUM``, else the first of ``chromium``, ``chromium-browser``, ``google-chrome`` on PATH."""
    env = os.environ.get("EASI3R_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def skip_reason(*modules: str) -> str | None:
    """Why the browser tests cannot run here (None when they can): Playwright, Chromium or ``modules`` missing."""
    for name in ("playwright", *modules):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (run .ci/browser.sh)"
    if find_chromium() is None:
        return "no Chromium on PATH (apt-get install chromium; run .ci/browser.sh)"
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``predicate()`` until it returns a truthy value (returned) or ``timeout`` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def serve(args: Sequence[str], port: int, log: Path, *, timeout: float = 180.0) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python args...`` (a server that binds 127.0.0.1:``port``) until its root URL answers; stop it after.

    The server's output goes to ``log``. It runs in its own process group, which is terminated (then killed after
    10 s) when the block ends, whatever happens inside it.

    Raises:
        AssertionError: the server exits or does not answer within ``timeout`` seconds (its log tail is shown).
    """
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"server {args} exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        wait_for(up, timeout, f"{url} to answer")
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@contextlib.contextmanager
def browser_page(user_data_dir: Path, *, width: int = 1400, height: int = 1600) -> Iterator[Any]:
    """A Playwright page in the system's headless Chromium (:data:`CHROMIUM_FLAGS`, a new empty profile in
    ``user_data_dir``, downloads accepted); the browser is closed when the block ends."""
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("no Chromium found")
    user_data_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=chromium,
            headless=True,
            args=list(CHROMIUM_FLAGS),
            accept_downloads=True,
            viewport={"width": width, "height": height},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            context.close()
