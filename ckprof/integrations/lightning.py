"""PyTorch Lightning callback: profile a few training steps by adding one line.

    from ckprof.integrations.lightning import CkprofCallback

    trainer = lightning.pytorch.Trainer(..., callbacks=[CkprofCallback("traces/pl")])

Steps are Lightning's optimizer steps (a batch that advances ``trainer.global_step``:
``accumulate_grad_batches`` makes one step of several batches), checkpointed blocks
are instrumented (regions named after the LightningModule's submodules, e.g.
``blocks.0``), the closure Lightning runs inside ``optimizer.step`` is split into its
forward, backward and optimizer time, each rank writes its own trace, and when a window
ends rank 0 logs the analysis of every rank's trace (``log``, default stderr). A run
that ends without a trace, or with an exception, says why. ``pip install
'ckprof[lightning]'`` (the ``lightning`` package; ``pytorch_lightning`` alone works too).

Options are :class:`ckprof.integrations.framework.FrameworkProfiler`'s (``wait``,
``warmup``, ``active``, ``repeat``, ``skip_first``, ``steps="5:8"``, ``with_stack``,
``memory_timeline``, ``nsys``, ``fmt``, ``log``, ``rank_timeout``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ckprof.errors import OptionalDependencyError
from ckprof.integrations.framework import FrameworkProfiler

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning import Callback
    except ImportError as err:
        raise OptionalDependencyError(
            f"ckprof.integrations.lightning needs lightning ({err})",
            hint="pip install 'ckprof[lightning]'") from err

__all__ = ["CkprofCallback"]


class CkprofCallback(Callback):
    """Profile steps of a Lightning ``Trainer.fit`` (see module doc)."""

    def __init__(self, out_dir: str | os.PathLike[str] = "ckprof_traces", **options: Any) -> None:
        super().__init__()
        self.profiler = FrameworkProfiler(out_dir, owner="CkprofCallback (lightning)", **options)
        self._global_step = 0

    @property
    def trace_paths(self) -> list[Path]:
        """This rank's traces, in order."""
        return self.profiler.trace_paths

    @property
    def analysis(self) -> str:
        """The last analysis logged (rank 0), "" before the first window ends."""
        return self.profiler.analysis

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._global_step = int(trainer.global_step)
        self.profiler.start()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = int(trainer.global_step)
        if step != self._global_step:  # an optimizer step happened in this batch
            self._global_step = step
            self.profiler.step()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.profiler.finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.profiler.finish(error=exception)
