"""Typed exceptions raised where bad input enters the library.

Both are :class:`ValueError` subclasses so that generic ``except ValueError`` handlers keep working.
Messages are one line and name the offending input.
"""

from __future__ import annotations

__all__ = ["Easi3RInputError", "CheckpointError"]


class Easi3RInputError(ValueError):
    """Bad user input: frames, masks, configuration values, files that cannot be read."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or does not match the network it claims to be."""
