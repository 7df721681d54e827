"""Render an :class:`~ckprof.analysis.Analysis` as text, JSON, CSV or Markdown.

Pure functions from an Analysis to a string; nothing here prints or writes files.
The four formats read the Analysis's Tables (``_totals()``, ``_steps_wide()`` ...), not
its DataFrames, so rendering imports no pandas (NOTE [ Tables, not DataFrames, inside
the stages ] in trace/table.py); only the looking-inside sections (:mod:`ckprof.report.inside`)
and an A/B trace's section use DataFrames. The text form is for people on a terminal; JSON is the
stable contract for scripts (see README); CSV is one tidy table (one row per
figure, a ``table`` column says which); Markdown is for issues and PRs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import TYPE_CHECKING

import numpy as np

from ckprof.report.text import (
    FORMATS,
    MISSING,
    check_format,
    format_bytes,
    format_ms,
    format_pct,
    markdown_table,
    text_table,
)
from ckprof.trace.markers import PHASES

if TYPE_CHECKING:
    from ckprof.analysis import Analysis

__all__ = ["FORMATS", "format_bytes", "render", "render_csv", "render_json", "render_markdown", "render_text"]

def render(analysis: Analysis, fmt: str = "table", *, ops: bool = False,
           composition: bool = False, gpu: bool = False) -> str:
    """Dispatch on ``fmt`` (one of :data:`FORMATS`). ``ops`` / ``composition`` / ``gpu``
    add the looking-inside sections (:mod:`ckprof.report.inside`): the op tables, what
    each memory peak is made of, GPU busy / idle per phase."""
    inside = {"ops": ops, "composition": composition, "gpu": gpu}
    if fmt == "table":
        return _with_inside(render_text(analysis), analysis, "table", **inside)
    if fmt == "json":
        return render_json(analysis, **inside)
    if fmt == "csv":
        return render_csv(analysis, **inside)
    check_format(fmt)
    return _with_inside(render_markdown(analysis), analysis, "markdown", **inside)


def _with_inside(text: str, analysis: Analysis, fmt: str, *, ops: bool, composition: bool,
                 gpu: bool) -> str:
    """The rendered report with the asked-for looking-inside sections appended."""
    from ckprof.report import inside

    lines: list[str] = []
    if gpu:
        lines += inside.gpu_lines(analysis, fmt)
    if ops:
        lines += inside.ops_lines(analysis, fmt)
    if composition:
        lines += inside.composition_lines(analysis, fmt)
    return text + ("\n".join(lines) + "\n" if lines else "")


def _rerun(pct: float | None) -> str:
    return format_pct(pct) if format_pct(pct) == MISSING else "+" + format_pct(pct)


def _headline(analysis: Analysis) -> list[str]:
    from ckprof._version import __version__

    steps = [int(x) for x in analysis.phases.steps_table["step"].tolist()]
    n = len(steps)
    mean = analysis.step_total_ns / 1e6 / n if n else 0.0
    parts = [
        f"{n} step(s) analysed ({', '.join(str(s) for s in steps)})",
        f"{mean:,.3f} ms per step",
        f"forward re-run {_rerun(analysis.time.recompute_overhead_pct)} of the rest of the "
        "step (lower bound of checkpointing's cost)",
    ]
    return [
        f"ckprof {__version__} · {analysis.trace.path}",
        " · ".join(parts),
        f"recompute found by: {analysis.recompute_found_by}"
        + ("" if analysis.has_gpu else " · no GPU kernels in trace (GPU ms: —)"),
    ]


def _ab_lines(analysis: Analysis, fmt: str) -> list[str]:
    """The A/B section (what checkpointing costs and buys, measured) when the trace has
    variant-tagged steps; nothing otherwise."""
    ab = analysis.ab
    if ab is None:
        return []
    from ckprof.report.ab import ab_markdown_lines, ab_text_lines

    lines = ab_markdown_lines(ab) if fmt == "markdown" else ab_text_lines(ab)
    if analysis.variant is None:
        tip = ("the tables below cover the steps of every variant; "
               "--variant on (or off) analyses one of them alone")
        lines.append(f"  ({tip})" if fmt == "table" else f"_({tip})_")
    return lines


# NOTE [ One content, four formats ]
# Text, Markdown and CSV carry the same content: headline (steps, step time, recompute
# overhead, how recompute was found), time by phase with the user's own phases as rows
# inside ``other`` and the step sum, the per-step table, recompute per region with its
# first-run forward time, peak memory per phase and device with how the levels were
# measured, and the notes. The row builders below are shared; JSON is Analysis.to_dict.
# (Text and Markdown show the per-step table for 2..20 steps; CSV always has every step.)


def _totals_rows(analysis: Analysis, indent: str = "  ") -> list[list[str]]:
    """phase, wall ms, % of step, GPU ms; user phases (``indent`` + name) under
    ``other``; the sum."""
    totals = analysis._totals()
    user = analysis._user_phases()
    rows: list[list[str]] = []
    for phase, wall_ms, pct, gpu_ms in totals.rows("phase", "wall_ms", "pct_of_step", "gpu_ms"):
        rows.append([phase, format_ms(wall_ms), format_pct(pct), format_ms(gpu_ms)])
        if phase == "other":
            rows += [[f"{indent}{name}", format_ms(u_wall_ms), format_pct(u_pct), ""]
                     for name, u_wall_ms, u_pct in user.rows("name", "wall_ms", "pct_of_step")]
    step_ms = float(np.nansum(totals["wall_ms"]))
    gpu_ms = totals["gpu_ms"]
    gpu_total = np.nansum(gpu_ms) if (~np.isnan(gpu_ms)).any() else math.nan
    rows.append(["step (sum)", format_ms(step_ms), format_pct(100.0 if step_ms else None), format_ms(gpu_total)])
    return rows


_TOTALS_HEAD = ["phase", "wall ms", "% of step", "GPU ms"]
_STEPS_HEAD = ["step", "step ms", *PHASES]
_REGIONS_HEAD = ["region", "count", "recompute ms", "GPU ms", "first-run fwd ms"]
_MEMORY_HEAD = ["phase", "peak", "bytes", "step", "at op"]


def _steps_rows(analysis: Analysis) -> list[list[str]]:
    """Per-step wall ms, shown when there are 2..20 steps (else [])."""
    if not 1 < analysis.step_count <= 20:
        return []
    wide = analysis._steps_wide()
    return [[str(int(step)), format_ms(step_ms), *(format_ms(ms) for ms in phase_ms)]
            for step, step_ms, *phase_ms in wide.rows("step", "step_ms", *(f"{p}_ms" for p in PHASES))]


def _region_rows(analysis: Analysis) -> list[list[str]]:
    return [[region, str(count), format_ms(wall_ms), format_ms(gpu_ms),
             format_ms(forward_wall_ms) if forward_wall_ms else "—"]
            for region, count, wall_ms, gpu_ms, forward_wall_ms in analysis._regions().rows(
                "region", "count", "wall_ms", "gpu_ms", "forward_wall_ms")]


def _memory_how(analysis: Analysis, device: str) -> str:
    """How a device's levels were measured (absolute with a baseline, counter, relative)."""
    base = analysis.memory.baseline_bytes.get(device)
    if base and device == "cpu":
        return f"absolute: includes {format_bytes(base)} live before profiling (ckprof baseline)"
    if analysis.memory.absolute.get(device, False):
        return "absolute (allocator counter)"
    return "relative to profiling start (no baseline recorded)"


def _memory_sections(analysis: Analysis) -> list[tuple[str, str, list[list[str]]]]:
    """(device, how, rows) per device, devices sorted."""
    by_device: dict[str, list[list[str]]] = {}
    for phase, device, peak_bytes, step, at_op in analysis._memory_rows().rows(
            "phase", "device", "peak_bytes", "step", "at_op"):
        by_device.setdefault(device, []).append(
            [phase, format_bytes(peak_bytes), f"{int(peak_bytes):,}", str(int(step)), at_op or "—"])
    return [(str(device), _memory_how(analysis, str(device)), by_device[device])
            for device in sorted(by_device)]


def render_text(analysis: Analysis) -> str:
    lines = _headline(analysis)
    lines += _ab_lines(analysis, "table")
    lines += ["", "Time by phase (all analysed steps)"]
    lines += text_table(_TOTALS_HEAD, _totals_rows(analysis), "lrrr")

    steps = _steps_rows(analysis)
    if steps:
        lines += ["", "Per step (wall ms)"]
        lines += text_table(_STEPS_HEAD, steps, "l" + "r" * (len(_STEPS_HEAD) - 1))

    lines += ["", "Recompute by checkpointed region"]
    regions = _region_rows(analysis)
    if not regions:
        lines.append("  (no recompute found: " + _no_recompute_reason(analysis) + ")")
    else:
        lines += text_table(_REGIONS_HEAD, regions, "lrrrr")

    lines += ["", "Peak memory by phase"]
    if not analysis.memory.captured:
        lines.append(f"  not captured: {analysis.memory.reason}")
    else:
        for device, how, rows in _memory_sections(analysis):
            lines.append(f"  {device}: {how}")
            lines += text_table(_MEMORY_HEAD, rows, "lrrrl")
    notes = _notes(analysis)
    if notes:
        lines += ["", "Notes"]
        lines += [f"  - {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _notes(analysis: Analysis) -> tuple[str, ...]:
    """The notes every format prints; the memory-not-captured reason is already said in
    the memory section, so it is not repeated as a note."""
    if analysis.memory.captured:
        return analysis.notes
    said = f"memory not captured: {analysis.memory.reason}"
    return tuple(n for n in analysis.notes if n != said)


def _no_recompute_reason(analysis: Analysis) -> str:
    if analysis.recompute_found_by == "none":
        return "no checkpointed regions were recomputed in these steps"
    return f"method {analysis.recompute_found_by} found none"


def render_json(analysis: Analysis, *, ops: bool = False, composition: bool = False,
                gpu: bool = False) -> str:
    data = analysis.to_dict(ops=ops, composition=composition, gpu=gpu)
    return json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"


CSV_COLUMNS = ["table", "step", "phase", "region", "device", "count", "wall_ms", "gpu_ms", "peak_bytes", "at_op",
               "forward_wall_ms", "pct_of_step", "step_ms", "user_phase", "metric", "value", "note"]


def render_csv(analysis: Analysis, *, ops: bool = False, composition: bool = False,
               gpu: bool = False) -> str:
    """One tidy table; ``table`` says what a row is: ``summary`` (``metric`` / ``value``:
    steps analysed, step ms, recompute overhead %, how recompute was found, has GPU),
    ``total`` (per phase, with ``pct_of_step``), ``user_phase`` (a ``ckprof.phase``
    range's share of ``other``), ``step`` (per step x phase, with the step's ``step_ms``),
    ``region`` (with ``forward_wall_ms``), ``memory`` (``note`` says how the device's
    levels were measured), ``note``. Every figure of the text table is in it. The
    looking-inside options add ``op`` | ``composition`` | ``gpu`` rows and the columns of
    :data:`ckprof.report.inside.INSIDE_CSV_COLUMNS`; an A/B trace appends a ``variant``
    column: step rows carry their variant, ``ab`` / ``ab_memory`` rows the per-variant
    figures."""
    from ckprof.report.inside import INSIDE_CSV_COLUMNS, csv_rows

    extra = ops or composition or gpu
    ab = analysis.ab
    columns = [*CSV_COLUMNS, *(INSIDE_CSV_COLUMNS if extra else ()),
               *(["variant"] if ab is not None else [])]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    width = len(columns)
    variant_of: dict[int, str] = {} if ab is None else {
        int(r.step): str(r.variant) for r in ab.steps.itertuples(index=False) if not r.excluded}

    def num(x: float | None) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6f}"

    def row(**cells: object) -> None:
        w.writerow([cells.get(c, "") for c in columns][:width])

    steps = [int(x) for x in analysis.phases.steps_table["step"].tolist()]
    n = len(steps)
    overhead = analysis.time.recompute_overhead_pct
    row(table="summary", metric="steps_analyzed", value=" ".join(map(str, steps)))
    row(table="summary", metric="step_ms_mean", value=num(analysis.step_total_ns / 1e6 / n if n else None))
    row(table="summary", metric="recompute_overhead_pct", value=num(overhead))
    row(table="summary", metric="recompute_found_by", value=analysis.recompute_found_by)
    row(table="summary", metric="has_gpu", value=str(bool(analysis.has_gpu)).lower())
    for phase, wall_ms, gpu_ms, pct in analysis._totals().rows("phase", "wall_ms", "gpu_ms", "pct_of_step"):
        row(table="total", phase=phase, wall_ms=num(wall_ms), gpu_ms=num(gpu_ms), pct_of_step=num(pct))
    for name, phase, count, wall_ms, pct in analysis._user_phases().rows(
            "name", "phase", "count", "wall_ms", "pct_of_step"):
        row(table="user_phase", phase=phase, user_phase=name, count=count,
            wall_ms=num(wall_ms), pct_of_step=num(pct))
    step_ms = dict(analysis._steps_wide().rows("step", "step_ms"))
    for step, phase, wall_ms, gpu_ms in analysis._steps_long().rows("step", "phase", "wall_ms", "gpu_ms"):
        row(table="step", step=step, phase=phase, wall_ms=num(wall_ms), gpu_ms=num(gpu_ms),
            step_ms=num(step_ms.get(step)), variant=variant_of.get(step, ""))
    for region, count, wall_ms, gpu_ms, forward_wall_ms in analysis._regions().rows(
            "region", "count", "wall_ms", "gpu_ms", "forward_wall_ms"):
        row(table="region", phase="recompute", region=region, count=count, wall_ms=num(wall_ms),
            gpu_ms=num(gpu_ms), forward_wall_ms=num(forward_wall_ms))
    how = {d: h for d, h, _ in _memory_sections(analysis)} if analysis.memory.captured else {}
    for phase, device, peak_bytes, step, at_op in analysis._memory_rows().rows(
            "phase", "device", "peak_bytes", "step", "at_op"):
        row(table="memory", step=step, phase=phase, device=device, peak_bytes=peak_bytes,
            at_op=at_op, note=how.get(device, ""))
    if not analysis.memory.captured:
        row(table="memory", note=f"not captured: {analysis.memory.reason}")
    base = CSV_COLUMNS[:10]  # the positional cells of the inside and A/B rows
    if extra:
        inside_cols = list(INSIDE_CSV_COLUMNS)
        for cells in csv_rows(analysis, ops=ops, composition=composition, gpu=gpu):
            row(**dict(zip(base + inside_cols, cells, strict=True)))
    if ab is not None:
        for r in ab.variants.itertuples(index=False):
            row(**dict(zip(base, ["ab", "", "step", "", ab.device, int(r.steps),
                                  num(float(r.step_ms)), "",
                                  "" if math.isnan(r.peak_bytes) else int(r.peak_bytes), ""],
                           strict=True)), variant=r.variant)
            for p in PHASES:
                row(**dict(zip(base, ["ab", "", p, "", "", int(r.steps),
                                      num(float(getattr(r, f"{p}_ms"))), "", "", ""], strict=True)),
                    variant=r.variant)
        for r in ab.memory.itertuples(index=False):
            row(**dict(zip(base, ["ab_memory", "", r.phase, "", r.device, "", "", "",
                                  int(r.peak_bytes), ""], strict=True)), variant=r.variant)
    for note in _notes(analysis):
        row(table="note", note=note)
    return buf.getvalue()


def render_markdown(analysis: Analysis) -> str:
    head = _headline(analysis)
    lines = [f"### {head[0]}", "", head[1] + "  ", head[2], *_ab_lines(analysis, "markdown"), "",
             "#### Time by phase", ""]
    lines += markdown_table(_TOTALS_HEAD, _totals_rows(analysis, indent="↳ "))
    steps = _steps_rows(analysis)
    if steps:
        lines += ["", "#### Per step (wall ms)", ""]
        lines += markdown_table(_STEPS_HEAD, steps)
    lines += ["", "#### Recompute by checkpointed region", ""]
    regions = _region_rows(analysis)
    if not regions:
        lines.append("No recompute found: " + _no_recompute_reason(analysis) + ".")
    else:
        lines += markdown_table(_REGIONS_HEAD, regions)
    lines += ["", "#### Peak memory by phase", ""]
    if not analysis.memory.captured:
        lines.append(f"Not captured: {analysis.memory.reason}")
    else:
        for device, how, rows in _memory_sections(analysis):
            lines += [f"{device}: {how}", ""]
            lines += markdown_table(_MEMORY_HEAD, rows)
            lines.append("")
        lines.pop()
    notes = _notes(analysis)
    if notes:
        lines += ["", "#### Notes", ""]
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
