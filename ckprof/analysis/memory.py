"""Stage 3b: allocated memory over time, and its peak per step x phase x device.

Contract::

    peak_memory_by_phase(trace, phases) -> PhaseMemory

- ``timeline``: ``ts_ns``, ``device``, ``allocated_bytes`` (absolute when
  ``absolute[device]``), ``step``, ``phase``, ``region`` (phase at that instant; step -1
  and phase ``other`` outside every step). One row per ``[memory]`` event.
- ``peaks``: ``step``, ``phase``, ``device``, ``peak_bytes``, ``at_ts_ns``, ``at_op``: one
  row per step x phase x device where the phase has time in the step and the device's
  level is known there (an event inside the phase or before it).
- ``peaks_total``: ``phase``, ``device``, ``peak_bytes``, ``step``, ``at_ts_ns``,
  ``at_op``: the maximum over steps (the earliest step on ties).
- ``baseline_bytes`` / ``absolute``: per device; ``captured``; ``reason`` (why not
  captured, "" when captured); ``notes``.

# NOTE [ Memory levels ]
# ``Total Allocated`` in a ``[memory]`` event is the allocator's counter right after
# that (de)allocation. CUDA/ROCm counters are absolute (caching allocator). The CPU
# counter only counts blocks allocated while memory profiling is on, so it is relative:
#     level = baseline + (total_allocated - counter_start)
#     counter_start = total_allocated_first - bytes_first
# with ``baseline`` = bytes live when profiling started, recorded by ckprof capture in
# ``trace.ckprof["memory_baseline"][device]["bytes"]`` (0 and "relative to profiling
# start" without it). Legacy traces carry no ``Total Allocated``: the level is rebuilt as
# the running sum of ``Bytes`` (relative). A device counts as absolute when its
# metadata says ``counter_absolute`` (or, without metadata, when it is not the CPU and
# the counter is present).
#
# NOTE [ Peak per phase ]
# A phase in a step is one or more segments (backward is cut by recompute). The peak
# of a segment is the maximum level over the events inside [start, end) AND the level
# the segment was entered with (the last event before start): memory held when the
# phase begins is memory of that phase even if it allocates nothing. When the entering
# level is the peak, ``at_ts_ns`` is the time of the event that set it (before the
# phase). Ties go to the earliest event. ``at_op`` is the innermost cpu_op on the
# allocating thread enclosing the peak event ("" when none).

The frames are built on first use from ``*_table`` fields (:class:`~ckprof.trace.table.Table`):
the stage computes on numpy columns and imports no pandas (NOTE [ Tables, not
DataFrames, inside the stages ] in ckprof/trace/table.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ckprof.analysis.intervals import distinct, kind_mask, nearest_above, phase_index, positions
from ckprof.trace.capture_metadata import clean_ckprof_metadata
from ckprof.trace.markers import ZERO_GRAD
from ckprof.trace.model import Trace
from ckprof.trace.table import Table, factorize, frame_of, text_dtype

if TYPE_CHECKING:
    import pandas as pd

    from ckprof.analysis.phases import PhaseTable

__all__ = ["NO_MEMORY_REASON", "PhaseMemory", "innermost_op_rows", "peak_memory_by_phase"]

NO_MEMORY_REASON = "trace has no [memory] events (capture with profile_memory=True)"
#: The unseen-frees correction is noted only when it is at least 1/200 (0.5%) of the
#: highest level: smaller ones (a few bytes of a scalar's grad) change no figure a
#: report shows.
UNSEEN_NOTE_RATIO = 200

_PEAK_COLUMNS = {"step": "int64", "phase": "object", "device": "object", "peak_bytes": "int64",
                 "at_ts_ns": "int64", "at_op": "object"}
_PEAK_TOTAL_ORDER = ("phase", "device", "peak_bytes", "step", "at_ts_ns", "at_op")
_TIMELINE_COLUMNS = {"ts_ns": "int64", "device": "object", "allocated_bytes": "int64",
                     "step": "int64", "phase": "object", "region": "object"}


@dataclass(frozen=True)
class PhaseMemory:
    """Memory levels over time and peaks per phase. See the module docstring."""

    timeline_table: Table
    peaks_table: Table
    peaks_total_table: Table
    baseline_bytes: Mapping[str, int] = field(default_factory=dict)
    absolute: Mapping[str, bool] = field(default_factory=dict)
    captured: bool = False
    reason: str = ""
    notes: tuple[str, ...] = ()

    timeline = frame_of("timeline_table")
    peaks = frame_of("peaks_table")
    peaks_total = frame_of("peaks_total_table")


def _empty(cols: Mapping[str, str], order: tuple[str, ...] | None = None) -> Table:
    """No rows, the columns (in ``order``) with their dtypes."""
    names = order or tuple(cols)
    return Table({c: np.empty(0, dtype=np.int64 if cols[c] == "int64" else object)
                  for c in names}, dtypes={c: cols[c] for c in names})


def _capture_meta(trace: Trace) -> Mapping[str, object]:
    """The capture metadata with every known field of its documented type. The loader
    already cleans it (and notes what it dropped); a Trace built by hand goes through
    the same rules here, so no value of the wrong type reaches the arithmetic below."""
    return clean_ckprof_metadata(trace.ckprof)[0] or {}


def _device_meta(trace: Trace, key: str, device: str) -> Mapping[str, object] | None:
    per_device = _capture_meta(trace).get(key)
    found = per_device.get(device) if isinstance(per_device, Mapping) else None
    return found if isinstance(found, Mapping) else None


def _baseline_meta(trace: Trace, device: str) -> Mapping[str, object] | None:
    return _device_meta(trace, "memory_baseline", device)


def raw_levels(trace: Trace, device: str, ta: np.ndarray, b: np.ndarray
               ) -> tuple[np.ndarray, int, bool, int]:
    """One device's levels before the unseen-free correction (NOTE [ Memory levels ]),
    for events in time order: ``(levels, level when profiling started, counter_absolute,
    events whose counter was filled in)``; -1 for the last when no event has one (a
    legacy trace: levels are the running sum of 'Bytes'). The memory and composition
    stages both start from this."""
    meta = _baseline_meta(trace, device)
    base = int(meta.get("bytes", 0)) if meta is not None else 0  # type: ignore[call-overload]
    missing = ta < 0
    if missing.all():
        return base + np.cumsum(b), base, False, -1
    filled = int(missing.sum())
    if filled:
        ta = _fill_counter(ta, b, missing)
    if meta is not None and "counter_absolute" in meta:
        counter_absolute = bool(meta["counter_absolute"])
    else:
        counter_absolute = device != "cpu"
    counter_start = int(ta[0] - b[0])
    if counter_absolute:
        return ta.copy(), counter_start, True, filled
    return base + (ta - counter_start), base, False, filled


def _levels(trace: Trace, device: str, ta: np.ndarray, b: np.ndarray,
            notes: list[str], ts: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """(levels, baseline_bytes, absolute) for one device's events in time order."""
    meta = _baseline_meta(trace, device)
    base = int(meta.get("bytes", 0)) if meta is not None else 0  # type: ignore[call-overload]
    levels, _start, counter_absolute, filled = raw_levels(trace, device, ta, b)
    if filled > 0:
        notes.append(f"{device}: {filled} of {len(ta)} [memory] events lack a usable "
                     "'Total Allocated' (missing, NaN or not an integer): their levels are "
                     "carried from the nearest event with one, plus 'Bytes'")
    elif filled < 0:
        notes.append(f"{device}: events lack 'Total Allocated' (legacy trace): levels rebuilt "
                     "as the running sum of 'Bytes'"
                     + ("" if meta else ", relative to profiling start"))
        return levels, base, meta is not None
    if counter_absolute:
        return levels, base, True
    if meta is None:
        if trace.ckprof:
            notes.append(f"{device}: memory is relative to profiling start: ckprof captured "
                         "this trace but could not measure the memory live when the window "
                         "started (the capture warned; see Capture.errors)")
        else:
            notes.append(f"{device}: memory is relative to profiling start (no baseline "
                         "recorded; capture with ckprof to include memory live before "
                         "profiling)")
        return levels, base, False
    return _correct_unseen_frees(trace, device, ts, levels, notes), base, True


def _fill_counter(ta: np.ndarray, b: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Counter values for events without one: the nearest earlier event's counter plus
    the ``Bytes`` since (the first event's minus those up to it, for leading ones)."""
    idx = np.arange(len(ta))
    have = np.where(~missing, idx, -1)
    nearest = np.maximum.accumulate(have)
    nearest[nearest < 0] = int(np.flatnonzero(~missing)[0])
    cs = np.cumsum(b)
    return np.where(missing, ta[nearest] + cs - cs[nearest], ta)


def _correct_unseen_frees(trace: Trace, device: str, ts: np.ndarray, levels: np.ndarray,
                          notes: list[str]) -> np.ndarray:
    """Subtract blocks freed during the window that the CPU profiler never reported.

    # NOTE [ Unseen CPU frees ]
    # torch's CPU profiler does not emit a [memory] event for the free of a block that
    # was allocated before recording started. The typical one: last step's gradients,
    # freed by ``zero_grad(set_to_none=True)`` in the first profiled step. Capture
    # records ``memory_end[device].freed_unseen_bytes`` (storages live at the start and
    # gone at the end, found by a gc scan). Gradients are the only such blocks a
    # training step frees, so the correction applies from the end of the first
    # ``ckprof::zero_grad`` range; without that marker the levels are left as they are
    # and a note bounds the over-count.
    """
    # The profiler sometimes does report such a free (it matches a stale address from
    # an earlier session in the process), so the amount subtracted is what the levels
    # over-count at the end of the window, at most ``freed_unseen_bytes``.
    end_meta = _device_meta(trace, "memory_end", device) or {}
    unseen = int(end_meta.get("freed_unseen_bytes", 0) or 0)  # type: ignore[call-overload]
    if "bytes" in end_meta and len(levels):
        unseen = min(unseen, max(0, int(levels[-1]) - int(end_meta["bytes"])))
    if unseen <= 0:
        return levels
    ev = trace.event_table
    zg = ev.coded("name").isin([ZERO_GRAD])
    if not zg.any():
        notes.append(f"{device}: levels may over-count by up to {unseen:,} bytes freed during the "
                     "window but allocated before it (the CPU profiler does not report those frees)")
        return levels
    first_end = int((np.asarray(ev["ts_ns"], dtype=np.int64)[zg]
                     + np.asarray(ev["dur_ns"], dtype=np.int64)[zg]).min())
    if unseen * UNSEEN_NOTE_RATIO >= int(levels.max()):  # a few bytes: subtracted, not noted
        notes.append(f"{device}: {unseen:,} bytes allocated before profiling and freed by zero_grad "
                     "(unreported by the CPU profiler) subtracted from the end of the first zero_grad")
    return np.where(ts >= first_end, levels - unseen, levels)


def _innermost_ops(ev: Table, pid: np.ndarray, tid: np.ndarray,
                   t: np.ndarray) -> np.ndarray:
    """Name of the innermost cpu_op on thread (pid[i], tid[i]) enclosing instant t[i]
    ("" when none), an object array of str."""
    out = np.full(len(t), "", dtype=object)
    found = innermost_op_rows(ev, pid, tid, t)
    ok = np.flatnonzero(found >= 0)
    if len(ok):
        names = ev.coded("name")
        codes = names.codes[found[ok]]
        out[ok] = [str(names.categories[c]) if c >= 0 else "nan" for c in codes.tolist()]
    return out


#: threads asked about up to which :func:`_last_started` takes one pass over the
#: events per thread rather than sorting them by thread
_PASS_PER_THREAD = 8


def _last_started(ts: np.ndarray, candidates: np.ndarray, ev_pid: np.ndarray,
                  ev_tid: np.ndarray, pid: np.ndarray, tid: np.ndarray,
                  t: np.ndarray) -> np.ndarray:
    """Per query i, the last event row among ``candidates`` (a mask over the events,
    which are in time order) on thread (pid[i], tid[i]) starting at or before t[i]; -1
    when none. One searchsorted per thread asked about; the events of other threads are
    never grouped."""
    j = np.full(len(t), -1, dtype=np.int64)
    q_thread, n_threads = factorize(pid, tid)
    first = np.unique(q_thread, return_index=True)[1]
    th_pid, th_tid = pid[first], tid[first]          # thread k is (th_pid[k], th_tid[k])
    if n_threads <= _PASS_PER_THREAD:
        groups = [np.flatnonzero(candidates & (ev_pid == th_pid[k]) & (ev_tid == th_tid[k]))
                  for k in range(n_threads)]
    else:
        # each candidate's thread among those asked about: pids and tids ranked apart,
        # the pair of ranks packed (both < n_threads, so the product fits)
        rows = np.flatnonzero(candidates)
        up, ut = distinct(th_pid), distinct(th_tid)
        c_pid = positions(up, ev_pid[rows])
        c_tid = positions(ut, ev_tid[rows])
        asked = (c_pid >= 0) & (c_tid >= 0)
        th_key = positions(up, th_pid) * len(ut) + positions(ut, th_tid)
        key_order = np.argsort(th_key)
        at = positions(th_key[key_order], c_pid[asked] * len(ut) + c_tid[asked])
        rows = rows[asked][at >= 0]
        thread = key_order[at[at >= 0]]
        by_thread = np.argsort(thread, kind="stable")      # stable: time order kept
        bounds = np.searchsorted(thread[by_thread], np.arange(1, n_threads))
        groups = np.split(rows[by_thread], bounds)
    q_order = np.argsort(q_thread, kind="stable")
    q_bounds = np.searchsorted(q_thread[q_order], np.arange(n_threads + 1))
    for k, r in enumerate(groups):
        if len(r) == 0:
            continue
        qi = q_order[q_bounds[k]:q_bounds[k + 1]]
        pos = np.searchsorted(ts[r], t[qi], side="right") - 1
        j[qi] = np.where(pos >= 0, r[np.maximum(pos, 0)], -1)
    return j


#: parent links followed one at a time from the rows asked about (as deep as real
#: traces nest) before :func:`innermost_op_rows` switches to pointer jumping, whose cost
#: grows with the events rather than with the rows asked about
_CLIMB_ROUNDS = 64


def innermost_op_rows(ev: Table | pd.DataFrame, pid: np.ndarray, tid: np.ndarray,
                      t: np.ndarray) -> np.ndarray:
    """Row of the innermost cpu_op on thread (pid[i], tid[i]) enclosing instant t[i]
    (-1 when none): the op running at a peak, the op that allocated a block. ``ev`` is
    ``trace.event_table`` (or ``trace.events``).
    Vectorised: one searchsorted per thread asked about, then an ancestor walk (one
    parent at a time, pointer jumping in deep nests)."""
    t = np.asarray(t, dtype=np.int64)
    found = np.full(len(t), -1, dtype=np.int64)
    if len(t) == 0 or len(ev) == 0:
        return found
    ts = np.asarray(ev["ts_ns"], dtype=np.int64)
    end = ts + np.asarray(ev["dur_ns"], dtype=np.int64)
    parent = np.asarray(ev["parent"], dtype=np.int64)
    is_op = kind_mask(ev, "cpu_op")
    cpu_side = kind_mask(ev, "cpu_op", "user_annotation", "runtime", "other")
    j = _last_started(ts, cpu_side, np.asarray(ev["pid"], dtype=np.int64),
                      np.asarray(ev["tid"], dtype=np.int64), np.asarray(pid, dtype=np.int64),
                      np.asarray(tid, dtype=np.int64), t)
    # the last event starting at or before t is the innermost one containing t when it
    # contains t; otherwise one of its ancestors does (or none). Ancestors start no
    # later, so the first one on the way up that ends after t contains t, and so do
    # all above it: the answer is then the nearest cpu_op at or above it. A row ending
    # at or before t rules out every ancestor with the same end at once (a million
    # identical events nest a million deep: ``nearest_above`` in intervals.py).
    holder = np.full(len(t), -1, dtype=np.int64)      # innermost event containing t
    q = np.flatnonzero(j >= 0)
    row = j[q]
    for _ in range(_CLIMB_ROUNDS):
        if len(q) == 0:
            break
        inside = (ts[row] <= t[q]) & (t[q] < end[row])
        holder[q[inside]] = row[inside]
        q, row = q[~inside], parent[row[~inside]]
        q, row = q[row >= 0], row[row >= 0]
    if len(q):
        rows_n = np.arange(len(ts))
        run_top_mark = (parent < 0) | (end[np.maximum(parent, 0)] != end)
        run_top = np.where(run_top_mark, rows_n, nearest_above(parent, run_top_mark))
        while len(q):
            inside = (ts[row] <= t[q]) & (t[q] < end[row])
            holder[q[inside]] = row[inside]
            q, row = q[~inside], parent[run_top[row[~inside]]]
            q, row = q[row >= 0], row[row >= 0]
    q = np.flatnonzero(holder >= 0)                    # then the nearest cpu_op at or above
    row = holder[q]
    for _ in range(_CLIMB_ROUNDS):
        if len(q) == 0:
            break
        op = is_op[row]
        found[q[op]] = row[op]
        q, row = q[~op], parent[row[~op]]
        q, row = q[row >= 0], row[row >= 0]
    if len(q):
        found[q] = np.where(is_op[row], row, nearest_above(parent, is_op)[row])
    return found


def _first_of_groups(order: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """The rows in ``order`` (sorted so equal keys are adjacent) that begin a run of
    equal ``keys``: the first row of each group, in group order."""
    if len(order) == 0:
        return order
    new = np.zeros(len(order), dtype=bool)
    new[0] = True
    for key in keys:
        k = key[order]
        new[1:] |= k[1:] != k[:-1]
    return order[new]


def peak_memory_by_phase(trace: Trace, phases: PhaseTable) -> PhaseMemory:
    """Allocated bytes per device over time and the peak of every step x phase (pure:
    reads ``trace.memory_table``, ``trace.event_table`` and the phase tables, returns
    new Tables)."""
    mem = trace.memory_table
    if len(mem) == 0:
        return PhaseMemory(timeline_table=_empty(_TIMELINE_COLUMNS),
                           peaks_table=_empty(_PEAK_COLUMNS),
                           peaks_total_table=_empty(_PEAK_COLUMNS, _PEAK_TOTAL_ORDER),
                           captured=False, reason=NO_MEMORY_REASON,
                           notes=(NO_MEMORY_REASON,))
    notes: list[str] = []
    ts_all = np.asarray(mem["ts_ns"], dtype=np.int64)
    ta_all = np.asarray(mem["total_allocated_bytes"], dtype=np.int64)
    b_all = np.asarray(mem["bytes"], dtype=np.int64)
    # devices as text ("nan" where missing, as pandas' astype(str)), handled in name order
    dev = mem.coded("device")
    dev_names = np.array([str(c) for c in dev.categories.tolist()] + ["nan"], dtype=object)
    dev_code = np.where(dev.codes >= 0, dev.codes, len(dev_names) - 1)
    used = np.flatnonzero(np.bincount(dev_code, minlength=len(dev_names)))
    devices = sorted(used.tolist(), key=lambda k: dev_names[k])
    level_all = np.zeros(len(mem), dtype=np.int64)
    baseline: dict[str, int] = {}
    absolute: dict[str, bool] = {}
    seg = phases.segments_table
    s_start = np.asarray(seg["start_ns"], dtype=np.int64)
    s_end = np.asarray(seg["end_ns"], dtype=np.int64)
    s_step = np.asarray(seg["step"], dtype=np.int64)
    s_phase = np.asarray(seg["phase"], dtype=object)
    s_pcode = phase_index(s_phase)
    parts: list[dict[str, np.ndarray]] = []
    for rank, code in enumerate(devices):
        device = str(dev_names[code])
        rows = np.flatnonzero(dev_code == code)            # time order (memory is sorted)
        lv, baseline[device], absolute[device] = _levels(trace, device, ta_all[rows],
                                                         b_all[rows], notes, ts_all[rows])
        level_all[rows] = lv
        t = ts_all[rows]
        i0 = np.searchsorted(t, s_start, side="left")
        hi = np.searchsorted(t, s_end, side="left")
        lo = np.where(i0 > 0, i0 - 1, i0)                 # include the entering level
        ok = hi > lo
        if not ok.any():
            continue
        lo_v, hi_v = lo[ok], hi[ok]
        ext = np.append(lv, 0)
        peak = np.maximum.reduceat(ext, np.ravel(np.column_stack([lo_v, hi_v])))[::2]
        # first position reaching the peak in each [lo, hi)
        lens = hi_v - lo_v                                 # >= 1
        starts = np.cumsum(lens) - lens                    # each range's place in pos
        pos = np.arange(int(lens.sum())) + np.repeat(lo_v - starts, lens)
        hit = np.flatnonzero(lv[pos] == np.repeat(peak, lens))  # each range reaches its peak
        hit_range = np.searchsorted(starts, hit, side="right") - 1
        at_pos = pos[hit[np.r_[True, hit_range[1:] != hit_range[:-1]]]]
        parts.append({"step": s_step[ok], "phase": s_phase[ok], "pcode": s_pcode[ok],
                      "device": np.full(len(lo_v), rank, dtype=np.int64),
                      "peak_bytes": peak.astype(np.int64), "at_ts_ns": t[at_pos],
                      "mem_row": rows[at_pos]})
    step, phase, region = phases.segment_labels(phases.segment_rows(ts_all))
    text = text_dtype(len(mem))
    timeline = Table({"ts_ns": ts_all, "device": dev_names[dev_code],
                      "allocated_bytes": level_all, "step": step, "phase": phase,
                      "region": region},
                     dtypes={**_TIMELINE_COLUMNS, "device": text, "phase": text, "region": text})
    if not parts:
        return PhaseMemory(timeline_table=timeline, peaks_table=_empty(_PEAK_COLUMNS),
                           peaks_total_table=_empty(_PEAK_COLUMNS, _PEAK_TOTAL_ORDER),
                           baseline_bytes=baseline, absolute=absolute, captured=True,
                           reason="", notes=tuple(notes))
    seg_peaks = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    # peaks: per step x phase x device the highest segment peak, the earliest event on
    # ties (then the segment listed first); rows by step, phase (PHASES order), device
    p_step, p_code, p_dev = seg_peaks["step"], seg_peaks["pcode"], seg_peaks["device"]
    order = np.lexsort((seg_peaks["at_ts_ns"], -seg_peaks["peak_bytes"]))
    order = order[np.lexsort((p_dev[order], p_code[order], p_step[order]))]
    keep = _first_of_groups(order, p_step, p_code, p_dev)
    mrow = seg_peaks["mem_row"][keep]
    at_op = _innermost_ops(trace.event_table, np.asarray(mem["pid"], dtype=np.int64)[mrow],
                           np.asarray(mem["tid"], dtype=np.int64)[mrow], ts_all[mrow])
    peaks = Table({"step": p_step[keep], "phase": seg_peaks["phase"][keep],
                   "device": dev_names[np.asarray(devices, dtype=np.int64)[p_dev[keep]]],
                   "peak_bytes": seg_peaks["peak_bytes"][keep],
                   "at_ts_ns": seg_peaks["at_ts_ns"][keep], "at_op": at_op},
                  dtypes=_PEAK_COLUMNS)
    # peaks_total: per phase x device the highest step, the earliest step on ties
    k_step, k_code, k_dev = p_step[keep], p_code[keep], p_dev[keep]
    order = np.lexsort((k_step, -peaks["peak_bytes"]))
    order = order[np.lexsort((k_dev[order], k_code[order]))]
    peaks_total = peaks.take(_first_of_groups(order, k_code, k_dev)).select(*_PEAK_TOTAL_ORDER)
    return PhaseMemory(timeline_table=timeline, peaks_table=peaks, peaks_total_table=peaks_total,
                       baseline_bytes=baseline, absolute=absolute, captured=True,
                       reason="", notes=tuple(notes))
