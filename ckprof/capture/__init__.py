"""Capture side of ckprof (imports torch): profile training steps with markers.

Public API::

    capture(out_dir, *, wait=1, warmup=1, active=3, repeat=1, skip_first=0,
            with_stack=False, gzip=True, nsys=False, markers=True,
            record_shapes=True) -> Capture        # context manager, .step(), .trace_paths
    profile_step(out_dir, **same)                  # decorator: one call = one step
    phase(name)                                    # explicit ckprof::phase::<name> range
    checkpoint(fn, *args, name=None, use_reentrant=False, **kwargs)
    instrument_checkpointing()                     # markers for existing torch checkpoint calls

Stage contract: writes Chrome traces (``*.pt.trace.json.gz``) whose ``ckprof``
top-level key holds the capture metadata described in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import sys as _sys
import types as _types
from typing import Any

from ckprof.capture.regions import checkpoint, instrument_checkpointing, region_name
from ckprof.capture.session import Capture, CaptureWarning, capture, phase, profile_step

__all__ = [
    "Capture",
    "CaptureWarning",
    "capture",
    "checkpoint",
    "instrument_checkpointing",
    "phase",
    "profile_step",
    "region_name",
]


# NOTE [ ckprof.capture is both a package and a function ]
# ``ckprof.capture(...)`` is the public context manager, but importing any submodule
# (``ckprof.capture.session``) makes Python bind the *package* to the attribute
# ``ckprof.capture``, shadowing the lazily resolved function. Making the package
# module callable keeps ``ckprof.capture(out_dir=...)`` working in either case.
class _CallableModule(_types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Capture:
        return capture(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
