"""Stage 2a: the first (forward) runs of checkpointed regions, and one region name for
every recompute detection method.

Contract::

    find_forward_runs(trace, steps) -> Table
    link_recompute_names(occ, trace, runs) -> Table

``find_forward_runs`` returns one row per run of a checkpointed callable, sorted by
start: ``step`` (int64, -1 outside every step), ``region`` (str), ``start_ns``,
``end_ns``, ``pid``, ``tid``, ``seq_lo``, ``seq_hi`` (int64: the range of autograd
``Sequence number`` s the run created, -1 when none), ``first_run`` (bool: False for a
re-run inside backward -- an inner checkpoint called again while an outer region is
recomputed), ``source`` (``markers`` | ``stack``). Empty (same columns) when the trace
has neither ckprof checkpoint markers nor Python frames.

``link_recompute_names`` returns ``occ`` (a Table with ``region``, ``start_ns``,
``end_ns``, ...) with ``region`` replaced by the name of the run that created what each
occurrence recomputes, where the trace tells (see NOTE [ One name per region ]); rows it
cannot link keep their name. Only numpy here (NOTE [ Tables, not DataFrames, inside the
stages ] in ckprof/trace/table.py).

# NOTE [ Forward runs ]
# markers: each ``ckprof::checkpoint::<region>`` range (written by capture around the
#          region's run) is a run named <region>.
# stack:   (only when the trace has no checkpoint markers) each Python frame
#          ``torch/utils/checkpoint.py(N): checkpoint`` is a run. Its name: below the
#          frame, torch's plumbing (torch/, ckprof/, functools, built-ins) leads to the
#          checkpointed callable. When that is a module (an ``nn.Module: X`` frame with
#          no user frame between), the region is X (``checkpoint_sequential`` runs
#          several: ``X..Y``); when it is a function, the region is the module whose
#          forward called checkpoint (``nn.Module: X`` frame above) when the function
#          is a ``forward`` (HF >= 5 checkpoints ``partial(layer.forward)``; the layer
#          then has no frame of its own inside), else ``<X>.<function>`` or the
#          function's name. A name repeated within a step gets ``#1``, ``#2``... in time
#          order (as capture does within a forward pass).
# A run that starts inside an ``autograd::engine::evaluate_function`` (any thread) runs
# inside backward: it re-runs an inner checkpoint while an outer region is recomputed.
# It is recompute, never a first run (``first_run`` False), and it keeps its region's
# name (capture does not count it either).
# Sequence numbers: the seq-carrying cpu_ops on the run's thread inside [start, end);
# for a reentrant checkpoint the ops inside run under no_grad and carry none, so the
# ``CheckpointFunction`` op enclosing the marker adds its own seq.
#
# NOTE [ One name per region ]
# Whatever finds a recompute occurrence (markers, stack frames, Sequence numbers), the
# occurrence sits inside the evaluate_function of the backward node that needed the
# recomputed tensors, and that node was created by an op of the region's run: the
# node's Sequence number lies in the run's [seq_lo, seq_hi]. The occurrence takes the
# name of the latest-started run that contains that number and started before it (a
# re-run inside backward only when it ran on the same thread, since Sequence numbers
# are counted per thread). Nested regions: that node lies in the ranges of the inner
# run and of every run around it, and torch recomputes the outer ones first, so the k
# occurrences under one evaluate_function take the innermost k runs of that chain,
# outermost first (the Sequence-number heuristic merges them into one occurrence,
# named after the inner run). So stack and sequence
# detection name regions exactly as markers do on a trace that has them
# (``model.layers.0``), and by the checkpointed module (``LlamaDecoderLayer_0``) on a
# with_stack trace without markers -- one method can be checked against another.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from ckprof.analysis.intervals import kind_mask as _kind_mask
from ckprof.analysis.intervals import mask_names as _mask_names
from ckprof.analysis.intervals import name_codes as _names
from ckprof.analysis.intervals import nearest_above as _nearest_above
from ckprof.analysis.intervals import step_of as _step_of
from ckprof.analysis.phases import EVAL_PREFIX, _cumcount, _stripped
from ckprof.trace.markers import CHECKPOINT_PREFIX
from ckprof.trace.model import Trace
from ckprof.trace.table import Table, factorize

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RUN_COLUMNS", "find_forward_runs", "link_recompute_names", "recompute_frame_names"]

RUN_COLUMNS: dict[str, str] = {
    "step": "int64", "region": "object", "start_ns": "int64", "end_ns": "int64",
    "pid": "int64", "tid": "int64", "seq_lo": "int64", "seq_hi": "int64",
    "first_run": "bool", "source": "object"}

_CHECKPOINT_FRAME_RE = re.compile(r"(?:^|/)torch/utils/checkpoint\.py\(\d+\): checkpoint$")
_MODULE_PREFIX = "nn.Module: "
_FRAME_RE = re.compile(r"^(?P<path>.*)\(\d+\): (?P<func>[^ ]+)$")
_PLUMBING_FILES = ("functools.py", "contextlib.py")
_REENTRANT_FN = "CheckpointFunction"


def _empty_runs() -> Table:
    """The runs table without rows (``RUN_COLUMNS``)."""
    return Table({c: np.empty(0, dtype=d) for c, d in RUN_COLUMNS.items()}, RUN_COLUMNS)


def _is_user_frame(name: str) -> bool:
    """A Python frame of user code (model, transformers ...), not torch's or ckprof's
    checkpoint plumbing, not a module frame, not a built-in."""
    if name.startswith(_MODULE_PREFIX) or name.startswith("<"):
        return False
    m = _FRAME_RE.match(name)
    if m is None:
        return False
    path = m.group("path").replace("\\", "/")
    if path.endswith(_PLUMBING_FILES):
        return False
    return not re.search(r"(?:^|/)(?:torch|ckprof)/", path)


def _func_of(name: str) -> str:
    m = _FRAME_RE.match(name)
    return m.group("func") if m else name


def _holds(sorted_rows: np.ndarray, row: int) -> bool:
    """Whether ``row`` is one of ``sorted_rows``."""
    i = int(np.searchsorted(sorted_rows, row))
    return i < len(sorted_rows) and int(sorted_rows[i]) == row


def _inside_intervals(t: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """For each instant: inside the union of intervals [s, e)?"""
    if len(s) == 0 or len(t) == 0:
        return np.zeros(len(t), dtype=bool)
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    run_end = np.maximum.accumulate(e)           # furthest end of any interval so far
    j = np.searchsorted(s, t, side="right") - 1
    ok = j >= 0
    ok[ok] = t[ok] < run_end[j[ok]]
    return ok


class _Tree:
    """Arrays of the event table (``trace.event_table``) that this stage and
    :func:`ckprof.analysis.phases.find_phases` read, computed once: name codes and
    categories, ``ts`` / ``end`` (ns), ``pid``, ``tid``, ``seq``, ``parent``, ``depth``
    (int64) and the row masks ``is_op``, ``is_py``, ``is_ann``, ``is_eval`` (autograd
    evaluate_function ops), ``is_user`` (user Python frames). Read-only."""

    def __init__(self, trace: Trace) -> None:
        ev = trace.event_table
        self.n = len(ev)
        self.codes, self.cats = _names(ev)
        self.ts = np.asarray(ev["ts_ns"], dtype=np.int64)
        self.end = self.ts + np.asarray(ev["dur_ns"], dtype=np.int64)
        self.pid = np.asarray(ev["pid"], dtype=np.int64)
        self.tid = np.asarray(ev["tid"], dtype=np.int64)
        self.seq = np.asarray(ev["seq"], dtype=np.int64)
        self.parent = np.asarray(ev["parent"], dtype=np.int64)
        self.depth = np.asarray(ev["depth"], dtype=np.int64)
        self.is_op = _kind_mask(ev, "cpu_op")
        self.is_py = _kind_mask(ev, "python_function")
        self.is_ann = _kind_mask(ev, "user_annotation")
        self.is_eval = _mask_names(self.codes, self.cats, EVAL_PREFIX,
                                   self.is_op)
        self.is_user = _mask_names(self.codes, self.cats, _is_user_frame, self.is_py)
        self._modules: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def module_frames(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(nearest ``nn.Module`` frame strictly above each row or -1, is-module mask,
        nearest significant -- module or user -- frame strictly above each row or -1),
        computed once."""
        if self._modules is None:
            is_mod = _mask_names(self.codes, self.cats,
                                 _MODULE_PREFIX, self.is_py)
            self._modules = (_nearest_above(self.parent, is_mod), is_mod,
                             _nearest_above(self.parent, is_mod | self.is_user))
        return self._modules

    def name(self, row: int) -> str:
        return str(self.cats[self.codes[row]]) if self.codes[row] >= 0 else ""

    def in_backward(self, t: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(self.is_eval)
        return _inside_intervals(t, self.ts[rows], self.end[rows])

    def seq_ranges(self, start: np.ndarray, end: np.ndarray, pid: np.ndarray,
                   tid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) Sequence number of the cpu_ops on each (pid, tid) in [start, end)."""
        lo = np.full(len(start), -1, dtype=np.int64)
        hi = np.full(len(start), -1, dtype=np.int64)
        ops = np.flatnonzero(self.is_op & (self.seq >= 0) & ~self.is_eval)
        if len(ops) == 0:
            return lo, hi
        if len(start) == 0:
            return lo, hi
        threads, which = np.unique(np.stack([pid, tid], axis=1), axis=0, return_inverse=True)
        which = which.reshape(-1)
        op_pid, op_tid = self.pid[ops], self.tid[ops]
        for k, (p, t) in enumerate(threads.tolist()):  # the runs' threads: a few
            mine = ops[(op_pid == p) & (op_tid == t)]    # sorted by ts (events are)
            if len(mine) == 0:
                continue
            q = np.flatnonzero(which == k)
            t_mine = self.ts[mine]
            a = np.searchsorted(t_mine, start[q], side="left")
            b = np.searchsorted(t_mine, end[q], side="left")
            some = b > a
            # min / max over each [a, b): reduceat over the interleaved bounds (even
            # results; a sentinel so that b may be the end)
            bounds = np.stack([a, b], axis=1).reshape(-1)
            seq = np.append(self.seq[mine], 0)
            lo[q[some]] = np.minimum.reduceat(seq, bounds)[0::2][some]
            hi[q[some]] = np.maximum.reduceat(seq, bounds)[0::2][some]
        return lo, hi


# ------------------------------------------------------------------------- runs


def _marker_runs(tr: _Tree) -> dict[str, np.ndarray] | None:
    """Runs from ``ckprof::checkpoint::<region>`` ranges (columns but ``step`` and
    ``first_run``), in event order; None when the trace has none."""
    rows = np.flatnonzero(_mask_names(tr.codes, tr.cats,
                                      CHECKPOINT_PREFIX, tr.is_ann))
    if len(rows) == 0:
        return None
    lo, hi = tr.seq_ranges(tr.ts[rows], tr.end[rows], tr.pid[rows], tr.tid[rows])
    # reentrant: the marker sits inside the CheckpointFunction op, whose seq is the
    # backward node's (CheckpointFunctionBackward)
    par = tr.parent[rows]
    p = np.maximum(par, 0)
    is_fn = tr.cats == _REENTRANT_FN               # per distinct name
    code = tr.codes[p]
    own = ((par >= 0) & tr.is_op[p] & (tr.seq[p] >= 0) & (code >= 0)
           & is_fn[np.maximum(code, 0)] if len(is_fn) else np.zeros(len(rows), dtype=bool))
    s = tr.seq[p]
    lo = np.where(own, np.where(lo < 0, s, np.minimum(lo, s)), lo)
    hi = np.where(own, np.maximum(hi, s), hi)
    return {"region": _stripped(tr.codes, tr.cats, rows, CHECKPOINT_PREFIX),
            "start_ns": tr.ts[rows], "end_ns": tr.end[rows], "pid": tr.pid[rows],
            "tid": tr.tid[rows], "seq_lo": lo, "seq_hi": hi,
            "source": np.full(len(rows), "markers", dtype=object)}


def callable_name(tr: _Tree, frame: int, *, enclosing: bool) -> str | None:
    """Name of what a checkpoint / recompute_fn Python frame runs (NOTE [ Forward
    runs ]); ``enclosing``: a ``forward`` function is named after the module frame
    around ``frame`` (first runs only). None when nothing is recognisable.

    Only module frames and user frames count ("significant"); torch's and ckprof's
    plumbing and built-ins are looked through. From ``frame`` down, a single
    significant child that is a user frame (a wrapper, a decorator) is descended into;
    the first module frame reached is the answer; several children at the top are a
    checkpoint_sequential segment; several children below a user function mean the
    function itself is the checkpointed callable."""
    mod_anc, is_mod, sig_anc = tr.module_frames()
    a, b = np.searchsorted(tr.ts, [tr.ts[frame], tr.end[frame]], side="left")
    a = max(a, frame + 1)
    block = np.arange(a, b, dtype=np.int64)
    block = block[tr.is_py[block] & (tr.pid[block] == tr.pid[frame])
                  & (tr.tid[block] == tr.tid[frame]) & (tr.depth[block] > tr.depth[frame])]
    sig = block[is_mod[block] | tr.is_user[block]]  # significant frames, time order
    # each one's significant parent: the first of its ancestors that is significant in
    # the block or is ``frame`` (-1: none). The nearest significant ancestor is that
    # one when it lies in the block (``frame`` is plumbing: it is never in between);
    # the others -- ``frame``'s own significant children, mostly -- walk up
    par = sig_anc[sig]
    pos = np.minimum(np.searchsorted(sig, par), max(len(sig) - 1, 0))
    in_sig = (par >= 0) & (sig[pos] == par) if len(sig) else np.zeros(0, dtype=bool)
    for k in np.flatnonzero(~in_sig).tolist():
        p = int(tr.parent[sig[k]])
        while p >= 0 and p != frame and not _holds(sig, p):
            p = int(tr.parent[p])
        par[k] = p

    def children(node: int) -> np.ndarray:
        return sig[par == node]

    node, funcs = frame, []
    while True:
        kids = children(node)
        if len(kids) == 1 and not is_mod[kids[0]]:
            node = int(kids[0])                    # a wrapper / the callable function
            funcs.append(_func_of(tr.name(node)))
            continue
        if len(kids) == 1 or (len(kids) and not funcs and is_mod[kids].all()):
            # one module (after any wrappers), or a checkpoint_sequential segment
            first, last = (tr.name(kids[0])[len(_MODULE_PREFIX):],
                           tr.name(kids[-1])[len(_MODULE_PREFIX):])
            return first if first == last else f"{first}..{last}"
        break
    if not funcs:
        kids = children(frame)
        kids = kids[~is_mod[kids]]
        if not len(kids):
            return None
        funcs = [_func_of(tr.name(kids[0]))]
    owner = int(mod_anc[frame]) if enclosing else -1
    if owner >= 0:
        mod = tr.name(owner)[len(_MODULE_PREFIX):]
        return mod if "forward" in funcs else f"{mod}.{funcs[-1]}"
    return funcs[-1] if enclosing else None


def recompute_frame_names(trace: Trace, frames: np.ndarray, *, _tree: _Tree | None = None
                          ) -> list[str | None]:
    """For ``recompute_fn`` Python frames: the module each one re-runs when the
    checkpointed callable is a module (``TinyBlock_0``), else None (a function: its
    module has no frame inside the recompute)."""
    tr = _tree or _Tree(trace)
    return [callable_name(tr, int(f), enclosing=False) for f in frames]


def _stack_runs(tr: _Tree) -> dict[str, np.ndarray] | None:
    """Runs from ``checkpoint`` Python frames (columns but ``step`` and ``first_run``),
    in event order; None when the trace has none."""
    rows = np.flatnonzero(_mask_names(
        tr.codes, tr.cats, _CHECKPOINT_FRAME_RE.search, tr.is_py))
    if len(rows) == 0:
        return None
    names = []
    for r in rows:  # runs
        name = callable_name(tr, int(r), enclosing=True)
        names.append(name if name is not None else "checkpoint")
    lo, hi = tr.seq_ranges(tr.ts[rows], tr.end[rows], tr.pid[rows], tr.tid[rows])
    return {"region": np.array(names, dtype=object),
            "start_ns": tr.ts[rows], "end_ns": tr.end[rows], "pid": tr.pid[rows],
            "tid": tr.tid[rows], "seq_lo": lo, "seq_hi": hi,
            "source": np.full(len(rows), "stack", dtype=object)}


def _number_repeats(step: np.ndarray, region: np.ndarray, first_run: np.ndarray,
                    source: np.ndarray) -> np.ndarray:
    """``region`` (rows in time order) with stack names repeated among a step's first
    runs numbered #1, #2 ... in time order; a new array."""
    first = np.flatnonzero(first_run & (source == "stack"))
    if len(first) == 0:
        return region
    _, name_id = np.unique(region[first], return_inverse=True)
    k = _cumcount(factorize(step[first], name_id.reshape(-1))[0])
    out = region.copy()
    again = k > 0
    out[first[again]] = [f"{r}#{n}" for r, n in zip(region[first[again]].tolist(),
                                                      k[again].tolist(), strict=True)]
    return out


def find_forward_runs(trace: Trace, steps: pd.DataFrame | Table, *, _tree: _Tree | None = None
                      ) -> Table:
    """Runs of checkpointed regions (see the module docstring and NOTE [ Forward runs ]):
    a new Table with the columns and dtypes of ``RUN_COLUMNS``, sorted by start (stable);
    empty when the trace has neither checkpoint markers nor checkpoint frames."""
    if len(trace.event_table) == 0:
        return _empty_runs()
    tr = _tree or _Tree(trace)
    runs = _marker_runs(tr)
    if runs is None:
        runs = _stack_runs(tr)
    if runs is None:
        return _empty_runs()
    start = runs["start_ns"]
    runs = dict(runs, step=_step_of(start, steps), first_run=~tr.in_backward(start))
    order = np.argsort(start, kind="stable")
    runs = {c: runs[c][order] for c in RUN_COLUMNS}
    runs["region"] = _number_repeats(runs["step"], runs["region"], runs["first_run"],
                                     runs["source"])
    return Table(runs, RUN_COLUMNS)


# ------------------------------------------------------------------------- names


def _last_reaching(ends: np.ndarray, upto: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """Per query ``i``: the largest ``j < upto[i]`` with ``ends[j] >= reach[i]``, -1 when
    none. Binary lifting over a sparse table of range maxima (``levels[k][j]`` = max of
    ``ends[j : j + 2**k]``): each query skips, from ``upto`` down, the blocks that lie
    wholly below its reach, largest first; O((n + q) log n), vectorised."""
    n = len(ends)
    levels = [ends]
    while (1 << len(levels)) <= n:
        half = 1 << (len(levels) - 1)
        levels.append(np.maximum(levels[-1][:-half], levels[-1][half:]))
    p = np.asarray(upto, dtype=np.int64)
    for k in range(len(levels) - 1, -1, -1):
        lo = p - (1 << k)
        can = lo >= 0
        skip = can & (levels[k][np.where(can, lo, 0)] < reach)
        p = np.where(skip, lo, p)
    ans = p - 1
    ok = ans >= 0
    ok[ok] = ends[ans[ok]] >= reach[ok]
    return np.where(ok, ans, -1)


def _triggering_eval(tr: _Tree, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per occurrence: row of the innermost evaluate_function containing it (the
    latest-started one starting at or before ``start`` and ending at or after ``end``,
    any thread), -1 if none."""
    ev = np.flatnonzero(tr.is_eval)
    if len(ev) == 0 or len(start) == 0:
        return np.full(len(start), -1, dtype=np.int64)
    e_ts, e_end = tr.ts[ev], tr.end[ev]
    j = np.searchsorted(e_ts, start, side="right")
    k = _last_reaching(e_end, j, end)
    return np.where(k >= 0, ev[np.maximum(k, 0)], -1)


def _holding_pairs(points: np.ndarray, lo: np.ndarray, hi: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Candidate (point, range) index pairs, a superset of those with ``lo <= point <=
    hi`` among the ranges with ``lo >= 0`` (callers test ``point <= hi``).

    Ranges are taken by length class (``hi - lo`` in ``[2**c, 2**(c + 1))``, one class
    at a time, sorted by ``lo``): a point meets those starting at most the class's
    longest length below it, so a few long ranges do not make every point meet every
    range."""
    usable = np.flatnonzero(lo >= 0)
    length = hi[usable] - lo[usable]
    cls = np.zeros(len(usable), dtype=np.int64)
    cls[length > 0] = np.floor(np.log2(length[length > 0])).astype(np.int64) + 1
    parts_p, parts_r = [], []
    for c in np.unique(cls).tolist():  # at most 64 classes
        mine = usable[cls == c]
        mine = mine[np.argsort(lo[mine], kind="stable")]
        longest = int((hi[mine] - lo[mine]).max())
        a = np.searchsorted(lo[mine], points - longest, side="left")
        b = np.searchsorted(lo[mine], points, side="right")
        count = b - a
        pair_p = np.repeat(np.arange(len(points), dtype=np.int64), count)
        parts_p.append(pair_p)
        parts_r.append(mine[np.repeat(a, count) + np.arange(len(pair_p), dtype=np.int64)
                            - np.repeat(np.cumsum(count) - count, count)])
    if not parts_p:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(parts_p), np.concatenate(parts_r)


def link_recompute_names(occ: Table, trace: Trace, runs: Table, *,
                         _tree: _Tree | None = None) -> Table:
    """A new Table: ``occ`` (``region``, ``start_ns``, ``end_ns``, ...) with each
    occurrence named after the run (a row of ``runs``, :func:`find_forward_runs`) it
    recomputes (NOTE [ One name per region ]); unlinked rows keep their region. Adds
    ``linked`` (bool).

    Nested regions: the node that needs an inner region's tensors lies in the seq range
    of the inner run AND of every run around it; torch recomputes the outer regions
    first. So the k occurrences under one evaluate_function (time order) take the
    innermost k runs of that chain, outermost first (one occurrence: the inner run)."""
    if len(occ) == 0 or len(runs) == 0:
        return occ.assign(linked=np.zeros(len(occ), dtype=bool))
    tr = _tree or _Tree(trace)
    start = np.asarray(occ["start_ns"], dtype=np.int64)
    end = np.asarray(occ["end_ns"], dtype=np.int64)
    node = _triggering_eval(tr, start, end)
    r_lo = np.asarray(runs["seq_lo"], dtype=np.int64)
    r_hi = np.asarray(runs["seq_hi"], dtype=np.int64)
    r_st = np.asarray(runs["start_ns"], dtype=np.int64)
    r_first = np.asarray(runs["first_run"], dtype=bool)
    r_pid = np.asarray(runs["pid"], dtype=np.int64)
    r_tid = np.asarray(runs["tid"], dtype=np.int64)
    r_name = np.asarray(runs["region"], dtype=object)
    names = np.array(occ["region"], dtype=object)  # a copy: rows are renamed below
    linked = np.zeros(len(occ), dtype=bool)
    # occurrences grouped by their evaluate_function (one with a Sequence number), in
    # time order within a group
    mine = np.flatnonzero(node >= 0)
    mine = mine[tr.seq[node[mine]] >= 0]
    mine = mine[np.lexsort((start[mine], node[mine]))]
    g_node, g_first = np.unique(node[mine], return_index=True)
    if len(g_node) == 0:
        return occ.assign(region=names, linked=linked)
    g_size = np.diff(np.append(g_first, len(mine)))
    g_seq, g_t0 = tr.seq[g_node], start[mine[g_first]]
    g_pid, g_tid = tr.pid[g_node], tr.tid[g_node]
    pair_g, pair_r = _holding_pairs(g_seq, r_lo, r_hi)
    ok = (g_seq[pair_g] <= r_hi[pair_r]) & (r_st[pair_r] < g_t0[pair_g])
    ok &= r_first[pair_r] | ((r_pid[pair_r] == g_pid[pair_g]) & (r_tid[pair_r] == g_tid[pair_g]))
    pair_g, pair_r = pair_g[ok], pair_r[ok]
    order = np.lexsort((pair_r, pair_g))           # each group's chain, outermost first
    pair_g, pair_r = pair_g[order], pair_r[order]
    # the group's last k occurrences take the chain's last k runs, k = min(both sizes)
    chain = np.bincount(pair_g, minlength=len(g_node))
    take = np.minimum(chain, g_size)
    pos = np.arange(len(pair_g), dtype=np.int64) - (np.cumsum(chain) - chain)[pair_g]
    q = pos - (chain - take)[pair_g]
    keep = q >= 0
    pair_g, pair_r, q = pair_g[keep], pair_r[keep], q[keep]
    row = mine[g_first[pair_g] + g_size[pair_g] - take[pair_g] + q]
    names[row] = r_name[pair_r]
    linked[row] = True
    return occ.assign(region=names, linked=linked)
