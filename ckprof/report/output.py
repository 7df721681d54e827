"""The one way every command writes a file: a NEW file, written through a temporary
file in the same directory, never over an existing one unless forced. Text results
(``emit``), figures (:func:`ckprof.report.plots.save_figure`), HTML reports, annotated
traces and the sweep's frontier plot all end here. No torch, no pandas."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ckprof.errors import CkprofError, OutputExistsError

__all__ = ["check_new_path", "emit", "link_to_free_name", "write_new_file"]

_EXISTS_HINT = "Choose another name or pass --force to overwrite it"


def check_new_path(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Raise before any work is done if ``path`` cannot become a new output file:
    :class:`OutputExistsError` if it exists (unless ``force``), :class:`CkprofError` if
    its directory does not exist."""
    out = Path(path)
    if out.exists() and not force:
        raise OutputExistsError("already exists", path=str(out), hint=_EXISTS_HINT)
    if not out.parent.exists():
        raise CkprofError("output directory does not exist", path=str(out.parent), hint="Create it first")
    return out


def emit(text: str, output: str | os.PathLike[str] | None, *, force: bool = False) -> Path | None:
    """Print ``text`` to stdout, or write it to the new file ``output`` (see
    :func:`write_new_file`) and say so on stderr. Returns the file written, if any."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return None
    out = write_new_file(output, text.encode("utf-8", errors="surrogateescape"), force=force)
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
