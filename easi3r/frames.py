"""Frame loading: folders, image lists, videos, arrays and PIL images -> normalised network input.

The preprocessing reproduces the official loader bit for bit (official ``dust3r/utils/image.py``,
``load_images`` with ``_resize_pil_image`` and MonST3R's ``crop_img``):

1. decode, EXIF-transpose (files and PIL images), convert to RGB;
2. resize so that the long side equals ``image_size`` (``new = int(round(old * image_size / long))`` per side),
   with LANCZOS when shrinking and BICUBIC otherwise; ``image_size == 224`` instead resizes the short side to 224;
3. centre crop to multiples of 16 (``cx = W // 2``, ``halfw = ((2 * cx) // 16) * 8``, same for ``y``); a
   square image is cropped to 4:3 landscape; ``image_size == 224`` crops a centred square. With ``crop=False``
   (official ``crop_img(..., crop=False)``, the ``--no_crop`` of the DyCheck evaluation) the resized image is
   instead resized again, always with LANCZOS, to that crop size: nothing is cut off, each axis is squeezed by
   less than 16 px (``image_size == 224`` ignores ``crop``, as the official code does);
4. ``(u8 / 255 - 0.5) / 0.5`` in float32, i.e. torchvision's ``ToTensor`` + ``Normalize(0.5, 0.5)``.

The one intentional deviation: 16-bit greyscale images (PIL modes ``I;16*`` / ``I``) are scaled to 8 bit
with ``round(v / 257)`` before the RGB conversion, where the official ``convert("RGB")`` clips every value
above 255 to white. (16-bit *colour* PNGs are already reduced by Pillow to their high byte when decoded.)

Naming: ``image_size`` is the int long side in pixels (the loader's target); ``size`` is a ``(H, W)`` pair and
``original_size`` a ``(W, H)`` pair of a user frame, in pixels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, ImageOps

from ._checks import check_dtype, check_shape
from .errors import Easi3RInputError, first_line

__all__ = [
    "IMAGE_EXTENSIONS",
    "MIN_PROCESSED_SIDE",
    "VIDEO_EXTENSIONS",
    "Frames",
    "load_frames",
    "original_intrinsics",
    "preprocess_image",
    "preprocess_transform",
    "processed_size",
    "resize_crop_plan",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")

logger = logging.getLogger("easi3r")


def is_video_path(source: object) -> bool:
    """Whether ``source`` names a video file (by its extension), i.e. what :func:`load_frames` reads with OpenCV."""
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() in VIDEO_EXTENSIONS


MIN_SIDE = 16  # one ViT patch: anything smaller has no token at all
#: Smallest processed side in pixels: the encoder needs a token grid of at least 2 x 2 patches of 16 px.
MIN_PROCESSED_SIDE = 32

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

FrameSource = Union[str, "os.PathLike[str]", np.ndarray, Image.Image, "Frames", Sequence[object]]


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
        rgb: ``(T, H, W, 3)`` uint8, the processed (resized and cropped) RGB frames exactly: the pixels
            ``images`` was made from.
        fps: frame rate of the kept video frames (``video_fps / interval``); None for images and arrays,
            and for videos that report no frame rate.
        image_size: the long side the frames were preprocessed to (the ``image_size`` of :func:`load_frames`).
        crop: the frames were centre-cropped (True, official default) or resized without cropping (False);
            :meth:`easi3r.result.Reconstruction.intrinsics_at` needs it to undo the preprocessing.
    """

    images: torch.Tensor
    true_shape: torch.Tensor
    names: list[str]
    original_sizes: list[tuple[int, int]]
    rgb: NDArray[np.uint8]
    fps: float | None = None
    crop: bool = True
    image_size: int = 512

    def __post_init__(self) -> None:
        dims = check_shape(self.images, "T 3 H W", "Frames.images")
        check_shape(self.rgb, "T H W 3", "Frames.rgb", dims=dims)
        check_shape(self.true_shape, "T 2", "Frames.true_shape", dims=dims)
        for name, values in (("names", self.names), ("original_sizes", self.original_sizes)):
            if len(values) != dims["T"]:
                raise Easi3RInputError(f"Frames.{name} must have {dims['T']} entries, got {len(values)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """Processed ``(H, W)`` in pixels, shared by all frames."""
        return int(self.images.shape[2]), int(self.images.shape[3])


Box = tuple[float, float, float, float]


def _resize_plan(width: int, height: int, long_edge: int) -> tuple[tuple[int, int], Image.Resampling]:
    s = max(width, height)
    # The official rule: LANCZOS only when shrinking; BICUBIC for enlarging and for the identity size.
    resample = Image.Resampling.LANCZOS if s > long_edge else Image.Resampling.BICUBIC
    new = (int(round(width * long_edge / s)), int(round(height * long_edge / s)))
    return new, resample


def resize_crop_plan(width: int, height: int, image_size: int) -> tuple[tuple[int, int], Image.Resampling, Box]:
    """Resize target, PIL filter and crop box of the official loader for a ``width x height`` frame.

    The geometry of official ``dust3r/utils/image.py`` ``load_images`` (``_resize_pil_image`` then the
    centre crop, MonST3R ``crop_img`` with ``crop=True``, ``square_ok=False``). The one home of this geometry:
    :func:`preprocess_image`, :func:`preprocess_transform` and the evaluation's mask resizing use it.

    Args:
        width, height: the frame's size in pixels.
        image_size: the loader's long side in pixels (224 selects the short-side-224 square crop).

    Returns:
        ``((Wr, Hr), resample, (left, top, right, bottom))``: the resized size in pixels, the PIL filter and
        the crop box in resized pixels (float for the 4:3 crop of square frames; PIL rounds it).

    Example:
        >>> resize_crop_plan(854, 480, 512)[0], resize_crop_plan(854, 480, 512)[2]
        ((512, 288), (0, 0, 512, 288))
    """
    if image_size == 224:
        long_edge = round(image_size * max(width / height, height / width))
        (w, h), resample = _resize_plan(width, height, long_edge)
        cx, cy = w // 2, h // 2
        half = min(cx, cy)
        return (w, h), resample, (cx - half, cy - half, cx + half, cy + half)
    (w, h), resample = _resize_plan(width, height, image_size)
    cx, cy = w // 2, h // 2
    halfw = ((2 * cx) // 16) * 8
    halfh: float = ((2 * cy) // 16) * 8
    if w == h:
        # square_ok=False in every official caller: squares become 4:3 (float, PIL rounds the box).
        halfh = 3 * halfw / 4
    return (w, h), resample, (cx - halfw, cy - halfh, cx + halfw, cy + halfh)


def processed_size(width: int, height: int, image_size: int = 512) -> tuple[int, int]:
    """``(H, W)`` in pixels that an image of ``width x height`` pixels has after preprocessing.

    Example:
        >>> processed_size(854, 480), processed_size(1000, 1000)
        ((288, 512), (384, 512))
    """
    _, _, (x0, y0, x1, y1) = resize_crop_plan(width, height, image_size)
    return int(round(y1)) - int(round(y0)), int(round(x1)) - int(round(x0))


def preprocess_transform(
    original_size: tuple[int, int], image_size: int = 512, *, crop: bool = True, square_ok: bool = False
) -> tuple[NDArray[np.float64], tuple[int, int]]:
    """The pixel mapping of the official frame preprocessing (:func:`resize_crop_plan`) as a 3x3 affine matrix.

    The frame of size ``(W0, H0)`` is resized to ``(Wr, Hr) = (round(W0·L/S), round(H0·L/S))`` with
    ``S = max(W0, H0)`` and long side ``L = image_size`` (for ``image_size == 224``:
    ``L = round(224·max(W0/H0, H0/W0))``, i.e. short side 224), then centre-cropped: ``cx = Wr//2``,
    ``halfw = ((2cx)//16)·8`` (same for y; a square frame keeps ``halfh = 3·halfw/4`` unless
    ``square_ok``; for 224 a square crop of half-size ``min(cx, cy)``), crop origin
    ``(ox, oy) = (cx - halfw, cy - halfh)``. With ``crop=False`` the resized frame is instead resized again
    to the crop size (official ``crop_img(..., crop=False)``, ``--no_crop``): a per-axis scale
    ``(sx, sy) = (W/W0, H/H0)`` and no offset. ``image_size == 224`` ignores ``crop`` (official behaviour).

    Pixel-centre convention (OpenCV; integer coordinates are pixel centres): an image resize by
    ``s = Wr/W0`` maps ``x0 -> (x0 + 0.5)·s - 0.5`` (what PIL's resampling does), the crop subtracts
    ``ox``. Hence ``A = [[sx, 0, sx/2 - 1/2 - ox], [0, sy, sy/2 - 1/2 - oy], [0, 0, 1]]``.

    Args:
        original_size: ``(W0, H0)`` of the user's frame in pixels.
        image_size: preprocessing long side in pixels (512, 224, or another multiple of 16).
        crop: centre crop (official default) or resize to the crop size (ignored for 224).
        square_ok: keep square frames square (the pipeline always uses False).

    Returns:
        ``(A, (W, H))``: ``A`` is the float64 ``(3, 3)`` matrix mapping homogeneous original pixel
        coordinates to processed ones, ``(W, H)`` the processed size in pixels.

    Raises:
        Easi3RInputError: a non-positive size, or a frame too small to keep one 16x16 patch.

    Example:
        >>> A, (W, H) = preprocess_transform((1920, 1080), 512)
        >>> (W, H), float(A[0, 0])
        ((512, 288), 0.26666666666666666)
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
    if crop or image_size == 224:
        sx, sy = Wr / W0, Hr / H0
    else:
        sx, sy = W / W0, H / H0
        ox = oy = 0
    A = np.array([[sx, 0.0, 0.5 * sx - 0.5 - ox], [0.0, sy, 0.5 * sy - 0.5 - oy], [0.0, 0.0, 1.0]], dtype=np.float64)
    return A, (W, H)


def original_intrinsics(
    intrinsics: NDArray[np.float64],
    original_sizes: Sequence[tuple[int, int]],
    image_size: int,
    size: tuple[int, int],
    *,
    crop: bool = True,
) -> NDArray[np.float64]:
    """Intrinsics in the pixel grid of the user's original frames: the inverse of the preprocessing.

    With ``A`` the affine map from original to processed pixel coordinates (:func:`preprocess_transform`),
    ``K0 = A⁻¹ · K``. Both ``K`` and ``K0`` use the OpenCV pixel-centre convention (integer coordinates are
    pixel centres), so a world point projected with ``K0`` lands on the original-image pixel whose
    preprocessed position ``K`` predicts.

    Args:
        intrinsics: ``(T, 3, 3)`` float64 pinhole matrices in processed pixels.
        original_sizes: ``T`` pairs ``(W0, H0)`` in pixels, one per frame.
        image_size: the preprocessing long side in pixels.
        size: the processed ``(H, W)`` in pixels; every original size must preprocess to it.
        crop: the preprocessing cropped (default) or resized (MonST3R ``--no_crop``).

    Returns:
        ``(T, 3, 3)`` float64 intrinsics in original pixels.

    Raises:
        Easi3RInputError: wrong shapes, or a size that does not preprocess to ``size``.
    """
    dims = check_shape(intrinsics, "T 3 3", "intrinsics")
    if len(original_sizes) != dims["T"]:
        raise Easi3RInputError(f"original_sizes must have {dims['T']} entries, got {len(original_sizes)}")
    H, W = size
    out = np.empty_like(intrinsics)
    cache: dict[tuple[int, int], NDArray[np.float64]] = {}
    for t, s in enumerate(original_sizes):
        key = (int(s[0]), int(s[1]))
        if key not in cache:
            A, (Wp, Hp) = preprocess_transform(key, image_size, crop=crop)
            if (Wp, Hp) != (W, H):
                raise Easi3RInputError(
                    f"original_size {key} preprocesses to {Wp}x{Hp} at image_size={image_size}, "
                    f"but this reconstruction is {W}x{H}"
                )
            cache[key] = np.asarray(np.linalg.inv(A), dtype=np.float64)
        out[t] = cache[key] @ intrinsics[t]
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT_MODES:
        # Proper 16 -> 8 bit scaling; PIL's convert("RGB") would clip everything above 255.
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def preprocess_image(
    img: Image.Image, image_size: int = 512, *, name: str = "image", crop: bool = True
) -> NDArray[np.uint8]:
    """Resize and centre-crop (or, with ``crop=False``, squeeze) one PIL image like the official loader.

    ``crop=False`` is official ``crop_img(..., crop=False)`` (``dust3r/utils/image.py``): after the long-side
    resize, the whole image is resized with LANCZOS to the crop size (multiples of 16). Official square inputs
    crash there (a float height reaches ``PIL.Image.resize``); here the height is the integer ``3 W / 4`` of the
    crop rule. ``image_size == 224`` ignores ``crop``.

    Args:
        img: any PIL image (16-bit grey is scaled to 8 bit, any other mode goes through ``convert("RGB")``).
        image_size: long side in pixels (512 default); 224 selects the official short-side-224 square crop.
        name: used in error messages.
        crop: centre crop (official default) or resize to the crop size.

    Returns:
        ``(H, W, 3)`` uint8 processed pixels.

    Raises:
        Easi3RInputError: the image is smaller than 16 px on a side, or its processed size is below
            :data:`MIN_PROCESSED_SIDE` px on a side (fewer than 2 x 2 encoder patches); the message names the
            frame, its size and the processed size.
    """
    width, height = img.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise Easi3RInputError(f"image {name!r} is {width}x{height} px; at least {MIN_SIDE} px per side is needed")
    new_size, resample, box = resize_crop_plan(width, height, image_size)
    ph, pw = processed_size(width, height, image_size)
    if ph < MIN_PROCESSED_SIDE or pw < MIN_PROCESSED_SIDE:
        raise Easi3RInputError(
            f"frame {name!r} ({width}x{height} px) would be {pw}x{ph} px (W x H) after preprocessing at "
            f"image_size={image_size}; the network needs at least {MIN_PROCESSED_SIDE} px (2 patches) per side: "
            "use a less elongated frame or a larger image_size"
        )
    resized = _to_rgb(img).resize(new_size, resample)
    if crop or image_size == 224:
        out = resized.crop(box)
    else:
        # Official: always LANCZOS here; PIL returns a copy when the size is already right (no resampling).
        out = resized.resize((pw, ph), Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.uint8)


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError) as e:
        raise Easi3RInputError(f"cannot read image {str(path)!r}: {first_line(e)}") from None


def _check_image_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < MIN_SIDE:
        raise Easi3RInputError(f"image_size must be an integer >= {MIN_SIDE} (long side in pixels), got {image_size!r}")


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
    path: Path, image_size: int, fps: float | None, max_frames: int | None, crop: bool
) -> tuple[list[NDArray[np.uint8]], list[str], list[tuple[int, int]], float | None]:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise Easi3RInputError(f"cannot open video {str(path)!r}")
        video_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        has_fps = np.isfinite(video_fps) and video_fps > 0
        if fps is not None and not has_fps:
            raise Easi3RInputError(f"video {str(path)!r} reports no frame rate; cannot subsample it to fps={fps}")
        interval = max(1, int(round(video_fps / fps))) if fps is not None else 1
        if fps is not None and fps >= video_fps:
            logger.warning(
                "fps=%g is not below the frame rate of %s (%g fps): every frame is kept", fps, path.name, video_fps
            )
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        frames: list[NDArray[np.uint8]] = []
        names: list[str] = []
        sizes: list[tuple[int, int]] = []
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
                frames.append(preprocess_image(Image.fromarray(rgb), image_size, name=f"{path.name}:{name}", crop=crop))
                names.append(name)
                sizes.append((int(rgb.shape[1]), int(rgb.shape[0])))
            index += 1
    finally:
        cap.release()
    if not frames:
        raise Easi3RInputError(f"video {str(path)!r} yields no frames")
    available = -(-total // interval) if total > 0 else 0  # frames the sampling would keep without a cap
    if max_frames is not None and available > len(frames):
        logger.warning(
            "%s: kept the first %d of %d frames (max_frames=%d); %d frames dropped. Pass max_frames=None to keep all.",
            path.name, len(frames), available, max_frames, available - len(frames),
        )  # fmt: skip
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
            raise Easi3RInputError(f"cannot read image {name!r}: {first_line(e)}") from None
    if isinstance(item, np.ndarray):
        name = f"array_{i}"
        check_shape(item, "H W 3", name)
        check_dtype(item, (np.uint8,), name)
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


def _assemble(
    arrays: list[NDArray[np.uint8]],
    names: list[str],
    sizes: list[tuple[int, int]],
    fps: float | None,
    crop: bool,
    image_size: int,
) -> Frames:
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
    return Frames(
        images=images, true_shape=true_shape, names=names, original_sizes=sizes, rgb=u8, fps=fps, crop=crop,
        image_size=image_size,
    )  # fmt: skip


def load_frames(
    source: FrameSource,
    image_size: int = 512,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    crop: bool = True,
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
        image_size: target long side in pixels (official: 512); 224 selects the official 224 square crop.
        fps: videos only: keep every ``max(1, round(video_fps / fps))``-th frame; None keeps every frame.
            Ignored for image sources (as in the official loader).
        max_frames: keep at most this many frames (the first ones kept); None keeps all.
        crop: centre-crop to multiples of 16 (official default) or, with False, resize the whole frame to
            those multiples (official ``crop=False`` / ``--no_crop``, used for DyCheck): no pixel is lost, the
            aspect ratio changes by less than 16 px per axis. Ignored for ``image_size == 224``.

    Returns:
        :class:`Frames` with ``images`` ``(T, 3, H, W)`` float32 in ``[-1, 1]`` on CPU. A single frame is
        returned as a one-frame sequence.

    Raises:
        Easi3RInputError: missing path, no images, unreadable or corrupt image, video that cannot be opened
            or yields no frames, image smaller than 16 px on a side, frames of different processed sizes,
            arrays of the wrong dtype or shape, a frame whose processed size is below 32 px on a side. The
            message is one line and names the offending input.
    """
    if isinstance(source, Frames):
        return source
    if not isinstance(crop, (bool, np.bool_)):
        raise Easi3RInputError(f"crop must be True or False, got {crop!r}")
    crop = bool(crop)
    _check_image_size(image_size)
    _check_count("fps", fps, integer=False)
    _check_count("max_frames", max_frames, integer=True)
    limit = None if max_frames is None else int(max_frames)

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise Easi3RInputError(f"frame source {str(path)!r} does not exist")
        if path.is_dir():
            items: Sequence[object] = _list_folder(path)
        elif _suffix(path) in VIDEO_EXTENSIONS:
            arrays, names, sizes, video_fps = _read_video(path, int(image_size), fps, limit, crop)
            return _assemble(arrays, names, sizes, video_fps, crop, int(image_size))
        elif _suffix(path) in IMAGE_EXTENSIONS:
            items = [path]
        else:
            raise Easi3RInputError(
                f"{str(path)!r} is neither a folder, an image ({', '.join(IMAGE_EXTENSIONS)}) nor a video "
                f"({', '.join(VIDEO_EXTENSIONS)})"
            )
    elif isinstance(source, np.ndarray):
        check_shape(source, "T H W 3" if source.ndim == 4 else "H W 3", "frame array")
        check_dtype(source, (np.uint8,), "frame array")
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
    if limit is not None and len(items) > limit:
        logger.warning(
            "kept the first %d of %d frames (max_frames=%d); %d frames dropped", limit, len(items), limit,
            len(items) - limit,
        )  # fmt: skip
        items = items[:limit]
    arrays, names, sizes = [], [], []
    for i, item in enumerate(items):
        img, name = _item_to_image(item, i)
        sizes.append((int(img.size[0]), int(img.size[1])))
        arrays.append(preprocess_image(img, int(image_size), name=name, crop=crop))
        names.append(name)
    return _assemble(arrays, names, sizes, None, crop, int(image_size))


MaskSource = str | os.PathLike[str] | NDArray[Any] | Sequence[Any]


def _mask_to_processed(mask: Image.Image, frames: Frames, t: int, name: str) -> NDArray[np.bool_]:
    """One user mask at the processed or the original resolution -> ``(H, W)`` bool at the processed one."""
    h, w = frames.size
    if mask.size == (w, h):
        return np.asarray(mask) > 0
    if mask.size != tuple(frames.original_sizes[t]):
        w0, h0 = frames.original_sizes[t]
        raise Easi3RInputError(
            f"mask {name!r} is {mask.size[0]}x{mask.size[1]} px; expected the frame's original size {w0}x{h0} or "
            f"the processed size {w}x{h}"
        )
    # As the official loader: the mask is resized (and cropped) like its frame, then any non-zero value is dynamic.
    grey = np.asarray(mask, dtype=np.uint8)
    rgb = Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))
    out = preprocess_image(rgb, frames.image_size, name=name, crop=frames.crop)[..., 0]
    return out > 0


def load_masks(source: MaskSource, frames: Frames) -> NDArray[np.bool_]:
    """User-given dynamic masks for ``frames`` (the official ``use_gt_davis_masks`` / ``dynamic_mask_root``).

    Args:
        source: a folder of mask images (sorted by name, one per frame), a list of image paths or ``(H, W)``
            arrays, or a ``(T, H, W)`` array; any non-zero value is dynamic. Each mask is at the frame's original
            resolution (then resized and cropped exactly like the frame, as the official loader does) or at the
            processed one.
        frames: the loaded frames the masks belong to.

    Returns:
        ``(T, H, W)`` bool masks at the processed resolution.

    Raises:
        Easi3RInputError: a missing folder, a count that differs from the frames', an unreadable file or a mask of
            neither size.
    """
    items: list[Any]
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise Easi3RInputError(f"mask folder {str(folder)!r} does not exist")
        items = _list_folder(folder)
    elif isinstance(source, np.ndarray):
        items = list(source) if source.ndim == 3 else [source]
    else:
        items = list(source)
    if len(items) != len(frames):
        raise Easi3RInputError(f"got {len(items)} masks for {len(frames)} frames; give one mask per frame")
    out = []
    for t, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            name = Path(item).name
            try:
                with Image.open(item) as im:
                    mask = im.convert("L")
            except (OSError, ValueError) as err:
                raise Easi3RInputError(f"cannot read mask {str(item)!r}: {first_line(err)}") from None
        else:
            name = f"mask_{t}"
            arr = np.asarray(item)
            check_shape(arr, "H W", f"mask {t}")
            mask = Image.fromarray((arr != 0).astype(np.uint8) * 255)
        out.append(_mask_to_processed(mask, frames, t, name))
    return np.stack(out)


def processed_focals(intrinsics: Any, frames: Frames) -> NDArray[np.float64]:
    """Known intrinsics at the frames' **original** resolution -> ``(T,)`` focals in processed pixels.

    The most frequent DUSt3R user error is passing intrinsics of another resolution; here they are given at the
    original one and mapped through the preprocessing (:func:`preprocess_transform`): ``f = (s_x f_x + s_y f_y)/2``.

    Args:
        intrinsics: a focal in pixels (scalar or ``(T,)``), or ``(3, 3)`` / ``(T, 3, 3)`` matrices.
        frames: the loaded frames (their original sizes, image size and crop rule).

    Raises:
        Easi3RInputError: a shape that fits neither form, or non-positive / non-finite focals.
    """
    k = np.asarray(intrinsics, dtype=np.float64)
    n = len(frames)
    if k.ndim <= 1:
        fx = fy = np.broadcast_to(k, (n,)) if k.size in (1, n) else None
        if fx is None:
            raise Easi3RInputError(f"known focal must be a scalar or have {n} values, got shape {k.shape}")
    else:
        k = np.broadcast_to(k, (n, 3, 3)) if k.shape == (3, 3) else k
        check_shape(k, "T 3 3", "intrinsics", dims={"T": n})
        fx, fy = k[:, 0, 0], k[:, 1, 1]
    scales = np.array([np.diag(preprocess_transform((int(w0), int(h0)), frames.image_size, crop=frames.crop)[0])[:2]
                       for w0, h0 in frames.original_sizes])  # fmt: skip
    focals = (scales[:, 0] * fx + scales[:, 1] * fy) / 2
    if not (np.isfinite(focals).all() and (focals > 0).all()):
        raise Easi3RInputError("known intrinsics must have positive, finite focals")
    return np.ascontiguousarray(focals)
