"""Every hyper-parameter of the method, with the official demo's values as defaults.

:class:`Easi3RConfig` is the one object a user edits; :class:`AlignConfig` is the slice of it the global
alignment needs (``Easi3RConfig.align_config()``). Both are frozen dataclasses: derive variants with
:func:`dataclasses.replace` or ``Easi3RConfig.with_overrides(**kw)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import Easi3RInputError

__all__ = ["AlignConfig", "Easi3RConfig"]

GRAPHS = ("swin", "swinstride", "swin2stride", "complete", "oneref")


@dataclass(frozen=True)
class AlignConfig:
    """Global alignment knobs (pipeline.md §7). Defaults are the official demo's pass-2 values.

    Attributes:
        iterations: Adam iterations after the MST initialisation (0 = initialisation only).
        lr: base learning rate. ``lr_min``: final learning rate of the schedule.
        schedule: ``"linear"`` (official demo) or ``"cosine"``.
        shared_focal: one focal for all frames (True, official) or one per frame.
        min_conf_thr: raw-confidence threshold for the PnP points of the MST initialisation.
        base_scale: geometric mean the pairwise scales are normalised to.
        flow_weight: weight of the optical-flow term (0 disables it and skips flow computation).
        flow_start: fraction of ``iterations`` after which the flow term is switched on.
        flow_threshold: the flow term is dropped for an iteration whose flow loss exceeds this value (px).
        flow_pixel_threshold: per-element smooth-L1 cut-off of the flow loss (px).
        temporal_smoothing_weight, translation_weight: the (off by default) pose smoothness term.
        pnp_iterations, pnp_reprojection_error: RANSAC-PnP settings of the MST initialisation.
    """

    iterations: int = 300
    lr: float = 0.01
    lr_min: float = 1e-3
    schedule: Literal["linear", "cosine"] = "linear"
    shared_focal: bool = True
    min_conf_thr: float = 2.5
    base_scale: float = 0.5
    flow_weight: float = 0.01
    flow_start: float = 0.1
    flow_threshold: float = 25.0
    flow_pixel_threshold: float = 50.0
    temporal_smoothing_weight: float = 0.0
    translation_weight: float = 1.0
    pnp_iterations: int = 10
    pnp_reprojection_error: float = 5.0

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise Easi3RInputError(f"iterations must be >= 0, got {self.iterations}")
        if self.schedule not in ("linear", "cosine"):
            raise Easi3RInputError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if not (0.0 <= self.flow_start <= 1.0):
            raise Easi3RInputError(f"flow_start is a fraction of the iterations in [0, 1], got {self.flow_start}")
        if self.lr <= 0 or self.lr_min < 0:
            raise Easi3RInputError(f"learning rates must be positive, got lr={self.lr}, lr_min={self.lr_min}")


@dataclass(frozen=True)
class Easi3RConfig:
    """All knobs of :class:`easi3r.Easi3R`. Defaults reproduce ``demo.py`` of the official code.

    Attributes:
        image_size: long side of the processed frames in pixels (512 or 224).
        fps: frames per second sampled from a video (None = every frame).
        max_frames: at most this many frames are used (official demo: 200).
        graph: pair graph name, one of ``swin``, ``swinstride``, ``swin2stride``, ``complete``, ``oneref``.
        window: window size of the sliding-window graphs (the reference frame of ``oneref``).
        cyclic: wrap the sliding window around the end of the video.
        pair_batch_size: pairs per network call (changes speed and memory, not results).
        clusters: k-means clusters of the cluster fusion. ``cluster_seed``: its random_state.
        threshold: ``"multiotsu"`` (official adaptive 2-4 class rule), ``"otsu"`` or a float in [0, 1].
        reweight: run the second, attention re-weighted pass (Easi3R); False = masks from pass 1 and no pass 2
            re-weighting (the plain backbone's pointmaps are aligned).
        align: global alignment settings (see :class:`AlignConfig`).
        flow: use the optical-flow term in alignment (``align.flow_weight`` > 0).
        export_conf_thr: raw-confidence threshold of the exported point clouds.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None picks CUDA when available.
    """

    image_size: int = 512
    fps: float | None = None
    max_frames: int | None = 200
    graph: str = "swinstride"
    window: int = 5
    cyclic: bool = False
    pair_batch_size: int = 4
    clusters: int = 64
    cluster_seed: int = 42
    threshold: str | float = "multiotsu"
    reweight: bool = True
    align: AlignConfig = field(default_factory=AlignConfig)
    flow: bool = True
    export_conf_thr: float = 1.1
    device: str | None = None

    def __post_init__(self) -> None:
        if self.image_size not in (224, 512) and (self.image_size <= 0 or self.image_size % 16):
            raise Easi3RInputError(f"image_size must be a positive multiple of 16, got {self.image_size}")
        if self.graph not in GRAPHS:
            raise Easi3RInputError(f"graph must be one of {GRAPHS}, got {self.graph!r}")
        if self.window < 1 and self.graph != "oneref":
            raise Easi3RInputError(f"window must be >= 1, got {self.window}")
        if self.clusters < 1:
            raise Easi3RInputError(f"clusters must be >= 1, got {self.clusters}")
        if self.pair_batch_size < 1:
            raise Easi3RInputError(f"pair_batch_size must be >= 1, got {self.pair_batch_size}")
        if isinstance(self.threshold, str):
            if self.threshold not in ("multiotsu", "otsu"):
                raise Easi3RInputError(f"threshold must be 'multiotsu', 'otsu' or a number, got {self.threshold!r}")
        elif not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool):
            raise Easi3RInputError(f"threshold must be 'multiotsu', 'otsu' or a number, got {self.threshold!r}")
        if self.max_frames is not None and self.max_frames < 1:
            raise Easi3RInputError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.fps is not None and self.fps <= 0:
            raise Easi3RInputError(f"fps must be > 0, got {self.fps}")

    @property
    def graph_name(self) -> str:
        """The official scene-graph string, e.g. ``"swinstride-5-noncyclic"``."""
        if self.graph == "complete":
            return "complete"
        name = f"{self.graph}-{self.window}"
        return name if self.cyclic or self.graph == "oneref" else name + "-noncyclic"

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
