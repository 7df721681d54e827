"""Independent reconstructions from a trace file's raw JSON, for exact comparisons.

Nothing here uses ckprof's loader or analysis: the file is parsed with ``json`` (numbers
as ``Decimal``, so microseconds become nanoseconds exactly), nesting is rebuilt with a
plain stack per thread, phases come from the ckprof marker ranges with the documented
precedence (recompute > optimizer/zero_grad > backward > forward > other, single-threaded
CPU traces), and memory blocks are paired last-in-first-out per address with a dict of
stacks. Slow and obvious on purpose.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

PDM = "PythonDispatchMode"
FACTORY = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
           "aten::new_empty_strided", "aten::zeros", "aten::zeros_like", "aten::new_zeros",
           "aten::ones", "aten::ones_like", "aten::new_ones", "aten::full", "aten::full_like",
           "aten::new_full", "aten::resize_", "aten::zero_", "aten::fill_"}


def ns(x: Any) -> int:
    return int((Decimal(str(x)) * 1000).to_integral_value())


@dataclass
class Ev:
    idx: int
    name: str
    cat: str
    tid: int
    ts: int
    dur: int
    parent: Ev | None = None
    children: list[Ev] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.ts + self.dur


@dataclass
class Raw:
    events: list[Ev]
    memory: list[dict]          # ts (ns), bytes, addr, device, tid, in file order sorted by ts
    meta: dict
    _named: dict[str, list[Ev]] = field(default_factory=dict)

    def named(self, prefix: str) -> list[Ev]:
        if prefix not in self._named:
            self._named[prefix] = [e for e in self.events if e.name.startswith(prefix)]
        return self._named[prefix]


def read_raw(path: Path) -> Raw:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as fh:
        data = json.load(fh, parse_float=Decimal)
    events, memory = [], []
    for i, e in enumerate(data["traceEvents"]):
        if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation"):
            events.append(Ev(i, e["name"], e["cat"], int(e["tid"]), ns(e["ts"]), ns(e["dur"])))
        elif e.get("ph") == "i" and e.get("name") == "[memory]":
            a = e["args"]
            memory.append({"ts": ns(e["ts"]), "bytes": int(a["Bytes"]), "addr": int(a["Addr"]),
                           "device": int(a["Device Type"]), "tid": int(e["tid"]),
                           "total": int(a["Total Allocated"])})
    events.sort(key=lambda e: (e.ts, -e.dur, e.idx))
    stacks: dict[int, list[Ev]] = {}
    for e in events:  # plain stack per thread (these traces nest properly)
        st = stacks.setdefault(e.tid, [])
        while st and st[-1].end <= e.ts:
            st.pop()
        if st and e.end <= st[-1].end:
            e.parent = st[-1]
            st[-1].children.append(e)
        st.append(e)
    memory.sort(key=lambda m: m["ts"])  # stable: file order on ties
    return Raw(events, memory, {k: v for k, v in data.items() if k != "traceEvents"})


def self_ns(e: Ev) -> int:
    return e.dur - sum(c.dur for c in e.children)


def strip(name: str) -> str:
    return name[6:] if name.startswith("aten::") else name


def call_of(e: Ev) -> Ev:
    """The op call an op row belongs to: PythonDispatchMode frames and same-named ops
    directly inside one belong to the op around the frame."""
    p = e.parent
    if e.name == PDM and p is not None and p.cat == "cpu_op":
        return call_of(p)
    if p is not None and p.name == PDM and p.cat == "cpu_op":
        outer = call_of(p)
        if outer is not p and strip(outer.name) == strip(e.name):
            return outer
    return e


def owner_of_alloc(op: Ev) -> Ev:
    """The call that owns memory allocated inside ``op`` (allocator helpers -> caller)."""
    c = call_of(op)
    if c is not op:
        return owner_of_alloc(c)
    if op.name in FACTORY and op.parent is not None and op.parent.cat == "cpu_op":
        return owner_of_alloc(op.parent)
    return op


def innermost_op(raw: Raw, tid: int, t: int) -> Ev | None:
    best = None
    for e in raw.events:
        if e.cat == "cpu_op" and e.tid == tid and e.ts <= t < e.end and (
                best is None or (e.ts, -e.dur, e.idx) > (best.ts, -best.dur, best.idx)):
            best = e
    return best


def in_any(t: int, ranges: list[Ev]) -> Ev | None:
    """The latest-started range containing ``t`` (the innermost one when they nest)."""
    hit = [r for r in ranges if r.ts <= t < r.end]
    return max(hit, key=lambda r: (r.ts, -r.dur)) if hit else None


def phase_at(raw: Raw, t: int) -> tuple[str, str]:
    """(phase, region) at instant ``t`` from the ckprof markers (single thread)."""
    rc = in_any(t, raw.named("ckprof::recompute::"))
    if rc is not None:
        return "recompute", rc.name[len("ckprof::recompute::"):]
    if in_any(t, raw.named("ckprof::optimizer")) or in_any(t, raw.named("ckprof::zero_grad")):
        return "optimizer", ""
    if in_any(t, raw.named("ckprof::backward")):
        return "backward", ""
    if in_any(t, raw.named("ckprof::forward")):
        return "forward", ""
    return "other", ""


def checkpoint_region(raw: Raw, t: int) -> str:
    ck = in_any(t, raw.named("ckprof::checkpoint::"))
    return ck.name[len("ckprof::checkpoint::"):] if ck is not None else ""


def pair_blocks(memory: list[dict]) -> list[dict]:
    """Allocations with their free (LIFO per address): dicts with ``alloc`` (position),
    ``free`` (position or None), ``bytes``; unmatched frees are returned with alloc None."""
    open_: dict[int, list[int]] = {}
    blocks: dict[int, dict] = {}
    out = []
    for i, m in enumerate(memory):
        if m["bytes"] > 0:
            open_.setdefault(m["addr"], []).append(i)
            blocks[i] = {"alloc": i, "free": None, "bytes": m["bytes"]}
            out.append(blocks[i])
        elif m["bytes"] < 0:
            st = open_.get(m["addr"])
            if st:
                blocks[st.pop()]["free"] = i
            else:
                out.append({"alloc": None, "free": i, "bytes": m["bytes"]})
    return out


def in_steps(raw: Raw, t: int) -> bool:
    return in_any(t, raw.named("ProfilerStep#")) is not None


def ranges_per_step(trace: dict | Path, prefix: str) -> dict[int, int]:
    """How many complete ranges named ``prefix...`` start inside each ProfilerStep#N of
    a trace (its JSON object, or a .json / .json.gz file)."""
    if not isinstance(trace, dict):
        opener = gzip.open if str(trace).endswith(".gz") else open
        with opener(trace, "rt") as fh:
            trace = json.load(fh)
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    steps = [(int(e["name"].split("#")[1]), e["ts"], e["ts"] + e["dur"]) for e in events
             if e["name"].startswith("ProfilerStep#")]
    out = {n: 0 for n, _, _ in steps}
    for e in events:
        if e["name"].startswith(prefix):
            for n, s, t in steps:
                if s <= e["ts"] < t:
                    out[n] += 1
    return out
