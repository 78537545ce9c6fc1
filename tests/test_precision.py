"""The network's precision option: ``Easi3RConfig.precision`` and :func:`easi3r.device.network_precision`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from easi3r import Easi3R, Easi3RConfig, Easi3RInputError
from easi3r.demo import demo_backbone, render_video
from easi3r.device import check_precision, network_precision
from easi3r.frames import load_frames
from easi3r.pipeline import encode_frames, run_pass


@pytest.fixture(scope="module")
def small():
    video = render_video(4, 64, 48)
    frames = load_frames(video.frames, image_size=64)
    return video, frames, demo_backbone(frames.images)


def test_bad_precisions_are_one_line_errors_before_any_work(small):
    video, _, net = small
    with pytest.raises(Easi3RInputError, match="precision must be"):
        Easi3RConfig(precision="fp16")
    with pytest.raises(Easi3RInputError, match=r"^precision 'tf32' needs a CUDA device[^\n]*$"):
        Easi3R(backbone=net, device="cpu", precision="tf32")
    with pytest.raises(Easi3RInputError, match="'bf16' runs on cpu or cuda"):
        check_precision("bf16", torch.device("mps"))
    with pytest.raises(Easi3RInputError, match="precision must be one of"):
        check_precision("half", torch.device("cpu"))


def _dtypes_seen(net, fn) -> set[torch.dtype]:
    """Output dtypes of the decoders' and the heads' first layers while ``fn`` runs."""
    seen: set[torch.dtype] = set()
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
        for m in (net.dec_blocks[0].mlp.fc1, net.enc_blocks[0].mlp.fc1, net.downstream_head1.proj)
    ]
    try:
        fn()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_bf16_runs_encoder_and_decoders_in_bfloat16_heads_and_outputs_in_float32(small, device):
    _, frames, net = small
    net = net.to(device)
    edges = torch.tensor([[0, 1], [1, 0], [2, 3], [3, 2]])
    out: dict[str, object] = {}

    def both(precision: str) -> None:
        enc = encode_frames(net, frames.images, precision=precision)
        out[precision] = (enc, run_pass(net, enc, edges, heads=True, progress=False, precision=precision))

    assert _dtypes_seen(net, lambda: both("fp32")) == {torch.float32}
    # The encoder and decoder layers ran in bfloat16, the (linear) head in float32 on float32 tokens.
    assert _dtypes_seen(net, lambda: both("bf16")) == {torch.bfloat16, torch.float32}
    (enc_32, p_32), (enc_16, p_16) = out["fp32"], out["bf16"]
    assert enc_32.tokens.dtype == torch.float32 and enc_16.tokens.dtype == torch.bfloat16
    for name in ("pts_1", "pts_2", "conf_1", "conf_2"):
        a, b = getattr(p_32.pointmaps, name), getattr(p_16.pointmaps, name)
        assert b.dtype == torch.float32 and torch.isfinite(b).all()
        assert not torch.equal(a, b)  # other numbers: bf16 is an approximation, not a relabelled fp32
    for stat in ("src_mean", "ref_mean"):
        s_32, s_16 = getattr(p_32.attention.stats(), stat), getattr(p_16.attention.stats(), stat)
        assert s_16.dtype == s_32.dtype and torch.isfinite(s_16).all()
        # bfloat16 keeps 8 mantissa bits: the readout of a random network agrees to a few per cent.
        assert float((s_16 - s_32).abs().max() / s_32.abs().max()) < 0.1


def test_fp32_is_the_reference_path(small):
    _, frames, net = small
    edges = torch.tensor([[0, 1], [3, 2]])
    enc = encode_frames(net, frames.images)
    with torch.inference_mode():
        plain = net.forward_pair(enc[edges[:, 0]], enc[edges[:, 1]])
    p = run_pass(net, enc, edges, heads=True, progress=False, precision="fp32").pointmaps
    assert torch.equal(p.pts_1, plain.pts3d_1) and torch.equal(p.conf_2, plain.conf_2)


def test_bf16_pipeline_returns_float32_outputs(small):
    video, _, net = small
    rec = Easi3R(backbone=net, device="cpu", image_size=64, iterations=3, precision="bf16").run(
        video.frames, progress=False
    )
    assert rec.points.dtype == np.float32 and np.isfinite(rec.points).all()
    assert rec.dynamic_maps.dtype == np.float32 and rec.masks.dtype == bool


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")
@pytest.mark.parametrize(("precision", "inside"), [("tf32", True), ("fp32", False), ("bf16", False)])
def test_cuda_tf32_flags_are_set_for_the_block_and_restored(precision, inside):
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    try:
        for before in (False, True):
            matmul.allow_tf32 = cudnn.allow_tf32 = before
            with network_precision(precision, torch.device("cuda")):
                assert matmul.allow_tf32 is inside and cudnn.allow_tf32 is inside
            assert matmul.allow_tf32 is before and cudnn.allow_tf32 is before
        with pytest.raises(RuntimeError, match="boom"), network_precision(precision, torch.device("cuda")):
            raise RuntimeError("boom")
        assert matmul.allow_tf32 is before
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved
