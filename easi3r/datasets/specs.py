"""The benchmark datasets: where the frames and the ground truth lie, and the official run settings.

Every entry reproduces the official evaluation launcher (Easi3R ``dust3r/pose_eval.py``
``eval_pose_estimation_dist`` with the defaults of ``dust3r/training.py`` l.93-133 and the paths of
``dust3r/eval_metadata.py``; MonST3R's ``eval_metadata.py`` for Bonn and Sintel, which Easi3R lacks):

* frames are the **prepared** folders the official preparation scripts write (already strided: TUM every 30th
  associated frame, DyCheck every 10th, Bonn frames 30-139); the launcher then takes every file of the folder
  (``pose_eval_stride`` 1, no cap), image size 512;
* scene graph ``swinstride-5-noncyclic`` with the window clamped to ``max(1, ceil((N - 1) / 2))`` for short
  sequences (pose_eval.py l.88-93); DAVIS sequences of more than 95 frames use window 4 (l.98-100);
* 300 iterations, linear schedule, lr 0.01, MST init, global alignment of all pairs, flow-loss threshold 20
  (the launcher's ``flow_loss_thre``; the demo uses 25);
* DyCheck is run without the centre crop (``--no_crop``, Easi3R ``data/evaluation_script.md``), the others
  with it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import Easi3RInputError
from ..eval.masks import DAVIS16, DAVIS17
from ..frames import IMAGE_EXTENSIONS

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "Metric",
    "frame_files",
    "get_spec",
    "list_sequences",
    "select_frames",
    "sequence_overrides",
]

Metric = Literal["masks", "poses", "points"]

#: Settings of every official evaluation run (Easi3R ``dust3r/pose_eval.py``, ``dust3r/training.py`` defaults).
COMMON_OVERRIDES: dict[str, Any] = {
    "image_size": 512,
    "graph": "swinstride",
    "window": 5,
    "cyclic": False,
    "alignment": "global",
    "iterations": 300,
    "schedule": "linear",
    "lr": 0.01,
    "flow_threshold": 20.0,
    "max_frames": None,
}


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset.

    Attributes:
        name: the command-line name (``davis``, ``dycheck``, ``tum-dynamics``, ``bonn``, ``sintel``).
        title: the name in result tables.
        root_hint: the official ``--root`` folder (relative to the official repository).
        frames: frames folder of sequence ``{seq}``, relative to the root.
        metrics: what is evaluated: ``masks`` (DAVIS J / F), ``poses`` (ATE / RTE / RRE), ``points`` (4D).
        sequences: the official sequence list (None: every sequence folder found).
        subsets: named sequence lists accepted by ``--subset``.
        gt: ground-truth paths of sequence ``{seq}`` relative to the root, by kind (``annotations``,
            ``tum``, ``iphone_cameras``, ``iphone_depth``, ``sintel_cameras``).
        overrides: dataset-specific configuration fields (on top of :data:`COMMON_OVERRIDES`).
        long_sequence: ``(frames, window)``: sequences of more than ``frames`` frames use this window.
        preparation: how the official scripts prepare the frames (documentation).
        source: where these settings are in the official code.
    """

    name: str
    title: str
    root_hint: str
    frames: str
    metrics: tuple[Metric, ...]
    sequences: tuple[str, ...] | None = None
    subsets: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)
    gt: Mapping[str, str] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    long_sequence: tuple[int, int] | None = None
    preparation: str = ""
    source: str = ""

    def path(self, root: str | os.PathLike[str], template: str, sequence: str) -> Path:
        """``root / template`` with ``{seq}`` replaced."""
        return Path(root) / template.format(seq=sequence)

    def frames_dir(self, root: str | os.PathLike[str], sequence: str) -> Path:
        """The folder holding sequence ``sequence``'s frames."""
        return self.path(root, self.frames, sequence)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="davis",
            title="DAVIS",
            root_hint="data/davis/DAVIS",
            frames="JPEGImages/480p/{seq}",
            metrics=("masks",),
            sequences=None,
            subsets={"davis16": DAVIS16, "davis17": DAVIS17, "all": None},
            gt={"annotations": "Annotations/480p"},
            long_sequence=(95, 4),
            preparation="DAVIS-2017 trainval 480p as downloaded (data/download_prepare_davis.py); every frame",
            source="Easi3R dust3r/eval_metadata.py l.7-18 ('davis', full_seq); pose_eval.py l.98-100 "
            "(> 95 frames: swinstride-4); mask_metric.py l.13-67 (seq_list_2016 / seq_list_2017, default all)",
        ),
        DatasetSpec(
            name="dycheck",
            title="DyCheck",
            root_hint="data/iphone",
            frames="{seq}/prepare_all_stride10/rgb",
            metrics=("poses", "points"),
            gt={
                "iphone_cameras": "{seq}/prepare_all_stride10/camera",
                "iphone_depth": "{seq}/prepare_all_stride10/depth_npy",
            },
            overrides={"crop": False},
            preparation="data/prepare_iphone.py: every 10th frame of Shape of Motion's rgb/1x, max 10000",
            source="Easi3R dust3r/eval_metadata.py l.31-42 ('iphone'); data/evaluation_script.md (--no_crop); "
            "point_metric.py eval_iphone (depth_npy, camera/*.json)",
        ),
        DatasetSpec(
            name="tum-dynamics",
            title="TUM-dynamics",
            root_hint="data/tum",
            frames="{seq}/rgb_all_stride30",
            metrics=("poses",),
            gt={"tum": "{seq}/groundtruth_all_stride30.txt"},
            preparation="data/prepare_tum.py: rgb / ground-truth association (max 0.02 s), every 30th matched frame",
            source="Easi3R dust3r/eval_metadata.py l.19-30 ('tum'); data/download_tum.sh (8 freiburg3 sequences)",
        ),
        DatasetSpec(
            name="bonn",
            title="Bonn",
            root_hint="data/bonn/rgbd_bonn_dataset",
            frames="rgbd_bonn_{seq}/rgb_110",
            metrics=("poses",),
            sequences=("balloon2", "crowd2", "crowd3", "person_tracking2", "synchronous"),
            gt={"tum": "rgbd_bonn_{seq}/groundtruth_110.txt"},
            preparation="MonST3R datasets_preprocess/prepare_bonn.py: frames [30:140] (110) and ground-truth rows "
            "[30:140]",
            source="MonST3R dust3r/eval_metadata.py ('bonn'); Easi3R has no entry",
        ),
        DatasetSpec(
            name="sintel",
            title="Sintel",
            root_hint="data/sintel/training",
            frames="final/{seq}",
            metrics=("poses",),
            sequences=(
                "alley_2",
                "ambush_4",
                "ambush_5",
                "ambush_6",
                "cave_2",
                "cave_4",
                "market_2",
                "market_5",
                "market_6",
                "shaman_3",
                "sleeping_1",
                "sleeping_2",
                "temple_2",
                "temple_3",
            ),
            gt={"sintel_cameras": "camdata_left/{seq}"},
            preparation="MPI Sintel training set as downloaded (final pass); every frame",
            source="MonST3R dust3r/eval_metadata.py ('sintel'); Easi3R has no entry",
        ),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name`` (case-insensitive; ``tum`` and ``iphone`` are accepted aliases)."""
    key = name.lower().replace("_", "-")
    key = {"tum": "tum-dynamics", "iphone": "dycheck"}.get(key, key)
    if key not in DATASETS:
        raise Easi3RInputError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return DATASETS[key]


def frame_files(folder: Path) -> list[Path]:
    """Image files of a frames folder, sorted by name (the official ``sorted(os.listdir(dir))``)."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), key=lambda p: p.name
    )


def list_sequences(spec: DatasetSpec, root: str | os.PathLike[str], subset: str | None = None) -> tuple[str, ...]:
    """The sequences to run: a named subset, a comma-separated list, the official list or every folder found.

    Args:
        spec: the dataset.
        root: the dataset root (see :attr:`DatasetSpec.root_hint`).
        subset: ``None`` (the official list; every sequence folder when there is none), ``"all"`` (every
            sequence folder found), a name of :attr:`DatasetSpec.subsets` or ``"seq_a,seq_b"``.

    Returns:
        The sequence names, in order (sorted when listed from the disk).

    Raises:
        Easi3RInputError: the root is missing, an unknown subset, or a selected sequence has no frames folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise Easi3RInputError(f"dataset root {root} does not exist (the {spec.title} root is {spec.root_hint})")
    if subset is not None and subset.lower() == "all":
        chosen = None
    elif subset is not None and subset.lower() in spec.subsets:
        chosen = spec.subsets[subset.lower()]
    elif subset is not None:
        chosen = tuple(s.strip() for s in subset.split(",") if s.strip())
        if not chosen:
            raise Easi3RInputError(f"subset {subset!r} names no sequence")
    else:
        chosen = spec.sequences
    if chosen is None:
        chosen = _found_sequences(spec, root)
    missing = [s for s in chosen if not frame_files(spec.frames_dir(root, s))]
    if missing:
        where = spec.frames_dir(root, "<seq>")
        raise Easi3RInputError(f"no frames for {len(missing)} sequence(s) at {where}: {', '.join(missing)}")
    return tuple(chosen)


def _found_sequences(spec: DatasetSpec, root: Path) -> tuple[str, ...]:
    head, _, tail = spec.frames.partition("{seq}")
    parent = root / Path(head).parent if not head.endswith("/") else root / head
    stem = Path(head).name if not head.endswith("/") else ""
    suffix = tail.split("/", 1)[0]
    names = []
    for d in sorted(parent.iterdir()) if parent.is_dir() else []:
        if d.is_dir() and d.name.startswith(stem) and d.name.endswith(suffix):
            seq = d.name[len(stem) : len(d.name) - len(suffix)]
            if seq and frame_files(spec.frames_dir(root, seq)):
                names.append(seq)
    if not names:
        raise Easi3RInputError(f"no {spec.title} sequence found in {root} (frames expected at {spec.frames})")
    return tuple(names)


def select_frames(n_files: int, stride: int = 1, max_frames: int | None = None) -> list[int]:
    """Indices of the frames used: ``range(n)[::stride][:max_frames]`` (the launcher's ``[::pose_eval_stride]``).

    Example:
        >>> select_frames(10, 3, 3)
        [0, 3, 6]
    """
    if stride < 1:
        raise Easi3RInputError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise Easi3RInputError(f"max_frames must be >= 1 or None, got {max_frames}")
    return list(range(0, n_files, stride))[:max_frames]


def sequence_overrides(spec: DatasetSpec, n_frames: int, window: int) -> dict[str, Any]:
    """The per-sequence scene-graph window: clamped for short sequences, the long-sequence rule applied.

    Official (pose_eval.py l.88-100): ``window = min(window, max(1, ceil((N - 1) / 2)))``, then for DAVIS with
    ``N > 95`` the graph string's ``5`` becomes ``4`` (so only a window of 5 changes).

    Example:
        >>> sequence_overrides(get_spec("davis"), 100, 5), sequence_overrides(get_spec("bonn"), 4, 5)
        ({'window': 4}, {'window': 2})
    """
    win = min(window, max(1, math.ceil((n_frames - 1) / 2)))
    if spec.long_sequence is not None and n_frames > spec.long_sequence[0] and win == 5:
        win = spec.long_sequence[1]
    return {"window": win}
