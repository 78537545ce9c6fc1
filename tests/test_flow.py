"""Built-in flow providers by name (:func:`easi3r.align.make_flow_provider`): DIS on a known shift, the RAFT
branch's errors (torchvision missing or unusable, weights missing), and the callable hook."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from easi3r.align import FLOW_MODELS, DISFlow, FlowProvider, RAFTFlow, make_flow_provider
from easi3r.errors import Easi3RInputError, Easi3RRuntimeError


def _textured(h: int, w: int, shift: int = 0) -> np.ndarray:
    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    xs = xs - shift
    value = 0.5 + 0.2 * np.sin(0.31 * xs + 0.17 * ys) + 0.2 * np.sin(0.13 * xs - 0.29 * ys) * np.cos(0.07 * xs)
    return np.repeat(np.clip(value * 255, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def test_dis_by_name_measures_a_known_shift() -> None:
    provider = make_flow_provider("dis")
    assert isinstance(provider, DISFlow) and isinstance(provider, FlowProvider)
    a, b = _textured(96, 128), _textured(96, 128, shift=3)  # b is a moved 3 px to the right
    flow = provider(a, b)
    assert flow.shape == (96, 128, 2) and flow.dtype == np.float32
    inner = flow[16:-16, 16:-16]
    assert abs(float(np.median(inner[..., 0])) - 3.0) < 0.1 and abs(float(np.median(inner[..., 1]))) < 0.1


def test_unknown_name_and_dis_weights_are_rejected() -> None:
    assert FLOW_MODELS == ("dis", "raft", "raft_small")
    with pytest.raises(Easi3RInputError, match="flow_model must be one of dis, raft, raft_small, got 'sea-raft'"):
        make_flow_provider("sea-raft")
    with pytest.raises(Easi3RInputError, match="takes no weights"):
        make_flow_provider("dis", weights="x.pth")


@pytest.mark.parametrize("name", ["raft", "raft_small"])
def test_raft_without_torchvision_names_the_extra(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(Easi3RRuntimeError, match=r"needs torchvision .*pip install easi3r\[raft\]") as err:
        make_flow_provider(name)
    assert "\n" not in str(err.value)


def test_raft_missing_local_weights_names_the_file(tmp_path) -> None:
    try:
        from torchvision.models import optical_flow  # noqa: F401
    except Exception:
        pytest.skip("torchvision is not usable beside this torch (the CPU torch here has no matching wheel on PyPI)")
    with pytest.raises(Easi3RInputError, match="RAFT weights file not found: .*nope.pth"):
        RAFTFlow("raft_small", weights=tmp_path / "nope.pth")
