"""``python -m easi3r ...``: the command line (also the form torchrun starts: ``torchrun -m easi3r run ...``)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
