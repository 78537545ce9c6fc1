"""Optical-flow term of the global alignment (MonST3R's flow loss, used by Easi3R's second pass).

For every edge ``(i, j)`` (frame ``i`` = view 1, frame ``j`` = view 2) the flow **induced** by the current depth of
view 1, the two camera poses and the intrinsics (:func:`induced_flow`) is compared with an **observed** optical flow
from view 1 to view 2 by a smooth-L1 penalty restricted to static pixels (:func:`masked_smooth_l1`); both directions
are used (MonST3R's flow loss, official ``dust3r/cloud_opt/optimizer.py``, ``PointCloudOptimizer.forward``).

Observed flow comes from a :class:`FlowProvider`: any callable ``(img_a, img_b) -> flow`` taking two
``(H, W, 3)`` uint8 RGB frames and returning an ``(H, W, 2)`` float32 flow in pixels from ``img_a`` to ``img_b``
(``img_a[y, x]`` moves to ``img_b[y + v, x + u]``). The built-in default is OpenCV's DIS (:class:`DISFlow`, CPU,
no weights). The official code uses the learned SEA-RAFT; to use such a model, wrap it as a provider, e.g.::

    class RAFTFlow:
        def __init__(self, model, device="cuda", iters=20):
            self.model, self.device, self.iters = model.eval().to(device), device, iters

        @torch.no_grad()
        def __call__(self, img_a, img_b):
            to_t = lambda im: torch.from_numpy(im).permute(2, 0, 1)[None].float().to(self.device)  # 0..255
            flow = self.model(to_t(img_a), to_t(img_b), iters=self.iters, test_mode=True)[-1]  # (1, 2, H, W)
            return flow[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)

and pass ``flow_provider=RAFTFlow(model)`` to :func:`easi3r.align.global_align`. Pairs are evaluated one at a
time; a provider that batches internally can cache on its own.

Built-in providers by name (:func:`make_flow_provider`): ``"dis"`` (default, OpenCV, weight-free) and ``"raft"`` /
``"raft_small"``: torchvision's RAFT (``torchvision.models.optical_flow.raft_large`` / ``raft_small`` with their
``DEFAULT`` weights: ``C_T_SKHT_V2`` / ``C_T_V2``), the architecture SEA-RAFT (the official flow model) builds on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlparse

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_dtype, check_finite, check_shape
from ..errors import CheckpointError, Easi3RInputError, Easi3RRuntimeError
from .geometry import pixel_grid

__all__ = [
    "FLOW_MODELS",
    "DISFlow",
    "FlowModel",
    "FlowProvider",
    "RAFTFlow",
    "compute_edge_flows",
    "induced_flow",
    "make_flow_provider",
    "masked_smooth_l1",
]

#: Names accepted by :func:`make_flow_provider`.
FlowModel = Literal["dis", "raft", "raft_small"]
FLOW_MODELS: tuple[str, ...] = ("dis", "raft", "raft_small")


@runtime_checkable
class FlowProvider(Protocol):
    """``(img_a (H, W, 3) uint8, img_b (H, W, 3) uint8) -> (H, W, 2) float32`` flow from a to b, in pixels."""

    def __call__(self, img_a: np.ndarray, img_b: np.ndarray) -> np.ndarray: ...


class DISFlow:
    """Dense inverse-search optical flow (OpenCV ``DISOpticalFlow``) on grayscale frames.

    Args:
        preset: ``cv2.DISOPTICAL_FLOW_PRESET_{ULTRAFAST,FAST,MEDIUM}``.
    """

    def __init__(self, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> None:
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(preset)  # type: ignore[attr-defined]  # missing from OpenCV's stubs

    def __call__(self, img_a: np.ndarray, img_b: np.ndarray) -> np.ndarray:
        gray_a = cv2.cvtColor(np.ascontiguousarray(img_a), cv2.COLOR_RGB2GRAY)
        gray_b = cv2.cvtColor(np.ascontiguousarray(img_b), cv2.COLOR_RGB2GRAY)
        flow: np.ndarray = self._dis.calc(gray_a, gray_b, None).astype(np.float32, copy=False)
        return flow

    def __repr__(self) -> str:
        return f"DISFlow(preset={self.preset})"


class RAFTFlow:
    """torchvision's RAFT as a :class:`FlowProvider` (``raft_large`` for ``"raft"``, ``raft_small``).

    Frames are scaled to ``[-1, 1]`` (the weights' ``transforms()``), padded by edge replication to a multiple of 8
    (RAFT's feature stride) and the last of the ``num_flow_updates`` refinements is returned, cropped back.

    Args:
        variant: ``"raft"`` (large) or ``"raft_small"``.
        weights: a local state-dict file (``.pth``); None uses torchvision's ``DEFAULT`` pretrained weights from
            the torch hub cache (``<torch.hub.get_dir()>/checkpoints/<file>``), downloaded there when online.
        device: where RAFT runs.
        num_flow_updates: recurrent refinement steps (torchvision's default 12).

    Raises:
        Easi3RRuntimeError: torchvision missing or unusable with this torch, or no weights (offline without the
            cached file: the message names the file to place).
        CheckpointError: a local weights file that cannot be loaded into the model.
    """

    def __init__(
        self,
        variant: Literal["raft", "raft_small"] = "raft",
        *,
        weights: str | Path | None = None,
        device: torch.device | str = "cpu",
        num_flow_updates: int = 12,
    ) -> None:
        try:
            from torchvision.models import optical_flow as tv_flow  # type: ignore[import-not-found,unused-ignore]
        except Exception as err:  # ImportError, or a torchvision built for another torch (missing operators)
            raise Easi3RRuntimeError(
                f"the RAFT flow provider needs torchvision matching torch {torch.__version__} "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): pip install easi3r[raft]"
            ) from None
        build, enum = (
            (tv_flow.raft_large, tv_flow.Raft_Large_Weights)
            if variant == "raft"
            else (tv_flow.raft_small, tv_flow.Raft_Small_Weights)
        )
        pretrained = enum.DEFAULT
        model = build(weights=None, progress=False)
        model.load_state_dict(_raft_state_dict(pretrained, weights))
        self.variant, self.device, self.num_flow_updates = variant, torch.device(device), int(num_flow_updates)
        self.model = model.eval().to(self.device)

    @torch.no_grad()
    def __call__(self, img_a: np.ndarray, img_b: np.ndarray) -> np.ndarray:
        h, w = img_a.shape[:2]
        pad = (0, (-w) % 8, 0, (-h) % 8)

        def prepare(img: np.ndarray) -> Tensor:
            x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(self.device, torch.float32)
            return F.pad(x / 127.5 - 1.0, pad, mode="replicate")

        flows = self.model(prepare(img_a), prepare(img_b), num_flow_updates=self.num_flow_updates)
        flow: np.ndarray = flows[-1][0, :, :h, :w].permute(1, 2, 0).float().cpu().numpy()
        return flow

    def __repr__(self) -> str:
        return f"RAFTFlow(variant={self.variant!r}, device={str(self.device)!r})"


def _raft_state_dict(pretrained: Any, weights: str | Path | None) -> dict[str, Tensor]:
    """State dict of a local file, or of torchvision's pretrained weights (hub cache, else download)."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise Easi3RInputError(f"RAFT weights file not found: {path}")
        try:
            state: dict[str, Tensor] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"cannot read RAFT weights {path}: {str(err).splitlines()[0]}") from None
        return state
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(pretrained.url).path).name
    try:
        loaded: dict[str, Tensor] = pretrained.get_state_dict(progress=False)
    except Exception:  # offline: urllib errors, or a partial download
        raise Easi3RRuntimeError(
            f"RAFT weights unavailable offline: place {pretrained.url.rsplit('/', 1)[-1]} at {cached} "
            "(or pass weights=<local .pth>)"
        ) from None
    return loaded


def make_flow_provider(
    name: str = "dis", *, weights: str | Path | None = None, device: torch.device | str = "cpu"
) -> FlowProvider:
    """The built-in observed-flow provider called ``name`` (:data:`FLOW_MODELS`).

    Args:
        name: ``"dis"`` (OpenCV DIS, CPU, no weights; the default), ``"raft"`` (torchvision ``raft_large``) or
            ``"raft_small"``.
        weights: RAFT only: a local state-dict file (default: torchvision's cached pretrained weights).
        device: RAFT only: where it runs.

    Raises:
        Easi3RInputError: an unknown name, or weights given for ``"dis"``.
        Easi3RRuntimeError: RAFT without a usable torchvision or without weights (see :class:`RAFTFlow`).

    Example:
        >>> make_flow_provider("dis")
        DISFlow(preset=2)
    """
    if name not in FLOW_MODELS:
        raise Easi3RInputError(f"flow_model must be one of {', '.join(FLOW_MODELS)}, got {name!r}")
    if name == "dis":
        if weights is not None:
            raise Easi3RInputError("the 'dis' flow provider takes no weights")
        return DISFlow()
    return RAFTFlow("raft" if name == "raft" else "raft_small", weights=weights, device=device)


def _as_uint8_frames(images: np.ndarray | Tensor) -> np.ndarray:
    arr = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    check_shape(arr, "T H W 3", "images")
    check_dtype(arr, (np.dtype(np.uint8),), "images")
    return arr


def compute_edge_flows(
    images: np.ndarray | Tensor,
    edges: Tensor,
    provider: FlowProvider,
    *,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Observed flows of every edge in both directions.

    Each ordered frame pair is computed once: the swapped edge ``(j, i)`` reuses the flows of ``(i, j)``.

    Args:
        images: ``(T, H, W, 3)`` uint8 RGB frames (numpy or torch).
        edges: ``(P, 2)`` int64 ``(i, j)``: frame of view 1 and of view 2.
        provider: a :class:`FlowProvider`.
        device: where the result goes (default: ``edges``' device).

    Returns:
        ``flow_12, flow_21``: ``(P, 2, H, W)`` float32 flows in pixels, from view 1 to view 2 and back.

    Raises:
        Easi3RInputError: bad frames, edges beyond the frames, or a provider output of the wrong shape or not finite.
    """
    frames = _as_uint8_frames(images)
    n, h, w, _ = frames.shape
    check_shape(edges, "P 2", "edges")
    edge_list = [(int(i), int(j)) for i, j in edges.tolist()]
    if edge_list and max(max(e) for e in edge_list) >= n:
        raise Easi3RInputError(f"edges index frame {max(max(e) for e in edge_list)} but images has {n} frames")
    cache: dict[tuple[int, int], np.ndarray] = {}

    def flow(a: int, b: int) -> np.ndarray:
        if (a, b) not in cache:
            out = np.asarray(provider(frames[a], frames[b]))
            name = f"the flow provider's output for frames ({a}, {b})"
            check_shape(out, "H W 2", name, dims={"H": h, "W": w})
            check_finite(out, name)
            cache[(a, b)] = out.astype(np.float32, copy=False)
        return cache[(a, b)]

    fwd = np.stack([flow(i, j) for i, j in edge_list]) if edge_list else np.zeros((0, h, w, 2), np.float32)
    bwd = np.stack([flow(j, i) for i, j in edge_list]) if edge_list else np.zeros((0, h, w, 2), np.float32)
    dev = edges.device if device is None else device

    def to_tensor(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous().to(dev)

    return to_tensor(fwd), to_tensor(bwd)


def induced_flow(
    depth_src: Tensor,
    cam2world_src: Tensor,
    cam2world_dst: Tensor,
    K_src_inv: Tensor,
    K_dst: Tensor,
) -> Tensor:
    """Flow that a static scene with the given depth would produce between two cameras (ego-motion flow).

    ``h = K_dst R_rel K_src^-1 [x, y, 1]^T + disp K_dst t_rel`` with ``R_rel = R_dst^T R_src``,
    ``t_rel = R_dst^T (t_src - t_dst)``, ``disp = 1 / (depth + 1e-6)``; flow ``= h_xy / (h_z + 1e-6) - (x, y)``.

    Args:
        depth_src: ``(B, H, W)`` z-depth of the source frame.
        cam2world_src, cam2world_dst: ``(B, 4, 4)``.
        K_src_inv: ``(B, 3, 3)`` inverse intrinsics of the source; ``K_dst``: ``(B, 3, 3)`` target intrinsics.

    Returns:
        ``(B, 2, H, W)`` flow in pixels from source to target.
    """
    b, h, w = depth_src.shape
    pixels = pixel_grid(h, w, device=depth_src.device, dtype=depth_src.dtype).reshape(h * w, 2).T  # (2, H*W)
    coords = torch.cat((pixels, pixels.new_ones(1, h * w)))[None]  # homogeneous (1, 3, H*W)
    R_src, t_src = cam2world_src[:, :3, :3], cam2world_src[:, :3, 3:]
    R_dst, t_dst = cam2world_dst[:, :3, :3], cam2world_dst[:, :3, 3:]
    R_rel = R_dst.transpose(1, 2) @ R_src
    t_rel = R_dst.transpose(1, 2) @ (t_src - t_dst)
    disp = 1.0 / (depth_src.reshape(b, 1, h * w) + 1e-6)
    hom = K_dst @ (R_rel @ (K_src_inv @ coords)) + (K_dst @ t_rel) * disp
    warped = hom[:, :2] / (hom[:, 2:3] + 1e-6)
    return (warped - coords[:, :2]).reshape(b, 2, h, w)


def masked_smooth_l1(estimate: Tensor, target: Tensor, valid: Tensor, pixel_threshold: float = 50.0) -> Tensor:
    """Smooth-L1 (beta 1) averaged over the valid elements whose loss is below ``pixel_threshold``.

    ``l = smooth_l1(estimate * m, target * m)`` elementwise; kept where ``m`` and ``l < pixel_threshold``;
    result ``sum(l * keep) / (sum(keep) + 1e-6)`` (both flow components counted, one average over the batch).

    Args:
        estimate, target: ``(B, 2, H, W)`` flows in pixels.
        valid: ``(B, 1, H, W)`` bool, pixels that take part (static pixels).
        pixel_threshold: per-element cut-off in pixels (official ``pxl_thre = 50``).

    Returns:
        ``()`` tensor.
    """
    total, count = masked_smooth_l1_parts(estimate, target, valid, pixel_threshold)
    return total / (count + 1e-6)


def masked_smooth_l1_parts(
    estimate: Tensor, target: Tensor, valid: Tensor, pixel_threshold: float = 50.0
) -> tuple[Tensor, Tensor]:
    """Numerator and denominator of :func:`masked_smooth_l1`: the sum of the kept smooth-L1 terms and their number
    (``()`` tensors; the count carries no gradient). Sums over disjoint sets of pairs add up, which is how the
    data-parallel alignment combines them across processes."""
    m = valid.to(estimate.dtype)
    loss = F.smooth_l1_loss(estimate * m, target * m, reduction="none", beta=1.0)
    keep_f = ((loss < pixel_threshold) & valid).to(loss.dtype)
    return (loss * keep_f).sum(), keep_f.sum()
