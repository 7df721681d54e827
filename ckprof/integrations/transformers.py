"""Hugging Face ``Trainer`` callback: profile a few training steps by adding one line.

    from ckprof.integrations.transformers import CkprofCallback

    trainer = Trainer(model, TrainingArguments(..., gradient_checkpointing=True),
                      train_dataset=ds, callbacks=[CkprofCallback("traces/hf")])

Steps are the Trainer's own optimizer steps (``on_step_end``: gradient accumulation is
one step), every checkpointed layer is instrumented (regions are named after the
model's modules, e.g. ``model.layers.0``), each rank writes its own trace, and when a
window ends rank 0 logs the analysis of every rank's trace (``log``, default stderr).
A run that ends without a trace says why; if training raises, the capture is stopped
at interpreter exit (completed steps kept). ``pip install 'ckprof[hf]'``.

ckprof's step N is the window of the Trainer's (N+1)-th optimizer step: step 0 starts
when training starts. Options are :class:`ckprof.integrations.framework.FrameworkProfiler`'s
(``wait``, ``warmup``, ``active``, ``repeat``, ``skip_first``, ``steps="5:8"``,
``with_stack``, ``memory_timeline``, ``nsys``, ``fmt``, ``log``, ``rank_timeout``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ckprof.errors import OptionalDependencyError
from ckprof.integrations.framework import FrameworkProfiler

try:
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - exercised without transformers
    raise OptionalDependencyError(
        f"ckprof.integrations.transformers needs transformers ({err})",
        hint="pip install 'ckprof[hf]'") from err

__all__ = ["CkprofCallback"]


class CkprofCallback(TrainerCallback):
    """Profile steps of a Hugging Face ``Trainer`` run (see module doc)."""

    def __init__(self, out_dir: str | os.PathLike[str] = "ckprof_traces", **options: Any) -> None:
        self.profiler = FrameworkProfiler(out_dir, owner="CkprofCallback (transformers)", **options)

    @property
    def trace_paths(self) -> list[Path]:
        """This rank's traces, in order."""
        return self.profiler.trace_paths

    @property
    def analysis(self) -> str:
        """The last analysis logged (rank 0), "" before the first window ends."""
        return self.profiler.analysis

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.profiler.start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.profiler.step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.profiler.finish()
