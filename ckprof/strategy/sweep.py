"""The sweep's result, from measured runs to a verdict (pure: no torch).

Contract::

    summarize(runs, peaks, batch_size=None, ...) -> DataFrame   one row per policy
    round_medians(runs, batch_size) -> DataFrame                policy x round medians
    distinct_pairs(table, rounds) / speed_groups(...) / format_ranking(...)
                                                                the noise-proof ranking
    noise_warnings(table) -> [str]                              "faster than none" = noise
    pareto_mask(step_ms, peak_bytes) -> bool array              the time-memory frontier
    estimate_max_batch(peaks, budget_bytes) -> DataFrame        labelled as an estimate
    estimate_throughput(runs, estimates) -> DataFrame           samples/s at that batch
    recommend(table, budget_bytes=None) -> Recommendation
    SweepResult.from_runs(runs, peaks, ...) -> SweepResult      .render(fmt), .plot(), .to_dict()

The runs themselves are measured by :mod:`ckprof.strategy.runner` (``ckprof.sweep``),
which imports torch; everything here works on their plain-data results, so the
verdict logic is tested without torch.

# NOTE [ Timing noise ]
# The step time of a policy is the MEDIAN over its measured steps; the spread is the
# interquartile range (q1..q3) and min..max over those steps. An interleaved sweep
# measures every policy in several ROUNDS (``runs.round``), so a drift of the
# machine's speed hits all policies alike and each round gives a median per policy.
# Two policies differ BEYOND NOISE only when their q1..q3 intervals do not overlap
# AND (with 2+ rounds) every round orders them like the overall medians; otherwise
# they are "within noise" of each other (``within_noise_of``). The printed ranking
# (``speed_groups``) only puts '<' between groups whose every cross pair differs
# beyond noise, so no '<' can be reversed by the noise this sweep measured. A
# checkpointing policy measuring faster than 'none' is reported as noise-dominated
# (checkpointing only adds work), with what to do (``noise_warnings``).
#
# NOTE [ Largest batch that fits (an estimate) ]
# Peak memory is modelled as ``fixed + per_sample * batch``. With two measured batch
# sizes the line goes through both measurements (method "measured slope"). With one,
# ``fixed`` is the memory live before profiling (parameters, gradients if kept,
# optimizer state, the batch) and everything above it is assumed to grow in
# proportion to the batch (method "proportional (assumed)"). The largest batch is
# ``floor((budget - fixed) / per_sample)``: an estimate, labelled as such.
#
# NOTE [ Throughput at the largest batch that fits ]
# Memory saved buys a larger batch, and a larger batch buys throughput. With step
# times measured at two batch sizes, step time is modelled as linear in the batch
# through both medians; samples/s at the largest batch that fits = max_batch /
# step_ms(max_batch). With a budget, the recommendation is the policy with the highest
# such throughput (ties: within the relative IQR of the step time), not the fastest
# step at the measured batch. With one batch size, time is assumed proportional to the
# batch (so throughput cannot favour a larger batch) and the recommendation falls back
# to the fastest policy whose measured peak fits. Every figure at the largest batch is
# an ESTIMATE, labelled as such; on a GPU the runner confirms the recommended batch by
# running it once (``SweepResult.confirmation``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ckprof.report.text import check_format, format_bytes, markdown_table, records, text_table

__all__ = [
    "Recommendation",
    "SweepResult",
    "distinct_pairs",
    "estimate_max_batch",
    "estimate_throughput",
    "format_ranking",
    "noise_warnings",
    "pareto_mask",
    "parse_bytes",
    "plot_frontier",
    "recommend",
    "render_sweep",
    "round_medians",
    "speed_groups",
    "summarize",
]

RUN_COLUMNS = ("policy", "batch_size", "step", "step_ms", "forward_ms", "backward_ms", "recompute_ms",
               "optimizer_ms", "other_ms", "round")
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


#: fewer measured steps than this per policy and no difference counts as beyond noise
MIN_STEPS_FOR_NOISE = 3


def round_medians(runs: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """Median step time per (policy, round) at ``batch_size``: one column per round
    (a single column ``0`` when the runs carry no ``round``)."""
    sel = runs[runs["batch_size"] == batch_size]
    if "round" not in sel.columns or sel["round"].isna().all():
        sel = sel.assign(round=0)
    return sel.groupby(["policy", "round"], sort=False)["step_ms"].median().unstack("round")


def _distinct(a: Any, b: Any, rounds: pd.DataFrame) -> bool:
    """True when the step-time difference of policies ``a`` and ``b`` (table rows) is
    beyond noise: both have :data:`MIN_STEPS_FOR_NOISE` steps or more, their IQRs do
    not overlap AND, with 2+ rounds, every round's medians order them the same way as
    the overall medians (NOTE [ Timing noise ])."""
    if min(int(a.steps), int(b.steps)) < MIN_STEPS_FOR_NOISE:
        return False  # too few steps to know the noise: nothing is established
    if _overlap(a.step_ms_q1, a.step_ms_q3, b.step_ms_q1, b.step_ms_q3):
        return False
    if a.policy not in rounds.index or b.policy not in rounds.index:
        return True
    ra, rb = rounds.loc[a.policy], rounds.loc[b.policy]
    both = ra.notna() & rb.notna()
    if int(both.sum()) < 2:
        return True
    sign = np.sign(a.step_ms - b.step_ms)
    return bool((np.sign((ra[both] - rb[both]).to_numpy(dtype="float64")) == sign).all())


def distinct_pairs(table: pd.DataFrame, rounds: pd.DataFrame) -> dict[tuple[str, str], bool]:
    """(policy, policy) -> whether their step-time difference is beyond noise."""
    rows = list(table.itertuples(index=False))
    out: dict[tuple[str, str], bool] = {}
    for a in rows:
        for b in rows:
            if a.policy != b.policy:
                out[(str(a.policy), str(b.policy))] = _distinct(a, b, rounds)
    return out


def speed_groups(table: pd.DataFrame, distinct: dict[tuple[str, str], bool]) -> list[list[str]]:
    """Policies fastest first, in groups: within a group the order is not established;
    EVERY policy of a group is beyond noise faster than every policy of the next ones.
    A policy within noise of any member of an earlier group merges it and every group
    after it (so no printed '<' can be reversed by noise)."""
    order = table.dropna(subset=["step_ms"]).sort_values("step_ms", kind="stable")["policy"].astype(str)
    groups: list[list[str]] = []
    for p in order:
        hit = next((i for i, g in enumerate(groups) if any(not distinct.get((p, q), True) for q in g)), None)
        if hit is None:
            groups.append([p])
        else:
            merged = [q for g in groups[hit:] for q in g] + [p]
            groups = [*groups[:hit], merged]
    return groups


def format_ranking(groups: Sequence[Sequence[str]]) -> str:
    """``none < every_2 ≈ selective < full``."""
    return " < ".join(" ≈ ".join(g) for g in groups)


def summarize(runs: pd.DataFrame, peaks: pd.DataFrame, batch_size: int | None = None,
              baseline_policy: str = "none") -> pd.DataFrame:
    """One row per policy at ``batch_size`` (default: the smallest measured).

    Columns: ``policy``, ``blocks``, ``batch_size``, ``steps``, ``step_ms`` (median),
    ``step_ms_q1``, ``step_ms_q3``, ``step_ms_min``, ``step_ms_max``, ``rounds`` (rounds
    measured), ``round_spread_pct`` (max - min of the per-round medians / median x 100;
    NaN with one round), ``recompute_ms`` (median), ``recompute_overhead_pct`` (sum
    recompute / sum(step - recompute) x 100), ``slowdown_pct`` and ``saving_pct``
    (against ``baseline_policy``; NaN without it), ``peak_bytes``, ``throughput_per_s``
    (samples per second at the median step), ``on_frontier``, ``within_noise_of``
    (policies whose difference is not beyond noise, NOTE [ Timing noise ]). Row order is
    the order policies first appear in ``runs``.
    """
    if runs.empty:
        raise ValueError("no measured steps to summarise")
    if batch_size is None:
        batch_size = int(runs["batch_size"].min())
    sel = runs[runs["batch_size"] == batch_size]
    order = list(dict.fromkeys(sel["policy"].tolist()))
    rounds = round_medians(runs, batch_size)
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
        per_round = rounds.loc[policy].dropna() if policy in rounds.index else pd.Series(dtype="float64")
        spread = (float(per_round.max() - per_round.min()) / float(med) * 100.0
                  if len(per_round) >= 2 and med > 0 else math.nan)
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
                "rounds": len(per_round),
                "round_spread_pct": spread,
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
    distinct = distinct_pairs(table, rounds)
    table["within_noise_of"] = [
        ", ".join(str(o.policy) for o in table.itertuples(index=False)
                  if o.policy != r.policy and not distinct[(str(r.policy), str(o.policy))])
        for r in table.itertuples(index=False)
    ]
    cols = ["policy", "blocks", "batch_size", "steps", "step_ms", "step_ms_q1", "step_ms_q3", "step_ms_min",
            "step_ms_max", "rounds", "round_spread_pct", "recompute_ms", "recompute_overhead_pct",
            "slowdown_pct", "peak_bytes", "saving_pct", "throughput_per_s", "on_frontier", "within_noise_of"]
    return table[cols]


def noise_warnings(table: pd.DataFrame, baseline_policy: str = "none", threads: int | None = None) -> list[str]:
    """Sentences for checkpointing policies that measured FASTER than ``baseline_policy``:
    checkpointing only adds work, so such a difference says the measurement is
    dominated by noise, and what to do about it."""
    base = table[table["policy"] == baseline_policy]
    if base.empty:
        return []
    b = base.iloc[0]
    faster = table[(table["policy"] != baseline_policy) & (table["step_ms"] < b["step_ms"])]
    if faster.empty:
        return []
    what = ", ".join(f"{r.policy} ({(r.step_ms - b.step_ms) / b.step_ms * 100:+.1f}%)"
                     for r in faster.itertuples(index=False))
    todo = ["more steps and rounds (--steps 20 --rounds 5)"]
    if threads != 1:
        todo.append("--threads 1")
    todo.append("a quieter machine (no other jobs on its cores)")
    return [
        f"{what} measured faster than {baseline_policy}. Checkpointing adds work (it re-runs forward), so "
        f"this measurement is dominated by noise, not by the policies: rerun with {', '.join(todo)}."
    ]


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


THROUGHPUT_COLUMNS = ("policy", "time_method", "step_ms_at_max_est", "samples_per_s_at_max_est",
                      "throughput_rel_spread")


def estimate_throughput(runs: pd.DataFrame, estimates: pd.DataFrame) -> pd.DataFrame:
    """Per policy, the step time and samples per second at ``max_batch_est`` -- an
    ESTIMATE (NOTE [ Throughput at the largest batch that fits ]).

    ``time_method``: ``measured at batch b1 and b2 (linear)`` or ``proportional
    (assumed)`` with one measured batch size; ``throughput_rel_spread``: the relative
    IQR of the step time at the largest measured batch (the estimate's noise)."""
    rows = []
    for r in estimates.itertuples(index=False):
        sel = runs[runs["policy"] == r.policy]
        med = sel.groupby("batch_size")["step_ms"].median().sort_index()
        step_at = samples = spread = math.nan
        method = "no step measured"
        if len(med):
            b_hi = med.index[-1]
            hi = sel[sel["batch_size"] == b_hi]["step_ms"].to_numpy(dtype="float64")
            q1, q3 = np.percentile(hi, [25, 75])
            spread = float((q3 - q1) / med.iloc[-1]) if med.iloc[-1] > 0 else math.nan
            b = float(r.max_batch_est)
            if len(med) >= 2:
                b1, b2 = float(med.index[0]), float(med.index[-1])
                t1, t2 = float(med.iloc[0]), float(med.iloc[-1])
                slope = (t2 - t1) / (b2 - b1)
                method = f"measured at batch {int(b1)} and {int(b2)} (linear)"
                if slope < 0:  # a step cannot get faster with more samples: noise
                    slope = 0.0
                    method += "; it did not grow with the batch (noise?), taken as flat"
                if not math.isnan(b):
                    step_at = t1 + slope * (b - b1)
            else:
                method = "proportional (assumed)"
                if not math.isnan(b):
                    step_at = float(med.iloc[0]) * b / float(med.index[0])
            if not math.isnan(step_at) and step_at > 0 and b >= 1:
                samples = b / (step_at / 1e3)
            else:
                step_at = math.nan
        rows.append({"policy": r.policy, "time_method": method, "step_ms_at_max_est": step_at,
                     "samples_per_s_at_max_est": samples, "throughput_rel_spread": spread})
    return pd.DataFrame(rows, columns=list(THROUGHPUT_COLUMNS))


@dataclass(frozen=True)
class Recommendation:
    """What to use. ``policy`` is None when no budget was given (see ``frontier``) or
    when nothing fits. ``ties`` are fitting policies within noise of ``policy``.
    ``batch_size`` / ``samples_per_s``: the (estimated) largest batch that fits and the
    throughput there, when the recommendation is by throughput (``by`` = ``throughput``;
    ``step_time`` when it compares step times at the measured batch)."""

    policy: str | None
    budget_bytes: int | None
    text: str
    frontier: tuple[str, ...]
    ties: tuple[str, ...] = ()
    fits: tuple[str, ...] = ()
    by: str = "step_time"
    batch_size: int | None = None
    samples_per_s: float | None = None


def recommend(table: pd.DataFrame, budget_bytes: int | None = None) -> Recommendation:
    """With a budget and step times measured at two batch sizes: the policy with the
    highest (estimated) samples per second at the largest batch that fits (NOTE
    [ Throughput at the largest batch that fits ]). With a budget and one batch size:
    the fastest (median step) policy whose measured peak fits. Without a budget: the
    frontier from fastest to leanest."""
    front = table[table["on_frontier"]].sort_values(["step_ms", "peak_bytes"], kind="stable")
    frontier = tuple(front["policy"].astype(str))
    if budget_bytes is None:
        parts = [f"{r.policy} ({r.step_ms:,.1f} ms, {format_bytes(r.peak_bytes)})" for r in front.itertuples(index=False)]
        text = (
            "No memory budget given. Pareto frontier, fastest first: " + "; ".join(parts)
            + ". Use the first one that fits your memory (--memory-budget picks it)."
        ) if parts else "No memory budget given, and no policy has both a step time and a peak memory."
        return Recommendation(None, None, text, frontier)
    if "time_method" in table.columns and table["time_method"].astype(str).str.startswith("measured").any():
        by_throughput = _recommend_by_throughput(table, int(budget_bytes), frontier)
        if by_throughput is not None:
            return by_throughput
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
    if "within_noise_of" in fits.columns:
        noisy = set(str(best.within_noise_of).split(", ")) - {""}
        ties = tuple(str(r.policy) for r in fits.iloc[1:].itertuples(index=False) if str(r.policy) in noisy)
    else:
        ties = tuple(str(r.policy) for r in fits.iloc[1:].itertuples(index=False)
                     if _overlap(best.step_ms_q1, best.step_ms_q3, r.step_ms_q1, r.step_ms_q3))
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


def _recommend_by_throughput(table: pd.DataFrame, budget_bytes: int,
                             frontier: tuple[str, ...]) -> Recommendation | None:
    ok = table[(table["max_batch_est"] >= 1) & table["samples_per_s_at_max_est"].notna()]
    if ok.empty:
        return None
    ok = ok.sort_values(["samples_per_s_at_max_est", "peak_bytes"], ascending=[False, True], kind="stable")
    best = ok.iloc[0]
    ties = []
    for r in ok.iloc[1:].itertuples(index=False):
        noise = max(float(best.throughput_rel_spread or 0.0), float(r.throughput_rel_spread or 0.0))
        if (best.samples_per_s_at_max_est - r.samples_per_s_at_max_est) / best.samples_per_s_at_max_est <= noise:
            ties.append(str(r.policy))
    batch = int(best.max_batch_est)
    text = (
        f"Use {best.policy} at batch {batch} (estimate): about {best.samples_per_s_at_max_est:,.1f} samples/s "
        f"(estimate), the highest throughput at the largest batch that fits {format_bytes(budget_bytes)}."
    )
    others = [f"{r.policy} at batch {int(r.max_batch_est)}: {r.samples_per_s_at_max_est:,.1f}"
              for r in ok.iloc[1:4].itertuples(index=False)]
    if others:
        text += " Others (samples/s, estimates): " + "; ".join(others) + "."
    if ties:
        text += f" Within noise of it: {', '.join(ties)} (the throughput difference may not be real)."
    text += (f" Estimates extrapolate peak memory and step time from the measured batch sizes "
             f"({best.method}; step time {best.time_method}).")
    return Recommendation(str(best.policy), budget_bytes, text, frontier, tuple(ties),
                          tuple(ok["policy"].astype(str)), by="throughput", batch_size=batch,
                          samples_per_s=float(best.samples_per_s_at_max_est))


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
    with :func:`estimate_max_batch` and :func:`estimate_throughput`;
    ``recommendation``: :func:`recommend`; ``ranking``: :func:`format_ranking` of
    :func:`speed_groups` (only '<' that noise cannot reverse); ``warnings``:
    :func:`noise_warnings`; ``traces``: (label, batch_size, path) of every trace
    written (label = ``round<r>`` for an interleaved sweep, the policy otherwise);
    ``threads``: torch intra-op threads the runs used (None: not pinned);
    ``schedule``: how steps were ordered, in words; ``aliases``: policy -> the
    requested policies that checkpoint exactly the same and were measured as it;
    ``failed``: policies that ran out of memory (``policy``, ``batch_size``,
    ``error``); ``confirmation``: the recommended batch run once (GPU), or None.
    """

    table: pd.DataFrame
    runs: pd.DataFrame
    peaks: pd.DataFrame
    recommendation: Recommendation
    traces: tuple[tuple[str, int, str], ...]
    device: str
    budget_bytes: int | None = None
    notes: tuple[str, ...] = field(default=())
    ranking: str = ""
    warnings: tuple[str, ...] = field(default=())
    threads: int | None = None
    schedule: str = ""
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    failed: tuple[Mapping[str, Any], ...] = field(default=())
    confirmation: Mapping[str, Any] | None = None
    #: "a < b" for every pair whose difference is beyond noise (a faster), fastest first
    beyond_noise: tuple[str, ...] = field(default=())

    @classmethod
    def from_runs(cls, runs: pd.DataFrame, peaks: pd.DataFrame, *, traces: Sequence[tuple[str, int, str]] = (),
                  device: str = "cpu", budget_bytes: int | None = None, notes: Sequence[str] = (),
                  threads: int | None = None, schedule: str = "",
                  aliases: Mapping[str, Sequence[str]] | None = None,
                  failed: Sequence[Mapping[str, Any]] = ()) -> SweepResult:
        """Build every derived table from measured ``runs`` and ``peaks`` (pure)."""
        if "round" not in runs.columns:
            runs = runs.assign(round=0)
        table = summarize(runs, peaks)
        est = estimate_max_batch(peaks, budget_bytes)
        table = table.merge(est, on="policy", how="left")
        table = table.merge(estimate_throughput(runs, est), on="policy", how="left")
        alias_map = {str(k): tuple(str(x) for x in v) for k, v in (aliases or {}).items() if v}
        table["same_as"] = [", ".join(alias_map.get(str(p), ())) for p in table["policy"]]
        rec = recommend(table, budget_bytes)
        rounds = round_medians(runs, int(table["batch_size"].iloc[0]))
        distinct = distinct_pairs(table, rounds)
        ranking = format_ranking(speed_groups(table, distinct))
        speed = table.set_index("policy")["step_ms"]
        order = list(table.sort_values("step_ms", kind="stable")["policy"].astype(str))
        beyond = tuple(f"{a} < {b}" for i, a in enumerate(order) for b in order[i + 1:]
                       if distinct.get((a, b)) and speed[a] < speed[b])
        all_notes = list(notes)
        if table["peak_bytes"].isna().any():
            all_notes.append("peak memory missing for some policies (not captured): they are off the frontier")
        largest = float(runs["batch_size"].max()) if len(runs) else math.nan
        far = table[table["max_batch_est"] > 16 * largest]
        if len(far):
            all_notes.append(
                "largest batch estimates " + ", ".join(f"{r.policy} {int(r.max_batch_est):,}" for r in far.itertuples())
                + f" are more than 16x the largest measured batch ({int(largest)}): far extrapolations; "
                "measure a batch size nearer to them")
        for policy, same in alias_map.items():
            all_notes.append(f"{', '.join(same)} checkpoint{'s' if len(same) == 1 else ''} exactly the blocks "
                             f"{policy} does: measured once, shown as {policy}")
        return cls(table=table, runs=runs, peaks=peaks, recommendation=rec, traces=tuple(traces),
                   device=device, budget_bytes=budget_bytes, notes=tuple(dict.fromkeys(all_notes)),
                   ranking=ranking, warnings=tuple(noise_warnings(table, threads=threads)),
                   threads=threads, schedule=schedule, aliases=alias_map, failed=tuple(failed),
                   beyond_noise=beyond)

    def with_budget(self, budget: str | int | None) -> SweepResult:
        """The same measurements judged against another memory budget."""
        budget_bytes = None if budget is None else parse_bytes(budget)
        return SweepResult.from_runs(self.runs, self.peaks, traces=self.traces, device=self.device,
                                     budget_bytes=budget_bytes, notes=self.notes, threads=self.threads,
                                     schedule=self.schedule, aliases=self.aliases, failed=self.failed)

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
            "ranking": self.ranking,
            "warnings": list(self.warnings),
            "threads": self.threads,
            "schedule": self.schedule,
            "aliases": {k: list(v) for k, v in self.aliases.items()},
            "failed": [dict(f) for f in self.failed],
            "confirmation": None if self.confirmation is None else dict(self.confirmation),
            "beyond_noise": list(self.beyond_noise),
        }


def _f(x: Any, spec: str = ",.1f", suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:{spec}}{suffix}"


def _spread(r: Any) -> str:
    """IQR as ± half-width relative to the median."""
    if not r.step_ms or math.isnan(r.step_ms):
        return "—"
    return f"±{(r.step_ms_q3 - r.step_ms_q1) / 2 / r.step_ms * 100:.1f}%"


WIDTH = 100


def _wrap(text: str, indent: str = "", first: str = "") -> list[str]:
    return textwrap.wrap(text, width=WIDTH, initial_indent=first or indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False) or [first.rstrip()]


def render_sweep(result: SweepResult, fmt: str = "table") -> str:
    """``table`` | ``markdown`` | ``json`` | ``csv`` rendering of a sweep. The text table
    fits in 100 columns; json/csv carry every column."""
    import json

    if fmt == "json":
        return json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        return result.table.to_csv(index=False, lineterminator="\n")
    check_format(fmt)
    t = result.table
    batch = int(t["batch_size"].iloc[0])
    headers = ["policy", "step ms", "IQR", "rounds", "vs none", "recompute", "peak", "saving", "samples/s"]
    rows = []
    for r in t.itertuples(index=False):
        name = str(r.policy) + (f"={r.same_as}" if getattr(r, "same_as", "") else "")
        if len(name) > 20:
            name = name[:19] + "…"
        rows.append([
            name, _f(r.step_ms), _spread(r),
            _f(r.round_spread_pct, ".1f", "%") if r.rounds >= 2 else "—",
            "—" if r.policy == "none" else _f(r.slowdown_pct, "+.1f", "%"),
            _f(r.recompute_overhead_pct, ".1f", "%"),
            format_bytes(r.peak_bytes), "—" if r.policy == "none" else _f(r.saving_pct, ".1f", "%"),
            _f(r.throughput_per_s)])
    blocks_line = "blocks checkpointed: " + "; ".join(
        f"{r.policy} {r.blocks}" for r in t.itertuples(index=False) if r.blocks)
    steps = int(t["steps"].max())
    intro = [f"ckprof sweep · device {result.device} · batch {batch} · {steps} measured step(s) per policy"]
    if result.schedule:
        intro += _wrap(result.schedule, "  ", "schedule: ")
    if result.threads is not None:
        intro.append(f"threads: torch pinned to {result.threads} intra-op thread(s) for every policy "
                     "(--threads N to change)")
    intro += _wrap("step ms: median over steps; IQR: its spread (± half the interquartile range); rounds: "
                   "spread of the per-round medians; vs none / saving: against 'none'; recompute: share "
                   "of the step spent re-running forward", "  ")
    if result.budget_bytes is not None:
        intro.append(f"memory budget: {format_bytes(result.budget_bytes)} ({result.budget_bytes:,} bytes)")
    budget_rows: list[list[str]] = []
    if result.budget_bytes is not None:
        for r in t.itertuples(index=False):
            budget_rows.append([str(r.policy), "yes" if r.peak_bytes <= result.budget_bytes else "no",
                                _f(r.max_batch_est, ".0f"), _f(r.step_ms_at_max_est),
                                _f(r.samples_per_s_at_max_est)])
    budget_head = ["policy", f"fits at {batch}", "max batch (est.)", "step ms (est.)", "samples/s (est.)"]
    rec = result.recommendation
    verdict = []
    if result.ranking:
        verdict.append("Speed, fastest first ('<' holds beyond the spread and in every round; '≈': within "
                       "noise): " + result.ranking)
        if result.beyond_noise and "≈" in result.ranking:
            verdict.append("Pairs that differ beyond noise: " + ", ".join(result.beyond_noise))
        elif not result.beyond_noise and len(t) > 1:
            verdict.append("No step-time difference is beyond noise: measure more steps and rounds "
                           "(--steps, --rounds) to rank the policies")
    verdict += list(result.warnings)
    for f in result.failed:
        verdict.append(f"{f.get('policy')} at batch {f.get('batch_size')} does not fit: it ran out of memory "
                       f"({str(f.get('error', ''))[:100]}); left out of later rounds")
    conf = _confirmation_text(result.confirmation)
    if fmt == "markdown":
        md_rows = [[*row[:1], str(r.blocks), *row[1:]] for row, r in zip(rows, t.itertuples(index=False), strict=True)]
        lines = ["### ckprof sweep", "", *(i + "  " for i in intro), "",
                 *markdown_table([headers[0], "blocks", *headers[1:]], md_rows)]
        if budget_rows:
            lines += ["", *markdown_table(budget_head, budget_rows)]
            lines += ["", "max batch, step ms and samples/s at that batch are ESTIMATES ("
                      + "; ".join(dict.fromkeys(t["method"].astype(str))) + ")"]
        lines += ["", *(f"- {v}" for v in verdict), "", "**Recommendation.** " + rec.text]
        if conf:
            lines += ["", conf]
    else:
        lines = [*intro, "", *text_table(headers, rows, "l" + "r" * 8), *_wrap(blocks_line, "    ", "  ")]
        if budget_rows:
            lines += ["", *text_table(budget_head, budget_rows, "l" + "r" * 4)]
            lines += _wrap("max batch, step ms and samples/s at it are ESTIMATES: "
                           + "; ".join(dict.fromkeys(t["method"].astype(str))) + "; step time "
                           + "; ".join(dict.fromkeys(t["time_method"].astype(str))), "  ", "  ")
        lines.append("")
        for v in verdict:
            lines += _wrap(v, "  ", "- ")
        lines += ["", *_wrap(rec.text, "  ", "Recommendation: ")]
        if conf:
            lines += _wrap(conf, "  ")
    if result.notes:
        lines += ["", "Notes"]
        for n in result.notes:
            lines += _wrap(n, "    ", "  - ")
    return "\n".join(lines) + "\n"


def _confirmation_text(conf: Mapping[str, Any] | None) -> str:
    if not conf:
        return ""
    if conf.get("status") == "skipped":
        return (f"Not run to confirm: {conf.get('policy')} at batch {conf.get('requested_batch_size')} "
                f"{conf.get('reason', '')}.")
    if conf.get("status") == "confirmed":
        return (f"Confirmed by running it: {conf.get('policy')} at batch {conf.get('batch_size')} ran "
                f"(measured peak {format_bytes(conf.get('peak_bytes'))}, {_f(conf.get('samples_per_s'))} samples/s).")
    return (f"Not confirmed: {conf.get('policy')} at batch {conf.get('requested_batch_size')} "
            f"{conf.get('reason', 'did not fit')}"
            + (f"; batch {conf.get('batch_size')} does (measured peak {format_bytes(conf.get('peak_bytes'))}, "
               f"{_f(conf.get('samples_per_s'))} samples/s)." if conf.get("batch_size") else "."))
