"""``ckprof run``: profile a training script without editing it.

``ckprof run [options] -- python train.py args...`` (or ``ckprof run train.py args``,
``ckprof run -m pkg.train args``, ``python -m ckprof run ...``) runs the script in this
process, as ``python train.py`` would (``__main__``, ``sys.argv``, ``sys.path[0]`` = the
script's folder; ``-m`` runs a module with its package context), under a
:class:`ckprof.capture.run.RunSession`: steps are found from optimizer steps, every
torch checkpoint is instrumented (regions get module names), and the steps picked by
``--steps`` are profiled. When the script ends -- normally, by ``sys.exit``, by an
exception or Ctrl-C -- the traces written so far are kept and the analysis of the last
window is printed (rank 0 reports on every rank under torchrun). The script's exit code
is ckprof's exit code: ``sys.exit(n)`` -> n, an uncaught exception -> 1 with its
traceback printed as Python prints it, Ctrl-C -> 130.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ckprof.errors import CkprofError, UsageError
from ckprof.report.text import FORMATS

if TYPE_CHECKING:  # pragma: no cover
    from ckprof.analysis import Analysis

__all__ = ["ScriptTarget", "parse_command", "run"]

EXAMPLE = """
\b
Examples:
  ckprof run -- python examples/train.py          # steps 2-4 profiled, analysis printed
  ckprof run --steps 10:13 --out traces/r1 train.py --lr 3e-4
  ckprof run -m mypkg.train --epochs 1
  ckprof run --report --with-stack -- python train.py
  torchrun --nproc-per-node 2 -m ckprof run train.py      # one trace per rank
\b
Steps are counted from the start of the script: a step ends with its optimizer step(s)
(several optimizers or gradient accumulation make one step), so --steps 5:8 profiles
the 6th to 8th training steps (ProfilerStep#5..#7). A script that never steps an
optimizer is reported, not guessed at; profile such a loop with ckprof.capture().
"""

_PYTHON_FLAGS_OK = {"-u", "-B"}


@dataclass(frozen=True)
class ScriptTarget:
    """What to run: a script path or a module (``-m``), with its arguments."""

    kind: str           # "path" | "module"
    target: str
    args: tuple[str, ...]
    unbuffered: bool = False


def _is_python(word: str) -> bool:
    name = Path(word).name
    if name.endswith(".exe"):
        name = name[:-4]
    if name.startswith("python"):
        rest = name[len("python"):]
        return rest == "" or all(c.isdigit() or c == "." for c in rest)
    return os.path.abspath(word) == os.path.abspath(sys.executable)


def parse_command(command: tuple[str, ...] | list[str]) -> ScriptTarget:
    """``python [-u|-B] (script | -m module) args`` / ``script args`` / ``-m module args``."""
    words = list(command)
    if not words:
        raise UsageError("no script to run",
                         hint="e.g. ckprof run -- python train.py, or ckprof run train.py")
    unbuffered = False
    if _is_python(words[0]):
        words = words[1:]
        while words and words[0].startswith("-") and words[0] != "-m":
            flag = words.pop(0)
            if flag not in _PYTHON_FLAGS_OK:
                raise UsageError(
                    f"python option {flag} cannot be applied to a script ckprof runs in its "
                    "own process",
                    hint=f"Give it to the interpreter that runs ckprof: python {flag} -m "
                         "ckprof run train.py")
            unbuffered = unbuffered or flag == "-u"
        if not words:
            raise UsageError("no script after python", hint="e.g. ckprof run -- python train.py")
    if words[0] == "-m":
        if len(words) < 2:
            raise UsageError("-m needs a module name", hint="e.g. ckprof run -m mypkg.train")
        return ScriptTarget("module", words[1], tuple(words[2:]), unbuffered)
    first = words[0]
    if first.startswith("-"):
        raise UsageError(f"{first} is not a script", hint="Put ckprof's options before the script")
    if not first.endswith(".py") and not Path(first).is_file():
        launcher = Path(first).name
        hint = ("ckprof run runs a Python script in its own process; put torchrun outside: "
                "torchrun --nproc-per-node N -m ckprof run train.py"
                if launcher in ("torchrun", "torch.distributed.run") else
                "ckprof run runs Python scripts: ckprof run -- python train.py")
        raise UsageError(f"{first!r} is not a Python script", hint=hint)
    if not Path(first).is_file():
        raise UsageError(f"can't open file {first!r}: no such file", path=None,
                         hint="Check the path of the script")
    return ScriptTarget("path", first, tuple(words[1:]), unbuffered)


def _schedule(steps: str | None, wait: int | None, warmup: int | None, active: int | None,
              repeat: int | None, skip_first: int | None) -> dict[str, int]:
    from ckprof.capture.run import schedule_from_steps

    explicit = {k: v for k, v in (("wait", wait), ("warmup", warmup), ("active", active),
                                  ("skip_first", skip_first)) if v is not None}
    if steps is not None:
        if explicit:
            raise UsageError("--steps and --wait/--warmup/--active/--skip-first both pick the window",
                             hint="Use one of them")
        schedule = schedule_from_steps(steps)
    else:
        schedule = {"skip_first": 0, "wait": 1, "warmup": 1, "active": 3, "repeat": 1}
        schedule.update(explicit)
    if repeat is not None:
        schedule["repeat"] = repeat
    return schedule


def _say(text: str) -> None:
    click.echo(f"ckprof run: {text}", err=True)


@click.command(epilog=EXAMPLE, context_settings={
    "ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("ckprof_traces"),
              show_default=True, help="Folder for the traces (created; files are never overwritten).")
@click.option("--steps", default=None, metavar="START:STOP",
              help="Profile steps START..STOP-1 (e.g. 5:8), with one warm-up step before.")
@click.option("--wait", type=click.IntRange(min=0), default=None, help="Steps to skip before the warm-up (default 1).")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Warm-up steps (default 1).")
@click.option("--active", type=click.IntRange(min=1), default=None, help="Profiled steps (default 3).")
@click.option("--repeat", type=click.IntRange(min=0), default=None,
              help="Windows to record (default 1; 0 = every cycle until the script ends).")
@click.option("--skip-first", type=click.IntRange(min=0), default=None, help="Steps before the first cycle.")
@click.option("--with-stack", is_flag=True, help="Record Python stacks (recompute found by stack too).")
@click.option("--memory-timeline", is_flag=True,
              help="Also save torch's memory categories (for ckprof plot --kind categories; implies --with-stack).")
@click.option("--nsys", is_flag=True, help="Bracket the profiled steps for nsys --capture-range=cudaProfilerApi.")
@click.option("--ab", is_flag=True, help="A/B capture (when this ckprof has it).")
@click.option("--report", is_flag=True, help="Also write the HTML report next to the trace.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Format of the analysis printed at the end.")
@click.option("--rank-timeout", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="Under torchrun: seconds rank 0 waits for the other ranks' traces.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, out_dir: Path, steps: str | None, wait: int | None, warmup: int | None,
        active: int | None, repeat: int | None, skip_first: int | None, with_stack: bool,
        memory_timeline: bool, nsys: bool, ab: bool, report: bool, fmt: str, rank_timeout: float,
        command: tuple[str, ...]) -> None:
    """Run a training script under ckprof, unchanged, and print where its steps' time
    and memory went (forward, backward, recompute per checkpointed region, optimizer)."""
    target = parse_command(command)
    schedule = _schedule(steps, wait, warmup, active, repeat, skip_first)
    try:
        from ckprof.capture.run import RunSession, clear_outcomes, env_rank, run_key
    except ImportError as err:  # torch missing
        from ckprof.errors import OptionalDependencyError

        raise OptionalDependencyError(
            f"ckprof run needs torch ({err})",
            hint="Install a torch build first, e.g. pip install torch==2.13.0 (CPU)") from err

    rank, world = env_rank()
    key = run_key("end")
    if rank == 0 and world > 1:
        clear_outcomes(out_dir, key)
    session = RunSession(out_dir, schedule=schedule, detect_steps=True, with_stack=with_stack,
                         nsys=nsys, memory_timeline=memory_timeline, ab=ab)
    if rank == 0:
        more = "" if schedule.get("repeat", 1) == 1 else " (repeating)"
        _say(f"profiling {session.capture.window_span()}{more} of {target.target} into {out_dir}/"
             + (f" ({world} ranks)" if world > 1 else ""))
    code, error = _run_script(target, session)
    outcome = session.finish(error=error)
    _report(outcome, session, out_dir, key, rank, world, fmt=fmt, report=report,
            rank_timeout=rank_timeout)
    ctx.exit(code)


def _run_script(target: ScriptTarget, session: object) -> tuple[int, BaseException | None]:
    """Run the script under the session; returns (exit code, the exception that ended it
    or None). Exceptions are printed as Python prints an uncaught one."""
    saved_argv = list(sys.argv)
    saved_path0 = sys.path[0] if sys.path else None
    if target.unbuffered:
        for stream in (sys.stdout, sys.stderr):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(write_through=True)
    if target.kind == "path":
        script = os.path.abspath(target.target)
        sys.argv = [target.target, *target.args]
        path0 = os.path.dirname(script)
    else:
        sys.argv = ["-m", *target.args]
        path0 = os.getcwd()
    if sys.path:
        sys.path[0] = path0
    else:
        sys.path.insert(0, path0)
    code, error = 0, None
    try:
        main_code, namespace = _load_main(target)
    except BaseException:
        sys.argv = saved_argv
        if saved_path0 is not None and sys.path:
            sys.path[0] = saved_path0
        raise
    session.start()  # type: ignore[attr-defined]
    saved_main = sys.modules.get("__main__")
    try:
        sys.modules["__main__"] = namespace
        exec(main_code, namespace.__dict__)
    except SystemExit as exit_:
        code = _exit_code(exit_)
    except KeyboardInterrupt as err:
        error = err
        _print_uncaught(err)
        code = 130
    except BaseException as err:
        error = err
        _print_uncaught(err)
        code = 1
    finally:
        # ckprof's own __main__ again (a process pool started by the analysis must not
        # re-import the script), but the script's module stays alive, see below
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
        sys.argv = saved_argv
        if saved_path0 is not None and sys.path:
            sys.path[0] = saved_path0
        with _suppress():
            sys.stdout.flush()
    return code, error


# NOTE [ The script's module lives until exit ]
# ``python train.py`` keeps ``__main__``'s globals until interpreter finalisation. runpy's
# run_path / run_module run in a temporary module whose globals are freed as soon as
# they return -- while the GIL is held. With DDP over gloo that frees the Reducer, whose
# process group joins a worker thread that needs the GIL to drop its last Python
# reference: a deadlock (seen under torchrun). So the script runs in a module object
# ckprof keeps referenced (``_SCRIPT_MODULES``) until the interpreter exits, as Python
# itself would.
_SCRIPT_MODULES: list[types.ModuleType] = []


def _load_main(target: ScriptTarget) -> tuple[types.CodeType, types.ModuleType]:
    """The code of the script (or module's ``__main__``) and the ``__main__`` module it
    runs in, set up as ``python train.py`` / ``python -m pkg.train`` would."""
    import builtins
    import runpy

    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    if target.kind == "path":
        with open(target.target, "rb") as fh:  # compile() honours the coding cookie of bytes
            source = fh.read()
        code = compile(source, target.target, "exec", dont_inherit=True)
        module.__dict__.update(__file__=target.target, __cached__=None, __package__=None,
                               __loader__=None, __spec__=None)
    else:
        try:
            _name, spec, code = runpy._get_module_details(target.target)  # type: ignore[attr-defined]
        except ImportError as err:
            raise UsageError(f"no module named {target.target!r} ({err})",
                             hint="Check the module name and that its folder is importable") from None
        sys.argv[0] = spec.origin or target.target
        module.__dict__.update(__file__=spec.origin, __cached__=spec.cached, __package__=spec.parent,
                               __loader__=spec.loader, __spec__=spec)
    _SCRIPT_MODULES.append(module)
    return code, module


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def _exit_code(exit_: SystemExit) -> int:
    code = exit_.code
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    print(code, file=sys.stderr)
    return 1


def _print_uncaught(err: BaseException) -> None:
    """Print ``err`` as Python prints an uncaught exception: through sys.excepthook,
    without the frames of ckprof and runpy that ran the script."""
    import runpy

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    skip = (here + os.sep, os.path.abspath(runpy.__file__))

    def ours(filename: str) -> bool:
        return filename.startswith("<frozen runpy") or os.path.abspath(filename).startswith(skip)

    tb = err.__traceback__
    while tb is not None and ours(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    err.__traceback__ = tb  # the hook prints the exception's own traceback
    with _suppress():
        sys.stdout.flush()
    try:
        sys.excepthook(type(err), err, tb)
    except Exception:  # a broken excepthook must not hide the error
        import traceback

        traceback.print_exception(type(err), err, tb)


def _report(outcome: object, session: object, out_dir: Path, key: str, rank: int, world: int, *,
            fmt: str, report: bool, rank_timeout: float) -> None:
    """Rank 0: print what was written and the analysis of the last window; other ranks
    hand their outcome to rank 0. Never raises: the script's exit code is what counts."""
    from ckprof.capture.run import RunOutcome, gather_outcomes, publish_outcome

    assert isinstance(outcome, RunOutcome)
    if world > 1:
        publish_outcome(out_dir, key, outcome)
        if rank != 0:
            return
        outcomes, missing = gather_outcomes(out_dir, key, world, timeout_s=rank_timeout)
        if rank not in {o.rank for o in outcomes}:
            outcomes = [outcome, *outcomes]
    else:
        outcomes, missing = [outcome], []
    paths = []
    for o in sorted(outcomes, key=lambda o: o.rank):
        where = f"rank {o.rank}: " if world > 1 else ""
        if o.trace_paths:
            paths.append(o.trace_paths[-1])
            for p in o.trace_paths:
                _say(f"{where}trace written to {p}")
            for p in o.memory_timeline_paths:
                _say(f"{where}memory timeline written to {p}")
        elif o.warned:  # its warning said why when it happened
            _say(f"{where}no trace written (see the warning above)")
        else:
            _say(f"{where}no trace written: {o.reason}")
    for r in missing:
        _say(f"rank {r}: no answer within {rank_timeout:g} s (it may still be running, or "
             "wrote to another machine's folder)")
    if not paths:
        return
    try:
        from ckprof.analysis import load
        from ckprof.integrations.summary import render_traces

        with _suppress():
            sys.stdout.flush()
        analysis = None
        if len(paths) == 1:  # one trace, read once for the summary and the report
            from ckprof.report.tables import render

            analysis = load(paths[0])
            click.echo(render(analysis, fmt), nl=False)
        else:
            click.echo(render_traces(paths, fmt, label=str(out_dir)), nl=False)
        head = Path(paths[0])
        if report:
            _write_report(head, analysis if analysis is not None else load(head))
        elif fmt == "table":
            click.echo("\nNext:\n"
                       f"  ckprof report {head} -o {head.with_name(_stem_of(head) + '.html')}\n"
                       f"  ckprof analyze {' '.join(paths)} --format json")
    except CkprofError as err:
        click.echo(f"ckprof: error: {err}", err=True)


def _stem_of(path: Path) -> str:
    name = path.name
    for suffix in (".pt.trace.json.gz", ".pt.trace.json", ".json.gz", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _write_report(path: Path, analysis: Analysis) -> None:
    """The HTML report of ``analysis`` (the trace at ``path``), next to it
    (``<stem>[-k].report.html``, never over a file)."""
    import uuid

    from ckprof.report.html import render_report
    from ckprof.report.output import encode_text, link_to_free_name
    from ckprof.strategy.advice import advice_section

    page = encode_text(render_report(analysis, sections=(advice_section(analysis),)))
    tmp = path.with_name(f".{_stem_of(path)}.{uuid.uuid4().hex[:8]}.report-tmp.html")
    try:
        tmp.write_bytes(page)
        out = link_to_free_name(tmp, path.parent, _stem_of(path), ".report.html")
    except OSError as err:
        _say(f"HTML report not written: {err}")
        return
    finally:
        tmp.unlink(missing_ok=True)
    _say(f"HTML report: {out}")
