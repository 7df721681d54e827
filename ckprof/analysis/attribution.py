"""Stage 3: wall-clock and GPU time per step, phase and checkpointed region.

Contract::

    attribute_time(trace, phases) -> TimeAttribution

- ``by_step``: ``step``, ``phase``, ``wall_ns`` (int64), ``gpu_ns`` (float, NaN when the
  trace has no GPU events): every step of ``phases.steps`` x every phase of ``PHASES``.
  Per step, ``wall_ns`` sums exactly to the step's duration (the segments tile it).
- ``totals``: ``phase``, ``wall_ns``, ``gpu_ns``: sums over steps, in ``PHASES`` order.
- ``regions``: ``region``, ``count`` (recompute occurrences), ``wall_ns`` (recompute wall
  time, exclusive: nested regions are not counted twice), ``gpu_ns`` (GPU time of what
  was launched during its recompute), ``forward_wall_ns`` (float: duration of the
  region's FIRST forward runs -- ``ckprof::checkpoint::<region>`` markers, else the
  ``checkpoint()`` Python frames of a with_stack trace; re-runs inside backward are
  recompute, not forward -- NaN when unknown), all summed over the steps in ``phases``.
  Unknown is NaN everywhere (``None`` in JSON, "—" in text).
- ``gpu_events``: one row per GPU event (kernel, memcpy, memset) attributed to a step:
  ``event`` (row in ``trace.events``), ``step``, ``phase``, ``region``, ``dur_ns``,
  ``launched_by`` (row of the launching runtime event, -1 when unmatched).
- ``has_gpu``; ``recompute_overhead_pct`` = recompute / (steps - recompute) x 100 over all
  steps (NaN without steps); ``notes``; ``self_check()``.

GPU time of a phase is the sum of its GPU events' durations: kernels that run at the
same time on different streams both count, so it can exceed the phase's wall time.

The frames are built on first use from ``*_table`` fields (:class:`~ckprof.trace.table.Table`):
the stage computes on numpy columns and imports no pandas (NOTE [ Tables, not
DataFrames, inside the stages ] in ckprof/trace/table.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ckprof.analysis.intervals import distinct, kind_mask, phase_index, positions
from ckprof.trace.markers import PHASES
from ckprof.trace.model import GPU_KINDS, Trace
from ckprof.trace.table import Table, frame_of, text_dtype

if TYPE_CHECKING:
    from ckprof.analysis.phases import PhaseTable

__all__ = ["TimeAttribution", "attribute_time"]

_N_PHASES = len(PHASES)
_RECOMPUTE = PHASES.index("recompute")


@dataclass(frozen=True)
class TimeAttribution:
    """Where the time of each step went. See the module docstring."""

    by_step_table: Table
    totals_table: Table
    regions_table: Table
    gpu_events_table: Table
    has_gpu: bool
    recompute_overhead_pct: float
    notes: tuple[str, ...] = ()
    #: the steps attributed (``step``, ``start_ns``, ``end_ns``), for self_check
    steps_table: Table | None = None

    by_step = frame_of("by_step_table")
    totals = frame_of("totals_table")
    regions = frame_of("regions_table")
    gpu_events = frame_of("gpu_events_table")
    steps = frame_of("steps_table")

    def self_check(self) -> None:
        """Assert the invariants: phase wall times add up to each step, every GPU
        event is attributed exactly once, totals and regions agree with by_step."""
        bs = self.by_step_table
        step = np.asarray(bs["step"], dtype=np.int64)
        pidx = phase_index(np.asarray(bs["phase"], dtype=object))
        wall = np.asarray(bs["wall_ns"], dtype=np.int64)
        gpu = np.asarray(bs["gpu_ns"], dtype=np.float64)
        assert (pidx >= 0).all(), "unknown phase in by_step"
        order = np.lexsort((pidx, step))
        assert not ((step[order][1:] == step[order][:-1])
                    & (pidx[order][1:] == pidx[order][:-1])).any(), "step x phase listed twice"
        assert (wall >= 0).all(), "negative wall time"
        uniq, inv = np.unique(step, return_inverse=True)
        if self.steps_table is not None:
            st = self.steps_table
            want = (np.asarray(st["end_ns"], dtype=np.int64)
                    - np.asarray(st["start_ns"], dtype=np.int64))
            per_step = np.zeros(len(uniq), dtype=np.int64)
            np.add.at(per_step, inv, wall)
            at = positions(uniq, np.asarray(st["step"], dtype=np.int64))
            got = np.where(at >= 0, per_step[np.maximum(at, 0)].astype(np.float64), np.nan) \
                if len(uniq) else np.full(len(at), np.nan)
            assert np.array_equal(want, got), f"phase wall times {got} != step durations {want}"
        g = self.gpu_events_table
        g_event = np.asarray(g["event"], dtype=np.int64)
        assert len(distinct(g_event)) == len(g_event), "a GPU event is attributed twice"
        if self.has_gpu:
            g_dur = np.asarray(g["dur_ns"], dtype=np.int64)
            g_at = positions(uniq, np.asarray(g["step"], dtype=np.int64))
            g_pidx = phase_index(np.asarray(g["phase"], dtype=object))
            ok = (g_at >= 0) & (g_pidx >= 0)
            per = np.zeros(len(uniq) * _N_PHASES, dtype=np.int64)
            np.add.at(per, g_at[ok] * _N_PHASES + g_pidx[ok], g_dur[ok])
            want_gpu = per[inv * _N_PHASES + pidx].astype(np.float64)
            assert np.allclose(gpu, want_gpu, rtol=0, atol=0.5), \
                "by_step gpu_ns != sum of attributed GPU events"
            assert gpu.sum() == float(g_dur.sum()), "GPU time lost or double counted"
        else:
            assert np.isnan(gpu).all(), "gpu_ns must be NaN without GPU events"
        tot = np.zeros(_N_PHASES, dtype=np.int64)
        np.add.at(tot, pidx, wall)
        tt = self.totals_table
        t_pidx = phase_index(np.asarray(tt["phase"], dtype=object))
        t_wall = np.zeros(_N_PHASES, dtype=np.int64)
        t_wall[t_pidx[t_pidx >= 0]] = np.asarray(tt["wall_ns"], dtype=np.int64)[t_pidx >= 0]
        assert np.array_equal(np.sort(t_pidx), np.arange(_N_PHASES)) \
            and np.array_equal(tot, t_wall), "totals != sum of by_step"
        rc = int(tot[_RECOMPUTE])
        assert int(np.asarray(self.regions_table["wall_ns"], dtype=np.int64).sum()) == rc, \
            "regions do not add up to recompute"


def _gpu_attribution(trace: Trace, phases: PhaseTable,
                     notes: list[str]) -> tuple[Table, np.ndarray]:
    """The ``gpu_events`` table, and the segment row each of its events was placed in."""
    # NOTE [ GPU attribution ]
    # A GPU event runs after its launch, often in the next phase or step (on a busy GPU
    # the queue lags the CPU by more than a step), so its own timestamp says nothing
    # about who asked for it. It takes the step and phase of the CPU op that launched
    # it: the runtime event (cudaLaunchKernel, cuLaunchKernel, hipLaunchKernel,
    # cudaMemcpyAsync, hipMemsetAsync ...) with the same ``correlation`` id, looked up
    # at the runtime event's start (the runtime call sits inside the launching cpu_op).
    # Every GPU kind (kernel, memcpy, memset) links by correlation id, never by flow
    # events (ROCm memsets often have none). Correlation ids are issued in launch
    # order, which places the GPU events whose launch is not in the trace:
    # - id below every runtime event's id: launched before profiling began (the
    #   warmup step's kernels still queued when the window opened). They belong to no
    #   step and are not counted (the notes say how many and how many ms);
    # - id between launched ones: the launch happened between its neighbours by id; it
    #   takes the step and phase of the launch just before it by id (the notes count
    #   those whose next neighbour lies in another step/phase/region);
    # - id above every launch, or no correlation id at all: attributed by their own
    #   start time (noted) -- nothing better is known.
    # GPU events launched outside every step are not counted (noted).
    ev = trace.event_table
    g = np.flatnonzero(kind_mask(ev, *GPU_KINDS))
    corr = np.asarray(ev["correlation"], dtype=np.int64)
    ts = np.asarray(ev["ts_ns"], dtype=np.int64)
    dur = np.asarray(ev["dur_ns"], dtype=np.int64)
    rt = np.flatnonzero(kind_mask(ev, "runtime") & (corr >= 0))
    rt = rt[np.argsort(corr[rt], kind="stable")]  # stable: earliest first per id
    rc = corr[rt]
    dup = int((rc[1:] == rc[:-1]).sum()) if len(rc) else 0
    if dup:
        notes.append(f"{dup} runtime event(s) share a correlation id with another: the "
                     "earliest is taken as the launch")
        first = np.r_[True, rc[1:] != rc[:-1]]
        rt, rc = rt[first], rc[first]
    gc = corr[g]
    pos = np.searchsorted(rc, gc, side="left")
    has_corr = gc >= 0
    hit = has_corr & (pos < len(rc))
    hit[hit] = rc[pos[hit]] == gc[hit]
    safe = np.minimum(pos, max(len(rt) - 1, 0))
    launched_by = np.where(hit, rt[safe] if len(rt) else -1, -1)
    # ids are compared within one namespace (the nsys reader puts process k's ids
    # at k << 32; Kineto ids are all in namespace 0)
    space = gc >> 32
    prev_in = (pos > 0) & (rc[np.maximum(pos - 1, 0)] >> 32 == space) if len(rc) else \
        np.zeros(len(g), dtype=bool)
    next_in = (pos < len(rc)) & (rc[safe] >> 32 == space) if len(rc) else \
        np.zeros(len(g), dtype=bool)
    before = has_corr & ~hit & next_in & ~prev_in               # below the first launch id
    between = has_corr & ~hit & next_in & prev_in               # between two launch ids
    own = ~hit & ~before & ~between                             # no id, or above the last
    at = ts[g]                                  # a new array (fancy indexing)
    at[hit] = ts[launched_by[hit]]
    prev_rt = rt[np.maximum(pos - 1, 0)] if len(rt) else np.zeros(len(g), dtype=np.int64)
    at[between] = ts[prev_rt[between]]
    rows = phases.segment_rows(at)
    step, phase, region = phases.segment_labels(rows)
    step[before] = -1
    if between.any():
        nxt = rt[np.minimum(pos[between], len(rt) - 1)]
        s2, p2, r2 = phases.segment_labels(phases.segment_rows(ts[nxt]))
        unsure = int(((s2 != step[between]) | (p2 != phase[between])
                      | (r2 != region[between])).sum())
        notes.append(f"{int(between.sum())} GPU event(s) whose launch is not in the trace "
                     "took the step and phase of the launch before them by correlation id "
                     "(ids are issued in launch order)"
                     + (f"; for {unsure} of them the launch after them lies in another "
                        "step or phase" if unsure else ""))
    if before.any():
        notes.append(f"{int(before.sum())} GPU event(s) ({dur[g][before].sum() / 1e6:,.3f} ms "
                     "of GPU time) were launched before profiling began (correlation id below "
                     "every launch in the trace): they belong to no step and are not counted")
    inside = step >= 0
    no_corr = int((own & ~has_corr & inside).sum())
    above = int((own & has_corr & inside).sum())
    if no_corr:
        notes.append(f"{no_corr} GPU event(s) carry no correlation id: attributed by their "
                     "own start time")
    if above:
        notes.append(f"{above} GPU event(s) have no launching runtime event and a correlation "
                     "id above every launch in the trace: attributed by their own start time")
    outside = int((~inside & ~before).sum())
    if outside and len(g):
        notes.append(f"{outside} of {len(g)} GPU event(s) were launched outside the "
                     "analysed steps: not counted")
    how = np.where(hit, 0, np.where(between, 1, 2))
    n = int(inside.sum())
    g_in = g[inside]
    table = Table({
        "event": g_in.astype(np.int64, copy=False),
        "step": step[inside],
        "phase": phase[inside],
        "region": region[inside],
        "dur_ns": dur[g_in],
        "launched_by": launched_by[inside].astype(np.int64, copy=False),
        "placed_by": np.array(["runtime", "neighbours", "own_start"], dtype=object)[how[inside]],
    }, dtypes={"event": "int64", "step": "int64", "phase": text_dtype(n),
               "region": text_dtype(n), "dur_ns": "int64", "launched_by": "int64",
               "placed_by": text_dtype(n)})
    return table, rows[inside]


def _forward_wall(trace: Trace, phases: PhaseTable) -> dict[str, int]:
    """Summed duration (ns) of each region's FIRST runs in the analysed steps (NOTE
    [ Forward runs ] in ckprof.forward_runs): checkpoint markers, else checkpoint()
    frames. Regions in sorted order."""
    runs = phases.forward_runs_table
    if runs is None:
        from ckprof.analysis.forward_runs import find_forward_runs

        runs = find_forward_runs(trace, phases.steps_table)
    keep = np.asarray(runs["first_run"], dtype=bool) & np.isin(
        np.asarray(runs["step"], dtype=np.int64),
        np.asarray(phases.steps_table["step"], dtype=np.int64))
    if not keep.any():
        return {}
    wall = (np.asarray(runs["end_ns"], dtype=np.int64)[keep]
            - np.asarray(runs["start_ns"], dtype=np.int64)[keep])
    return _sum_by(np.asarray(runs["region"], dtype=object)[keep], wall)


def _sum_by(keys: np.ndarray, values_ns: np.ndarray) -> dict[str, int]:
    """Sum of int64 ``values_ns`` per distinct key, keys in sorted order."""
    names, inv = np.unique(keys, return_inverse=True)
    total = np.zeros(len(names), dtype=np.int64)
    np.add.at(total, inv.reshape(-1), values_ns)
    return dict(zip(names.tolist(), total.tolist(), strict=True))


def attribute_time(trace: Trace, phases: PhaseTable) -> TimeAttribution:
    """Wall and GPU time per step x phase and per recomputed region (pure: reads
    ``trace.event_table`` and the phase tables, returns new Tables)."""
    notes: list[str] = []
    seg = phases.segments_table
    st = phases.steps_table
    step_ids = np.asarray(st["step"], dtype=np.int64)
    step_start = np.asarray(st["start_ns"], dtype=np.int64)
    step_end = np.asarray(st["end_ns"], dtype=np.int64)
    steps = Table({"step": step_ids, "start_ns": step_start, "end_ns": step_end},
                  dtypes={"step": "int64", "start_ns": "int64", "end_ns": "int64"})
    has_gpu = bool(trace.has_gpu)
    gpu_events, gpu_rows = _gpu_attribution(trace, phases, notes)

    # per segment: wall time and the GPU time launched in it
    seg_step = np.asarray(seg["step"], dtype=np.int64)
    seg_phase = phase_index(np.asarray(seg["phase"], dtype=object))
    seg_region = np.asarray(seg["region"], dtype=object)
    seg_wall = np.asarray(seg["end_ns"], dtype=np.int64) - np.asarray(seg["start_ns"],
                                                                       dtype=np.int64)
    seg_gpu = np.zeros(len(seg), dtype=np.int64)
    np.add.at(seg_gpu, gpu_rows, np.asarray(gpu_events["dur_ns"], dtype=np.int64))

    # by_step: every step (as listed) x every phase; sums are per step number
    uniq = distinct(step_ids)
    at = positions(uniq, seg_step)
    ok = (at >= 0) & (seg_phase >= 0)
    key = at[ok] * _N_PHASES + seg_phase[ok]
    wall_by = np.zeros(len(uniq) * _N_PHASES, dtype=np.int64)
    np.add.at(wall_by, key, seg_wall[ok])
    gpu_by = np.zeros(len(uniq) * _N_PHASES, dtype=np.int64)
    np.add.at(gpu_by, key, seg_gpu[ok])
    grid = (np.searchsorted(uniq, step_ids)[:, None] * _N_PHASES
            + np.arange(_N_PHASES)).reshape(-1)
    wall_grid = wall_by[grid]
    gpu_grid = (gpu_by[grid].astype(np.float64) if has_gpu
                else np.full(len(grid), np.nan))
    by_step = Table({
        "step": np.repeat(step_ids, _N_PHASES),
        "phase": np.tile(np.array(PHASES, dtype=object), len(step_ids)),
        "wall_ns": wall_grid,
        "gpu_ns": gpu_grid,
    }, dtypes={"step": "int64", "phase": "object", "wall_ns": "int64", "gpu_ns": "float64"})
    wall_tot = wall_grid.reshape(-1, _N_PHASES).sum(axis=0)
    gpu_tot = (np.array([np.ascontiguousarray(col).sum()
                         for col in gpu_grid.reshape(-1, _N_PHASES).T], dtype=np.float64)
               if has_gpu and len(step_ids) else np.full(_N_PHASES, np.nan))
    totals = Table({"phase": np.array(PHASES, dtype=object), "wall_ns": wall_tot,
                    "gpu_ns": gpu_tot},
                   dtypes={"phase": "str", "wall_ns": "int64", "gpu_ns": "float64"})

    # regions
    rec_region = np.asarray(phases.recompute_table["region"], dtype=object)
    count_names, count_n = np.unique(rec_region, return_counts=True)
    count = dict(zip(count_names.tolist(), count_n.tolist(), strict=True))
    is_rc = seg_phase == _RECOMPUTE
    rwall = _sum_by(seg_region[is_rc], seg_wall[is_rc])
    rgpu = _sum_by(seg_region[is_rc], seg_gpu[is_rc])
    fwd = _forward_wall(trace, phases)
    names = list(dict.fromkeys([*count, *rwall]))
    # regions that ran forward but were not recomputed in these steps are listed too
    # (count 0), when recompute names and run names are one scheme
    unnamed = [r for r in names if r not in fwd]
    if len(fwd) and (not unnamed or phases.recompute_found_by.split("+")[0] in ("markers", "none")):
        names += [r for r in fwd if r not in names]
    if len(fwd) and unnamed:
        notes.append(f"{len(unnamed)} recompute region(s) have no forward run in the trace "
                     f"under that name ({', '.join(unnamed[:3])}"
                     f"{', ...' if len(unnamed) > 3 else ''}): their forward time is unknown")
    regions = Table({
        "region": np.array(names, dtype=object),
        "count": np.array([count.get(r, 0) for r in names], dtype=np.int64),
        "wall_ns": np.array([rwall.get(r, 0) for r in names], dtype=np.int64),
        "gpu_ns": (np.array([rgpu.get(r, 0) for r in names], dtype=np.float64) if has_gpu
                   else np.full(len(names), np.nan)),
        "forward_wall_ns": np.array([fwd.get(r, np.nan) for r in names], dtype=np.float64),
    }, dtypes={"region": "object", "count": "int64", "wall_ns": "int64", "gpu_ns": "float64",
               "forward_wall_ns": "float64"})

    step_total = int((step_end - step_start).sum())
    rc_total = int(wall_tot[_RECOMPUTE])
    denom = step_total - rc_total
    pct = rc_total / denom * 100.0 if len(step_ids) and denom > 0 else float("nan")
    return TimeAttribution(by_step_table=by_step, totals_table=totals, regions_table=regions,
                           gpu_events_table=gpu_events, has_gpu=has_gpu,
                           recompute_overhead_pct=float(pct), notes=tuple(notes),
                           steps_table=steps)
