"""Turn decoded event columns into a :class:`~ckprof.trace.model.Trace`.

Both readers (the fast msgspec reader in ``kineto/fast`` and the careful stdlib reader in
``kineto/careful``) produce the same intermediate :class:`Columns` object; everything that
decides *meaning* (kind mapping, id parsing, sorting, the event tree, memory devices)
lives here once, so the two readers cannot disagree about it.

# NOTE [ Event tree rules ]
# Events are sorted by (ts_ns, -dur_ns, file order): an enclosing event precedes what
# it encloses, and exact duplicates keep their file order. Trees are built per
# (tree, pid, tid), where tree is "python" for ``python_function`` events and "ops"
# for every other CPU-side kind; GPU-side kinds (kernel, gpu_memcpy, gpu_memset,
# gpu_annotation) are never nested: parent -1, depth 0.
#
# Event P encloses event C when P starts no later than C, C ends no later than P, and
# C starts strictly before P ends (a zero-length event at P's end is not inside P).
# One linear pass with a stack per tree: entries that ended at or before C's start are
# popped; C's parent is the innermost stack entry that encloses it. An event that only
# *partially* overlaps the top of the stack (starts inside it, ends after it) is not
# put under it: it goes under the innermost entry that fully encloses it (or becomes a
# root), and is pushed, so events inside it still find it. An exact duplicate nests
# under its twin (it is enclosed by it). No recursion anywhere: any depth works.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ckprof._text import printable
from ckprof.trace import _native
from ckprof.trace.capture_metadata import clean_ckprof_metadata
from ckprof.trace.model import EVENT_COLUMNS, KINDS, MEMORY_COLUMNS, Trace
from ckprof.trace.table import Coded, Table, factorize

if TYPE_CHECKING:  # imported by the functions that build frames: reading needs no pandas
    import pandas as pd

__all__ = ["Columns", "IdMapper", "Interner", "build_trace", "kind_of_category"]

# raw category (lower-cased) -> kind; anything else is "other"
_KIND_OF_CAT: dict[str, str] = {
    "cpu_op": "cpu_op",
    "operator": "cpu_op",
    "user_annotation": "user_annotation",
    "python_function": "python_function",
    "kernel": "kernel",
    "gpu_memcpy": "gpu_memcpy",
    "memcpy": "gpu_memcpy",
    "gpu_memset": "gpu_memset",
    "memset": "gpu_memset",
    "cuda_runtime": "runtime",
    "cuda_driver": "runtime",
    "runtime": "runtime",
    "hip_runtime": "runtime",
    "hip_driver": "runtime",
    "gpu_user_annotation": "gpu_annotation",
}

_GPU_SIDE = frozenset({"kernel", "gpu_memcpy", "gpu_memset", "gpu_annotation"})

_LEGACY_CATS = frozenset({"Operator", "Kernel", "Runtime", "Memcpy", "Memset"})


def kind_of_category(cat: str) -> str:
    """The normalised kind (one of ``KINDS``) of a raw Chrome-trace category."""
    return _KIND_OF_CAT.get(cat.lower(), "other")


class Interner:
    """Strings -> dense integer codes, shared by all chunks of one file."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.values: list[str] = []

    def code(self, text: str) -> int:
        c = self.codes.get(text)
        if c is None:
            c = self.codes[text] = len(self.values)
            self.values.append(text)
        return c

    def encode_uniques(self, uniques: list[str]) -> np.ndarray:
        """Global codes for a chunk's local unique values (in local code order)."""
        return np.fromiter((self.code(u) for u in uniques), dtype=np.int64, count=len(uniques))


class IdMapper:
    """pid/tid values -> int64. Numeric text ("25738") and ``"stream 7"`` are parsed;
    other text gets a stable negative code (from its CRC32) listed in ``names``."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self._by_text: dict[str, int] = {}

    def snapshot(self) -> tuple[dict[int, str], dict[str, int]]:
        return dict(self.names), dict(self._by_text)

    def restore(self, state: tuple[dict[int, str], dict[str, int]]) -> None:
        self.names, self._by_text = dict(state[0]), dict(state[1])

    def map(self, value: Any) -> int | None:
        """The int64 id for a JSON pid/tid value, or None when it is unusable.

        Text that Python's ``int()`` reads ("25738", " 7") is that number (numpy reads
        text ids the same way); ``"stream 7"`` is 7; other text gets a code."""
        if type(value) is int:
            return value if -(2**63) <= value < 2**63 else None
        if isinstance(value, float):
            return int(value) if value.is_integer() and abs(value) < 2**63 else None
        if isinstance(value, bool) or not isinstance(value, str):
            return None
        number = _int_or_none(value)
        if number is None:
            head, _, tail = value.strip().rpartition(" ")
            if head.lower() == "stream":
                number = _int_or_none(tail)
        if number is not None:
            return number if -(2**63) <= number < 2**63 else None
        code = self._by_text.get(value)
        if code is None:
            code = -1 - (zlib.crc32(value.encode("utf-8", "surrogatepass")) & 0x7FFFFFFF)
            while code in self.names:  # CRC collision: probe downwards, deterministic
                code -= 1
            self.names[code] = value
            self._by_text[value] = code
        return code


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


@dataclass
class Columns:
    """Decoded events in file order, as numpy columns (one file, all chunks merged).

    ``name``/``cat`` are codes into ``names``/``cats`` interners. Memory columns hold
    ``[memory]`` instant events; ``mem_device`` codes index ``devices``.
    """

    names: Interner = field(default_factory=Interner)
    cats: Interner = field(default_factory=Interner)
    devices: Interner = field(default_factory=Interner)
    ids: IdMapper = field(default_factory=IdMapper)
    ev: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in _EV_KEYS})
    mem: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in _MEM_KEYS})
    n_events: int = 0
    n_memory: int = 0
    #: events skipped, by reason ("ts is missing or not a number" -> count)
    skipped: dict[str, int] = field(default_factory=dict)

    def add_events(self, **cols: np.ndarray) -> None:
        n = len(cols["ts_ns"])
        for k in _EV_KEYS:
            arr = cols[k]
            assert len(arr) == n, k
            self.ev[k].append(arr)
        self.n_events += n

    def add_memory(self, **cols: np.ndarray) -> None:
        n = len(cols["ts_ns"])
        for k in _MEM_KEYS:
            self.mem[k].append(cols[k])
        self.n_memory += n

    def skip(self, reason: str, count: int = 1) -> None:
        if count:
            self.skipped[reason] = self.skipped.get(reason, 0) + count


_EV_KEYS = ("name", "cat", "pid", "tid", "ts_ns", "dur_ns", "correlation", "external_id", "seq")
_MEM_KEYS = ("ts_ns", "device", "pid", "tid", "total_allocated_bytes", "total_reserved_bytes",
             "bytes", "addr")


def device_label(device_type: int, device_id: int) -> str:
    """``[memory]`` Device Type/Id -> ``"cpu"``, ``"cuda:<id>"``, ``"device<type>:<id>"``."""
    if device_type == 0:
        return "cpu"
    if device_type == 1:
        return f"cuda:{device_id}"
    return f"device{device_type}:{device_id}"


def _concat(parts: list[np.ndarray], dtype: str) -> np.ndarray:
    if not parts:
        return np.empty(0, dtype=dtype)
    if len(parts) == 1:
        return parts[0].astype(dtype, copy=False)
    return np.concatenate(parts).astype(dtype, copy=False)


def _coded(codes: np.ndarray, values: list[str]) -> Coded:
    """Coded column over the values that occur, categories in first-seen order."""
    used = np.zeros(len(values), dtype=bool)
    used[codes] = True
    if used.all():
        return Coded(codes.astype(np.int32, copy=False), np.array(values, dtype=object))
    remap = np.cumsum(used) - 1
    kept = [v for v, u in zip(values, used, strict=True) if u]
    return Coded(remap[codes].astype(np.int32, copy=False), np.array(kept, dtype=object))


def _group_ids(tree: np.ndarray, pid: np.ndarray, tid: np.ndarray) -> np.ndarray:
    """Dense ids for (tree, pid, tid) triples (vectorised)."""
    return factorize(tree.astype(np.int64), pid, tid)[0]


def _sorted_coded(codes: np.ndarray, values: list[str]) -> Coded:
    """Coded column with sorted categories (stable whatever order the readers met them)."""
    rank = np.argsort(np.argsort(np.array(values, dtype=object))) if values else np.empty(0)
    return _coded(rank[codes].astype(np.int64) if len(codes) else codes, sorted(values))


def _tree_loop(group: np.ndarray, ts: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference stack algorithm (NOTE [ Event tree rules ]) over rows in sorted order.

    Returns (parent position within these rows or -1, depth)."""
    par_out = [-1] * len(ts)
    dep_out = [0] * len(ts)
    stacks: dict[int, list[tuple[int, int, int]]] = {}  # entry: (end, position, depth)
    for pos, (g, t0, t1) in enumerate(zip(group.tolist(), ts.tolist(), end.tolist(),
                                          strict=True)):
        stack = stacks.get(g)
        if stack is None:
            stack = stacks[g] = []
        while stack and stack[-1][0] <= t0:
            stack.pop()
        if stack:
            top = stack[-1]
            if t1 <= top[0]:
                par_out[pos] = top[1]
                dep_out[pos] = top[2] + 1
            else:  # partial overlap: innermost entry that fully encloses us
                for entry in reversed(stack):
                    if t1 <= entry[0] and entry[0] > t0:
                        par_out[pos] = entry[1]
                        dep_out[pos] = entry[2] + 1
                        break
        stack.append((t1, pos, dep_out[pos]))
    return np.asarray(par_out, dtype=np.int64), np.asarray(dep_out, dtype=np.int32)


def _tree_nested(group: np.ndarray, ts: np.ndarray, end: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised tree for groups whose events nest properly (no partial overlaps).

    Every event becomes an open and a close token; sorted by (group, time, closes
    before opens, LIFO among closes), a running +1/-1 sum is the stack depth, and an
    event's parent is the last earlier open token one level up. A zero-length event's
    close directly follows its open. Returns (parent position, depth, ok) where ``ok``
    is False for every row of a group whose tokens are not properly nested; those
    groups must go through :func:`_tree_loop`."""
    n = len(ts)
    rank = np.arange(n, dtype=np.int64)
    zero = end == ts
    # token keys: (group, time, then type and order packed in one key): type 0 = close
    # (LIFO: later opened closes first), 1 = open; a zero-length close follows its open
    t_group = np.concatenate([group, group])
    t_time = np.concatenate([ts, np.where(zero, ts, end)])
    open_key = 4 * n + 2 * rank  # type 1 sorts after every close key
    close_key = np.where(zero, open_key + 1, n - rank)
    del rank
    order = np.lexsort((np.concatenate([open_key, close_key]), t_time, t_group))
    del t_group, t_time, open_key, close_key
    running = np.cumsum(np.where(order < n, 1, -1).astype(np.int32), dtype=np.int64)
    token_pos = np.empty(2 * n, dtype=np.int64)
    token_pos[order] = np.arange(2 * n, dtype=np.int64)
    del order
    open_pos, close_pos = token_pos[:n], token_pos[n:]
    depth = running[open_pos] - 1
    # properly nested: after an event's close, the depth is back to its own depth
    bad_row = running[close_pos] != depth
    del running
    # parent: last open token before ours with depth - 1 (same group by construction)
    width = 2 * n + 1
    key = depth * width + open_pos
    by_key = np.argsort(key, kind="stable")
    sorted_key = key[by_key]
    query = (depth - 1) * width + open_pos
    idx = np.searchsorted(sorted_key, query, side="left") - 1
    parent = np.where(depth > 0, by_key[np.clip(idx, 0, n - 1)], -1)
    bad_groups = np.unique(group[bad_row])
    ok = ~np.isin(group, bad_groups)
    return parent, depth.astype(np.int32), ok


def _tree(kind_codes: np.ndarray, pid: np.ndarray, tid: np.ndarray, ts: np.ndarray,
          end: np.ndarray, tree_of_kind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """parent/depth per the NOTE [ Event tree rules ]; rows are already sorted."""
    n = len(ts)
    parent = np.full(n, -1, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int32)
    tree = tree_of_kind[kind_codes] if n else np.empty(0, dtype=np.int64)
    rows = np.flatnonzero(tree >= 0)
    if len(rows) == 0:
        return parent, depth
    group = _group_ids(tree[rows], pid[rows], tid[rows])
    r_ts, r_end = ts[rows], end[rows]
    if _native.tree is not None:  # the reference algorithm in C (NOTE [ Native scanner ])
        par_b, dep_b = _native.tree(group, r_ts, r_end)
        par, dep = np.frombuffer(par_b, dtype=np.int64), np.frombuffer(dep_b, dtype=np.int32)
        parent[rows] = np.where(par >= 0, rows[np.maximum(par, 0)], -1)
        depth[rows] = dep
        return parent, depth
    par, dep, ok = _tree_nested(group, r_ts, r_end)
    if not ok.all():  # groups with partial overlaps: the reference stack algorithm
        sub = np.flatnonzero(~ok)
        sub_par, sub_dep = _tree_loop(group[sub], r_ts[sub], r_end[sub])
        par[sub] = np.where(sub_par >= 0, sub[np.maximum(sub_par, 0)], -1)
        dep[sub] = sub_dep
    parent[rows] = np.where(par >= 0, rows[np.maximum(par, 0)], -1)
    depth[rows] = dep
    return parent, depth


#: which event tree each kind belongs to (NOTE [ Event tree rules ]): -1 none (GPU side),
#: 0 the CPU op/annotation/runtime tree, 1 the Python-frame tree; indexed by KINDS code
_TREE_OF_KIND = np.array([-1 if k in _GPU_SIDE else (1 if k == "python_function" else 0)
                          for k in KINDS], dtype=np.int64)


def finish_events(frame: pd.DataFrame, *, tie: np.ndarray | None = None) -> pd.DataFrame:
    """The finishing step for readers that assemble an event DataFrame themselves
    (the Nsight Systems reader): the same sort, tree and escaped names as
    :func:`build_trace`.

    ``frame`` has the columns name, cat, kind (a KINDS value), pid, tid, ts_ns, dur_ns,
    correlation and optionally seq. Rows are sorted by ``(ts_ns, -dur_ns, tie)``
    (``tie`` defaults to the row order), nested per NOTE [ Event tree rules ], and
    returned as a NEW frame with the :data:`EVENT_COLUMNS` dtypes."""
    import pandas as pd

    n = len(frame)
    ts = frame["ts_ns"].to_numpy(dtype=np.int64)
    dur = frame["dur_ns"].to_numpy(dtype=np.int64)
    order = np.lexsort((np.arange(n) if tie is None else tie, -dur, ts))
    rows = frame.iloc[order].reset_index(drop=True)
    ts, dur = ts[order], dur[order]
    kind = rows["kind"].map({k: i for i, k in enumerate(KINDS)}).to_numpy(dtype=np.int8)
    pid = rows["pid"].to_numpy(dtype=np.int64)
    tid = rows["tid"].to_numpy(dtype=np.int64)
    parent, depth = _tree(kind, pid, tid, ts, ts + dur, _TREE_OF_KIND)
    out = pd.DataFrame({
        "name": _printable_categorical(rows["name"]),
        "cat": _printable_categorical(rows["cat"]),
        "kind": pd.Categorical.from_codes(kind, categories=list(KINDS)),
        "pid": pid, "tid": tid, "ts_ns": ts, "dur_ns": dur,
        "correlation": rows["correlation"].to_numpy(dtype=np.int64),
        "external_id": np.full(n, -1, dtype=np.int64),
        "seq": (rows["seq"].fillna(-1).to_numpy(dtype=np.int64) if "seq" in rows.columns
                else np.full(n, -1, dtype=np.int64)),
        "parent": parent, "depth": depth,
    })
    return out[list(EVENT_COLUMNS)]
def _time_order(ts: np.ndarray, dur: np.ndarray) -> np.ndarray:
    """Row order by (ts, -dur, file order).

    A stable sort by ts (fast: Kineto writes each section of the file in time order),
    then only the runs of equal ts are reordered by -dur (stable, so file order breaks
    the remaining ties)."""
    order = np.argsort(ts, kind="stable")
    ts_sorted = ts[order]
    tie = ts_sorted[1:] == ts_sorted[:-1]
    if not tie.any():
        return order
    in_run = np.zeros(len(ts), dtype=bool)
    in_run[1:] |= tie
    in_run[:-1] |= tie
    idx = np.flatnonzero(in_run)
    run = np.cumsum(~np.concatenate([[False], tie]))[idx]  # run id of each tied row
    sub = np.lexsort((-dur[order[idx]], run))  # stable: file order within equal keys
    order[idx] = order[idx][sub]
    return order
def _printable_categorical(values: pd.Series) -> pd.Categorical:
    """``values`` as a categorical whose categories are escaped like
    :func:`build_trace`'s names (:func:`_printable_values`)."""
    import pandas as pd

    cat = pd.Categorical(values.astype(str))
    cats, changed = _printable_values([str(c) for c in cat.categories])
    return pd.Categorical.from_codes(cat.codes, categories=cats) if changed else cat


def _printable_values(values: list[str]) -> tuple[list[str], int]:
    """Interned strings with control characters and lone surrogates escaped
    (``ckprof._text.printable``): a name can then go into a text table, a one-line
    message, CSV or HTML as it is. Returns (values, how many changed); values that
    become equal to another one get a ``#k`` suffix so codes stay distinct."""
    out = [printable(v) for v in values]
    changed = sum(1 for a, b in zip(values, out, strict=True) if a is not b)
    if changed and len(set(out)) != len(out):
        seen: set[str] = set()
        for i, v in enumerate(out):
            k, candidate = 1, v
            while candidate in seen:
                k += 1
                candidate = f"{v}#{k}"
            seen.add(candidate)
            out[i] = candidate
    return out, changed


#: the pandas dtypes of ``Trace.events`` / ``Trace.memory`` (model.py) for Table.to_frame;
#: names, categories and devices keep object categories, kinds pandas' own
_EVENT_DTYPES = {**EVENT_COLUMNS, "name": ("category", "object"), "cat": ("category", "object"),
                 "kind": ("category", "str")}
_MEMORY_DTYPES = {**MEMORY_COLUMNS, "device": ("category", "object")}


def _take(parts: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    """Concatenate chunk arrays, reorder them, and let the chunks go (bounded memory)."""
    whole = _concat(parts, "int64")
    parts.clear()
    return whole[order] if len(order) else whole


def build_trace(cols: Columns, *, path: str, metadata: Mapping[str, Any], source_format: str,
                notes: list[str]) -> Trace:
    """Sort, classify and nest the decoded columns; return the finished Trace.

    Consumes ``cols`` (its chunk arrays are released as the columns are assembled)."""
    ts = _concat(cols.ev["ts_ns"], "int64")
    dur = _concat(cols.ev["dur_ns"], "int64")
    cols.ev["ts_ns"].clear()
    cols.ev["dur_ns"].clear()
    order = _time_order(ts, dur)
    ts, dur = ts[order], dur[order]
    cat = _take(cols.ev["cat"], order)
    pid = _take(cols.ev["pid"], order)
    tid = _take(cols.ev["tid"], order)

    names, odd_names = _printable_values(cols.names.values)
    cats, odd_cats = _printable_values(cols.cats.values)
    if odd_names or odd_cats:
        notes.append(f"{odd_names + odd_cats} event name(s)/categories held control characters "
                     "or invalid Unicode (lone surrogates): shown escaped, e.g. \\n, \\ud800")
    kind_of_cat_code = np.array([KINDS.index(kind_of_category(c)) for c in cols.cats.values],
                                dtype=np.int8)
    kind = kind_of_cat_code[cat] if len(cat) else np.empty(0, dtype=np.int8)
    parent, depth = _tree(kind, pid, tid, ts, ts + dur, _TREE_OF_KIND)

    data = {
        "name": _coded(_take(cols.ev["name"], order), names),
        "cat": _coded(cat, cats),
        "kind": Coded(kind.astype(np.int32), np.array(KINDS, dtype=object)),
        "pid": pid, "tid": tid, "ts_ns": ts, "dur_ns": dur,
        "correlation": _take(cols.ev["correlation"], order),
        "external_id": _take(cols.ev["external_id"], order),
        "seq": _take(cols.ev["seq"], order),
        "parent": parent, "depth": depth,
    }
    del cat, kind, pid, tid, ts, dur, parent, depth, order
    events = Table({k: data.pop(k) for k in EVENT_COLUMNS}, _EVENT_DTYPES)

    mts = _concat(cols.mem["ts_ns"], "int64")
    morder = np.argsort(mts, kind="stable")
    memory = Table({
        "ts_ns": mts[morder],
        "device": _sorted_coded(_take(cols.mem["device"], morder), cols.devices.values),
        **{k: _take(cols.mem[k], morder)
           for k in ("pid", "tid", "total_allocated_bytes", "total_reserved_bytes", "bytes",
                     "addr")},
    }, _MEMORY_DTYPES)

    ck, ck_notes = clean_ckprof_metadata(metadata.get("ckprof"))  # input like any other
    notes.extend(ck_notes)
    for reason, count in sorted(cols.skipped.items()):
        notes.append(f"skipped {count} event{'s' if count != 1 else ''}: {reason}")
    return Trace(path=path, event_table=events, memory_table=memory, metadata=dict(metadata), ckprof=ck,
                 source_format=source_format,
                 thread_names={k: printable(v) for k, v in cols.ids.names.items()},
                 notes=tuple(notes))


def is_legacy(cols: Columns) -> bool:
    """Kineto's 2021 category names (``Operator``, ``Kernel``, ``Runtime`` ...)."""
    return any(c in _LEGACY_CATS for c in cols.cats.values)
