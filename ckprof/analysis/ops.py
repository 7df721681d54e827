"""Stage 4a: which ops each phase and checkpointed region is made of.

Contract::

    op_context(trace) -> OpContext
    ops_by_phase(trace, phases, time, context=None) -> OpTable

``OpContext`` (per row of ``trace.events``; shared with the memory-composition stage):

- ``canon``: the row of the op CALL an event row belongs to (itself for an ordinary
  ``cpu_op``, the outer op for the duplicates selective checkpointing records, -1 for
  rows that are not ``cpu_op``), see NOTE [ One call per op ].
- ``self_ns``: the call's self time, on canonical rows (0 elsewhere), see
  NOTE [ Op self time ].
- ``checkpoint_region``: the innermost ``ckprof::checkpoint::<region>`` range enclosing
  the row ("" when none): where a forward op ran.
- ``alloc_call``: the call an allocation made inside this row belongs to: ``canon``,
  except that allocator helpers (:data:`FACTORY_OPS`: ``aten::empty``,
  ``aten::empty_strided`` ...) called inside another op give their memory to that op
  (NOTE [ Who allocated a block ]).

``OpTable`` (frozen):

- ``calls``: one row per op call starting inside an analysed step: ``event`` (row in
  ``trace.events``), ``op`` (name), ``step``, ``phase``, ``region``, ``self_ns``,
  ``gpu_ns`` (summed duration of the GPU events it launched), ``gpu_events`` (how many).
- ``by_step``: ``step``, ``phase``, ``region``, ``op``, ``count``, ``self_ns``, ``gpu_ns``,
  ``gpu_events``: the calls summed per step x phase x region x op. GPU events launched
  outside every op are one row with op :data:`NO_OP` (count 0).
- ``kernels``: ``step``, ``phase``, ``region``, ``op``, ``kernel`` (GPU event name),
  ``count``, ``gpu_ns``: which kernels each op launched.
- ``has_gpu``; ``notes``.

All times are integer nanoseconds. The GPU time of a phase here equals
``TimeAttribution``'s except for a kernel whose launching op started in another phase
than its launch call (an op that straddles a phase boundary; none in practice).

# NOTE [ Op self time ]
# An op call's wall time is its SELF time: its duration minus the durations of its
# direct children in the CPU event tree, except runtime calls (``cudaLaunchKernel``
# ...): nested ops and ``record_function`` ranges have their own rows, the launches an
# op makes are part of its cost. So ``aten::linear`` > ``aten::addmm`` shows the
# matrix multiply under ``aten::addmm`` and only the glue under ``aten::linear``, and the
# self times of a thread never overlap (they add up to at most the wall time).
#
# NOTE [ One call per op ]
# Under selective activation checkpointing every op is recorded as
# ``aten::X > PythonDispatchMode > aten::X`` (the policy's dispatch mode re-dispatches
# it), and an op served from the SAC cache during recompute as ``aten::X >
# PythonDispatchMode``. The ``PythonDispatchMode`` frame and an inner op with the same
# name (``aten::`` prefix ignored: ``detach > PythonDispatchMode > aten::detach``) are
# one call of the outer op: their self time, the kernels they launched and the memory
# they allocated go to the outer call, counted once.
#
# NOTE [ Who allocated a block ]
# A ``[memory]`` event belongs to the innermost op call enclosing it on its thread. Many
# kernels allocate their output through the dispatcher (``aten::_to_copy >
# aten::empty_strided``, ``aten::clone > aten::empty_like``, attention kernels >
# ``aten::empty``), so that innermost op is often an allocator helper; the block is
# then the output (or workspace) of the op that called the helper, and is attributed
# to it: the nearest enclosing call that is not in :data:`FACTORY_OPS`. A helper called
# at top level (``torch.empty`` in user code) keeps its memory.
#
# NOTE [ Which phase an op belongs to ]
# A call belongs to the step, phase and region at its START, like a GPU event belongs
# to the phase of its launch: with markers every op of a recompute starts inside the
# ``ckprof::recompute::<region>`` range. The backward node that triggered the recompute
# (``AddmmBackward0`` around the range) is backward: its self time excludes the range.
# In forward, the region is the enclosing ``ckprof::checkpoint::<region>`` range, so
# the forward ops of ``blocks.3`` and its recompute ops are listed under the same name.
# GPU events take the call that launched them (correlation -> runtime call -> its
# nearest enclosing ``cpu_op`` -> that op's call) and that call's step, phase, region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ckprof.analysis.attribution import TimeAttribution
from ckprof.analysis.intervals import mask_names, name_codes, nearest_above
from ckprof.analysis.phases import PhaseTable
from ckprof.trace.markers import CHECKPOINT_PREFIX, PHASES
from ckprof.trace.model import Trace

__all__ = ["FACTORY_OPS", "NO_OP", "PYTHON_DISPATCH", "OpContext", "OpTable", "op_context",
           "ops_by_phase"]

#: the op name of GPU events launched outside every op
NO_OP = "(no op)"
#: the frame selective checkpointing's dispatch mode adds around every op
PYTHON_DISPATCH = "PythonDispatchMode"
#: allocator helpers: memory allocated inside them belongs to the op that called them
FACTORY_OPS: frozenset[str] = frozenset({
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
    "aten::new_empty_strided", "aten::zeros", "aten::zeros_like", "aten::new_zeros",
    "aten::ones", "aten::ones_like", "aten::new_ones", "aten::full", "aten::full_like",
    "aten::new_full", "aten::resize_", "aten::zero_", "aten::fill_",
})

_CALL_COLUMNS = {"event": "int64", "op": object, "step": "int64", "phase": object,
                 "region": object, "self_ns": "int64", "gpu_ns": "int64", "gpu_events": "int64"}
_BY_STEP_COLUMNS = {"step": "int64", "phase": object, "region": object, "op": object,
                    "count": "int64", "self_ns": "int64", "gpu_ns": "int64",
                    "gpu_events": "int64"}
_KERNEL_COLUMNS = {"step": "int64", "phase": object, "region": object, "op": object,
                   "kernel": object, "count": "int64", "gpu_ns": "int64"}


def _empty(cols: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in cols.items()})


@dataclass(frozen=True)
class OpContext:
    """Per event row: the op call it belongs to, its self time, its checkpoint region."""

    canon: np.ndarray
    self_ns: np.ndarray
    checkpoint_region: np.ndarray
    alloc_call: np.ndarray
    #: the nearest strictly enclosing cpu_op row of every row (-1 when none)
    op_above: np.ndarray

    def call_of(self, rows: np.ndarray) -> np.ndarray:
        """The call row of each event row (-1 for -1 or a row that is not an op)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.full(len(rows), -1, dtype=np.int64)
        ok = rows >= 0
        out[ok] = self.canon[rows[ok]]
        return out

    def enclosing_call(self, rows: np.ndarray) -> np.ndarray:
        """The call of the nearest op strictly enclosing each event row (-1 when none):
        the op that made a runtime call, the op a nested call runs in."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.full(len(rows), -1, dtype=np.int64)
        ok = rows >= 0
        out[ok] = self.call_of(self.op_above[rows[ok]])
        return out

    def allocating_call(self, rows: np.ndarray) -> np.ndarray:
        """The call that owns memory allocated inside each event row (-1 for -1 or a
        row that is not an op), NOTE [ Who allocated a block ]."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.full(len(rows), -1, dtype=np.int64)
        ok = rows >= 0
        out[ok] = self.alloc_call[rows[ok]]
        return out


@dataclass(frozen=True)
class OpTable:
    """Op calls per step x phase x region. See the module docstring."""

    calls: pd.DataFrame
    by_step: pd.DataFrame
    kernels: pd.DataFrame
    has_gpu: bool
    notes: tuple[str, ...] = ()


def _strip_aten(name: str) -> str:
    return name[len("aten::"):] if name.startswith("aten::") else name


def op_context(trace: Trace) -> OpContext:
    """Call rows, self times and checkpoint regions of every event row (pure, vectorised;
    ancestor queries by pointer jumping, so any nesting depth is fine). See NOTE [ Op self
    time ], NOTE [ One call per op ] and NOTE [ Who allocated a block ]."""
    ev = trace.events
    n = len(ev)
    codes, cats = name_codes(ev)
    kind = ev["kind"].astype(str).to_numpy(dtype=object) if n else np.empty(0, dtype=object)
    parent = ev["parent"].to_numpy(dtype=np.int64)
    dur = ev["dur_ns"].to_numpy(dtype=np.int64)
    rows_n = np.arange(n, dtype=np.int64)
    is_op = kind == "cpu_op"
    safe_codes = np.maximum(codes, 0)

    def by_name(pred) -> np.ndarray:
        return mask_names(codes, cats, lambda c: pred(str(c)))

    is_pdm = is_op & by_name(lambda c: c == PYTHON_DISPATCH)
    is_factory = is_op & by_name(lambda c: c in FACTORY_OPS)
    is_ck = (kind == "user_annotation") & by_name(lambda c: c.startswith(CHECKPOINT_PREFIX))
    norm_codes, _ = pd.factorize(pd.Index([_strip_aten(str(c)) for c in cats], dtype=object))
    norm = norm_codes[safe_codes] if len(cats) else np.zeros(n, dtype=np.int64)
    # checkpoint region: the innermost checkpoint range at or above the row
    ck_at = np.where(is_ck, rows_n, nearest_above(parent, is_ck))
    regions = np.array(["", *[str(c)[len(CHECKPOINT_PREFIX):] for c in cats]], dtype=object)
    checkpoint_region = regions[np.where(ck_at >= 0, codes[np.maximum(ck_at, 0)] + 1, 0)] \
        if n else np.empty(0, dtype=object)
    # the call of each op row: SAC frames and their same-named inner op belong to the op
    # around the frame (a fixed point: SAC frames nest a level or two, not deeper)
    par = np.maximum(parent, 0)
    par_op = (parent >= 0) & is_op[par]
    canon = np.where(is_op, rows_n, -1)
    frame = is_pdm & par_op
    inner = is_op & ~is_pdm & (parent >= 0) & is_pdm[par]
    for _ in range(64):
        new = canon.copy()
        new[frame] = canon[par[frame]]
        outer = canon[par]
        dup = inner & (outer >= 0) & (outer != par) & (norm == norm[np.maximum(outer, 0)])
        new[dup] = outer[dup]
        if np.array_equal(new, canon):
            break
        canon = new
    # allocations: an allocator helper gives its memory to the nearest enclosing op that
    # is not one; a frame or duplicate row to its call
    op_above = nearest_above(parent, is_op)
    owner_row = np.where(is_factory, nearest_above(parent, is_op & ~is_factory),
                         rows_n)
    orphan = is_factory & (owner_row < 0)   # helpers with no other op above: the outermost
    if orphan.any():
        owner_row[orphan] = _outermost(op_above, rows_n)[orphan]
    alloc = np.where(is_op, canon[owner_row], -1)
    # self time: duration minus the direct children that are not runtime calls
    child = np.flatnonzero((parent >= 0) & (kind != "runtime"))
    nested = np.zeros(n, dtype=np.int64)
    np.add.at(nested, parent[child], dur[child])
    own = np.maximum(dur - nested, 0)
    self_ns = np.zeros(n, dtype=np.int64)
    ops = np.flatnonzero(is_op & (canon >= 0))
    np.add.at(self_ns, canon[ops], own[ops])
    return OpContext(canon=canon, self_ns=self_ns, checkpoint_region=checkpoint_region,
                     alloc_call=alloc, op_above=op_above)


def _outermost(up: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per row, the outermost row reached by following ``up`` (itself when ``up`` is -1),
    by pointer doubling: O(log depth) vectorised rounds."""
    top = np.where(up >= 0, up, rows)
    while True:
        nxt = top[top]
        if np.array_equal(nxt, top):
            return top
        top = nxt


def ops_by_phase(trace: Trace, phases: PhaseTable, time: TimeAttribution,
                 context: OpContext | None = None) -> OpTable:
    """Op calls and their self / GPU time per step x phase x region (pure).

    See NOTE [ Op self time ], NOTE [ One call per op ], NOTE [ Which phase an op
    belongs to ]."""
    ctx = context if context is not None else op_context(trace)
    ev = trace.events
    notes: list[str] = []
    rows = np.flatnonzero(ctx.canon == np.arange(len(ev)))
    ts = ev["ts_ns"].to_numpy(dtype=np.int64)
    step, phase, region = phases.lookup(ts[rows])
    inside = step >= 0
    rows, step, phase, region = rows[inside], step[inside], phase[inside], region[inside]
    region = np.where(phase == "forward", ctx.checkpoint_region[rows],
                      np.where(phase == "recompute", region, "")).astype(object)
    names = ev["name"].astype(str).to_numpy(dtype=object) if len(ev) else np.empty(0, dtype=object)
    pos = np.full(len(ev), -1, dtype=np.int64)
    pos[rows] = np.arange(len(rows), dtype=np.int64)
    gpu_ns = np.zeros(len(rows), dtype=np.int64)
    gpu_n = np.zeros(len(rows), dtype=np.int64)

    g = time.gpu_events
    kernels = _empty(_KERNEL_COLUMNS)
    extra = _empty(_BY_STEP_COLUMNS)
    if len(g):
        launcher = g["launched_by"].to_numpy(dtype=np.int64)
        op_row = ctx.enclosing_call(launcher)
        at = np.where(op_row >= 0, pos[np.maximum(op_row, 0)], -1)
        dur = g["dur_ns"].to_numpy(dtype=np.int64)
        hit = at >= 0
        np.add.at(gpu_ns, at[hit], dur[hit])
        np.add.at(gpu_n, at[hit], 1)
        g_step = np.where(hit, step[np.maximum(at, 0)] if len(rows) else -1,
                          g["step"].to_numpy(dtype=np.int64))
        g_phase = np.where(hit, phase[np.maximum(at, 0)] if len(rows) else "",
                           g["phase"].to_numpy(dtype=object)).astype(object)
        g_region = np.where(hit, region[np.maximum(at, 0)] if len(rows) else "",
                            np.where(g["phase"].to_numpy(dtype=object) == "recompute",
                                     g["region"].to_numpy(dtype=object), "")).astype(object)
        g_op = np.where(hit, names[rows[np.maximum(at, 0)]] if len(rows) else "", NO_OP)
        g_name = names[g["event"].to_numpy(dtype=np.int64)]
        kernels = (pd.DataFrame({"step": g_step, "phase": g_phase, "region": g_region,
                                 "op": g_op.astype(object), "kernel": g_name, "gpu_ns": dur})
                   .groupby(["step", "phase", "region", "op", "kernel"], sort=False)
                   .agg(count=("gpu_ns", "size"), gpu_ns=("gpu_ns", "sum")).reset_index())
        kernels = _order(kernels, "gpu_ns").astype(_KERNEL_COLUMNS)[list(_KERNEL_COLUMNS)]
        miss = ~hit
        if miss.any():
            notes.append(f"{int(miss.sum())} GPU event(s) were launched outside every op: "
                         f"listed as {NO_OP}")
            extra = (pd.DataFrame({"step": g_step[miss], "phase": g_phase[miss],
                                   "region": g_region[miss], "op": NO_OP,
                                   "gpu_ns": dur[miss]})
                     .groupby(["step", "phase", "region", "op"], sort=False)
                     .agg(gpu_ns=("gpu_ns", "sum"), gpu_events=("gpu_ns", "size"))
                     .reset_index().assign(count=0, self_ns=0))
    calls = pd.DataFrame({"event": rows, "op": names[rows], "step": step, "phase": phase,
                          "region": region, "self_ns": ctx.self_ns[rows], "gpu_ns": gpu_ns,
                          "gpu_events": gpu_n})
    calls = calls.astype(_CALL_COLUMNS)[list(_CALL_COLUMNS)].reset_index(drop=True)
    by_step = (calls.groupby(["step", "phase", "region", "op"], sort=False)
               .agg(count=("event", "size"), self_ns=("self_ns", "sum"),
                    gpu_ns=("gpu_ns", "sum"), gpu_events=("gpu_events", "sum"))
               .reset_index())
    if len(extra):
        by_step = pd.concat([by_step, extra[list(_BY_STEP_COLUMNS)]], ignore_index=True)
    by_step = _order(by_step, "self_ns").astype(_BY_STEP_COLUMNS)[list(_BY_STEP_COLUMNS)]
    return OpTable(calls=calls, by_step=by_step.reset_index(drop=True),
                   kernels=kernels.reset_index(drop=True), has_gpu=bool(time.has_gpu),
                   notes=tuple(notes))


def _order(df: pd.DataFrame, value: str) -> pd.DataFrame:
    """step, phase (PHASES order), region, then the largest ``value`` first, then op."""
    if df.empty:
        return df
    rank = {p: i for i, p in enumerate(PHASES)}
    return (df.assign(_p=df["phase"].map(rank).fillna(len(PHASES)), _v=-df[value])
            .sort_values(["step", "_p", "region", "_v", "op"], kind="stable")
            .drop(columns=["_p", "_v"]).reset_index(drop=True))
