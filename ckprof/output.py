"""Small helpers every reporter and command shares: byte formatting and writing a
NEW output file. No torch, no pandas."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ckprof.errors import CkprofError, OutputExistsError

__all__ = ["format_bytes", "write_new_file"]


def format_bytes(n: Any, *, missing: str = "—") -> str:
    """Binary units with one decimal: ``1536 -> '1.5 KiB'``; None/NaN -> ``missing``."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return missing
    value = float(n)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    return f"{sign}{value:.1f} TiB"


def write_new_file(path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], None], *,
                   force: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory.
    ``data`` may be a function writing to the open binary file (large outputs stream).

    Never replaces an existing file unless ``force`` (:class:`OutputExistsError`, exit
    8); the final name never holds a half-written file. The no-overwrite check is
    atomic where the filesystem has hard links (``os.link`` fails if the name appeared
    meanwhile)."""
    out = Path(path)
    if out.exists() and not force:
        raise OutputExistsError("already exists", path=str(out),
                                hint="Choose another name or pass --force to overwrite it")
    if not out.parent.exists():
        raise CkprofError("output directory does not exist", path=str(out.parent), hint="Create it first")
    tmp = out.with_name(f".{out.name}.ckprof-tmp-{os.getpid()}")
    try:
        if callable(data):
            with open(tmp, "wb") as f:
                data(f)
        else:
            tmp.write_bytes(data)
        if force:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)
            except FileExistsError as err:
                raise OutputExistsError("already exists", path=str(out),
                                        hint="Choose another name or pass --force to overwrite it") from err
            except OSError:  # no hard links here (some network/FUSE filesystems)
                if out.exists():
                    raise OutputExistsError("already exists", path=str(out),
                                            hint="Choose another name or pass --force to overwrite it") from None
                os.replace(tmp, out)
    except OSError as err:
        raise CkprofError(f"cannot write: {err.strerror or err}", path=str(out),
                          hint="Check the directory is writable and has space") from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
