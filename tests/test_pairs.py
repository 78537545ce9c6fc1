"""Scene graphs: official pair lists, order included, and the symmetrisation rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from easi3r.errors import Easi3RInputError
from easi3r.pairs import make_pairs, parse_graph

REF = Path(__file__).parent / "data" / "reference"


def _rows(a: np.ndarray) -> list[tuple[int, int]]:
    return [(int(i), int(j)) for i, j in a]


def _swapped(rows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(j, i) for i, j in rows]


def test_fixture_pair_list_exact() -> None:
    with np.load(REF / "pipeline.npz") as d:
        expected = d["pairs"]
    got = make_pairs(6, "swinstride", 5)
    assert got.dtype == np.int64 and got.shape == (18, 2)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(make_pairs(6, "swinstride-5-noncyclic"), expected)


def test_spec_worked_example_t8() -> None:
    first = [(0, 1), (0, 7), (1, 2), (3, 4), (2, 7), (0, 3), (1, 4), (2, 3),
             (6, 7), (4, 5), (5, 6), (0, 5), (3, 6), (1, 6), (2, 5), (4, 7)]  # fmt: skip
    assert _rows(make_pairs(8, "swinstride", 5)) == first + _swapped(first)


def test_spec_worked_example_t5() -> None:
    first = [(0, 1), (1, 2), (3, 4), (0, 3), (1, 4), (2, 3)]
    assert _rows(make_pairs(5, "swinstride", 5)) == first + _swapped(first)


def _offsets(graph: str, window: int) -> list[int]:
    stride = {"swin": 1, "swinstride": 2, "swin2stride": 3}[graph]
    return [1 + stride * k for k in range(window)]


@pytest.mark.parametrize("graph", ["swin", "swinstride", "swin2stride"])
@pytest.mark.parametrize("t", [2, 3, 7, 13])
@pytest.mark.parametrize("window", [2, 3, 5])
@pytest.mark.parametrize("cyclic", [False, True])
def test_sliding_window_content(graph: str, t: int, window: int, cyclic: bool) -> None:
    offs = _offsets(graph, window)
    # Independent description: unordered pairs of distinct frames at forward distance d (mod T when cyclic) in
    # the offset set.
    expected = set()
    for i in range(t):
        for j in range(t):
            if i == j:
                continue
            d = (j - i) % t if cyclic else j - i
            if (cyclic or d > 0) and d in {o % t if cyclic else o for o in offs}:
                expected.add((min(i, j), max(i, j)))
    rows = _rows(make_pairs(t, graph, window, cyclic=cyclic))
    half = len(rows) // 2
    assert len(rows) == 2 * len(expected)
    assert set(rows[:half]) == expected and len(set(rows[:half])) == half
    assert rows[half:] == _swapped(rows[:half])
    assert all(i < j for i, j in rows[:half])


def test_swin2stride_counts() -> None:
    # offsets 1, 4, 7, 10 over 12 frames: 11 + 8 + 5 + 2 unordered pairs.
    assert len(make_pairs(12, "swin2stride-4-noncyclic")) == 2 * 26
    # cyclic: every frame starts one pair per offset, none coincide -> 12 * 4.
    assert len(make_pairs(12, "swin2stride-4")) == 2 * 48


def test_cyclic_wraps_without_self_pairs() -> None:
    rows = _rows(make_pairs(5, "swin", 2, cyclic=True))
    assert {(i, j) for i, j in rows} == {(i, j) for i in range(5) for j in range(5) if i != j}
    # Offsets 1, 3, 5 on 5 frames: offset 5 maps every frame onto itself; the official code would emit (i, i).
    rows = _rows(make_pairs(5, "swinstride", 3, cyclic=True))
    assert all(i != j for i, j in rows)
    assert {(i, j) for i, j in rows} == {(i, j) for i in range(5) for j in range(5) if i != j}


@pytest.mark.parametrize(
    ("graph", "t", "window"),
    [("swinstride", 3, 2), ("swinstride", 3, 3), ("swinstride", 3, 5), ("swinstride", 5, 5), ("swin", 2, 3),
     ("swin", 3, 3), ("swin2stride", 4, 5)],
)  # fmt: skip
def test_no_self_pairs_for_few_frames(graph: str, t: int, window: int) -> None:
    rows = make_pairs(t, graph, window, cyclic=True)
    assert len(rows) > 0 and (rows[:, 0] != rows[:, 1]).all()
    # Every frame is still in a pair, and each pair appears in both orders.
    assert set(rows.ravel().tolist()) == set(range(t))
    assert {(int(a), int(b)) for a, b in rows} == {(int(b), int(a)) for a, b in rows}


def test_complete() -> None:
    first = [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert _rows(make_pairs(4, "complete")) == first + _swapped(first)
    assert len(make_pairs(10, "complete")) == 90
    assert _rows(make_pairs(4, "complete", symmetrize=False)) == first


def test_oneref() -> None:
    assert _rows(make_pairs(4, "oneref", refid=2)) == [(2, 0), (2, 1), (2, 3)]  # never symmetrised
    assert _rows(make_pairs(4, "oneref-1")) == [(1, 0), (1, 2), (1, 3)]
    assert _rows(make_pairs(4, "oneref", window=3)) == [(3, 0), (3, 1), (3, 2)]  # Easi3RConfig stores it here
    assert _rows(make_pairs(4, "oneref", window=3, refid=0)) == [(0, 1), (0, 2), (0, 3)]


def test_swin1_not_symmetrised_official_quirk() -> None:
    rows = _rows(make_pairs(5, "swin", 1))
    assert sorted(rows) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    # The official rule is a prefix test on the name, so swin-10..19 are not symmetrised either.
    assert len(make_pairs(30, "swin", 12)) == sum(30 - k for k in range(1, 13))
    assert len(make_pairs(30, "swin", 9)) == 2 * sum(30 - k for k in range(1, 10))
    assert len(make_pairs(30, "swin", 20)) == 2 * sum(30 - k for k in range(1, 21))


@pytest.mark.parametrize("graph", ["swin-1", "swinstride-5-noncyclic", "complete", "oneref-0", "oneref-1"])
def test_two_frames_always_symmetrised(graph: str) -> None:
    rows = _rows(make_pairs(2, graph, symmetrize=False))
    assert sorted(rows) == [(0, 1), (1, 0)]


def test_symmetrize_false() -> None:
    full = make_pairs(8, "swinstride", 5)
    np.testing.assert_array_equal(make_pairs(8, "swinstride", 5, symmetrize=False), full[:16])


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("swinstride-5-noncyclic", ("swinstride", 5, False)),
        ("swin-3", ("swin", 3, True)),
        ("swin2stride-4", ("swin2stride", 4, True)),
        ("swin", ("swin", 3, True)),
        ("swin-noncyclic", ("swin", 3, False)),
        ("complete", ("complete", 0, False)),
        ("oneref-0", ("oneref", 0, False)),
        ("oneref-7", ("oneref", 7, False)),
    ],
)
def test_parse_graph(name: str, parsed: tuple[str, int, bool]) -> None:
    assert parse_graph(name) == parsed


@pytest.mark.parametrize("name", ["logwin-3", "swinx-3", "swin-x", "swin-3-5", "complete-3", "", "swin-3-cyclic"])
def test_parse_graph_rejects(name: str) -> None:
    with pytest.raises(Easi3RInputError) as e:
        parse_graph(name)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1,), {}),
        ((0,), {}),
        ((5, "nope"), {}),
        ((5, "swin", 0), {}),
        ((5, "oneref"), {"refid": 5}),
        ((5, "oneref", 7), {}),
        ((2.0,), {}),
    ],
)
def test_make_pairs_rejects(args: tuple, kwargs: dict) -> None:
    with pytest.raises(Easi3RInputError):
        make_pairs(*args, **kwargs)
