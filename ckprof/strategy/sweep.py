"""The sweep's result, from measured runs to a verdict (pure: no torch).

Contract::

    summarize(runs, peaks, batch_size=None, ...) -> DataFrame   one row per policy
    pareto_mask(step_ms, peak_bytes) -> bool array              the time-memory frontier
    estimate_max_batch(peaks, budget_bytes) -> DataFrame        labelled as an estimate
    recommend(table, budget_bytes=None) -> Recommendation
    SweepResult.from_runs(runs, peaks, ...) -> SweepResult      .render(fmt), .plot(), .to_dict()

The runs themselves are measured by :mod:`ckprof.strategy.runner` (``ckprof.sweep``),
which imports torch; everything here works on their plain-data results, so the
verdict logic is tested without torch.

# NOTE [ Timing noise ]
# The step time of a run is the MEDIAN over its profiled steps; the spread is the
# interquartile range (q1..q3) and min..max over those steps. Two policies are
# "within noise" of each other when their q1..q3 intervals overlap: then the
# measured difference may be noise, and the table and recommendation say so.
#
# NOTE [ Largest batch that fits (an estimate) ]
# Peak memory is modelled as ``fixed + per_sample * batch``. With two measured batch
# sizes the line goes through both measurements (method "measured slope"). With one,
# ``fixed`` is the memory live before profiling (parameters, gradients if kept,
# optimizer state, the batch) and everything above it is assumed to grow in
# proportion to the batch (method "proportional (assumed)"). The largest batch is
# ``floor((budget - fixed) / per_sample)``: an estimate, labelled as such.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ckprof.report.text import check_format, format_bytes, markdown_table, records, text_table

__all__ = [
    "Recommendation",
    "SweepResult",
    "estimate_max_batch",
    "pareto_mask",
    "parse_bytes",
    "plot_frontier",
    "recommend",
    "render_sweep",
    "summarize",
]

RUN_COLUMNS = ("policy", "batch_size", "step", "step_ms", "forward_ms", "backward_ms", "recompute_ms",
               "optimizer_ms", "other_ms")
PEAK_COLUMNS = ("policy", "batch_size", "device", "peak_bytes", "baseline_bytes", "blocks")

# ---- parsing -----------------------------------------------------------------------

_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_BYTES = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(value: str | int | float) -> int:
    """``"8GiB"`` -> 8589934592, ``"1.5 GB"`` -> 1500000000, ``"512MiB"``, ``"1e9"``,
    ``4096``. Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (KB,
    MB, GB, TB, or K/M/G/T) powers of 1000. Raises ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a size in bytes: {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        number, unit = float(value), ""
    else:
        m = _BYTES.match(str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"not a size in bytes: {value!r} (examples: 8GiB, 512MiB, 1.5GB, 1000000)")
        number, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"not a size in bytes: {value!r} (must be finite and >= 0)")
    return round(number * _UNITS[unit])


# ---- pure analysis of measured runs --------------------------------------------------


def pareto_mask(step_ms: Sequence[float], peak_bytes: Sequence[float]) -> np.ndarray:
    """True for points no other point dominates (<= on both axes, < on one).
    Points with a NaN coordinate are never on the frontier."""
    t = np.asarray(step_ms, dtype="float64")
    m = np.asarray(peak_bytes, dtype="float64")
    ok = ~(np.isnan(t) | np.isnan(m))
    out = np.zeros(len(t), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok.copy()
        others[i] = False
        dominated = others & (t <= t[i]) & (m <= m[i]) & ((t < t[i]) | (m < m[i]))
        out[i] = not dominated.any()
    return out


def _overlap(a_lo: float, a_hi: float, b_lo: float, b_hi: float) -> bool:
    return bool(a_lo <= b_hi and b_lo <= a_hi)


def summarize(runs: pd.DataFrame, peaks: pd.DataFrame, batch_size: int | None = None,
              baseline_policy: str = "none") -> pd.DataFrame:
    """One row per policy at ``batch_size`` (default: the smallest measured).

    Columns: ``policy``, ``blocks``, ``batch_size``, ``steps``, ``step_ms`` (median),
    ``step_ms_q1``, ``step_ms_q3``, ``step_ms_min``, ``step_ms_max``, ``recompute_ms``
    (median), ``recompute_overhead_pct`` (sum recompute / sum(step - recompute) x 100),
    ``slowdown_pct`` and ``saving_pct`` (against ``baseline_policy``; NaN without it),
    ``peak_bytes``, ``throughput_per_s`` (samples per second at the median step),
    ``on_frontier``, ``within_noise_of`` (policies whose q1..q3 overlaps). Row order is
    the order policies first appear in ``runs``.
    """
    if runs.empty:
        raise ValueError("no measured steps to summarise")
    if batch_size is None:
        batch_size = int(runs["batch_size"].min())
    sel = runs[runs["batch_size"] == batch_size]
    order = list(dict.fromkeys(sel["policy"].tolist()))
    peak_of = {
        str(r.policy): (float(r.peak_bytes), str(r.blocks))
        for r in peaks[peaks["batch_size"] == batch_size].itertuples(index=False)
    }
    rows = []
    for policy in order:
        grp = sel[sel["policy"] == policy]
        step = grp["step_ms"].to_numpy(dtype="float64")
        rec = grp["recompute_ms"].to_numpy(dtype="float64")
        q1, med, q3 = np.percentile(step, [25, 50, 75])
        denom = float(step.sum() - rec.sum())
        peak, blocks = peak_of.get(policy, (math.nan, ""))
        rows.append(
            {
                "policy": policy,
                "blocks": blocks,
                "batch_size": int(batch_size),
                "steps": len(step),
                "step_ms": float(med),
                "step_ms_q1": float(q1),
                "step_ms_q3": float(q3),
                "step_ms_min": float(step.min()),
                "step_ms_max": float(step.max()),
                "recompute_ms": float(np.median(rec)),
                "recompute_overhead_pct": float(rec.sum() / denom * 100.0) if denom > 0 else math.nan,
                "peak_bytes": peak,
                "throughput_per_s": float(batch_size / (med / 1e3)) if med > 0 else math.nan,
            }
        )
    table = pd.DataFrame(rows)
    base = table[table["policy"] == baseline_policy]
    if len(base):
        b = base.iloc[0]
        table["slowdown_pct"] = (table["step_ms"] - b["step_ms"]) / b["step_ms"] * 100.0
        table["saving_pct"] = (
            (b["peak_bytes"] - table["peak_bytes"]) / b["peak_bytes"] * 100.0 if b["peak_bytes"] > 0 else math.nan
        )
    else:
        table["slowdown_pct"] = math.nan
        table["saving_pct"] = math.nan
    table["on_frontier"] = pareto_mask(table["step_ms"], table["peak_bytes"])
    noise = []
    for r in table.itertuples(index=False):
        close = [
            o.policy for o in table.itertuples(index=False)
            if o.policy != r.policy and _overlap(r.step_ms_q1, r.step_ms_q3, o.step_ms_q1, o.step_ms_q3)
        ]
        noise.append(", ".join(close))
    table["within_noise_of"] = noise
    cols = ["policy", "blocks", "batch_size", "steps", "step_ms", "step_ms_q1", "step_ms_q3", "step_ms_min",
            "step_ms_max", "recompute_ms", "recompute_overhead_pct", "slowdown_pct", "peak_bytes", "saving_pct",
            "throughput_per_s", "on_frontier", "within_noise_of"]
    return table[cols]


def estimate_max_batch(peaks: pd.DataFrame, budget_bytes: int | None) -> pd.DataFrame:
    """Per policy: ``bytes_per_sample_est``, ``fixed_bytes_est``, ``method``,
    ``max_batch_est`` (largest batch whose modelled peak fits ``budget_bytes``; NaN
    without a budget or when the model is unusable). An ESTIMATE: see
    ``NOTE [ Largest batch that fits (an estimate) ]``."""
    rows = []
    for policy in dict.fromkeys(peaks["policy"].tolist()):
        grp = peaks[peaks["policy"] == policy].dropna(subset=["peak_bytes"])
        grp = grp.sort_values("batch_size")
        per_sample = fixed = math.nan
        method = "no memory measured"
        sizes = grp["batch_size"].unique()
        if len(sizes) >= 2:
            lo = grp[grp["batch_size"] == sizes[0]].iloc[0]
            hi = grp[grp["batch_size"] == sizes[-1]].iloc[0]
            per_sample = (float(hi["peak_bytes"]) - float(lo["peak_bytes"])) / float(hi["batch_size"] - lo["batch_size"])
            fixed = float(lo["peak_bytes"]) - per_sample * float(lo["batch_size"])
            method = f"measured slope (batch {int(lo['batch_size'])} and {int(hi['batch_size'])})"
        elif len(sizes) == 1:
            one = grp.iloc[0]
            fixed = float(one["baseline_bytes"]) if not math.isnan(float(one["baseline_bytes"])) else 0.0
            per_sample = (float(one["peak_bytes"]) - fixed) / float(one["batch_size"])
            method = "proportional (assumed)"
        max_batch = math.nan
        if budget_bytes is not None and per_sample > 0 and not math.isnan(fixed):
            max_batch = float(max(math.floor((budget_bytes - fixed) / per_sample), 0))
        elif budget_bytes is not None and not math.isnan(per_sample) and per_sample <= 0:
            method += "; peak did not grow with batch, no estimate"
        rows.append({"policy": policy, "bytes_per_sample_est": per_sample, "fixed_bytes_est": fixed,
                     "method": method, "max_batch_est": max_batch})
    return pd.DataFrame(rows, columns=["policy", "bytes_per_sample_est", "fixed_bytes_est", "method", "max_batch_est"])


@dataclass(frozen=True)
class Recommendation:
    """What to use. ``policy`` is None when no budget was given (see ``frontier``) or
    when nothing fits. ``ties`` are fitting policies within noise of ``policy``."""

    policy: str | None
    budget_bytes: int | None
    text: str
    frontier: tuple[str, ...]
    ties: tuple[str, ...] = ()
    fits: tuple[str, ...] = ()


def recommend(table: pd.DataFrame, budget_bytes: int | None = None) -> Recommendation:
    """The fastest (median step) policy whose measured peak fits ``budget_bytes``;
    without a budget, the frontier from fastest to leanest."""
    front = table[table["on_frontier"]].sort_values(["step_ms", "peak_bytes"], kind="stable")
    frontier = tuple(front["policy"].astype(str))
    if budget_bytes is None:
        parts = [f"{r.policy} ({r.step_ms:,.1f} ms, {format_bytes(r.peak_bytes)})" for r in front.itertuples(index=False)]
        text = (
            "No memory budget given. Pareto frontier, fastest first: " + "; ".join(parts)
            + ". Use the first one that fits your memory (--memory-budget picks it)."
        ) if parts else "No memory budget given, and no policy has both a step time and a peak memory."
        return Recommendation(None, None, text, frontier)
    fits = table[table["peak_bytes"] <= budget_bytes].sort_values(["step_ms", "peak_bytes"], kind="stable")
    if fits.empty:
        measured = table.dropna(subset=["peak_bytes"])
        if measured.empty:
            text = f"No policy can be checked against {format_bytes(budget_bytes)}: peak memory was not captured."
        else:
            lean = measured.sort_values("peak_bytes", kind="stable").iloc[0]
            text = (
                f"No policy fits {format_bytes(budget_bytes)} at batch {int(lean.batch_size)}: the leanest is "
                f"{lean.policy} at {format_bytes(lean.peak_bytes)}. Use a smaller batch (see max_batch_est) "
                "or a more aggressive policy."
            )
        return Recommendation(None, int(budget_bytes), text, frontier)
    best = fits.iloc[0]
    ties = tuple(
        str(r.policy) for r in fits.iloc[1:].itertuples(index=False)
        if _overlap(best.step_ms_q1, best.step_ms_q3, r.step_ms_q1, r.step_ms_q3)
    )
    text = (
        f"Use {best.policy}: the fastest policy whose measured peak fits {format_bytes(budget_bytes)} "
        f"({best.step_ms:,.1f} ms per step median, peak {format_bytes(best.peak_bytes)})."
    )
    if ties:
        text += f" Within timing noise of it: {', '.join(ties)} (the time difference may not be real)."
        leaner = fits[fits["policy"].isin(ties) & (fits["peak_bytes"] < best.peak_bytes)]
        if len(leaner):
            lean = leaner.sort_values("peak_bytes", kind="stable").iloc[0]
            text += (f" {lean.policy} needs {format_bytes(best.peak_bytes - lean.peak_bytes)} less memory "
                     "at no measurable time cost: prefer it if you want headroom.")
    return Recommendation(str(best.policy), int(budget_bytes), text, frontier, ties,
                          tuple(fits["policy"].astype(str)))


def plot_frontier(table: pd.DataFrame, budget_bytes: int | None = None, recommended: str | None = None,
                  title: str | None = None) -> Any:
    """Peak memory vs median step time, one point per policy: frontier points in colour
    and joined, dominated ones grey, horizontal bars = step-time IQR. Returns a
    matplotlib Figure (never shown)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    data = table.dropna(subset=["peak_bytes"])
    mib = data["peak_bytes"] / 2**20
    for r, y in zip(data.itertuples(index=False), mib, strict=True):
        color = "#C44E52" if r.on_frontier else "#AAAAAA"
        ax.errorbar([r.step_ms], [y], xerr=[[r.step_ms - r.step_ms_q1], [r.step_ms_q3 - r.step_ms]],
                    fmt="o", color=color, ecolor=color, capsize=3, markersize=7, zorder=3)
        ax.annotate(r.policy, (r.step_ms, y), textcoords="offset points", xytext=(6, 5), fontsize=9,
                    color="black" if r.on_frontier else "#888888")
    front = data[data["on_frontier"]].sort_values("step_ms")
    if len(front) > 1:
        ax.plot(front["step_ms"], front["peak_bytes"] / 2**20, "-", color="#C44E52", alpha=0.6, zorder=2,
                label="Pareto frontier")
    if recommended is not None and recommended in set(data["policy"]):
        r = data[data["policy"] == recommended].iloc[0]
        ax.scatter([r["step_ms"]], [r["peak_bytes"] / 2**20], s=260, marker="*", color="#55A868", zorder=4,
                   label=f"recommended: {recommended}")
    if budget_bytes is not None:
        ax.axhline(budget_bytes / 2**20, color="#4C72B0", linestyle="--", label=f"budget {format_bytes(budget_bytes)}")
    ax.set_xlabel("step time, median over steps (ms); bars: q1-q3")
    ax.set_ylabel("peak memory (MiB)")
    ax.set_title(title or "Checkpointing policies: memory vs time (grey = dominated)")
    ax.grid(True, alpha=0.3)
    # room for the labels (up and to the right of each point) inside the axes: the
    # top and rightmost policies' names are never cut by the frame
    ax.margins(x=0.12, y=0.14)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


# ---- the result ----------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    """Measured runs of a sweep and what follows from them.

    ``runs``: one row per profiled step (:data:`RUN_COLUMNS`); ``peaks``: one row per
    (policy, batch size) (:data:`PEAK_COLUMNS`); ``table``: :func:`summarize` joined
    with :func:`estimate_max_batch`; ``recommendation``: :func:`recommend`;
    ``traces``: (policy, batch_size, path) of every trace written.
    """

    table: pd.DataFrame
    runs: pd.DataFrame
    peaks: pd.DataFrame
    recommendation: Recommendation
    traces: tuple[tuple[str, int, str], ...]
    device: str
    budget_bytes: int | None = None
    notes: tuple[str, ...] = field(default=())

    @classmethod
    def from_runs(cls, runs: pd.DataFrame, peaks: pd.DataFrame, *, traces: Sequence[tuple[str, int, str]] = (),
                  device: str = "cpu", budget_bytes: int | None = None, notes: Sequence[str] = ()) -> SweepResult:
        """Build every derived table from measured ``runs`` and ``peaks`` (pure)."""
        table = summarize(runs, peaks)
        est = estimate_max_batch(peaks, budget_bytes)
        table = table.merge(est, on="policy", how="left")
        rec = recommend(table, budget_bytes)
        all_notes = list(notes)
        if table["peak_bytes"].isna().any():
            all_notes.append("peak memory missing for some policies (not captured): they are off the frontier")
        return cls(table=table, runs=runs, peaks=peaks, recommendation=rec, traces=tuple(traces),
                   device=device, budget_bytes=budget_bytes, notes=tuple(dict.fromkeys(all_notes)))

    def with_budget(self, budget: str | int | None) -> SweepResult:
        """The same measurements judged against another memory budget."""
        budget_bytes = None if budget is None else parse_bytes(budget)
        return SweepResult.from_runs(self.runs, self.peaks, traces=self.traces, device=self.device,
                                     budget_bytes=budget_bytes, notes=self.notes)

    def plot(self) -> Any:
        """The frontier plot (matplotlib Figure)."""
        return plot_frontier(self.table, self.budget_bytes, self.recommendation.policy)

    def render(self, fmt: str = "table") -> str:
        return render_sweep(self, fmt)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "budget_bytes": self.budget_bytes,
            "policies": records(self.table),
            "recommendation": dataclasses.asdict(self.recommendation),
            "traces": [{"policy": p, "batch_size": b, "path": t} for p, b, t in self.traces],
            "notes": list(self.notes),
        }


def _f(x: Any, spec: str = ",.1f", suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:{spec}}{suffix}"


def render_sweep(result: SweepResult, fmt: str = "table") -> str:
    """``table`` | ``markdown`` | ``json`` | ``csv`` rendering of a sweep."""
    import json

    if fmt == "json":
        return json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        return result.table.to_csv(index=False, lineterminator="\n")
    check_format(fmt)
    t = result.table
    batch = int(t["batch_size"].iloc[0])
    headers = ["policy", "blocks", "step ms (median)", "IQR ms", "min-max ms", "recompute ms", "overhead",
               "slowdown", "peak", "saving", "samples/s", "max batch (est.)", "frontier", "within noise of"]
    rows = [
        [r.policy, r.blocks, _f(r.step_ms), f"{r.step_ms_q1:,.1f}-{r.step_ms_q3:,.1f}",
         f"{r.step_ms_min:,.1f}-{r.step_ms_max:,.1f}", _f(r.recompute_ms), _f(r.recompute_overhead_pct, ".1f", "%"),
         _f(r.slowdown_pct, "+.1f", "%"), format_bytes(r.peak_bytes), _f(r.saving_pct, ".1f", "%"),
         _f(r.throughput_per_s), _f(r.max_batch_est, ".0f"), "yes" if r.on_frontier else "no",
         r.within_noise_of or "—"]
        for r in t.itertuples(index=False)
    ]
    steps = int(t["steps"].max())
    intro = [
        f"ckprof sweep · device {result.device} · batch {batch} · {steps} profiled step(s) per policy",
        "step times: median over steps; slowdown and saving against 'none'; "
        "max batch is an ESTIMATE (" + "; ".join(dict.fromkeys(t["method"].astype(str))) + ")",
    ]
    if result.budget_bytes is not None:
        intro.append(f"memory budget: {format_bytes(result.budget_bytes)} ({result.budget_bytes:,} bytes)")
    if fmt == "markdown":
        lines = ["### ckprof sweep", "", *(i + "  " for i in intro), "", *markdown_table(headers, rows), "",
                 "**Recommendation.** " + result.recommendation.text]
    else:
        lines = [*intro, "", *text_table(headers, rows, "ll" + "r" * 10 + "ll"), "",
                 "Recommendation: " + result.recommendation.text]
    if result.notes:
        lines += ["", "Notes", *(f"  - {n}" for n in result.notes)]
    return "\n".join(lines) + "\n"
