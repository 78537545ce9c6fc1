"""``python -m helpers.video_fail_rank run ...``: the easi3r CLI with rank 1's first pass made to fail.

Test-side only (the library has no test hooks): on rank 1, :func:`easi3r.pipeline.run_pass` is replaced by one that
raises, i.e. one rank of a one-video run failing while rank 0 waits in a collective.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import easi3r.pipeline
from easi3r.cli import main as cli_main

FAILING_RANK = 1
MESSAGE = "injected failure (tests/helpers/video_fail_rank.py)"


def _broken(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(MESSAGE)


def main(argv: Sequence[str] | None = None) -> int:
    if int(os.environ.get("RANK", "0")) == FAILING_RANK:
        easi3r.pipeline.run_pass = _broken  # type: ignore[assignment]
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
