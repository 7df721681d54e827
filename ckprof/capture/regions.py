"""Checkpointed-region markers: ``ckprof.checkpoint`` and ``instrument_checkpointing``.

Contract: a checkpointed region's first (forward) run is wrapped in
``ckprof::checkpoint::<region>`` and its recomputation inside backward in
``ckprof::recompute::<region>`` (record_function + NVTX, see ``ranges.py``).
Numerics are untouched: the wrappers only add ranges around what torch runs.

# NOTE [ Recompute attribution ]
# Non-reentrant checkpoint (``use_reentrant=False``, the default here) calls
# ``context_fn()`` once per checkpoint call and gets ``(forward_cm, recompute_cm)``:
# forward_cm wraps the forward run, recompute_cm the recomputation (entered only
# inside backward, once per region per backward graph task). We compose with the
# user's context_fn (selective checkpointing is itself one) by wrapping each of its
# two context managers: our range opens first and closes last, so SAC's dispatch
# mode never sees our profiler ops. Early stop ends recomputation by raising
# ``_StopRecomputationError`` through recompute_cm.__exit__: we close the range and
# let it through (return the inner manager's answer, i.e. False) -- the recompute
# range then ends where torch stopped recomputing.
#
# Reentrant checkpoint rejects context_fn. There the *function* is wrapped: a call
# with ``torch._C._current_graph_task_id() != -1`` runs inside backward, so it is
# the recompute; otherwise it is the forward run.
#
# ``instrument_checkpointing()`` reaches code that calls torch's checkpoint itself
# (HF partials bound at import, checkpoint_wrapper, plain calls) by patching the
# module global ``torch.utils.checkpoint._checkpoint_without_reentrant_generator``
# (every non-reentrant call looks it up at call time) and swapping
# ``torch.utils.checkpoint.CheckpointFunction`` for a subclass whose forward wraps
# run_function (reentrant calls look that global up at call time too). The composable
# ``torch.distributed._composable.checkpoint(module)`` imported the generator by
# name: its module global is patched too when that module is already loaded.
#
# Region names: the checkpointed callable is looked through -- ``functools.partial``
# layers, ``__wrapped__`` wrappers (functools.wraps), bound methods -- to the module it
# runs: a module, a bound method of one, or a function whose first (partial-bound)
# argument is a module (HF transformers >= 5 checkpoints ``partial(forward, layer)``).
# A module is named by its qualified name in the root model the capture saw
# (``model.layers.0``; wrapper components such as ``_checkpoint_wrapped_module`` or
# ``_orig_mod`` left out, so a ``checkpoint_wrapper``-ed layer keeps its own path), else
# ``<Class><index>`` (index = order of first sight of that class); a method other than
# forward adds ``.<method>``. A ``checkpoint_sequential`` segment is named after the
# modules it runs (``body[0:2]``); a plain function by its ``__qualname__``. When the
# same name is checkpointed again within one forward pass (a shared block, a closure
# made per layer) the later ones get ``#1``, ``#2``... so every region in a pass has its
# own name; the counter resets at each forward. A checkpoint called INSIDE backward
# (an inner checkpoint re-run while an outer one is recomputed) is not a new forward
# run: it keeps the base name and is not counted (no phantom ``inner#1``).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.checkpoint as _tcp

from ckprof.capture.ab import SWITCH as _AB
from ckprof.capture.ab import checkpointing_off
from ckprof.capture.ranges import FLAGS as _FLAGS
from ckprof.capture.ranges import Range, markers_wanted
from ckprof.trace.markers import region_marker, sanitize_region

__all__ = ["checkpoint", "instrument_checkpointing", "region_name"]

_graph_task_id = torch._C._current_graph_task_id
_profiler_enabled = torch._C._autograd._profiler_enabled
_ORIG_GENERATOR = getattr(_tcp, "_checkpoint_without_reentrant_generator", None)
_ORIG_CHECKPOINT_FUNCTION = getattr(_tcp, "CheckpointFunction", None)
_NOOP_CONTEXT_FN = getattr(_tcp, "noop_context_fn", None)
_SAC_FACTORY = getattr(_tcp, "create_selective_checkpoint_contexts", None)
# modules known to bind the generator by name at import time
_GENERATOR_IMPORTERS: tuple[str, ...] = ("torch.distributed._composable.checkpoint_activation",)


# --------------------------------------------------------------------------- names


class _RegionNames:
    """Module -> region name, qualified relative to a root model when one is known."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.roots: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self._scanned: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self._qualified: weakref.WeakKeyDictionary[torch.nn.Module, str] = (
            weakref.WeakKeyDictionary()
        )
        self._fallback: weakref.WeakKeyDictionary[torch.nn.Module, str] = (
            weakref.WeakKeyDictionary()
        )
        self._class_counts: dict[str, int] = {}
        # per forward pass: base name -> times seen (for "#k" suffixes)
        self.occurrences: dict[str, int] = {}
        self.count_occurrences = False
        # regions marked while recording: name -> settings (for trace metadata)
        self.seen: dict[str, dict[str, bool]] = {}

    def add_root(self, module: torch.nn.Module) -> None:
        if module not in self.roots:
            self.roots.add(module)

    def of_module(self, module: torch.nn.Module) -> str:
        name = self._qualified.get(module)
        if name is not None:
            return name
        with self._lock:
            for root in list(self.roots):
                if root in self._scanned:
                    continue
                self._scanned.add(root)
                for qual, sub in root.named_modules():
                    qual = _visible_path(qual)
                    if qual and sub not in self._qualified:
                        self._qualified[sub] = qual
            name = self._qualified.get(module)
            if name is not None:
                return name
            name = self._fallback.get(module)
            if name is None:
                cls = type(module).__name__
                index = self._class_counts.get(cls, 0)
                self._class_counts[cls] = index + 1
                name = f"{cls}{index}"
                self._fallback[module] = name
            return name

    def unique(self, base: str) -> str:
        if not self.count_occurrences or _graph_task_id() != -1:
            # inside backward: a nested checkpoint re-run during an outer recompute
            return base
        k = self.occurrences.get(base, 0)
        self.occurrences[base] = k + 1
        return base if k == 0 else f"{base}#{k}"

    def note(self, region: str, *, use_reentrant: bool, sac: bool) -> None:
        if len(self.seen) < 10_000:
            self.seen[region] = {"use_reentrant": use_reentrant, "sac": sac}


NAMES = _RegionNames()


#: path components that wrappers insert between a model and the module they wrap
_WRAPPER_ATTRS = frozenset({"_checkpoint_wrapped_module", "_fsdp_wrapped_module", "_orig_mod"})
_FORWARD_METHODS = frozenset({"forward", "__call__", "_call_impl", "_wrapped_call_impl"})


def _visible_path(qual: str) -> str:
    """``layers.0._checkpoint_wrapped_module`` -> ``layers.0`` (the path a user sees)."""
    if not qual:
        return qual
    return ".".join(p for p in qual.split(".") if p not in _WRAPPER_ATTRS)


def _unwrap(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _look_through(fn: Any) -> tuple[Any, torch.nn.Module | None, str]:
    """``(innermost callable, module it runs or None, method name)`` of a checkpointed
    callable: through partials, ``__wrapped__`` wrappers and bound methods."""
    first_arg: Any = None
    for _ in range(64):  # wrappers can be stacked; never loop forever on a cycle
        if isinstance(fn, torch.nn.Module):
            return fn, fn, "forward"
        if isinstance(fn, functools.partial):
            if fn.args:
                first_arg = fn.args[0]  # an inner partial's args come first: inner wins
            fn = fn.func
            continue
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module):
            return fn, owner, getattr(fn, "__name__", "forward")
        wrapped = getattr(fn, "__wrapped__", None)
        if wrapped is None or wrapped is fn:
            break
        fn = wrapped
    if isinstance(first_arg, torch.nn.Module) and callable(fn):
        return fn, first_arg, getattr(fn, "__name__", "forward")
    return fn, None, ""


def _sequential_segment(fn: Any) -> str | None:
    """``body[0:2]`` for the closure torch's ``checkpoint_sequential`` checkpoints
    (``run_function(start, end, functions)``), else None."""
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None)
    if code is None or not cells or "checkpoint_sequential" not in getattr(
            fn, "__qualname__", ""):
        return None
    try:
        free = dict(zip(code.co_freevars, (c.cell_contents for c in cells), strict=True))
        start, end, functions = int(free["start"]), int(free["end"]), free["functions"]
        first, last = functions[start], functions[end]
    except (KeyError, ValueError, TypeError, IndexError):
        return None
    if not (isinstance(first, torch.nn.Module) and isinstance(last, torch.nn.Module)):
        return None
    a, b = NAMES.of_module(first), NAMES.of_module(last)
    pa, _, ia = a.rpartition(".")
    pb, _, ib = b.rpartition(".")
    if pa == pb and ia.isdigit() and ib.isdigit():
        return f"{pa}[{ia}:{int(ib) + 1}]" if pa else f"[{ia}:{int(ib) + 1}]"
    return a if first is last else f"{a}..{b}"


def region_name(fn: Callable[..., Any]) -> str:
    """Base region name of a checkpointed callable (see NOTE [ Recompute attribution ])."""
    target, module, method = _look_through(fn)
    if module is not None:
        base = NAMES.of_module(module)
        if method not in _FORWARD_METHODS:
            base = f"{base}.{method}"
        return sanitize_region(base)
    segment = _sequential_segment(target)
    if segment is not None:
        return sanitize_region(segment)
    qual = getattr(target, "__qualname__", None) or type(target).__name__
    return sanitize_region(qual.replace(".<locals>", ""))


# ------------------------------------------------------------------ context wrapping


class _MarkedContext:
    """Wraps one of context_fn's managers with a marker range; re-enterable.

    Each enter pushes its own range, so nested or repeated enters (a fresh stack per
    enter) close in order. The inner manager's ``__exit__`` decides suppression; we
    never swallow anything ourselves (early stop must pass through).
    """

    __slots__ = ("_inner", "_name", "_stack")

    def __init__(self, inner: Any, name: str) -> None:
        self._inner = inner
        self._name = name
        self._stack: list[Range] = []

    def __enter__(self) -> Any:
        rng = Range(self._name).open()
        try:
            value = self._inner.__enter__()
        except BaseException:
            rng.close()
            raise
        self._stack.append(rng)
        return value

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        rng = self._stack.pop() if self._stack else None
        try:
            return self._inner.__exit__(exc_type, exc, tb)
        finally:
            if rng is not None:
                rng.close()


class _MarkedContextFn:
    """A ``context_fn`` that returns the user's two managers wrapped with markers."""

    _ckprof_marked = True

    def __init__(self, inner: Callable[[], tuple[Any, Any]], region: str) -> None:
        self.inner = inner
        self.region = region

    def __call__(self) -> tuple[Any, Any]:
        forward_cm, recompute_cm = self.inner()
        return (
            _MarkedContext(forward_cm, region_marker(self.region, recompute=False)),
            _MarkedContext(recompute_cm, region_marker(self.region, recompute=True)),
        )


def _is_sac(context_fn: Any) -> bool:
    return _SAC_FACTORY is not None and _unwrap(context_fn) is _SAC_FACTORY


def _compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except Exception:
        return False


def _marked_context_fn(fn: Any, context_fn: Any) -> Any:
    """context_fn with markers, or context_fn itself when markers are not wanted."""
    if not markers_wanted() or getattr(context_fn, "_ckprof_marked", False) or _compiling():
        return context_fn
    if not torch.is_grad_enabled():
        return context_fn  # torch enters neither manager under no_grad
    region = NAMES.unique(region_name(fn))
    NAMES.note(region, use_reentrant=False, sac=_is_sac(context_fn))
    return _MarkedContextFn(context_fn, region)


class _MarkedRunFunction:
    """Reentrant checkpoint: the checkpointed function, with forward/recompute ranges."""

    _ckprof_marked = True

    def __init__(self, fn: Callable[..., Any], region: str) -> None:
        self.fn = fn
        self.forward_name = region_marker(region, recompute=False)
        self.recompute_name = region_marker(region, recompute=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self.recompute_name if _graph_task_id() != -1 else self.forward_name
        with Range(name):
            return self.fn(*args, **kwargs)


def _marked_run_function(fn: Any) -> Any:
    if not markers_wanted() or getattr(fn, "_ckprof_marked", False) or _compiling():
        return fn
    region = NAMES.unique(region_name(fn))
    NAMES.note(region, use_reentrant=True, sac=False)
    return _MarkedRunFunction(fn, region)


# ------------------------------------------------------------------- public: checkpoint

#: torch checkpoint keywords that are not the function's own (dropped on A/B "off")
_CHECKPOINT_KWARGS = frozenset(
    {"context_fn", "preserve_rng_state", "determinism_check", "debug", "early_stop"}
)


def _call_directly(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A/B "off" step: run the checkpointed callable as if it were not checkpointed
    (see NOTE [ A/B switch ] in capture/ab.py)."""
    own = {k: v for k, v in kwargs.items() if k not in _CHECKPOINT_KWARGS}
    return fn(*args, **own)



def checkpoint(
    fn: Callable[..., Any],
    *args: Any,
    name: str | None = None,
    use_reentrant: bool = False,
    **kwargs: Any,
) -> Any:
    """Drop-in for ``torch.utils.checkpoint.checkpoint`` that adds region markers.

    ``use_reentrant`` defaults to False (torch's recommendation); every other
    keyword (``context_fn``, ``preserve_rng_state``, ``determinism_check``,
    ``debug``, ``early_stop``, the function's own kwargs) passes through unchanged.
    ``name`` overrides the region name. Markers are added only while a profiler
    records (or NVTX is forced); otherwise this is torch's checkpoint plus a few
    attribute reads. In an "off" step of ``capture(ab=True)`` it calls
    ``fn(*args, **kwargs)`` directly (see NOTE [ A/B switch ] in capture/ab.py).
    """
    if _AB.off and checkpointing_off():
        return _call_directly(fn, args, kwargs)
    if _FLAGS.suppressed or not (_FLAGS.nvtx_forced or _profiler_enabled()):
        # markers_wanted() inlined: this is the idle path of every checkpoint call
        return _tcp.checkpoint(fn, *args, use_reentrant=use_reentrant, **kwargs)
    if name is not None:
        base = sanitize_region(name)
        namer: Callable[[Any], str] = lambda _fn: base  # noqa: E731
    else:
        namer = region_name
    if use_reentrant:
        if getattr(fn, "_ckprof_marked", False):
            return _tcp.checkpoint(fn, *args, use_reentrant=True, **kwargs)
        region = NAMES.unique(namer(fn))
        NAMES.note(region, use_reentrant=True, sac=False)
        return _tcp.checkpoint(
            _MarkedRunFunction(fn, region), *args, use_reentrant=True, **kwargs
        )
    context_fn = kwargs.pop("context_fn", _NOOP_CONTEXT_FN)
    debug_on = kwargs.get("debug", False) or getattr(_tcp, "_checkpoint_debug_enabled", None)
    if debug_on or not torch.is_grad_enabled() or _compiling():
        # debug=True rejects a non-default context_fn; under no_grad nothing is entered
        return _tcp.checkpoint(fn, *args, use_reentrant=False, context_fn=context_fn, **kwargs)
    region = NAMES.unique(namer(fn))
    NAMES.note(region, use_reentrant=False, sac=_is_sac(context_fn))
    return _tcp.checkpoint(
        fn,
        *args,
        use_reentrant=False,
        context_fn=_MarkedContextFn(context_fn, region),
        **kwargs,
    )


# ------------------------------------------------------- public: instrument_checkpointing


def _patched_generator(
    fn: Any,
    preserve_rng_state: bool = True,
    context_fn: Any = _NOOP_CONTEXT_FN,
    determinism_check: str = "default",
    debug: bool = False,
    early_stop: bool = True,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Stands in for torch's generator while instrumenting: same arguments, same
    generator returned, with the context_fn wrapped (see NOTE [ Recompute attribution ]).
    In an A/B "off" step: a generator that installs nothing, so torch runs the
    function plainly (NOTE [ A/B switch ] in capture/ab.py)."""
    if _AB.off and checkpointing_off():
        return _direct_generator()
    if (
        markers_wanted()
        and _INSTRUMENT.applies()
        and not debug
        and not getattr(_tcp, "_checkpoint_debug_enabled", None)
    ):
        context_fn = _marked_context_fn(fn, context_fn)
    assert _ORIG_GENERATOR is not None
    return _ORIG_GENERATOR(
        fn, preserve_rng_state, context_fn, determinism_check, debug, early_stop, *args, **kwargs
    )


def _direct_generator() -> Any:
    """torch's checkpoint advances its generator once before and once after running
    the function (and throws the function's exception into it): yield once, do nothing."""
    yield


if _ORIG_CHECKPOINT_FUNCTION is not None:

    class CheckpointFunction(_ORIG_CHECKPOINT_FUNCTION):  # type: ignore[misc, valid-type]
        """torch's reentrant ``CheckpointFunction`` whose run_function carries markers.

        Named like torch's class so the backward node stays ``CheckpointFunctionBackward``.
        """

        @staticmethod
        def forward(ctx: Any, run_function: Any, preserve_rng_state: bool, *args: Any) -> Any:
            if markers_wanted() and _INSTRUMENT.applies():
                run_function = _marked_run_function(run_function)
            return _ORIG_CHECKPOINT_FUNCTION.forward(ctx, run_function, preserve_rng_state, *args)

        @classmethod
        def apply(cls, *args: Any, **kwargs: Any) -> Any:
            if _AB.off and checkpointing_off() and not kwargs and len(args) >= 2:
                # A/B "off": run_function(*args) directly, no CheckpointFunction node
                return args[0](*args[2:])
            return super().apply(*args, **kwargs)

else:  # pragma: no cover - very old / very new torch without the class
    CheckpointFunction = None  # type: ignore[assignment, misc]


class _Instrumentation:
    """Reference-counted patching of torch.utils.checkpoint; per-thread opt-in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._threads: dict[int, int] = {}
        self._saved: list[tuple[Any, str, Any]] = []
        self._warned = False

    def applies(self) -> bool:
        return threading.get_ident() in self._threads

    def enter(self) -> None:
        with self._lock:
            tid = threading.get_ident()
            if self._depth == 0:
                self._patch()
            self._depth += 1
            self._threads[tid] = self._threads.get(tid, 0) + 1

    def exit(self) -> None:
        with self._lock:
            tid = threading.get_ident()
            left = self._threads.get(tid, 0) - 1
            if left > 0:
                self._threads[tid] = left
            else:
                self._threads.pop(tid, None)
            self._depth -= 1
            if self._depth <= 0:
                self._depth = 0
                self._restore()

    def _patch(self) -> None:
        missing = []
        saved: list[tuple[Any, str, Any]] = []

        def swap(owner: Any, attr: str, value: Any) -> None:
            saved.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, value)

        try:
            if _ORIG_GENERATOR is not None:
                swap(_tcp, "_checkpoint_without_reentrant_generator", _patched_generator)
                # modules that imported the generator by name (composable checkpoint);
                # patched only when already loaded -- never imported here
                for name in _GENERATOR_IMPORTERS:
                    module = sys.modules.get(name)
                    if module is not None and getattr(
                        module, "_checkpoint_without_reentrant_generator", None
                    ) is _ORIG_GENERATOR:
                        swap(module, "_checkpoint_without_reentrant_generator", _patched_generator)
            else:
                missing.append("_checkpoint_without_reentrant_generator")
            if CheckpointFunction is not None:
                swap(_tcp, "CheckpointFunction", CheckpointFunction)
            else:
                missing.append("CheckpointFunction")
        except BaseException:
            for owner, attr, value in reversed(saved):
                setattr(owner, attr, value)
            raise
        self._saved = saved
        if missing and not self._warned:
            self._warned = True
            warnings.warn(
                "ckprof.instrument_checkpointing: this torch has no "
                f"torch.utils.checkpoint.{' / '.join(missing)}; those checkpoint calls "
                "get no region markers. Use ckprof.checkpoint(...) there instead.",
                RuntimeWarning,
                stacklevel=4,
            )

    def _restore(self) -> None:
        for owner, attr, value in reversed(self._saved):
            setattr(owner, attr, value)
        self._saved = []
        # a module imported WHILE patched bound the patched generator by name: unbind it
        for name in _GENERATOR_IMPORTERS:
            module = sys.modules.get(name)
            if getattr(module, "_checkpoint_without_reentrant_generator", None) is _patched_generator:
                module._checkpoint_without_reentrant_generator = _ORIG_GENERATOR  # type: ignore[union-attr]


_INSTRUMENT = _Instrumentation()


@contextlib.contextmanager
def instrument_checkpointing() -> Iterator[None]:
    """Make existing calls to torch's checkpoint emit ckprof region markers.

    Reaches ``torch.utils.checkpoint.checkpoint`` however it was bound (HF
    ``gradient_checkpointing_enable`` partials, ``checkpoint_wrapper``,
    ``checkpoint_sequential``, plain calls), reentrant and non-reentrant, on the
    thread(s) that entered this context. Everything patched is restored on exit,
    also when the body raises; nesting and entering from several threads are safe.
    """
    _INSTRUMENT.enter()
    try:
        yield
    finally:
        _INSTRUMENT.exit()
