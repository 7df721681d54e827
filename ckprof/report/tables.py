"""Render an :class:`~ckprof.analysis.Analysis` as text, JSON, CSV or Markdown.

Pure functions from an Analysis (or its DataFrames) to a string; nothing here
prints or writes files. The text form is for people on a terminal; JSON is the
stable contract for scripts (see README); CSV is one tidy table (one row per
figure, a ``table`` column says which); Markdown is for issues and PRs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import TYPE_CHECKING

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

    steps = [int(x) for x in analysis.phases.steps["step"].tolist()]
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


def render_text(analysis: Analysis) -> str:
    lines = _headline(analysis)
    lines += _ab_lines(analysis, "table")
    totals = analysis.totals_table()
    rows = [
        [r.phase, format_ms(r.wall_ms), format_pct(r.pct_of_step), format_ms(r.gpu_ms)]
        for r in totals.itertuples(index=False)
    ]
    step_ms = float(totals["wall_ms"].sum())
    gpu_total = totals["gpu_ms"].sum(min_count=1)
    rows.append(["step (sum)", format_ms(step_ms), format_pct(100.0 if step_ms else None), format_ms(gpu_total)])
    lines += ["", "Time by phase (all analysed steps)"]
    lines += text_table(["phase", "wall ms", "% of step", "GPU ms"], rows, "lrrr")

    wide = analysis.steps_wide()
    if 1 < len(wide) <= 20:
        lines += ["", "Per step (wall ms)"]
        headers = ["step", "step ms", *PHASES]
        rows = [
            [str(int(r["step"])), format_ms(r["step_ms"]), *(format_ms(r[f"{p}_ms"]) for p in PHASES)]
            for _, r in wide.iterrows()
        ]
        lines += text_table(headers, rows, "l" + "r" * (len(headers) - 1))

    regions = analysis.regions_table()
    lines += ["", "Recompute by checkpointed region"]
    if regions.empty:
        lines.append("  (no recompute found: " + _no_recompute_reason(analysis) + ")")
    else:
        rows = [
            [r.region, str(r.count), format_ms(r.wall_ms), format_ms(r.gpu_ms), format_ms(r.forward_wall_ms)]
            for r in regions.itertuples(index=False)
        ]
        lines += text_table(["region", "count", "recompute ms", "GPU ms", "first-run fwd ms"], rows, "lrrrr")

    mem = analysis.memory_table()
    lines += ["", "Peak memory by phase"]
    if not analysis.memory.captured:
        lines.append(f"  not captured: {analysis.memory.reason}")
    else:
        baseline = analysis.memory.baseline_bytes
        for device, grp in mem.groupby("device", sort=True):
            base = baseline.get(device)
            absolute = analysis.memory.absolute.get(device, False)
            if base and device == "cpu":
                how = f"absolute: includes {format_bytes(base)} live before profiling (ckprof baseline)"
            elif absolute:
                how = "absolute (allocator counter)"
            else:
                how = "relative to profiling start (no baseline recorded)"
            lines.append(f"  {device}: {how}")
            rows = [
                [r.phase, format_bytes(r.peak_bytes), f"{int(r.peak_bytes):,}", str(int(r.step)), r.at_op or "—"]
                for r in grp.itertuples(index=False)
            ]
            lines += text_table(["phase", "peak", "bytes", "step", "at op"], rows, "lrrrl")
    notes = analysis.notes
    if notes:
        lines += ["", "Notes"]
        lines += [f"  - {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _no_recompute_reason(analysis: Analysis) -> str:
    if analysis.recompute_found_by == "none":
        return "no checkpointed regions were recomputed in these steps"
    return f"method {analysis.recompute_found_by} found none"


def render_json(analysis: Analysis, *, ops: bool = False, composition: bool = False,
                gpu: bool = False) -> str:
    data = analysis.to_dict(ops=ops, composition=composition, gpu=gpu)
    return json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"


CSV_COLUMNS = ["table", "step", "phase", "region", "device", "count", "wall_ms", "gpu_ms", "peak_bytes", "at_op"]


def render_csv(analysis: Analysis, *, ops: bool = False, composition: bool = False,
               gpu: bool = False) -> str:
    """One tidy table: ``table`` is total | step | region | memory (and op |
    composition | gpu with the looking-inside options, which add the columns of
    :data:`ckprof.report.inside.INSIDE_CSV_COLUMNS`). An A/B trace appends a
    ``variant`` column (other traces keep the old header): step rows carry their
    variant, and ``ab`` / ``ab_memory`` rows the per-variant figures."""
    from ckprof.report.inside import INSIDE_CSV_COLUMNS, csv_rows

    extra = ops or composition or gpu
    ab = analysis.ab
    pad = [""] * len(INSIDE_CSV_COLUMNS) if extra else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CSV_COLUMNS, *(INSIDE_CSV_COLUMNS if extra else ()), *(["variant"] if ab is not None else [])])
    variant_of = {} if ab is None else {
        int(r.step): str(r.variant) for r in ab.steps.itertuples(index=False) if not r.excluded}

    def row(cells: list[object], variant: str = "") -> list[object]:
        return [*cells, *pad, *([variant] if ab is not None else [])]

    def num(x: float | None) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6f}"

    for r in analysis.totals_table().itertuples(index=False):
        w.writerow(row(["total", "", r.phase, "", "", "", num(r.wall_ms), num(r.gpu_ms), "", ""]))
    for r in analysis.steps_table().itertuples(index=False):
        w.writerow(row(["step", r.step, r.phase, "", "", "", num(r.wall_ms), num(r.gpu_ms), "", ""],
                       variant_of.get(int(r.step), "")))
    for r in analysis.regions_table().itertuples(index=False):
        w.writerow(row(["region", "", "recompute", r.region, "", r.count, num(r.wall_ms), num(r.gpu_ms), "", ""]))
    for r in analysis.memory_table().itertuples(index=False):
        w.writerow(row(["memory", r.step, r.phase, "", r.device, "", "", "", r.peak_bytes, r.at_op]))
    if extra:
        w.writerows([*cells, *([""] if ab is not None else [])]
                    for cells in csv_rows(analysis, ops=ops, composition=composition, gpu=gpu))
    if ab is not None:
        for r in ab.variants.itertuples(index=False):
            w.writerow(row(["ab", "", "step", "", ab.device, int(r.steps), num(float(r.step_ms)), "",
                            "" if math.isnan(r.peak_bytes) else int(r.peak_bytes), ""], r.variant))
            for p in PHASES:
                w.writerow(row(["ab", "", p, "", "", int(r.steps), num(float(getattr(r, f"{p}_ms"))), "", "", ""],
                               r.variant))
        for r in ab.memory.itertuples(index=False):
            w.writerow(row(["ab_memory", "", r.phase, "", r.device, "", "", "", int(r.peak_bytes), ""], r.variant))
    return buf.getvalue()


def render_markdown(analysis: Analysis) -> str:
    head = _headline(analysis)
    lines = [f"### {head[0]}", "", head[1] + "  ", head[2], *_ab_lines(analysis, "markdown"), "",
             "#### Time by phase", ""]
    lines += markdown_table(
        ["phase", "wall ms", "% of step", "GPU ms"],
        [[r.phase, format_ms(r.wall_ms), format_pct(r.pct_of_step), format_ms(r.gpu_ms)] for r in analysis.totals_table().itertuples(index=False)],
    )
    regions = analysis.regions_table()
    lines += ["", "#### Recompute by region", ""]
    if regions.empty:
        lines.append("No recompute found.")
    else:
        lines += markdown_table(
            ["region", "count", "recompute ms", "GPU ms"],
            [[r.region, str(r.count), format_ms(r.wall_ms), format_ms(r.gpu_ms)] for r in regions.itertuples(index=False)],
        )
    lines += ["", "#### Peak memory by phase", ""]
    if not analysis.memory.captured:
        lines.append(f"Not captured: {analysis.memory.reason}")
    else:
        lines += markdown_table(
            ["phase", "device", "peak", "bytes", "at op"],
            [
                [r.phase, r.device, format_bytes(r.peak_bytes), f"{int(r.peak_bytes):,}", r.at_op or "—"]
                for r in analysis.memory_table().itertuples(index=False)
            ],
        )
    return "\n".join(lines) + "\n"
