"""Run checkpointing policies on a model and measure them (imports torch on call).

Contract::

    sweep(make_model, make_batch=None, policies=None, steps=5, device="cpu", *,
          batch_size=None, batch_sizes=None, loss_fn=None, blocks=None, warmup=1,
          out_dir=None, isolation="auto", memory_budget=None, optimizer="adamw")
        -> SweepResult                                  (this is ``ckprof.sweep``)
    run_policy(spec) -> dict                            one (policy, batch size) run

Each (policy, batch size) run builds a FRESH model, applies the policy with
:func:`ckprof.strategy.apply.apply_policy` (blocks wrapped with ``ckprof.checkpoint``,
so regions are named and markers emitted), trains ``warmup + steps`` steps under
``ckprof.capture`` and analyses the trace with :func:`ckprof.analysis.load`. Every
figure in the result comes from those traces; the verdict is computed by the pure
:mod:`ckprof.strategy.sweep`.

# NOTE [ Run isolation ]
# CPU peak memory = the trace's [memory] counter relative to its start + the bytes
# live when profiling started (capture's baseline), so leftovers of an earlier run
# in the same process would shift nothing but the allocator state, caches and
# fragmentation still differ. ``isolation="process"`` runs every (policy, batch)
# in its own ``multiprocessing`` *spawn* process: the factories must then be
# importable (``"module:function"`` strings, or functions defined in a module --
# not in a notebook's ``__main__``). ``isolation="inline"`` runs in this process,
# building a fresh model per run and calling ``gc.collect()`` (and
# ``torch.cuda.empty_cache()`` + ``reset_peak_memory_stats()`` on CUDA) between
# runs. ``auto`` picks process when the factories can travel, else inline.
#
"""

from __future__ import annotations

import gc
import inspect
import math
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

import pandas as pd

from ckprof.errors import CaptureError, CkprofError
from ckprof.strategy.sweep import PEAK_COLUMNS, RUN_COLUMNS, SweepResult, parse_bytes

__all__ = ["parse_bytes", "run_policy", "sweep"]

def _resolve(target: Any) -> Any:
    """'package.module:function' -> the function; callables pass through."""
    if isinstance(target, str):
        module_name, sep, attr = target.partition(":")
        if not sep or not module_name or not attr:
            raise CkprofError(f"{target!r} is not 'module:function'", hint="Example: mypkg.models:build")
        try:
            obj = import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as err:
            raise CkprofError(f"cannot import {target!r}: {err}",
                              hint="Check that the module is on PYTHONPATH (run from its folder)") from err
        return obj
    return target


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _takes_positional(fn: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def _default_loss(output: Any, batch: Any) -> Any:
    """Scalar output -> itself; else mean of squares of the (first) output tensor."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if hasattr(output, "loss") and output.loss is not None:
        return output.loss
    if output.dim() == 0:
        return output
    return output.float().square().mean()


def _build(spec: Mapping[str, Any], batch_size: int | None) -> tuple[Any, tuple[Any, ...], Callable[..., Any], int | None]:
    """(model, batch args, loss_fn, batch_size) from the factories in ``spec``."""
    make_model = _resolve(spec["make_model"])
    make_batch = _resolve(spec.get("make_batch"))
    loss_fn = _resolve(spec.get("loss_fn"))
    if batch_size is not None and _accepts(make_model, "batch_size") and make_batch is None:
        built = make_model(batch_size=batch_size)
    else:
        built = make_model()
    batch: Any = None
    if isinstance(built, tuple):
        if len(built) != 3:
            raise CkprofError(f"{spec['make_model']!r} returned a tuple of {len(built)}, not (model, batch, loss_fn)")
        model, batch, built_loss = built
        loss_fn = loss_fn or built_loss
    else:
        model = built
    if make_batch is not None:
        if batch_size is not None and (_accepts(make_batch, "batch_size") or _takes_positional(make_batch)):
            batch = make_batch(batch_size)
        else:
            batch = make_batch()
    if batch is None:
        raise CkprofError("no batch: give make_batch, or a model factory returning (model, batch, loss_fn)")
    args = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    actual = batch_size
    first = args[0] if args else None
    if hasattr(first, "shape") and len(first.shape) > 0:
        actual = int(first.shape[0])
    return model, args, loss_fn or _default_loss, actual


def _device_key(device: Any) -> str:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    return dev.type


def _to(x: Any, device: Any) -> Any:
    return x.to(device) if hasattr(x, "to") and hasattr(x, "shape") else x


def run_policy(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Profile one (policy, batch size) and return its measurements as plain data.

    Runs where it is called (the sweep calls it in a spawn process for isolation).
    ``spec`` keys: make_model, make_batch, loss_fn, policy (a Policy or its spec
    text), batch_size, steps, warmup, device, blocks, out_dir, optimizer.
    """
    import torch

    from ckprof.analysis import load
    from ckprof.capture import capture
    from ckprof.strategy.apply import apply_policy, find_blocks
    from ckprof.strategy.policies import Policy, parse_policy

    policy = spec["policy"] if isinstance(spec["policy"], Policy) else parse_policy(spec["policy"])
    device = spec.get("device", "cpu")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec.get("seed", 0)))
    model, args, loss_fn, batch_size = _build(spec, spec.get("batch_size"))
    model = model.to(device)
    model.train()
    args = tuple(_to(a, device) for a in args)
    opt_name = spec.get("optimizer", "adamw")
    params = [p for p in model.parameters() if p.requires_grad]
    if opt_name == "sgd":
        optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4)
    blocks = find_blocks(model, spec.get("blocks"))
    out_dir = Path(spec["out_dir"])
    steps, warmup = int(spec.get("steps", 5)), int(spec.get("warmup", 1))

    def train_step() -> None:
        # capture's automatic markers name forward / backward / optimizer / zero_grad
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(*args), args)
        loss.backward()
        optimizer.step()

    with apply_policy(model, policy, blocks):
        # NOTE: ``warmup`` unprofiled steps (schedule "wait"), one profiler warm-up
        # step, then ``steps`` recorded steps.
        with capture(out_dir=out_dir, wait=warmup, warmup=1, active=steps, record_shapes=False) as session:
            for _ in range(warmup + 1 + steps):
                train_step()
                session.step()
        trace_path = _trace_path_of(session, out_dir)
    analysis = load(trace_path)
    wide = analysis.steps_wide()
    key = _device_key(device)
    mem = analysis.memory_table()
    mem = mem[mem["device"] == key]
    peak = float(mem["peak_bytes"].max()) if analysis.memory.captured and len(mem) else math.nan
    baseline = float(analysis.memory.baseline_bytes.get(key, math.nan))
    runs = [
        {"policy": policy.name, "batch_size": batch_size, "step": int(r["step"]), "step_ms": float(r["step_ms"]),
         **{f"{p}_ms": float(r[f"{p}_ms"]) for p in ("forward", "backward", "recompute", "optimizer", "other")}}
        for _, r in wide.iterrows()
    ]
    return {
        "policy": policy.name,
        "batch_size": batch_size,
        "trace": str(trace_path),
        "runs": runs,
        "peak": {"policy": policy.name, "batch_size": batch_size, "device": key, "peak_bytes": peak,
                 "baseline_bytes": baseline, "blocks": policy.describe(len(blocks))},
        "recompute_detection": analysis.recompute_found_by,
        "notes": list(analysis.notes),
    }


def _trace_path_of(session: Any, out_dir: Path) -> Path:
    paths = list(getattr(session, "trace_paths", []) or [])
    if not paths:
        why = "; ".join(str(e) for e in getattr(session, "errors", [])) or "no window completed"
        raise CaptureError(f"capture wrote no trace ({why})", path=str(out_dir),
                           hint="Check that the model trains for the requested steps")
    return Path(paths[-1])


def _portable(obj: Any) -> bool:
    """Can ``obj`` travel to a spawn process (importable by reference)?"""
    if obj is None or isinstance(obj, str):
        return True
    module = getattr(obj, "__module__", None)
    if module in (None, "__main__") or "<locals>" in getattr(obj, "__qualname__", "<locals>"):
        return False
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True


def _reset_memory(device: Any) -> None:
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - sweep needs torch anyway
        return
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sweep(
    make_model: Callable[..., Any] | str,
    make_batch: Callable[..., Any] | str | None = None,
    policies: Sequence[Any] | None = None,
    steps: int = 5,
    device: str = "cpu",
    *,
    batch_size: int | None = None,
    batch_sizes: Sequence[int] | None = None,
    loss_fn: Callable[..., Any] | str | None = None,
    blocks: str | None = None,
    warmup: int = 1,
    out_dir: str | os.PathLike[str] | None = None,
    isolation: str = "auto",
    memory_budget: str | int | None = None,
    optimizer: str = "adamw",
    threads: int | None = None,
) -> SweepResult:
    """Profile every policy on a fresh model and summarise (see module docstring).

    ``make_model()`` returns an ``nn.Module``, or ``(model, batch, loss_fn)``
    (called with ``batch_size=`` when it accepts it). ``make_batch(batch_size)``
    returns the model's input (a tensor or a tuple of positional args).
    ``loss_fn(output, batch_args)`` defaults to the output itself when scalar, else
    the mean of its squares. ``policies``: :class:`~ckprof.strategy.policies.Policy` objects or
    names (default: none, full, every_2, sqrt, selective). ``batch_sizes=(b1, b2)``
    measures two batch sizes so the max-batch estimate uses a measured slope.
    ``out_dir`` keeps the traces (default: a temporary folder, deleted after).
    ``threads`` sets torch's intra-op threads in each run (None: torch's default; in
    inline mode the setting stays in this process).
    """
    from ckprof.strategy.policies import resolve_policies

    if steps < 1:
        raise ValueError(f"steps must be >= 1, not {steps}")
    if isolation not in ("auto", "process", "inline"):
        raise ValueError(f"isolation must be auto, process or inline, not {isolation!r}")
    budget_bytes = None if memory_budget is None else parse_bytes(memory_budget)
    sizes: list[int | None] = list(dict.fromkeys(batch_sizes)) if batch_sizes else [batch_size]
    n_blocks = None
    if policies is None:  # the default set depends on the number of blocks
        n_blocks = _count_blocks({"make_model": make_model, "make_batch": make_batch, "loss_fn": loss_fn},
                                 blocks, sizes[0])
    chosen = resolve_policies(policies, n_blocks)
    portable = all(_portable(x) for x in (make_model, make_batch, loss_fn)) and all(
        p.kind != "custom" or bool(p.spec) for p in chosen
    )
    notes: list[str] = []
    if isolation == "process" and not portable:
        raise CkprofError(
            "isolation='process' needs importable factories and policies",
            hint="Pass 'module:function' strings or functions defined in a module, or use isolation='inline'",
        )
    use_process = isolation == "process" or (isolation == "auto" and portable)
    if not use_process:
        notes.append("runs shared one process (isolation inline): fresh model and gc between runs")
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ckprof-sweep-")
        root = Path(tmp.name)
    else:
        root = Path(out_dir)
        root.mkdir(parents=True, exist_ok=True)
    try:
        results = []
        for size in sizes:
            for policy in chosen:
                spec = {
                    "make_model": make_model, "make_batch": make_batch, "loss_fn": loss_fn,
                    "policy": (policy.spec or policy) if use_process else policy,
                    "batch_size": size, "steps": steps, "warmup": warmup, "device": device, "blocks": blocks,
                    "out_dir": str(root / (policy.name if size is None else f"{policy.name}-b{size}")), "optimizer": optimizer,
                    "threads": threads,
                }
                if use_process:
                    results.append(_run_in_process(spec))
                else:
                    _reset_memory(device)
                    results.append(run_policy(spec))
                    _reset_memory(device)
    finally:
        if tmp is not None:
            tmp.cleanup()
    runs = pd.DataFrame([row for r in results for row in r["runs"]], columns=list(RUN_COLUMNS))
    peaks = pd.DataFrame([r["peak"] for r in results], columns=list(PEAK_COLUMNS))
    for r in results:
        if r["recompute_detection"] not in ("markers", "none"):
            notes.append(f"{r['policy']}: recompute found by {r['recompute_detection']}, not by markers")
    if tmp is not None:
        notes.append("traces were written to a temporary folder and deleted; pass out_dir to keep them")
    return SweepResult.from_runs(
        runs, peaks,
        traces=[(r["policy"], int(r["batch_size"] or 0), r["trace"]) for r in results],
        device=device, budget_bytes=budget_bytes, notes=notes,
    )


def _count_blocks(spec: Mapping[str, Any], blocks: str | None, batch_size: int | None) -> int:
    from ckprof.strategy.apply import find_blocks

    model = _build(spec, batch_size)[0]
    n = len(find_blocks(model, blocks))
    del model
    gc.collect()
    return n


def _run_in_process(spec: Mapping[str, Any]) -> dict[str, Any]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(run_policy, dict(spec)).result()
        except BrokenProcessPool as err:
            raise CaptureError(
                f"the worker profiling policy {spec['policy']!r} died ({err})",
                hint="It may have run out of memory: try a smaller batch or fewer steps",
            ) from err
