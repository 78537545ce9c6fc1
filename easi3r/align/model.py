"""Parameters, decoding and loss of the global alignment (official ``PointCloudOptimizer``, batchify form).

Official counterparts: ``dust3r/cloud_opt/optimizer.py`` ``PointCloudOptimizer`` and its base
``dust3r/cloud_opt/base_opt.py`` ``BasePCOptimizer`` (MonST3R's version, which Easi3R uses, adds the flow and
temporal-smoothness terms).

State (all float32 like the reference, on the inputs' device):

* ``log_depth (T, H*W)``: per-pixel log z-depth of every frame;
* ``pose_params (T, 7)``: camera-to-world as an unnormalised XYZW quaternion + ``signed_log1p`` translation;
* ``focal_params``: ``20 log f``, one shared value ``(1,)`` or one per frame ``(T,)``; principal point fixed at
  ``(W/2, H/2)``;
* ``pw_params (P, 8)``: per-edge similarity (quaternion, ``signed_log1p(t/s)``, ``log s``); the scales are
  normalised so their geometric mean is ``base_scale`` (unless poses are known, which fixes the world scale), or
  1 with a metric backbone (``metric=True``: the world stays in the network's units).

The alignment loss compares, for every edge ``e = (i, j)`` (frame ``i`` = view 1, frame ``j`` = view 2), the world
points of frames ``i`` and ``j`` back-projected from depth with the pairwise pointmaps moved by the edge's
similarity, weighted by ``log(conf)``:
``l_1 = sum_e sum_p log(c_1[e,p]) ||X_i[p] - sigma_e (R_e x_1[e,p] + t_e)|| / (P H W)`` (and ``l_2`` likewise with
view 2's points against frame ``j``'s).
It is evaluated for all edges at once (frames gathered by edge index) by :func:`alignment_residual_sum`, which
streams over pixel blocks and forms the gradient during the forward pass, so an iteration never holds an
``(P, H*W, 3)`` autograd graph: memory is ``O(P H W)`` for the inputs plus ``O(T H W)``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import roma
import torch
from torch import Tensor, nn

from .._checks import check_dtype, check_finite, check_same_device, check_shape
from ..config import AlignConfig
from ..errors import Easi3RInputError, Easi3RRuntimeError
from .flow import induced_flow, masked_smooth_l1
from .geometry import (
    align_poses_sim3,
    decode_poses,
    depth_to_camera_points,
    encode_rotation_translation,
    intrinsics_inverse,
    pixel_grid,
    procrustes,
    signed_log1p,
    sim3_matrix,
    transform_points,
)
from .mst import MSTInit, image_confidence, mst_initialisation

__all__ = ["KnownMode", "PointmapAligner", "alignment_residual_sum", "check_pairwise_inputs", "relative_pose_loss"]

FOCAL_BREAK = 20.0  # focal parametrised as FOCAL_BREAK * log(f), official `focal_break`

#: How known focals / poses are used: ``"pin"`` fixes them (returned exactly), ``"init"`` starts the optimisation
#: from them and lets it move them (official MonST3R ``preset_pose(..., requires_grad=True)``).
KnownMode = Literal["pin", "init"]


class _BlockBuffers:
    """Work tensors of one pixel-block size, allocated once per call and reused by every block.

    Fresh multi-megabyte temporaries per block cost page faults that, on CPU, took longer than the arithmetic.
    """

    def __init__(self, n_edges: int, n_frames: int, width: int, like: Tensor) -> None:
        self.src = like.new_empty(n_edges, 3, width)
        self.frames = like.new_empty(n_frames, 3, width)
        self.resid = like.new_empty(n_edges, 3, width)
        self.tmp = like.new_empty(n_edges, 3, width)
        self.norm = like.new_empty(n_edges, width)
        self.weight = like.new_empty(n_edges, width)


class _ResidualSum(torch.autograd.Function):
    """``sum_e sum_p w[e,p] ||world[idx[e], p] - (M_e[:3,:3] pred[e,p] + M_e[:3,3])||`` with an eager gradient.

    Works channel-first (``(P, 3, n)`` blocks): the per-edge 3x3 product becomes one batched ``(3x3)(3xn)`` GEMM and
    the norm a sum of three contiguous planes, both far cheaper than reductions over a trailing axis of size 3.
    """

    @staticmethod
    def forward(
        ctx: Any,
        world: Tensor,
        transforms: Tensor,
        pred: Tensor,
        weight: Tensor,
        index: Tensor,
        block: int,
        with_grad: bool,
        log_weight: bool,
    ) -> Tensor:
        n_edges, n_pix, _ = pred.shape
        world_cf = world.transpose(1, 2).contiguous()  # (T, 3, N)
        rot = transforms[:, :3, :3].contiguous()
        trans = transforms[:, :3, 3:].contiguous()  # (P, 3, 1)
        total = torch.zeros((), dtype=torch.float64, device=pred.device)
        if with_grad:
            grad_world = torch.zeros_like(world_cf)
            grad_rot = transforms.new_zeros(n_edges, 3, 3)
            grad_trans = transforms.new_zeros(n_edges, 3, 1)
        buffers: dict[int, _BlockBuffers] = {}
        for start in range(0, n_pix, block):
            stop = min(n_pix, start + block)
            width = stop - start
            if width not in buffers:
                buffers[width] = _BlockBuffers(n_edges, world.shape[0], width, pred)
            buf = buffers[width]
            buf.src.copy_(pred[:, start:stop].transpose(1, 2))
            torch.index_select(world_cf[:, :, start:stop], 0, index, out=buf.tmp)
            buf.tmp.sub_(trans)
            torch.baddbmm(buf.tmp, rot, buf.src, alpha=-1, out=buf.resid)  # X - (R p + t)
            torch.sum(torch.square(buf.resid, out=buf.tmp), dim=1, out=buf.norm).sqrt_()
            w = weight[:, start:stop]
            if log_weight:
                w = torch.log(w, out=buf.weight)
            total += torch.dot(buf.norm.reshape(-1), w.reshape(-1)).double()
            if with_grad:
                # d||r||/dr = r/||r||, taken as 0 at r = 0 like torch's norm backward.
                torch.div(w, buf.norm, out=buf.norm).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                buf.resid.mul_(buf.norm[:, None])
                # scatter into a contiguous block first: index_add_ on the strided slice is ~10x slower
                grad_world[:, :, start:stop] = buf.frames.zero_().index_add_(0, index, buf.resid)
                grad_rot.baddbmm_(buf.resid, buf.src.transpose(1, 2))
                grad_trans += buf.resid.sum(dim=2, keepdim=True)
        if with_grad:
            grad_transforms = torch.zeros_like(transforms)
            grad_transforms[:, :3, :3] = -grad_rot
            grad_transforms[:, :3, 3:] = -grad_trans
            ctx.save_for_backward(grad_world.transpose(1, 2), grad_transforms)
        ctx.with_grad = with_grad
        return total.to(pred.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        if not ctx.with_grad:
            # Reached only when pred or weight carries the graph: their gradients are not formed.
            raise Easi3RRuntimeError(
                "alignment_residual_sum is differentiable w.r.t. world and transforms only, not pred or weight"
            )
        grad_world, grad_transforms = ctx.saved_tensors
        return grad_world * grad_out, grad_transforms * grad_out, None, None, None, None, None, None


def alignment_residual_sum(
    world: Tensor,
    transforms: Tensor,
    pred: Tensor,
    weight: Tensor,
    index: Tensor,
    *,
    log_weight: bool = False,
    block: int | None = None,
) -> Tensor:
    """Confidence-weighted point distance summed over all edges and pixels (vectorised over edges).

    Computes ``sum_e sum_p weight[e,p] * || world[index[e], p] - (A_e pred[e,p] + b_e) ||_2`` where
    ``A_e = transforms[e, :3, :3]`` (any 3x3, e.g. a scaled rotation) and ``b_e = transforms[e, :3, 3]``.
    Differentiable w.r.t. ``world`` and ``transforms``; the gradient is accumulated while streaming over pixel
    blocks, so no per-edge intermediate survives the call (no double backward).

    Args:
        world: ``(T, N, 3)`` points per frame (``N`` pixels).
        transforms: ``(P, 4, 4)`` per-edge affine transforms.
        pred: ``(P, N, 3)`` per-edge points. ``weight``: ``(P, N)`` per-pixel weights.
        index: ``(P,)`` int64 frame of each edge.
        log_weight: use ``log(weight)`` as the weight (raw confidences in, the official ``conf='log'``), taken
            block by block so that no ``(P, N)`` log-confidence copy is stored.
        block: pixels per block (all edges at once); default keeps a block near 2^18 edge-pixels (CPU) or
            2^25 (GPU).

    Returns:
        ``()`` tensor in ``pred``'s dtype (accumulated in float64 across blocks).
    """
    n_edges, n_pix = pred.shape[:2]
    if block is None:
        budget = 1 << (25 if pred.device.type == "cuda" else 18)
        block = max(256, budget // max(n_edges, 1))
    with_grad = torch.is_grad_enabled() and (world.requires_grad or transforms.requires_grad)
    total: Tensor = _ResidualSum.apply(  # type: ignore[no-untyped-call]  # torch.autograd.Function.apply is untyped
        world, transforms, pred, weight, index, min(block, n_pix), with_grad, log_weight
    )
    return total


def relative_pose_loss(cam2world: Tensor, translation_weight: float = 1.0) -> Tensor:
    """Temporal smoothness ``sum_t ||R_rel - I||_F + w ||t_rel||`` with ``rel = pose[t]^-1 pose[t+1]``.

    Args:
        cam2world: ``(T, 4, 4)``. translation_weight: weight of the translation part.

    Returns:
        ``()`` tensor.
    """
    rel = torch.linalg.inv(cam2world[:-1]) @ cam2world[1:]
    eye = torch.eye(3, dtype=cam2world.dtype, device=cam2world.device)
    rot = torch.linalg.matrix_norm(rel[:, :3, :3] - eye)
    trans = torch.linalg.vector_norm(rel[:, :3, 3], dim=-1)
    total: Tensor = (rot + translation_weight * trans).sum()
    return total


_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_pairwise_inputs(
    edges: Tensor,
    pts_1: Tensor,
    pts_2: Tensor,
    conf_1: Tensor,
    conf_2: Tensor,
    n_frames: int | None = None,
    *,
    require_every_frame: bool = True,
) -> int:
    """Validate the pairwise predictions; return the number of frames ``T``.

    Args:
        edges: ``(P, 2)`` integer ``(i, j)``: frame of view 1 and of view 2.
        pts_1, pts_2: ``(P, H, W, 3)`` float view-1 / view-2 points (in view 1's camera frame).
        conf_1, conf_2: ``(P, H, W)`` float raw confidences, > 0.
        n_frames: ``T`` if known (default ``edges.max() + 1``).
        require_every_frame: refuse a frame that appears in no edge (False for one process's share of the pairs).

    Raises:
        Easi3RInputError: inconsistent shapes, bad edge indices, fewer than 2 frames, non-finite values,
            non-positive confidences, tensors on several devices, or a frame that appears in no edge.
    """
    named = {"edges": edges, "pts_1": pts_1, "pts_2": pts_2, "conf_1": conf_1, "conf_2": conf_2}
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise Easi3RInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dims = check_shape(edges, "P 2", "edges")
    check_dtype(edges, _INT_DTYPES, "edges")
    if dims["P"] == 0:
        raise Easi3RInputError("edges is empty: at least one pair is needed")
    dims = check_shape(pts_1, "P H W 3", "pts_1", dims=dims)
    check_shape(pts_2, "P H W 3", "pts_2", dims=dims)
    check_shape(conf_1, "P H W", "conf_1", dims=dims)
    check_shape(conf_2, "P H W", "conf_2", dims=dims)
    check_same_device({k: v for k, v in named.items() if k != "edges"})
    for name in ("pts_1", "pts_2", "conf_1", "conf_2"):
        check_dtype(named[name], _FLOAT_DTYPES, name)
        check_finite(named[name], name)
    if bool((conf_1 <= 0).any()) or bool((conf_2 <= 0).any()):
        raise Easi3RInputError("confidences must be positive (raw network confidences are >= 1)")
    if bool((edges < 0).any()):
        raise Easi3RInputError("edges contains negative frame indices")
    n_max = int(edges.max()) + 1
    t_frames = n_max if n_frames is None else int(n_frames)
    if t_frames < n_max:
        raise Easi3RInputError(f"edges index frame {n_max - 1} but only {t_frames} frames were given")
    if t_frames < 2:
        raise Easi3RInputError(f"global alignment needs at least 2 frames, got {t_frames}")
    if bool((edges[:, 0] == edges[:, 1]).any()):
        raise Easi3RInputError("edges contains a self-pair (i, i)")
    seen = torch.zeros(t_frames, dtype=torch.bool, device=edges.device)
    seen[edges.reshape(-1)] = True
    if require_every_frame and not bool(seen.all()):
        missing = torch.nonzero(~seen).flatten().tolist()
        raise Easi3RInputError(f"frames {missing[:5]} appear in no edge")
    return t_frames


class PointmapAligner(nn.Module):
    """Stateful global aligner of pairwise pointmaps (official ``PointCloudOptimizer``, batchify mode).

    Typical use: ``aligner = PointmapAligner(...); aligner.init_mst(); loss = aligner(iteration)`` inside an Adam
    loop (see :func:`easi3r.align.optimize.run_optimisation`), then the ``get_*`` accessors.

    The inputs are validated once, here (:func:`check_pairwise_inputs`); the flattened pairwise predictions are
    kept as the buffers ``pred_1, pred_2 (P, H*W, 3)`` and ``conf_1, conf_2 (P, H, W)``.

    Args:
        edges: ``(P, 2)`` int64 ``(i, j)``: frame of view 1 and of view 2 of each pair.
        pts_1: ``(P, H, W, 3)`` view-1 points in view-1's camera frame.
        pts_2: ``(P, H, W, 3)`` view-2 points in view-1's camera frame.
        conf_1, conf_2: ``(P, H, W)`` raw confidences (>= 1) of view 1 / view 2.
        config: alignment settings (focal sharing, base scale, PnP and loss weights).
        n_frames: ``T`` (default ``edges.max() + 1``).
        known_focal: known focal(s) in pixels: a scalar or ``(T,)``; used by the MST initialisation instead of
            the estimates, then pinned or optimised (``known_mode``).
        known_poses: ``(T, 4, 4)`` known cam-to-world; the MST initialisation is Sim(3)-aligned onto them, then
            they are pinned or optimised (``known_mode``). Either way the pairwise scales are not normalised: the
            known poses fix the world scale (official ``preset_pose`` sets ``norm_pw_scale = False``).
        known_mode: ``"pin"``: :meth:`get_focals` / :meth:`get_cam2world` return the known values exactly and they
            are not optimised; ``"init"``: the focal / pose parameters start at the known values and are optimised
            (official MonST3R ``preset_pose(..., requires_grad=True)``, except that the MST state is aligned onto
            the known poses, which the official code skips for trainable presets).
        metric: the pointmaps are metric (a metric backbone): the pairwise scales are normalised to geometric mean
            1 instead of ``config.base_scale``, so the world keeps the network's units. The anchor is what stops
            the loss (a distance in world units) from shrinking the scene; with exact metric pointmaps every
            pairwise scale is 1, so it costs nothing. Ignored with known poses (they fix the scale).
        block: pixels per block of the streamed loss (see :func:`alignment_residual_sum`).

    Raises:
        Easi3RInputError: bad pairwise inputs, ``known_focal`` / ``known_poses`` of the wrong shape or values, or an
            unknown ``known_mode``.
    """

    # Buffers (registered in __init__); declared so that type checkers see tensors, not ``Tensor | Module``.
    edges: Tensor
    pred_1: Tensor
    pred_2: Tensor
    conf_1: Tensor
    conf_2: Tensor
    im_conf: Tensor
    grid: Tensor
    principal_point: Tensor
    known_focal: Tensor | None
    known_poses: Tensor | None
    flow_12: Tensor | None
    flow_21: Tensor | None
    static_1: Tensor | None
    static_2: Tensor | None

    def __init__(
        self,
        edges: Tensor,
        pts_1: Tensor,
        pts_2: Tensor,
        conf_1: Tensor,
        conf_2: Tensor,
        *,
        config: AlignConfig | None = None,
        n_frames: int | None = None,
        known_focal: float | Tensor | None = None,
        known_poses: Tensor | None = None,
        known_mode: KnownMode = "pin",
        metric: bool = False,
        block: int | None = None,
        _require_every_frame: bool = True,
    ) -> None:
        super().__init__()
        config = AlignConfig() if config is None else config
        if known_mode not in ("pin", "init"):
            raise Easi3RInputError(f"known_mode must be 'pin' or 'init', got {known_mode!r}")
        if not isinstance(metric, bool):
            raise Easi3RInputError(f"metric must be a bool, got {metric!r}")
        n = check_pairwise_inputs(
            edges, pts_1, pts_2, conf_1, conf_2, n_frames, require_every_frame=_require_every_frame
        )
        device, dtype = pts_1.device, pts_1.dtype
        n_edges, h, w, _ = pts_1.shape
        self.config = config
        self.n_frames, self.height, self.width = n, h, w
        self.block = block
        edges = edges.to(device=device, dtype=torch.int64)
        self.register_buffer("edges", edges, persistent=False)
        self.register_buffer("pred_1", pts_1.reshape(n_edges, h * w, 3), persistent=False)
        self.register_buffer("pred_2", pts_2.reshape(n_edges, h * w, 3), persistent=False)
        self.register_buffer("conf_1", conf_1, persistent=False)
        self.register_buffer("conf_2", conf_2, persistent=False)
        self.register_buffer("im_conf", image_confidence(edges, conf_1, conf_2, n), persistent=False)
        self.register_buffer("grid", pixel_grid(h, w, device=device).reshape(-1, 2).to(dtype), persistent=False)
        pp = torch.tensor((w / 2, h / 2), dtype=dtype, device=device)
        self.register_buffer("principal_point", pp.expand(n, 2).clone(), persistent=False)

        # Initial values are placeholders: init_mst overwrites all of them (the reference draws them at random).
        self.log_depth = nn.Parameter(torch.full((n, h * w), -3.0, dtype=dtype, device=device))
        ident = torch.tensor([0, 0, 0, 1, 0, 0, 0], dtype=dtype, device=device)
        self.pose_params = nn.Parameter(ident.repeat(n, 1))
        n_focal = 1 if config.shared_focal else n
        self.focal_params = nn.Parameter(
            torch.full((n_focal,), FOCAL_BREAK * math.log(max(h, w)), dtype=dtype, device=device)
        )
        self.pw_params = nn.Parameter(torch.cat((ident, ident.new_zeros(1))).repeat(n_edges, 1))

        # Optional state as (None-able) buffers so that Module.to() moves it with the rest.
        self.register_buffer("known_focal", None, persistent=False)
        self.register_buffer("known_poses", None, persistent=False)
        for name in ("flow_12", "flow_21", "static_1", "static_2"):
            self.register_buffer(name, None, persistent=False)
        if known_focal is not None:
            kf = torch.as_tensor(known_focal, dtype=dtype, device=device).reshape(-1)
            if kf.numel() == 1:
                kf = kf.expand(n).clone()
            if kf.shape != (n,) or not bool(torch.isfinite(kf).all()) or bool((kf <= 0).any()):
                raise Easi3RInputError(
                    f"known_focal must be a positive scalar or have shape ({n},), "
                    f"got {tuple(torch.as_tensor(known_focal).shape)}"
                )
            self.known_focal = kf
            self.focal_params.requires_grad_(known_mode == "init")
        if known_poses is not None:
            kp = torch.as_tensor(known_poses).to(device=device, dtype=dtype)
            check_shape(kp, "T 4 4", "known_poses", dims={"T": n})
            check_finite(kp, "known_poses")
            self.known_poses = kp
            self.pose_params.requires_grad_(known_mode == "init")
        self.known_mode: KnownMode = known_mode
        self.metric = metric
        # With known poses the world scale is given, so the pairwise scales must stay free (as the reference).
        self.normalise_pw_scale = known_poses is None
        self.scale_anchor = 1.0 if metric else config.base_scale

        self.flow_weight = 0.0
        self.flow_start_iteration = 0.0
        # Whether this aligner counts the terms that are not sums over its own pairs (one process of a sharded
        # alignment, easi3r.align.sharded; always True otherwise).
        self._counts_global_terms = True
        self.mst: MSTInit | None = None

    # ------------------------------------------------------------------ decoding
    @property
    def n_edges(self) -> int:
        return int(self.edges.shape[0])

    def get_cam2world(self) -> Tensor:
        """``(T, 4, 4)`` camera-to-world poses."""
        if self.known_poses is not None and self.known_mode == "pin":
            return self.known_poses
        return decode_poses(self.pose_params)

    def get_focals(self) -> Tensor:
        """``(T,)`` focal lengths in pixels."""
        if self.known_focal is not None and self.known_mode == "pin":
            return self.known_focal
        return (self.focal_params / FOCAL_BREAK).exp().expand(self.n_frames)

    def get_principal_points(self) -> Tensor:
        """``(T, 2)`` principal points ``(W/2, H/2)`` in pixels."""
        return self.principal_point

    def get_intrinsics(self) -> Tensor:
        """``(T, 3, 3)`` pinhole intrinsics with ``fx = fy = f``."""
        K = torch.zeros(self.n_frames, 3, 3, dtype=self.grid.dtype, device=self.grid.device)
        f = self.get_focals()
        K[:, 0, 0] = f
        K[:, 1, 1] = f
        K[:, :2, 2] = self.get_principal_points()
        K[:, 2, 2] = 1
        return K

    def get_depthmaps(self) -> Tensor:
        """``(T, H, W)`` z-depth."""
        return self.log_depth.exp().reshape(self.n_frames, self.height, self.width)

    def _world_points(self) -> Tensor:
        cam = depth_to_camera_points(self.log_depth.exp(), self.get_focals(), self.get_principal_points(), self.grid)
        return transform_points(self.get_cam2world(), cam)

    def get_pts3d(self) -> Tensor:
        """``(T, H, W, 3)`` world points back-projected from the depth maps."""
        return self._world_points().reshape(self.n_frames, self.height, self.width, 3)

    def get_pw_norm_scale_factor(self) -> Tensor:
        """Factor bringing the geometric mean of the pairwise scales to ``base_scale`` (1 when ``metric``; the
        factor is 1 with known poses).

        Official ``dust3r/cloud_opt/base_opt.py``, ``BasePCOptimizer.get_pw_norm_scale_factor``; ``()`` tensor.
        """
        if not self.normalise_pw_scale:
            return self.pw_params.new_ones(())
        return (math.log(self.scale_anchor) - self.pw_params[:, -1].mean()).exp()

    def get_pw_scale(self) -> Tensor:
        """``(P,)`` effective per-edge scale ``sigma_e``."""
        return self.pw_params[:, -1].exp() * self.get_pw_norm_scale_factor()

    def get_pw_poses(self) -> Tensor:
        """``(P, 4, 4)`` per-edge similarity ``[sigma R | sigma t]`` mapping view-1 camera points to the world."""
        rt = decode_poses(self.pw_params)
        scale = self.get_pw_scale()
        return torch.cat((rt[:, :3] * scale[:, None, None], rt[:, 3:]), dim=1)

    def get_conf(self) -> Tensor:
        """``(T, H, W)`` per-frame max raw confidence (``im_conf``)."""
        return self.im_conf

    # ------------------------------------------------------------------ flow
    def set_flow(
        self,
        flow_12: Tensor,
        flow_21: Tensor,
        masks: Tensor | None,
        *,
        weight: float | None = None,
        start_iteration: float = 0.0,
    ) -> None:
        """Attach the optical-flow term.

        Args:
            flow_12: ``(P, 2, H, W)`` observed flow in pixels from view 1 (frame ``i``) to view 2 (frame ``j``) of
                each edge ``(i, j)``.
            flow_21: ``(P, 2, H, W)`` observed flow from view 2 to view 1.
            masks: ``(T, H, W)`` bool dynamic masks (excluded from the term), or None (all pixels static).
            weight: term weight (default ``config.flow_weight``).
            start_iteration: the term is active for ``iteration >= start_iteration`` (float, as the reference
                compares ``iter >= niter * flow_loss_start_epoch``).

        Raises:
            Easi3RInputError: flows or masks of the wrong shape.
        """
        dims = {"P": self.n_edges, "T": self.n_frames, "H": self.height, "W": self.width}
        check_shape(flow_12, "P 2 H W", "flow_12", dims=dims)
        check_shape(flow_21, "P 2 H W", "flow_21", dims=dims)
        dev, dt = self.grid.device, self.grid.dtype
        self.flow_12 = flow_12.to(device=dev, dtype=dt)
        self.flow_21 = flow_21.to(device=dev, dtype=dt)
        if masks is None:
            static = torch.ones(self.n_frames, self.height, self.width, dtype=torch.bool, device=dev)
        else:
            check_shape(masks, "T H W", "masks", dims=dims)
            static = ~masks.to(device=dev, dtype=torch.bool)
        self.static_1 = static[self.edges[:, 0]][:, None]
        self.static_2 = static[self.edges[:, 1]][:, None]
        self.flow_weight = self.config.flow_weight if weight is None else float(weight)
        self.flow_start_iteration = float(start_iteration)

    def flow_loss(self) -> Tensor:
        """Smooth-L1 distance between induced (ego) flow and the observed flow on static pixels, both directions.

        Returns:
            ``()`` tensor.

        Raises:
            Easi3RRuntimeError: :meth:`set_flow` was not called.
        """
        if self.flow_12 is None or self.flow_21 is None or self.static_1 is None or self.static_2 is None:
            raise Easi3RRuntimeError("set_flow() must be called before flow_loss()")
        pose = self.get_cam2world()
        K = self.get_intrinsics()
        K_inv = intrinsics_inverse(K)
        depth = self.get_depthmaps()
        ei, ej = self.edges[:, 0], self.edges[:, 1]
        ego_12 = induced_flow(depth[ei], pose[ei], pose[ej], K_inv[ei], K[ej])
        ego_21 = induced_flow(depth[ej], pose[ej], pose[ei], K_inv[ej], K[ei])
        thr = self.config.flow_pixel_threshold
        return masked_smooth_l1(ego_12, self.flow_12, self.static_1, thr) + masked_smooth_l1(
            ego_21, self.flow_21, self.static_2, thr
        )

    # ------------------------------------------------------------------ loss
    def alignment_loss(self) -> tuple[Tensor, Tensor]:
        """``(l_1, l_2)``: log-confidence weighted distances of the view-1 / view-2 points, each divided by the total
        pixel count ``P H W`` (``()`` tensors)."""
        world = self._world_points()
        pw = self.get_pw_poses()
        area = float(self.n_edges * self.height * self.width)
        l_1, l_2 = (
            alignment_residual_sum(
                world, pw, pred, conf.reshape(self.n_edges, -1), frames, log_weight=True, block=self.block
            )
            / area
            for pred, conf, frames in (
                (self.pred_1, self.conf_1, self.edges[:, 0]),
                (self.pred_2, self.conf_2, self.edges[:, 1]),
            )
        )
        return l_1, l_2

    def forward(self, iteration: int | None = None) -> Tensor:
        """Total loss ``l_1 + l_2 + w_temp L_temp + w_flow L_flow`` of the current state (``()`` tensor).

        Args:
            iteration: optimiser step index; decides whether the flow term is active (None: all terms active, as
                the reference's default ``epoch=9999`` used for its ``init loss``).
        """
        l_1, l_2 = self.alignment_loss()
        loss = l_1 + l_2
        cfg = self.config
        if cfg.temporal_smoothing_weight > 0 and self._counts_global_terms:
            loss = loss + cfg.temporal_smoothing_weight * relative_pose_loss(
                self.get_cam2world(), cfg.translation_weight
            )
        if (
            self.flow_weight > 0
            and self.flow_12 is not None
            and (iteration is None or iteration >= self.flow_start_iteration)
        ):
            flow = self.flow_loss()
            # The reference drops the term for any iteration whose value exceeds the threshold.
            if not (cfg.flow_threshold > 0 and float(flow.detach()) > cfg.flow_threshold):
                # In a sharded alignment flow_loss() is the value over all processes' pairs: one process counts
                # it; the others add it times 0, so that the collectives inside its gradient run everywhere.
                loss = loss + self.flow_weight * (flow if self._counts_global_terms else flow * 0.0)
        return loss

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_mst(self) -> MSTInit:
        """Initialise every parameter from the maximum spanning tree of the pair graph (official ``init='mst'``,
        ``dust3r/cloud_opt/init_im_poses.py`` ``init_minimum_spanning_tree``).

        Steps: :func:`~easi3r.align.mst.mst_initialisation` (chained points, focals, poses incl. RANSAC-PnP);
        with pinned poses, a Sim(3) fit of the tree's cameras onto them, applied to poses and points; per-edge
        weighted Procrustes for the pairwise similarities; scale normalisation (geometric mean ``base_scale``);
        depth = z of the chained points in each camera; shared focal = mean of the per-frame estimates.

        Returns:
            The :class:`~easi3r.align.mst.MSTInit` record (tree log, PnP frames, the tree's raw state).
        """
        return self._init_mst()

    @torch.no_grad()
    def _init_mst(self, pnp_override: dict[int, Tensor] | None = None) -> MSTInit:
        """:meth:`init_mst`, with the private testing seam ``pnp_override`` (frame -> ``(4, 4)`` cam-to-world
        replacing RANSAC-PnP's result for that frame; see :func:`~easi3r.align.mst.mst_initialisation`)."""
        cfg = self.config
        n_edges, h, w = self.n_edges, self.height, self.width
        known_focals = None if self.known_focal is None else self.known_focal.tolist()
        mst = mst_initialisation(
            self.edges,
            self.pred_1.reshape(n_edges, h, w, 3),
            self.pred_2.reshape(n_edges, h, w, 3),
            self.conf_1,
            self.conf_2,
            self.im_conf,
            min_conf_thr=cfg.min_conf_thr,
            pnp_iterations=cfg.pnp_iterations,
            pnp_reprojection_error=cfg.pnp_reprojection_error,
            known_focals=known_focals,
            robust_pnp=cfg.robust_init,
            _pnp_override=pnp_override,
        )
        return self._init_from_mst(mst)

    @torch.no_grad()
    def _init_from_mst(self, mst: MSTInit) -> MSTInit:
        """Every parameter from a spanning-tree initialisation (the second half of :meth:`init_mst`)."""
        cfg = self.config
        n, h, w = self.n_frames, self.height, self.width
        self.mst = mst
        poses = mst.cam2world.clone()
        points = mst.points.reshape(n, h * w, 3).clone()

        if self.known_poses is not None:
            s, R, T = align_poses_sim3(poses, self.known_poses.to(poses.dtype))
            trf = sim3_matrix(s, R, T)
            poses = trf @ poses
            poses[:, :3, :3] /= s  # keep rotations orthonormal: the scale only acts on the centres
            points = transform_points(trf, points)

        # Pairwise similarities: view-1 pointmap of each edge onto its frame's chained points. One registration
        # per edge (a one-off cost): roma's batched float32 path accumulates differently (errors ~1e-3 on 2e5
        # points), and the reference registers edge by edge.
        for e, (i, j) in enumerate(self.edges.tolist()):
            s, R, T = procrustes(self.pred_1[e], points[i], self.conf_1[e], what=f"edge ({i}, {j}) onto frame {i}")
            self.pw_params.data[e, :4] = roma.rotmat_to_unitquat(R)
            self.pw_params.data[e, 4:7] = signed_log1p(T / s)
            # log in float64 then rounded, as the reference's np.log(float(s))
            self.pw_params.data[e, 7] = math.log(float(s))

        factor = self.get_pw_norm_scale_factor()
        poses[:, :3, 3] *= factor
        points *= factor

        depth = transform_points(torch.linalg.inv(poses), points)[..., 2]
        self._check_init_depth(depth)
        self.log_depth.data[:] = depth.log().nan_to_num(nan=0.0, neginf=0.0)
        if self.known_poses is None:
            self.pose_params.data[:] = encode_rotation_translation(poses[:, :3, :3], poses[:, :3, 3])
        elif self.known_mode == "init":
            self.pose_params.data[:] = encode_rotation_translation(
                self.known_poses[:, :3, :3], self.known_poses[:, :3, 3]
            )
        if self.known_focal is None or self.known_mode == "init":
            # mst.focals are the known focals when given; every MST focal is plausible (degenerate -> default)
            if cfg.shared_focal:
                self.focal_params.data[:] = FOCAL_BREAK * np.log(sum(mst.focals) / n)
            else:
                self.focal_params.data[:] = torch.as_tensor(
                    FOCAL_BREAK * np.log(np.asarray(mst.focals, dtype=np.float64)), dtype=self.grid.dtype
                )
        return mst

    def _check_init_depth(self, depth: Tensor) -> None:
        """Refuse an initial state without usable depth: a frame whose chained points all lie at non-positive
        (or non-finite) depth in its camera (e.g. zero-depth pointmaps) gives no log-depth to start from.
        Isolated invalid pixels keep the reference's fallback (log-depth 0, i.e. depth 1)."""
        valid = torch.isfinite(depth) & (depth > 0)
        bad = (~valid.any(dim=1)).nonzero().flatten().tolist()
        if bad:
            raise Easi3RRuntimeError(
                f"degenerate initialisation: frame(s) {bad} have no point at positive depth in their camera "
                "(zero-depth or behind-camera pointmaps)"
            )
