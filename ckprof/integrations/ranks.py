"""Analyse a directory of per-rank traces in parallel, and compare the ranks.

Contract::

    analyze_directory(path, *, workers=None, recompute_detection="auto",
                      engine="processes" | "dask" | "serial", progress=None,
                      scheduler=None, recursive=False) -> RankSummary
    analyze_files(paths, *, same options) -> RankSummary   (any list of trace files)
    summarize_ranks(results, *, directory="", engine="", workers=0) -> RankSummary
    analyze_rank_file(path, recompute_detection="auto") -> RankResult   (the per-rank task)
    render_rank_summary(summary, fmt="table") -> str     (table | text | json | csv | markdown)

``RankSummary`` (frozen):

- ``per_rank``: one row per analysed file, sorted by rank: ``rank`` int64, ``file``,
  ``rank_source`` (``distributedInfo`` | ``ckprof`` | ``file name`` | ``file index``),
  ``steps``, ``step_ms`` (sum over the file's steps), ``<phase>_ms`` for every phase of
  :data:`ckprof.trace.markers.PHASES` (wall time), ``<phase>_gpu_ms`` (NaN without GPU events),
  ``recompute_overhead_pct``, ``recompute_detection``, ``memory_device`` (the device the
  ``peak_*`` columns describe: the GPU with the highest peak, else ``cpu``), and
  ``peak_<phase>_bytes`` (-1 when that phase has no memory event).
- ``per_rank_memory``: long form of every peak: ``rank``, ``phase``, ``device``, ``peak_bytes``.
- ``cross_rank``: one row per numeric per-rank metric (``step_ms``, ``<phase>_ms``,
  ``recompute_overhead_pct``, ``peak_<phase>_bytes``): ``metric``, ``unit``,
  ``slowest_rank`` (the rank with the maximum; for memory: the highest peak),
  ``max``, ``median``, ``min``, ``fastest_rank``, ``spread`` (max - min) and
  ``spread_pct`` (spread / median x 100). Ties go to the lowest rank.
- ``failures``: ``file``, ``error_type``, ``message`` (one line), ``exit_code`` (what
  ``ckprof analyze FILE`` would exit with): every file that looks like a trace by its
  name (``*.json[.gz]`` that is not another tool's JSON, ``*.pt.trace.*``) or content
  and could not be analysed -- empty, not JSON, damaged gzip, UTF-16, a FIFO or device,
  a symlink loop, unreadable; the others are still reported.
- ``recompute_spread_ms`` / ``recompute_spread_pct``: the spread of recompute time.
- ``notes``: how ranks were numbered when the files did not say, duplicates, etc.
- ``kind``: ``ranks`` (the files are different ranks of one job) or ``runs`` (every
  file records the same rank: repeated runs of one rank, numbered 0.. by file name in
  the ``rank`` column, ``rank_source`` ``run index``); the headline says which.

# NOTE [ Bounded memory across thousands of ranks ]
# Workers load and analyse one file each and return a RankResult: a few dozen numbers,
# never a Trace or a DataFrame. The driver therefore holds O(N x small) no matter how big
# the traces are, and the peak memory of the machine is bounded by ``workers`` x the peak
# of one analysis. With the process engine every worker process analyses ONE file and
# exits (``max_tasks_per_child=1``): memory the allocator kept after a multi-GB trace is
# returned to the OS at once. Workers start from a ``forkserver`` that has already
# imported pandas and ckprof, so a fresh worker costs a fork, not a 1 s import. Files are
# submitted largest first so that a big rank does not start last.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat as stat_mode
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ckprof._text import printable
from ckprof.errors import CkprofError, OptionalDependencyError, TraceNotFoundError, UsageError
from ckprof.report.text import (
    MISSING,
    check_format,
    format_bytes,
    jsonable,
    markdown_table,
    records,
    text_table,
)
from ckprof.trace.markers import PHASES

__all__ = [
    "ENGINES",
    "RankResult",
    "RankSummary",
    "analyze_directory",
    "analyze_files",
    "analyze_rank_file",
    "render_rank_summary",
    "summarize_ranks",
]

ENGINES: tuple[str, ...] = ("processes", "dask", "serial")
_RANK_IN_NAME = re.compile(r"rank[_\-]?0*([0-9]{1,18})(?![0-9])", re.IGNORECASE)
#: ranks are non-negative int64 (a rank of 2**70 in a file is not a rank)
_RANK_MAX = 2**63 - 1
#: memory one rank worker needs besides the trace itself (interpreter, pandas, numpy)
WORKER_BASE_BYTES = 350 * 1024 * 1024


@dataclass(frozen=True)
class RankResult:
    """What one worker sends back for one file: small, picklable, no DataFrames."""

    file: str
    ok: bool
    rank: int | None = None
    rank_source: str = ""
    steps: int = 0
    step_ms: float = 0.0
    wall_ms: tuple[tuple[str, float], ...] = ()
    gpu_ms: tuple[tuple[str, float], ...] = ()
    recompute_overhead_pct: float = math.nan
    recompute_detection: str = ""
    #: (phase, device, peak_bytes) for every phase x device with memory events
    memory: tuple[tuple[str, str, int], ...] = ()
    error_type: str = ""
    message: str = ""
    #: the CLI exit code of the error (0 when ok)
    exit_code: int = 0
    #: remarks about this file (a rank that could not be used, ...)
    notes: tuple[str, ...] = ()


def usable_rank(value: Any) -> int | None:
    """``value`` as a rank (0..2^63-1): an int, or a string of ASCII digits; else None."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if type(value) is int and 0 <= value <= _RANK_MAX:
        return value
    return None


def rank_from_metadata(metadata: Any, ckprof_meta: Any,
                       notes: list[str] | None = None) -> tuple[int | None, str]:
    """The rank the trace records: ``distributedInfo.rank``, else ckprof's ``rank``.
    A recorded value that is not a rank (negative, beyond int64, not an integer) is
    not used; ``notes`` (when given) says so."""
    dist = metadata.get("distributedInfo") if hasattr(metadata, "get") else None
    sources = (("distributedInfo", dist), ("ckprof", ckprof_meta))
    for source, holder in sources:
        if not hasattr(holder, "get") or "rank" not in holder:
            continue
        rank = usable_rank(holder.get("rank"))
        if rank is not None:
            return rank, source
        if notes is not None:
            shown = repr(holder.get("rank"))
            notes.append(f"{source}.rank {shown[:30]} is not a rank (0..2^63-1): not used")
    return None, ""


def rank_from_name(path: str | os.PathLike[str]) -> int | None:
    """``rank<N>`` in the file name (``host_rank3.pt.trace.json``; ASCII digits that
    fit int64), else None."""
    m = _RANK_IN_NAME.search(Path(path).name)
    return int(m.group(1)) if m else None


def analyze_rank_file(path: str, recompute_detection: str = "auto") -> RankResult:
    """Load and analyse one rank's trace; return only its small summary.

    Never raises for a bad trace: the error becomes ``RankResult(ok=False, ...)`` with a
    one-line message, so that one damaged rank does not stop the others. Top-level (and
    therefore picklable) so process pools and Dask can ship it.
    """
    try:
        from ckprof.analysis import load

        # one file per worker process already: no nested loader processes
        analysis = load(path, recompute_detection=recompute_detection, load_workers=1)
        totals = analysis.totals_table()
        mem = analysis.memory_table()
        notes: list[str] = []
        rank, source = rank_from_metadata(analysis.trace.metadata, analysis.trace.ckprof, notes)
        if rank is None:
            rank = rank_from_name(path)
            source = "file name" if rank is not None else ""
        overhead = analysis.time.recompute_overhead_pct
        return RankResult(
            file=str(path),
            ok=True,
            rank=rank,
            rank_source=source,
            steps=int(analysis.step_count),
            step_ms=float(analysis.step_total_ns) / 1e6,
            wall_ms=tuple((str(r.phase), float(r.wall_ms)) for r in totals.itertuples(index=False)),
            gpu_ms=tuple((str(r.phase), float(r.gpu_ms)) for r in totals.itertuples(index=False)),
            recompute_overhead_pct=math.nan if overhead is None else float(overhead),
            recompute_detection=str(analysis.recompute_found_by),
            memory=tuple((str(r.phase), str(r.device), int(r.peak_bytes)) for r in mem.itertuples(index=False)),
            notes=tuple(notes),
        )
    except Exception as err:  # every failure is reported per file, see docstring
        return failed_result(path, err)


def failed_result(path: str | os.PathLike[str], err: BaseException) -> RankResult:
    """The one-line failure record of a file (a CkprofError's own message; other
    exceptions prefixed with their type)."""
    lines = str(err).strip().splitlines()  # split first: printable escapes the newlines
    message = printable(lines[0]) if lines else repr(err)
    if not isinstance(err, CkprofError):
        message = f"{type(err).__name__}: {message}"
    code = err.exit_code if isinstance(err, CkprofError) else 1
    return RankResult(file=str(path), ok=False, error_type=type(err).__name__, message=message,
                      exit_code=code)


# ---------------------------------------------------------------------------------------
# Summary (pure)
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankSummary:
    """Per-rank and cross-rank tables for a directory of traces (see module docstring)."""

    directory: str
    per_rank: pd.DataFrame
    per_rank_memory: pd.DataFrame
    cross_rank: pd.DataFrame
    failures: pd.DataFrame
    engine: str = ""
    workers: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    kind: str = "ranks"

    @property
    def ranks(self) -> int:
        return len(self.per_rank)

    def _stat(self, metric: str, col: str) -> float:
        row = self.cross_rank[self.cross_rank["metric"] == metric]
        return float(row[col].iloc[0]) if len(row) else math.nan

    @property
    def recompute_spread_ms(self) -> float:
        """max - min of per-rank recompute wall time (NaN without ranks)."""
        return self._stat("recompute_ms", "spread")

    @property
    def recompute_spread_pct(self) -> float:
        return self._stat("recompute_ms", "spread_pct")

    def slowest_rank(self, metric: str = "step_ms") -> int | None:
        """The rank with the largest ``metric`` (``step_ms``, ``backward_ms``, ...)."""
        row = self.cross_rank[self.cross_rank["metric"] == metric]
        return None if row.empty or pd.isna(row["slowest_rank"].iloc[0]) else int(row["slowest_rank"].iloc[0])


def _metric_unit(metric: str) -> str:
    if metric.endswith("_bytes"):
        return "bytes"
    if metric.endswith("_pct"):
        return "%"
    return "ms"


def _per_rank_columns() -> list[str]:
    return ["rank", "file", "rank_source", "steps", "step_ms",
            *(f"{p}_ms" for p in PHASES), *(f"{p}_gpu_ms" for p in PHASES),
            "recompute_overhead_pct", "recompute_detection", "memory_device",
            *(f"peak_{p}_bytes" for p in PHASES)]


def cross_rank_metrics() -> list[str]:
    """The per-rank columns compared across ranks, in display order."""
    return ["step_ms", *(f"{p}_ms" for p in PHASES), "recompute_overhead_pct",
            *(f"peak_{p}_bytes" for p in PHASES)]


def _main_device(memory: Sequence[tuple[str, str, int]]) -> str:
    """The device the per-rank peak columns describe: the GPU with the highest peak, else
    the highest-peak device (``cpu``)."""
    if not memory:
        return ""
    gpu = [m for m in memory if m[1] != "cpu"]
    pool = gpu or list(memory)
    return max(pool, key=lambda m: (m[2], m[1]))[1]


def summarize_ranks(results: Iterable[RankResult], *, directory: str = "", engine: str = "",
                    workers: int = 0) -> RankSummary:
    """Build the per-rank and cross-rank tables from worker results (pure function).

    Files whose rank is not recorded take the rank in their name, else their position
    in the sorted file list (noted). Results may arrive in any order.
    """
    results = sorted(results, key=lambda r: r.file)
    notes: list[str] = []
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    index_of = {r.file: i for i, r in enumerate(results)}
    rows: list[dict[str, Any]] = []
    mem_rows: list[dict[str, Any]] = []
    recorded = {r.rank for r in ok}
    kind = "runs" if len(ok) > 1 and len(recorded) == 1 and None not in recorded else "ranks"
    if kind == "runs":
        only = next(iter(recorded))
        notes.append(f"all {len(ok)} files record rank {only}: compared as repeated runs of "
                     "one rank, numbered by file name (the rank column is the run)")
    run_of = {r.file: i for i, r in enumerate(ok)}
    for r in ok:
        notes += [f"{printable(Path(r.file).name)}: {n}" for n in r.notes]
        rank, source = r.rank, r.rank_source
        if kind == "runs":
            rank, source = run_of[r.file], "run index"
        elif rank is None:
            rank, source = index_of[r.file], "file index"
            notes.append(f"{Path(r.file).name}: no rank in the trace or its name; "
                         f"numbered {rank} by its position in the directory")
        wall = dict(r.wall_ms)
        gpu = dict(r.gpu_ms)
        device = _main_device(r.memory)
        row: dict[str, Any] = {
            "rank": rank, "file": r.file, "rank_source": source, "steps": r.steps, "step_ms": r.step_ms,
            **{f"{p}_ms": float(wall.get(p, 0.0)) for p in PHASES},
            **{f"{p}_gpu_ms": float(gpu.get(p, math.nan)) for p in PHASES},
            "recompute_overhead_pct": r.recompute_overhead_pct,
            "recompute_detection": r.recompute_detection,
            "memory_device": device,
        }
        peaks = {ph: b for ph, dev, b in r.memory if dev == device}
        row.update({f"peak_{p}_bytes": int(peaks.get(p, -1)) for p in PHASES})
        rows.append(row)
        mem_rows += [{"rank": rank, "phase": ph, "device": dev, "peak_bytes": b} for ph, dev, b in r.memory]

    per_rank = pd.DataFrame(rows, columns=_per_rank_columns())
    per_rank = per_rank.astype({"rank": "int64", "steps": "int64",
                                **{f"peak_{p}_bytes": "int64" for p in PHASES}})
    per_rank = per_rank.sort_values(["rank", "file"], kind="stable").reset_index(drop=True)
    dup = per_rank["rank"][per_rank["rank"].duplicated()].unique().tolist()
    if dup:
        notes.append(f"rank(s) {', '.join(map(str, dup))} appear in more than one file")
    per_rank_memory = pd.DataFrame(mem_rows, columns=["rank", "phase", "device", "peak_bytes"]).astype(
        {"rank": "int64", "peak_bytes": "int64"})
    per_rank_memory = per_rank_memory.sort_values(["rank", "device", "phase"], kind="stable").reset_index(drop=True)
    failures = pd.DataFrame([{"file": r.file, "error_type": r.error_type, "message": r.message,
                              "exit_code": r.exit_code} for r in failed],
                            columns=["file", "error_type", "message", "exit_code"])
    return RankSummary(directory=str(directory), per_rank=per_rank, per_rank_memory=per_rank_memory,
                       cross_rank=_cross_rank(per_rank), failures=failures, engine=engine,
                       workers=int(workers), notes=tuple(notes), kind=kind)


def _cross_rank(per_rank: pd.DataFrame) -> pd.DataFrame:
    """max / median / min / spread of every metric over ranks (lowest rank wins ties)."""
    cols = ["metric", "unit", "slowest_rank", "max", "median", "min", "fastest_rank", "spread", "spread_pct"]
    rows = []
    ranks = per_rank["rank"].to_numpy()
    for metric in cross_rank_metrics():
        values = per_rank[metric].to_numpy(dtype="float64")
        if metric.startswith("peak_"):
            values = np.where(values < 0, np.nan, values)
        valid = ~np.isnan(values)
        if not valid.any():
            continue
        v, rk = values[valid], ranks[valid]
        order = np.lexsort((rk, -v))  # largest first, lowest rank on ties
        hi_i = order[0]
        lo_order = np.lexsort((rk, v))
        lo_i = lo_order[0]
        med = float(np.median(v))
        spread = float(v[hi_i] - v[lo_i])
        rows.append({
            "metric": metric, "unit": _metric_unit(metric),
            "slowest_rank": int(rk[hi_i]), "max": float(v[hi_i]), "median": med,
            "min": float(v[lo_i]), "fastest_rank": int(rk[lo_i]), "spread": spread,
            "spread_pct": (spread / med * 100.0) if med else math.nan,
        })
    out = pd.DataFrame(rows, columns=cols)
    return out.astype({"slowest_rank": "int64", "fastest_rank": "int64"}) if len(out) else out


# ---------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------

def _list_files(directory: Path, recursive: bool = False) -> list[Path]:
    from ckprof.trace.load import find_rank_candidates

    return [Path(p) for p in find_rank_candidates(directory, include_nsys=True, recursive=recursive)]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def default_workers(n_files: int) -> int:
    """One worker per core (``os.sched_getaffinity`` when available), at most one per file."""
    return max(1, min(_cores(), n_files))


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}", hint=f"Choose one of {', '.join(ENGINES)}")


def clamp_workers(requested: int | None, files: Sequence[Path],
                  notes: list[str] | None = None) -> int:
    """Worker processes for ``files``: ``requested`` (default: one per core), never more
    than the cores, the files, or what memory holds -- the largest traces (started
    first) at about 1x their uncompressed size each plus :data:`WORKER_BASE_BYTES`.
    ``notes`` says when a request was lowered. Raises UsageError (a ValueError) for ``requested < 1``."""
    if requested is not None and requested < 1:
        raise UsageError(f"workers must be at least 1, not {requested}",
                         hint="Pass --workers 1 or more, or leave it out (one per core)")
    cores = _cores()
    n = cores if requested is None else requested
    reason = ""
    for limit, why in ((cores, f"{cores} core(s)"), (len(files), f"{len(files)} file(s)")):
        if limit < n:
            n, reason = max(1, limit), why
    from ckprof.trace.kineto.source import available_memory_bytes

    available = available_memory_bytes()
    if available is not None and n > 1:
        sizes = sorted((_estimated_bytes(p) for p in files), reverse=True)
        fits = 1
        while fits < n and sum(sizes[:fits + 1]) + (fits + 1) * WORKER_BASE_BYTES <= available:
            fits += 1
        if fits < n:
            n, reason = fits, f"{available / 2**30:.1f} GiB of memory available"
    if requested is not None and n < requested and notes is not None and reason:
        notes.append(f"--workers {requested} lowered to {n} ({reason})")
    return n


def _estimated_bytes(p: Path) -> int:
    """Uncompressed size of a trace file (gzip: 10x, the typical Kineto ratio). Only a
    regular file is opened (a FIFO would block)."""
    try:
        st = p.stat()
    except OSError:
        return 0
    size = st.st_size
    if not stat_mode.S_ISREG(st.st_mode):
        return 0
    try:
        with open(p, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
    except OSError:
        return size
    return size * 10 if gz else size


def analyze_directory(
    path: str | os.PathLike[str],
    *,
    workers: int | None = None,
    recompute_detection: str = "auto",
    engine: str = "processes",
    progress: bool | None = None,
    scheduler: Any = None,
    recursive: bool = False,
) -> RankSummary:
    """Analyse every trace file in ``path`` (one per rank) and compare the ranks.
    ``recursive``: also the traces in its subfolders.

    ``engine``: ``processes`` (a local process pool, one file per worker process),
    ``dask`` (a ``dask.distributed`` cluster: ``scheduler`` is a ``Client``, a scheduler
    address, or None for a ``LocalCluster`` of ``workers`` single-threaded processes),
    or ``serial`` (in this process, for debugging). ``progress``: None draws a bar on
    stderr when it is a terminal. Raises :class:`TraceNotFoundError` when ``path`` holds
    no trace; a file that fails is listed in ``failures``, never fatal.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise TraceNotFoundError("not a directory", path=str(directory),
                                 hint="Pass a directory holding one trace file per rank")
    _check_engine(engine)  # a usage error first, before looking for files
    files = _list_files(directory, recursive)
    if not files:
        raise TraceNotFoundError("no trace files (*.json, *.json.gz, nsys *.sqlite) in this directory", path=str(directory),
                                 hint="Point ckprof at the folder tensorboard_trace_handler wrote")
    return analyze_files(files, workers=workers, recompute_detection=recompute_detection,
                         engine=engine, progress=progress, scheduler=scheduler,
                         label=str(directory))


def analyze_files(
    paths: Sequence[str | os.PathLike[str]],
    *,
    workers: int | None = None,
    recompute_detection: str = "auto",
    engine: str = "processes",
    progress: bool | None = None,
    scheduler: Any = None,
    label: str | None = None,
) -> RankSummary:
    """Analyse the trace files ``paths`` (ranks of one job, or repeated runs of one rank:
    ``RankSummary.kind`` says which) with the same engines as :func:`analyze_directory`.
    ``label`` names them in the headline (default: their folder, or "N files")."""
    _check_engine(engine)
    files = [Path(p) for p in paths]
    if not files:
        raise TraceNotFoundError("no trace files given", hint="Pass one or more trace files")
    if label is None:
        parents = {str(p.parent) for p in files}
        label = parents.pop() if len(parents) == 1 else f"{len(files)} files"
    directory = Path(label)
    notes: list[str] = []
    n_workers = clamp_workers(workers, files, notes) if engine != "dask" or scheduler is None \
        else (workers or default_workers(len(files)))
    # largest first: the longest task should not start last
    ordered = sorted(files, key=lambda p: (-_size(p), str(p)))
    from ckprof.trace.progress import Progress

    with Progress(len(ordered), unit="ranks", label=f"analysing {directory.name}/", enabled=progress) as bar:
        if engine == "serial":
            results = [_tick(bar, analyze_rank_file(str(p), recompute_detection)) for p in ordered]
        elif engine == "processes":
            results = _run_processes(ordered, recompute_detection, n_workers, bar)
        else:
            results = _run_dask(ordered, recompute_detection, n_workers, scheduler, bar)
    summary = summarize_ranks(results, directory=label, engine=engine, workers=n_workers)
    return replace(summary, notes=(*notes, *summary.notes)) if notes else summary


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _tick(bar: Any, result: RankResult) -> RankResult:
    bar.update(1, label=Path(result.file).name)
    return result


def _main_is_importable() -> bool:
    """forkserver/spawn workers re-import ``__main__`` from its file; ``python -`` (stdin)
    has no file to re-import, and the workers would die at start."""
    import sys

    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def _mp_context() -> Any:
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    if not _main_is_importable() and "fork" in methods:
        return mp.get_context("fork")
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        # imported once in the server; every worker is then a cheap fork of it
        ctx.set_forkserver_preload(["ckprof.integrations.ranks", "ckprof.analysis", "ckprof.trace.load"])
        return ctx
    return mp.get_context("spawn")  # pragma: no cover - non-Linux


def _run_processes(files: Sequence[Path], recompute_detection: str, workers: int, bar: Any,
                   task: Callable[[str, str], RankResult] = analyze_rank_file) -> list[RankResult]:
    """Round 1: all files on ``workers`` processes. A worker that dies (killed for memory,
    segfault) breaks the whole pool and fails every file still in it; those files are
    retried each in a pool of its own, so only the file that kills its worker again is
    reported as failed and every other rank is still analysed."""
    from concurrent.futures.process import BrokenProcessPool

    ctx = _mp_context()
    results, broken = _pool_round(files, recompute_detection, workers, ctx, bar, task)
    for p in broken:
        again, still_broken = _pool_round([p], recompute_detection, 1, ctx, bar, task)
        results += again
        if still_broken:
            results.append(_tick(bar, RankResult(
                file=str(p), ok=False, error_type=BrokenProcessPool.__name__,
                message="the worker process analysing this file died (killed for memory?); "
                        "analyse it alone with ckprof analyze FILE", exit_code=1)))
    return results


def _pool_round(files: Sequence[Path], recompute_detection: str, workers: int, ctx: Any, bar: Any,
                task: Callable[[str, str], RankResult]) -> tuple[list[RankResult], list[Path]]:
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    results: list[RankResult] = []
    broken: list[Path] = []
    # fork (only when __main__ cannot be re-imported) does not allow recycling workers
    recycle = {} if ctx.get_start_method() == "fork" else {"max_tasks_per_child": 1}
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, **recycle) as pool:
        futures = {pool.submit(task, str(p), recompute_detection): p for p in files}
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except BrokenProcessPool:
                broken.append(futures[fut])
                continue
            results.append(_tick(bar, res))
    return results, sorted(broken, key=str)


def _run_dask(files: Sequence[Path], recompute_detection: str, workers: int, scheduler: Any,
              bar: Any) -> list[RankResult]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as err:
        raise OptionalDependencyError(
            "the dask engine needs dask.distributed, which is not installed",
            hint="pip install 'ckprof[dask]'") from err
    own_cluster = None
    if isinstance(scheduler, Client):
        client, own_client = scheduler, False
    elif scheduler is not None:
        client, own_client = Client(scheduler), True
    else:
        own_cluster = LocalCluster(n_workers=workers, processes=True, threads_per_worker=1,
                                   dashboard_address=None)
        client, own_client = Client(own_cluster), True
    try:
        futures = client.map(analyze_rank_file, [str(p) for p in files],
                             recompute_detection=recompute_detection, pure=False)
        path_of = {f.key: p for f, p in zip(futures, files, strict=True)}
        results = []
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except Exception as err:  # a lost worker must not lose the other ranks
                res = RankResult(file=str(path_of[fut.key]), ok=False, error_type=type(err).__name__,
                                 exit_code=1,
                                 message=f"dask task failed: {type(err).__name__}: {err}".splitlines()[0])
            results.append(_tick(bar, res))
            fut.release()
        return results
    finally:
        if own_client:
            client.close()
        if own_cluster is not None:
            own_cluster.close()


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------

def _num(x: float, unit: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if unit == "bytes":
        return format_bytes(x) if x >= 0 else MISSING
    if unit == "%":
        return f"{x:.1f}%"
    return f"{x:,.3f}"


def _rank_rows(summary: RankSummary) -> tuple[list[str], list[list[str]]]:
    headers = ["run" if summary.kind == "runs" else "rank", "step ms", *(f"{p} ms" for p in PHASES), "recompute %", "peak", "file"]
    rows = []
    for r in summary.per_rank.itertuples(index=False):
        peak = max(int(getattr(r, f"peak_{p}_bytes")) for p in PHASES)
        rows.append([str(r.rank), _num(r.step_ms, "ms"), *(_num(getattr(r, f"{p}_ms"), "ms") for p in PHASES),
                     _num(r.recompute_overhead_pct, "%"), _num(float(peak), "bytes"), Path(r.file).name])
    return headers, rows


def _cross_rows(summary: RankSummary) -> tuple[list[str], list[list[str]]]:
    who = "run" if summary.kind == "runs" else "rank"
    headers = ["metric", f"slowest {who}", "max", "median", "min", f"fastest {who}", "spread", "spread %"]
    rows = [[r.metric, str(r.slowest_rank), _num(r.max, r.unit), _num(r.median, r.unit), _num(r.min, r.unit),
             str(r.fastest_rank), _num(r.spread, r.unit), _num(r.spread_pct, "%")]
            for r in summary.cross_rank.itertuples(index=False)]
    return headers, rows


def _headline(summary: RankSummary) -> str:
    failed = len(summary.failures)
    what = (f"{summary.ranks} runs of one rank" if summary.kind == "runs"
            else f"{summary.ranks} rank(s)")
    return (f"{what} analysed from {summary.directory}"
            + (f", {failed} failed" if failed else "")
            + f" · engine {summary.engine}, {summary.workers} worker(s)")


def render_rank_summary(summary: RankSummary, fmt: str = "table") -> str:
    """Render a :class:`RankSummary`: ``table``/``text`` (people), ``json`` (scripts:
    keys ``directory``, ``ranks``, ``cross_rank``, ``failures``, ``recompute_spread_ms``,
    ``notes``), ``csv`` (one tidy table: ``table, metric, stat, rank, file, value``) or
    ``markdown``."""
    renderers: dict[str, Callable[[RankSummary], str]] = {
        "table": _render_text, "json": _render_json, "csv": _render_csv, "markdown": _render_markdown,
    }
    if fmt == "text":  # accepted alias of "table"
        fmt = "table"
    return renderers[check_format(fmt)](summary)


def _render_text(summary: RankSummary) -> str:
    lines = [_headline(summary), "",
             ("Per run" if summary.kind == "runs" else "Per rank") + " (wall ms, all analysed steps)"]
    headers, rows = _rank_rows(summary)
    lines += text_table(headers, rows, "r" * (len(headers) - 1) + "l") if rows else ["  (no rank analysed)"]
    if len(summary.cross_rank):
        lines += ["", "Across runs" if summary.kind == "runs" else "Across ranks"]
        headers, rows = _cross_rows(summary)
        lines += text_table(headers, rows, "l" + "r" * (len(headers) - 1))
        lines.append(f"  recompute spread: {_num(summary.recompute_spread_ms, 'ms')} ms "
                     f"({_num(summary.recompute_spread_pct, '%')} of the median)")
    if len(summary.failures):
        lines += ["", "Failed"]
        lines += [f"  {Path(r.file).name}: {r.message}" for r in summary.failures.itertuples(index=False)]
    if summary.notes:
        lines += ["", "Notes", *(f"  - {n}" for n in summary.notes)]
    return "\n".join(lines) + "\n"


def _render_markdown(summary: RankSummary) -> str:
    lines = [f"**{_headline(summary)}**", "", "### Per run" if summary.kind == "runs" else "### Per rank"]
    headers, rows = _rank_rows(summary)
    lines += markdown_table(headers, rows)
    if len(summary.cross_rank):
        lines += ["", "### Across runs" if summary.kind == "runs" else "### Across ranks"]
        lines += markdown_table(*_cross_rows(summary))
    if len(summary.failures):
        lines += ["", "### Failed", *(f"- `{Path(r.file).name}`: {r.message}"
                                      for r in summary.failures.itertuples(index=False))]
    if summary.notes:
        lines += ["", "### Notes", *(f"- {n}" for n in summary.notes)]
    return "\n".join(lines) + "\n"


def _render_json(summary: RankSummary) -> str:
    doc = {
        "directory": summary.directory,
        "kind": summary.kind,
        "engine": summary.engine,
        "workers": summary.workers,
        "ranks": records(summary.per_rank, digits=6),
        "memory": records(summary.per_rank_memory, digits=6),
        "cross_rank": records(summary.cross_rank, digits=6),
        "recompute_spread_ms": jsonable(summary.recompute_spread_ms, digits=6),
        "recompute_spread_pct": jsonable(summary.recompute_spread_pct, digits=6),
        "failures": records(summary.failures, digits=6),
        "notes": list(summary.notes),
    }
    return json.dumps(doc, indent=2) + "\n"


def _render_csv(summary: RankSummary) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "metric", "stat", "rank", "file", "value"])
    for rec in summary.per_rank.to_dict(orient="records"):
        for metric in cross_rank_metrics():
            w.writerow(["per_rank", metric, "value", rec["rank"], rec["file"], jsonable(rec[metric], digits=6)])
    for r in summary.cross_rank.itertuples(index=False):
        for stat in ("max", "median", "min", "spread", "spread_pct"):
            rank = r.slowest_rank if stat == "max" else (r.fastest_rank if stat == "min" else "")
            w.writerow(["cross_rank", r.metric, stat, rank, "", jsonable(getattr(r, stat), digits=6)])
    for r in summary.failures.itertuples(index=False):
        w.writerow(["failure", r.error_type, "", "", r.file, r.message])
    return buf.getvalue()
