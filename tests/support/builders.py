"""A small fluent builder for synthetic Kineto/Chrome traces (tests only).

Times are given in **microseconds**, exactly as Chrome/Kineto files store ``ts`` and
``dur`` (floats with up to 3 decimals keep nanosecond resolution). The builder emits
the same event shapes torch 2.x writes (checked against real CPU captures and the GPU
traces in ../shared/traces), so a builder trace goes through ``load_trace`` the same
way a real file does.

Example::

    b = (TraceBuilder()
         .step(1, 0, 1000)
         .op("aten::mm", 10, 50, seq=3)
         .launch("cudaLaunchKernel", 20, kernel="gemm", kernel_ts=100, kernel_dur=30)
         .annotation("Optimizer.step#SGD.step", 800, 100)
         .memory(15, total_allocated=4096, bytes=4096))
    trace = b.to_trace()          # ckprof.trace.model.Trace, no file involved
    b.write(tmp_path / "t.json")  # or .json.gz with gzip=True

Events: ``step``, ``op`` (cpu_op; ``seq=``, ``cat="Operator"`` for legacy), ``annotation``
(record_function), ``marker`` (ckprof names, short forms), ``evaluate`` (autograd
``evaluate_function: <node>`` with the node record inside), ``python`` (with_stack
frames), ``runtime`` / ``kernel`` / ``launch`` (runtime + GPU event sharing a fresh
correlation), ``memory`` (``[memory]``, ``device="cpu"|"cuda:N"``), ``meta`` (top-level
keys, e.g. ``ckprof={...}``), ``raw``. Outputs: ``events()``, ``to_json()``,
``write(path, gzip=False)``, ``to_trace()``.

``to_trace()`` builds the Trace directly (categories mapped to kinds by the loader's own
``kind_of_category``,
``parent``/``depth`` by a simple per-thread stack). It is a reference implementation
of the model contract for small inputs, not a fast loader; tests/test_phases.py checks
that it equals ``load_trace`` of the written file.
"""

from __future__ import annotations

import gzip as _gzip
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ckprof.trace._build import kind_of_category
from ckprof.trace.markers import (
    BACKWARD,
    CHECKPOINT_PREFIX,
    FORWARD,
    OPTIMIZER,
    PHASE_PREFIX,
    RECOMPUTE_PREFIX,
    ZERO_GRAD,
)
from ckprof.trace.model import EVENT_COLUMNS, MEMORY_COLUMNS, Trace

__all__ = ["EVAL_PREFIX", "TraceBuilder", "trace_from_chrome"]

EVAL_PREFIX = "autograd::engine::evaluate_function: "

_GPU_KINDS = {"kernel", "gpu_memcpy", "gpu_memset", "gpu_annotation"}


def _us(x: float) -> float:
    return round(float(x), 3)


class TraceBuilder:
    """Accumulates Chrome trace events; every method returns ``self``.

    Defaults: CPU process ``pid`` (1000) and main thread ``tid`` (1000); GPU events
    go to device ``gpu_pid`` (0) and stream 7. ``seq=-1`` / ``correlation=None``
    mean "argument absent", like in real traces.
    """

    def __init__(self, *, pid: int = 1000, tid: int = 1000, gpu_pid: int = 0, stream: int = 7):
        self.pid = pid
        self.tid = tid
        self.gpu_pid = gpu_pid
        self.stream = stream
        self._events: list[dict[str, Any]] = []
        self._meta: dict[str, Any] = {
            "schemaVersion": 1,
            "deviceProperties": [],
            "displayTimeUnit": "ms",
            "baseTimeNanoseconds": 0,
        }
        self._ext = 0
        self._corr = 100_000
        self._open: dict[str, list[tuple[int, int]]] = {}  # device -> open (size, addr)

    # ---- CPU side ------------------------------------------------------------
    def _x(self, cat: str, name: str, ts: float, dur: float, *, pid: int | None,
           tid: int | None, args: dict[str, Any]) -> TraceBuilder:
        if dur < 0:
            raise ValueError(f"negative duration for {name}")
        self._events.append({
            "ph": "X", "cat": cat, "name": name,
            "pid": self.pid if pid is None else pid,
            "tid": self.tid if tid is None else tid,
            "ts": _us(ts), "dur": _us(dur), "args": args,
        })
        return self

    def _next_ext(self, external_id: int | None) -> int:
        if external_id is not None:
            return external_id
        self._ext += 1
        return self._ext

    def op(self, name: str, ts: float, dur: float, *, tid: int | None = None,
           pid: int | None = None, seq: int = -1, external_id: int | None = None,
           cat: str = "cpu_op") -> TraceBuilder:
        """A cpu_op (``seq >= 0`` writes ``Sequence number``)."""
        args: dict[str, Any] = {"External id": self._next_ext(external_id), "Record function id": 0}
        if seq >= 0:
            args["Sequence number"] = int(seq)
            args["Fwd thread id"] = 0
        return self._x(cat, name, ts, dur, pid=pid, tid=tid, args=args)

    def annotation(self, name: str, ts: float, dur: float, *, tid: int | None = None,
                   pid: int | None = None) -> TraceBuilder:
        """A ``record_function`` range (cat ``user_annotation``)."""
        args = {"External id": self._next_ext(None), "Record function id": 0}
        return self._x("user_annotation", name, ts, dur, pid=pid, tid=tid, args=args)

    def step(self, n: int, ts: float, dur: float, *, tid: int | None = None) -> TraceBuilder:
        """``ProfilerStep#n``."""
        return self.annotation(f"ProfilerStep#{n}", ts, dur, tid=tid)

    def marker(self, name: str, ts: float, dur: float, *, tid: int | None = None) -> TraceBuilder:
        """A ckprof marker: ``forward``/``backward``/``optimizer``/``zero_grad``,
        ``checkpoint:<region>``, ``recompute:<region>``, ``phase:<name>``, or a full
        ``ckprof::`` name."""
        full = {"forward": FORWARD, "backward": BACKWARD, "optimizer": OPTIMIZER,
                "zero_grad": ZERO_GRAD}.get(name)
        if full is None:
            if name.startswith("ckprof::"):
                full = name
            elif name.startswith("checkpoint:"):
                full = CHECKPOINT_PREFIX + name.split(":", 1)[1]
            elif name.startswith("recompute:"):
                full = RECOMPUTE_PREFIX + name.split(":", 1)[1]
            elif name.startswith("phase:"):
                full = PHASE_PREFIX + name.split(":", 1)[1]
            else:
                raise ValueError(f"unknown marker {name!r}")
        return self.annotation(full, ts, dur, tid=tid)

    def evaluate(self, node: str, ts: float, dur: float, *, seq: int = -1,
                 tid: int | None = None, node_dur: float | None = None) -> TraceBuilder:
        """``autograd::engine::evaluate_function: <node>`` with the node op nested
        inside (as torch records it), both carrying ``seq``."""
        self.op(EVAL_PREFIX + node, ts, dur, seq=seq, tid=tid)
        inner = max(dur - 0.002, 0.0) if node_dur is None else node_dur
        return self.op(node, ts + 0.001, inner, seq=seq, tid=tid)

    def python(self, name: str, ts: float, dur: float, *, tid: int | None = None) -> TraceBuilder:
        """A ``python_function`` frame (with_stack=True traces)."""
        return self._x("python_function", name, ts, dur, pid=None, tid=tid,
                       args={"Python id": len(self._events)})

    # ---- GPU side ------------------------------------------------------------
    def runtime(self, name: str, ts: float, dur: float, *, correlation: int,
                tid: int | None = None, external_id: int = -1,
                cat: str = "cuda_runtime") -> TraceBuilder:
        args: dict[str, Any] = {"cbid": 211, "correlation": int(correlation)}
        if external_id >= 0:
            args["External id"] = external_id
        return self._x(cat, name, ts, dur, pid=None, tid=tid, args=args)

    def kernel(self, name: str, ts: float, dur: float, *, correlation: int | None = None,
               stream: int | None = None, device: int | None = None, external_id: int = -1,
               cat: str = "kernel") -> TraceBuilder:
        """A GPU event (``cat`` kernel / gpu_memcpy / gpu_memset); ``correlation=None``
        leaves it unmatched."""
        dev = self.gpu_pid if device is None else device
        strm = self.stream if stream is None else stream
        args: dict[str, Any] = {"device": dev, "context": 1, "stream": strm}
        if correlation is not None:
            args["correlation"] = int(correlation)
        if external_id >= 0:
            args["External id"] = external_id
        return self._x(cat, name, ts, dur, pid=dev, tid=strm, args=args)

    def launch(self, name: str = "cudaLaunchKernel", ts: float = 0.0, dur: float = 2.0, *,
               kernel: str = "kernel", kernel_ts: float, kernel_dur: float,
               tid: int | None = None, stream: int | None = None,
               cat: str = "kernel") -> TraceBuilder:
        """A runtime launch plus the GPU event it launched, sharing a fresh correlation."""
        self._corr += 1
        self.runtime(name, ts, dur, correlation=self._corr, tid=tid)
        return self.kernel(kernel, kernel_ts, kernel_dur, correlation=self._corr,
                           stream=stream, cat=cat)

    # ---- memory and metadata -------------------------------------------------
    def memory(self, ts: float, *, bytes: int, total_allocated: int | None = None,
               total_reserved: int | None = None, device: str = "cpu",
               tid: int | None = None, addr: int | None = None) -> TraceBuilder:
        """A ``[memory]`` instant event; ``device`` is ``"cpu"`` or ``"cuda:N"``.
        ``total_allocated=None`` omits the field (legacy traces). ``addr`` is the
        block address; by default an allocation gets a fresh one and a free the address
        of the latest allocation of the same size on that device not yet freed (a fresh
        one when there is none), as real traces pair them."""
        if device == "cpu":
            dtype, did = 0, -1
        else:
            m = re.fullmatch(r"cuda:(\d+)", device)
            if m is None:
                raise ValueError(f"device must be 'cpu' or 'cuda:N', not {device!r}")
            dtype, did = 1, int(m.group(1))
        if addr is None:
            addr = 1000 + len(self._events)
            open_blocks = self._open.setdefault(device, [])
            if bytes > 0:
                open_blocks.append((int(bytes), addr))
            elif bytes < 0:
                same = [i for i, (size, _a) in enumerate(open_blocks) if size == -int(bytes)]
                if same:
                    addr = open_blocks.pop(same[-1])[1]
        args: dict[str, Any] = {"Bytes": int(bytes), "Device Id": did, "Device Type": dtype,
                                "Addr": int(addr)}
        if total_allocated is not None:
            args["Total Allocated"] = int(total_allocated)
            args["Total Reserved"] = int(total_reserved if total_reserved is not None else 0)
        self._events.append({"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]",
                             "pid": self.pid, "tid": self.tid if tid is None else tid,
                             "ts": _us(ts), "args": args})
        return self

    def meta(self, **top_level: Any) -> TraceBuilder:
        """Top-level keys, e.g. ``meta(ckprof={...}, distributedInfo={...})``."""
        self._meta.update(top_level)
        return self

    def raw(self, event: Mapping[str, Any]) -> TraceBuilder:
        """Append a raw Chrome event dict as is."""
        self._events.append(dict(event))
        return self

    # ---- output --------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        """The Chrome events (copies), in insertion order."""
        return [json.loads(json.dumps(e)) for e in self._events]

    def to_json(self) -> dict[str, Any]:
        """The Kineto wrapper object: metadata keys plus ``traceEvents``."""
        out = dict(json.loads(json.dumps(self._meta)))
        out["traceEvents"] = self.events()
        return out

    def write(self, path: str | Path, *, gzip: bool = False) -> Path:
        path = Path(path)
        text = json.dumps(self.to_json(), indent=1)
        if gzip:
            with _gzip.open(path, "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    def to_trace(self, path: str = "<builder>") -> Trace:
        return trace_from_chrome(self.to_json(), path=path)


# ---- Chrome JSON -> Trace (reference conversion for tests) -------------------------

def _num_id(value: Any, names: dict[int, str]) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    text = str(value)
    m = re.fullmatch(r"(?:stream\s*)?(-?\d+)", text.strip())
    if m:
        return int(m.group(1))
    for code, name in names.items():
        if name == text:
            return code
    code = -(len(names) + 1)
    names[code] = text
    return code


def _memory_device(args: Mapping[str, Any]) -> str:
    dtype = int(args.get("Device Type", 0))
    if dtype == 0:
        return "cpu"
    return f"cuda:{max(int(args.get('Device Id', 0)), 0)}"


def _parents(pid: np.ndarray, tid: np.ndarray, tree: np.ndarray, ts: np.ndarray,
             end: np.ndarray, gpu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(ts)
    parent = np.full(n, -1, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int32)
    stacks: dict[tuple[int, int, int], list[int]] = {}
    for i in range(n):  # rows are sorted by (ts, -dur): a plain stack per thread works
        if gpu[i]:
            continue
        st = stacks.setdefault((int(pid[i]), int(tid[i]), int(tree[i])), [])
        while st and end[st[-1]] <= ts[i]:
            st.pop()
        while st and end[st[-1]] < end[i]:  # partial overlap: not a parent
            st.pop()
        if st:
            parent[i] = st[-1]
            depth[i] = depth[st[-1]] + 1
        st.append(i)
    return parent, depth


def trace_from_chrome(obj: Mapping[str, Any] | list[Any], *, path: str = "<memory>") -> Trace:
    """Build a Trace from a parsed Chrome/Kineto JSON object (or bare event list)."""
    if isinstance(obj, list):
        raw_events: Iterable[Mapping[str, Any]] = obj
        meta: dict[str, Any] = {}
    else:
        raw_events = obj.get("traceEvents", [])
        meta = {k: v for k, v in obj.items() if k != "traceEvents"}
    names: dict[int, str] = {}
    rows: list[tuple[Any, ...]] = []
    mem_rows: list[tuple[Any, ...]] = []
    legacy = False
    for e in raw_events:
        ph = e.get("ph")
        args = e.get("args") or {}
        if ph == "i" and e.get("name") == "[memory]":
            mem_rows.append((
                round(float(e["ts"]) * 1000), _memory_device(args),
                _num_id(e.get("pid", 0), names), _num_id(e.get("tid", 0), names),
                int(args.get("Total Allocated", -1)), int(args.get("Total Reserved", -1)),
                int(args.get("Bytes", 0)), int(args.get("Addr", -1)),
            ))
            continue
        if ph != "X":
            continue
        cat = str(e.get("cat", ""))
        legacy = legacy or cat in ("Operator", "Kernel", "Runtime")
        kind = kind_of_category(cat)
        ext = args.get("External id", args.get("external id", -1))
        rows.append((
            str(e.get("name", "")), cat, kind,
            _num_id(e.get("pid", 0), names), _num_id(e.get("tid", 0), names),
            round(float(e["ts"]) * 1000), max(round(float(e.get("dur", 0)) * 1000), 0),
            int(args.get("correlation", -1)), int(ext) if ext is not None else -1,
            int(args.get("Sequence number", -1)),
        ))
    cols = ["name", "cat", "kind", "pid", "tid", "ts_ns", "dur_ns", "correlation",
            "external_id", "seq"]
    df = pd.DataFrame(rows, columns=cols)
    if len(df):
        df = df.assign(_neg=-df["dur_ns"]).sort_values(["ts_ns", "_neg"], kind="stable")
        df = df.drop(columns="_neg").reset_index(drop=True)
    kind = df["kind"].to_numpy(dtype=object)
    gpu = np.isin(kind, list(_GPU_KINDS))
    tree = (kind == "python_function").astype(np.int64)
    ts = df["ts_ns"].to_numpy(dtype=np.int64)
    end = ts + df["dur_ns"].to_numpy(dtype=np.int64)
    parent, depth = _parents(df["pid"].to_numpy(), df["tid"].to_numpy(), tree, ts, end, gpu)
    df = df.assign(parent=parent, depth=depth)
    for col, dtype in EVENT_COLUMNS.items():
        df[col] = df[col].astype(dtype) if dtype != "category" else df[col].astype("category")
    df = df[list(EVENT_COLUMNS)]
    df.index = pd.RangeIndex(len(df))
    mem = pd.DataFrame(mem_rows, columns=list(MEMORY_COLUMNS))
    mem = mem.sort_values("ts_ns", kind="stable").reset_index(drop=True)
    for col, dtype in MEMORY_COLUMNS.items():
        mem[col] = mem[col].astype(dtype)
    ck = meta.get("ckprof")
    return Trace.from_frames(path, df, mem, metadata=meta,
                 ckprof=ck if isinstance(ck, Mapping) else None,
                 source_format="kineto-legacy" if legacy else "kineto",
                 thread_names=names, notes=())
