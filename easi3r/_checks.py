"""One home for input validation: shape contracts, dtypes, devices and finiteness, raising the typed errors.

Every public function checks its tensor / array arguments with :func:`check_shape` (the idea of kornia's
``KORNIA_CHECK_SHAPE``) instead of hand-written ``ndim`` / ``shape`` tests, so that every message has one form::

    pts3d_1 must have shape (P, H, W, 3), got (4, 32, 32)

A shape spec is a space-separated list of dimensions:

* a **name** (``P``, ``H``...) binds that dimension; the same name must have the same size everywhere in the call,
  and ``dims`` may pre-bind names (to tie several tensors together);
* an **integer** fixes the size;
* ``_`` accepts any size;
* a leading ``*`` accepts any number (including zero) of leading dimensions (batched functions).

Example:
    >>> import torch
    >>> check_shape(torch.zeros(2, 4, 4, 3), "P H W 3", "pts3d")
    {'P': 2, 'H': 4, 'W': 4}
    >>> check_shape(torch.zeros(2, 4, 5), "P H H", "maps")
    Traceback (most recent call last):
    ...
    easi3r.errors.Easi3RInputError: maps must have shape (P, H, H) with equal H, got (2, 4, 5)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import Easi3RInputError

__all__ = ["as_float64", "check_dtype", "check_finite", "check_same_device", "check_shape"]

ArrayLike = Tensor | np.ndarray


def _shape_of(x: Any, name: str) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    if shape is None:
        raise Easi3RInputError(f"{name} must be an array or tensor, got {type(x).__name__}")
    return tuple(int(s) for s in shape)


def check_shape(
    x: Any,
    spec: str,
    name: str = "input",
    *,
    dims: Mapping[str, int] | None = None,
    error: type[Exception] = Easi3RInputError,
) -> dict[str, int]:
    """Check that ``x`` (tensor or array) has the shape ``spec`` and return the bound dimension sizes.

    Args:
        x: a :class:`torch.Tensor` or :class:`numpy.ndarray`.
        spec: e.g. ``"P H W 3"``, ``"* 4 4"``, ``"T _ _"`` (see the module docstring).
        name: the argument's name, used in the message.
        dims: sizes of names already known (e.g. ``{"T": 6}``); they must match.
        error: the exception type to raise (an :mod:`easi3r.errors` type).

    Returns:
        ``{name: size}`` for every named dimension of ``spec`` (and the pre-bound ``dims``).

    Raises:
        Easi3RInputError: (or ``error``) the shape does not match, with a one-line message naming ``name``.
    """
    shape = _shape_of(x, name)
    tokens = spec.split()
    batched = bool(tokens) and tokens[0] == "*"
    if batched:
        tokens = tokens[1:]
    shown = ", ".join((["..."] if batched else []) + tokens)
    if (len(shape) < len(tokens)) if batched else (len(shape) != len(tokens)):
        raise error(f"{name} must have shape ({shown}), got {shape}")
    bound: dict[str, int] = dict(dims or {})
    tail = shape[len(shape) - len(tokens) :]
    for token, size in zip(tokens, tail, strict=True):
        if token == "_":
            continue
        if token.isdigit():
            if size != int(token):
                raise error(f"{name} must have shape ({shown}), got {shape}")
            continue
        if token in bound and bound[token] != size:
            known = dims is not None and token in dims
            why = f" with {token} = {bound[token]}" if known else f" with equal {token}"
            raise error(f"{name} must have shape ({shown}){why}, got {shape}")
        bound[token] = size
    return bound


def check_dtype(x: ArrayLike, allowed: tuple[Any, ...], name: str = "input") -> None:
    """Raise :class:`Easi3RInputError` unless ``x.dtype`` is one of ``allowed`` (torch or numpy dtypes)."""
    dtype = x.dtype
    ok = any(dtype == a for a in allowed)
    if not ok:
        names = ", ".join(str(a).replace("torch.", "") for a in allowed)
        raise Easi3RInputError(f"{name} must have dtype {names}, got {str(dtype).replace('torch.', '')}")


def check_finite(x: ArrayLike, name: str = "input") -> None:
    """Raise :class:`Easi3RInputError` if ``x`` holds NaN or infinite values."""
    finite = bool(torch.isfinite(x).all()) if isinstance(x, Tensor) else bool(np.isfinite(x).all())
    if not finite:
        raise Easi3RInputError(f"{name} must be finite (it holds NaN or inf values)")


def check_same_device(tensors: Mapping[str, Tensor | None]) -> torch.device | None:
    """Raise :class:`Easi3RInputError` unless every non-None tensor lies on one device; return that device."""
    devices = {k: t.device for k, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise Easi3RInputError(f"inputs must be on one device, got {listed}")
    return next(iter(devices.values()), None)


def as_float64(x: Any, name: str = "input") -> np.ndarray:
    """``x`` (tensor, array or nested sequence) as a float64 numpy array, with a typed error on non-numeric input."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise Easi3RInputError(f"{name} must be numeric, got {type(x).__name__}: {err}") from None
