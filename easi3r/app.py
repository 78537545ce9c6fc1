"""The web app (``easi3r app``, Gradio) and the 4D viewer command (``easi3r view``).

``easi3r app`` serves one page on ``http://127.0.0.1:7860``: a video or images in (or the bundled synthetic clip of
:func:`easi3r.demo.render_video`), the main knobs, a progress bar fed by the pipeline's stages, and the results: the
mask-overlay video, the labelled attention panels of a chosen frame (:func:`easi3r.viz.attention_grid`), the 3D
scene (``scene.glb``), the trajectory plot (:func:`easi3r.viz.trajectory_plot`) and a zip of every output file.
Jobs run one at a time (Gradio's queue, concurrency 1); input errors are shown in the page as the library's one-line
messages. Gradio is imported lazily (extra ``easi3r[app]``); analytics are off and no share link is created.

The work of the app (:func:`run_job`) is plain Python and testable without Gradio; :func:`build_app` only lays out
the page and :func:`launch_app` serves it. ``easi3r view OUT_DIR`` opens :func:`easi3r.viz.view` on a saved run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import inspect
import io
import logging
import os
import shutil
import signal
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from .config import Easi3RConfig
from .errors import Easi3RError, Easi3RInputError, first_line
from .export.atomic import atomic_path, is_temp_name

__all__ = [
    "DEMO_BACKBONE",
    "AppSettings",
    "BackboneCache",
    "JobResult",
    "add_app_parser",
    "add_view_parser",
    "attention_image",
    "build_app",
    "launch_app",
    "parse_threshold",
    "run_job",
    "stage_progress",
    "write_zip",
]

logger = logging.getLogger("easi3r")

#: Backbone name of the small randomly initialised network of :func:`easi3r.demo.demo_backbone` (no weights needed;
#: its outputs are not meaningful).
DEMO_BACKBONE = "demo"
#: Progress fraction at which each stage starts: the pipeline's ``stage: <name>`` debug messages
#: (:meth:`easi3r.pipeline.Easi3R.run`), then the app's own steps.
STAGE_PROGRESS = {
    "load": 0.02,
    "encode": 0.05,
    "k-means": 0.15,
    "pass 1": 0.2,
    "pass 2": 0.4,
    "alignment": 0.6,
    "assemble": 0.85,
    "save": 0.88,
    "videos": 0.94,
    "zip": 0.97,
}
#: Folder (inside a job's folder) and zip name of a job's output files.
OUTPUT_NAME = "easi3r_output"

ProgressCallback = Callable[[float, str], None]


def parse_threshold(value: str | float) -> str | float:
    """The threshold knob: ``"multiotsu"``, ``"otsu"`` or a number in [0, 1] given as text.

    >>> parse_threshold(" Otsu "), parse_threshold("0.3")
    ('otsu', 0.3)

    Raises:
        Easi3RInputError: any other text.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower()
    if text in ("multiotsu", "otsu"):
        return text
    try:
        return float(text)
    except ValueError:
        raise Easi3RInputError(f"threshold must be 'multiotsu', 'otsu' or a number in [0, 1], got {value!r}") from None


def _int_or_none(name: str, value: Any) -> int | None:
    """A whole number from a form field (Gradio numbers arrive as floats); None or 0 for 'no limit'."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise Easi3RInputError(f"{name} must be a whole number, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class AppSettings:
    """The knobs of the page (defaults from the command line).

    Attributes:
        backbone: registry name, hub id, checkpoint path, or :data:`DEMO_BACKBONE` (random weights).
        image_size: long side of the processed frames in pixels (multiple of 16).
        max_frames: at most this many frames (None: every frame).
        fps: frames per second sampled from a video (None: every frame).
        window: window of the pair graph.
        threshold: ``"multiotsu"``, ``"otsu"`` or a number in [0, 1].
        iterations: alignment iterations.
        flow: the optical-flow term of the alignment.
        sam2: SAM2 checkpoint (path or hub id) for the mask refinement, or None (only where the installed
            easi3r has the ``sam2`` option and the ``sam2`` package is installed).
        demo_frames: frames of the synthetic demo clip.
    """

    backbone: str = "monst3r"
    image_size: int = 512
    max_frames: int | None = 200
    fps: float | None = None
    window: int = 5
    threshold: str | float = "multiotsu"
    iterations: int = 300
    flow: bool = True
    sam2: str | None = None
    demo_frames: int = 6

    def config(self) -> Easi3RConfig:
        """The run's :class:`~easi3r.config.Easi3RConfig` (validated field by field).

        Raises:
            Easi3RInputError: an invalid knob, named in one line.
        """
        if not str(self.backbone).strip():
            raise Easi3RInputError("backbone must name a registry entry, hub id, checkpoint path or 'demo'")
        overrides: dict[str, Any] = dict(
            image_size=_int_or_none("image_size", self.image_size) or 0,
            max_frames=_int_or_none("max_frames", self.max_frames),
            fps=float(self.fps) if self.fps else None,
            window=_int_or_none("window", self.window) or 0,
            threshold=parse_threshold(self.threshold),
            iterations=_int_or_none("iterations", self.iterations) or 0,
            flow=bool(self.flow),
        )
        if self.sam2:
            if "sam2" not in {f.name for f in dataclasses.fields(Easi3RConfig)}:
                raise Easi3RInputError("this easi3r has no SAM2 refinement option; leave the SAM2 field empty")
            overrides["sam2"] = str(self.sam2)
        return Easi3RConfig().with_overrides(**overrides)


def sam2_available() -> bool:
    """Whether the SAM2 knob is offered: the ``sam2`` package is installed and the config has a ``sam2`` field."""
    has_field = "sam2" in {f.name for f in dataclasses.fields(Easi3RConfig)}
    return has_field and importlib.util.find_spec("sam2") is not None


class BackboneCache:
    """The last loaded backbone, kept between jobs (loading a checkpoint is the slow part of a small job)."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        from .device import resolve_device

        self.device = resolve_device(device)
        self._key: str | None = None
        self._net: Any = None

    def get(self, name: str) -> Any:
        """The :class:`~easi3r.backbones.Backbone` for ``name`` on :attr:`device` (loaded once).

        Raises:
            CheckpointError, Easi3RInputError: as :func:`easi3r.load_backbone`.
        """
        from .backbones import load_backbone

        if self._key != name:
            self._key, self._net = None, None  # free the previous network before loading the next one
            self._net = load_backbone(name, self.device)
            self._key = name
        return self._net


@contextlib.contextmanager
def stage_progress(callback: ProgressCallback) -> Iterator[None]:
    """Forward the pipeline's ``stage: <name>`` debug messages (logger ``easi3r``) to ``callback(fraction, name)``.

    The logger's level is lowered to DEBUG for the block (so the messages are emitted) and restored after it.
    """

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("stage: "):
                stage = message[len("stage: ") :]
                callback(STAGE_PROGRESS.get(stage.split(" (")[0], 0.0), stage)

    handler = _Handler(logging.DEBUG)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@dataclass
class JobResult:
    """What one job produced.

    Attributes:
        out_dir: the folder of output files (``rec.save``, ``config.json``, ``trajectory.png``, videos).
        preview: a browser-playable (VP8 WebM) mask-overlay video, beside ``out_dir``.
        glb: ``out_dir/scene.glb``. trajectory: ``out_dir/trajectory.png``. archive: the zip of ``out_dir``.
        summary: one line: frames, dynamic share, focal, backbone.
        num_frames: T.
    """

    out_dir: Path
    preview: Path
    glb: Path
    trajectory: Path
    archive: Path
    summary: str
    num_frames: int


def write_zip(folder: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Zip every file under ``folder`` (names relative to its parent, so the archive unpacks into one folder),
    atomically; temporary files of interrupted writes are left out.

    Returns:
        The written path.
    """
    folder = Path(folder)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and not is_temp_name(p.name)):
            zf.write(file, file.relative_to(folder.parent).as_posix())
    return Path(path)


def _save(rec: Any, out: Path) -> dict[str, Path]:
    """``rec.save`` with its videos where this easi3r writes them (``videos=True``), else the mask video here."""
    from .viz import mask_overlay_video

    if "videos" in inspect.signature(rec.save).parameters:
        return dict(rec.save(out, videos=True))
    written = dict(rec.save(out))
    written["masks_video"] = mask_overlay_video(rec, out / "masks.mp4")
    return written


def run_job(
    settings: AppSettings,
    source: Sequence[str | os.PathLike[str]] | None,
    job_dir: str | os.PathLike[str],
    backbones: BackboneCache,
    *,
    progress: ProgressCallback | None = None,
) -> JobResult:
    """One run of the app: frames -> :meth:`easi3r.Easi3R.run` -> every output file, a preview video and a zip.

    Args:
        settings: the page's knobs (validated before any work starts).
        source: one video file or several image files; None renders the synthetic demo clip
            (:func:`easi3r.demo.render_video`, ``settings.demo_frames`` frames at ``image_size`` x 3/4).
        job_dir: a new folder of this job (created); the outputs go to ``job_dir/easi3r_output``.
        backbones: the backbone cache of the app.
        progress: ``callback(fraction in [0, 1], stage name)``.

    Returns:
        The :class:`JobResult`.

    Raises:
        Easi3RInputError: invalid knobs, no input, unreadable frames; CheckpointError: an unloadable backbone.
    """
    from .cli import write_run_config
    from .demo import demo_backbone, render_video
    from .frames import is_video_path, load_frames
    from .pipeline import Easi3R
    from .viz import mask_overlay_video, trajectory_plot

    report = progress or (lambda fraction, stage: None)
    cfg = settings.config()
    if source is not None and len(source) == 0:
        raise Easi3RInputError("no input: upload a video or images, or choose the synthetic demo clip")
    job = Path(job_dir)
    job.mkdir(parents=True, exist_ok=True)
    if source is None:
        size = cfg.image_size
        clip = render_video(settings.demo_frames, width=size, height=max(16, size * 3 // 4))
        frames_in: Any = clip.frames
    else:
        paths = [Path(p) for p in source]
        frames_in = paths[0] if len(paths) == 1 and is_video_path(paths[0]) else paths
    report(STAGE_PROGRESS["load"], "load")
    frames = load_frames(frames_in, cfg.image_size, fps=cfg.fps, max_frames=cfg.frame_limit(is_video_path(frames_in)))
    if len(frames) < 2:
        raise Easi3RInputError(f"Easi3R needs at least 2 frames, got {len(frames)}")
    name = str(settings.backbone).strip()
    net = demo_backbone(frames.images) if name == DEMO_BACKBONE else backbones.get(name)
    runner = Easi3R(backbone=net, device=backbones.device, config=cfg)
    with stage_progress(report):
        rec = runner.run(frames, progress=False)
    rec = dataclasses.replace(rec, backbone="demo (random weights)" if name == DEMO_BACKBONE else name)
    out = job / OUTPUT_NAME
    report(STAGE_PROGRESS["save"], "save")
    written = _save(rec, out)
    write_run_config(out, runner.config, name)
    trajectory = out / "trajectory.png"
    with atomic_path(trajectory) as tmp:
        trajectory_plot(rec).savefig(tmp, format="png", dpi=100)
    report(STAGE_PROGRESS["videos"], "videos")
    preview = mask_overlay_video(rec, job / "masks_preview.webm")
    report(STAGE_PROGRESS["zip"], "zip")
    archive = write_zip(out, job / f"{OUTPUT_NAME}.zip")
    report(1.0, "finished")
    H, W = rec.size
    summary = (
        f"{rec.num_frames} frames at {W}x{H}, {100.0 * rec.masks.mean():.1f} % dynamic pixels, "
        f"focal {rec.focals.mean():.1f} px, backbone {rec.backbone}; {len(written) + 2} outputs"
    )
    return JobResult(out, preview, Path(written["glb"]), trajectory, archive, summary, rec.num_frames)


def attention_image(rec: Any, t: int) -> NDArray[np.uint8]:
    """``(H', W', 3)`` uint8 RGB rendering of frame ``t``'s labelled attention panels
    (:func:`easi3r.viz.attention_grid` of one frame).

    Raises:
        Easi3RInputError: ``t`` out of range.
    """
    from .viz import attention_grid

    fig = attention_grid(rec, frames=[int(t)])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    with Image.open(buf) as img:
        rgb: NDArray[np.uint8] = np.array(img.convert("RGB"))
    return rgb


# ---------------------------------------------------------------------------------------------------- the page


def _import_gradio(work_root: Path) -> Any:
    """Import Gradio with analytics off and its upload/cache folder inside ``work_root`` (both read from the
    environment when Gradio is imported; values the user set are kept)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work_root / "gradio"))
    try:
        return importlib.import_module("gradio")
    except ImportError as exc:
        raise ImportError("easi3r app needs Gradio: pip install easi3r[app]") from exc


class _App:
    """The state behind the page: the work folder, the backbone cache, the last result read for the panels."""

    def __init__(self, work_root: Path, device: str | None, keep_jobs: int) -> None:
        self.work_root = work_root
        self.backbones = BackboneCache(device)
        self.keep_jobs = keep_jobs
        self._jobs = 0
        self._rec_key: str | None = None
        self._rec: Any = None

    def new_job_dir(self) -> Path:
        self._jobs += 1
        old = sorted(self.work_root.glob("job-*"))
        for stale in old[: max(len(old) - self.keep_jobs + 1, 0)]:
            shutil.rmtree(stale, ignore_errors=True)
        return self.work_root / f"job-{self._jobs:05d}"

    def reconstruction(self, out_dir: str) -> Any:
        from .result import Reconstruction

        if self._rec_key != out_dir:
            self._rec, self._rec_key = Reconstruction.load(out_dir), out_dir
        return self._rec


def build_app(
    settings: AppSettings,
    *,
    work_root: str | os.PathLike[str],
    device: str | None = None,
    keep_jobs: int = 4,
) -> Any:
    """The Gradio ``Blocks`` of the page (not launched; :func:`launch_app` serves it).

    Args:
        settings: the knobs' initial values.
        work_root: folder of the jobs' files (the caller removes it; :func:`launch_app` does).
        device: torch device of the backbones (None: CUDA when available).
        keep_jobs: job folders kept (older ones are removed when a job starts).

    Returns:
        A ``gradio.Blocks``.
    """
    root = Path(work_root)
    root.mkdir(parents=True, exist_ok=True)
    gr = _import_gradio(root)
    state = _App(root, device, keep_jobs)
    with gr.Blocks(title="Easi3R", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(
            "# Easi3R\nDynamic-object masks, cameras and a 4D point cloud from a casual video, training-free "
            "(Easi3R, ICCV 2025). Upload a video or images, or run the synthetic demo clip."
        )
        with gr.Row():
            with gr.Column(scale=1):
                source = gr.Radio(["upload", "synthetic demo clip"], value="upload", label="input", elem_id="source")
                upload = gr.File(label="video or images", file_count="multiple", elem_id="upload")
                backbone = gr.Dropdown(_backbone_choices(settings.backbone), value=settings.backbone,
                                       allow_custom_value=True, label="backbone", elem_id="backbone")  # fmt: skip
                with gr.Row():
                    image_size = gr.Number(settings.image_size, precision=0, label="image size", elem_id="image_size")
                    max_frames = gr.Number(settings.max_frames or 0, precision=0, label="max frames (0 = all)",
                                           elem_id="max_frames")  # fmt: skip
                    fps = gr.Number(settings.fps or 0, label="fps cap (0 = every frame)", elem_id="fps")
                with gr.Row():
                    window = gr.Number(settings.window, precision=0, label="window", elem_id="window")
                    threshold = gr.Textbox(str(settings.threshold), label="threshold (multiotsu, otsu or 0-1)",
                                           elem_id="threshold")  # fmt: skip
                    iterations = gr.Number(settings.iterations, precision=0, label="iterations", elem_id="iterations")
                flow = gr.Checkbox(settings.flow, label="optical-flow term", elem_id="flow")
                sam2 = gr.Textbox(settings.sam2 or "", label="SAM2 checkpoint (empty: off)", elem_id="sam2",
                                  visible=sam2_available())  # fmt: skip
                run = gr.Button("Run", variant="primary", elem_id="run")
                status = gr.Markdown("", elem_id="status")
            with gr.Column(scale=2):
                video = gr.Video(label="dynamic masks", elem_id="result_video", interactive=False, height=360)
                scene = gr.Model3D(label="3D scene (scene.glb)", elem_id="scene", interactive=False, height=360)
                with gr.Row():
                    frame = gr.Slider(0, max(settings.demo_frames - 1, 1), step=1, value=0, label="attention of frame",
                                      elem_id="frame")  # fmt: skip
                panels = gr.Image(label="attention panels", elem_id="panels", interactive=False)
                trajectory = gr.Image(label="camera trajectory", elem_id="trajectory", interactive=False)
                archive = gr.File(label="all outputs (zip)", elem_id="archive", interactive=False)
        out_state = gr.State("")
        tracker = gr.Progress()  # Gradio finds the progress tracker among the handler's defaults

        def submit(
            source_v: str, files: Any, backbone_v: str, size_v: Any, frames_v: Any, fps_v: Any, window_v: Any,
            threshold_v: str, iterations_v: Any, flow_v: bool, sam2_v: str, progress: Any = tracker,
        ) -> tuple[Any, ...]:  # fmt: skip
            job = state.new_job_dir()
            try:
                knobs = AppSettings(backbone=backbone_v or "", image_size=size_v, max_frames=frames_v, fps=fps_v,
                                    window=window_v, threshold=threshold_v, iterations=iterations_v, flow=flow_v,
                                    sam2=sam2_v or None, demo_frames=settings.demo_frames)  # fmt: skip
                paths = None if source_v == "synthetic demo clip" else [_upload_path(f) for f in files or []]
                result = run_job(knobs, paths, job, state.backbones, progress=lambda f, s: progress(f, desc=s))
                rec = state.reconstruction(str(result.out_dir))
            except Exception as err:  # shown in the page; the app keeps serving
                shutil.rmtree(job, ignore_errors=True)
                kind = "" if isinstance(err, Easi3RError) else f"unexpected {type(err).__name__}: "
                logger.warning("app job failed: %s%s", kind, first_line(err))
                return (f"**error:** {kind}{first_line(err)}", None, None, None, None, None, gr.update(), "")
            slider = gr.update(maximum=max(result.num_frames - 1, 1), value=0)
            return (f"**done:** {result.summary}", str(result.preview), str(result.glb), attention_image(rec, 0),
                    str(result.trajectory), str(result.archive), slider, str(result.out_dir))  # fmt: skip

        def show_panels(t: float, out_dir: str) -> Any:
            if not out_dir:
                return None
            rec = state.reconstruction(out_dir)
            return attention_image(rec, min(int(t), rec.num_frames - 1))

        run.click(
            submit,
            [source, upload, backbone, image_size, max_frames, fps, window, threshold, iterations, flow, sam2],
            [status, video, scene, panels, trajectory, archive, frame, out_state],
            concurrency_limit=1,
            concurrency_id="job",
        )
        frame.release(show_panels, [frame, out_state], panels, concurrency_limit=1, concurrency_id="job")
    return blocks


def _backbone_choices(default: str) -> list[str]:
    from .backbones import PRETRAINED

    names = list(PRETRAINED) + [DEMO_BACKBONE]
    return names if default in names else [default, *names]


def _upload_path(item: Any) -> str:
    """The local path of an uploaded file as Gradio passes it (a path string or an object with ``.name``)."""
    return str(item if isinstance(item, (str, os.PathLike)) else getattr(item, "name", item))


def launch_app(
    settings: AppSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = None,
    block: bool = True,
) -> Any:
    """Serve the page at ``http://host:port`` (one job at a time, no share link, analytics off).

    Its files live in a new temporary folder, removed when the server stops (``block=True``: on Ctrl-C).

    Returns:
        With ``block=False`` the running ``gradio.Blocks`` (``.close()`` stops it; remove ``.easi3r_work_root``).
    """
    root = Path(tempfile.mkdtemp(prefix="easi3r-app-"))
    try:
        gr = _import_gradio(root)
        blocks = build_app(settings, work_root=root, device=device)
        blocks.easi3r_work_root = root
        blocks.queue(default_concurrency_limit=1, max_size=16)
        theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["monospace"])
        blocks.launch(server_name=host, server_port=port, share=False, ssr_mode=False, inbrowser=False,
                      prevent_thread_lock=True, allowed_paths=[str(root)], theme=theme, quiet=True,
                      footer_links=[], mcp_server=False)  # fmt: skip
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    print(f"easi3r app: http://{host}:{port}  (job files in {root}, removed on exit; Ctrl-C to stop)", flush=True)
    if not block:
        return blocks
    # SIGTERM (a service manager, a test's teardown) ends the server like Ctrl-C, so the files are removed.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        blocks.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        blocks.close()
        shutil.rmtree(root, ignore_errors=True)
    return blocks


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------------- commands


def _cmd_app(args: argparse.Namespace) -> int:
    settings = AppSettings(backbone=args.backbone, image_size=args.image_size, max_frames=args.max_frames,
                           iterations=args.iterations, flow=args.flow, demo_frames=args.demo_frames)  # fmt: skip
    settings.config()  # bad defaults end here, before the server starts
    launch_app(settings, host=args.host, port=args.port, device=args.device)
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from .result import Reconstruction
    from .viz import view

    rec = Reconstruction.load(args.out_dir)
    print(f"easi3r view: http://{args.host}:{args.port}  ({rec.num_frames} frames; Ctrl-C to stop)", flush=True)
    view(rec, args.port, host=args.host, conf_threshold=args.conf_threshold, point_size=args.point_size,
         max_points_per_frame=args.max_points)  # fmt: skip
    return 0


def add_app_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``easi3r app`` to an ``ArgumentParser.add_subparsers()`` object; returns the sub-parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "app", help="web app (Gradio): a video in; masks, cameras and the 4D scene out (easi3r[app])"
    )
    p.add_argument("--backbone", default="monst3r",
                   help=f"default backbone of the page: registry name, hub id, checkpoint path or {DEMO_BACKBONE!r} "
                        "(random weights, no download)")  # fmt: skip
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="HTTP port (default 7860)")
    p.add_argument("--image-size", type=int, default=512, help="default image size of the page (default 512)")
    p.add_argument("--max-frames", type=int, default=200, help="default frame cap of the page (default 200)")
    p.add_argument("--iterations", type=int, default=300, help="default alignment iterations (default 300)")
    p.add_argument("--flow", action=argparse.BooleanOptionalAction, default=True, help="default of the flow term")
    p.add_argument("--demo-frames", type=int, default=6, help="frames of the synthetic demo clip (default 6)")
    p.set_defaults(func=_cmd_app)
    return p


def add_view_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``easi3r view OUT_DIR`` to an ``ArgumentParser.add_subparsers()`` object; returns the sub-parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "view", help="4D viewer (viser) of a saved run: time slider, play, static/dynamic points (easi3r[viz])"
    )
    p.add_argument("out_dir", help="output folder of `easi3r run` (or its reconstruction.npz)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    p.add_argument("--conf-threshold", type=float, default=None, help="initial confidence threshold")
    p.add_argument("--point-size", type=float, default=0.01, help="initial point size in scene units")
    p.add_argument("--max-points", type=int, default=50_000, help="points drawn per frame at most")
    p.set_defaults(func=_cmd_view)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m easi3r.app app|view ...``: the two commands on their own (the ``easi3r`` script has them too)."""
    parser = argparse.ArgumentParser(prog="easi3r")
    sub = parser.add_subparsers(dest="command", required=True)
    add_app_parser(sub)
    add_view_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Easi3RError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
