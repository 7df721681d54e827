"""The in-memory trace every analysis stage reads.

Contract (produced by :func:`ckprof.trace.load.load_trace` for Chrome/Kineto JSON
and by :mod:`ckprof.trace.nsys` for Nsight Systems sqlite exports; read by everything
downstream). A ``Trace`` is immutable: stages return new objects, never edit it.

``events`` -- one row per complete event (``ph == "X"``), RangeIndex 0..n-1,
sorted by ``(ts_ns, -dur_ns)`` so an enclosing event precedes what it encloses:

================  ========  ==========================================================
column            dtype     meaning
================  ========  ==========================================================
name              category  event name
cat               category  raw category as written in the file
kind              category  normalised category, one of ``KINDS`` (legacy ``Operator``
                            -> ``cpu_op``, ``Kernel`` -> ``kernel``, ``Runtime`` and
                            ``cuda_driver`` -> ``runtime``, AMD is the same as CUDA)
pid               int64     process id; for GPU events the device (Kineto's choice)
tid               int64     thread id; for GPU events the stream. Non-numeric ids
                            ("stream 7", "25738") are parsed; others get stable
                            negative codes listed in ``Trace.thread_names``
ts_ns             int64     start, integer nanoseconds on the trace's clock
dur_ns            int64     duration in ns (>= 0)
correlation       int64     launch<->kernel correlation id, -1 if none
external_id       int64     ``External id`` (or legacy ``external id``), -1 if none
seq               int64     autograd ``Sequence number``, -1 if none
parent            int64     row of the innermost enclosing event on the same
                            (pid, tid) in the same tree, -1 for roots. Python frames
                            (kind ``python_function``) form their own tree; GPU
                            events have no parent
depth             int32     0 for roots
================  ========  ==========================================================

``memory`` -- one row per ``[memory]`` instant event, sorted by ``ts_ns``:
``ts_ns`` int64, ``device`` category (``"cpu"``, ``"cuda:0"`` ...), ``pid``/``tid``
int64, ``total_allocated_bytes`` int64 (-1 when absent), ``total_reserved_bytes``
int64 (-1 when absent), ``bytes`` int64 (negative on free), ``addr`` int64 (the
block's address, ``Addr`` in Kineto, ``address`` in nsys; -1 when absent). An
allocation and the free of the same block carry the same address, so block lifetimes
can be rebuilt (:mod:`ckprof.analysis.composition`).

``metadata`` -- the top-level keys of the file other than ``traceEvents``
(``schemaVersion``, ``deviceProperties``, ``distributedInfo``, ...).
``ckprof`` -- the object capture stored under the ``ckprof`` key, or ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckprof.trace.table import Table, frame_of

if TYPE_CHECKING:  # pandas is imported where it is used: reading and analysing need none
    import pandas as pd

__all__ = ["EVENT_COLUMNS", "KINDS", "MEMORY_COLUMNS", "Trace"]

KINDS: tuple[str, ...] = (
    "cpu_op",
    "user_annotation",
    "python_function",
    "kernel",
    "gpu_memcpy",
    "gpu_memset",
    "runtime",
    "gpu_annotation",
    "other",
)

#: kinds that execute on a GPU (their time is "GPU time")
GPU_KINDS: frozenset[str] = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})

EVENT_COLUMNS: dict[str, str] = {
    "name": "category",
    "cat": "category",
    "kind": "category",
    "pid": "int64",
    "tid": "int64",
    "ts_ns": "int64",
    "dur_ns": "int64",
    "correlation": "int64",
    "external_id": "int64",
    "seq": "int64",
    "parent": "int64",
    "depth": "int32",
}

MEMORY_COLUMNS: dict[str, str] = {
    "ts_ns": "int64",
    "device": "category",
    "pid": "int64",
    "tid": "int64",
    "total_allocated_bytes": "int64",
    "total_reserved_bytes": "int64",
    "bytes": "int64",
    "addr": "int64",
}


@dataclass(frozen=True)
class Trace:
    """A loaded trace. See the module docstring for the column contract.

    The columns are held as :class:`~ckprof.trace.table.Table` (``event_table``,
    ``memory_table``: what the stages read, NOTE [ Tables, not DataFrames, inside the
    stages ]); ``events`` and ``memory`` are the same columns as DataFrames, built on
    first use."""

    path: str
    event_table: Table
    memory_table: Table
    metadata: Mapping[str, Any] = field(default_factory=dict)
    ckprof: Mapping[str, Any] | None = None
    #: "kineto" | "kineto-legacy" | "chrome-array" | "nsys-sqlite"
    source_format: str = "kineto"
    #: codes given to non-numeric pid/tid values -> their original text
    thread_names: Mapping[int, str] = field(default_factory=dict)
    #: things the loader noticed and the user should know (salvage counts, dropped events)
    notes: tuple[str, ...] = ()

    @classmethod
    def from_frames(cls, path: str, events: pd.DataFrame, memory: pd.DataFrame,
                    **fields: Any) -> Trace:
        """A Trace from event and memory DataFrames (readers that assemble frames,
        test builders)."""
        return cls(path=path, event_table=Table.from_frame(events),
                   memory_table=Table.from_frame(memory), **fields)

    def with_frames(self, *, events: pd.DataFrame | None = None,
                    memory: pd.DataFrame | None = None) -> Trace:
        """A copy with new event and/or memory frames."""
        from dataclasses import replace

        return replace(
            self,
            event_table=self.event_table if events is None else Table.from_frame(events),
            memory_table=self.memory_table if memory is None else Table.from_frame(memory))

    #: ``event_table`` / ``memory_table`` as DataFrames (built once; do not modify them)
    events = frame_of("event_table")
    memory = frame_of("memory_table")

    @property
    def has_gpu(self) -> bool:
        return bool(self.event_table.coded("kind").isin(GPU_KINDS).any())

    @property
    def has_markers(self) -> bool:
        names = self.event_table.coded("name")
        return any(str(c).startswith("ckprof::") for c in names.categories.tolist())

    def check(self) -> None:
        """Assert the column contract (used by tests and by alternative readers)."""
        import pandas as pd

        for cols, frame, label in ((EVENT_COLUMNS, self.events, "events"),
                                   (MEMORY_COLUMNS, self.memory, "memory")):
            missing = set(cols) - set(frame.columns)
            assert not missing, f"{label} lacks columns {sorted(missing)}"
            for col, dtype in cols.items():
                assert str(frame[col].dtype) == dtype, f"{label}.{col} is {frame[col].dtype}, not {dtype}"
        ev = self.events
        assert isinstance(ev.index, pd.RangeIndex) and ev.index.start == 0
        assert (ev["dur_ns"] >= 0).all(), "negative durations"
        assert ev["ts_ns"].is_monotonic_increasing, "events not sorted by ts_ns"
        assert set(ev["kind"].astype(str).unique()) <= set(KINDS), "unknown kind"
        assert self.memory["ts_ns"].is_monotonic_increasing, "memory not sorted by ts_ns"

