#!/usr/bin/env python
"""Capture real CUDA traces of checkpointed training, with an independent ground truth.

Run on a machine with a CUDA device (``python benchmarks/gpu_traces.py --out DIR``). It
writes, for each setup, one Chrome trace of ``--steps`` active steps and a
``ground_truth.json`` measured WITHOUT ckprof's analysis:

- ``recompute_cpu_ms``: wall time of every checkpointed callable while it runs inside
  backward (``torch._C._current_graph_task_id() != -1``), timed in the callable's
  wrapper, summed over the profiled steps (the recompute ckprof should find);
- ``recompute_gpu_span_ms``: CUDA-event time from the first to the last kernel each such
  call enqueued (the GPU span of recompute, idle gaps included);
- ``step_ms``: per-step wall time with a device synchronise at the end of each step;
- for the compiled pair, the same model compiled with and without checkpointing.

Setups (small models so that the whole script takes about a minute on one GPU):

``eager_markers``   4-block MLP, ``ckprof.capture`` + ``instrument_checkpointing`` (markers)
``eager_plain``     the same with plain ``torch.profiler`` and no ckprof code at all
``reentrant_plain`` ``use_reentrant=True`` under plain ``torch.profiler``
``sac_plain``       selective checkpointing (matmuls saved) under plain ``torch.profiler``
``compiled_markers`` ``torch.compile`` of the checkpointed MLP under ``ckprof.capture``
``compiled_none``    the same compiled model without checkpointing (for the A/B figure)
``hf_llama_markers`` a tiny HF Llama (from a config, no download) with
                     ``gradient_checkpointing_enable()``, under ``ckprof.capture``
``hf_llama_plain``   the same under plain ``torch.profiler``

For the HF model the callable each decoder layer hands to checkpoint (HF >= 5:
``partial(<class forward>, layer, ...)``, which module hooks never see) is wrapped by
the same timer, through the layer's ``_gradient_checkpointing_func``.

The traces are what ckprof's tests read to check GPU attribution and recompute GPU
time on real kernels (tests/data/gpu/). Exit 2 without CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BLOCKS = 4
DIM = 1024
HIDDEN = 4096
BATCH = 64
WARMUP_STEPS = 3
DEVICE = "cuda"


def build(device: str, *, reentrant: bool = False, sac: bool = False, checkpointing: bool = True,
          truth: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    import torch
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)

    def context_fn() -> Any:
        from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

        def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
            if op in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                return CheckpointPolicy.MUST_SAVE
            return CheckpointPolicy.PREFER_RECOMPUTE

        return create_selective_checkpoint_contexts(policy)

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = torch.nn.Linear(DIM, HIDDEN)
            self.fc2 = torch.nn.Linear(HIDDEN, DIM)
            self.norm = torch.nn.LayerNorm(DIM)

        def forward(self, x: Any) -> Any:
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block() for _ in range(BLOCKS)])
            self.head = torch.nn.Linear(DIM, 1)

        def forward(self, x: Any) -> Any:
            for i, block in enumerate(self.blocks):
                if checkpointing:
                    fn = _timed(block, f"blocks.{i}", truth) if truth is not None else block
                    kwargs: dict[str, Any] = {"use_reentrant": reentrant}
                    if sac:
                        kwargs["context_fn"] = context_fn
                    x = checkpoint(fn, x, **kwargs)
                else:
                    x = block(x)
            return self.head(x)

    model = Net().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(BATCH, DIM, device=device, requires_grad=reentrant)
    return model, opt, x


def _timed(block: Any, region: str, truth: dict[str, Any]) -> Callable[..., Any]:
    """The block, timed when it runs inside backward (= recompute): CPU wall time and
    the CUDA-event span of what it enqueued."""
    import torch

    def run(*args: Any, **kwargs: Any) -> Any:
        if not truth.get("recording") or torch._C._current_graph_task_id() == -1:
            return block(*args, **kwargs)
        t0 = time.perf_counter_ns()  # the wrapper's own cost counts, as it does for ckprof
        cuda = DEVICE.startswith("cuda")
        start_ev = torch.cuda.Event(enable_timing=True) if cuda else None
        end_ev = torch.cuda.Event(enable_timing=True) if cuda else None
        if cuda:
            start_ev.record()
        try:  # non-reentrant recompute may stop early by raising inside the block
            return block(*args, **kwargs)
        finally:
            if cuda:
                end_ev.record()
            t1 = time.perf_counter_ns()
            truth["calls"].append((region, t1 - t0, start_ev, end_ev))

    run.__wrapped__ = block  # type: ignore[attr-defined]  # the usual wrapper convention
    return run


def train_step(model: Any, opt: Any, x: Any) -> None:
    opt.zero_grad(set_to_none=True)
    loss = model(x).square().mean()
    loss.backward()
    opt.step()


def _sync() -> None:
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def _truth() -> dict[str, Any]:
    return {"recording": False, "calls": [], "step_ms": []}


def _summarise(truth: dict[str, Any]) -> dict[str, Any]:

    _sync()
    per_region: dict[str, dict[str, float]] = {}
    for region, cpu_ns, start_ev, end_ev in truth["calls"]:
        entry = per_region.setdefault(region, {"count": 0, "cpu_ms": 0.0, "gpu_span_ms": 0.0})
        entry["count"] += 1
        entry["cpu_ms"] += cpu_ns / 1e6
        entry["gpu_span_ms"] += float(start_ev.elapsed_time(end_ev)) if start_ev is not None else 0.0
    return {
        "regions": per_region,
        "recompute_cpu_ms": sum(r["cpu_ms"] for r in per_region.values()),
        "recompute_gpu_span_ms": sum(r["gpu_span_ms"] for r in per_region.values()),
        "step_ms": truth["step_ms"],
    }


@contextlib.contextmanager
def _plain_profiler(out: Path, name: str, steps: int) -> Iterator[Any]:
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.startswith("cuda") else [])

    def ready(prof: Any) -> None:
        prof.export_chrome_trace(str(out / f"{name}.pt.trace.json"))

    with profile(activities=activities,
                 schedule=schedule(wait=1, warmup=1, active=steps), on_trace_ready=ready,
                 profile_memory=True, record_shapes=True) as prof:
        yield prof
    _sync()


def _run_steps(model: Any, opt: Any, x: Any, n: int, truth: dict[str, Any] | None,
               stepper: Callable[[], None], active: range) -> None:

    for i in range(n):
        if truth is not None:
            truth["recording"] = i in active
        t0 = time.perf_counter_ns()
        train_step(model, opt, x)
        _sync()
        if truth is not None and i in active:
            truth["step_ms"].append((time.perf_counter_ns() - t0) / 1e6)
        stepper()
    if truth is not None:
        truth["recording"] = False


def capture_plain(out: Path, name: str, steps: int, **build_kw: Any) -> dict[str, Any]:
    truth = _truth()
    model, opt, x = build(DEVICE, truth=truth, **build_kw)
    for _ in range(WARMUP_STEPS):
        train_step(model, opt, x)
    with _plain_profiler(out, name, steps) as prof:
        _run_steps(model, opt, x, steps + 2, truth, prof.step, range(2, 2 + steps))
    return _summarise(truth)


def capture_ckprof(out: Path, name: str, steps: int, *, compiled: bool = False,
                   **build_kw: Any) -> dict[str, Any]:
    import torch

    import ckprof

    truth = _truth()
    # a compiled model is timed as a whole (compiled_markers vs compiled_none): a timing
    # wrapper inside the compiled graph would change what inductor does
    model, opt, x = build(DEVICE, truth=None if compiled else truth, **build_kw)
    if compiled:
        model = torch.compile(model)
    for _ in range(WARMUP_STEPS):
        train_step(model, opt, x)
    _sync()
    folder = out / f"_{name}"
    with ckprof.instrument_checkpointing(), ckprof.capture(folder, wait=1, warmup=1, active=steps) as cap:
        _run_steps(model, opt, x, steps + 2, truth, cap.step, range(2, 2 + steps))
    paths = list(cap.trace_paths)
    if len(paths) != 1:
        raise RuntimeError(f"{name}: expected one trace, got {paths} (errors: {cap.errors})")
    target = out / f"{name}.pt.trace.json.gz"
    paths[0].replace(target)
    folder.rmdir()
    return _summarise(truth)


def build_llama(device: str, truth: dict[str, Any]) -> tuple[Any, Any, Any]:
    """A tiny Llama from a config (no weights download), gradient checkpointing on,
    each decoder layer timed when it runs inside backward."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=1024,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256)
    model = LlamaForCausalLM(config).to(device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    for i, layer in enumerate(model.model.layers):
        # HF >= 5 checkpoints partial(<class forward>, layer, ...) through the layer's
        # _gradient_checkpointing_func: module hooks and instance attributes never see
        # the recompute, so the callable handed to checkpoint is wrapped there
        original = layer._gradient_checkpointing_func

        def through_timer(fn: Any, *args: Any, _original: Any = original, _name: str = f"model.layers.{i}",
                          **kwargs: Any) -> Any:
            return _original(_timed(fn, _name, truth), *args, **kwargs)

        layer._gradient_checkpointing_func = through_timer
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 1000, (8, 128), device=device)
    return model, opt, tokens


def _llama_step(model: Any, opt: Any, tokens: Any) -> None:
    opt.zero_grad(set_to_none=True)
    model(input_ids=tokens, labels=tokens).loss.backward()
    opt.step()


def capture_llama(out: Path, name: str, steps: int, *, markers: bool) -> dict[str, Any]:
    import ckprof

    truth = _truth()
    model, opt, tokens = build_llama(DEVICE, truth)
    for _ in range(WARMUP_STEPS):
        _llama_step(model, opt, tokens)
    _sync()
    active = range(2, 2 + steps)

    def loop(stepper: Callable[[], None]) -> None:
        for i in range(steps + 2):
            truth["recording"] = i in active
            t0 = time.perf_counter_ns()
            _llama_step(model, opt, tokens)
            _sync()
            if i in active:
                truth["step_ms"].append((time.perf_counter_ns() - t0) / 1e6)
            stepper()
        truth["recording"] = False

    if not markers:
        with _plain_profiler(out, name, steps) as prof:
            loop(prof.step)
        return _summarise(truth)
    folder = out / f"_{name}"
    with ckprof.instrument_checkpointing(), ckprof.capture(folder, wait=1, warmup=1, active=steps) as cap:
        loop(cap.step)
    paths = list(cap.trace_paths)
    if len(paths) != 1:
        raise RuntimeError(f"{name}: expected one trace, got {paths} (errors: {cap.errors})")
    paths[0].replace(out / f"{name}.pt.trace.json.gz")
    folder.rmdir()
    return _summarise(truth)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated setups")
    ap.add_argument("--allow-cpu", action="store_true", help="smoke-test the script on CPU")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu_traces: torch is not installed", file=sys.stderr)
        return 2
    global DEVICE
    if not torch.cuda.is_available():
        if not args.allow_cpu:
            print("gpu_traces: no CUDA device", file=sys.stderr)
            return 2
        DEVICE = "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    setups: dict[str, Callable[[], dict[str, Any]]] = {
        "eager_markers": lambda: capture_ckprof(args.out, "eager_markers", args.steps),
        "eager_plain": lambda: capture_plain(args.out, "eager_plain", args.steps),
        "reentrant_plain": lambda: capture_plain(args.out, "reentrant_plain", args.steps, reentrant=True),
        "sac_plain": lambda: capture_plain(args.out, "sac_plain", args.steps, sac=True),
        "compiled_markers": lambda: capture_ckprof(args.out, "compiled_markers", args.steps, compiled=True),
        "compiled_none": lambda: capture_ckprof(args.out, "compiled_none", args.steps, compiled=True,
                                                checkpointing=False),
        "hf_llama_markers": lambda: capture_llama(args.out, "hf_llama_markers", args.steps, markers=True),
        "hf_llama_plain": lambda: capture_llama(args.out, "hf_llama_plain", args.steps, markers=False),
    }
    wanted = args.only.split(",") if args.only else list(setups)
    device_name = torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else "cpu"
    doc: dict[str, Any] = {"torch": torch.__version__, "device": device_name,
                           "blocks": BLOCKS, "dim": DIM, "hidden": HIDDEN, "batch": BATCH,
                           "steps": args.steps, "setups": {}}
    status = 0
    for name in wanted:
        t0 = time.perf_counter()
        try:
            doc["setups"][name] = setups[name]()
            print(f"{name}: ok in {time.perf_counter() - t0:.1f} s: "
                  f"recompute cpu {doc['setups'][name]['recompute_cpu_ms']:.3f} ms, "
                  f"gpu span {doc['setups'][name]['recompute_gpu_span_ms']:.3f} ms, "
                  f"steps {[f'{s:.2f}' for s in doc['setups'][name]['step_ms']]}", flush=True)
        except Exception as err:  # report and go on with the other setups
            import traceback

            traceback.print_exc()
            doc["setups"][name] = {"error": f"{type(err).__name__}: {err}"}
            status = 1
    (args.out / "ground_truth.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
    return status


if __name__ == "__main__":
    sys.exit(main())
