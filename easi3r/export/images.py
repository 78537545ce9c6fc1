"""Per-frame PNG exports: binary masks, colour-mapped attention strips, processed frames.

Images are RGB ``uint8`` arrays ``(H, W, 3)`` (or grey ``(H, W)``); each PNG is encoded in memory with
OpenCV (a standard RGB PNG on disk) and its bytes are written atomically, one file at a time.

The four attention maps of a result are :data:`ATTENTION_KEYS`, the paper's Eq. 5-8 names: ``src_*`` pool the
``cross_attn_1`` maps of the pairs in which the frame is view 2 (the source), ``ref_*`` the ``cross_attn_2`` maps
of the pairs in which it is view 1 (the reference); see :class:`easi3r.attention.AttentionStats`.
Attention strip layout (:data:`ATTENTION_PANELS`, left to right, each panel ``H x W``):

1. ``1 - src_mean``  2. ``src_std``  3. ``1 - ref_mean``  4. ``ref_std``  5. ``dynamic_map``
6. the frame with the dynamic mask tinted red.

Panels 1-5 are the token-grid maps nearest-upsampled to ``(H, W)`` and coloured with matplotlib's
``Spectral_r`` on the fixed range [0, 1] (the maps are already normalised; a fixed range keeps colours
comparable across frames). Means are drawn as ``1 - mean`` as the official visualisation does, so that
in every panel red (high) points towards "dynamic". Each panel carries its name (:data:`ATTENTION_PANELS`)
in its top-left corner, white on a dark box (:func:`draw_label`), so a reader can tell src from ref.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps
from numpy.typing import NDArray

from .._checks import check_dtype, check_shape
from ..errors import Easi3RRuntimeError
from .atomic import atomic_write_bytes

__all__ = [
    "ATTENTION_KEYS",
    "ATTENTION_PANELS",
    "attention_panel_maps",
    "attention_strip",
    "colorize",
    "draw_label",
    "encode_png",
    "frame_filename",
    "label_box",
    "mask_overlay",
    "remove_stale_frames",
    "upsample_nearest",
    "write_frame_pngs",
    "write_mask_pngs",
    "write_png",
]

#: The four fused cross-attention maps of a result (``Reconstruction.attention`` keys), in panel order.
ATTENTION_KEYS: tuple[str, ...] = ("src_mean", "src_std", "ref_mean", "ref_std")
# Means are drawn as ``1 - mean`` (official visualisation) so that red (high) means "dynamic" in every panel.
_INVERTED_KEYS = frozenset({"src_mean", "ref_mean"})
#: Panel titles of the attention strip and of :func:`easi3r.viz.attention_grid`, left to right.
ATTENTION_PANELS: tuple[str, ...] = (
    *(f"1 - {k}" if k in _INVERTED_KEYS else k for k in ATTENTION_KEYS),
    "dynamic_map",
    "mask overlay",
)

MASK_TINT: tuple[int, int, int] = (255, 0, 0)


def frame_filename(index: int, suffix: str = ".png") -> str:
    """Zero-padded frame file name: ``frame_filename(7) == "00007.png"`` (wider past 99999 frames)."""
    return f"{index:05d}{suffix}"


def colorize(values: np.ndarray, cmap: str = "Spectral_r", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Map scalars to RGB with a matplotlib colormap.

    Args:
        values: ``(...)`` float array. Values outside ``[vmin, vmax]`` are clipped; NaN maps to black.
        cmap: matplotlib colormap name.
        vmin, vmax: value range mapped onto the colormap.

    Returns:
        ``(..., 3)`` uint8 RGB (the colormap's alpha is dropped).
    """
    v = np.asarray(values, dtype=np.float64)
    scale = vmax - vmin if vmax > vmin else 1.0
    normed = np.clip((v - vmin) / scale, 0.0, 1.0)
    rgb = colormaps[cmap](normed)[..., :3]
    rgb[np.isnan(v)] = 0.0
    return np.round(rgb * 255.0).astype(np.uint8)


def upsample_nearest(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a token-grid map ``(h, w)`` to ``size = (H, W)``.

    Each output pixel ``(y, x)`` takes the grid cell ``(floor(y*h/H), floor(x*w/W))``, the rule of
    ``torch.nn.functional.interpolate(mode="nearest")`` used by the official visualisation.
    """
    grid = np.asarray(grid)
    H, W = size
    h, w = grid.shape[:2]
    rows = (np.arange(H) * h) // H
    cols = (np.arange(W) * w) // W
    out: np.ndarray = grid[rows[:, None], cols[None, :]]
    return out


def mask_overlay(
    image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = MASK_TINT, alpha: float = 0.5
) -> np.ndarray:
    """Blend ``color`` into the masked pixels of an image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` bool.
        color: RGB tint in 0..255.
        alpha: tint opacity in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8 RGB; unmasked pixels are unchanged.
    """
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    dims = check_shape(image, "H W 3", "image")
    check_shape(mask, "H W", "mask", dims=dims)
    out: NDArray[np.uint8] = image.copy()
    tint = np.asarray(color, dtype=np.float32)
    out[mask] = np.round((1.0 - alpha) * image[mask].astype(np.float32) + alpha * tint).astype(np.uint8)
    return out


_FONT = cv2.FONT_HERSHEY_SIMPLEX
_LABEL_PAD = 2


def _label_style(width: int) -> tuple[float, int]:
    """Font scale and thickness of a panel label: small, growing slowly with the panel width in pixels."""
    scale = float(np.clip(width / 1000.0, 0.3, 0.6))
    return scale, 1


def label_box(text: str, width: int) -> tuple[int, int]:
    """``(box_w, box_h)`` in pixels of the dark box :func:`draw_label` puts at the top-left of a panel ``width`` wide.

    The box may be wider than a small panel; :func:`draw_label` clips it to the image.
    """
    scale, thick = _label_style(width)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    return tw + 2 * _LABEL_PAD, th + base + 2 * _LABEL_PAD


def draw_label(image: np.ndarray, text: str) -> NDArray[np.uint8]:
    """``image`` with ``text`` written in its top-left corner: white, anti-aliased, on a dark grey box.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        text: the label (ASCII; OpenCV's Hershey font has no other glyphs).

    Returns:
        A new ``(H, W, 3)`` uint8 RGB image; only the pixels of the box (:func:`label_box`, clipped to the image)
        differ from ``image``.
    """
    img = np.asarray(image)
    check_shape(img, "H W 3", "image")
    check_dtype(img, (np.uint8,), "image")
    out = np.ascontiguousarray(img.copy())
    scale, thick = _label_style(int(img.shape[1]))
    bw, bh = label_box(text, int(img.shape[1]))
    out[:bh, :bw] = (32, 32, 32)
    (_, th), _ = cv2.getTextSize(text, _FONT, scale, thick)
    cv2.putText(out, text, (_LABEL_PAD, _LABEL_PAD + th), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def attention_panel_maps(attention: Mapping[str, np.ndarray], dynamic_map: np.ndarray) -> list[NDArray[np.floating]]:
    """The five token-grid maps of one frame's attention panels, in :data:`ATTENTION_PANELS` order.

    Args:
        attention: :data:`ATTENTION_KEYS`, each ``(h, w)`` float in [0, 1].
        dynamic_map: ``(h, w)`` float in [0, 1].

    Returns:
        ``1 - src_mean, src_std, 1 - ref_mean, ref_std, dynamic_map``, each ``(h, w)`` (inverted means in
        float32).
    """
    maps = [
        1.0 - np.asarray(attention[k], dtype=np.float32) if k in _INVERTED_KEYS else np.asarray(attention[k])
        for k in ATTENTION_KEYS
    ]
    return [*maps, np.asarray(dynamic_map)]


def attention_strip(
    attention: Mapping[str, np.ndarray],
    dynamic_map: np.ndarray,
    image: np.ndarray,
    mask: np.ndarray,
    cmap: str = "Spectral_r",
    *,
    labels: bool = True,
) -> NDArray[np.uint8]:
    """One frame's attention panels side by side (order and names in :data:`ATTENTION_PANELS`).

    ``src_*`` are the frame's attention statistics as the **source, view 2** of its pairs (the
    ``cross_attn_1`` maps of the pairs where it is the second image), ``ref_*`` as the **reference, view 1**
    (the ``cross_attn_2`` maps of the pairs where it is the first image); paper Eq. 5-8, official
    ``cross_att_k_i_*`` / ``cross_att_k_j_*``. Means are drawn as ``1 - mean``.

    Args:
        attention: :data:`ATTENTION_KEYS`, each ``(h, w)`` float in [0, 1].
        dynamic_map: ``(h, w)`` float in [0, 1].
        image: ``(H, W, 3)`` uint8 RGB frame.
        mask: ``(H, W)`` bool dynamic mask.
        cmap: colormap of the five map panels.
        labels: write each panel's name in its top-left corner (:func:`draw_label`).

    Returns:
        ``(H, 6*W, 3)`` uint8 RGB.
    """
    size = (int(image.shape[0]), int(image.shape[1]))
    panels = [colorize(upsample_nearest(m, size), cmap) for m in attention_panel_maps(attention, dynamic_map)]
    panels.append(mask_overlay(image, mask))
    if labels:
        panels = [draw_label(p, name) for p, name in zip(panels, ATTENTION_PANELS)]
    return np.concatenate(panels, axis=1)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 image."""
    image = np.asarray(image)
    check_shape(image, "H W" if image.ndim == 2 else "H W 3", "PNG image")
    check_dtype(image, (np.uint8,), "PNG image")
    bgr = image if image.ndim == 2 else np.ascontiguousarray(image[..., ::-1])
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise Easi3RRuntimeError(f"OpenCV could not encode a PNG of shape {image.shape}")
    return buf.tobytes()


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write a grey ``(H, W)`` or RGB ``(H, W, 3)`` uint8 image as PNG, atomically."""
    return atomic_write_bytes(path, encode_png(image))


def remove_stale_frames(folder: str | os.PathLike[str], keep: Iterable[str], suffix: str = ".png") -> list[Path]:
    """Delete frame files ``NNNNN<suffix>`` in ``folder`` that are not in ``keep``.

    A second ``save`` of a shorter video into the same folder would otherwise leave the previous run's
    extra frames behind, and a reader globbing ``masks/*.png`` would mix two results. Only names made
    entirely of digits plus ``suffix`` are touched; anything else the user put there is kept.
    """
    keep_set = set(keep)
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        stem = p.name[: -len(suffix)] if p.name.endswith(suffix) else ""
        if stem.isdigit() and p.name not in keep_set and p.is_file():
            p.unlink()
            removed.append(p)
    return removed


def write_frame_pngs(
    folder: str | os.PathLike[str],
    images: Iterable[np.ndarray],
    on_file: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write a sequence of uint8 images as ``folder/00000.png``, ``00001.png`` ...; atomic per file.

    Frame files of an earlier, longer run are removed afterwards (see :func:`remove_stale_frames`).
    ``on_file`` is called with each written path (progress bars).
    """
    folder = Path(folder)
    paths = []
    for t, im in enumerate(images):
        paths.append(write_png(folder / frame_filename(t), im))
        if on_file is not None:
            on_file(paths[-1])
    remove_stale_frames(folder, (p.name for p in paths))
    return paths


def write_mask_pngs(
    folder: str | os.PathLike[str], masks: np.ndarray, on_file: Callable[[Path], None] | None = None
) -> list[Path]:
    """Write ``(T, H, W)`` bool masks as 8-bit grey PNGs (0 / 255) ``folder/00000.png`` ...; atomic."""
    masks = np.asarray(masks)
    check_shape(masks, "T H W", "masks")
    return write_frame_pngs(folder, (np.where(m, 255, 0).astype(np.uint8) for m in masks), on_file)
