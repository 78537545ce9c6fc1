"""Command line: ``easi3r run | demo | info | eval``.

``easi3r run VIDEO_OR_DIR --out DIR`` runs the whole method and writes the files of
:meth:`easi3r.result.Reconstruction.save`. Bad input ends with a one-line ``error:`` message and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import traceback
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from . import config as config_mod
from .config import AlignConfig, Easi3RConfig
from .errors import Easi3RError, Easi3RInputError, first_line
from .refine import DEFAULT_SAM2

__all__ = ["build_parser", "main"]


#: Command-line groups of the configuration fields, in the order of the method's stages.
_GROUPS: dict[str, tuple[str, ...]] = {
    "frames": ("image_size", "crop", "fps", "max_frames"),
    "pairs and network": ("graph", "window", "cyclic", "pair_batch_size", "precision"),
    "segmentation": ("clusters", "cluster_seed", "threshold", "reweight", "sam2"),
    "alignment": ("alignment", "align_window", "align_overlap", "flow", "flow_model", "flow_weights"),
    "export": ("export_conf_thr",),
}
#: Older spellings kept working.
_ALIASES = {"pair_batch_size": ("--batch-size",)}
#: Options whose value may be left out (``--sam2`` alone = the official SAM2.1-large weights): name -> value.
_OPTIONAL_VALUE = {"sam2": DEFAULT_SAM2}
_METAVARS = {"sam2": "PATH_OR_ID"}


def _value_parser(annotation: Any) -> Callable[[str], Any]:
    """Text -> value for a config field's annotation: ``none`` for None, literals by name, then int, float."""
    kinds, literals, optional = config_mod._allowed(annotation)

    def parse(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        for lit in literals:
            if text == str(lit):
                return lit
        if int in kinds:
            try:
                return int(text)
            except ValueError:
                pass
        if float in kinds:
            try:
                return float(text)
            except ValueError:
                pass
        if str in kinds:
            return text
        expected = [k.__name__ for k in kinds] + [repr(v) for v in literals] + (["none"] if optional else [])
        raise argparse.ArgumentTypeError(f"expected {' or '.join(expected)}, got {text!r}")

    return parse


def _config_fields() -> dict[str, tuple[Any, str, Any]]:
    """Every settable field of :class:`Easi3RConfig` and :class:`AlignConfig`: name -> (annotation, help, default)."""
    out: dict[str, tuple[Any, str, Any]] = {}
    for cls in (Easi3RConfig, AlignConfig):
        hints = typing.get_type_hints(cls)
        docs = config_mod.field_docs(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            if f.name in ("align", "device"):
                continue
            out[f.name] = (hints[f.name], docs.get(f.name, ""), getattr(defaults, f.name))
    return out


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name`` option per configuration field (booleans also ``--no-field-name``), grouped by stage,
    help text from the dataclasses' docstrings. Options left out keep the config's value (``argparse.SUPPRESS``)."""
    fields = _config_fields()
    grouped = {name for names in _GROUPS.values() for name in names}
    groups = dict(_GROUPS)
    groups["alignment optimiser"] = tuple(n for n in fields if n not in grouped)
    for title, names in groups.items():
        group = parser.add_argument_group(title)
        for name in names:
            annotation, doc, default = fields[name]
            flags = [f"--{name.replace('_', '-')}", *_ALIASES.get(name, ())]
            text = f"{doc.replace('``', '')} (default: {default})".replace("%", "%%")
            kinds, literals, _ = config_mod._allowed(annotation)
            metavar = "{" + ",".join(map(str, literals)) + "}" if literals and not kinds else name.upper()
            metavar = _METAVARS.get(name, metavar)
            optional_value: dict[str, Any] = {}
            if name in _OPTIONAL_VALUE:
                optional_value = {"nargs": "?", "const": _OPTIONAL_VALUE[name]}
            if annotation is bool:
                group.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=text)  # fmt: skip
            else:
                group.add_argument(*flags, dest=name, type=_value_parser(annotation), default=argparse.SUPPRESS,
                                   metavar=metavar, help=text, **optional_value)  # fmt: skip


def resolve_config(args: argparse.Namespace) -> Easi3RConfig:
    """The run's configuration: ``--config FILE`` (JSON or YAML, e.g. a saved ``config.json``) if given, then every
    ``--field-name`` option on top of it."""
    base = load_config_file(args.config) if getattr(args, "config", None) else Easi3RConfig()
    return base.with_overrides(**_cli_overrides(args))


def _cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration fields given on the command line (left-out options are absent)."""
    return {name: getattr(args, name) for name in _config_fields() if hasattr(args, name)}


def load_config_file(path: str | os.PathLike[str]) -> Easi3RConfig:
    """Read a JSON or YAML configuration file into an :class:`Easi3RConfig`.

    Raises:
        Easi3RInputError: unreadable file, invalid syntax, unknown fields or invalid values.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise Easi3RInputError(f"cannot read config file {str(p)!r}: {first_line(err)}") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # JSON and YAML parsers raise their own error types
        raise Easi3RInputError(
            f"config file {str(p)!r} is not valid {p.suffix[1:] or 'JSON'}: {first_line(err)}"
        ) from None
    if isinstance(data, dict) and "config" in data and isinstance(data["config"], dict):
        data = data["config"]  # a saved run's config.json: {"easi3r": version, "backbone": ..., "config": {...}}
    return Easi3RConfig.from_dict(data)


def write_run_config(out_dir: str | os.PathLike[str], config: Easi3RConfig, backbone: str) -> Path:
    """Write ``out_dir/config.json``: the resolved configuration of a run (``--config`` reproduces it)."""
    from .export.atomic import atomic_write_text

    payload = {"easi3r": __version__, "backbone": backbone, "config": config.to_dict()}
    return atomic_write_text(Path(out_dir) / "config.json", json.dumps(payload, indent=2) + "\n")


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) and prove it is writable with a test file, before any long work starts.

    Raises:
        Easi3RInputError: ``path`` is a file, lies under a file, or cannot be created or written.
    """
    out = Path(path)
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            where = "is" if parent == out else f"lies under {str(parent)!r}, which is"
            raise Easi3RInputError(f"output folder {str(out)!r} {where} a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
        import tempfile

        with tempfile.NamedTemporaryFile(dir=out, prefix=".easi3r-write-test-"):
            pass
    except OSError as err:
        raise Easi3RInputError(f"output folder {str(out)!r} is not writable: {first_line(err)}") from None
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import Easi3R

    base = load_config_file(args.config) if args.config else None
    overrides = _cli_overrides(args)
    config = (base or Easi3RConfig()).with_overrides(**overrides)
    inputs = list(args.input) if args.inputs is None else [*args.input, *_read_input_list(args.inputs)]
    if not inputs:
        raise Easi3RInputError("no input given (pass INPUT... or --inputs LIST.txt)")
    check_output_dir(args.out)
    if len(inputs) > 1:
        from .batch import run_command

        # Whole videos per rank (under torchrun), each into OUT/<input name>/, resumable.
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return run_command(
            inputs, args.out, backbone=args.backbone, device=args.device, overrides=fields, quiet=args.quiet
        )
    for path in inputs:
        if not Path(path).exists():
            raise Easi3RInputError(f"input {path!r} does not exist")
    # Without --config, options left out keep the backbone's own defaults (e.g. its preprocessing).
    runner = Easi3R(backbone=args.backbone, device=args.device, config=base, **overrides)
    rec = runner.run(inputs[0], progress=not args.quiet and runner.dist.is_main, **_known_inputs(args))
    if not runner.dist.is_main:
        return 0  # one video on several processes: every rank holds the result, rank 0 writes it
    written = rec.save(args.out, progress=not args.quiet, **_save_options(args))
    write_run_config(args.out, runner.config, str(args.backbone))
    if not args.quiet:
        share = 100.0 * rec.masks.mean()
        print(
            f"{rec.num_frames} frames, {share:.1f} % dynamic pixels, focal {rec.focals.mean():.1f} px "
            f"at {rec.size[1]}x{rec.size[0]}; {len(written) + 1} outputs in {args.out}"
        )
    return 0


def _known_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """``--masks`` / ``--intrinsics`` / ``--poses`` / ``--known-mode`` as :meth:`easi3r.Easi3R.run` arguments."""
    import numpy as np

    from .export.tum import read_tum

    out: dict[str, Any] = {}
    if args.masks is not None:
        out["masks"] = args.masks
    if args.intrinsics is not None:
        try:
            values = np.loadtxt(args.intrinsics, dtype=np.float64, ndmin=1)
        except (OSError, ValueError) as err:
            raise Easi3RInputError(f"cannot read intrinsics file {args.intrinsics!r}: {first_line(err)}") from None
        if values.size == 1:
            out["intrinsics"] = float(values.reshape(-1)[0])
        elif values.size % 9 == 0:
            out["intrinsics"] = values.reshape(-1, 3, 3) if values.size > 9 else values.reshape(3, 3)
        else:
            raise Easi3RInputError(f"{args.intrinsics!r}: expected one focal, a 3x3 matrix or rows of 9 values")
    if args.poses is not None:
        out["cam2world"] = read_tum(args.poses)[1]
    if out:
        out["known_mode"] = args.known_mode
    return out


def _save_options(args: argparse.Namespace) -> dict[str, Any]:
    """The export options of ``easi3r run`` (see :meth:`easi3r.Reconstruction.save`)."""
    return dict(
        layout=args.layout, videos=args.videos, clean_depth=args.clean_depth, mask_sky=args.mask_sky,
        cam_size=args.cam_size, as_pointcloud=not args.as_mesh,
    )  # fmt: skip


def _read_input_list(path: str) -> list[str]:
    """Inputs listed one per line in a text file (blank lines and ``#`` comments skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise Easi3RInputError(f"cannot read input list {path!r}: {first_line(err)}") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    check_output_dir(args.out)
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
        print(f"  {name:<18} {cfg.hub_id or '-':<58} {cfg.size}")
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
    run.add_argument(
        "input", nargs="*", help="video file(s) or folder(s) of images; several inputs go to OUT/<name>/ each"
    )
    run.add_argument("--inputs", default=None, metavar="LIST.txt", help="a text file listing inputs, one per line")
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument(
        "--backbone",
        default="monst3r",
        help="registry name (monst3r, dust3r, mast3r, ...), hub repo id or checkpoint path (default monst3r)",
    )
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    run.add_argument(
        "--config", default=None, metavar="FILE", help="JSON or YAML configuration (e.g. a run's config.json)"
    )
    add_config_options(run)
    known = run.add_argument_group("your own masks and cameras")
    known.add_argument(
        "--masks",
        default=None,
        metavar="DIR",
        help="dynamic masks, one image per frame (any non-zero = dynamic), original or processed size",
    )
    known.add_argument(
        "--intrinsics",
        default=None,
        metavar="FILE",
        help="known intrinsics at the ORIGINAL resolution: a focal, or 3x3 / T rows of 9 values",
    )
    known.add_argument("--poses", default=None, metavar="FILE.tum", help="known camera-to-world poses (TUM file)")
    known.add_argument(
        "--known-mode",
        choices=("pin", "init"),
        default="pin",
        help="pin the known cameras (default) or use them as the initialisation only",
    )
    out = run.add_argument_group("output files")
    out.add_argument(
        "--layout",
        choices=("default", "official"),
        default="default",
        help="also write the official Easi3R/MonST3R file names (pred_traj.txt, frame_NNNN.npy, ...)",
    )
    out.add_argument("--videos", action="store_true", help="also write masks.mp4 and attention.mp4")
    out.add_argument(
        "--clean-depth",
        action="store_true",
        help="GLB: drop points hidden in front of another camera's depth (official clean_pointcloud)",
    )
    out.add_argument("--mask-sky", action="store_true", help="GLB: drop sky pixels (the official HSV heuristic)")
    out.add_argument("--cam-size", type=float, default=None, help="GLB: camera frustum size (default: from the scene)")
    out.add_argument("--as-mesh", action="store_true", help="GLB: per-frame meshes instead of a point cloud")
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
    from .datasets.cli import add_benchmark_parser

    add_benchmark_parser(sub)
    from .app import add_app_parser, add_view_parser

    add_app_parser(sub)
    add_view_parser(sub)
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
