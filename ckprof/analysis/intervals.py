"""Small shared helpers over event columns for the analysis stages (numpy only).

- :func:`thread_ids`: one dense integer per (pid, tid) pair;
- :func:`lexicographic_score`: several small non-negative integer keys packed into one
  int64 that orders like the tuple of keys;
- :func:`down_tree`: visit the event tree level by level (roots first), vectorised;
- :func:`innermost_op_rows`: the innermost ``cpu_op`` enclosing given instants on given
  threads (the op that allocated a block, the op running at a peak);
- :func:`nearest_op_ancestor`: the nearest enclosing ``cpu_op`` of given event rows
  (the op that made a runtime call);
- :func:`union_length`: the length of a union of half-open intervals, per group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "down_tree",
    "innermost_op_rows",
    "lexicographic_score",
    "nearest_op_ancestor",
    "thread_ids",
    "union_length",
]


def thread_ids(pid: np.ndarray, tid: np.ndarray) -> np.ndarray:
    """Dense int64 ids, equal exactly when (pid, tid) are equal.

    Kineto pids and tids are arbitrary 64-bit values (tids of 2**31 and more occur),
    so no arithmetic packing of the pair is safe; the pair is factorised instead."""
    pid = np.asarray(pid, dtype=np.int64)
    tid = np.asarray(tid, dtype=np.int64)
    if len(pid) == 0:
        return np.empty(0, dtype=np.int64)
    pairs = pd.MultiIndex.from_arrays([pid, tid])
    return pd.factorize(pairs)[0].astype(np.int64)


def lexicographic_score(keys: Sequence[np.ndarray], bounds: Sequence[int]) -> np.ndarray:
    """Pack keys ``k0, k1, ...`` (each ``0 <= k_i < bounds[i]``) into one int64 that
    orders exactly like the tuple ``(k0, k1, ...)``: ``k0 * B1 * B2 ... + k1 * B2 ... + ...``.

    Raises ``OverflowError`` if the product of the bounds does not fit in int64."""
    total = 1
    for b in bounds:
        total *= int(b)
    if total >= 2**63:
        raise OverflowError("lexicographic_score: keys do not fit in int64")
    out = np.zeros(np.broadcast(*keys).shape, dtype=np.int64) if keys else np.zeros(0, np.int64)
    for key, bound in zip(keys, bounds, strict=True):
        out = out * np.int64(bound) + np.asarray(key, dtype=np.int64)
    return out


def down_tree(parent: np.ndarray, depth: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], None]
              ) -> None:
    """Visit rows level by level (roots first); ``fn(rows, parents)`` fills arrays
    for ``rows`` from their (already filled) ``parents``. Vectorised per level."""
    if len(depth) == 0:
        return
    order = np.argsort(depth, kind="stable")
    d_sorted = depth[order]
    bounds = np.searchsorted(d_sorted, np.arange(int(d_sorted[-1]) + 2))
    for d in range(1, int(d_sorted[-1]) + 1):
        rows = order[bounds[d]:bounds[d + 1]]
        if len(rows):
            fn(rows, parent[rows])


_CPU_SIDE_KINDS = ("cpu_op", "user_annotation", "runtime", "other")


def innermost_op_rows(ev: pd.DataFrame, pid: np.ndarray, tid: np.ndarray,
                      t: np.ndarray) -> np.ndarray:
    """Row of the innermost ``cpu_op`` on thread ``(pid[i], tid[i])`` whose span
    ``[ts, ts + dur)`` contains instant ``t[i]``; -1 when none.

    Vectorised: one searchsorted per thread finds the last CPU-side event starting at
    or before ``t``; it contains ``t`` or one of its ancestors does (or none does), so a
    parent walk finishes the job."""
    t = np.asarray(t, dtype=np.int64)
    found = np.full(len(t), -1, dtype=np.int64)
    if len(t) == 0 or len(ev) == 0:
        return found
    ts = ev["ts_ns"].to_numpy(dtype=np.int64)
    end = ts + ev["dur_ns"].to_numpy(dtype=np.int64)
    parent = ev["parent"].to_numpy(dtype=np.int64)
    is_op = (ev["kind"] == "cpu_op").to_numpy()
    cpu_side = np.flatnonzero(ev["kind"].isin(_CPU_SIDE_KINDS).to_numpy())
    keys = pd.DataFrame({"pid": ev["pid"].to_numpy()[cpu_side],
                         "tid": ev["tid"].to_numpy()[cpu_side]})
    j = np.full(len(t), -1, dtype=np.int64)
    want = pd.DataFrame({"pid": np.asarray(pid, dtype=np.int64),
                         "tid": np.asarray(tid, dtype=np.int64)})
    wanted = want.groupby(["pid", "tid"]).indices
    for key, idx in keys.groupby(["pid", "tid"]).indices.items():
        at = wanted.get(key)
        if at is None:
            continue
        rows = cpu_side[idx]                       # already in time order
        k = np.searchsorted(ts[rows], t[at], side="right") - 1
        j[at] = np.where(k >= 0, rows[np.maximum(k, 0)], -1)
    pending = j >= 0
    while pending.any():
        p = np.flatnonzero(pending)
        jj = j[p]
        hit = is_op[jj] & (ts[jj] <= t[p]) & (t[p] < end[jj])
        found[p[hit]] = jj[hit]
        j[p] = np.where(hit, -1, parent[jj])
        pending = j >= 0
    return found


def nearest_op_ancestor(ev: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """For each event row, the nearest STRICT ancestor that is a ``cpu_op`` (-1 when
    none), following ``parent`` links."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.full(len(rows), -1, dtype=np.int64)
    if len(rows) == 0:
        return out
    parent = ev["parent"].to_numpy(dtype=np.int64)
    is_op = (ev["kind"] == "cpu_op").to_numpy()
    cur = np.where(rows >= 0, parent[np.maximum(rows, 0)], -1)
    pending = cur >= 0
    while pending.any():
        p = np.flatnonzero(pending)
        c = cur[p]
        hit = is_op[c]
        out[p[hit]] = c[hit]
        cur[p] = np.where(hit, -1, parent[c])
        pending = cur >= 0
    return out


def union_length(group: np.ndarray, start: np.ndarray, end: np.ndarray) -> pd.Series:
    """Length of the union of half-open intervals ``[start, end)`` per ``group``
    (integer ns in, int64 out, indexed by group, sorted). Exact: each interval adds
    the part of it that starts after every earlier-starting interval of its group
    ended."""
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
