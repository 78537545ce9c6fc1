"""The result of a run: :class:`Reconstruction`, its geometry helpers and its file export.

All arrays are numpy, frame-major, at the processed resolution ``(H, W)`` (token grid ``(h, w)`` for the
attention-derived maps). Cameras use the OpenCV convention throughout: camera axes x right, y down,
z forward, and pixel coordinates with the *centre* of the top-left pixel at ``(0, 0)``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from .errors import Easi3RInputError
from .export.atomic import atomic_save_npz, atomic_write_text
from .export.colmap import write_colmap
from .export.images import (
    attention_strip,
    frame_filename,
    remove_stale_frames,
    write_png,
)
from .export.mesh import write_glb, write_ply
from .export.tum import write_tum
from .frames import resize_crop_plan

__all__ = ["ATTENTION_KEYS", "Reconstruction", "preprocess_transform"]

ATTENTION_KEYS: tuple[str, ...] = ("src_mean", "src_std", "ref_mean", "ref_std")


def preprocess_transform(
    original_size: tuple[int, int], image_size: int = 512, *, crop: bool = True, square_ok: bool = False
) -> tuple[np.ndarray, tuple[int, int]]:
    """The pixel mapping of the official frame preprocessing (backbone.md §8), as a 3x3 affine matrix.

    The frame of size ``(W0, H0)`` is resized to ``(Wr, Hr) = (round(W0·L/S), round(H0·L/S))`` with
    ``S = max(W0, H0)`` and long side ``L = image_size`` (for ``image_size == 224``:
    ``L = round(224·max(W0/H0, H0/W0))``, i.e. short side 224), then centre-cropped: ``cx = Wr//2``,
    ``halfw = ((2cx)//16)·8`` (same for y; a square frame keeps ``halfh = 3·halfw/4`` unless
    ``square_ok``; for 224 a square crop of half-size ``min(cx, cy)``), crop origin
    ``(ox, oy) = (cx - halfw, cy - halfh)``. With ``crop=False`` the resized frame is instead resized again
    to the crop size (MonST3R ``--no_crop``).

    Pixel-centre convention (OpenCV; integer coordinates are pixel centres): an image resize by
    ``s = Wr/W0`` maps ``x0 -> (x0 + 0.5)·s - 0.5`` (what PIL's resampling does), the crop subtracts
    ``ox``. Hence ``A = [[sx, 0, sx/2 - 1/2 - ox], [0, sy, sy/2 - 1/2 - oy], [0, 0, 1]]``.

    Args:
        original_size: ``(W0, H0)`` of the user's frame in pixels.
        image_size: preprocessing target (512, 224, or another multiple of 16 used as long side).
        crop: centre crop (official default) or resize to the crop size.
        square_ok: keep square frames square (the pipeline always uses False).

    Returns:
        ``(A, (W, H))``: ``A`` is the float64 ``(3, 3)`` matrix mapping homogeneous original pixel
        coordinates to processed ones, ``(W, H)`` the processed size.

    Raises:
        Easi3RInputError: a non-positive size, or a frame too small to keep one 16x16 patch.
    """
    W0, H0 = (int(v) for v in original_size)
    if W0 <= 0 or H0 <= 0 or image_size <= 0:
        raise Easi3RInputError(f"original_size must be positive (W, H), got {original_size}")
    (Wr, Hr), _, box = resize_crop_plan(W0, H0, image_size)
    if square_ok and Wr == Hr and image_size != 224:
        box = (box[0], box[0], box[2], box[2])  # square crop: with cx == cy the horizontal extent applies to y
    ox, oy = int(round(box[0])), int(round(box[1]))
    W, H = int(round(box[2])) - ox, int(round(box[3])) - oy
    if W <= 0 or H <= 0:
        raise Easi3RInputError(f"a frame of size {W0}x{H0} leaves no 16x16 patch at image_size={image_size}")
    if crop:
        sx, sy = Wr / W0, Hr / H0
    else:
        sx, sy = W / W0, H / H0
        ox = oy = 0
    A = np.array([[sx, 0.0, 0.5 * sx - 0.5 - ox], [0.0, sy, 0.5 * sy - 0.5 - oy], [0.0, 0.0, 1.0]], dtype=np.float64)
    return A, (W, H)


def _to_numpy(x: Any) -> np.ndarray:
    # Accept torch tensors on any device without importing torch here.
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_shape(name: str, arr: np.ndarray, expected: tuple[int | None, ...], what: str) -> None:
    ok = arr.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, arr.shape))
    if not ok:
        shown = tuple("?" if e is None else e for e in expected)
        raise Easi3RInputError(f"Reconstruction.{name} must have shape {what}={shown}, got {arr.shape}")


@dataclass(eq=False, repr=False)
class Reconstruction:
    """Everything a run produces: masks, attention maps, cameras, depths and world points.

    Attributes:
        images: ``(T, H, W, 3)`` uint8 processed RGB frames.
        masks: ``(T, H, W)`` bool dynamic (moving-object) masks.
        dynamic_maps: ``(T, h, w)`` float32 cluster-fused dynamic score in [0, 1].
        attention: ``src_mean, src_std, ref_mean, ref_std``, each ``(T, h, w)`` float32 in [0, 1]
            (the fused cross-attention maps of the paper's Eq. 5-8).
        cam2world: ``(T, 4, 4)`` float64 camera-to-world, OpenCV camera axes.
        intrinsics: ``(T, 3, 3)`` float64 pinhole matrices in pixels at ``(H, W)``.
        depths: ``(T, H, W)`` float32 z-depth in scene units (the scale of monocular input is arbitrary).
        points: ``(T, H, W, 3)`` float32 world coordinates.
        confidence: ``(T, H, W)`` float32 raw network confidence (``1 + exp(x)``, so >= 1).
        frame_names: ``T`` names of the input frames.
        original_sizes: ``(W, H)`` of each user frame before preprocessing, if known.
        image_size: preprocessing target, needed by :meth:`intrinsics_at`.
        fps: frame rate of the sampled frames (trajectory timestamps), if known.
        cluster_labels: ``(T, h, w)`` integer k-means labels of the cluster fusion, if kept.
        threshold: the dynamic-map threshold that produced ``masks``.
        conf_threshold: exported points are those with ``confidence > conf_threshold``.
        backbone: name of the backbone that produced the result.

    Arrays given as other dtypes (or torch tensors) are converted; wrong shapes raise
    :class:`~easi3r.errors.Easi3RInputError`.
    """

    images: np.ndarray
    masks: np.ndarray
    dynamic_maps: np.ndarray
    attention: dict[str, np.ndarray]
    cam2world: np.ndarray
    intrinsics: np.ndarray
    depths: np.ndarray
    points: np.ndarray
    confidence: np.ndarray
    frame_names: list[str]
    original_sizes: list[tuple[int, int]] | None = None
    image_size: int = 512
    fps: float | None = None
    cluster_labels: np.ndarray | None = None
    threshold: float | None = None
    conf_threshold: float = 1.1
    backbone: str = ""

    def __post_init__(self) -> None:
        images = _to_numpy(self.images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
            raise Easi3RInputError(f"Reconstruction.images must have shape (T,H,W,3) with T>=1, got {images.shape}")
        if images.dtype != np.uint8:
            raise Easi3RInputError(f"Reconstruction.images must be uint8 RGB, got {images.dtype}")
        T, H, W = images.shape[:3]
        self.images = images

        masks = _to_numpy(self.masks)
        _check_shape("masks", masks, (T, H, W), "(T,H,W)")
        self.masks = masks if masks.dtype == np.bool_ else masks != 0

        dyn = _to_numpy(self.dynamic_maps)
        _check_shape("dynamic_maps", dyn, (T, None, None), "(T,h,w)")
        self.dynamic_maps = dyn.astype(np.float32, copy=False)
        h, w = dyn.shape[1:]

        if not isinstance(self.attention, Mapping):
            raise Easi3RInputError(f"Reconstruction.attention must be a mapping, got {type(self.attention).__name__}")
        missing = [k for k in ATTENTION_KEYS if k not in self.attention]
        if missing:
            raise Easi3RInputError(f"Reconstruction.attention lacks {missing}; expected keys {list(ATTENTION_KEYS)}")
        attention = {}
        for key, value in self.attention.items():
            arr = _to_numpy(value)
            _check_shape(f"attention[{key!r}]", arr, (T, h, w), "(T,h,w)")
            attention[str(key)] = arr.astype(np.float32, copy=False)
        self.attention = attention

        for name, expected, what, dtype in (
            ("cam2world", (T, 4, 4), "(T,4,4)", np.float64),
            ("intrinsics", (T, 3, 3), "(T,3,3)", np.float64),
            ("depths", (T, H, W), "(T,H,W)", np.float32),
            ("points", (T, H, W, 3), "(T,H,W,3)", np.float32),
            ("confidence", (T, H, W), "(T,H,W)", np.float32),
        ):
            arr = _to_numpy(getattr(self, name))
            _check_shape(name, arr, expected, what)
            setattr(self, name, arr.astype(dtype, copy=False))
        if not np.isfinite(self.cam2world).all() or not np.isfinite(self.intrinsics).all():
            raise Easi3RInputError("Reconstruction.cam2world and intrinsics must be finite")

        names = [str(n) for n in self.frame_names]
        if len(names) != T:
            raise Easi3RInputError(f"Reconstruction.frame_names must have {T} entries, got {len(names)}")
        self.frame_names = names

        if self.original_sizes is not None:
            sizes = [tuple(int(v) for v in s) for s in self.original_sizes]
            if len(sizes) != T or any(len(s) != 2 or min(s) <= 0 for s in sizes):
                raise Easi3RInputError(
                    f"Reconstruction.original_sizes must be {T} positive (W, H) pairs, got {self.original_sizes!r}"
                )
            self.original_sizes = sizes  # type: ignore[assignment]

        if self.cluster_labels is not None:
            labels = _to_numpy(self.cluster_labels)
            _check_shape("cluster_labels", labels, (T, h, w), "(T,h,w)")
            if not np.issubdtype(labels.dtype, np.integer):
                raise Easi3RInputError(f"Reconstruction.cluster_labels must be integers, got {labels.dtype}")
            self.cluster_labels = labels
        if int(self.image_size) <= 0:
            raise Easi3RInputError(f"Reconstruction.image_size must be positive, got {self.image_size}")
        self.image_size = int(self.image_size)
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise Easi3RInputError(f"Reconstruction.fps must be a positive number or None, got {self.fps}")

    # ------------------------------------------------------------------ basic properties

    def __repr__(self) -> str:
        H, W = self.size
        h, w = self.dynamic_maps.shape[1:]
        return (
            f"Reconstruction(frames={self.num_frames}, size=(H={H}, W={W}), grid=(h={h}, w={w}), "
            f"dynamic={self.masks.mean():.1%}, backbone={self.backbone!r})"
        )

    @property
    def num_frames(self) -> int:
        """Number of frames ``T``."""
        return int(self.images.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """Processed frame size ``(H, W)`` in pixels."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def focals(self) -> np.ndarray:
        """``(T,)`` float64 focal lengths in pixels, ``(fx + fy) / 2`` (fx = fy after the alignment)."""
        return 0.5 * (self.intrinsics[:, 0, 0] + self.intrinsics[:, 1, 1])

    @property
    def world2cam(self) -> np.ndarray:
        """``(T, 4, 4)`` float64 world-to-camera matrices (rigid inverse of :attr:`cam2world`)."""
        R = self.cam2world[:, :3, :3]
        t = self.cam2world[:, :3, 3]
        out = np.tile(np.eye(4), (self.num_frames, 1, 1))
        out[:, :3, :3] = R.transpose(0, 2, 1)
        out[:, :3, 3] = -np.einsum("tji,tj->ti", R, t)
        return out

    @property
    def confident(self) -> np.ndarray:
        """``(T, H, W)`` bool: pixels exported as points, ``confidence > conf_threshold``."""
        return self.confidence > self.conf_threshold

    def intrinsics_at(self, original_size: tuple[int, int] | None = None, *, crop: bool = True) -> np.ndarray:
        """Intrinsics in the pixel grid of the user's original frames.

        Inverts the preprocessing (see :func:`preprocess_transform`): with ``A`` the affine map from
        original to processed pixel coordinates, ``K0 = A⁻¹ · K``. Both ``K`` and ``K0`` use the OpenCV
        pixel-centre convention (integer coordinates are pixel centres), so a world point projected with
        ``K0`` lands on the original-image pixel whose preprocessed position ``K`` predicts.

        Args:
            original_size: ``(W0, H0)`` of the original frames; None uses :attr:`original_sizes` frame by
                frame.
            crop: the preprocessing cropped (default) or resized (MonST3R ``--no_crop``).

        Returns:
            ``(T, 3, 3)`` float64.

        Raises:
            Easi3RInputError: no size is known, or the size does not preprocess to this result's ``(H, W)``.
        """
        if original_size is None:
            if self.original_sizes is None:
                raise Easi3RInputError("intrinsics_at needs original_size=(W, H): this result has no original_sizes")
            sizes = list(self.original_sizes)
        else:
            if len(original_size) != 2:
                raise Easi3RInputError(f"original_size must be (W, H), got {original_size!r}")
            sizes = [tuple(original_size)] * self.num_frames
        H, W = self.size
        out = np.empty_like(self.intrinsics)
        cache: dict[tuple[int, int], np.ndarray] = {}
        for t, s in enumerate(sizes):
            key = (int(s[0]), int(s[1]))
            if key not in cache:
                A, (Wp, Hp) = preprocess_transform(key, self.image_size, crop=crop)
                if (Wp, Hp) != (W, H):
                    raise Easi3RInputError(
                        f"original_size {key} preprocesses to {Wp}x{Hp} at image_size={self.image_size}, "
                        f"but this reconstruction is {W}x{H}"
                    )
                cache[key] = np.linalg.inv(A)
            out[t] = cache[key] @ self.intrinsics[t]
        return out

    def point_cloud(
        self, conf_threshold: float | None = None, which: Literal["all", "static", "dynamic"] = "all"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Confident world points of all frames with their colours.

        Args:
            conf_threshold: keep ``confidence > conf_threshold`` (default :attr:`conf_threshold`).
            which: all points, only static (outside ``masks``) or only dynamic ones.

        Returns:
            ``(points (N, 3) float32, colors (N, 3) uint8)`` in frame-major, row-major pixel order.
        """
        thr = self.conf_threshold if conf_threshold is None else conf_threshold
        keep = self.confidence > thr
        if which == "static":
            keep &= ~self.masks
        elif which == "dynamic":
            keep &= self.masks
        elif which != "all":
            raise Easi3RInputError(f"which must be 'all', 'static' or 'dynamic', got {which!r}")
        keep &= np.isfinite(self.points).all(axis=-1)
        return self.points[keep], self.images[keep]

    # ------------------------------------------------------------------ files

    def arrays(self) -> dict[str, np.ndarray]:
        """Every field as plain arrays (no pickled objects), the content of ``reconstruction.npz``."""
        out: dict[str, np.ndarray] = {
            "images": self.images,
            "masks": self.masks,
            "dynamic_maps": self.dynamic_maps,
            **{f"attention_{k}": v for k, v in self.attention.items()},
            "cam2world": self.cam2world,
            "intrinsics": self.intrinsics,
            "depths": self.depths,
            "points": self.points,
            "confidence": self.confidence,
            "frame_names": np.asarray(self.frame_names, dtype=np.str_),
            "image_size": np.asarray(self.image_size),
            "conf_threshold": np.asarray(self.conf_threshold, dtype=np.float64),
            "backbone": np.asarray(self.backbone, dtype=np.str_),
        }
        if self.original_sizes is not None:
            out["original_sizes"] = np.asarray(self.original_sizes, dtype=np.int64)
        if self.fps is not None:
            out["fps"] = np.asarray(self.fps, dtype=np.float64)
        if self.cluster_labels is not None:
            out["cluster_labels"] = self.cluster_labels
        if self.threshold is not None:
            out["threshold"] = np.asarray(self.threshold, dtype=np.float64)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Reconstruction:
        """Read a result written by :meth:`save` (its folder or its ``reconstruction.npz``)."""
        path = Path(path)
        if path.is_dir():
            path = path / "reconstruction.npz"
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise Easi3RInputError(f"cannot read reconstruction file {path}: {exc}") from None
        with data:
            d = {k: data[k] for k in data.files}
        required = (
            "images",
            "masks",
            "dynamic_maps",
            "cam2world",
            "intrinsics",
            "depths",
            "points",
            "confidence",
        )
        missing = [k for k in required + tuple(f"attention_{k}" for k in ATTENTION_KEYS) if k not in d]
        if missing:
            raise Easi3RInputError(f"{path} is not a saved Reconstruction: missing {missing}")
        return cls(
            **{k: d[k] for k in required},
            attention={k[len("attention_") :]: v for k, v in d.items() if k.startswith("attention_")},
            frame_names=[str(n) for n in d.get("frame_names", [])] or [f"{i:05d}" for i in range(len(d["images"]))],
            original_sizes=[tuple(s) for s in d["original_sizes"].tolist()] if "original_sizes" in d else None,
            image_size=int(d.get("image_size", 512)),
            fps=float(d["fps"]) if "fps" in d else None,
            cluster_labels=d.get("cluster_labels"),
            threshold=float(d["threshold"]) if "threshold" in d else None,
            conf_threshold=float(d.get("conf_threshold", 1.1)),
            backbone=str(d.get("backbone", "")),
        )

    def save(
        self,
        out_dir: str | os.PathLike[str],
        *,
        progress: bool = False,
        colmap_max_points: int | None = 100_000,
    ) -> dict[str, Path]:
        """Write every export of the result into ``out_dir`` (created if needed).

        Each file is written under a temporary name in its folder and renamed when complete, so an
        interrupted save leaves only complete files under final names (possibly from an earlier save)
        and no temporary files. Files of the same name are overwritten; frame files of an earlier,
        longer run are removed from the frame folders.

        ===================  ======================================================================
        key                  file
        ===================  ======================================================================
        ``images``           ``images/00000.png`` ... processed RGB frames (named in ``colmap/images.txt``)
        ``masks``            ``masks/00000.png`` ... dynamic masks, 8-bit 0/255, ``H x W``
        ``attention``        ``attention/00000.png`` ... ``H x 6W`` strips: ``1-src_mean, src_std,
                             1-ref_mean, ref_std, dynamic_map`` (``Spectral_r``, nearest-upsampled),
                             then the frame with the mask tinted red
        ``dynamic_maps``     ``dynamic_maps.npz``: ``dynamic_maps`` (+ ``cluster_labels``, ``threshold``)
        ``trajectory``       ``trajectory.tum``: TUM ``t tx ty tz qx qy qz qw``, camera-to-world;
                             ``t`` = frame index / fps (frame index when fps is unknown)
        ``intrinsics``       ``intrinsics.txt``: one row-major 3x3 per line, ``%.6f``
        ``depths``           ``depths.npz`` (``depths``); ``confidence``: ``confidence.npz``
        ``reconstruction``   ``reconstruction.npz``: every array field (see :meth:`arrays`, :meth:`load`)
        ``ply``              ``scene.ply``: confident points (``confidence > conf_threshold``), all
                             frames, static and dynamic, xyz + rgb(a); OpenCV world coordinates
        ``glb``              ``scene.glb``: the same points + one frustum per camera (viridis over time)
        ``colmap_cameras``   ``colmap/cameras.txt`` (PINHOLE, principal point + 0.5), ``colmap_images``:
                             ``colmap/images.txt`` (world-to-camera), ``colmap_points3D``:
                             ``colmap/points3D.txt`` (<= ``colmap_max_points`` confident points)
        ===================  ======================================================================

        Args:
            out_dir: destination folder.
            progress: show a tqdm bar over the files.
            colmap_max_points: size of the random (seeded) subset in ``points3D.txt``; None keeps all.

        Returns:
            Key -> path as in the table (folders for the per-frame outputs).
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        T = self.num_frames
        names = [frame_filename(t) for t in range(T)]
        bar = tqdm(total=3 * T + 11, disable=not progress, desc="saving", unit="file")
        paths: dict[str, Path] = {}

        def done(key: str | None = None, path: Path | None = None) -> None:
            if key is not None and path is not None:
                paths[key] = path
            bar.update(1)

        try:
            for key, frames in (
                ("images", self.images),
                ("masks", (np.where(m, 255, 0).astype(np.uint8) for m in self.masks)),
                ("attention", (self._attention_frame(t) for t in range(T))),
            ):
                folder = out / key
                for name, image in zip(names, frames):
                    write_png(folder / name, image)
                    done()
                remove_stale_frames(folder, names)
                paths[key] = folder

            dyn = {"dynamic_maps": self.dynamic_maps}
            if self.cluster_labels is not None:
                dyn["cluster_labels"] = self.cluster_labels
            if self.threshold is not None:
                dyn["threshold"] = np.asarray(self.threshold, dtype=np.float64)
            done("dynamic_maps", atomic_save_npz(out / "dynamic_maps.npz", compressed=True, **dyn))

            stamps = np.arange(T, dtype=np.float64) / (self.fps if self.fps else 1.0)
            done("trajectory", write_tum(out / "trajectory.tum", self.cam2world, stamps))
            buf = io.StringIO()
            np.savetxt(buf, self.intrinsics.reshape(T, 9), fmt="%.6f")
            done("intrinsics", atomic_write_text(out / "intrinsics.txt", buf.getvalue()))
            done("depths", atomic_save_npz(out / "depths.npz", depths=self.depths))
            done("confidence", atomic_save_npz(out / "confidence.npz", confidence=self.confidence))
            done("reconstruction", atomic_save_npz(out / "reconstruction.npz", **self.arrays()))

            pts, cols = self.point_cloud()
            done("ply", write_ply(out / "scene.ply", pts, cols))
            done("glb", write_glb(out / "scene.glb", pts, cols, self.cam2world, self.intrinsics, self.size))
            colmap = write_colmap(
                out / "colmap",
                self.cam2world,
                self.intrinsics,
                self.size,
                names,
                pts,
                cols,
                max_points=colmap_max_points,
            )
            for key in ("cameras", "images", "points3D"):
                done(f"colmap_{key}", colmap[key])
        finally:
            bar.close()
        return paths

    def _attention_frame(self, t: int) -> np.ndarray:
        return attention_strip(
            {k: self.attention[k][t] for k in ATTENTION_KEYS},
            self.dynamic_maps[t],
            self.images[t],
            self.masks[t],
        )
