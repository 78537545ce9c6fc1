"""``python -m helpers.batch_fail_rank ...``: :func:`easi3r.batch.main` with the model of rank 1 made to fail.

Test-side only (the library has no test hooks): on rank 1 the ``Easi3R`` class that :mod:`easi3r.batch` builds its
model with is replaced by one that raises, i.e. a rank that fails hard before running any input.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import easi3r.batch

#: The rank whose model construction raises.
FAILING_RANK = 1
MESSAGE = "injected failure (tests/helpers/batch_fail_rank.py)"


class _BrokenEasi3R:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(MESSAGE)


def main(argv: Sequence[str] | None = None) -> int:
    if int(os.environ.get("RANK", "0")) == FAILING_RANK:
        easi3r.batch.Easi3R = _BrokenEasi3R  # type: ignore[misc,assignment]
    return easi3r.batch.main(argv)


if __name__ == "__main__":
    sys.exit(main())
