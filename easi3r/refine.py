"""SAM2 refinement of the attention masks: the official parity-split video propagation, and the mask union.

The official Easi3R (``dust3r/cloud_opt/optimizer.py``, ``PointCloudOptimizer.refine_motion_mask_w_sam2``)
prompts the SAM2.1 video predictor with the attention masks and propagates them over the video **twice on one
inference state**:

1. ``reset_state``; ``add_new_mask`` on every **odd** frame; ``propagate_in_video(start_frame_idx=0)`` (forward);
   the predictions of the **even** frames are kept;
2. ``reset_state``; prompts on every **even** frame; the same propagation; the **odd** frames are kept.

So every frame's SAM2 mask is predicted from the masks of the other parity, never copied from its own prompt.
A pixel is dynamic when its mask logit (bilinearly upsampled to the frame size by SAM2) is ``> 0``. Then:

* the **union** ``attention | sam2`` replaces the attention masks where the method uses them: it re-weights
  pass 2 (the pass-1 union) and is excluded from the alignment's flow term (the pass-2 union);
* the **SAM2 masks alone** are what the official code saves and scores (``sam2_dynamic_masks``,
  ``BasePCOptimizer.save_dynamic_masks``).

Three layers, so that the logic is testable without SAM2:

* :func:`propagate_parity_split`: the two passes over any object with SAM2's video-predictor API
  (``reset_state``, ``add_new_mask``, ``propagate_in_video``), e.g. a fake predictor in the tests;
* :func:`sam2_frames` / :func:`init_inference_state`: the frames as the official code feeds them;
* :class:`SAM2VideoRefiner`: a loaded predictor (:meth:`SAM2VideoRefiner.from_pretrained`) with
  :meth:`~SAM2VideoRefiner.refine` -> :class:`RefinedMasks` ``(sam2, union)``.

Differences from the official code (the PyPI ``sam2`` 1.1.0 package instead of Easi3R's vendored, modified 1.0):

* Frames: the vendored ``sam2/utils/misc.py::load_video_frames`` accepts a ``(T, 3, H, W)`` tensor; the PyPI
  package reads only JPEG folders / MP4 files (lossy, and resized by PIL). :func:`init_inference_state` therefore
  builds the state with the package's own ``init_state`` on tiny placeholder JPEGs and substitutes the frames
  prepared exactly as the vendored loader does (:func:`sam2_frames`), so no pixel goes through JPEG.
* Precision: the official code runs under ``torch.autocast(bfloat16)`` on CUDA (float32 on CPU, where its vendored
  copy keeps the memory features in float32). The PyPI package always stores the memory features in bfloat16,
  so bfloat16 autocast is used on every device (on CUDA: as the official). The official also switches TF32 on for
  the call; process-wide backend flags are left alone here (no effect on bfloat16 matmuls).
* Post-processing: ``fill_hole_area=8`` needs the package's compiled ``sam2._C`` extension; without it (CPU-only
  installs) SAM2 warns and skips the hole filling of the low-resolution masks.

Weights: the official hard-codes ``third_party/sam2/checkpoints/sam2.1_hiera_large.pt`` with
``configs/sam2.1/sam2.1_hiera_l.yaml``; :data:`DEFAULT_SAM2` is the same checkpoint on the Hugging Face hub
(``facebook/sam2.1-hiera-large``). :func:`resolve_sam2_weights` accepts a local ``.pt`` or a hub id.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import check_dtype, check_shape
from .device import resolve_device
from .errors import CheckpointError, Easi3RInputError, Easi3RRuntimeError, first_line

__all__ = [
    "DEFAULT_SAM2",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFICIAL_CONFIG",
    "SAM2_WEIGHTS",
    "TINY_CONFIG",
    "MissingDependencyError",
    "RefinedMasks",
    "SAM2VideoRefiner",
    "VideoPredictor",
    "init_inference_state",
    "propagate_parity_split",
    "resolve_sam2_weights",
    "sam2_frames",
    "union_masks",
]

DEFAULT_SAM2 = "facebook/sam2.1-hiera-large"
"""Default weights: the official ``sam2.1_hiera_large.pt`` (hub id of the checkpoint Easi3R hard-codes)."""
OFFICIAL_CONFIG = "configs/sam2.1/sam2.1_hiera_l.yaml"
"""The model config the official code pairs with ``sam2.1_hiera_large.pt``."""
TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
"""The package's smallest SAM2.1 config (tests build a randomly initialised model from it)."""

SAM2_WEIGHTS: dict[str, tuple[str, str]] = {
    "facebook/sam2.1-hiera-tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "facebook/sam2.1-hiera-small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "facebook/sam2.1-hiera-base-plus": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "facebook/sam2.1-hiera-large": (OFFICIAL_CONFIG, "sam2.1_hiera_large.pt"),
    "facebook/sam2-hiera-tiny": ("configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny.pt"),
    "facebook/sam2-hiera-small": ("configs/sam2/sam2_hiera_s.yaml", "sam2_hiera_small.pt"),
    "facebook/sam2-hiera-base-plus": ("configs/sam2/sam2_hiera_b+.yaml", "sam2_hiera_base_plus.pt"),
    "facebook/sam2-hiera-large": ("configs/sam2/sam2_hiera_l.yaml", "sam2_hiera_large.pt"),
}
"""Hub id -> ``(config name, checkpoint file name)``, as ``sam2.build_sam.HF_MODEL_ID_TO_FILENAMES``."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_OBJ_ID = 1  # the official ``ann_obj_id``: one object, all dynamic regions together


class MissingDependencyError(Easi3RRuntimeError, ImportError):
    """An optional dependency is not installed (also an :class:`ImportError`)."""


class VideoPredictor(Protocol):
    """The part of ``sam2.sam2_video_predictor.SAM2VideoPredictor`` the refinement uses."""

    image_size: int

    def init_state(self, video_path: str, offload_video_to_cpu: bool = ...) -> dict[str, Any]: ...

    def reset_state(self, inference_state: dict[str, Any]) -> None: ...

    def add_new_mask(self, inference_state: dict[str, Any], frame_idx: int, obj_id: int, mask: Tensor) -> Any: ...

    def propagate_in_video(
        self, inference_state: dict[str, Any], start_frame_idx: int | None = ...
    ) -> Iterator[tuple[int, Sequence[int], Tensor]]: ...


@dataclass
class RefinedMasks:
    """The two mask stacks of a SAM2 refinement, ``(T, H, W)`` bool on CPU.

    Attributes:
        sam2: the SAM2 masks alone (the official ``sam2_dynamic_masks``): what is output, saved and scored.
        union: ``attention | sam2`` (the official refined ``dynamic_masks``): what re-weights pass 2 (pass-1
            union) and is excluded from the alignment's flow term (pass-2 union).
    """

    sam2: Tensor
    union: Tensor


def _import_sam2(module: str = "sam2.build_sam") -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"SAM2 refinement needs the sam2 package ({first_line(err)}): pip install 'easi3r[sam2]'"
        ) from None


def _as_bool_masks(masks: Tensor | np.ndarray, name: str) -> Tensor:
    m = masks.detach().cpu() if isinstance(masks, Tensor) else torch.from_numpy(np.asarray(masks))
    check_shape(m, "T H W", name)
    check_dtype(m, (torch.bool,), name)
    return m


def union_masks(attention: Tensor | np.ndarray, sam2: Tensor | np.ndarray) -> Tensor:
    """``attention | sam2``, the masks that drive re-weighting and the flow term (optimizer.py l.342-345).

    Args:
        attention: ``(T, H, W)`` bool attention masks.
        sam2: ``(T, H, W)`` bool SAM2 masks.

    Returns:
        ``(T, H, W)`` bool tensor on CPU.

    Example:
        >>> a = torch.tensor([[[True, False, False]]])
        >>> union_masks(a, torch.tensor([[[False, True, False]]]))
        tensor([[[ True,  True, False]]])
    """
    a = _as_bool_masks(attention, "attention")
    s = _as_bool_masks(sam2, "sam2")
    check_shape(s, "T H W", "sam2", dims=dict(zip("THW", a.shape)))
    return a | s


def propagate_parity_split(
    predictor: VideoPredictor,
    inference_state: dict[str, Any],
    masks: Tensor,
    *,
    progress: bool = False,
) -> Tensor:
    """The official parity-split propagation (``refine_motion_mask_w_sam2``, optimizer.py l.295-339).

    Pass 1 prompts (``add_new_mask``, object id 1) every odd frame and keeps the even frames of a forward
    ``propagate_in_video(start_frame_idx=0)``; pass 2 prompts the even frames and keeps the odd ones; both on the
    same ``inference_state``, each after ``reset_state``. A pixel is dynamic when its logit is ``> 0``.

    Args:
        predictor: anything with SAM2's video-predictor API (:class:`VideoPredictor`).
        inference_state: the predictor's state for the ``T`` frames (:func:`init_inference_state`).
        masks: ``(T, H, W)`` bool prompts (the attention masks), ``T >= 2``.
        progress: a tqdm bar over the ``2 T`` propagated frames.

    Returns:
        ``(T, H, W)`` bool SAM2 masks on CPU.

    Raises:
        Easi3RInputError: bad ``masks`` (shape, dtype, fewer than 2 frames).
        Easi3RRuntimeError: the predictor skipped a frame or returned logits of another shape.
    """
    dims = check_shape(masks, "T H W", "masks")
    check_dtype(masks, (torch.bool,), "masks")
    n = dims["T"]
    if n < 2:
        raise Easi3RInputError(f"SAM2 refinement needs at least 2 frames (odd and even prompts), got {n}")
    out: list[Tensor | None] = [None] * n
    bar = tqdm(total=2 * n, desc="SAM2 refine", unit="frame", disable=not progress, leave=False)
    for prompted in (1, 0):  # odd prompts -> even predictions, then even prompts -> odd predictions
        predictor.reset_state(inference_state)
        for idx in range(prompted, n, 2):
            predictor.add_new_mask(inference_state, frame_idx=idx, obj_id=_OBJ_ID, mask=masks[idx])
        for frame_idx, obj_ids, logits in predictor.propagate_in_video(inference_state, start_frame_idx=0):
            bar.update(1)
            if frame_idx % 2 == prompted:
                continue
            obj = list(obj_ids).index(_OBJ_ID)
            pred = logits[obj]
            if tuple(pred.shape) != (1, dims["H"], dims["W"]):
                raise Easi3RRuntimeError(
                    f"SAM2 returned logits of shape {tuple(pred.shape)} for frame {frame_idx}, "
                    f"expected (1, {dims['H']}, {dims['W']})"
                )
            out[frame_idx] = (pred[0] > 0.0).cpu()
    bar.close()
    missing = [i for i, m in enumerate(out) if m is None]
    if missing:
        raise Easi3RRuntimeError(f"SAM2 propagation returned no mask for frame(s) {missing}")
    return torch.stack([m for m in out if m is not None])


def sam2_frames(images: Tensor | np.ndarray, image_size: int, device: str | torch.device = "cpu") -> Tensor:
    """The frames as the official code hands them to SAM2: ``(T, 3, S, S)`` float32, ImageNet-normalised.

    The official input is ``rgb(network input)`` = ``((u8 / 255 - 0.5) / 0.5) * 0.5 + 0.5`` clipped to
    ``[0, 1]`` (``dust3r/utils/image.py::rgb``), on the SAM2 device, then the vendored
    ``sam2/utils/misc.py::load_video_frames`` (l.219-232): bicubic resize to ``S x S`` (``align_corners=False``,
    no antialias), minus ``IMAGENET_MEAN``, over ``IMAGENET_STD``. The same float32 operations are done here.

    Args:
        images: ``(T, H, W, 3)`` uint8 processed RGB frames.
        image_size: SAM2's square input size ``S`` in pixels (``predictor.image_size``, 1024 for SAM2.1).
        device: where to compute and return the frames.

    Returns:
        ``(T, 3, S, S)`` float32 on ``device``.

    Example:
        >>> x = sam2_frames(np.full((1, 4, 6, 3), 255, np.uint8), 8)
        >>> x.shape, round(float(x[0, 0, 3, 3]), 4)  # (1 - 0.485) / 0.229
        (torch.Size([1, 3, 8, 8]), 2.2489)
    """
    u8 = images.detach().cpu() if isinstance(images, Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    check_shape(u8, "T H W 3", "images")
    check_dtype(u8, (torch.uint8,), "images")
    if not isinstance(image_size, int) or image_size < 1:
        raise Easi3RInputError(f"image_size must be a positive int, got {image_size!r}")
    net = (u8.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5  # the network input (ToTensor + Normalize)
    rgb01 = (net * 0.5 + 0.5).clip(0.0, 1.0).to(device)
    x = F.interpolate(rgb01, size=(image_size, image_size), mode="bicubic", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device)[:, None, None]
    return (x - mean) / std


def init_inference_state(predictor: VideoPredictor, frames: Tensor, height: int, width: int) -> dict[str, Any]:
    """A SAM2 inference state over ``frames`` built with the package's own ``init_state``.

    The PyPI package reads frames only from JPEG folders (lossy) or MP4 files. The state is initialised on ``T``
    one-pixel placeholder JPEGs (kept on CPU) and then given the real frames: ``images``, the video size (SAM2
    upsamples its logits to it) and an emptied feature cache (``init_state`` cached the placeholder's frame-0
    features). Everything else is exactly what ``init_state`` builds.

    Args:
        predictor: a SAM2 video predictor.
        frames: ``(T, 3, S, S)`` float32 :func:`sam2_frames` output, on the predictor's device.
        height, width: the video frame size in pixels (the output mask size).

    Returns:
        The inference state (a dict, SAM2's format).
    """
    n = check_shape(frames, "T 3 S S", "frames", dims={"S": int(predictor.image_size)})["T"]
    with tempfile.TemporaryDirectory(prefix="easi3r-sam2-") as folder:
        placeholder = Image.new("RGB", (1, 1))
        for i in range(n):
            placeholder.save(os.path.join(folder, f"{i}.jpg"))
        state = predictor.init_state(video_path=folder, offload_video_to_cpu=True)
    missing = [k for k in ("images", "num_frames", "video_height", "video_width", "cached_features") if k not in state]
    if missing or state["num_frames"] != n:
        raise Easi3RRuntimeError(f"unsupported sam2 version: its inference state lacks {missing or ['num_frames']}")
    state["images"] = frames
    state["video_height"], state["video_width"] = int(height), int(width)
    state["cached_features"] = {}
    return state


def resolve_sam2_weights(spec: str = DEFAULT_SAM2, config_name: str | None = None) -> tuple[str, Path]:
    """``(config name, local checkpoint path)`` of a SAM2 weights spec: a local ``.pt`` file or a hub id.

    A hub id (:data:`SAM2_WEIGHTS`) is fetched with ``huggingface_hub.hf_hub_download``, so the hub cache,
    ``HF_HOME`` and ``HF_HUB_OFFLINE`` are honoured. A local file's config is ``config_name``, else the one of the
    hub entry with that file name (``sam2.1_hiera_tiny.pt`` -> ``configs/sam2.1/sam2.1_hiera_t.yaml``), else the
    official large config.

    Args:
        spec: local path or hub id (default: the official ``sam2.1_hiera_large.pt``).
        config_name: SAM2 config (package-relative, e.g. ``configs/sam2.1/sam2.1_hiera_l.yaml``) to override the
            inferred one.

    Raises:
        Easi3RInputError: a missing file, or a spec that is neither a file nor a known hub id.
        Easi3RRuntimeError: the weights are neither cached nor downloadable (offline, network); the message names
            the file to place.
    """
    if not isinstance(spec, (str, os.PathLike)) or not str(spec):
        raise Easi3RInputError(f"sam2 weights must be a local .pt path or a hub id, got {spec!r}")
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        by_file = {name: cfg for cfg, name in SAM2_WEIGHTS.values()}
        return config_name or by_file.get(path.name, OFFICIAL_CONFIG), path
    if spec not in SAM2_WEIGHTS:
        if path.suffix in (".pt", ".pth") or path.parent != Path("."):
            raise Easi3RInputError(f"SAM2 checkpoint not found: {spec}")
        raise Easi3RInputError(f"unknown SAM2 weights {spec!r}: give a local .pt file or one of {sorted(SAM2_WEIGHTS)}")
    config, filename = SAM2_WEIGHTS[spec]
    from huggingface_hub import hf_hub_download

    try:
        local = hf_hub_download(repo_id=spec, filename=filename)
    except Exception as err:  # the hub raises many types (offline, 404, network, auth)
        raise Easi3RRuntimeError(
            f"SAM2 weights {filename} of {spec} are not in the Hugging Face cache and could not be downloaded "
            f"({type(err).__name__}: {first_line(err)}); download them or pass --sam2 /path/to/{filename}"
        ) from None
    return config_name or config, Path(local)


class SAM2VideoRefiner:
    """A SAM2 video predictor and the official refinement of attention masks with it.

    Args:
        predictor: a loaded ``SAM2VideoPredictor`` (or anything with its API, :class:`VideoPredictor`).
        device: where the frames are prepared; default: the predictor's device.

    Example:
        >>> refiner = SAM2VideoRefiner.from_pretrained()  # doctest: +SKIP
        >>> out = refiner.refine(frames.rgb, attention_masks)  # doctest: +SKIP
        >>> out.sam2, out.union  # (T, H, W) bool each  # doctest: +SKIP
    """

    def __init__(self, predictor: VideoPredictor, *, device: str | torch.device | None = None) -> None:
        self.predictor = predictor
        default = getattr(predictor, "device", "cpu")
        self.device = resolve_device(device if device is not None else str(default))

    @classmethod
    def from_pretrained(
        cls,
        weights: str | None = DEFAULT_SAM2,
        *,
        config_name: str | None = None,
        device: str | torch.device | None = None,
        hydra_overrides: Sequence[str] = (),
    ) -> SAM2VideoRefiner:
        """Build the SAM2 video predictor (``build_sam2_video_predictor``, ``apply_postprocessing=True``).

        Args:
            weights: local ``.pt`` path or hub id (:func:`resolve_sam2_weights`); ``None`` builds a **randomly
                initialised** model from ``config_name`` (default :data:`TINY_CONFIG`; tests only).
            config_name: the SAM2 config, overriding the one inferred from ``weights``.
            device: ``None``: CUDA when available.
            hydra_overrides: extra hydra overrides for the config (e.g. ``"++model.image_size=256"`` in tests).

        Raises:
            MissingDependencyError: ``sam2`` is not installed.
            Easi3RInputError / Easi3RRuntimeError: see :func:`resolve_sam2_weights`.
            CheckpointError: the checkpoint cannot be read or does not match the config.
        """
        build = _import_sam2()
        dev = resolve_device(device)
        if weights is None:
            config, ckpt = config_name or TINY_CONFIG, None
        else:
            config, path = resolve_sam2_weights(weights, config_name)
            ckpt = str(path)
        try:
            predictor = build.build_sam2_video_predictor(
                config, ckpt_path=ckpt, device=str(dev), hydra_overrides_extra=list(hydra_overrides)
            )
        except Exception as err:  # hydra, torch.load and load_state_dict raise many types
            what = f"checkpoint {ckpt} with config {config}" if ckpt else f"config {config}"
            raise CheckpointError(f"cannot build SAM2 from {what}: {type(err).__name__}: {first_line(err)}") from None
        return cls(predictor, device=dev)

    def refine(self, images: Tensor | np.ndarray, masks: Tensor | np.ndarray, *, progress: bool = True) -> RefinedMasks:
        """SAM2 masks from the attention masks, and their union (``refine_motion_mask_w_sam2``).

        Args:
            images: ``(T, H, W, 3)`` uint8 processed RGB frames (``Frames.rgb``).
            masks: ``(T, H, W)`` bool attention masks, ``T >= 2``.
            progress: a tqdm bar over the propagation.

        Returns:
            :class:`RefinedMasks` (``sam2`` and ``union``, ``(T, H, W)`` bool on CPU).

        Raises:
            Easi3RInputError: shapes or dtypes do not match (checked before SAM2 runs).
        """
        m = _as_bool_masks(masks, "masks")
        t, h, w = m.shape
        if t < 2:
            raise Easi3RInputError(f"SAM2 refinement needs at least 2 frames (odd and even prompts), got {t}")
        u8 = images if isinstance(images, Tensor) else np.asarray(images)
        check_shape(u8, "T H W 3", "images", dims={"T": t, "H": h, "W": w})
        check_dtype(u8, (torch.uint8, np.dtype(np.uint8)), "images")
        dev = self.device
        # bfloat16 autocast as the official on CUDA; the PyPI sam2 needs it on CPU too (bf16 memory features).
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            frames = sam2_frames(u8, int(self.predictor.image_size), dev)
            state = init_inference_state(self.predictor, frames, h, w)
            sam2 = propagate_parity_split(self.predictor, state, m.to(dev), progress=progress)
        del state, frames
        return RefinedMasks(sam2=sam2, union=m | sam2)
