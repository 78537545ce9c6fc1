"""Tiny synthetic benchmark datasets in the real folder layouts, and ground-truth-as-prediction folders.

:func:`write_synthetic_dataset` renders a few short clips of the demo scene (:func:`easi3r.demo.render_video`:
known depth, cameras and moving-object masks) and stores them exactly as the official preparation scripts store
the real datasets, so ``easi3r benchmark`` can be smoke-tested end to end without downloading anything.
:func:`write_oracle_predictions` writes a dataset's own ground truth as a prediction folder: evaluating it
(``--predictions``) must give perfect scores, which checks the readers, the frame pairing and the metrics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..demo import SyntheticVideo, render_video
from ..errors import Easi3RInputError
from ..eval.masks import read_davis_gt
from ..export.atomic import atomic_save_npz, atomic_write_bytes, atomic_write_text
from ..export.images import write_mask_pngs
from ..export.tum import write_tum
from ..geometry import rigid_inverse
from .groundtruth import SINTEL_TAG, read_iphone_cameras, read_iphone_depths, read_sintel_cameras, read_tum_groundtruth
from .specs import get_spec, list_sequences

__all__ = ["DEFAULT_SEQUENCES", "write_oracle_predictions", "write_synthetic_dataset"]

#: Sequence names the synthetic datasets use by default (real names, so the official lists select them).
DEFAULT_SEQUENCES: dict[str, tuple[str, ...]] = {
    "davis": ("blackswan", "camel"),
    "dycheck": ("apple", "spin"),
    "tum-dynamics": ("rgbd_dataset_freiburg3_walking_xyz", "rgbd_dataset_freiburg3_sitting_static"),
    "bonn": ("balloon2", "crowd2"),
    "sintel": ("alley_2", "ambush_4"),
}


def _save_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _write_sequence(name: str, root: Path, seq: str, clip: SyntheticVideo) -> None:
    n = len(clip.frames)
    stamps = 1000.0 + np.arange(n) / 30.0
    if name == "davis":
        for t in range(n):
            _save_image(root / "JPEGImages/480p" / seq / f"{t:05d}.jpg", clip.frames[t])
            label = Image.fromarray(clip.masks[t].astype(np.uint8), mode="L").convert("P")
            label.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
            (root / "Annotations/480p" / seq).mkdir(parents=True, exist_ok=True)
            label.save(root / "Annotations/480p" / seq / f"{t:05d}.png")
    elif name == "dycheck":
        base = root / seq / "prepare_all_stride10"
        w2c = rigid_inverse(clip.cam2world)
        for t in range(n):
            frame = f"0_{10 * t:05d}"
            _save_image(base / "rgb" / f"{frame}.png", clip.frames[t])
            _save_image(base / "masks" / f"{frame}.png", np.where(clip.masks[t], 255, 0).astype(np.uint8))
            camera = {"w2c": w2c[t].tolist(), "K": clip.intrinsics.tolist()}
            atomic_write_text(base / "camera" / f"{frame}.json", json.dumps(camera, indent=2))
            (base / "depth_npy").mkdir(parents=True, exist_ok=True)
            np.save(base / "depth_npy" / f"{frame}.npy", clip.depths[t])
    elif name in ("tum-dynamics", "bonn"):
        folder = (
            (seq, "rgb_all_stride30", "groundtruth_all_stride30.txt")
            if name == "tum-dynamics"
            else (f"rgbd_bonn_{seq}", "rgb_110", "groundtruth_110.txt")
        )
        for t in range(n):
            _save_image(root / folder[0] / folder[1] / f"{stamps[t]:.6f}.png", clip.frames[t])
        write_tum(root / folder[0] / folder[2], clip.cam2world, stamps)
    elif name == "sintel":
        w2c = rigid_inverse(clip.cam2world)
        head = np.array([SINTEL_TAG], dtype="<f4").tobytes() + clip.intrinsics.astype("<f8").tobytes()
        for t in range(n):
            _save_image(root / "final" / seq / f"frame_{t + 1:04d}.png", clip.frames[t])
            atomic_write_bytes(
                root / "camdata_left" / seq / f"frame_{t + 1:04d}.cam", head + w2c[t, :3, :4].astype("<f8").tobytes()
            )


def write_synthetic_dataset(
    dataset: str,
    root: str | os.PathLike[str],
    *,
    sequences: tuple[str, ...] | None = None,
    frames: int = 4,
    width: int = 64,
    height: int = 48,
    seed: int = 0,
) -> dict[str, SyntheticVideo]:
    """Write a tiny dataset in ``dataset``'s official layout under ``root`` (the folder ``--root`` takes).

    ========== ==================================================================================================
    dataset    files per sequence ``S`` (T frames)
    ========== ==================================================================================================
    davis      ``JPEGImages/480p/S/00000.jpg`` ..., ``Annotations/480p/S/00000.png`` (palette, label 1 = object)
    dycheck    ``S/prepare_all_stride10/{rgb,masks}/0_00000.png``, ``camera/0_00000.json`` (``w2c``, ``K``),
               ``depth_npy/0_00000.npy`` (float32 z-depth), frames named ``0_{10 t:05d}``
    tum        ``S/rgb_all_stride30/<timestamp>.png``, ``S/groundtruth_all_stride30.txt`` (TUM, qx qy qz qw)
    bonn       ``rgbd_bonn_S/rgb_110/<timestamp>.png``, ``rgbd_bonn_S/groundtruth_110.txt``
    sintel     ``final/S/frame_0001.png``, ``camdata_left/S/frame_0001.cam`` (tag, K, 3x4 world-to-camera)
    ========== ==================================================================================================

    Args:
        dataset: a dataset name (:func:`~easi3r.datasets.specs.get_spec`).
        root: destination (created).
        sequences: names (default :data:`DEFAULT_SEQUENCES`).
        frames: frames per sequence. width, height: frame size in pixels. seed: first sequence's render seed.

    Returns:
        ``{sequence: SyntheticVideo}``, the rendered ground truth.
    """
    spec = get_spec(dataset)
    names = sequences if sequences is not None else DEFAULT_SEQUENCES[spec.name]
    if not names:
        raise Easi3RInputError("write_synthetic_dataset needs at least one sequence name")
    root = Path(root)
    clips = {}
    for k, seq in enumerate(names):
        clips[seq] = render_video(frames, width, height, seed=seed + k)
        _write_sequence(spec.name, root, seq, clips[seq])
    return clips


def write_oracle_predictions(
    dataset: str, root: str | os.PathLike[str], out: str | os.PathLike[str], *, subset: str | None = None
) -> list[str]:
    """Write the ground truth of ``dataset`` as easi3r prediction folders ``out/<seq>/``.

    DAVIS: ``masks/*.png`` from the annotations (native resolution); pose datasets: ``trajectory.tum``;
    DyCheck also ``intrinsics.txt`` and ``depths.npz`` (ground-truth depth and intrinsics).

    Returns:
        The sequences written.
    """
    spec = get_spec(dataset)
    root, out = Path(root), Path(out)
    seqs = list_sequences(spec, root, subset)
    for seq in seqs:
        folder = out / seq
        if "annotations" in spec.gt:
            write_mask_pngs(folder / "masks", read_davis_gt(root / spec.gt["annotations"], seq))
            continue
        if "tum" in spec.gt:
            poses = read_tum_groundtruth(spec.path(root, spec.gt["tum"], seq))
        elif "sintel_cameras" in spec.gt:
            poses = read_sintel_cameras(spec.path(root, spec.gt["sintel_cameras"], seq))[0]
        else:
            poses, K, names = read_iphone_cameras(spec.path(root, spec.gt["iphone_cameras"], seq))
            depths = read_iphone_depths(spec.path(root, spec.gt["iphone_depth"], seq), names)
            atomic_save_npz(folder / "depths.npz", depths=depths)
            atomic_write_text(
                folder / "intrinsics.txt", "".join(" ".join(f"{v:.9f}" for v in k.ravel()) + "\n" for k in K)
            )
        write_tum(folder / "trajectory.tum", poses)
    return list(seqs)
