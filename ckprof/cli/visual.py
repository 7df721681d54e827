"""``ckprof plot``, ``ckprof report``, ``ckprof annotate``: see it.

Thin commands over :mod:`ckprof.report.plots`, :mod:`ckprof.report.html` and
:mod:`ckprof.report.annotate`. None of them overwrites an existing file unless
``--force`` (:class:`~ckprof.errors.OutputExistsError`, exit code 8 otherwise),
and none modifies the input trace.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ckprof.analysis.detection import RECOMPUTE_DETECTIONS
from ckprof.errors import TraceNotFoundError
from ckprof.report.output import check_new_path


def _analysis_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every visual command shares with ``ckprof analyze``."""
    func = click.option("--salvage", is_flag=True,
                        help="Use the complete events of a truncated trace.")(func)
    func = click.option(
        "--recompute-detection", type=click.Choice(RECOMPUTE_DETECTIONS), default="auto", show_default=True,
        help="How to find forward recompute (see ckprof analyze --help).")(func)
    func = click.option("--step", type=int, default=None, help="Only this ProfilerStep#N.")(func)
    func = click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")(func)
    return func


def _load(trace: Path, recompute_detection: str, step: int | None, salvage: bool):
    from ckprof.trace.kineto.source import check_input_path

    if check_input_path(trace):  # missing, a link loop, a FIFO: say so, never block
        from ckprof.trace.load import find_trace_files

        files = find_trace_files(trace)
        if len(files) != 1:
            raise TraceNotFoundError(
                f"holds {len(files)} traces; this command reads one", path=str(trace),
                hint="Pass one trace file",
            )
        trace = files[0]
    from ckprof.analysis import load

    return load(trace, recompute_detection=recompute_detection, step=step, salvage=salvage)


PLOT_EXAMPLE = """
\b
Examples:
  ckprof plot trace.json.gz --kind memory -o memory.png
  ckprof plot trace.json.gz --kind breakdown -o breakdown.svg
  ckprof plot trace.json.gz --kind regions -o regions.pdf --force
  ckprof plot trace.json.gz --kind composition -o composition.png
"""


@click.command(epilog=PLOT_EXAMPLE)
@click.argument("trace", type=click.Path(path_type=Path, readable=False))
@click.option("--kind", type=click.Choice(["memory", "breakdown", "regions", "categories",
                                           "composition", "ab"]),
              default="memory", show_default=True,
              help="memory: allocated bytes over time with phases shaded and peaks marked; "
                   "breakdown: stacked time per phase per step; regions: recompute time per "
                   "checkpointed region; categories: torch memory-profiler categories (when saved); "
                   "composition: live bytes stacked by the phase that allocated them; "
                   "ab: checkpointing on vs off, step time and peak memory (capture(ab=True)).")
@click.option("-o", "--output", type=click.Path(path_type=Path, readable=False), required=True,
              help="Image file: .png, .svg or .pdf.")
@click.option("--dpi", type=click.IntRange(10, 1200), default=120, show_default=True,
              help="Resolution of .png output (10-1200).")
@_analysis_options
def plot(trace: Path, kind: str, output: Path, dpi: int, force: bool, step: int | None,
         recompute_detection: str, salvage: bool) -> None:
    """Draw one figure of TRACE's analysis into OUTPUT (never overwrites without --force)."""
    from ckprof.report.plots import FIGURE_FORMATS, make_plot, save_figure

    if output.suffix.lower() not in FIGURE_FORMATS:
        raise click.BadParameter(f"use one of {', '.join(FIGURE_FORMATS)}", param_hint="--output")
    check_new_path(output, force=force)
    analysis = _load(trace, recompute_detection, step, salvage)
    fig = make_plot(analysis, kind)
    save_figure(fig, output, force=force, dpi=dpi)
    click.echo(f"wrote {output}", err=True)


REPORT_EXAMPLE = """
\b
Examples:
  ckprof report trace.json.gz -o report.html
  ckprof report trace.json.gz --step 3 -o step3.html --force
"""


@click.command(epilog=REPORT_EXAMPLE)
@click.argument("trace", type=click.Path(path_type=Path, readable=False))
@click.option("-o", "--output", type=click.Path(path_type=Path, readable=False), required=True,
              help="HTML file to write (self-contained: open it in any browser, offline).")
@click.option("--title", default=None, help="Page title (default: 'ckprof report: <trace name>').")
@_analysis_options
def report(trace: Path, output: Path, title: str | None, force: bool, step: int | None,
           recompute_detection: str, salvage: bool) -> None:
    """Write a one-page HTML report of TRACE: headline numbers, time per phase,
    recompute per region, memory over time, each with a short guide to reading it."""
    from ckprof.report.html import render_report
    from ckprof.report.output import encode_text, write_new_file

    check_new_path(output, force=force)
    from ckprof.strategy.advice import advice_section

    analysis = _load(trace, recompute_detection, step, salvage)
    page = render_report(analysis, title=title, sections=(advice_section(analysis),))
    write_new_file(output, encode_text(page), force=force)
    click.echo(f"wrote {output}", err=True)


ANNOTATE_EXAMPLE = """
\b
Examples:
  ckprof annotate trace.json.gz -o trace.ckprof.json.gz
  # then open trace.ckprof.json.gz in https://ui.perfetto.dev or chrome://tracing
"""


@click.command(epilog=ANNOTATE_EXAMPLE)
@click.argument("trace", type=click.Path(path_type=Path, readable=False))
@click.option("-o", "--output", type=click.Path(path_type=Path, readable=False), required=True,
              help="Annotated copy (.json or .json.gz); the original is never modified.")
@_analysis_options
def annotate(trace: Path, output: Path, force: bool, step: int | None, recompute_detection: str,
             salvage: bool) -> None:
    """Write a copy of TRACE with ckprof's phases, recompute regions and per-phase
    peak memory as extra tracks (a process named "ckprof"), for Perfetto UI and
    chrome://tracing."""
    from ckprof.report.annotate import write_annotated_trace

    check_new_path(output, force=force)
    analysis = _load(trace, recompute_detection, step, salvage)
    write_annotated_trace(analysis, output, force=force)
    click.echo(f"wrote {output}", err=True)
