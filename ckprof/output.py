"""Small helpers every reporter and command shares: byte formatting and writing a
NEW output file. No torch, no pandas."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

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


def write_new_file(path: str | os.PathLike[str], data: bytes, *, force: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    Never replaces an existing file unless ``force`` (:class:`OutputExistsError`, exit
    8), and never anything but a regular file (NOTE [ Output targets ] in
    ``ckprof.output_target``); the final name never holds a half-written file. The no-overwrite check is
    atomic where the filesystem has hard links (``os.link`` fails if the name appeared
    meanwhile)."""
    from ckprof.output_target import check_output_target

    out = check_output_target(path, force=force)  # only ever a regular file (NOTE there)
    tmp = out.with_name(f".{out.name}.ckprof-tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        if force:
            check_output_target(out, force=True)  # again: it may have changed meanwhile
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
