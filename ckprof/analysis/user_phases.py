"""Stage: the time inside the user's own ``ckprof.phase("<name>")`` ranges.

Contract::

    user_phase_time(trace, phases) -> Table  name, phase, count, wall_ns

A ``ckprof::phase::<name>`` range whose name is not a standard phase (``data``,
``logging``, ``eval``...) labels time the phase table counts as ``other`` (NOTE [ Phase
precedence ] in phases.py: any other marker, and recompute, win over it). This stage
says how much of that ``other`` time each such range holds, so reports can show user
phases as rows inside ``other``: ``wall_ns`` is the ``other`` time of the analysed
steps that lies inside the ranges of ``name`` (when user ranges nest, the inner one --
the later-started -- gets the time), ``count`` the number of ranges of that name
starting in the analysed steps, ``phase`` is always ``other`` (the row it refines).
Rows are sorted by ``wall_ns`` descending, then name; no user ranges -> no rows.
``name`` and ``phase`` are object arrays of str, ``count`` and ``wall_ns`` int64.
Pure numpy (reads ``trace.event_table`` and the phases' Tables); no pandas, no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ckprof.analysis.intervals import kind_mask, mask_names, name_codes, step_of
from ckprof.trace.markers import PHASE_PREFIX, phase_of_user_marker
from ckprof.trace.table import Table

if TYPE_CHECKING:  # pragma: no cover
    from ckprof.analysis.phases import PhaseTable
    from ckprof.trace.model import Trace

__all__ = ["user_phase_time"]


def _table(names: list[str], counts: list[int], walls_ns: list[int]) -> Table:
    """The result Table (``phase`` is ``other`` on every row)."""
    return Table({"name": np.array(names, dtype=object),
                  "phase": np.array(["other"] * len(names), dtype=object),
                  "count": np.array(counts, dtype=np.int64),
                  "wall_ns": np.array(walls_ns, dtype=np.int64)})


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


def user_phase_time(trace: Trace, phases: PhaseTable) -> Table:
    """``other`` time inside each user phase (see module doc)."""
    ev = trace.event_table
    if len(ev) == 0:
        return _table([], [], [])
    codes, cats = name_codes(ev)
    is_user = mask_names(codes, cats, PHASE_PREFIX,
                         among=kind_mask(ev, "user_annotation"))
    if not is_user.any():
        return _table([], [], [])
    rows = np.flatnonzero(is_user)
    full = cats[codes[rows]]
    keep = np.array([phase_of_user_marker(n) == "other" and n[len(PHASE_PREFIX):] != "other"
                     for n in full.tolist()], dtype=bool)
    if not keep.any():
        return _table([], [], [])
    rows, full = rows[keep], full[keep]
    label = np.array([n[len(PHASE_PREFIX):] for n in full.tolist()], dtype=object)
    start = np.asarray(ev["ts_ns"], dtype=np.int64)[rows]
    end = start + np.asarray(ev["dur_ns"], dtype=np.int64)[rows]

    seg = phases.segments_table
    other = seg.take(seg["phase"] == "other")
    o_start = np.asarray(other["start_ns"], dtype=np.int64)
    o_end = np.asarray(other["end_ns"], dtype=np.int64)

    order = np.argsort(start, kind="stable")
    start, end, label = start[order], end[order], label[order]
    totals = _innermost_other_time(start, end, label, o_start, o_end)
    counts: dict[str, int] = {}
    for name, inside in zip(label.tolist(), (step_of(start, phases.steps_table) >= 0).tolist(),
                            strict=True):
        counts[name] = counts.get(name, 0) + int(inside)
    names = [n for n in sorted(counts) if counts[n] > 0 or totals.get(n, 0) > 0]
    names.sort(key=lambda n: -totals.get(n, 0))  # stable: ties stay by name
    return _table(names, [counts[n] for n in names], [totals.get(n, 0) for n in names])
