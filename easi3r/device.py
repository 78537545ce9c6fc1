"""Device selection: one explicit rule used everywhere a ``device=None`` default appears."""

from __future__ import annotations

import torch

from .errors import Easi3RInputError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` -> ``cuda`` when available, else ``cpu``; strings are validated (typed error on nonsense or on a
    CUDA device that is not available)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise Easi3RInputError(f"invalid device {device!r}: {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise Easi3RInputError(f"device {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise Easi3RInputError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise Easi3RInputError(f"device {device!r} requested but MPS is not available on this machine")
    elif dev.type != "cpu":
        raise Easi3RInputError(f"device {device!r} is not supported (use 'cpu', 'cuda', 'cuda:N' or 'mps')")
    return dev
