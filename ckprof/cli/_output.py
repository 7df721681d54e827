"""Shared output handling for commands: stdout, or a new file (never overwritten)."""

from __future__ import annotations

from pathlib import Path

import click

from ckprof.output import write_new_file
from ckprof.output_target import encode_text, write_stdout


def emit(text: str, output: Path | None, *, force: bool = False) -> None:
    """Print ``text`` or write it to ``output``; replaces an existing regular file only
    with ``force`` (NOTE [ Output targets ]); a full or broken stdout is a clean error."""
    if output is None:
        write_stdout(text)
        return
    write_new_file(output, encode_text(text), force=force)
    click.echo(f"wrote {output}", err=True)
