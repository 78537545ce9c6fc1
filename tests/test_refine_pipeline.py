"""SAM2 in the pipeline (fake predictor, exact): the union re-weights pass 2 and is excluded from the flow
term, the SAM2 masks are output (official ``refine_motion_mask_w_sam2`` / ``save_dynamic_masks``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.sam2_tiny import FakeVideoPredictor

import easi3r.pipeline as pipeline
from easi3r import Easi3R
from easi3r.demo import demo_backbone, render_video
from easi3r.frames import load_frames
from easi3r.refine import SAM2VideoRefiner

BOX = (0, 12, 0, 16)  # what the fake SAM2 "sees" on every frame, whatever its prompts


@pytest.fixture(scope="module")
def small_video():
    video = render_video(4, 64, 48)
    frames = load_frames(video.frames, 64)
    return frames, demo_backbone(frames.images)


@pytest.mark.parametrize("alignment", ["global", "window"])
def test_union_reweights_and_drives_flow_sam2_is_output(small_video, monkeypatch, alignment):
    frames, net = small_video
    reweight, aligned = [], []
    real_run_pass, real_align = pipeline.run_pass, pipeline.Easi3R.align

    def spy_run_pass(*args, **kwargs):
        reweight.append(kwargs.get("masks"))
        return real_run_pass(*args, **kwargs)

    def spy_align(self, mode, edges, frames_, masks, **kwargs):
        aligned.append((masks.clone(), kwargs["source"]))
        return real_align(self, mode, edges, frames_, masks, **kwargs)

    monkeypatch.setattr(pipeline, "run_pass", spy_run_pass)
    monkeypatch.setattr(pipeline.Easi3R, "align", spy_align)
    fake = FakeVideoPredictor(box=BOX)
    model = Easi3R(backbone=net, device="cpu", image_size=64, iterations=2, alignment=alignment, align_window=3,
                   sam2_refiner=SAM2VideoRefiner(fake, device="cpu"))  # fmt: skip
    trace = pipeline.Trace()
    rec = model.run(frames, progress=False, trace=trace)

    box = torch.zeros(4, 48, 64, dtype=torch.bool)
    box[:, BOX[0] : BOX[1], BOX[2] : BOX[3]] = True
    att1, att2 = trace.segmentation1.masks, trace.segmentation2.masks
    r1, r2 = trace.refined1, trace.refined2
    assert torch.equal(r1.sam2, box) and torch.equal(r1.union, att1 | box)
    assert torch.equal(r2.sam2, box) and torch.equal(r2.union, att2 | box)
    # the run is non-trivial: attention, SAM2 and union masks all differ
    assert (att1 & ~box).any() and (box & ~att1).any() and (att2 & ~box).any() and (box & ~att2).any()

    assert reweight[0] is None  # pass 1: plain attention
    assert torch.equal(reweight[1], r1.union)  # pass 2 re-weighted by the pass-1 union
    ((flow_masks, source),) = aligned
    assert torch.equal(flow_masks.cpu(), r2.union)  # the flow term excludes the pass-2 union
    if alignment == "window":
        assert torch.equal(source.masks, r1.union)  # the window pointmaps re-run pass 2 with the same masks
        assert all(m is not None and torch.equal(m, r1.union) for m in reweight[2:])
    np.testing.assert_array_equal(rec.masks, box.numpy())  # SAM2 masks are output
    assert [c[0] for c in fake.calls].count("init_state") == 2  # once per pass


def test_config_sam2_builds_the_refiner_before_any_frame(small_video, monkeypatch):
    _, net = small_video
    built = []

    def fake_from_pretrained(weights, *, device=None, **kwargs):
        built.append((weights, str(device)))
        return SAM2VideoRefiner(FakeVideoPredictor(), device="cpu")

    monkeypatch.setattr(pipeline.SAM2VideoRefiner, "from_pretrained", staticmethod(fake_from_pretrained))
    model = Easi3R(backbone=net, device="cpu", sam2="facebook/sam2.1-hiera-large")
    assert built == [("facebook/sam2.1-hiera-large", "cpu")] and isinstance(model.sam2, SAM2VideoRefiner)
    assert Easi3R(backbone=net, device="cpu").sam2 is None
