"""Command line of the evaluation toolkit: ``easi3r eval masks``, ``easi3r eval poses`` and ``easi3r eval points``.

:func:`add_eval_parser` registers ``eval`` on the main CLI's subparsers; :func:`main` runs the same
sub-commands directly (``main(["masks", "--pred", ..., "--gt", ...])``). Every command's ``func`` takes the
parsed namespace and returns an exit code; input errors print one line on stderr and return 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import Easi3RInputError
from ..export.atomic import atomic_write_text
from ..export.tum import read_tum
from .masks import SUBSETS, evaluate_masks
from .points import dycheck_point_metrics, point_metrics
from .poses import pose_metrics

__all__ = ["add_eval_parser", "main"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned numbers."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = [str(row[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "  ".join(cells)

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([fmt(header), rule, *(fmt(r) for r in rows)])


def _write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    try:
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    except OSError as exc:
        raise Easi3RInputError(f"cannot write JSON file {path}: {exc}") from None


def _mask_row(name: str, n_frames: int, jm: float, jr: float) -> list[str]:
    return [name, str(n_frames), f"{100 * jm:.2f}", f"{100 * jr:.2f}"]


def _run_masks(args: argparse.Namespace) -> int:
    scores = evaluate_masks(args.pred, args.gt, sequences=args.subset, mode=args.mode)
    body = [_mask_row(n, s.n_frames, s.jm, s.jr) for n, s in scores.per_sequence.items()]
    label = "all (frame-pooled)" if scores.mode == "pooled" else "all (mean of sequences)"
    body.append(_mask_row(label, scores.n_frames, scores.jm, scores.jr))
    print(_table(["sequence", "frames", "JM", "JR"], body))
    _write_json(args.json, scores.as_dict())
    return 0


def _run_poses(args: argparse.Namespace) -> int:
    _, pred = read_tum(args.pred, scalar_first=args.pred_scalar_first)
    _, gt = read_tum(args.gt, scalar_first=args.gt_scalar_first)
    if len(pred) != len(gt):
        raise Easi3RInputError(
            f"{args.pred} holds {len(pred)} poses but {args.gt} holds {len(gt)}; poses are matched by order"
        )
    m = pose_metrics(pred, gt)
    print(
        _table(
            ["poses", "ATE", "RTE", "RRE (deg)", "scale"],
            [[str(len(gt)), f"{m.ate:.6f}", f"{m.rte:.6f}", f"{m.rre_deg:.6f}", f"{m.scale:.6g}"]],
        )
    )
    _write_json(args.json, {"n_poses": len(gt), **m.as_dict()})
    return 0


def _read_cloud(path: str) -> Any:
    """``(N, 3)`` points of a ``.npy`` array or the vertices of a ``.ply`` file."""
    import numpy as np

    try:
        if path.lower().endswith(".ply"):
            import trimesh

            mesh: Any = trimesh.load(path, process=False)
            return np.asarray(mesh.vertices, dtype=np.float64)
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, AttributeError) as exc:
        raise Easi3RInputError(f"cannot read point cloud {path}: {exc}") from None


def _dycheck_points(pred: str, gt: str) -> dict[str, float]:
    from ..datasets.groundtruth import read_iphone_cameras, read_iphone_depths
    from .outputs import read_pred_depths, read_pred_intrinsics, read_pred_trajectory

    gt_dir = Path(gt)
    gt_c2w, gt_K, names = read_iphone_cameras(gt_dir / "camera")
    gt_depth = read_iphone_depths(gt_dir / "depth_npy", names)
    depths, K, c2w = read_pred_depths(pred), read_pred_intrinsics(pred), read_pred_trajectory(pred)
    if not len(depths) == len(K) == len(c2w) == len(names):
        raise Easi3RInputError(
            f"{pred} holds {len(depths)} depth maps, {len(K)} intrinsics and {len(c2w)} poses for {len(names)} "
            f"ground-truth frames in {gt}; frames are matched by order"
        )
    return dycheck_point_metrics(depths, K, c2w, gt_depth, gt_K, gt_c2w)


def _run_points(args: argparse.Namespace) -> int:
    if Path(args.pred).is_dir() and Path(args.gt).is_dir():
        m = _dycheck_points(args.pred, args.gt)
    elif Path(args.pred).is_file() and Path(args.gt).is_file():
        m = point_metrics(_read_cloud(args.pred), _read_cloud(args.gt), corresponding=args.corresponding)
    else:
        raise Easi3RInputError(
            f"--pred and --gt must both be run / sequence folders or both point files, got {args.pred}, {args.gt}"
        )
    keys = [
        k
        for k in ("accuracy", "accuracy_median", "completeness", "completeness_median", "distance", "distance_median")
        if k in m
    ]
    print(_table(keys, [[f"{m[k]:.6f}" for k in keys]]))
    _write_json(args.json, {k: float(v) for k, v in m.items()})
    return 0


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def func(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except Easi3RInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return func


def _add_commands(sub: Any) -> None:
    masks = sub.add_parser(
        "masks",
        help="JM / JR of dynamic masks against DAVIS annotations",
        description="Score predicted dynamic masks against DAVIS-2017 annotations (object labels merged). "
        "JM / JR are printed x100. The default 'pooled' mode is the Easi3R paper's protocol "
        "(statistics over all frames of all sequences pooled).",
    )
    masks.add_argument("--pred", required=True, help="holds <seq>/masks/*.png or <seq>/dynamic_mask_<i>.png")
    masks.add_argument("--gt", required=True, help="DAVIS root holding Annotations/480p/<seq>/")
    masks.add_argument("--mode", choices=("pooled", "per_sequence"), default="pooled")
    masks.add_argument(
        "--subset", choices=SUBSETS, default=None, help="sequences to score (default: every folder in --pred)"
    )
    masks.add_argument("--json", default=None, metavar="FILE", help="also write the scores as JSON")
    masks.set_defaults(func=_guarded(_run_masks))

    poses = sub.add_parser(
        "poses",
        help="ATE / RTE / RRE of a trajectory after Sim(3) alignment",
        description="Compare two TUM trajectories (camera-to-world, matched by order) after a Sim(3) Umeyama "
        "alignment of the camera centres; RPE over consecutive frames.",
    )
    poses.add_argument("--pred", required=True, metavar="FILE", help="estimated trajectory (TUM)")
    poses.add_argument("--gt", required=True, metavar="FILE", help="ground-truth trajectory (TUM)")
    poses.add_argument(
        "--pred-scalar-first", action="store_true", help="--pred is the official pred_traj.txt (qw qx qy qz)"
    )
    poses.add_argument("--gt-scalar-first", action="store_true", help="--gt quaternions are qw qx qy qz")
    poses.add_argument("--json", default=None, metavar="FILE", help="also write the metrics as JSON")
    poses.set_defaults(func=_guarded(_run_poses))

    points = sub.add_parser(
        "points",
        help="4D point accuracy / completeness / distance (DyCheck protocol or two point clouds)",
        description="With two folders: the Easi3R DyCheck protocol (point_metric.py eval_iphone): --pred is a run "
        "folder (depths.npz / frame_*.npy, intrinsics.txt / pred_intrinsics.txt, trajectory.tum / pred_traj.txt), "
        "--gt a prepared DyCheck sequence folder (camera/*.json, depth_npy/*.npy); cameras Sim(3)-aligned, "
        "ground-truth depth resized bicubically. With two .npy / .ply files: nearest-neighbour accuracy and "
        "completeness of the clouds as given.",
    )
    points.add_argument("--pred", required=True, help="run folder, or an (N, 3) .npy / .ply point cloud")
    points.add_argument("--gt", required=True, help="DyCheck prepare_all_stride10 folder, or a point cloud")
    points.add_argument(
        "--corresponding", action="store_true", help="clouds: rows correspond one to one, also report the distance"
    )
    points.add_argument("--json", default=None, metavar="FILE", help="also write the metrics as JSON")
    points.set_defaults(func=_guarded(_run_points))


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval masks``, ``eval poses`` and ``eval points`` on an ``argparse`` subparsers object.

    Args:
        subparsers: the object returned by ``parser.add_subparsers()`` of the main CLI.

    Returns:
        The ``eval`` parser. Parsed sub-commands carry ``func(args) -> int``.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "eval", help="evaluation metrics (DAVIS masks, camera trajectories, 4D points)"
    )
    sub = parser.add_subparsers(dest="eval_command", metavar="{masks,poses,points}", required=True)
    _add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run an evaluation sub-command, e.g. ``main(["poses", "--pred", "a.tum", "--gt", "b.tum"])``.

    Returns:
        The exit code: 0 on success, 2 on bad input (message on stderr).
    """
    parser = argparse.ArgumentParser(prog="easi3r eval", description="easi3r evaluation metrics")
    sub = parser.add_subparsers(dest="eval_command", metavar="{masks,poses,points}", required=True)
    _add_commands(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
