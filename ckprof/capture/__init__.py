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

import sys
import types
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


# NOTE [ Callable capture package ]
# ``ckprof.capture`` is both this package and its public function ``capture``: importing
# any submodule (``ckprof.capture.session``...) makes the import system set the parent's
# attribute ``ckprof.capture`` to the PACKAGE, shadowing the function that
# ckprof/__init__.py resolves lazily. So the package is made callable and forwards to
# its function: ``ckprof.capture(out_dir)`` works whichever happened first. It is the
# only public name that is also a module (``compare`` and ``sweep`` live in
# ckprof/strategy/ under other module paths).


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return capture(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
