"""Render an A/B result (:class:`ckprof.analysis.ab.ABResult`): the measured cost and
saving of checkpointing, per-variant step time, phases and peak memory.

Pure functions returning text lines / HTML strings; the analysis tables, the HTML
report and ``ckprof compare`` call them whenever a trace has A/B steps.
"""

from __future__ import annotations

from html import escape

from ckprof.analysis.ab import ABResult
from ckprof.report.text import (
    format_bytes,
    format_ms,
    format_signed_pct,
    is_missing,
    markdown_table,
    text_table,
)
from ckprof.trace.markers import PHASES

__all__ = ["ab_headline", "ab_html_section", "ab_markdown_lines", "ab_table", "ab_text_lines"]

_SHORT = {"forward": "fwd", "backward": "bwd", "recompute": "recompute", "optimizer": "optim",
          "other": "other"}


def ab_headline(ab: ABResult) -> list[str]:
    """The answer in sentences: measured cost, the recompute part of it, measured saving,
    and what the "off" steps need (or that they did not fit)."""
    lines: list[str] = []
    d = ab.diff
    if ab.mode == "checkpointing":
        if d is not None:
            n_on = int(ab.variants.set_index("variant").loc[d.candidate, "steps"])
            n_off = int(ab.variants.set_index("variant").loc[d.baseline, "steps"])
            profiled = (f"{format_ms(d.candidate_step_ms, digits=1)} ms on vs "
                        f"{format_ms(d.baseline_step_ms, digits=1)} ms off, median of {n_on} / {n_off} steps")
            if not is_missing(d.unprofiled_cost_pct):
                u_on, u_off = d.unprofiled_steps
                lines.append(
                    f"Checkpointing cost: {format_signed_pct(d.unprofiled_cost_pct)} step time (measured without "
                    f"the profiler: {format_ms(d.unprofiled_candidate_ms, digits=1)} ms on vs "
                    f"{format_ms(d.unprofiled_baseline_ms, digits=1)} ms off, median of {u_on} / {u_off} steps)")
                lines.append(f"  under the profiler: {format_signed_pct(d.cost_pct)} ({profiled})")
            else:
                lines.append(f"Checkpointing cost: {format_signed_pct(d.cost_pct)} step time (measured: {profiled})")
            if d.within_noise:
                lines.append("  within step-to-step noise (the IQRs overlap): the sign is not established; "
                             "capture more active steps")
            share = ("" if is_missing(d.recompute_share_pct) or d.within_noise
                     else f" ({d.recompute_share_pct:.0f}% of the cost"
                          + (", both under the profiler)" if not is_missing(d.unprofiled_cost_pct) else ")"))
            lines.append(f"  of which re-running forward: {format_signed_pct(d.recompute_pct)}{share}")
            if is_missing(d.saving_bytes):
                lines.append("Checkpointing saving: not measured (no memory events)")
            else:
                word = "saving" if d.saving_bytes >= 0 else "saving (negative: uses more)"
                lines.append(
                    f"Checkpointing {word}: {format_bytes(d.saving_bytes)} peak on {ab.device} "
                    f"(measured: {format_bytes(d.baseline_peak_bytes)} off -> "
                    f"{format_bytes(d.candidate_peak_bytes)} on, {format_signed_pct(-d.saving_pct)})"
                )
        if not ab.baseline_fits:
            where = ", ".join(f"step {o.get('step')}" for o in ab.oom) or "a step"
            err = next((str(o.get("error")) for o in ab.oom if o.get("error")), "")
            lines.append(
                f"Without checkpointing this step does not fit: {where} ran out of memory "
                f"with checkpointing off{' (' + err[:100] + ')' if err else ''}; the rest ran with it on"
            )
        else:
            lines.append("The 'off' steps ran without checkpointing: they needed the memory it saves.")
    else:
        lines.append("Steps tagged with variants: " + ", ".join(str(v) for v in ab.variants["variant"]))
    return lines


def ab_table(ab: ABResult) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the per-variant table (median step time and phases, peak)."""
    headers = ["variant", "steps", "step ms", "IQR ms", *(_SHORT[p] for p in PHASES), "peak"]
    rows = []
    for r in ab.variants.itertuples(index=False):
        rows.append([
            str(r.variant), str(int(r.steps)), format_ms(r.step_ms, digits=2),
            f"{r.step_ms_q1:,.2f}-{r.step_ms_q3:,.2f}",
            *(format_ms(getattr(r, f"{p}_ms"), digits=2) for p in PHASES),
            format_bytes(r.peak_bytes),
        ])
    return headers, rows


def _memory_rows(ab: ABResult) -> tuple[list[str], list[list[str]]]:
    variants = list(ab.variants["variant"])
    mem = ab.memory[ab.memory["device"] == ab.device]
    headers = ["phase", *(f"peak {v}" for v in variants)]
    rows = []
    for phase in PHASES:
        cells = []
        for v in variants:
            sel = mem[(mem["variant"] == v) & (mem["phase"] == phase)]
            cells.append(format_bytes(sel["peak_bytes"].iloc[0]) if len(sel) else "—")
        if any(c != "—" for c in cells):
            rows.append([phase, *cells])
    return headers, rows


def ab_text_lines(ab: ABResult) -> list[str]:
    title = ("A/B in this run: checkpointing on vs off (steps alternate on, off, off, on)"
             if ab.mode == "checkpointing" else "Variants in this run (tagged steps)")
    lines = ["", title, *(f"  {h}" for h in ab_headline(ab)), ""]
    headers, rows = ab_table(ab)
    lines += text_table(headers, rows, "lr" + "r" * (len(headers) - 2))
    mh, mrows = _memory_rows(ab)
    if mrows:
        lines += ["", f"  Peak memory by phase and variant ({ab.device})"]
        lines += text_table(mh, mrows, "l" + "r" * (len(mh) - 1))
    for note in ab.notes:
        lines.append(f"  note: {note}")
    return lines


def ab_markdown_lines(ab: ABResult) -> list[str]:
    lines = ["", "#### A/B: checkpointing on vs off (same run)" if ab.mode == "checkpointing"
             else "#### Variants (tagged steps)", ""]
    lines += [f"{h.strip()}  " for h in ab_headline(ab)]
    lines.append("")
    headers, rows = ab_table(ab)
    lines += markdown_table(headers, rows)
    mh, mrows = _memory_rows(ab)
    if mrows:
        lines += ["", f"Peak memory by phase and variant ({ab.device}):", ""]
        lines += markdown_table(mh, mrows)
    lines += [f"- {n}" for n in ab.notes]
    return lines


def ab_html_section(ab: ABResult, figure_html: str = "") -> str:
    """A ``<section id="ab">`` with the verdict, an optional figure and the tables."""
    how = ("<b>How to read this:</b> the capture ran its steps alternately with checkpointing "
           "<i>on</i> (as your model does it) and <i>off</i> (the checkpointed blocks called directly, "
           "keeping their activations), in the same process, on the same data. The difference of the "
           "medians is what checkpointing costs in step time and buys in peak memory, measured. "
           "Re-running forward is the recompute phase of the 'on' steps; the rest of the cost is "
           "checkpointing's bookkeeping (or noise when the spreads overlap).")
    head = "".join(f"<li>{escape(h.strip())}</li>" for h in ab_headline(ab))
    headers, rows = ab_table(ab)
    mh, mrows = _memory_rows(ab)

    from ckprof.report.html import table_html

    def table(hs: list[str], rs: list[list[str]]) -> str:  # first column left, the rest right
        return table_html([(h, "l" if i == 0 else "r") for i, h in enumerate(hs)],
                          [[escape(c) for c in r] for r in rs])

    notes = "".join(f"<li>{escape(n)}</li>" for n in ab.notes)
    return (
        '<section id="ab"><h2>What checkpointing costs and buys, measured in this run (A/B)</h2>'
        f'<p class="how">{how}</p><ul class="verdict">{head}</ul>{figure_html}'
        + table(headers, rows)
        + (f"<h3>Peak memory by phase and variant ({escape(ab.device)})</h3>" + table(mh, mrows) if mrows else "")
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
        + "</section>"
    )
