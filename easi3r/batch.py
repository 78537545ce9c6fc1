"""Many videos, one command: each input reconstructed into its own folder, inputs shared out among ranks.

:func:`run_many` runs :meth:`easi3r.Easi3R.run` on every input and saves each result into ``ROOT/<name>/``.
Under ``torchrun`` the inputs are divided among the processes **whole** (a video never spans ranks, so no
collective runs per video): rank 0 counts the frames of every input and plans the assignment (longest first,
each to the least-loaded rank, :func:`assign_ranks`), every rank then works through its own inputs with one
model, and the results are gathered to rank 0 at the end.

The output root after a run::

    ROOT/<name>/                       every file of Reconstruction.save
    ROOT/<name>/.easi3r-complete.json  written last: the input is complete (a rerun skips it)
    ROOT/summary.json                  every input: status done/skipped/failed, frames, seconds, rank, folder
    ROOT/failures.json                 [{input, error, rank}] of the failed inputs ([] when none failed)

A failing input (bad file, degenerate scene, anything) is recorded with its one-line error and the other inputs go
on; it gets no marker, so a rerun tries it again. Command line (until ``easi3r run`` routes several inputs here)::

    torchrun --standalone --nproc-per-node 2 -m easi3r.batch a.mp4 b.mp4 frames/ --out ROOT --set iterations=100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import torch
from tqdm.auto import tqdm

from .backbones import Backbone
from .config import Easi3RConfig
from .device import resolve_device
from .distributed import DistContext, all_gather_objects, barrier, broadcast_object, init_distributed, shutdown
from .errors import CheckpointError, Easi3RError, Easi3RInputError, first_line
from .export.atomic import atomic_write_text
from .frames import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, is_video_path
from .pipeline import Easi3R

__all__ = [
    "FAILURES_NAME",
    "MARKER_NAME",
    "SUMMARY_NAME",
    "InputResult",
    "assign_ranks",
    "count_frames",
    "input_names",
    "main",
    "read_marker",
    "run_command",
    "run_many",
]

#: Completed-run marker inside an input's folder (written last, atomically).
MARKER_NAME = ".easi3r-complete.json"
#: Per-input summary of the whole run, in the output root (rank 0 writes it).
SUMMARY_NAME = "summary.json"
#: The failed inputs of the run, in the output root (rank 0 writes it, ``[]`` when none failed).
FAILURES_NAME = "failures.json"

Status = Literal["done", "skipped", "failed"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputResult:
    """What became of one input.

    Attributes:
        input: the input path as given.
        name: its output folder's name under the root (:func:`input_names`).
        status: ``"done"`` (run and saved now), ``"skipped"`` (a completed-run marker was found) or ``"failed"``.
        frames: frames reconstructed (done), recorded in the marker (skipped), or counted in the input (failed).
        seconds: wall-clock seconds spent on the input in this call (run + save; ~0 when skipped).
        error: the one-line error of a failed input, else None.
        rank: the rank that handled it.
    """

    input: str
    name: str
    status: Status
    frames: int
    seconds: float
    error: str | None
    rank: int


def input_names(inputs: Sequence[str | Path]) -> list[str]:
    """Output folder names: the stem of a file, the name of a folder; repeats get ``-2``, ``-3``... in input order.

    Names are compared case-insensitively (so outputs do not merge on macOS / Windows file systems) and never
    equal the root's own ``summary.json`` / ``failures.json``.

    Example:
        >>> input_names(["a/clip.mp4", "b/clip.mp4", "clip-2", "x/frames"])
        ['clip', 'clip-2', 'clip-2-2', 'frames']
    """
    taken = {SUMMARY_NAME, FAILURES_NAME}
    names = []
    for item in inputs:
        path = Path(item)
        base = path.name if path.is_dir() else path.stem
        if base in ("", ".", ".."):
            base = path.resolve().name or "input"
        name, k = base, 2
        while name.casefold() in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name.casefold())
        names.append(name)
    return names


def count_frames(path: str | Path) -> int:
    """Frames of an input without decoding it: image files in a folder, OpenCV's ``CAP_PROP_FRAME_COUNT`` of a
    video, 1 for an image file; 0 for anything missing or unreadable (the run itself reports why)."""
    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if p.is_dir():
            return sum(1 for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if p.is_file() and suffix in VIDEO_EXTENSIONS:
            cap = cv2.VideoCapture(str(p))
            try:
                count = float(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0.0
            finally:
                cap.release()
            return int(count) if math.isfinite(count) and count > 0 else 0
        if p.is_file() and suffix in IMAGE_EXTENSIONS:
            return 1
    except (OSError, cv2.error):
        return 0
    return 0


def assign_ranks(lengths: Sequence[int], world_size: int) -> list[int]:
    """The rank of every input: longest first, each to the least-loaded rank (deterministic).

    Load is the sum of the lengths assigned so far; ties go to the rank with fewer inputs, then the lowest rank (so
    inputs of length 0 are spread too). Equal lengths keep the input order.

    Args:
        lengths: ``N`` non-negative work sizes (frames).
        world_size: number of ranks (>= 1).

    Returns:
        ``N`` ranks in ``[0, world_size)``, in input order.

    Example:
        >>> assign_ranks([10, 3, 7, 5], 2)
        [0, 0, 1, 1]
    """
    if world_size < 1:
        raise Easi3RInputError(f"world_size must be >= 1, got {world_size}")
    if any(n < 0 for n in lengths):
        raise Easi3RInputError(f"input lengths must be >= 0, got {list(lengths)}")
    loads, counts = [0] * world_size, [0] * world_size
    ranks = [0] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], counts[r], r))
        ranks[i] = r
        loads[r] += int(lengths[i])
        counts[r] += 1
    return ranks


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """The completed-run marker of an output folder, or None when it is absent or unreadable (incomplete)."""
    try:
        data = json.loads((Path(folder) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("frames"), int) else None


def _error_line(err: Exception) -> str:
    if isinstance(err, Easi3RError):
        return first_line(err)
    return f"unexpected {type(err).__name__}: {first_line(err)}"


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class _Worker:
    """One rank's loop state: the model, built on the first input that needs it and reused for the rest."""

    def __init__(
        self,
        backbone: str | Backbone,
        device: torch.device,
        overrides: dict[str, Any],
        ctx: DistContext,
        progress: bool,
    ) -> None:
        self.backbone, self.device, self.overrides, self.ctx = backbone, device, overrides, ctx
        self.inner_progress = progress and not ctx.distributed
        self.runner: Easi3R | None = None

    def model(self) -> Easi3R:
        if self.runner is None:
            # Each rank reconstructs its own inputs alone: an explicit one-process context, or the runner would
            # join the batch's process group and wait in collectives for ranks busy with other inputs.
            self.runner = Easi3R(
                self.backbone, device=self.device, dist=DistContext.single(self.device), **self.overrides
            )
        return self.runner

    def process(self, source: Path, name: str, folder: Path, counted: int) -> InputResult:
        rank = self.ctx.rank
        marker = read_marker(folder)
        if marker is not None:
            return InputResult(str(source), name, "skipped", int(marker["frames"]), 0.0, None, rank)
        # Outside the per-input guard: a model that cannot be built is fatal for the rank, not one input's failure.
        runner = self.model()
        start = time.perf_counter()
        try:
            rec = runner.run(source, progress=self.inner_progress)
            rec.save(folder, progress=self.inner_progress)
            seconds = time.perf_counter() - start
            _write_json(folder / MARKER_NAME, _marker(source, rec.num_frames, seconds, runner))
        except Exception as err:
            error = _error_line(err)
            logger.warning("rank %d: %s failed: %s", rank, source, error)
            return InputResult(str(source), name, "failed", counted, time.perf_counter() - start, error, rank)
        return InputResult(str(source), name, "done", rec.num_frames, seconds, None, rank)


def _marker(source: Path, frames: int, seconds: float, runner: Easi3R) -> dict[str, Any]:
    from . import __version__

    return {
        "input": str(source),
        "frames": frames,
        "seconds": round(seconds, 3),
        "easi3r_version": __version__,
        "backbone": runner.backbone_name,
        "config": dataclasses.asdict(runner.config),
    }


def run_many(
    inputs: Sequence[str | Path],
    out_root: str | Path,
    *,
    backbone: str | Path | Backbone = "monst3r",
    device: str | torch.device | None = None,
    overrides: dict[str, Any] | None = None,
    ctx: DistContext | None = None,
    progress: bool = True,
) -> list[InputResult]:
    """Reconstruct every input into ``out_root/<name>/``, sharing the inputs among the ranks of ``ctx``.

    Every rank of the job calls this with the same arguments. Inputs whose folder holds a completed-run marker
    (:data:`MARKER_NAME`) are skipped, so an interrupted job is resumed by running it again. A marker is trusted as
    it is: the settings it records are not compared with ``overrides`` (use a new ``out_root`` for new settings).

    Args:
        inputs: videos, image files or folders of frames (anything :func:`easi3r.load_frames` reads from a path).
        out_root: the output root (created if needed).
        backbone: registry name, hub repo id, checkpoint path or a :class:`~easi3r.backbones.Backbone`; loaded once
            per rank, on the first input that rank has to run.
        device: the rank's device; None: ``ctx.device``.
        overrides: :class:`~easi3r.config.Easi3RConfig` fields by name (as ``Easi3R(**overrides)``); a
            ``device`` entry is used when the ``device`` argument is None.
        ctx: the job's :class:`~easi3r.distributed.DistContext` (None: a single process on ``device``).
        progress: a bar per rank over its inputs (``position=rank``); the per-stage bars only for one process.

    Returns:
        One :class:`InputResult` per input, in input order, on every rank. Rank 0 has written
        :data:`SUMMARY_NAME` and :data:`FAILURES_NAME` before any rank returns.

    Raises:
        Easi3RInputError: no inputs, or an invalid override value.
        TypeError: an override names no configuration field.
        CheckpointError: the backbone cannot be loaded (fatal for the rank: no input of it is run).
        Easi3RRuntimeError: a peer rank failed or a collective timed out.
    """
    if len(inputs) == 0:
        raise Easi3RInputError("run_many needs at least one input")
    options = dict(overrides or {})
    # ``device`` is also a config field; given both ways, the argument wins.
    config_device = options.pop("device", None)
    device = device if device is not None else config_device
    # Every rank validates the overrides before any work (so a typo fails at once, identically everywhere).
    config = Easi3RConfig().with_overrides(**options)
    ctx = ctx if ctx is not None else DistContext.single(device)
    run_device = resolve_device(device) if device is not None else ctx.device
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    sources = [Path(p) for p in inputs]
    names = input_names(sources)

    plan: tuple[list[int], list[int]] = ([], [])
    if ctx.is_main:
        counted = [count_frames(p) for p in sources]
        work = [min(n, cap) if (cap := config.frame_limit(is_video_path(p))) is not None else n
                for n, p in zip(counted, sources)]  # fmt: skip
        plan = (counted, assign_ranks(work, ctx.world_size))
    # One rank reads the file system and plans, so that every rank acts on the same plan.
    counted, ranks = broadcast_object(ctx, plan)

    worker = _Worker(str(backbone) if isinstance(backbone, Path) else backbone, run_device, options, ctx, progress)
    mine = [k for k, r in enumerate(ranks) if r == ctx.rank]
    own: list[InputResult] = []
    with tqdm(total=len(mine), desc=f"rank {ctx.rank}", position=ctx.rank, unit="input", disable=not progress) as bar:
        for k in mine:
            bar.set_postfix_str(names[k])
            own.append(worker.process(sources[k], names[k], root / names[k], counted[k]))
            bar.update()

    gathered = all_gather_objects(ctx, [dataclasses.asdict(r) for r in own])
    order = {name: k for k, name in enumerate(names)}
    results = sorted((InputResult(**d) for part in gathered for d in part), key=lambda r: order[r.name])
    if ctx.is_main:
        _write_reports(root, results, ctx.world_size)
    barrier(ctx)
    return results


def _write_reports(root: Path, results: list[InputResult], world_size: int) -> None:
    from . import __version__

    failures = [{"input": r.input, "error": r.error, "rank": r.rank} for r in results if r.status == "failed"]
    _write_json(root / FAILURES_NAME, failures)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    entries = [
        {
            "input": r.input,
            "name": r.name,
            "status": r.status,
            "frames": r.frames,
            "seconds": round(r.seconds, 3),
            "rank": r.rank,
            "output": str(root / r.name),
            "error": r.error,
        }
        for r in results
    ]
    summary = {"easi3r_version": __version__, "world_size": world_size, "counts": counts, "inputs": entries}
    _write_json(root / SUMMARY_NAME, summary)


def _override(text: str) -> tuple[str, Any]:
    """``key=value`` -> ``(key, value)``; the value is read as JSON (numbers, true/false, null), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    python_words = {"True": "true", "False": "false", "None": "null"}
    try:
        value = json.loads(python_words.get(raw.strip(), raw))
    except ValueError:
        value = raw
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m easi3r.batch``."""
    parser = argparse.ArgumentParser(
        prog="python -m easi3r.batch",
        description="Run Easi3R on many inputs, each into OUT/<name>/; under torchrun the inputs are shared out.",
    )
    parser.add_argument("inputs", nargs="+", help="videos, image files or folders of frames")
    parser.add_argument("--out", required=True, help="output root (one folder per input, summary.json)")
    parser.add_argument("--backbone", default="monst3r", help="registry name, hub repo id or checkpoint path")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda:LOCAL_RANK when available)")
    parser.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an Easi3RConfig field, e.g. --set iterations=100 --set flow=false (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no final line")
    return parser


def run_command(
    inputs: Sequence[str | Path],
    out_root: str | Path,
    *,
    backbone: str | Path = "monst3r",
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    quiet: bool = False,
) -> int:
    """:func:`run_many` as a command: joins the job (:func:`~easi3r.distributed.init_distributed`), runs, leaves
    the group, prints errors and a final line (rank 0); returns the exit code. ``easi3r run A B C --out ROOT`` and
    ``python -m easi3r.batch`` both end here.

    Exit codes: 0 every input done or skipped; 1 some inputs failed (see ``failures.json``) or a rank failed;
    2 bad arguments, input or checkpoint. A fatal error prints one line naming the rank, e.g.
    ``error: rank 1/2: unexpected RuntimeError: ...``.
    """
    try:
        ctx = init_distributed(device)
    except Easi3RError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    where = f"rank {ctx.rank}/{ctx.world_size}: " if ctx.distributed else ""
    try:
        results = run_many(inputs, out_root, backbone=backbone, overrides=overrides, ctx=ctx, progress=not quiet)
    except (Easi3RInputError, CheckpointError, TypeError) as err:
        print(f"error: {where}{first_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:
        print(f"error: {where}{_error_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{where}interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown(ctx)
    failed = sum(r.status == "failed" for r in results)
    if ctx.is_main and not quiet:
        done = sum(r.status == "done" for r in results)
        print(
            f"{len(results)} inputs: {done} done, {len(results) - done - failed} skipped, {failed} failed; "
            f"summary in {Path(out_root) / SUMMARY_NAME}"
        )
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m easi3r.batch``; returns the exit code (see :func:`run_command`)."""
    args = build_parser().parse_args(argv)
    return run_command(
        args.inputs,
        args.out,
        backbone=args.backbone,
        device=args.device,
        overrides=dict(args.overrides),
        quiet=args.quiet,
    )


if __name__ == "__main__":  # pragma: no cover
    # Delegate to the imported module, so pickled objects and isinstance checks see ``easi3r.batch``, not __main__.
    from easi3r.batch import main as _main

    sys.exit(_main())
