"""Real, small CPU traces for tests (each a few hundred ms to capture).

    capture_trace(tmp_path, variant="markers", steps=2, with_stack=False, gzip=True) -> Path

Model: ``TinyNet`` = Linear input layer, 3 blocks (``blocks.0..2``, each Linear(64,64)-GELU-Linear(64,64))
in an ``nn.ModuleList`` + a Linear head, batch 8, AdamW, seeded. Schedule: wait=0,
warmup=1, active=``steps`` -> the trace holds ``ProfilerStep#1 .. ProfilerStep#steps``.

=================  =================================================  =========================
variant            how it was captured                                 what the trace holds
=================  =================================================  =========================
plain              torch.profiler only; torch checkpoint, non-reentr.  no ckprof markers; recompute
                                                                       ops inside backward (3 per step)
plain_none         torch.profiler only; no checkpointing               no markers, no recompute
reentrant          torch.profiler only; torch checkpoint, reentrant    CheckpointFunction ops, 3
                                                                       CheckpointFunctionBackward per step
none               ckprof.capture; no checkpointing                    phase markers only
markers            ckprof.capture + ckprof.checkpoint (non-reentrant)  phase markers + per step one
                                                                       checkpoint:: and one recompute::
                                                                       range per region
reentrant_markers  ckprof.capture + ckprof.checkpoint(use_reentrant)   same markers as ``markers``
sac                ckprof.capture + ckprof.checkpoint with a selective same markers; recompute reruns
                   checkpointing policy (save matmuls)                 only the unsaved ops
hf_partial         ckprof.capture + instrument_checkpointing around a  same markers as ``markers``
                   functools.partial(torch checkpoint) bound earlier   (no ckprof code in the model)
=================  =================================================  =========================

Region names with markers: ``blocks.0``, ``blocks.1``, ``blocks.2`` (``REGIONS``).
Phase markers (ckprof.capture variants), per step: one each of ``ckprof::zero_grad``,
``ckprof::forward``, ``ckprof::backward``, ``ckprof::optimizer``.
"""

from __future__ import annotations

import contextlib
import functools
import gzip as _gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

VARIANTS: tuple[str, ...] = (
    "plain",
    "plain_none",
    "reentrant",
    "none",
    "markers",
    "reentrant_markers",
    "sac",
    "hf_partial",
)
#: variants whose trace carries ckprof markers (phase + region ranges)
MARKER_VARIANTS: tuple[str, ...] = ("markers", "reentrant_markers", "sac", "hf_partial")
#: variants that checkpoint the blocks (recompute happens in backward)
CHECKPOINT_VARIANTS: tuple[str, ...] = ("plain", "reentrant", *MARKER_VARIANTS)
REGIONS: tuple[str, ...] = ("blocks.0", "blocks.1", "blocks.2")
DIM = 64
BATCH = 8


class TinyBlock(torch.nn.Module):
    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, dim)
        self.fc2 = torch.nn.Linear(dim, dim)

    def forward(self, x: Any) -> Any:
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class TinyNet(torch.nn.Module):
    """3 blocks; ``ckpt(block, x)`` runs each block (identity call when None)."""

    def __init__(self, dim: int = DIM, depth: int = 3) -> None:
        super().__init__()
        # an input layer, so every block input requires grad (reentrant needs that)
        self.inp = torch.nn.Linear(dim, dim)
        self.blocks = torch.nn.ModuleList([TinyBlock(dim) for _ in range(depth)])
        self.head = torch.nn.Linear(dim, 1)
        self.ckpt: Any = None

    def forward(self, x: Any) -> Any:
        x = self.inp(x)
        for block in self.blocks:
            x = block(x) if self.ckpt is None else self.ckpt(block, x)
        return self.head(x)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch work on one intra-op thread (restored after).

    On a busy 2-core machine torch's OpenMP threads spin against other processes and a
    tiny step takes seconds instead of milliseconds. Test modules wrap their work in
    it through a module-scoped autouse fixture.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sac_context_fn() -> Any:
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
        if op in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return functools.partial(create_selective_checkpoint_contexts, policy)


def checkpoint_fn(variant: str) -> Any:
    """The per-block callable the variant's model uses (None: no checkpointing)."""
    import torch.utils.checkpoint as tcp

    import ckprof

    if variant in ("plain", "hf_partial"):
        # bound before any instrumentation, like HF's gradient_checkpointing_enable
        return functools.partial(tcp.checkpoint, use_reentrant=False)
    if variant == "reentrant":
        return functools.partial(tcp.checkpoint, use_reentrant=True)
    if variant == "markers":
        return ckprof.checkpoint
    if variant == "reentrant_markers":
        return functools.partial(ckprof.checkpoint, use_reentrant=True)
    if variant == "sac":
        return functools.partial(ckprof.checkpoint, context_fn=_sac_context_fn())
    if variant in ("none", "plain_none"):
        return None
    raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")


def build_model(variant: str, seed: int = 0, batch: int = BATCH) -> tuple[Any, Any, Any]:
    """(model, optimizer, batch) for a variant, seeded."""
    torch.manual_seed(seed)
    model = TinyNet()
    model.ckpt = checkpoint_fn(variant)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, DIM, generator=torch.Generator().manual_seed(seed + 1))
    return model, optimizer, x


def train_step(model: Any, optimizer: Any, x: Any) -> Any:
    optimizer.zero_grad(set_to_none=True)
    loss = model(x).square().mean()
    loss.backward()
    optimizer.step()
    return loss


def capture_trace(tmp_path: Path, variant: str = "markers", steps: int = 2, *,
                  with_stack: bool = False, gzip: bool = True, batch: int | None = None) -> Path:
    """Capture a real CPU trace of ``steps`` active steps; returns the trace file.
    ``batch``: rows of the input (default ``BATCH``; large ones make activations, not
    the optimizer's state, set the peak)."""
    import ckprof

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")
    out_dir = Path(tmp_path) / f"trace_{variant}"
    out_dir.mkdir(parents=True, exist_ok=True)
    model, optimizer, x = build_model(variant, batch=batch or BATCH)
    if variant in ("plain", "plain_none", "reentrant"):
        from torch.profiler import ProfilerActivity, profile, schedule

        path = out_dir / f"{variant}.pt.trace.json{'.gz' if gzip else ''}"
        with profile(activities=[ProfilerActivity.CPU],
                     schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
                     on_trace_ready=lambda p: p.export_chrome_trace(str(path)),
                     profile_memory=True, record_shapes=True, with_stack=with_stack) as prof:
            for _ in range(steps + 1):
                train_step(model, optimizer, x)
                prof.step()
        return path
    with ckprof.capture(out_dir, wait=0, warmup=1, active=steps, with_stack=with_stack,
                        gzip=gzip) as cap:
        if variant == "hf_partial":
            with ckprof.instrument_checkpointing():
                for _ in range(steps + 1):
                    train_step(model, optimizer, x)
                    cap.step()
        else:
            for _ in range(steps + 1):
                train_step(model, optimizer, x)
                cap.step()
    assert len(cap.trace_paths) == 1, cap.errors
    return cap.trace_paths[0]


def read_trace(path: Path) -> dict[str, Any]:
    """The raw JSON of a trace file (.json or .json.gz), no ckprof loader involved."""
    opener = _gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as fh:
        return json.load(fh)


def annotation_counts(trace: dict[str, Any], prefix: str = "ckprof::") -> dict[str, int]:
    """Complete user annotations whose name starts with ``prefix`` -> count."""
    out: dict[str, int] = {}
    for event in trace["traceEvents"]:
        if event.get("ph") == "X" and str(event.get("name", "")).startswith(prefix):
            out[event["name"]] = out.get(event["name"], 0) + 1
    return out
