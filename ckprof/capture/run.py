"""Profile a training run without editing it: the capture side of ``ckprof run`` and of
the framework callbacks (``ckprof.integrations.transformers`` / ``.lightning``).

Contract::

    schedule_from_steps("5:8") -> {"skip_first": 0, "wait": 4, "warmup": 1, "active": 3, "repeat": 1}
    RunSession(out_dir, schedule=..., detect_steps=True, ...)
        .start()                  capture + instrument_checkpointing (+ step detection)
        .step()                   one training step ended (framework callbacks)
        .finish(error=None) -> RunOutcome   stop; traces kept; why nothing, if nothing
    StepDetector(on_boundary)     ends a step after its optimizer step(s), see NOTE below
    publish_outcome(out_dir, key, outcome) / gather_outcomes(out_dir, key, world_size, timeout_s)
        the file hand-shake that lets rank 0 report on every rank's traces

A :class:`RunSession` owns one :class:`~ckprof.capture.session.Capture` (which reports
nothing itself: the session explains a run without traces in its own words),
``instrument_checkpointing()`` for the whole run (regions get module names), and, for
``ckprof run``, a :class:`StepDetector`. Nothing here prints; the command and the
callbacks decide what to say.

# NOTE [ Steps from optimizer hooks ]
# ``ckprof run`` cannot ask the script to call step(), so a training step ends when its
# optimizer step(s) end. Signals, all on the thread that started the run:
#   F = a module forward outside autograd's backward (recompute is not F), at most one
#       listener call per step: armed on MODULE_CALLS (capture/hooks.py, no global
#       module hook) only until it fires;
#   O = the end of an OUTERMOST optimizer.step (torch.optim's global post hook;
#       an optimizer stepping another one counts once).
# A step ends at the O that completes the step's run of optimizer steps after an F.
# How many optimizer steps make a run is learned: the number of O between two F's
# (1 until seen otherwise), so two optimizers stepping one after the other end the step
# after the second, and gradient accumulation (F F F F O) is one step. If fewer O than
# expected come before the next F (a GradScaler skipped one), the step ends at that F.
# A forward inside optimizer.step (LBFGS, Lightning's closure) is the step's forward.
# The boundary itself (Capture.step) is never made inside torch's hook loop: torch calls
# the post hooks inside the ``Optimizer.step#...`` record_function range and while
# iterating the hook dict, which Capture.step changes. Each optimizer class's ``step``
# (already wrapped by torch's profile_hook_step) gets an outer wrapper that makes the
# boundary right after it returns; optimizers built before the run get it at their first
# step, whose boundary then waits for the next F (or the end of the run).
# A script whose optimizer never steps (inference, a custom update rule) has no steps:
# the run says so instead of guessing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckprof.capture.hooks import MODULE_CALLS, STEP_DETECTOR_PRIORITY
from ckprof.capture.regions import instrument_checkpointing
from ckprof.capture.session import Capture
from ckprof.errors import UsageError

__all__ = [
    "RunOutcome",
    "RunSession",
    "StepDetector",
    "clear_outcomes",
    "env_rank",
    "gather_outcomes",
    "publish_outcome",
    "run_key",
    "schedule_from_steps",
]

_graph_task_id = torch._C._current_graph_task_id
_FORWARD_AT_NEXT = 1   # boundary due at the next forward (or the end of the run)
_AT_ONCE = 2           # boundary due as soon as the optimizer step returns


def schedule_from_steps(text: str) -> dict[str, int]:
    """``"A:B"`` -> the schedule recording steps A .. B-1 (Python slice, ProfilerStep#A
    to #B-1) with one warm-up step before A when A > 0. ``"A"`` = ``"A:A+1"``."""
    raw = str(text).strip()
    try:
        if ":" in raw:
            a_text, b_text = raw.split(":", 1)
            start, stop = int(a_text), int(b_text)
        else:
            start = int(raw)
            stop = start + 1
    except ValueError:
        raise UsageError(f"--steps {raw!r} is not START:STOP",
                         hint="e.g. --steps 5:8 profiles steps 5, 6 and 7") from None
    if start < 0 or stop <= start:
        raise UsageError(f"--steps {raw!r} selects no step",
                         hint="START:STOP with 0 <= START < STOP, e.g. --steps 5:8") from None
    warmup = 1 if start >= 1 else 0
    return {"skip_first": 0, "wait": start - warmup, "warmup": warmup,
            "active": stop - start, "repeat": 1}


# ----------------------------------------------------------------------------- steps


class StepDetector:
    """Calls ``on_boundary()`` when a training step ends (NOTE [ Steps from optimizer
    hooks ]). Counters: ``forward_passes`` (steps' first forwards seen),
    ``optimizer_steps`` (outermost), ``steps`` (boundaries made)."""

    def __init__(self, on_boundary: Callable[[], None], thread_id: int | None = None) -> None:
        self.on_boundary = on_boundary
        self.thread_id = threading.get_ident() if thread_id is None else thread_id
        self.installed = False
        self.forward_passes = 0
        self.optimizer_steps = 0
        self.steps = 0
        self.expected = 1
        self._run = 0
        self._forward_seen = False
        self._due = 0
        self._depth = 0
        self._armed = False
        self._handles: list[Any] = []
        self._wrapped: dict[type, Any] = {}
        self._saved_patch: Any = None

    # -- install
    def install(self) -> None:
        if self.installed:
            return
        from torch.optim.optimizer import (
            Optimizer,
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )

        self.installed = True
        self._handles.append(register_optimizer_step_pre_hook(self._on_optimizer_pre))
        self._handles.append(register_optimizer_step_post_hook(self._on_optimizer_post))
        original = Optimizer.__dict__.get("_patch_step_function")
        if original is not None:
            detector = self

            @functools.wraps(original)
            def patch_step_function(opt: Any) -> Any:
                result = original(opt)
                detector._wrap_class(type(opt))
                return result

            self._saved_patch = original
            Optimizer._patch_step_function = patch_step_function  # type: ignore[method-assign]
        self._arm()

    def uninstall(self) -> None:
        from torch.optim.optimizer import Optimizer

        self._disarm()
        for handle in self._handles:
            with contextlib.suppress(Exception):
                handle.remove()
        self._handles = []
        if self._saved_patch is not None:
            Optimizer._patch_step_function = self._saved_patch  # type: ignore[method-assign]
            self._saved_patch = None
        for cls, original in self._wrapped.items():
            if getattr(cls.__dict__.get("step"), "_ckprof_run_step", False):
                cls.step = original
        self._wrapped = {}
        self.installed = False

    def _arm(self) -> None:  # the step's first forward, seen like the markers see it
        if not self._armed and self.installed:
            self._armed = True
            MODULE_CALLS.arm(self._on_forward_pre, STEP_DETECTOR_PRIORITY)

    def _disarm(self) -> None:
        if self._armed:
            self._armed = False
            MODULE_CALLS.disarm(self._on_forward_pre)

    def _wrap_class(self, cls: type) -> None:
        original = cls.__dict__.get("step")
        if original is None or cls in self._wrapped or getattr(original, "_ckprof_run_step", False):
            return
        detector = self

        @functools.wraps(original)  # keeps torch's ``hooked`` flag: no second hook wrapper
        def step(opt: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(opt, *args, **kwargs)
            if detector._due == _AT_ONCE and detector._depth == 0 and detector._mine():
                detector._boundary()
            return out

        step._ckprof_run_step = True  # type: ignore[attr-defined]
        self._wrapped[cls] = original
        cls.step = step  # type: ignore[attr-defined]

    def _mine(self) -> bool:
        return threading.get_ident() == self.thread_id

    # -- signals
    def _on_forward_pre(self, module: Any, args: Any) -> None:
        if not self._mine() or _graph_task_id() != -1:
            return
        if self._depth == 0:
            if self._due:
                self._boundary()
            if self._run:
                self.expected = self._run
        elif self._run:
            self.expected = self._run
        self._run = 0
        if not self._forward_seen:
            self.forward_passes += 1
        self._forward_seen = True
        self._disarm()

    def _on_optimizer_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._mine():
            return
        self._depth += 1
        if self._depth == 1:
            self._wrap_class(type(optimizer))

    def _on_optimizer_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._mine():
            return
        self._depth = max(0, self._depth - 1)
        if self._depth:
            return
        self.optimizer_steps += 1
        self._run += 1
        if self._forward_seen:
            self._due = _AT_ONCE if self._run >= self.expected else _FORWARD_AT_NEXT
        self._arm()

    def _boundary(self) -> None:
        self._due = 0
        self._forward_seen = False
        self.steps += 1
        self.on_boundary()  # markers armed here still see this module call (MODULE_CALLS)
        self._arm()

    def flush(self) -> None:
        """The run is ending: a step whose optimizer step completed ends now."""
        if self._due:
            self._boundary()


# ----------------------------------------------------------------------------- session


@dataclass(frozen=True)
class RunOutcome:
    """What one process's run left: its traces, or why there are none."""

    rank: int = 0
    world_size: int = 1
    trace_paths: tuple[str, ...] = ()
    memory_timeline_paths: tuple[str, ...] = ()
    reason: str = ""                   # why no trace was written ("" when one was)
    steps: int = 0                     # training steps completed
    optimizer_steps: int = 0
    forward_passes: int = 0
    errors: tuple[str, ...] = ()       # windows not written and other capture problems
    schedule: dict[str, int] = field(default_factory=dict)
    warned: bool = False               # the reason was already warned about when it happened

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunOutcome:
        raw = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        raw = {k: v for k, v in raw.items() if k in known}
        for key in ("trace_paths", "memory_timeline_paths", "errors"):
            raw[key] = tuple(raw.get(key) or ())
        return cls(**raw)


def env_rank() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else the launcher's
    environment (torchrun, SLURM-style ``RANK`` / ``WORLD_SIZE``), else (0, 1)."""
    from ckprof.capture.metadata import distributed_rank

    rank, world, _known = distributed_rank()
    return rank, world


class RunSession:
    """One profiled run (see module doc). ``detect_steps``: find steps from optimizer
    hooks (``ckprof run``); else the caller calls :meth:`step` (framework callbacks)."""

    def __init__(self, out_dir: str | os.PathLike[str], *, schedule: dict[str, int],
                 detect_steps: bool = True, with_stack: bool = False, nsys: bool = False,
                 memory_timeline: bool = False, ab: bool = False, gzip: bool = True,
                 instrument: bool = True, owner: str = "ckprof run") -> None:
        options: dict[str, Any] = dict(schedule)
        options.update(with_stack=with_stack, nsys=nsys, gzip=gzip,
                       memory_timeline=memory_timeline)
        if ab:
            if "ab" not in inspect.signature(Capture).parameters:
                raise UsageError(
                    "--ab needs ckprof's A/B capture, which this ckprof does not have",
                    hint="Leave --ab out, or update ckprof")
            options["ab"] = True
        self.capture = Capture(out_dir, **options)
        self.capture.announce = False  # the session explains a run without traces
        self.capture.owner = owner
        self.owner = owner
        self.schedule = dict(self.capture.schedule)
        self.detect_steps = detect_steps
        self.instrument = instrument
        self.detector = StepDetector(self._step_ended) if detect_steps else None
        self._instrument_cm: Any = None
        self._started = False
        self._finished: RunOutcome | None = None
        self._framework_steps = 0

    def start(self) -> RunSession:
        if self._started:
            return self
        self.capture.start()
        self._started = True
        try:
            if self.instrument:
                self._instrument_cm = instrument_checkpointing()
                self._instrument_cm.__enter__()
            if self.detector is not None:
                self.detector.thread_id = threading.get_ident()
                self.detector.install()
        except BaseException:
            self.finish()
            raise
        return self

    def _step_ended(self) -> None:
        self.capture.step()

    def step(self) -> None:
        """One training step ended (for callers that know: framework callbacks)."""
        self._framework_steps += 1
        self.capture.step()

    @property
    def trace_paths(self) -> list[Path]:
        return self.capture.trace_paths

    def finish(self, error: BaseException | None = None) -> RunOutcome:
        """Stop the capture (idempotent). A window with completed steps is kept even
        when the run raised or was interrupted; the step in progress is marked partial
        (the analysis leaves it out)."""
        if self._finished is not None:
            return self._finished
        detector = self.detector
        if detector is not None:
            with contextlib.suppress(Exception):
                detector.flush()
            detector.uninstall()
        try:
            self.capture.stop(discard_partial=False, error=error)
        finally:
            if self._instrument_cm is not None:
                cm, self._instrument_cm = self._instrument_cm, None
                with contextlib.suppress(Exception):
                    cm.__exit__(None, None, None)
        rank, world = env_rank()
        cap = self.capture
        self._finished = RunOutcome(
            rank=rank, world_size=world,
            trace_paths=tuple(str(p) for p in cap.trace_paths),
            memory_timeline_paths=tuple(str(p) for p in cap.memory_timeline_paths),
            reason="" if cap.trace_paths else self._why_nothing(error),
            steps=cap.step_index,
            optimizer_steps=detector.optimizer_steps if detector else 0,
            forward_passes=detector.forward_passes if detector else 0,
            errors=tuple(cap.errors),
            schedule=dict(self.schedule),
            warned=bool(not cap.trace_paths and cap._already_warned_cause()),
        )
        return self._finished

    def _why_nothing(self, error: BaseException | None) -> str:
        cap = self.capture
        first = cap.first_active_step()
        span = cap.window_span()
        detector = self.detector
        if detector is not None and detector.optimizer_steps == 0 and not cap._skipped_other_profiler:
            seen = "the model ran forward but " if detector.forward_passes else ""
            return (f"{seen}no optimizer.step() was seen, so ckprof could not tell where a "
                    "training step ends and profiled nothing (a loop without an optimizer "
                    "is not guessed at). Profile such a loop with ckprof.capture() and "
                    "cap.step() in the script")
        if error is not None and cap.step_index < first + 1:
            text = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            return (f"the script raised {text} at step {cap.step_index}, before the first "
                    f"profiled step completed ({span} are profiled)")
        if cap.step_index < first + 1 and not cap._skipped_other_profiler:
            unit = "training step(s) (optimizer steps)" if detector is not None else "step(s)"
            n = max(1, cap.step_index)
            hint = f"--steps 0:{n}" if detector is not None else f'steps="0:{n}"'
            return (f"only {cap.step_index} {unit} completed, but {span} are profiled. "
                    f"Profile earlier steps ({hint}) or run longer")
        return cap.no_trace_reason or "the profiler produced no trace"


# ----------------------------------------------------------------------------- ranks

# NOTE [ Rank hand-shake ]
# Under torchrun every rank runs its own session and writes its own trace; rank 0
# reports on all of them. At the end (of the run, or of a window for the callbacks)
# each rank writes ``.ckprof-run-<key>-rank<R>.done`` (a RunOutcome as JSON, written to
# a temporary and renamed) into the output folder; rank 0 waits for all ``world_size``
# of them, at most ``timeout_s``, then reports what it has and names the ranks missing.
# No collective call: the process group may be gone at the end of a script, and a rank
# that died must not hang rank 0. ``key`` is the same on every rank of one launch
# (torchrun's run id, master address and port, world size) plus a tag (the window);
# rank 0 removes stale files of its key when it starts. Ranks on other hosts need a
# shared output folder; without one rank 0 reports the ranks it can see.


def run_key(tag: str = "") -> str:
    """The same short key on every rank of one distributed launch."""
    parts = [os.environ.get(k, "") for k in
             ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")]
    digest = hashlib.sha1("|".join(parts).encode()).hexdigest()[:10]
    return f"{digest}{('-' + tag) if tag else ''}"


def _done_path(out_dir: Path, key: str, rank: int) -> Path:
    return out_dir / f".ckprof-run-{key}-rank{rank}.done"


def publish_outcome(out_dir: str | os.PathLike[str], key: str, outcome: RunOutcome) -> Path | None:
    """Write this rank's outcome for rank 0 (never raises: returns None on failure)."""
    directory = Path(out_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        target = _done_path(directory, key, outcome.rank)
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
        tmp.write_text(outcome.to_json(), encoding="utf-8")
        os.replace(tmp, target)
        return target
    except OSError:
        return None


def clear_outcomes(out_dir: str | os.PathLike[str], key: str) -> None:
    """Remove hand-shake files whose key starts with ``key`` (stale ones at start)."""
    directory = Path(out_dir)
    if not directory.is_dir():
        return
    for path in directory.glob(f".ckprof-run-{key}*.done"):
        with contextlib.suppress(OSError):
            path.unlink()


def gather_outcomes(out_dir: str | os.PathLike[str], key: str, world_size: int, *,
                    timeout_s: float = 120.0, poll_s: float = 0.1) -> tuple[list[RunOutcome], list[int]]:
    """Rank 0: the outcomes of ranks 0 .. world_size-1 (waiting up to ``timeout_s``)
    and the ranks whose outcome never came. Consumed files are removed."""
    directory = Path(out_dir)
    deadline = time.monotonic() + max(0.0, timeout_s)
    found: dict[int, RunOutcome] = {}
    while True:
        for rank in range(world_size):
            if rank in found:
                continue
            path = _done_path(directory, key, rank)
            try:
                found[rank] = RunOutcome.from_json(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, TypeError):
                continue
        if len(found) == world_size or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    for rank in found:
        with contextlib.suppress(OSError):
            _done_path(directory, key, rank).unlink()
    missing = [r for r in range(world_size) if r not in found]
    return [found[r] for r in sorted(found)], missing
