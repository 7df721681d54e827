"""``ckprof analyze``: the main report, for a trace file or a directory of rank traces."""

from __future__ import annotations

from pathlib import Path

import click

from ckprof.analysis.detection import RECOMPUTE_DETECTIONS
from ckprof.errors import TraceNotFoundError, UsageError

EXAMPLE = """
\b
Examples:
  ckprof analyze traces/demo/host_123_rank0_0.pt.trace.json.gz
  ckprof analyze trace.json --format json | jq .recompute_overhead_pct
  ckprof analyze trace.json --recompute-detection sequence   # cross-check the markers
  ckprof analyze runs/job42/            # every rank's trace, in parallel
  ckprof analyze traces/demo/*.json.gz  # several files: ranks, or repeated runs of one rank
  ckprof analyze --with-hta runs/job42/ # HTA kernel breakdown split by phase
"""


@click.command(epilog=EXAMPLE)
@click.argument("traces", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="TRACE...")
@click.option("--step", type=int, default=None, help="Only this ProfilerStep#N.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv", "markdown"]), default="table",
    show_default=True, help="Output format; json is a stable contract for scripts.",
)
@click.option(
    "--recompute-detection", type=click.Choice(RECOMPUTE_DETECTIONS),
    default="auto", show_default=True,
    help="How to find forward recompute: ckprof markers, recompute_fn Python frames, "
    "or grad-mode ops inside backward. auto picks the most exact one the trace supports.",
)
@click.option("--salvage", is_flag=True, help="Analyse the complete events of a truncated trace.")
@click.option("--workers", type=int, default=None, help="Processes for a directory of traces (default: cores).")
@click.option("--engine", type=click.Choice(["processes", "dask"]), default="processes", show_default=True,
              help="Where per-rank analyses of a directory run.")
@click.option("--scheduler", default=None,
              help="Dask scheduler address for --engine dask (default: a local cluster).")
@click.option("--recursive", is_flag=True, help="For a directory: also the traces in its subfolders.")
@click.option("--with-hta", is_flag=True, help="Also print HTA's kernel breakdown / idle time split by phase (needs ckprof[hta]).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Write to this file instead of stdout (never overwrites without --force).")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
def analyze(traces: tuple[Path, ...], step: int | None, fmt: str, recompute_detection: str, salvage: bool,
            workers: int | None, engine: str, scheduler: str | None, recursive: bool, with_hta: bool,
            output: Path | None, force: bool) -> None:
    """Split a training step's time into forward, backward, forward recompute (per
    checkpointed region) and optimizer, and report peak memory per phase.

    TRACE is a Chrome/Kineto trace (.json or .json.gz, from export_chrome_trace or
    tensorboard_trace_handler, with or without ckprof markers), an Nsight Systems
    sqlite export, or a directory of such traces (one per rank). Several TRACEs are
    compared like a directory: as ranks of one job when they record different ranks,
    as repeated runs of one rank when they all record the same one (the headline
    says which).
    """
    from ckprof.report.output import check_new_path, emit

    for trace in traces:
        if not trace.exists():
            raise TraceNotFoundError("no such file or directory", path=str(trace),
                                     hint="Check the path; ckprof demo writes traces under traces/demo/")
    if output is not None:
        check_new_path(output, force=force)
    if len(traces) > 1:
        dirs = [t for t in traces if t.is_dir()]
        if dirs:
            raise UsageError(f"{dirs[0]} is a directory; several TRACE arguments must be files",
                             hint="Pass one directory, or the trace files themselves")
        if with_hta or step is not None or salvage:
            flag = "--with-hta" if with_hta else ("--step" if step is not None else "--salvage")
            raise UsageError(f"{flag} reads one trace at a time", hint="Pass one TRACE")
        from ckprof.integrations.ranks import analyze_files, render_rank_summary

        summary = analyze_files(traces, workers=workers, recompute_detection=recompute_detection,
                                engine=engine, scheduler=scheduler)
        emit(render_rank_summary(summary, fmt), output, force=force)
        return
    (trace,) = traces
    if with_hta:
        from ckprof.integrations.hta import hta_phase_tables, render_hta_tables

        tables = hta_phase_tables(trace, recompute_detection=recompute_detection, step=step)
        text = render_hta_tables(tables, fmt)
        emit(text, output, force=force)
        return
    if trace.is_dir():
        from ckprof.trace.load import find_trace_files

        files = find_trace_files(trace, include_nsys=True, recursive=recursive)
        if not recursive:
            _say_skipped_subfolders(trace)
        if len(files) == 1:
            trace = files[0]
        else:
            from ckprof.integrations.ranks import analyze_directory, render_rank_summary

            summary = analyze_directory(trace, workers=workers, recompute_detection=recompute_detection,
                                        engine=engine, scheduler=scheduler, recursive=recursive)
            emit(render_rank_summary(summary, fmt), output, force=force)
            return

    from ckprof.analysis import load
    from ckprof.report.tables import render

    analysis = load(trace, recompute_detection=recompute_detection, step=step, salvage=salvage)
    emit(render(analysis, fmt), output, force=force)


def _say_skipped_subfolders(directory: Path) -> None:
    """``analyze DIR`` reads DIR's own files: name the subfolders it did not look in."""
    try:
        subdirs = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    if subdirs:
        shown = ", ".join(subdirs[:5]) + (", ..." if len(subdirs) > 5 else "")
        click.echo(f"ckprof: {directory}: subfolders not searched ({shown}); pass --recursive "
                   "to include their traces", err=True)
