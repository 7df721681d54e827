"""Stage: the time inside the user's own ``ckprof.phase("<name>")`` ranges.

Contract::

    user_phase_time(trace, phases) -> DataFrame  name, phase, count, wall_ns

A ``ckprof::phase::<name>`` range whose name is not a standard phase (``data``,
``logging``, ``eval``...) labels time the phase table counts as ``other`` (NOTE [ Phase
precedence ] in phases.py: any other marker, and recompute, win over it). This stage
says how much of that ``other`` time each such range holds, so reports can show user
phases as rows inside ``other``: ``wall_ns`` is the ``other`` time of the analysed
steps that lies inside the ranges of ``name`` (when user ranges nest, the inner one --
the later-started -- gets the time), ``count`` the number of ranges of that name
starting in the analysed steps, ``phase`` is always ``other`` (the row it refines).
Rows are sorted by ``wall_ns`` descending, then name; no user ranges -> no rows.
Pure numpy/pandas; no torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ckprof.analysis.intervals import step_of
from ckprof.analysis.phases import PhaseTable
from ckprof.trace.markers import PHASE_PREFIX, phase_of_user_marker
from ckprof.trace.model import Trace

__all__ = ["user_phase_time"]

_COLUMNS = ["name", "phase", "count", "wall_ns"]


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"name": pd.Series([], dtype=object), "phase": pd.Series([], dtype=object),
                         "count": pd.Series([], dtype="int64"), "wall_ns": pd.Series([], dtype="int64")})


def _coverage(starts: np.ndarray, ends: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Length of [starts, ends) (sorted, disjoint) lying before each instant ``t``."""
    if len(starts) == 0:
        return np.zeros(len(t), dtype=np.int64)
    lengths = ends - starts
    cum = np.concatenate(([0], np.cumsum(lengths)))
    k = np.searchsorted(starts, t, side="right") - 1
    inside = np.where(k >= 0, np.clip(t - starts[np.maximum(k, 0)], 0, lengths[np.maximum(k, 0)]), 0)
    return np.where(k >= 0, cum[np.maximum(k, 0)] + inside, 0).astype(np.int64)


def _innermost_other_time(start: np.ndarray, end: np.ndarray, label: np.ndarray,
                          o_start: np.ndarray, o_end: np.ndarray) -> dict[str, int]:
    """Sweep over range boundaries (ranges sorted by start): each elementary span goes to
    the latest-started range active over it; its ``other`` time is added to that name."""
    import heapq

    times = np.unique(np.concatenate((start, end)))
    starts_at = np.searchsorted(times, start)
    ends_at = np.searchsorted(times, end)
    opening: dict[int, list[int]] = {}
    for i, k in enumerate(starts_at.tolist()):
        opening.setdefault(k, []).append(i)
    cover = _coverage(o_start, o_end, times)
    heap: list[tuple[int, int]] = []   # (-order, range index): the latest-started on top
    totals: dict[str, int] = {}
    for k in range(len(times) - 1):
        for i in opening.get(k, ()):
            heapq.heappush(heap, (-i, i))
        while heap and ends_at[heap[0][1]] <= k:
            heapq.heappop(heap)
        if heap:
            name = str(label[heap[0][1]])
            totals[name] = totals.get(name, 0) + int(cover[k + 1] - cover[k])
    return totals


def user_phase_time(trace: Trace, phases: PhaseTable) -> pd.DataFrame:
    """``other`` time inside each user phase (see module doc)."""
    ev = trace.events
    if len(ev) == 0:
        return _empty()
    names = ev["name"].astype(str)
    is_user = (ev["kind"] == "user_annotation").to_numpy() & names.str.startswith(PHASE_PREFIX).to_numpy()
    if not is_user.any():
        return _empty()
    rows = np.flatnonzero(is_user)
    full = names.to_numpy()[rows]
    keep = np.array([phase_of_user_marker(n) == "other" and n[len(PHASE_PREFIX):] != "other"
                     for n in full], dtype=bool)
    if not keep.any():
        return _empty()
    rows, full = rows[keep], full[keep]
    label = np.array([n[len(PHASE_PREFIX):] for n in full], dtype=object)
    start = ev["ts_ns"].to_numpy(dtype=np.int64)[rows]
    end = start + ev["dur_ns"].to_numpy(dtype=np.int64)[rows]

    seg = phases.segments
    other = seg[seg["phase"] == "other"]
    o_start = other["start_ns"].to_numpy(dtype=np.int64)
    o_end = other["end_ns"].to_numpy(dtype=np.int64)
    steps = phases.steps

    order = np.argsort(start, kind="stable")
    start, end, label = start[order], end[order], label[order]
    totals = _innermost_other_time(start, end, label, o_start, o_end)
    in_step = step_of(start, steps) >= 0
    counts = pd.Series(in_step.astype(np.int64)).groupby(label).sum()
    out = pd.DataFrame({
        "name": sorted(set(label.tolist())),
    })
    out["phase"] = "other"
    out["count"] = [int(counts.get(n, 0)) for n in out["name"]]
    out["wall_ns"] = [int(totals.get(n, 0)) for n in out["name"]]
    out = out[(out["count"] > 0) | (out["wall_ns"] > 0)]
    out = out.astype({"count": "int64", "wall_ns": "int64"})
    return out.sort_values(["wall_ns", "name"], ascending=[False, True], kind="stable").reset_index(drop=True)[_COLUMNS]
