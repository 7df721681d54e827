"""The Analysis: one trace read once, every stage run once, tables on demand.

Contract::

    load(path, recompute_detection="auto", step=None, salvage=False) -> Analysis
    analyze(trace, recompute_detection="auto", step=None) -> Analysis

``Analysis`` is frozen. Its stage outputs (``phases``, ``time``, ``memory``) are the
frozen dataclasses of :mod:`ckprof.analysis.phases`, :mod:`ckprof.analysis.attribution` and
:mod:`ckprof.analysis.memory`; the ``*_table()`` methods return NEW DataFrames in
milliseconds / bytes for people and notebooks; :meth:`Analysis.to_dict` is the
machine-readable contract printed by ``ckprof analyze --format json`` (keys are
added freely, never renamed -- see README "JSON output").

Each of those tables is computed once, as a :class:`~ckprof.trace.table.Table`, by a
private method (``_totals``, ``_steps_long``, ``_steps_wide``, ``_regions``,
``_user_phases``, ``_memory_rows``) that the public method turns into a DataFrame;
:meth:`Analysis.to_dict` and the reports (:mod:`ckprof.report.tables`) read the Tables,
so analysing and rendering a trace import no pandas (NOTE [ Tables, not DataFrames,
inside the stages ] in trace/table.py). The looking-inside parts below import pandas
when they are used.

The looking-inside stages run on first use and are kept (``functools.cached_property``):
``ops`` (:mod:`ckprof.analysis.ops`: which ops each phase and region is made of),
``composition`` (:mod:`ckprof.analysis.composition`: what each memory peak is made of)
and ``gpu`` (:mod:`ckprof.analysis.gpu`: GPU busy / idle per phase), with the
accessors ``ops_table``, ``kernels_table``, ``composition_table`` and ``gpu_table``.

When ``step`` is given, only that ``ProfilerStep#N`` is reported; an unknown step
raises :class:`~ckprof.errors.NotCapturedError` naming the steps that exist. When
``variant`` is given (``on`` / ``off`` of an A/B capture, or a sweep policy), only the
steps tagged with it (and not excluded) are reported. ``Analysis.ab`` is the A/B
result (:mod:`ckprof.analysis.ab`) of a trace whose steps carry variants, else None.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ckprof.analysis.ab import ABResult, ab_result, step_variant_table
from ckprof.analysis.attribution import TimeAttribution, attribute_time
from ckprof.analysis.compiled_recompute import find_compiled_recompute
from ckprof.analysis.detection import check_recompute_detection
from ckprof.analysis.intervals import distinct, phase_index, positions
from ckprof.analysis.memory import PhaseMemory, peak_memory_by_phase
from ckprof.analysis.phases import PhaseTable, find_phases
from ckprof.errors import NotCapturedError, UsageError
from ckprof.trace.load import load_trace
from ckprof.trace.markers import PHASES
from ckprof.trace.model import Trace
from ckprof.trace.table import Table

if TYPE_CHECKING:  # the looking-inside stages import pandas: loaded on first use
    import pandas as pd

    from ckprof.analysis.composition import MemoryComposition
    from ckprof.analysis.gpu import GpuActivity
    from ckprof.analysis.ops import OpContext, OpTable

__all__ = ["Analysis", "analyze", "load"]

#: position of each phase in PHASES (report order); other names sort after them
_PHASE_RANK: dict[str, int] = {p: i for i, p in enumerate(PHASES)}

def load(
    path: str | os.PathLike[str],
    recompute_detection: str = "auto",
    step: int | None = None,
    salvage: bool = False,
    load_workers: int | None = None,
    variant: str | None = None,
) -> Analysis:
    """Read ``path`` and run every analysis stage on it."""
    trace = load_trace(path, salvage=salvage, workers=load_workers)
    return analyze(trace, recompute_detection=recompute_detection, step=step, variant=variant)


def analyze(trace: Trace, recompute_detection: str = "auto", step: int | None = None,
            variant: str | None = None) -> Analysis:
    """Run phases -> attribution -> memory on an already loaded trace."""
    check_recompute_detection(recompute_detection)
    phases = find_phases(trace, recompute_detection=recompute_detection)
    if step is not None:
        phases = _only_step(trace, phases, step)
    else:
        phases = _drop_partial_step(phases, trace)
    if variant is not None:
        phases = _only_variant(trace, phases, variant)
    return _with_phases(trace, phases, step, variant)


def _with_phases(trace: Trace, phases: PhaseTable, step: int | None,
                 variant: str | None) -> Analysis:
    """attribution -> memory on phases already found (and filtered)."""
    time = attribute_time(trace, phases)
    memory = peak_memory_by_phase(trace, phases)
    return Analysis(trace=trace, phases=phases, time=time, memory=memory, step=step, variant=variant)


def _keep_steps(trace: Trace, phases: PhaseTable, keep: set[int],
                note: str | None = None) -> PhaseTable:
    """``phases`` with only the steps in ``keep`` (steps, segments, recompute), and the
    recompute inside compiled backward graphs measured again over those steps, its notes
    replacing the whole trace's (one filter for --step, --variant and a partial step)."""
    def pick(table: Table) -> Table:
        return table.take(np.isin(table["step"], np.fromiter(keep, dtype=np.int64, count=len(keep))))

    out = dataclasses.replace(phases, steps_table=pick(phases.steps_table),
                              segments_table=pick(phases.segments_table),
                              recompute_table=pick(phases.recompute_table))
    notes = list(phases.notes)
    if phases.compiled.status != "none":  # its figures and notes for those steps only
        compiled = find_compiled_recompute(trace, out.steps_table)
        old = set(phases.compiled.notes)
        notes = [n for n in notes if n not in old] + list(compiled.notes)
        out = dataclasses.replace(out, compiled=compiled)
    if note is not None:
        notes.append(note)
    return dataclasses.replace(out, notes=tuple(notes))


def _only_variant(trace: Trace, phases: PhaseTable, variant: str) -> PhaseTable:
    tags = step_variant_table(trace, phases.steps_table)
    if len(tags) == 0:
        raise NotCapturedError(
            "the trace has no A/B variants", path=trace.path,
            hint="Capture with ckprof.capture(..., ab=True), or leave --variant out",
        )
    used = [(step, v) for step, v, excluded in tags.rows("step", "variant", "excluded")
            if not excluded]
    keep = {step for step, v in used if v == variant}
    if not keep:
        have = ", ".join(dict.fromkeys(v for _, v in used)) or "none"
        raise NotCapturedError(f"no step of variant {variant!r} (variants: {have})", path=trace.path,
                               hint="Pick one of those with --variant")
    return _keep_steps(trace, phases, keep)


def _only_step(trace: Trace, phases: PhaseTable, step: int) -> PhaseTable:
    steps = phases.steps_table["step"].tolist()
    if step not in set(steps):
        have = ", ".join(str(s) for s in steps) or "none"
        raise NotCapturedError(
            f"step {step} is not in the trace (steps: {have})",
            path=trace.path,
            hint="Pick one of those with --step, or leave --step out",
        )
    return _keep_steps(trace, phases, {step})


def _drop_partial_step(phases: PhaseTable, trace: Trace) -> PhaseTable:
    """Leave out the step a capture was still in when it stopped (metadata
    ``partial_step``, see NOTE [ Never a silent nothing ] in capture/session.py): its
    end is the stop, not the end of a training step. Kept when it is the only step."""
    partial = (trace.ckprof or {}).get("partial_step") if isinstance(trace.ckprof, dict) else None
    if not isinstance(partial, int) or isinstance(partial, bool):
        return phases
    steps = set(phases.steps_table["step"].tolist())
    if partial not in steps or len(steps) < 2:
        return phases
    note = (f"step {partial} was still running when the capture stopped: left out "
            f"(--step {partial} shows it)")
    return _keep_steps(trace, phases, steps - {partial}, note)


@dataclass(frozen=True)
class Analysis:
    """Everything ckprof knows about one trace. Build with :func:`load`."""

    trace: Trace
    phases: PhaseTable
    time: TimeAttribution
    memory: PhaseMemory
    step: int | None = None
    variant: str | None = None

    def only_variant(self, variant: str) -> Analysis:
        """The steps of one A/B variant (``on`` / ``off``, or a sweep policy), from this
        analysis's phases: like ``analyze(trace, variant=...)`` without finding the
        phases again. Raises NotCapturedError as that does."""
        return _with_phases(self.trace, _only_variant(self.trace, self.phases, variant),
                            self.step, variant)

    @functools.cached_property
    def ab(self) -> ABResult | None:
        """What checkpointing costs and buys, measured on the A/B steps of this trace
        (:mod:`ckprof.analysis.ab`); None when the steps carry no variants."""
        return ab_result(self)

    # ---- tables for people (new DataFrames every call) -------------------------
    @property
    def path(self) -> str:
        return self.trace.path

    @property
    def recompute_found_by(self) -> str:
        """The method that found the reported recompute (``none``: nothing found)."""
        return self.phases.recompute_found_by

    @property
    def recompute_detection(self) -> str:
        """Same as :attr:`recompute_found_by`; the name of the JSON key."""
        return self.phases.recompute_found_by

    @property
    def has_gpu(self) -> bool:
        return bool(self.time.has_gpu)

    @property
    def step_count(self) -> int:
        return len(self.phases.steps_table)

    @property
    def step_total_ns(self) -> int:
        """The summed length of the reported steps, ns."""
        steps = self.phases.steps_table
        return int((np.asarray(steps["end_ns"], dtype=np.int64)
                    - np.asarray(steps["start_ns"], dtype=np.int64)).sum())

    def totals_table(self) -> pd.DataFrame:
        """phase, wall_ms, gpu_ms, pct_of_step (over all reported steps)."""
        return self._totals().to_frame()

    def _totals(self) -> Table:
        """``phase`` (every one of PHASES, in order), ``wall_ms`` (0 for a phase without
        time), ``gpu_ms`` (NaN without GPU time), ``pct_of_step`` (of step_total_ns; 0
        when that is 0)."""
        t = self.time.totals_table
        wall_of = dict(zip(t["phase"].tolist(), t["wall_ns"].tolist(), strict=True))
        gpu_of = dict(zip(t["phase"].tolist(), np.asarray(t["gpu_ns"], dtype=np.float64).tolist(),
                          strict=True))
        wall_ns = np.array([wall_of.get(p, 0) for p in PHASES], dtype=np.int64)
        gpu_ns = np.array([gpu_of.get(p, math.nan) for p in PHASES], dtype=np.float64)
        step_ns = self.step_total_ns
        return Table({
            "phase": np.array(PHASES, dtype=object),
            "wall_ms": wall_ns / 1e6,
            "gpu_ms": gpu_ns / 1e6,
            "pct_of_step": (wall_ns / step_ns * 100.0) if step_ns else wall_ns * 0.0,
        })

    def steps_table(self) -> pd.DataFrame:
        """step, phase, wall_ms, gpu_ms (one row per step x phase)."""
        return self._steps_long().to_frame()

    def _steps_long(self) -> Table:
        """``step``, ``phase``, ``wall_ms``, ``gpu_ms``: one row per step x phase, in the
        order of ``time.by_step``."""
        by = self.time.by_step_table
        return Table({
            "step": np.asarray(by["step"], dtype=np.int64),
            "phase": np.asarray(by["phase"], dtype=object),  # names of PHASES (attribution)
            "wall_ms": _ms(by["wall_ns"]),
            "gpu_ms": _ms(by["gpu_ns"]),
        })

    def steps_wide(self) -> pd.DataFrame:
        """One row per step: step, step_ms and <phase>_ms columns."""
        return self._steps_wide().to_frame()

    def _steps_wide(self) -> Table:
        """``step`` (ascending), ``step_ms`` (the sum of the phases' wall ms, NaN taken
        as 0) and ``<phase>_ms`` for every phase of PHASES (NaN where the step has no
        row for it)."""
        long = self._steps_long()
        step = np.asarray(long["step"], dtype=np.int64)
        steps = distinct(step)
        col = phase_index(long["phase"])
        known = col >= 0
        grid = np.full((len(steps), len(PHASES)), np.nan)
        grid[positions(steps, step[known]), col[known]] = long["wall_ms"][known]
        return Table({
            "step": np.asarray(steps, dtype=np.int64),
            "step_ms": np.nansum(grid, axis=1),
            **{f"{p}_ms": grid[:, j].copy() for j, p in enumerate(PHASES)},
        })

    def regions_table(self) -> pd.DataFrame:
        """region, count, wall_ms, gpu_ms, forward_wall_ms (sorted by recompute time);
        NaN where unknown (gpu_ms without GPU events, forward_wall_ms without a forward
        run in the trace)."""
        return self._regions().to_frame()

    def _regions(self) -> Table:
        """The rows of :meth:`regions_table`: recompute time descending, then region."""
        r = self.time.regions_table
        wall_ms = _ms(r["wall_ns"])
        region = _str_values(r["region"])
        order = sorted(range(len(r)), key=lambda i: (-wall_ms[i], region[i]))
        return Table({
            "region": region,
            "count": np.asarray(r["count"], dtype=np.int64),
            "wall_ms": wall_ms,
            "gpu_ms": _ms(r["gpu_ns"]),
            "forward_wall_ms": _ms(r["forward_wall_ns"]),
        }).take(np.asarray(order, dtype=np.int64))

    def user_phases_table(self) -> pd.DataFrame:
        """name, phase, count, wall_ms, pct_of_step: the ``other`` time inside the user's
        own ``ckprof.phase("<name>")`` ranges (see :mod:`ckprof.analysis.user_phases`);
        no rows when the trace has none."""
        return self._user_phases().to_frame()

    def _user_phases(self) -> Table:
        """The rows of :meth:`user_phases_table` (``pct_of_step`` of step_total_ns)."""
        from ckprof.analysis.user_phases import user_phase_time

        u = user_phase_time(self.trace, self.phases)
        step_ns = self.step_total_ns
        wall_ns = np.asarray(u["wall_ns"], dtype=np.float64)
        return Table({
            "name": _str_values(u["name"]),
            "phase": _str_values(u["phase"]),
            "count": np.asarray(u["count"], dtype=np.int64),
            "wall_ms": wall_ns / 1e6,
            "pct_of_step": (wall_ns / step_ns * 100.0) if step_ns else wall_ns * 0.0,
        })

    def memory_table(self) -> pd.DataFrame:
        """phase, device, peak_bytes, step, at_op (peak of each phase over the steps)."""
        return self._memory_rows().to_frame()

    def _memory_rows(self) -> Table:
        """The rows of :meth:`memory_table`, by device, then phase in PHASES order; no
        rows (object columns) without memory peaks."""
        p = self.memory.peaks_total_table
        if len(p) == 0:
            return Table({c: np.empty(0, dtype=object)
                          for c in ("phase", "device", "peak_bytes", "step", "at_op")})
        phase = _str_values(p["phase"])
        device = _str_values(p["device"])
        order = sorted(range(len(p)),
                       key=lambda i: (device[i], _PHASE_RANK.get(phase[i], len(_PHASE_RANK))))
        return Table({
            "phase": phase,
            "device": device,
            "peak_bytes": np.asarray(p["peak_bytes"], dtype=np.int64),
            "step": np.asarray(p["step"], dtype=np.int64),
            "at_op": _str_values(p["at_op"]),
        }).take(np.asarray(order, dtype=np.int64))

    # ---- looking inside: stages computed on first use ----------------------------
    @functools.cached_property
    def op_context(self) -> OpContext:
        """Per event row: op call, self time, checkpoint region (shared by ops and
        composition)."""
        from ckprof.analysis.ops import op_context

        return op_context(self.trace)

    @functools.cached_property
    def ops(self) -> OpTable:
        """Op calls per step x phase x region (:mod:`ckprof.analysis.ops`)."""
        from ckprof.analysis.ops import ops_by_phase

        return ops_by_phase(self.trace, self.phases, self.time, self.op_context)

    @functools.cached_property
    def composition(self) -> MemoryComposition:
        """Block lifetimes and the make-up of every peak
        (:mod:`ckprof.analysis.composition`)."""
        from ckprof.analysis.composition import memory_composition

        return memory_composition(self.trace, self.phases, self.memory, self.op_context)

    @functools.cached_property
    def gpu(self) -> GpuActivity:
        """GPU busy / idle / overlap per step x phase (:mod:`ckprof.analysis.gpu`)."""
        from ckprof.analysis.gpu import gpu_activity

        return gpu_activity(self.trace, self.phases, self.time)

    def ops_table(self, phase: str = "recompute", region: str | None = None, *,
                  by_region: bool = False) -> pd.DataFrame:
        """Ops of one phase, summed over the analysed steps: ``op``, ``count``,
        ``wall_ms`` (self time, NOTE [ Op self time ]), ``gpu_ms`` (GPU events the op
        launched; NaN without GPU events), ``gpu_events``, ``pct`` (share of the wall
        time of the listed ops), largest first.

        ``region``: only that checkpointed region (recompute: the region recomputed;
        forward: the ``ckprof::checkpoint::`` range the op ran in). ``by_region``: one
        block of rows per region, with a ``region`` column and ``pct`` per region."""
        import pandas as pd

        _check_phase(phase)
        b = self.ops.by_step
        sel = b[b["phase"] == phase]
        if region is not None:
            sel = sel[sel["region"] == region]
        keys = ["region", "op"] if by_region else ["op"]
        agg = (sel.groupby(keys, sort=False)
               .agg(count=("count", "sum"), self_ns=("self_ns", "sum"),
                    gpu_ns=("gpu_ns", "sum"), gpu_events=("gpu_events", "sum"))
               .reset_index())
        if by_region:
            share = agg.groupby("region")["self_ns"].transform("sum")
        else:
            share = pd.Series(agg["self_ns"].sum(), index=agg.index)
        out = pd.DataFrame({
            **({"region": agg["region"].astype(str).to_numpy()} if by_region else {}),
            "op": agg["op"].astype(str).to_numpy(),
            "count": agg["count"].astype("int64").to_numpy(),
            "wall_ms": (agg["self_ns"].astype("float64") / 1e6).to_numpy(),
            "gpu_ms": ((agg["gpu_ns"].astype("float64") / 1e6).to_numpy() if self.has_gpu
                       else float("nan")),
            "gpu_events": agg["gpu_events"].astype("int64").to_numpy(),
            "pct": (agg["self_ns"] / share.where(share > 0) * 100.0).to_numpy(dtype="float64"),
        })
        order = (["region", "wall_ms", "gpu_ms", "op"] if by_region
                 else ["wall_ms", "gpu_ms", "op"])
        asc = [True, False, False, True] if by_region else [False, False, True]
        return out.sort_values(order, ascending=asc, kind="stable").reset_index(drop=True)

    def kernels_table(self, phase: str = "recompute", region: str | None = None) -> pd.DataFrame:
        """GPU events launched by the ops of one phase, summed over steps: ``op``,
        ``kernel``, ``count``, ``gpu_ms``, largest first (empty without GPU events)."""
        import pandas as pd

        _check_phase(phase)
        k = self.ops.kernels
        sel = k[k["phase"] == phase]
        if region is not None:
            sel = sel[sel["region"] == region]
        agg = (sel.groupby(["op", "kernel"], sort=False)
               .agg(count=("count", "sum"), gpu_ns=("gpu_ns", "sum")).reset_index())
        out = pd.DataFrame({"op": agg["op"].astype(str).to_numpy(),
                            "kernel": agg["kernel"].astype(str).to_numpy(),
                            "count": agg["count"].astype("int64").to_numpy(),
                            "gpu_ms": (agg["gpu_ns"].astype("float64") / 1e6).to_numpy()})
        return out.sort_values(["gpu_ms", "op", "kernel"], ascending=[False, True, True],
                               kind="stable").reset_index(drop=True)

    def composition_table(self, phase: str | None = None, device: str | None = None, *,
                          by: str = "origin", split_unseen: bool = False) -> pd.DataFrame:
        """What the peak of each phase (the one ``memory_table`` reports: the highest
        over the steps) is made of: ``phase``, ``device``, ``peak_bytes``, ``step``,
        ``origin`` (the phase that allocated the bytes, or ``before profiling``: blocks
        live when profiling started and still live at the peak), ``bytes``, ``pct`` of
        the peak; per peak the bytes add up to ``peak_bytes`` exactly. ``by``:
        ``origin``; ``region`` (adds ``origin_region``); ``op`` (adds ``origin_region``
        and ``op``, the allocating op). ``split_unseen``: keep the correction for frees
        the CPU profiler did not report as its own ``freed unseen`` row (negative)
        instead of netting it into ``before profiling``. Rows of 0 bytes are left out.
        Empty when the composition is not available (``self.composition.reason``)."""
        import pandas as pd

        from ckprof.analysis.composition import BEFORE, UNSEEN

        if by not in ("origin", "region", "op"):
            raise UsageError(f"unknown composition grouping {by!r}",
                             hint="Use by='origin', 'region' or 'op'")
        if phase is not None:
            _check_phase(phase)
        keys = {"origin": ["origin"], "region": ["origin", "origin_region"],
                "op": ["origin", "origin_region", "op"]}[by]
        cols = ["phase", "device", "peak_bytes", "step", *keys, "bytes", "pct"]
        comp = self.composition
        if not comp.captured or comp.at_peaks.empty:
            return pd.DataFrame({c: pd.Series([], dtype=object) for c in cols})
        tot = self.memory.peaks_total[["phase", "device", "step"]]
        sel = comp.at_peaks.merge(tot, on=["phase", "device", "step"], how="inner")
        if phase is not None:
            sel = sel[sel["phase"] == phase]
        if device is not None:
            sel = sel[sel["device"] == device]
        if not split_unseen:
            sel = sel.assign(origin=sel["origin"].where(sel["origin"] != UNSEEN, BEFORE))
        agg = (sel.groupby(["phase", "device", "peak_bytes", "step", *keys], sort=False)
               ["bytes"].sum().reset_index())
        agg = agg[agg["bytes"] != 0]
        agg["pct"] = agg["bytes"] / agg["peak_bytes"].where(agg["peak_bytes"] != 0) * 100.0
        rank = {p: i for i, p in enumerate(PHASES)}
        agg = (agg.assign(_d=agg["device"], _p=agg["phase"].map(rank))
               .sort_values(["_d", "_p"], kind="stable").drop(columns=["_d", "_p"]))
        return agg[cols].reset_index(drop=True)

    def gpu_table(self) -> pd.DataFrame:
        """GPU activity per phase over the analysed steps: ``phase``, ``wall_ms``,
        ``gpu_busy_ms`` (union of the phase's GPU events), ``gpu_sum_ms`` (their summed
        durations), ``overlap_ms``, ``kernels``, ``gpu_events``, ``idle_ms`` (GPU idle
        within the phase's wall time), ``utilization_pct``. NOTE [ GPU busy time ]."""
        import pandas as pd

        t = self.gpu.totals
        ms = lambda c: (t[c].astype("float64") / 1e6).to_numpy()  # noqa: E731
        return pd.DataFrame({
            "phase": t["phase"].astype(str).to_numpy(),
            "wall_ms": ms("wall_ns"), "gpu_busy_ms": ms("gpu_busy_ns"),
            "gpu_sum_ms": ms("gpu_sum_ns"), "overlap_ms": ms("overlap_ns"),
            "kernels": t["kernels"].astype("int64").to_numpy(),
            "gpu_events": t["gpu_events"].astype("int64").to_numpy(),
            "idle_ms": ms("idle_ns"),
            "utilization_pct": t["utilization_pct"].astype("float64").to_numpy(),
        })

    # ---- machine-readable ------------------------------------------------------
    def to_dict(self, *, ops: bool = False, composition: bool = False,
                gpu: bool = False) -> dict[str, Any]:
        """The JSON contract (README "JSON output"). Keys are never renamed.

        Added when asked for: ``ops`` (the op tables of recompute and forward, per
        region), ``memory_composition`` (what each phase's peak is made of) and
        ``gpu_activity`` (GPU busy / idle per phase; an empty list without GPU events).
        Without those it reads the Tables only and imports no pandas (nor does the
        ``ab`` key of a trace without A/B variants)."""
        has_gpu = self.has_gpu

        def phase_entry(wall_ms: float, gpu_ms: float) -> dict[str, Any]:
            return {
                "wall_ms": round(float(wall_ms), 6),
                "gpu_ms": (round(float(gpu_ms), 6) if has_gpu and not math.isnan(gpu_ms) else None),
            }

        long = self._steps_long()
        by_step: dict[int, dict[str, Any]] = {}
        for step, phase, wall_ms, gpu_ms in long.rows("step", "phase", "wall_ms", "gpu_ms"):
            by_step.setdefault(step, {"step": step})[phase] = phase_entry(wall_ms, gpu_ms)
        # each step's phases summed in row order, NaN as 0 (what a sum per step gives)
        step_of_row = np.asarray(long["step"], dtype=np.int64)
        steps = distinct(step_of_row)
        step_ms = np.zeros(len(steps), dtype=np.float64)
        np.add.at(step_ms, positions(steps, step_of_row),
                  np.nan_to_num(np.asarray(long["wall_ms"], dtype=np.float64), nan=0.0))
        steps_out = []
        for step, ms in zip(steps.tolist(), step_ms.tolist(), strict=True):
            entry = by_step[step]
            entry["step_ms"] = round(ms, 6)
            steps_out.append(entry)

        regions = [
            {
                "name": region,
                "count": int(count),
                "wall_ms": round(float(wall_ms), 6),
                "gpu_ms": (round(float(gpu_ms), 6) if has_gpu and not math.isnan(gpu_ms) else None),
                "forward_wall_ms": (None if math.isnan(forward_wall_ms)
                                    else round(float(forward_wall_ms), 6)),
            }
            for region, count, wall_ms, gpu_ms, forward_wall_ms in self._regions().rows(
                "region", "count", "wall_ms", "gpu_ms", "forward_wall_ms")
        ]
        memory = [
            {
                "phase": phase,
                "device": device,
                "peak_bytes": int(peak_bytes),
                "step": int(step),
                "at_op": at_op,
            }
            for phase, device, peak_bytes, step, at_op in self._memory_rows().rows(
                "phase", "device", "peak_bytes", "step", "at_op")
        ]
        recompute_pct = None
        if self.step_total_ns > 0:  # the recompute row's wall_ns (an np.int64) / step ns
            totals = self.time.totals_table
            recompute_wall_ns = np.asarray(totals["wall_ns"])[totals["phase"] == "recompute"][0]
            recompute_pct = round(recompute_wall_ns / self.step_total_ns * 100.0, 4)
        overhead = self.time.recompute_overhead_pct
        out: dict[str, Any] = {
            "ckprof_version": _version(),
            "trace": str(self.trace.path),
            "source_format": self.trace.source_format,
            "recompute_detection": self.recompute_detection,
            "steps_analyzed": [int(s) for s in self.phases.steps_table["step"].tolist()],
            "step_ms": round(self.step_total_ns / 1e6, 6),
            "totals": {
                phase: phase_entry(wall_ms, gpu_ms)
                for phase, wall_ms, gpu_ms in self._totals().rows("phase", "wall_ms", "gpu_ms")
            },
            "steps": steps_out,
            "regions": regions,
            "memory": memory,
            "memory_captured": bool(self.memory.captured),
            "memory_note": self.memory.reason,
            "memory_baseline_bytes": {str(k): int(v) for k, v in self.memory.baseline_bytes.items()},
            # time re-running forward / (step - that time) x 100: a LOWER BOUND of what
            # checkpointing costs; forward_rerun_pct is the same figure under its true
            # name (the old key stays; see README "JSON output")
            "recompute_overhead_pct": (None if overhead is None or math.isnan(overhead) else round(float(overhead), 4)),
            "forward_rerun_pct": (None if overhead is None or math.isnan(overhead) else round(float(overhead), 4)),
            "recompute_pct_of_step": recompute_pct,
            "has_gpu": has_gpu,
            "compiled_recompute": self.phases.compiled.to_dict(),
            "notes": list(self.notes),
            "ab": None if self.ab is None else self.ab.to_dict(),
            "user_phases": [
                {"name": name, "phase": phase, "count": int(count), "wall_ms": round(float(wall_ms), 6)}
                for name, phase, count, wall_ms in self._user_phases().rows("name", "phase", "count", "wall_ms")
            ],
        }
        if gpu:
            out["gpu_activity"] = self._gpu_records() if has_gpu else []
        if ops:
            out["ops"] = {ph: _records(self.ops_table(ph, by_region=True))
                          for ph in ("recompute", "forward")}
        if composition:
            comp = self.composition
            out["memory_composition"] = {
                "captured": bool(comp.captured), "reason": comp.reason,
                "peaks": _records(self.composition_table(by="op")),
                "notes": list(comp.notes)}
        return out

    def _gpu_records(self) -> list[dict[str, Any]]:
        return _records(self.gpu_table())

    @property
    def notes(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for note in (*self.trace.notes, *self.phases.notes, *self.time.notes, *_memory_notes(self.memory)):
            seen.setdefault(str(note), None)
        return tuple(seen)

    def _repr_html_(self) -> str:  # Jupyter
        from ckprof.report.html import summary_html

        return summary_html(self)

    def __repr__(self) -> str:
        overhead = self.time.recompute_overhead_pct
        return (
            f"<ckprof.Analysis {Path(self.trace.path).name}: {self.step_count} step(s), "
            f"{self.step_total_ns / 1e6:.3f} ms, recompute via {self.recompute_detection}, "
            f"forward re-run +{overhead:.1f}%>"
        )


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise UsageError(f"unknown phase {phase!r}", hint=f"Use one of {', '.join(PHASES)}")


def _ms(ns: np.ndarray) -> np.ndarray:
    """Nanoseconds -> milliseconds, float64 (NaN stays NaN)."""
    return np.asarray(ns, dtype=np.float64) / 1e6


def _str_values(values: np.ndarray) -> np.ndarray:
    """An object array of the values as text, as pandas' ``astype(str)`` gives them:
    str kept, missing (None, NaN) -> NaN, anything else ``str(v)``."""
    out = np.empty(len(values), dtype=object)
    out[:] = [v if isinstance(v, str)
              else (math.nan if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
              for v in values.tolist()]
    return out


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-safe rows: numpy scalars to Python, NaN to None, floats to 6 decimals."""
    out = []
    for rec in df.to_dict(orient="records"):
        row: dict[str, Any] = {}
        for k, v in rec.items():
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, float):
                v = None if math.isnan(v) or math.isinf(v) else round(v, 6)
            row[str(k)] = v
        out.append(row)
    return out


def _memory_notes(memory: PhaseMemory) -> tuple[str, ...]:
    if not memory.captured and memory.reason:
        return (f"memory not captured: {memory.reason}",)
    return tuple(getattr(memory, "notes", ()) or ())


def _version() -> str:
    from ckprof._version import __version__

    return __version__
