"""Root pytest configuration: device / dtype fixtures and the ``--device`` / ``--dtype`` / ``--runslow`` options.

* ``--device cpu`` (default), ``cuda``, or ``all`` (every available device): tests that take the ``device``
  fixture run once per selected device; a CUDA device that is not available is skipped with its reason.
* ``--dtype float32`` (default), ``float64`` or ``all``: the same for the ``dtype`` fixture.
* ``--runslow``: also run the tests marked ``@pytest.mark.slow`` (CI does).
"""

from __future__ import annotations

import pytest
import torch

_DEVICES = ("cpu", "cuda")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="cpu, cuda or all (device fixture)")
    parser.addoption("--dtype", default="float32", help="float32, float64 or all (dtype fixture)")
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def _selected(option: str, known: tuple[str, ...]) -> list[str]:
    names = list(known) if option == "all" else option.split(",")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise pytest.UsageError(f"unknown value(s) {unknown}; expected one of {known} or 'all'")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    if "device" in metafunc.fixturenames:
        params = []
        for name in _selected(config.getoption("--device"), _DEVICES):
            marks = [pytest.mark.skipif(name == "cuda" and not torch.cuda.is_available(), reason="CUDA not available")]
            params.append(pytest.param(name, marks=marks, id=name))
        metafunc.parametrize("device", params)
    if "dtype" in metafunc.fixturenames:
        names = _selected(config.getoption("--dtype"), tuple(_DTYPES))
        metafunc.parametrize("dtype", [_DTYPES[n] for n in names], ids=names)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
