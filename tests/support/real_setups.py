"""Real training setups people run, tiny, with an independent recompute ground truth.

    SETUPS                                   names of the setups below
    run_setup(name, out_dir, steps=2, with_stack=True) -> SetupRun

Each setup builds a small model the way its users do (HF transformers from a config,
``gradient_checkpointing_enable`` reentrant and not, ``checkpoint_wrapper``,
``checkpoint_sequential``, selective checkpointing, nested checkpoints), trains it under
``ckprof.capture`` + ``ckprof.instrument_checkpointing`` (no ckprof code in the model),
and times every checkpointed callable itself.

Ground truth (no ckprof code involved): each checkpointed callable is wrapped in a
:class:`Timed` object (``__wrapped__`` = the callable, as ``functools.wraps`` does) at the
place the setup hands it to torch's checkpoint. A call made while
``torch._C._current_graph_task_id() != -1`` runs inside backward: it is recompute. A call
inside backward nested in another timed call inside backward (an inner checkpoint re-run
while the outer one is recomputed) belongs to the outer one; every other call inside
backward is one recompute occurrence of its region, its whole duration (``finally``:
early stop ends recompute by an exception) counted for the region. Only the profiled
(active) steps count. Region names of the ground truth are the module paths in the
model (``model.layers.0``), from ``named_modules()``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

SETUPS: tuple[str, ...] = (
    "hf_llama",            # HF LlamaForCausalLM, gradient_checkpointing_enable(use_reentrant=False)
    "hf_llama_reentrant",  # the same, use_reentrant=True
    "hf_gpt2",             # HF GPT2LMHeadModel, non-reentrant
    "checkpoint_wrapper",  # torch.distributed checkpoint_wrapper around each block
    "checkpoint_sequential",  # torch.utils.checkpoint.checkpoint_sequential, 2 segments
    "selective",           # non-reentrant checkpoint with a selective (SAC) policy
    "nested",              # a checkpointed block that checkpoints its inner part
)

#: setups that need HF transformers
HF_SETUPS = frozenset({"hf_llama", "hf_llama_reentrant", "hf_gpt2"})

_graph_task_id = torch._C._current_graph_task_id


class GroundTruth:
    """Records the recompute occurrences of timed callables (see the module docstring)."""

    def __init__(self) -> None:
        self.step = -1
        self.record_steps: set[int] = set()
        self._stack: list[str] = []     # regions of the timed calls running inside backward
        #: (step, region) -> list of in-backward durations (ns), outermost calls only
        self.calls: dict[tuple[int, str], list[int]] = defaultdict(list)
        #: (step, region) -> first-run (forward) durations (ns)
        self.forward: dict[tuple[int, str], list[int]] = defaultdict(list)

    def wrap(self, fn: Callable[..., Any], region: str) -> Timed:
        return Timed(fn, region, self)

    def recompute_ns(self, region: str | None = None) -> int:
        return sum(sum(v) for (s, r), v in self.calls.items()
                   if s in self.record_steps and (region is None or r == region))

    def regions(self) -> dict[str, tuple[int, int]]:
        """region -> (count, ns) over the recorded steps."""
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for (s, r), v in self.calls.items():
            if s in self.record_steps:
                out[r][0] += len(v)
                out[r][1] += sum(v)
        return {r: (c, t) for r, (c, t) in out.items()}

    def forward_ns(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (s, r), v in self.forward.items():
            if s in self.record_steps:
                out[r] += sum(v)
        return dict(out)


class Timed:
    """A checkpointed callable, timed. Looks like a ``functools.wraps`` wrapper."""

    def __init__(self, fn: Callable[..., Any], region: str, truth: GroundTruth) -> None:
        self.__wrapped__ = fn
        self.region = region
        self.truth = truth

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        truth = self.truth
        in_backward = _graph_task_id() != -1
        outermost = in_backward and not truth._stack
        if in_backward:
            truth._stack.append(self.region)
        t0 = time.perf_counter_ns()
        try:
            return self.__wrapped__(*args, **kwargs)
        finally:
            dt = time.perf_counter_ns() - t0
            if in_backward:
                truth._stack.pop()
                if outermost:
                    truth.calls[(truth.step, self.region)].append(dt)
            else:
                truth.forward[(truth.step, self.region)].append(dt)


def _paths(model: Any) -> dict[int, str]:
    return {id(m): ".".join(p for p in q.split(".") if p != "_checkpoint_wrapped_module")
            for q, m in model.named_modules() if q}


# ----------------------------------------------------------------------------- models


def _hf_model(kind: str) -> Any:
    transformers = pytest.importorskip("transformers")
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2,
                                      n_head=2)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2,
                                       num_key_value_heads=2, max_position_embeddings=32)
        model = transformers.LlamaForCausalLM(cfg)
    return model


def _time_hf_layers(model: Any, truth: GroundTruth) -> None:
    """Wrap the callable each HF layer hands to its ``_gradient_checkpointing_func``."""
    paths = _paths(model)
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if func is None or not getattr(module, "gradient_checkpointing", False):
            continue

        def timed_func(fn: Any, *args: Any, __f: Any = func, __r: str = paths[id(module)],
                       **kwargs: Any) -> Any:
            return __f(truth.wrap(fn, __r), *args, **kwargs)

        module._gradient_checkpointing_func = timed_func


class _Block(torch.nn.Module):
    def __init__(self, dim: int, inner: bool = False) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, 2 * dim)
        self.fc2 = torch.nn.Linear(2 * dim, dim)
        self.inner = _Block(dim) if inner else None
        self.ckpt: Any = None

    def forward(self, x: Any) -> Any:
        y = self.fc2(torch.nn.functional.gelu(self.fc1(x)))
        if self.inner is not None:
            y = self.ckpt(self.inner, y)
        return y + x


class _Net(torch.nn.Module):
    """``inp`` -> ``blocks`` (each run through ``self.ckpt``) -> ``head``."""

    def __init__(self, dim: int = 32, depth: int = 3, inner: bool = False) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(dim, dim)
        self.blocks = torch.nn.ModuleList([_Block(dim, inner) for _ in range(depth)])
        self.head = torch.nn.Linear(dim, 1)
        self.ckpt: Any = None

    def forward(self, x: Any) -> Any:
        x = self.inp(x)
        for block in self.blocks:
            x = block(x) if self.ckpt is None else self.ckpt(block, x)
        return self.head(x)


class _SeqNet(torch.nn.Module):
    """``inp`` -> ``checkpoint_sequential(body, 2 segments)`` (the last segment runs
    without checkpoint, as torch does) -> ``head``."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(dim, dim)
        self.body = torch.nn.Sequential(*[_Block(dim) for _ in range(4)])
        self.head = torch.nn.Linear(dim, 1)

    def forward(self, x: Any) -> Any:
        from torch.utils.checkpoint import checkpoint_sequential

        return self.head(checkpoint_sequential(self.body, 2, self.inp(x), use_reentrant=False))


def _sac_context_fn() -> Any:
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
        if op in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return functools.partial(create_selective_checkpoint_contexts, policy)


@dataclass
class Built:
    model: Any
    run: Callable[[], Any]                     # forward + loss
    expected: tuple[str, ...]                  # ckprof region names expected
    patch: Callable[[], contextlib.AbstractContextManager[Any]] = field(
        default=contextlib.nullcontext)


def build(name: str, truth: GroundTruth) -> Built:
    """The model of setup ``name`` with its checkpointed callables timed."""
    from torch.utils import checkpoint as tcp

    torch.manual_seed(0)
    if name in HF_SETUPS:
        model = _hf_model("gpt2" if name == "hf_gpt2" else "llama")
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": name == "hf_llama_reentrant"})
        model.train()
        _time_hf_layers(model, truth)
        ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
        layers = ("transformer.h" if name == "hf_gpt2" else "model.layers")
        return Built(model, lambda: model(input_ids=ids, labels=ids).loss,
                     (f"{layers}.0", f"{layers}.1"))
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    if name == "checkpoint_wrapper":
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            checkpoint_wrapper,
        )

        model = _Net()
        paths = _paths(model)
        for i, block in enumerate(list(model.blocks)):
            wrapped = checkpoint_wrapper(block)
            original = wrapped.checkpoint_fn
            region = paths[id(block)]
            wrapped.checkpoint_fn = (lambda fn, *a, __o=original, __r=region, **k:
                                     __o(truth.wrap(fn, __r), *a, **k))
            model.blocks[i] = wrapped
        return Built(model, lambda: model(x).square().mean(),
                     ("blocks.0", "blocks.1", "blocks.2"))
    if name == "checkpoint_sequential":
        model = _SeqNet()
        original = tcp.checkpoint

        @contextlib.contextmanager
        def patch() -> Iterator[None]:
            # checkpoint_sequential looks ``checkpoint`` up in its module at call time
            def timed(fn: Any, *a: Any, **k: Any) -> Any:
                start, end = (fn.__closure__[fn.__code__.co_freevars.index(v)].cell_contents
                              for v in ("start", "end"))
                return original(truth.wrap(fn, f"body[{start}:{end + 1}]"), *a, **k)

            tcp.checkpoint = timed
            try:
                yield
            finally:
                tcp.checkpoint = original

        return Built(model, lambda: model(x).square().mean(), ("body[0:2]",), patch)
    if name in ("selective", "nested"):
        model = _Net(inner=name == "nested")
        paths = _paths(model)
        kwargs: dict[str, Any] = {"use_reentrant": False}
        if name == "selective":
            kwargs["context_fn"] = _sac_context_fn()

        def ckpt(module: Any, *a: Any) -> Any:
            return tcp.checkpoint(truth.wrap(module, paths[id(module)]), *a, **kwargs)

        model.ckpt = ckpt
        for block in model.blocks:
            block.ckpt = ckpt
        expected = tuple(f"blocks.{i}" for i in range(3))
        if name == "nested":
            expected = tuple(sorted(expected + tuple(f"{e}.inner" for e in expected)))
        return Built(model, lambda: model(x).square().mean(), expected)
    raise ValueError(f"unknown setup {name!r}; one of {SETUPS}")


# ------------------------------------------------------------------------------- run


@dataclass
class SetupRun:
    name: str
    trace: Path
    truth: GroundTruth
    expected: tuple[str, ...]
    errors: list[str]


def run_setup(name: str, out_dir: Path, *, steps: int = 2, with_stack: bool = True,
              warmup_steps: int = 1) -> SetupRun:
    """Train setup ``name`` for warmup + ``steps`` profiled steps under ckprof.capture
    (wait 0) with instrument_checkpointing; returns the trace and the ground truth."""
    import ckprof

    truth = GroundTruth()
    built = build(name, truth)
    optimizer = torch.optim.AdamW(built.model.parameters(), lr=1e-3)
    out = Path(out_dir) / name
    with built.patch(), ckprof.capture(out, wait=0, warmup=warmup_steps, active=steps,
                                       with_stack=with_stack) as cap, \
            ckprof.instrument_checkpointing():
        for step in range(warmup_steps + steps):
            truth.step = step
            optimizer.zero_grad(set_to_none=True)
            built.run().backward()
            optimizer.step()
            cap.step()
    truth.record_steps = set(range(warmup_steps, warmup_steps + steps))
    assert len(cap.trace_paths) == 1, cap.errors
    return SetupRun(name, cap.trace_paths[0], truth, built.expected, list(cap.errors))
