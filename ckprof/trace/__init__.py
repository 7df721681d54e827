"""Trace loading (stage 1): Chrome/Kineto JSON -> :class:`Trace`. No torch."""

from __future__ import annotations

from ckprof.trace.load import find_trace_files, is_trace_path, load_trace
from ckprof.trace.model import Trace

__all__ = ["Trace", "find_trace_files", "is_trace_path", "load_trace"]
