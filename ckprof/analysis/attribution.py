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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ckprof.analysis.phases import PhaseTable
from ckprof.trace.markers import PHASES
from ckprof.trace.model import GPU_KINDS, Trace
from ckprof.trace.table import Table, frame_of

__all__ = ["TimeAttribution", "attribute_time"]


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
        bs = self.by_step
        assert set(bs["phase"]) <= set(PHASES), "unknown phase in by_step"
        assert not bs.duplicated(["step", "phase"]).any(), "step x phase listed twice"
        assert (bs["wall_ns"] >= 0).all(), "negative wall time"
        if self.steps is not None:
            want = (self.steps["end_ns"] - self.steps["start_ns"]).to_numpy()
            got = bs.groupby("step")["wall_ns"].sum().reindex(self.steps["step"]).to_numpy()
            assert np.array_equal(want, got), f"phase wall times {got} != step durations {want}"
        g = self.gpu_events
        assert not g["event"].duplicated().any(), "a GPU event is attributed twice"
        if self.has_gpu:
            per = g.groupby(["step", "phase"])["dur_ns"].sum()
            got = bs.set_index(["step", "phase"])["gpu_ns"]
            want = per.reindex(got.index, fill_value=0).astype(float)
            assert np.allclose(got.to_numpy(), want.to_numpy(), rtol=0, atol=0.5), \
                "by_step gpu_ns != sum of attributed GPU events"
            assert got.sum() == float(g["dur_ns"].sum()), "GPU time lost or double counted"
        else:
            assert bs["gpu_ns"].isna().all(), "gpu_ns must be NaN without GPU events"
        tot = bs.groupby("phase")["wall_ns"].sum()
        assert np.array_equal(tot.reindex(list(PHASES)).to_numpy(),
                              self.totals.set_index("phase")["wall_ns"].reindex(
                                  list(PHASES)).to_numpy()), "totals != sum of by_step"
        rc = int(tot.get("recompute", 0))
        assert int(self.regions["wall_ns"].sum()) == rc, "regions do not add up to recompute"


def _gpu_attribution(trace: Trace, phases: PhaseTable, notes: list[str]) -> pd.DataFrame:
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
    ev = trace.events
    g = np.flatnonzero(ev["kind"].isin(GPU_KINDS).to_numpy())
    corr = ev["correlation"].to_numpy(dtype=np.int64)
    ts = ev["ts_ns"].to_numpy(dtype=np.int64)
    dur = ev["dur_ns"].to_numpy(dtype=np.int64)
    rt = np.flatnonzero((ev["kind"] == "runtime").to_numpy() & (corr >= 0))
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
    at = ts[g].copy()
    at[hit] = ts[launched_by[hit]]
    prev_rt = rt[np.maximum(pos - 1, 0)] if len(rt) else np.zeros(len(g), dtype=np.int64)
    at[between] = ts[prev_rt[between]]
    step, phase, region = phases.lookup(at)
    step[before] = -1
    if between.any():
        nxt = rt[np.minimum(pos[between], len(rt) - 1)]
        s2, p2, r2 = phases.lookup(ts[nxt])
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
    how = np.where(hit, "runtime", np.where(between, "neighbours", "own_start"))
    return pd.DataFrame({
        "event": g[inside].astype(np.int64),
        "step": step[inside].astype(np.int64),
        "phase": phase[inside].astype(object),
        "region": region[inside].astype(object),
        "dur_ns": dur[g][inside],
        "launched_by": launched_by[inside].astype(np.int64),
        "placed_by": how[inside].astype(object),
    })


def _forward_wall(trace: Trace, phases: PhaseTable) -> pd.Series:
    """Summed duration of each region's FIRST runs in the analysed steps (NOTE [ Forward
    runs ] in ckprof.forward_runs): checkpoint markers, else checkpoint() frames."""
    if phases.forward_runs_table is None:
        from ckprof.analysis.forward_runs import find_forward_runs

        runs = find_forward_runs(trace, phases.steps).to_frame()
    else:
        runs = phases.forward_runs
    keep = runs["first_run"].to_numpy(dtype=bool) & runs["step"].isin(
        phases.steps["step"]).to_numpy()
    first = runs[keep]
    if first.empty:
        return pd.Series(dtype="int64")
    return (first["end_ns"] - first["start_ns"]).groupby(first["region"].to_numpy()).sum()


def attribute_time(trace: Trace, phases: PhaseTable) -> TimeAttribution:
    """Wall and GPU time per step x phase and per recomputed region (pure)."""
    notes: list[str] = []
    seg = phases.segments
    steps = phases.steps[["step", "start_ns", "end_ns"]].reset_index(drop=True)
    wall = (seg.assign(wall_ns=seg["end_ns"] - seg["start_ns"])
            .groupby(["step", "phase"])["wall_ns"].sum())
    grid = pd.MultiIndex.from_product([steps["step"].to_numpy(dtype=np.int64), list(PHASES)],
                                      names=["step", "phase"])
    has_gpu = bool(trace.has_gpu)
    gpu_events = _gpu_attribution(trace, phases, notes)
    gsum = gpu_events.groupby(["step", "phase"])["dur_ns"].sum()
    by_step = pd.DataFrame({
        "wall_ns": wall.reindex(grid, fill_value=0).astype(np.int64),
        "gpu_ns": (gsum.reindex(grid, fill_value=0).astype(float) if has_gpu
                   else pd.Series(np.nan, index=grid)),
    }).reset_index()
    by_step = by_step.astype({"step": "int64", "phase": object})
    totals = (by_step.groupby("phase", sort=False)
              .agg(wall_ns=("wall_ns", "sum"),
                   gpu_ns=("gpu_ns", lambda x: x.sum(min_count=1)))
              .reindex(list(PHASES)).reset_index())
    totals["wall_ns"] = totals["wall_ns"].fillna(0).astype(np.int64)

    # regions
    rec = phases.recompute
    count = rec.groupby("region").size()
    rseg = seg[seg["phase"] == "recompute"]
    rwall = (rseg["end_ns"] - rseg["start_ns"]).groupby(rseg["region"]).sum()
    rg = gpu_events[gpu_events["phase"] == "recompute"]
    rgpu = rg.groupby("region")["dur_ns"].sum()
    fwd = _forward_wall(trace, phases)
    names = list(dict.fromkeys([*count.index, *rwall.index]))
    # regions that ran forward but were not recomputed in these steps are listed too
    # (count 0), when recompute names and run names are one scheme
    unnamed = [r for r in names if r not in fwd.index]
    if len(fwd) and (not unnamed or phases.recompute_found_by.split("+")[0] in ("markers", "none")):
        names += [r for r in fwd.index if r not in names]
    if len(fwd) and unnamed:
        notes.append(f"{len(unnamed)} recompute region(s) have no forward run in the trace "
                     f"under that name ({', '.join(unnamed[:3])}"
                     f"{', ...' if len(unnamed) > 3 else ''}): their forward time is unknown")
    regions = pd.DataFrame({
        "region": pd.Series(names, dtype=object),
        "count": count.reindex(names, fill_value=0).to_numpy(dtype=np.int64),
        "wall_ns": rwall.reindex(names, fill_value=0).to_numpy(dtype=np.int64),
        "gpu_ns": (rgpu.reindex(names, fill_value=0).to_numpy(dtype=float) if has_gpu
                   else np.full(len(names), np.nan)),
        "forward_wall_ns": fwd.reindex(names).to_numpy(dtype=np.float64),
    })

    step_total = int((steps["end_ns"] - steps["start_ns"]).sum())
    rc_total = int(totals.loc[totals["phase"] == "recompute", "wall_ns"].sum())
    denom = step_total - rc_total
    pct = rc_total / denom * 100.0 if len(steps) and denom > 0 else float("nan")
    return TimeAttribution(by_step_table=Table.from_frame(by_step),
                           totals_table=Table.from_frame(totals),
                           regions_table=Table.from_frame(regions),
                           gpu_events_table=Table.from_frame(gpu_events), has_gpu=has_gpu,
                           recompute_overhead_pct=float(pct), notes=tuple(notes),
                           steps_table=Table.from_frame(steps))
