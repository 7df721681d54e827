"""The ``ckprof`` command group.

Each command lives in its own module under ``ckprof.cli`` and is imported only
when invoked (``LazyGroup``), so ``ckprof --help`` and ``ckprof analyze`` never pay
for torch or matplotlib. Errors of type :class:`ckprof.errors.CkprofError` become a
one-line message on stderr and the error's exit code -- never a traceback.
"""

from __future__ import annotations

import sys
from importlib import import_module

import click

from ckprof._version import __version__
from ckprof.errors import CkprofError

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "analyze": "ckprof.cli.analyze:analyze",
    "demo": "ckprof.cli.demo:demo",
    "run": "ckprof.cli.run:run",
    "plot": "ckprof.cli.visual:plot",
    "report": "ckprof.cli.visual:report",
    "annotate": "ckprof.cli.visual:annotate",
    "compare": "ckprof.cli.strategy:compare",
    "sweep": "ckprof.cli.strategy:sweep",
    "advise": "ckprof.cli.strategy:advise",
    "nsys-command": "ckprof.cli.nsys_command:nsys_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(import_module(module_name), attr)


class CkprofGroup(LazyGroup):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CkprofError as err:
            click.echo(f"ckprof: error: {err}", err=True)
            ctx.exit(err.exit_code)


@click.group(cls=CkprofGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckprof")
def cli() -> None:
    """What activation checkpointing costs and buys in your PyTorch training step.

    \b
    Examples:
      ckprof run -- python train.py    # profile your script, unchanged
      ckprof demo                      # profile a small checkpointed transformer on CPU
      ckprof analyze traces/demo/*.json.gz
    """


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="ckprof", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        click.echo("ckprof: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
