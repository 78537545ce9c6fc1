"""Golden comparison of the global alignment with the official Easi3R run (``tests/data/reference/pipeline.npz``).

Inputs: the pass-2 pairwise pointmaps at full resolution (18 pairs, 384x512), produced by our backbone from the
reference frames and checkpoint (fixture ``reference_pass2``). The official run aligned them with
``init='mst'``, then 100 Adam iterations (lr 0.01, linear schedule, no flow term). RANSAC-PnP with 10 iterations is
chaotic under 1e-5 input changes, so, as the fixture README prescribes, the PnP result for frame 4 is replaced by
the official one (``mst_pnp_cam2world``); without it only the tree-posed quantities are compared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from easi3r.align import PointmapAligner, run_optimisation
from easi3r.config import AlignConfig

REF = Path(__file__).parent / "data" / "reference" / "pipeline.npz"
CONFIG = AlignConfig(iterations=100, lr=0.01, lr_min=1e-3, schedule="linear", flow_weight=0.0)

# Official run-to-run differences after 100 iterations (README section 6, run A vs D: 1 thread, PnP fixed).
RUN_TO_RUN = {"cam2world": 7.5e-6, "depth": 1.5e-5, "pw_poses": 3.5e-6}

# Spread of the official init itself across BLAS code paths. Its weighted Procrustes (`roma.rigid_points_registration`
# in float32, official `dust3r/cloud_opt/init_im_poses.py`) sums 196608 terms in MKL SGEMM; on the same inputs the
# tree scale of edge (1, 4) is 0.9889143 with MKL_CBWR=COMPATIBLE (what the fixture holds), 0.9888238 on the AVX-512
# path with 2 threads, 0.9888330 with 1 thread, 0.9888220 in float64 (our init, which no longer depends on the path).
# That 9e-5 scale error moves the init by: cam2world 1.5e-4, depth 2.6e-4, pw_poses 2.7e-4, pw_scale rel 1.2e-4,
# loss rel 8.5e-5 (measured; with MKL_CBWR=COMPATIBLE the float32 init matches the fixture to 1.2e-6). Rotations and
# the focal do not depend on that scale and keep the tight tolerances.
BLAS_SPREAD = {"cam2world": 1.6e-4, "depth": 2.7e-4, "pw_poses": 2.8e-4, "pw_scale": 1.25e-4, "loss": 9e-5}
# The same init offset, carried through the 100 iterations (measured: final cam2world 1.4e-4, depth 1.5e-4, pw_poses
# 2.0e-4, pw_scale rel 9.9e-5, loss and last-iteration loss rel 6.8e-5).
BLAS_SPREAD_FINAL = {"cam2world": 1.4e-4, "depth": 1.5e-4, "pw_poses": 2.0e-4, "pw_scale": 1.0e-4, "loss": 7e-5}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(REF) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def pass2(reference_pass2: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return reference_pass2


def _aligner(pass2: dict[str, torch.Tensor]) -> PointmapAligner:
    return PointmapAligner(
        pass2["edges"], pass2["pts_1"], pass2["pts_2"], pass2["conf_1"], pass2["conf_2"], config=CONFIG
    )


def _grid(depth: torch.Tensor, golden: dict[str, np.ndarray]) -> np.ndarray:
    rows, cols = golden["depth_grid_rows"], golden["depth_grid_cols"]
    return depth.detach().cpu().numpy()[:, rows][:, :, cols]


def _state(al: PointmapAligner, golden: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {
            "cam2world": al.get_cam2world().cpu().numpy(),
            "focals": al.get_focals().cpu().numpy()[:, None],
            "intrinsics": al.get_intrinsics().cpu().numpy(),
            "principal_points": al.get_principal_points().cpu().numpy(),
            "pw_poses": al.get_pw_poses().cpu().numpy(),
            "pw_scale": al.get_pw_scale().cpu().numpy(),
            "depth": _grid(al.get_depthmaps(), golden),
            "im_focals_param": al.focal_params.detach().cpu().numpy()[None].copy(),  # no view of the Parameter
            "loss": float(al()),
        }


@pytest.fixture(scope="module")
def runs(pass2: dict[str, torch.Tensor], golden: dict[str, np.ndarray]) -> dict[str, object]:
    """One official-like run: MST init (PnP overridden), then 100 iterations; states recorded at both points."""
    al = _aligner(pass2)
    override = {int(golden["mst_pnp_image_idx"][0]): torch.from_numpy(golden["mst_pnp_cam2world"][0])}
    mst = al._init_mst(pnp_override=override)  # the private testing seam: PnP pinned to the official result
    init = _state(al, golden)
    last = run_optimisation(al, progress=False)
    final = _state(al, golden)
    return {"mst": mst, "init": init, "final": final, "last_iter_loss": last}


def test_inputs_are_the_reference_pairs(pass2: dict[str, torch.Tensor], golden: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(pass2["edges"].cpu().numpy(), golden["pairs"])
    assert tuple(pass2["pts_1"].shape) == (18, 384, 512, 3)


def test_mst_log_and_pnp_frame(runs: dict[str, object], golden: dict[str, np.ndarray]) -> None:
    mst = runs["mst"]
    assert [str(e) for e in mst.log] == [
        "(5*,4*) 21.977",
        "(1*,4) 17.683",
        "(3*,4) 15.689",
        "(0*,5) 13.764",
        "(2*,5) 11.839",
    ]
    assert mst.pnp_frames == golden["mst_pnp_image_idx"].tolist()
    assert abs(mst.focals[4] - float(golden["mst_pnp_focal"][0])) < 1e-5 * float(golden["mst_pnp_focal"][0])


def test_init_state_matches(runs: dict[str, object], golden: dict[str, np.ndarray]) -> None:
    init = runs["init"]
    rot, gold_rot = init["cam2world"][:, :3, :3], golden["init_cam2world"][:, :3, :3]
    np.testing.assert_allclose(rot, gold_rot, atol=1e-5, rtol=0)
    np.testing.assert_allclose(init["cam2world"], golden["init_cam2world"], atol=2 * BLAS_SPREAD["cam2world"], rtol=0)
    np.testing.assert_allclose(init["depth"], golden["init_depth"], atol=2 * BLAS_SPREAD["depth"], rtol=0)
    np.testing.assert_allclose(init["focals"], golden["init_focals"], rtol=1e-5)
    np.testing.assert_allclose(init["im_focals_param"], golden["init_im_focals_param"], rtol=1e-5)
    np.testing.assert_allclose(init["intrinsics"], golden["init_intrinsics"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(init["principal_points"], golden["init_principal_points"])
    np.testing.assert_allclose(init["pw_poses"], golden["init_pw_poses"], atol=2 * BLAS_SPREAD["pw_poses"], rtol=0)
    np.testing.assert_allclose(init["pw_scale"], golden["init_pw_scale"], rtol=2 * BLAS_SPREAD["pw_scale"])
    assert abs(init["loss"] / float(golden["init_loss"]) - 1) < 2 * BLAS_SPREAD["loss"]


def test_state_after_100_iterations(runs: dict[str, object], golden: dict[str, np.ndarray]) -> None:
    final = runs["final"]
    for key in ("cam2world", "depth", "pw_poses"):
        err = np.abs(final[key] - golden[f"final_{key}"]).max()
        tol = 10 * RUN_TO_RUN[key] + 2 * BLAS_SPREAD_FINAL[key]
        assert err <= tol, (key, err, tol)
    np.testing.assert_allclose(final["focals"], golden["final_focals"], rtol=1e-5)
    np.testing.assert_allclose(
        final["pw_scale"], golden["final_pw_scale"], rtol=1e-4 + 2 * BLAS_SPREAD_FINAL["pw_scale"]
    )
    loss_tol = 1e-5 + 2 * BLAS_SPREAD_FINAL["loss"]
    assert abs(final["loss"] / float(golden["final_loss"]) - 1) < loss_tol
    assert abs(runs["last_iter_loss"] / float(golden["final_last_iter_loss"]) - 1) < loss_tol


def test_tree_posed_cameras_without_override(pass2: dict[str, torch.Tensor], golden: dict[str, np.ndarray]) -> None:
    al = _aligner(pass2)
    mst = al.init_mst()
    tree = [t for t in range(6) if t not in mst.pnp_frames]
    assert tree == [0, 1, 2, 3, 5]
    with torch.no_grad():
        c2w = al.get_cam2world().numpy()[tree]
        np.testing.assert_allclose(c2w[:, :3, :3], golden["init_cam2world"][tree, :3, :3], atol=1e-5, rtol=0)
        np.testing.assert_allclose(c2w, golden["init_cam2world"][tree], atol=2 * BLAS_SPREAD["cam2world"], rtol=0)
        np.testing.assert_allclose(
            _grid(al.get_depthmaps(), golden)[tree], golden["init_depth"][tree], atol=2 * BLAS_SPREAD["depth"], rtol=0
        )
        np.testing.assert_allclose(al.get_focals().numpy()[:, None], golden["init_focals"], rtol=1e-5)
        pw = al.get_pw_poses().numpy()
        np.testing.assert_allclose(pw, golden["init_pw_poses"], atol=2 * BLAS_SPREAD["pw_poses"], rtol=0)
