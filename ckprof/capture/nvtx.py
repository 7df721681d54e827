"""NVTX ranges for ckprof markers (domain ``ckprof``, stable colours per phase).

Contract: :func:`push_range` / :func:`pop_range` never raise and cost next to
nothing when no tool (Nsight Systems) is attached. They use the ``nvtx`` package
when installed (domains and colours supported, works on CPU-only machines), else
torch's own NVTX binding when the build has one (``torch._C._nvtx``; no domain, the
name carries the ``ckprof::`` prefix anyway), else they do nothing.

# NOTE [ NVTX on CPU builds ]
# On a CPU build ``torch.cuda.nvtx.range_push`` raises "NVTX functions not
# installed"; ``hasattr(torch._C, "_nvtx")`` is the guard. The ``nvtx`` package
# works without a GPU: without an injected tool every call is a no-op (~0.1 us with
# pre-built attributes). Any failure while setting up disables NVTX for the process
# instead of raising into the user's training step.
"""

from __future__ import annotations

from typing import Any

from ckprof.trace.markers import (
    BACKWARD,
    CHECKPOINT_PREFIX,
    FORWARD,
    NVTX_DOMAIN,
    OPTIMIZER,
    PHASE_COLORS,
    RECOMPUTE_PREFIX,
    ZERO_GRAD,
)

__all__ = ["backend", "color_of", "pop_range", "push_range", "reset"]

_FIXED_PHASE: dict[str, str] = {
    FORWARD: "forward",
    BACKWARD: "backward",
    OPTIMIZER: "optimizer",
    ZERO_GRAD: "optimizer",
}


def color_of(name: str) -> int:
    """ARGB colour (``0xFFRRGGBB``) of a marker name, from ``PHASE_COLORS``."""
    phase = _FIXED_PHASE.get(name)
    if phase is None:
        if name.startswith(RECOMPUTE_PREFIX):
            phase = "recompute"
        elif name.startswith(CHECKPOINT_PREFIX):
            phase = "forward"
        else:
            phase = "other"
    return 0xFF000000 | int(PHASE_COLORS[phase].lstrip("#"), 16)


class _Backend:
    """Lazily chosen NVTX implementation; ``kind`` is ``nvtx``, ``torch`` or ``none``."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self._domain: Any = None
        self._attrs: dict[str, Any] = {}
        self._torch_push: Any = None
        self._torch_pop: Any = None

    def setup(self) -> None:
        self.kind = "none"
        try:
            import nvtx  # type: ignore[import-not-found]

            self._domain = nvtx.get_domain(NVTX_DOMAIN)
            attr = self._domain.get_event_attributes(message="ckprof::probe", color=color_of(""))
            self._domain.push_range(attr)
            self._domain.pop_range()
            self.kind = "nvtx"
            return
        except Exception:
            self._domain = None
        try:
            import torch

            if hasattr(torch._C, "_nvtx"):
                push = torch._C._nvtx.rangePushA
                pop = torch._C._nvtx.rangePop
                push("ckprof::probe")
                pop()
                self._torch_push, self._torch_pop = push, pop
                self.kind = "torch"
        except Exception:
            self.kind = "none"

    def push(self, name: str) -> None:
        if self.kind is None:
            self.setup()
        try:
            if self.kind == "nvtx":
                attr = self._attrs.get(name)
                if attr is None:
                    attr = self._domain.get_event_attributes(message=name, color=color_of(name))
                    if len(self._attrs) < 10_000:
                        self._attrs[name] = attr
                self._domain.push_range(attr)
            elif self.kind == "torch":
                self._torch_push(name)
        except Exception:  # never break a training step over a profiler range
            self.kind = "none"

    def pop(self) -> None:
        try:
            if self.kind == "nvtx":
                self._domain.pop_range()
            elif self.kind == "torch":
                self._torch_pop()
        except Exception:
            self.kind = "none"


_BACKEND = _Backend()


def push_range(name: str) -> None:
    """Open an NVTX range ``name`` in domain ``ckprof``. Never raises."""
    _BACKEND.push(name)


def pop_range() -> None:
    """Close the innermost range opened by :func:`push_range`. Never raises."""
    _BACKEND.pop()


def backend() -> str:
    """Which implementation is in use: ``nvtx``, ``torch`` or ``none``."""
    if _BACKEND.kind is None:
        _BACKEND.setup()
    return _BACKEND.kind or "none"


def reset() -> None:
    """Forget the chosen backend (tests use this after patching ``nvtx``)."""
    global _BACKEND
    _BACKEND = _Backend()
