"""Small shared helpers over event columns for the analysis stages (numpy only).

Each takes a :class:`~ckprof.trace.table.Table` (``trace.event_table``) or a DataFrame
(``trace.events``) alike: columns are read with ``np.asarray(table[name])``.

- :func:`thread_ids`: one dense integer per (pid, tid) pair;
- :func:`lexicographic_score`: several small non-negative integer keys packed into one
  int64 that orders like the tuple of keys;
- :func:`union_length`: the length of a union of half-open intervals, per group;
- :func:`name_codes`, :func:`mask_names`, :func:`kind_mask`: name and kind tests run
  once per distinct value;
- :func:`nearest_above`, :func:`outermost_above`: ancestor queries on the event tree
  (pointer jumping, any depth);
- :func:`step_of`: the step each instant falls in;
- :func:`distinct`, :func:`positions`, :func:`phase_index`: sorted distinct keys, where
  values sit among them, a phase name's place in ``PHASES``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np

from ckprof.trace.markers import PHASES
from ckprof.trace.table import Table, factorize

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["distinct", "kind_mask", "lexicographic_score", "mask_names", "name_codes", "nearest_above",
           "outermost_above", "phase_index", "positions", "step_of", "thread_ids", "union_length"]


def thread_ids(pid: np.ndarray, tid: np.ndarray) -> np.ndarray:
    """Dense int64 ids, equal exactly when (pid, tid) are equal.

    Kineto pids and tids are arbitrary 64-bit values (tids of 2**31 and more occur),
    so no arithmetic packing of the pair is safe; the pair is factorised instead."""
    pid = np.asarray(pid, dtype=np.int64)
    tid = np.asarray(tid, dtype=np.int64)
    return factorize(pid, tid)[0]


def lexicographic_score(keys: Sequence[np.ndarray], bounds: Sequence[int]) -> np.ndarray:
    """Pack keys ``k0, k1, ...`` (each ``0 <= k_i < bounds[i]``) into one int64 that
    orders exactly like the tuple ``(k0, k1, ...)``: ``k0 * B1 * B2 ... + k1 * B2 ... + ...``.

    Raises ``OverflowError`` if the product of the bounds does not fit in int64 and
    ``ValueError`` if a key is outside ``[0, bound)`` (it would spill into the key
    before it)."""
    total = 1
    for b in bounds:
        total *= int(b)
    if total >= 2**63:
        raise OverflowError("lexicographic_score: keys do not fit in int64")
    out = np.zeros(np.broadcast(*keys).shape, dtype=np.int64) if keys else np.zeros(0, np.int64)
    for i, (key, bound) in enumerate(zip(keys, bounds, strict=True)):
        key = np.asarray(key, dtype=np.int64)
        if key.size and (key.min() < 0 or key.max() >= bound):
            raise ValueError(f"lexicographic_score: key {i} is outside [0, {bound})")
        out = out * np.int64(bound) + key
    return out


def union_length(group: np.ndarray, start: np.ndarray, end: np.ndarray) -> pd.Series:
    """Length of the union of half-open intervals ``[start, end)`` per ``group``
    (integer ns in, int64 out, indexed by group, sorted). Exact: each interval adds
    the part of it that starts after every earlier-starting interval of its group
    ended."""
    import pandas as pd

    group = np.asarray(group)
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    if len(start) == 0:
        return pd.Series([], dtype="int64")
    codes, uniques = pd.factorize(group, sort=True)
    order = np.lexsort((end, start, codes))
    c, s, e = codes[order], start[order], end[order]
    reach = pd.Series(e).groupby(c).cummax().to_numpy(dtype=np.int64)
    prev = np.empty_like(reach)
    prev[0] = np.iinfo(np.int64).min
    prev[1:] = reach[:-1]
    first = np.ones(len(c), dtype=bool)
    first[1:] = c[1:] != c[:-1]
    prev[first] = np.iinfo(np.int64).min
    add = np.maximum(e - np.maximum(s, prev), 0)
    total = np.zeros(len(uniques), dtype=np.int64)
    np.add.at(total, c, add)
    return pd.Series(total, index=pd.Index(uniques), dtype="int64")


def name_codes(ev: Table | pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(codes per row, category strings): string tests run once per distinct name."""
    if isinstance(ev, Table):
        coded = ev.coded("name")
        return coded.codes, coded.categories
    import pandas as pd

    col = ev["name"]
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy(), col.cat.categories.astype(str).to_numpy(dtype=object)
    cat = pd.Categorical(col.astype(str))
    return np.asarray(cat.codes), np.asarray(cat.categories, dtype=object)


def mask_names(codes: np.ndarray, cats: np.ndarray,
               pred: Callable[[str], Any] | str | tuple[str, ...] | frozenset[str],
               among: np.ndarray | None = None) -> np.ndarray:
    """Rows whose name satisfies ``pred``, tested once per distinct name; with ``among``
    only those rows (and only the names they use are tested: a trace with a million
    distinct op names does not run every marker test a million times).

    ``pred`` is a function of the name, a prefix (or a tuple of prefixes: the name starts
    with one), or a frozenset (the name is one of them); the last two run without a
    Python call per name (half a million distinct step names: ~30 ms, not ~100 ms)."""
    out = np.zeros(len(codes), dtype=bool)
    valid = codes >= 0 if among is None else (codes >= 0) & among
    used = np.flatnonzero(np.bincount(codes[valid], minlength=len(cats)))
    names = cats[used].tolist()
    if isinstance(pred, (str, tuple)):
        tests: Iterable[Any] = map(str.startswith, names, repeat(pred))
    elif isinstance(pred, frozenset):
        tests = map(pred.__contains__, names)
    else:
        tests = map(pred, names)
    hit = np.zeros(len(cats), dtype=bool)
    hit[used] = np.fromiter(map(bool, tests), dtype=bool, count=len(used))
    out[valid] = hit[codes[valid]]
    return out


def kind_mask(ev: Table | pd.DataFrame, *kinds: str) -> np.ndarray:
    """Rows of one of ``kinds`` (tested once per category, not per row)."""
    if isinstance(ev, Table):
        return ev.coded("kind").isin(kinds)
    return ev["kind"].isin(kinds).to_numpy()


def nearest_above(parent: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """Per row, the nearest strict ancestor with ``hit`` (-1 when none).

    Pointer jumping: every row's pointer skips to its pointer's pointer until it rests
    on a hit or a root, so the work is O(n log depth) whatever the depth (a chain of a
    million nested duplicates takes ~20 vectorised rounds, not a million)."""
    up = parent.copy()
    live = np.flatnonzero(up >= 0)
    live = live[~hit[up[live]]]
    while len(live):
        up[live] = up[up[live]]
        live = live[up[live] >= 0]
        live = live[~hit[up[live]]]
    return up


def outermost_above(parent: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """Per row, the outermost strict ancestor with ``hit`` (-1 when none)."""
    top = nearest_above(parent, hit)
    while True:  # climb hit -> hit, doubling (each hit row's pointer moves too)
        live = np.flatnonzero(top >= 0)
        nxt = top[top[live]]
        move = nxt >= 0
        if not move.any():
            return top
        top[live[move]] = nxt[move]


def step_of(starts: np.ndarray, steps: Any) -> np.ndarray:
    """Step number whose [start, end) contains each instant, -1 when none (``steps``:
    a Table or DataFrame with ``step``, ``start_ns``, ``end_ns`` sorted by start)."""
    s = np.asarray(steps["start_ns"], dtype=np.int64)
    e = np.asarray(steps["end_ns"], dtype=np.int64)
    idx = np.searchsorted(s, starts, side="right") - 1
    ok = idx >= 0
    ok[ok] = starts[ok] < e[idx[ok]]
    return np.where(ok, np.asarray(steps["step"], dtype=np.int64)[np.maximum(idx, 0)], -1)


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values (``np.unique`` without its hash table, which numpy 2.4
    takes for plain ``unique`` and which is several times slower than a sort on int64)."""
    out = np.sort(values)
    return out[np.r_[True, out[1:] != out[:-1]]] if len(out) else out


def positions(sorted_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in the sorted distinct ``sorted_keys``, -1 when absent."""
    at = np.searchsorted(sorted_keys, values)
    ok = at < len(sorted_keys)
    ok[ok] = sorted_keys[at[ok]] == values[ok]
    return np.where(ok, at, -1)


def phase_index(phase: np.ndarray) -> np.ndarray:
    """Position of each phase name in ``PHASES`` (int64, -1 for any other value)."""
    out = np.full(len(phase), -1, dtype=np.int64)
    for i, name in enumerate(PHASES):
        out[phase == name] = i
    return out
