"""Every hyper-parameter of the method, with the official demo's values as defaults.

:class:`Easi3RConfig` is the one object a user edits; :class:`AlignConfig` is the slice of it the global
alignment needs (``Easi3RConfig.align_config()``). Both are frozen dataclasses: derive variants with
:func:`dataclasses.replace` or ``Easi3RConfig.with_overrides(**kw)``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from .errors import Easi3RInputError

__all__ = ["AlignConfig", "Easi3RConfig", "Precision"]

#: The network's arithmetic (``Easi3RConfig.precision``); what each value does: :data:`easi3r.device.PRECISIONS`.
Precision = Literal["fp32", "tf32", "bf16"]

#: The official demo's frame cap for videos (``--num_frames 200``).
DEFAULT_VIDEO_FRAMES = 200


def _bounds(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False
) -> dict[str, Any]:
    """Field metadata: the closed (or open) interval a numeric field must lie in."""
    return {"bounds": (lo, hi, lo_open, hi_open)}


def _allowed(annotation: Any) -> tuple[list[type], list[Any], bool]:
    """The plain types, the literal values and whether None is allowed by a field's annotation."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        kinds: list[type] = []
        literals: list[Any] = []
        optional = False
        for arg in typing.get_args(annotation):
            k, lits, opt = _allowed(arg)
            kinds += k
            literals += lits
            optional |= opt
        return kinds, literals, optional
    if origin is Literal:
        return [], list(typing.get_args(annotation)), False
    if annotation is type(None):
        return [], [], True
    return [annotation], [], False


def _check_value(owner: str, name: str, value: Any, annotation: Any, bounds: tuple[Any, ...] | None) -> None:
    """Type and range check of one config value; raises a one-line :class:`Easi3RInputError`."""
    kinds, literals, optional = _allowed(annotation)
    if value is None and optional:
        return
    if not isinstance(value, bool) and any(value == lit and type(value) is type(lit) for lit in literals):
        return
    ok = False
    if isinstance(value, bool):
        ok = bool in kinds
    elif isinstance(value, int):
        ok = int in kinds or float in kinds
    elif isinstance(value, float):
        ok = float in kinds
    else:
        ok = any(k not in (int, float, bool) and isinstance(value, k) for k in kinds)
    if not ok:
        expected = [k.__name__ for k in kinds] + [repr(v) for v in literals] + (["None"] if optional else [])
        raise Easi3RInputError(
            f"{owner}.{name} must be {' or '.join(expected)}, got {value!r} ({type(value).__name__})"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise Easi3RInputError(f"{owner}.{name} must be finite, got {value!r}")
    if bounds is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi, lo_open, hi_open = bounds
        below = lo is not None and (value <= lo if lo_open else value < lo)
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if below or above:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            interval = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
            raise Easi3RInputError(f"{owner}.{name} must be in {interval}, got {value!r}")


def field_docs(cls: type) -> dict[str, str]:
    """``{field: one-line description}`` from the ``Attributes:`` section of a config class's docstring (the help
    text of the generated command-line options)."""
    docs: dict[str, str] = {}
    lines = (cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Attributes:")
    except StopIteration:
        return docs
    current = None
    for line in lines[start + 1 :]:
        stripped = line.strip()
        if not stripped:
            break
        head, sep, rest = stripped.partition(": ")
        if sep and head.isidentifier() and len(line) - len(line.lstrip()) <= 8:
            current = head
            docs[current] = rest
        elif current is not None:
            docs[current] += " " + stripped
    return docs


def validate_fields(config: Any) -> None:
    """Check every field of a config dataclass against its annotation (int, float, bool, str, Literal, None)
    and its ``bounds`` metadata. Floats must be finite; ``bool`` is not accepted for numbers and vice versa.

    Raises:
        Easi3RInputError: the first offending field, in one line naming it, the expected type and the value.
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        _check_value(type(config).__name__, f.name, getattr(config, f.name), hints[f.name], f.metadata.get("bounds"))


@dataclass(frozen=True)
class AlignConfig:
    """Global alignment knobs. Defaults are the official demo's pass-2 values (official Easi3R `demo.py`,
    `global_aligner(..., mode=GlobalAlignerMode.PointCloudOptimizer)` + `compute_global_alignment(init="mst")`).

    Attributes:
        iterations: Adam iterations after the MST initialisation (0 = initialisation only).
        lr: base learning rate of Adam.
        lr_min: final learning rate of the schedule.
        schedule: ``"linear"`` (official demo) or ``"cosine"``.
        shared_focal: one focal for all frames (True, official) or one per frame.
        min_conf_thr: raw-confidence threshold for the PnP points of the MST initialisation.
        base_scale: geometric mean the pairwise scales are normalised to.
        flow_weight: weight of the optical-flow term (0 disables it and skips flow computation).
        flow_start: fraction of ``iterations`` after which the flow term is switched on.
        flow_threshold: the flow term is dropped for an iteration whose flow loss exceeds this value (px).
        flow_pixel_threshold: per-element smooth-L1 cut-off of the flow loss (px).
        temporal_smoothing_weight: weight of the (off by default) relative-pose smoothness term.
        translation_weight: weight of the translation part inside the smoothness term.
        pnp_iterations: RANSAC iterations of the PnP in the MST initialisation (official 10).
        pnp_reprojection_error: RANSAC inlier threshold of that PnP in pixels.
        robust_init: robust PnP in the MST initialisation (not official): at least 1000 RANSAC iterations, then
            Levenberg-Marquardt on the inliers; makes the initial cameras stable under float noise (thread count).
    """

    iterations: int = field(default=300, metadata=_bounds(0))
    lr: float = field(default=0.01, metadata=_bounds(0, lo_open=True))
    lr_min: float = field(default=1e-3, metadata=_bounds(0))
    schedule: Literal["linear", "cosine"] = "linear"
    shared_focal: bool = True
    min_conf_thr: float = field(default=2.5, metadata=_bounds(0))
    base_scale: float = field(default=0.5, metadata=_bounds(0, lo_open=True))
    flow_weight: float = field(default=0.01, metadata=_bounds(0))
    flow_start: float = field(default=0.1, metadata=_bounds(0, 1))
    flow_threshold: float = field(default=25.0, metadata=_bounds(0, lo_open=True))
    flow_pixel_threshold: float = field(default=50.0, metadata=_bounds(0, lo_open=True))
    temporal_smoothing_weight: float = field(default=0.0, metadata=_bounds(0))
    translation_weight: float = field(default=1.0, metadata=_bounds(0))
    pnp_iterations: int = field(default=10, metadata=_bounds(1))
    pnp_reprojection_error: float = field(default=5.0, metadata=_bounds(0, lo_open=True))
    robust_init: bool = False

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.lr_min > self.lr:
            raise Easi3RInputError(f"AlignConfig.lr_min must be <= lr, got lr={self.lr}, lr_min={self.lr_min}")


@dataclass(frozen=True)
class Easi3RConfig:
    """All knobs of :class:`easi3r.Easi3R`. Defaults reproduce ``demo.py`` of the official code.

    Attributes:
        image_size: long side of the processed frames in pixels (512 or 224).
        crop: centre-crop the resized frames to multiples of 16 (official default); False resizes them to multiples
            of 16 instead (official ``crop=False``, the DyCheck protocol).
        fps: frames per second sampled from a video (None = every frame).
        max_frames: at most this many frames are used; ``"auto"`` (default) caps videos at the official demo's 200
            frames and keeps every frame of a folder, list or array; None keeps every frame. Dropped frames are
            logged (logger ``easi3r``) with their count and the reason.
        graph: pair graph name, one of ``swin``, ``swinstride``, ``swin2stride``, ``complete``, ``oneref``.
        window: window size of the sliding-window graphs (the reference frame of ``oneref``).
        cyclic: wrap the sliding window around the end of the video.
        pair_batch_size: pairs per network call (changes speed and memory, not results).
        clusters: k-means clusters of the cluster fusion.
        cluster_seed: random_state of that k-means.
        threshold: ``"multiotsu"`` (official adaptive 2-4 class rule), ``"otsu"`` or a float in [0, 1].
        reweight: run the second, attention re-weighted pass (Easi3R); False = masks from pass 1 and no pass 2
            re-weighting (the plain backbone's pointmaps are aligned).
        align: global alignment settings (see :class:`AlignConfig`).
        flow: use the optical-flow term in alignment (``align.flow_weight`` > 0).
        flow_model: the observed flow of that term: ``"dis"`` (OpenCV DIS, no weights), ``"raft"`` or
            ``"raft_small"`` (torchvision's RAFT: ``pip install easi3r[raft]`` and its weights).
        flow_weights: a local RAFT weights file (default: torchvision's cache).
        alignment: ``"global"`` (all pairs at once, the official mode), ``"window"`` (MonST3R's window-wise mode:
            overlapping windows of frames aligned one at a time and stitched by Sim(3); only one window's pointmaps
            are resident) or ``"auto"`` (global up to ``align_window`` frames, window-wise beyond).
        align_window: frames per alignment window.
        align_overlap: fraction of a window shared with the next one, in [0, 1).
        export_conf_thr: raw-confidence threshold of the exported point clouds.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None picks CUDA when available.
        precision: the network's arithmetic: ``"fp32"`` (default, the reference), ``"tf32"`` (CUDA: TF32 matmuls and
            convolutions, as the official code) or ``"bf16"`` (bfloat16 autocast over encoder and decoders; heads
            float32). Faster, not the same numbers: see the README's Precision section for their effect.
        sam2: SAM2 refinement of the attention masks: a local ``.pt`` checkpoint or a hub id
            (``facebook/sam2.1-hiera-large``, the official weights); None (default) = no refinement.
    """

    image_size: int = field(default=512, metadata=_bounds(16))
    crop: bool = True
    fps: float | None = field(default=None, metadata=_bounds(0, lo_open=True))
    max_frames: int | Literal["auto"] | None = field(default="auto", metadata=_bounds(1))
    graph: Literal["swin", "swinstride", "swin2stride", "complete", "oneref"] = "swinstride"
    window: int = field(default=5, metadata=_bounds(0))
    cyclic: bool = False
    pair_batch_size: int = field(default=4, metadata=_bounds(1))
    clusters: int = field(default=64, metadata=_bounds(1))
    cluster_seed: int = field(default=42, metadata=_bounds(0))
    threshold: Literal["multiotsu", "otsu"] | float = field(default="multiotsu", metadata=_bounds(0, 1))
    reweight: bool = True
    align: AlignConfig = field(default_factory=AlignConfig)
    flow: bool = True
    flow_model: Literal["dis", "raft", "raft_small"] = "dis"
    flow_weights: str | None = None
    alignment: Literal["global", "window", "auto"] = "auto"
    align_window: int = field(default=100, metadata=_bounds(2))
    align_overlap: float = field(default=0.5, metadata=_bounds(0, 1, hi_open=True))
    export_conf_thr: float = field(default=1.1, metadata=_bounds(0))
    device: str | None = None
    precision: Precision = "fp32"
    sam2: str | None = None

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.image_size % 16:
            raise Easi3RInputError(f"Easi3RConfig.image_size must be a multiple of 16, got {self.image_size}")
        if self.graph != "oneref" and self.window < 1:
            raise Easi3RInputError(f"Easi3RConfig.window must be >= 1 for the {self.graph!r} graph, got {self.window}")
        if not isinstance(self.align, AlignConfig):
            raise Easi3RInputError(f"Easi3RConfig.align must be an AlignConfig, got {type(self.align).__name__}")
        if self.device is not None:
            from .device import resolve_device

            resolve_device(self.device)

    @property
    def graph_name(self) -> str:
        """The official scene-graph string, e.g. ``"swinstride-5-noncyclic"``."""
        if self.graph == "complete":
            return "complete"
        name = f"{self.graph}-{self.window}"
        return name if self.cyclic or self.graph == "oneref" else name + "-noncyclic"

    def alignment_mode(self, num_frames: int) -> Literal["global", "window"]:
        """The alignment actually used for ``num_frames`` frames (``"auto"`` resolved)."""
        if self.alignment == "auto":
            return "global" if num_frames <= self.align_window else "window"
        return self.alignment

    def frame_limit(self, is_video: bool) -> int | None:
        """The frame cap for a source: ``max_frames``, with ``"auto"`` = 200 for videos, no cap otherwise."""
        if self.max_frames == "auto":
            return DEFAULT_VIDEO_FRAMES if is_video else None
        return self.max_frames

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (``align`` nested); :meth:`from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Easi3RConfig:
        """A config from :meth:`to_dict`'s form (or a subset of it; missing fields keep their defaults).

        Alignment fields may be nested under ``"align"`` or given flat.

        Raises:
            Easi3RInputError: unknown field names, or values that fail validation.
        """
        if not isinstance(data, dict):
            raise Easi3RInputError(f"a configuration must be a mapping of field names, got {type(data).__name__}")
        flat = {k: v for k, v in data.items() if k != "align"}
        nested = data.get("align", {}) or {}
        if not isinstance(nested, dict):
            raise Easi3RInputError(f"'align' must be a mapping of AlignConfig fields, got {type(nested).__name__}")
        try:
            return cls().with_overrides(**flat, **nested)
        except TypeError as err:
            raise Easi3RInputError(str(err)) from None

    def align_config(self) -> AlignConfig:
        """The alignment settings actually used: ``align`` with the flow term removed when ``flow`` is off."""
        return self.align if self.flow else dataclasses.replace(self.align, flow_weight=0.0)

    def with_overrides(self, **overrides: Any) -> Easi3RConfig:
        """A copy with fields replaced by name. Alignment fields may be given flat (``iterations=100``).

        Raises:
            TypeError: an override names no field of this config nor of :class:`AlignConfig`.
        """
        own = {f.name for f in dataclasses.fields(self)}
        align_names = {f.name for f in dataclasses.fields(AlignConfig)}
        top = {k: v for k, v in overrides.items() if k in own}
        flat_align = {k: v for k, v in overrides.items() if k not in own and k in align_names}
        unknown = sorted(set(overrides) - own - align_names)
        if unknown:
            raise TypeError(f"unknown Easi3RConfig option(s): {', '.join(unknown)}")
        cfg = dataclasses.replace(self, **top) if top else self
        if flat_align:
            cfg = dataclasses.replace(cfg, align=dataclasses.replace(cfg.align, **flat_align))
        return cfg
