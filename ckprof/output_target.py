"""Where an output may go: checks made before any work, and again just before writing.

Contract::

    check_output_target(path, *, force=False) -> Path
    write_stdout(text) -> None
    encode_text(text) -> bytes

# NOTE [ Output targets ]
# ckprof writes a NEW file through a temporary name and a rename, and only ever
# replaces a REGULAR file (with --force). Anything else at the output path is refused
# with a clear message, --force or not: a directory ("-o runs/" is a folder, not a
# file name), a character or block device (renaming over /dev/full would replace the
# system's device node), a FIFO or a socket. Links are followed for the check, so a
# link to a device is refused too. A folder that cannot be searched or written, or a
# missing folder, is named as such. Writing text never fails on a lone surrogate
# (an undecodable byte in a file name, "\ud800" in a trace): it is written escaped.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from ckprof.errors import CkprofError, OutputExistsError

__all__ = ["check_output_target", "encode_text", "write_stdout"]


def _kind(mode: int) -> str:
    for test, words in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                        (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "not a regular file"


def check_output_target(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Raise unless ``path`` may be written (NOTE [ Output targets ]): OutputExistsError
    (exit 8) for an existing regular file without ``force``; CkprofError (exit 1) for a
    directory, device, FIFO or socket, a missing or unusable folder."""
    out = Path(path)
    shown = str(out)
    try:
        st = os.stat(out)
    except FileNotFoundError:
        st = None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CkprofError("is a symbolic link loop", path=shown,
                              hint="Choose another output name") from None
        if err.errno == errno.ENOTDIR:
            raise CkprofError("a part of the output path is a file, not a folder", path=shown,
                              hint="Choose an output path inside an existing folder") from None
        raise CkprofError(f"cannot check the output path ({err.strerror or err})", path=shown,
                          hint="Choose a folder you can read and write") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise CkprofError("is a directory, not a file name", path=shown,
                              hint=f"Pass a file name inside it: -o {os.path.join(shown, '<name>')}")
        if not stat.S_ISREG(st.st_mode):
            raise CkprofError(f"is {_kind(st.st_mode)}, not a regular file: ckprof only ever "
                              "writes or replaces regular files", path=shown,
                              hint="Choose an ordinary file name")
        if not force:
            raise OutputExistsError("already exists", path=shown,
                                    hint="Choose another name or pass --force to overwrite it")
        return out
    if os.path.islink(out):  # a dangling link: writing would create its target elsewhere
        raise OutputExistsError("is a symbolic link (to a missing file)", path=shown,
                                hint="Choose another name, or remove the link")
    parent = out.parent
    if not parent.is_dir():
        raise CkprofError("output directory does not exist", path=str(parent),
                          hint="Create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CkprofError("cannot write into this folder (permission denied)", path=str(parent),
                          hint="Choose a folder you can write to")
    return out


def encode_text(text: str) -> bytes:
    """UTF-8, with lone surrogates written as ``\\udXXX`` instead of failing."""
    return text.encode("utf-8", errors="backslashreplace")


def write_stdout(text: str) -> None:
    """Write ``text`` to standard output and flush it. A full device, a closed or
    broken stream becomes a one-line CkprofError (exit 1), or a quiet exit 141 for a
    reader that went away (``| head``), never a traceback at interpreter exit."""
    data = encode_text(text)
    stream = sys.stdout
    try:
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            stream.flush()
            buffer.write(data)
            buffer.flush()
        else:  # a text-only stream (tests capturing output)
            stream.write(data.decode("utf-8"))
            stream.flush()
    except OSError as err:
        _silence_stdout()
        if err.errno == errno.EPIPE:
            raise SystemExit(141) from None
        raise CkprofError(f"cannot write to standard output ({err.strerror or err})",
                          hint="Check the disk or pipe it is redirected to, or write to a file "
                               "with -o") from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
