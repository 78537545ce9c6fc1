"""Frame loading: folders, image lists, videos, arrays and PIL images -> normalised network input.

The preprocessing reproduces the official DUSt3R / Easi3R ``load_images`` bit for bit (backbone.md §8):

1. decode, EXIF-transpose (files and PIL images), convert to RGB;
2. resize so that the long side equals ``size`` (``new = int(round(old * size / long))`` per side), with
   LANCZOS when shrinking and BICUBIC otherwise; ``size == 224`` instead resizes the short side to 224;
3. centre crop to multiples of 16 (``cx = W // 2``, ``halfw = ((2 * cx) // 16) * 8``, same for ``y``); a
   square image is cropped to 4:3 landscape; ``size == 224`` crops a centred square;
4. ``(u8 / 255 - 0.5) / 0.5`` in float32, i.e. torchvision's ``ToTensor`` + ``Normalize(0.5, 0.5)``.

The one intentional deviation: 16-bit greyscale images (PIL modes ``I;16*`` / ``I``) are scaled to 8 bit
with ``round(v / 257)`` before the RGB conversion, where the official ``convert("RGB")`` clips every value
above 255 to white. (16-bit *colour* PNGs are already reduced by Pillow to their high byte when decoded.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import Easi3RInputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Frames",
    "load_frames",
    "preprocess_image",
    "processed_size",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
MIN_SIDE = 16  # one ViT patch: anything smaller has no token at all

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

FrameSource = Union[str, os.PathLike, np.ndarray, Image.Image, "Frames", Sequence]


@dataclass
class Frames:
    """A preprocessed frame sequence, ready for the network.

    Attributes:
        images: ``(T, 3, H, W)`` float32 in ``[-1, 1]`` on CPU, the network input.
        true_shape: ``(T, 2)`` int64, ``(H, W)`` of every frame (all equal).
        names: one name per frame: the file name for images read from disk, ``"frame_00012"`` (index in
            the original video) for video frames, ``"array_0"`` for arrays, ``"image_0"`` for in-memory
            PIL images without a file name.
        original_sizes: ``(W, H)`` in pixels of every frame before resizing (after EXIF transposition).
        uint8: ``(T, H, W, 3)`` uint8, the processed (resized and cropped) RGB frames exactly.
        fps: frame rate of the kept video frames (``video_fps / interval``); None for images and arrays,
            and for videos that report no frame rate.
    """

    images: torch.Tensor
    true_shape: torch.Tensor
    names: list[str]
    original_sizes: list[tuple[int, int]]
    uint8: np.ndarray
    fps: float | None = None

    def __post_init__(self) -> None:
        t = self.images.shape[0]
        if (
            self.images.ndim != 4
            or self.images.shape[1] != 3
            or self.uint8.shape != (t, *self.images.shape[2:], 3)
            or tuple(self.true_shape.shape) != (t, 2)
            or len(self.names) != t
            or len(self.original_sizes) != t
        ):
            raise Easi3RInputError(
                f"inconsistent Frames: images {tuple(self.images.shape)}, uint8 {self.uint8.shape}, "
                f"true_shape {tuple(self.true_shape.shape)}, {len(self.names)} names, "
                f"{len(self.original_sizes)} original sizes"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """Processed ``(H, W)`` in pixels, shared by all frames."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def rgb(self) -> np.ndarray:
        """``(T, H, W, 3)`` uint8 processed RGB frames (the exact pixels the network input was made from)."""
        return self.uint8


def _resize_plan(width: int, height: int, long_edge: int) -> tuple[tuple[int, int], int]:
    s = max(width, height)
    # The official rule: LANCZOS only when shrinking; BICUBIC for enlarging and for the identity size.
    resample = Image.Resampling.LANCZOS if s > long_edge else Image.Resampling.BICUBIC
    new = (int(round(width * long_edge / s)), int(round(height * long_edge / s)))
    return new, resample


def resize_crop_plan(
    width: int, height: int, size: int
) -> tuple[tuple[int, int], int, tuple[float, float, float, float]]:
    """Resize target ``(W, H)``, PIL filter and crop box ``(left, top, right, bottom)`` of the official
    ``crop_img`` (crop=True) for a ``width x height`` frame. The one home of this geometry: the evaluation's mask
    resizing and :meth:`Reconstruction.intrinsics_at` use it too."""
    if size == 224:
        (w, h), resample = _resize_plan(width, height, round(size * max(width / height, height / width)))
        cx, cy = w // 2, h // 2
        half = min(cx, cy)
        return (w, h), resample, (cx - half, cy - half, cx + half, cy + half)
    (w, h), resample = _resize_plan(width, height, size)
    cx, cy = w // 2, h // 2
    halfw, halfh = ((2 * cx) // 16) * 8, ((2 * cy) // 16) * 8
    if w == h:
        # square_ok=False in every official caller: squares become 4:3 (float, PIL rounds the box).
        halfh = 3 * halfw / 4
    return (w, h), resample, (cx - halfw, cy - halfh, cx + halfw, cy + halfh)


def processed_size(width: int, height: int, size: int = 512) -> tuple[int, int]:
    """``(H, W)`` in pixels that an image of ``width x height`` pixels has after preprocessing.

    Example: ``processed_size(854, 480) == (288, 512)``; ``processed_size(1000, 1000) == (384, 512)``.
    """
    _, _, (x0, y0, x1, y1) = resize_crop_plan(width, height, size)
    return int(round(y1)) - int(round(y0)), int(round(x1)) - int(round(x0))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT_MODES:
        # Proper 16 -> 8 bit scaling; PIL's convert("RGB") would clip everything above 255.
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def preprocess_image(img: Image.Image, size: int = 512, *, name: str = "image") -> np.ndarray:
    """Resize and centre-crop one RGB-convertible PIL image like the official loader.

    Args:
        img: any PIL image (16-bit grey is scaled to 8 bit, any other mode goes through ``convert("RGB")``).
        size: long side in pixels (512 default); 224 selects the official short-side-224 square crop.
        name: used in error messages.

    Returns:
        ``(H, W, 3)`` uint8 processed pixels.

    Raises:
        Easi3RInputError: the image, or its processed version, is smaller than 16 px on a side.
    """
    width, height = img.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise Easi3RInputError(f"image {name!r} is {width}x{height} px; at least {MIN_SIDE} px per side is needed")
    new_size, resample, box = resize_crop_plan(width, height, size)
    ph, pw = processed_size(width, height, size)
    if ph < MIN_SIDE or pw < MIN_SIDE:
        raise Easi3RInputError(
            f"image {name!r} ({width}x{height} px) would be {pw}x{ph} px after resizing to {size}; "
            f"at least {MIN_SIDE} px per side is needed"
        )
    img = _to_rgb(img).resize(new_size, resample).crop(box)
    return np.asarray(img, dtype=np.uint8)


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError) as e:
        raise Easi3RInputError(f"cannot read image {str(path)!r}: {_reason(e)}") from None


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIDE:
        raise Easi3RInputError(f"size must be an integer >= {MIN_SIDE} (long side in pixels), got {size!r}")


def _check_count(name: str, value: float | None, integer: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise Easi3RInputError(f"{name} must be a positive number or None, got {value!r}")
    if integer and int(value) != value:
        raise Easi3RInputError(f"{name} must be an integer, got {value!r}")
    if not value > 0:
        raise Easi3RInputError(f"{name} must be > 0, got {value!r}")


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _read_video(
    path: Path, size: int, fps: float | None, max_frames: int | None
) -> tuple[list[np.ndarray], list[str], list[tuple[int, int]], float | None]:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise Easi3RInputError(f"cannot open video {str(path)!r}")
        video_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        has_fps = np.isfinite(video_fps) and video_fps > 0
        if fps is not None and not has_fps:
            raise Easi3RInputError(f"video {str(path)!r} reports no frame rate; cannot subsample it to fps={fps}")
        interval = max(1, int(round(video_fps / fps))) if fps is not None else 1
        frames, names, sizes = [], [], []
        index = 0
        # Sequential grab + decode-only-what-is-kept: the same frames as the official seek-then-read per
        # index, without a costly (and for some codecs inexact) seek per frame.
        while max_frames is None or len(frames) < max_frames:
            if not cap.grab():
                break
            if index % interval == 0:
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
                name = f"frame_{index:05d}"
                frames.append(preprocess_image(Image.fromarray(rgb), size, name=f"{path.name}:{name}"))
                names.append(name)
                sizes.append((int(rgb.shape[1]), int(rgb.shape[0])))
            index += 1
    finally:
        cap.release()
    if not frames:
        raise Easi3RInputError(f"video {str(path)!r} yields no frames")
    return frames, names, sizes, (video_fps / interval if has_fps else None)


def _item_to_image(item: object, i: int) -> tuple[Image.Image, str]:
    """One element of a list source -> (PIL image, name)."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise Easi3RInputError(f"image {str(path)!r} does not exist or is not a file")
        if _suffix(path) in VIDEO_EXTENSIONS:
            raise Easi3RInputError(f"{str(path)!r} is a video; pass a video file on its own, not in a list")
        return _open_image(path), path.name
    if isinstance(item, Image.Image):
        fname = getattr(item, "filename", "") or ""
        name = Path(fname).name if fname else f"image_{i}"
        try:
            # A lazily opened image decodes here: a corrupt file must fail as bad input, naming it.
            return ImageOps.exif_transpose(item), name
        except (OSError, ValueError, EOFError, SyntaxError) as e:
            raise Easi3RInputError(f"cannot read image {name!r}: {_reason(e)}") from None
    if isinstance(item, np.ndarray):
        name = f"array_{i}"
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise Easi3RInputError(
                f"{name}: expected an (H, W, 3) uint8 RGB array, got shape {item.shape} dtype {item.dtype}"
            )
        return Image.fromarray(np.ascontiguousarray(item)), name
    raise Easi3RInputError(
        f"frame {i}: expected a path, a PIL image or an (H, W, 3) uint8 array, got {type(item).__name__}"
    )


def _list_folder(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and _suffix(p) in IMAGE_EXTENSIONS]
    if not files:
        raise Easi3RInputError(
            f"folder {str(folder)!r} contains no images (expected files ending in {', '.join(IMAGE_EXTENSIONS)})"
        )
    return sorted(files, key=lambda p: p.name)


def _assemble(arrays: list[np.ndarray], names: list[str], sizes: list[tuple[int, int]], fps: float | None) -> Frames:
    first = arrays[0].shape[:2]
    for a, n in zip(arrays, names):
        if a.shape[:2] != first:
            raise Easi3RInputError(
                f"frames differ in processed size: {names[0]!r} -> {first[1]}x{first[0]} but {n!r} -> "
                f"{a.shape[1]}x{a.shape[0]} (W x H); all frames must have the same size"
            )
    u8 = np.stack(arrays)
    # Same float32 operations as torchvision ToTensor + Normalize(0.5, 0.5), so the result is bit-exact.
    x = torch.from_numpy(u8).permute(0, 3, 1, 2).to(torch.float32).div(255)
    images = x.sub(0.5).div(0.5).contiguous()
    true_shape = torch.tensor([list(first)] * len(arrays), dtype=torch.int64)
    return Frames(images=images, true_shape=true_shape, names=names, original_sizes=sizes, uint8=u8, fps=fps)


def load_frames(
    source: FrameSource,
    size: int = 512,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
) -> Frames:
    """Load and preprocess a frame sequence exactly like the official Easi3R / DUSt3R loader.

    Args:
        source: one of
            * a folder: its files ending in .jpg/.jpeg/.png/.bmp/.webp (case-insensitive), sorted by name;
              other files and sub-folders are ignored;
            * a single image file, or a video file (.mp4/.avi/.mov/.mkv/.webm, read with OpenCV);
            * a list/tuple of image paths, PIL images or ``(H, W, 3)`` uint8 RGB arrays (in the given
              order);
            * a ``(T, H, W, 3)`` or ``(H, W, 3)`` uint8 RGB numpy array;
            * a :class:`Frames`, returned unchanged.
        size: target long side in pixels (official: 512); 224 selects the official 224 square crop.
        fps: videos only: keep every ``max(1, round(video_fps / fps))``-th frame; None keeps every frame.
            Ignored for image sources (as in the official loader).
        max_frames: keep at most this many frames (the first ones kept); None keeps all.

    Returns:
        :class:`Frames` with ``images`` ``(T, 3, H, W)`` float32 in ``[-1, 1]`` on CPU. A single frame is
        returned as a one-frame sequence.

    Raises:
        Easi3RInputError: missing path, no images, unreadable or corrupt image, video that cannot be opened
            or yields no frames, image smaller than 16 px on a side, frames of different processed sizes,
            arrays of the wrong dtype or shape. The message is one line and names the offending input.
    """
    if isinstance(source, Frames):
        return source
    _check_size(size)
    _check_count("fps", fps, integer=False)
    _check_count("max_frames", max_frames, integer=True)
    limit = None if max_frames is None else int(max_frames)

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise Easi3RInputError(f"frame source {str(path)!r} does not exist")
        if path.is_dir():
            items: Sequence = _list_folder(path)
        elif _suffix(path) in VIDEO_EXTENSIONS:
            arrays, names, sizes, video_fps = _read_video(path, int(size), fps, limit)
            return _assemble(arrays, names, sizes, video_fps)
        elif _suffix(path) in IMAGE_EXTENSIONS:
            items = [path]
        else:
            raise Easi3RInputError(
                f"{str(path)!r} is neither a folder, an image ({', '.join(IMAGE_EXTENSIONS)}) nor a video "
                f"({', '.join(VIDEO_EXTENSIONS)})"
            )
    elif isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (3, 4) or source.shape[-1] != 3:
            raise Easi3RInputError(
                f"frame array: expected (T, H, W, 3) or (H, W, 3) uint8 RGB, got shape {source.shape} "
                f"dtype {source.dtype}"
            )
        items = list(source) if source.ndim == 4 else [source]
    elif isinstance(source, Image.Image):
        items = [source]
    elif isinstance(source, (list, tuple)):
        items = source
    else:
        raise Easi3RInputError(
            f"frame source: expected a folder, file, list, numpy array or PIL image, got {type(source).__name__}"
        )

    if len(items) == 0:
        raise Easi3RInputError("frame source contains no frames")
    if limit is not None:
        items = items[:limit]
    arrays, names, sizes = [], [], []
    for i, item in enumerate(items):
        img, name = _item_to_image(item, i)
        sizes.append((int(img.size[0]), int(img.size[1])))
        arrays.append(preprocess_image(img, int(size), name=name))
        names.append(name)
    return _assemble(arrays, names, sizes, None)
