"""The optimisation loop and the :func:`global_align` entry point.

Adam (betas 0.9/0.9) over depth, poses, focal and pairwise poses (pinned quantities excluded), with the learning
rate annealed from ``lr`` to ``lr_min`` (linear, as the official demo, or cosine) and a tqdm bar showing the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._checks import check_shape
from ..config import AlignConfig
from ..errors import Easi3RInputError, Easi3RRuntimeError
from .flow import DISFlow, FlowProvider, compute_edge_flows
from .model import KnownMode, PointmapAligner
from .mst import MSTEdge, MSTInit

__all__ = ["Alignment", "global_align", "learning_rate", "run_optimisation"]


@dataclass
class Alignment:
    """Result of :func:`global_align`; tensors on the inputs' device, float32.

    Attributes:
        cam2world: ``(T, 4, 4)`` camera-to-world poses (OpenCV camera axes).
        focals: ``(T,)`` focal lengths in pixels. ``principal_points``: ``(T, 2)`` in pixels.
        intrinsics: ``(T, 3, 3)``.
        depths: ``(T, H, W)`` z-depth. ``points``: ``(T, H, W, 3)`` world points.
        confidence: ``(T, H, W)`` per-frame max raw confidence over both roles (``im_conf``).
        pw_poses: ``(P, 4, 4)`` scaled pairwise similarities. ``pw_scale``: ``(P,)``.
        loss: loss of the last iteration, before its step (what the reference returns); the initial loss when
            ``iterations == 0``.
        init_loss: loss right after the MST initialisation (all terms active).
        mst_log: the spanning-tree walk (root first). ``pnp_frames``: frames posed by RANSAC-PnP.
    """

    cam2world: Tensor
    focals: Tensor
    principal_points: Tensor
    intrinsics: Tensor
    depths: Tensor
    points: Tensor
    confidence: Tensor
    pw_poses: Tensor
    pw_scale: Tensor
    loss: float
    init_loss: float
    mst_log: list[MSTEdge] = field(default_factory=list)
    pnp_frames: list[int] = field(default_factory=list)

    @classmethod
    @torch.no_grad()
    def from_aligner(
        cls,
        aligner: PointmapAligner,
        *,
        loss: float,
        init_loss: float,
        mst: MSTInit,
        pw_poses: Tensor | None = None,
        pw_scale: Tensor | None = None,
    ) -> Alignment:
        """The result of an optimised aligner (per-edge ``pw_poses`` / ``pw_scale`` from it unless given)."""
        return cls(
            cam2world=aligner.get_cam2world().detach().clone(),
            focals=aligner.get_focals().detach().clone(),
            principal_points=aligner.get_principal_points().detach().clone(),
            intrinsics=aligner.get_intrinsics().detach(),
            depths=aligner.get_depthmaps().detach(),
            points=aligner.get_pts3d().detach(),
            confidence=aligner.get_conf().detach().clone(),
            pw_poses=aligner.get_pw_poses().detach() if pw_poses is None else pw_poses,
            pw_scale=aligner.get_pw_scale().detach() if pw_scale is None else pw_scale,
            loss=loss,
            init_loss=init_loss,
            mst_log=list(mst.log),
            pnp_frames=list(mst.pnp_frames),
        )


def learning_rate(iteration: int, iterations: int, lr: float, lr_min: float, schedule: str = "linear") -> float:
    """Learning rate of step ``iteration`` (``t = iteration / iterations``).

    linear: ``lr + (lr_min - lr) t``; cosine: ``lr_min + (lr - lr_min) (1 + cos(pi t)) / 2``.
    """
    t = iteration / iterations
    if schedule == "linear":
        return lr + (lr_min - lr) * t
    if schedule == "cosine":
        return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * t)) / 2
    raise Easi3RInputError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")


def run_optimisation(
    aligner: PointmapAligner,
    config: AlignConfig | None = None,
    *,
    progress: bool = True,
) -> float:
    """Run ``config.iterations`` Adam steps on an initialised aligner; return the last iteration's loss.

    The returned value is the loss computed at the last iteration, before its parameter update (as the
    reference's ``compute_global_alignment``); ``nan`` when there is nothing to optimise or no iteration.

    Raises:
        Easi3RRuntimeError: the loss became non-finite (the optimisation diverged on degenerate geometry); the
            message names the iteration.
    """
    cfg = aligner.config if config is None else config
    params = [p for p in aligner.parameters() if p.requires_grad]
    if not params or cfg.iterations == 0:
        return float("nan")
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.9), eps=1e-8)
    loss_value = float("nan")
    with (
        torch.autocast(device_type=aligner.grid.device.type, enabled=False),
        tqdm(range(cfg.iterations), desc="global alignment", disable=not progress, leave=False) as bar,
    ):
        for it in bar:
            lr = learning_rate(it, cfg.iterations, cfg.lr, cfg.lr_min, cfg.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad()
            loss = aligner(it)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise Easi3RRuntimeError(
                    f"global alignment diverged: the loss is {loss_value} at iteration {it} of {cfg.iterations} "
                    "(degenerate geometry)"
                )
            loss.backward()
            optimizer.step()
            bar.set_postfix_str(f"lr={lr:.2e} loss={loss_value:.5g}")
    return loss_value


def _check_final_state(aligner: PointmapAligner) -> None:
    """Raise one :class:`Easi3RRuntimeError` naming the quantity and frames when the optimised cameras, focals or
    depths are not finite (or a focal / depth is not positive)."""
    checks = (
        ("camera pose", aligner.get_cam2world().flatten(1), False),
        ("focal", aligner.get_focals()[:, None], True),
        ("depth", aligner.get_depthmaps().flatten(1), True),
    )
    for name, values, positive in checks:
        bad_values = ~torch.isfinite(values) | (
            (values <= 0) if positive else torch.zeros_like(values, dtype=torch.bool)
        )
        bad = bad_values.any(dim=1).nonzero().flatten().tolist()
        if bad:
            kind = "non-finite or non-positive" if positive else "non-finite"
            raise Easi3RRuntimeError(f"global alignment degenerated: {kind} {name} for frame(s) {bad}")


def attach_flow(
    aligner: PointmapAligner,
    images: np.ndarray | Tensor | None,
    masks: Tensor | None,
    flow_provider: FlowProvider | None,
) -> None:
    """Check ``masks`` and, when the config's flow weight is > 0, compute every edge's observed flow on
    ``images`` (``(T, H, W, 3)`` uint8) and attach the flow term to ``aligner`` (official flow loss, from
    ``iterations * flow_start`` on).

    Raises:
        Easi3RInputError: masks or images of the wrong shape, or no images while the flow term is on.
    """
    cfg = aligner.config
    dims = {"T": aligner.n_frames, "H": aligner.height, "W": aligner.width}
    if masks is not None:
        check_shape(masks, "T H W", "masks", dims=dims)
    if cfg.flow_weight > 0:
        if images is None:
            raise Easi3RInputError("images are required when config.flow_weight > 0 (set flow_weight=0 to skip)")
        check_shape(images, "T H W 3", "images", dims=dims)
        provider = DISFlow() if flow_provider is None else flow_provider
        flow_12, flow_21 = compute_edge_flows(images, aligner.edges, provider, device=aligner.grid.device)
        aligner.set_flow(flow_12, flow_21, masks, start_iteration=cfg.iterations * cfg.flow_start)


def global_align(
    edges: Tensor,
    pts_1: Tensor,
    pts_2: Tensor,
    conf_1: Tensor,
    conf_2: Tensor,
    *,
    config: AlignConfig | None = None,
    images: np.ndarray | Tensor | None = None,
    masks: Tensor | None = None,
    flow_provider: FlowProvider | None = None,
    known_focal: float | Tensor | None = None,
    known_poses: Tensor | None = None,
    known_mode: KnownMode = "pin",
    metric: bool = False,
    progress: bool = True,
    n_frames: int | None = None,
) -> Alignment:
    """Globally align pairwise pointmaps into one world: cameras, intrinsics and per-frame depth.

    Reproduces the official Easi3R/MonST3R ``PointCloudOptimizer`` (batchify mode; official
    ``dust3r/cloud_opt/base_opt.py`` ``BasePCOptimizer.compute_global_alignment``): MST initialisation, then
    Adam on the log-confidence weighted point distance, plus the optical-flow term (static pixels only) when
    ``config.flow_weight > 0`` and the temporal smoothness term when its weight is > 0.

    Args:
        edges: ``(P, 2)`` int64; row ``e = (i, j)``: frame of view 1 and of view 2.
        pts_1: ``(P, H, W, 3)`` float32 view-1 pointmap in view 1's camera frame.
        pts_2: ``(P, H, W, 3)`` float32 view-2 pointmap in view 1's camera frame.
        conf_1, conf_2: ``(P, H, W)`` raw confidences (>= 1) of view 1 / view 2.
        config: alignment settings (defaults: the official demo's pass 2).
        images: ``(T, H, W, 3)`` uint8 RGB frames; needed only by the flow term.
        masks: ``(T, H, W)`` bool dynamic masks, excluded from the flow term (None: every pixel static).
        flow_provider: observed-flow source (default :class:`~easi3r.align.flow.DISFlow`).
        known_focal: known focal(s) in pixels: scalar or ``(T,)``.
        known_poses: ``(T, 4, 4)`` known cam-to-world (the pairwise scales are then not normalised: the known
            poses fix the world scale).
        known_mode: ``"pin"`` (default): the known focal / poses are fixed and returned exactly; ``"init"``: they
            initialise the optimisation, which then moves them (see :class:`~easi3r.align.PointmapAligner`).
        metric: the pointmaps are metric (a metric backbone): the world keeps their units (pairwise scales
            anchored at geometric mean 1 instead of ``config.base_scale``).
        progress: show a tqdm bar with the loss.
        n_frames: ``T``, checked against the edges (default ``edges.max() + 1``; every frame must be in an edge).

    Returns:
        :class:`Alignment`.

    Degenerate geometry (e.g. textureless or identical frames through a weak network) is detected: a zero,
    non-finite or implausible focal estimate falls back to the default focal ``max(H, W)`` and a frame PnP cannot
    pose starts at the identity, each with a ``RuntimeWarning`` naming the frames; an undetermined registration,
    a frame without positive depth, a diverging loss or a non-finite result raises one
    :class:`~easi3r.errors.Easi3RRuntimeError` saying what degenerated.

    Raises:
        Easi3RInputError: inconsistent shapes, fewer than 2 frames, non-finite inputs, a flow term without
            images, mismatching ``known_poses`` / ``known_focal`` / ``masks``.
        Easi3RRuntimeError: degenerate geometry that no fallback recovers (see above).
    """
    cfg = AlignConfig() if config is None else config
    if not isinstance(cfg, AlignConfig):
        raise Easi3RInputError(f"config must be an AlignConfig, got {type(cfg).__name__}")
    # The aligner validates the pairwise inputs (once); the frame count and size below come from it.
    aligner = PointmapAligner(
        edges,
        pts_1,
        pts_2,
        conf_1,
        conf_2,
        config=cfg,
        n_frames=n_frames,
        known_focal=known_focal,
        known_poses=known_poses,
        known_mode=known_mode,
        metric=metric,
    )
    attach_flow(aligner, images, masks, flow_provider)

    mst = aligner.init_mst()
    with torch.no_grad():
        init_loss = float(aligner())
    if not math.isfinite(init_loss):
        raise Easi3RRuntimeError(f"degenerate initialisation: the initial loss is {init_loss}")
    loss = run_optimisation(aligner, cfg, progress=progress)
    if cfg.iterations == 0:
        loss = init_loss

    with torch.no_grad():
        _check_final_state(aligner)
        return Alignment.from_aligner(aligner, loss=loss, init_loss=init_loss, mst=mst)
