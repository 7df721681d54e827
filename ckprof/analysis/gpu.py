"""Stage 4c: how busy the GPU is in each phase (busy, idle, overlap, kernel count).

Contract::

    gpu_activity(trace, phases, time) -> GpuActivity

- ``by_step``: one row per step x phase of ``time.by_step``: ``step``, ``phase``,
  ``wall_ns`` (the phase's wall time in the step), ``gpu_sum_ns`` (summed durations of
  the GPU events the phase launched: ``TimeAttribution``'s GPU time), ``gpu_busy_ns``
  (length of the UNION of those events' intervals), ``overlap_ns`` (= sum - busy: time
  the phase's own GPU events ran concurrently, e.g. on several streams), ``kernels``
  (events of kind ``kernel``), ``gpu_events`` (kernels, memcpys and memsets),
  ``busy_ns`` (time within the phase's wall time when ANY GPU event ran, whoever
  launched it), ``idle_ns`` (= wall - busy_ns), ``utilization_pct`` (busy_ns / wall x
  100, NaN for a phase without wall time).
- ``totals``: the same per phase, summed over steps (utilisation recomputed), in
  ``PHASES`` order.
- ``regions``: recompute per region, summed over steps: ``region``, ``wall_ns``,
  ``gpu_sum_ns``, ``gpu_busy_ns``, ``kernels``, ``busy_ns``, ``idle_ns``,
  ``utilization_pct``.
- ``has_gpu``; ``notes``.

# NOTE [ GPU busy time ]
# A GPU event belongs to the phase whose CPU call launched it (NOTE [ GPU attribution ]
# in attribution.py). ``gpu_busy_ns`` is the length of the union of the half-open
# intervals ``[ts, ts + dur)`` of a phase's events in a step, over all streams and
# devices of the trace (a rank's trace normally holds one device), in exact integer
# nanoseconds (HTA rounds each start and end to whole microseconds first). ``busy_ns`` /
# ``idle_ns`` look at the phase's own wall-clock segments instead: the part of them
# covered by the union of ALL GPU events of the trace, launched in this phase or not.
# ``utilization_pct`` of the recompute phase says whether recompute is GPU-bound (near
# 100%) or bound by the CPU launching it (low).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ckprof.analysis.attribution import TimeAttribution
from ckprof.analysis.intervals import union_length
from ckprof.analysis.phases import PhaseTable
from ckprof.trace.markers import PHASES
from ckprof.trace.model import GPU_KINDS, Trace

__all__ = ["GpuActivity", "gpu_activity", "merged_intervals"]

_SUM_COLUMNS = ("wall_ns", "gpu_sum_ns", "gpu_busy_ns", "overlap_ns", "kernels", "gpu_events",
                "busy_ns", "idle_ns")


@dataclass(frozen=True)
class GpuActivity:
    """GPU busy / idle / overlap per step x phase. See the module docstring."""

    by_step: pd.DataFrame
    totals: pd.DataFrame
    regions: pd.DataFrame
    has_gpu: bool
    notes: tuple[str, ...] = ()


def merged_intervals(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The union of half-open intervals as sorted, disjoint ``(starts, ends)``."""
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    keep = end > start
    start, end = start[keep], end[keep]
    if len(start) == 0:
        return start, end
    order = np.lexsort((end, start))
    s, e = start[order], end[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(len(s), dtype=bool)
    new[1:] = s[1:] > reach[:-1]          # touching intervals merge
    idx = np.flatnonzero(new)
    ends = reach[np.append(idx[1:] - 1, len(s) - 1)]
    return s[idx], ends


def _covered(u_start: np.ndarray, u_end: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Length of ``[a, b) ∩ union`` for each query (union sorted and disjoint)."""
    if len(u_start) == 0:
        return np.zeros(len(a), dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(u_end - u_start)])

    def before(t: np.ndarray) -> np.ndarray:  # measure of union ∩ (-inf, t)
        i = np.searchsorted(u_start, t, side="right")   # intervals starting at or before t
        full = cum[np.maximum(i - 1, 0)]
        last = np.where(i > 0, np.clip(t - u_start[np.maximum(i - 1, 0)], 0,
                                       u_end[np.maximum(i - 1, 0)] - u_start[np.maximum(i - 1, 0)]), 0)
        return np.where(i > 0, full + last, 0)

    return before(np.asarray(b, dtype=np.int64)) - before(np.asarray(a, dtype=np.int64))


def gpu_activity(trace: Trace, phases: PhaseTable, time: TimeAttribution) -> GpuActivity:
    """GPU busy, idle, overlap and kernel counts per step x phase (pure).
    See NOTE [ GPU busy time ]."""
    ev = trace.events
    g = time.gpu_events
    rows = g["event"].to_numpy(dtype=np.int64)
    ts = ev["ts_ns"].to_numpy(dtype=np.int64)
    end = ts + ev["dur_ns"].to_numpy(dtype=np.int64)
    is_kernel = (ev["kind"] == "kernel").to_numpy()
    all_gpu = np.flatnonzero(ev["kind"].isin(GPU_KINDS).to_numpy())
    u_start, u_end = merged_intervals(ts[all_gpu], end[all_gpu])

    seg = phases.segments
    s0 = seg["start_ns"].to_numpy(dtype=np.int64)
    s1 = seg["end_ns"].to_numpy(dtype=np.int64)
    seg_busy = _covered(u_start, u_end, s0, s1)
    segs = pd.DataFrame({"step": seg["step"].to_numpy(dtype=np.int64),
                         "phase": seg["phase"].to_numpy(dtype=object),
                         "region": seg["region"].to_numpy(dtype=object),
                         "wall_ns": s1 - s0, "busy_ns": seg_busy})
    key = pd.MultiIndex.from_frame(time.by_step[["step", "phase"]])
    per = segs.groupby(["step", "phase"])[["wall_ns", "busy_ns"]].sum().reindex(key, fill_value=0)

    ev_frame = pd.DataFrame({"step": g["step"].to_numpy(dtype=np.int64),
                             "phase": g["phase"].to_numpy(dtype=object),
                             "region": g["region"].to_numpy(dtype=object),
                             "start": ts[rows], "end": end[rows],
                             "dur": g["dur_ns"].to_numpy(dtype=np.int64),
                             "kernel": is_kernel[rows].astype(np.int64)})
    group = pd.MultiIndex.from_frame(ev_frame[["step", "phase"]]) if len(ev_frame) else None
    busy = (union_length(group.to_numpy(), ev_frame["start"].to_numpy(), ev_frame["end"].to_numpy())
            if group is not None else pd.Series([], dtype="int64"))
    busy.index = pd.MultiIndex.from_tuples(list(busy.index), names=["step", "phase"]) \
        if len(busy) else pd.MultiIndex.from_tuples([], names=["step", "phase"])
    sums = ev_frame.groupby(["step", "phase"]).agg(gpu_sum_ns=("dur", "sum"),
                                                   kernels=("kernel", "sum"),
                                                   gpu_events=("dur", "size"))
    by_step = pd.DataFrame({
        "step": time.by_step["step"].to_numpy(dtype=np.int64),
        "phase": time.by_step["phase"].to_numpy(dtype=object),
        "wall_ns": per["wall_ns"].to_numpy(dtype=np.int64),
        "gpu_sum_ns": sums["gpu_sum_ns"].reindex(key, fill_value=0).to_numpy(dtype=np.int64),
        "gpu_busy_ns": busy.reindex(key, fill_value=0).to_numpy(dtype=np.int64),
        "kernels": sums["kernels"].reindex(key, fill_value=0).to_numpy(dtype=np.int64),
        "gpu_events": sums["gpu_events"].reindex(key, fill_value=0).to_numpy(dtype=np.int64),
        "busy_ns": per["busy_ns"].to_numpy(dtype=np.int64),
    })
    by_step = _finish(by_step)
    totals = (by_step.groupby("phase", sort=False)[list(_SUM_COLUMNS)].sum()
              .reindex(list(PHASES), fill_value=0).reset_index())
    totals = _finish(totals.astype({c: "int64" for c in _SUM_COLUMNS}))

    # recompute regions
    rseg = segs[segs["phase"] == "recompute"]
    rwall = rseg.groupby("region")[["wall_ns", "busy_ns"]].sum()
    rev = ev_frame[ev_frame["phase"] == "recompute"]
    if len(rev):
        rbusy = union_length(pd.MultiIndex.from_frame(rev[["step", "region"]]).to_numpy(),
                             rev["start"].to_numpy(), rev["end"].to_numpy())
        rbusy = pd.Series(rbusy.to_numpy(), index=pd.MultiIndex.from_tuples(
            list(rbusy.index), names=["step", "region"])).groupby(level="region").sum()
        rsum = rev.groupby("region").agg(gpu_sum_ns=("dur", "sum"), kernels=("kernel", "sum"))
    else:
        rbusy = pd.Series([], dtype="int64")
        rsum = pd.DataFrame({"gpu_sum_ns": pd.Series([], dtype="int64"),
                             "kernels": pd.Series([], dtype="int64")})
    names = list(dict.fromkeys([*rwall.index, *rsum.index]))
    regions = pd.DataFrame({
        "region": pd.Series(names, dtype=object),
        "wall_ns": rwall["wall_ns"].reindex(names, fill_value=0).to_numpy(dtype=np.int64),
        "gpu_sum_ns": rsum["gpu_sum_ns"].reindex(names, fill_value=0).to_numpy(dtype=np.int64),
        "gpu_busy_ns": rbusy.reindex(names, fill_value=0).to_numpy(dtype=np.int64),
        "kernels": rsum["kernels"].reindex(names, fill_value=0).to_numpy(dtype=np.int64),
        "busy_ns": rwall["busy_ns"].reindex(names, fill_value=0).to_numpy(dtype=np.int64),
    })
    regions["idle_ns"] = regions["wall_ns"] - regions["busy_ns"]
    regions["utilization_pct"] = _pct(regions["busy_ns"], regions["wall_ns"])
    notes: list[str] = []
    devices = sorted(set(ev["pid"].to_numpy(dtype=np.int64)[all_gpu].tolist()))
    if len(devices) > 1:
        notes.append(f"GPU events on {len(devices)} devices: busy time is the union over all "
                     "of them")
    return GpuActivity(by_step=by_step, totals=totals, regions=regions,
                       has_gpu=bool(time.has_gpu), notes=tuple(notes))


def _pct(num: pd.Series, den: pd.Series) -> np.ndarray:
    n = num.to_numpy(dtype=np.float64)
    d = den.to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d > 0, n / d * 100.0, np.nan)


def _finish(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(overlap_ns=df["gpu_sum_ns"] - df["gpu_busy_ns"],
                   idle_ns=df["wall_ns"] - df["busy_ns"])
    df["utilization_pct"] = _pct(df["busy_ns"], df["wall_ns"])
    first = ["step"] if "step" in df.columns else []
    return df[[*first, "phase", *_SUM_COLUMNS, "utilization_pct"]].reset_index(drop=True)
