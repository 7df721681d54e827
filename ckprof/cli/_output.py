"""Shared output handling for commands: stdout, or a new file (never overwritten)."""

from __future__ import annotations

from pathlib import Path

import click

from ckprof.output import write_new_file


def emit(text: str, output: Path | None) -> None:
    """Print ``text`` or write it to ``output``; refuses to replace an existing file."""
    if output is None:
        click.echo(text, nl=False)
        return
    write_new_file(output, text.encode("utf-8"))
    click.echo(f"wrote {output}", err=True)
