"""The one way every command writes a file: a NEW file, written through a temporary
file in the same directory, never over an existing one unless forced. Text results
(``emit``), figures (:func:`ckprof.report.plots.save_figure`), HTML reports, annotated
traces and the sweep's frontier plot all end here. No torch, no pandas.

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
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ckprof.errors import CkprofError, OutputExistsError

__all__ = ["check_new_path", "check_output_target", "emit", "encode_text", "link_to_free_name",
           "write_new_file", "write_stdout"]

_EXISTS_HINT = "Choose another name or pass --force to overwrite it"


def check_new_path(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Raise before any work is done if ``path`` cannot become the output file: the
    same checks as :func:`check_output_target` (NOTE [ Output targets ])."""
    return check_output_target(path, force=force)


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
                                    hint=_EXISTS_HINT)
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


def emit(text: str, output: str | os.PathLike[str] | None, *, force: bool = False) -> Path | None:
    """Print ``text`` to stdout, or write it to the new file ``output`` (see
    :func:`write_new_file`) and say so on stderr. Returns the file written, if any."""
    if output is None:
        write_stdout(text)
        return None
    out = write_new_file(output, encode_text(text), force=force)
    print(f"wrote {out}", file=sys.stderr)
    return out


def _link_new(tmp: Path, target: Path) -> bool:
    """Give the finished ``tmp`` the name ``target`` only if that name is free.

    Atomic where the filesystem has hard links (``os.link`` fails if the name exists,
    even one that appeared a moment ago); elsewhere (some network/FUSE/FAT file
    systems) an existence check then a rename. Returns False when the name is taken."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        if target.exists():
            return False
        os.replace(tmp, target)
    return True


def link_to_free_name(tmp: Path, directory: Path, stem: str, ext: str) -> Path:
    """Give ``tmp`` the first free name ``stem[-k]ext`` in ``directory`` (k = 1, 2, ...);
    never replaces a file. Used by the capture's trace writer."""
    for k in range(10_000):
        target = directory / (f"{stem}{ext}" if k == 0 else f"{stem}-{k}{ext}")
        if _link_new(tmp, target):
            return target
    raise OSError(f"no free file name for {stem}{ext} in {directory}")


def write_new_file(path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], None], *,
                   force: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory.
    ``data`` may be a function writing to the open binary file (large outputs stream).

    Never replaces an existing file unless ``force`` (:class:`OutputExistsError`, exit
    8); the final name never holds a half-written file. The no-overwrite check is
    atomic where the filesystem has hard links (``os.link`` fails if the name appeared
    meanwhile)."""
    out = check_new_path(path, force=force)
    tmp = out.with_name(f".{out.name}.ckprof-tmp-{os.getpid()}")
    try:
        if callable(data):
            with open(tmp, "wb") as fh:
                data(fh)
        else:
            tmp.write_bytes(data)
        if force:
            check_output_target(out, force=True)  # again: it may have changed meanwhile
            os.replace(tmp, out)
        else:
            if not _link_new(tmp, out):
                raise OutputExistsError("already exists", path=str(out), hint=_EXISTS_HINT)
    except OSError as err:
        raise CkprofError(f"cannot write: {err.strerror or err}", path=str(out),
                          hint="Check the directory is writable and has space") from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
