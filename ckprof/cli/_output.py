"""Shared output handling for commands: stdout, or a new file (never overwritten)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ckprof.errors import CkprofError, OutputExistsError


def emit(text: str, output: Path | None) -> None:
    """Print ``text`` or write it to ``output``; refuses to replace an existing file."""
    if output is None:
        click.echo(text, nl=False)
        return
    write_new_file(output, text.encode("utf-8"))
    click.echo(f"wrote {output}", err=True)


def write_new_file(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename); never replace an
    existing file unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError("already exists", path=str(path),
                                hint="Choose another output name (ckprof never overwrites your files)")
    if not path.parent.exists():
        raise CkprofError("output directory does not exist", path=str(path.parent),
                          hint="Create it first")
    tmp = path.with_name(f".{path.name}.ckprof-tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        if force:
            os.replace(tmp, path)
        else:
            # link() fails if the target appeared meanwhile: no silent overwrite.
            try:
                os.link(tmp, path)
            except FileExistsError as err:
                raise OutputExistsError("already exists", path=str(path),
                                        hint="Choose another output name") from err
            except OSError:
                if path.exists():
                    raise OutputExistsError("already exists", path=str(path),
                                            hint="Choose another output name") from None
                os.replace(tmp, path)
    except OSError as err:
        raise CkprofError(f"cannot write: {err.strerror or err}", path=str(path),
                          hint="Check the directory is writable and has space") from err
    finally:
        if tmp.exists():
            tmp.unlink()
