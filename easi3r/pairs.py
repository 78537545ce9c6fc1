"""Scene graphs: which frame pairs go through the network, in the official order.

Reproduces ``make_pairs`` of the official code (Easi3R / MonST3R ``dust3r/image_pairs.py``, ``make_pairs`` with
the sliding-window ``swin*`` graphs), edge order included. The sliding-window graphs collect unordered pairs in a
Python ``set`` and list them in the set's iteration order; that order is CPython's (deterministic for a given
insertion sequence, not sorted), so it is reproduced by inserting the same tuples in the same loop order. The
order does not change the method's maths, only floating-point summation order and "last writer wins" choices downstream.
"""

from __future__ import annotations

import numpy as np

from .errors import Easi3RInputError

__all__ = ["GRAPHS", "make_pairs", "parse_graph"]

GRAPHS = ("swin", "swinstride", "swin2stride", "complete", "oneref")
_STRIDES = {"swin": 1, "swinstride": 2, "swin2stride": 3}
_DEFAULT_WINDOW = 3  # the official default when the name carries no window size


def parse_graph(name: str) -> tuple[str, int, bool]:
    """Split an official scene-graph string into ``(graph, window, cyclic)``.

    ``"swinstride-5-noncyclic"`` -> ``("swinstride", 5, False)``; ``"swin-3"`` -> ``("swin", 3, True)``;
    ``"swin"`` -> ``("swin", 3, True)`` (official default window);
    ``"complete"`` -> ``("complete", 0, False)``;
    ``"oneref-2"`` -> ``("oneref", 2, False)`` (the window slot holds the reference frame; ``"oneref"`` -> 0).

    Raises:
        Easi3RInputError: unknown graph, non-integer window or unexpected suffix.
    """
    if not isinstance(name, str):
        raise Easi3RInputError(f"scene graph must be a string such as 'swinstride-5-noncyclic', got {name!r}")
    parts = name.strip().split("-")
    graph, rest = parts[0], parts[1:]
    if graph not in GRAPHS:
        raise Easi3RInputError(f"unknown scene graph {name!r}; expected one of {', '.join(GRAPHS)}")
    if graph == "complete":
        if rest:
            raise Easi3RInputError(f"scene graph {name!r}: 'complete' takes no parameters")
        return "complete", 0, False
    cyclic = graph != "oneref"
    if rest and rest[-1] == "noncyclic" and graph != "oneref":
        cyclic = False
        rest = rest[:-1]
    if len(rest) > 1:
        raise Easi3RInputError(f"scene graph {name!r}: expected '{graph}-N' or '{graph}-N-noncyclic'")
    if not rest:
        return graph, (0 if graph == "oneref" else _DEFAULT_WINDOW), cyclic
    try:
        window = int(rest[0])
    except ValueError:
        raise Easi3RInputError(f"scene graph {name!r}: {rest[0]!r} is not an integer") from None
    return graph, window, cyclic


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def make_pairs(
    num_frames: int,
    graph: str = "swinstride",
    window: int = 5,
    *,
    cyclic: bool = False,
    symmetrize: bool = True,
    refid: int | None = None,
) -> np.ndarray:
    """Ordered list of frame pairs ``(view1, view2)`` of a scene graph, as the official ``make_pairs``.

    Args:
        num_frames: number of frames ``T`` (>= 2).
        graph: ``"swin"`` (offsets 1..window), ``"swinstride"`` (offsets 1, 3, ..., 2*window-1),
            ``"swin2stride"`` (offsets 1, 4, ..., 3*window-2), ``"complete"`` (every pair) or ``"oneref"``
            (the reference frame with every other frame). An official string such as
            ``"swinstride-5-noncyclic"`` is also accepted and then overrides ``window`` and ``cyclic``.
        window: window size of the sliding-window graphs; for ``"oneref"`` the reference frame when ``refid``
            is None (this is how :class:`easi3r.Easi3RConfig` stores it).
        cyclic: sliding windows wrap around the end (``j = (i + k) mod T``). Where an offset is a multiple of
            ``T`` the official code produces a self-pair ``(i, i)``, which the alignment cannot use (a frame
            aligned with itself); such pairs are dropped here.
        symmetrize: append the swapped pairs. Official condition, kept verbatim: symmetrised when
            ``symmetrize`` and the graph is not ``oneref`` and its official name does not start with
            ``"swin-1"`` (this also matches ``swin-10`` ... ``swin-19``), or always when ``T == 2``.
        refid: reference frame of ``"oneref"``; overrides ``window`` when given.

    Returns:
        ``(P, 2)`` int64 array, row ``e`` = ``(view1 frame, view2 frame)`` of edge ``e``; the unordered
        pairs first in the official order, then (if symmetrised) the same pairs swapped.

    Raises:
        Easi3RInputError: ``num_frames < 2``, unknown graph, window < 1, reference frame out of range.
    """
    if not _is_int(num_frames) or num_frames < 2:
        raise Easi3RInputError(f"a scene graph needs at least 2 frames, got num_frames={num_frames!r}")
    t = int(num_frames)
    if isinstance(graph, str) and "-" in graph:
        graph, window, cyclic = parse_graph(graph)
        if graph == "oneref" and refid is None:
            refid = window
    if graph not in GRAPHS:
        raise Easi3RInputError(f"unknown scene graph {graph!r}; expected one of {', '.join(GRAPHS)}")

    pairs: list[tuple[int, int]] = []
    if graph == "complete":
        pairs = [(i, j) for i in range(t) for j in range(i)]
    elif graph == "oneref":
        ref = window if refid is None else refid
        if not _is_int(ref) or not 0 <= ref < t:
            raise Easi3RInputError(f"oneref: reference frame must be in [0, {t - 1}], got {ref!r}")
        pairs = [(int(ref), j) for j in range(t) if j != ref]
    else:
        if not _is_int(window) or window < 1:
            raise Easi3RInputError(f"{graph}: window must be an integer >= 1, got {window!r}")
        stride = _STRIDES[graph]
        unordered: set[tuple[int, int]] = set()
        # Plain Python ints and this exact loop order: the list below is the set's iteration order, which
        # is what the official code produces.
        for i in range(t):
            for k in range(1, stride * int(window) + 1, stride):
                j = i + k
                if cyclic:
                    j %= t
                elif j >= t:
                    continue
                if j == i:
                    continue
                unordered.add((i, j) if i < j else (j, i))
        pairs = list(unordered)

    # The official test is a string prefix on the graph name, so swin-10 ... swin-19 also match "swin-1".
    official_name = f"{graph}-{window}"
    if (symmetrize and graph != "oneref" and not official_name.startswith("swin-1")) or t == 2:
        pairs = pairs + [(j, i) for i, j in pairs]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
