"""Write a copy of a trace with ckprof's view added as extra tracks.

Contract::

    annotation_events(analysis, *, pid) -> list[dict]       # the added events
    annotated_trace_bytes(analysis, *, gzip_output) -> bytes
    write_annotated_trace(analysis, out_path, *, force=False) -> Path

The output is the original Chrome trace (every original event and top-level key
kept as read) plus a synthetic process named ``ckprof`` that Perfetto UI and
chrome://tracing show as its own group:

- thread ``phases`` (tid 1): one ``ph:"X"`` event per PhaseTable segment (forward,
  backward, recompute, optimizer, other), ``args`` = step, phase, region and the
  phase's peak memory per device;
- thread ``recompute regions`` (tid 2): one ``ph:"X"`` event per recompute
  occurrence, named after the region;
- counter ``peak memory by phase (bytes)``: ``ph:"C"`` events, one series per
  device, stepping at every segment start to the peak of that (step, phase) --
  the same numbers as ``analysis.memory.peaks`` -- and back to 0 at each step end.

The input file is never modified (writing over it is refused even with
``force``). Added names never start with ``ckprof::``, so analysing the
annotated copy finds the same markers, phases and numbers as the original.

# NOTE [ Annotation timestamps ]
# The loader turns ``ts`` (microseconds, 3 decimals) into integer ``ts_ns`` on the
# file's own clock. We write ``ts = ts_ns / 1000`` back, which reproduces the
# segment boundaries to the nanosecond for any trace whose timestamps fit a
# double with ns resolution (up to ~9e9 us). Older Kineto files with epoch
# timestamps (~1.7e15 us) are re-encoded as doubles, original events included, so
# there the copy is exact to 0.25 us only; the original file keeps full precision.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from ckprof.errors import CkprofError, TraceFormatError, TraceNotFoundError, TraceTooLargeError

if TYPE_CHECKING:  # pragma: no cover
    from ckprof.analysis import Analysis

__all__ = [
    "ANNOTATION_CAT",
    "ANNOTATION_PROCESS",
    "COUNTER_NAME",
    "PHASES_TID",
    "REGIONS_TID",
    "annotated_trace_bytes",
    "annotation_events",
    "choose_pid",
    "write_annotated_trace",
]

ANNOTATION_PROCESS = "ckprof"
ANNOTATION_CAT = "ckprof"
PHASES_TID = 1
REGIONS_TID = 2
COUNTER_NAME = "peak memory by phase (bytes)"


def _us(ns: int) -> float:
    return int(ns) / 1000.0


def choose_pid(events: list[Any]) -> int:
    """A numeric pid no event in the file uses (max numeric pid + 1, at least 1)."""
    used: set[int] = set()
    for ev in events:
        if isinstance(ev, dict):
            pid = ev.get("pid")
            if isinstance(pid, bool):
                continue
            if isinstance(pid, int):
                used.add(pid)
            elif isinstance(pid, str) and pid.strip().lstrip("-").isdigit():
                used.add(int(pid))
    candidate = max(used, default=0) + 1
    return max(candidate, 1)


def _peak_lookup(analysis: Analysis) -> tuple[list[str], dict[tuple[int, str, str], int]]:
    mem = analysis.memory
    if not mem.captured or mem.peaks.empty:
        return [], {}
    peaks = mem.peaks
    devices = sorted({str(d) for d in peaks["device"].astype(str)})
    table = {
        (int(s), str(p), str(d)): int(b)
        for s, p, d, b in zip(peaks["step"], peaks["phase"].astype(str), peaks["device"].astype(str),
                              peaks["peak_bytes"], strict=True)
    }
    return devices, table


def annotation_events(analysis: Analysis, *, pid: int) -> list[dict[str, Any]]:
    """The events ckprof adds (metadata, phase slices, region slices, counters),
    as plain dicts in Chrome trace format. Pure: a new list each call."""
    out: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": ANNOTATION_PROCESS}},
        {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": -1}},
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": PHASES_TID, "args": {"name": "phases"}},
        {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": PHASES_TID, "args": {"sort_index": 0}},
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": REGIONS_TID,
         "args": {"name": "recompute regions"}},
        {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": REGIONS_TID, "args": {"sort_index": 1}},
    ]
    devices, peak = _peak_lookup(analysis)
    segments = analysis.phases.segments.sort_values(["start_ns", "end_ns"], kind="stable")
    steps = analysis.phases.steps
    step_end = {int(s): int(e) for s, e in zip(steps["step"], steps["end_ns"], strict=True)}
    counters: list[dict[str, Any]] = []
    last_step: int | None = None
    for step, phase, region, start, end in zip(
        segments["step"].to_numpy(np.int64), segments["phase"].astype(str), segments["region"].astype(str),
        segments["start_ns"].to_numpy(np.int64), segments["end_ns"].to_numpy(np.int64), strict=True,
    ):
        step_i, start_i, end_i = int(step), int(start), int(end)
        if end_i <= start_i:
            continue
        label = f"{phase}: {region}" if region else phase
        args: dict[str, Any] = {"step": step_i, "phase": phase, "region": region}
        for d in devices:
            if (step_i, phase, d) in peak:
                args[f"peak_bytes[{d}]"] = peak[(step_i, phase, d)]
        out.append({"ph": "X", "cat": ANNOTATION_CAT, "name": label, "pid": pid, "tid": PHASES_TID,
                    "ts": _us(start_i), "dur": _us(end_i - start_i), "args": args})
        if devices:
            if last_step is not None and last_step != step_i and last_step in step_end:
                counters.append(_counter(pid, step_end[last_step], dict.fromkeys(devices, 0)))
            counters.append(_counter(pid, start_i, {d: peak.get((step_i, phase, d), 0) for d in devices}))
            last_step = step_i
    if devices and last_step is not None and last_step in step_end:
        counters.append(_counter(pid, step_end[last_step], dict.fromkeys(devices, 0)))
    rec = analysis.phases.recompute.sort_values(["start_ns"], kind="stable")
    for step, region, start, end, method in zip(
        rec["step"].to_numpy(np.int64), rec["region"].astype(str), rec["start_ns"].to_numpy(np.int64),
        rec["end_ns"].to_numpy(np.int64), rec["method"].astype(str), strict=True,
    ):
        out.append({"ph": "X", "cat": ANNOTATION_CAT, "name": region or "recompute", "pid": pid,
                    "tid": REGIONS_TID, "ts": _us(int(start)), "dur": _us(int(end) - int(start)),
                    "args": {"step": int(step), "region": region, "method": method}})
    return out + counters


def _counter(pid: int, ts_ns: int, values: dict[str, int]) -> dict[str, Any]:
    return {"ph": "C", "cat": ANNOTATION_CAT, "name": COUNTER_NAME, "pid": pid, "tid": 0,
            "ts": _us(ts_ns), "args": values}


def _read_document(path: str) -> Any:
    """The whole original document as Python objects, guarded like the loader: the
    memory it needs (NOTE [ Memory guard ] in ckprof.trace.load: 4.5x the JSON) is
    checked first, and a gzip stream is counted while it is decompressed."""
    from ckprof.trace import _source
    from ckprof.trace.load import ANNOTATE_BYTES_PER_BYTE, check_memory, max_stream_bytes

    what = "annotate (the whole trace as Python objects)"
    try:
        _source.check_input_file(path)
        reader = _source.BlockReader(path, max_bytes=max_stream_bytes(ANNOTATE_BYTES_PER_BYTE))
        check_memory(path, reader.estimated_size_bytes(), ANNOTATE_BYTES_PER_BYTE, what)
        raw = reader.read_all()
        if reader.problem is not None:
            raise TraceFormatError(f"cannot re-read the trace: the gzip stream is {reader.problem}",
                                   path=path, hint="annotate needs a complete trace; a salvaged "
                                                   "one cannot be annotated")
        return _decode_document(raw)
    except _source.DecompressedTooLarge as err:
        raise TraceTooLargeError(f"{what} would need more memory than is available (more than "
                                 f"{err.seen / 2**30:.1f} GiB of JSON)", path=path,
                                 hint="Run on a machine with more memory") from None
    except TraceNotFoundError as err:
        raise CkprofError("the trace file is gone", path=path,
                          hint="annotate reads the original file again; keep it in place") from err
    except (OSError, EOFError, msgspec.DecodeError) as err:
        raise TraceFormatError(f"cannot re-read the trace as complete JSON ({err})", path=path,
                               hint="annotate needs a complete trace; a salvaged one cannot be annotated") from err


def _decode_document(raw: bytes) -> Any:
    """msgspec, or the stdlib for JSON msgspec refuses but the loader read: a name with
    a lone surrogate (``"\\ud800"``, valid JSON) is kept as it is in the copy."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        if "surrogate" not in str(err):
            raise
        try:
            return json.loads(raw)
        except ValueError:
            raise err from None


def _encode_document(doc: Any) -> bytes:
    try:
        return msgspec.json.encode(doc)
    except UnicodeEncodeError:  # lone surrogates: written back as \\udXXX escapes
        return json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def annotated_trace_bytes(analysis: Analysis, *, gzip_output: bool = True) -> bytes:
    """The original trace document plus :func:`annotation_events`, encoded as
    JSON (gzip-compressed when ``gzip_output``)."""
    path = str(analysis.trace.path)
    doc = _read_document(path)
    if isinstance(doc, dict):
        events = doc.get("traceEvents")
        if not isinstance(events, list):
            raise TraceFormatError("no traceEvents list", path=path, hint="Pass a Chrome/Kineto trace")
        added = annotation_events(analysis, pid=choose_pid(events))
        doc = {**doc, "traceEvents": [*events, *added]}
    elif isinstance(doc, list):
        added = annotation_events(analysis, pid=choose_pid(doc))
        doc = [*doc, *added]
    else:
        raise TraceFormatError("not a Chrome trace (neither an object nor an array)", path=path,
                               hint="Pass a Chrome/Kineto trace")
    data = _encode_document(doc)
    if gzip_output:
        data = gzip.compress(data, compresslevel=5)
    return data


def write_annotated_trace(analysis: Analysis, out_path: str | os.PathLike[str], *,
                          force: bool = False) -> Path:
    """Write the annotated copy to ``out_path`` (gzip when it ends in ``.gz``).

    Refuses (:class:`OutputExistsError`) to replace an existing file unless
    ``force``, and always refuses (:class:`CkprofError`) to write over the input."""
    from ckprof.output import write_new_file
    from ckprof.output_target import check_output_target

    out = Path(out_path)
    src = Path(str(analysis.trace.path))
    with contextlib.suppress(OSError):
        if out.exists() and src.exists() and os.path.samefile(out, src):
            raise CkprofError("is the input trace; annotate never modifies the original",
                              path=str(out),
                              hint="Choose another output name, e.g. trace.ckprof.json.gz")
    check_output_target(out, force=force)  # a regular file only (NOTE [ Output targets ])
    data = annotated_trace_bytes(analysis, gzip_output=out.name.endswith(".gz"))
    return write_new_file(out, data, force=force)
