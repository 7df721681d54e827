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
# on every path, so no half-written file ever carries a final name (ckprof/capture/
# writer.py). An exception in the user's step propagates unchanged; the profiler
# is stopped and the unfinished window discarded, completed windows stay saved.
#
# NOTE [ A/B capture ]
# ``ab=True`` runs the window's steps alternately with checkpointing on and off
# (NOTE [ A/B switch ] in capture/ab.py; instrument_checkpointing() is entered for the
# capture's lifetime so torch's own checkpoint calls are reached too). Active steps
# follow on, off, off, on (repeated), so a linear drift of the machine's speed hits
# both variants alike; warm-up steps alternate and end with "off", so both variants
# (and the allocator at the larger footprint) are warm before recording. Each
# recorded step starts with a short ``ckprof::variant::<on|off>`` range inside its
# ProfilerStep, and the window's metadata lists the variant of every active step
# (``ab.steps``). An "off" step needs the memory checkpointing saves: when it runs
# out of memory inside :meth:`Capture.run_step` or a ``profile_step(ab=True)``
# function, ckprof records it (``ab.oom``; a ``ckprof::variant::oom`` range; the
# step is excluded), frees memory, reruns the step with checkpointing on and keeps
# every later step on -- training goes on, and the report says "without
# checkpointing this step does not fit". A plain ``with`` loop cannot be rerun: the
# error propagates after the completed steps are saved with the out-of-memory noted.
# The CPU path is the same code (a CPU allocator failure, or a simulated
# ``torch.OutOfMemoryError``, takes it).
# The profiler costs a little per op and the "on" steps run more ops (the recompute),
# so A/B under the profiler reads a few points dear. The ``wait`` steps before a window
# therefore alternate too (same on, off, off, on order; the first of each block is not
# counted) and are timed by the wall clock between ``step()`` calls, without any
# profiler: metadata ``ab.unprofiled`` = [[step, variant, ms], ...]; the analysis
# reports that cost next to the profiled one. Use wait=8 or more to get it.
# NOTE [ Never a silent nothing ]
# A capture that ends without writing a trace says why, ONCE, as a CaptureWarning
# (stderr): step() never called, fewer steps than the schedule needs, an exception
# before the first window completed, another profiler recording. A reason already
# warned about when it happened (another profiler, a write failure) is not repeated.
# ``no_trace_reason`` keeps the text. A capture still open when the interpreter exits
# (a @profile_step function called fewer times than its schedule) is stopped by an
# atexit hook, which saves the active steps it completed. While a profiler exists,
# torch's own stderr chatter is filtered out (ckprof/capture/noise.py).
#
# When stop() saves an unfinished window, the step in progress (step() not called for
# it yet) is in the trace too; the metadata names it (``partial_step``) and the
# analysis leaves it out unless it is the only step.
#
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.profiler import ProfilerAction, ProfilerActivity

from ckprof.capture import noise as _noise
from ckprof.capture import nvtx as _nvtx
from ckprof.capture import ranges as _ranges
from ckprof.capture.ab import free_memory, is_out_of_memory, set_checkpointing
from ckprof.capture.compiled import CompileWatcher
from ckprof.capture.hooks import LIVE, LIVE_LOCK, PhaseMarkers, phase
from ckprof.capture.metadata import (
    StorageSnapshot,
    build_metadata,
    distributed_rank,
    measure_memory_baseline,
    measure_memory_end,
)
from ckprof.capture.regions import NAMES, instrument_checkpointing
from ckprof.capture.writer import write_trace
from ckprof.errors import CaptureError
from ckprof.trace.markers import AB_OFF, AB_ON, OOM_VARIANT, variant_marker

__all__ = ["Capture", "CaptureWarning", "capture", "phase", "profile_step"]

F = TypeVar("F", bound=Callable[..., Any])

_RECORDING = (ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE)
_NEVER = 1 << 62


class CaptureWarning(RuntimeWarning):
    """A capture-side problem that did not stop training (trace not written, ...)."""


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
    schedule has no window left), ``no_trace_reason`` (after stop: why no trace was
    written, "" when one was), ``memory_timeline_paths`` (torch memory timelines
    written with ``memory_timeline=True``).

    ``memory_timeline=True`` also saves torch's memory timeline of each window next to
    its trace (``<trace stem>.raw.json.gz``, read by ``ckprof plot --kind
    categories``); torch's memory profiler needs Python stacks, so it implies
    ``with_stack=True``.
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
        ab: bool = False,
        memory_timeline: bool = False,
    ) -> None:
        self.schedule = _check_schedule(
            wait=wait, warmup=warmup, active=active, repeat=repeat, skip_first=skip_first
        )
        if ab and active < 2:
            raise CaptureError(
                f"ckprof.capture: ab=True needs at least 2 active steps, not active={active}",
                hint="Use active=8 or more: each variant's median and spread come from its steps",
            )
        self.out_dir = Path(out_dir)
        self.memory_timeline = bool(memory_timeline)
        # torch's memory profiler (export_memory_timeline) needs stacks and shapes
        self.with_stack = bool(with_stack) or self.memory_timeline
        if self.memory_timeline:
            record_shapes = True
        self.gzip = bool(gzip)
        self.nsys = bool(nsys)
        self.markers = bool(markers)
        self.record_shapes = bool(record_shapes)
        self.trace_paths: list[Path] = []
        self.memory_timeline_paths: list[Path] = []
        self.errors: list[str] = []
        #: windows whose trace could not be written (each also warned, in ``errors``)
        self.trace_write_failures = 0
        self._start_failed = False  # torch.profiler could not start (warned)
        self.step_index = 0
        self.finished = False
        self.no_trace_reason = ""
        #: set by a driver (ckprof run, framework callbacks) that reports for itself
        self.announce = True
        self.owner = ""
        self._raised: BaseException | None = None
        self._raised_step = -1
        self._noise = False
        self._atexit = False
        self._skipped_other_profiler = False
        self._partial_step = -1
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
        self._markers = PhaseMarkers(threading.get_ident())
        self._compiles = CompileWatcher()
        self._cuda_range = False
        self._nvtx_forced = False
        self._nvtx_step_open = False
        self._next_open = 0
        self._last_active = 0
        # A/B (see NOTE [ A/B capture ])
        self.ab = bool(ab)
        self.ab_oom: list[dict[str, Any]] = []
        self._variant: str | None = None
        self._ab_steps: dict[int, str] = {}
        self._ab_excluded: set[int] = set()
        self._ab_off_fits = True
        self._instrumenting: Any = None
        # unprofiled A/B steps (wait steps), timed by the wall clock: [step, variant, ms]
        self._ab_timed: list[list[Any]] = []
        self._ab_t0 = 0.0
        self._ab_step_failed = False

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
        discard = exc_type is not None
        if exc is not None and self._ab_out_of_memory(exc):
            # a with-loop cannot be rerun: keep the completed steps, the OOM noted
            self.errors.append("the out-of-memory happened in a plain with-loop; use "
                               "cap.run_step(fn, ...) or profile_step(ab=True) to keep training alive")
            discard = False
        try:
            self.stop(discard_partial=discard, error=exc)
        except Exception as err:
            if exc_type is None:
                raise
            self._warn(f"stopping the profiler failed after an error in the step: {err}")
        return False

    def start(self) -> Capture:
        """Begin step 0 (starts a profiler at once when step 0 is in a window)."""
        if self._started:
            return self
        with LIVE_LOCK:
            if LIVE:
                owner = getattr(LIVE[0], "owner", "")
                raise CaptureError(
                    "ckprof.capture: another ckprof capture is already running in this process"
                    + (f" ({owner})" if owner else ""),
                    hint=("Remove ckprof.capture / profile_step from the script: "
                          f"{owner} already profiles it" if owner else
                          "Finish it (leave its with-block) before starting a new one"),
                )
            self._markers.owner = self.owner
            LIVE.append(self._markers)
        self._started = True
        atexit.register(self._stop_at_exit)
        self._atexit = True
        self._markers.thread_id = threading.get_ident()
        self._compiles.start()  # torch.compile usually compiles in the first steps
        if self.ab:
            self._instrumenting = instrument_checkpointing()
            self._instrumenting.__enter__()
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
        if self.ab:
            self._ab_t0 = time.perf_counter()
        return self

    def step(self) -> None:
        """Mark the end of one training step (call once per step, after optimizer.step)."""
        if self._prof is None:
            # fast path: outside a window a step is a counter increment
            if not self._started or self._stopped:
                return
            if self.ab:
                self._ab_time_step()
            self.step_index += 1
            if self.step_index >= self._next_open:
                self._begin_step()
                self._nvtx_step_begin()
            elif self.ab:
                self._set_variant(self._ab_variant(self.step_index, ProfilerAction.NONE))
            return
        current = self._action(self.step_index)
        if self._recording:
            self._markers.step_boundary()
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
        if self.ab:
            self._ab_t0 = time.perf_counter()
            self._ab_step_failed = False

    # NOTE [ Steps in Nsight ]
    # Nsight Systems does not see torch's ProfilerStep#N record_function, so with
    # nsys=True each recorded step is also an NVTX range ``ProfilerStep#N`` in the
    # ckprof domain; ckprof.trace.nsys reads it back as the step, exactly like the trace.
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
            self._set_variant(None)
            return
        action = self._action(step)
        if self._prof is None and action in (ProfilerAction.WARMUP, *_RECORDING):
            self._open_profiler(step, action)
        self._next_open = self._next_window_start(step + 1)
        if self.ab:
            self._set_variant(self._ab_variant(step, action))

    # -- A/B (see NOTE [ A/B capture ])
    def _ab_variant(self, step: int, action: ProfilerAction) -> str | None:
        s = self.schedule
        rel = step - s["skip_first"]
        m = rel % self._cycle - s["wait"]
        if action == ProfilerAction.WARMUP:
            variant = AB_OFF if (s["warmup"] - m) % 2 == 1 else AB_ON
        elif action in _RECORDING:
            variant = AB_ON if (m - s["warmup"]) % 4 in (0, 3) else AB_OFF
        elif rel >= 0 and m < 0 and not self._schedule_done(step):
            # a wait step: alternated too, and timed without the profiler
            variant = AB_ON if (m + s["wait"]) % 4 in (0, 3) else AB_OFF
        else:
            return None
        return AB_ON if variant == AB_OFF and not self._ab_off_fits else variant

    def _ab_time_step(self) -> None:
        """A wait step ended: record its wall time (unprofiled A/B, NOTE [ A/B capture ])."""
        now = time.perf_counter()
        s = self.schedule
        first_of_block = (self.step_index - s["skip_first"]) % self._cycle == 0
        if (self._variant is not None and not self._ab_step_failed and not first_of_block
                and len(self._ab_timed) < 100_000):
            self._ab_timed.append([self.step_index, self._variant, round((now - self._ab_t0) * 1e3, 6)])
        self._ab_step_failed = False
        self._ab_t0 = time.perf_counter()

    def _set_variant(self, variant: str | None) -> None:
        if variant is None and self._variant is None:
            return
        self._variant = variant
        set_checkpointing(variant != AB_OFF)
        if variant is not None and self._recording:
            self._tag(variant)

    def _tag(self, variant: str) -> None:
        self._ab_steps[self.step_index] = variant
        _ranges.Range(variant_marker(variant)).open().close()

    def tag_step(self, variant: str, *, exclude: bool = False) -> None:
        """Tag the step that is starting with a variant name (e.g. a sweep's policy).

        Call it first thing in the step. Recorded steps get a ``ckprof::variant::<name>``
        range and an entry in the metadata's ``ab.steps``; ``exclude`` lists the step in
        ``ab.excluded`` (a warm-up step after switching, say). Not with ``ab=True``, which
        tags steps itself."""
        if self.ab:
            raise CaptureError("ckprof.capture: tag_step() is for manual variants; ab=True tags steps itself",
                               hint="Leave ab=False to tag steps yourself")
        if self._recording:
            self._tag(str(variant))
            if exclude:
                self._ab_excluded.add(self.step_index)

    def _ab_out_of_memory(self, err: BaseException) -> bool:
        """An error in the user's step: when it is an out-of-memory in an A/B "off"
        step, record it and switch checkpointing back on (True); else False."""
        if not (self.ab and self._variant == AB_OFF and is_out_of_memory(err)):
            return False
        step = self.step_index
        text = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        self._ab_off_fits = False
        self._ab_step_failed = True
        self.ab_oom.append({"step": step, "recorded": bool(self._recording),
                            "error": f"{type(err).__name__}: {text}"})
        if self._recording:
            self._markers.close_current()
            self._ab_excluded.add(step)
            _ranges.Range(variant_marker(OOM_VARIANT)).open().close()
        self._variant = AB_ON
        set_checkpointing(True)
        self._warn(
            f"without checkpointing step {step} does not fit (out of memory: {text[:120]}); "
            "ckprof measures the A/B 'off' variant no more and keeps checkpointing on"
        )
        return True

    def run_step(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one training step ``fn(*args, **kwargs)``, then :meth:`step`.

        With ``ab=True`` an out-of-memory in an "off" step is caught: ckprof records
        "without checkpointing this step does not fit", frees memory and reruns
        ``fn`` with checkpointing on, so training continues (see NOTE [ A/B capture ]).
        Any other exception propagates unchanged. Returns ``fn``'s result."""
        result = self._call_step(fn, args, kwargs)
        self.step()
        return result

    def _call_step(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        rerun = False
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not self._ab_out_of_memory(err):
                raise
            rerun = True  # outside the except block: the failed attempt's frames are freed
        if rerun:
            free_memory()
        return fn(*args, **kwargs)

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
            self._skipped_other_profiler = True
            self._warn(
                f"another torch profiler is already recording; window {window} is skipped "
                "so as not to break it (one profiler per process). Stop the other profiler "
                "or remove ckprof.capture"
            )
            return
        if action in _RECORDING:
            self._begin_recording_baseline()
        self._noise = _noise.acquire()
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
            self._release_noise()
            self._start_failed = True
            self._warn(f"could not start torch.profiler for window {window}: {err}")
            return
        self._prof = prof
        if action in _RECORDING:
            self._enter_recording()

    def _begin_recording_baseline(self) -> None:
        NAMES.seen.clear()
        self._ab_steps = {}
        self._ab_excluded = set()
        try:
            self._start_storages = StorageSnapshot()
            self._baseline = measure_memory_baseline(self._start_storages)
        except Exception as err:  # pragma: no cover - defensive
            self._start_storages = None
            self._baseline = {}
            self._warn(f"memory baseline not measured ({type(err).__name__}: {err}): CPU "
                       "peaks of this window are relative to profiling start")

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
            ab=self._ab_metadata(),
        )
        compiled = self._compiles.metadata(roots=list(NAMES.roots))
        if compiled:
            metadata["compiled"] = compiled
        return metadata

    def _ab_metadata(self) -> dict[str, Any] | None:
        """The ``ab`` object of the window being saved (None when nothing was tagged)."""
        if not self.ab and not self._ab_steps:
            return None
        steps = {str(k): v for k, v in sorted(self._ab_steps.items())}
        out: dict[str, Any] = {
            "mode": "checkpointing" if self.ab else "tagged",
            "variants": list(dict.fromkeys(self._ab_steps.values())),
            "steps": steps,
            "excluded": sorted(int(s) for s in self._ab_excluded),
        }
        if self.ab:
            out.update({
                "variants": [AB_ON, AB_OFF],
                "baseline": AB_OFF,
                "order": "on, off, off, on (repeated over the active steps)",
                "off_fits": self._ab_off_fits,
                "oom": [dict(o) for o in self.ab_oom],
                # wait steps before this window, alternated and timed without the profiler
                "unprofiled": [list(t) for t in self._ab_timed],
            })
            self._ab_timed = []
        return out

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
        finally:
            self._release_noise()

    def _release_noise(self) -> None:
        if self._noise:
            self._noise = False
            _noise.release()

    def window_completed_steps(self) -> int:
        """Active steps of the window being recorded that have completed (0 when no
        window is recording)."""
        if self._prof is None or not self._recording:
            return 0
        return max(0, self.step_index - self._first_active())

    def _abandon_window(self, reason: str) -> None:
        self._leave_recording()
        self._discard = True
        self._close_profiler()
        self._warn(reason)

    # -- stop
    def stop(self, *, discard_partial: bool = False, error: BaseException | None = None) -> None:
        """Stop profiling. An unfinished window is saved (its completed steps), unless
        ``discard_partial`` (used when the step raised; ``error`` is that exception, for
        the message when no trace was written). Idempotent. When no trace was written
        at all, says why once (NOTE [ Never a silent nothing ])."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        self.finished = True
        if error is not None:
            self._raised, self._raised_step = error, self.step_index
        if self._atexit:
            self._atexit = False
            atexit.unregister(self._stop_at_exit)
        try:
            prof = self._prof
            if prof is not None:
                was_recording = self._recording
                if was_recording and self.window_completed_steps() == 0:
                    # only the unfinished step was recorded: not a measurement
                    discard_partial = True
                if was_recording and not discard_partial:
                    self._partial_step = self.step_index
                    self._markers.step_boundary()
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
            if self.ab:
                self._variant = None
                set_checkpointing(True)
                inst, self._instrumenting = self._instrumenting, None
                if inst is not None:
                    inst.__exit__(None, None, None)
            self._release_noise()
            with LIVE_LOCK:
                if self._markers in LIVE:
                    LIVE.remove(self._markers)
        if not self.trace_paths:
            self.no_trace_reason = self.explain_no_trace()
            if self.announce and self.no_trace_reason and not self._already_warned_cause():
                warnings.warn(f"ckprof: no trace written to {self.out_dir}: {self.no_trace_reason}",
                              CaptureWarning, stacklevel=3)

    def _stop_at_exit(self) -> None:
        """atexit: a capture still open when the interpreter exits (a profile_step
        function called fewer times than its schedule needs) saves what it completed."""
        self._atexit = False
        with contextlib.suppress(Exception):
            self.stop()

    def _already_warned_cause(self) -> bool:
        """The reason nothing was written was warned about when it happened."""
        return self._warned and (self._skipped_other_profiler or self._start_failed
                                 or self.trace_write_failures > 0)

    def first_active_step(self) -> int:
        """The first step the schedule records (skip_first + wait + warmup)."""
        s = self.schedule
        return s["skip_first"] + s["wait"] + s["warmup"]

    def window_span(self) -> str:
        """The steps the schedule's first window records: ``step N`` or ``steps N-M``."""
        first, active = self.first_active_step(), self.schedule["active"]
        return f"steps {first}-{first + active - 1}" if active > 1 else f"step {first}"

    def explain_no_trace(self) -> str:
        """Why this capture wrote no trace, in one sentence with what to do ("" when it
        wrote one or has not stopped)."""
        if self.trace_paths or not self._stopped:
            return ""
        s = self.schedule
        first = self.first_active_step()
        plan = (f"the schedule (skip_first={s['skip_first']}, wait={s['wait']}, "
                f"warmup={s['warmup']}, active={s['active']}) records {self.window_span()}")
        if self._skipped_other_profiler:
            return ("another torch profiler was recording, so ckprof skipped its window(s). "
                    "Stop the other profiler or remove ckprof.capture")
        if self._raised is not None:
            err = self._raised
            text = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            return (f"the step raised {text} at step {self._raised_step}, before any window "
                    f"completed ({plan}); the unfinished window was discarded. Fix the error, "
                    "or let the window finish before it")
        if self.step_index == 0:
            return (f"step() was never called, so no step was completed ({plan}). Call "
                    "cap.step() once per training step (after optimizer.step()), or use "
                    "@ckprof.profile_step or `ckprof run`")
        if self.step_index < first + 1 and not self.trace_write_failures:
            return (f"only {self.step_index} step(s) completed but {plan}, so at least "
                    f"{first + 1} are needed ({first + s['active']} for a full window). Run "
                    "more steps, or lower wait/warmup")
        if self.errors:
            return self.errors[0]
        return "the profiler produced no trace"

    # -- writing
    def _on_trace_ready(self, prof: Any) -> None:
        if self._discard:
            return
        try:
            metadata = self._window_metadata()
            if self._partial_step >= 0:
                metadata["partial_step"] = int(self._partial_step)
            path = write_trace(prof, self.out_dir, self._stem(), gzip=self.gzip,
                                metadata=metadata)
        except Exception as err:
            self.trace_write_failures += 1
            self._warn(
                f"{self.out_dir}: trace of window {self._window} not written "
                f"({type(err).__name__}: {err}). Training continues; check that the "
                "directory is writable and has free space"
            )
        else:
            self.trace_paths.append(path)
            if self.memory_timeline:
                self._write_memory_timeline(prof, path)

    def _write_memory_timeline(self, prof: Any, trace_path: Path) -> None:
        """torch's categorised memory timeline of this window, next to its trace."""
        from ckprof.capture.writer import write_memory_timeline

        try:
            self.memory_timeline_paths.append(write_memory_timeline(prof, trace_path))
        except Exception as err:
            self._warn(f"{self.out_dir}: memory timeline of window {self._window} not written "
                       f"({type(err).__name__}: {err}); the trace itself was written")

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


def capture(out_dir: str | os.PathLike[str] = "ckprof_traces", **options: Any) -> Capture:
    """Profile the steps of a training loop; call ``.step()`` after each step.

    Takes exactly :class:`Capture`'s options (``wait``, ``warmup``, ``active``,
    ``repeat``, ``skip_first``, ``with_stack``, ``gzip``, ``nsys``, ``markers``,
    ``record_shapes``, ``ab``, ``memory_timeline``)::

        with ckprof.capture(out_dir="traces/run1") as cap:
            for batch in loader:
                train_step(batch)
                cap.step()
        cap.trace_paths

    ``nsys=True`` brackets the active steps with ``torch.cuda.profiler.start/stop``
    (for ``nsys profile --capture-range=cudaProfilerApi``), forces NVTX ranges there
    and leaves CUDA activity to Nsight (the torch trace keeps CPU ops and memory).

    ``ab=True`` measures what checkpointing costs and buys in this very run: active
    steps alternate between checkpointing on and off (checkpointed callables called
    directly), each tagged in the trace; ``ckprof analyze`` then reports the measured
    step-time cost and peak-memory saving. Use ``active=12`` or more, ``wait=8`` or
    more (wait steps alternate too and are timed without the profiler), and
    ``cap.run_step(train_step, batch)`` so an out-of-memory in an "off" step is
    caught and training continues (see NOTE [ A/B capture ])::

        with ckprof.capture("traces/ab", wait=13, warmup=2, active=12, ab=True) as cap:
            for batch in loader:
                cap.run_step(train_step, batch)
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
                result = cap._call_step(fn, args, kwargs)
            except BaseException as err:
                done[0] = True
                cap.stop(discard_partial=True, error=err)
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
