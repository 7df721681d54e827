"""Regenerate the example traces in this folder (CPU, a few seconds each).

    python traces/examples/regenerate.py

- ``demo_markers.pt.trace.json.gz``: ``ckprof.capture.demo.run_demo`` -- the built-in
  transformer, every block through ``ckprof.checkpoint``, captured with
  ``ckprof.capture`` (markers, memory baseline metadata).
- ``demo_plain.pt.trace.json.gz``: the same model checkpointed with plain
  ``torch.utils.checkpoint`` under a plain ``torch.profiler.profile`` -- no ckprof code
  at all, the kind of trace users already have. ``ckprof analyze`` finds the recompute
  with the ``sequence`` method.

Existing files are kept (ckprof never overwrites); delete them first to refresh.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

from ckprof.capture.demo import build_demo, run_demo

HERE = Path(__file__).resolve().parent


def markers_trace(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = run_demo(tmp, steps=2)
        shutil.copyfile(path, dest)


def plain_trace(dest: Path) -> None:
    model, make_batch, loss_fn = build_demo(checkpointing=False, seed=0)
    blocks = model.blocks
    # checkpoint each block with torch's own API, as user code would
    for i, block in enumerate(list(blocks)):
        blocks[i] = _Checkpointed(block)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = make_batch()
    sched = torch.profiler.schedule(wait=1, warmup=1, active=2)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plain.json"
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], schedule=sched,
                                    profile_memory=True, record_shapes=True,
                                    on_trace_ready=lambda p: p.export_chrome_trace(str(out))) as prof:
            for _ in range(4):
                opt.zero_grad()
                loss_fn(model(batch[0]), batch).backward()
                opt.step()
                prof.step()
        import gzip

        dest.write_bytes(gzip.compress(out.read_bytes()))


class _Checkpointed(torch.nn.Module):
    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.block, x, use_reentrant=False)


if __name__ == "__main__":
    for name, make in (("demo_markers.pt.trace.json.gz", markers_trace),
                       ("demo_plain.pt.trace.json.gz", plain_trace)):
        dest = HERE / name
        if dest.exists():
            print(f"kept {dest}")
            continue
        make(dest)
        print(f"wrote {dest} ({dest.stat().st_size:,} bytes)")
