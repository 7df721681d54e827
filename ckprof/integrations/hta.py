"""ckprof's phase labels inside Holistic Trace Analysis (HTA).

HTA (``pip install 'ckprof[hta]'``, package ``holistictraceanalysis`` 0.5.0) gives GPU
kernel breakdowns, idle time and communication/computation overlap for multi-rank
traces, but has no notion of forward, backward, recompute or optimizer. This module
runs ckprof's own analysis on the same trace files and adds its labels to HTA's
per-rank event DataFrames, then runs HTA's analyses once per phase.

Contract::

    open_hta(path) -> TraceAnalysis
    label_hta(hta_or_path, *, recompute_detection="auto") -> HtaLabels
    hta_phase_tables(trace_dir, *, recompute_detection="auto", num_kernels=10,
                     include_memory_kernels=True) -> HtaPhaseTables
    render_hta_tables(tables, fmt="table") -> str

- ``HtaLabels.frames[rank]`` is a NEW DataFrame: HTA's rows and columns for that rank
  plus ``step`` (int64, -1 outside any ProfilerStep), ``phase`` (one of
  :data:`ckprof.trace.markers.PHASES`), ``recompute_region`` (str, "" unless the phase is
  ``recompute``) and ``ckprof_event`` (row in ``Trace.events``, -1 when HTA's row
  could not be matched; see NOTE [ Joining HTA rows to ckprof events ]).
- The HTA object is never modified: per-phase analyses run on shallow copies whose
  per-rank frames are new, filtered DataFrames (``HtaLabels.trace_analysis(phase)``).
- Only the HTA analyses listed in :data:`SUPPORTED_ANALYSES` are used (the ones that
  work with pandas 3 and the pinned HTA, checked on the real GPU traces in
  ../shared/traces); their failures become :class:`HtaAnalysisError`.
- HTA missing -> :class:`~ckprof.errors.OptionalDependencyError`; a trace without GPU
  kernels -> :class:`~ckprof.errors.NotCapturedError`.

Times in HTA frames and in the tables here are HTA's: integer microseconds
(``_us`` columns), aligned so that the earliest event of all ranks is at 0.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ckprof.errors import (
    CkprofError,
    NotCapturedError,
    OptionalDependencyError,
    TraceNotFoundError,
)
from ckprof.integrations.ranks import rank_from_metadata, usable_rank
from ckprof.report.text import check_format, markdown_table, records, text_table
from ckprof.trace.load import find_trace_files
from ckprof.trace.markers import PHASES
from ckprof.trace.model import GPU_KINDS

if TYPE_CHECKING:
    from hta.trace_analysis import TraceAnalysis

    from ckprof.analysis import Analysis
    from ckprof.trace.model import Trace

__all__ = [
    "HTA_INSTALL_HINT",
    "SUPPORTED_ANALYSES",
    "HtaAnalysisError",
    "HtaLabels",
    "HtaPhaseTables",
    "hta_phase_tables",
    "label_hta",
    "open_hta",
    "render_hta_tables",
]

HTA_INSTALL_HINT = "Install it with: pip install 'ckprof[hta]'"

#: HTA analyses ckprof runs per phase, with the HTA entry point each one uses.
#: Checked with holistictraceanalysis 0.5.0 + pandas 3.1.1 on the real traces in
#: ../shared/traces (V100, A100 DDP, A100 compiled, H100, MI250, legacy V100).
SUPPORTED_ANALYSES: dict[str, str] = {
    "kernel_breakdown": "BreakdownAnalysis.get_gpu_kernel_breakdown (TraceAnalysis.get_gpu_kernel_breakdown)",
    "idle_time": "TraceAnalysis.get_idle_time_breakdown (its per-kernel rule, split by the phase of the kernel that waited)",
    "comm_comp_overlap": "CommunicationAnalysis.get_comm_comp_overlap (TraceAnalysis.get_comm_comp_overlap)",
}

#: HTA's ``stream`` column is -1 for CPU events.
_CPU_STREAM = -1
#: HTA's idle-time analysis considers only these categories (copied from HTA 0.5.0).
_IDLE_KERNEL_CATS = ("kernel", "Kernel", "gpu_memset", "Memset", "gpu_memcpy", "Memcpy",
                     "mtia_ccp_events")
#: A matched HTA row may differ from the ckprof event by HTA's rounding of ts to whole
#: microseconds (ceil) plus float error on epoch-sized timestamps.
_MATCH_TOLERANCE_NS = 1500


class HtaAnalysisError(CkprofError):
    """One of HTA's analyses failed on this trace (an HTA limitation or bug); the
    message names the analysis, the trace directory and HTA's own error."""

    exit_code = 1


# --------------------------------------------------------------------------- HTA import


def _import_hta() -> Any:
    """Import ``hta.trace_analysis`` or raise OptionalDependencyError."""
    try:
        with _quiet_hta():
            import hta.trace_analysis as hta_ta
    except ImportError as err:  # holistictraceanalysis or one of its undeclared deps
        missing = getattr(err, "name", None) or str(err)
        what = ("Holistic Trace Analysis (holistictraceanalysis) is not installed"
                if missing in ("hta", "hta.trace_analysis")
                else f"Holistic Trace Analysis cannot be imported: module {missing!r} is missing")
        raise OptionalDependencyError(what, hint=HTA_INSTALL_HINT) from err
    return hta_ta


@contextlib.contextmanager
def _quiet_hta() -> Iterator[None]:
    """HTA logs progress at WARNING level and numpy warns on empty divisions; keep
    ckprof's output clean while HTA runs (restored afterwards)."""
    logger = logging.getLogger("hta")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _run_hta(what: str, where: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call one HTA function; turn its failure into HtaAnalysisError."""
    try:
        with _quiet_hta():
            return fn(*args, **kwargs)
    except CkprofError:
        raise
    except Exception as err:
        detail = f"{type(err).__name__}: {err}".strip().rstrip(":")
        raise HtaAnalysisError(
            f"HTA's {what} failed on this trace ({detail[:200]})",
            path=where,
            hint="ckprof's own analysis still works: run ckprof analyze without --with-hta",
        ) from err


# --------------------------------------------------------------------------- files


def _trace_files(path: Path) -> list[Path]:
    """Trace files HTA should read: ``path`` itself, or the .json / .json.gz files of a
    directory, never HTA's own ``*_with_counters*`` outputs."""
    if not path.exists():
        raise TraceNotFoundError("no such file or directory", path=str(path),
                                 hint="Give a trace file or a directory of per-rank traces")
    if path.is_file():
        return [path]
    # sniffed like every directory ckprof reads: never HTA's *_with_counters outputs,
    # ckprof's own (annotated copies, memory timelines) or other JSON
    files = find_trace_files(path)
    if not files:
        raise TraceNotFoundError("directory holds no .json or .json.gz trace", path=str(path),
                                 hint="Point at the folder tensorboard_trace_handler wrote")
    return files


def _rank_of(trace: Trace, fallback: int) -> int:
    """``distributedInfo.rank``, else ckprof's capture metadata ``rank`` (the rule of
    :func:`ckprof.integrations.ranks.rank_from_metadata`), else ``fallback``."""
    rank, _source = rank_from_metadata(trace.metadata or {}, trace.ckprof)
    return fallback if rank is None else rank


def _load_ckprof(files: list[Path], recompute_detection: str) -> dict[int, Analysis]:
    """ckprof's analysis of every file, keyed by rank (distributedInfo.rank, else the
    capture metadata, else the file's position)."""
    from ckprof.analysis import analyze
    from ckprof.trace.load import load_trace

    out: dict[int, Analysis] = {}
    for pos, f in enumerate(files):
        trace = load_trace(f)
        rank = _rank_of(trace, pos)
        if rank in out:
            raise CkprofError(
                f"two traces claim rank {rank} ({out[rank].trace.path} and {f})",
                path=str(f.parent),
                hint="Keep one trace per rank in the directory, or pass a single file",
            )
        out[rank] = analyze(trace, recompute_detection=recompute_detection)
    return out


def open_hta(path: str | os.PathLike[str], *, ranks: Mapping[int, str | os.PathLike[str]] | None = None
             ) -> TraceAnalysis:
    """Build HTA's ``TraceAnalysis`` for a trace file or a directory of rank traces.

    Files are passed to HTA explicitly (rank -> absolute path), so HTA never picks up
    its own ``*_with_counters.json.gz`` outputs or other stray files as extra ranks.
    ``ranks`` overrides the rank of each file; by default ranks are read from each
    file's ``distributedInfo`` (else numbered in name order). Nothing is written.
    """
    hta_ta = _import_hta()
    where = Path(path)
    if ranks is None:
        ranks = {}
        for pos, f in enumerate(_trace_files(where)):
            rank = _rank_from_text(f, pos)
            if rank in ranks:
                raise CkprofError(
                    f"two traces claim rank {rank} ({ranks[rank]} and {f})", path=str(where),
                    hint="Keep one trace per rank in the directory, or pass ranks={rank: file}")
            ranks[rank] = f
    trace_files = {int(r): str(Path(p).resolve()) for r, p in ranks.items()}
    folder = where if where.is_dir() else where.parent
    return _run_hta("trace loading", str(where), hta_ta.TraceAnalysis,
                    trace_files=trace_files, trace_dir=str(folder.resolve()))


_RANK_RE = re.compile(rb'"distributedInfo"\s*:\s*\{[^{}]*?"rank"\s*:\s*(\d+)')


def _rank_from_text(path: Path, fallback: int) -> int:
    """Rank from the ``distributedInfo`` Kineto writes before ``traceEvents`` (first
    MiB only, no full parse); ``fallback`` when there is none."""
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            m = _RANK_RE.search(fh.read(1 << 20))
    except (OSError, EOFError):
        return fallback
    rank = usable_rank(m.group(1).decode("ascii")) if m else None
    return fallback if rank is None else rank


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class HtaLabels:
    """HTA's per-rank frames with ckprof's labels (see the module docstring).

    ``match`` has one row per rank: ``rank``, ``events`` (HTA rows), ``matched``,
    ``unmatched_gpu``, ``unmatched_cpu``, ``offset_ns`` (ckprof ts_ns minus HTA ts x 1000).
    """

    hta: TraceAnalysis
    frames: Mapping[int, pd.DataFrame]
    analyses: Mapping[int, Analysis]
    match: pd.DataFrame
    notes: tuple[str, ...] = ()
    where: str = ""

    def trace_analysis(self, phase: str) -> TraceAnalysis:
        """A shallow copy of the HTA ``TraceAnalysis`` whose GPU events are only those
        of ``phase`` (CPU events are all kept), to run any HTA analysis per phase:
        ``labels.trace_analysis("backward").get_gpu_kernel_breakdown(visualize=False)``."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, not {phase!r}")
        return _view(self.hta, {r: _gpu_phase_mask(f, phase) for r, f in self.frames.items()},
                     self.frames)

    def symbol_names(self, rank: int) -> np.ndarray:
        """Full event names of ``frames[rank]`` rows (HTA stores symbol ids)."""
        table = np.asarray(self.hta.t.symbol_table.get_sym_table(), dtype=object)
        return table[self.frames[rank]["name"].to_numpy()]


def _gpu_phase_mask(frame: pd.DataFrame, phase: str) -> np.ndarray:
    is_cpu = frame["stream"].to_numpy() == _CPU_STREAM
    return is_cpu | (frame["phase"].to_numpy() == phase)


def _view(ta: TraceAnalysis, masks: Mapping[int, np.ndarray],
          frames: Mapping[int, pd.DataFrame]) -> TraceAnalysis:
    """A shallow copy of ``ta`` whose ``t.traces`` are NEW filtered frames."""
    t2 = copy.copy(ta.t)
    t2.traces = {r: frames[r].loc[masks[r]].copy() for r in frames}
    ta2 = copy.copy(ta)
    ta2.t = t2
    return ta2


def label_hta(hta_or_path: TraceAnalysis | str | os.PathLike[str], *,
              recompute_detection: str = "auto") -> HtaLabels:
    """Add ckprof's ``step``, ``phase`` and ``recompute_region`` labels to HTA's
    per-rank event frames.

    ``hta_or_path`` is an HTA ``TraceAnalysis`` (its ``t.trace_files`` are re-read by
    ckprof) or a trace file / directory (then HTA is loaded by :func:`open_hta`).
    Returns new frames; the ``TraceAnalysis`` is not modified.
    """
    if isinstance(hta_or_path, (str, os.PathLike)):
        where = str(hta_or_path)
        files = _trace_files(Path(hta_or_path))
        _import_hta()  # fail before the (slow) ckprof analysis when HTA is missing
        analyses = _load_ckprof(files, recompute_detection)
        ta = open_hta(hta_or_path, ranks={r: a.trace.path for r, a in analyses.items()})
    else:
        _import_hta()
        ta = hta_or_path
        if not hasattr(ta, "t") or not hasattr(ta.t, "traces"):
            raise TypeError(f"expected hta.trace_analysis.TraceAnalysis, got {type(ta).__name__}")
        trace_files = {int(r): str(p) for r, p in ta.t.trace_files.items()}
        where = str(Path(next(iter(trace_files.values()))).parent) if trace_files else ""
        analyses = {}
        from ckprof.analysis import analyze
        from ckprof.trace.load import load_trace

        for r, p in trace_files.items():
            analyses[r] = analyze(load_trace(p), recompute_detection=recompute_detection)

    symbols = np.asarray(ta.t.symbol_table.get_sym_table(), dtype=object)
    frames: dict[int, pd.DataFrame] = {}
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for rank in sorted(ta.t.traces):
        if rank not in analyses:
            raise CkprofError(f"HTA has rank {rank} but ckprof found no trace for it", path=where,
                              hint="Pass the trace files explicitly with open_hta(path, ranks=...)")
        frame, info = _label_rank(ta.t.traces[rank], symbols, analyses[rank])
        frames[rank] = frame
        rows.append({"rank": rank, **info})
        unmatched = info["unmatched_gpu"] + info["unmatched_cpu"]
        if unmatched:
            notes.append(
                f"rank {rank}: {unmatched} of {info['events']} HTA events had no identical ckprof "
                f"event ({info['unmatched_gpu']} GPU); they take the phase at their own start time"
            )
    match = pd.DataFrame(rows, columns=["rank", "events", "matched", "unmatched_gpu",
                                        "unmatched_cpu", "offset_ns"])
    return HtaLabels(hta=ta, frames=frames, analyses=analyses, match=match,
                     notes=tuple(notes), where=where)


# NOTE [ Joining HTA rows to ckprof events ]
# HTA's frame is not the file's event list: it keeps ``ph: X`` events only, drops cat
# ``Trace``, interns names and categories into a symbol table (ids in ``name``/``cat``),
# rounds ``ts`` up and ``end`` down to whole microseconds (``dur`` = end - ts, so a
# sub-microsecond event can get dur -1), shifts ``ts`` so the earliest event of all
# ranks is 0, and -- with more than one ProfilerStep -- drops CPU events starting at or
# after the last ProfilerStep and GPU events whose launch it dropped. Its ``index``
# column is the event's position in ``traceEvents``, which ckprof does not keep.
#
# What is stable: the decoded name, pid, tid (device and stream for GPU events) and
# the correlation id (-1 for CPU ops; unique per launch for runtime events and their
# kernels). Within one (name, pid, tid, correlation) group, both frames hold the same
# events in the same time order, and HTA's drops remove a time suffix (CPU) or whole
# correlation groups (GPU), so the k-th event of a group in HTA is the k-th in ckprof.
# The join is on (name, pid, tid, correlation, k), then verified: the time offset
# between the two clocks is the median of ckprof ts_ns - HTA ts x 1000 over the
# matches, and a match further than _MATCH_TOLERANCE_NS from it is rejected.
#
# Labels: a matched GPU event takes ckprof's attribution (the phase of the CPU op that
# launched it, through correlation -- never its own timestamp); a matched CPU event
# takes the phase segment containing its exact ckprof start. A GPU event ckprof did not
# attribute (launched before profiling or outside the analysed steps) is in no step
# (step -1, ``other``), as in ckprof's own tables; an unmatched row takes the phase at
# its own start time (mapped onto ckprof's clock); unmatched rows are counted in notes.


def _ids_to_int(values: pd.Series, thread_names: Mapping[int, str]) -> np.ndarray:
    """HTA keeps pid/tid as the file wrote them (ints, or strings such as "stream 7");
    map them onto ckprof's int64 codes."""
    num = pd.to_numeric(values, errors="coerce")
    if not num.isna().any():
        return num.to_numpy(dtype=np.int64)
    by_text = {str(v): k for k, v in thread_names.items()}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values.to_numpy(dtype=object)):
        if isinstance(v, (int, np.integer)) or (isinstance(v, float) and not math.isnan(v)):
            out[i] = int(v)
            continue
        text = str(v)
        m = re.fullmatch(r"\s*(?:stream\s*)?(-?\d+)\s*", text)
        out[i] = int(m.group(1)) if m else by_text.get(text, np.iinfo(np.int64).min)
    return out


def _ckprof_labels(analysis: Analysis) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, phase, region) for every row of ``trace.events``: CPU events by their
    start, GPU events by ckprof's attribution (launching op)."""
    events = analysis.trace.events
    step, phase, region = analysis.phases.lookup(events["ts_ns"].to_numpy())
    step = np.asarray(step, dtype=np.int64).copy()
    phase = np.asarray(phase, dtype=object).copy()
    region = np.asarray(region, dtype=object).copy()
    # a GPU event belongs to the step that launched it: one ckprof did not attribute
    # (launched before profiling or outside the analysed steps) is in no step
    gpu_rows = events["kind"].isin(GPU_KINDS).to_numpy()
    step[gpu_rows], phase[gpu_rows], region[gpu_rows] = -1, "other", ""
    gpu = analysis.time.gpu_events
    if len(gpu):
        rows = gpu["event"].to_numpy(dtype=np.int64)
        step[rows] = gpu["step"].to_numpy(dtype=np.int64)
        phase[rows] = gpu["phase"].astype(str).to_numpy(dtype=object)
        region[rows] = gpu["region"].astype(str).to_numpy(dtype=object)
    return step, phase, region


def _match_events(frame: pd.DataFrame, names: np.ndarray, events: pd.DataFrame,
                  thread_names: Mapping[int, str]) -> tuple[np.ndarray, int]:
    """For every row of HTA's ``frame`` the matching row of ckprof's ``events`` (-1 if
    none) and the clock offset in ns (ckprof ts_ns - HTA ts x 1000). See NOTE [ Joining
    HTA rows to ckprof events ]. ``names`` are the decoded names of ``frame``'s rows."""
    n = len(frame)
    hta_ts_us = frame["ts"].to_numpy(dtype=np.int64)
    keys = ["name", "pid", "tid", "corr"]
    hta_keys = pd.DataFrame({
        "name": np.asarray(names).astype(str),
        "pid": _ids_to_int(frame["pid"], thread_names),
        "tid": _ids_to_int(frame["tid"], thread_names),
        "corr": frame["correlation"].to_numpy(dtype=np.int64),
        "ts": hta_ts_us,
        "dur": frame["dur"].to_numpy(dtype=np.float64),
        "pos": np.arange(n, dtype=np.int64),
    }).sort_values(["ts", "dur", "pos"], ascending=[True, False, True], kind="stable")
    hta_keys["k"] = hta_keys.groupby(keys, sort=False).cumcount()

    ck = pd.DataFrame({
        "name": events["name"].astype(str).to_numpy(),
        "pid": events["pid"].to_numpy(dtype=np.int64),
        "tid": events["tid"].to_numpy(dtype=np.int64),
        "corr": events["correlation"].to_numpy(dtype=np.int64),
        "row": np.arange(len(events), dtype=np.int64),
    })
    ck["k"] = ck.groupby(keys, sort=False).cumcount()
    joined = hta_keys.merge(ck, on=[*keys, "k"], how="left", validate="one_to_one")
    pos = joined["pos"].to_numpy()
    row = np.full(n, -1, dtype=np.int64)
    found = joined["row"].notna().to_numpy()
    row[pos[found]] = joined["row"].to_numpy()[found].astype(np.int64)

    ck_ts = events["ts_ns"].to_numpy(dtype=np.int64)
    have = row >= 0
    offset_ns = 0
    if have.any():
        delta = ck_ts[row[have]] - hta_ts_us[have] * 1000
        offset_ns = int(np.median(delta))
        bad = np.flatnonzero(have)[np.abs(delta - offset_ns) > _MATCH_TOLERANCE_NS]
        row[bad] = -1
    return row, offset_ns


def _label_rank(frame: pd.DataFrame, symbols: np.ndarray, analysis: Analysis
                ) -> tuple[pd.DataFrame, dict[str, Any]]:
    n = len(frame)
    hta_ts_us = frame["ts"].to_numpy(dtype=np.int64)
    row, offset_ns = _match_events(frame, symbols[frame["name"].to_numpy()],
                                   analysis.trace.events, analysis.trace.thread_names)
    have = row >= 0
    step_e, phase_e, region_e = _ckprof_labels(analysis)
    step = np.full(n, -1, dtype=np.int64)
    phase = np.full(n, "other", dtype=object)
    region = np.full(n, "", dtype=object)
    step[have], phase[have], region[have] = step_e[row[have]], phase_e[row[have]], region_e[row[have]]
    if (~have).any():
        s, p, g = analysis.phases.lookup(hta_ts_us[~have] * 1000 + offset_ns)
        step[~have] = np.asarray(s, dtype=np.int64)
        phase[~have] = np.asarray(p, dtype=object)
        region[~have] = np.asarray(g, dtype=object)
    recompute_region = np.where(phase == "recompute", region, "").astype(object)

    is_gpu = frame["stream"].to_numpy() != _CPU_STREAM
    labelled = frame.assign(
        step=step,
        phase=pd.Categorical(phase, categories=list(PHASES)),
        recompute_region=recompute_region,
        ckprof_event=row,
    )
    info = {
        "events": n,
        "matched": int(have.sum()),
        "unmatched_gpu": int((~have & is_gpu).sum()),
        "unmatched_cpu": int((~have & ~is_gpu).sum()),
        "offset_ns": offset_ns,
    }
    return labelled, info


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class HtaPhaseTables:
    """HTA's analyses split by ckprof phase. Times in microseconds (HTA's unit).

    - ``kernel_time``: ``rank``, ``phase``, ``kernels`` (count), ``kernel_time_us``
      (sum of HTA kernel durations), ``pct`` (of the rank's total). Sums over phases to
      HTA's own total kernel time per rank.
    - ``kernel_types``: ``rank``, ``phase``, ``kernel_type`` (HTA's COMPUTATION /
      COMMUNICATION / MEMORY and their overlaps), ``time_us`` (HTA's merged-interval
      time), ``pct`` (of the phase): HTA's kernel-type breakdown run on each phase.
    - ``kernels``: ``rank``, ``phase``, ``kernel_type``, ``name``, ``count``,
      ``sum_us``, ``mean_us``, ``max_us``, ``min_us``, ``std_us``: HTA's per-kernel
      statistics for each phase, the ``num_kernels`` largest per kernel type and the
      rest lumped as ``others``.
    - ``idle``: ``rank``, ``stream``, ``phase``, ``idle_category`` (host_wait /
      kernel_wait / other), ``idle_time_us``, ``pct_of_stream_idle`` (of the
      stream's idle time over all phases): the gap before a kernel counts for that kernel's phase.
    - ``comm_overlap``: ``rank``, ``phase``, ``comm_time_us`` (merged), ``overlap_pct``
      (HTA's computation/communication overlap of that phase's communication with
      any computation); empty when the trace has no communication kernels.
    - ``memory``: ``rank`` + ckprof's peak memory per phase (HTA drops ``[memory]``).
    - ``match``: how HTA rows were matched to ckprof events (see :class:`HtaLabels`).
    """

    kernel_time: pd.DataFrame
    kernel_types: pd.DataFrame
    kernels: pd.DataFrame
    idle: pd.DataFrame
    comm_overlap: pd.DataFrame
    memory: pd.DataFrame
    match: pd.DataFrame
    recompute_detection: Mapping[int, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    where: str = ""

    #: (attribute, title) in display order
    TITLES = (
        ("kernel_time", "GPU kernel time by phase (HTA kernels, us)"),
        ("kernel_types", "HTA kernel-type breakdown by phase (us)"),
        ("kernels", "HTA top kernels by phase (us)"),
        ("idle", "HTA GPU idle time by phase (us; a gap counts for the kernel after it)"),
        ("comm_overlap", "HTA communication/computation overlap by phase"),
        ("memory", "ckprof peak memory by phase (HTA drops [memory] events)"),
    )


def hta_phase_tables(
    trace_dir: str | os.PathLike[str] | TraceAnalysis | HtaLabels,
    *,
    recompute_detection: str = "auto",
    num_kernels: int = 10,
    include_memory_kernels: bool = True,
    consecutive_kernel_delay: int = 30,
    step: int | None = None,
) -> HtaPhaseTables:
    """Run HTA's kernel breakdown, idle time and comm/comp overlap once per ckprof
    phase, for every rank of ``trace_dir`` (a directory of rank traces, one trace
    file, an HTA ``TraceAnalysis`` or labels from :func:`label_hta`).

    ``step`` keeps only the GPU events of that ``ProfilerStep#N`` (idle gaps are still
    measured from the previous kernel, as HTA does). ``num_kernels``,
    ``include_memory_kernels`` and ``consecutive_kernel_delay`` are HTA's parameters.

    Raises NotCapturedError when no rank has GPU kernels (HTA's analyses need them) or
    ``step`` is not in HTA's frames, HtaAnalysisError when HTA itself fails,
    OptionalDependencyError without HTA.
    """
    labels = trace_dir if isinstance(trace_dir, HtaLabels) else label_hta(
        trace_dir, recompute_detection=recompute_detection)
    where = labels.where
    if not any((f["stream"] != _CPU_STREAM).any() for f in labels.frames.values()):
        raise NotCapturedError(
            "no GPU kernels in the trace; HTA's kernel, idle-time and overlap analyses need a GPU trace",
            path=where,
            hint="Run ckprof analyze without --with-hta for CPU traces",
        )
    if step is not None:
        steps = sorted({int(s) for f in labels.frames.values()
                        for s in f.loc[f["stream"] != _CPU_STREAM, "step"].unique() if s >= 0})
        if step not in steps:
            raise NotCapturedError(
                f"step {step} has no GPU kernels in HTA's view of the trace (steps: "
                f"{', '.join(map(str, steps)) or 'none'})", path=where,
                hint="HTA drops the last ProfilerStep; choose one of the steps listed")
    from hta.analyzers.breakdown_analysis import BreakdownAnalysis
    from hta.analyzers.communication_analysis import CommunicationAnalysis
    from hta.utils.utils import KernelType, get_kernel_type

    symbols = np.asarray(labels.hta.t.symbol_table.get_sym_table(), dtype=object)
    kt_rows, kn_rows, time_rows, idle_rows, comm_rows, mem_rows = [], [], [], [], [], []
    for rank, frame in labels.frames.items():
        one = {rank: frame}
        is_gpu = frame["stream"].to_numpy() != _CPU_STREAM
        ktype = np.full(len(frame), "", dtype=object)
        ktype[is_gpu] = [get_kernel_type(s) for s in symbols[frame["name"].to_numpy()[is_gpu]]]
        types = [KernelType.COMPUTATION.name, KernelType.COMMUNICATION.name]
        if include_memory_kernels:
            types.append(KernelType.MEMORY.name)
        counted = is_gpu & np.isin(ktype, types)
        in_step = np.ones(len(frame), dtype=bool) if step is None else frame["step"].to_numpy() == step
        counted &= in_step
        phases = frame["phase"].to_numpy(dtype=object)
        durs = frame["dur"].to_numpy(dtype=np.float64)
        total_us = float(durs[counted].sum())
        comm = ktype == KernelType.COMMUNICATION.name
        for phase in PHASES:
            in_phase = counted & (phases == phase)
            if not in_phase.any():
                continue
            time_rows.append({"rank": rank, "phase": phase, "kernels": int(in_phase.sum()),
                              "kernel_time_us": float(durs[in_phase].sum()),
                              "pct": 100.0 * float(durs[in_phase].sum()) / total_us if total_us else math.nan})
            view = _view(labels.hta, {rank: ~is_gpu | in_phase}, one)
            # num_kernels=all: HTA's own top-N lumping re-aggregates the "sum" column
            # (its max/min/mean then equal the sum); ckprof lumps afterwards instead.
            n_kernels = int(frame["name"].to_numpy()[in_phase].size) + 1
            types_df, kernels_df = _run_hta(
                f"GPU kernel breakdown ({phase}, rank {rank})", where,
                BreakdownAnalysis.get_gpu_kernel_breakdown, view.t, visualize=False,
                duration_ratio=1.0, num_kernels=n_kernels,
                include_memory_kernels=include_memory_kernels, image_renderer="")
            phase_sum = float(types_df["sum"].sum())
            for rec in types_df.to_dict("records"):
                kt_rows.append({"rank": rank, "phase": phase, "kernel_type": rec["kernel_type"],
                                "time_us": float(rec["sum"]),
                                "pct": 100.0 * float(rec["sum"]) / phase_sum if phase_sum else math.nan})
            counts = pd.Series(symbols[frame["name"].to_numpy()[in_phase]]).value_counts()
            kn_rows.extend(_top_kernels(kernels_df, counts, rank, phase, num_kernels))
            in_comm = is_gpu & comm & in_step & (phases == phase)
            if in_comm.any():
                keep = ~is_gpu | (is_gpu & ~comm) | in_comm
                cview = _view(labels.hta, {rank: keep}, one)
                overlap = _run_hta(f"communication/computation overlap ({phase}, rank {rank})",
                                   where, CommunicationAnalysis.get_comm_comp_overlap, cview.t,
                                   visualize=False)
                pct = float(overlap["comp_comm_overlap_pctg"].iloc[0])
                comm_rows.append({"rank": rank, "phase": phase,
                                  "comm_time_us": _merged_us(frame.loc[in_comm]),
                                  "overlap_pct": pct})
        idle_rows.extend(_idle_by_phase(frame, labels.hta, rank, consecutive_kernel_delay, step))
        mem = labels.analyses[rank].memory_table()
        mem_rows.append(mem.assign(rank=rank)[["rank", *mem.columns]])

    kernel_time = pd.DataFrame(time_rows, columns=["rank", "phase", "kernels", "kernel_time_us", "pct"])
    kernel_types = pd.DataFrame(kt_rows, columns=["rank", "phase", "kernel_type", "time_us", "pct"])
    kernels = pd.DataFrame(kn_rows, columns=list(_KERNEL_COLUMNS))
    idle = pd.DataFrame(idle_rows, columns=["rank", "stream", "phase", "idle_category",
                                            "idle_time_us", "pct_of_stream_idle"])
    comm_overlap = pd.DataFrame(comm_rows, columns=["rank", "phase", "comm_time_us", "overlap_pct"])
    memory = pd.concat(mem_rows, ignore_index=True) if mem_rows else pd.DataFrame()
    notes = list(labels.notes)
    if comm_overlap.empty:
        notes.append("no communication kernels: the overlap table is empty")
    return HtaPhaseTables(
        kernel_time=kernel_time, kernel_types=kernel_types, kernels=kernels, idle=idle,
        comm_overlap=comm_overlap, memory=memory, match=labels.match,
        recompute_detection={r: a.phases.recompute_found_by for r, a in labels.analyses.items()},
        notes=tuple(notes), where=where,
    )


_KERNEL_COLUMNS = ("rank", "phase", "kernel_type", "name", "count", "sum_us", "mean_us",
                   "max_us", "min_us", "std_us")


def _top_kernels(kernels_df: pd.DataFrame, counts: pd.Series, rank: int, phase: str,
                 num_kernels: int) -> list[dict[str, Any]]:
    """HTA's per-kernel statistics of one phase, the ``num_kernels`` largest per kernel
    type by total time and the rest lumped into ``others`` (count-weighted)."""
    out: list[dict[str, Any]] = []
    for ktype, g in kernels_df.groupby("kernel_type", sort=True):
        g = g.sort_values(["sum (us)", "name"], ascending=[False, True], kind="stable")
        for i, rec in enumerate(g.to_dict("records")):
            row = {"rank": rank, "phase": phase, "kernel_type": ktype, "name": rec["name"],
                   "count": int(counts.get(rec["name"], 0)), "sum_us": float(rec["sum (us)"]),
                   "mean_us": float(rec["mean (us)"]), "max_us": float(rec["max (us)"]),
                   "min_us": float(rec["min (us)"]), "std_us": float(rec["stddev"])}
            if i < num_kernels:
                out.append(row)
            elif i == num_kernels:
                out.append({**row, "name": "others", "std_us": math.nan})
            else:
                rest = out[-1]
                rest["count"] += row["count"]
                rest["sum_us"] += row["sum_us"]
                rest["max_us"] = max(rest["max_us"], row["max_us"])
                rest["min_us"] = min(rest["min_us"], row["min_us"])
        if len(g) > num_kernels and out[-1]["count"]:
            out[-1]["mean_us"] = out[-1]["sum_us"] / out[-1]["count"]
    return out


def _merged_us(kernels: pd.DataFrame) -> float:
    """Time covered by the union of the kernels' [ts, ts + dur) intervals."""
    if kernels.empty:
        return 0.0
    ts = kernels["ts"].to_numpy(dtype=np.float64)
    end = ts + kernels["dur"].to_numpy(dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    ts, end = ts[order], end[order]
    reach = np.maximum.accumulate(end)
    starts_group = np.concatenate([[True], ts[1:] > reach[:-1]])
    group = np.cumsum(starts_group) - 1
    g_start = ts[starts_group]
    g_end = np.zeros(len(g_start))
    np.maximum.at(g_end, group, end)
    return float((g_end - g_start).sum())


# NOTE [ Idle time per phase ]
# HTA's get_idle_time_breakdown gives each GPU kernel the gap since the previous kernel
# on its stream ended and classifies it: host_wait when the kernel's launch (runtime
# event) started after that previous kernel ended, kernel_wait when the gap is below
# consecutive_kernel_delay, other otherwise; then sums per stream and category. The
# rule is per kernel, so the split by phase applies HTA's exact rule row by row and
# gives each gap to the phase of the kernel that waited. Summed over phases it equals
# HTA's own result (tests check this against HTA on real traces).


def _idle_by_phase(frame: pd.DataFrame, ta: TraceAnalysis, rank: int,
                   consecutive_kernel_delay: int, step: int | None = None) -> list[dict[str, Any]]:
    from hta.utils.utils import IdleTimeType

    sym_id = ta.t.symbol_table.get_sym_id_map()
    cat_ids = [sym_id.get(c, -1000) for c in _IDLE_KERNEL_CATS]
    kern = frame.loc[(frame["stream"] != _CPU_STREAM) & frame["cat"].isin(cat_ids)]
    if kern.empty:
        return []
    ts_by_index = frame["ts"].loc[~frame.index.duplicated()]
    runtime_ts = ts_by_index.reindex(kern["index_correlation"].to_numpy()).to_numpy(dtype=np.float64)
    out: list[dict[str, Any]] = []
    names = {m.value: n.lower() for n, m in IdleTimeType.__members__.items()}
    k = pd.DataFrame({
        "stream": kern["stream"].to_numpy(),
        "ts": kern["ts"].to_numpy(dtype=np.float64),
        "end": kern["ts"].to_numpy(dtype=np.float64) + kern["dur"].to_numpy(dtype=np.float64),
        "ts_runtime": runtime_ts,
        "phase": kern["phase"].astype(str).to_numpy(),
        "step": kern["step"].to_numpy(),
    })
    for stream, s in k.groupby("stream", sort=True):
        s = s.sort_values("ts", kind="stable")
        prev_end = s["end"].shift(1)
        gap = s["ts"] - prev_end
        host = s["ts_runtime"] > prev_end
        kwait = ~host & (gap < consecutive_kernel_delay)
        cat = np.where(host, IdleTimeType.HOST_WAIT.value,
                       np.where(kwait, IdleTimeType.KERNEL_WAIT.value, IdleTimeType.OTHER.value))
        per = pd.DataFrame({"phase": s["phase"].to_numpy(), "cat": cat, "gap": gap.to_numpy()})
        if step is not None:
            per = per.loc[s["step"].to_numpy() == step]
        total = float(np.nansum(per["gap"].to_numpy()))
        for (phase, c), g in per.groupby(["phase", "cat"], sort=False):
            t = float(np.nansum(g["gap"].to_numpy()))
            out.append({"rank": rank, "stream": int(stream), "phase": phase,
                        "idle_category": names.get(c, str(c)), "idle_time_us": t,
                        "pct_of_stream_idle": 100.0 * t / total if total else math.nan})
    order = {p: i for i, p in enumerate(PHASES)}
    out.sort(key=lambda r: (r["stream"], order.get(r["phase"], 99), r["idle_category"]))
    return out


# --------------------------------------------------------------------------- render


def render_hta_tables(tables: HtaPhaseTables, fmt: str = "table") -> str:
    """Render for ``ckprof analyze --with-hta``: ``table`` (titled text blocks),
    ``json`` (one object, a list of records per table), ``csv`` (one tidy CSV with a
    ``table`` column) or ``markdown`` (a titled pipe table per table)."""
    blocks = [(name, title, getattr(tables, name)) for name, title in HtaPhaseTables.TITLES]
    if fmt == "json":
        import json

        doc: dict[str, Any] = {name: records(df) for name, _, df in blocks}
        doc["match"] = records(tables.match)
        doc["recompute_detection"] = {str(r): m for r, m in tables.recompute_detection.items()}
        doc["notes"] = list(tables.notes)
        return json.dumps(doc, indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        frames = [df.assign(table=name)[["table", *df.columns]] for name, _, df in blocks if not df.empty]
        return pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else ""
    if fmt == "markdown":
        parts = [f"### {title}\n\n{_markdown(df)}" for _, title, df in blocks]
        if tables.notes:
            parts.append("\n".join(f"- {n}" for n in tables.notes))
        return "\n\n".join(parts) + "\n"
    check_format(fmt)
    parts = [f"HTA analyses split by ckprof phase: {tables.where}"]
    for name, title, df in blocks:
        shown = df
        if name == "kernels":
            shown = df.assign(name=df["name"].astype(str).map(_shorten))
        parts.append(f"{title}\n{_text(shown)}")
    if tables.notes:
        parts.append("notes:\n" + "\n".join(f"  - {n}" for n in tables.notes))
    return "\n\n".join(parts) + "\n"


def _shorten(name: str, width: int = 72) -> str:
    """Kernel names are long C++ signatures that often differ only at the end: keep
    the head and the tail."""
    if len(name) <= width:
        return name
    tail = width // 3
    return name[: width - tail - 1] + "…" + name[-tail:]


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "—" if math.isnan(v) else f"{v:,.1f}"
    return str(v)


def _text(df: pd.DataFrame) -> str:
    if df.empty:
        return "  (none)"
    align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    rows = [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
    return "\n".join(text_table([str(c) for c in df.columns], rows, align))


def _markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_"
    rows = [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
    return "\n".join(markdown_table([str(c) for c in df.columns], rows))
