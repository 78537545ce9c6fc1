"""Device and numeric precision: one explicit rule used everywhere a ``device=None`` default appears, and the one
place the network's precision (:data:`~easi3r.config.Precision`) is turned into autocast and TF32 settings."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .config import Precision
from .errors import Easi3RInputError

__all__ = ["PRECISIONS", "check_precision", "network_precision", "resolve_device"]

#: The values of :data:`~easi3r.config.Precision`, the network's arithmetic (encoder and decoders; the heads and
#: everything after them stay float32):
#:
#: * ``"fp32"``: IEEE float32 everywhere (default; on CUDA TF32 is switched off for the network's matmuls and
#:   convolutions, so results do not depend on the process-wide flags).
#: * ``"tf32"``: CUDA only: float32 tensors, TF32 tensor-core matmuls and convolutions, as the official code runs
#:   (importing croco's ``models/croco.py`` sets ``torch.backends.cuda.matmul.allow_tf32 = True`` and ``demo.py``
#:   sets it again; cuDNN's TF32 for convolutions is PyTorch's default).
#: * ``"bf16"``: ``torch.autocast(dtype=torch.bfloat16)`` over the encoder and decoders (the heads run float32, as
#:   the official inference keeps them outside autocast); the encoder tokens are stored in bfloat16.
PRECISIONS: tuple[Precision, ...] = typing.get_args(Precision)


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


def check_precision(precision: str, device: torch.device) -> None:
    """Raise a one-line :class:`Easi3RInputError` unless ``precision`` is one of :data:`PRECISIONS` and ``device``
    runs it."""
    if precision not in PRECISIONS:
        raise Easi3RInputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "tf32" and device.type != "cuda":
        raise Easi3RInputError(f"precision 'tf32' needs a CUDA device (TF32 is a tensor-core format), got {device}")
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise Easi3RInputError(f"precision 'bf16' runs on cpu or cuda, got {device}")


@contextmanager
def network_precision(precision: Precision, device: torch.device) -> Iterator[None]:
    """Run the network calls inside it at ``precision`` on ``device`` (see :data:`PRECISIONS`).

    The CUDA TF32 flags are process-wide in PyTorch: they are set for the duration of the block and restored after
    it, whatever they were.

    Raises:
        Easi3RInputError: see :func:`check_precision`.
    """
    check_precision(precision, device)
    saved = None
    if device.type == "cuda":
        matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
        saved = matmul.allow_tf32, cudnn.allow_tf32
        matmul.allow_tf32 = cudnn.allow_tf32 = precision == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
    finally:
        if saved is not None:
            matmul.allow_tf32, cudnn.allow_tf32 = saved
