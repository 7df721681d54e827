"""Look inside a phase: op tables, what each memory peak is made of, GPU busy per phase.

Pure functions from an :class:`~ckprof.analysis.Analysis` to text lines / CSV rows, used
by ``ckprof analyze --ops / --composition / --gpu-activity`` (through
:mod:`ckprof.report.tables`) and by the HTML report. Formatting goes through
:mod:`ckprof.report.text`. Importing this module imports no pandas (``ckprof analyze``
imports it for every CSV); the tables it renders are the Analysis's DataFrames.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ckprof.report.text import format_bytes, format_ms, format_pct, markdown_table, text_table
from ckprof.trace.markers import PHASES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ckprof.analysis import Analysis

__all__ = ["INSIDE_CSV_COLUMNS", "composition_lines", "composition_sentence", "csv_rows",
           "gpu_lines", "ops_lines", "region_summary"]

#: extra CSV columns when ops / composition rows are asked for
INSIDE_CSV_COLUMNS = ("op", "origin", "bytes")


def _table(fmt: str, headers: list[str], rows: list[list[str]], align: str) -> list[str]:
    return markdown_table(headers, rows) if fmt == "markdown" else text_table(headers, rows, align)


def _title(fmt: str, text: str) -> list[str]:
    return ["", f"#### {text}", ""] if fmt == "markdown" else ["", text]


def region_summary(table: pd.DataFrame, top: int = 3) -> list[tuple[str, str]]:
    """``(region, "aten::addmm 48%, aten::gelu 26%, ...")`` per region of a
    ``ops_table(by_region=True)``, regions in the table's order."""
    out = []
    for region, grp in table.groupby("region", sort=False):
        head = grp.head(top)
        parts = [f"{r.op} {format_pct(r.pct)}" for r in head.itertuples(index=False)]
        out.append((str(region) or "(outside regions)",
                    ", ".join(parts) + (f" (+{len(grp) - top} more)" if len(grp) > top else "")))
    return out


def ops_lines(analysis: Analysis, fmt: str = "table", top: int = 15) -> list[str]:
    """The op tables: recompute (all regions, then the top ops of each region), forward
    (idem, per checkpoint region), and with GPU events the kernels recompute launched."""
    steps = analysis.step_count
    has_gpu = analysis.has_gpu
    lines: list[str] = []
    for phase in ("recompute", "forward"):
        table = analysis.ops_table(phase)
        what = ("Recompute by op (all regions" if phase == "recompute"
                else "Forward by op (the whole forward")
        lines += _title(fmt, f"{what}, {steps} step(s); wall = self time, nested ops excluded)")
        if table.empty:
            lines.append(f"  (no ops in {phase})")
            continue
        headers = ["op", "count", "wall ms", "% of ops", "GPU ms", "GPU events"]
        rows = [[r.op, str(int(r.count)), format_ms(r.wall_ms), format_pct(r.pct),
                 format_ms(r.gpu_ms) if has_gpu else "—", str(int(r.gpu_events))]
                for r in table.head(top).itertuples(index=False)]
        lines += _table(fmt, headers, rows, "lrrrrr")
        if len(table) > top:
            rest = table.iloc[top:]
            lines.append(f"  ... {len(rest)} more op(s), {format_ms(rest['wall_ms'].sum())} ms")
        per = analysis.ops_table(phase, by_region=True)
        per = per[per["region"] != ""]
        if len(per):
            label = "region" if phase == "recompute" else "checkpoint region (forward)"
            lines += _title(fmt, f"Top ops per {label}")
            rows = [[region, text] for region, text in region_summary(per)]
            lines += _table(fmt, [label, "ops (share of the region's op time)"], rows, "ll")
    if has_gpu:
        kernels = analysis.kernels_table("recompute")
        if len(kernels):
            lines += _title(fmt, "Kernels launched by recompute")
            rows = [[r.op, r.kernel[:80], str(int(r.count)), format_ms(r.gpu_ms)]
                    for r in kernels.head(top).itertuples(index=False)]
            lines += _table(fmt, ["op", "kernel", "count", "GPU ms"], rows, "llrr")
    notes = analysis.ops.notes
    if notes:
        lines += [f"  note: {n}" for n in notes]
    return lines


def composition_sentence(comp: pd.DataFrame) -> str:
    """``backward peak 17.9 MiB = 9.1 MiB forward + ...`` for one peak's rows of
    ``composition_table()``."""
    first = comp.iloc[0]
    parts = " + ".join(f"{format_bytes(r.bytes)} {r.origin}" for r in comp.itertuples(index=False))
    return f"{first['phase']} peak {format_bytes(first['peak_bytes'])} (step {int(first['step'])}) = {parts}"


def composition_lines(analysis: Analysis, fmt: str = "table", top: int = 10) -> list[str]:
    """Each phase's peak split by the phase that allocated the bytes, then the top
    allocating ops at the highest peak of each device."""
    lines = _title(fmt, "What each peak is made of (by the phase that allocated the live bytes)")
    comp = analysis.composition
    if not comp.captured:
        lines.append(f"  not available: {comp.reason}")
        return lines
    table = analysis.composition_table()
    for device, grp in table.groupby("device", sort=True):
        lines.append(f"  {device}:")
        for _phase, peak in grp.groupby("phase", sort=False):
            lines.append("    " + composition_sentence(peak))
        by_op = analysis.composition_table(device=device, by="op")
        top_peak = by_op.sort_values("peak_bytes", ascending=False, kind="stable")
        if top_peak.empty:
            continue
        phase = str(top_peak.iloc[0]["phase"])
        ops = by_op[by_op["phase"] == phase].sort_values("bytes", ascending=False, kind="stable")
        lines += _title(fmt, f"Largest parts of the {phase} peak on {device} (allocating op)")
        rows = [[str(r.origin), str(r.origin_region) or "—", str(r.op) or "—",
                 format_bytes(r.bytes), format_pct(r.pct)]
                for r in ops.head(top).itertuples(index=False)]
        lines += _table(fmt, ["allocated in", "region", "op", "bytes", "% of peak"], rows, "lllrr")
    for n in comp.notes:
        lines.append(f"  note: {n}")
    return lines


def gpu_lines(analysis: Analysis, fmt: str = "table") -> list[str]:
    """GPU busy (union of the phase's GPU events), overlap, kernels, idle and
    utilisation per phase (NOTE [ GPU busy time ])."""
    lines = _title(fmt, "GPU activity by phase (busy = union of the GPU events the phase launched)")
    if not analysis.has_gpu:
        lines.append("  not captured: the trace has no GPU kernels")
        return lines
    t = analysis.gpu_table()
    headers = ["phase", "wall ms", "GPU busy ms", "GPU sum ms", "overlap ms", "kernels",
               "GPU idle ms", "utilisation"]
    rows = [[r.phase, format_ms(r.wall_ms), format_ms(r.gpu_busy_ms), format_ms(r.gpu_sum_ms),
             format_ms(r.overlap_ms), str(int(r.kernels)), format_ms(r.idle_ms),
             format_pct(r.utilization_pct)] for r in t.itertuples(index=False)]
    lines += _table(fmt, headers, rows, "lrrrrrrr")
    regions = analysis.gpu.regions
    if len(regions):
        rows = [[str(r.region), format_ms(r.wall_ns / 1e6), format_ms(r.gpu_busy_ns / 1e6),
                 str(int(r.kernels)), format_ms(r.idle_ns / 1e6), format_pct(r.utilization_pct)]
                for r in regions.itertuples(index=False)]
        lines += _title(fmt, "GPU activity of recompute per region")
        lines += _table(fmt, ["region", "wall ms", "GPU busy ms", "kernels", "GPU idle ms",
                              "utilisation"], rows, "lrrrrr")
    lines.append("  utilisation = time the GPU ran anything within the phase's wall time; "
                 "low in recompute means launch-bound, near 100% GPU-bound")
    return lines


def csv_rows(analysis: Analysis, *, ops: bool, composition: bool,
             gpu: bool) -> list[list[Any]]:
    """Rows for :data:`ckprof.report.tables.CSV_COLUMNS` + :data:`INSIDE_CSV_COLUMNS`:
    ``op`` rows (phase, region, count, wall_ms, gpu_ms, op), ``composition`` rows (step,
    phase, device, peak_bytes, origin, bytes, op), ``gpu`` rows (phase, count = kernels,
    wall_ms = GPU busy ms, gpu_ms = GPU sum ms)."""
    def num(x: Any) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.6f}"

    out: list[list[Any]] = []
    if ops:
        for phase in PHASES:
            for r in analysis.ops_table(phase, by_region=True).itertuples(index=False):
                out.append(["op", "", phase, r.region, "", r.count, num(r.wall_ms), num(r.gpu_ms),
                            "", "", r.op, "", ""])
    if composition:
        for r in analysis.composition_table(by="op").itertuples(index=False):
            out.append(["composition", r.step, r.phase, r.origin_region, r.device, "", "", "",
                        r.peak_bytes, "", r.op, r.origin, r.bytes])
    if gpu and analysis.has_gpu:
        for r in analysis.gpu_table().itertuples(index=False):
            out.append(["gpu", "", r.phase, "", "", r.kernels, num(r.gpu_busy_ms),
                        num(r.gpu_sum_ms), "", "", "", "", ""])
    return out
