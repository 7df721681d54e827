"""Run checkpointing policies on a model and measure them (imports torch on call).

Contract::

    sweep(make_model, make_batch=None, policies=None, steps=6, device="cpu", *,
          batch_size=None, batch_sizes=None, loss_fn=None, blocks=None, warmup=1,
          out_dir=None, isolation="auto", memory_budget=None, optimizer="adamw",
          threads=None, rounds=3, schedule="interleaved", confirm=None)
        -> SweepResult                                  (this is ``ckprof.sweep``)
    run_interleaved(spec) -> dict       every policy, round-robin, on ONE model
    run_policy(spec) -> dict            one (policy, batch size) run (schedule "sequential")
    confirm_batch(spec, policy, batch_size, budget_bytes) -> dict

The model comes from the user's factories through the ``--model`` contract
(:mod:`ckprof.strategy.contract`); blocks are wrapped per policy with
:func:`ckprof.strategy.apply.apply_policy` (``ckprof.checkpoint``, so regions are named
and markers emitted); steps run under ``ckprof.capture`` and every figure in the
result comes from the traces, analysed with :func:`ckprof.analysis.load`. The verdict
is computed by the pure :mod:`ckprof.strategy.sweep`.

# NOTE [ Interleaved sweep ]
# Separate runs on a shared machine differ by more than the effect being measured
# (a sweep once reported full checkpointing 63% FASTER than none). So by default the
# sweep builds ONE model (per batch size) and, in ``rounds`` rounds, runs every policy
# for a few steps in turn -- round r starts at the r-th policy (the order rotates), so
# no policy always runs first or last -- applying and removing each policy in place
# (same weights, optimizer, data and process). Each round is one capture; the step
# after each switch is recorded but excluded (``Capture.tag_step(..., exclude=True)``:
# allocator and caches settle), the others are tagged with the policy's name, and the
# analysis reads them back per variant (:mod:`ckprof.analysis.ab`). Drift then hits
# every policy alike, and each round yields a median per policy: the verdict's noise
# test needs the sign of every difference to hold in every round.
# On CPU torch's intra-op threads are pinned for the whole sweep (default: one less
# than the cores, at least 1: OpenMP threads spinning against other processes are
# the largest noise source on small shared machines) and the output says so.
# A policy that runs out of memory (GPU) is recorded as not fitting at that batch
# (``SweepResult.failed``) and left out of later rounds; the others go on.
# Policies that checkpoint exactly the same blocks the same way (``sqrt`` and
# ``every_2`` for 4 blocks) are measured once and shown as one (``aliases``).
# ``schedule="sequential"`` keeps the former behaviour: each (policy, batch) in its
# own capture (and, with isolation "process", its own spawned process).
#
# NOTE [ Run isolation ]
# ``isolation="process"`` runs the work in a ``multiprocessing`` *spawn* process (an
# interleaved sweep: one process per batch size; sequential: one per run): the
# factories must then be importable (``"module:function"`` strings, or functions
# defined in a module -- not in a notebook's ``__main__``). ``isolation="inline"`` runs
# in this process (``gc.collect()`` and, on CUDA, ``empty_cache`` between runs).
# ``auto``: inline for an interleaved sweep, process for a sequential one whose
# factories can travel.
"""

from __future__ import annotations

import gc
import math
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

import pandas as pd

from ckprof.errors import CaptureError, CkprofError
from ckprof.strategy.contract import (
    MODEL_CONTRACT,
    Workload,
    build_workload,
    factory_name,
)
from ckprof.strategy.sweep import PEAK_COLUMNS, RUN_COLUMNS, SweepResult, parse_bytes

__all__ = ["MODEL_CONTRACT", "confirm_batch", "parse_bytes", "run_interleaved", "run_policy", "sweep"]

SCHEDULES = ("interleaved", "sequential")
#: a recommended batch beyond FAR x the largest measured one is not run to confirm it
FAR = 16
_PHASES = ("forward", "backward", "recompute", "optimizer", "other")


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


def default_threads() -> int:
    """Intra-op threads a CPU sweep pins torch to by default: one less than the cores
    (at least 1), never more than torch's own default."""
    import torch

    return max(1, min(int(torch.get_num_threads()), (os.cpu_count() or 1) - 1))


def _device_key(device: Any) -> str:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    return dev.type


def _workload(spec: Mapping[str, Any], batch_size: int | None) -> Workload:
    make_model = _resolve(spec["make_model"])
    return build_workload(make_model, _resolve(spec.get("make_batch")), _resolve(spec.get("loss_fn")),
                          batch_size, name=factory_name(spec["make_model"]))


def _optimizer(model: Any, name: str | None) -> Any:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    return torch.optim.AdamW(params, lr=1e-4)


def _oom_text(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:200]}"


def _rotate(items: Sequence[Any], r: int) -> list[Any]:
    if not items:
        return []
    k = r % len(items)
    return [*items[k:], *items[:k]]


def run_interleaved(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Measure every policy round-robin on one model (NOTE [ Interleaved sweep ]).

    ``spec`` keys: make_model, make_batch, loss_fn, policies (Policy objects or spec
    texts; None: the built-in set for the model's blocks), batch_size, steps (measured
    steps per policy, spread over the rounds), rounds, warmup (unprofiled steps per
    policy before the first round), device, blocks, out_dir, optimizer, threads, seed.
    Returns plain data: ``runs`` and ``peaks`` rows, ``traces``, ``failed``,
    ``aliases``, ``notes``, ``batch_size``, ``n_blocks``."""
    import torch

    from ckprof.analysis import load
    from ckprof.capture import CaptureWarning, capture
    from ckprof.capture.ab import free_memory, is_out_of_memory
    from ckprof.strategy.apply import apply_policy, find_blocks
    from ckprof.strategy.policies import Policy, dedupe_policies, parse_policy, resolve_policies
    from ckprof.trace.markers import OOM_VARIANT

    device = spec.get("device", "cpu")
    threads = spec.get("threads")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        torch.manual_seed(int(spec.get("seed", 0)))
        work = _workload(spec, spec.get("batch_size")).to(device)
        model = work.model
        model.train()
        optimizer = _optimizer(model, spec.get("optimizer"))
        blocks = find_blocks(model, spec.get("blocks"))
        raw = spec.get("policies")
        if raw is None:
            chosen = resolve_policies(None, len(blocks))
        else:
            chosen = tuple(p if isinstance(p, Policy) else parse_policy(p) for p in raw)
        policies, aliases = dedupe_policies(chosen, len(blocks))
        size = work.batch_size
        steps, rounds = int(spec.get("steps", 6)), max(1, int(spec.get("rounds", 3)))
        per_round = max(1, math.ceil(steps / rounds))
        root = Path(spec["out_dir"])
        failed: dict[str, str] = {}

        def one_step(policy: Any) -> bool:
            text = None
            try:
                work.train_step(optimizer, passthrough=is_out_of_memory)
            except Exception as err:
                if isinstance(err, CkprofError) or not is_out_of_memory(err):
                    raise
                text = _oom_text(err)
            if text is None:
                return True
            optimizer.zero_grad(set_to_none=True)
            free_memory()
            failed.setdefault(policy.name, text)
            return False

        for policy in policies:  # warm every policy once before measuring any
            with apply_policy(model, policy, blocks):
                for _ in range(int(spec.get("warmup", 1))):
                    if not one_step(policy):
                        break
        traces: list[tuple[int, Path]] = []
        for r in range(rounds):
            live = [p for p in _rotate(policies, r) if p.name not in failed]
            if not live:
                break
            out = root / (f"b{size}-round{r}" if size else f"round{r}")
            # the sweep reports its own errors (one line for the user's code): the
            # capture's warning about an error inside its window would only repeat it
            with warnings.catch_warnings(), capture(out, wait=0, warmup=1,
                                                    active=len(live) * (1 + per_round),
                                                    record_shapes=False) as cap:
                warnings.simplefilter("ignore", CaptureWarning)
                with apply_policy(model, live[0], blocks):
                    one_step(live[0])  # the profiler's warm-up step
                cap.step()
                for policy in live:
                    if policy.name in failed:
                        continue
                    with apply_policy(model, policy, blocks):
                        for k in range(1 + per_round):
                            cap.tag_step(policy.name, exclude=k == 0)
                            ok = one_step(policy)
                            if not ok:
                                cap.tag_step(OOM_VARIANT, exclude=True)
                            cap.step()
                            if not ok:
                                break
            traces.append((r, _trace_path_of(cap, out)))
        return _collect(traces, device, size, policies, blocks, aliases, failed, load)
    finally:
        if threads:
            torch.set_num_threads(before)


def _collect(traces: Sequence[tuple[int, Path]], device: Any, size: int | None, policies: Sequence[Any],
             blocks: Any, aliases: Mapping[str, tuple[str, ...]], failed: Mapping[str, str],
             load: Callable[..., Any]) -> dict[str, Any]:
    """Read the round traces back: per-step rows and per-policy peaks."""
    key = _device_key(device)
    runs: list[dict[str, Any]] = []
    peak: dict[str, float] = {}
    baseline = math.nan
    notes: list[str] = []
    for r, path in traces:
        analysis = load(path)
        if analysis.recompute_found_by not in ("markers", "none"):
            notes.append(f"round {r}: recompute found by {analysis.recompute_found_by}, not by markers")
        notes += [f"round {r}: {n}" for n in analysis.notes if "memory not captured" in n]
        if math.isnan(baseline):
            baseline = float(analysis.memory.baseline_bytes.get(key, math.nan))
        ab = analysis.ab
        if ab is None:
            continue
        for row in ab.steps.itertuples(index=False):
            if row.excluded or not isinstance(row.variant, str) or math.isnan(row.step_ms):
                continue
            runs.append({"policy": row.variant, "batch_size": size, "step": int(row.step),
                         "step_ms": float(row.step_ms),
                         **{f"{p}_ms": float(getattr(row, f"{p}_ms")) for p in _PHASES}, "round": r})
            if ab.device == key and not math.isnan(row.peak_bytes):
                peak[row.variant] = max(peak.get(row.variant, 0.0), float(row.peak_bytes))
    peaks = [{"policy": p.name, "batch_size": size, "device": key, "peak_bytes": peak.get(p.name, math.nan),
              "baseline_bytes": baseline, "blocks": p.describe(len(blocks))}
             for p in policies if p.name not in failed or p.name in peak]
    none_rec = [x["recompute_ms"] for x in runs if x["policy"] == "none"]
    if none_rec and max(none_rec) > 0:
        notes.append("'none' shows recompute: the model checkpoints by itself; build it without "
                     "checkpointing so that each policy is what the sweep applies")
    return {"batch_size": size, "runs": runs, "peaks": peaks,
            "traces": [(f"round{r}", int(size or 0), str(p)) for r, p in traces],
            "failed": [{"policy": k, "batch_size": size, "error": v} for k, v in failed.items()],
            "aliases": {k: list(v) for k, v in aliases.items()}, "notes": notes, "n_blocks": len(blocks)}


def run_policy(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Profile one (policy, batch size) on a fresh model; return its measurements
    as plain data (``schedule="sequential"``; the sweep may call it in a spawn process).

    ``spec`` keys: make_model, make_batch, loss_fn, policy (a Policy or its spec
    text), batch_size, steps, warmup, device, blocks, out_dir, optimizer, threads.
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
    work = _workload(spec, spec.get("batch_size")).to(device)
    model = work.model
    model.train()
    optimizer = _optimizer(model, spec.get("optimizer", "adamw"))
    blocks = find_blocks(model, spec.get("blocks"))
    out_dir = Path(spec["out_dir"])
    steps, warmup = int(spec.get("steps", 5)), int(spec.get("warmup", 1))
    with apply_policy(model, policy, blocks):
        # ``warmup`` unprofiled steps (schedule "wait"), one profiler warm-up step,
        # then ``steps`` recorded steps; capture's markers name the phases
        with capture(out_dir=out_dir, wait=warmup, warmup=1, active=steps, record_shapes=False) as session:
            for _ in range(warmup + 1 + steps):
                work.train_step(optimizer)
                session.step()
        trace_path = _trace_path_of(session, out_dir)
    analysis = load(trace_path)
    wide = analysis.steps_wide()
    key = _device_key(device)
    mem = analysis.memory_table()
    mem = mem[mem["device"] == key]
    peak = float(mem["peak_bytes"].max()) if analysis.memory.captured and len(mem) else math.nan
    baseline = float(analysis.memory.baseline_bytes.get(key, math.nan))
    batch_size = work.batch_size
    runs = [
        {"policy": policy.name, "batch_size": batch_size, "step": int(r["step"]), "step_ms": float(r["step_ms"]),
         **{f"{p}_ms": float(r[f"{p}_ms"]) for p in _PHASES}, "round": 0}
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


def confirm_batch(spec: Mapping[str, Any], policy: Any, batch_size: int, budget_bytes: int,
                  attempts: int = 3) -> dict[str, Any]:
    """Run ``policy`` at ``batch_size`` once (a short interleaved run of that policy
    alone) and check that it fits ``budget_bytes``: it must not run out of memory and
    its measured peak must be within the budget. When it does not fit, try batches 10%
    smaller (at most ``attempts`` runs). Returns ``status`` (confirmed | reduced |
    failed), ``policy``, ``requested_batch_size``, ``batch_size`` (the one that ran,
    None if none), ``peak_bytes``, ``step_ms``, ``samples_per_s``, ``reason``, ``tries``."""
    import numpy as np

    name = getattr(policy, "name", str(policy))
    tries: list[dict[str, Any]] = []
    batch = int(batch_size)
    reason = ""
    for i in range(max(1, attempts)):
        if batch < 1:
            break
        sub = dict(spec)
        sub.update({"policies": [getattr(policy, "spec", "") or policy], "batch_size": batch, "rounds": 1,
                    "steps": 2, "warmup": 1, "out_dir": str(Path(spec["out_dir"]) / f"confirm-{i}")})
        got = _run(sub, inline=True)
        peak = float(got["peaks"][0]["peak_bytes"]) if got["peaks"] else math.nan
        steps = [r["step_ms"] for r in got["runs"]]
        if got["failed"]:
            reason = f"ran out of memory ({got['failed'][0]['error'][:80]})"
        elif not steps:
            reason = "measured no step"
        elif not math.isnan(peak) and peak > budget_bytes:
            reason = f"peaked at {peak:,.0f} bytes, over the budget"
        else:
            step_ms = float(np.median(steps))
            tries.append({"batch_size": batch, "ok": True})
            return {"status": "confirmed" if i == 0 else "reduced", "policy": name,
                    "requested_batch_size": int(batch_size), "batch_size": batch, "peak_bytes": peak,
                    "step_ms": step_ms, "samples_per_s": batch / (step_ms / 1e3) if step_ms > 0 else math.nan,
                    "reason": "" if i == 0 else tries[0]["reason"], "tries": tries}
        tries.append({"batch_size": batch, "ok": False, "reason": reason})
        batch = min(batch - 1, int(batch * 0.9))
    return {"status": "failed", "policy": name, "requested_batch_size": int(batch_size), "batch_size": None,
            "peak_bytes": math.nan, "step_ms": math.nan, "samples_per_s": math.nan,
            "reason": tries[0]["reason"] if tries else reason, "tries": tries}


def _run(spec: Mapping[str, Any], *, inline: bool) -> dict[str, Any]:
    if inline:
        _reset_memory(spec.get("device", "cpu"))
        try:
            return run_interleaved(spec)
        finally:
            _reset_memory(spec.get("device", "cpu"))
    return _run_in_process(spec, run_interleaved)


def sweep(
    make_model: Callable[..., Any] | str,
    make_batch: Callable[..., Any] | str | None = None,
    policies: Sequence[Any] | None = None,
    steps: int = 6,
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
    rounds: int = 3,
    schedule: str = "interleaved",
    confirm: bool | None = None,
) -> SweepResult:
    """Profile checkpointing policies on a model and summarise (see module docstring).

    ``make_model`` follows the ``--model`` contract (:data:`MODEL_CONTRACT`):
    ``make_model(batch_size=N)`` (keyword passed when accepted) returns
    ``(model, batch, loss_fn)``, or a model when ``make_batch(batch_size)`` gives the
    batch. ``policies``: :class:`~ckprof.strategy.policies.Policy` objects or names
    (default: none, full, every_2, sqrt, selective; duplicates for this model are
    measured once). ``steps``: measured steps per policy, spread over ``rounds``
    interleaved rounds (NOTE [ Interleaved sweep ]; ``schedule="sequential"`` runs each
    policy in its own block instead). ``threads``: torch intra-op threads (default on
    CPU: pinned to :func:`default_threads`). ``batch_sizes=(b1, b2)`` measures two batch
    sizes; with ``memory_budget`` and a factory that takes a batch size, a second size
    (twice the first) is measured by itself, so the largest batch that fits and its
    samples/s are estimated from two measurements. ``confirm`` runs the recommended
    batch once to check it fits (default: on CUDA only). ``out_dir`` keeps the traces
    (default: a temporary folder, deleted after).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, not {steps}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, not {rounds}")
    if isolation not in ("auto", "process", "inline"):
        raise ValueError(f"isolation must be auto, process or inline, not {isolation!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    budget_bytes = None if memory_budget is None else parse_bytes(memory_budget)
    on_cpu = str(device).startswith("cpu")
    if threads is None and on_cpu:
        threads = default_threads()
    if schedule == "sequential":
        return _sweep_sequential(make_model, make_batch, policies, steps, device, batch_size, batch_sizes,
                                 loss_fn, blocks, warmup, out_dir, isolation, budget_bytes, optimizer, threads)
    if policies is not None:
        from ckprof.strategy.policies import resolve_policies

        policies = resolve_policies(policies)  # parsed once; names checked before any run
    portable = all(_portable(x) for x in (make_model, make_batch, loss_fn)) and all(
        p.kind != "custom" or bool(p.spec) for p in (policies or ()))
    if isolation == "process" and not portable:
        raise CkprofError(
            "isolation='process' needs importable factories and policies",
            hint="Pass 'module:function' strings or functions defined in a module, or use isolation='inline'",
        )
    inline = isolation != "process"
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ckprof-sweep-")
        root = Path(tmp.name)
    else:
        root = Path(out_dir)
        root.mkdir(parents=True, exist_ok=True)
    base_spec: dict[str, Any] = {
        "make_model": make_model, "make_batch": make_batch, "loss_fn": loss_fn,
        "policies": None if policies is None else [
            (p.spec or p) if not inline else p for p in policies],
        "steps": steps, "rounds": rounds, "warmup": warmup, "device": device, "blocks": blocks,
        "out_dir": str(root), "optimizer": optimizer, "threads": threads,
    }
    notes: list[str] = []
    try:
        sizes: list[int | None] = list(dict.fromkeys(batch_sizes)) if batch_sizes else [batch_size]
        results = [_run({**base_spec, "batch_size": sizes[0]}, inline=inline)]
        first = results[0]["batch_size"]
        if len(sizes) == 1 and budget_bytes is not None and first:
            if _varies_batch(make_model, make_batch):
                sizes.append(2 * int(first))
                notes.append(f"a memory budget was given: batch {2 * int(first)} was measured too, so the "
                             "largest batch that fits and its samples/s come from two batch sizes")
            else:
                notes.append("the model factory takes no batch_size: one batch size measured, so the "
                             "largest-batch estimate assumes memory and time grow in proportion")
        for size in sizes[1:]:
            results.append(_run({**base_spec, "batch_size": size}, inline=inline))
        runs = pd.DataFrame([row for r in results for row in r["runs"]], columns=list(RUN_COLUMNS))
        peaks = pd.DataFrame([row for r in results for row in r["peaks"]], columns=list(PEAK_COLUMNS))
        if runs.empty:
            why = "; ".join(f"{f['policy']}: {f['error']}" for r in results for f in r["failed"])
            raise CaptureError(f"no policy completed a measured step ({why or 'no step ran'})",
                               hint="Use a smaller batch, or fewer/leaner policies")
        aliases: dict[str, list[str]] = {}
        for r in results:
            for k, v in r["aliases"].items():
                aliases.setdefault(k, [])
                aliases[k] += [x for x in v if x not in aliases[k]]
        notes += [n for r in results for n in r["notes"]]
        rounds_done = max((len(r["traces"]) for r in results), default=0)
        per_round = max(1, math.ceil(steps / rounds))
        schedule_text = (f"{rounds_done} round(s) x {per_round} measured step(s) per policy, interleaved on one "
                         "model in one process (order rotated each round); the first step after each switch "
                         "is not counted")
        if tmp is not None:
            notes.append("traces were written to a temporary folder and deleted; pass out_dir to keep them")
        result = SweepResult.from_runs(
            runs, peaks, traces=[t for r in results for t in r["traces"]], device=device,
            budget_bytes=budget_bytes, notes=notes, threads=threads, schedule=schedule_text,
            aliases=aliases, failed=[f for r in results for f in r["failed"]],
        )
        rec = result.recommendation
        if confirm is None:
            confirm = str(device).startswith("cuda")
        if confirm and budget_bytes is not None and rec.policy is not None and rec.batch_size:
            import dataclasses

            from ckprof.strategy.policies import parse_policy

            # by name: a policy's text (advised:mm+addmm) is not its name (advised)
            policy = next((p for p in (policies or ()) if p.name == rec.policy), None)
            if policy is None:  # the built-in set
                policy = parse_policy(rec.policy)
            largest = int(runs["batch_size"].max())
            if rec.batch_size > FAR * largest:
                conf: dict[str, Any] = {
                    "status": "skipped", "policy": rec.policy, "requested_batch_size": rec.batch_size,
                    "batch_size": None,
                    "reason": f"is more than {FAR}x the largest measured batch ({largest}): measure a batch "
                              "nearer to it (--second-batch-size) before running it"}
            else:
                conf = confirm_batch({**base_spec, "policies": None}, policy, rec.batch_size, budget_bytes)
            result = dataclasses.replace(result, confirmation=conf)
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def _varies_batch(make_model: Any, make_batch: Any) -> bool:
    from ckprof.strategy.contract import _accepts, _takes_positional

    mb = _resolve(make_batch)
    if mb is not None:
        return _accepts(mb, "batch_size") or _takes_positional(mb)
    return _accepts(_resolve(make_model), "batch_size")


def _sweep_sequential(make_model: Any, make_batch: Any, policies: Any, steps: int, device: str,
                      batch_size: int | None, batch_sizes: Sequence[int] | None, loss_fn: Any,
                      blocks: str | None, warmup: int, out_dir: Any, isolation: str,
                      budget_bytes: int | None, optimizer: str, threads: int | None) -> SweepResult:
    """Each (policy, batch) in its own capture, one after another (the former sweep)."""
    from ckprof.strategy.policies import resolve_policies

    sizes: list[int | None] = list(dict.fromkeys(batch_sizes)) if batch_sizes else [batch_size]
    n_blocks = None
    if policies is None:  # the default set depends on the number of blocks
        n_blocks = _count_blocks({"make_model": make_model, "make_batch": make_batch, "loss_fn": loss_fn},
                                 blocks, sizes[0])
    chosen = resolve_policies(policies, n_blocks)
    portable = all(_portable(x) for x in (make_model, make_batch, loss_fn)) and all(
        p.kind != "custom" or bool(p.spec) for p in chosen
    )
    notes: list[str] = ["schedule sequential: each policy ran in its own block of steps; machine drift "
                        "between blocks is not cancelled (the default interleaved schedule does)"]
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
                    "out_dir": str(root / (policy.name if size is None else f"{policy.name}-b{size}")),
                    "optimizer": optimizer, "threads": threads,
                }
                if use_process:
                    results.append(_run_in_process(spec, run_policy))
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
        device=device, budget_bytes=budget_bytes, notes=notes, threads=threads,
        schedule="sequential: each policy in its own block of steps",
    )


def _count_blocks(spec: Mapping[str, Any], blocks: str | None, batch_size: int | None) -> int:
    from ckprof.strategy.apply import find_blocks

    model = _workload(spec, batch_size).model
    n = len(find_blocks(model, blocks))
    del model
    gc.collect()
    return n


def _run_in_process(spec: Mapping[str, Any], target: Callable[..., Any]) -> dict[str, Any]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(target, dict(spec)).result()
        except BrokenProcessPool as err:
            raise CaptureError(
                f"the worker profiling {spec.get('policy') or spec.get('policies') or 'the policies'!r} "
                f"died ({err})",
                hint="It may have run out of memory: try a smaller batch or fewer steps",
            ) from err
