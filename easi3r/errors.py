"""Typed exceptions raised where bad input enters the library, and the one-line form of any exception.

Every easi3r error derives from :class:`Easi3RError`; the input errors are also :class:`ValueError` subclasses so
that generic ``except ValueError`` handlers keep working. Messages are one line and name the offending input.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "Easi3RError", "Easi3RInputError", "Easi3RRuntimeError", "first_line"]


class Easi3RError(Exception):
    """Base class of every exception easi3r raises on purpose."""


class Easi3RInputError(Easi3RError, ValueError):
    """Bad user input: frames, masks, configuration values, files that cannot be read."""


class CheckpointError(Easi3RError, ValueError):
    """A checkpoint that cannot be loaded safely or does not match the network it claims to be."""


class Easi3RRuntimeError(Easi3RError, RuntimeError):
    """Valid input on which a stage cannot proceed (e.g. a degenerate scene), or an environment that lacks
    something a stage needs (an optional dependency, a device)."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``str(exc)``, or the exception's type name when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
