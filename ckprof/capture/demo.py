"""The built-in demo: a small transformer with checkpointed blocks (torch side).

Contract::

    build_demo(*, dim=128, depth=4, heads=4, vocab=256, seq_len=64, batch_size=8,
               checkpointing=True, seed=0) -> (model, make_batch, loss_fn)
        make_batch(batch_size=None) -> (tokens, targets)   int64 [batch, seq_len]
        model(tokens, targets=None) -> logits [batch, seq, vocab] (loss when targets given)
        loss_fn(output, batch) -> scalar loss
    make_demo(batch_size=8) -> (model, batch, loss_fn)      sweep-style factory, no
                                                              checkpointing of its own
    run_demo(out_dir, *, steps=3, checkpointing=True, seed=0, ab=False) -> Path of the trace

The blocks live in ``model.blocks`` (an ``nn.ModuleList``); with ``checkpointing``
each runs through :func:`ckprof.checkpoint`, so the trace names the regions
``blocks.0`` ... ``blocks.<depth-1>``. ``run_demo`` trains with AdamW on CPU under
``ckprof.capture(wait=1, warmup=1, active=steps)`` and takes a few seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ckprof.capture import capture, checkpoint
from ckprof.errors import CaptureError

__all__ = ["DemoTransformer", "build_demo", "make_demo", "run_demo"]


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention + 4x MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        seq = x.shape[1]
        mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=x.device), diagonal=1)
        attn, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        x = x + attn
        return x + self.mlp(self.ln2(x))


class DemoTransformer(nn.Module):
    """Token + position embedding, ``depth`` blocks in ``self.blocks``, LM head."""

    def __init__(self, *, dim: int = 128, depth: int = 4, heads: int = 4, vocab: int = 256,
                 seq_len: int = 64, checkpointing: bool = True) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.checkpointing = checkpointing

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok(tokens) + self.pos(positions)
        for block in self.blocks:
            x = checkpoint(block, x) if self.checkpointing and torch.is_grad_enabled() else block(x)
        logits = self.head(self.ln(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def demo_loss(output: torch.Tensor, batch: Any) -> torch.Tensor:
    """Scalar output (the model computed the loss) -> itself; logits -> cross entropy."""
    if output.dim() == 0:
        return output
    targets = batch[1]
    return F.cross_entropy(output.flatten(0, 1), targets.flatten())


def build_demo(*, dim: int = 128, depth: int = 4, heads: int = 4, vocab: int = 256,
               seq_len: int = 64, batch_size: int = 8, checkpointing: bool = True,
               seed: int = 0) -> tuple[DemoTransformer, Callable[..., tuple[torch.Tensor, torch.Tensor]],
                                       Callable[[torch.Tensor, Any], torch.Tensor]]:
    """(model, make_batch, loss_fn) for the demo transformer, seeded."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DemoTransformer(dim=dim, depth=depth, heads=heads, vocab=vocab,
                                seq_len=seq_len, checkpointing=checkpointing)

    def make_batch(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        rows = batch_size if n is None else int(n)
        data = torch.randint(0, vocab, (rows, seq_len + 1), generator=gen)
        return data[:, :-1].contiguous(), data[:, 1:].contiguous()

    return model, make_batch, demo_loss


def make_demo(batch_size: int = 8) -> tuple[DemoTransformer, tuple[torch.Tensor, torch.Tensor], Callable[..., Any]]:
    """Sweep-style factory: (model without its own checkpointing, batch, loss_fn)."""
    model, make_batch, loss_fn = build_demo(batch_size=batch_size, checkpointing=False)
    return model, make_batch(batch_size), loss_fn


def run_demo(out_dir: str | os.PathLike[str], *, steps: int = 3, checkpointing: bool = True,
             seed: int = 0, ab: bool = False) -> Path:
    """Train the demo on CPU and profile ``steps`` active steps; return the trace path.

    Schedule: wait=1, warmup=1, active=steps (``steps + 2`` training steps in all).
    ``ab=True``: steps alternate checkpointing on and off (``capture(ab=True)``), with
    ``steps + 1`` wait steps (timed without the profiler) and 2 warm-up steps.
    """
    if steps < 1:
        raise CaptureError(f"run_demo: steps={steps} records nothing", hint="Use steps >= 1")
    model, make_batch, loss_fn = build_demo(checkpointing=checkpointing, seed=seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = make_batch()
    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch[0]), batch)
        loss.backward()
        optimizer.step()

    # A/B: the wait steps alternate too and are timed without the profiler
    wait, warmup = (steps + 1, 2) if ab else (1, 1)
    with capture(out_dir, wait=wait, warmup=warmup, active=steps, ab=ab) as session:
        for _ in range(wait + warmup + steps):
            session.run_step(train_step)
    if not session.trace_paths:
        reason = session.no_trace_reason or "the profiler produced no trace"
        raise CaptureError(f"no trace written ({reason})", path=str(out_dir),
                           hint="Check that the directory is writable")
    return session.trace_paths[-1]
