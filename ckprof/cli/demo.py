"""``ckprof demo``: profile the built-in checkpointed transformer on CPU and analyse it."""

from __future__ import annotations

from pathlib import Path

import click

EXAMPLE = """
\b
Examples:
  ckprof demo                       # writes traces/demo/<name>.pt.trace.json.gz
  ckprof demo --out /tmp/ck --steps 3
  ckprof demo --no-checkpointing    # the same model without checkpointing, to compare
  ckprof demo --ab --steps 12       # checkpointing on and off in one run: cost and saving
"""


@click.command(epilog=EXAMPLE)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("traces/demo"),
              show_default=True, help="Directory for the trace (created; files are never overwritten).")
@click.option("--steps", type=click.IntRange(1, 50), default=3, show_default=True, help="Profiled (active) steps.")
@click.option("--checkpointing/--no-checkpointing", default=True, show_default=True,
              help="Checkpoint every transformer block (the point of the demo).")
@click.option("--ab", is_flag=True,
              help="Alternate the active steps between checkpointing on and off (capture(ab=True)) "
                   "and report the measured cost and saving; use --steps 8 or more.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "markdown"]), default="table",
              show_default=True)
def demo(out_dir: Path, steps: int, checkpointing: bool, ab: bool, fmt: str) -> None:
    """Profile a small transformer with checkpointed blocks on CPU (a few seconds),
    write its trace, and print where the step's time and memory went."""
    try:
        from ckprof.capture.demo import run_demo
    except ImportError as err:  # torch missing
        from ckprof.errors import OptionalDependencyError

        raise OptionalDependencyError(
            f"the demo needs torch ({err})",
            hint="Install a torch build first, e.g. pip install torch==2.13.0 (CPU)",
        ) from err
    from ckprof.analysis import load
    from ckprof.report.tables import render

    out_dir.mkdir(parents=True, exist_ok=True)
    click.echo(f"profiling the demo model on CPU ({steps} active steps) ...", err=True)
    if ab and (steps < 2 or not checkpointing):
        raise click.BadParameter("--ab needs --checkpointing and --steps 2 or more (8 recommended)",
                                 param_hint="--ab")
    path = run_demo(out_dir, steps=steps, checkpointing=checkpointing, ab=ab)
    click.echo(f"trace written to {path}", err=True)
    click.echo(render(load(path), fmt), nl=False)
    if fmt == "table":
        click.echo(
            "\nNext:\n"
            f"  ckprof analyze {path} --format json\n"
            f"  ckprof report {path} -o {out_dir / 'report.html'}\n"
            f"  ckprof plot {path} --kind memory -o {out_dir / 'memory.png'}"
        )
