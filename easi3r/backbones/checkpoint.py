"""Reading DUSt3R / MonST3R checkpoint files safely (no model building here).

Formats:

* official ``.pth``, as read by the official ``dust3r/model.py`` ``load_model``: a pickle of
  ``{"args": argparse.Namespace(model=STR, ...), "model": state_dict}`` where ``STR`` is the constructor call, e.g.
  ``"AsymmetricCroCo3DStereo(pos_embed='RoPE100', ...)"``. The official loader ``eval``\\ s that string and
  unpickles the file without restrictions; here the pickle is read with ``torch.load(weights_only=True)`` (only
  ``argparse.Namespace`` allowed besides tensors and containers) and the string is parsed with :mod:`ast` into
  literal keyword arguments, so no code from a file ever runs;
* Hugging Face layout, as written by the official ``AsymmetricCroCo3DStereo`` (a ``PyTorchModelHubMixin``):
  ``config.json`` (constructor kwargs, with non-standard ``Infinity``) + ``model.safetensors`` (or
  ``pytorch_model.bin``). safetensors stores one name per shared tensor, so the DPT alias keys
  ``scratch.layer_rn.{0..3}.weight`` are absent there and only ``scratch.layer{1..4}_rn.weight`` remain
  (:func:`easi3r.backbones.registry.load_weights` accepts either name).

The configuration is returned as stored; the official loader's rewrites (``ManyAR_PatchEmbed`` ->
``PatchEmbedDust3R``, ``landscape_only=False``) do not change the computation here and
:meth:`~easi3r.backbones.dust3r.DUSt3RConfig.from_official` ignores those options.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError, first_line

__all__ = ["parse_model_string", "read_checkpoint"]

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_NAMED_FLOATS = {"inf": math.inf, "nan": math.nan}


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


# --------------------------------------------------------------------------------------------------------
# Reading


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
        detail = m.group(1).strip() if m else first_line(e)
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: not a weights-only torch file ({detail})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {first_line(e)}") from None


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
        raise CheckpointError(f"cannot read {str(path)!r}: {first_line(e)}") from None
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
        raise CheckpointError(f"cannot read safetensors file {str(path)!r}: {first_line(e)}") from None
    return _clean_state_dict(sd, path)


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
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
