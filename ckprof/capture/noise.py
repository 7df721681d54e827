"""Filter torch's own profiler noise out of the process's stderr while a capture runs.

Contract: :func:`quiet_profiler_noise` is a re-entrant context manager. While the
outermost one is open, file descriptor 2 is a pipe read by a daemon thread that
forwards every byte to the original stderr EXCEPT whole lines matching
:data:`NOISE_PATTERNS` -- the lines torch 2.x's C++ side writes on its own at every
profiler start/stop and on the first free of a block allocated before profiling::

    USDT:2026-11-29 22:09:46 31665:31665 SyncActivityProfilerHandler.cpp:52] profiler_start
    [W1129 22:09:46.543350094 CPUAllocator.cpp:245] Memory block of unknown size was allocated before the profiling started, ...

Nothing else is dropped: a real warning, a traceback, a progress bar (``\\r`` without a
newline) pass through unchanged and in order. ``CKPROF_TORCH_NOISE=1`` in the
environment turns the filter off.

# NOTE [ Filtering native stderr ]
# Both lines are written by C++ straight to fd 2 (not through Python's warnings or
# sys.stderr), and neither a torch API nor an environment variable read at run time
# silences them (KINETO_LOG_LEVEL only adds lines; TORCH_CPP_LOG_LEVEL is read once at
# start-up). So the filter works at the descriptor level: dup2 a pipe onto fd 2.
# - A line is judged only once it is complete. A partial line that cannot be the start
#   of a noise line is forwarded at once (progress bars stay live); one that could be
#   is held until its newline arrives.
# - When the filter closes, fd 2 is restored first, then a sentinel written through
#   the pipe tells the reader that everything before it has been forwarded: output
#   written inside the window is never lost or reordered with output after it.
# - Child processes forked inside the window (DataLoader workers) inherit the pipe:
#   the reader keeps forwarding (and filtering) what they write until every writer has
#   closed it, so a child can never block on a full pipe.
# - Any failure to set the filter up leaves stderr exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator

__all__ = ["NOISE_PATTERNS", "acquire", "is_noise", "quiet_profiler_noise", "release"]

#: Whole lines that are torch's profiler chatter, never a user's problem.
#: (With torch.distributed initialised torch prefixes its log lines with ``[rankN]:``.)
NOISE_PATTERNS: tuple[re.Pattern[bytes], ...] = (
    re.compile(rb"^(?:\[rank\d+\]:)?USDT:[^\n]*\] profiler_(?:start|stop)\r?\n?$"),
    re.compile(rb"^(?:\[rank\d+\]:)?\[W[^\]\n]*CPUAllocator\.cpp:\d+\] Memory block of unknown "
               rb"size was allocated before the profiling started[^\n]*\r?\n?$"),
)
#: What a noise line may start with (a partial line with another start is forwarded now).
_NOISE_STARTS: tuple[bytes, ...] = (b"USDT:", b"[W", b"[rank")
_MAX_HELD = 8192


def is_noise(line: bytes) -> bool:
    """True when ``line`` (with or without its newline) is one of torch's noise lines."""
    return any(p.match(line) for p in NOISE_PATTERNS)


def _could_be_noise(partial: bytes) -> bool:
    return any(partial[: len(s)] == s[: len(partial)] for s in _NOISE_STARTS)


class _Forwarder(threading.Thread):
    """Reads the pipe, writes what is not noise to ``out_fd``; owns both descriptors."""

    def __init__(self, read_fd: int, out_fd: int, sentinel: bytes) -> None:
        super().__init__(name="ckprof-stderr-filter", daemon=True)
        self.read_fd = read_fd
        self.out_fd = out_fd
        self.sentinel = sentinel
        self.drained = threading.Event()
        self._held = b""        # start of a line that might be noise
        self._midline = False   # the start of the current line was already forwarded

    def _out(self, data: bytes) -> None:
        while data:
            try:
                n = os.write(self.out_fd, data)
            except InterruptedError:  # pragma: no cover - signal during write
                continue
            except OSError:
                return
            data = data[n:]

    def _feed(self, data: bytes) -> None:
        data = self._held + data
        self._held = b""
        while data:
            nl = data.find(b"\n")
            if self._midline:
                if nl < 0:
                    self._out(data)
                    return
                self._out(data[: nl + 1])
                data = data[nl + 1:]
                self._midline = False
                continue
            if nl >= 0:
                line, data = data[: nl + 1], data[nl + 1:]
                if line.rstrip(b"\r\n") == self.sentinel:
                    self.drained.set()
                elif not is_noise(line):
                    self._out(line)
                continue
            undecided = _could_be_noise(data) or data == self.sentinel[: len(data)]
            if undecided and len(data) <= _MAX_HELD:
                self._held = data
                return
            self._out(data)
            self._midline = True
            return

    def run(self) -> None:
        try:
            while True:
                try:
                    chunk = os.read(self.read_fd, 65536)
                except InterruptedError:  # pragma: no cover
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                self._feed(chunk)
        finally:
            if self._held:
                self._out(self._held)
            self.drained.set()
            for fd in (self.read_fd, self.out_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)


class _Filter:
    depth = 0
    saved_fd = -1
    write_fd = -1
    thread: _Forwarder | None = None
    sentinel = b""
    lock = threading.Lock()


def _flush_python_stderr() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


def _start() -> None:
    _flush_python_stderr()
    read_fd, write_fd = os.pipe()
    try:
        saved = os.dup(2)
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    out_fd = os.dup(saved)  # the thread's own copy: it may outlive the window
    sentinel = b"\x00ckprof-stderr-drained-" + uuid.uuid4().hex.encode()
    thread = _Forwarder(read_fd, out_fd, sentinel)
    try:
        thread.start()
        os.dup2(write_fd, 2)
    except BaseException:
        for fd in (saved, write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        if not thread.is_alive():
            for fd in (read_fd, out_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
        raise
    _Filter.saved_fd, _Filter.write_fd, _Filter.thread, _Filter.sentinel = (
        saved, write_fd, thread, sentinel)


def _stop() -> None:
    _flush_python_stderr()
    saved, write_fd, thread = _Filter.saved_fd, _Filter.write_fd, _Filter.thread
    _Filter.saved_fd, _Filter.write_fd, _Filter.thread = -1, -1, None
    with contextlib.suppress(OSError):
        os.dup2(saved, 2)
    with contextlib.suppress(OSError):
        os.close(saved)
    if write_fd >= 0:
        with contextlib.suppress(OSError):
            os.write(write_fd, _Filter.sentinel + b"\n")
        with contextlib.suppress(OSError):
            os.close(write_fd)
    if thread is not None:
        thread.drained.wait(timeout=5.0)


def _enabled() -> bool:
    return os.environ.get("CKPROF_TORCH_NOISE", "") in ("", "0")


def acquire() -> bool:
    """Open one level of the filter; True when it is active (pair with :func:`release`)."""
    with _Filter.lock:
        if _Filter.depth == 0:
            if not _enabled():
                return False
            try:
                _start()
            except Exception:
                return False
        _Filter.depth += 1
        return True


def release() -> None:
    """Close one level opened by a successful :func:`acquire`."""
    with _Filter.lock:
        if _Filter.depth <= 0:
            return
        _Filter.depth -= 1
        if _Filter.depth == 0:
            _stop()


@contextlib.contextmanager
def quiet_profiler_noise() -> Iterator[None]:
    """Drop torch's profiler noise lines from fd 2 inside the block (see module doc)."""
    active = acquire()
    try:
        yield
    finally:
        if active:
            release()
