"""The analysis pipeline (no torch): Trace -> PhaseTable -> TimeAttribution, PhaseMemory
-> Analysis.

Stages, one module each, each a pure function of the previous stage's output:

- :mod:`ckprof.analysis.detection`: the recompute-detection methods (light);
- :mod:`ckprof.analysis.intervals`: interval arithmetic on sorted half-open spans;
- :mod:`ckprof.analysis.phases`: steps, phase segments and recompute occurrences;
- :mod:`ckprof.analysis.attribution`: wall and GPU time per step x phase and per region;
- :mod:`ckprof.analysis.memory`: memory levels and the peak of each phase;
- :mod:`ckprof.analysis.bundle`: :class:`Analysis`, the bundle of all three, and
  :func:`load` / :func:`analyze`.

``Analysis``, ``analyze`` and ``load`` are resolved on first use, so importing a light
submodule (``detection``) does not load pandas.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Analysis", "analyze", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ckprof.analysis import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'ckprof.analysis' has no attribute {name!r}")
