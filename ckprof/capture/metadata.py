"""What the trace cannot tell: the ``ckprof`` object capture stores in the trace.

Contract: :func:`build_metadata` returns a JSON-serialisable dict with the fields
listed in docs/ARCHITECTURE.md ("ckprof metadata"); :func:`measure_memory_baseline`
returns the bytes live on each device when an active window starts.

# NOTE [ Memory baseline ]
# On CPU the profiler's ``Total Allocated`` counts only blocks allocated while memory
# profiling is on, so the analyzer needs the bytes already live (parameters,
# optimizer state, inputs, grads) to report absolute peaks:
#   allocated(event) = baseline + (total_allocated - counter_start).
# We measure it as the sum of unique CPU tensor storages reachable through ``gc``
# (deduplicated by storage data pointer; views share storage; a Parameter's ``.grad``
# is included because grads may have no other Python reference). CUDA counters are
# absolute, so the CUDA baseline is ``torch.cuda.memory_allocated`` for reference only.
#
# Caveat (measured on torch 2.13 CPU): the profiler does not report the free of a
# block allocated before recording started ("Memory block of unknown size ..."), so
# its bytes stay in ``Total Allocated``. With ``zero_grad(set_to_none=True)`` the
# first active step frees the previous grads unseen and the formula over-counts by
# their size from then on. ``memory_end`` records, per window, the bytes live at the
# end (gc) and ``freed_unseen_bytes`` (storages live at the start whose tensors are all gone at the end):
# ``baseline + (last total_allocated - counter_start) - freed_unseen_bytes`` equals
# ``memory_end.bytes``; an analyzer may subtract ``freed_unseen_bytes`` after the
# first active step's optimizer.zero_grad.
"""

from __future__ import annotations

import gc
import os
import platform
import warnings
import weakref
from typing import Any

import torch

from ckprof._version import __version__

__all__ = [
    "StorageSnapshot",
    "build_metadata",
    "cpu_storages",
    "distributed_rank",
    "measure_memory_baseline",
    "measure_memory_end",
]


def _scan_cpu(keep_refs: bool) -> tuple[dict[int, int], dict[int, list[Any]]]:
    sizes: dict[int, int] = {}
    refs: dict[int, list[Any]] = {}

    def add(t: Any) -> None:
        try:
            if t.device.type != "cpu" or t.is_meta:
                return
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr == 0:
                return
            if keep_refs:
                refs.setdefault(ptr, []).append(weakref.ref(t))
            if ptr not in sizes:
                sizes[ptr] = int(storage.nbytes())
        except Exception:  # sparse / functional / fake tensors have no plain storage
            return

    tensor, parameter = torch.Tensor, torch.nn.Parameter
    with warnings.catch_warnings():
        # isinstance() on some deprecated torch objects warns (torch.distributed.reduce_op)
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            # isinstance() asks the object for __class__: a dead weakref.proxy (torch.compile
            # leaves some behind) raises ReferenceError, other proxies may raise anything
            try:
                if not isinstance(obj, tensor):
                    continue
                grad = obj.grad if isinstance(obj, parameter) else None
            except Exception:
                continue
            add(obj)
            if grad is not None:
                add(grad)
    return sizes, refs


def cpu_storages() -> dict[int, int]:
    """Live CPU tensor storages reachable through gc: data pointer -> nbytes."""
    return _scan_cpu(False)[0]


class StorageSnapshot:
    """CPU storages live at one instant, with weak references to their tensors, so
    that a later :meth:`freed_bytes` can tell which of them have been freed since
    (even when the allocator reused the address)."""

    def __init__(self) -> None:
        self.sizes, self._refs = _scan_cpu(True)

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())

    def freed_bytes(self) -> int:
        return sum(
            self.sizes[ptr] for ptr, refs in self._refs.items() if all(r() is None for r in refs)
        )


def measure_memory_baseline(snapshot: StorageSnapshot | None = None) -> dict[str, dict[str, Any]]:
    """Bytes live per device now (see NOTE [ Memory baseline ]); ``snapshot`` is a
    :class:`StorageSnapshot` taken now, to reuse instead of scanning again."""
    cpu_bytes = sum(cpu_storages().values()) if snapshot is None else snapshot.bytes
    out: dict[str, dict[str, Any]] = {
        "cpu": {"bytes": cpu_bytes, "method": "gc-tensors", "counter_absolute": False}
    }
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for index in range(torch.cuda.device_count()):
                out[f"cuda:{index}"] = {
                    "bytes": int(torch.cuda.memory_allocated(index)),
                    "method": "torch.cuda.memory_allocated",
                    "counter_absolute": True,
                }
    except Exception:
        pass
    return out


def measure_memory_end(start: StorageSnapshot | None) -> dict[str, dict[str, Any]]:
    """Bytes live now and bytes of the start's storages since freed (see NOTE above)."""
    now = sum(cpu_storages().values())
    unseen = start.freed_bytes() if start is not None else 0
    return {"cpu": {"bytes": now, "freed_unseen_bytes": int(unseen), "method": "gc-tensors"}}


def distributed_rank() -> tuple[int, int, bool]:
    """``(rank, world_size, known)``: from torch.distributed when initialised, else from
    a launcher's environment (torchrun sets ``RANK`` and ``WORLD_SIZE`` before the
    script runs, and a trace written after ``destroy_process_group`` still belongs to
    its rank); ``(0, 1, False)`` for a single process."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank()), int(dist.get_world_size()), True
    except Exception:
        pass
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ["RANK"]) if world > 1 else 0
    except (KeyError, ValueError):
        return 0, 1, False
    if world > 1 and 0 <= rank < world:
        return rank, world, True
    return 0, 1, False


def _device() -> str:
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return f"cuda:{torch.cuda.current_device()}"
    except Exception:
        pass
    return "cpu"


def _early_stop() -> bool:
    import torch.utils.checkpoint as tcp

    value = getattr(tcp, "_enable_checkpoint_early_stop", None)
    return True if value is None else bool(value)


def build_metadata(
    *,
    schedule: dict[str, int],
    markers: bool,
    memory_baseline: dict[str, dict[str, Any]],
    memory_end: dict[str, dict[str, Any]] | None = None,
    regions: dict[str, dict[str, bool]],
    window: int,
    steps: tuple[int, int],
    with_stack: bool,
    nsys: bool,
    ab: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``ckprof`` metadata object for one trace window (JSON-serialisable).

    ``ab``: the window's A/B object (``capture(ab=True)`` or steps tagged with
    ``Capture.tag_step``), stored under the key ``ab`` only when given."""
    rank, world_size, _ = distributed_rank()
    out = {
        "ckprof_version": __version__,
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
        "device": _device(),
        "rank": rank,
        "world_size": world_size,
        "markers": bool(markers),
        "schedule": dict(schedule),
        "window": int(window),
        "active_steps": [int(steps[0]), int(steps[1])],
        "with_stack": bool(with_stack),
        "nsys": bool(nsys),
        "memory_baseline": memory_baseline,
        "memory_end": memory_end or {},
        "checkpoint": {"early_stop": _early_stop(), "regions": dict(regions)},
    }
    if ab is not None:
        out["ab"] = ab
    return out
