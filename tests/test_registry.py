"""The backbone registry: registration (both forms), a third-party adapter end to end, preprocessing and metric of
loaded backbones, path-vs-hub resolution, checkpoint config validation, and loading without a copy."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.checkpoints import config_to_model_string, dust3r_config_to_official, save_pretrained_folder, save_pth
from torch import Tensor

import easi3r
from easi3r import CheckpointError, Easi3RInputError, load_backbone
from easi3r.backbones import (
    PRETRAINED,
    Backbone,
    CrossAttentionReadout,
    DUSt3R,
    DUSt3RConfig,
    EncodedImages,
    MASt3R,
    PairPrediction,
    Preprocessing,
    PretrainedCfg,
    TokenMasks,
    register_backbone,
    unregister_backbone,
)
from easi3r.backbones.checkpoint import build_with_weights, load_weights, read_checkpoint

REF = Path(__file__).parent / "data" / "reference"
MAST3R = Path(__file__).parent / "data" / "mast3r" / "tiny_mast3r.pth"
TINY = DUSt3RConfig(
    enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32, dec_depth=4, dec_num_heads=4, head_type="linear"
)


@pytest.fixture
def registry():
    """Restores :data:`PRETRAINED` after a test that registers names."""
    saved = dict(PRETRAINED)
    yield PRETRAINED
    PRETRAINED.clear()
    PRETRAINED.update(saved)


def _tiny_net(seed: int = 0, config: DUSt3RConfig = TINY) -> DUSt3R:
    torch.manual_seed(seed)
    net = DUSt3R(config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


# -------------------------------------------------------------------------------- a third-party adapter


class WrappedDUSt3R(Backbone):
    """A third-party adapter: wraps a network through its public ``encode`` / ``decode`` only, and halves the
    points (a stand-in for a family with other heads)."""

    metric = True

    def __init__(self, inner: DUSt3R) -> None:
        super().__init__()
        self.inner = inner
        self.patch_size = inner.patch_size

    @property
    def attention_channels(self) -> int:
        return self.inner.attention_channels

    def encode(self, images: Tensor) -> EncodedImages:
        return self.inner.encode(images)

    def decode(
        self,
        enc_1: EncodedImages,
        enc_2: EncodedImages,
        *,
        reweight: TokenMasks | None,
        heads: bool,
        probe: CrossAttentionReadout | None,
    ) -> PairPrediction:
        pred = self.inner.decode(enc_1, enc_2, reweight=reweight, heads=heads, probe=probe)
        if pred.pts3d_1 is not None and pred.pts3d_2 is not None:
            pred.pts3d_1, pred.pts3d_2 = pred.pts3d_1 / 2, pred.pts3d_2 / 2
        pred.extras["calls"] = torch.ones(1)
        return pred


def test_third_party_adapter_runs_through_easi3r_by_name(registry):
    built = []

    @register_backbone("test-wrapped", preprocessing=Preprocessing(image_size=64), metric=True, size="1 MB")
    def wrapped() -> Backbone:
        built.append(1)
        inner = load_backbone(REF / "tiny_dust3r.pth", "cpu")  # fitted heads: plausible depths
        assert isinstance(inner, DUSt3R)
        return WrappedDUSt3R(inner)

    assert registry["test-wrapped"].adapter is wrapped and registry["test-wrapped"].hub_id is None
    assert "test-wrapped" in easi3r.backbones.list_backbones()
    pipeline = easi3r.Easi3R("test-wrapped", device="cpu", image_size=64, iterations=2, flow=False, clusters=8)
    assert built == [1] and isinstance(pipeline.backbone, WrappedDUSt3R)
    assert pipeline.backbone.preprocessing == Preprocessing(image_size=64) and pipeline.backbone.metric
    assert not pipeline.backbone.training
    rec = pipeline.run([REF / "frames" / f"frame_{k:02d}.png" for k in range(4)], progress=False)
    assert rec.num_frames == 4
    assert rec.depths.shape[1:] == (48, 64)  # 160x120 frames at long side 64
    assert np.isfinite(np.asarray(rec.depths)).all()


def test_register_forms_and_errors(registry):
    cfg = PretrainedCfg("ignored", WrappedDUSt3R, hub_id="me/wrapped", files=("model.pth",), size="3 MB")
    entry = register_backbone("wrapped", cfg)
    assert entry.name == "wrapped" and registry["wrapped"] is entry and entry.hub_id == "me/wrapped"
    with pytest.raises(Easi3RInputError, match="already registered"):
        register_backbone("wrapped", cfg)
    with pytest.raises(Easi3RInputError, match="already registered"):
        register_backbone("dust3r")
    assert register_backbone("wrapped", cfg, overwrite=True) is registry["wrapped"]

    @register_backbone("by-class", size="1 MB")
    class ByClass(WrappedDUSt3R):
        def __init__(self) -> None:
            super().__init__(_tiny_net())

    assert registry["by-class"].adapter is ByClass
    assert type(load_backbone("by-class", "cpu")) is ByClass
    assert unregister_backbone("by-class").adapter is ByClass and "by-class" not in registry
    with pytest.raises(Easi3RInputError, match="not registered"):
        unregister_backbone("by-class")
    with pytest.raises(Easi3RInputError, match="hub_id"):
        PretrainedCfg("x", lambda: _tiny_net(), hub_id="me/x")  # a hub checkpoint needs a Backbone class
    with pytest.raises(Easi3RInputError, match="metric"):
        register_backbone("x", metric="yes")(lambda: _tiny_net())
    with pytest.raises(Easi3RInputError, match="unexpected keyword"):
        register_backbone("x", colour="red")(lambda: _tiny_net())
    with pytest.raises(Easi3RInputError, match="image_size"):
        Preprocessing(image_size=100)

    register_backbone("not-a-backbone", PretrainedCfg("not-a-backbone", lambda: torch.nn.Linear(1, 1)))
    with pytest.raises(CheckpointError, match="not a Backbone"):
        load_backbone("not-a-backbone", "cpu")


def test_a_registered_class_without_from_checkpoint_says_so(registry, monkeypatch, tmp_path):
    net = _tiny_net()
    path = save_pth(tmp_path / "model.pth", dust3r_config_to_official(TINY), net.state_dict())
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda repo_id, filename, **kw: str(path))
    register_backbone("wrapped", PretrainedCfg("wrapped", WrappedDUSt3R, hub_id="me/wrapped", files=("model.pth",)))
    with pytest.raises(CheckpointError, match="WrappedDUSt3R cannot be built from a checkpoint"):
        load_backbone("wrapped", "cpu")


# -------------------------------------------------------------------------------- preprocessing and metric


def test_registry_entries_carry_preprocessing_and_metric():
    assert {"dust3r", "dust3r-512-linear", "dust3r-224-linear", "monst3r", "mast3r"} <= set(PRETRAINED)
    for name, cfg in PRETRAINED.items():
        assert isinstance(cfg.hub_id, str) and isinstance(cfg.size, str) and cfg.license == "CC BY-NC-SA 4.0", name
        assert cfg.preprocessing.mean == (0.5, 0.5, 0.5) and cfg.preprocessing.std == (0.5, 0.5, 0.5)
        assert cfg.preprocessing.crop
        assert cfg.metric == (name == "mast3r")
    assert PRETRAINED["dust3r-224-linear"].preprocessing.image_size == 224
    assert PRETRAINED["dust3r"].preprocessing.image_size == 512
    assert PRETRAINED["mast3r"].adapter is MASt3R


@pytest.mark.parametrize(("name", "image_size", "metric"), [("dust3r-224-linear", 224, False), ("mast3r", 512, True)])
def test_hub_entries_set_preprocessing_and_metric(monkeypatch, tmp_path, name, image_size, metric):
    if name == "mast3r":
        config, sd = read_checkpoint(MAST3R)
        folder = save_pretrained_folder(tmp_path / "hub", config, sd)
    else:
        net = _tiny_net(config=DUSt3RConfig(**{**vars(TINY), "img_size": (224, 224)}))
        folder = save_pretrained_folder(tmp_path / "hub", dust3r_config_to_official(net.config), net.state_dict())
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(folder / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    model = load_backbone(name, "cpu")
    assert calls == [(PRETRAINED[name].hub_id, "config.json"), (PRETRAINED[name].hub_id, "model.safetensors")]
    assert type(model) is (MASt3R if name == "mast3r" else DUSt3R)
    assert model.preprocessing.image_size == image_size and model.metric is metric


def test_file_loads_take_preprocessing_from_the_checkpoint(tmp_path):
    net = _tiny_net(config=DUSt3RConfig(**{**vars(TINY), "img_size": (224, 224)}))
    path = save_pth(tmp_path / "m224.pth", dust3r_config_to_official(net.config), net.state_dict())
    assert load_backbone(path, "cpu").preprocessing.image_size == 224
    assert load_backbone(REF / "tiny_dust3r.pth", "cpu").preprocessing == Preprocessing()


# -------------------------------------------------------------------------------- sources: path or hub id


@pytest.mark.parametrize("source", ["models/x.pth", "x.safetensors", "weights/model.bin", "a/b.ckpt", "run/m.pt"])
def test_missing_checkpoint_path_fails_at_once(monkeypatch, source):
    def no_hub(*args, **kwargs):
        raise AssertionError("a path must not go to the hub")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_hub)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="no such file") as e:
        load_backbone(source, "cpu")
    assert time.perf_counter() - start < 1.0 and source in str(e.value) and "\n" not in str(e.value)


def test_a_source_whose_parent_folder_exists_is_a_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    with pytest.raises(CheckpointError, match="'models/dust3r': no such file"):
        load_backbone("models/dust3r", "cpu")
    with pytest.raises(CheckpointError, match="no such file"):
        load_backbone(tmp_path / "missing", "cpu")  # a PathLike is always a path


# -------------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("depth_mode", 5),
        ("conf_mode", "exp"),
        ("enc_depth", "four"),
        ("enc_embed_dim", -32),
        ("dec_num_heads", 0),
        ("dec_depth", 2.5),
        ("pos_embed", "RoPEabc"),
        ("pos_embed", 100),
        ("img_size", 5.0),
        ("img_size", (512, -1)),
    ],
)
@pytest.mark.parametrize("form", ["pth", "config.json"])
def test_wrong_typed_config_values_name_the_field(tmp_path, field, value, form):
    net = _tiny_net()
    config = {**dust3r_config_to_official(TINY), field: value}
    if form == "pth":
        path = save_pth(tmp_path / "bad.pth", config_to_model_string(config), net.state_dict())
    else:
        path = save_pretrained_folder(tmp_path / "bad", config, net.state_dict())
    with pytest.raises(CheckpointError, match=field) as e:
        load_backbone(path, "cpu")
    assert "\n" not in str(e.value)


# -------------------------------------------------------------------------------- loading without a copy


def test_loaded_weights_are_the_checkpoint_tensors():
    """Built on the meta device, the network's parameters are the state-dict tensors themselves (no copy), except
    the DPT heads' convolution kernels, re-laid out channels-last (equal values); the outputs equal those of the
    copying path."""
    config, sd = read_checkpoint(REF / "tiny_dust3r.pth")
    arch = DUSt3RConfig.from_official(config)
    assigned = build_with_weights(lambda: DUSt3R(arch), sd, "tiny")
    params = dict(assigned.named_parameters(remove_duplicate=False))
    for key in ("enc_blocks.0.attn.qkv.weight", "downstream_head1.dpt.head.0.bias"):
        assert params[key].data_ptr() == sd[key].data_ptr()
    kernel = params["downstream_head1.dpt.scratch.layer_rn.0.weight"]
    assert kernel.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(kernel, sd["downstream_head1.dpt.scratch.layer_rn.0.weight"])
    copied = DUSt3R(arch)
    load_weights(copied, sd)
    assert copied.enc_norm.weight.data_ptr() != sd["enc_norm.weight"].data_ptr()
    img = torch.from_numpy(np.load(REF / "preprocess.npz")["img"][:2, :, :64, :96].copy())
    with torch.no_grad():
        a = assigned.eval().forward_pair(img[:1], img[1:])
        b = copied.eval().forward_pair(img[:1], img[1:])
    for field in ("pts3d_1", "conf_1", "pts3d_2", "conf_2", "cross_attn_1", "cross_attn_2"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
