"""Write Nsight Systems-schema sqlite files for tests (no nsys needed).

The tables and columns follow the NOTE [ Nsight Systems sqlite schema ] in
``ckprof/trace/nsys.py`` (itself from the Nsight "SQLite Export Schema Reference"): the DDL
below reproduces a recent ``nsys export --type sqlite`` (column names, order, the
``StringIds`` string table, the enum tables, serialized ``globalTid``), including
columns ckprof never reads, so the loader is tested against the real layout.

Two entry points:

* :func:`write_nsys_sqlite` -- from explicit lists of :class:`NvtxRange`,
  :class:`Launch`, :class:`GpuActivity` and :class:`MemEvent`.
* :func:`trace_to_nsys_sqlite` -- converts a loaded Chrome-trace
  :class:`~ckprof.trace.model.Trace` into the sqlite an ``nsys export`` of the same
  run would give: ``user_annotation`` rows become NVTX ranges (``ckprof::`` ones in
  domain ``ckprof``), runtime rows CUDA runtime calls (with the ``_v7000`` suffix
  nsys writes), GPU rows kernels/memcpy/memset, CUDA ``[memory]`` rows allocation /
  deallocation events. CPU ops and Python frames have no nsys equivalent and are
  dropped, as in a real nsys report.

Knobs for robustness tests: ``newer=True`` adds a table and columns an older ckprof
does not know; ``omit`` leaves tables out; ``drop_columns`` removes columns.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ckprof.trace.markers import NVTX_DOMAIN, PREFIX

__all__ = [
    "GpuActivity",
    "Launch",
    "MemEvent",
    "NvtxRange",
    "global_pid",
    "global_tid",
    "trace_to_nsys_sqlite",
    "write_nsys_sqlite",
]

PUSH_POP, START_END, DOMAIN_CREATE = 59, 60, 75
COPY_KIND = {"HtoD": 1, "DtoH": 2, "DtoD": 8, "HtoH": 9}
MEM_KIND_DEVICE, MEM_KIND_PINNED = 2, 1


@dataclass(frozen=True)
class NvtxRange:
    name: str
    start_ns: int
    end_ns: int | None          # None: a range that was never closed
    pid: int = 100
    tid: int = 100
    domain: str = ""            # "" = default domain
    push_pop: bool = True       # False: a start/end range
    registered: bool = True     # message via StringIds (textId) instead of inline text


@dataclass(frozen=True)
class Launch:
    name: str                   # as nsys stores it, e.g. "cudaLaunchKernel_v7000"
    start_ns: int
    end_ns: int
    correlation: int
    pid: int = 100
    tid: int = 100


@dataclass(frozen=True)
class GpuActivity:
    kind: str                   # "kernel" | "memcpy" | "memset"
    name: str                   # kernel name; memcpy: "HtoD"/"DtoH"/...; memset: ignored
    start_ns: int
    end_ns: int
    correlation: int
    device: int = 0
    stream: int = 7
    pid: int = 100


@dataclass(frozen=True)
class MemEvent:
    ts_ns: int
    bytes: int                  # > 0 allocation, < 0 deallocation (stored as abs + op)
    device: int = 0
    pid: int = 100
    mem_kind: int = MEM_KIND_DEVICE
    correlation: int | None = None  # of the runtime call (cudaMalloc/cudaFree) that made it


def global_tid(pid: int, tid: int) -> int:
    """nsys serialized thread id: (pid << 24) | tid (hardware id 0)."""
    return ((pid & 0xFFFFFF) << 24) | (tid & 0xFFFFFF)


def global_pid(pid: int) -> int:
    return (pid & 0xFFFFFF) << 24


# DDL of a recent nsys export (only the tables ckprof may read, plus enums).
_DDL: dict[str, str] = {
    "StringIds": "CREATE TABLE StringIds (id INTEGER NOT NULL PRIMARY KEY, value TEXT NOT NULL)",
    "ENUM_NSYS_EVENT_TYPE": "CREATE TABLE ENUM_NSYS_EVENT_TYPE (id INTEGER NOT NULL PRIMARY KEY, name TEXT, label TEXT)",
    "ENUM_CUDA_DEV_MEM_EVENT_OPER": "CREATE TABLE ENUM_CUDA_DEV_MEM_EVENT_OPER (id INTEGER NOT NULL PRIMARY KEY, name TEXT, label TEXT)",
    "ENUM_CUDA_MEM_KIND": "CREATE TABLE ENUM_CUDA_MEM_KIND (id INTEGER NOT NULL PRIMARY KEY, name TEXT, label TEXT)",
    "NVTX_EVENTS": (
        "CREATE TABLE NVTX_EVENTS (start INTEGER NOT NULL, end INTEGER, eventType INTEGER NOT NULL,"
        " rangeId INTEGER, category INTEGER, color INTEGER, text TEXT, globalTid INTEGER,"
        " endGlobalTid INTEGER, textId INTEGER REFERENCES StringIds(id), domainId INTEGER,"
        " uint64Value INTEGER, int64Value INTEGER, doubleValue REAL, uint32Value INTEGER,"
        " int32Value INTEGER, floatValue REAL, jsonTextId INTEGER, jsonText TEXT)"
    ),
    "CUPTI_ACTIVITY_KIND_RUNTIME": (
        "CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME (start INTEGER NOT NULL, end INTEGER NOT NULL,"
        " eventClass INTEGER NOT NULL, globalTid INTEGER, correlationId INTEGER,"
        " nameId INTEGER NOT NULL REFERENCES StringIds(id), returnValue INTEGER NOT NULL,"
        " callchainId INTEGER)"
    ),
    "CUPTI_ACTIVITY_KIND_KERNEL": (
        "CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (start INTEGER NOT NULL, end INTEGER NOT NULL,"
        " deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, streamId INTEGER NOT NULL,"
        " correlationId INTEGER, globalPid INTEGER, demangledName INTEGER NOT NULL,"
        " shortName INTEGER NOT NULL, mangledName INTEGER, launchType INTEGER,"
        " cacheConfig INTEGER, registersPerThread INTEGER NOT NULL, gridX INTEGER NOT NULL,"
        " gridY INTEGER NOT NULL, gridZ INTEGER NOT NULL, blockX INTEGER NOT NULL,"
        " blockY INTEGER NOT NULL, blockZ INTEGER NOT NULL, staticSharedMemory INTEGER NOT NULL,"
        " dynamicSharedMemory INTEGER NOT NULL, localMemoryPerThread INTEGER NOT NULL,"
        " localMemoryTotal INTEGER NOT NULL, gridId INTEGER NOT NULL,"
        " sharedMemoryExecuted INTEGER, graphNodeId INTEGER, sharedMemoryLimitConfig INTEGER)"
    ),
    "CUPTI_ACTIVITY_KIND_MEMCPY": (
        "CREATE TABLE CUPTI_ACTIVITY_KIND_MEMCPY (start INTEGER NOT NULL, end INTEGER NOT NULL,"
        " deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, streamId INTEGER NOT NULL,"
        " correlationId INTEGER, globalPid INTEGER, bytes INTEGER NOT NULL,"
        " copyKind INTEGER NOT NULL, deprecatedSrcId INTEGER, srcKind INTEGER, dstKind INTEGER,"
        " srcDeviceId INTEGER, srcContextId INTEGER, dstDeviceId INTEGER, dstContextId INTEGER,"
        " migrationCause INTEGER, graphNodeId INTEGER)"
    ),
    "CUPTI_ACTIVITY_KIND_MEMSET": (
        "CREATE TABLE CUPTI_ACTIVITY_KIND_MEMSET (start INTEGER NOT NULL, end INTEGER NOT NULL,"
        " deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL, streamId INTEGER NOT NULL,"
        " correlationId INTEGER, globalPid INTEGER, value INTEGER NOT NULL,"
        " bytes INTEGER NOT NULL, graphNodeId INTEGER, memKind INTEGER)"
    ),
    "CUDA_GPU_MEMORY_USAGE_EVENTS": (
        "CREATE TABLE CUDA_GPU_MEMORY_USAGE_EVENTS (start INTEGER NOT NULL,"
        " globalPid INTEGER NOT NULL, deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL,"
        " address INTEGER NOT NULL, pc INTEGER NOT NULL, bytes INTEGER NOT NULL,"
        " memKind INTEGER NOT NULL, memoryOperationType INTEGER NOT NULL, name TEXT,"
        " correlationId INTEGER, localMemoryPoolAddress INTEGER,"
        " localMemoryPoolReleaseThreshold INTEGER, localMemoryPoolSize INTEGER,"
        " localMemoryPoolUtilizedSize INTEGER, importedMemoryPoolAddress INTEGER,"
        " importedMemoryPoolProcessId INTEGER)"
    ),
}

# what a hypothetical newer nsys adds: a table, and columns in the tables ckprof reads
_NEWER_TABLE = (
    "CREATE TABLE CUPTI_ACTIVITY_KIND_GRAPH_TRACE (start INTEGER NOT NULL, end INTEGER NOT NULL,"
    " deviceId INTEGER, graphId INTEGER, correlationId INTEGER)"
)
_NEWER_COLUMNS: dict[str, tuple[str, ...]] = {
    "NVTX_EVENTS": ("futureNvtxField INTEGER", "futurePayload BLOB"),
    "CUPTI_ACTIVITY_KIND_KERNEL": ("greenContextId INTEGER", "futureKernelField TEXT"),
    "CUPTI_ACTIVITY_KIND_RUNTIME": ("futureRuntimeField REAL",),
    "CUDA_GPU_MEMORY_USAGE_EVENTS": ("streamId INTEGER",),
}


class _Strings:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, value: str) -> int:
        if value not in self.ids:
            self.ids[value] = len(self.ids) + 1
        return self.ids[value]


def write_nsys_sqlite(
    path: str | Path,
    *,
    ranges: Iterable[NvtxRange] = (),
    launches: Iterable[Launch] = (),
    gpu: Iterable[GpuActivity] = (),
    memory: Iterable[MemEvent] = (),
    newer: bool = False,
    omit: Sequence[str] = (),
    drop_columns: dict[str, Sequence[str]] | None = None,
    cuda: bool = True,
) -> Path:
    """Write an nsys-schema sqlite file; returns its path.

    Only tables with rows are created (nsys creates tables lazily), except
    ``StringIds`` and ``NVTX_EVENTS``, which always exist. ``cuda=False`` writes none
    of the CUDA tables even when empty lists were given.
    """
    path = Path(path)
    if path.exists():
        path.unlink()
    ranges, launches, gpu, memory = list(ranges), list(launches), list(gpu), list(memory)
    drop = {k: set(v) for k, v in (drop_columns or {}).items()}
    strings = _Strings()
    rows: dict[str, list[dict[str, object]]] = {
        "NVTX_EVENTS": [], "CUPTI_ACTIVITY_KIND_RUNTIME": [], "CUPTI_ACTIVITY_KIND_KERNEL": [],
        "CUPTI_ACTIVITY_KIND_MEMCPY": [], "CUPTI_ACTIVITY_KIND_MEMSET": [],
        "CUDA_GPU_MEMORY_USAGE_EVENTS": [],
    }

    # domains: one create event per (process, domain), ids from 1 per process
    domain_ids: dict[tuple[int, str], int] = {}
    for r in ranges:
        if r.domain and (r.pid, r.domain) not in domain_ids:
            did = 1 + sum(1 for p, _ in domain_ids if p == r.pid)
            domain_ids[(r.pid, r.domain)] = did
            rows["NVTX_EVENTS"].append({
                "start": 0, "end": None, "eventType": DOMAIN_CREATE, "text": r.domain,
                "globalTid": global_tid(r.pid, r.tid), "domainId": did,
            })
    for i, r in enumerate(ranges):
        row: dict[str, object] = {
            "start": r.start_ns, "end": r.end_ns,
            "eventType": PUSH_POP if r.push_pop else START_END,
            "globalTid": global_tid(r.pid, r.tid), "color": 0xFF4C72B0, "category": 0,
            "domainId": domain_ids.get((r.pid, r.domain), 0),
        }
        if not r.push_pop:
            row["rangeId"] = i + 1
            row["endGlobalTid"] = global_tid(r.pid, r.tid)
        if r.registered:
            row["textId"] = strings(r.name)
        else:
            row["text"] = r.name
        rows["NVTX_EVENTS"].append(row)
    for x in launches:
        rows["CUPTI_ACTIVITY_KIND_RUNTIME"].append({
            "start": x.start_ns, "end": x.end_ns, "eventClass": 1,
            "globalTid": global_tid(x.pid, x.tid), "correlationId": x.correlation,
            "nameId": strings(x.name), "returnValue": 0,
        })
    for g in gpu:
        common = {"start": g.start_ns, "end": g.end_ns, "deviceId": g.device, "contextId": 1,
                  "streamId": g.stream, "correlationId": g.correlation,
                  "globalPid": global_pid(g.pid)}
        if g.kind == "kernel":
            short = g.name.split("<")[0].split("(")[0].rsplit("::", 1)[-1] or g.name
            rows["CUPTI_ACTIVITY_KIND_KERNEL"].append({
                **common, "demangledName": strings(g.name), "shortName": strings(short),
                "mangledName": strings("_Z" + str(len(short)) + short), "registersPerThread": 32,
                "gridX": 1, "gridY": 1, "gridZ": 1, "blockX": 128, "blockY": 1, "blockZ": 1,
                "staticSharedMemory": 0, "dynamicSharedMemory": 0, "localMemoryPerThread": 0,
                "localMemoryTotal": 0, "gridId": g.correlation,
            })
        elif g.kind == "memcpy":
            rows["CUPTI_ACTIVITY_KIND_MEMCPY"].append({
                **common, "bytes": 1024, "copyKind": COPY_KIND.get(g.name, 0)})
        elif g.kind == "memset":
            rows["CUPTI_ACTIVITY_KIND_MEMSET"].append({
                **common, "value": 0, "bytes": 1024, "memKind": MEM_KIND_DEVICE})
        else:
            raise ValueError(f"unknown GPU activity kind {g.kind!r}")
    for m in memory:
        rows["CUDA_GPU_MEMORY_USAGE_EVENTS"].append({
            "start": m.ts_ns, "globalPid": global_pid(m.pid), "deviceId": m.device,
            "contextId": 1, "address": 0x7F0000000000, "pc": 0, "bytes": abs(m.bytes),
            "memKind": m.mem_kind, "memoryOperationType": 0 if m.bytes >= 0 else 1,
            "correlationId": m.correlation,
        })

    con = sqlite3.connect(path)
    try:
        present = [t for t in _DDL if t not in omit and (
            t in ("StringIds", "NVTX_EVENTS") or t.startswith("ENUM_")
            or (cuda and rows.get(t)))]
        for table in present:
            con.execute(_ddl(table, drop.get(table, set()), newer))
        if newer:
            con.execute(_NEWER_TABLE)
        _fill_enums(con, present)
        for table in present:
            if table in rows:
                _insert(con, table, rows[table], drop.get(table, set()))
        if "StringIds" in present:
            con.executemany("INSERT INTO StringIds (id, value) VALUES (?, ?)",
                            [(i, v) for v, i in strings.ids.items()])
        con.commit()
    finally:
        con.close()
    return path


def _ddl(table: str, drop: set[str], newer: bool) -> str:
    ddl = _DDL[table]
    head, body = ddl.split("(", 1)
    cols = [c.strip() for c in _split_columns(body.rsplit(")", 1)[0])]
    cols = [c for c in cols if c.split()[0] not in drop]
    if newer:
        extra = list(_NEWER_COLUMNS.get(table, ()))
        # a newer export may also put new columns first
        cols = extra[:1] + cols + extra[1:]
    return f"{head}({', '.join(cols)})"


def _split_columns(body: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in body:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def _insert(con: sqlite3.Connection, table: str, rows: list[dict[str, object]],
            drop: set[str]) -> None:
    if not rows:
        return
    cols = sorted({k for r in rows for k in r} - drop)
    sql = f"INSERT INTO {table} ({', '.join(f'{c!r}'.replace(chr(39), chr(34)) for c in cols)}) " \
          f"VALUES ({', '.join('?' for _ in cols)})"
    con.executemany(sql, [tuple(r.get(c) for c in cols) for r in rows])


def _fill_enums(con: sqlite3.Connection, present: list[str]) -> None:
    if "ENUM_NSYS_EVENT_TYPE" in present:
        con.executemany("INSERT INTO ENUM_NSYS_EVENT_TYPE VALUES (?, ?, ?)", [
            (33, "NVTX_CATEGORY", "NvtxCategory"), (34, "NVTX_MARK", "NvtxMark"),
            (59, "NVTX_PUSHPOP_RANGE", "NvtxPushPopRange"),
            (60, "NVTX_STARTEND_RANGE", "NvtxStartEndRange"),
            (75, "NVTX_DOMAIN_CREATE", "NvtxDomainCreate")])
    if "ENUM_CUDA_DEV_MEM_EVENT_OPER" in present:
        con.executemany("INSERT INTO ENUM_CUDA_DEV_MEM_EVENT_OPER VALUES (?, ?, ?)", [
            (0, "CUDA_DEV_MEM_EVENT_OPR_ALLOCATION", "Allocation"),
            (1, "CUDA_DEV_MEM_EVENT_OPR_DEALLOCATION", "Deallocation")])
    if "ENUM_CUDA_MEM_KIND" in present:
        con.executemany("INSERT INTO ENUM_CUDA_MEM_KIND VALUES (?, ?, ?)", [
            (0, "CUDA_MEMOPR_MEMORY_KIND_PAGEABLE", "Pageable"),
            (1, "CUDA_MEMOPR_MEMORY_KIND_PINNED", "Pinned"),
            (2, "CUDA_MEMOPR_MEMORY_KIND_DEVICE", "Device"),
            (3, "CUDA_MEMOPR_MEMORY_KIND_ARRAY", "Array"),
            (4, "CUDA_MEMOPR_MEMORY_KIND_MANAGED", "Managed"),
            (5, "CUDA_MEMOPR_MEMORY_KIND_DEVICE_STATIC", "Device Static"),
            (6, "CUDA_MEMOPR_MEMORY_KIND_MANAGED_STATIC", "Managed Static"),
            (7, "CUDA_MEMOPR_MEMORY_KIND_UNKNOWN", "Unknown")])


def trace_to_nsys_sqlite(trace, path: str | Path, *, emit_nvtx: bool = False,
                         **kwargs) -> Path:
    """The nsys sqlite export of the run behind a Chrome-trace :class:`Trace`.

    ``user_annotation`` -> NVTX push/pop ranges (``ckprof::`` names in domain
    ``ckprof``, the rest in the default domain); ``runtime`` -> CUDA runtime calls
    named ``<name>_v7000``; ``kernel``/``gpu_memcpy``/``gpu_memset`` -> GPU activity
    (pid = device, tid = stream); ``[memory]`` rows of ``cuda:*`` devices ->
    allocation/deallocation events (plus one allocation at the start for what the
    counter held before its first event). Other kinds are dropped. ``kwargs`` go to
    :func:`write_nsys_sqlite`.

    ``emit_nvtx=True``: the run was also under ``torch.autograd.profiler.emit_nvtx()``,
    so every cpu_op and non-ckprof annotation is a default-domain NVTX range named the
    way torch names them (``aten::mm, seq = 5, op_id = 12``).
    """
    ev = trace.events
    kind = ev["kind"].astype(str).to_numpy()
    name = ev["name"].astype(str).to_numpy()
    cols = {c: ev[c].to_numpy() for c in ("pid", "tid", "ts_ns", "dur_ns", "correlation", "seq")}
    # the process that owned GPU work: the pid of the CPU threads that launched it
    cpu_pids = [int(p) for p, k in zip(cols["pid"], kind, strict=True) if k == "runtime"]
    host_pid = cpu_pids[0] if cpu_pids else 100
    ranges, launches, gpu = [], [], []
    for i in range(len(ev)):
        k = kind[i]
        pid, tid = int(cols["pid"][i]), int(cols["tid"][i])
        ts, end = int(cols["ts_ns"][i]), int(cols["ts_ns"][i] + cols["dur_ns"][i])
        corr = int(cols["correlation"][i])
        marker = name[i].startswith(PREFIX)
        if k == "user_annotation" and (marker or not emit_nvtx):
            ranges.append(NvtxRange(name[i], ts, end, pid=pid, tid=tid,
                                    domain=NVTX_DOMAIN if marker else ""))
        elif emit_nvtx and k in ("cpu_op", "user_annotation"):
            seq = int(cols["seq"][i])
            label = name[i] + (f", seq = {seq}" if seq >= 0 else "") + f", op_id = {i + 1}"
            ranges.append(NvtxRange(label, ts, end, pid=pid, tid=tid, domain=""))
        elif k == "runtime":
            launches.append(Launch(name[i] + "_v7000", ts, end, corr, pid=pid, tid=tid))
        elif k in ("kernel", "gpu_memcpy", "gpu_memset"):
            gk = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}[k]
            label = name[i]
            if gk == "memcpy":
                label = next((c for c in COPY_KIND if c in label), "DtoD")
            gpu.append(GpuActivity(gk, label, ts, end, corr, device=pid, stream=tid,
                                   pid=host_pid))
    # nsys sees every cudaMalloc from process start: what was live before the first
    # [memory] event of a device (its counter minus that event's bytes) becomes one
    # allocation at the start of the run
    memory = []
    mem = trace.memory
    run_start = int(min(ev["ts_ns"].min(), mem["ts_ns"].min() if len(mem) else ev["ts_ns"].min()))
    seen: set[str] = set()
    for ts, dev, nbytes, total in zip(mem["ts_ns"].tolist(), mem["device"].astype(str).tolist(),
                                      mem["bytes"].tolist(), mem["total_allocated_bytes"].tolist(),
                                      strict=True):
        if not dev.startswith("cuda:"):
            continue
        device = int(dev.split(":")[1])
        if dev not in seen:
            seen.add(dev)
            before = int(total) - int(nbytes) if total >= 0 else 0
            if before > 0:
                memory.append(MemEvent(run_start - 1, before, device=device, pid=host_pid))
        memory.append(MemEvent(int(ts), int(nbytes), device=device, pid=host_pid))
    return write_nsys_sqlite(path, ranges=ranges, launches=launches, gpu=gpu, memory=memory,
                             **kwargs)
