"""Read an Nsight Systems sqlite export (``nsys export --type sqlite``) into a Trace.

Contract::

    is_nsys_sqlite(path) -> bool
    load_nsys(path) -> Trace        # source_format == "nsys-sqlite"

The returned :class:`~ckprof.trace.model.Trace` satisfies the same column contract as
one read from a Chrome/Kineto JSON trace, so phases, attribution and memory run
through exactly the same code:

* NVTX push/pop and start/end ranges -> kind ``user_annotation`` rows named by their
  message (``ckprof::forward``, ``ckprof::recompute::blk0``, ``ProfilerStep#3`` ...;
  ckprof emits the same names as NVTX ranges in domain ``ckprof`` and as
  ``record_function`` ranges). ``cat`` is ``nvtx`` (default domain) or
  ``nvtx:<domain>``. Ranges torch writes under ``emit_nvtx()`` (``aten::mm, seq = 5,
  op_id = 12``) become ``cpu_op`` rows with their ``seq`` (NOTE [ emit_nvtx range
  names ]); emit_nvtx copies of ckprof markers are dropped when the ``ckprof`` domain
  has them (NOTE [ ckprof markers in two NVTX domains ]).
* CUDA runtime calls -> kind ``runtime`` (``cat`` ``cuda_runtime``), name without the
  ``_v7000`` version suffix (``cudaLaunchKernel``, as Kineto writes it).
* kernels / memcpy / memset -> kinds ``kernel`` / ``gpu_memcpy`` / ``gpu_memset`` with
  ``pid`` = device id and ``tid`` = stream id (Kineto's choice), ``correlation`` equal
  to the launching runtime row's ``correlation``.
* CPU rows: ``pid``/``tid`` decoded from ``globalTid``; ``parent``/``depth`` give the
  nesting of NVTX ranges and runtime calls per thread.
* ``CUDA_GPU_MEMORY_USAGE_EVENTS`` (``nsys profile --cuda-memory-usage=true``) -> the
  ``memory`` table as an absolute per-device counter (running sum of allocations minus
  frees), device ``cuda:<id>``. Without it, ``memory`` is empty and the analysis says
  memory was not captured.

Only the tables and columns named in the NOTE below are read (``PRAGMA table_info``
decides which optional columns exist), so exports from newer Nsight versions with
extra tables or columns load unchanged. No torch import.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ckprof.errors import EmptyTraceError, TraceFormatError, TraceNotFoundError
from ckprof.trace._build import finish_events
from ckprof.trace.load import SQLITE_MAGIC, is_nsys_sqlite
from ckprof.trace.markers import NVTX_DOMAIN, PREFIX
from ckprof.trace.model import (
    MEMORY_COLUMNS,
    Trace,
)

__all__ = [
    "NVTX_RANGE_EVENT_TYPES",
    "SQLITE_MAGIC",
    "is_nsys_sqlite",
    "load_nsys",
]

# NOTE [ Nsight Systems sqlite schema ]
# From the Nsight Systems "SQLite Export Schema Reference" (nsys-exporter/
# exported_data.html) and the reports shipped with nsys (nvtx_pushpop_sum etc.).
# Tables are created lazily: one that has no data is simply absent. All times are
# integer nanoseconds on the session clock. Columns ckprof reads (R = required,
# O = optional, used when present):
#
#   StringIds(id R, value R)                      string table for every *Id column
#   NVTX_EVENTS(start R, end R (NULL while a range is still open), eventType R,
#       globalTid R, textId O -> StringIds, text O (inline message), domainId O,
#       endGlobalTid O)
#     eventType (ENUM_NSYS_EVENT_TYPE): 59 NvtxPushPopRange, 60 NvtxStartEndRange,
#       70 / 71 the same from NVTXT, 75 NvtxDomainCreate (its `text` is the domain
#       name, keyed by (process, domainId)); 34 marks and 33 categories are ignored.
#       Messages registered with nvtxDomainRegisterString (what the `nvtx` Python
#       package does) come through `textId`; plain ASCII messages through `text`.
#       domainId 0 is the default domain.
#   CUPTI_ACTIVITY_KIND_RUNTIME(start R, end R, globalTid R, correlationId R, nameId R)
#     nameId -> "cudaLaunchKernel_v7000"; correlationId matches the GPU activity below.
#   CUPTI_ACTIVITY_KIND_KERNEL(start R, end R, deviceId R, streamId R, correlationId R,
#       demangledName / shortName / mangledName O (at least one) -> StringIds,
#       globalPid O)
#   CUPTI_ACTIVITY_KIND_MEMCPY(start R, end R, deviceId R, streamId R, correlationId R,
#       copyKind O (CUPTI: 1 HtoD, 2 DtoH, 8 DtoD, 9 HtoH, 10 PtoP ...), globalPid O)
#   CUPTI_ACTIVITY_KIND_MEMSET(start R, end R, deviceId R, streamId R, correlationId R,
#       globalPid O)
#   CUDA_GPU_MEMORY_USAGE_EVENTS(start R, deviceId R, bytes R, memoryOperationType R,
#       memKind O, globalPid O, correlationId O -> the runtime call that allocated,
#       address O -> the ``addr`` column)
#       -- only with --cuda-memory-usage=true
#     memoryOperationType (ENUM_CUDA_DEV_MEM_EVENT_OPER): 0 Allocation, 1 Deallocation.
#     memKind (ENUM_CUDA_MEM_KIND): 0 Pageable, 1 Pinned (host memory, skipped),
#       2 Device, 3 Array, 4 Managed, 5 Device Static, 6 Managed Static, 7 Unknown.
#     These are cudaMalloc/cudaFree-level events: with PyTorch's caching allocator the
#     running sum is the allocator's *reserved* memory, not live tensor bytes.
#   ENUM_CUDA_DEV_MEM_EVENT_OPER / ENUM_CUDA_MEM_KIND(id, name, label) O: read when
#     present instead of the numeric defaults above.
#
# Serialized ids: globalTid = (hwId << 56) | (pid << 24) | tid, so
#   pid = (globalTid >> 24) & 0xFFFFFF, tid = globalTid & 0xFFFFFF; globalPid is the
#   same with tid 0. correlationId is unique per process only: with several processes
#   ckprof offsets it by (process index << 32) so launches never pair across processes.


EVENT_NVTX_DOMAIN_CREATE = 75
#: NVTX_EVENTS.eventType values that are ranges (push/pop and start/end, NVTX and NVTXT)
NVTX_RANGE_EVENT_TYPES: tuple[int, ...] = (59, 60, 70, 71)

MEM_OP_ALLOCATION = 0
MEM_OP_DEALLOCATION = 1
HOST_MEM_KINDS: frozenset[int] = frozenset({0, 1})  # Pageable, Pinned

COPY_KIND_NAMES: dict[int, str] = {
    1: "HtoD", 2: "DtoH", 3: "HtoA", 4: "AtoH", 5: "AtoA", 6: "AtoD",
    7: "DtoA", 8: "DtoD", 9: "HtoH", 10: "PtoP",
}

_TID_MASK = 0xFFFFFF
PROBE_RANGE = "ckprof::probe"
_VERSION_SUFFIX = re.compile(r"_v\d+$")

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "StringIds": ("id", "value"),
    "NVTX_EVENTS": ("start", "end", "eventType", "globalTid"),
    "CUPTI_ACTIVITY_KIND_RUNTIME": ("start", "end", "globalTid", "correlationId", "nameId"),
    "CUPTI_ACTIVITY_KIND_KERNEL": ("start", "end", "deviceId", "streamId", "correlationId"),
    "CUPTI_ACTIVITY_KIND_MEMCPY": ("start", "end", "deviceId", "streamId", "correlationId"),
    "CUPTI_ACTIVITY_KIND_MEMSET": ("start", "end", "deviceId", "streamId", "correlationId"),
    "CUDA_GPU_MEMORY_USAGE_EVENTS": ("start", "deviceId", "bytes", "memoryOperationType"),
}


def load_nsys(path: str | os.PathLike[str]) -> Trace:
    """Read an ``nsys export --type sqlite`` file into a :class:`Trace`.

    Raises :class:`TraceNotFoundError` (no such file), :class:`TraceFormatError`
    (not sqlite, damaged, no ``NVTX_EVENTS``/``StringIds`` table, or a table lacking a
    column ckprof needs) and :class:`EmptyTraceError` (no NVTX range and no CUDA
    activity). See the NOTE [ Nsight Systems sqlite schema ] for what is read.
    """
    spath = str(path)
    p = Path(spath)
    if not p.exists():
        raise TraceNotFoundError("no such file", path=spath,
                                 hint="Check the path of the nsys sqlite export")
    if p.is_dir():
        raise TraceNotFoundError("is a directory, not an nsys sqlite export", path=spath,
                                 hint="Pass the .sqlite file written by `nsys export --type sqlite`")
    if not is_nsys_sqlite(p):
        raise TraceFormatError("not an sqlite file", path=spath,
                               hint="Export the report with `nsys export --type sqlite report.nsys-rep`")
    try:
        con = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as err:  # pragma: no cover - connect rarely fails on a file
        raise TraceFormatError(f"cannot open as sqlite ({err})", path=spath) from err
    try:
        return _read(con, spath)
    except sqlite3.DatabaseError as err:
        raise TraceFormatError(
            f"damaged or unreadable sqlite database ({err})", path=spath,
            hint="Re-run `nsys export --type sqlite --force-overwrite=true` on the report",
        ) from err
    finally:
        con.close()


# ----------------------------------------------------------------------------- reading


class _Schema:
    """Which of the tables/columns ckprof reads exist in this export."""

    def __init__(self, con: sqlite3.Connection, path: str):
        self.path = path
        rows = con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        self.tables: frozenset[str] = frozenset(r[0] for r in rows)
        self._columns: dict[str, frozenset[str]] = {}
        for table in self.tables & (set(REQUIRED_COLUMNS) | _ENUM_TABLES):
            info = con.execute(f'PRAGMA table_info("{table}")').fetchall()
            self._columns[table] = frozenset(r[1] for r in info)

    def has(self, table: str) -> bool:
        return table in self.tables

    def columns(self, table: str) -> frozenset[str]:
        return self._columns.get(table, frozenset())

    def require(self, table: str) -> None:
        missing = [c for c in REQUIRED_COLUMNS[table] if c not in self.columns(table)]
        if missing:
            raise TraceFormatError(
                f"table {table} lacks column(s) {', '.join(missing)} that ckprof needs",
                path=self.path,
                hint="Export with a recent `nsys export --type sqlite`, or report the Nsight version",
            )


_ENUM_TABLES = frozenset({"ENUM_CUDA_DEV_MEM_EVENT_OPER", "ENUM_CUDA_MEM_KIND"})


def _read(con: sqlite3.Connection, path: str) -> Trace:
    schema = _Schema(con, path)
    if not schema.has("StringIds"):
        raise TraceFormatError(
            "no StringIds table: an sqlite file, but not an Nsight Systems export", path=path,
            hint="Export the report with `nsys export --type sqlite report.nsys-rep`")
    if not schema.has("NVTX_EVENTS"):
        raise TraceFormatError(
            "no NVTX_EVENTS table: the report holds no NVTX ranges", path=path,
            hint="Profile with `nsys profile --trace=cuda,nvtx` (ckprof emits its phase "
                 "markers as NVTX ranges in domain 'ckprof')",
        )
    for table in REQUIRED_COLUMNS:
        if schema.has(table):
            schema.require(table)

    notes: list[str] = []
    nvtx, n_open, n_twins = _read_nvtx(con, schema)
    if n_open:
        notes.append(f"{n_open} NVTX range(s) never ended (no end time) were dropped")
    if n_twins:
        notes.append(f"{n_twins} ckprof:: NVTX range(s) outside domain '{NVTX_DOMAIN}' "
                     "(emit_nvtx copies of the markers) were dropped")
    runtime = _read_runtime(con, schema)
    gpu = _read_gpu(con, schema)
    if not any(schema.has(t) for t in ("CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_KERNEL")):
        notes.append("no CUDA activity in this report (profile with --trace=cuda,nvtx for GPU time)")

    runtime_raw = runtime
    runtime, gpu = _namespace_correlation(runtime, gpu)
    parts = [f for f in (nvtx, runtime, gpu) if len(f)]
    if not parts:
        raise EmptyTraceError(
            "no NVTX ranges and no CUDA activity in this nsys export", path=path,
            hint="Profile with `nsys profile --trace=cuda,nvtx` around the training steps",
        )
    events = _finish_events(pd.concat(parts, ignore_index=True))
    if len(runtime) and len(gpu):
        unmatched = int((~gpu["correlation"].isin(runtime["correlation"])).sum())
        if unmatched:
            notes.append(f"{unmatched} GPU activity record(s) have no matching CUDA runtime call")

    memory, mem_notes = _read_memory(con, schema, runtime_raw)
    notes.extend(mem_notes)
    metadata = {"nsys": {"tables": sorted(schema.tables), **_export_meta(con, schema)}}
    return Trace.from_frames(
        path,
        events,
        memory,
        metadata=metadata,
        ckprof=None,
        source_format="nsys-sqlite",
        thread_names={},
        notes=tuple(notes),
    )


def _select(con: sqlite3.Connection, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame:
    cur = con.execute(sql, tuple(params))
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()
    if not rows:
        return pd.DataFrame({n: pd.Series([], dtype=object) for n in names})
    return pd.DataFrame.from_records(rows, columns=names)


def _ints(values: pd.Series, default: int = -1) -> np.ndarray:
    """NULL-tolerant int64 array (sqlite NULL -> ``default``)."""
    return pd.to_numeric(values, errors="coerce").fillna(default).to_numpy(dtype=np.int64)


def _split_global_tid(global_tid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (global_tid >> 24) & _TID_MASK, global_tid & _TID_MASK


def _read_nvtx(con: sqlite3.Connection, schema: _Schema) -> tuple[pd.DataFrame, int, int]:
    cols = schema.columns("NVTX_EVENTS")
    text_expr = _message_expr(cols)
    domain_expr = "ne.domainId" if "domainId" in cols else "0"
    join = "LEFT JOIN StringIds s ON s.id = ne.textId" if "textId" in cols else ""
    types = ", ".join(str(t) for t in NVTX_RANGE_EVENT_TYPES)
    frame = _select(con, f"""
        SELECT ne.start AS start, ne."end" AS "end", ne.globalTid AS globalTid,
               {domain_expr} AS domainId, {text_expr} AS name
        FROM NVTX_EVENTS ne {join}
        WHERE ne.eventType IN ({types})""")
    domains = _select(con, f"""
        SELECT ne.globalTid AS globalTid, {domain_expr} AS domainId, {text_expr} AS name
        FROM NVTX_EVENTS ne {join}
        WHERE ne.eventType = {EVENT_NVTX_DOMAIN_CREATE}""")

    end = pd.to_numeric(frame["end"], errors="coerce")
    open_ranges = int(end.isna().sum())
    frame = frame.loc[end.notna().to_numpy()]
    start_ns = _ints(frame["start"])
    end_ns = _ints(frame["end"])
    pid, tid = _split_global_tid(_ints(frame["globalTid"], 0))
    domain_id = _ints(frame["domainId"], 0)

    by_pid_domain: dict[tuple[int, int], str] = {}
    by_domain: dict[int, set[str]] = {}
    dpid, _ = _split_global_tid(_ints(domains["globalTid"], 0))
    for p_, d_, n_ in zip(dpid.tolist(), _ints(domains["domainId"], 0).tolist(),
                          domains["name"].tolist(), strict=True):
        name = "" if n_ is None else str(n_)
        by_pid_domain[(p_, d_)] = name
        by_domain.setdefault(d_, set()).add(name)

    def domain_name(p_: int, d_: int) -> str:
        if d_ == 0:
            return ""
        if (p_, d_) in by_pid_domain:
            return by_pid_domain[(p_, d_)]
        names = by_domain.get(d_, set())
        return next(iter(names)) if len(names) == 1 else f"domain{d_}"

    cat_of: dict[tuple[int, int], str] = {}
    cats = []
    for p_, d_ in zip(pid.tolist(), domain_id.tolist(), strict=True):
        key = (p_, d_)
        if key not in cat_of:
            dname = domain_name(p_, d_)
            cat_of[key] = f"nvtx:{dname}" if dname else "nvtx"
        cats.append(cat_of[key])
    raw_names = frame["name"].where(frame["name"].notna(), "").astype(str)
    cats_arr = np.asarray(cats, dtype=object)
    names, seq, kinds = _parse_emit_nvtx(raw_names, cats_arr == "nvtx")
    # NOTE [ ckprof markers in two NVTX domains ]
    # ckprof pushes its markers in domain "ckprof"; under torch.autograd.profiler
    # .emit_nvtx() torch also mirrors the record_function copies of the same markers
    # into the default domain. Counting both would nest every marker in an identical
    # twin (recompute counted twice), so when the ckprof domain is present, ckprof::
    # ranges from any other domain are dropped.
    ckprof_cat = f"nvtx:{NVTX_DOMAIN}"
    twins = np.zeros(len(names), dtype=bool)
    if (cats_arr == ckprof_cat).any():
        is_marker = np.char.startswith(names.astype(str), PREFIX)
        twins = is_marker & (cats_arr != ckprof_cat)
    # the zero-length range ckprof's NVTX backend pushes once to test itself
    probes = names == PROBE_RANGE
    keep = ~twins & ~probes
    out = _event_frame(
        name=names[keep], cat=cats_arr[keep], kind=kinds[keep],
        pid=pid[keep], tid=tid[keep], ts_ns=start_ns[keep],
        dur_ns=np.maximum(end_ns - start_ns, 0)[keep],
        correlation=np.full(int(keep.sum()), -1, dtype=np.int64),
    )
    return out.assign(seq=seq[keep]), open_ranges, int(twins.sum())


# NOTE [ emit_nvtx range names ]
# Under torch.autograd.profiler.emit_nvtx() every op and record_function becomes an
# NVTX push/pop range in the default domain named (torch/csrc/profiler/util.cpp,
# getNvtxStr) "<name>[, seq = N][, op_id = M][, sizes = [...]][, input_op_ids = [...]]".
# Such a range is an op: its name is the part before the suffix, kind cpu_op (so the
# no-marker phase rules and `sequence` recompute detection work on nsys reports), seq
# the autograd sequence number -- except the annotations Kineto also calls
# user_annotation (ckprof:: markers, ProfilerStep#N, Optimizer.step#/zero_grad#).
# Any other NVTX range (user code, nvtx.annotate, ckprof's domain) is a user_annotation.
_EMIT_NVTX = re.compile(
    r"^(?P<name>.*?)(?:, seq = (?P<seq>-?\d+))?, op_id = -?\d+(?:, sizes = .*?)?"
    r"(?:, input_op_ids = .*)?$|^(?P<name2>.*?), seq = (?P<seq2>-?\d+)(?:, sizes = .*)?$",
    re.DOTALL,
)
_ANNOTATION_PREFIXES = (PREFIX, "ProfilerStep#", "Optimizer.step#", "Optimizer.zero_grad#")


def _parse_emit_nvtx(names: pd.Series, default_domain: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(name, seq, kind) per NVTX range; see NOTE [ emit_nvtx range names ]."""
    out_names = names.to_numpy(dtype=object).copy()
    seq = np.full(len(names), -1, dtype=np.int64)
    kinds = np.full(len(names), "user_annotation", dtype=object)
    candidates = np.flatnonzero(default_domain & names.str.contains(", (?:op_id|seq) = ",
                                                                     regex=True).to_numpy())
    for i in candidates.tolist():
        m = _EMIT_NVTX.match(out_names[i])
        if m is None:
            continue
        name = m.group("name") if m.group("name") is not None else m.group("name2")
        number = m.group("seq") if m.group("name") is not None else m.group("seq2")
        out_names[i] = name
        if number is not None:
            seq[i] = int(number)
        if not name.startswith(_ANNOTATION_PREFIXES):
            kinds[i] = "cpu_op"
    return out_names, seq, kinds


def _message_expr(cols: frozenset[str]) -> str:
    parts = []
    if "textId" in cols:
        parts.append("s.value")
    if "text" in cols:
        parts.append("ne.text")
    if not parts:
        return "''"
    return f"COALESCE({', '.join(parts)}, '')" if len(parts) > 1 else f"COALESCE({parts[0]}, '')"


def _read_runtime(con: sqlite3.Connection, schema: _Schema) -> pd.DataFrame:
    if not schema.has("CUPTI_ACTIVITY_KIND_RUNTIME"):
        return _event_frame()
    frame = _select(con, """
        SELECT r.start AS start, r."end" AS "end", r.globalTid AS globalTid,
               r.correlationId AS correlationId, s.value AS name
        FROM CUPTI_ACTIVITY_KIND_RUNTIME r LEFT JOIN StringIds s ON s.id = r.nameId""")
    start_ns, end_ns = _ints(frame["start"]), _ints(frame["end"])
    pid, tid = _split_global_tid(_ints(frame["globalTid"], 0))
    names = frame["name"].where(frame["name"].notna(), "cuda_runtime").astype(str)
    names = names.str.replace(_VERSION_SUFFIX, "", regex=True).to_numpy()
    return _event_frame(
        name=names, cat="cuda_runtime", kind="runtime", pid=pid, tid=tid, ts_ns=start_ns,
        dur_ns=np.maximum(end_ns - start_ns, 0), correlation=_ints(frame["correlationId"]),
    )


def _read_gpu(con: sqlite3.Connection, schema: _Schema) -> pd.DataFrame:
    frames = []
    table = "CUPTI_ACTIVITY_KIND_KERNEL"
    if schema.has(table):
        cols = schema.columns(table)
        name_cols = [c for c in ("demangledName", "shortName", "mangledName") if c in cols]
        joins = " ".join(f"LEFT JOIN StringIds s{i} ON s{i}.id = k.{c}"
                         for i, c in enumerate(name_cols))
        name_expr = (f"COALESCE({', '.join(f's{i}.value' for i in range(len(name_cols)))}, 'kernel')"
                     if name_cols else "'kernel'")
        frame = _select(con, f"""
            SELECT k.start AS start, k."end" AS "end", k.deviceId AS deviceId,
                   k.streamId AS streamId, k.correlationId AS correlationId,
                   {_global_pid_expr(cols, 'k')} AS globalPid, {name_expr} AS name
            FROM {table} k {joins}""")
        frames.append(_gpu_frame(frame, frame["name"].astype(str).to_numpy(), "kernel", "kernel"))
    table = "CUPTI_ACTIVITY_KIND_MEMCPY"
    if schema.has(table):
        cols = schema.columns(table)
        kind_expr = "m.copyKind" if "copyKind" in cols else "0"
        frame = _select(con, f"""
            SELECT m.start AS start, m."end" AS "end", m.deviceId AS deviceId,
                   m.streamId AS streamId, m.correlationId AS correlationId,
                   {_global_pid_expr(cols, 'm')} AS globalPid, {kind_expr} AS copyKind
            FROM {table} m""")
        names = np.asarray(
            [f"Memcpy {COPY_KIND_NAMES[k]}" if k in COPY_KIND_NAMES else "Memcpy"
             for k in _ints(frame["copyKind"], 0).tolist()], dtype=object)
        frames.append(_gpu_frame(frame, names, "gpu_memcpy", "gpu_memcpy"))
    table = "CUPTI_ACTIVITY_KIND_MEMSET"
    if schema.has(table):
        cols = schema.columns(table)
        frame = _select(con, f"""
            SELECT m.start AS start, m."end" AS "end", m.deviceId AS deviceId,
                   m.streamId AS streamId, m.correlationId AS correlationId,
                   {_global_pid_expr(cols, 'm')} AS globalPid
            FROM {table} m""")
        frames.append(_gpu_frame(frame, np.full(len(frame), "Memset", dtype=object),
                                 "gpu_memset", "gpu_memset"))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else _event_frame()


def _global_pid_expr(cols: frozenset[str], alias: str) -> str:
    return f"{alias}.globalPid" if "globalPid" in cols else "-1"


def _gpu_frame(frame: pd.DataFrame, names: np.ndarray, cat: str, kind: str) -> pd.DataFrame:
    start_ns, end_ns = _ints(frame["start"]), _ints(frame["end"])
    out = _event_frame(
        name=names, cat=cat, kind=kind, pid=_ints(frame["deviceId"], 0),
        tid=_ints(frame["streamId"], 0), ts_ns=start_ns,
        dur_ns=np.maximum(end_ns - start_ns, 0), correlation=_ints(frame["correlationId"]),
    )
    gp = _ints(frame["globalPid"])
    # the owning process, only used to namespace correlation ids (dropped afterwards)
    return out.assign(_proc=np.where(gp >= 0, (gp >> 24) & _TID_MASK, -1))


def _event_frame(*, name: Any = (), cat: Any = (), kind: Any = "other",
                 pid: Any = (), tid: Any = (), ts_ns: Any = (), dur_ns: Any = (),
                 correlation: Any = ()) -> pd.DataFrame:
    n = len(ts_ns)
    return pd.DataFrame({
        "name": np.asarray(name, dtype=object) if n else np.array([], dtype=object),
        "cat": np.asarray(cat, dtype=object) if not isinstance(cat, str) else np.full(n, cat, dtype=object),
        "kind": np.full(n, kind, dtype=object) if isinstance(kind, str)
        else np.asarray(kind, dtype=object),
        "pid": np.asarray(pid, dtype=np.int64),
        "tid": np.asarray(tid, dtype=np.int64),
        "ts_ns": np.asarray(ts_ns, dtype=np.int64),
        "dur_ns": np.asarray(dur_ns, dtype=np.int64),
        "correlation": np.asarray(correlation, dtype=np.int64),
    })


def _namespace_correlation(runtime: pd.DataFrame,
                           gpu: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Make correlation ids unique across processes (they are per process in CUPTI)."""
    if "_proc" not in gpu.columns:
        gpu = gpu.assign(_proc=np.full(len(gpu), -1, dtype=np.int64))
    procs = sorted(set(runtime["pid"].tolist()))
    if len(procs) > 1:
        index = {p_: i for i, p_ in enumerate(procs)}
        r_off = np.asarray([index[p_] for p_ in runtime["pid"].tolist()], dtype=np.int64) << 32
        g_off = np.asarray([index.get(p_, 0) for p_ in gpu["_proc"].tolist()], dtype=np.int64) << 32
        runtime = runtime.assign(correlation=np.where(runtime["correlation"] >= 0,
                                                      runtime["correlation"] + r_off, -1))
        gpu = gpu.assign(correlation=np.where(gpu["correlation"] >= 0,
                                              gpu["correlation"] + g_off, -1))
    return runtime, gpu.drop(columns="_proc")


def _finish_events(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort, nest and type through the one finishing step of every reader
    (:func:`ckprof.trace._build.finish_events`); at equal start and duration an
    annotation encloses an op, which encloses a runtime call."""
    kind_rank = {k: i for i, k in enumerate(("user_annotation", "cpu_op", "runtime"))}
    rank = frame["kind"].map(kind_rank).fillna(len(kind_rank)).to_numpy(dtype=np.int64)
    return finish_events(frame, tie=rank)


def _enum_labels(con: sqlite3.Connection, schema: _Schema, table: str) -> dict[int, str]:
    if not schema.has(table):
        return {}
    cols = schema.columns(table)
    if "id" not in cols:
        return {}
    label = [c for c in ("label", "name") if c in cols]
    if not label:
        return {}
    expr = f"COALESCE({', '.join(label)}, '')" if len(label) > 1 else label[0]
    return {int(i): str(v).lower() for i, v in con.execute(f"SELECT id, {expr} FROM {table}")}


def _read_memory(con: sqlite3.Connection, schema: _Schema,
                 runtime: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per-device running sum of CUDA allocations; each row's thread is that of the
    runtime call (cudaMalloc, cudaFree ...) with the same process and correlationId."""
    table = "CUDA_GPU_MEMORY_USAGE_EVENTS"
    empty = pd.DataFrame({c: pd.Series([], dtype=d) for c, d in MEMORY_COLUMNS.items()})
    if not schema.has(table):
        return empty, ["no CUDA memory events (profile with nsys --cuda-memory-usage=true)"]
    cols = schema.columns(table)
    kind_expr = "memKind" if "memKind" in cols else "-1"
    frame = _select(con, f"""
        SELECT start, deviceId, bytes, memoryOperationType AS op, {kind_expr} AS memKind,
               {"globalPid" if "globalPid" in cols else "-1"} AS globalPid,
               {"correlationId" if "correlationId" in cols else "-1"} AS correlationId,
               {"address" if "address" in cols else "-1"} AS address
        FROM {table} ORDER BY start, rowid""")
    ops = _enum_labels(con, schema, "ENUM_CUDA_DEV_MEM_EVENT_OPER")
    kinds = _enum_labels(con, schema, "ENUM_CUDA_MEM_KIND")
    alloc_ids = {i for i, v in ops.items() if "alloc" in v and "dealloc" not in v} or {MEM_OP_ALLOCATION}
    free_ids = {i for i, v in ops.items() if "dealloc" in v or "free" in v or "release" in v} \
        or {MEM_OP_DEALLOCATION}
    host_ids = {i for i, v in kinds.items() if v in ("pageable", "pinned")} if kinds else set(HOST_MEM_KINDS)

    op = _ints(frame["op"])
    mem_kind = _ints(frame["memKind"])
    size = _ints(frame["bytes"], 0)
    is_alloc, is_free = np.isin(op, list(alloc_ids)), np.isin(op, list(free_ids))
    keep = (is_alloc | is_free) & ~np.isin(mem_kind, list(host_ids))
    notes = []
    unknown = int((~(is_alloc | is_free)).sum())
    if unknown:
        notes.append(f"{unknown} CUDA memory event(s) with an unknown operation type were skipped")
    frame = frame.loc[keep]
    signed = np.where(is_alloc[keep], size[keep], -size[keep])
    device_id = _ints(frame["deviceId"], 0)
    gp = _ints(frame["globalPid"])
    pid = np.where(gp >= 0, (gp >> 24) & _TID_MASK, -1)
    if not len(frame):
        return empty, [*notes, "the CUDA memory usage table holds no device allocations"]
    corr = _ints(frame["correlationId"])
    thread_of = {(p_, c_): t_ for p_, c_, t_ in zip(
        runtime["pid"].tolist(), runtime["correlation"].tolist(), runtime["tid"].tolist(),
        strict=True)}
    tid = np.asarray([thread_of.get((p_, c_), -1) if c_ >= 0 else -1
                      for p_, c_ in zip(pid.tolist(), corr.tolist(), strict=True)],
                     dtype=np.int64)
    mem = pd.DataFrame({"ts_ns": _ints(frame["start"]), "device_id": device_id, "pid": pid,
                        "tid": tid, "bytes": signed, "addr": _ints(frame["address"])})
    # NOTE [ nsys CUDA memory counter ]
    # The per-device running sum of allocations minus frees is the counter. It is
    # absolute when nsys collected from process start (the default): every cudaMalloc
    # is seen. With --capture-range (cudaProfilerApi, nvtx) allocations made before the
    # range are missing: the level is relative to the range start, and frees of those
    # earlier blocks would drive it below zero -- then the device's levels are shifted
    # up so the lowest is 0, and a note says memory is relative.
    total = mem.groupby("device_id", sort=False)["bytes"].cumsum().to_numpy(dtype=np.int64,
                                                                           copy=True)
    for dev in sorted(set(device_id.tolist())):
        rows = device_id == dev
        low = int(total[rows].min())
        if low < 0:
            total[rows] -= low
            notes.append(f"cuda:{dev}: nsys saw frees of memory allocated before collection "
                         "started (--capture-range?): memory is relative to collection start")
    if len(set(pid.tolist())) > 1:
        notes.append("CUDA memory events from several processes are summed per device")
    notes.append("CUDA memory from nsys counts cudaMalloc/cudaFree seen while nsys collected "
                 "(the caching allocator's reserved memory, not live tensor bytes)")
    memory = pd.DataFrame({
        "ts_ns": mem["ts_ns"].astype("int64"),
        "device": pd.Categorical([f"cuda:{d}" for d in device_id.tolist()]),
        "pid": mem["pid"].astype("int64"),
        "tid": mem["tid"].astype("int64"),
        "total_allocated_bytes": total,
        "total_reserved_bytes": total,
        "bytes": mem["bytes"].astype("int64"),
        "addr": mem["addr"].astype("int64"),
    })
    memory = memory.sort_values("ts_ns", kind="stable").reset_index(drop=True)
    return memory[list(MEMORY_COLUMNS)], notes


def _export_meta(con: sqlite3.Connection, schema: _Schema) -> Mapping[str, Any]:
    """``META_DATA_EXPORT`` (name, value) when present: export/schema versions."""
    if not schema.has("META_DATA_EXPORT"):
        return {}
    try:
        rows = con.execute("SELECT name, value FROM META_DATA_EXPORT").fetchall()
    except sqlite3.Error:
        return {}
    return {"export": {str(k): v for k, v in rows}}
