"""Peak-memory measurement shared by the benchmark scripts (not part of the library).

On CPU, torch allocations are invisible to ``tracemalloc`` and the process's ``ru_maxrss`` only ever rises, so a
thread samples the resident set size every millisecond while the measured function runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def rss_bytes() -> int:
    """Current resident set size of this process in bytes (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_during(fn: Callable[[], T], interval: float = 0.001) -> tuple[T, int]:
    """Run ``fn``; return its result and the peak resident set size above the level at the start (bytes)."""
    start = rss_bytes()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    return result, max(peak[0], rss_bytes()) - start
