"""One ckprof marker range = a ``record_function`` range + an NVTX range.

Contract: :class:`Range` opens on ``open()`` / ``__enter__`` and closes on
``close()`` / ``__exit__`` (which never swallows an exception). The
``record_function`` half is emitted only while a torch profiler is recording
(``torch._C._autograd._profiler_enabled()``, ~0.06 us), so markers cost nothing
measurable outside an active window; the NVTX half is emitted while recording or
while :func:`force_nvtx` is on (``capture(nsys=True)`` active steps, or the
``CKPROF_NVTX=1`` environment variable for ``nsys`` runs without ``capture``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch.autograd.profiler import record_function

from ckprof.capture import nvtx as _nvtx

__all__ = ["Range", "force_nvtx", "markers_wanted", "suppress_markers"]

_profiler_enabled = torch._C._autograd._profiler_enabled


class _Flags:
    """Process-wide switches (plain attributes: read on every marker, so keep cheap)."""

    nvtx_forced: bool = os.environ.get("CKPROF_NVTX", "") not in ("", "0")
    suppressed: int = 0


FLAGS = _Flags()


def markers_wanted() -> bool:
    """True when a marker opened now would be recorded by some tool."""
    return FLAGS.suppressed == 0 and (FLAGS.nvtx_forced or _profiler_enabled())


def force_nvtx(on: bool) -> None:
    """Emit NVTX ranges even when the torch profiler is not recording."""
    FLAGS.nvtx_forced = bool(on) or os.environ.get("CKPROF_NVTX", "") not in ("", "0")


def suppress_markers(on: bool) -> None:
    """``capture(markers=False)``: no ckprof ranges while its windows run."""
    FLAGS.suppressed = max(0, FLAGS.suppressed + (1 if on else -1))


class Range:
    """A named marker range; re-usable after close, not re-entrant while open."""

    __slots__ = ("_nvtx", "_rf", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._rf: Any = None
        self._nvtx = False

    def open(self) -> Range:
        if FLAGS.suppressed:
            return self
        if _profiler_enabled():
            rf = record_function(self.name)
            rf.__enter__()
            self._rf = rf
            _nvtx.push_range(self.name)
            self._nvtx = True
        elif FLAGS.nvtx_forced:
            _nvtx.push_range(self.name)
            self._nvtx = True
        return self

    def close(self) -> None:
        if self._nvtx:
            self._nvtx = False
            _nvtx.pop_range()
        rf, self._rf = self._rf, None
        if rf is not None:
            # the profiler may have stopped underneath us: the range is gone anyway
            with contextlib.suppress(Exception):
                rf.__exit__(None, None, None)

    def __enter__(self) -> Range:
        return self.open()

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False
