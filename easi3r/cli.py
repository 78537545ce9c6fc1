"""Command line: ``easi3r run | demo | info | eval``.

``easi3r run VIDEO_OR_DIR --out DIR`` runs the whole method and writes the files of
:meth:`easi3r.result.Reconstruction.save`. Bad input ends with a one-line ``error:`` message and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import traceback
from collections.abc import Sequence

from . import __version__
from .errors import Easi3RError, first_line

__all__ = ["build_parser", "main"]


def _threshold(text: str) -> str | float:
    if text in ("multiotsu", "otsu"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'multiotsu', 'otsu' or a number, got {text!r}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import Easi3R

    overrides = {
        k: v
        for k, v in {
            "fps": args.fps,
            "max_frames": args.max_frames,
            "window": args.window,
            "threshold": args.threshold,
            "iterations": args.iterations,
            "image_size": args.image_size,
            "pair_batch_size": args.batch_size,
        }.items()
        if v is not None
    }
    if args.no_flow:
        overrides["flow"] = False
    if args.no_reweight:
        overrides["reweight"] = False
    runner = Easi3R(backbone=args.backbone, device=args.device, **overrides)
    rec = runner.run(args.input, progress=not args.quiet)
    written = rec.save(args.out, progress=not args.quiet)
    if not args.quiet:
        share = 100.0 * rec.masks.mean()
        print(
            f"{rec.num_frames} frames, {share:.1f} % dynamic pixels, focal {rec.focals.mean():.1f} px "
            f"at {rec.size[1]}x{rec.size[0]}; {len(written)} outputs in {args.out}"
        )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    print(
        "easi3r demo: synthetic video + a small RANDOMLY INITIALISED network (no download).\n"
        "The masks and geometry are NOT meaningful; this only proves that every stage runs offline."
    )
    written = run_demo(args.out, progress=not args.quiet, num_frames=args.frames, iterations=args.iterations)
    print(f"wrote {len(written)} outputs to {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import cv2
    import numpy
    import sklearn
    import torch

    from .backbones import PRETRAINED
    from .device import resolve_device

    try:
        from huggingface_hub import constants

        cache = constants.HF_HUB_CACHE
    except Exception:  # pragma: no cover - very old huggingface_hub
        cache = "unknown"
    print(
        f"easi3r {__version__}  python {platform.python_version()}  torch {torch.__version__}  "
        f"numpy {numpy.__version__}  opencv {cv2.__version__}  scikit-learn {sklearn.__version__}"
    )
    print(f"device: {resolve_device(None)} (CUDA available: {torch.cuda.is_available()})")
    print(f"Hugging Face cache: {cache}  (offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')})")
    print("backbones (weights: CC BY-NC-SA 4.0, non-commercial):")
    for name, cfg in PRETRAINED.items():
        print(f"  {name:<18} {cfg.hub_id:<58} {cfg.size}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="easi3r", description="Easi3R: dynamic masks, cameras and 4D points from a casual video, training-free."
    )
    parser.add_argument("--version", action="version", version=f"easi3r {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True)
    # `--debug` is accepted before or after the command name (SUPPRESS keeps the top-level value otherwise).
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    run = sub.add_parser("run", parents=[debug], help="run Easi3R on a video or a folder of frames")
    run.add_argument("input", help="video file or folder of images")
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument(
        "--backbone",
        default="dust3r",
        help="registry name (dust3r, monst3r, ...), hub repo id or checkpoint path (default dust3r)",
    )
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    run.add_argument("--fps", type=float, default=None, help="frames per second sampled from a video")
    run.add_argument("--max-frames", type=int, default=None, help="use at most this many frames (default 200)")
    run.add_argument("--window", type=int, default=None, help="sliding-window size of the pair graph (default 5)")
    run.add_argument(
        "--threshold", type=_threshold, default=None, help="'multiotsu' (default), 'otsu' or a number in [0, 1]"
    )
    run.add_argument("--iterations", type=int, default=None, help="global alignment iterations (default 300)")
    run.add_argument("--image-size", type=int, default=None, help="long side of the processed frames (512)")
    run.add_argument("--batch-size", type=int, default=None, help="pairs per network call (default 4)")
    run.add_argument("--no-flow", action="store_true", help="disable the optical-flow term of the alignment")
    run.add_argument("--no-reweight", action="store_true", help="skip the re-weighted second pass")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser(
        "demo", parents=[debug], help="offline check: synthetic video, random network, every output file"
    )
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--frames", type=int, default=6, help="frames of the synthetic video")
    demo.add_argument("--iterations", type=int, default=60, help="alignment iterations")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    info = sub.add_parser("info", parents=[debug], help="versions, device, backbone registry, cache location")
    info.set_defaults(func=_cmd_info)

    from .eval.cli import add_eval_parser

    add_eval_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``easi3r`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Easi3RError as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an easi3r bug or an environment failure: short message, traceback on request
        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (run with --debug for the traceback)"
        print(f"error: unexpected {type(err).__name__}: {first_line(err)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
