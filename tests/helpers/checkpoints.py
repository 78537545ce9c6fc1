"""Official-format checkpoint writers for tests and benchmarks (the library only reads checkpoints).

* :func:`save_pth`: the official ``.pth`` (``{"args": Namespace(model=STR), "model": state_dict}``, the layout the
  official ``dust3r/model.py`` ``load_model`` reads);
* :func:`save_pretrained_folder`: the Hugging Face layout (``config.json`` + ``model.safetensors``) that the official
  ``AsymmetricCroCo3DStereo`` (a ``PyTorchModelHubMixin``) publishes;
* :func:`config_to_model_string` / :func:`normalize_config` / :func:`dust3r_config_to_official`: the constructor
  arguments in the official forms.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from easi3r.backbones.checkpoint import parse_model_string
from easi3r.backbones.dust3r import DUSt3RConfig
from easi3r.errors import CheckpointError, first_line

__all__ = [
    "config_to_model_string",
    "dpt_alias_map",
    "dust3r_config_to_official",
    "normalize_config",
    "save_pretrained_folder",
    "save_pth",
]

_DPT_ALIAS = re.compile(r"^(?P<prefix>.*\bscratch\.)layer_rn\.(?P<i>[0-3])\.weight$")
_MODE_KEYS = ("depth_mode", "conf_mode")


def dust3r_config_to_official(cfg: DUSt3RConfig) -> dict[str, Any]:
    """The official ``config.json`` keyword arguments for the architecture ``cfg`` (inverse of
    :meth:`DUSt3RConfig.from_official`)."""
    kw = asdict(cfg)
    rope = kw.pop("rope_base")
    kw.update(
        pos_embed=f"RoPE{rope:g}",
        output_mode="pts3d",
        depth_mode=["exp", -math.inf, math.inf],
        conf_mode=["exp", 1, math.inf],
        patch_embed_cls="PatchEmbedDust3R",
        landscape_only=False,
        freeze="none",
        img_size=list(cfg.img_size),
    )
    return kw


def _format_value(value: Any, key: str) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (tuple, list)):
        items = [_format_value(v, key) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    raise CheckpointError(f"config value {key}={value!r} ({type(value).__name__}) cannot be written as a literal")


def config_to_model_string(config: Mapping[str, Any], class_name: str = "AsymmetricCroCo3DStereo") -> str:
    """Inverse of :func:`parse_model_string`: ``"ClassName(k1=v1, k2=v2, ...)"`` in the mapping's order.

    Lists are written as tuples (the official strings use tuples); ``inf``/``nan`` as bare names.

    Raises:
        CheckpointError: a key that is not an identifier or a value that is not a literal.
    """
    if not class_name.isidentifier():
        raise CheckpointError(f"class name {class_name!r} is not an identifier")
    parts = []
    for key, value in config.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise CheckpointError(f"config key {key!r} is not an identifier")
        parts.append(f"{key}={_format_value(value, key)}")
    return f"{class_name}({', '.join(parts)})"


def normalize_config(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Apply the official loader's rewrites to constructor kwargs (a new dict; the input is not modified).

    ``patch_embed_cls='ManyAR_PatchEmbed'`` -> ``'PatchEmbedDust3R'`` and ``landscape_only=False`` (so
    portrait inputs work; identical results for landscape ones), and list values (from JSON) -> tuples, e.g.
    ``depth_mode``, ``conf_mode``, ``img_size``.
    """
    out = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
    if out.get("patch_embed_cls") == "ManyAR_PatchEmbed":
        out["patch_embed_cls"] = "PatchEmbedDust3R"
    out["landscape_only"] = False
    for key in _MODE_KEYS:
        if key in out and not isinstance(out[key], tuple):
            raise CheckpointError(f"config {key}={out[key]!r}: expected a tuple such as ('exp', -inf, inf)")
    return out


def dpt_alias_map(keys: Any) -> dict[str, str]:
    """Map each DPT alias key present in ``keys`` to the key it shares its tensor with.

    ``downstream_head{k}.dpt.scratch.layer_rn.{i}.weight`` ->
    ``downstream_head{k}.dpt.scratch.layer{i+1}_rn.weight`` (official state dicts hold both names for one
    tensor; safetensors files only the second).
    """
    out = {}
    for key in keys:
        m = _DPT_ALIAS.match(key)
        if m:
            out[key] = f"{m['prefix']}layer{int(m['i']) + 1}_rn.weight"
    return out


def _atomic_write(final: Path, write: Callable[[str], None]) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder (so os.replace is atomic), created by the writer itself so the file
    # gets the usual umask permissions rather than mkstemp's 0600.
    tmp = str(final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_state_dict(state_dict: Mapping[str, torch.Tensor]) -> None:
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError("state_dict must be a non-empty mapping of names to tensors")
    for k, v in state_dict.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"state_dict entry {k!r} is a {type(v).__name__}, not a tensor")


def save_pth(
    path: str | os.PathLike[str], model_string: str | Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> Path:
    """Write an official-format ``.pth``: ``{"args": argparse.Namespace(model=STR), "model": state_dict}``.

    Args:
        path: destination file (written atomically: temporary file in the same folder, then rename).
        model_string: the constructor string (validated with :func:`parse_model_string`), or a config mapping
            turned into one with :func:`config_to_model_string`.
        state_dict: tensors by name (moved to CPU; shared tensors stay shared, as in official files).

    Returns:
        The path written.
    """
    if isinstance(model_string, Mapping):
        model_string = config_to_model_string(model_string)
    parse_model_string(model_string)  # never write a string our own reader would reject
    _check_state_dict(state_dict)
    payload = {
        "args": argparse.Namespace(model=model_string),
        "model": {k: v.detach().to("cpu") for k, v in state_dict.items()},
    }
    final = Path(path)
    _atomic_write(final, lambda tmp: torch.save(payload, tmp))
    return final


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _dedupe_for_safetensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().to("cpu") for k, v in state_dict.items()}
    # Named DPT aliases first: they may arrive as separate copies (e.g. after read_checkpoint), where the
    # generic shared-storage rule below cannot see them.
    for alias, kept in dpt_alias_map(list(sd)).items():
        if kept in sd:
            a, b = sd[alias], sd[kept]
            if a.shape != b.shape or not torch.equal(a, b):
                raise CheckpointError(f"state dict alias {alias!r} differs from {kept!r}; they must be one tensor")
            del sd[alias]
    # Generic rule, as safetensors does: of several names for the same view keep the lexicographically first.
    groups: dict[int, list[str]] = {}
    for k, v in sd.items():
        if v.numel():
            groups.setdefault(_storage_key(v), []).append(k)
    shared: set[str] = set()
    for names in groups.values():
        if len(names) < 2:
            continue
        views: dict[tuple[Any, ...], list[str]] = {}
        for k in names:
            t = sd[k]
            views.setdefault((t.storage_offset(), tuple(t.shape), t.stride(), t.dtype), []).append(k)
        for same in views.values():
            for k in sorted(same)[1:]:
                del sd[k]
        if len(views) > 1:  # distinct views of one storage remain: each needs its own copy
            shared.update(sorted(same)[0] for same in views.values())
    out = {}
    for k, t in sd.items():
        full = t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        # Partial or overlapping views of a storage and storages shared between names are copied: safetensors
        # refuses tensors that share memory.
        out[k] = t if (full and k not in shared) else t.clone(memory_format=torch.contiguous_format)
    return out


def save_pretrained_folder(
    folder: str | os.PathLike[str], config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> Path:
    """Write the Hugging Face layout: ``config.json`` + ``model.safetensors`` (each file atomically).

    ``config.json`` has sorted keys, indent 2 and ``Infinity`` for infinite floats (as the published hub
    files). In ``model.safetensors`` every tensor is dense, and of names sharing one tensor only one is kept,
    as safetensors' own ``save_model`` does: the DPT aliases ``scratch.layer_rn.{0..3}.weight`` are dropped
    in favour of ``scratch.layer{1..4}_rn.weight`` (the official 1009-key ViT-L state dict gives 1001 keys).

    Returns:
        The folder.

    Raises:
        CheckpointError: config not JSON-serialisable, non-tensor entries, or alias keys with different
            values.
    """
    if not isinstance(config, Mapping):
        raise CheckpointError(f"config must be a mapping of constructor arguments, got {type(config).__name__}")
    _check_state_dict(state_dict)
    try:
        text = json.dumps(dict(config), sort_keys=True, indent=2, allow_nan=True) + "\n"
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config is not JSON-serialisable: {first_line(e)}") from None
    tensors = _dedupe_for_safetensors(state_dict)
    out = Path(folder)

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(out / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _atomic_write(out / "config.json", write_json)
    return out
