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

When ``step`` is given, only that ``ProfilerStep#N`` is reported; an unknown step
raises :class:`~ckprof.errors.NotCapturedError` naming the steps that exist.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ckprof.analysis.attribution import TimeAttribution, attribute_time
from ckprof.analysis.detection import check_recompute_detection
from ckprof.analysis.memory import PhaseMemory, peak_memory_by_phase
from ckprof.analysis.phases import PhaseTable, find_phases
from ckprof.errors import NotCapturedError
from ckprof.trace.load import load_trace
from ckprof.trace.markers import PHASES
from ckprof.trace.model import Trace

__all__ = ["Analysis", "analyze", "load"]

def load(
    path: str | os.PathLike[str],
    recompute_detection: str = "auto",
    step: int | None = None,
    salvage: bool = False,
    load_workers: int | None = None,
) -> Analysis:
    """Read ``path`` and run every analysis stage on it."""
    trace = load_trace(path, salvage=salvage, workers=load_workers)
    return analyze(trace, recompute_detection=recompute_detection, step=step)


def analyze(trace: Trace, recompute_detection: str = "auto", step: int | None = None) -> Analysis:
    """Run phases -> attribution -> memory on an already loaded trace."""
    check_recompute_detection(recompute_detection)
    phases = find_phases(trace, recompute_detection=recompute_detection)
    if step is not None:
        phases = _only_step(phases, step, trace.path)
    else:
        phases = _drop_partial_step(phases, trace)
    time = attribute_time(trace, phases)
    memory = peak_memory_by_phase(trace, phases)
    return Analysis(trace=trace, phases=phases, time=time, memory=memory, step=step)


def _only_step(phases: PhaseTable, step: int, path: str) -> PhaseTable:
    steps = phases.steps
    if step not in set(steps["step"].tolist()):
        have = ", ".join(str(s) for s in steps["step"].tolist()) or "none"
        raise NotCapturedError(
            f"step {step} is not in the trace (steps: {have})",
            path=path,
            hint="Pick one of those with --step, or leave --step out",
        )
    keep = lambda df: df[df["step"] == step].reset_index(drop=True)  # noqa: E731
    return dataclasses.replace(
        phases,
        steps=keep(phases.steps),
        segments=keep(phases.segments),
        recompute=keep(phases.recompute),
    )


def _drop_partial_step(phases: PhaseTable, trace: Trace) -> PhaseTable:
    """Leave out the step a capture was still in when it stopped (metadata
    ``partial_step``, see NOTE [ Never a silent nothing ] in capture/session.py): its
    end is the stop, not the end of a training step. Kept when it is the only step."""
    partial = (trace.ckprof or {}).get("partial_step") if isinstance(trace.ckprof, dict) else None
    if not isinstance(partial, int) or isinstance(partial, bool):
        return phases
    steps = phases.steps["step"]
    if partial not in set(steps.tolist()) or len(steps) < 2:
        return phases
    keep = lambda df: df[df["step"] != partial].reset_index(drop=True)  # noqa: E731
    note = (f"step {partial} was still running when the capture stopped: left out "
            f"(--step {partial} shows it)")
    return dataclasses.replace(
        phases,
        steps=keep(phases.steps),
        segments=keep(phases.segments),
        recompute=keep(phases.recompute),
        notes=(*phases.notes, note),
    )


@dataclass(frozen=True)
class Analysis:
    """Everything ckprof knows about one trace. Build with :func:`load`."""

    trace: Trace
    phases: PhaseTable
    time: TimeAttribution
    memory: PhaseMemory
    step: int | None = None

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
        return len(self.phases.steps)

    @property
    def step_total_ns(self) -> int:
        steps = self.phases.steps
        return int((steps["end_ns"] - steps["start_ns"]).sum())

    def totals_table(self) -> pd.DataFrame:
        """phase, wall_ms, gpu_ms, pct_of_step (over all reported steps)."""
        totals = self.time.totals.set_index("phase").reindex(list(PHASES))
        step_ns = self.step_total_ns
        wall = totals["wall_ns"].fillna(0).astype("int64")
        out = pd.DataFrame(
            {
                "phase": list(PHASES),
                "wall_ms": (wall / 1e6).to_numpy(),
                "gpu_ms": (totals["gpu_ns"].astype("float64") / 1e6).to_numpy(),
                "pct_of_step": ((wall / step_ns * 100.0) if step_ns else wall * 0.0).to_numpy(),
            }
        )
        return out

    def steps_table(self) -> pd.DataFrame:
        """step, phase, wall_ms, gpu_ms (one row per step x phase)."""
        by = self.time.by_step
        return pd.DataFrame(
            {
                "step": by["step"].astype("int64").to_numpy(),
                "phase": by["phase"].astype(str).to_numpy(),
                "wall_ms": (by["wall_ns"].astype("float64") / 1e6).to_numpy(),
                "gpu_ms": (by["gpu_ns"].astype("float64") / 1e6).to_numpy(),
            }
        )

    def steps_wide(self) -> pd.DataFrame:
        """One row per step: step, step_ms and <phase>_ms columns."""
        long = self.steps_table()
        wide = long.pivot(index="step", columns="phase", values="wall_ms").reindex(
            columns=list(PHASES)
        )
        wide.columns = [f"{c}_ms" for c in wide.columns]
        wide.insert(0, "step_ms", wide.sum(axis=1))
        return wide.reset_index()

    def regions_table(self) -> pd.DataFrame:
        """region, count, wall_ms, gpu_ms, forward_wall_ms (sorted by recompute time)."""
        r = self.time.regions
        out = pd.DataFrame(
            {
                "region": r["region"].astype(str).to_numpy(),
                "count": r["count"].astype("int64").to_numpy(),
                "wall_ms": (r["wall_ns"].astype("float64") / 1e6).to_numpy(),
                "gpu_ms": (r["gpu_ns"].astype("float64") / 1e6).to_numpy(),
                "forward_wall_ms": (r["forward_wall_ns"].astype("float64") / 1e6).to_numpy(),
            }
        )
        return out.sort_values(["wall_ms", "region"], ascending=[False, True], kind="stable").reset_index(drop=True)

    def user_phases_table(self) -> pd.DataFrame:
        """name, phase, count, wall_ms, pct_of_step: the ``other`` time inside the user's
        own ``ckprof.phase("<name>")`` ranges (see :mod:`ckprof.analysis.user_phases`);
        no rows when the trace has none."""
        from ckprof.analysis.user_phases import user_phase_time

        u = user_phase_time(self.trace, self.phases)
        step_ns = self.step_total_ns
        wall = u["wall_ns"].astype("float64")
        return pd.DataFrame({
            "name": u["name"].astype(str).to_numpy(),
            "phase": u["phase"].astype(str).to_numpy(),
            "count": u["count"].astype("int64").to_numpy(),
            "wall_ms": (wall / 1e6).to_numpy(),
            "pct_of_step": ((wall / step_ns * 100.0) if step_ns else wall * 0.0).to_numpy(),
        })

    def memory_table(self) -> pd.DataFrame:
        """phase, device, peak_bytes, step, at_op (peak of each phase over the steps)."""
        p = self.memory.peaks_total
        if p.empty:
            return pd.DataFrame(columns=["phase", "device", "peak_bytes", "step", "at_op"])
        order = {ph: i for i, ph in enumerate(PHASES)}
        out = pd.DataFrame(
            {
                "phase": p["phase"].astype(str).to_numpy(),
                "device": p["device"].astype(str).to_numpy(),
                "peak_bytes": p["peak_bytes"].astype("int64").to_numpy(),
                "step": p["step"].astype("int64").to_numpy(),
                "at_op": p["at_op"].astype(str).to_numpy(),
            }
        )
        out = out.assign(_o=out["phase"].map(order)).sort_values(["device", "_o"], kind="stable")
        return out.drop(columns="_o").reset_index(drop=True)

    # ---- machine-readable ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON contract (README "JSON output"). Keys are never renamed."""
        totals = self.totals_table()
        steps_long = self.steps_table()
        has_gpu = self.has_gpu

        def phase_entry(wall_ms: float, gpu_ms: float) -> dict[str, Any]:
            return {
                "wall_ms": round(float(wall_ms), 6),
                "gpu_ms": (round(float(gpu_ms), 6) if has_gpu and not math.isnan(gpu_ms) else None),
            }

        steps_out = []
        for step, grp in steps_long.groupby("step", sort=True):
            entry: dict[str, Any] = {"step": int(step)}
            for row in grp.itertuples(index=False):
                entry[row.phase] = phase_entry(row.wall_ms, row.gpu_ms)
            entry["step_ms"] = round(float(grp["wall_ms"].sum()), 6)
            steps_out.append(entry)

        regions = [
            {
                "name": row.region,
                "count": int(row.count),
                "wall_ms": round(float(row.wall_ms), 6),
                "gpu_ms": (round(float(row.gpu_ms), 6) if has_gpu and not math.isnan(row.gpu_ms) else None),
                "forward_wall_ms": round(float(row.forward_wall_ms), 6),
            }
            for row in self.regions_table().itertuples(index=False)
        ]
        memory = [
            {
                "phase": row.phase,
                "device": row.device,
                "peak_bytes": int(row.peak_bytes),
                "step": int(row.step),
                "at_op": row.at_op,
            }
            for row in self.memory_table().itertuples(index=False)
        ]
        overhead = self.time.recompute_overhead_pct
        return {
            "ckprof_version": _version(),
            "trace": str(self.trace.path),
            "source_format": self.trace.source_format,
            "recompute_detection": self.recompute_detection,
            "steps_analyzed": [int(s) for s in self.phases.steps["step"].tolist()],
            "step_ms": round(self.step_total_ns / 1e6, 6),
            "totals": {
                row.phase: phase_entry(row.wall_ms, row.gpu_ms) for row in totals.itertuples(index=False)
            },
            "steps": steps_out,
            "regions": regions,
            "memory": memory,
            "memory_captured": bool(self.memory.captured),
            "memory_note": self.memory.reason,
            "memory_baseline_bytes": {str(k): int(v) for k, v in self.memory.baseline_bytes.items()},
            "recompute_overhead_pct": (None if overhead is None or math.isnan(overhead) else round(float(overhead), 4)),
            "has_gpu": has_gpu,
            "notes": list(self.notes),
            "user_phases": [
                {"name": row.name, "phase": row.phase, "count": int(row.count),
                 "wall_ms": round(float(row.wall_ms), 6)}
                for row in self.user_phases_table().itertuples(index=False)
            ],
        }

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
            f"overhead {overhead:.1f}%>"
        )


def _memory_notes(memory: PhaseMemory) -> tuple[str, ...]:
    if not memory.captured and memory.reason:
        return (f"memory not captured: {memory.reason}",)
    return tuple(getattr(memory, "notes", ()) or ())


def _version() -> str:
    from ckprof._version import __version__

    return __version__
