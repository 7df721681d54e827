"""The fast reader: chunk by chunk, straight into numpy columns -- each piece read by
the native scanner when it is built and takes the piece (NOTE [ Native scanner ] in
``_native``), else by msgspec typed structs as described below; same columns either way.

# NOTE [ Fast path ]
# Kineto writes one event per line group: every event of ``traceEvents`` starts at
# ``\\n<indent>{`` (JSON strings cannot hold a raw newline, so that byte pattern never
# occurs inside a string). We read plain files through a private mmap (gzip as a
# stream of ~16 MB blocks), cut ~24 MB pieces at the last such boundary, and decode
# each piece in place as a JSON list with msgspec typed structs that keep only the
# fields ckprof needs (tagged union on ``ph``; everything
# but complete events and ``[memory]`` instants decodes to empty structs). Each piece
# becomes numpy columns (names interned to integer codes), so memory stays bounded by
# the columns plus one piece, never the whole document.
#
# Times must be exact integer ns, but a float cannot hold them: 1712195495406752.8 µs
# is 1712195495406752.75 as a float (spacing 0.25). So ``ts`` is decoded as
# ``msgspec.Raw`` (the number's text); per piece the texts are joined and decoded once
# as floats (within 1 µs of the truth), and the last integer digit plus the <= 3
# decimals, read from the text with numpy, give the value modulo 10**4 ns exactly:
# together they pin it (``_raw_us_to_ns``). ``dur`` is small: a float below 2**33 µs
# is within 2**-20 µs of its text, so ``floor * 1000 + rint(frac * 1000)`` is exact
# and a 4th decimal would show (``_float_us_to_ns``). Anything else is ``NeedsCarefulReader``.
#
# An odd event -- a missing or wrong-typed field, NaN, bad UTF-8, a text pid that is
# not an id, a value with more than 3 decimals or a huge duration -- makes its piece
# fail; that piece alone is then read by the careful reader's event rules
# (``read_careful_piece``), appended in order. ``_ingest`` is all-or-nothing so a failed
# piece leaves no trace behind. Anything structural -- another layout, no event
# boundaries, B/E events (pairs may span pieces), a piece that is not a run of JSON
# values -- raises ``NeedsCarefulReader`` and the loader starts over with the careful reader for the
# whole file. Tests check that the result is identical to the careful reader's on every
# real trace and on mutated ones.
"""

from __future__ import annotations

import functools
import gc
import mmap
import re
from collections.abc import Callable, Iterator
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Union

import msgspec
import numpy as np

from ckprof.trace import _native
from ckprof.trace._build import Columns, device_label
from ckprof.trace.kineto.careful import read_careful_piece

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = ["Blank", "NeedsCarefulReader", "prefetch", "read_fast"]


class NeedsCarefulReader(Exception):
    """The fast reader met something it does not handle; use the careful reader."""


class Blank(Exception):
    """The whole input is whitespace (found in one streaming pass, constant memory)."""


class _Args(msgspec.Struct, rename={
    "external_id": "External id",
    "external_id_legacy": "external id",
    "seq": "Sequence number",
    "total_allocated": "Total Allocated",
    "total_reserved": "Total Reserved",
    "nbytes": "Bytes",
    "device_type": "Device Type",
    "device_id": "Device Id",
    "addr": "Addr",
}):
    correlation: int = -1
    external_id: int = -1
    external_id_legacy: int = -1
    seq: int = -1
    total_allocated: int = -1
    total_reserved: int = -1
    nbytes: int = 0
    device_type: int = -1
    device_id: int = -1
    addr: int = -1


_NO_ARGS = _Args()


def _event_types(time_type: Any) -> tuple[type, type, type, Any]:
    X = msgspec.defstruct("X", [("name", str), ("pid", int | str), ("tid", int | str),
                                ("ts", time_type), ("dur", float), ("cat", str, ""),
                                ("args", _Args | None, None)],
                          tag_field="ph", tag="X")
    fields = [("name", str), ("pid", int | str), ("tid", int | str),
              ("ts", time_type), ("args", _Args | None, None)]
    i_lower = msgspec.defstruct("Ii", fields, tag_field="ph", tag="i")
    i_upper = msgspec.defstruct("IU", fields, tag_field="ph", tag="I")
    # B/E are left out on purpose: they fail validation, so the careful reader pairs them
    ignored = [msgspec.defstruct(f"Ph{ord(t)}", [], tag_field="ph", tag=t)
               for t in "MCsftbneSTpFPONDRcVv()"]
    union = Union[(X, i_lower, i_upper, *ignored)]  # type: ignore[valid-type]
    return X, i_lower, i_upper, msgspec.json.Decoder(list[union])


@functools.cache
def _types() -> tuple[type, type, type, Any]:
    """(X, i, I struct types, the piece decoder), built on first use: a process that
    reads everything natively never pays for them."""
    return _event_types(msgspec.Raw)

_LIST_OF_FLOATS = msgspec.json.Decoder(list[float])
_POW10 = 10 ** np.arange(19, dtype=np.int64)


def _raw_us_to_ns(raws: list[msgspec.Raw]) -> np.ndarray:
    """Exact integer ns from the text of JSON numbers in µs (see NOTE [ Fast path ]).

    The float value (decoded by msgspec from the joined tokens) is within ~1 µs of the
    truth; the last integer digit and the (at most 3) decimals, read from the text,
    give the value modulo 10**4 ns exactly; together they pin the exact value:
    ``ns = r + 10**4 * rint((float * 1000 - r) / 10**4)``."""
    n = len(raws)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    joined = b",".join(raws)
    if b"-" in joined or b"e" in joined or b"E" in joined:
        raise NeedsCarefulReader("negative or exponent-notation time")
    try:
        approx = np.array(_LIST_OF_FLOATS.decode(b"[" + joined + b"]"), dtype=np.float64)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise NeedsCarefulReader(f"time is not a number: {err}") from None
    if len(approx) != n or not (approx.max() < 2.0**53):
        raise NeedsCarefulReader("time out of range")
    buf = np.frombuffer(joined, dtype=np.uint8)
    ends = np.flatnonzero(buf == 0x2C)  # the ',' after each token but the last
    if len(ends) != n - 1:
        raise NeedsCarefulReader("time token with a comma")
    ends = np.append(ends, len(buf))
    starts = np.concatenate([[0], ends[:-1] + 1])
    lens = ends - starts
    padded = np.concatenate([np.full(5, 0x30, dtype=np.uint8), buf])
    tail = [padded[ends + 5 - k] for k in (1, 2, 3, 4, 5)]  # k-th char from the end
    # position of the dot counted from the end (2, 3 or 4), 0 when there is none
    dot_from_end = np.zeros(n, dtype=np.int64)
    for k in (2, 3, 4):
        dot_from_end[(tail[k - 1] == 0x2E) & (lens > k)] = k
    if int(np.count_nonzero(dot_from_end)) != joined.count(b"."):
        raise NeedsCarefulReader("time with more than 3 decimals")
    digit = [t.astype(np.int64) - 0x30 for t in tail]
    frac_digits = np.maximum(dot_from_end - 1, 0)
    # r = (last integer digit) * 1000 + decimals scaled to ns
    r = np.zeros(n, dtype=np.int64)
    for k in (1, 2, 3):  # decimals, k-th from the end
        place = _POW10[np.clip(3 - (frac_digits - k + 1), 0, 18)]
        r += np.where(k <= frac_digits, digit[k - 1] * place, 0)
    last_int = np.select([dot_from_end == 2, dot_from_end == 3, dot_from_end == 4],
                         [digit[2], digit[3], digit[4]], default=digit[0])
    r += last_int * 1000
    q = np.rint((approx * 1000.0 - r) / 1e4)
    return q.astype(np.int64) * 10_000 + r


_FLOAT_EXACT_LIMIT = float(2**33)


def _float_us_to_ns(values: list[float]) -> np.ndarray:
    """Exact ns from float µs below 2**33 µs (~2.4 h) with at most 3 decimals, else NeedsCarefulReader.

    Below that limit a float is within 2**-20 µs of its decimal text, so the text's
    3 decimals are ``rint(frac * 1000)`` exactly, and a 4th decimal would show as a
    distance of at least 0.1 ns from the integer grid (we allow 0.01)."""
    arr = np.array(values, dtype=np.float64)
    if len(arr) == 0:
        return np.empty(0, dtype=np.int64)
    if not (np.abs(arr).max() < _FLOAT_EXACT_LIMIT):  # also catches NaN
        raise NeedsCarefulReader("duration too large for the float path")
    whole = np.floor(arr)
    frac_ns = (arr - whole) * 1000.0
    rounded = np.rint(frac_ns)
    if np.abs(frac_ns - rounded).max() > 0.01:
        raise NeedsCarefulReader("duration with more than 3 decimals")
    return whole.astype(np.int64) * 1000 + rounded.astype(np.int64)


def _map_ids(values: list[Any], cols: Columns) -> np.ndarray:
    """pid/tid values -> int64; text ids (rare) go through the shared IdMapper."""
    try:  # numeric text ("25738") parses like int(), as IdMapper does
        return np.array(values, dtype=np.int64)
    except (ValueError, OverflowError, TypeError):
        pass
    text_ids: dict[Any, int | None] = {}  # few distinct text ids: map each once
    mapped = [v if v.__class__ is int else (text_ids[v] if v in text_ids else
                                            text_ids.setdefault(v, cols.ids.map(v)))
              for v in values]
    if None in mapped:
        raise NeedsCarefulReader("pid/tid is not an id")
    try:
        return np.array(mapped, dtype=np.int64)
    except OverflowError:
        raise NeedsCarefulReader("pid/tid outside int64") from None


def _factorize(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Local codes and uniques (first-seen order) of one piece's strings."""
    import pandas as pd  # here, not at the top: the native path reads without pandas

    if not values:
        return np.empty(0, dtype=np.int64), []
    codes, uniques = pd.factorize(np.array(values, dtype=object), sort=False)
    return codes, uniques.tolist()


def _ints(values: list[int]) -> np.ndarray:
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        raise NeedsCarefulReader("id outside int64") from None


def _decode(piece: Any) -> list[Any]:
    try:
        return _types()[3].decode(piece)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as err:
        raise NeedsCarefulReader(str(err)) from None


_get_name = attrgetter("name")
_get_cat = attrgetter("cat")
_get_pid = attrgetter("pid")
_get_tid = attrgetter("tid")
_get_ts = attrgetter("ts")
_get_dur = attrgetter("dur")


def _ingest(evs: list[Any], cols: Columns) -> None:
    """Decoded events of one piece -> numpy columns appended to ``cols``.

    All or nothing: every check runs before ``cols`` (and its interners) change, so a
    piece that turns out odd can be read again by the careful reader."""
    X, i_lower, i_upper, _ = _types()
    xs = [e for e in evs if e.__class__ is X]
    others = [e for e in evs if e.__class__ is not X] if len(xs) != len(evs) else []
    inst = [e for e in others if (e.__class__ is i_lower or e.__class__ is i_upper)
            and e.name == "[memory]"]
    ts = _raw_us_to_ns(list(map(_get_ts, xs)))
    dur = _float_us_to_ns(list(map(_get_dur, xs)))
    mts = _raw_us_to_ns(list(map(_get_ts, inst)))
    if len(ts) and (dur.min() < 0 or ts.max() + dur.max() > 2**62):
        raise NeedsCarefulReader("negative duration or time out of range")
    args = [e.args or _NO_ARGS for e in xs]
    ext = _ints([a.external_id for a in args])
    ext_legacy = _ints([a.external_id_legacy for a in args])
    if len(ext_legacy) and (ext_legacy != -1).any():
        ext = np.where(ext == -1, ext_legacy, ext)
    name_codes, name_uniques = _factorize(list(map(_get_name, xs)))
    cat_codes, cat_uniques = _factorize(list(map(_get_cat, xs)))
    events = dict(pid=_map_ids(list(map(_get_pid, xs)), cols),
                  tid=_map_ids(list(map(_get_tid, xs)), cols),
                  ts_ns=ts, dur_ns=dur,
                  correlation=_ints([a.correlation for a in args]),
                  external_id=ext,
                  seq=_ints([a.seq for a in args]))
    memory = None
    if inst:
        margs = [e.args or _NO_ARGS for e in inst]
        dev_type = _ints([a.device_type for a in margs])
        dev_id = _ints([a.device_id for a in margs])
        pairs, dev_local = np.unique(np.stack([dev_type, dev_id], axis=1), axis=0,
                                     return_inverse=True)
        memory = dict(ts_ns=mts,
                      pid=_map_ids(list(map(_get_pid, inst)), cols),
                      tid=_map_ids(list(map(_get_tid, inst)), cols),
                      total_allocated_bytes=_ints([a.total_allocated for a in margs]),
                      total_reserved_bytes=_ints([a.total_reserved for a in margs]),
                      bytes=_ints([a.nbytes for a in margs]),
                      addr=_ints([a.addr for a in margs]))
    # -- nothing below can fail: commit
    if len(ts):
        cols.add_events(name=cols.names.encode_uniques(name_uniques)[name_codes],
                        cat=cols.cats.encode_uniques(cat_uniques)[cat_codes], **events)
    if memory is not None:
        labels = [device_label(int(t), int(i)) for t, i in pairs]
        dev_codes = cols.devices.encode_uniques(labels)
        cols.add_memory(device=dev_codes[dev_local.reshape(-1)], **memory)


def _texts(raws: list[bytes]) -> list[str]:
    """Raw JSON string contents (from the native scanner) -> str, as msgspec decodes them."""
    out = []
    for raw in raws:
        if b"\\" in raw:
            try:
                text = msgspec.json.decode(b'"' + raw + b'"')
            except msgspec.DecodeError as err:
                raise NeedsCarefulReader(f"bad string: {err}") from None
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise NeedsCarefulReader(f"text is not UTF-8: {err}") from None
        out.append(text)
    return out


def _ids_with_texts(values: np.ndarray, is_text: np.ndarray, texts: list[bytes],
                    cols: Columns) -> np.ndarray:
    """Scanned pid/tid column: text ids (``is_text``; value = index into ``texts``) mapped
    the way :func:`_map_ids` maps them."""
    if not texts:
        return values
    mapped = _map_ids(_texts(texts), cols)
    out = values.copy()
    where = is_text.astype(bool)
    out[where] = mapped[values[where]]
    return out


def _devices(dev_type: np.ndarray, dev_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique (Device Type, Device Id) pairs (sorted) and each row's index into them."""
    if len(dev_type) and (dev_type == dev_type[0]).all() and (dev_id == dev_id[0]).all():
        return (np.array([[dev_type[0], dev_id[0]]], dtype=np.int64),
                np.zeros(len(dev_type), dtype=np.int64))
    pairs, inverse = np.unique(np.stack([dev_type, dev_id], axis=1), axis=0, return_inverse=True)
    return pairs, inverse.reshape(-1)


def _ingest_scanned(result: tuple[tuple[bytes, ...], tuple[list[bytes], ...]],
                    cols: Columns) -> bool:
    """Append a native scan result (NOTE [ Native scanner ]) to ``cols``: the same columns
    :func:`_ingest` makes from the msgspec structs. All or nothing; False (``cols``
    unchanged) when a text is not valid UTF-8 or a text pid/tid is not an id."""
    raw, strings = result
    (name, cat, pid, tid, ts, dur, corr, ext, seq, pid_t, tid_t,
     m_ts, m_pid, m_tid, m_alloc, m_res, m_bytes, m_dtype, m_did, m_pid_t, m_tid_t, m_addr) = (
        np.frombuffer(b, dtype=np.int64) for b in raw)
    names, cats, pid_s, tid_s, m_pid_s, m_tid_s = strings
    ids_before = cols.ids.snapshot()
    try:
        name_uniques, cat_uniques = _texts(names), _texts(cats)
        pid = _ids_with_texts(pid, pid_t, pid_s, cols)
        tid = _ids_with_texts(tid, tid_t, tid_s, cols)
        if len(m_ts):
            m_pid = _ids_with_texts(m_pid, m_pid_t, m_pid_s, cols)
            m_tid = _ids_with_texts(m_tid, m_tid_t, m_tid_s, cols)
            pairs, dev_local = _devices(m_dtype, m_did)
    except NeedsCarefulReader:
        cols.ids.restore(ids_before)
        return False
    # -- nothing below can fail: commit
    if len(ts):
        cols.add_events(name=cols.names.encode_uniques(name_uniques)[name],
                        cat=cols.cats.encode_uniques(cat_uniques)[cat], pid=pid, tid=tid,
                        ts_ns=ts, dur_ns=dur, correlation=corr, external_id=ext, seq=seq)
    if len(m_ts):
        labels = [device_label(int(t), int(i)) for t, i in pairs]
        cols.add_memory(device=cols.devices.encode_uniques(labels)[dev_local], ts_ns=m_ts,
                        pid=m_pid, tid=m_tid, total_allocated_bytes=m_alloc,
                        total_reserved_bytes=m_res, bytes=m_bytes, addr=m_addr)
    return True


def _scan_into(buf: Any, start: int, stop: int, cols: Columns) -> bool:
    """Read ``buf[start:stop]`` (events separated by commas) with the native scanner into
    ``cols``; False (``cols`` unchanged) when it is unavailable or refuses the piece."""
    if _native.scan is None:
        return False
    result = _native.scan(buf, start, stop)
    return not isinstance(result, str) and _ingest_scanned(result, cols)


_EVENTS_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
_HEADER_LIMIT = 64 * 1024 * 1024
_WS = b" \t\r\n"
_WS_SET = frozenset(_WS)


class _Window:
    """The unread bytes: a private (copy-on-write) mmap of a plain file, or a bytearray
    refilled from decompressed blocks. Pieces are decoded in place: the whitespace byte
    before a piece becomes '[' and the ',' after it becomes ']' (never written back)."""

    def __init__(self, blocks: Iterator[bytes] | None, mm: mmap.mmap | None) -> None:
        self.blocks = blocks
        self.mm = mm
        if mm is not None:
            self.buf: Any = mm
            self.end = len(mm)
            self.eof = True
        else:
            self.buf = bytearray()
            self.end = 0
            self.eof = False
        self.pos = 0  # first unread byte
        self.released = 0  # mmap bytes before this were handed back to the kernel
        #: called with the number of bytes each piece consumed (progress reporting)
        self.on_consumed: Callable[[int], None] | None = None

    def fill(self, want: int) -> None:
        """Make at least ``want`` unread bytes available (or reach EOF)."""
        if self.mm is not None:
            return
        if self.pos > 0 and self.pos >= len(self.buf) // 2:
            del self.buf[:self.pos]  # cheap: bytearray keeps an offset
            self.end -= self.pos
            self.pos = 0
        while not self.eof and self.end - self.pos < want:
            nxt = next(self.blocks, None) if self.blocks is not None else None
            if nxt is None:
                self.eof = True
            else:
                self.buf += nxt
                self.end += len(nxt)

    def consumed(self, upto: int, *, report: bool = True) -> None:
        if report and self.on_consumed is not None and upto > self.pos:
            self.on_consumed(upto - self.pos)
        self.pos = upto
        if self.mm is not None:  # give read pages back: keeps RSS at one chunk
            page = mmap.PAGESIZE
            stop = (upto // page) * page
            if stop - self.released >= 64 * page:
                self.mm.madvise(mmap.MADV_DONTNEED, self.released, stop - self.released)
                self.released = stop


def _trim(buf: Any, start: int, stop: int) -> tuple[int, int]:
    """``buf[start:stop]`` without surrounding whitespace and one trailing ','."""
    s = start
    while s < stop and buf[s] in _WS_SET:
        s += 1
    e = stop
    while e > s and buf[e - 1] in _WS_SET:
        e -= 1
    if e > s and buf[e - 1] == 0x2C:  # ','
        e -= 1
        while e > s and buf[e - 1] in _WS_SET:
            e -= 1
    return s, e


def _decode_in_place(win: _Window, start: int, stop: int, cols: Columns, *,
                     native: bool = True) -> None:
    """Decode ``buf[start:stop]`` (a run of events, maybe with a trailing ',') as a list
    and ingest it: with the native scanner when it takes the piece (and ``native``),
    else with msgspec. Raises NeedsCarefulReader when it is not a list of events."""
    buf = win.buf
    s, e = _trim(buf, start, stop)
    if e <= s:
        return
    if native and _scan_into(buf, s, e, cols):
        return
    if s == 0 or e >= len(buf) or buf[s - 1] not in _WS_SET or buf[e] not in _WS_SET | {0x2C}:
        # no spare byte around the piece: copy (only for odd layouts)
        _ingest(_decode(b"[" + bytes(buf[s:e]) + b"]"), cols)
        return
    saved_open, saved_close = buf[s - 1], buf[e]
    buf[s - 1] = 0x5B  # '['
    buf[e] = 0x5D  # ']'
    view = memoryview(buf)[s - 1:e + 1]
    failure = None
    try:
        _ingest(_decode(view), cols)
    except (NeedsCarefulReader, ValueError, TypeError, OverflowError, IndexError) as err:
        # keep only the text: the traceback's frames hold structs whose Raw fields
        # point into ``view``, which must be released before the buffer changes
        failure = f"{type(err).__name__}: {err}"
    finally:
        view.release()
        buf[s - 1] = saved_open
        buf[e] = saved_close
    if failure is not None:
        raise NeedsCarefulReader(failure)


# NOTE [ Parallel pieces ]
# For a big plain file the pieces are independent: the main process finds the cut
# points (a byte search), worker processes (fork, so nothing is re-imported and no user
# script re-runs) each map the file and decode ranges into numpy columns with codes
# local to the piece, and the main process merges them in file order, re-coding
# names/categories/devices through its interners. The result is the same Trace as the
# sequential reader's (tests force the parallel path on small files and compare).
# CKPROF_LOAD_WORKERS=1 turns it off.


def _careful_piece(data: bytes, cols: Columns) -> None:
    """A piece with an odd event: read it event by event (same rules), or give up."""
    try:
        read_careful_piece(data, cols)
    except ValueError as err:
        raise NeedsCarefulReader(f"piece unreadable even carefully: {err}") from None


def _piece_result(cols: Columns) -> dict[str, Any]:
    return {"ev": {k: _concat_parts(v) for k, v in cols.ev.items()},
            "mem": {k: _concat_parts(v) for k, v in cols.mem.items()},
            "names": cols.names.values, "cats": cols.cats.values,
            "devices": cols.devices.values, "ids": cols.ids.names,
            "n_events": cols.n_events, "n_memory": cols.n_memory, "skipped": cols.skipped}


def _concat_parts(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _merge_piece(cols: Columns, piece: dict[str, Any]) -> None:
    """Append a worker's piece to ``cols``, re-coding its local codes."""
    for code, text in piece["ids"].items():
        known = cols.ids.names.get(code)
        if known is not None and known != text:
            raise NeedsCarefulReader("text id code collision across workers")
        cols.ids.names[code] = text
        cols.ids._by_text[text] = code
    for reason, count in piece["skipped"].items():
        cols.skip(reason, count)
    ev = dict(piece["ev"])
    if piece["n_events"]:
        ev["name"] = cols.names.encode_uniques(piece["names"])[ev["name"]]
        ev["cat"] = cols.cats.encode_uniques(piece["cats"])[ev["cat"]]
        cols.add_events(**ev)
    if piece["n_memory"]:
        mem = dict(piece["mem"])
        mem["device"] = cols.devices.encode_uniques(piece["devices"])[mem["device"]]
        cols.add_memory(**mem)


_WORKER_MAPS: dict[str, mmap.mmap] = {}


def _decode_or_careful(win: _Window, start: int, stop: int, cols: Columns, *,
                       native: bool = True) -> None:
    """:func:`_decode_in_place`, else that piece by the careful rules (the text ids it
    interned first are given back): the fallback ladder of every piece reader."""
    ids_before = cols.ids.snapshot()
    try:
        _decode_in_place(win, start, stop, cols, native=native)
    except NeedsCarefulReader:
        cols.ids.restore(ids_before)
        _careful_piece(bytes(win.buf[start:stop]), cols)


def _decode_range(path: str, start: int, stop: int) -> dict[str, Any] | str:
    """Worker: decode ``[start, stop)`` of the file; a str result is an NeedsCarefulReader reason."""
    gc.disable()
    try:
        mm = _WORKER_MAPS.get(path)
        if mm is None:
            with open(path, "rb") as f:
                mm = _WORKER_MAPS[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        cols = Columns()
        _decode_or_careful(_Window(None, mm), start, stop, cols)
        mm.madvise(mmap.MADV_DONTNEED, (start // mmap.PAGESIZE) * mmap.PAGESIZE,
                   stop - (start // mmap.PAGESIZE) * mmap.PAGESIZE)
        return _piece_result(cols)
    except NeedsCarefulReader as err:
        return str(err)


def _parallel_cuts(win: _Window, pattern: bytes, chunk_bytes: int) -> list[tuple[int, int]]:
    """Cut points for the worker pieces; the last ~chunk stays for the sequential end."""
    ranges = []
    pos = win.pos
    while pos + 2 * chunk_bytes < win.end:
        cut = win.buf.rfind(pattern, pos + 1, pos + chunk_bytes)
        if cut <= pos:
            break
        ranges.append((pos, cut))
        pos = cut
    return ranges


def _run_parallel(win: _Window, path: str, pattern: bytes, chunk_bytes: int, workers: int,
                  cols: Columns) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ranges = _parallel_cuts(win, pattern, chunk_bytes)
    if len(ranges) < 2:
        return
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_decode_range, path, a, b) for a, b in ranges]
        sizes = {id(f): b - a for f, (a, b) in zip(futures, ranges, strict=True)}

        def piece_bytes(fut: Any) -> int:
            return sizes[id(fut)]

        try:
            for fut in futures:
                piece = fut.result()
                if isinstance(piece, str):
                    raise NeedsCarefulReader(piece)
                _merge_piece(cols, piece)
                if win.on_consumed is not None:
                    win.on_consumed(piece_bytes(fut))
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    win.consumed(ranges[-1][1], report=False)


def prefetch(blocks: Iterator[bytes], depth: int = 3) -> Iterator[bytes]:
    """``blocks``, produced by a background thread up to ``depth`` ahead.

    For gzip input: zlib / ISA-L release the GIL while they inflate, and so does the
    native scanner, so decompressing the next blocks overlaps decoding this one (two
    cores instead of one). Exceptions of the producer are raised here, in order."""
    import queue
    import threading

    q: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for block in blocks:
                while not stop.is_set():
                    try:
                        q.put((True, block), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((False, None))
        except BaseException as err:  # handed to the consumer
            q.put((False, err))

    worker = threading.Thread(target=produce, name="ckprof-gunzip", daemon=True)
    worker.start()
    try:
        while True:
            more, item = q.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        worker.join()


def read_fast(blocks: Iterator[bytes] | None, *, chunk_bytes: int,
              mm: mmap.mmap | None = None, path: str | None = None,
              workers: int = 1,
              on_consumed: Callable[[int], None] | None = None) -> tuple[Columns, dict[str, Any], str]:
    """Decode a Kineto/Chrome trace from byte blocks (or a private mmap of ``path``,
    optionally with ``workers`` processes, see NOTE [ Parallel pieces ]). Raises NeedsCarefulReader.
    ``on_consumed(n)`` is told the (uncompressed) bytes of every piece decoded."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        win = _Window(blocks, mm)
        win.on_consumed = on_consumed
        return _read_fast(win, chunk_bytes, path if mm is not None else None, workers)
    except (BufferError, ValueError, TypeError, OverflowError, IndexError, KeyError,
            OSError, RuntimeError) as err:
        # anything unexpected in odd input (or a worker that died): the careful reader
        # decides what it is
        raise NeedsCarefulReader(f"{type(err).__name__}: {err}") from None
    finally:
        if was_enabled:
            gc.enable()


#: piece size for the native scanner's threads (NOTE [ Native scanner ])
THREAD_PIECE_BYTES = 8 * 1024 * 1024


def _run_threads(win: _Window, pattern: bytes, workers: int, cols: Columns) -> None:
    """The pieces of a mapped file scanned natively by ``workers`` threads (the scanner
    runs without the GIL), merged in file order; a piece the scanner refuses is read
    here with msgspec (and, if need be, the careful rules), like the sequential loop."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    scan = _native.scan
    ranges = _parallel_cuts(win, pattern, THREAD_PIECE_BYTES)
    if len(ranges) < 2:
        return
    buf = win.buf
    todo = iter(ranges)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckprof-scan") as pool:
        pending: deque[tuple[int, int, Any]] = deque()

        def submit() -> None:
            nxt = next(todo, None)
            if nxt is not None:
                s, e = _trim(buf, *nxt)
                pending.append((nxt[0], nxt[1], pool.submit(scan, buf, s, e) if e > s else None))

        try:
            for _ in range(2 * workers + 1):  # bounded look-ahead: bounded memory
                submit()
            while pending:
                start, stop, fut = pending.popleft()
                result = fut.result() if fut is not None else None
                submit()
                if result is not None and (isinstance(result, str)
                                           or not _ingest_scanned(result, cols)):
                    _decode_or_careful(win, start, stop, cols, native=False)
                win.consumed(stop)
        except BaseException:
            for _, _, fut in pending:
                if fut is not None:
                    fut.cancel()
            raise


def _stream_blocks(win: _Window, pattern: bytes, cols: Columns, workers: int = 1) -> None:
    """Decompressed blocks read natively where they lie (NOTE [ Native scanner ]).

    Each block is scanned in place from its first to its last event boundary; only the
    few bytes around block edges (the partial event before the first boundary, plus
    the carry from the previous block) are copied -- the window's grow-and-trim would
    copy every byte two or three times. With ``workers`` > 1 the pieces are scanned by
    that many threads (the scanner runs without the GIL) while the blocks keep coming
    and this thread adds the results in file order; a piece the scanner refuses goes
    the usual way (msgspec, then the careful rules). The last block and the carry stay
    in the window for ``_finish`` (the trailer may hold the boundary pattern too)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    assert win.blocks is not None
    carry = bytes(win.buf[win.pos:win.end])
    blocks = win.blocks
    pending: deque[tuple[bytes, int, int, int, int, Future[Any] | None]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, workers),
                            thread_name_prefix="ckprof-scan") as pool:

        def add(buf: bytes, start: int, stop: int) -> None:
            s, e = _trim(buf, start, stop)
            scanning = pool.submit(_native.scan, buf, s, e) if workers > 1 and e > s else None
            pending.append((buf, start, stop, s, e, scanning))
            while len(pending) > (workers + 1 if workers > 1 else 0):  # bounded memory
                _read_piece(*pending.popleft(), cols, win)

        try:
            block = next(blocks, None)
            while block is not None:
                following = next(blocks, None)
                if following is None:  # the last block: _finish reads it with the carry
                    carry += block
                    break
                first = block.find(pattern)
                last = block.rfind(pattern)
                if first < 0:  # no boundary in the whole block (a huge event): carry it on
                    carry += block
                else:
                    add(carry + block[:first], 0, len(carry) + first)
                    if last > first:
                        add(block, first, last)
                    carry = block[last:]
                block = following
            while pending:
                _read_piece(*pending.popleft(), cols, win)
        except BaseException:
            for *_, scanning in pending:
                if scanning is not None:
                    scanning.cancel()
            raise
    win.blocks = iter(())
    win.buf = bytearray(carry)
    win.pos, win.end, win.eof = 0, len(carry), True


def _read_piece(buf: bytes, start: int, stop: int, s: int, e: int,
                scanning: Future[Any] | None, cols: Columns, win: _Window) -> None:
    """One piece ``buf[start:stop]`` (events separated by commas; ``[s, e)`` without the
    whitespace and comma around them) into ``cols``: natively (the result of
    ``scanning``, a scan already under way, else scanned here), else msgspec, else the
    careful rules. Progress is reported to ``win``."""
    if scanning is not None:
        result = scanning.result()
        scanned = not isinstance(result, str) and _ingest_scanned(result, cols)
    else:
        scanned = e <= s or _scan_into(buf, s, e, cols)
    if not scanned:
        piece = _Window(iter(()), None)  # a writable copy: the decoder brackets it in place
        piece.buf = bytearray(buf[start:stop])
        piece.end, piece.eof = len(piece.buf), True
        _decode_or_careful(piece, 0, piece.end, cols, native=False)
    if win.on_consumed is not None:
        win.on_consumed(stop - start)


def _read_fast(win: _Window, chunk_bytes: int, path: str | None,
               workers: int) -> tuple[Columns, dict[str, Any], str]:
    cols = Columns()
    # 1. the header: everything up to and including the '[' that opens the events
    want = 1 << 16
    while True:
        win.fill(want)
        head = bytes(win.buf[:min(win.end, want, _HEADER_LIMIT)])
        lead = head.lstrip(_WS + b"\xef\xbb\xbf")
        if lead[:1] == b"[":
            array_start = len(head) - len(lead) + 1
            header, array_format = b"", True
            break
        if lead[:1] not in (b"{", b""):
            raise NeedsCarefulReader("not a JSON object or array")
        match = _EVENTS_KEY.search(head)
        if match:
            array_start = match.end()
            header, array_format = head[:array_start], False
            break
        if len(head) >= min(win.end, _HEADER_LIMIT) and (win.eof or win.end >= _HEADER_LIMIT):
            raise NeedsCarefulReader("no traceEvents array near the start")
        want *= 4
    del head, lead
    win.pos = array_start
    # 2. the boundary pattern: the whitespace before the first event, from its newline
    win.fill(4096)
    probe = bytes(win.buf[win.pos:min(win.end, win.pos + 4096)])
    lead = probe.lstrip(_WS)
    ws = probe[:len(probe) - len(lead)]
    nl = ws.rfind(b"\n")
    pattern = ws[nl:] + b"{" if nl >= 0 and lead[:1] == b"{" else None
    # 3. the events, piece by piece, cut at the last boundary within ~chunk_bytes
    if pattern is not None and path is not None and workers > 1:
        if _native.scan is not None:
            _run_threads(win, pattern, workers, cols)
        else:
            _run_parallel(win, path, pattern, chunk_bytes, workers, cols)
    if pattern is not None and win.mm is None and _native.scan is not None:
        _stream_blocks(win, pattern, cols, workers)
    while pattern is not None:
        win.fill(chunk_bytes)
        limit = min(win.end, win.pos + chunk_bytes)
        cut = win.buf.rfind(pattern, win.pos + 1, limit) if limit < win.end or not win.eof \
            else win.buf.rfind(pattern, win.pos + 1, win.end)
        if cut <= win.pos:
            if win.eof and limit >= win.end:
                break
            chunk_bytes *= 2  # a single huge event: look further
            if chunk_bytes > 1 << 31:
                raise NeedsCarefulReader("no event boundaries")
            continue
        ids_before = cols.ids.snapshot()
        try:
            _decode_in_place(win, win.pos, cut, cols)
        except NeedsCarefulReader:
            cols.ids.restore(ids_before)
            if win.eof and cut + chunk_bytes >= win.end:
                break  # near the end the pattern may also occur in the trailer: _finish
            _careful_piece(bytes(win.buf[win.pos:cut]), cols)
        win.consumed(cut)
        if win.eof and win.end - win.pos < chunk_bytes // 4:
            break
    # 4. the end: last events, ']' and the trailer (more top-level keys)
    win.fill(1 << 62)
    data = bytes(win.buf[win.pos:win.end])
    metadata = _finish(data, header, array_format, cols)
    return cols, metadata, "chrome-array" if array_format else "kineto"


_TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")


def _finish(data: bytes, header: bytes, array_format: bool, cols: Columns) -> dict[str, Any]:
    """Split ``events ] trailer`` at the ']' that closes the events array.

    Candidates are tried from the right; when decoding the events stops at a ']'
    followed by more keys, msgspec's "trailing characters (byte N)" says where the
    list really closed, and we jump there. A final run of events with an odd event
    is read the careful way once the split is known to be right."""
    pos = len(data)
    for _ in range(32):
        pos = data.rfind(b"]", 0, pos)
        if pos < 0:
            break
        body = data[:pos].rstrip(_WS)
        if body and not body.endswith(b"}"):
            continue
        trailer = data[pos + 1:]
        try:
            top = msgspec.json.decode(header + b"]" + trailer)
        except (msgspec.DecodeError, RecursionError):
            top = None
        ok = top == [] if array_format else (
            isinstance(top, dict) and top.get("traceEvents") == [])
        stripped = body.lstrip(_WS)
        stripped = stripped[1:] if stripped[:1] == b"," else stripped
        if ok and stripped and _scan_into(stripped, 0, len(stripped), cols):
            return _metadata(top, array_format)
        evs: list[Any] = []
        if stripped:
            try:
                evs = _decode(b"[" + stripped + b"]")
            except NeedsCarefulReader as err:
                found = _TRAILING.search(str(err))
                if found:
                    # piece byte N is data byte N - 1 + lead; the real ']' comes before it
                    pos = int(found.group(1)) + len(body) - len(stripped)
                    continue
                if not ok:
                    raise
                _careful_piece(stripped, cols)
                return _metadata(top, array_format)
        if not ok:
            continue
        if evs:
            ids_before = cols.ids.snapshot()
            try:
                _ingest(evs, cols)
            except (NeedsCarefulReader, ValueError, TypeError, OverflowError, IndexError) as err:
                del err
                cols.ids.restore(ids_before)
                evs = []
                _careful_piece(stripped, cols)
        return _metadata(top, array_format)
    raise NeedsCarefulReader("could not find the end of the events array")


def _metadata(top: Any, array_format: bool) -> dict[str, Any]:
    return {} if array_format else {k: v for k, v in top.items() if k != "traceEvents"}
