"""Stage 4: the A/B steps of one trace -> what checkpointing costs and buys, measured.

Contract::

    step_variants(trace, steps) -> DataFrame          step, variant, excluded
    step_variant_table(trace, steps) -> Table         the same as a Table (no pandas)
    ab_from_tables(variants, steps_wide, peaks, ...) -> ABResult | None   (pure tables)
    ab_result(analysis) -> ABResult | None            None when the trace has no A/B

A trace has A/B when its capture tagged steps with variants: ``capture(ab=True)``
(variants ``on`` = checkpointing as the model does it, ``off`` = the checkpointed
callables called directly; see capture/ab.py) or ``Capture.tag_step`` (a sweep's
policies). The variant of a step comes from the capture metadata (``ab.steps``) and,
without metadata, from the ``ckprof::variant::<name>`` range inside the step; a step
holding a ``ckprof::variant::oom`` range (or listed in ``ab.excluded``) is excluded.

:class:`ABResult`:

- ``steps``: ``step``, ``variant``, ``excluded``, ``step_ms``, ``<phase>_ms`` for every
  phase, ``peak_bytes`` (the step's peak on ``device``; NaN without memory).
- ``variants``: one row per variant (order of first appearance; excluded steps left
  out): ``variant``, ``steps``, ``step_ms`` (median), ``step_ms_q1``, ``step_ms_q3``,
  ``step_ms_min``, ``step_ms_max``, ``<phase>_ms`` (medians), ``peak_bytes`` (max over
  its steps on ``device``).
- ``memory``: ``variant``, ``phase``, ``device``, ``peak_bytes`` (max over its steps).
- ``diff``: :class:`ABDiff` of ``candidate`` (``on``) against ``baseline`` (``off``),
  or None (a variant missing, e.g. every "off" step ran out of memory).
- ``oom``: what the capture recorded about out-of-memory "off" steps; ``baseline_fits``
  False after one ("without checkpointing this step does not fit").

A trace without variants is answered without pandas (:func:`step_variant_table` is
empty, :func:`ab_result` returns None); the tables of an A/B result are DataFrames,
pandas imported where they are built.

# NOTE [ A/B figures ]
# cost_pct = (median step "on" - median step "off") / median step "off" x 100: the
# measured price of checkpointing in this run. saving_bytes = peak "off" - peak "on"
# on ``device`` (max over phases and steps of each variant). recompute_pct = median
# recompute time of the "on" steps / median step "off" x 100: the part of the cost
# that is re-running forward, on the same scale as cost_pct (the rest is checkpoint
# bookkeeping, saved-tensor hooks, lost overlap, or noise); recompute_share_pct =
# recompute / cost x 100 when the cost is positive. within_noise: the two variants'
# step-time interquartile ranges overlap (as in the sweep, NOTE [ Timing noise ] in
# strategy/sweep.py): the sign of the difference is then not established.
# The profiler costs a little per op and "on" steps run more ops, so the cost under the
# profiler reads a few points dear; ``unprofiled_cost_pct`` is the same ratio on the
# capture's wait steps (alternated too, timed by the wall clock, metadata
# ``ab.unprofiled``), given when each variant has 2+ such steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ckprof.analysis.intervals import kind_mask, mask_names, name_codes, step_of
from ckprof.trace.markers import AB_OFF, AB_ON, OOM_VARIANT, PHASES, VARIANT_PREFIX
from ckprof.trace.model import Trace
from ckprof.trace.table import Table

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ckprof.analysis.bundle import Analysis

__all__ = ["ABDiff", "ABResult", "ab_from_tables", "ab_result", "main_device", "step_variant_table",
           "step_variants"]


def _meta_ab(trace: Trace) -> Mapping[str, Any] | None:
    meta = trace.ckprof if isinstance(trace.ckprof, Mapping) else None
    ab = meta.get("ab") if meta else None
    return ab if isinstance(ab, Mapping) else None


def _from_ranges(trace: Trace, steps: Table | pd.DataFrame) -> dict[int, tuple[str, bool]]:
    """step -> (variant, has an oom range) from ``ckprof::variant::`` ranges."""
    ev = trace.event_table
    if len(ev) == 0 or len(steps) == 0:
        return {}
    codes, cats = name_codes(ev)
    rows = np.flatnonzero(mask_names(codes, cats, VARIANT_PREFIX,
                                     among=kind_mask(ev, "user_annotation", "cpu_op")))
    if len(rows) == 0:
        return {}
    in_step = step_of(np.asarray(ev["ts_ns"], dtype=np.int64)[rows], steps)
    out: dict[int, tuple[str, bool]] = {}
    for step, name in zip(in_step.tolist(), cats[codes[rows]].tolist(), strict=True):
        if step < 0:
            continue  # outside every step
        variant = name[len(VARIANT_PREFIX):]
        have, oom = out.get(step, ("", False))
        if variant == OOM_VARIANT:
            out[step] = (have, True)
        elif not have:
            out[step] = (variant, oom)
    return out


def step_variant_table(trace: Trace, steps: Table | pd.DataFrame) -> Table:
    """``step`` (int64), ``variant`` (object array of str), ``excluded`` (bool) for the
    steps of ``steps`` (a Table or DataFrame with a ``step`` column) that carry a
    variant, by step; no rows when none does. See the module docstring for the sources."""
    meta = _meta_ab(trace)
    known = set(np.asarray(steps["step"], dtype=np.int64).tolist())
    rows: dict[int, tuple[str, bool]] = {}
    if meta is not None and isinstance(meta.get("steps"), Mapping):
        excluded = {int(s) for s in meta.get("excluded") or [] if str(s).lstrip("-").isdigit()}
        for key, variant in meta["steps"].items():
            if str(key).lstrip("-").isdigit() and int(key) in known and isinstance(variant, str):
                rows[int(key)] = (variant, int(key) in excluded)
    if not rows:
        rows = _from_ranges(trace, steps)
    order = sorted(rows)
    return Table({
        "step": np.asarray(order, dtype=np.int64),
        "variant": np.array([rows[s][0] for s in order], dtype=object),
        "excluded": np.array([bool(rows[s][1]) or not rows[s][0] for s in order], dtype=bool),
    })


def step_variants(trace: Trace, steps: Table | pd.DataFrame) -> pd.DataFrame:
    """:func:`step_variant_table` as a DataFrame (empty frame when no step carries a
    variant)."""
    return step_variant_table(trace, steps).to_frame()


def main_device(devices: Sequence[str]) -> str:
    """The device whose memory the A/B saving is about: the first CUDA device, else CPU."""
    gpus = sorted(d for d in devices if not str(d).startswith("cpu"))
    return gpus[0] if gpus else "cpu"


@dataclass(frozen=True)
class ABDiff:
    """``candidate`` (checkpointing on) against ``baseline`` (off); NOTE [ A/B figures ]."""

    baseline: str
    candidate: str
    baseline_step_ms: float
    candidate_step_ms: float
    cost_ms: float
    cost_pct: float
    within_noise: bool
    recompute_ms: float
    recompute_pct: float
    recompute_share_pct: float
    baseline_peak_bytes: float
    candidate_peak_bytes: float
    saving_bytes: float
    saving_pct: float
    phase_diff_ms: Mapping[str, float] = field(default_factory=dict)
    #: the same cost on the capture's unprofiled (wait) steps, timed by the wall clock;
    #: NaN / 0 steps when the capture had too few wait steps (NOTE [ A/B figures ])
    unprofiled_cost_pct: float = math.nan
    unprofiled_baseline_ms: float = math.nan
    unprofiled_candidate_ms: float = math.nan
    unprofiled_steps: tuple[int, int] = (0, 0)
    unprofiled_within_noise: bool | None = None


@dataclass(frozen=True)
class ABResult:
    """Per-variant step time, phases and peak memory of one trace, and their difference."""

    mode: str
    steps: pd.DataFrame
    variants: pd.DataFrame
    memory: pd.DataFrame
    device: str
    baseline: str | None
    candidate: str | None
    diff: ABDiff | None
    oom: tuple[Mapping[str, Any], ...] = ()
    baseline_fits: bool = True
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None); the ``ab`` key of ``ckprof analyze --format json``."""

        def clean(v: Any) -> Any:
            if isinstance(v, (float, np.floating)):
                return None if math.isnan(float(v)) or math.isinf(float(v)) else round(float(v), 6)
            if isinstance(v, (np.integer,)):
                return int(v)
            if isinstance(v, (np.bool_,)):
                return bool(v)
            return v

        def recs(df: pd.DataFrame) -> list[dict[str, Any]]:
            return [{str(k): clean(v) for k, v in r.items()} for r in df.to_dict(orient="records")]

        diff = None
        if self.diff is not None:
            d = self.diff
            diff = {k: clean(getattr(d, k)) for k in (
                "baseline", "candidate", "baseline_step_ms", "candidate_step_ms", "cost_ms", "cost_pct",
                "within_noise", "recompute_ms", "recompute_pct", "recompute_share_pct",
                "baseline_peak_bytes", "candidate_peak_bytes", "saving_bytes", "saving_pct",
                "unprofiled_cost_pct", "unprofiled_baseline_ms", "unprofiled_candidate_ms",
                "unprofiled_within_noise")}
            diff["unprofiled_steps"] = list(d.unprofiled_steps)
            diff["phase_diff_ms"] = {k: clean(v) for k, v in d.phase_diff_ms.items()}
        return {
            "mode": self.mode,
            "device": self.device,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "baseline_fits": self.baseline_fits,
            "variants": recs(self.variants),
            "steps": recs(self.steps),
            "memory": recs(self.memory),
            "diff": diff,
            "oom": [dict(o) for o in self.oom],
            "notes": list(self.notes),
        }


def _quantiles(x: np.ndarray) -> tuple[float, float, float]:
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return float(q1), float(med), float(q3)


def ab_from_tables(
    variants: pd.DataFrame,
    steps_wide: pd.DataFrame,
    peaks: pd.DataFrame,
    *,
    mode: str = "checkpointing",
    baseline: str | None = AB_OFF,
    candidate: str | None = AB_ON,
    oom: Sequence[Mapping[str, Any]] = (),
    baseline_fits: bool = True,
    unprofiled: Sequence[Any] = (),
) -> ABResult | None:
    """The A/B result from plain tables (pure; :func:`ab_result` feeds it an Analysis).

    ``variants``: :func:`step_variants`; ``steps_wide``: ``step``, ``step_ms``,
    ``<phase>_ms`` (``Analysis.steps_wide()``); ``peaks``: per step x phase x device
    (``PhaseMemory.peaks``: ``step``, ``phase``, ``device``, ``peak_bytes``)."""
    if variants.empty:
        return None
    import pandas as pd

    notes: list[str] = []
    device = main_device(peaks["device"].astype(str).unique().tolist()) if len(peaks) else "cpu"
    dev_peaks = peaks[peaks["device"].astype(str) == device] if len(peaks) else peaks
    step_peak = (dev_peaks.groupby("step")["peak_bytes"].max().astype("float64")
                 if len(dev_peaks) else pd.Series(dtype="float64"))
    phase_cols = [f"{p}_ms" for p in PHASES]
    wide = steps_wide.reindex(columns=["step", "step_ms", *phase_cols])
    steps = variants.merge(wide, on="step", how="left")
    steps["peak_bytes"] = steps["step"].map(step_peak).astype("float64")
    steps = steps.reset_index(drop=True)
    used = steps[~steps["excluded"] & steps["step_ms"].notna()]
    rows = []
    for variant in dict.fromkeys(used["variant"].tolist()):
        grp = used[used["variant"] == variant]
        x = grp["step_ms"].to_numpy(dtype="float64")
        q1, med, q3 = _quantiles(x)
        row: dict[str, Any] = {"variant": variant, "steps": len(x), "step_ms": med, "step_ms_q1": q1,
                               "step_ms_q3": q3, "step_ms_min": float(x.min()), "step_ms_max": float(x.max())}
        for col in phase_cols:
            row[col] = float(np.median(grp[col].to_numpy(dtype="float64")))
        row["peak_bytes"] = float(grp["peak_bytes"].max()) if grp["peak_bytes"].notna().any() else math.nan
        rows.append(row)
        if len(x) < 3:
            notes.append(f"variant {variant!r} has {len(x)} step(s): its spread (IQR) says little; "
                         "capture more active steps")
    table = pd.DataFrame(rows, columns=["variant", "steps", "step_ms", "step_ms_q1", "step_ms_q3",
                                        "step_ms_min", "step_ms_max", *phase_cols, "peak_bytes"])
    mem_rows = []
    if len(peaks):
        joined = peaks.merge(used[["step", "variant"]], on="step", how="inner")
        for (variant, phase, dev), grp in joined.groupby(["variant", "phase", "device"], sort=False):
            mem_rows.append({"variant": variant, "phase": phase, "device": dev,
                             "peak_bytes": int(grp["peak_bytes"].max())})
    memory = pd.DataFrame(mem_rows, columns=["variant", "phase", "device", "peak_bytes"])
    if len(memory):
        order = {p: i for i, p in enumerate(PHASES)}
        vorder = {v: i for i, v in enumerate(table["variant"])}
        memory = (memory.assign(_v=memory["variant"].map(vorder), _p=memory["phase"].map(order))
                  .sort_values(["_v", "device", "_p"], kind="stable").drop(columns=["_v", "_p"])
                  .reset_index(drop=True))
    have = set(table["variant"])
    diff = None
    if baseline in have and candidate in have:
        diff = _diff(table, baseline, candidate)
        extra = _unprofiled(unprofiled, baseline, candidate)
        if extra:
            import dataclasses

            diff = dataclasses.replace(diff, **extra)
        elif mode == "checkpointing":
            notes.append("no unprofiled A/B steps: the cost is measured under the profiler, which weighs a "
                         "little more on the 'on' steps; capture with wait=8 or more to time steps without it")
        if mode == "checkpointing" and diff.recompute_ms == 0:
            notes.append("the 'on' steps recomputed nothing: no checkpoint call was switched (torch.compile'd "
                         "regions, or checkpointing outside ckprof.checkpoint / torch.utils.checkpoint?)")
    elif mode == "checkpointing":
        missing = [v for v in (baseline, candidate) if v not in have]
        notes.append(f"no usable {' / '.join(str(m) for m in missing)} step: no A/B difference")
    return ABResult(mode=mode, steps=steps, variants=table, memory=memory, device=device,
                    baseline=baseline, candidate=candidate, diff=diff, oom=tuple(oom),
                    baseline_fits=bool(baseline_fits), notes=tuple(notes))


def _unprofiled(rows: Sequence[Any], baseline: str, candidate: str) -> dict[str, Any]:
    """The unprofiled cost from [step, variant, ms] rows (empty dict: not enough)."""
    times: dict[str, list[float]] = {baseline: [], candidate: []}
    for row in rows:
        if isinstance(row, (list, tuple)) and len(row) == 3 and row[1] in times:
            try:
                times[str(row[1])].append(float(row[2]))
            except (TypeError, ValueError):
                continue
    b, c = np.asarray(times[baseline]), np.asarray(times[candidate])
    if len(b) < 2 or len(c) < 2:
        return {}
    bq1, bmed, bq3 = _quantiles(b)
    cq1, cmed, cq3 = _quantiles(c)
    return {"unprofiled_cost_pct": (cmed - bmed) / bmed * 100.0 if bmed > 0 else math.nan,
            "unprofiled_baseline_ms": bmed, "unprofiled_candidate_ms": cmed,
            "unprofiled_steps": (len(c), len(b)),
            "unprofiled_within_noise": bool(bq1 <= cq3 and cq1 <= bq3)}


def _diff(table: pd.DataFrame, baseline: str, candidate: str) -> ABDiff:
    b = table[table["variant"] == baseline].iloc[0]
    c = table[table["variant"] == candidate].iloc[0]
    cost = float(c["step_ms"] - b["step_ms"])
    base_ms = float(b["step_ms"])
    pct = (lambda v: v / base_ms * 100.0) if base_ms > 0 else (lambda v: math.nan)
    recompute = float(c["recompute_ms"])
    saving = float(b["peak_bytes"] - c["peak_bytes"])
    return ABDiff(
        baseline=baseline,
        candidate=candidate,
        baseline_step_ms=base_ms,
        candidate_step_ms=float(c["step_ms"]),
        cost_ms=cost,
        cost_pct=pct(cost),
        within_noise=bool(b["step_ms_q1"] <= c["step_ms_q3"] and c["step_ms_q1"] <= b["step_ms_q3"]),
        recompute_ms=recompute,
        recompute_pct=pct(recompute),
        recompute_share_pct=recompute / cost * 100.0 if cost > 0 else math.nan,
        baseline_peak_bytes=float(b["peak_bytes"]),
        candidate_peak_bytes=float(c["peak_bytes"]),
        saving_bytes=saving,
        saving_pct=saving / float(b["peak_bytes"]) * 100.0 if float(b["peak_bytes"]) > 0 else math.nan,
        phase_diff_ms={p: float(c[f"{p}_ms"] - b[f"{p}_ms"]) for p in PHASES},
    )


def ab_result(analysis: Analysis) -> ABResult | None:
    """The A/B result of an analysis, or None when its trace carries no variants."""
    trace = analysis.trace
    tags = step_variant_table(trace, analysis.phases.steps_table)
    if len(tags) == 0:
        return None
    import pandas as pd  # an A/B trace: its tables are DataFrames

    variants = tags.to_frame()
    meta = _meta_ab(trace) or {}
    mode = str(meta.get("mode") or "")
    if not mode:
        mode = "checkpointing" if set(variants["variant"]) <= {AB_ON, AB_OFF} else "tagged"
    checkpointing = mode == "checkpointing"
    oom = tuple(o for o in meta.get("oom") or [] if isinstance(o, Mapping))
    if "off_fits" in meta:
        fits = bool(meta["off_fits"])
    else:  # no metadata: an excluded step carries a ckprof::variant::oom range
        fits = not (checkpointing and bool(variants["excluded"].any()))
    peaks = analysis.memory.peaks if analysis.memory.captured else pd.DataFrame(
        columns=["step", "phase", "device", "peak_bytes"])
    result = ab_from_tables(
        variants, analysis.steps_wide(), peaks, mode=mode,
        baseline=AB_OFF if checkpointing else meta.get("baseline"),
        candidate=AB_ON if checkpointing else meta.get("candidate"),
        oom=oom, baseline_fits=fits, unprofiled=list(meta.get("unprofiled") or []),
    )
    if result is not None and not analysis.memory.captured:
        import dataclasses

        result = dataclasses.replace(result, notes=(*result.notes, "memory was not captured: no saving"))
    return result
