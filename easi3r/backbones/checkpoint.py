"""Reading and writing DUSt3R / MonST3R checkpoint files safely (no model building here).

Formats (backbone.md §6):

* official ``.pth``: a pickle of ``{"args": argparse.Namespace(model=STR, ...), "model": state_dict}`` where
  ``STR`` is the constructor call, e.g. ``"AsymmetricCroCo3DStereo(pos_embed='RoPE100', ...)"``. The
  official loader ``eval``\\ s that string and unpickles the file without restrictions; here the pickle is
  read with ``torch.load(weights_only=True)`` (only ``argparse.Namespace`` allowed besides tensors and
  containers) and the string is parsed with :mod:`ast` into literal keyword arguments, so no code from a
  file ever runs;
* Hugging Face layout: ``config.json`` (constructor kwargs, with non-standard ``Infinity``) +
  ``model.safetensors`` (or ``pytorch_model.bin``). safetensors stores one name per shared tensor, so the
  DPT alias keys ``scratch.layer_rn.{0..3}.weight`` are absent there and only
  ``scratch.layer{1..4}_rn.weight`` remain.

Normalising the configuration the way the official loader does (``PatchEmbedDust3R``,
``landscape_only=False``) is left to the caller (:func:`normalize_config`), so that the raw file contents
stay inspectable.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import pickle
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

__all__ = [
    "config_to_model_string",
    "dpt_alias_map",
    "normalize_config",
    "parse_model_string",
    "read_checkpoint",
    "save_pretrained_folder",
    "save_pth",
]

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_NAMED_FLOATS = {"inf": math.inf, "nan": math.nan}
_DPT_ALIAS = re.compile(r"^(?P<prefix>.*\bscratch\.)layer_rn\.(?P<i>[0-3])\.weight$")
_MODE_KEYS = ("depth_mode", "conf_mode")


# --------------------------------------------------------------------------------------------------------
# The constructor string


def _literal(node: ast.AST, source: str) -> Any:
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, int, float, bool))):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        values = [_literal(elt, source) for elt in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal(node.operand, source)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CheckpointError(f"model string {source!r}: cannot negate {ast.unparse(node.operand)!r}")
        return -value
    if isinstance(node, ast.Name) and node.id in _NAMED_FLOATS:
        return _NAMED_FLOATS[node.id]
    raise CheckpointError(
        f"model string {source!r}: only literal keyword values are allowed, got {ast.unparse(node)!r}"
    )


def parse_model_string(s: str) -> tuple[str, dict[str, Any]]:
    """Parse an official constructor string into ``(class name, keyword arguments)`` without evaluating it.

    Accepted values: str/int/float/bool/None constants, tuples and lists of them, unary minus, and the bare
    names ``inf`` / ``nan`` (floats, as in the official module namespace). Example::

        parse_model_string("AsymmetricCroCo3DStereo(img_size=(512, 512), depth_mode=('exp', -inf, inf))")
        == ("AsymmetricCroCo3DStereo", {"img_size": (512, 512), "depth_mode": ("exp", -inf, inf)})

    Raises:
        CheckpointError: not a single call of a bare class name, positional or ``**`` arguments, duplicate
            keywords, or any value that is not one of the literals above (calls, attributes, other names).
    """
    if not isinstance(s, str):
        raise CheckpointError(f"model string must be a str, got {type(s).__name__}")
    source = s.strip()
    short = source if len(source) <= 120 else source[:117] + "..."
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as e:
        raise CheckpointError(f"model string {short!r} is not a constructor call: {e.msg}") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise CheckpointError(f"model string {short!r}: expected 'ClassName(key=value, ...)'")
    if call.args:
        raise CheckpointError(f"model string {short!r}: positional arguments are not allowed")
    kwargs: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise CheckpointError(f"model string {short!r}: '**' arguments are not allowed")
        if kw.arg in kwargs:
            raise CheckpointError(f"model string {short!r}: keyword {kw.arg!r} given twice")
        kwargs[kw.arg] = _literal(kw.value, short)
    return call.func.id, kwargs


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


# --------------------------------------------------------------------------------------------------------
# Reading


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if m:
            raise CheckpointError(
                f"refusing to unpickle {str(path)!r}: it needs the Python object {m.group(1)}, "
                "which could run arbitrary code (only tensors, containers and argparse.Namespace are allowed)"
            ) from None
        m = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        detail = m.group(1).strip() if m else _first_line(e)
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: not a weights-only torch file ({detail})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {_first_line(e)}") from None


def _clean_state_dict(sd: Mapping[Any, Any], path: Path) -> dict[str, torch.Tensor]:
    if not sd:
        raise CheckpointError(f"checkpoint {str(path)!r} holds an empty state dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {str(path)!r}: state dict entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.to(torch.float32)
        # Official files store weights as overlapping strided views; callers (safetensors, in-place
        # copies) need dense tensors.
        out[key] = value.contiguous()
    return out


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)  # accepts the hub files' non-standard Infinity / -Infinity
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {str(path)!r}: {_first_line(e)}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object of constructor arguments")
    return config


def _read_torch_checkpoint(path: Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a dict")
    config = None
    if "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
        model_str = getattr(obj.get("args"), "model", None)
        if isinstance(model_str, str):
            config = parse_model_string(model_str)[1]
    elif all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: expected {{'args', 'model'}} or a plain state dict, got keys "
            f"{sorted(map(str, obj))[:5]}"
        )
    return config, _clean_state_dict(sd, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read safetensors file {str(path)!r}: {_first_line(e)}") from None
    return _clean_state_dict(sd, path)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    """Read a checkpoint file or folder without executing any code from it.

    Args:
        path: an official ``.pth`` (also ``.pt``/``.bin``/``.ckpt``), a ``.safetensors`` file (its
            ``config.json``, if any, is read from the same folder), or a folder holding ``config.json`` and
            ``model.safetensors`` (or ``pytorch_model.bin``).

    Returns:
        ``(config, state_dict)``: the constructor keyword arguments as stored (parsed from ``args.model`` or
        read from ``config.json``; None when the file carries none, so the caller must infer them), and the
        tensors by name, on CPU, contiguous, floating-point ones as float32. Alias keys are kept as stored.

    Raises:
        CheckpointError: missing file, unsupported extension, a pickle that needs anything beyond tensors,
            containers and ``argparse.Namespace``, an unparsable ``args.model`` or ``config.json``, or
            non-tensor state-dict entries. One line, naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if p.is_dir():
        cfg_path = p / "config.json"
        config = _read_config_json(cfg_path) if cfg_path.is_file() else None
        if (p / "model.safetensors").is_file():
            return config, _read_safetensors(p / "model.safetensors")
        if (p / "pytorch_model.bin").is_file():
            _, sd = _read_torch_checkpoint(p / "pytorch_model.bin")
            return config, sd
        raise CheckpointError(f"checkpoint folder {str(p)!r} has neither model.safetensors nor pytorch_model.bin")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        cfg_path = p.parent / "config.json"
        return (_read_config_json(cfg_path) if cfg_path.is_file() else None), _read_safetensors(p)
    if suffix in TORCH_SUFFIXES:
        return _read_torch_checkpoint(p)
    raise CheckpointError(
        f"checkpoint {str(p)!r}: unsupported file type {suffix or '(none)'!r}; expected "
        f"{', '.join(TORCH_SUFFIXES)}, .safetensors or a folder"
    )


# --------------------------------------------------------------------------------------------------------
# Writing


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
    path: str | os.PathLike, model_string: str | Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
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
        views: dict[tuple, list[str]] = {}
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
    folder: str | os.PathLike, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
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
        raise CheckpointError(f"config is not JSON-serialisable: {_first_line(e)}") from None
    tensors = _dedupe_for_safetensors(state_dict)
    out = Path(folder)

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(out / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _atomic_write(out / "config.json", write_json)
    return out
