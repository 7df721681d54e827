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

from ckprof._callable_module import make_module_callable
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


# ``ckprof.capture`` is both this module and its function: NOTE [ Callable module ].
make_module_callable(__name__, "capture")
