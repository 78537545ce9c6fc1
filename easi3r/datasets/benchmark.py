"""One command per paper table: run every sequence of a benchmark dataset, then evaluate it.

:func:`run_benchmark` (``easi3r benchmark DATASET --root PATH --out DIR``):

1. lists the sequences (:func:`~easi3r.datasets.specs.list_sequences`) and reads every sequence's ground truth
   **before** any run, so a wrong root or a missing file fails at once;
2. stages each sequence's frames as ``OUT/inputs/<seq>/`` (links to the selected frame files) and runs them
   with :func:`easi3r.batch.run_many` into ``OUT/runs/<seq>/`` -- resumable (completed-run markers),
   torchrun-sharded, failures recorded -- with the dataset's official settings
   (:data:`~easi3r.datasets.specs.COMMON_OVERRIDES`, the per-sequence window of
   :func:`~easi3r.datasets.specs.sequence_overrides`) and the user's overrides on top;
   with ``predictions=DIR`` nothing is run and ``DIR/<seq>/`` is evaluated instead (easi3r or official files);
3. evaluates every sequence and writes::

       OUT/eval/<seq>.json   status (ok / degenerate / failed), frames, window, metrics, error
       OUT/results.csv       one row per sequence, then the aggregate rows
       OUT/results.md        the paper-style table (rows = method / backbone, columns = metrics), the
                             per-sequence table and the configuration used
       OUT/results.json      all of it

Metrics: DAVIS J / F (:mod:`easi3r.eval.davis`: pooled = the paper's JM / JR, and per-sequence means with the
decay); poses ATE / RTE / RRE after Sim(3) alignment (:func:`easi3r.eval.poses.pose_metrics`, evo semantics);
DyCheck 4D accuracy / completeness / distance (:func:`easi3r.eval.points.dycheck_point_metrics`). A sequence
whose run failed or whose alignment degenerates (static or collinear cameras) is listed with its error and
counted in the table; the means are over the sequences that could be scored.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from ..config import AlignConfig, Easi3RConfig
from ..distributed import DistContext, barrier
from ..errors import Easi3RError, Easi3RInputError, first_line
from ..eval.davis import DavisSequence, davis_aggregate, score_sequence
from ..eval.masks import matched_masks
from ..eval.outputs import read_pred_depths, read_pred_intrinsics, read_pred_trajectory
from ..eval.points import dycheck_point_metrics
from ..eval.poses import pose_metrics
from ..export.atomic import atomic_write_text
from .groundtruth import read_iphone_cameras, read_iphone_depths, read_sintel_cameras, read_tum_groundtruth
from .specs import (
    COMMON_OVERRIDES,
    DatasetSpec,
    frame_files,
    get_spec,
    list_sequences,
    select_frames,
    sequence_overrides,
)

__all__ = ["BenchmarkResult", "SequenceResult", "config_field_names", "run_benchmark"]

logger = logging.getLogger(__name__)

Status = Literal["ok", "degenerate", "failed"]

#: Table columns per metric family: (key in the metrics dict, header, factor applied for display).
_COLUMNS: dict[str, tuple[tuple[str, str, float], ...]] = {
    "masks": (
        ("JM", "JM", 100.0),
        ("JR", "JR", 100.0),
        ("FM", "FM", 100.0),
        ("FR", "FR", 100.0),
        ("J&F", "J&F", 100.0),
    ),
    "masks_per_sequence": (
        ("JM", "JM", 100.0),
        ("JR", "JR", 100.0),
        ("JD", "JD", 100.0),
        ("FM", "FM", 100.0),
        ("FR", "FR", 100.0),
        ("FD", "FD", 100.0),
    ),
    "poses": (("ate", "ATE", 1.0), ("rte", "RTE", 1.0), ("rre_deg", "RRE (deg)", 1.0)),
    "points": (
        ("accuracy", "Acc", 1.0),
        ("accuracy_median", "Acc med", 1.0),
        ("completeness", "Comp", 1.0),
        ("completeness_median", "Comp med", 1.0),
        ("distance", "Dist", 1.0),
        ("distance_median", "Dist med", 1.0),
    ),
}


def config_field_names() -> set[str]:
    """Every field name :meth:`Easi3RConfig.with_overrides` accepts (top-level and alignment)."""
    return {f.name for f in dataclasses.fields(Easi3RConfig)} | {f.name for f in dataclasses.fields(AlignConfig)}


@dataclass(frozen=True)
class SequenceResult:
    """One sequence's outcome.

    Attributes:
        sequence: its name. status: ``ok``, ``degenerate`` (the Sim(3) alignment is undetermined) or ``failed``.
        frames: frames evaluated. window: scene-graph window it was run with (None: not run here).
        metrics: metric name -> value (fractions for J / F, ground-truth units for poses and points).
        error: the one-line reason when not ``ok``.
        per_frame: per-frame series (DAVIS: ``J`` and ``F`` of every frame).
    """

    sequence: str
    status: Status
    frames: int
    window: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    per_frame: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchmarkResult:
    """What :func:`run_benchmark` produced (on rank 0; other ranks get an empty result).

    Attributes:
        dataset: the dataset name. method: row label. backbone: the backbone used (or given).
        sequences: one :class:`SequenceResult` per sequence, in order.
        summary: aggregate rows: ``"pooled"`` (DAVIS, the paper's), ``"mean"`` (mean over scored sequences).
        config: the configuration every sequence was run with (before its per-sequence window).
        notes: settings that could not be applied, and other remarks written into ``results.md``.
        files: ``results.csv``, ``results.md``, ``results.json`` paths.
    """

    dataset: str
    method: str
    backbone: str
    sequences: list[SequenceResult]
    summary: dict[str, dict[str, float]]
    config: dict[str, Any]
    notes: list[str]
    files: dict[str, Path]


# ----------------------------------------------------------------------------------------------- ground truth


@dataclass
class _Truth:
    """Ground truth of one sequence, restricted to the selected frames."""

    poses: NDArray[np.float64] | None = None
    intrinsics: NDArray[np.float64] | None = None
    depth_names: list[str] | None = None
    frame_indices: list[int] = field(default_factory=list)


def _check_count(spec: DatasetSpec, seq: str, n_gt: int, n_frames: int, what: str) -> None:
    if n_gt != n_frames:
        raise Easi3RInputError(
            f"{spec.title} {seq}: {n_gt} {what} for {n_frames} frames; the prepared layout pairs them one to one"
        )


def _read_truth(spec: DatasetSpec, root: Path, seq: str, n_frames: int, indices: list[int]) -> _Truth:
    """Read (and check) one sequence's ground truth: poses (+ intrinsics, depth names) or annotation count."""
    truth = _Truth(frame_indices=indices)
    gt = spec.gt
    if "annotations" in gt:
        folder = root / gt["annotations"] / seq
        n = len(list(folder.glob("*.png")))
        if n == 0:
            raise Easi3RInputError(f"{spec.title} {seq}: no annotations in {folder}")
        _check_count(spec, seq, n, n_frames, "annotated frames")
    if "tum" in gt:
        poses = read_tum_groundtruth(spec.path(root, gt["tum"], seq))
        _check_count(spec, seq, len(poses), n_frames, "ground-truth poses")
        truth.poses = poses[indices]
    if "sintel_cameras" in gt:
        poses, K = read_sintel_cameras(spec.path(root, gt["sintel_cameras"], seq))
        _check_count(spec, seq, len(poses), n_frames, "camera files")
        truth.poses, truth.intrinsics = poses[indices], K[indices]
    if "iphone_cameras" in gt:
        poses, K, names = read_iphone_cameras(spec.path(root, gt["iphone_cameras"], seq))
        _check_count(spec, seq, len(poses), n_frames, "camera files")
        truth.poses, truth.intrinsics = poses[indices], K[indices]
        truth.depth_names = [names[i] for i in indices]
        depth_dir = spec.path(root, gt["iphone_depth"], seq)
        absent = [n for n in truth.depth_names if not (depth_dir / f"{n}.npy").is_file()]
        if absent:
            raise Easi3RInputError(f"{spec.title} {seq}: no ground-truth depth {depth_dir}/{absent[0]}.npy")
    return truth


# ---------------------------------------------------------------------------------------------------- running


def _stage(files: Sequence[Path], folder: Path) -> Path:
    """``folder`` holding links (copies where links are impossible) to ``files``, under their own names."""
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for f in files:
        target = folder / f.name
        try:
            target.symlink_to(f.resolve())
        except OSError:
            shutil.copy2(f, target)
    return folder


def _run_sequences(
    spec: DatasetSpec,
    out: Path,
    selected: dict[str, list[Path]],
    base: dict[str, Any],
    *,
    backbone: str,
    device: str | None,
    ctx: DistContext,
    progress: bool,
) -> dict[str, tuple[int, str | None]]:
    """Run the staged sequences, grouped by per-sequence window; returns ``seq -> (window, error or None)``."""
    from ..batch import _write_reports, run_many

    staged = out / "inputs"
    if ctx.is_main:
        for seq, files in selected.items():
            _stage(files, staged / seq)
    barrier(ctx)
    groups: dict[int, list[str]] = {}
    windows = {}
    for seq, files in selected.items():
        windows[seq] = sequence_overrides(spec, len(files), int(base["window"]))["window"]
        groups.setdefault(windows[seq], []).append(seq)
    results = []
    for window, seqs in sorted(groups.items()):
        overrides = {**base, "window": window}
        results += run_many(
            [staged / s for s in seqs],
            out / "runs",
            backbone=backbone,
            device=device,
            overrides=overrides,
            ctx=ctx,
            progress=progress,
        )
    if ctx.is_main and len(groups) > 1:
        # One report over every group (each run_many call wrote its own group's).
        order = {s: k for k, s in enumerate(selected)}
        _write_reports(out / "runs", sorted(results, key=lambda r: order[r.name]), ctx.world_size)
    return {r.name: (windows[r.name], r.error if r.status == "failed" else None) for r in results}


# ------------------------------------------------------------------------------------------------- evaluation


def _error_text(err: Exception) -> str:
    return first_line(err) if isinstance(err, Easi3RError) else f"unexpected {type(err).__name__}: {first_line(err)}"


class _Degenerate(Exception):
    """The Sim(3) alignment of a sequence is undetermined (static or collinear cameras)."""


def _aligned(metric: Any, *args: Any) -> Any:
    """``metric(*args)``, with an undetermined alignment (:func:`~easi3r.eval.poses.umeyama_sim3`) as
    :class:`_Degenerate`."""
    try:
        return metric(*args)
    except Easi3RInputError as err:
        if str(err).startswith("degenerate alignment"):
            raise _Degenerate(first_line(err)) from None
        raise


def _pose_and_points(spec: DatasetSpec, root: Path, seq: str, folder: Path, truth: _Truth) -> dict[str, float]:
    assert truth.poses is not None
    pred = read_pred_trajectory(folder)
    _check_count(spec, seq, len(truth.poses), len(pred), "ground-truth poses (selected)")
    metrics = {k: float(v) for k, v in _aligned(pose_metrics, pred, truth.poses).as_dict().items()}
    if "points" in spec.metrics:
        assert truth.depth_names is not None and truth.intrinsics is not None
        gt_depth = read_iphone_depths(spec.path(root, spec.gt["iphone_depth"], seq), truth.depth_names)
        pts = _aligned(
            dycheck_point_metrics,
            read_pred_depths(folder),
            read_pred_intrinsics(folder),
            pred,
            gt_depth,
            truth.intrinsics,
            truth.poses,
        )
        metrics.update({k: float(v) for k, v in pts.items() if k != "scale"})
    return metrics


def _evaluate(
    spec: DatasetSpec,
    root: Path,
    pred_root: Path,
    truths: dict[str, _Truth],
    runs: dict[str, tuple[int, str | None]],
    progress: bool,
) -> tuple[list[SequenceResult], dict[str, dict[str, float]]]:
    results: list[SequenceResult] = []
    davis: dict[str, DavisSequence] = {}
    for seq, truth in tqdm(truths.items(), desc=f"evaluating {spec.title}", unit="seq", disable=not progress):
        window, run_error = runs.get(seq, (None, None))
        n = len(truth.frame_indices)
        if run_error is not None:
            results.append(SequenceResult(seq, "failed", n, window, error=f"run failed: {run_error}"))
            continue
        folder = pred_root / seq
        per_frame: dict[str, list[float]] = {}
        try:
            if not folder.is_dir():
                raise Easi3RInputError(f"no predictions for {seq}: {folder} does not exist")
            if "masks" in spec.metrics:
                pred, gt = matched_masks(pred_root, root / spec.gt["annotations"], seq, truth.frame_indices)
                davis[seq] = score_sequence(pred, gt)
                metrics = davis[seq].stats()
                metrics.pop("frames")
                per_frame = {"J": davis[seq].j.tolist(), "F": davis[seq].f.tolist()}
            else:
                metrics = _pose_and_points(spec, root, seq, folder, truth)
        except _Degenerate as err:
            results.append(SequenceResult(seq, "degenerate", n, window, error=str(err)))
            continue
        except Exception as err:  # one sequence's bad files must not lose the others' scores
            results.append(SequenceResult(seq, "failed", n, window, error=_error_text(err)))
            continue
        results.append(SequenceResult(seq, "ok", n, window, metrics=metrics, per_frame=per_frame))
    summary: dict[str, dict[str, float]] = {}
    if davis:
        agg = davis_aggregate(davis)
        summary["pooled"] = {k: v for k, v in agg.pooled.items() if k != "frames"}
        summary["mean"] = {k: v for k, v in agg.per_sequence.items() if k != "frames"}
    else:
        ok = [r.metrics for r in results if r.status == "ok"]
        if ok:
            summary["mean"] = {k: float(np.mean([m[k] for m in ok])) for k in ok[0]}
    return results, summary


# ---------------------------------------------------------------------------------------------------- reports


def _fmt(value: float | None, factor: float = 1.0) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * factor:.2f}" if factor != 1.0 else f"{value:.4f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _families(spec: DatasetSpec) -> list[str]:
    return ["masks"] if "masks" in spec.metrics else list(spec.metrics)


def _write_outputs(out: Path, result: BenchmarkResult, spec: DatasetSpec) -> dict[str, Path]:
    (out / "eval").mkdir(parents=True, exist_ok=True)
    for r in result.sequences:
        atomic_write_text(out / "eval" / f"{r.sequence}.json", json.dumps(dataclasses.asdict(r), indent=2) + "\n")
    columns = [c for fam in _families(spec) for c in _COLUMNS[fam]]
    if "masks" in spec.metrics:
        columns += [c for c in _COLUMNS["masks_per_sequence"] if c[0] == "JD" or c[0] == "FD"]
    keys = [c[0] for c in columns]

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "method", "backbone", "sequence", "status", "frames", "window", *keys, "error"])
    for r in result.sequences:
        writer.writerow(
            [
                spec.name,
                result.method,
                result.backbone,
                r.sequence,
                r.status,
                r.frames,
                "" if r.window is None else r.window,
                *(r.metrics.get(k, "") for k in keys),
                r.error or "",
            ]
        )
    for label, row in result.summary.items():
        writer.writerow(
            [spec.name, result.method, result.backbone, label, "", "", "", *(row.get(k, "") for k in keys), ""]
        )
    files = {"csv": atomic_write_text(out / "results.csv", buf.getvalue())}
    files["md"] = atomic_write_text(out / "results.md", _markdown(result, spec))
    payload = {**dataclasses.asdict(result), "files": {k: str(v) for k, v in files.items()}}
    files["json"] = atomic_write_text(out / "results.json", json.dumps(payload, indent=2, default=str) + "\n")
    return files


def _markdown(result: BenchmarkResult, spec: DatasetSpec) -> str:
    counts = {s: sum(r.status == s for r in result.sequences) for s in ("ok", "degenerate", "failed")}
    label = f"{result.method} ({result.backbone})"
    seqs = f"{counts['ok']}/{len(result.sequences)}"
    parts = [f"# {spec.title}: {label}", ""]
    if "masks" in spec.metrics:
        cols = _COLUMNS["masks"]
        pooled = result.summary.get("pooled", {})
        parts += ["Dynamic-object segmentation, frames of all sequences pooled (the paper's JM / JR; x100):", ""]
        parts.append(
            _md_table(
                ["Method", *(c[1] for c in cols), "sequences"],
                [[label, *(_fmt(pooled.get(k), f) for k, _, f in cols), seqs]],
            )
        )
        cols = _COLUMNS["masks_per_sequence"]
        mean = result.summary.get("mean", {})
        parts += ["", "Mean over sequences (DAVIS aggregation, with the decay; x100):", ""]
        parts.append(
            _md_table(["Method", *(c[1] for c in cols)], [[label, *(_fmt(mean.get(k), f) for k, _, f in cols)]])
        )
    else:
        cols = tuple(c for fam in _families(spec) for c in _COLUMNS[fam])
        mean = result.summary.get("mean", {})
        parts += ["Mean over the scored sequences (ATE / RTE in ground-truth units after Sim(3) alignment):", ""]
        parts.append(
            _md_table(
                ["Method", *(c[1] for c in cols), "sequences"],
                [[label, *(_fmt(mean.get(k)) for k, _, _ in cols), seqs]],
            )
        )
    if counts["degenerate"] or counts["failed"]:
        parts += ["", f"Not scored: {counts['degenerate']} degenerate, {counts['failed']} failed (listed below)."]
    per_cols = _COLUMNS["masks_per_sequence"] if "masks" in spec.metrics else cols
    rows = [
        [
            r.sequence,
            r.status,
            str(r.frames),
            "" if r.window is None else str(r.window),
            *(_fmt(r.metrics.get(k), f) for k, _, f in per_cols),
            r.error or "",
        ]
        for r in result.sequences
    ]
    parts += [
        "",
        "## Per sequence",
        "",
        _md_table(["sequence", "status", "frames", "window", *(c[1] for c in per_cols), "error"], rows),
    ]
    if result.notes:
        parts += ["", "## Notes", "", *(f"- {n}" for n in result.notes)]
    parts += [
        "",
        "## Configuration",
        "",
        f"Settings source: {spec.source}.",
        "",
        "```json",
        json.dumps(result.config, indent=2, default=str),
        "```",
        "",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------- driver


def _base_overrides(spec: DatasetSpec, overrides: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    known = config_field_names()
    base = {**COMMON_OVERRIDES}
    for key, value in spec.overrides.items():
        if key in known:
            base[key] = value
        else:
            notes.append(f"official setting {key}={value!r} not applied: this easi3r has no Easi3RConfig.{key}")
            logger.warning("%s: %s", spec.name, notes[-1])
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise Easi3RInputError(f"unknown Easi3RConfig option(s): {', '.join(unknown)}")
    base.update(overrides)
    Easi3RConfig().with_overrides(**base)  # validates every value before any work
    return base


def run_benchmark(
    dataset: str,
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    backbone: str | os.PathLike[str] = "monst3r",
    subset: str | None = None,
    overrides: dict[str, Any] | None = None,
    predictions: str | os.PathLike[str] | None = None,
    stride: int = 1,
    max_frames: int | None = None,
    method: str = "Easi3R",
    device: str | None = None,
    ctx: DistContext | None = None,
    progress: bool = True,
) -> BenchmarkResult:
    """Run (or only evaluate) a benchmark dataset and write its results table.

    Args:
        dataset: ``davis``, ``dycheck``, ``tum-dynamics``, ``bonn`` or ``sintel`` (see
            :data:`~easi3r.datasets.specs.DATASETS`).
        root: the dataset root in its official layout (``DatasetSpec.root_hint``).
        out: output folder (``inputs/``, ``runs/``, ``eval/``, ``results.*``).
        backbone: registry name, hub id or checkpoint path (also the table's backbone label).
        subset: named sequence list (DAVIS: ``davis16``, ``davis17``, ``all``) or ``"seq_a,seq_b"``.
        overrides: :class:`~easi3r.config.Easi3RConfig` fields by name, applied over the official settings.
        predictions: evaluate ``predictions/<seq>/`` instead of running the model.
        stride: use every ``stride``-th frame of the prepared folders (official: 1).
        max_frames: at most this many frames per sequence after the stride (official: all).
        method: the row label of the table.
        device: the device of the runs (default: CUDA when available, ``cuda:LOCAL_RANK`` under torchrun).
        ctx: the torchrun job context (None: one process).
        progress: progress bars.

    Returns:
        :class:`BenchmarkResult` (complete on rank 0; the other ranks only run their share of the sequences).

    Raises:
        Easi3RInputError: unknown dataset, subset or option, a missing root, frames or ground truth, or
            frames and ground truth that do not pair up -- all before the first run.
    """
    spec = get_spec(dataset)
    root_dir, out_dir = Path(root), Path(out)
    notes: list[str] = []
    base = _base_overrides(spec, dict(overrides or {}), notes)
    if "max_frames" in (overrides or {}) and max_frames is None and isinstance(base["max_frames"], int):
        max_frames = base["max_frames"]  # a --max-frames option caps the staged frames
    base["max_frames"] = None
    sequences = list_sequences(spec, root_dir, subset)
    selected: dict[str, list[Path]] = {}
    truths: dict[str, _Truth] = {}
    for seq in sequences:
        files = frame_files(spec.frames_dir(root_dir, seq))
        idx = select_frames(len(files), stride, max_frames)
        truths[seq] = _read_truth(spec, root_dir, seq, len(files), idx)
        selected[seq] = [files[i] for i in idx]
    if stride != 1 or max_frames is not None:
        notes.append(f"frames subsampled: every {stride}-th, at most {max_frames} (official: every frame)")
    ctx = ctx if ctx is not None else DistContext.single(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    if predictions is None:
        runs = _run_sequences(
            spec, out_dir, selected, base, backbone=str(backbone), device=device, ctx=ctx, progress=progress
        )
        pred_root = out_dir / "runs"
    else:
        pred_root = Path(predictions)
        if not pred_root.is_dir():
            raise Easi3RInputError(f"predictions folder {pred_root} does not exist")
        runs = {}
        notes.append(f"evaluated existing predictions in {pred_root} (nothing was run)")
    config = Easi3RConfig().with_overrides(**base).to_dict()
    label = Path(backbone).stem if Path(backbone).is_file() else str(backbone)
    empty = BenchmarkResult(spec.name, method, label, [], {}, config, notes, {})
    if not ctx.is_main:
        return empty
    results, summary = _evaluate(spec, root_dir, pred_root, truths, runs, progress)
    result = dataclasses.replace(empty, sequences=results, summary=summary)
    return dataclasses.replace(result, files=_write_outputs(out_dir, result, spec))
