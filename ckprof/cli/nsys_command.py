"""``ckprof nsys-command``: the Nsight Systems command line that fits ckprof's capture.

Prints (or with ``--run`` executes) ``nsys profile`` with the options that record
exactly the steps ``ckprof.capture(..., nsys=True)`` brackets with
``torch.cuda.profiler.start()/stop()``, plus ckprof's NVTX phase ranges and CUDA
memory usage. Thin: :func:`build_nsys_command` is the logic, testable without nsys.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence

import click

from ckprof.errors import CkprofError, OptionalDependencyError, UsageError

__all__ = ["build_nsys_command", "nsys_command"]

EXAMPLE = """
\b
Examples:
  ckprof nsys-command -- python train.py --epochs 1
  ckprof nsys-command -o runs/ck_%p -- torchrun --nproc-per-node 2 train.py
  ckprof nsys-command --run -- python train.py       # runs it when nsys is on PATH
\b
In train.py, profile with ckprof.capture(..., nsys=True) (or @ckprof.profile_step(
..., nsys=True)) so that only the active steps are recorded. Then:
  nsys export --type sqlite runs/ck.nsys-rep && ckprof analyze runs/ck.sqlite
"""


def build_nsys_command(command: Sequence[str], *, output: str = "ckprof_%p",
                       capture_range: str = "cudaProfilerApi",
                       extra: Sequence[str] = ()) -> list[str]:
    """The argv of the recommended ``nsys profile`` run of ``command``."""
    if not command:
        raise UsageError(
            "no command to profile",
            hint="Put it after --, e.g. ckprof nsys-command -- python train.py",
        )
    argv = ["nsys", "profile", "--trace=cuda,nvtx,osrt"]
    if capture_range == "cudaProfilerApi":
        argv += ["--capture-range=cudaProfilerApi", "--capture-range-end=stop"]
    argv += ["--cuda-memory-usage=true", "-o", output, *extra, *command]
    return argv


@click.command(epilog=EXAMPLE, context_settings={"ignore_unknown_options": True})
@click.option("-o", "--output", default="ckprof_%p", show_default=True,
              help="nsys report name (%p = process id, %h = host).")
@click.option("--capture-range", type=click.Choice(["cudaProfilerApi", "none"]),
              default="cudaProfilerApi", show_default=True,
              help="cudaProfilerApi records only the steps ckprof.capture(nsys=True) marks active.")
@click.option("--run", "run_it", is_flag=True, help="Execute the command (needs nsys on PATH).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def nsys_command(ctx: click.Context, output: str, capture_range: str, run_it: bool,
                 command: tuple[str, ...]) -> None:
    """Print the Nsight Systems command that records ckprof's active steps."""
    argv = build_nsys_command(command, output=output, capture_range=capture_range)
    click.echo(shlex.join(argv))
    if not run_it:
        return
    nsys = shutil.which("nsys")
    if nsys is None:
        raise OptionalDependencyError(
            "nsys (Nsight Systems) is not on PATH",
            hint="Install Nsight Systems or add its bin directory to PATH, "
            "or run the printed command on a machine that has it",
        )
    try:
        completed = subprocess.run([nsys, *argv[1:]], check=False)
    except OSError as err:
        raise CkprofError(f"could not run nsys: {err}", path=nsys,
                          hint="Check the Nsight Systems installation") from err
    ctx.exit(completed.returncode)
