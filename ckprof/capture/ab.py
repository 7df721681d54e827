"""The A/B switch: checkpointing on or off in the same process (``capture(ab=True)``).

Contract::

    SWITCH.off                      process-wide flag, read on every checkpoint call
    checkpointing_off() -> bool     True while checkpointed callables run directly on
                                    this thread (an "off" step of an A/B capture)
    set_checkpointing(on)           flip the switch for the calling thread
    checkpointing(on)               the same as a context manager (restores on exit)
    is_out_of_memory(err) -> bool   CUDA/CPU allocator out-of-memory errors
    free_memory()                   gc + CUDA cache release after an out-of-memory

# NOTE [ A/B switch ]
# With the switch off, every checkpoint call ckprof can see runs its function
# directly, keeping activations as if the model had no checkpointing: the same model,
# data order and process, so the difference between "on" and "off" steps is what
# checkpointing costs and buys. Three doors lead to a checkpoint call and all read
# the switch (capture/regions.py):
#   - ``ckprof.checkpoint`` calls ``fn(*args, **kwargs)`` (checkpoint-only keywords
#     such as context_fn / preserve_rng_state dropped);
#   - non-reentrant ``torch.utils.checkpoint.checkpoint`` (plain calls, HF partials
#     bound at import, checkpoint_wrapper, SAC context_fn) looks up the generator
#     ``_checkpoint_without_reentrant_generator`` at call time: the instrumented one
#     yields once and installs nothing, so torch's ``function(*args)`` runs plainly;
#   - reentrant checkpoint calls ``CheckpointFunction.apply``: the instrumented
#     subclass's ``apply`` calls ``run_function(*args)`` directly.
# The last two exist only while ``instrument_checkpointing()`` is entered, which
# ``capture(ab=True)`` does for its whole lifetime. The switch is per thread (the
# capture's): a checkpoint called on another thread is never touched. torch.compile'd
# regions are traced once and are not switched (their checkpointing stays on).
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

import torch

__all__ = [
    "SWITCH",
    "checkpointing",
    "checkpointing_off",
    "free_memory",
    "is_out_of_memory",
    "set_checkpointing",
]


class _Switch:
    """Plain attributes: ``off`` is read on every checkpoint call, so keep it cheap."""

    off: bool = False
    thread: int = 0


SWITCH = _Switch()

_OOM_TEXTS = ("out of memory", "can't allocate memory", "not enough memory")


def checkpointing_off() -> bool:
    """True while checkpointed callables must run directly on this thread."""
    return SWITCH.off and threading.get_ident() == SWITCH.thread


def set_checkpointing(on: bool) -> None:
    """Checkpointing on (torch's behaviour) or off for the calling thread."""
    SWITCH.thread = threading.get_ident()
    SWITCH.off = not on


@contextlib.contextmanager
def checkpointing(on: bool) -> Iterator[None]:
    """Run the body with checkpointing on or off on this thread; restores the switch."""
    before = (SWITCH.off, SWITCH.thread)
    set_checkpointing(on)
    try:
        yield
    finally:
        SWITCH.off, SWITCH.thread = before


def is_out_of_memory(err: BaseException) -> bool:
    """An allocator out-of-memory: ``torch.OutOfMemoryError`` (CUDA, and what tests
    raise to simulate one) or a RuntimeError whose text says so (CPU allocator)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(err, oom_type):
        return True
    if isinstance(err, (RuntimeError, MemoryError)):
        text = str(err).lower()
        return isinstance(err, MemoryError) or any(t in text for t in _OOM_TEXTS)
    return False


def free_memory() -> None:
    """Release what a failed step left: Python garbage, then the CUDA cache."""
    gc.collect()
    with contextlib.suppress(Exception):
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
