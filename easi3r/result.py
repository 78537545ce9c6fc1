"""The result of a run: :class:`Reconstruction`, a validated data container of numpy arrays.

All arrays are numpy, frame-major, at the processed resolution ``(H, W)`` (token grid ``(h, w)`` for the
attention-derived maps). Cameras use the OpenCV convention throughout: camera axes x right, y down,
z forward, and pixel coordinates with the *centre* of the top-left pixel at ``(0, 0)``. The preprocessing
geometry lives in :mod:`easi3r.frames`, the file exports in :mod:`easi3r.export`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray
from torch import Tensor

from ._checks import check_dtype, check_finite, check_shape
from .errors import Easi3RInputError
from .export.images import ATTENTION_KEYS
from .export.save import GlbOptions, SaveOptions, read_reconstruction, save_reconstruction, write_reconstruction_glb
from .frames import original_intrinsics
from .geometry import rigid_inverse

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack needs Python 3.11; only annotations use it

__all__ = ["ATTENTION_KEYS", "Reconstruction"]


def _numpy(x: Any) -> np.ndarray:
    """``x`` (tensor on any device, array or sequence) as a numpy array, dtype kept."""
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


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
        image_size: the preprocessing long side in pixels (int), needed by :meth:`intrinsics_at`.
        crop: the frames were centre-cropped (True, official default) or resized without cropping (False,
            ``load_frames(..., crop=False)``); :meth:`intrinsics_at` undoes the matching transform.
        metric: the world is in metres (a metric backbone such as MASt3R, whose scale the alignment keeps);
            False: the scale is arbitrary (monocular DUSt3R / MonST3R), consistent within the video.
        fps: frame rate in frames per second of the sampled frames (trajectory timestamps), if known.
        cluster_labels: ``(T, h, w)`` integer k-means labels of the cluster fusion, if kept.
        threshold: the dynamic-map threshold that produced ``masks``.
        conf_threshold: exported points are those with ``confidence > conf_threshold``.
        backbone: name of the backbone that produced the result.

    Arrays given as other dtypes (or torch tensors) are converted; wrong shapes raise
    :class:`~easi3r.errors.Easi3RInputError`.
    """

    images: NDArray[np.uint8]
    masks: NDArray[np.bool_]
    dynamic_maps: NDArray[np.float32]
    attention: dict[str, NDArray[np.float32]]
    cam2world: NDArray[np.float64]
    intrinsics: NDArray[np.float64]
    depths: NDArray[np.float32]
    points: NDArray[np.float32]
    confidence: NDArray[np.float32]
    frame_names: list[str]
    original_sizes: list[tuple[int, int]] | None = None
    image_size: int = 512
    crop: bool = True
    metric: bool = False
    fps: float | None = None
    cluster_labels: np.ndarray | None = None
    threshold: float | None = None
    conf_threshold: float = 1.1
    backbone: str = ""

    def __post_init__(self) -> None:
        # The dimension names bind across fields: T, H, W from images, h, w (token grid) from dynamic_maps.
        images = _numpy(self.images)
        dims = check_shape(images, "T H W 3", "Reconstruction.images")
        check_dtype(images, (np.uint8,), "Reconstruction.images")
        if dims["T"] < 1:
            raise Easi3RInputError("Reconstruction.images must hold at least one frame, got T = 0")
        self.images = images

        masks = _numpy(self.masks)
        check_shape(masks, "T H W", "Reconstruction.masks", dims=dims)
        self.masks = masks if masks.dtype == np.bool_ else masks != 0

        dyn = _numpy(self.dynamic_maps)
        dims = check_shape(dyn, "T h w", "Reconstruction.dynamic_maps", dims=dims)
        self.dynamic_maps = dyn.astype(np.float32, copy=False)

        if not isinstance(self.attention, Mapping):
            raise Easi3RInputError(f"Reconstruction.attention must be a mapping, got {type(self.attention).__name__}")
        missing = [k for k in ATTENTION_KEYS if k not in self.attention]
        if missing:
            raise Easi3RInputError(f"Reconstruction.attention lacks {missing}; expected keys {list(ATTENTION_KEYS)}")
        attention = {}
        for key, value in self.attention.items():
            arr = _numpy(value)
            check_shape(arr, "T h w", f"Reconstruction.attention[{key!r}]", dims=dims)
            attention[str(key)] = arr.astype(np.float32, copy=False)
        self.attention = attention

        for name, spec, dtype in (
            ("cam2world", "T 4 4", np.float64),
            ("intrinsics", "T 3 3", np.float64),
            ("depths", "T H W", np.float32),
            ("points", "T H W 3", np.float32),
            ("confidence", "T H W", np.float32),
        ):
            arr = _numpy(getattr(self, name))
            check_shape(arr, spec, f"Reconstruction.{name}", dims=dims)
            setattr(self, name, arr.astype(dtype, copy=False))
        check_finite(self.cam2world, "Reconstruction.cam2world")
        check_finite(self.intrinsics, "Reconstruction.intrinsics")

        T = dims["T"]
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
            self.original_sizes = [(s[0], s[1]) for s in sizes]

        if self.cluster_labels is not None:
            labels = _numpy(self.cluster_labels)
            check_shape(labels, "T h w", "Reconstruction.cluster_labels", dims=dims)
            if not np.issubdtype(labels.dtype, np.integer):
                raise Easi3RInputError(f"Reconstruction.cluster_labels must be integers, got {labels.dtype}")
            self.cluster_labels = labels
        if int(self.image_size) <= 0:
            raise Easi3RInputError(f"Reconstruction.image_size must be positive, got {self.image_size}")
        self.image_size = int(self.image_size)
        if not isinstance(self.crop, (bool, np.bool_)):
            raise Easi3RInputError(f"Reconstruction.crop must be True or False, got {self.crop!r}")
        self.crop = bool(self.crop)
        if not isinstance(self.metric, (bool, np.bool_)):
            raise Easi3RInputError(f"Reconstruction.metric must be True or False, got {self.metric!r}")
        self.metric = bool(self.metric)
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
    def focals(self) -> NDArray[np.float64]:
        """``(T,)`` float64 focal lengths in pixels, ``(fx + fy) / 2`` (fx = fy after the alignment)."""
        return 0.5 * (self.intrinsics[:, 0, 0] + self.intrinsics[:, 1, 1])

    @property
    def world2cam(self) -> NDArray[np.float64]:
        """``(T, 4, 4)`` float64 world-to-camera matrices (rigid inverse of :attr:`cam2world`)."""
        return rigid_inverse(self.cam2world)

    @property
    def confident(self) -> NDArray[np.bool_]:
        """``(T, H, W)`` bool: pixels exported as points, ``confidence > conf_threshold``."""
        return self.confidence > self.conf_threshold

    def intrinsics_at(
        self, original_size: tuple[int, int] | None = None, *, crop: bool | None = None
    ) -> NDArray[np.float64]:
        """Intrinsics in the pixel grid of the user's original frames (:func:`easi3r.frames.original_intrinsics`).

        With :attr:`crop` True the inverse of a resize plus centre crop; with False (no-crop preprocessing)
        a per-axis scale ``(W/W0, H/H0)`` without offset is undone.

        Args:
            original_size: ``(W0, H0)`` in pixels of the original frames; None uses :attr:`original_sizes`
                frame by frame.
            crop: override :attr:`crop` (how the frames were preprocessed); None uses the recorded value.

        Returns:
            ``(T, 3, 3)`` float64 intrinsics in original pixels (OpenCV pixel-centre convention).

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
            sizes = [(int(original_size[0]), int(original_size[1]))] * self.num_frames
        use_crop = self.crop if crop is None else bool(crop)
        return original_intrinsics(self.intrinsics, sizes, self.image_size, self.size, crop=use_crop)

    def point_cloud(
        self, conf_threshold: float | None = None, which: Literal["all", "static", "dynamic"] = "all"
    ) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
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
            "crop": np.asarray(self.crop),
            "metric": np.asarray(self.metric),
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
        """Read a result written by :meth:`save` (its folder or its ``reconstruction.npz``).

        Raises:
            Easi3RInputError: the file cannot be read, is not a saved result, or holds inconsistent arrays.
        """
        return cls(**read_reconstruction(path))

    def view(self, port: int = 8080, **kwargs: Any) -> Any:
        """Open the viser 4D viewer on this result (:func:`easi3r.viz.view`; needs ``pip install easi3r[viz]``)."""
        from .viz import view

        return view(self, port, **kwargs)

    def save(self, out_dir: str | os.PathLike[str], **options: Unpack[SaveOptions]) -> dict[str, Path]:
        """Write every export of the result into ``out_dir`` (created if needed), each file atomically.

        The files (PNG frames, masks and labelled attention strips, TUM trajectory, intrinsics, npz archives, PLY,
        GLB, a COLMAP text model, optional videos and the official file names) and the keyword options
        (``progress``, ``colmap_max_points``, ``layout="official"``, ``videos``, and the GLB options
        ``clean_depth``, ``mask_sky``, ``cam_size``, ``as_pointcloud``) are those of
        :func:`easi3r.export.save.save_reconstruction`.

        Returns:
            Key -> path of every written file (folders for the per-frame outputs).
        """
        return save_reconstruction(self, out_dir, **options)

    def write_glb(self, path: str | os.PathLike[str], **options: Unpack[GlbOptions]) -> Path:
        """Write only the GLB scene; options (``clean_depth``, ``mask_sky``, ``cam_size``, ``as_pointcloud``,
        ``official_view``) as :func:`easi3r.export.save.write_reconstruction_glb`."""
        return write_reconstruction_glb(self, path, **options)
