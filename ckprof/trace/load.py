"""Read a Chrome/Kineto trace file into a :class:`~ckprof.trace.model.Trace`.

Contract::

    load_trace(path, *, salvage=False) -> Trace
    find_trace_files(directory, *, recursive=False) -> list[Path]
    is_trace_path(path) -> bool

Input: ``.json`` or gzip-compressed JSON (detected by magic bytes, not the name), as
written by ``torch.profiler`` ``export_chrome_trace`` / ``tensorboard_trace_handler``
(CPU, CUDA, ROCm), Kineto's 2021 legacy format, or the Chrome "array format" (a bare
list of events). ``path`` may be a directory holding exactly one trace.

Output: a Trace that passes ``Trace.check()``: events sorted by ``(ts_ns, -dur_ns)``
with exact integer-nanosecond times, kinds normalised, parent/depth per the
NOTE [ Event tree rules ] in ``_build``, ``[memory]`` events in ``memory``, all other
top-level keys in ``metadata`` and the ``ckprof`` object in ``ckprof``.

Errors (all ``ckprof.errors`` subclasses, one-line messages, never another type):
missing path, a symlink loop or dangling link, a directory without traces ->
TraceNotFoundError; not JSON, not a trace, damaged gzip, UTF-16/32 text, not a
regular file (a FIFO, device or socket is never opened: it could block forever), an
unreadable file, a gzip stream expanding more than any trace -> TraceFormatError;
JSON or gzip stream that ends early (also a file truncated while it is read) ->
TraceTruncatedError (``events_recovered``; with ``salvage=True`` the complete events
are returned and a note says "salvaged N events from truncated file"); no usable
complete events, or nothing but whitespace -> EmptyTraceError; too big for this
machine's memory, before reading or while a gzip stream grows -> TraceTooLargeError
(NOTE [ Memory guard ]; NOTE [ Hostile input files ] in ``kineto/source``). Individual unusable events are skipped and counted in
``Trace.notes`` (see NOTE [ Event field rules ] in ``kineto/careful``).

Two readers, one result: the fast reader (``kineto/fast``: chunked, bounded memory; each
piece read by the native scanner when it is built -- NOTE [ Native scanner ] in
``trace/_native`` -- else by msgspec) handles Kineto-shaped input; a piece of it holding an
odd event is re-read event by event with the careful rules; anything else odd (another
layout, truncation, B/E events, damaged gzip) makes the loader start over with the
careful reader (``kineto/careful``: stdlib json, event by event), which is also the reference
the tests compare the fast one against. On machines with 2+ cores, plain files of 32 MB
or more are scanned by 2 threads (native scanner), or of 256 MB or more decoded by 2
worker processes (msgspec); ``CKPROF_LOAD_WORKERS=N`` sets N, 1 turns it off; same
result either way. gzip input is inflated in a thread while the pieces are decoded.
Reading imports no pandas (building the Trace does).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import re
import stat
import sys
import zlib
from pathlib import Path
from typing import Any

from ckprof.errors import (
    CkprofError,
    EmptyTraceError,
    TraceFormatError,
    TraceNotFoundError,
    TraceTooLargeError,
    TraceTruncatedError,
)
from ckprof.trace import _native
from ckprof.trace._build import Columns, build_trace, is_legacy
from ckprof.trace.kineto import source as _source
from ckprof.trace.kineto.careful import read_careful
from ckprof.trace.kineto.fast import Blank, NeedsCarefulReader, prefetch, read_fast
from ckprof.trace.model import Trace
from ckprof.trace.progress import Progress

#: the first bytes of every sqlite database (Nsight Systems ``nsys export --type sqlite``)
SQLITE_MAGIC = b"SQLite format 3\x00"

__all__ = ["SQLITE_MAGIC", "find_rank_candidates", "find_trace_files", "is_nsys_sqlite",
           "is_trace_path", "load_trace"]

#: bytes of JSON text the fast reader decodes at once
CHUNK_BYTES = 24 * 1024 * 1024
#: blocks a file is streamed in (gzip input; plain files are mapped when they can be).
#: A gzip file's scan threads start once two blocks are there and the last one is
#: scanned alone, so small blocks keep both cores busy: a 300 MB .json.gz (stack shape) loads in 0.52 s with 16 MiB blocks, 0.43 s with
#: 4 MiB and 0.45 s with 2 MiB (median of 5, 2 cores)
STREAM_BLOCK_BYTES = 4 * 1024 * 1024
#: plain files at least this big are decoded by worker processes (NOTE [ Parallel pieces ])
PARALLEL_MIN_BYTES = 256 * 1024 * 1024
#: ... or by threads, when the native scanner is there (no process start-up to pay for)
NATIVE_PARALLEL_MIN_BYTES = 32 * 1024 * 1024
#: files at least this big (uncompressed) show a progress bar on a terminal
PROGRESS_MIN_BYTES = 64 * 1024 * 1024

# NOTE [ Memory guard ]
# Measured peak RSS above the interpreter with pandas loaded: the fast reader needs
# about 0.9-1.0 x the uncompressed size (the numpy columns, ~100 bytes per event, plus
# the sort and tree temporaries of the final build; one ~24 MB piece at a time before
# that); the careful reader about 4.0 x (the whole text, its str copy and the Python
# objects; issue 16 measured 4.0 x where 3.5 x had been assumed). ``annotate`` re-reads
# the whole document as Python objects next to the analysis: 4.5 x. We refuse when the
# estimate exceeds what /proc/meminfo calls available, instead of swapping for an hour
# or being killed: on a 24 GiB machine with ~21 GiB available that admits plain traces
# up to ~20 GB (fast path) and odd-layout ones up to ~5 GB. A gzip file's size is not
# known before it is read (the size field is the last member's, modulo 4 GiB), so the
# decompressed bytes are also counted while streaming and the read stops as soon as
# they pass what memory allows (``_source.DecompressedTooLarge``).
# The careful reader's peak is about 2.4 x the text plus ~200 bytes per event (its
# Python int lists): 2.9 x on a 400 MB synthetic GPU trace (400 bytes per event),
# 4.5 x on tiny 90-byte events. The guard takes the larger of 4.0 x and
# 2.5 x + 250 bytes x the events the fast reader decoded before it gave up, and the
# exact decompressed size once the fast reader has streamed a gzip file to its end.
FAST_BYTES_PER_BYTE = 1.0
CAREFUL_BYTES_PER_BYTE = 4.0
CAREFUL_TEXT_BYTES_PER_BYTE = 2.5
CAREFUL_BYTES_PER_EVENT = 250
ANNOTATE_BYTES_PER_BYTE = 4.5
FIXED_OVERHEAD_BYTES = 96 * 1024 * 1024


def is_nsys_sqlite(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a readable file starting with the sqlite magic bytes.

    Never raises, never opens what is not a regular file: a missing file, a directory,
    a FIFO or an unreadable file is ``False``
    (the JSON loader then reports what is wrong with it).
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block in open()
            return False
        with open(path, "rb") as fh:
            return fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except (OSError, ValueError):
        return False


def _too_large(path: str, needed: int, size_bytes: int, available: int, what: str,
               at_least: bool = False) -> TraceTooLargeError:
    size = f"{'more than ' if at_least else ''}{size_bytes / 2**30:.1f} GiB of JSON"
    return TraceTooLargeError(
        f"{what} needs {'more than' if at_least else 'about'} {needed / 2**30:.1f} GiB of "
        f"memory to load ({size}) but only {available / 2**30:.1f} GiB is available",
        path=path, hint="Run on a machine with more memory, or profile fewer steps (smaller "
                        "active window in the schedule)")


def check_memory(path: str, size_bytes: int, factor: float, what: str) -> None:
    """Refuse (TraceTooLargeError, exit 10) when ``size_bytes x factor`` plus a fixed
    overhead exceeds the memory available now (NOTE [ Memory guard ])."""
    available = _source.available_memory_bytes()
    if available is None:
        return
    needed = int(size_bytes * factor) + FIXED_OVERHEAD_BYTES
    if needed > available:
        raise _too_large(path, needed, size_bytes, available, what)


def max_stream_bytes(factor: float) -> int | None:
    """Decompressed bytes a read needing ``factor`` x the JSON may stream before it is
    stopped (None: unknown memory, no limit)."""
    available = _source.available_memory_bytes()
    if available is None:
        return None
    return max(0, int((available - FIXED_OVERHEAD_BYTES) / factor))


def _stream_too_large(shown: str, err: _source.DecompressedTooLarge, factor: float,
                      what: str) -> CkprofError:
    if err.bomb:
        return TraceFormatError(
            f"the gzip stream expands more than {_source.BOMB_RATIO}x ({err.seen / 2**30:.1f} "
            f"GiB from {err.compressed / 2**20:.1f} MiB of gzip data): that is not a profiler "
            "trace (they compress 10-30x)", path=shown,
            hint="Check where the file came from; ckprof stopped reading it")
    available = _source.available_memory_bytes() or 0
    return _too_large(shown, int(err.seen * factor) + FIXED_OVERHEAD_BYTES, err.seen,
                      available, f"{what} (gzip, still growing when reading stopped)",
                      at_least=True)


def load_trace(path: str | os.PathLike[str], *, salvage: bool = False,
               workers: int | None = None) -> Trace:
    """Load one trace: Chrome/Kineto JSON (plain or gzip), or an Nsight Systems sqlite
    export (sniffed by its first bytes) -- the one place that picks a loader. See the
    module docstring for the contract.

    ``workers``: processes decoding a big plain file (None: ``CKPROF_LOAD_WORKERS``, else
    2 on machines with 2+ cores; see :func:`_workers`)."""
    p = Path(path)
    shown = str(path)
    try:
        is_dir = p.is_dir()
    except OSError:
        is_dir = False
    if is_dir:
        found = find_trace_files(p)
        if not found:
            raise TraceNotFoundError("the directory holds no trace files", path=shown,
                                     hint="Point at a *.json or *.json.gz trace, or the folder "
                                          "tensorboard_trace_handler wrote into")
        if len(found) > 1:
            listed = ", ".join(f.name for f in found[:3]) + (", ..." if len(found) > 3 else "")
            raise CkprofError(f"the directory holds {len(found)} traces ({listed})", path=shown,
                              hint="Pass one of the files")
        p = found[0]
        shown = str(p)
    if is_nsys_sqlite(p):  # the nsys reader (and pandas) only for an nsys export
        from ckprof.trace.nsys import load_nsys

        return load_nsys(p)
    _source.check_input_file(p, shown)  # never open a FIFO or a device: they can block
    try:
        return _load_file(p, shown, salvage, workers)
    except CkprofError:
        raise
    except MemoryError:
        raise TraceTooLargeError("ran out of memory while loading", path=shown,
                                 hint="Run on a machine with more memory") from None
    except PermissionError as err:
        raise TraceFormatError(f"cannot be read ({err.strerror or err})", path=shown,
                               hint="Check the file's permissions") from None
    except (OSError, zlib.error) as err:
        raise TraceFormatError(f"could not read the file ({err})", path=shown,
                               hint="Check the file is readable and complete") from None
    except (ValueError, ArithmeticError, TypeError, LookupError, RecursionError) as err:
        # a safety net for input no rule above foresaw: still a typed, one-line error
        raise TraceFormatError(f"could not be read ({type(err).__name__}: {err})".replace(
            "\n", " "), path=shown, hint="Please report this file to the ckprof authors"
        ) from None


_UTF16_32 = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
             (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def _check_text_encoding(reader: _source.BlockReader, shown: str) -> None:
    """UTF-16/32 text (a BOM, or NUL bytes between ASCII ones) is refused by name."""
    if reader.compressed:
        return
    with open(reader.path, "rb") as f:
        head = f.read(64)
    name = next((n for bom, n in _UTF16_32 if head.startswith(bom)), None)
    if name is None and len(head) >= 4 and head[1:2] == b"\x00" and head[0:1] in b"{[ \t\r\n":
        name = "UTF-16"
    if name is None and len(head) >= 4 and head[0:1] == b"\x00" and head[1:2] in b"{[ \t\r\n":
        name = "UTF-16"
    if name is not None:
        raise TraceFormatError(
            f"is {name} text; traces are UTF-8 JSON", path=shown,
            hint=f"Convert it first: iconv -f {name} -t UTF-8 {shown} > trace.json")


def _load_file(p: Path, shown: str, salvage: bool, workers: int | None) -> Trace:
    reader = _source.BlockReader(p, block_bytes=STREAM_BLOCK_BYTES,
                                 max_bytes=max_stream_bytes(FAST_BYTES_PER_BYTE))
    if reader.file_bytes == 0:
        raise EmptyTraceError("the file is empty (0 bytes)", path=shown,
                              hint="Capture the trace again; the profiler wrote nothing")
    _check_text_encoding(reader, shown)
    size = reader.estimated_size_bytes()
    check_memory(shown, size, FAST_BYTES_PER_BYTE, "this trace")
    notes: list[str] = []
    result: tuple[Columns, dict, str] | None
    try:
        result = _read_fast_file(reader, workers, size)
    except NeedsCarefulReader:  # anything unexpected: start over with the careful reader
        result = None
    except Blank:
        raise EmptyTraceError("the file holds nothing but whitespace", path=shown,
                              hint="Capture the trace again; the profiler wrote nothing"
                              ) from None
    except _source.DecompressedTooLarge as err:
        raise _stream_too_large(shown, err, FAST_BYTES_PER_BYTE, "this trace") from None
    if result is not None and reader.problem is None and result[0].n_events > 0:
        cols, metadata, fmt = result
    else:
        events_seen = 0 if result is None else result[0].n_events + result[0].n_memory
        result = None  # let the fast reader's columns go before the careful read
        what = "this trace has an unusual layout; the careful reader"
        size = max(size, reader.streamed_bytes)  # exact once a gzip stream was read through
        factor = max(CAREFUL_BYTES_PER_BYTE, CAREFUL_TEXT_BYTES_PER_BYTE
                     + CAREFUL_BYTES_PER_EVENT * events_seen / max(size, 1))
        check_memory(shown, size, factor, what)
        reader.max_bytes = max_stream_bytes(factor)
        try:
            data = reader.read_all()
        except _source.DecompressedTooLarge as err:
            raise _stream_too_large(shown, err, factor, what) from None
        problem = reader.problem
        if problem is not None:
            cols, metadata, fmt, notes = _read_damaged_gzip(data, shown, salvage, problem)
        else:
            cols, metadata, fmt, notes = read_careful(data, path=shown, salvage=salvage)
        del data
    if fmt == "kineto" and is_legacy(cols):
        fmt = "kineto-legacy"
    trace = build_trace(cols, path=shown, metadata=metadata, source_format=fmt, notes=notes)
    del cols
    if size > 64 * 1024 * 1024:
        _release_free_memory()
    return trace


def _release_free_memory() -> None:
    """Hand the heap pages freed by the chunk arrays back to the OS (glibc only)."""

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _read_fast_file(reader: _source.BlockReader, workers: int | None,
                    total: int) -> tuple[Columns, dict, str]:
    """``total``: the (estimated) uncompressed size, for the progress bar."""
    if _is_blank(reader):
        raise Blank()
    # a bar on stderr for long loads, only when stderr is a terminal (ckprof.trace.progress)
    with Progress(total, unit="MB", scale=1e6, label=f"reading {reader.path.name}",
                  enabled=None if total >= PROGRESS_MIN_BYTES else False) as bar:

        def consumed(n: int) -> None:
            if bar.done + n > bar.total:  # gzip sizes are estimates
                bar.total = bar.done + n
            bar.update(n)

        if reader.compressed:  # inflate in a thread while threads scan what it gave
            scanners = (workers or _workers()) if _native.available() \
                and total >= NATIVE_PARALLEL_MIN_BYTES else 1
            return read_fast(prefetch(reader.blocks()), chunk_bytes=CHUNK_BYTES,
                             workers=scanners, on_consumed=consumed)
        with open(reader.path, "rb") as f, _read_lease(f) as leased:
            if not leased:  # the mapping could not be protected: read it as a stream
                return read_fast(reader.blocks(), chunk_bytes=CHUNK_BYTES, on_consumed=consumed)
            try:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError):  # not mappable (a pipe, a special file): stream it
                return read_fast(reader.blocks(), chunk_bytes=CHUNK_BYTES, on_consumed=consumed)
            try:
                threshold = NATIVE_PARALLEL_MIN_BYTES if _native.available() else PARALLEL_MIN_BYTES
                if reader.file_bytes < threshold:
                    workers = 1
                elif workers is None:
                    workers = _workers()
                return read_fast(None, chunk_bytes=CHUNK_BYTES, mm=mm, path=str(reader.path),
                                 workers=workers, on_consumed=consumed)
            finally:
                with contextlib.suppress(BufferError):  # a view still alive: GC unmaps it later
                    mm.close()


# NOTE [ Mapped reads and truncation ]
# A memory-mapped file that another process truncates while it is read kills the reader
# with SIGBUS (issue 16: "never die from a signal"); the fast reader maps plain files
# because its scanner threads share one buffer and give read pages back (issue 17). So
# the mapping is only used under a Linux read lease (fcntl F_SETLEASE, F_RDLCK) on the
# open file: while it is held, another process that opens the file for writing or
# truncates it by name is made to WAIT by the kernel (up to
# /proc/sys/fs/lease-break-time, 45 s by default) until ckprof has read it; the lease
# break is signalled with SIGIO, which is ignored for that time (its default action
# would end the process). The lease cannot be taken when the file is already open for
# writing anywhere (a trace still being written), off the main thread (signal handlers
# live there), without lease support (macOS, some network file systems) or permission:
# then the file is read as a plain stream -- no mapping, no SIGBUS, one thread.


@contextlib.contextmanager
def _read_lease(f: Any) -> Any:
    """Yield True while a read lease on ``f`` is held (NOTE [ Mapped reads and
    truncation ]), False when none could be taken."""
    import fcntl
    import signal
    import threading

    set_lease = getattr(fcntl, "F_SETLEASE", None)
    if set_lease is None or threading.current_thread() is not threading.main_thread():
        yield False
        return
    try:
        previous = signal.signal(signal.SIGIO, signal.SIG_IGN)
    except (ValueError, OSError):
        yield False
        return
    try:
        try:
            fcntl.fcntl(f.fileno(), set_lease, fcntl.F_RDLCK)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            with contextlib.suppress(OSError):
                fcntl.fcntl(f.fileno(), set_lease, fcntl.F_UNLCK)
    finally:
        with contextlib.suppress(ValueError, OSError, TypeError):
            signal.signal(signal.SIGIO, previous if previous is not None else signal.SIG_DFL)


_BLANKS = b" \t\r\n"


def _is_blank(reader: _source.BlockReader) -> bool:
    """True when the input holds nothing but JSON whitespace: one streaming pass that
    stops at the first other byte (the first byte of any real trace), in constant
    memory; ``bytes.strip`` runs at memory speed, so 2 GB of blanks take seconds."""
    if reader.compressed:  # small blocks: a real trace is decided by its first 64 KiB
        blocks = _source.BlockReader(reader.path, block_bytes=1 << 16,
                                     max_bytes=reader.max_bytes).blocks()
        try:
            return all(not block.strip(_BLANKS) for block in blocks)
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()
    with open(reader.path, "rb") as f:
        while True:
            block = f.read(1 << 22)
            if not block:
                return True
            if block.strip(_BLANKS):
                return False


def _workers() -> int:
    """Worker processes for one big plain file: ``CKPROF_LOAD_WORKERS`` when set (1 turns
    the parallel reader off), else 2 when the machine has 2 or more cores.

    Measured on the 2-vCPU project machine, 1 GB synthetic GPU trace
    (benchmarks/bench_analyze.py, median of 3, quiet machine): load 10.6 s with one
    process, 7.2 s with two (analyze end to end 11.9 s -> 9.2 s, 88 -> 114 MB/s; peak RSS
    0.69 -> 0.72x the file). When other jobs already use the cores, two workers can be
    slower (12.4 s vs 8.7 s measured under load): set CKPROF_LOAD_WORKERS=1 there.
    ``ckprof analyze DIR`` runs one file per worker process and passes ``workers=1``."""
    if not sys.platform.startswith("linux"):
        return 1
    env = os.environ.get("CKPROF_LOAD_WORKERS", "").strip()
    if env.isdigit():
        return max(1, int(env))
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def _read_damaged_gzip(data: bytes, shown: str, salvage: bool,
                       problem: str) -> tuple[Columns, dict, str, list[str]]:
    """The gzip stream ended early or broke: read what decompressed, then decide."""
    truncated = problem == "truncated"
    what = "the gzip stream ends early (truncated file?)" if truncated else f"the gzip stream is {problem}"
    try:
        cols, metadata, fmt, notes = read_careful(data, path=shown, salvage=True)
    except CkprofError:
        cols = None
    recovered = 0 if cols is None else cols.n_events + cols.n_memory
    if not salvage or cols is None:
        hint = ("Re-run with --salvage (salvage=True) to analyse them, or capture the trace again"
                if recovered else "Capture the trace again")
        if truncated:
            raise TraceTruncatedError(f"{what}; {recovered} complete events precede the end",
                                      path=shown, hint=hint, events_recovered=recovered)
        raise TraceFormatError(f"{what}; {recovered} complete events could be read",
                               path=shown, hint=hint)
    notes = [n for n in notes if not n.startswith("salvaged")]
    notes.insert(0, f"salvaged {recovered} events from {'truncated' if truncated else 'damaged'} "
                    f"file ({what})")
    return cols, metadata, fmt, notes


# --------------------------------------------------------------------------- discovery

_HTA_OUTPUT = re.compile(r"_with_counters\.json(\.gz)?$")
_SNIFF_BYTES = 256 * 1024


def _head_text(path: Path, limit: int = _SNIFF_BYTES) -> bytes:
    with open(path, "rb") as f:
        head = f.read(limit)
    if head[:2] == _source.GZIP_MAGIC:
        try:
            return zlib.decompressobj(31).decompress(head, limit)
        except zlib.error:
            return b""
    return head


def _sniff(path: Path) -> str:
    """``"trace"``, ``"other-json"`` (JSON of another tool) or ``"unknown"`` (empty,
    not JSON, damaged gzip, UTF-16, unreadable) from the file's first bytes."""
    try:
        head = _head_text(path)
    except OSError:
        return "unknown"
    lead = head.lstrip(b" \t\r\n\xef\xbb\xbf")
    if lead[:1] == b"{":
        return "trace" if b'"traceEvents"' in head else "other-json"
    if lead[:1] == b"[":
        return "trace" if b'"ph"' in head else "other-json"
    return "unknown"


def _looks_like_trace(path: Path) -> bool:
    return _sniff(path) == "trace"


def _is_candidate_name(name: str) -> bool:
    low = name.lower()
    if not (low.endswith(".json") or low.endswith(".json.gz")):
        return False
    return not (_HTA_OUTPUT.search(low) or ".ckprof." in low)


def is_trace_path(path: str | os.PathLike[str]) -> bool:
    """True for an existing file that holds a Chrome/Kineto trace (sniffed, not just named).

    Never raises: unreadable or odd paths answer False."""
    try:
        p = Path(path)
        return p.is_file() and _looks_like_trace(p)
    except (OSError, ValueError):
        return False


def _directory(directory: str | os.PathLike[str]) -> Path:
    """``directory`` as a Path, or TraceNotFoundError when it is not a directory."""
    d = Path(directory)
    if not d.is_dir():
        raise TraceNotFoundError("not a directory", path=str(directory),
                                 hint="Pass the folder that holds the traces")
    return d


def _entries(d: Path, recursive: bool) -> list[Path]:
    """The folder's entries, or TraceFormatError naming a folder that cannot be listed."""
    try:
        return list(d.rglob("*") if recursive else d.iterdir())
    except OSError as err:
        raise TraceFormatError(f"cannot list the directory ({err.strerror or err})",
                               path=str(d), hint="Check the folder's permissions") from None


#: tensorboard_trace_handler's names: such a file is a trace even when it cannot be read
_TRACE_NAME = re.compile(r"\.pt\.trace\.json(\.gz)?$", re.IGNORECASE)


def find_rank_candidates(directory: str | os.PathLike[str], *, recursive: bool = False,
                         include_nsys: bool = False) -> list[Path]:
    """Every file in ``directory`` that looks like a trace by name or content, sorted:
    what :func:`find_trace_files` finds, plus the ``*.json[.gz]`` files that would fail
    to load -- empty, not JSON, damaged gzip, UTF-16, unreadable, a FIFO or device, a
    dangling link or a link loop -- so that a directory analysis can list them as
    failures instead of dropping them. Skipped: another tool's JSON (valid JSON without
    ``traceEvents``, unless named ``*.pt.trace.json[.gz]``), HTA and ckprof outputs,
    directories. Only regular files are opened (sniffed)."""
    found = []
    for f in _entries(_directory(directory), recursive):
        name = f.name
        if include_nsys and name.endswith(".sqlite"):
            if f.is_file() and is_nsys_sqlite(f):
                found.append(f)
            continue
        if not _is_candidate_name(name):
            continue
        try:
            st = f.stat()
        except OSError:  # a link loop, a dangling link, no permission to stat
            found.append(f)
            continue
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):  # a FIFO, socket or device: never opened
            found.append(f)
            continue
        kind = _sniff(f)
        if kind == "trace" or kind == "unknown" or _TRACE_NAME.search(name):
            found.append(f)
    return sorted(found)


def find_trace_files(directory: str | os.PathLike[str], *, recursive: bool = False,
                     include_nsys: bool = False) -> list[Path]:
    """Trace files in ``directory``, sorted by name.

    ``*.pt.trace.json[.gz]`` (tensorboard_trace_handler) and any other ``*.json[.gz]``
    whose first bytes look like a trace. HTA's ``*_with_counters.json[.gz]`` and ckprof
    outputs (``*.ckprof.*``, or JSON without ``traceEvents``) are skipped. With
    ``include_nsys``, Nsight Systems sqlite exports (``*.sqlite``, sniffed) are listed
    too -- ``ckprof.analysis.load`` reads both kinds; :func:`load_trace` only JSON.
    Raises TraceNotFoundError when ``directory`` is not a directory."""
    found = []
    for f in _entries(_directory(directory), recursive):
        json_trace = _is_candidate_name(f.name) and f.is_file() and _looks_like_trace(f)
        nsys = include_nsys and f.name.endswith(".sqlite") and f.is_file() and is_nsys_sqlite(f)
        if json_trace or nsys:
            found.append(f)
    return sorted(found)
