"""``ckprof.capture`` / ``ckprof.profile_step``: torch.profiler windows plus markers.

Contract: a :class:`Capture` runs ``torch.profiler.profile`` (``profile_memory=True``,
``record_shapes``, optional ``with_stack``, CPU + CUDA activities as available) over
the steps a torch-style schedule selects (``skip_first``, then ``repeat`` cycles of
``wait`` / ``warmup`` / ``active`` steps; ``repeat=0`` = forever). Each completed
window is written as one Chrome trace into ``out_dir`` under a name that never
replaces an existing file, carrying the ``ckprof`` metadata object at the top level
of the JSON. ``trace_paths`` lists the files written, in order.

# NOTE [ Capture lifecycle ]
# We drive the schedule ourselves and create a FRESH torch profiler for each window
# (at its first warmup step) and drop it when the window is saved. Consequences:
# wait / skip_first steps cost a counter increment (no profiler object, no
# ProfilerStep range), repeated windows cannot accumulate profiler state (memory stays
# flat), and ProfilerStep#N keeps N = the global step index (we seed the profiler's
# step counter). Phase markers (forward / backward / optimizer / zero_grad) exist only
# during active steps: global hooks and patches are installed when recording starts
# and removed when it stops. The torch.compile watcher (capture/compiled.py) runs from
# start() to stop(): models compile in the first steps, before any window.
#
# Failures never stop training: a window whose profiler cannot start, or whose file
# cannot be written, is skipped with ONE warning per capture (later reasons go to
# ``errors``). A window is exported to a hidden temporary name in out_dir, copied
# (gzip by default) into a second temporary with the ``ckprof`` metadata inserted as
# the first top-level key -- built in on_trace_ready, after the profiler stopped, so
# its gc scan never lands inside a recorded step -- and then hard-linked to its final
# name (atomic, fails if the name exists -> next free name); temporaries are removed
# on every path, so no half-written file ever carries a final name. An exception in the user's step propagates unchanged; the profiler
# is stopped and the unfinished window discarded, completed windows stay saved.
#
# # NOTE [ Phase markers ]
# forward   opens at the first module forward pre-hook of the step on the capture's
#           thread outside autograd (graph task id -1: recompute is not forward) and
#           closes when backward starts, the optimizer or zero_grad runs, a
#           ckprof.phase opens or closes, or the step ends. The global pre-hook is
#           removed while a forward range is open and during backward (a global
#           module hook slows every module call) and re-armed when they close.
#           torch.compile(module) warns when it is called while global module hooks
#           exist: while recording, OptimizedModule.__call__ opens the forward range
#           (removing our hook) before torch looks. Code that torch.compile traces
#           may call our hooks and patched functions: they return at once under
#           torch.compiler.is_compiling(), so a compile during a window makes the same
#           graph as without ckprof (compiled code runs no Python hooks afterwards).
# backward  wraps torch.autograd.backward / torch.autograd.grad (Tensor.backward
#           calls the former), outermost call only.
# optimizer global optimizer step pre/post hooks (nested optimizers counted).
# zero_grad wraps torch.optim.Optimizer.zero_grad and nn.Module.zero_grad.
# Markers opened by hooks are closed before the next ProfilerStep starts, so ranges
# never straddle a step. ckprof.phase(...) closes the open automatic range on enter
# and on exit so that ranges nest; use it for step-level sections.
"""

from __future__ import annotations

import contextlib
import functools
import gzip as _gzip
import inspect
import json
import os
import shutil
import socket
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.profiler import ProfilerAction, ProfilerActivity

from ckprof.capture import nvtx as _nvtx
from ckprof.capture import ranges as _ranges
from ckprof.capture.compiled import CompileWatcher, optimized_module_class
from ckprof.capture.metadata import (
    StorageSnapshot,
    build_metadata,
    distributed_rank,
    measure_memory_baseline,
    measure_memory_end,
)
from ckprof.capture.ranges import Range
from ckprof.capture.regions import NAMES
from ckprof.errors import CaptureError
from ckprof.markers import (
    BACKWARD,
    FORWARD,
    METADATA_KEY,
    OPTIMIZER,
    PHASE_PREFIX,
    ZERO_GRAD,
    sanitize_region,
)

__all__ = ["Capture", "CaptureWarning", "capture", "phase", "profile_step"]

F = TypeVar("F", bound=Callable[..., Any])

_graph_task_id = torch._C._current_graph_task_id
# dynamo traces hooks and patched functions called inside compiled code: they must be
# no-ops there (a traced record_function breaks inductor; compiled code runs no
# Python per call anyway). Constant-folded to True while tracing, ~0.1 us otherwise.
_compiling = torch.compiler.is_compiling
_RECORDING = (ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE)
_NEVER = 1 << 62


class CaptureWarning(RuntimeWarning):
    """A capture-side problem that did not stop training (trace not written, ...)."""


# ----------------------------------------------------------------------- phase markers


class _PhaseMarkers:
    """Automatic forward / backward / optimizer / zero_grad ranges (see NOTE above)."""

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self.installed = False
        self._current: Range | None = None
        self._kind: str | None = None
        self._opt_depth = 0
        self._handles: list[Any] = []
        self._saved: list[tuple[Any, str, Any]] = []
        self._forward_hook: Any = None

    # -- the forward pre-hook is armed only while no forward range is open: any global
    # module hook sends EVERY module call through torch's slow path (~1.6 us each)
    def _arm(self) -> None:
        if self._forward_hook is None and self.installed:
            from torch.nn.modules.module import register_module_forward_pre_hook

            self._forward_hook = register_module_forward_pre_hook(self._on_forward_pre)

    def _disarm(self) -> None:
        hook, self._forward_hook = self._forward_hook, None
        if hook is not None:
            hook.remove()  # safe inside the hook: torch iterates over a copy

    # -- state
    def _open(self, kind: str, name: str) -> None:
        self.close_current()
        self._kind = kind
        self._current = Range(name).open()

    def close_current(self, *, rearm: bool = True) -> None:
        rng, self._current, self._kind = self._current, None, None
        self._opt_depth = 0
        if rng is not None:
            rng.close()
        if rearm:
            self._arm()

    def _mine(self) -> bool:
        return threading.get_ident() == self.thread_id

    # -- hooks
    def _on_forward_pre(self, module: torch.nn.Module, args: Any) -> None:
        if _compiling():
            return
        if self._kind is None and _graph_task_id() == -1 and self._mine():
            NAMES.add_root(module)
            NAMES.occurrences.clear()
            self._open("forward", FORWARD)
            self._disarm()

    def _on_optimizer_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if _compiling() or not self._mine():
            return
        if self._kind == "optimizer":
            self._opt_depth += 1
            return
        self._open("optimizer", OPTIMIZER)
        self._opt_depth = 1

    def _on_optimizer_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if _compiling():
            return
        if self._kind == "optimizer" and self._mine():
            self._opt_depth -= 1
            if self._opt_depth <= 0:
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

        engine_entry._ckprof_original = original  # type: ignore[attr-defined]
        return engine_entry

    def _wrap_optimized_call(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """torch.compile(module) warns when global module hooks exist as it is called:
        open the forward (which disarms our global pre-hook) before it looks."""
        markers = self

        @functools.wraps(original)
        def __call__(module: Any, *args: Any, **kwargs: Any) -> Any:
            if markers._forward_hook is not None:
                # the compiled model is the root its regions are named in, as in eager
                markers._on_forward_pre(getattr(module, "_orig_mod", module), args)
            return original(module, *args, **kwargs)

        __call__._ckprof_original = original  # type: ignore[attr-defined]
        return __call__

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
            optimized = optimized_module_class()
            if optimized is not None and "__call__" in optimized.__dict__:
                self._patch(optimized, "__call__",
                            self._wrap_optimized_call(optimized.__dict__["__call__"]))
            self._patch(torch.autograd, "grad", self._wrap_engine(torch.autograd.grad))
            for cls in (torch.optim.Optimizer, torch.nn.Module):
                if "zero_grad" in cls.__dict__:
                    self._patch(cls, "zero_grad", self._wrap_zero_grad(cls.__dict__["zero_grad"]))
        except BaseException:
            self.uninstall()
            raise
        NAMES.count_occurrences = True

    def uninstall(self) -> None:
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


_ACTIVE_LOCK = threading.Lock()
_ACTIVE: list[Capture] = []  # the capture whose window markers are live (at most one)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """An explicit ``ckprof::phase::<name>`` range (record_function + NVTX).

    Costs a flag check when no profiler records. Inside a capture, the automatic
    range open at enter is closed first (ranges must nest), and so is one opened
    inside by the time it exits.
    """
    markers = _ACTIVE[0]._markers if _ACTIVE else None
    if markers is not None and markers.installed and markers._mine():
        markers.close_current()
    rng = Range(PHASE_PREFIX + sanitize_region(name)).open()
    try:
        yield
    finally:
        if markers is not None and markers.installed and markers._mine():
            markers.close_current()
        rng.close()


# ----------------------------------------------------------------------------- capture


def _check_schedule(**values: int) -> dict[str, int]:
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CaptureError(
                f"ckprof.capture: {key}={value!r} is not a non-negative integer",
                hint="Pass whole numbers of steps, e.g. wait=1, warmup=1, active=3",
            )
        out[key] = value
    if out["active"] < 1:
        raise CaptureError(
            "ckprof.capture: active=0 records nothing", hint="Use active=1 or more"
        )
    return out


class Capture:
    """One profiling session; use as a context manager and call :meth:`step`.

    Attributes: ``trace_paths`` (list of Path written, in order), ``errors`` (reasons
    of windows not written), ``step_index`` (steps completed), ``finished`` (the
    schedule has no window left).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str] = "ckprof_traces",
        *,
        wait: int = 1,
        warmup: int = 1,
        active: int = 3,
        repeat: int = 1,
        skip_first: int = 0,
        with_stack: bool = False,
        gzip: bool = True,
        nsys: bool = False,
        markers: bool = True,
        record_shapes: bool = True,
    ) -> None:
        self.schedule = _check_schedule(
            wait=wait, warmup=warmup, active=active, repeat=repeat, skip_first=skip_first
        )
        self.out_dir = Path(out_dir)
        self.with_stack = bool(with_stack)
        self.gzip = bool(gzip)
        self.nsys = bool(nsys)
        self.markers = bool(markers)
        self.record_shapes = bool(record_shapes)
        self.trace_paths: list[Path] = []
        self.errors: list[str] = []
        self.step_index = 0
        self.finished = False
        self._cycle = wait + warmup + active
        self._started = False
        self._stopped = False
        self._warned = False
        self._prof: Any = None
        self._window = -1
        self._window_start = 0
        self._discard = False
        self._recording = False
        self._baseline: dict[str, dict[str, Any]] = {}
        self._start_storages: StorageSnapshot | None = None
        self._markers = _PhaseMarkers(threading.get_ident())
        self._compiles = CompileWatcher()
        self._cuda_range = False
        self._nvtx_forced = False
        self._nvtx_step_open = False
        self._next_open = 0
        self._last_active = 0

    # -- schedule
    def _action(self, step: int) -> ProfilerAction:
        s = self.schedule
        if step < s["skip_first"]:
            return ProfilerAction.NONE
        rel = step - s["skip_first"]
        if s["repeat"] > 0 and rel >= self._cycle * s["repeat"]:
            return ProfilerAction.NONE
        m = rel % self._cycle
        if m < s["wait"]:
            return ProfilerAction.NONE
        if m < s["wait"] + s["warmup"]:
            return ProfilerAction.WARMUP
        if m < self._cycle - 1:
            return ProfilerAction.RECORD
        return ProfilerAction.RECORD_AND_SAVE

    def _window_of(self, step: int) -> int:
        return (step - self.schedule["skip_first"]) // self._cycle

    def _schedule_done(self, step: int) -> bool:
        s = self.schedule
        return s["repeat"] > 0 and step - s["skip_first"] >= self._cycle * s["repeat"]

    # -- context manager
    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            self.stop(discard_partial=exc_type is not None)
        except Exception as err:
            if exc_type is None:
                raise
            self._warn(f"stopping the profiler failed after an error in the step: {err}")
        return False

    def start(self) -> Capture:
        """Begin step 0 (starts a profiler at once when step 0 is in a window)."""
        if self._started:
            return self
        with _ACTIVE_LOCK:
            if _ACTIVE:
                raise CaptureError(
                    "ckprof.capture: another ckprof capture is already running in this process",
                    hint="Finish it (leave its with-block) before starting a new one",
                )
            _ACTIVE.append(self)
        self._started = True
        self._markers.thread_id = threading.get_ident()
        self._compiles.start()  # torch.compile usually compiles in the first steps
        # Pick the NVTX backend now (importing nvtx takes milliseconds): done lazily, it
        # would land inside the first marker of the first profiled step.
        _nvtx.backend()
        if self.nsys and not torch.cuda.is_available():
            self._warn(
                "nsys=True needs CUDA (torch.cuda.profiler.start); this process has no "
                "CUDA device, so no cudaProfilerApi range is emitted. Profiling continues"
            )
        self._begin_step()
        self._nvtx_step_begin()
        return self

    def step(self) -> None:
        """Mark the end of one training step (call once per step, after optimizer.step)."""
        if self._prof is None:
            # fast path: outside a window a step is a counter increment
            if not self._started or self._stopped:
                return
            self.step_index += 1
            if self.step_index >= self._next_open:
                self._begin_step()
                self._nvtx_step_begin()
            return
        current = self._action(self.step_index)
        if self._recording:
            self._markers.close_current()
        self._nvtx_step_end()
        prof = self._prof
        if prof is not None:
            # the next step's action as seen by THIS window (NONE once it is over)
            following = self.step_index + 1
            nxt = (
                self._action(following)
                if self._window_of(following) == self._window
                else ProfilerAction.NONE
            )
            if current in _RECORDING and nxt not in _RECORDING:
                self._end_recording(prof)
            elif current not in _RECORDING and nxt in _RECORDING:
                self._begin_recording_baseline()
            try:
                prof.step()
            except Exception as err:
                self._abandon_window(f"torch profiler failed at step {self.step_index}: {err}")
            if self._prof is not None:
                if nxt in _RECORDING and not self._recording:
                    self._enter_recording()
                elif nxt == ProfilerAction.NONE:
                    self._close_profiler()
        self.step_index += 1
        self._begin_step()
        self._nvtx_step_begin()

    # NOTE [ Steps in Nsight ]
    # Nsight Systems does not see torch's ProfilerStep#N record_function, so with
    # nsys=True each recorded step is also an NVTX range ``ProfilerStep#N`` in the
    # ckprof domain; ckprof.nsys reads it back as the step, exactly like the trace.
    def _nvtx_step_begin(self) -> None:
        if self.nsys and self._recording and not self._nvtx_step_open:
            _nvtx.push_range(f"ProfilerStep#{self.step_index}")
            self._nvtx_step_open = True

    def _nvtx_step_end(self) -> None:
        if self._nvtx_step_open:
            self._nvtx_step_open = False
            _nvtx.pop_range()

    def _begin_step(self) -> None:
        step = self.step_index
        if self._schedule_done(step):
            self.finished = True
            self._next_open = _NEVER
            return
        action = self._action(step)
        if self._prof is None and action in (ProfilerAction.WARMUP, *_RECORDING):
            self._open_profiler(step, action)
        self._next_open = self._next_window_start(step + 1)

    def _next_window_start(self, step: int) -> int:
        """First step >= ``step`` at which a window (warmup or active) begins."""
        s = self.schedule
        if step <= s["skip_first"]:
            first = s["skip_first"] + s["wait"]
            return first if step <= first else step
        rel = step - s["skip_first"]
        k, m = divmod(rel, self._cycle)
        if m > s["wait"]:
            k += 1  # inside this cycle's window already: the next cycle's
        if s["repeat"] > 0 and k >= s["repeat"]:
            return s["skip_first"] + self._cycle * s["repeat"]  # where "finished" is set
        return s["skip_first"] + k * self._cycle + s["wait"]

    # -- profiler per window
    def _open_profiler(self, step: int, action: ProfilerAction) -> None:
        window = self._window_of(step)
        self._window = window
        self._window_start = step
        self._discard = False
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available() and not self.nsys:
            activities.append(ProfilerActivity.CUDA)

        def window_schedule(n: int) -> ProfilerAction:
            if self._window_of(n) != window or n < step:
                return ProfilerAction.NONE
            return self._action(n)

        if torch._C._autograd._profiler_enabled():
            self._warn(
                f"another torch profiler is already recording; window {window} is skipped "
                "so as not to break it (one profiler per process). Stop the other profiler "
                "or remove ckprof.capture"
            )
            return
        if action in _RECORDING:
            self._begin_recording_baseline()
        try:
            prof = torch.profiler.profile(
                activities=activities,
                schedule=window_schedule,
                on_trace_ready=self._on_trace_ready,
                record_shapes=self.record_shapes,
                profile_memory=True,
                with_stack=self.with_stack,
            )
            # ProfilerStep#N with N = global step (see NOTE [ Capture lifecycle ])
            prof.step_num = step
            prof.current_action = action
            if hasattr(prof, "_prev_schedule_action"):
                prof._prev_schedule_action = action
            prof.start()
        except Exception as err:
            self._warn(f"could not start torch.profiler for window {window}: {err}")
            return
        self._prof = prof
        if action in _RECORDING:
            self._enter_recording()

    def _begin_recording_baseline(self) -> None:
        NAMES.seen.clear()
        try:
            self._start_storages = StorageSnapshot()
            self._baseline = measure_memory_baseline(self._start_storages)
        except Exception as err:  # pragma: no cover - defensive
            self._start_storages = None
            self._baseline = {}
            self.errors.append(f"memory baseline not measured: {err}")

    def _enter_recording(self) -> None:
        self._recording = True
        if self.markers:
            try:
                self._markers.install()
            except Exception as err:
                self._warn(f"phase markers could not be installed: {err}")
        else:
            _ranges.suppress_markers(True)
        if self.nsys:
            _ranges.force_nvtx(True)
            self._nvtx_forced = True
            if torch.cuda.is_available():
                try:
                    torch.cuda.synchronize()
                    torch.cuda.profiler.start()
                    self._cuda_range = True
                except Exception as err:
                    self._warn(f"torch.cuda.profiler.start() failed: {err}")

    def _leave_recording(self) -> None:
        self._nvtx_step_end()
        if not self._recording:
            return
        self._recording = False
        if self._markers.installed:
            self._markers.uninstall()
        if not self.markers:
            _ranges.suppress_markers(False)
        if self._cuda_range:
            self._cuda_range = False
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
                torch.cuda.profiler.stop()
        if self._nvtx_forced:
            self._nvtx_forced = False
            _ranges.force_nvtx(False)

    def _end_recording(self, prof: Any) -> None:
        """The window's last active step is ending: markers out (before the profiler
        stops; the metadata is built after it stopped, in ``_on_trace_ready``)."""
        self._leave_recording()
        self._last_active = self.step_index

    def _window_metadata(self) -> dict[str, Any]:
        """The ``ckprof`` object of the window being saved (see NOTE [ Memory baseline ]).

        Runs in on_trace_ready, after the profiler stopped: the gc scan it does never
        shows up inside a ProfilerStep of the trace."""
        try:
            memory_end = measure_memory_end(self._start_storages)
        except Exception as err:  # pragma: no cover - defensive
            memory_end = {}
            self.errors.append(f"window {self._window}: memory_end not measured: {err}")
        self._start_storages = None
        metadata = build_metadata(
            schedule=self.schedule,
            markers=self.markers,
            memory_baseline=self._baseline,
            memory_end=memory_end,
            regions=dict(NAMES.seen),
            window=self._window,
            steps=(self._first_active(), self._last_active),
            with_stack=self.with_stack,
            nsys=self.nsys,
        )
        compiled = self._compiles.metadata(roots=list(NAMES.roots))
        if compiled:
            metadata["compiled"] = compiled
        return metadata

    def _first_active(self) -> int:
        if self._action(self._window_start) == ProfilerAction.WARMUP:
            return self._window_start + self.schedule["warmup"]
        return self._window_start

    def _close_profiler(self) -> None:
        prof, self._prof = self._prof, None
        if prof is None:
            return
        try:
            prof.stop()
        except Exception as err:
            self.errors.append(f"window {self._window}: profiler stop failed: {err}")

    def _abandon_window(self, reason: str) -> None:
        self._leave_recording()
        self._discard = True
        self._close_profiler()
        self._warn(reason)

    # -- stop
    def stop(self, *, discard_partial: bool = False) -> None:
        """Stop profiling. An unfinished window is saved (its completed steps), unless
        ``discard_partial`` (used when the step raised). Idempotent."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        self.finished = True
        try:
            prof = self._prof
            if prof is not None:
                was_recording = self._recording
                if was_recording and not discard_partial:
                    self._markers.close_current()
                    self._end_recording(prof)
                else:
                    self._leave_recording()
                if discard_partial or not was_recording:
                    self._discard = True
                self._close_profiler()
            else:
                self._leave_recording()
        finally:
            self._compiles.stop()
            with _ACTIVE_LOCK:
                if self in _ACTIVE:
                    _ACTIVE.remove(self)

    # -- writing
    def _on_trace_ready(self, prof: Any) -> None:
        if self._discard:
            return
        try:
            metadata = self._window_metadata()
            path = _write_trace(prof, self.out_dir, self._stem(), gzip=self.gzip,
                                metadata=metadata)
        except Exception as err:
            self._warn(
                f"{self.out_dir}: trace of window {self._window} not written "
                f"({type(err).__name__}: {err}). Training continues; check that the "
                "directory is writable and has free space"
            )
        else:
            self.trace_paths.append(path)

    def _stem(self) -> str:
        rank, _, initialised = distributed_rank()
        host = socket.gethostname().split(".")[0] or "host"
        host = "".join(c if c.isalnum() or c in "-_" else "-" for c in host)
        rank_part = f"_rank{rank}" if initialised else ""
        return f"{host}_{os.getpid()}{rank_part}_{max(self._window, 0)}"

    def _warn(self, reason: str) -> None:
        self.errors.append(reason)
        if not self._warned:
            self._warned = True
            warnings.warn(f"ckprof: {reason}", CaptureWarning, stacklevel=3)


def _write_trace(prof: Any, out_dir: Path, stem: str, *, gzip: bool,
                 metadata: dict[str, Any]) -> Path:
    """Export ``prof`` to a fresh file in out_dir with ``metadata`` under the top-level
    key ``ckprof`` (see NOTE [ Capture lifecycle ])."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = ".pt.trace.json.gz" if gzip else ".pt.trace.json"
    token = uuid.uuid4().hex[:8]
    raw = out_dir / f".{stem}.{token}.raw.json"
    tmp = out_dir / f".{stem}.{token}.tmp{ext}"
    try:
        prof.export_chrome_trace(str(raw))
        _check_complete_json(raw)
        opener = functools.partial(_gzip.open, compresslevel=6) if gzip else open
        with open(raw, "rb") as src, opener(tmp, "wb") as dst:
            _copy_with_metadata(src, dst, metadata)
        return _place_without_overwrite(tmp, out_dir, stem, ext)
    finally:
        for leftover in (raw, tmp):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _copy_with_metadata(src: Any, dst: Any, metadata: dict[str, Any]) -> None:
    """Copy a Chrome-trace JSON object, inserting ``"ckprof": metadata`` as its first
    key. Streams: the trace is never parsed or held in memory."""
    head = src.read(1 << 16)
    brace = head.find(b"{")
    if brace < 0 or head[:brace].strip():
        raise OSError("the profiler's export is not a JSON object")
    dst.write(head[: brace + 1])
    dst.write(b'"' + METADATA_KEY.encode() + b'": ')
    dst.write(json.dumps(metadata, sort_keys=True).encode())
    rest = head[brace + 1:]
    dst.write(b"," if rest.lstrip()[:1] not in (b"}", b"") else b"")
    dst.write(rest)
    shutil.copyfileobj(src, dst, 1 << 20)


def _check_complete_json(path: Path) -> None:
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        raise OSError(f"the profiler wrote nothing to {path.name}")
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 64))
        tail = fh.read().rstrip()
    if not tail.endswith(b"}"):
        raise OSError(f"the profiler's export of {path.name} is incomplete (disk full?)")


def _place_without_overwrite(tmp: Path, out_dir: Path, stem: str, ext: str) -> Path:
    """Give ``tmp`` the first free name ``stem[-k]ext``; never replaces a file."""
    for k in range(10_000):
        target = out_dir / (f"{stem}{ext}" if k == 0 else f"{stem}-{k}{ext}")
        try:
            os.link(tmp, target)  # atomic; FileExistsError when taken
        except FileExistsError:
            continue
        except OSError:
            # no hard links here (some network / FAT file systems)
            if target.exists():
                continue
            os.replace(tmp, target)
            return target
        return target
    raise OSError(f"no free file name for {stem}{ext} in {out_dir}")


def capture(out_dir: str | os.PathLike[str] = "ckprof_traces", **options: Any) -> Capture:
    """Profile the steps of a training loop; call ``.step()`` after each step.

    Takes exactly :class:`Capture`'s options (``wait``, ``warmup``, ``active``,
    ``repeat``, ``skip_first``, ``with_stack``, ``gzip``, ``nsys``, ``markers``,
    ``record_shapes``)::

        with ckprof.capture(out_dir="traces/run1") as cap:
            for batch in loader:
                train_step(batch)
                cap.step()
        cap.trace_paths

    ``nsys=True`` brackets the active steps with ``torch.cuda.profiler.start/stop``
    (for ``nsys profile --capture-range=cudaProfilerApi``), forces NVTX ranges there
    and leaves CUDA activity to Nsight (the torch trace keeps CPU ops and memory).
    """
    return Capture(out_dir, **options)


def profile_step(out_dir: str | os.PathLike[str] = "ckprof_traces", **options: Any) -> Callable[[F], F]:
    """Decorator: each call of the function is one step of a :func:`capture` (same
    options, checked now).

    The capture starts at the first call and stops by itself when the schedule is
    done; after that (and in wait steps) a call costs a couple of attribute checks.
    The decorated function gets ``.ckprof_capture`` (its :class:`Capture`) and
    ``.trace_paths``. An exception in the function stops the capture (completed
    windows stay saved) and propagates unchanged.
    """
    Capture(out_dir, **options)  # bad options fail here, not at the first step (nothing starts)

    def decorate(fn: F) -> F:
        cap = Capture(out_dir, **options)
        done = [False]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if done[0]:
                return fn(*args, **kwargs)
            cap.start()  # no-op once started
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                done[0] = True
                cap.stop(discard_partial=True)
                raise
            cap.step()
            if cap.finished:
                done[0] = True
                cap.stop()
            return result

        wrapper.ckprof_capture = cap  # type: ignore[attr-defined]
        wrapper.trace_paths = cap.trace_paths  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


# help(ckprof.capture) / help(ckprof.profile_step) show every option of Capture
capture.__signature__ = inspect.signature(Capture).replace(return_annotation="Capture")  # type: ignore[attr-defined]
profile_step.__signature__ = inspect.signature(Capture).replace(  # type: ignore[attr-defined]
    return_annotation="Callable[[F], F]")
