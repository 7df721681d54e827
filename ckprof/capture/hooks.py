"""Automatic phase markers: forward / backward / optimizer / zero_grad ranges opened
by hooks while a capture records, and the explicit ``ckprof.phase(name)`` range.

Contract: :class:`PhaseMarkers` is installed by :class:`ckprof.capture.session.Capture`
when a window starts recording and uninstalled when it stops; while installed it
opens and closes ``ckprof::forward`` / ``ckprof::backward`` / ``ckprof::optimizer`` /
``ckprof::zero_grad`` ranges (record_function + NVTX) without any edit to the user's
step. :data:`LIVE` holds the markers of the one capture running in this process.

# NOTE [ Phase markers ]
# forward   opens at the first module call of the step on the capture's thread
#           outside autograd (graph task id -1: recompute is not forward) and closes
#           when backward starts, the optimizer or zero_grad runs, a ckprof.phase
#           opens or closes, or the step ends. The first call is seen by a stand-in
#           for nn.Module.__call__ (no global module hook: torch.compile would warn),
#           :class:`ModuleCallWatch`, shared with ``ckprof run``'s step detector and
#           removed while nobody listens (a forward range open, backward running).
#           Code that torch.compile traces may call our hooks and
#           patched functions: they return at once under torch.compiler.is_compiling(),
#           so a compile during a window makes the same graph as without ckprof
#           (compiled code runs no Python hooks afterwards).
# backward  wraps torch.autograd.backward / torch.autograd.grad (Tensor.backward
#           calls the former), outermost call only.
# optimizer global optimizer step pre/post hooks (nested optimizers counted). A closure
#           optimizer step (LBFGS, Lightning's automatic optimization) runs forward and
#           backward inside optimizer.step: a module forward inside the step closes the
#           optimizer range and opens forward, and the optimizer range reopens when that
#           backward returns, so the closure's forward/backward are not optimizer time.
# zero_grad wraps torch.optim.Optimizer.zero_grad and nn.Module.zero_grad.
# Markers opened by hooks are closed before the next ProfilerStep starts, so ranges
# never straddle a step. ckprof.phase(...) closes the open automatic range on enter
# and on exit so that ranges nest; use it for step-level sections.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ckprof.capture.ranges import Range
from ckprof.capture.regions import NAMES
from ckprof.trace.markers import (
    BACKWARD,
    FORWARD,
    OPTIMIZER,
    PHASE_PREFIX,
    ZERO_GRAD,
    sanitize_region,
)

__all__ = ["LIVE", "LIVE_LOCK", "MODULE_CALLS", "ModuleCallWatch", "PhaseMarkers", "phase"]

_graph_task_id = torch._C._current_graph_task_id
# dynamo traces hooks and patched functions called inside compiled code: they must be
# no-ops there (a traced record_function breaks inductor; compiled code runs no
# Python per call anyway). Constant-folded to True while tracing, ~0.1 us otherwise.
_compiling = torch.compiler.is_compiling



class ModuleCallWatch:
    """The one stand-in for ``nn.Module.__call__`` that capture uses to see module calls
    (NOTE [ Phase markers ]: not a global module hook, which torch.compile warns about
    and fires twice). Listeners ``f(module, args)`` are armed and disarmed by their
    owners; the stand-in is in place exactly while one is armed. A call runs the armed
    listeners by priority, lowest first, including one armed by an earlier listener of
    the same call (``ckprof run``'s step detector ends a step, the capture's markers then
    open the next step's forward on that same call). Nothing runs while dynamo traces."""

    def __init__(self) -> None:
        self._armed: dict[Callable[[Any, Any], None], int] = {}
        self._standin: Any = None

    def arm(self, listener: Callable[[Any, Any], None], priority: int) -> None:
        self._armed[listener] = priority
        if self._standin is None:
            self._install()

    def disarm(self, listener: Callable[[Any, Any], None]) -> None:
        self._armed.pop(listener, None)
        if not self._armed and self._standin is not None:
            standin, self._standin = self._standin, None
            if torch.nn.Module.__call__ is standin:
                torch.nn.Module.__call__ = standin._ckprof_original  # type: ignore[method-assign]

    def _install(self) -> None:
        original = torch.nn.Module.__call__
        watch = self

        def module_call(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            if watch._armed and watch._standin is module_call and not _compiling():
                called: set[Any] = set()
                # by priority; one armed meanwhile runs too
                while todo := [f for f in sorted(watch._armed, key=watch._armed.__getitem__)
                               if f not in called]:
                    called.add(todo[0])
                    todo[0](module, args)
            return original(module, *args, **kwargs)

        module_call._ckprof_original = original  # type: ignore[attr-defined]
        torch.nn.Module.__call__ = module_call  # type: ignore[method-assign]
        self._standin = module_call


#: the module-call watch of this process; priorities: the step detector, then markers
MODULE_CALLS = ModuleCallWatch()
STEP_DETECTOR_PRIORITY, MARKERS_PRIORITY = 0, 1


class PhaseMarkers:
    """Automatic forward / backward / optimizer / zero_grad ranges (see NOTE above)."""

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self.installed = False
        self.owner = ""  # who runs the capture ("ckprof run", a callback), for messages
        self._current: Range | None = None
        self._kind: str | None = None
        self._opt_depth = 0
        self._handles: list[Any] = []
        self._saved: list[tuple[Any, str, Any]] = []
        self._armed = False

    # -- the forward "pre-hook" is armed only while no forward range is open. It is a
    # listener of MODULE_CALLS, not a global module hook: a global hook sends EVERY
    # module call through torch's slow path (~1.6 us each) and makes
    # torch.compile(module) warn and fire it twice; the watch sees the first module call
    # of the step (outside any compiled frame) and puts torch's __call__ back.
    def _arm(self) -> None:
        if not self._armed and self.installed:
            self._armed = True
            MODULE_CALLS.arm(self._on_forward_pre, MARKERS_PRIORITY)

    def _disarm(self) -> None:
        if self._armed:
            self._armed = False
            MODULE_CALLS.disarm(self._on_forward_pre)

    # -- state
    def _open(self, kind: str, name: str) -> None:
        self.close_current()
        self._kind = kind
        self._current = Range(name).open()

    def close_current(self, *, rearm: bool = True) -> None:
        rng, self._current, self._kind = self._current, None, None
        if rng is not None:
            rng.close()
        if rearm:
            self._arm()

    def step_boundary(self) -> None:
        """A training step ends: close the open range and forget optimizer nesting."""
        self._opt_depth = 0
        self.close_current()

    def _mine(self) -> bool:
        return threading.get_ident() == self.thread_id

    # -- hooks
    def _on_forward_pre(self, module: torch.nn.Module, args: Any) -> None:
        if _compiling():
            return
        # a forward inside an optimizer step is a closure's (see NOTE above)
        closure = self._kind == "optimizer" and self._opt_depth > 0
        if (self._kind is None or closure) and _graph_task_id() == -1 and self._mine():
            NAMES.add_root(module)
            NAMES.occurrences.clear()
            self._open("forward", FORWARD)
            self._disarm()

    def _on_optimizer_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if _compiling() or not self._mine():
            return
        self._opt_depth += 1
        if self._kind != "optimizer":
            self._open("optimizer", OPTIMIZER)

    def _on_optimizer_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if _compiling() or not self._mine():
            return
        self._opt_depth = max(0, self._opt_depth - 1)
        if self._opt_depth == 0 and self._kind == "optimizer":
            self.close_current()

    def _wrap_engine(self, original: Callable[..., Any]) -> Callable[..., Any]:
        markers = self

        @functools.wraps(original)
        def engine_entry(*args: Any, **kwargs: Any) -> Any:
            if _compiling() or _graph_task_id() != -1 or not markers._mine():
                return original(*args, **kwargs)
            markers.close_current(rearm=False)  # recompute calls modules: keep them fast
            try:
                with Range(BACKWARD):
                    return original(*args, **kwargs)
            finally:
                markers._arm()
                if markers._opt_depth > 0 and markers.installed:
                    # a closure's backward inside optimizer.step: the update follows
                    markers._open("optimizer", OPTIMIZER)

        engine_entry._ckprof_original = original  # type: ignore[attr-defined]
        return engine_entry

    def _wrap_zero_grad(self, original: Callable[..., Any]) -> Callable[..., Any]:
        markers = self

        @functools.wraps(original)
        def zero_grad(obj: Any, *args: Any, **kwargs: Any) -> Any:
            if _compiling() or not markers._mine():
                return original(obj, *args, **kwargs)
            if markers._kind != "optimizer":
                markers.close_current()
            with Range(ZERO_GRAD):
                return original(obj, *args, **kwargs)

        zero_grad._ckprof_original = original  # type: ignore[attr-defined]
        return zero_grad

    # -- install / uninstall
    def _patch(self, owner: Any, attr: str, replacement: Any) -> None:
        original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        self._saved.append((owner, attr, original))
        setattr(owner, attr, replacement)

    def install(self) -> None:
        if self.installed:
            return
        self.installed = True
        try:
            from torch.optim.optimizer import (
                register_optimizer_step_post_hook,
                register_optimizer_step_pre_hook,
            )

            self._arm()
            self._handles.append(register_optimizer_step_pre_hook(self._on_optimizer_pre))
            self._handles.append(register_optimizer_step_post_hook(self._on_optimizer_post))
            self._patch(torch.autograd, "backward", self._wrap_engine(torch.autograd.backward))
            self._patch(torch.autograd, "grad", self._wrap_engine(torch.autograd.grad))
            for cls in (torch.optim.Optimizer, torch.nn.Module):
                if "zero_grad" in cls.__dict__:
                    self._patch(cls, "zero_grad", self._wrap_zero_grad(cls.__dict__["zero_grad"]))
        except BaseException:
            self.uninstall()
            raise
        NAMES.count_occurrences = True

    def uninstall(self) -> None:
        self._opt_depth = 0
        self.close_current(rearm=False)
        self._disarm()
        for handle in self._handles:
            with contextlib.suppress(Exception):
                handle.remove()
        self._handles = []
        for owner, attr, original in reversed(self._saved):
            setattr(owner, attr, original)
        self._saved = []
        self.installed = False
        NAMES.count_occurrences = False
        NAMES.occurrences.clear()


LIVE_LOCK = threading.Lock()
LIVE: list[PhaseMarkers] = []  # the markers of the capture that is running (at most one)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """An explicit ``ckprof::phase::<name>`` range (record_function + NVTX).

    Costs a flag check when no profiler records. Inside a capture, the automatic
    range open at enter is closed first (ranges must nest), and so is one opened
    inside by the time it exits.
    """
    markers = LIVE[0] if LIVE else None
    if markers is not None and markers.installed and markers._mine():
        markers.close_current()
    rng = Range(PHASE_PREFIX + sanitize_region(name)).open()
    try:
        yield
    finally:
        if markers is not None and markers.installed and markers._mine():
            markers.close_current()
        rng.close()
