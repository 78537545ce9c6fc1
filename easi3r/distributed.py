"""Explicit multi-process context for easi3r: which rank this process is, on which device, in which group.

Nothing here is global: :func:`init_distributed` returns a frozen :class:`DistContext` that callers pass on
(:func:`easi3r.batch.run_many` takes one), and every collective helper takes it as its first argument. A
single-process context (``world_size == 1``) makes every helper a no-op, so code written against the context runs
unchanged with and without ``torchrun``.

Example:
    >>> ctx = DistContext.single("cpu")
    >>> ctx.rank, ctx.world_size, ctx.is_main
    (0, 1, True)
    >>> all_gather_objects(ctx, {"frames": 4})
    [{'frames': 4}]
    >>> broadcast_object(ctx, [1, 2])
    [1, 2]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

from .device import resolve_device
from .errors import Easi3RInputError, Easi3RRuntimeError, first_line

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "TORCHRUN_ENV",
    "DistContext",
    "all_gather_objects",
    "gather_objects",
    "barrier",
    "broadcast_object",
    "init_distributed",
    "shutdown",
]

#: Default timeout of every collective, in seconds (a rank that waits longer than this for its peers fails).
DEFAULT_TIMEOUT_S = 600.0
#: Environment variable (seconds) that replaces :data:`DEFAULT_TIMEOUT_S` when no timeout is passed.
TIMEOUT_ENV = "EASI3R_DIST_TIMEOUT"
#: The variables ``torchrun`` sets for every worker; all must be present to start a process group from them.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) job.

    Attributes:
        rank: global rank, ``0 <= rank < world_size``.
        world_size: number of processes (1: no process group, every collective is a no-op).
        local_rank: rank on this node (selects the GPU ``cuda:{local_rank}``).
        device: the device this rank computes on.
        backend: ``"nccl"``, ``"gloo"``, ..., or ``"none"`` for a single process.
        owns_group: True when :func:`init_distributed` created the process group (so :func:`shutdown` destroys
            it); False for a group the caller created, or none.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool = False

    @classmethod
    def single(cls, device: str | torch.device | None = None) -> DistContext:
        """A one-process context on ``device`` (None: CUDA when available, else CPU)."""
        return cls(rank=0, world_size=1, local_rank=0, device=resolve_device(device), backend="none")

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that writes shared files)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when there is more than one process (the collectives communicate)."""
        return self.world_size > 1


def _env_int(name: str) -> int:
    text = os.environ[name]
    try:
        return int(text)
    except ValueError:
        raise Easi3RInputError(f"environment variable {name} must be an integer, got {text!r}") from None


def _timeout_seconds(timeout_s: float | None) -> float:
    if timeout_s is None:
        text = os.environ.get(TIMEOUT_ENV)
        if text is None:
            return DEFAULT_TIMEOUT_S
        try:
            timeout_s = float(text)
        except ValueError:
            raise Easi3RInputError(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if not timeout_s > 0:
        raise Easi3RInputError(f"the distributed timeout must be > 0 seconds, got {timeout_s!r}")
    return float(timeout_s)


def _rank_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    """``device`` for a rank: None or a bare ``"cuda"`` means this node's GPU ``cuda:{local_rank}``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        index = torch.device(device).index
    except (RuntimeError, TypeError):
        index = None  # resolve_device gives the typed error
    # The index is checked here rather than by resolve_device: a rank's message names its local rank and the fix.
    dev = resolve_device(device if index is None else torch.device(device).type)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if index is None else index)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise Easi3RInputError(
                f"local rank {local_rank} wants {dev} but this node has {torch.cuda.device_count()} GPU(s): start "
                "at most one process per GPU (torchrun --nproc-per-node), or pass device='cpu'"
            )
    return dev


def init_distributed(device: str | torch.device | None = None, timeout_s: float | None = None) -> DistContext:
    """The context of this process, joining (or creating) its process group.

    * A process group already initialised by the caller is used as it is (and left to the caller to destroy).
    * Otherwise, when the ``torchrun`` variables (:data:`TORCHRUN_ENV`) are all set and ``WORLD_SIZE > 1``, a group
      is created from them: backend ``nccl`` when this rank's device is CUDA, else ``gloo``.
    * Otherwise: a single-process context (:meth:`DistContext.single`).

    Args:
        device: ``None``: ``cuda:{LOCAL_RANK}`` when CUDA is available, else CPU; a bare ``"cuda"`` also means
            ``cuda:{LOCAL_RANK}``; anything else is used as given.
        timeout_s: timeout of every collective in seconds. None: the :data:`TIMEOUT_ENV` environment variable,
            else :data:`DEFAULT_TIMEOUT_S` (600 s).

    Raises:
        Easi3RInputError: a malformed torchrun variable or timeout, an unavailable device.
        Easi3RRuntimeError: the process group cannot be created (peers unreachable, timeout).
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank % max(1, torch.cuda.device_count())
        dev = _rank_device(device, local)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistContext(rank, world, local, dev, str(dist.get_backend()), owns_group=False)
    if not all(name in os.environ for name in TORCHRUN_ENV) or _env_int("WORLD_SIZE") <= 1:
        return DistContext.single(_rank_device(device, 0))
    if not dist.is_available():
        raise Easi3RRuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    dev = _rank_device(device, local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = timedelta(seconds=_timeout_seconds(timeout_s))
    if dev.type == "cuda":
        # NCCL's object collectives stage through the *current* CUDA device; it must be this rank's GPU.
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group(backend=backend, timeout=timeout)
    except Exception as err:
        raise Easi3RRuntimeError(
            f"rank {rank}/{world}: cannot create the {backend} process group: {first_line(err)}"
        ) from err
    return DistContext(rank, world, local, dev, backend, owns_group=True)


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it (a caller's group is left alone)."""
    if ctx.owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective(ctx: DistContext, what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except Exception as err:
        # A peer that died or timed out surfaces as a backend-specific RuntimeError; name the rank instead.
        raise Easi3RRuntimeError(f"rank {ctx.rank}/{ctx.world_size}: {what} failed: {first_line(err)}") from err


def all_gather_objects(ctx: DistContext, obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` for a single process.

    Raises:
        Easi3RRuntimeError: a peer failed or the collective timed out.
    """
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    _collective(ctx, "all_gather_objects", lambda: dist.all_gather_object(out, obj))
    return out


def gather_objects(ctx: DistContext, obj: T, dst: int = 0) -> list[T] | None:
    """Every rank's ``obj`` in rank order on rank ``dst`` (None elsewhere); ``[obj]`` for a single process.

    Unlike :func:`all_gather_objects`, only ``dst`` holds the gathered objects (memory O(N) on one rank only).

    Raises:
        Easi3RRuntimeError: a peer failed or the collective timed out.
    """
    if not ctx.distributed:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.rank == dst else None
    _collective(ctx, "gather_objects", lambda: dist.gather_object(obj, out, dst=dst))
    return out


def broadcast_object(ctx: DistContext, obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (the other ranks' ``obj`` is ignored); ``obj`` for a single process.

    Raises:
        Easi3RInputError: ``src`` is not a rank of the group.
        Easi3RRuntimeError: a peer failed or the collective timed out.
    """
    if not 0 <= src < ctx.world_size:
        raise Easi3RInputError(f"broadcast source rank must be in [0, {ctx.world_size}), got {src}")
    if not ctx.distributed:
        return obj
    box: list[Any] = [obj if ctx.rank == src else None]
    _collective(ctx, "broadcast_object", lambda: dist.broadcast_object_list(box, src=src))
    return cast(T, box[0])


def barrier(ctx: DistContext) -> None:
    """Wait until every rank reaches this point; nothing for a single process.

    Raises:
        Easi3RRuntimeError: a peer failed or the barrier timed out.
    """
    if not ctx.distributed:
        return
    if ctx.backend == "nccl":
        # Without device_ids NCCL guesses the GPU from the rank, which is wrong on multi-node jobs.
        _collective(ctx, "barrier", lambda: dist.barrier(device_ids=[ctx.device.index or 0]))
    else:
        _collective(ctx, "barrier", lambda: dist.barrier())
