"""Bytes of a trace file: plain or gzip (by magic bytes), in bounded blocks.

Decompression streams (``isal`` when installed, else ``zlib``), so a ``.json.gz``
never needs its compressed and uncompressed copies in memory at once. A gzip stream
that ends early or is damaged does not raise here: :attr:`BlockReader.problem` says
what happened after the last block, and the loader decides (salvage or error).

# NOTE [ Hostile input files ]
# - Only regular files are opened (:func:`check_input_file`): opening a FIFO with no
#   writer blocks forever, a character device never ends. Symbolic links are followed;
#   a loop or a dangling link gets its own message.
# - This module reads plain files with ``read()``. The fast loader maps big plain
#   files instead, only under a read lease that makes a truncating writer wait, so
#   no SIGBUS (NOTE [ Mapped reads and truncation ] in ckprof/trace/load.py). A file
#   that shrinks while read here just ends early.
# - A gzip file may hold several members (``cat a.gz b.gz``, pigz, log shippers): the
#   stream is every member's data in order; zero padding between members is skipped.
#   After a member ends, the bytes that follow it are ``unused_data`` ONLY (zlib keeps
#   the same bytes in ``unconsumed_tail`` too when the output limit was hit: adding
#   both decoded the next member twice).
# - The gzip size field is the LAST member's size modulo 4 GiB: it proves nothing. The
#   decompressed bytes are counted while streaming and :class:`DecompressedTooLarge`
#   is raised as soon as they pass ``max_bytes`` (what memory allows).
"""

from __future__ import annotations

import errno
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

from ckprof.errors import TraceFormatError, TraceNotFoundError

try:  # ISA-L inflate (a dependency, ~5x zlib); same API as zlib's decompressobj
    from isal import isal_zlib as _zlib  # type: ignore[import-not-found]
    _ZLIB_ERRORS: tuple[type[BaseException], ...] = (zlib.error, _zlib.error)
except ImportError:  # pragma: no cover - depends on the environment
    _zlib = zlib
    _ZLIB_ERRORS = (zlib.error,)

__all__ = ["BLOCK_BYTES", "BlockReader", "DecompressedTooLarge", "available_memory_bytes",
           "check_input_file", "check_input_path", "is_gzip"]

GZIP_MAGIC = b"\x1f\x8b"
#: size of the blocks handed to the decoder (uncompressed bytes)
BLOCK_BYTES = 16 * 1024 * 1024
_COMPRESSED_READ = 4 * 1024 * 1024


#: a gzip stream expanding more than this (after BOMB_MIN_BYTES) is not a trace:
#: Kineto JSON compresses 10-30x (the real traces in ../shared/traces: 10-30x, the
#: synthetic GPU trace 14x); deflate cannot exceed ~1032x; a bomb of blanks reaches
#: ~1000x, one of a single repeated event ~300x
BOMB_RATIO = 200
BOMB_MIN_BYTES = 256 << 20


class DecompressedTooLarge(Exception):
    """The gzip stream decompressed to more than ``max_bytes`` (``seen`` so far), or
    (``bomb``) expanded more than :data:`BOMB_RATIO` x its compressed bytes."""

    def __init__(self, seen: int, limit: int, *, compressed: int = 0, bomb: bool = False) -> None:
        super().__init__(f"more than {limit} bytes decompressed")
        self.seen = seen
        self.limit = limit
        self.compressed = compressed
        self.bomb = bomb


_KIND_OF_MODE = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                 (stat.S_ISDIR, "a directory"))


def file_kind(mode: int) -> str:
    """Words for a non-regular file's type ("a named pipe (FIFO)", ...)."""
    for test, words in _KIND_OF_MODE:
        if test(mode):
            return words
    return "not a regular file"


def check_input_file(path: str | os.PathLike[str], shown: str | None = None) -> os.stat_result:
    """Stat ``path`` (following links) and insist on a regular file, without opening it.

    Raises TraceNotFoundError (missing, dangling link, link loop) or TraceFormatError
    (a FIFO, device, socket: reading one could block forever or never end)."""
    shown = str(path) if shown is None else shown
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise TraceNotFoundError("is a symbolic link loop (too many levels of links)",
                                     path=shown, hint="Fix the link to point at a trace file"
                                     ) from None
        if err.errno == errno.ENOENT and os.path.islink(path):
            raise TraceNotFoundError(f"is a symbolic link to a missing file "
                                     f"({os.readlink(path)})", path=shown,
                                     hint="Fix the link or pass the trace itself") from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise TraceNotFoundError("no such file or directory", path=shown,
                                     hint="Check the path; traces are *.pt.trace.json[.gz] "
                                          "files") from None
        raise TraceFormatError(f"cannot be read ({err.strerror or err})", path=shown,
                               hint="Check the file's permissions") from None
    if not stat.S_ISREG(st.st_mode):
        raise TraceFormatError(
            f"is {file_kind(st.st_mode)}, not a regular file", path=shown,
            hint="Save the trace to a file first (e.g. `cat > trace.json`) and pass that file")
    return st


def check_input_path(path: str | os.PathLike[str], shown: str | None = None) -> bool:
    """True for a directory (searchable); else :func:`check_input_file` (a regular file),
    raising the same errors. What the commands check before any work."""
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            return True
    except OSError:
        pass  # check_input_file names the problem
    check_input_file(path, shown)
    return False


def is_gzip(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with the gzip magic bytes (whatever its name)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def available_memory_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo, or None where that is not readable."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _salvage_gzip(path: Path, max_bytes: int | None = None) -> bytes:
    """Everything that decompresses before the damage (small steps, stdlib zlib)."""
    out: list[bytes] = []
    size = 0
    step = 16 * 1024
    with open(path, "rb") as f:
        d = zlib.decompressobj(31)
        while True:
            data = f.read(step)
            if not data:
                break
            while data:
                backup = d.copy()
                try:
                    chunk = d.decompress(data)
                except zlib.error:  # redo this step byte by byte: keep all we can
                    for k in range(len(data)):
                        try:
                            out.append(backup.decompress(data[k:k + 1]))
                        except zlib.error:
                            break
                    return b"".join(out)
                out.append(chunk)
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise DecompressedTooLarge(size, max_bytes)
                if not d.eof:
                    break
                data = d.unused_data.lstrip(b"\x00")
                if len(data) < 2:  # the next member's magic may straddle the read
                    data += f.read(step)
                    data = data.lstrip(b"\x00")
                if data[:2] != GZIP_MAGIC:
                    return b"".join(out)
                d = zlib.decompressobj(31)
    return b"".join(out)


class BlockReader:
    """Iterate a file's (decompressed) bytes in blocks of about ``block_bytes``.

    ``max_bytes``: decompressed bytes allowed before :class:`DecompressedTooLarge`
    (None: no limit). Plain files are read as they are (their size is known)."""

    def __init__(self, path: str | os.PathLike[str], block_bytes: int = BLOCK_BYTES, *,
                 max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.block_bytes = block_bytes
        self.max_bytes = max_bytes
        self.file_bytes = self.path.stat().st_size
        self.compressed = is_gzip(self.path)
        #: None, or what went wrong with the gzip stream ("truncated" / "damaged: ...")
        self.problem: str | None = None
        #: decompressed bytes yielded by the last pass over a gzip stream
        self.streamed_bytes = 0

    def estimated_size_bytes(self) -> int:
        """Uncompressed size: exact for plain files, estimated for gzip."""
        if not self.compressed:
            return self.file_bytes
        try:
            with open(self.path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                isize = int.from_bytes(f.read(4), "little")  # size mod 2**32
        except OSError:
            isize = 0
        # ISIZE wraps at 4 GiB and is only the last member's: Kineto JSON compresses
        # 10-30x, so never assume less than 6x (the stream is counted anyway)
        return max(isize, 6 * self.file_bytes)

    def blocks(self) -> Iterator[bytes]:
        if self.compressed:
            yield from self._gzip_blocks()
            return
        with open(self.path, "rb") as f:
            while True:
                block = f.read(self.block_bytes)
                if not block:
                    return
                yield block

    def read_all(self) -> bytes:
        return b"".join(self.blocks())

    def _gzip_blocks(self) -> Iterator[bytes]:
        """Every member's data in order (NOTE [ Hostile input files ])."""
        self.problem = None
        out: list[bytes] = []
        size = yielded = 0
        limit = self.max_bytes
        with open(self.path, "rb") as f:
            d = None  # None: between members
            pending = b""
            while True:
                if d is None:  # the next member must start here (after zero padding)
                    pending = pending.lstrip(b"\x00")
                    while len(pending) < 2:
                        more = f.read(_COMPRESSED_READ)
                        if not more:
                            break
                        pending = (pending + more).lstrip(b"\x00")
                    if not pending:
                        break  # a clean end after the last member
                    if pending[:2] != GZIP_MAGIC:
                        self.problem = "damaged (data after the end of the gzip stream)"
                        break
                    d = _zlib.decompressobj(31)
                if not pending:
                    pending = f.read(_COMPRESSED_READ)
                    if not pending:
                        self.problem = "truncated"
                        break
                try:
                    chunk = d.decompress(pending, self.block_bytes)
                except _ZLIB_ERRORS as err:
                    self.problem = f"damaged ({err})"
                    salvaged = _salvage_gzip(self.path, limit)
                    out = [salvaged[yielded:]] if len(salvaged) > yielded else []
                    break
                if d.eof:
                    pending = d.unused_data  # not + unconsumed_tail: the same bytes
                    d = None
                else:
                    pending = d.unconsumed_tail
                if chunk:
                    out.append(chunk)
                    size += len(chunk)
                    if limit is not None and yielded + size > limit:
                        raise DecompressedTooLarge(yielded + size, limit)
                    if yielded + size > BOMB_MIN_BYTES:
                        consumed = f.tell() - len(pending)  # compressed bytes used so far
                        if yielded + size > BOMB_RATIO * consumed:
                            raise DecompressedTooLarge(yielded + size, limit or 0,
                                                       compressed=consumed, bomb=True)
                    if size >= self.block_bytes:
                        self.streamed_bytes = yielded + size
                        yield b"".join(out)
                        yielded += size
                        out, size = [], 0
        self.streamed_bytes = yielded + sum(map(len, out))
        if out:
            yield b"".join(out)
