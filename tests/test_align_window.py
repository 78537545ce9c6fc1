"""Window-wise global alignment (:mod:`easi3r.align.window`) on synthetic box-room sequences with known cameras."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import roma
import torch
from helpers.scenes import BoxRoomSequence, box_room_sequence
from torch import Tensor

from easi3r.align import Alignment, align_poses_sim3, global_align
from easi3r.align.window import InMemoryPointmaps, plan_windows, window_align, window_edge_indices
from easi3r.config import AlignConfig
from easi3r.errors import Easi3RInputError
from easi3r.eval.poses import pose_metrics
from easi3r.pairs import make_pairs


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Tiny problems: on a shared CPU, intra-op threading only adds synchronisation stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _source(sc: BoxRoomSequence) -> InMemoryPointmaps:
    return InMemoryPointmaps(sc.pts_1, sc.pts_2, sc.conf_1, sc.conf_2)


def _errors(est: Tensor, gt: Tensor) -> tuple[float, float]:
    """(ATE after the evo-style Sim(3) fit of the centres, mean rotation error in degrees).

    The rotation error uses the world rotation fitted on the camera orientations (``align_poses_sim3``): a
    centre-only fit leaves the rotation ill-conditioned on a short, nearly planar path.
    """
    ate = pose_metrics(est, gt).ate
    est, gt = est.double(), gt.double()
    _, R, _ = align_poses_sim3(est, gt)
    rel = (R @ est[:, :3, :3]).transpose(1, 2) @ gt[:, :3, :3]
    return ate, float(roma.rotmat_to_rotvec(rel).norm(dim=-1).rad2deg().mean())


class CountingSource:
    """A :class:`~easi3r.align.window.PointmapSource` recording the edge indices of every call."""

    def __init__(self, inner: InMemoryPointmaps) -> None:
        self.inner = inner
        self.calls: list[Tensor] = []

    def __call__(self, edge_indices: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.calls.append(edge_indices.clone())
        return self.inner(edge_indices)


# ---------------------------------------------------------------------------------------------------- planning
@pytest.mark.parametrize(
    ("n", "window", "overlap"),
    [(48, 16, 0.5), (40, 16, 0.5), (20, 16, 0.5), (100, 10, 0.25), (17, 4, 0.0), (30, 8, 0.99), (9, 2, 0.5)],
)
def test_plan_windows_cover_and_overlap(n: int, window: int, overlap: float) -> None:
    windows = plan_windows(n, window, overlap)
    shared = min(max(round(window * overlap), 1), window - 1)
    assert windows[0].start == 0 and windows[-1].stop == n
    assert all(len(w) == window and w.step == 1 for w in windows)
    covered = set().union(*windows)
    assert covered == set(range(n))
    for a, b in zip(windows[:-2], windows[1:-1]):
        assert len(set(a) & set(b)) == shared  # every pair but the last shares exactly round(window * overlap)
    assert len(set(windows[-2]) & set(windows[-1])) >= shared  # the last one was shifted back to full length
    assert all(b.start > a.start for a, b in zip(windows, windows[1:]))


def test_plan_windows_cases() -> None:
    assert plan_windows(48, 16, 0.5) == [range(0, 16), range(8, 24), range(16, 32), range(24, 40), range(32, 48)]
    assert plan_windows(20, 16, 0.5) == [range(0, 16), range(4, 20)]
    assert plan_windows(16, 16, 0.5) == [range(0, 16)]
    assert plan_windows(5, 16, 0.5) == [range(0, 5)]
    assert plan_windows(12, 4, 0.0) == [range(0, 4), range(3, 7), range(6, 10), range(8, 12)]  # >= 1 shared
    assert plan_windows(5, 3, 0.9) == [range(0, 3), range(1, 4), range(2, 5)]  # at most window - 1 shared


@pytest.mark.parametrize(
    ("args", "match"),
    [((1, 4, 0.5), "at least 2 frames"), ((10, 1, 0.5), "window"), ((10, 4, 1.0), "overlap"),
     ((10, 4, -0.1), "overlap"), ((10, 4.0, 0.5), "window"), ((10, True, 0.5), "window")],
)  # fmt: skip
def test_plan_windows_errors(args: tuple[object, object, object], match: str) -> None:
    with pytest.raises(Easi3RInputError, match=match):
        plan_windows(*args)


def test_window_edge_indices() -> None:
    edges = torch.tensor([[0, 1], [1, 3], [3, 1], [2, 5], [4, 5], [5, 6]])
    assert window_edge_indices(edges, range(0, 4)).tolist() == [0, 1, 2]
    assert window_edge_indices(edges, range(2, 6)).tolist() == [3, 4]
    assert window_edge_indices(edges, range(6, 7)).tolist() == []
    with pytest.raises(Easi3RInputError, match="edges"):
        window_edge_indices(edges.float(), range(0, 4))
    with pytest.raises(Easi3RInputError, match="consecutive"):
        window_edge_indices(edges, range(0, 6, 2))


# ---------------------------------------------------------------------------------------------------- alignment
def test_one_window_equals_global_align(device: str) -> None:
    """A window covering the whole video is the global mode, bit for bit (flow term included)."""
    sc = box_room_sequence(8, 64, 48, seed=1)
    cfg = AlignConfig(iterations=12, flow_weight=0.01, flow_start=0.5)
    masks = sc.masks.to(device)
    ref = global_align(
        sc.edges.to(device),
        sc.pts_1.to(device),
        sc.pts_2.to(device),
        sc.conf_1.to(device),
        sc.conf_2.to(device),
        config=cfg,
        images=sc.images,
        masks=masks,
        progress=False,
    )
    source = CountingSource(InMemoryPointmaps(*(x.to(device) for x in (sc.pts_1, sc.pts_2, sc.conf_1, sc.conf_2))))
    out = window_align(
        sc.edges.to(device),
        source,
        8,
        window=16,
        overlap=0.5,
        config=cfg,
        images=sc.images,
        masks=masks,
        progress=False,
    )
    assert len(source.calls) == 1 and source.calls[0].tolist() == list(range(len(sc.edges)))
    for f in dataclasses.fields(ref):
        a, b = getattr(ref, f.name), getattr(out, f.name)
        assert torch.equal(a, b) if isinstance(a, Tensor) else a == b, f.name


def test_source_called_once_per_window_with_its_edges() -> None:
    """Only one window's pointmaps are requested at a time; the first window is the world, kept bit for bit."""
    n, size = 24, 8
    sc = box_room_sequence(n, 64, 48, seed=2, supersample=1)
    cfg = AlignConfig(iterations=5, flow_weight=0.0)
    source = CountingSource(_source(sc))
    out = window_align(sc.edges, source, n, window=size, overlap=0.5, config=cfg, masks=sc.masks, progress=False)
    windows = plan_windows(n, size, 0.5)
    assert len(source.calls) == len(windows) == 5
    seen = torch.zeros(len(sc.edges), dtype=torch.bool)
    for call, frames in zip(source.calls, windows):
        assert call.tolist() == window_edge_indices(sc.edges, frames).tolist()
        assert bool(((sc.edges[call] >= frames.start) & (sc.edges[call] < frames.stop)).all())
        assert len(call) < len(sc.edges) / 2
        seen[call] = True
    # edges of no window (their frames are never in one window) get NaN pairwise poses, the others finite ones
    assert bool((~seen).any())
    assert bool(out.pw_scale[~seen].isnan().all()) and bool(out.pw_poses[~seen].isnan().all())
    assert bool(out.pw_scale[seen].isfinite().all()) and bool(out.pw_poses[seen].isfinite().all())
    # frames and edges of the first window: exactly global_align on that window
    first = window_edge_indices(sc.edges, windows[0])
    w0 = global_align(
        sc.edges[first], sc.pts_1[first], sc.pts_2[first], sc.conf_1[first], sc.conf_2[first], config=cfg,
        masks=sc.masks[:size], progress=False,
    )  # fmt: skip
    for name in ("cam2world", "focals", "principal_points", "intrinsics", "depths", "points", "confidence"):
        assert torch.equal(getattr(out, name)[:size], getattr(w0, name)), name
    assert torch.equal(out.pw_poses[first], w0.pw_poses) and torch.equal(out.pw_scale[first], w0.pw_scale)
    # per-window logs in global frame ids, in window order
    assert len(out.mst_log) == sum(len(w) - 1 for w in windows)
    assert out.mst_log[: size - 1] == w0.mst_log
    last = out.mst_log[-(size - 1) :]
    assert all(windows[-1].start <= e.i < n and windows[-1].start <= e.j < n for e in last)
    assert all(0 <= f < n for f in out.pnp_frames)
    assert np.isfinite(out.loss) and np.isfinite(out.init_loss)  # sums over the windows


@pytest.mark.parametrize(
    ("n", "window"),
    [pytest.param(24, 10, id="24-frames"), pytest.param(48, 16, id="48-frames", marks=pytest.mark.slow)],
)
def test_long_sequence_window_vs_global(n: int, window: int) -> None:
    """Windows with overlap 0.5, swinstride-5 pairs, no flow, 100 iterations: the window mode recovers the cameras
    (ATE <= 1 % of the scene, mean rotation error <= 0.5 deg) and is no worse than 1.5x the global mode.

    The 48-frame case (windows of 16) takes about 30 s on one idle core, hence ``slow``; 24 frames with windows of
    10 (4 windows) is the fast variant.
    """
    sc = box_room_sequence(n, 64, 48, edges=make_pairs(n, "swinstride", 5, cyclic=False), seed=0, supersample=1)
    cfg = AlignConfig(iterations=100, flow_weight=0.0)
    glob = global_align(sc.edges, sc.pts_1, sc.pts_2, sc.conf_1, sc.conf_2, config=cfg, progress=False)
    win = window_align(sc.edges, _source(sc), n, window=window, overlap=0.5, config=cfg, masks=sc.masks, progress=False)
    assert len(plan_windows(n, window, 0.5)) >= 4
    ate_g, rot_g = _errors(glob.cam2world, sc.cam2world)
    ate_w, rot_w = _errors(win.cam2world, sc.cam2world)
    print(f"ATE window {ate_w:.4f} global {ate_g:.4f} (extent {sc.extent:.2f}); rot {rot_w:.3f} vs {rot_g:.3f} deg")
    assert ate_w <= 0.01 * sc.extent and rot_w <= 0.5, (ate_w, rot_w)
    assert ate_w <= 1.5 * ate_g and rot_w <= 1.5 * rot_g, (ate_w, ate_g, rot_w, rot_g)
    # one world: every frame's depth (static pixels) is at the same scale relative to the truth, that of the
    # trajectory (as in the global mode, the fitted scene may be a few percent smaller than the trajectory)
    ratio = torch.stack([(win.depths[f] / sc.depth[f])[~sc.masks[f]].median() for f in range(n)])
    assert float((ratio / ratio.median() - 1).abs().max()) < 0.03, ratio
    assert abs(float(ratio.median()) * pose_metrics(win.cam2world, sc.cam2world).scale - 1) < 0.05
    _check_points(win)
    # pairwise poses moved into the reference world: they carry each edge's view-1 points onto the stitched frame
    e = torch.nonzero(win.pw_scale.isfinite()).flatten()[-1]  # an edge of the last window
    i = int(sc.edges[e, 0])
    moved = sc.pts_1[e] @ win.pw_poses[e, :3, :3].T + win.pw_poses[e, :3, 3]
    static = ~sc.masks[i]
    err = (moved - win.points[i]).norm(dim=-1)[static] / win.depths[i][static]
    assert float(err.median()) < 0.02, float(err.median())


def _check_points(res: Alignment) -> None:
    """World points are the back-projected depths (pinhole with the returned intrinsics and poses)."""
    K_inv = torch.linalg.inv(res.intrinsics)
    t, h, w = res.depths.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pix = torch.stack((xs, ys, torch.ones_like(xs)), -1).float()
    for k in (0, t // 2, t - 1):
        cam = (pix @ K_inv[k].T) * res.depths[k][..., None]
        world = cam @ res.cam2world[k, :3, :3].T + res.cam2world[k, :3, 3]
        torch.testing.assert_close(world, res.points[k], atol=1e-4, rtol=1e-4)


def test_window_align_input_errors() -> None:
    sc = box_room_sequence(12, 32, 24, seed=4, supersample=1)
    source = _source(sc)
    kw = dict(window=6, overlap=0.5, config=AlignConfig(iterations=1, flow_weight=0.0), progress=False)
    with pytest.raises(Easi3RInputError, match="overlap"):
        window_align(sc.edges, source, 12, **{**kw, "overlap": 1.5})
    with pytest.raises(Easi3RInputError, match="edges"):
        window_align(sc.edges.float(), source, 12, **kw)
    with pytest.raises(Easi3RInputError, match="edges"):
        window_align(sc.edges, source, 10, **kw)  # frame 11 out of range
    with pytest.raises(Easi3RInputError, match="masks"):
        window_align(sc.edges, source, 12, masks=sc.masks[:5], **kw)
    with pytest.raises(Easi3RInputError, match="config"):
        window_align(sc.edges, source, 12, **{**kw, "config": {"iterations": 1}})
    # a window frame in none of the window's edges (only pairs 6 frames apart: no window holds both ends)
    far = torch.tensor([[i, i + 6] for i in range(6)] + [[i + 6, i] for i in range(6)])
    with pytest.raises(Easi3RInputError, match="in no edge of window"):
        window_align(far, source, 12, **kw)
    with pytest.raises(Easi3RInputError, match="pts_2"):
        InMemoryPointmaps(sc.pts_1, sc.pts_2[:, :-1], sc.conf_1, sc.conf_2)


# ---------------------------------------------------------------------------------------------------- known cameras
def test_window_known_poses_pin_and_init() -> None:
    sc = box_room_sequence(8, 32, 24, supersample=1)
    cfg = AlignConfig(iterations=30, flow_weight=0.0)
    kw = dict(window=5, overlap=0.4, config=cfg, known_poses=sc.cam2world, known_focal=sc.focal, progress=False)
    pinned = window_align(sc.edges, _source(sc), 8, known_mode="pin", **kw)  # type: ignore[arg-type]
    assert torch.equal(pinned.cam2world, sc.cam2world)
    assert bool((pinned.focals == sc.focal).all())
    moved = window_align(sc.edges, _source(sc), 8, known_mode="init", **kw)  # type: ignore[arg-type]
    shift = (moved.cam2world - sc.cam2world).abs().max()
    assert 1e-5 < float(shift) < 0.05, float(shift)  # optimised per window, and still close on a consistent scene
    with pytest.raises(Easi3RInputError, match="known_focal must be a scalar or have shape"):
        window_align(sc.edges, _source(sc), 8, **{**kw, "known_focal": torch.ones(3)})  # type: ignore[arg-type]
