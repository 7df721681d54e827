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
# file's own clock. The added events carry ``ts_ns`` back as exact decimal text
# (``123.456``), so the segment boundaries are exact to the nanosecond on any clock,
# epoch timestamps (~1.7e15 us) included; the original events are copied byte for byte
# (NOTE [ Streaming annotate ]). Only files that need the whole-document fallback are
# re-encoded from doubles (``annotation_events`` without ``exact`` writes ``ts_ns /
# 1000``, exact up to ~9e9 us; epoch timestamps there are exact to 0.25 us only).
"""

from __future__ import annotations

import collections
import gzip
import itertools
import json
import os
import zlib
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


def _us_exact(ns: int) -> msgspec.Raw:
    """Microseconds as exact decimal text (3 decimals), whatever the clock's epoch."""
    ns = int(ns)
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    return msgspec.Raw(f"{sign}{ns // 1000}.{ns % 1000:03d}".encode())


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


def annotation_events(analysis: Analysis, *, pid: int, exact: bool = False) -> list[dict[str, Any]]:
    """The events ckprof adds (metadata, phase slices, region slices, counters),
    as plain dicts in Chrome trace format. Pure: a new list each call.

    ``exact``: ``ts``/``dur`` as :class:`msgspec.Raw` decimal text (exact to the ns for
    any clock) instead of floats."""
    us = _us_exact if exact else _us
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
                    "ts": us(start_i), "dur": us(end_i - start_i), "args": args})
        if devices:
            if last_step is not None and last_step != step_i and last_step in step_end:
                counters.append(_counter(pid, us(step_end[last_step]), dict.fromkeys(devices, 0)))
            counters.append(_counter(pid, us(start_i), {d: peak.get((step_i, phase, d), 0) for d in devices}))
            last_step = step_i
    if devices and last_step is not None and last_step in step_end:
        counters.append(_counter(pid, us(step_end[last_step]), dict.fromkeys(devices, 0)))
    rec = analysis.phases.recompute.sort_values(["start_ns"], kind="stable")
    for step, region, start, end, method in zip(
        rec["step"].to_numpy(np.int64), rec["region"].astype(str), rec["start_ns"].to_numpy(np.int64),
        rec["end_ns"].to_numpy(np.int64), rec["method"].astype(str), strict=True,
    ):
        out.append({"ph": "X", "cat": ANNOTATION_CAT, "name": region or "recompute", "pid": pid,
                    "tid": REGIONS_TID, "ts": us(int(start)), "dur": us(int(end) - int(start)),
                    "args": {"step": int(step), "region": region, "method": method}})
    return out + counters


def _counter(pid: int, ts: Any, values: dict[str, int]) -> dict[str, Any]:
    return {"ph": "C", "cat": ANNOTATION_CAT, "name": COUNTER_NAME, "pid": pid, "tid": 0,
            "ts": ts, "args": values}


def _read_document(path: str) -> Any:
    """The whole original document as Python objects, guarded like the loader: the
    memory it needs (NOTE [ Memory guard ] in ckprof.trace.load: 4.5x the JSON) is
    checked first, and a gzip stream is counted while it is decompressed."""
    from ckprof.trace.kineto import source as _source
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


# NOTE [ Streaming annotate ]
# Decoding the whole document (the simple way, :func:`annotated_trace_bytes`) needs
# ~4.5x the file in memory. A Kineto trace is written as ``header "traceEvents": [``,
# one event per line group, ``]`` and a short trailer, so the copy streams instead: the
# original bytes go through unchanged (plain or gunzipped block by block) and the added
# events are inserted before the ``]`` that closes the events array. That ``]`` is found
# in the last ``_TAIL_BYTES``: from the first event boundary there, ``[`` + the rest
# decodes as a list that closes exactly there (msgspec reports the trailing characters
# after it), and ``header ] trailer`` must be a document whose traceEvents is empty --
# a list of objects in the trailer (``deviceProperties`` after the events, as some
# Kineto versions write it) cannot be mistaken for the events' end. The added
# process' pid is one more than the largest pid the analysis saw, stepped past any pid
# the file uses (a regex over the stream looks for the few candidates). Anything else
# (no traceEvents near the start, no event boundaries, the end not in the tail) falls
# back to the whole-document way. Peak memory: the analysis plus ~3 blocks.
_TAIL_BYTES = 8 * 1024 * 1024
_HEAD_LIMIT = 64 * 1024 * 1024
_PID_CANDIDATES = 16
_WS = b" \t\r\n"


class _NotStreamable(Exception):
    """The file's layout needs the whole-document way."""


def _find_array_end(tail: bytes, header: bytes, pattern: bytes) -> int:
    """Offset in ``tail`` of the ']' closing the events array (NOTE [ Streaming annotate ]).

    From the first event boundary in ``tail`` (inside the events array: the trailer is
    short), ``[`` + the rest decodes as a list that closes at that ']' -- msgspec then
    reports trailing characters after it (a bare-array document decodes completely)."""
    import re

    trailing = re.compile(r"trailing characters \(byte (\d+)\)")
    first = tail.find(pattern)
    for _ in range(8):
        if first < 0:
            break
        text = b"[" + tail[first:]
        close = -1
        try:
            msgspec.json.decode(text, type=list[msgspec.Raw])
            close = len(text.rstrip(_WS)) - 1 if text.rstrip(_WS).endswith(b"]") else -1
        except msgspec.DecodeError as err:
            found = trailing.search(str(err))
            if found:
                close = text.rfind(b"]", 0, int(found.group(1)))
        if close > 0:
            pos = first + close - 1  # text has one extra leading byte
            try:
                top = msgspec.json.decode(header + b"]" + tail[pos + 1:])
            except msgspec.DecodeError:
                top = None
            if top == [] or (isinstance(top, dict) and top.get("traceEvents") == []):
                return pos
        first = tail.find(pattern, first + 1)  # a boundary inside an event? try the next
    raise _NotStreamable("the end of the events array is not near the end of the file")


def _stream_annotated(analysis: Analysis, f: Any) -> None:
    """Write the annotated copy of ``analysis``' trace to the binary stream ``f``
    (NOTE [ Streaming annotate ]). Raises _NotStreamable before writing anything when the
    file's layout needs the whole-document way."""
    import re

    from ckprof.trace.kineto import source as _source

    path = str(analysis.trace.path)
    reader = _source.BlockReader(path)
    blocks = reader.blocks()
    head = b""
    for block in blocks:
        head += block
        lead = head.lstrip(_WS + b"\xef\xbb\xbf")
        if lead[:1] == b"[":
            header_end = len(head) - len(lead) + 1
            header = b"["
            break
        found = re.search(rb'"traceEvents"\s*:\s*\[', head)
        if found:
            header_end = found.end()
            header = head[:header_end]
            break
        if len(head) >= _HEAD_LIMIT or lead[:1] not in (b"{", b""):
            raise _NotStreamable("no traceEvents array near the start")
    else:
        raise _NotStreamable("no traceEvents array")
    probe = head[header_end:header_end + 4096]
    ws = probe[:len(probe) - len(probe.lstrip(_WS))]
    nl = ws.rfind(b"\n")
    if nl < 0 or probe.lstrip(_WS)[:1] not in (b"{", b"]"):
        raise _NotStreamable("events are not one per line")
    pattern = ws[nl:] + b"{"
    pids = [int(analysis.trace.events["pid"].max()) if len(analysis.trace.events) else 0]
    if len(analysis.trace.memory):
        pids.append(int(analysis.trace.memory["pid"].max()))
    first = max(max(pids) + 1, 1)
    wanted = [first + k for k in range(_PID_CANDIDATES)]
    used_re = re.compile(rb'"pid"\s*:\s*"?\s*(' + b"|".join(str(c).encode() for c in wanted)
                         + rb')(?![\d.eE])')
    used: set[int] = set()
    held: collections.deque[bytes] = collections.deque()  # read, not written yet
    held_bytes = 0
    carry = b""
    written_any = False
    for chunk in itertools.chain((head,), blocks):
        held.append(chunk)
        held_bytes += len(chunk)
        used.update(int(m.group(1)) for m in used_re.finditer(carry + chunk[:64]))
        used.update(int(m.group(1)) for m in used_re.finditer(chunk))
        carry = chunk[-64:]
        while held_bytes - len(held[0]) >= _TAIL_BYTES:  # keep the last _TAIL_BYTES back
            held_bytes -= len(held[0])
            f.write(held.popleft())
            written_any = True
    pending = b"".join(held)
    del held
    if reader.problem is not None:
        raise TraceFormatError(f"cannot re-read the trace: the gzip stream is {reader.problem}",
                               path=path, hint="annotate needs a complete trace")
    free = [c for c in wanted if c not in used]
    if not free:
        raise _NotStreamable("every candidate pid is in use")
    try:
        end = _find_array_end(pending if written_any else pending[header_end:], header, pattern)
    except _NotStreamable:
        if written_any:  # too late to fall back: nothing sensible to do but refuse
            raise TraceFormatError("cannot find the end of the traceEvents array", path=path,
                                   hint="annotate needs a trace as torch.profiler writes it") from None
        raise
    if not written_any:
        end += header_end
    body_end = len(pending[:end].rstrip(_WS))  # just after the last event's "}"
    added = [msgspec.json.encode(e) for e in annotation_events(analysis, pid=free[0], exact=True)]
    sep = b"," + pattern[:-1]  # ",\n  " as between the original events
    f.write(pending[:body_end])
    f.write(sep + sep.join(added))
    f.write(pending[body_end:])


def write_annotated_trace(analysis: Analysis, out_path: str | os.PathLike[str], *,
                          force: bool = False) -> Path:
    """Write the annotated copy to ``out_path`` (gzip when it ends in ``.gz``).

    Streams the original (NOTE [ Streaming annotate ]), so memory stays near the
    analysis' own. Refuses (:class:`OutputExistsError`) to replace an existing file
    unless ``force``, and always refuses (:class:`CkprofError`) to write over the input."""
    from ckprof.report.output import write_new_file

    out = Path(out_path)
    src = Path(str(analysis.trace.path))
    if out.exists() and src.exists() and os.path.samefile(out, src):
        raise CkprofError("is the input trace; annotate never modifies the original", path=str(out),
                          hint="Choose another output name, e.g. trace.ckprof.json.gz")
    if out.exists() and not force:
        from ckprof.errors import OutputExistsError

        raise OutputExistsError("already exists", path=str(out),
                                hint="Choose another name or pass --force to overwrite it")
    gzip_output = out.name.endswith(".gz")
    path = str(analysis.trace.path)
    if not Path(path).is_file():
        raise CkprofError("the trace file is gone", path=path,
                          hint="annotate reads the original file again; keep it in place")

    def produce(f: Any) -> None:
        stream = _gzip_writer(f) if gzip_output else f
        try:
            _stream_annotated(analysis, stream)
        except _NotStreamable:
            stream.write(annotated_trace_bytes(analysis, gzip_output=False))
        except (OSError, EOFError, zlib.error) as err:
            raise TraceFormatError(f"cannot re-read the trace ({err})", path=path,
                                   hint="annotate needs a complete trace") from err
        finally:
            if stream is not f:
                stream.close()

    return write_new_file(out, produce, force=force)


def _gzip_writer(f: Any) -> Any:
    """A gzip stream over ``f``: ISA-L's (several times faster) when installed."""
    try:
        from isal import igzip  # type: ignore[import-not-found]

        return igzip.IGzipFile(fileobj=f, mode="wb", compresslevel=2)
    except ImportError:  # pragma: no cover - depends on the environment
        return gzip.GzipFile(fileobj=f, mode="wb", compresslevel=5)
