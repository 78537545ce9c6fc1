"""Reading DUSt3R / MonST3R / MASt3R checkpoint files safely, and loading them into a network without a copy.

Formats:

* official ``.pth``, as read by the official ``dust3r/model.py`` ``load_model``: a pickle of
  ``{"args": argparse.Namespace(model=STR, ...), "model": state_dict}`` where ``STR`` is the constructor call, e.g.
  ``"AsymmetricCroCo3DStereo(pos_embed='RoPE100', ...)"``. The official loader ``eval``\\ s that string and
  unpickles the file without restrictions; here the pickle is read with
  ``torch.load(weights_only=True, mmap=True)`` (only ``argparse.Namespace`` and numpy scalars/dtypes allowed besides
  tensors and containers) and the string is parsed with :mod:`ast` into literal keyword arguments, so no code from a
  file ever runs;
* Hugging Face layout, as written by the official ``AsymmetricCroCo3DStereo`` (a ``PyTorchModelHubMixin``):
  ``config.json`` (constructor kwargs, with non-standard ``Infinity``) + ``model.safetensors`` (or
  ``pytorch_model.bin``). safetensors stores one name per shared tensor, so the DPT alias keys
  ``scratch.layer_rn.{0..3}.weight`` are absent there and only ``scratch.layer{1..4}_rn.weight`` remain
  (:func:`load_weights` accepts either name).

The configuration is returned as stored; the official loader's rewrites (``ManyAR_PatchEmbed`` ->
``PatchEmbedDust3R``, ``landscape_only=False``) do not change the computation here and
:meth:`~easi3r.backbones.dust3r.DUSt3RConfig.from_official` ignores those options.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import math
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError, first_line

__all__ = [
    "Checkpoint",
    "build_with_weights",
    "load_weights",
    "open_checkpoint",
    "parse_model_string",
    "read_checkpoint",
]

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


def _numpy_safe_globals() -> list[Any]:
    """Data-only numpy types that training scripts leave in ``args`` / ``epoch`` / ``best_so_far``: the scalar
    reconstructor (under its numpy 2 and numpy 1 module names), ``numpy.dtype`` and the ``numpy.dtypes`` classes.
    None of them runs code beyond building a number or a dtype."""
    scalar = importlib.import_module(
        "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
    ).scalar
    allowed: list[Any] = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    allowed += [getattr(np.dtypes, name) for name in sorted(dir(np.dtypes)) if name.endswith("DType")]
    return allowed


#: Globals a checkpoint pickle may name besides tensors and containers.
SAFE_GLOBALS_NOTE = "tensors, containers, argparse.Namespace and numpy scalars/dtypes"
_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)", re.IGNORECASE)


def _torch_load(path: Path, mmap: bool) -> Any:
    """``torch.load(weights_only=True)``, memory-mapped when the file is a zip-format checkpoint."""
    safe = [argparse.Namespace, *_numpy_safe_globals()]
    try:
        with torch.serialization.safe_globals(safe):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as e:
                if not (mmap and "mmap can only be used" in str(e)):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        m = _BLOCKED_GLOBAL.search(str(e))
        if m:
            raise CheckpointError(
                f"refused to unpickle {str(path)!r} for safety: it names the Python global {m.group(1)}, which "
                f"could run arbitrary code (allowed: {SAFE_GLOBALS_NOTE})"
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


def _read_torch_checkpoint(path: Path, mmap: bool) -> Checkpoint:
    obj = _torch_load(path, mmap)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a dict")
    config = class_name = None
    if "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
        model_str = getattr(obj.get("args"), "model", None)
        if isinstance(model_str, str):
            class_name, config = parse_model_string(model_str)
    elif all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: expected {{'args', 'model'}} or a plain state dict, got keys "
            f"{sorted(map(str, obj))[:5]}"
        )
    return Checkpoint(config, _clean_state_dict(sd, path), class_name)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = load_file(str(path), device="cpu")  # memory-mapped: tensors are read from the file on first use
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read safetensors file {str(path)!r}: {first_line(e)}") from None
    return _clean_state_dict(sd, path)


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds.

    Attributes:
        config: the constructor keyword arguments as stored (parsed from ``args.model`` or read from
            ``config.json``), or None when the file carries none.
        state_dict: tensors by name, on CPU, dense, floating-point ones as float32 (memory-mapped from the file
            where the stored tensor already is so). Alias keys are kept as stored.
        class_name: the official class of ``args.model`` (e.g. ``"AsymmetricMASt3R"``), None for ``config.json``
            folders and bare state dicts.
    """

    config: dict[str, Any] | None
    state_dict: dict[str, torch.Tensor]
    class_name: str | None = None


def open_checkpoint(path: str | os.PathLike[str], *, mmap: bool = True) -> Checkpoint:
    """Read a checkpoint file or folder without executing any code from it and without a second copy of it.

    Args:
        path: an official ``.pth`` (also ``.pt``/``.bin``/``.ckpt``), a ``.safetensors`` file (its
            ``config.json``, if any, is read from the same folder), or a folder holding ``config.json`` and
            ``model.safetensors`` (or ``pytorch_model.bin``).
        mmap: memory-map the tensors (``torch.load(mmap=True)`` for zip-format torch files, safetensors'
            own mapping): the weights are paged in from the file instead of being copied into memory. Legacy
            (non-zip) torch files are read whole.

    Raises:
        CheckpointError: missing file, unsupported extension, a pickle that names anything beyond
            tensors, containers, ``argparse.Namespace`` and numpy scalars/dtypes (the global is named), an
            unparsable ``args.model`` or ``config.json``, or non-tensor state-dict entries. One line, naming
            the file.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r}: no such file or folder")
    if p.is_dir():
        cfg_path = p / "config.json"
        config = _read_config_json(cfg_path) if cfg_path.is_file() else None
        if (p / "model.safetensors").is_file():
            return Checkpoint(config, _read_safetensors(p / "model.safetensors"))
        if (p / "pytorch_model.bin").is_file():
            return Checkpoint(config, _read_torch_checkpoint(p / "pytorch_model.bin", mmap).state_dict)
        raise CheckpointError(f"checkpoint folder {str(p)!r} has neither model.safetensors nor pytorch_model.bin")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        cfg_path = p.parent / "config.json"
        return Checkpoint(_read_config_json(cfg_path) if cfg_path.is_file() else None, _read_safetensors(p))
    if suffix in TORCH_SUFFIXES:
        return _read_torch_checkpoint(p, mmap)
    raise CheckpointError(
        f"checkpoint {str(p)!r}: unsupported file type {suffix or '(none)'!r}; expected "
        f"{', '.join(TORCH_SUFFIXES)}, .safetensors or a folder"
    )


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of :func:`open_checkpoint` (see there for the formats and errors)."""
    ckpt = open_checkpoint(path)
    return ckpt.config, ckpt.state_dict


# --------------------------------------------------------------------------------------------------------
# Loading into a network


def _shared_names(model: torch.nn.Module) -> dict[str, list[str]]:
    """Groups of state-dict names that point at one tensor (e.g. ``layer1_rn`` / ``layer_rn.0``)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return {names[0]: names for names in groups.values() if len(names) > 1}


def load_weights(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint", *, assign: bool = False
) -> None:
    """Load ``state_dict`` strictly, accepting either name of aliased tensors.

    Args:
        model: the network (on the meta device when ``assign``).
        state_dict: tensors by name.
        source: how the error messages name the weights.
        assign: make the checkpoint tensors the parameters (``load_state_dict(assign=True)``: no copy, so a
            memory-mapped checkpoint stays mapped) instead of copying them into the existing ones.

    Raises:
        CheckpointError: missing or unexpected keys (the first few are named), or a tensor of the wrong shape.
    """
    sd = dict(state_dict)
    for names in _shared_names(model).values():
        present = [n for n in names if n in sd]
        if present:
            for n in names:
                sd.setdefault(n, sd[present[0]])
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first: {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first: {', '.join(unexpected[:5])}")
        raise CheckpointError(f"{source} does not match the network: " + "; ".join(parts))
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{source}: tensor {k!r} has shape {tuple(sd[k].shape)}, the network expects {tuple(v.shape)}"
            )
    model.load_state_dict({k: sd[k].to(v.dtype) for k, v in expected.items()}, strict=True, assign=assign)


M = TypeVar("M", bound=torch.nn.Module)


def build_with_weights(factory: Callable[[], M], state_dict: dict[str, torch.Tensor], source: str) -> M:
    """Build ``factory()`` on the meta device (no memory, no random init) and make ``state_dict`` its weights.

    Raises:
        CheckpointError: the weights do not match the network (see :func:`load_weights`), or the network keeps
            tensors that no checkpoint entry fills.
    """
    with torch.device("meta"):
        model = factory()
    load_weights(model, state_dict, source, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # pragma: no cover - every tensor of the built-in networks is in the state dict
        raise CheckpointError(f"{source}: no weights for {', '.join(left[:5])}")
    return model
