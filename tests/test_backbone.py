"""The DUSt3R network: golden outputs of the official code, checkpoint formats, attention fast paths."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from helpers.checkpoints import dust3r_config_to_official, save_pretrained_folder, save_pth

from easi3r import CheckpointError, Easi3RInputError, load_backbone
from easi3r.backbones import PRETRAINED, DUSt3R, DUSt3RConfig, create_backbone
from easi3r.backbones._reference import ScoreMatrixRecorder, reference_attention
from easi3r.backbones.heads import DPTHead
from easi3r.backbones.layers import CrossAttention, RoPE2D, SelfAttention, attention, check_head_dim
from easi3r.backbones.reweight import TokenMasks

SMALL = DUSt3RConfig(enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32, dec_depth=4, dec_num_heads=4)


def small_net(seed: int = 0, config: DUSt3RConfig = SMALL) -> DUSt3R:
    torch.manual_seed(seed)
    net = DUSt3R(config).eval()
    with torch.no_grad():  # default init leaves LayerNorm/bias trivial: randomise everything
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


# -- golden outputs of the official implementation --------------------------------------------------------------


@pytest.fixture(scope="module")
def forward_ref(tiny_backbone, preprocess_npz):
    img = torch.from_numpy(preprocess_npz["img"][:2])
    with torch.no_grad():
        enc = tiny_backbone.encode(img)
        pred = tiny_backbone.forward_pair(enc[[0, 1]], enc[[1, 0]])
    # The encoder tokens reach the pipeline through EncodedImages (PairPrediction has no features field).
    return {"features_1": enc[[0, 1]].token_grid(), **vars(pred)}


def _grid(x: torch.Tensor, ref) -> np.ndarray:
    return x.numpy()[:, ref["grid_rows"]][:, :, ref["grid_cols"]]


def _stats(x: np.ndarray) -> np.ndarray:
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    return np.stack([x.mean(1), x.std(1), x.min(1), x.max(1), np.abs(x).mean(1)], axis=1)


@pytest.mark.parametrize(
    ("field", "key", "atol", "rtol"),
    [
        ("pts3d_1", "pts3d", 1e-4, 0),
        ("conf_1", "conf", 0, 1e-4),
        ("pts3d_2", "pts3d_in_other_view", 1e-4, 0),
        ("conf_2", "conf2", 0, 1e-4),
    ],
)
def test_forward_matches_official_pointmaps(forward_ref, reference_dir, field, key, atol, rtol):
    ref = np.load(reference_dir / "forward.npz")
    ours = forward_ref[field]
    assert ours.shape[1:3] == (384, 512)
    np.testing.assert_allclose(_grid(ours, ref), ref[key], atol=atol, rtol=rtol)
    # Whole-image statistics catch errors between the stored grid points.
    np.testing.assert_allclose(_stats(ours.numpy()), ref[f"{key}_stats"], atol=max(atol, 1e-5), rtol=max(rtol, 1e-5))


@pytest.mark.parametrize(
    ("field", "key"),
    [
        ("cross_attn_1", "cross_atten_maps_k_view1"),
        ("cross_attn_2", "cross_atten_maps_k_view2"),
        ("features_1", "match_feature"),
    ],
)
def test_forward_matches_official_readout_and_features(forward_ref, reference_dir, field, key):
    ref = np.load(reference_dir / "forward.npz")
    ours = forward_ref[field].numpy()
    assert ours.shape == ref[key].shape
    np.testing.assert_allclose(ours, ref[key], atol=1e-5, rtol=0)


def test_portrait_pair(tiny_backbone, preprocess_npz):
    img = torch.from_numpy(preprocess_npz["portrait_img"])
    with torch.no_grad():
        pred = tiny_backbone.forward_pair(img, img)
    assert pred.pts3d_1.shape == (1, 512, 384, 3)
    assert pred.cross_attn_1.shape == (1, 32, 24, 144)
    assert torch.isfinite(pred.pts3d_2).all()


# -- architecture and checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dust3r", "monst3r"])
def test_full_size_state_dict_matches_official_keys(reference_dir, name):
    ref = json.loads((reference_dir / "keys_vitl_dpt.json").read_text())
    with torch.device("meta"):
        net = create_backbone(name)
    ours = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in net.state_dict().items()]
    assert ours == ref["keys"]
    assert sum(p.numel() for p in net.parameters()) == ref["n_parameters"]


def test_linear_variants_key_count():
    with torch.device("meta"):
        net = create_backbone("dust3r-512-linear")
    assert len(net.state_dict()) == 877
    assert sum(p.numel() for p in net.parameters()) == 532_342_784
    assert PRETRAINED["dust3r-224-linear"].architecture.img_size == (224, 224)


def test_pth_and_safetensors_load_to_identical_outputs(tmp_path):
    net = small_net()
    pth = save_pth(tmp_path / "small.pth", SMALL_STRING, net.state_dict())
    folder = save_pretrained_folder(tmp_path / "small_hf", dust3r_config_to_official(SMALL), net.state_dict())
    a, b = load_backbone(pth, "cpu"), load_backbone(folder, "cpu")
    c = load_backbone(folder / "model.safetensors", "cpu")
    img = torch.randn(2, 3, 32, 48)
    outs = []
    with torch.no_grad():
        for model in (net, a, b, c):
            outs.append(model.forward_pair(img[:1], img[1:]))
    for other in outs[1:]:
        for field in ("pts3d_1", "conf_1", "pts3d_2", "conf_2", "cross_attn_1", "cross_attn_2"):
            assert torch.equal(getattr(outs[0], field), getattr(other, field)), field
        assert other.extras == {}


SMALL_STRING = (
    "AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
    "head_type='dpt', output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32, dec_depth=4, dec_num_heads=4)"
)


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED_MARKER', 'w').write('x')",))


def test_pth_with_pickled_callable_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"args": _Evil(), "model": {}}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError):
        load_backbone(path, "cpu")
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_wrong_shape_names_the_key(tmp_path):
    sd = small_net().state_dict()
    sd["dec_blocks.1.cross_attn.projk.weight"] = torch.zeros(32, 16)
    path = save_pth(tmp_path / "bad.pth", SMALL_STRING, sd)
    with pytest.raises(CheckpointError, match=r"dec_blocks\.1\.cross_attn\.projk\.weight"):
        load_backbone(path, "cpu")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = small_net().state_dict()
    del sd["enc_norm.bias"]
    sd["extra.weight"] = torch.zeros(1)
    path = save_pth(tmp_path / "bad.pth", SMALL_STRING, sd)
    with pytest.raises(CheckpointError, match=r"enc_norm\.bias.*extra\.weight"):
        load_backbone(path, "cpu")


def test_either_alias_set_loads(tmp_path):
    net = small_net()
    sd = {k: v for k, v in net.state_dict().items() if ".layer_rn." not in k}  # safetensors-style
    path = save_pth(tmp_path / "a.pth", SMALL_STRING, sd)
    loaded = load_backbone(path, "cpu")
    w = loaded.downstream_head1.dpt.scratch.layer_rn[2].weight
    assert torch.equal(w, net.downstream_head1.dpt.scratch.layer3_rn.weight)


def test_unknown_source_and_offline_hub(monkeypatch, tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing path"):
        load_backbone("no-such-backbone", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        load_backbone("monst3r", "cpu")


def test_hub_repo_id_resolves_through_huggingface_hub(monkeypatch, tmp_path):
    net = small_net()
    folder = save_pretrained_folder(tmp_path / "snapshot", dust3r_config_to_official(SMALL), net.state_dict())
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(folder / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    loaded = load_backbone("someone/Some_DUSt3R", "cpu")
    assert calls == [("someone/Some_DUSt3R", "config.json"), ("someone/Some_DUSt3R", "model.safetensors")]
    assert torch.equal(loaded.enc_norm.weight, net.enc_norm.weight)


# -- attention fast paths against their references --------------------------------------------------------------


def test_fused_reweighted_attention_equals_reference(device, dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=dtype) * 2 for n in (10, 14, 14))
    qdyn = torch.rand(2, 10, generator=g) > 0.6
    kdyn = torch.rand(2, 14, generator=g) > 0.5
    q, k, v, qdyn, kdyn = (t.to(device) for t in (q, k, v, qdyn, kdyn))
    masks = TokenMasks(qdyn, kdyn)
    ref = reference_attention(q, k, v, scale=8**-0.5, masks=masks)
    fused = attention(q, k, v, scale=8**-0.5, reweight=masks, fused=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fused, ref, atol=tol, rtol=tol)
    assert torch.equal(attention(q, k, v, scale=8**-0.5, reweight=masks, fused=False), ref)
    # Without masks the fused path is plain SDPA, equal to the explicit reference.
    plain = attention(q, k, v, scale=8**-0.5, fused=False)
    torch.testing.assert_close(attention(q, k, v, scale=8**-0.5), plain, atol=tol, rtol=tol)
    # Rows of static queries lose exactly the probability mass of the dynamic keys: no renormalisation.
    assert not torch.allclose(fused, plain)
    dyn = qdyn[:, None, :, None].expand_as(plain)
    torch.testing.assert_close(fused[dyn], plain[dyn], atol=tol, rtol=tol)


def test_readout_equals_mean_of_score_matrices():
    net = small_net()
    img = torch.randn(2, 3, 48, 64)
    rec = ScoreMatrixRecorder()
    with torch.no_grad():
        fast = net.forward_pair(img[:1], img[1:], heads=False)
        slow = net.forward_pair(img[:1], img[1:], heads=False, probe=rec)
    assert fast.pts3d_1 is None and fast.conf_2 is None
    n = 3 * 4
    assert rec.matrices[1][0].shape == (1, 4, n, n)
    manual = torch.stack([rec.matrices[1][layer].mean(dim=-2) for layer in range(4)], dim=1)  # (1, L, H, Nk)
    manual = manual.reshape(1, 16, n).transpose(1, 2).reshape(1, 3, 4, 16)
    torch.testing.assert_close(slow.cross_attn_1, manual)
    torch.testing.assert_close(fast.cross_attn_1, manual, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        silent = net.forward_pair(img[:1], img[1:], heads=False, readout=False)
    assert silent.cross_attn_1 is None and silent.cross_attn_2 is None
    assert silent.extras == {} and fast.extras == {}


def test_readout_without_heads_skips_the_last_layer_and_equals_the_full_pass():
    net = small_net()
    img = torch.randn(2, 3, 48, 64)
    calls: list[str] = []
    last_1, last_2 = net.dec_blocks[-1], net.dec_blocks2[-1]
    for name, module in [("mlp", last_1.mlp), ("mlp2", last_2.mlp), ("proj", last_1.cross_attn.projv)]:
        module.register_forward_hook(lambda *_args, name=name: calls.append(name))
    with torch.no_grad():
        full = net.forward_pair(img[:1], img[1:], heads=True)
        assert sorted(calls) == ["mlp", "mlp2", "proj"]
        calls.clear()
        readout_only = net.forward_pair(img[:1], img[1:], heads=False)
    assert calls == []  # the last layer's values, attention product and MLP are not computed
    # Bit-identical: the readout of the last layer is computed by the same operations.
    assert torch.equal(readout_only.cross_attn_1, full.cross_attn_1)
    assert torch.equal(readout_only.cross_attn_2, full.cross_attn_2)


def _attention_paths(net: torch.nn.Module) -> set[bool]:
    return {m.fused for m in net.modules() if isinstance(m, (SelfAttention, CrossAttention))}


def test_fused_and_explicit_network_paths_agree():
    net = small_net()
    explicit = DUSt3R(SMALL, fused_attention=False).eval()
    explicit.load_state_dict(net.state_dict())
    assert _attention_paths(net) == {True} and _attention_paths(explicit) == {False}
    img = torch.randn(2, 3, 32, 48)
    masks = torch.zeros(2, 32, 48, dtype=torch.bool)
    masks[:, 8:20, 10:30] = True
    with torch.no_grad():
        a = net.forward_pair(img[:1], img[1:], dynamic_mask1=masks[:1], dynamic_mask2=masks[1:])
        b = explicit.forward_pair(img[:1], img[1:], dynamic_mask1=masks[:1], dynamic_mask2=masks[1:])
    for field in ("pts3d_1", "conf_1", "pts3d_2", "conf_2", "cross_attn_1", "cross_attn_2"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), atol=1e-5, rtol=1e-5)


def test_reweighting_changes_only_what_it_should():
    net = small_net()
    img = torch.randn(2, 3, 32, 48)
    none = torch.zeros(1, 32, 48, dtype=torch.bool)
    some = none.clone()
    some[:, :16, :16] = True
    with torch.no_grad():
        base = net.forward_pair(img[:1], img[1:])
        # No dynamic key: nothing is dropped.
        same = net.forward_pair(img[:1], img[1:], dynamic_mask1=some, dynamic_mask2=none)
        # Every query dynamic: nothing is dropped either.
        everything = torch.ones_like(some)
        same2 = net.forward_pair(img[:1], img[1:], dynamic_mask1=everything, dynamic_mask2=some)
        changed = net.forward_pair(img[:1], img[1:], dynamic_mask1=none, dynamic_mask2=some)
    for other in (same, same2):
        torch.testing.assert_close(other.pts3d_1, base.pts3d_1, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(changed.pts3d_1, base.pts3d_1, atol=1e-4)
    # The readout of the first reference layer is taken before any masking takes effect.
    torch.testing.assert_close(changed.cross_attn_1[..., :4], base.cross_attn_1[..., :4])


def test_encode_once_equals_images_per_pair(device):
    net = small_net().to(device)
    img = torch.randn(3, 3, 32, 48, device=device)
    with torch.no_grad():
        enc = net.encode(img)
        a = net.forward_pair(enc[[0, 2]], enc[[1, 0]])
        b = net.forward_pair(img[[0, 2]], img[[1, 0]])
    torch.testing.assert_close(a.pts3d_2, b.pts3d_2)
    assert a.pts3d_1.device.type == device


def test_bad_pth_config_string_is_refused(tmp_path):
    sd = small_net().state_dict()
    path = save_pth(tmp_path / "x.pth", SMALL_STRING.replace("head_type='dpt'", "head_type='sparse'"), sd)
    with pytest.raises(CheckpointError, match="unsupported head_type 'sparse'"):
        load_backbone(path, "cpu")
    # A catmlp+dpt head makes it a MASt3R checkpoint, whose output_mode must then carry descriptors.
    path = save_pth(tmp_path / "y.pth", SMALL_STRING.replace("head_type='dpt'", "head_type='catmlp+dpt'"), sd)
    with pytest.raises(CheckpointError, match="output_mode 'pts3d'"):
        load_backbone(path, "cpu")


# -- explicit options and typed errors ---------------------------------------------------------------------------


def test_head_chunk_size_does_not_change_outputs(tmp_path):
    net = small_net()
    img = torch.randn(3, 3, 32, 48)
    outs = []
    for chunk in (1, 2, None):
        other = DUSt3R(SMALL, head_chunk_size=chunk).eval()
        other.load_state_dict(net.state_dict())
        assert other.head_chunk_size == chunk
        with torch.no_grad():
            outs.append(other.forward_pair(img, img[[1, 2, 0]]))
    for other in outs[1:]:
        for field in ("pts3d_1", "conf_1", "pts3d_2", "conf_2"):
            torch.testing.assert_close(getattr(other, field), getattr(outs[0], field), atol=1e-6, rtol=1e-6)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(Easi3RInputError, match="head_chunk_size"):
            DUSt3R(SMALL, head_chunk_size=bad)


def test_loaders_pass_the_options(tmp_path):
    made = create_backbone(SMALL, head_chunk_size=None, fused_attention=False)
    assert made.head_chunk_size is None and _attention_paths(made) == {False}
    assert _attention_paths(create_backbone(SMALL)) == {True} and create_backbone(SMALL).head_chunk_size == 1
    path = save_pth(tmp_path / "small.pth", SMALL_STRING, small_net().state_dict())
    loaded = load_backbone(path, "cpu", head_chunk_size=4, fused_attention=False)
    assert loaded.head_chunk_size == 4 and _attention_paths(loaded) == {False}
    default = load_backbone(path, "cpu")
    assert default.head_chunk_size == 1 and _attention_paths(default) == {True}


def _raises_one_line(error: type[Exception], match: str, fn, *args, **kwargs) -> None:
    with pytest.raises(error, match=match) as info:
        fn(*args, **kwargs)
    assert type(info.value) is error and "\n" not in str(info.value), str(info.value)


def test_bad_images_and_masks_raise_input_errors():
    net = small_net()
    img = torch.randn(2, 3, 32, 48)
    _raises_one_line(Easi3RInputError, r"images must have shape \(B, 3, H, W\)", net.encode, torch.zeros(2, 4, 32, 48))
    _raises_one_line(Easi3RInputError, r"images must have shape", net.encode, torch.zeros(3, 32, 48))
    _raises_one_line(Easi3RInputError, "images must be a", net.encode, img.numpy())
    _raises_one_line(Easi3RInputError, "multiple of the patch size 16", net.encode, torch.zeros(1, 3, 30, 48))
    _raises_one_line(Easi3RInputError, "differ in size: 2 vs 1", net.forward_pair, img, img[:1])
    mask = torch.zeros(1, 32, 48, dtype=torch.bool)
    _raises_one_line(Easi3RInputError, "both", net.forward_pair, img[:1], img[1:], dynamic_mask1=mask)
    _raises_one_line(Easi3RInputError, "both", net.forward_pair, img[:1], img[1:], dynamic_mask2=mask)
    for bad, match in [
        (torch.zeros(1, 32, 32, dtype=torch.bool), r"dynamic_mask2 must have shape \(B, H, W\) with W = 48"),
        (torch.zeros(2, 32, 48, dtype=torch.bool), r"dynamic_mask2 must have shape \(B, H, W\) with B = 1"),
        (torch.zeros(1, 32, 48), "dtype bool"),
    ]:
        _raises_one_line(
            Easi3RInputError, match, net.forward_pair, img[:1], img[1:], dynamic_mask1=mask, dynamic_mask2=bad
        )


def test_bad_architecture_raises_checkpoint_errors():
    _raises_one_line(CheckpointError, "head dim", DUSt3RConfig, enc_embed_dim=40, enc_num_heads=4)
    _raises_one_line(CheckpointError, "head dim", DUSt3RConfig, dec_embed_dim=36, dec_num_heads=4)
    _raises_one_line(CheckpointError, "head dim", check_head_dim, 30, 4)
    check_head_dim(32, 4)
    _raises_one_line(CheckpointError, "divisible by 4", RoPE2D(), torch.zeros(1, 2, 5, 6), torch.zeros(1, 5, 2).long())


def test_channels_last_dpt_head_matches_the_nchw_reference(device):
    torch.manual_seed(0)
    fast = DPTHead(32, 48, 4).to(device).eval()
    slow = DPTHead(32, 48, 4, channels_last=False).to(device).eval()  # the official NCHW layout
    slow.load_state_dict(fast.state_dict())
    assert fast.channels_last
    tokens = [torch.randn(2, 6 * 8, 32 if k == 0 else 48, device=device) for k in range(5)]
    with torch.no_grad():
        a, b = fast(tokens, (96, 128)), slow(tokens, (96, 128))
    assert a.shape == (2, 4, 96, 128) and a.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
