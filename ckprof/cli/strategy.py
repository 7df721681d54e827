"""``ckprof compare``, ``ckprof sweep`` and ``ckprof advise``: choose a checkpointing strategy.

Thin commands over :func:`ckprof.strategy.compare.compare`, :func:`ckprof.strategy.runner.sweep`
and :func:`ckprof.strategy.advice.advise`.
Errors are :class:`ckprof.errors.CkprofError` (mapped to exit codes by the group).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ckprof.analysis.detection import RECOMPUTE_DETECTIONS
from ckprof.report.output import check_new_path, emit
from ckprof.report.text import FORMATS


@click.command()
@click.argument("baseline", type=click.Path(dir_okay=False, readable=False))
@click.argument("candidate", type=click.Path(dir_okay=False, readable=False), required=False)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Output format.")
@click.option("--top", type=click.IntRange(min=1), default=15, show_default=True,
              help="Ops listed in the text/markdown op table (json/csv list all).")
@click.option("--recompute-detection", type=click.Choice(RECOMPUTE_DETECTIONS),
              default="auto", show_default=True, help="How recompute is found in both traces.")
@click.option("-o", "--output", type=click.Path(readable=False), default=None,
              help="Write to this file instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
def compare(baseline: str, candidate: str | None, fmt: str, top: int, recompute_detection: str,
            output: str | None, force: bool) -> None:
    """Compare two traces: step time, each phase, recompute, GPU time and peak memory
    side by side, with absolute and relative differences, per region and per op.

    Times are means per step, so runs with different step counts compare. Works with
    any two traces ckprof reads, with or without ckprof markers. With ONE trace captured
    with ckprof.capture(..., ab=True), compares its steps run with checkpointing off
    (baseline) against those with it on (candidate): same process, same data.

    \b
    Example:
      ckprof compare traces/none/trace.json.gz traces/full/trace.json.gz
      ckprof compare a.json.gz b.json.gz --format markdown -o diff.md
      ckprof compare traces/ab/run.pt.trace.json.gz        # A/B: off vs on
    """
    from ckprof.strategy.compare import compare as run_compare
    from ckprof.strategy.compare import compare_variants, render_comparison

    if output:
        check_new_path(output, force=force)
    if candidate is None:
        result = compare_variants(baseline, recompute_detection=recompute_detection)
    else:
        result = run_compare(baseline, candidate, recompute_detection=recompute_detection)
    emit(render_comparison(result, fmt, top_ops=top), output, force=force)


def _parse_budget(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from ckprof.strategy.sweep import parse_bytes

    try:
        return parse_bytes(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err


def _parse_policies(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...] | None:
    if not value:
        return None
    from ckprof.strategy.policies import parse_policy

    names = tuple(p.strip() for v in value for p in v.split(",") if p.strip())
    for name in names:
        if ":" in name and not name.lower().startswith(("selective:", "advised")):
            continue  # module:function, resolved in the worker
        try:
            parse_policy(name)
        except ValueError as err:
            raise click.BadParameter(str(err)) from err
    return names


SWEEP_HELP_EPILOG = """
\b
The --model contract:
  build(batch_size=N) -> (model, batch, loss_fn)
    batch_size= is passed only when build accepts it; loss_fn may be None.
    The model must not checkpoint by itself (the sweep applies each policy
    to the children of its largest nn.ModuleList, or of --blocks).
  How the batch reaches the model and the loss:
    tensor x                    -> model(x)
    tuple (inputs, target)      -> model(inputs)    ((x1, x2), y) -> model(x1, x2)
    dict (HF: input_ids, ..., labels) -> model(**batch)
    loss = loss_fn(output, batch)   (the batch exactly as build returned it)
    loss_fn None: output.loss (HF with labels), a scalar output itself,
    cross entropy (integer target) / MSE (same shape), else mean(output**2).
  An error in your code is shown as one line: the function, the call that
  failed (build(), model(x), loss_fn(output, batch), loss.backward()), the
  exception and where in your file it was raised.

\b
How it measures (noise):
  One model, every policy in turn for a few steps, for --rounds rounds (order
  rotated), in one process: drift hits all policies alike. On CPU torch's
  threads are pinned (default: cores - 1). A difference counts only when the
  step-time IQRs are apart AND every round agrees; the speed ranking prints
  '<' only there ('≈' otherwise).

\b
Example:
  ckprof sweep --memory-budget 200MiB -o frontier.png
  ckprof sweep --model mypkg.train:build --policy none,full,selective --device cuda
  ckprof sweep --model mypkg.train:build --batch-size 8 --memory-budget 70GiB --device cuda
"""


@click.command(epilog=SWEEP_HELP_EPILOG)
@click.option("--model", "model", default="ckprof.capture.demo:make_demo", show_default=True,
              help="module:function build(batch_size=N) returning (model, batch, loss_fn); see "
                   "'The --model contract' below. Default: ckprof's demo transformer.")
@click.option("-p", "--policy", "policies", multiple=True, callback=_parse_policies,
              help="Policy to run (repeat, or comma-separate): none, full, every_<k>, sqrt, selective, "
                   "selective:<op>+<op>, advised:<op>+<op> (from ckprof advise), advised:<trace>, "
                   "module:function. Default: none, full, every_2, sqrt, selective.")
@click.option("--blocks", default=None, help="Path of the container of repeated blocks (default: the "
                                             "largest nn.ModuleList).")
@click.option("--steps", type=click.IntRange(min=1), default=6, show_default=True,
              help="Measured steps per policy, spread over the rounds (median and spread are "
                   "taken over them).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Interleaved rounds: each runs every policy for steps/rounds steps, in "
                   "rotated order.")
@click.option("--schedule", type=click.Choice(["interleaved", "sequential"]), default="interleaved",
              show_default=True, help="interleaved: round-robin on one model (noise-robust); "
                                      "sequential: each policy in its own block (the former sweep).")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Unprofiled warm-up steps per policy before measuring.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 ...")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Batch size (when --model accepts batch_size).")
@click.option("--second-batch-size", type=click.IntRange(min=1), default=None,
              help="Also measure this batch size (default with --memory-budget: twice --batch-size), "
                   "so the largest batch that fits and its samples/s use a measured slope.")
@click.option("--memory-budget", callback=_parse_budget, default=None,
              help="Per policy, estimate the largest batch that fits this (bytes, or 8GiB / 512MiB / "
                   "1.5GB) and its samples/s; recommend by throughput at that batch.")
@click.option("--confirm/--no-confirm", default=None,
              help="Run the recommended batch once to check it fits (default: on CUDA only).")
@click.option("-o", "--output", "plot_path", type=click.Path(readable=False), default=None,
              help="Write the memory-vs-time frontier plot here (.png, .svg, .pdf).")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Keep each policy's trace under this folder (default: temporary, deleted).")
@click.option("--isolation", type=click.Choice(["auto", "process", "inline"]), default="auto",
              show_default=True, help="Run the work in a spawned process (process) or here (inline); "
                                      "auto: inline when interleaved.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True,
              help="Optimizer each run trains with (its state counts in peak memory).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op threads for every policy (default on CPU: pinned to cores - 1, "
                   "at least 1; on GPU: torch's choice).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite the plot file if it exists.")
def sweep(model: str, policies: tuple[str, ...] | None, blocks: str | None, steps: int, rounds: int,
          schedule: str, warmup: int, device: str, batch_size: int | None, second_batch_size: int | None,
          memory_budget: int | None, confirm: bool | None, plot_path: str | None, out_dir: str | None,
          isolation: str, optimizer: str, threads: int | None, fmt: str, force: bool) -> None:
    """Profile checkpointing policies on your model and recommend one.

    Every policy runs on the same model in interleaved rounds, under ckprof's
    capture. Prints per policy the median step time and its spread (IQR, and
    across rounds), recompute share, peak memory and saving against no
    checkpointing, samples/s; a speed ranking that noise cannot reverse; with
    --memory-budget, the largest batch that fits (an ESTIMATE from two measured
    batch sizes) and samples/s there, and a recommendation by throughput.
    """
    from ckprof.strategy.runner import sweep as run_sweep

    if plot_path:
        check_new_path(plot_path, force=force)
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # --model mymodule:fn from the current folder
    sizes = None
    if second_batch_size is not None:
        if batch_size is None:
            raise click.BadParameter("give --batch-size too", param_hint="--second-batch-size")
        sizes = (batch_size, second_batch_size)
    click.echo(f"ckprof sweep: profiling {len(policies) if policies else 'the default'} policies "
               f"on {device}, {steps} step(s) each in {rounds} interleaved round(s)...", err=True)
    result = run_sweep(
        model, None, policies=policies, steps=steps, device=device, batch_size=batch_size,
        batch_sizes=sizes, blocks=blocks, warmup=warmup, out_dir=out_dir, isolation=isolation,
        memory_budget=memory_budget, optimizer=optimizer, threads=threads, rounds=rounds,
        schedule=schedule, confirm=confirm,
    )
    from ckprof.report.output import write_stdout

    write_stdout(result.render(fmt))
    if plot_path:
        from ckprof.report.plots import save_figure

        save_figure(result.plot(), plot_path, force=force)
        click.echo(f"wrote {plot_path}", err=True)


ADVISE_EXAMPLE = """
\b
Examples:
  ckprof advise traces/full/run.pt.trace.json.gz
  ckprof advise full.json.gz --memory-budget 2GiB          # the cheapest recompute set that fits
  ckprof advise full.json.gz --none-trace none.json.gz     # bytes from a run without checkpointing
  ckprof sweep --policy none,full,selective,advised:full.json.gz   # then measure it
"""


@click.command(epilog=ADVISE_EXAMPLE)
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--none-trace", type=click.Path(dir_okay=False), default=None,
              help="A trace of the same model WITHOUT checkpointing: take the bytes each op keeps "
                   "alive from its forward (two-trace form).")
@click.option("--memory-budget", callback=_parse_budget, default=None,
              help="Save ops in ranking order while the estimated peak stays within this "
                   "(bytes, or 8GiB / 512MiB / 1.5GB).")
@click.option("--device", default=None, help="Memory device to advise for (default: the GPU if "
                                             "the trace has GPU memory, else cpu).")
@click.option("--min-ms-per-mib", type=click.FloatRange(min=0), default=None,
              help="Save ops at or above this many ms of recompute per MiB (default: the ratio "
                   "of checkpointing as a whole).")
@click.option("--dispatch-overhead-us", type=click.FloatRange(min=0), default=None,
              help="Cost of selective checkpointing's dispatch mode per intercepted op, in "
                   "microseconds (default 30, measured on CPU; 0 leaves it out).")
@click.option("--recompute-detection", type=click.Choice(RECOMPUTE_DETECTIONS),
              default="auto", show_default=True, help="How recompute is found in the trace.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write to this file instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
def advise(trace: str, none_trace: str | None, memory_budget: int | None, device: str | None,
           min_ms_per_mib: float | None, dispatch_overhead_us: float | None,
           recompute_detection: str, fmt: str, output: str | None, force: bool) -> None:
    """Selective-checkpointing advice from a trace of the model under FULL checkpointing
    (captured with memory, as ckprof.capture does): rank the recomputed op types by
    milliseconds of recompute per MiB their outputs would keep alive, and print which
    to save -- as Python to paste (torch's create_selective_checkpoint_contexts) and
    as a ckprof sweep policy (advised:<op>+<op>) that measures it.
    """
    from ckprof.analysis import load
    from ckprof.strategy.advice import advise as run_advise

    if output:
        check_new_path(output, force=force)
    full = load(trace, recompute_detection=recompute_detection)
    none = load(none_trace, recompute_detection=recompute_detection) if none_trace else None
    extra: dict = {} if dispatch_overhead_us is None else {"dispatch_overhead_us": dispatch_overhead_us}
    if min_ms_per_mib is not None:
        extra["threshold_ms_per_mib"] = min_ms_per_mib
    result = run_advise(full, none, budget_bytes=memory_budget, device=device, **extra)
    emit(result.render(fmt), output, force=force)
