"""Compare two runs: what changed in time, memory, regions and ops.

Contract::

    compare(baseline, candidate, recompute_detection="auto") -> Comparison
    compare_variants(run, baseline="off", candidate="on", ...) -> Comparison
        the two variants of ONE A/B trace (capture(ab=True)): checkpointing off vs on,
        same process and data (``ckprof compare TRACE`` with one argument)

When a run has A/B steps, ``Comparison.ab`` holds each run's A/B result
(:mod:`ckprof.analysis.ab`) and the rendering shows its measured cost and saving.

``baseline`` / ``candidate`` are trace paths or :class:`~ckprof.analysis.Analysis`
objects (any trace the analyzer reads, with or without ckprof markers). The result
is frozen; its DataFrames are new objects:

- ``phases``: one row per phase of PHASES plus ``step`` (first row): ``phase``,
  ``baseline_ms``, ``candidate_ms``, ``diff_ms``, ``diff_pct``, ``baseline_gpu_ms``,
  ``candidate_gpu_ms``, ``gpu_diff_ms``, ``gpu_diff_pct``. Times are MEAN PER STEP
  (so runs with different step counts compare; phase means add up to the step mean).
  GPU columns are NaN for a run without GPU events.
- ``steps``: ``run`` (baseline|candidate), ``step``, ``step_ms``: per-step totals, for
  the spread.
- ``memory``: ``phase``, ``device``, ``baseline_peak_bytes``, ``candidate_peak_bytes``,
  ``diff_bytes``, ``diff_pct`` (peaks over steps, outer join: NaN where a run lacks
  the row), plus one ``phase == "all"`` row per device (the max over phases).
- ``regions``: ``region``, ``baseline_count``, ``candidate_count``, ``baseline_ms``,
  ``candidate_ms``, ``diff_ms``, ``diff_pct`` (recompute time per step; 0 where absent).
- ``ops``: ``category`` (``cpu_op`` or the GPU kind: ``kernel``, ``gpu_memcpy``,
  ``gpu_memset``), ``name``, ``baseline_count``, ``candidate_count`` (per step),
  ``baseline_self_ms``, ``candidate_self_ms``, ``self_diff_ms``, ``self_diff_pct``,
  ``baseline_total_ms``, ``candidate_total_ms``, ``total_diff_ms``; sorted by
  ``|self_diff_ms|`` descending. Only events that start inside the analysed steps
  count.

# NOTE [ Op self and total time ]
# Total time of a CPU op is its duration; self time is its duration minus the
# durations of its direct children in the same (pid, tid) tree (``parent``), of any
# kind but Python frames (own tree). An op nested in an op of the same name (SAC's
# ``aten::X > PythonDispatchMode > aten::X``) counts in both totals; self time never
# double counts. GPU events have no children: self == total. Everything is divided
# by the number of analysed steps, so figures are per step.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ckprof.report.text import (
    check_format,
    format_bytes,
    format_ms,
    format_signed_bytes,
    format_signed_ms,
    format_signed_pct,
    markdown_table,
    records,
    text_table,
)
from ckprof.trace.markers import PHASES
from ckprof.trace.model import GPU_KINDS

__all__ = ["Comparison", "compare", "op_times", "render_comparison"]



@dataclass(frozen=True)
class Comparison:
    """Two runs side by side. See the module docstring for every column."""

    baseline: str
    candidate: str
    phases: pd.DataFrame
    steps: pd.DataFrame
    memory: pd.DataFrame
    regions: pd.DataFrame
    ops: pd.DataFrame
    baseline_steps: int
    candidate_steps: int
    has_gpu: bool
    notes: tuple[str, ...] = field(default=())
    #: A/B results of the runs that have them: {"baseline": ABResult, "candidate": ...};
    #: for :func:`compare_variants`, {"run": ABResult}
    ab: dict[str, Any] = field(default_factory=dict)

    @property
    def step_diff_pct(self) -> float:
        row = self.phases[self.phases["phase"] == "step"].iloc[0]
        return float(row["diff_pct"])

    def within_noise(self) -> bool | None:
        """True when the candidate's mean step time lies inside the baseline's
        min-max step range or vice versa (None with fewer than 2 steps each)."""
        a = self.steps[self.steps["run"] == "baseline"]["step_ms"]
        b = self.steps[self.steps["run"] == "candidate"]["step_ms"]
        if len(a) < 2 or len(b) < 2:
            return None
        return bool(a.min() <= b.mean() <= a.max() or b.min() <= a.mean() <= b.max())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: tables as lists of records (NaN -> null)."""
        return {
            "baseline": self.baseline,
            "candidate": self.candidate,
            "baseline_steps": self.baseline_steps,
            "candidate_steps": self.candidate_steps,
            "has_gpu": self.has_gpu,
            "within_noise": self.within_noise(),
            "phases": records(self.phases),
            "memory": records(self.memory),
            "regions": records(self.regions),
            "ops": records(self.ops),
            "notes": list(self.notes),
            "ab": {k: v.to_dict() for k, v in self.ab.items()} or None,
        }


def _as_analysis(run: Any, recompute_detection: str) -> Any:
    if isinstance(run, (str, os.PathLike)):
        from ckprof.analysis import load

        return load(run, recompute_detection=recompute_detection)
    return run


def _diff_pct(a: pd.Series, b: pd.Series) -> pd.Series:
    a = a.astype("float64")
    b = b.astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.Series(np.where(a != 0, (b - a) / a * 100.0, np.nan), index=a.index)


def _phase_means(analysis: Any) -> pd.DataFrame:
    """phase, wall_ms, gpu_ms: mean per step, with a leading ``step`` row."""
    long = analysis.steps_table()
    n = max(int(long["step"].nunique()), 1)
    by = long.groupby("phase", sort=False).agg(wall_ms=("wall_ms", "sum"), gpu_ms=("gpu_ms", lambda s: s.sum(min_count=1)))
    by = by.reindex(list(PHASES)) / n
    step = pd.DataFrame(
        {"wall_ms": [by["wall_ms"].sum()], "gpu_ms": [by["gpu_ms"].sum(min_count=1)]}, index=["step"]
    )
    return pd.concat([step, by]).rename_axis("phase").reset_index()


def compare_phases(a: Any, b: Any) -> pd.DataFrame:
    """Per-phase mean-per-step wall and GPU time of two analyses, with differences."""
    pa, pb = _phase_means(a), _phase_means(b)
    out = pd.DataFrame({"phase": pa["phase"]})
    out["baseline_ms"] = pa["wall_ms"].to_numpy(dtype="float64")
    out["candidate_ms"] = pb["wall_ms"].to_numpy(dtype="float64")
    out["diff_ms"] = out["candidate_ms"] - out["baseline_ms"]
    out["diff_pct"] = _diff_pct(out["baseline_ms"], out["candidate_ms"]).to_numpy()
    out["baseline_gpu_ms"] = pa["gpu_ms"].to_numpy(dtype="float64")
    out["candidate_gpu_ms"] = pb["gpu_ms"].to_numpy(dtype="float64")
    out["gpu_diff_ms"] = out["candidate_gpu_ms"] - out["baseline_gpu_ms"]
    out["gpu_diff_pct"] = _diff_pct(out["baseline_gpu_ms"], out["candidate_gpu_ms"]).to_numpy()
    return out


def compare_memory(mem_a: pd.DataFrame, mem_b: pd.DataFrame) -> pd.DataFrame:
    """Outer join of two ``memory_table()`` frames on (phase, device), plus a per-device
    ``all`` row (max over phases)."""

    def prep(mem: pd.DataFrame) -> pd.DataFrame:
        base = mem[["phase", "device", "peak_bytes"]].astype({"phase": str, "device": str})
        base = base.assign(peak_bytes=base["peak_bytes"].astype("float64"))
        overall = base.groupby("device", sort=True, as_index=False)["peak_bytes"].max().assign(phase="all")
        return pd.concat([overall[["phase", "device", "peak_bytes"]], base], ignore_index=True)

    ja, jb = prep(mem_a), prep(mem_b)
    merged = ja.merge(jb, on=["phase", "device"], how="outer", suffixes=("_a", "_b"))
    order = {p: i for i, p in enumerate(("all", *PHASES))}
    merged = merged.assign(_o=merged["phase"].map(order).fillna(len(order)))
    merged = merged.sort_values(["device", "_o", "phase"], kind="stable").reset_index(drop=True)
    out = pd.DataFrame(
        {
            "phase": merged["phase"],
            "device": merged["device"],
            "baseline_peak_bytes": merged["peak_bytes_a"],
            "candidate_peak_bytes": merged["peak_bytes_b"],
        }
    )
    out["diff_bytes"] = out["candidate_peak_bytes"] - out["baseline_peak_bytes"]
    out["diff_pct"] = _diff_pct(out["baseline_peak_bytes"], out["candidate_peak_bytes"])
    return out


def compare_regions(reg_a: pd.DataFrame, reg_b: pd.DataFrame, steps_a: int, steps_b: int) -> pd.DataFrame:
    """Outer join of two ``regions_table()`` frames on region, per step."""

    def prep(reg: pd.DataFrame, n: int) -> pd.DataFrame:
        n = max(n, 1)
        return pd.DataFrame(
            {
                "region": reg["region"].astype(str),
                "count": reg["count"].astype("float64") / n,
                "ms": reg["wall_ms"].astype("float64") / n,
            }
        )

    merged = prep(reg_a, steps_a).merge(prep(reg_b, steps_b), on="region", how="outer", suffixes=("_a", "_b"))
    merged = merged.fillna({"count_a": 0.0, "count_b": 0.0, "ms_a": 0.0, "ms_b": 0.0})
    out = pd.DataFrame(
        {
            "region": merged["region"],
            "baseline_count": merged["count_a"],
            "candidate_count": merged["count_b"],
            "baseline_ms": merged["ms_a"],
            "candidate_ms": merged["ms_b"],
        }
    )
    out["diff_ms"] = out["candidate_ms"] - out["baseline_ms"]
    out["diff_pct"] = _diff_pct(out["baseline_ms"], out["candidate_ms"])
    key = out["diff_ms"].abs()
    return out.assign(_k=key).sort_values(["_k", "region"], ascending=[False, True], kind="stable").drop(
        columns="_k"
    ).reset_index(drop=True)


def op_times(events: pd.DataFrame, start_ns: int, end_ns: int, n_steps: int,
             intervals: Any = None) -> pd.DataFrame:
    """Per-step count, self and total ms of CPU ops and GPU events by (category, name),
    for events starting in ``[start_ns, end_ns)`` (and, with ``intervals`` -- an (n, 2)
    array of step ``[start, end)`` -- inside one of them: an A/B variant's steps are
    not contiguous). See ``NOTE [ Op self and total time ]``."""
    kind = events["kind"].astype(str).to_numpy()
    dur = events["dur_ns"].to_numpy(dtype="int64")
    parent = events["parent"].to_numpy(dtype="int64")
    child_ns = np.zeros(len(events), dtype="int64")
    has_parent = (parent >= 0) & (kind != "python_function")
    np.add.at(child_ns, parent[has_parent], dur[has_parent])
    ts = events["ts_ns"].to_numpy(dtype="int64")
    in_steps = (ts >= start_ns) & (ts < end_ns)
    if intervals is not None and len(intervals):
        iv = np.asarray(intervals, dtype="int64").reshape(-1, 2)
        iv = iv[np.argsort(iv[:, 0], kind="stable")]
        k = np.searchsorted(iv[:, 0], ts, side="right") - 1
        ok = k >= 0
        ok[ok] = ts[ok] < iv[k[ok], 1]
        in_steps &= ok
    is_gpu = np.isin(kind, list(GPU_KINDS))
    keep = in_steps & ((kind == "cpu_op") | is_gpu)
    self_ns = np.where(is_gpu, dur, np.maximum(dur - child_ns, 0))
    frame = pd.DataFrame(
        {
            "category": kind[keep],
            "name": events["name"].astype(str).to_numpy()[keep],
            "self_ns": self_ns[keep],
            "total_ns": dur[keep],
        }
    )
    n = max(int(n_steps), 1)
    agg = frame.groupby(["category", "name"], sort=True, as_index=False).agg(
        count=("total_ns", "size"), self_ns=("self_ns", "sum"), total_ns=("total_ns", "sum")
    )
    return pd.DataFrame(
        {
            "category": agg["category"].astype(str),
            "name": agg["name"].astype(str),
            "count": agg["count"].astype("float64") / n,
            "self_ms": agg["self_ns"].astype("float64") / 1e6 / n,
            "total_ms": agg["total_ns"].astype("float64") / 1e6 / n,
        }
    )


def _op_times_of(analysis: Any) -> pd.DataFrame:
    steps = analysis.phases.steps
    if steps.empty:
        return op_times(analysis.trace.events, 0, 0, 1)
    return op_times(
        analysis.trace.events, int(steps["start_ns"].min()), int(steps["end_ns"].max()), len(steps),
        intervals=steps[["start_ns", "end_ns"]].to_numpy(dtype="int64"),
    )


def compare_ops(ops_a: pd.DataFrame, ops_b: pd.DataFrame) -> pd.DataFrame:
    """Outer join of two :func:`op_times` frames, sorted by |self_diff_ms| descending."""
    merged = ops_a.merge(ops_b, on=["category", "name"], how="outer", suffixes=("_a", "_b")).fillna(0.0)
    out = pd.DataFrame(
        {
            "category": merged["category"],
            "name": merged["name"],
            "baseline_count": merged["count_a"],
            "candidate_count": merged["count_b"],
            "baseline_self_ms": merged["self_ms_a"],
            "candidate_self_ms": merged["self_ms_b"],
        }
    )
    out["self_diff_ms"] = out["candidate_self_ms"] - out["baseline_self_ms"]
    out["self_diff_pct"] = _diff_pct(out["baseline_self_ms"], out["candidate_self_ms"])
    out["baseline_total_ms"] = merged["total_ms_a"]
    out["candidate_total_ms"] = merged["total_ms_b"]
    out["total_diff_ms"] = out["candidate_total_ms"] - out["baseline_total_ms"]
    return (
        out.assign(_k=out["self_diff_ms"].abs())
        .sort_values(["_k", "category", "name"], ascending=[False, True, True], kind="stable")
        .drop(columns="_k")
        .reset_index(drop=True)
    )


def compare(baseline: Any, candidate: Any, recompute_detection: str = "auto") -> Comparison:
    """Compare two runs (paths or Analysis objects). See the module docstring."""
    a = _as_analysis(baseline, recompute_detection)
    b = _as_analysis(candidate, recompute_detection)
    steps_a, steps_b = int(a.step_count), int(b.step_count)
    wide_a, wide_b = a.steps_wide(), b.steps_wide()
    steps = pd.concat(
        [
            pd.DataFrame({"run": "baseline", "step": wide_a["step"].astype("int64"), "step_ms": wide_a["step_ms"]}),
            pd.DataFrame({"run": "candidate", "step": wide_b["step"].astype("int64"), "step_ms": wide_b["step_ms"]}),
        ],
        ignore_index=True,
    )
    notes: list[str] = []
    if steps_a != steps_b:
        notes.append(f"the runs have {steps_a} and {steps_b} steps: times are means per step")
    if a.has_gpu != b.has_gpu:
        notes.append("only one run has GPU events: GPU columns compare against nothing (NaN)")
    if not a.memory.captured or not b.memory.captured:
        notes.append("memory was not captured in both runs: memory differences are partial")
    elif bool(dict(a.memory.baseline_bytes)) != bool(dict(b.memory.baseline_bytes)):
        notes.append("only one run records the memory live before profiling: peaks are not comparable")
    for label, an in (("baseline", a), ("candidate", b)):
        if an.recompute_found_by not in ("markers", "none"):
            notes.append(f"{label}: recompute found by {an.recompute_found_by} (no ckprof markers)")
    comparison = Comparison(
        baseline=str(a.trace.path),
        candidate=str(b.trace.path),
        phases=compare_phases(a, b),
        steps=steps,
        memory=compare_memory(a.memory_table(), b.memory_table()),
        regions=compare_regions(a.regions_table(), b.regions_table(), steps_a, steps_b),
        ops=compare_ops(_op_times_of(a), _op_times_of(b)),
        baseline_steps=steps_a,
        candidate_steps=steps_b,
        has_gpu=bool(a.has_gpu or b.has_gpu),
        notes=tuple(notes),
    )
    ab = {label: getattr(an, "ab", None) for label, an in (("baseline", a), ("candidate", b))
          if getattr(an, "variant", None) is None}
    ab = {k: v for k, v in ab.items() if v is not None}
    if ab:
        import dataclasses

        comparison = dataclasses.replace(comparison, ab=ab)
    noise = comparison.within_noise()
    if noise:
        return _with_note(comparison, "step time difference is within the step-to-step spread (min-max) of the runs")
    return comparison


def compare_variants(run: Any, baseline: str = "off", candidate: str = "on",
                     recompute_detection: str = "auto") -> Comparison:
    """Compare two variants of ONE A/B trace (path or Analysis): by default the steps
    run with checkpointing off (baseline) against those with it on (candidate).

    Same process, model and data order, steps interleaved: the differences are what
    checkpointing costs and buys. Raises NotCapturedError when the trace has no A/B."""
    import dataclasses

    from ckprof.errors import NotCapturedError

    whole = _as_analysis(run, recompute_detection)
    if whole.ab is None:
        raise NotCapturedError(
            "the trace has no A/B steps to compare", path=str(whole.trace.path),
            hint="Give two traces, or capture one with ckprof.capture(..., ab=True)")
    a = whole.only_variant(baseline)   # the phases found once, split by variant
    b = whole.only_variant(candidate)
    c = compare(a, b, recompute_detection=recompute_detection)
    path = str(whole.trace.path)
    return dataclasses.replace(
        c, baseline=f"{path} [{baseline}]", candidate=f"{path} [{candidate}]", ab={"run": whole.ab},
        notes=(f"one A/B trace: steps with variant {baseline!r} against steps with {candidate!r}, "
               "interleaved in the same run", *c.notes),
    )


def _with_note(c: Comparison, note: str) -> Comparison:
    import dataclasses

    return dataclasses.replace(c, notes=(*c.notes, note))


# ---- rendering (pure: DataFrames -> str) ------------------------------------------


def _sections(c: Comparison, top_ops: int) -> list[tuple[str, list[str], list[list[str]], str]]:
    phase_rows = [
        [r.phase, format_ms(r.baseline_ms), format_ms(r.candidate_ms), format_signed_ms(r.diff_ms), format_signed_pct(r.diff_pct)]
        + ([format_ms(r.baseline_gpu_ms), format_ms(r.candidate_gpu_ms), format_signed_pct(r.gpu_diff_pct)] if c.has_gpu else [])
        for r in c.phases.itertuples(index=False)
    ]
    phase_head = ["phase", "baseline ms", "candidate ms", "diff ms", "diff"] + (
        ["base GPU ms", "cand GPU ms", "GPU diff"] if c.has_gpu else []
    )
    mem_rows = [
        [r.phase, r.device, format_bytes(r.baseline_peak_bytes), format_bytes(r.candidate_peak_bytes),
         format_signed_bytes(r.diff_bytes), format_signed_pct(r.diff_pct)]
        for r in c.memory.itertuples(index=False)
    ]
    reg_rows = [
        [r.region, f"{r.baseline_count:g}", f"{r.candidate_count:g}", format_ms(r.baseline_ms),
         format_ms(r.candidate_ms), format_signed_ms(r.diff_ms)]
        for r in c.regions.itertuples(index=False)
    ]
    op_rows = [
        [r.category, r.name, f"{r.baseline_count:g}", f"{r.candidate_count:g}", format_ms(r.baseline_self_ms),
         format_ms(r.candidate_self_ms), format_signed_ms(r.self_diff_ms), format_signed_ms(r.total_diff_ms)]
        for r in c.ops.head(top_ops).itertuples(index=False)
    ]
    return [
        ("Time per step (mean over steps)", phase_head, phase_rows, "l" + "r" * (len(phase_head) - 1)),
        ("Peak memory", ["phase", "device", "baseline", "candidate", "diff", "diff %"], mem_rows, "llrrrr"),
        ("Recompute per region (per step)", ["region", "base n", "cand n", "baseline ms", "candidate ms", "diff ms"],
         reg_rows, "lrrrrr"),
        (f"Ops that changed most (self time per step, top {top_ops})",
         ["category", "name", "base n", "cand n", "base self ms", "cand self ms", "self diff", "total diff"],
         op_rows, "llrrrrrr"),
    ]


def render_comparison(c: Comparison, fmt: str = "table", top_ops: int = 15) -> str:
    """Render a :class:`Comparison` as ``table`` | ``json`` | ``csv`` | ``markdown``."""
    if fmt == "json":
        return json.dumps(c.to_dict(), indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        return _render_csv(c)
    check_format(fmt)
    noise = c.within_noise()
    head = [
        f"baseline:  {c.baseline} ({c.baseline_steps} step(s))",
        f"candidate: {c.candidate} ({c.candidate_steps} step(s))",
        f"step time {format_signed_pct(c.step_diff_pct)}"
        + ("" if noise is None else (" (within step-to-step noise)" if noise else " (outside step-to-step noise)")),
    ]
    lines: list[str] = []
    if fmt == "markdown":
        lines += ["### ckprof compare", "", *(h + "  " for h in head)]
    else:
        lines += head
    lines += _ab_lines(c, fmt)
    for title, headers, rows, align in _sections(c, top_ops):
        if fmt == "markdown":
            lines += ["", f"#### {title}", ""]
            lines += markdown_table(headers, rows) if rows else ["(none)"]
        else:
            lines += ["", title]
            lines += text_table(headers, rows, align) if rows else ["  (none)"]
    if c.notes:
        lines += ["", "#### Notes" if fmt == "markdown" else "Notes", *(f"  - {n}" for n in c.notes)]
    return "\n".join(lines) + "\n"


def _ab_lines(c: Comparison, fmt: str) -> list[str]:
    """Measured cost and saving of checkpointing of each run that has A/B steps."""
    if not c.ab:
        return []
    from ckprof.report.ab import ab_headline

    out: list[str] = []
    for label, ab in c.ab.items():
        title = ("A/B within the trace" if label == "run" else f"A/B within the {label} run")
        if fmt == "markdown":
            out += ["", f"#### {title}", "", *(f"{h.strip()}  " for h in ab_headline(ab))]
        else:
            out += ["", title, *(f"  {h}" for h in ab_headline(ab))]
    return out


def _render_csv(c: Comparison) -> str:
    """One tidy table: ``table`` (phases|memory|regions|ops), ``key`` columns, then
    ``metric``, ``baseline``, ``candidate``, ``diff``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "key", "metric", "baseline", "candidate", "diff"])

    def num(x: Any) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.6f}"

    for r in c.phases.itertuples(index=False):
        w.writerow(["phases", r.phase, "wall_ms", num(r.baseline_ms), num(r.candidate_ms), num(r.diff_ms)])
        if c.has_gpu:
            w.writerow(["phases", r.phase, "gpu_ms", num(r.baseline_gpu_ms), num(r.candidate_gpu_ms), num(r.gpu_diff_ms)])
    for r in c.memory.itertuples(index=False):
        w.writerow(["memory", f"{r.phase}@{r.device}", "peak_bytes", num(r.baseline_peak_bytes),
                    num(r.candidate_peak_bytes), num(r.diff_bytes)])
    for r in c.regions.itertuples(index=False):
        w.writerow(["regions", r.region, "recompute_ms", num(r.baseline_ms), num(r.candidate_ms), num(r.diff_ms)])
    for r in c.ops.itertuples(index=False):
        w.writerow(["ops", f"{r.category}:{r.name}", "self_ms", num(r.baseline_self_ms), num(r.candidate_self_ms),
                    num(r.self_diff_ms)])
    return buf.getvalue()
