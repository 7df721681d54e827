"""ckprof: what activation checkpointing costs and buys in a PyTorch training step.

Analysis (no torch needed)::

    a = ckprof.load("traces/run1/trace.json.gz")
    a.totals_table(); a.regions_table(); a.memory_table()

Capture (needs torch; imported lazily so ``import ckprof`` stays light)::

    @ckprof.profile_step(out_dir="traces/run1", wait=1, warmup=1, active=3)
    def train_step(batch): ...
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ckprof._version import __version__
from ckprof.errors import CkprofError

__all__ = [
    "Analysis",
    "CkprofError",
    "__version__",
    "capture",
    "checkpoint",
    "compare",
    "instrument_checkpointing",
    "load",
    "phase",
    "profile_step",
    "sweep",
]

# name -> module that defines it; resolved on first access so that the analysis
# side never pays for (or requires) torch.
_LAZY: dict[str, str] = {
    "load": "ckprof.analysis",
    "Analysis": "ckprof.analysis",
    "compare": "ckprof.strategy.compare",
    "sweep": "ckprof.strategy.runner",
    "capture": "ckprof.capture",
    "profile_step": "ckprof.capture",
    "phase": "ckprof.capture",
    "checkpoint": "ckprof.capture",
    "instrument_checkpointing": "ckprof.capture",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ckprof' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
