"""The MASt3R adapter: golden outputs of the official code (tests/data/mast3r), state-dict names, config parsing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.checkpoints import save_pretrained_folder

from easi3r import CheckpointError, load_backbone
from easi3r.backbones import PRETRAINED, DUSt3R, PairPrediction
from easi3r.backbones.checkpoint import parse_model_string, read_checkpoint
from easi3r.backbones.mast3r import MASt3R, MASt3RConfig

DATA = Path(__file__).parent / "data" / "mast3r"
REFERENCE = Path(__file__).parent / "data" / "reference"

RELEASED = (
    "AsymmetricMASt3R(enc_depth=24, dec_depth=12, enc_embed_dim=1024, dec_embed_dim=768, enc_num_heads=16, "
    "dec_num_heads=12, pos_embed='RoPE100', img_size=(512, 512), head_type='catmlp+dpt', output_mode='pts3d+desc24', "
    "depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), desc_mode=('norm'), two_confs=True, "
    "desc_conf_mode=('exp', 0, inf), landscape_only=False)"
)

# Small enough to build in a fraction of a second (the DPT heads' internal widths are fixed by the official code).
SMALL = dict(enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32, dec_depth=4, dec_num_heads=4)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(DATA / "forward.npz") as f:
        return dict(f)


@pytest.fixture(scope="module")
def predictions() -> dict[str, tuple[PairPrediction, torch.Tensor]]:
    """Per-device cache: the ``device`` fixture is function-scoped, the forward pass is run once per device."""
    return {}


@pytest.fixture
def prediction(predictions, device) -> tuple[PairPrediction, torch.Tensor]:
    """The tiny checkpoint on the official pair batch: view 1 = frames [0, 1], view 2 = frames [1, 0]; with the view-1
    encoder tokens on their grid."""
    if device not in predictions:
        net = load_backbone(DATA / "tiny_mast3r.pth", device=device)
        assert isinstance(net, MASt3R) and net.metric
        with np.load(REFERENCE / "preprocess.npz") as f:
            img = torch.from_numpy(f["img"][:2]).to(device)
        with torch.no_grad():
            enc = net.encode(img)
            pred = net.forward_pair(enc[[0, 1]], enc[[1, 0]])
        assert isinstance(pred, PairPrediction)
        predictions[device] = pred, enc[[0, 1]].token_grid()
    return predictions[device]


def _stats(x: np.ndarray) -> np.ndarray:
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    return np.stack([x.mean(1), x.std(1), x.min(1), x.max(1), np.abs(x).mean(1)], axis=1)


def _ours(prediction: tuple[PairPrediction, torch.Tensor], name: str) -> np.ndarray:
    pred, features = prediction
    value = features if name == "features_1" else pred.extras[name] if name in pred.extras else getattr(pred, name)
    assert value is not None
    return value.detach().cpu().numpy()


@pytest.mark.parametrize(
    ("name", "key", "grid", "atol", "rtol"),
    [
        ("pts3d_1", "pts3d", "grid", 1e-4, 0),
        ("conf_1", "conf", "grid", 0, 1e-4),
        ("pts3d_2", "pts3d_in_other_view", "grid", 1e-4, 0),
        ("conf_2", "conf2", "grid", 0, 1e-4),
        ("desc_1", "desc", "desc_grid", 1e-5, 0),
        ("desc_conf_1", "desc_conf", "desc_grid", 0, 1e-4),
        ("desc_2", "desc2", "desc_grid", 1e-5, 0),
        ("desc_conf_2", "desc_conf2", "desc_grid", 0, 1e-4),
        ("cross_attn_1", "cross_atten_maps_k_view1", "token_grid", 1e-5, 0),
        ("cross_attn_2", "cross_atten_maps_k_view2", "token_grid", 1e-5, 0),
        ("features_1", "enc_feature", "token_grid", 1e-5, 0),
    ],
)
def test_forward_matches_official(prediction, golden, name, key, grid, atol, rtol):
    ours = _ours(prediction, name)
    assert ours.shape[:3] == ((2, 384, 512) if grid != "token_grid" else (2, 24, 32))
    stored = ours[:, golden[f"{grid}_rows"]][:, :, golden[f"{grid}_cols"]]
    np.testing.assert_allclose(stored, golden[key], atol=atol, rtol=rtol)
    # Full-resolution statistics catch errors between the stored grid points.
    np.testing.assert_allclose(_stats(ours), golden[f"{key}_stats"], atol=max(atol, 1e-5), rtol=max(rtol, 1e-5))


def test_prediction_fields(prediction):
    prediction = prediction[0]
    assert set(prediction.extras) == {"desc_1", "desc_conf_1", "desc_2", "desc_conf_2"}
    for view in (1, 2):
        desc = prediction.extras[f"desc_{view}"]
        assert desc.shape == (2, 384, 512, 24) and desc.dtype == torch.float32
        torch.testing.assert_close(desc.norm(dim=-1), torch.ones(2, 384, 512, device=desc.device))
        assert bool((prediction.extras[f"desc_conf_{view}"] > 0).all())  # desc_conf_mode ('exp', 0, inf)
    assert MASt3R.metric is True


def test_checkpoint_keys_are_official(golden):
    """The tiny checkpoint was written by the official model: our names and order equal its state dict."""
    config, state_dict = read_checkpoint(DATA / "tiny_mast3r.pth")
    assert config is not None
    with torch.device("meta"):
        net = MASt3R(MASt3RConfig.from_official(config))
    assert list(net.state_dict()) == list(state_dict)
    assert all(tuple(v.shape) == tuple(state_dict[k].shape) for k, v in net.state_dict().items())


def test_full_size_state_dict_matches_official_keys():
    ref = json.loads((DATA / "keys_vitl_catmlpdpt.json").read_text())
    _, kwargs = parse_model_string(ref["model"])
    cfg = MASt3RConfig.from_official(kwargs)
    assert cfg == MASt3RConfig()  # the defaults are the released architecture
    with torch.device("meta"):
        net = MASt3R(cfg)
    ours = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in net.state_dict().items()]
    assert ours == ref["keys"]
    assert sum(p.numel() for p in net.parameters()) == ref["n_parameters"]
    shared = {n for n, _ in net.named_parameters(remove_duplicate=False)} - {n for n, _ in net.named_parameters()}
    assert shared == set(ref["aliases"])


def test_from_official_released_string():
    cfg = MASt3RConfig.from_official(parse_model_string(RELEASED)[1])
    assert (cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.dec_depth, cfg.head_type) == (1024, 768, 12, "catmlp+dpt")
    assert (cfg.local_feat_dim, cfg.two_confs, cfg.desc_conf_mode) == (24, True, ("exp", 0.0, math.inf))
    assert cfg.dust3r_config().head_type == "dpt"


def test_from_official_defaults_follow_the_official_constructor():
    # AsymmetricMASt3R(two_confs=False, desc_conf_mode=None): one confidence, desc_conf_mode = conf_mode.
    cfg = MASt3RConfig.from_official({"head_type": "catmlp+dpt", "output_mode": "pts3d+desc16"})
    assert (cfg.local_feat_dim, cfg.two_confs, cfg.desc_conf_mode) == (16, False, ("exp", 1.0, math.inf))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("head_type", "dpt"),
        ("head_type", "catconv"),
        ("output_mode", "pts3d"),
        ("output_mode", "pts3d+descX"),
        ("desc_mode", "raw"),
        ("desc_conf_mode", ("sigmoid", 0, 1)),
        ("desc_conf_mode", ("exp", 2, 1)),
        ("two_confs", "yes"),
        ("conf_mode", ("exp", 0, math.inf)),
        ("depth_mode", ("linear", -math.inf, math.inf)),
        ("pos_embed", "cosine"),
        ("not_an_option", 1),
    ],
)
def test_from_official_rejects_unsupported_fields(field, value):
    kwargs = parse_model_string(RELEASED)[1]
    kwargs[field] = value
    with pytest.raises(CheckpointError) as info:
        MASt3RConfig.from_official(kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert field in message or repr(value) in message


def test_config_rejects_bad_values():
    with pytest.raises(CheckpointError, match="local_feat_dim"):
        MASt3RConfig(local_feat_dim=0)
    with pytest.raises(CheckpointError, match="head_type"):
        MASt3RConfig(head_type="dpt")
    with pytest.raises(CheckpointError, match="dec_depth"):
        MASt3RConfig(dec_depth=2)


def test_adapter_follows_the_checkpoint():
    """AsymmetricMASt3R -> MASt3R (metric), AsymmetricCroCo3DStereo -> DUSt3R; a DUSt3R config is no MASt3R."""
    dust3r = load_backbone(REFERENCE / "tiny_dust3r.pth", "cpu")
    assert type(dust3r) is DUSt3R and not dust3r.metric
    config, _ = read_checkpoint(REFERENCE / "tiny_dust3r.pth")
    with pytest.raises(CheckpointError, match="head_type"):
        MASt3RConfig.from_official(config)
    entry = PRETRAINED["mast3r"]
    assert entry.hub_id == "naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric"
    assert entry.files == ("config.json", "model.safetensors") and entry.metric and entry.adapter is MASt3R
    assert entry.architecture == MASt3RConfig.from_official(parse_model_string(RELEASED)[1])


def test_single_confidence_variant_copies_the_point_confidence():
    """two_confs=False (official default): desc_conf is a copy of the point confidence (official postprocess)."""
    torch.manual_seed(0)
    net = MASt3R(MASt3RConfig(**SMALL, two_confs=False, local_feat_dim=8)).eval()
    assert net.downstream_head1.head_local_features.fc2.out_features == 8 * 16**2
    with torch.no_grad():
        pred = net.forward_pair(torch.randn(1, 3, 32, 48), torch.randn(1, 3, 32, 48))
    assert pred.conf_1 is not None and pred.conf_2 is not None
    torch.testing.assert_close(pred.extras["desc_conf_1"], pred.conf_1, rtol=0, atol=0)
    torch.testing.assert_close(pred.extras["desc_conf_2"], pred.conf_2, rtol=0, atol=0)


def test_heads_off_and_plain_dust3r_fields():
    torch.manual_seed(0)
    net = MASt3R(MASt3RConfig(**SMALL, local_feat_dim=8)).eval()
    img = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        enc = net.encode(img)
        off = net.forward_pair(enc[0], enc[1], heads=False)
        on = net.forward_pair(enc[0], enc[1])
    assert off.extras == {} and off.pts3d_1 is None
    assert off.cross_attn_1 is not None and on.cross_attn_1 is not None
    torch.testing.assert_close(off.cross_attn_1, on.cross_attn_1, rtol=0, atol=0)
    assert on.extras["desc_1"].shape == (1, 32, 48, 8)
    assert not hasattr(net, "_extras")  # no state is kept between calls


def test_pth_and_hub_safetensors_forms_load_to_identical_outputs(tmp_path):
    """The official .pth and the hub's config.json + model.safetensors (written by the test tooling from the same
    checkpoint; the DPT aliases are dropped there) give bit-identical outputs, descriptors included."""
    config, sd = read_checkpoint(DATA / "tiny_mast3r.pth")
    folder = save_pretrained_folder(tmp_path / "hub", config, sd)
    assert json.loads((folder / "config.json").read_text())["head_type"] == "catmlp+dpt"
    pth, hub = load_backbone(DATA / "tiny_mast3r.pth", "cpu"), load_backbone(folder, "cpu")
    assert type(hub) is MASt3R and hub.metric
    with np.load(REFERENCE / "preprocess.npz") as f:
        img = torch.from_numpy(f["img"][:2, :, :64, :96].copy())
    with torch.no_grad():
        a, b = pth.forward_pair(img[:1], img[1:]), hub.forward_pair(img[:1], img[1:])
    for field in ("pts3d_1", "conf_1", "pts3d_2", "conf_2", "cross_attn_1", "cross_attn_2"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert set(a.extras) == set(b.extras) == {"desc_1", "desc_conf_1", "desc_2", "desc_conf_2"}
    for key in a.extras:
        assert torch.equal(a.extras[key], b.extras[key]), key
