"""Sweep checkpointing policies on one model and pick one: time, memory, frontier.

Contract::

    sweep(make_model, make_batch=None, policies=None, steps=5, device="cpu", *,
          batch_size=None, batch_sizes=None, loss_fn=None, blocks=None, warmup=1,
          out_dir=None, isolation="auto", memory_budget=None, optimizer="adamw")
        -> SweepResult

Each (policy, batch size) run builds a FRESH model, applies the policy with
:func:`ckprof.policies.apply_policy` (blocks wrapped with ``ckprof.checkpoint``, so
regions are named and markers emitted), trains ``warmup + steps`` steps under
``ckprof.capture`` and analyses the trace with :func:`ckprof.analysis.load`. Every
figure in the result comes from those traces; estimates say so in their column name
(``*_est``) and in the text.

The pure part (no torch): :func:`parse_bytes`, :func:`summarize`,
:func:`pareto_mask`, :func:`recommend`, :func:`estimate_max_batch`,
:func:`plot_frontier`, :func:`render_sweep`.

# NOTE [ Run isolation ]
# CPU peak memory = the trace's [memory] counter relative to its start + the bytes
# live when profiling started (capture's baseline), so leftovers of an earlier run
# in the same process would shift nothing but the allocator state, caches and
# fragmentation still differ. ``isolation="process"`` runs every (policy, batch)
# in its own ``multiprocessing`` *spawn* process: the factories must then be
# importable (``"module:function"`` strings, or functions defined in a module --
# not in a notebook's ``__main__``). ``isolation="inline"`` runs in this process,
# building a fresh model per run and calling ``gc.collect()`` (and
# ``torch.cuda.empty_cache()`` + ``reset_peak_memory_stats()`` on CUDA) between
# runs. ``auto`` picks process when the factories can travel, else inline.
#
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
import gc
import inspect
import math
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ckprof._callable_module import make_module_callable
from ckprof.compare import fmt_bytes, markdown_table, text_table
from ckprof.errors import CaptureError, CkprofError

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
    "sweep",
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
        parts = [f"{r.policy} ({r.step_ms:,.1f} ms, {fmt_bytes(r.peak_bytes)})" for r in front.itertuples(index=False)]
        text = (
            "No memory budget given. Pareto frontier, fastest first: " + "; ".join(parts)
            + ". Use the first one that fits your memory (--memory-budget picks it)."
        ) if parts else "No memory budget given, and no policy has both a step time and a peak memory."
        return Recommendation(None, None, text, frontier)
    fits = table[table["peak_bytes"] <= budget_bytes].sort_values(["step_ms", "peak_bytes"], kind="stable")
    if fits.empty:
        measured = table.dropna(subset=["peak_bytes"])
        if measured.empty:
            text = f"No policy can be checked against {fmt_bytes(budget_bytes)}: peak memory was not captured."
        else:
            lean = measured.sort_values("peak_bytes", kind="stable").iloc[0]
            text = (
                f"No policy fits {fmt_bytes(budget_bytes)} at batch {int(lean.batch_size)}: the leanest is "
                f"{lean.policy} at {fmt_bytes(lean.peak_bytes)}. Use a smaller batch (see max_batch_est) "
                "or a more aggressive policy."
            )
        return Recommendation(None, int(budget_bytes), text, frontier)
    best = fits.iloc[0]
    ties = tuple(
        str(r.policy) for r in fits.iloc[1:].itertuples(index=False)
        if _overlap(best.step_ms_q1, best.step_ms_q3, r.step_ms_q1, r.step_ms_q3)
    )
    text = (
        f"Use {best.policy}: the fastest policy whose measured peak fits {fmt_bytes(budget_bytes)} "
        f"({best.step_ms:,.1f} ms per step median, peak {fmt_bytes(best.peak_bytes)})."
    )
    if ties:
        text += f" Within timing noise of it: {', '.join(ties)} (the time difference may not be real)."
        leaner = fits[fits["policy"].isin(ties) & (fits["peak_bytes"] < best.peak_bytes)]
        if len(leaner):
            lean = leaner.sort_values("peak_bytes", kind="stable").iloc[0]
            text += (f" {lean.policy} needs {fmt_bytes(best.peak_bytes - lean.peak_bytes)} less memory "
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
        ax.axhline(budget_bytes / 2**20, color="#4C72B0", linestyle="--", label=f"budget {fmt_bytes(budget_bytes)}")
    ax.set_xlabel("step time, median over steps (ms); bars: q1-q3")
    ax.set_ylabel("peak memory (MiB)")
    ax.set_title(title or "Checkpointing policies: memory vs time (grey = dominated)")
    ax.grid(True, alpha=0.3)
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
        from ckprof.compare import _records

        return {
            "device": self.device,
            "budget_bytes": self.budget_bytes,
            "policies": _records(self.table),
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
    if fmt not in ("table", "markdown"):
        raise ValueError(f"unknown format {fmt!r}; choose one of table, json, csv, markdown")
    t = result.table
    batch = int(t["batch_size"].iloc[0])
    headers = ["policy", "blocks", "step ms (median)", "IQR ms", "min-max ms", "recompute ms", "overhead",
               "slowdown", "peak", "saving", "samples/s", "max batch (est.)", "frontier", "within noise of"]
    rows = [
        [r.policy, r.blocks, _f(r.step_ms), f"{r.step_ms_q1:,.1f}-{r.step_ms_q3:,.1f}",
         f"{r.step_ms_min:,.1f}-{r.step_ms_max:,.1f}", _f(r.recompute_ms), _f(r.recompute_overhead_pct, ".1f", "%"),
         _f(r.slowdown_pct, "+.1f", "%"), fmt_bytes(r.peak_bytes), _f(r.saving_pct, ".1f", "%"),
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
        intro.append(f"memory budget: {fmt_bytes(result.budget_bytes)} ({result.budget_bytes:,} bytes)")
    if fmt == "markdown":
        lines = ["### ckprof sweep", "", *(i + "  " for i in intro), "", *markdown_table(headers, rows), "",
                 "**Recommendation.** " + result.recommendation.text]
    else:
        lines = [*intro, "", *text_table(headers, rows, "ll" + "r" * 10 + "ll"), "",
                 "Recommendation: " + result.recommendation.text]
    if result.notes:
        lines += ["", "Notes", *(f"  - {n}" for n in result.notes)]
    return "\n".join(lines) + "\n"


# ---- running (torch imported on call) -------------------------------------------------


def _resolve(target: Any) -> Any:
    """'package.module:function' -> the function; callables pass through."""
    if isinstance(target, str):
        module_name, sep, attr = target.partition(":")
        if not sep or not module_name or not attr:
            raise CkprofError(f"{target!r} is not 'module:function'", hint="Example: mypkg.models:build")
        try:
            obj = import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as err:
            raise CkprofError(f"cannot import {target!r}: {err}",
                              hint="Check that the module is on PYTHONPATH (run from its folder)") from err
        return obj
    return target


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _takes_positional(fn: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def _default_loss(output: Any, batch: Any) -> Any:
    """Scalar output -> itself; else mean of squares of the (first) output tensor."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if hasattr(output, "loss") and output.loss is not None:
        return output.loss
    if output.dim() == 0:
        return output
    return output.float().square().mean()


def _build(spec: Mapping[str, Any], batch_size: int | None) -> tuple[Any, tuple[Any, ...], Callable[..., Any], int | None]:
    """(model, batch args, loss_fn, batch_size) from the factories in ``spec``."""
    make_model = _resolve(spec["make_model"])
    make_batch = _resolve(spec.get("make_batch"))
    loss_fn = _resolve(spec.get("loss_fn"))
    if batch_size is not None and _accepts(make_model, "batch_size") and make_batch is None:
        built = make_model(batch_size=batch_size)
    else:
        built = make_model()
    batch: Any = None
    if isinstance(built, tuple):
        if len(built) != 3:
            raise CkprofError(f"{spec['make_model']!r} returned a tuple of {len(built)}, not (model, batch, loss_fn)")
        model, batch, built_loss = built
        loss_fn = loss_fn or built_loss
    else:
        model = built
    if make_batch is not None:
        if batch_size is not None and (_accepts(make_batch, "batch_size") or _takes_positional(make_batch)):
            batch = make_batch(batch_size)
        else:
            batch = make_batch()
    if batch is None:
        raise CkprofError("no batch: give make_batch, or a model factory returning (model, batch, loss_fn)")
    args = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    actual = batch_size
    first = args[0] if args else None
    if hasattr(first, "shape") and len(first.shape) > 0:
        actual = int(first.shape[0])
    return model, args, loss_fn or _default_loss, actual


def _device_key(device: Any) -> str:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    return dev.type


def _to(x: Any, device: Any) -> Any:
    return x.to(device) if hasattr(x, "to") and hasattr(x, "shape") else x


def run_policy(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Profile one (policy, batch size) and return its measurements as plain data.

    Runs where it is called (the sweep calls it in a spawn process for isolation).
    ``spec`` keys: make_model, make_batch, loss_fn, policy (a Policy or its spec
    text), batch_size, steps, warmup, device, blocks, out_dir, optimizer.
    """
    import torch

    from ckprof.analysis import load
    from ckprof.capture import capture
    from ckprof.policies import Policy, apply_policy, find_blocks, parse_policy

    policy = spec["policy"] if isinstance(spec["policy"], Policy) else parse_policy(spec["policy"])
    device = spec.get("device", "cpu")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec.get("seed", 0)))
    model, args, loss_fn, batch_size = _build(spec, spec.get("batch_size"))
    model = model.to(device)
    model.train()
    args = tuple(_to(a, device) for a in args)
    opt_name = spec.get("optimizer", "adamw")
    params = [p for p in model.parameters() if p.requires_grad]
    if opt_name == "sgd":
        optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4)
    blocks = find_blocks(model, spec.get("blocks"))
    out_dir = Path(spec["out_dir"])
    steps, warmup = int(spec.get("steps", 5)), int(spec.get("warmup", 1))

    def train_step() -> None:
        # capture's automatic markers name forward / backward / optimizer / zero_grad
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(*args), args)
        loss.backward()
        optimizer.step()

    with apply_policy(model, policy, blocks):
        # NOTE: ``warmup`` unprofiled steps (schedule "wait"), one profiler warm-up
        # step, then ``steps`` recorded steps.
        with capture(out_dir=out_dir, wait=warmup, warmup=1, active=steps, record_shapes=False) as session:
            for _ in range(warmup + 1 + steps):
                train_step()
                session.step()
        trace_path = _trace_path_of(session, out_dir)
    analysis = load(trace_path)
    wide = analysis.steps_wide()
    key = _device_key(device)
    mem = analysis.memory_table()
    mem = mem[mem["device"] == key]
    peak = float(mem["peak_bytes"].max()) if analysis.memory.captured and len(mem) else math.nan
    baseline = float(analysis.memory.baseline_bytes.get(key, math.nan))
    runs = [
        {"policy": policy.name, "batch_size": batch_size, "step": int(r["step"]), "step_ms": float(r["step_ms"]),
         **{f"{p}_ms": float(r[f"{p}_ms"]) for p in ("forward", "backward", "recompute", "optimizer", "other")}}
        for _, r in wide.iterrows()
    ]
    return {
        "policy": policy.name,
        "batch_size": batch_size,
        "trace": str(trace_path),
        "runs": runs,
        "peak": {"policy": policy.name, "batch_size": batch_size, "device": key, "peak_bytes": peak,
                 "baseline_bytes": baseline, "blocks": policy.describe(len(blocks))},
        "recompute_detection": analysis.recompute_detection,
        "notes": list(analysis.notes),
    }


def _trace_path_of(session: Any, out_dir: Path) -> Path:
    paths = list(getattr(session, "trace_paths", []) or [])
    if not paths:
        why = "; ".join(str(e) for e in getattr(session, "errors", [])) or "no window completed"
        raise CaptureError(f"capture wrote no trace ({why})", path=str(out_dir),
                           hint="Check that the model trains for the requested steps")
    return Path(paths[-1])


def _portable(obj: Any) -> bool:
    """Can ``obj`` travel to a spawn process (importable by reference)?"""
    if obj is None or isinstance(obj, str):
        return True
    module = getattr(obj, "__module__", None)
    if module in (None, "__main__") or "<locals>" in getattr(obj, "__qualname__", "<locals>"):
        return False
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True


def _reset_memory(device: Any) -> None:
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - sweep needs torch anyway
        return
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sweep(
    make_model: Callable[..., Any] | str,
    make_batch: Callable[..., Any] | str | None = None,
    policies: Sequence[Any] | None = None,
    steps: int = 5,
    device: str = "cpu",
    *,
    batch_size: int | None = None,
    batch_sizes: Sequence[int] | None = None,
    loss_fn: Callable[..., Any] | str | None = None,
    blocks: str | None = None,
    warmup: int = 1,
    out_dir: str | os.PathLike[str] | None = None,
    isolation: str = "auto",
    memory_budget: str | int | None = None,
    optimizer: str = "adamw",
    threads: int | None = None,
) -> SweepResult:
    """Profile every policy on a fresh model and summarise (see module docstring).

    ``make_model()`` returns an ``nn.Module``, or ``(model, batch, loss_fn)``
    (called with ``batch_size=`` when it accepts it). ``make_batch(batch_size)``
    returns the model's input (a tensor or a tuple of positional args).
    ``loss_fn(output, batch_args)`` defaults to the output itself when scalar, else
    the mean of its squares. ``policies``: :class:`~ckprof.policies.Policy` objects or
    names (default: none, full, every_2, sqrt, selective). ``batch_sizes=(b1, b2)``
    measures two batch sizes so the max-batch estimate uses a measured slope.
    ``out_dir`` keeps the traces (default: a temporary folder, deleted after).
    ``threads`` sets torch's intra-op threads in each run (None: torch's default; in
    inline mode the setting stays in this process).
    """
    from ckprof.policies import resolve_policies

    if steps < 1:
        raise ValueError(f"steps must be >= 1, not {steps}")
    if isolation not in ("auto", "process", "inline"):
        raise ValueError(f"isolation must be auto, process or inline, not {isolation!r}")
    budget_bytes = None if memory_budget is None else parse_bytes(memory_budget)
    sizes: list[int | None] = list(dict.fromkeys(batch_sizes)) if batch_sizes else [batch_size]
    n_blocks = None
    if policies is None:  # the default set depends on the number of blocks
        n_blocks = _count_blocks({"make_model": make_model, "make_batch": make_batch, "loss_fn": loss_fn},
                                 blocks, sizes[0])
    chosen = resolve_policies(policies, n_blocks)
    portable = all(_portable(x) for x in (make_model, make_batch, loss_fn)) and all(
        p.kind != "custom" or bool(p.spec) for p in chosen
    )
    notes: list[str] = []
    if isolation == "process" and not portable:
        raise CkprofError(
            "isolation='process' needs importable factories and policies",
            hint="Pass 'module:function' strings or functions defined in a module, or use isolation='inline'",
        )
    use_process = isolation == "process" or (isolation == "auto" and portable)
    if not use_process:
        notes.append("runs shared one process (isolation inline): fresh model and gc between runs")
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ckprof-sweep-")
        root = Path(tmp.name)
    else:
        root = Path(out_dir)
        root.mkdir(parents=True, exist_ok=True)
    try:
        results = []
        for size in sizes:
            for policy in chosen:
                spec = {
                    "make_model": make_model, "make_batch": make_batch, "loss_fn": loss_fn,
                    "policy": (policy.spec or policy) if use_process else policy,
                    "batch_size": size, "steps": steps, "warmup": warmup, "device": device, "blocks": blocks,
                    "out_dir": str(root / (policy.name if size is None else f"{policy.name}-b{size}")), "optimizer": optimizer,
                    "threads": threads,
                }
                if use_process:
                    results.append(_run_in_process(spec))
                else:
                    _reset_memory(device)
                    results.append(run_policy(spec))
                    _reset_memory(device)
    finally:
        if tmp is not None:
            tmp.cleanup()
    runs = pd.DataFrame([row for r in results for row in r["runs"]], columns=list(RUN_COLUMNS))
    peaks = pd.DataFrame([r["peak"] for r in results], columns=list(PEAK_COLUMNS))
    for r in results:
        if r["recompute_detection"] not in ("markers", "none"):
            notes.append(f"{r['policy']}: recompute found by {r['recompute_detection']}, not by markers")
    if tmp is not None:
        notes.append("traces were written to a temporary folder and deleted; pass out_dir to keep them")
    return SweepResult.from_runs(
        runs, peaks,
        traces=[(r["policy"], int(r["batch_size"] or 0), r["trace"]) for r in results],
        device=device, budget_bytes=budget_bytes, notes=notes,
    )


def _count_blocks(spec: Mapping[str, Any], blocks: str | None, batch_size: int | None) -> int:
    from ckprof.policies import find_blocks

    model = _build(spec, batch_size)[0]
    n = len(find_blocks(model, blocks))
    del model
    gc.collect()
    return n


def _run_in_process(spec: Mapping[str, Any]) -> dict[str, Any]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(run_policy, dict(spec)).result()
        except BrokenProcessPool as err:
            raise CaptureError(
                f"the worker profiling policy {spec['policy']!r} died ({err})",
                hint="It may have run out of memory: try a smaller batch or fewer steps",
            ) from err


# ``ckprof.sweep`` is both this module and its function: NOTE [ Callable module ].
make_module_callable(__name__, "sweep")
