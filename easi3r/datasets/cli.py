"""Command line of the benchmark runner: ``easi3r benchmark DATASET --root PATH --out DIR``.

:func:`add_benchmark_parser` registers ``benchmark`` on the main CLI's subparsers; :func:`main` runs it directly
(``main(["davis", "--root", ..., "--out", ...])``). Every configuration field is an option (as for
``easi3r run``); given ones override the dataset's official settings. Under ``torchrun`` the sequences are
shared out among the ranks and rank 0 evaluates.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import CheckpointError, Easi3RError, Easi3RInputError, first_line
from .benchmark import config_field_names, run_benchmark
from .specs import DATASETS

__all__ = ["add_benchmark_parser", "main"]


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from ..cli import add_config_options

    names = ", ".join(DATASETS)
    parser.add_argument("dataset", metavar="DATASET", help=f"one of {names} (aliases: tum, iphone)")
    parser.add_argument("--root", required=True, help="dataset root in the official layout (see the README)")
    parser.add_argument("--out", required=True, help="output folder: runs/, eval/, results.csv, results.md")
    parser.add_argument("--backbone", default="monst3r", help="registry name, hub repo id or checkpoint path")
    parser.add_argument(
        "--subset", default=None, help="DAVIS: davis16, davis17 or all (default all); any dataset: seq_a,seq_b"
    )
    parser.add_argument(
        "--predictions",
        default=None,
        metavar="DIR",
        help="evaluate DIR/<seq>/ (easi3r or official outputs) instead of running the model",
    )
    parser.add_argument("--method", default="Easi3R", help="row label of the results table")
    parser.add_argument("--stride", type=int, default=1, help="every N-th frame of the prepared folders (official 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda:LOCAL_RANK when available)")
    if "sam2" not in config_field_names():
        parser.add_argument(
            "--sam2",
            default=None,
            metavar="PATH_OR_ID",
            help="SAM2 refinement checkpoint (needs a version of easi3r with SAM2 support)",
        )
    add_config_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration options given on the command line (absent ones are suppressed by argparse)."""
    out = {
        name: getattr(args, name)
        for name in config_field_names()
        if name not in ("align", "device") and hasattr(args, name)
    }
    if getattr(args, "sam2", None) is not None and "sam2" not in config_field_names():
        raise Easi3RInputError("--sam2 needs SAM2 refinement, which this easi3r version lacks (Easi3RConfig.sam2)")
    return {k: v for k, v in out.items() if not (k == "sam2" and v is None)}


def _run(args: argparse.Namespace) -> int:
    from ..distributed import init_distributed, shutdown

    overrides = _overrides(args)
    ctx = init_distributed(args.device)
    try:
        result = run_benchmark(
            args.dataset,
            args.root,
            args.out,
            backbone=args.backbone,
            subset=args.subset,
            overrides=overrides,
            predictions=args.predictions,
            stride=args.stride,
            method=args.method,
            device=args.device,
            ctx=ctx,
            progress=not args.quiet,
        )
    finally:
        shutdown(ctx)
    if ctx.is_main:
        if not args.quiet:
            print(result.files["md"].read_text(encoding="utf-8"))
        bad = [r for r in result.sequences if r.status != "ok"]
        print(
            f"{len(result.sequences) - len(bad)}/{len(result.sequences)} sequences scored; "
            f"results in {result.files['md']}"
        )
        for r in bad:
            print(f"  {r.sequence}: {r.status}: {r.error}", file=sys.stderr)
    return 0


def add_benchmark_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``benchmark`` on an ``argparse`` subparsers object (the main CLI's).

    Returns:
        The ``benchmark`` parser; parsed arguments carry ``func(args) -> int``.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "benchmark",
        help="run and evaluate a benchmark dataset (DAVIS, DyCheck, TUM-dynamics, Bonn, Sintel)",
        description="Run Easi3R on every sequence of a benchmark dataset with the official settings (resumable, "
        "torchrun-sharded), then evaluate: DAVIS J/F, ATE/RTE/RRE, DyCheck 4D points. Writes results.csv and a "
        "paper-style results.md.",
    )
    return _configure(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``easi3r benchmark`` with ``argv`` (without the ``benchmark`` word).

    Returns:
        0 on success (sequences that failed or degenerated are listed in the results, not an error), 2 on bad
        input or an unloadable checkpoint (one line on stderr), 1 on an unexpected error.
    """
    parser = _configure(argparse.ArgumentParser(prog="easi3r benchmark"))
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (Easi3RInputError, CheckpointError, TypeError) as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    except Easi3RError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
