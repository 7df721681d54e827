"""HTML views of an :class:`~ckprof.analysis.Analysis`.

Contract:

- :func:`summary_html` -> a compact ``<div>`` (Jupyter's ``_repr_html_``): step
  time, time per phase, forward re-run share (a lower bound of checkpointing's cost),
  peak memory per phase. No images.
- :func:`render_report` -> ONE self-contained HTML page (with an A/B section, the
  measured cost and saving of checkpointing, when the trace has A/B steps) (inline CSS, figures
  embedded as base64 PNG, no script, no network) that a person who has not read
  the README can follow: a headline, then one section per question (where does the
  time go, which region costs most to recompute, what does memory look like, what is
  each peak made of, how busy is the GPU, which ops recompute is made of; the CLI adds
  what selective checkpointing should save), each with a short "how to read this"
  paragraph, its figure and its table.

Both are pure functions returning a string; nothing here writes files (the CLI
does, never over an existing file). Every piece of text from the trace is escaped.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckprof.errors import CkprofError
from ckprof.report.text import format_bytes
from ckprof.trace.markers import PHASE_COLORS, PHASES

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from ckprof.analysis import Analysis

__all__ = ["PHASE_HELP", "render_report", "summary_html", "table_html"]

#: one sentence per phase, shown in the report's legend
PHASE_HELP: dict[str, str] = {
    "forward": "running the model on the batch and computing the loss (checkpointed regions run "
               "here once, without keeping their activations).",
    "backward": "computing gradients (loss.backward()), excluding recompute.",
    "recompute": "re-running the forward of checkpointed regions inside backward, to rebuild the "
                 "activations that were not kept. This is the time checkpointing costs.",
    "optimizer": "optimizer.step() and optimizer.zero_grad().",
    "other": "anything else inside the step (data loading, logging, gaps between phases).",
}


# --------------------------------------------------------------------------- formatting
def _fmt_bytes(n: Any) -> str:
    return format_bytes(n, missing="&mdash;")


def _is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _ms(x: Any, digits: int = 3) -> str:
    return "&mdash;" if _is_missing(x) else f"{float(x):,.{digits}f}"


def _pct(x: Any) -> str:
    return "&mdash;" if _is_missing(x) else f"{float(x):.1f}%"


def _plus(pct: str) -> str:
    """``+12.3%`` for a share added on top of the rest of the step."""
    return pct if pct == "&mdash;" else "+" + pct


def _swatch(phase: str) -> str:
    color = PHASE_COLORS.get(phase, "#999999")
    return (f'<span class="sw" style="background:{color}"></span>'
            f'<span class="ph">{escape(phase)}</span>')


def _mean_step_ms(analysis: Analysis) -> float:
    n = max(analysis.step_count, 1)
    return analysis.step_total_ns / 1e6 / n


def _overhead(analysis: Analysis) -> float | None:
    value = analysis.time.recompute_overhead_pct
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _phase_ms_per_step(analysis: Analysis) -> dict[str, float]:
    n = max(analysis.step_count, 1)
    totals = analysis.totals_table()
    return {str(r.phase): float(r.wall_ms) / n for r in totals.itertuples(index=False)}


def _peaks_by_device(analysis: Analysis) -> dict[str, list[tuple[str, int, int, str]]]:
    """device -> [(phase, peak_bytes, step, at_op)] in phase order."""
    out: dict[str, list[tuple[str, int, int, str]]] = {}
    if not analysis.memory.captured:
        return out
    for r in analysis.memory_table().itertuples(index=False):
        out.setdefault(str(r.device), []).append((str(r.phase), int(r.peak_bytes), int(r.step), str(r.at_op)))
    return out


# --------------------------------------------------------------------------- summary
_SUMMARY_CSS = (
    "font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:13px;"
    "border-collapse:collapse;margin:4px 0"
)


def summary_html(analysis: Analysis) -> str:
    """A compact summary for Jupyter: headline line, then one row per phase with
    wall ms per step, % of step, and peak memory per device. Inline styles only."""
    n = analysis.step_count
    overhead = _overhead(analysis)
    per_step = _phase_ms_per_step(analysis)
    totals = {str(r.phase): r for r in analysis.totals_table().itertuples(index=False)}
    peaks = _peaks_by_device(analysis)
    devices = sorted(peaks)
    head = (
        f"<b>ckprof</b> &middot; {escape(Path(str(analysis.trace.path)).name)} &middot; "
        f"{n} step(s) &middot; <b>{_ms(_mean_step_ms(analysis))} ms</b> per step &middot; "
        f"forward re-run <b>{_plus(_pct(overhead))}</b> of the rest of the step (lower bound "
        "of checkpointing's cost) &middot; recompute found by "
        f"{escape(str(analysis.recompute_found_by))}"
    )
    cells = "padding:2px 8px;border-bottom:1px solid #ddd;text-align:right"
    left = "padding:2px 8px;border-bottom:1px solid #ddd;text-align:left"
    hdr = [f'<th style="{left}">phase</th>', f'<th style="{cells}">ms / step</th>',
           f'<th style="{cells}">% of step</th>']
    hdr += [f'<th style="{cells}">peak {escape(d)}</th>' for d in devices]
    rows = []
    for phase in PHASES:
        t = totals.get(phase)
        row = [f'<td style="{left}">{_swatch(phase)}</td>',
               f'<td style="{cells}">{_ms(per_step.get(phase))}</td>',
               f'<td style="{cells}">{_pct(t.pct_of_step if t is not None else None)}</td>']
        for d in devices:
            value = next((b for ph, b, _s, _o in peaks[d] if ph == phase), None)
            row.append(f'<td style="{cells}">{_fmt_bytes(value) if value is not None else "&mdash;"}</td>')
        rows.append("<tr>" + "".join(row) + "</tr>")
    mem_note = ""
    if not analysis.memory.captured:
        mem_note = (f'<div style="color:#555">memory not captured: '
                    f"{escape(str(analysis.memory.reason))}</div>")
    style = ".sw{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px}"
    return (
        f'<div class="ckprof-summary"><style>{style}</style><div>{head}</div>'
        f'<table style="{_SUMMARY_CSS}"><thead><tr>{"".join(hdr)}</tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table>{mem_note}</div>'
    )


# --------------------------------------------------------------------------- report
_REPORT_CSS = """
:root { --ink:#1d1d1f; --muted:#5f6368; --line:#e3e3e3; --bg:#fafafa; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; }
main { max-width:1120px; margin:0 auto; padding:24px 28px 48px; }
h1 { font-size:24px; margin:0 0 4px; }
h2 { font-size:19px; margin:34px 0 6px; padding-top:10px; border-top:1px solid var(--line); }
.sub { color:var(--muted); font-size:13px; margin:0 0 18px; word-break:break-all; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin:12px 0 8px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 16px; min-width:190px; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:24px; font-weight:600; }
.card .d { color:var(--muted); font-size:12px; }
.verdict { background:#fff; border-left:4px solid #C44E52; padding:8px 14px; margin:12px 0; }
.how { background:#eef3f8; border-radius:6px; padding:8px 14px; margin:8px 0 12px; font-size:14px; }
.how b { color:#2b4c7e; }
figure { margin:10px 0; background:#fff; border:1px solid var(--line); border-radius:6px; padding:6px; }
figure img { max-width:100%; height:auto; display:block; margin:0 auto; }
table { border-collapse:collapse; background:#fff; margin:8px 0 4px; font-size:14px; }
th, td { padding:4px 12px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }
th { background:#f1f1f1; font-weight:600; }
td.l, th.l { text-align:left; }
.op { font-family:ui-monospace,Menlo,Consolas,"DejaVu Sans Mono",monospace; font-size:12px;
      white-space:normal; word-break:break-all; }
td:has(.op) { text-align:left; white-space:normal; max-width:420px; }
tr.total td { font-weight:600; border-top:2px solid #ccc; }
.sw { display:inline-block; width:12px; height:12px; border-radius:2px; margin-right:6px; vertical-align:-1px; }
.missing { color:#8a4b00; background:#fff6e5; border:1px solid #f0d9a8; border-radius:6px; padding:8px 14px; }
ul.notes li { margin:2px 0; }
dl.glossary dt { font-weight:600; margin-top:6px; }
dl.glossary dd { margin:0 0 0 22px; }
footer { color:var(--muted); font-size:12px; margin-top:36px; }
"""


def _figure_png_b64(fig: Figure, dpi: int = 110) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str) -> str:
    return (f'<figure><img alt="{escape(alt)}" '
            f'src="data:image/png;base64,{_figure_png_b64(fig)}"></figure>')


def _try_figure(make: Any, alt: str) -> str:
    """Render a figure, or say clearly why it is missing (never a half page)."""
    try:
        fig = make()
    except CkprofError as err:
        return f'<p class="missing">{escape(err.reason)}</p>'
    return _img(fig, alt)


def table_html(headers: list[tuple[str, str]], rows: list[list[str]], *, total: list[str] | None = None) -> str:
    """``headers``: (text, align 'l'|'r'); cells are already-escaped HTML. All-empty
    header texts: no header row."""
    head = "".join(f'<th class="{a}">{escape(h)}</th>' for h, a in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(h for h, _a in headers) else ""
    body = []
    for row in rows:
        body.append("<tr>" + "".join(
            f'<td class="{a}">{c}</td>' for c, (_h, a) in zip(row, headers, strict=True)) + "</tr>")
    if total is not None:
        body.append('<tr class="total">' + "".join(
            f'<td class="{a}">{c}</td>' for c, (_h, a) in zip(total, headers, strict=True)) + "</tr>")
    return f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"


def _headline(analysis: Analysis) -> str:
    n = analysis.step_count
    mean = _mean_step_ms(analysis)
    overhead = _overhead(analysis)
    per_step = _phase_ms_per_step(analysis)
    regions = analysis.regions_table()
    cards = [
        ("step time", f"{_ms(mean, 2)} ms", f"mean over {n} step(s)"),
        ("forward re-run", _plus(_pct(overhead)),
         f"{_ms(per_step.get('recompute', 0.0), 2)} ms per step re-running forward, on top of "
         "the rest of the step: a lower bound of checkpointing's cost"),
        ("checkpointed regions", str(len(regions)), "recomputed in backward"),
    ]
    peaks = _peaks_by_device(analysis)
    for device, rows in sorted(peaks.items()):
        top = max(rows, key=lambda r: r[1])
        cards.append((f"peak memory ({device})", _fmt_bytes(top[1]), f"during {top[0]} (step {top[2]})"))
    html_cards = "".join(
        f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{v}</div>'
        f'<div class="d">{escape(d)}</div></div>'
        for k, v, d in cards
    )
    if overhead is None or regions.empty:
        verdict = ("No recomputation was found in these steps, so no time goes to re-running forward here "
                   f"(recompute detection: {escape(str(analysis.recompute_found_by))}). If the model "
                   "does use activation checkpointing, capture it with ckprof.capture so the regions are marked.")
    else:
        rest = mean - per_step.get("recompute", 0.0)
        verdict = (f"Re-running forward for the checkpointed regions takes "
                   f"<b>{_ms(per_step.get('recompute', 0.0), 2)} ms</b> per step, "
                   f"<b>{_plus(_pct(overhead))}</b> on top of the other {_ms(rest, 2)} ms of the "
                   "step. That is a lower bound of what checkpointing costs, not the cost: it "
                   "leaves out the checkpoint machinery around the re-run and any slowdown of "
                   "forward and backward themselves (selective checkpointing's dispatch mode, "
                   "fusion lost under torch.compile). The full cost is the step time measured "
                   "against the same model without checkpointing.")
    peak_rows = []
    for device, rows in sorted(peaks.items()):
        parts = ", ".join(f"{escape(ph)} {_fmt_bytes(b)}" for ph, b, _s, _o in rows)
        peak_rows.append(f"Peak memory on <b>{escape(device)}</b> by phase: {parts}.")
    if not analysis.memory.captured:
        peak_rows.append("Memory was not captured (the Memory section below says why).")
    return (f'<div class="cards">{html_cards}</div><p class="verdict">{verdict}</p>'
            + "".join(f"<p>{p}</p>" for p in peak_rows))


def _time_section(analysis: Analysis) -> str:
    from ckprof.report.plots import plot_time_breakdown

    n = analysis.step_count
    totals = analysis.totals_table()
    has_gpu = analysis.has_gpu
    headers = [("phase", "l"), ("ms per step", "r"), ("% of step", "r"), ("total ms", "r")]
    if has_gpu:
        headers.append(("GPU kernel ms", "r"))
    rows = []
    user = analysis.user_phases_table()
    for r in totals.itertuples(index=False):
        row = [_swatch(str(r.phase)), _ms(float(r.wall_ms) / max(n, 1)), _pct(r.pct_of_step), _ms(r.wall_ms)]
        if has_gpu:
            row.append(_ms(r.gpu_ms))
        rows.append(row)
        if r.phase == "other":  # the user's ckprof.phase(...) ranges, inside other
            for u in user.itertuples(index=False):
                urow = [f"&nbsp;&nbsp;&#8627; {escape(str(u.name))}", _ms(float(u.wall_ms) / max(n, 1)),
                        _pct(u.pct_of_step), _ms(u.wall_ms)]
                if has_gpu:
                    urow.append("")
                rows.append(urow)
    total_ms = float(totals["wall_ms"].sum())
    total = ["step", _ms(total_ms / max(n, 1)), _pct(100.0 if total_ms else None), _ms(total_ms)]
    if has_gpu:
        total.append(_ms(totals["gpu_ms"].sum(min_count=1)))
    how = ("<b>How to read this:</b> each bar is one training step, split into phases by colour "
           "(forward, backward, <i>recompute</i>, optimizer, other). The red recompute slice is the time "
           "spent re-running forward for checkpointed regions: the part of checkpointing's cost seen "
           "directly, a lower bound of it (without checkpointing it disappears, memory grows, and "
           "forward and backward may get faster too). ")
    if has_gpu:
        how += ("The hatched bar next to each step is the GPU kernel time launched from each phase "
                "(a kernel counts for the phase that launched it, even when it runs later).")
    else:
        how += "The trace has no GPU kernels, so only wall time is shown."
    per_step_table = ""
    wide = analysis.steps_wide()
    if 1 < len(wide) <= 50:
        sh = [("step", "l"), ("step ms", "r"), *((f"{p} ms", "r") for p in PHASES)]
        srows = [[str(int(r["step"])), _ms(r["step_ms"]), *(_ms(r[f"{p}_ms"]) for p in PHASES)]
                 for _, r in wide.iterrows()]
        per_step_table = "<h3>Per step</h3>" + table_html(sh, srows)
    return (
        '<section id="time"><h2>Where does the step time go?</h2>'
        f'<p class="how">{how}</p>'
        + _try_figure(lambda: plot_time_breakdown(analysis), "stacked bar of time per phase per step")
        + table_html(headers, rows, total=total) + per_step_table + "</section>"
    )


def _regions_section(analysis: Analysis) -> str:
    from ckprof.report.plots import plot_recompute_regions

    regions = analysis.regions_table()
    how = ("<b>How to read this:</b> one bar per checkpointed region (a block of layers whose activations "
           "are dropped after forward and recomputed in backward), longest first. The bar is the recompute time "
           "over the analysed steps; <i>count</i> is how many times it was recomputed. When the capture marked the "
           "region's forward run, the dashed outline shows that forward time: recompute close to it is expected. "
           "Regions at the top are where un-checkpointing (if memory allows) saves the most time.")
    if regions.empty:
        body = (f'<p class="missing">No recompute found in these steps (recompute detection: '
                f"{escape(str(analysis.recompute_found_by))}).</p>")
        return f'<section id="regions"><h2>Recompute by checkpointed region</h2>{body}</section>'
    has_gpu = analysis.has_gpu
    headers = [("region", "l"), ("count", "r"), ("recompute ms", "r"), ("first forward ms", "r")]
    if has_gpu:
        headers.append(("GPU ms", "r"))
    rows = []
    for r in regions.itertuples(index=False):
        row = [escape(str(r.region)), str(int(r.count)), _ms(r.wall_ms),
               _ms(r.forward_wall_ms)]
        if has_gpu:
            row.append(_ms(r.gpu_ms))
        rows.append(row)
    return (
        '<section id="regions"><h2>Recompute by checkpointed region</h2>'
        f'<p class="how">{how}</p>'
        + _try_figure(lambda: plot_recompute_regions(analysis), "bar chart of recompute time per region")
        + table_html(headers, rows) + "</section>"
    )


def _memory_section(analysis: Analysis) -> str:
    from ckprof.report.plots import (
        find_memory_timeline_file,
        plot_memory_categories,
        plot_memory_timeline,
    )

    mem = analysis.memory
    if not mem.captured:
        reason = str(mem.reason)
        advice = ("" if "profile_memory" in reason else
                  " Capture with profile_memory=True to see peak memory per phase.")
        return ('<section id="memory"><h2>Memory</h2>'
                f'<p class="missing">Memory was not captured: {escape(reason)}.{advice}</p></section>')
    how = ("<b>How to read this:</b> the line is the memory allocated on each device over time; the background "
           "colour says which phase was running. Triangles mark the highest point of each phase in each step; "
           "the legend gives each phase's highest value and the boxed label points at the overall peak. Checkpointing lowers the forward and backward peaks (fewer "
           "activations kept) and adds short recompute spans in backward, where memory briefly rises again.")
    notes = []
    meta_baseline = (analysis.trace.ckprof or {}).get("memory_baseline") or {}
    for device in sorted(set(mem.baseline_bytes or {}) | set(mem.absolute or {})):
        base = int((mem.baseline_bytes or {}).get(device, 0))
        counter_absolute = bool((meta_baseline.get(device) or {}).get("counter_absolute", False))
        if not mem.absolute.get(device, False):
            notes.append(f"{escape(device)}: relative to profiling start (memory that was live before "
                         "profiling started is not included, so true peaks are higher).")
        elif counter_absolute or (not base and device != "cpu"):
            notes.append(f"{escape(device)}: absolute, from the allocator's own counter.")
        else:
            notes.append(f"{escape(device)}: absolute; includes {_fmt_bytes(base)} that were live before "
                         "profiling started (parameters, optimizer state, inputs).")
    headers = [("phase", "l"), ("device", "l"), ("peak", "r"), ("bytes", "r"), ("step", "r"), ("at op", "l")]
    rows = [
        [_swatch(str(r.phase)), escape(str(r.device)), _fmt_bytes(int(r.peak_bytes)), f"{int(r.peak_bytes):,}",
         str(int(r.step)), f'<span class="op">{escape(str(r.at_op)) or "&mdash;"}</span>']
        for r in analysis.memory_table().itertuples(index=False)
    ]
    html_parts = [
        '<section id="memory"><h2>Memory over the step</h2>',
        f'<p class="how">{how}</p>',
        _try_figure(lambda: plot_memory_timeline(analysis), "memory timeline with phases shaded"),
        "<h3>Peak memory by phase</h3>",
        "<p>Highest allocated memory in each phase over the analysed steps, and the operation running at "
        "that moment.</p>",
        table_html(headers, rows),
    ]
    if notes:
        html_parts.append("<ul class=\"notes\">" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>")
    if find_memory_timeline_file(str(analysis.trace.path)) is not None:
        html_parts += [
            "<h3>Memory by category</h3>",
            '<p class="how"><b>How to read this:</b> torch\'s memory profiler sorts live tensors into parameters, '
            "optimizer state, gradients, activations and temporaries. Caution: it labels tensors rebuilt by "
            "recompute as <i>autograd_detail</i> or <i>temporary</i>, not as activations; the per-phase peaks "
            "above do not depend on these labels.</p>",
            _try_figure(lambda: plot_memory_categories(analysis), "memory by category"),
        ]
    html_parts.append("</section>")
    return "".join(html_parts)


def _ops_section(analysis: Analysis, top: int = 15) -> str:
    """Which ops recompute (and the forward of checkpointed regions) is made of."""
    from ckprof.report.inside import region_summary

    how = ("<b>How to read this:</b> the recompute time split by the operation that ran, summed over the "
           "analysed steps. <i>wall ms</i> is each op's self time (nested ops have their own row), "
           "<i>GPU ms</i> the kernels it launched. Ops at the top are what recompute costs; under selective "
           "checkpointing, saving their outputs instead of recomputing them removes that time (see "
           "<code>ckprof advise</code>). The forward table lists the same ops for the regions' first run.")
    has_gpu = analysis.has_gpu
    parts = ['<section id="ops"><h2>What is recompute made of?</h2>', f'<p class="how">{how}</p>']
    for phase, title in (("recompute", "Recompute by op"), ("forward", "Forward by op")):
        table = analysis.ops_table(phase)
        parts.append(f"<h3>{title}</h3>")
        if table.empty:
            parts.append(f'<p class="missing">No ops in {escape(phase)}.</p>')
            continue
        headers = [("op", "l"), ("count", "r"), ("wall ms", "r"), ("% of ops", "r")]
        if has_gpu:
            headers += [("GPU ms", "r"), ("GPU events", "r")]
        rows = []
        for r in table.head(top).itertuples(index=False):
            row = [f'<span class="op">{escape(r.op)}</span>', str(int(r.count)), _ms(r.wall_ms),
                   _pct(r.pct)]
            if has_gpu:
                row += [_ms(r.gpu_ms), str(int(r.gpu_events))]
            rows.append(row)
        parts.append(table_html(headers, rows))
        if len(table) > top:
            parts.append(f"<p>... and {len(table) - top} more op(s).</p>")
        per = analysis.ops_table(phase, by_region=True)
        per = per[per["region"] != ""]
        if len(per):
            parts.append(table_html([("region", "l"), ("top ops (share of the region's op time)", "l")],
                                     [[escape(reg), f'<span class="op">{escape(text)}</span>']
                                      for reg, text in region_summary(per)]))
    parts.append("</section>")
    return "".join(parts)


def _composition_section(analysis: Analysis, top: int = 12) -> str:
    """What each phase's memory peak is made of (by the phase and op that allocated it)."""
    from ckprof.report.inside import composition_sentence
    from ckprof.report.plots import plot_memory_composition

    comp = analysis.composition
    if not analysis.memory.captured:
        return ""
    if not comp.captured:
        return ('<section id="composition"><h2>What is each peak made of?</h2>'
                f'<p class="missing">Not available: {escape(comp.reason)}.</p></section>')
    how = ("<b>How to read this:</b> every allocation in the trace is followed from its allocation to its "
           "free, so the memory live at any moment can be split by the phase that allocated it: activations "
           "saved in <i>forward</i>, tensors rebuilt by <i>recompute</i>, gradients and temporaries of "
           "<i>backward</i>, optimizer state, and memory that was already live <i>before profiling</i> "
           "(parameters, optimizer state, inputs). Each phase's peak below adds up exactly to the peak in the "
           "memory table. torch's own memory timeline calls recomputed tensors 'temporary'; here they are "
           "recompute.")
    table = analysis.composition_table()
    sentences = "".join(f"<li>{escape(composition_sentence(peak))}</li>"
                        for (_d, _p), peak in table.groupby(["device", "phase"], sort=False))
    parts = ['<section id="composition"><h2>What is each peak made of?</h2>',
             f'<p class="how">{how}</p>', f'<ul class="notes">{sentences}</ul>',
             _try_figure(lambda: plot_memory_composition(analysis),
                         "live memory stacked by the phase that allocated it")]
    by_op = analysis.composition_table(by="op")
    if len(by_op):
        hi = by_op.sort_values("peak_bytes", ascending=False, kind="stable").iloc[0]
        ops = by_op[(by_op["phase"] == hi["phase"]) & (by_op["device"] == hi["device"])]
        ops = ops.sort_values("bytes", ascending=False, kind="stable").head(top)
        parts.append(f"<h3>Largest parts of the {escape(str(hi['phase']))} peak "
                     f"({escape(str(hi['device']))}, {_fmt_bytes(int(hi['peak_bytes']))})</h3>")
        rows = [[_swatch(str(r.origin)) if r.origin in PHASES else escape(str(r.origin)),
                 escape(str(r.origin_region)) or "&mdash;",
                 f'<span class="op">{escape(str(r.op)) or "&mdash;"}</span>',
                 _fmt_bytes(int(r.bytes)), _pct(r.pct)] for r in ops.itertuples(index=False)]
        parts.append(table_html([("allocated in", "l"), ("region", "l"), ("op", "l"),
                                  ("bytes", "r"), ("% of peak", "r")], rows))
    if comp.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in comp.notes)
                     + "</ul>")
    parts.append("</section>")
    return "".join(parts)


def _gpu_section(analysis: Analysis) -> str:
    """GPU busy / idle / overlap per phase (only when the trace has GPU events)."""
    if not analysis.has_gpu:
        return ""
    how = ("<b>How to read this:</b> <i>GPU busy</i> is the time the GPU events a phase launched cover "
           "(their union: concurrent streams count once; <i>GPU sum</i> counts them twice, the difference is "
           "<i>overlap</i>). <i>Utilisation</i> is the share of the phase's wall time in which the GPU ran "
           "anything: low in recompute means recompute is bound by the CPU launching kernels, near 100% that "
           "it is bound by the GPU.")
    headers = [("phase", "l"), ("wall ms", "r"), ("GPU busy ms", "r"), ("GPU sum ms", "r"),
               ("overlap ms", "r"), ("kernels", "r"), ("GPU idle ms", "r"), ("utilisation", "r")]
    rows = [[_swatch(str(r.phase)), _ms(r.wall_ms), _ms(r.gpu_busy_ms), _ms(r.gpu_sum_ms),
             _ms(r.overlap_ms), str(int(r.kernels)), _ms(r.idle_ms), _pct(r.utilization_pct)]
            for r in analysis.gpu_table().itertuples(index=False)]
    return ('<section id="gpu"><h2>How busy is the GPU in each phase?</h2>'
            f'<p class="how">{how}</p>' + table_html(headers, rows) + "</section>")


def _about_section(analysis: Analysis) -> str:
    glossary = "".join(f"<dt>{_swatch(p)}</dt><dd>{escape(PHASE_HELP[p])}</dd>" for p in PHASES)
    # the memory section already says why memory is missing: not again as a note
    notes = [n for n in analysis.notes if not str(n).startswith("memory not captured:")]
    notes_html = ("<ul class=\"notes\">" + "".join(f"<li>{escape(str(n))}</li>" for n in notes) + "</ul>"
                  if notes else "<p>None.</p>")
    meta = analysis.trace.ckprof or {}
    facts = [
        ("trace", str(analysis.trace.path)),
        ("format", str(analysis.trace.source_format)),
        ("steps analysed", ", ".join(str(int(s)) for s in analysis.phases.steps["step"].tolist()) or "none"),
        ("recompute found by", str(analysis.recompute_found_by)),
    ]
    for key in ("device", "torch_version", "ckprof_version", "world_size"):
        if key in meta:
            facts.append((key.replace("_", " "), str(meta[key])))
    fact_rows = [[escape(k), f'<span class="op">{escape(v)}</span>'] for k, v in facts]
    return (
        '<section id="about"><h2>What the phases mean</h2>'
        f'<dl class="glossary">{glossary}</dl>'
        "<h2>Notes from the analysis</h2>" + notes_html
        + "<h2>About this trace</h2>" + table_html([("", "l"), ("", "l")], fact_rows)
        + "</section>"
    )


def _ab_section(analysis: Analysis) -> str:
    """The A/B section (capture(ab=True) traces): measured cost and saving; "" otherwise."""
    ab = analysis.ab
    if ab is None:
        return ""
    from ckprof.report.ab import ab_html_section
    from ckprof.report.plots import plot_ab

    return ab_html_section(ab, _try_figure(lambda: plot_ab(analysis), "step time and peak memory per A/B variant"))


def render_report(analysis: Analysis, *, title: str | None = None,
                  sections: Sequence[str] = ()) -> str:
    """The full self-contained report page (see module docstring). ``sections``: more
    ``<section>`` HTML, already escaped, placed after the ops section (the CLI adds the
    selective-checkpointing advice of :mod:`ckprof.strategy.advice` this way)."""
    from ckprof._version import __version__

    name = Path(str(analysis.trace.path)).name
    page_title = title or f"ckprof report: {name}"
    body = "".join([
        f"<h1>{escape(page_title)}</h1>",
        f'<p class="sub">What activation checkpointing costs (time) and buys (memory) in this training step. '
        f"Trace: {escape(str(analysis.trace.path))}</p>",
        _headline(analysis),
        _ab_section(analysis),
        _time_section(analysis),
        _regions_section(analysis),
        _memory_section(analysis),
        _composition_section(analysis),
        _gpu_section(analysis),
        _ops_section(analysis),
        *sections,
        _about_section(analysis),
        f"<footer>Generated by ckprof {escape(__version__)}. Self-contained page: no scripts, no network.</footer>",
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(page_title)}</title><style>{_REPORT_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
