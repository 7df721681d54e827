"""The careful reader: stdlib ``json``, one event at a time, every field checked.

It is the reference the fast reader is tested against, and the fallback for anything
the fast reader finds odd: non-Kineto layouts, wrong-typed or missing fields, NaN,
invalid UTF-8, truncated or damaged files. It never raises anything but a
``CkprofError`` subclass (or returns what it could read, when salvaging).

# NOTE [ Event field rules ]
# (shared with the fast reader, which must produce exactly the same columns)
# - Only complete events (``ph == "X"``) become rows, and ``ph == "i"``/``"I"`` events
#   named ``[memory]`` become memory rows. Everything else (metadata ``M``, flows
#   ``s``/``f``, counters, instant markers) is ignored; ``B``/``E`` pairs are matched
#   per (pid, tid) like a stack and become complete events.
# - ``ts``/``dur`` are microseconds; they become integer nanoseconds exactly: the
#   decimal text times 1000, rounded half to even (Kineto writes at most 3 decimals,
#   so nothing is rounded in practice). A JSON number only: strings, booleans, NaN,
#   infinities and values outside int64 nanoseconds make the event unusable.
# - An event with an unusable name (not a string), cat (present but not a string),
#   pid/tid, ts or dur (absent, or negative) is skipped and counted in a note.
# - ``args`` ids (``correlation``, ``External id`` or legacy ``external id``,
#   ``Sequence number``) are used when they are JSON integers in int64, else -1.
# - ``[memory]``: ``Device Type``/``Device Id`` (ints; absent -> -1), ``Total
#   Allocated``/``Total Reserved`` (absent -> -1), ``Bytes`` (absent -> 0), ``Addr``
#   (absent -> -1).
"""

from __future__ import annotations

import json
import math
import re
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import numpy as np

from ckprof.errors import CkprofError, EmptyTraceError, TraceFormatError, TraceTruncatedError
from ckprof.trace._build import Columns, device_label

__all__ = ["read_careful", "read_careful_piece", "us_to_ns"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_THOUSAND = Decimal(1000)

_SKIP_NAME = "name is missing or not a string"
_SKIP_CAT = "cat is not a string"
_SKIP_ID = "pid/tid is missing or not an id"
_SKIP_TS = "ts is missing or not a number"
_SKIP_DUR = "dur is missing or not a number"
_SKIP_NEG = "dur is negative"
_SKIP_OBJ = "not a JSON object"
_SKIP_UNMATCHED = "B/E event without its partner"


def us_to_ns(value: Any) -> int | None:
    """Microseconds (a JSON number: int, Decimal or float) -> int ns, or None."""
    t = type(value)
    if t is int:
        ns = value * 1000
    elif t is Decimal:
        if not value.is_finite() or value.adjusted() > 18:  # beyond int64 ns anyway
            return None
        ns = int((value * _THOUSAND).to_integral_value(ROUND_HALF_EVEN))
    elif t is float:
        if not math.isfinite(value):
            return None
        ns = int((Decimal(repr(value)) * _THOUSAND).to_integral_value(ROUND_HALF_EVEN))
    else:
        return None
    return ns if _INT64_MIN <= ns <= _INT64_MAX else None


def _int_arg(args: dict, key: str, default: int) -> int:
    v = args.get(key)
    if type(v) is int and _INT64_MIN <= v <= _INT64_MAX:
        return v
    return default


class _Rows:
    """Python lists, one per column, converted to numpy once at the end."""

    def __init__(self, cols: Columns) -> None:
        self.cols = cols
        self.ev: dict[str, list[int]] = {k: [] for k in ("name", "cat", "pid", "tid", "ts_ns",
                                                          "dur_ns", "correlation", "external_id",
                                                          "seq")}
        self.mem: dict[str, list[int]] = {k: [] for k in ("ts_ns", "device", "pid", "tid",
                                                           "total_allocated_bytes",
                                                           "total_reserved_bytes", "bytes",
                                                           "addr")}
        self.open: dict[tuple[int, int], list[dict]] = {}  # B events waiting for their E
        self.seen_events = 0  # JSON objects with a "ph" key
        self.in_events = False  # the events array was found (even if it ends early)
        self.notes: list[str] = []  # remarks about the layout (repeated keys)

    def add(self, e: Any) -> None:
        cols = self.cols
        if not isinstance(e, dict):
            cols.skip(_SKIP_OBJ)
            return
        ph = e.get("ph")
        if ph is not None:
            self.seen_events += 1
        if ph == "X":
            self._complete(e, e.get("dur"))
        elif ph in ("i", "I") and e.get("name") == "[memory]":
            self._memory(e)
        elif ph in ("B", "E"):
            self._begin_end(e, ph)

    def _ids(self, e: dict) -> tuple[int, int] | None:
        pid = self.cols.ids.map(e.get("pid"))
        tid = self.cols.ids.map(e.get("tid"))
        if pid is None or tid is None:
            return None
        return pid, tid

    def _ids_ts(self, e: dict) -> tuple[tuple[int, int], int] | None:
        """(pid, tid), ts_ns of an event, or None after counting why it is skipped."""
        ids = self._ids(e)
        if ids is None:
            self.cols.skip(_SKIP_ID)
            return None
        ts = us_to_ns(e.get("ts"))
        if ts is None:
            self.cols.skip(_SKIP_TS)
            return None
        return ids, ts

    def _complete(self, e: dict, dur_value: Any) -> None:
        cols = self.cols
        name = e.get("name")
        if not isinstance(name, str):
            cols.skip(_SKIP_NAME)
            return
        cat = e.get("cat", "")
        if not isinstance(cat, str):
            cols.skip(_SKIP_CAT)
            return
        where = self._ids_ts(e)
        if where is None:
            return
        ids, ts = where
        dur = us_to_ns(dur_value)
        if dur is None:
            cols.skip(_SKIP_DUR)
            return
        if dur < 0:
            cols.skip(_SKIP_NEG)
            return
        if ts + dur > _INT64_MAX:
            cols.skip(_SKIP_TS)
            return
        args = e.get("args")
        if not isinstance(args, dict):
            args = {}
        ext = _int_arg(args, "External id", -1)
        if ext == -1:
            ext = _int_arg(args, "external id", -1)
        ev = self.ev
        ev["name"].append(cols.names.code(name))
        ev["cat"].append(cols.cats.code(cat))
        ev["pid"].append(ids[0])
        ev["tid"].append(ids[1])
        ev["ts_ns"].append(ts)
        ev["dur_ns"].append(dur)
        ev["correlation"].append(_int_arg(args, "correlation", -1))
        ev["external_id"].append(ext)
        ev["seq"].append(_int_arg(args, "Sequence number", -1))

    def _memory(self, e: dict) -> None:
        cols = self.cols
        where = self._ids_ts(e)
        if where is None:
            return
        ids, ts = where
        args = e.get("args")
        if not isinstance(args, dict):
            args = {}
        dev = device_label(_int_arg(args, "Device Type", -1), _int_arg(args, "Device Id", -1))
        m = self.mem
        m["ts_ns"].append(ts)
        m["device"].append(cols.devices.code(dev))
        m["pid"].append(ids[0])
        m["tid"].append(ids[1])
        m["total_allocated_bytes"].append(_int_arg(args, "Total Allocated", -1))
        m["total_reserved_bytes"].append(_int_arg(args, "Total Reserved", -1))
        m["bytes"].append(_int_arg(args, "Bytes", 0))
        m["addr"].append(_int_arg(args, "Addr", -1))

    def _begin_end(self, e: dict, ph: str) -> None:
        ids = self._ids(e)
        if ids is None:
            self.cols.skip(_SKIP_ID)
            return
        stack = self.open.setdefault(ids, [])
        if ph == "B":
            stack.append(e)
            return
        if not stack:
            self.cols.skip(_SKIP_UNMATCHED)
            return
        begin = stack.pop()
        t0, t1 = us_to_ns(begin.get("ts")), us_to_ns(e.get("ts"))
        if t0 is None or t1 is None:
            self.cols.skip(_SKIP_TS)
            return
        merged = dict(begin)
        if not isinstance(merged.get("args"), dict) and isinstance(e.get("args"), dict):
            merged["args"] = e["args"]
        # exact: the difference of the two exact nanosecond values, back in µs as int ns
        self._complete_ns(merged, t0, t1 - t0)

    def _complete_ns(self, e: dict, ts_ns: int, dur_ns: int) -> None:
        # route through _complete with exact integer microsecond-free values
        e = dict(e)
        e["ts"] = Decimal(ts_ns) / _THOUSAND
        self._complete(e, Decimal(dur_ns) / _THOUSAND)

    def finish(self) -> None:
        for stack in self.open.values():
            self.cols.skip(_SKIP_UNMATCHED, len(stack))
        self.open = {}
        n = len(self.ev["ts_ns"])
        if n:
            self.cols.add_events(**{k: np.asarray(v, dtype=np.int64) for k, v in self.ev.items()})
        if self.mem["ts_ns"]:
            self.cols.add_memory(**{k: np.asarray(v, dtype=np.int64) for k, v in self.mem.items()})
        self.ev = {k: [] for k in self.ev}
        self.mem = {k: [] for k in self.mem}

    @property
    def usable(self) -> int:
        return len(self.ev["ts_ns"]) + len(self.mem["ts_ns"])


class _Truncated(Exception):
    pass


class _Damaged(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


_WS = " \t\n\r"
_WS_RUN = re.compile(r"[ \t\n\r]*")


def _skip_ws(text: str, i: int) -> int:
    return _WS_RUN.match(text, i).end()  # type: ignore[union-attr]  # C speed on long runs


def _decode_value(dec: json.JSONDecoder, text: str, i: int) -> tuple[Any, int]:
    try:
        return dec.raw_decode(text, i)
    except json.JSONDecodeError as err:
        if _reaches_end(text, err):
            raise _Truncated() from None
        raise _Damaged(f"invalid JSON at character {err.pos}: {err.msg}") from None
    except RecursionError:
        raise _Damaged(f"JSON nested too deeply near character {i}") from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise _Damaged(f"unreadable value near character {i} ({err})") from None


def _reaches_end(text: str, err: json.JSONDecodeError) -> bool:
    """Did decoding fail because the text ran out (truncation), not on a bad byte?"""
    end = len(text.rstrip(_WS))
    return err.pos >= end or err.msg.startswith("Unterminated string")


def read_careful(data: bytes, *, path: str, salvage: bool) -> tuple[Columns, dict, str, list[str]]:
    """Decode ``data`` (the whole, possibly damaged, JSON text) the careful way.

    Returns ``(columns, metadata, source_format, notes)``. Raises TraceFormatError /
    TraceTruncatedError / EmptyTraceError as documented in ``ckprof.trace.load``.
    """
    text = data.decode("utf-8", errors="replace")
    cols = Columns()
    rows = _Rows(cols)
    notes: list[str] = []
    metadata: dict[str, Any] = {}
    dec = json.JSONDecoder(parse_float=Decimal, parse_constant=lambda c: float(c))
    i = _skip_ws(text, 1 if text.startswith("\ufeff") else 0)
    if i >= len(text):
        raise EmptyTraceError("the file is empty", path=path,
                              hint="Capture the trace again; the profiler wrote nothing")
    source_format = "kineto"
    try:
        if text[i] == "[":
            source_format = "chrome-array"
            _read_events(dec, text, i, rows)
        elif text[i] == "{":
            _read_object(dec, text, i, rows, metadata)
        else:
            value, _ = _decode_value(dec, text, i)  # raises on non-JSON
            raise TraceFormatError(
                f"is JSON ({type(value).__name__}) but not a trace", path=path,
                hint="Pass a Chrome/Kineto trace (.json or .json.gz) written by torch.profiler")
    except _Truncated:
        rows.finish()
        recovered = cols.n_events + cols.n_memory
        if not salvage:
            raise TraceTruncatedError(
                f"the JSON ends early (truncated file?); {recovered} complete events precede "
                "the end", path=path, hint="Re-run with --salvage (salvage=True) to analyse "
                "them, or capture the trace again", events_recovered=recovered) from None
        notes.append(f"salvaged {recovered} events from truncated file")
    except _Damaged as err:
        rows.finish()
        recovered = cols.n_events + cols.n_memory
        if not salvage or recovered == 0:
            raise TraceFormatError(
                f"is not valid JSON: {err.what}", path=path,
                hint="Check the file is a complete trace; --salvage keeps the events before "
                     "the damage" if recovered else "Capture the trace again") from None
        notes.append(f"salvaged {recovered} events before damaged JSON ({err.what})")
    except CkprofError as err:
        if err.path is None:
            raise type(err)(err.reason, path=path, hint=err.hint) from None
        raise
    rows.finish()
    notes.extend(rows.notes)
    if not rows.in_events:
        raise TraceFormatError("is JSON but not a trace: it has no 'traceEvents' list",
                               path=path, hint="Pass a Chrome/Kineto trace written by "
                                               "torch.profiler export_chrome_trace or "
                                               "tensorboard_trace_handler")
    if cols.n_events == 0:
        if rows.seen_events == 0 and cols.skipped.get(_SKIP_OBJ):
            raise TraceFormatError("is JSON but not a trace: its list holds no trace events",
                                   path=path, hint="Pass a Chrome/Kineto trace")
        skipped = sum(cols.skipped.values())
        what = (f"none of its {skipped} complete events is usable "
                f"({'; '.join(f'{v} {k}' for k, v in sorted(cols.skipped.items()))})"
                if skipped else "it holds no complete ('ph': 'X') events")
        raise EmptyTraceError(f"the trace is empty: {what}", path=path,
                              hint="Profile at least one active step, or check the writer")
    return cols, metadata, source_format, notes


def read_careful_piece(data: bytes, cols: Columns) -> None:
    """Read one piece of the events array (``event, event, ...``) the careful way into
    ``cols``: the fast reader's fallback for a piece with an odd event, so one bad event
    does not send a whole big file to the careful reader.

    Raises ValueError when the piece is not a run of complete JSON values, or holds
    ``B``/``E`` events (their pairs may span pieces: the whole file must be read)."""
    text = "[" + data.decode("utf-8", errors="replace").strip(_WS).rstrip(",") + "]"
    dec = json.JSONDecoder(parse_float=Decimal, parse_constant=lambda c: float(c))
    try:
        value = dec.decode(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"not a run of JSON events ({err})") from None
    rows = _Rows(cols)
    for e in value:
        if isinstance(e, dict) and e.get("ph") in ("B", "E"):
            raise ValueError("B/E events")
        rows.add(e)
    rows.finish()


def _read_events(dec: json.JSONDecoder, text: str, i: int, rows: _Rows) -> int:
    """Parse the array starting at ``text[i] == '['``; returns the index after ']'."""
    n = len(text)
    rows.in_events = True
    i = _skip_ws(text, i + 1)
    if i < n and text[i] == "]":
        return i + 1
    while True:
        if i >= n:
            raise _Truncated()
        value, i = _decode_value(dec, text, i)
        rows.add(value)
        i = _skip_ws(text, i)
        if i >= n:
            raise _Truncated()
        c = text[i]
        if c == ",":
            i = _skip_ws(text, i + 1)
            continue
        if c == "]":
            return i + 1
        raise _Damaged(f"expected ',' or ']' at character {i}")


def _read_object(dec: json.JSONDecoder, text: str, i: int, rows: _Rows,
                 metadata: dict[str, Any]) -> None:
    """Parse the top-level object member by member (so truncation keeps events)."""
    n = len(text)
    found = False
    i = _skip_ws(text, i + 1)
    if i < n and text[i] == "}":
        return
    while True:
        if i >= n:
            raise _Truncated()
        if text[i] != '"':
            raise _Damaged(f"expected a key at character {i}")
        key, i = _decode_value(dec, text, i)
        i = _skip_ws(text, i)
        if i >= n:
            raise _Truncated()
        if text[i] != ":":
            raise _Damaged(f"expected ':' at character {i}")
        i = _skip_ws(text, i + 1)
        if i >= n:
            raise _Truncated()
        if key == "traceEvents" and text[i] == "[":
            if found and not rows.notes:  # repeated key: read every list, say so (once)
                rows.notes.append("the file repeats the 'traceEvents' key: the events of "
                                  "every list are read")
            found = True
            i = _read_events(dec, text, i, rows)
        else:
            value, i = _decode_value(dec, text, i)
            if key == "traceEvents":
                raise TraceFormatError("'traceEvents' is not a list", hint="Pass a "
                                       "Chrome/Kineto trace written by torch.profiler")
            metadata[key] = _plain(value)
        i = _skip_ws(text, i)
        if i >= n:
            raise _Truncated()
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
            continue
        if text[i] == "}":
            tail = _skip_ws(text, i + 1)
            if tail < n and text[tail] != "\x00":
                raise _Damaged(f"unexpected data after the JSON object at character {tail}")
            return
        raise _Damaged(f"expected ',' or '}}' at character {i}")


def _plain(value: Any) -> Any:
    """Metadata values with Decimals turned back into floats (plain JSON types)."""
    stack = [value]
    if isinstance(value, Decimal):
        return float(value)
    while stack:  # iterative: metadata may nest deeply
        v = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                if isinstance(x, Decimal):
                    v[k] = float(x)
                elif isinstance(x, dict | list):
                    stack.append(x)
        elif isinstance(v, list):
            for j, x in enumerate(v):
                if isinstance(x, Decimal):
                    v[j] = float(x)
                elif isinstance(x, dict | list):
                    stack.append(x)
    return value

