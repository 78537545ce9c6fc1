"""Helpers shared by the benchmark scripts (not part of the library): peak memory, random weights, stage times.

On CPU, torch allocations are invisible to ``tracemalloc`` and the process's ``ru_maxrss`` only ever rises, so a
thread samples the resident set size every millisecond while the measured function runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

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


def sync(device: Any) -> None:
    """Wait for ``device``'s queued work (CUDA), so that a clock read after it times that work."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_with_stage_times(runner: Any, frames: Any, device: Any) -> tuple[Any, float, dict[str, float]]:
    """``runner.run(frames)`` -> (reconstruction, total seconds, seconds per stage). The stages are the ``easi3r``
    logger's ``stage: <name>`` markers (on CUDA the device is synchronised at each one)."""
    marks: list[tuple[str, float]] = []

    class Marker(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if msg.startswith("stage: "):
                sync(device)
                marks.append((msg[7:].split(" (")[0], time.perf_counter()))

    logger = logging.getLogger("easi3r")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    handler = Marker()
    logger.addHandler(handler)
    try:
        t0 = time.perf_counter()
        rec = runner.run(frames, progress=False)
        sync(device)
        end = time.perf_counter()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    stages: dict[str, float] = {}
    for (name, t), (_, t_next) in zip(marks, marks[1:] + [("end", end)]):
        stages[name] = stages.get(name, 0.0) + t_next - t
    return rec, end - t0, stages


def randomize_weights_(net, seed: int = 0) -> None:
    """Random weights that give structured attention, as the official fixture's tiny model has.

    Linear/conv weights ~ N(0, (g / sqrt(fan_in))^2) with g = 1.5 for the query/key projections (sharper softmax) and
    1 elsewhere, LayerNorm weights 1 + N(0, 0.1), biases N(0, 0.02). With near-zero weights every attention would be
    uniform and the readout maps pure rounding noise, which makes mask comparisons meaningless.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias") or name == "mask_token":
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif p.ndim == 1:
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.1)
            else:
                gain = 1.5 if any(k in name for k in ("attn.qkv", "projq", "projk")) else 1.0
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * gain / fan_in**0.5)


def naive_pass(net, images, edges, masks=None) -> list:
    """One pass the way the official code runs it: per pair, both images encoded again, every layer's full score
    matrix recorded (:class:`~easi3r.backbones.ScoreMatrixRecorder`), heads run; returns ``[(prediction, view-1
    token grid (h, w, C)), ...]`` in edge order, all kept."""
    import torch

    from easi3r.backbones import ScoreMatrixRecorder

    stored = []
    with torch.inference_mode():
        for i, j in edges.tolist():
            probe = ScoreMatrixRecorder()  # every layer's full logits, as the official attention keeps them
            m1 = masks[i : i + 1] if masks is not None else None
            m2 = masks[j : j + 1] if masks is not None else None
            enc_1 = net.encode(images[i : i + 1])  # re-encoded for every pair, as the official code does
            pred = net.forward_pair(enc_1, images[j : j + 1], dynamic_mask1=m1, dynamic_mask2=m2, probe=probe)
            stored.append((pred, enc_1.token_grid()[0]))
            del probe
    return stored
