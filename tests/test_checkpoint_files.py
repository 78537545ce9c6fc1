"""Checkpoint files: safe reading of official .pth / safetensors / folders, literal-only config parsing, and the
official-format and hub-format writers of the test tooling (tests/helpers/checkpoints.py)."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import checkpoints as writers
from helpers.checkpoints import (
    config_to_model_string,
    dpt_alias_map,
    normalize_config,
    save_pretrained_folder,
    save_pth,
)
from safetensors.torch import load_file, save_file

from easi3r.backbones.checkpoint import parse_model_string, read_checkpoint
from easi3r.errors import CheckpointError

REF = Path(__file__).parent / "data" / "reference"
TINY = REF / "tiny_dust3r.pth"
STR = (
    "AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
    "head_type='dpt', output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "enc_embed_dim=64, enc_depth=4, enc_num_heads=4, dec_embed_dim=48, dec_depth=12, dec_num_heads=12)"
)
TINY_CONFIG = {
    "pos_embed": "RoPE100",
    "patch_embed_cls": "ManyAR_PatchEmbed",
    "img_size": (512, 512),
    "head_type": "dpt",
    "output_mode": "pts3d",
    "depth_mode": ("exp", -math.inf, math.inf),
    "conf_mode": ("exp", 1, math.inf),
    "enc_embed_dim": 64,
    "enc_depth": 4,
    "enc_num_heads": 4,
    "dec_embed_dim": 48,
    "dec_depth": 12,
    "dec_num_heads": 12,
}
ALIASES = [f"downstream_head{k}.dpt.scratch.layer_rn.{i}.weight" for k in (1, 2) for i in range(4)]


@pytest.fixture(scope="module")
def tiny() -> tuple[dict, dict[str, torch.Tensor]]:
    return read_checkpoint(TINY)


@pytest.fixture(scope="module")
def tiny_raw() -> dict[str, torch.Tensor]:
    """The fixture's state dict as torch stores it (strided views, aliases sharing storage)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(TINY, map_location="cpu", weights_only=True)["model"]


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _one_line_naming(err: pytest.ExceptionInfo, name: str) -> None:
    assert "\n" not in str(err.value) and name in str(err.value), str(err.value)


# --------------------------------------------------------------------------------------------------- reading


def test_read_official_pth(tiny: tuple, tiny_raw: dict[str, torch.Tensor]) -> None:
    config, sd = tiny
    assert len(sd) == 769
    assert config == TINY_CONFIG
    assert list(config) == list(TINY_CONFIG)  # keyword order of the string is kept
    assert list(sd) == list(tiny_raw)
    for k, v in sd.items():
        assert v.dtype == torch.float32 and v.device.type == "cpu" and v.is_contiguous(), k
        assert torch.equal(v, tiny_raw[k]), k
    # The fixture stores overlapping strided views; reading makes them dense copies.
    assert not tiny_raw["enc_blocks.0.attn.qkv.weight"].is_contiguous()
    for alias, kept in dpt_alias_map(sd).items():
        assert torch.equal(sd[alias], sd[kept])
    assert sorted(dpt_alias_map(sd)) == sorted(ALIASES)


def test_refuses_code_in_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    torch.save({"args": argparse.Namespace(model=STR), "model": {"w": torch.ones(2)}, "x": _Evil(marker)}, path)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    _one_line_naming(e, "evil.pth")
    assert "refused to unpickle" in str(e.value) and "for safety" in str(e.value) and "io.open" in str(e.value)
    assert "weights_only" not in str(e.value)  # not torch's advice to disable the protection
    assert not marker.exists()
    # The payload is live: an unrestricted load does create the marker.
    torch.load(path, weights_only=False)
    assert marker.exists()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


class _System:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo unsafe",))


def test_refusal_names_os_system(tmp_path: Path) -> None:
    torch.save(
        {"args": argparse.Namespace(model=STR, hook=_System()), "model": {"w": torch.ones(2)}}, tmp_path / "s.pth"
    )
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path / "s.pth")
    _one_line_naming(e, "s.pth")
    assert "posix.system" in str(e.value) or "nt.system" in str(e.value)
    assert "refused to unpickle" in str(e.value) and "for safety" in str(e.value)


def _legacy_numpy1_scalar_pth(path: Path) -> None:
    """A legacy-format .pth whose pickle names numpy 1's ``numpy.core.multiarray.scalar`` (as files written under
    numpy < 2 do)."""
    payload = {"args": argparse.Namespace(model=STR, lr=np.float64(0.25)), "model": {"w": torch.ones(2)}}
    torch.save(payload, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    assert raw.count(b"numpy._core.multiarray\nscalar") == 1
    path.write_bytes(raw.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))


@pytest.mark.parametrize(
    "extra",
    [
        {"epoch": np.int64(7), "best_so_far": np.float32(0.5)},  # numpy._core.multiarray.scalar + numpy.dtype
        {"dtype": np.dtype("float16")},  # numpy.dtype
        {"dtype_class": np.dtypes.Float64DType, "int_class": np.dtypes.Int32DType},  # numpy.dtypes.*DType
    ],
)
def test_training_metadata_of_numpy_types_is_allowed(tmp_path: Path, extra: dict) -> None:
    path = tmp_path / "train.pth"
    torch.save(
        {"args": argparse.Namespace(model=STR, lr=np.float64(1e-4)), "model": {"w": torch.ones(2)}, **extra}, path
    )
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - {"argparse.Namespace"}
    assert unsafe and all(name.startswith("numpy.") for name in unsafe)  # the file really needs numpy globals
    config, sd = read_checkpoint(path)
    assert config == TINY_CONFIG and torch.equal(sd["w"], torch.ones(2))


def test_numpy1_scalar_name_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    _legacy_numpy1_scalar_pth(path)
    config, sd = read_checkpoint(path)  # legacy (non-zip) format: read without mmap
    assert config == TINY_CONFIG and torch.equal(sd["w"], torch.ones(2))


def test_numpy_callables_stay_blocked(tmp_path: Path) -> None:
    torch.save({"model": {"w": torch.ones(2)}, "f": np.load}, tmp_path / "f.pth")
    with pytest.raises(CheckpointError, match=r"refused to unpickle .*numpy\.lib\._npyio_impl\.load|refused.*numpy"):
        read_checkpoint(tmp_path / "f.pth")


def test_pth_is_memory_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.save({"model": {"w": torch.arange(4.0)}}, tmp_path / "m.pth")
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    _, sd = read_checkpoint(tmp_path / "m.pth")
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]
    assert torch.equal(sd["w"], torch.arange(4.0))


@pytest.mark.parametrize(
    "payload",
    [
        {"model": {"a": torch.arange(3.0)}},
        {"a": torch.arange(3.0)},
        {"args": argparse.Namespace(lr=0.1), "model": {"a": torch.arange(3.0)}},
    ],
)
def test_pth_without_model_string(tmp_path: Path, payload: dict) -> None:
    torch.save(payload, tmp_path / "w.pth")
    config, sd = read_checkpoint(tmp_path / "w.pth")
    assert config is None
    assert list(sd) == ["a"] and torch.equal(sd["a"], torch.arange(3.0))


def test_half_precision_and_integer_tensors(tmp_path: Path) -> None:
    torch.save({"h": torch.tensor([0.5, 1.5], dtype=torch.float16), "i": torch.tensor([3, 4])}, tmp_path / "m.pt")
    _, sd = read_checkpoint(tmp_path / "m.pt")
    assert sd["h"].dtype == torch.float32 and sd["h"].tolist() == [0.5, 1.5]
    assert sd["i"].dtype == torch.int64  # non-float tensors keep their dtype


def test_read_errors(tmp_path: Path) -> None:
    cases: list[tuple[Path, str]] = []
    cases.append((tmp_path / "missing.pth", "missing.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint" * 10)
    cases.append((tmp_path / "garbage.pth", "garbage.pth"))
    (tmp_path / "w.h5").write_bytes(b"x")
    cases.append((tmp_path / "w.h5", "w.h5"))
    (tmp_path / "emptydir").mkdir()
    cases.append((tmp_path / "emptydir", "emptydir"))
    torch.save({"model": {"a": torch.ones(1), "b": "text"}}, tmp_path / "mixed.pth")
    cases.append((tmp_path / "mixed.pth", "mixed.pth"))
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    cases.append((tmp_path / "list.pth", "list.pth"))
    torch.save(
        {"args": argparse.Namespace(model="Net(x=print('hi'))"), "model": {"a": torch.ones(1)}},
        tmp_path / "c.pth",
    )
    cases.append((tmp_path / "c.pth", "print"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson")
    cases.append((tmp_path / "bad.safetensors", "bad.safetensors"))
    for path, name in cases:
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(path)
        _one_line_naming(e, name)


def test_read_safetensors_file_and_folders(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.float64)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    config, sd = read_checkpoint(tmp_path / "model.safetensors")
    assert config is None
    assert torch.equal(sd["a"], tensors["a"]) and sd["b"].dtype == torch.float32
    (tmp_path / "config.json").write_text('{"depth_mode": ["exp", -Infinity, Infinity], "enc_depth": 2}')
    config, _ = read_checkpoint(tmp_path)
    assert config == {"depth_mode": ["exp", -math.inf, math.inf], "enc_depth": 2}
    assert read_checkpoint(tmp_path / "model.safetensors")[0] == config
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path)
    _one_line_naming(e, "config.json")

    binfolder = tmp_path / "bin"
    binfolder.mkdir()
    torch.save(tensors, binfolder / "pytorch_model.bin")
    config, sd = read_checkpoint(binfolder)
    assert config is None and torch.equal(sd["a"], tensors["a"])


# ------------------------------------------------------------------------------------------- model strings


def test_parse_model_string_official() -> None:
    name, kwargs = parse_model_string(STR)
    assert name == "AsymmetricCroCo3DStereo"
    assert kwargs == TINY_CONFIG
    assert isinstance(kwargs["depth_mode"], tuple) and kwargs["depth_mode"][1] == -math.inf


def test_parse_model_string_literals() -> None:
    _, kw = parse_model_string(" Net(a=[1, -2.5], b=None, c=True, d=-inf, e=nan, f=('x',), g=-3) \n")
    assert kw["a"] == [1, -2.5] and kw["b"] is None and kw["c"] is True and kw["d"] == -math.inf
    assert math.isnan(kw["e"]) and kw["f"] == ("x",) and kw["g"] == -3


@pytest.mark.parametrize(
    "bad",
    [
        "AsymmetricCroCo3DStereo(x=__import__('os'))",
        "AsymmetricCroCo3DStereo(x=os.system)",
        "AsymmetricCroCo3DStereo(x=foo)",
        "AsymmetricCroCo3DStereo(x=(1, open('f')))",
        "AsymmetricCroCo3DStereo(x=lambda: 0)",
        "AsymmetricCroCo3DStereo(x=-'a')",
        "AsymmetricCroCo3DStereo(x=1 + 2)",
        "AsymmetricCroCo3DStereo(x={'a': 1})",
        "AsymmetricCroCo3DStereo(1)",
        "AsymmetricCroCo3DStereo(**kw)",
        "AsymmetricCroCo3DStereo(x=1, x=2)",
        "models.AsymmetricCroCo3DStereo(x=1)",
        "__import__('os').system('true')",
        "AsymmetricCroCo3DStereo(",
        "1 + 2",
    ],
)
def test_parse_model_string_rejects(bad: str) -> None:
    with pytest.raises(CheckpointError) as e:
        parse_model_string(bad)
    assert "\n" not in str(e.value)


def test_config_to_model_string_roundtrip() -> None:
    assert config_to_model_string(TINY_CONFIG) == STR
    cfg = {"a": [1, 2], "b": -math.inf, "c": float("nan"), "d": ("x",), "e": None, "f": 0.25, "g": False}
    s = config_to_model_string(cfg, "Net")
    assert s == "Net(a=(1, 2), b=-inf, c=nan, d=('x',), e=None, f=0.25, g=False)"
    name, back = parse_model_string(s)
    assert name == "Net" and back["a"] == (1, 2) and math.isnan(back["c"]) and back["d"] == ("x",)
    with pytest.raises(CheckpointError):
        config_to_model_string({"a": object()})
    with pytest.raises(CheckpointError):
        config_to_model_string({"not valid": 1})


def test_normalize_config() -> None:
    raw = {**TINY_CONFIG, "depth_mode": ["exp", -math.inf, math.inf], "img_size": [512, 512]}
    out = normalize_config(raw)
    assert out["patch_embed_cls"] == "PatchEmbedDust3R" and out["landscape_only"] is False
    assert out["depth_mode"] == ("exp", -math.inf, math.inf) and out["img_size"] == (512, 512)
    assert raw["patch_embed_cls"] == "ManyAR_PatchEmbed" and "landscape_only" not in raw  # input untouched
    assert normalize_config({"landscape_only": True, "patch_embed_cls": "PatchEmbedDust3R"}) == {
        "landscape_only": False,
        "patch_embed_cls": "PatchEmbedDust3R",
    }
    with pytest.raises(CheckpointError):
        normalize_config({"depth_mode": "exp"})


# --------------------------------------------------------------------------------------------------- writing


def test_save_pth_roundtrip(tmp_path: Path, tiny: tuple, tiny_raw: dict[str, torch.Tensor]) -> None:
    config, sd = tiny
    out = save_pth(tmp_path / "sub" / "copy.pth", STR, tiny_raw)
    assert out == tmp_path / "sub" / "copy.pth"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["copy.pth"]  # no temp file left behind
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(out, weights_only=True)
    assert set(raw) == {"args", "model"} and raw["args"].model == STR
    config2, sd2 = read_checkpoint(out)
    assert config2 == config
    _assert_same_tensors(sd2, sd)
    # From a config mapping, with dense tensors (the encoder part: the dense DPT heads are 150 MB).
    part = {k: v for k, v in sd.items() if not k.startswith("downstream_head")}
    save_pth(tmp_path / "copy2.pth", config, part)
    config3, sd3 = read_checkpoint(tmp_path / "copy2.pth")
    assert config3 == config
    _assert_same_tensors(sd3, part)
    with pytest.raises(CheckpointError):
        save_pth(tmp_path / "bad.pth", "Net(x=foo())", sd)
    assert not (tmp_path / "bad.pth").exists()


@pytest.mark.parametrize("source", ["dense", "raw"])
def test_save_pretrained_folder_roundtrip(
    tmp_path: Path, tiny: tuple, tiny_raw: dict[str, torch.Tensor], source: str
) -> None:
    config, sd = tiny
    # "raw": aliases share storage (safetensors-style dedupe); "dense": separate equal copies (name rule).
    state = tiny_raw if source == "raw" else sd
    folder = save_pretrained_folder(tmp_path / "hub", normalize_config(config), state)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    text = (folder / "config.json").read_text()
    assert '"depth_mode": [\n    "exp",\n    -Infinity,\n    Infinity\n  ]' in text
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    config2, sd2 = read_checkpoint(folder)
    assert normalize_config(config2) == normalize_config(config)
    assert config2["patch_embed_cls"] == "PatchEmbedDust3R" and config2["landscape_only"] is False
    assert len(sd2) == 761 and not set(ALIASES) & set(sd2)
    for k, v in sd2.items():
        assert torch.equal(v, sd[k]), k
    assert set(sd) - set(sd2) == set(ALIASES)


def test_safetensors_dedupe_rules(tmp_path: Path) -> None:
    big = torch.arange(10.0)
    t = torch.ones(3)
    state = {"b": t, "a": t, "lo": big[:4], "hi": big[4:], "strided": big[::2]}
    save_pretrained_folder(tmp_path, {}, state)
    back = load_file(str(tmp_path / "model.safetensors"))
    assert set(back) == {"a", "lo", "hi", "strided"}  # "b" is the same view as "a": one name kept
    assert back["hi"].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert back["strided"].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    bad = {ALIASES[0]: torch.zeros(2), "downstream_head1.dpt.scratch.layer1_rn.weight": torch.ones(2)}
    with pytest.raises(CheckpointError) as e:
        save_pretrained_folder(tmp_path / "x", {}, bad)
    assert ALIASES[0] in str(e.value)
    with pytest.raises(CheckpointError):
        save_pretrained_folder(tmp_path / "y", {"f": object()}, {"a": t})


def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "model.pth"
    final.write_bytes(b"previous version")

    def failing_save(obj: object, f: str) -> None:
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(writers.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_pth(final, STR, {"a": torch.ones(1)})
    assert final.read_bytes() == b"previous version"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]
