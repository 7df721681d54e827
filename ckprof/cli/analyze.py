"""``ckprof analyze``: the main report, for a trace file or a directory of rank traces."""

from __future__ import annotations

import threading
from importlib import import_module
from pathlib import Path

import click

from ckprof.analysis.detection import RECOMPUTE_DETECTIONS
from ckprof.errors import CkprofError, UsageError

EXAMPLE = """
\b
Examples:
  ckprof analyze traces/demo/host_123_rank0_0.pt.trace.json.gz
  ckprof analyze trace.json --format json | jq .recompute_overhead_pct
  ckprof analyze trace.json --recompute-detection sequence   # cross-check the markers
  ckprof analyze runs/job42/            # every rank's trace, in parallel
  ckprof analyze traces/demo/*.json.gz  # several files: ranks, or repeated runs of one rank
  ckprof analyze --with-hta runs/job42/ # HTA kernel breakdown split by phase
  ckprof analyze trace.json --ops         # which ops recompute (and forward) is made of
  ckprof analyze trace.json --composition # what each phase's memory peak is made of
  ckprof analyze trace.json --gpu-activity  # GPU busy / idle / overlap per phase
  ckprof analyze ab_trace.json.gz       # capture(ab=True): cost and saving, measured
"""


@click.command(epilog=EXAMPLE)
@click.argument("traces", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False), metavar="TRACE...")
@click.option("--step", type=int, default=None, help="Only this ProfilerStep#N.")
@click.option("--variant", default=None,
              help="A/B trace (capture(ab=True)): only the steps of this variant, on or off.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv", "markdown"]), default="table",
    show_default=True, help="Output format; json is a stable contract for scripts.",
)
@click.option(
    "--recompute-detection", type=click.Choice(RECOMPUTE_DETECTIONS),
    default="auto", show_default=True,
    help="How to find forward recompute: ckprof markers, recompute_fn Python frames, "
    "or grad-mode ops inside backward. auto picks the most exact one the trace supports. "
    "Recompute inside torch.compile'd backward graphs (from ckprof's compile record) is "
    "added to every method but none; compiled uses only that.",
)
@click.option("--salvage", is_flag=True, help="Analyse the complete events of a truncated trace.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes for a directory of traces (default: cores; never more than the "
                   "cores, the files or what memory holds).")
@click.option("--engine", type=click.Choice(["processes", "dask"]), default="processes", show_default=True,
              help="Where per-rank analyses of a directory run.")
@click.option("--scheduler", default=None,
              help="Dask scheduler address for --engine dask (default: a local cluster).")
@click.option("--recursive", is_flag=True, help="For a directory: also the traces in its subfolders.")
@click.option("--with-hta", is_flag=True, help="Also print HTA's kernel breakdown / idle time split by phase (needs ckprof[hta]).")
@click.option("--ops", is_flag=True,
              help="Also list which ops recompute and forward are made of (self time, GPU "
                   "time, counts), in total and per checkpointed region.")
@click.option("--composition", is_flag=True,
              help="Also split each phase's memory peak by the phase (and op) that allocated "
                   "the live bytes.")
@click.option("--gpu-activity", "gpu_activity", is_flag=True,
              help="Also report GPU busy time (union of intervals), overlap, kernels, idle "
                   "time and utilisation per phase.")
@click.option("-o", "--output", type=click.Path(path_type=Path, readable=False), default=None,
              help="Write to this file instead of stdout (never overwrites without --force).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it is an existing file.")
def analyze(traces: tuple[Path, ...], step: int | None, variant: str | None, fmt: str, recompute_detection: str, salvage: bool,
            workers: int | None, engine: str, scheduler: str | None, recursive: bool, with_hta: bool,
            ops: bool, composition: bool, gpu_activity: bool, output: Path | None,
            force: bool) -> None:
    """Split a training step's time into forward, backward, forward recompute (per
    checkpointed region) and optimizer, and report peak memory per phase.

    TRACE is a Chrome/Kineto trace (.json or .json.gz, from export_chrome_trace or
    tensorboard_trace_handler, with or without ckprof markers), an Nsight Systems
    sqlite export, or a directory of such traces (one per rank). Several TRACEs are
    compared like a directory: as ranks of one job when they record different ranks,
    as repeated runs of one rank when they all record the same one (the headline
    says which).
    """
    from ckprof.report.output import emit

    if output is not None:
        from ckprof.report.output import check_output_target

        check_output_target(output, force=force)  # before the work, not after
    from ckprof.trace.kineto.source import check_input_path

    dirs = [t for t in traces if check_input_path(t)]  # missing, a link loop, a FIFO: never block
    if len(traces) > 1:
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
    is_dir = bool(dirs)
    if with_hta:
        from ckprof.integrations.hta import hta_phase_tables, render_hta_tables

        tables = hta_phase_tables(trace, recompute_detection=recompute_detection, step=step)
        text = render_hta_tables(tables, fmt)
        emit(text, output, force=force)
        return
    if is_dir:
        from ckprof.trace.load import find_rank_candidates

        files = find_rank_candidates(trace, include_nsys=True, recursive=recursive)
        if not recursive:
            _say_skipped_subfolders(trace)
        if len(files) == 1:
            trace = files[0]
        else:
            from ckprof.integrations.ranks import analyze_directory, render_rank_summary

            summary = analyze_directory(trace, workers=workers, recompute_detection=recompute_detection,
                                        engine=engine, scheduler=scheduler, recursive=recursive)
            emit(render_rank_summary(summary, fmt), output, force=force)
            if summary.ranks == 0:
                raise _nothing_analysed(summary)
            return

    from ckprof.trace.load import is_trace_path

    if not is_trace_path(trace):  # Nsight Systems sqlite, or not a trace: the general way
        from ckprof.analysis import load
        from ckprof.report.tables import render

        analysis = load(trace, recompute_detection=recompute_detection, step=step, salvage=salvage,
                        variant=variant)
        emit(render(analysis, fmt, ops=ops, composition=composition, gpu=gpu_activity),
             output, force=force)
        return
    # NOTE [ Imports while reading ]: the analysis and report modules load in a thread
    # while this one reads the trace, which needs only numpy, msgspec and the native
    # scanner (those release the GIL). Analysing and rendering the four formats import no
    # pandas (NOTE [ Tables, not DataFrames, inside the stages ]); the looking-inside
    # options build DataFrames, so with one of them pandas (~0.2 s of imports) loads in
    # that thread too.
    pandas = ("pandas",) if ops or composition or gpu_activity else ()
    importer = _import_in_background(*pandas, "ckprof.analysis", "ckprof.report.tables")
    try:
        from ckprof.trace.load import load_trace

        loaded = load_trace(trace, salvage=salvage)
        from ckprof.analysis import analyze as analyze_trace
        from ckprof.report.tables import render

        analysis = analyze_trace(loaded, recompute_detection=recompute_detection, step=step,
                                  variant=variant)
        emit(render(analysis, fmt, ops=ops, composition=composition, gpu=gpu_activity),
             output, force=force)
    finally:
        importer.join()  # never exit in the middle of an import


def _import_in_background(*modules: str) -> threading.Thread:
    """Import ``modules`` in a daemon thread (a failure is left for the caller's own
    import to report)."""

    def run() -> None:
        for name in modules:
            try:
                import_module(name)
            except Exception:
                return

    thread = threading.Thread(target=run, name="ckprof-imports", daemon=True)
    thread.start()
    return thread


def _nothing_analysed(summary) -> CkprofError:
    """Every file of a directory failed: exit with their common exit code (else 1)."""
    codes = set(summary.failures["exit_code"].tolist())
    code = codes.pop() if len(codes) == 1 else 1
    error = CkprofError(f"none of the {len(summary.failures)} trace file(s) could be analysed "
                        "(listed above)", path=summary.directory,
                        hint="Fix or re-capture them; ckprof analyze FILE shows one file's error")
    error.exit_code = code
    return error


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
