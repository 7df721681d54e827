"""Stage 2: find training steps, phases and recompute occurrences in a Trace.

Contract::

    find_phases(trace, recompute_detection="auto") -> PhaseTable

``PhaseTable`` (frozen) holds

- ``steps``: ``step``, ``start_ns``, ``end_ns`` (int64), one row per ``ProfilerStep#N``
  (N = step), sorted by start; without ProfilerStep annotations one step ``0`` spans
  every CPU-side event.
- ``segments``: ``step``, ``phase`` (one of ``PHASES``), ``region`` ("" unless
  recompute), ``start_ns``, ``end_ns``: sorted, non-overlapping, and for every step
  they tile ``[start_ns, end_ns)`` of the step exactly (time no range claims is
  ``other``). One wall-clock timeline per step, whatever thread a range was on.
- ``recompute``: ``step``, ``region``, ``start_ns``, ``end_ns``, ``method``: one row per
  recompute occurrence (a region recomputed once per backward -> one row per step).
- ``recompute_found_by``: ``markers`` | ``stack`` | ``sequence`` when that method found
  recompute, ``none`` when nothing was found.
- ``phase_source``: ``markers`` (ckprof phase markers) or ``rules`` (plain traces).
- ``notes``: remarks for the user.
- ``lookup(ts_ns)`` -> ``(step, phase, region)`` arrays (step -1 / "other" / "" outside
  every step), one ``numpy.searchsorted`` over the segments.

Only numpy here (NOTE [ Tables, not DataFrames, inside the stages ] in
ckprof/trace/table.py): importable and testable without torch or pandas. The stage's
tables are :class:`~ckprof.trace.table.Table` (``steps_table`` ...); the names above
are their DataFrames, built on first use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ckprof.analysis.compiled_recompute import CompiledRecompute, find_compiled_recompute
from ckprof.analysis.detection import RECOMPUTE_DETECTIONS, check_recompute_detection
from ckprof.analysis.intervals import kind_mask as _kind_mask
from ckprof.analysis.intervals import lexicographic_score, thread_ids
from ckprof.analysis.intervals import mask_names as _mask_names
from ckprof.analysis.intervals import nearest_above as _nearest_above
from ckprof.analysis.intervals import outermost_above as _outermost_above
from ckprof.analysis.intervals import step_of as _step_of
from ckprof.errors import EmptyTraceError, NotCapturedError
from ckprof.trace.markers import (
    BACKWARD,
    CHECKPOINT_PREFIX,
    FORWARD,
    MARKER_PHASE,
    OPTIMIZER,
    PHASE_PREFIX,
    PHASES,
    RECOMPUTE_PREFIX,
    ZERO_GRAD,
    phase_of_user_marker,
)
from ckprof.trace.model import GPU_KINDS, Trace
from ckprof.trace.table import Table, factorize, frame_of

if TYPE_CHECKING:
    import pandas as pd

    from ckprof.analysis.forward_runs import _Tree

__all__ = [
    "EVAL_PREFIX",
    "PHASE_PRIORITY",
    "RECOMPUTE_DETECTIONS",
    "PhaseTable",
    "find_phases",
]


#: autograd engine node executions (one per backward node run)
EVAL_PREFIX = "autograd::engine::evaluate_function: "
# ASCII digits only ("#٣" is not step 3), at most 18 significant ones (int64)
_STEP_RE = re.compile(r"^ProfilerStep#0*([0-9]{1,18})$")
_STEP_PREFIX = "ProfilerStep#"
#: a step longer than a day is implausible (a clock or writer error): noted
LONG_STEP_NS = 24 * 3600 * 10**9
_RECOMPUTE_FN_RE = re.compile(r"checkpoint\.py\(\d+\): recompute_fn$")
_LEGACY_NODE_RE = re.compile(r"(?:^|::)[A-Z]\w*Backward\d*$|^torch::autograd::AccumulateGrad$")
_OPTIMIZER_PREFIXES = ("Optimizer.step#", "Optimizer.zero_grad#")
_DATALOADER_PREFIX = "enumerate(DataLoader)#"

# NOTE [ Phase precedence ]
# One timeline per step; at every instant exactly one label wins:
#   1. a recompute occurrence (markers / stack / sequence), the latest-started if
#      several overlap (nested checkpoints: the inner region);
#   2. else ckprof marker ranges: on each thread the innermost range wins (the one
#      that started last); when ranges on different threads overlap in time (on CUDA
#      backward runs on the autograd thread) the phase with the higher priority wins:
#      recompute > optimizer > backward > forward > other;
#   3. else, in plain traces only (no ckprof::forward/backward/optimizer/zero_grad
#      markers), the rule windows: forward = step start -> first evaluate_function
#      start, backward = first evaluate_function start -> last evaluate_function end
#      (any thread; on a separate autograd thread, the end of that thread's last
#      top-level event in the step, e.g. DDP reducer finalisation), optimizer = Optimizer.step#/Optimizer.zero_grad# annotations,
#      with the same priority order where they overlap (zero_grad before forward is
#      optimizer); data loading (``enumerate(DataLoader)#...`` annotations) is
#      ``other``, winning over the forward window only;
#   4. else ``other``.
# Phase wall times of a step therefore add up exactly (integer ns) to its duration.
PHASE_PRIORITY: dict[str, int] = {"other": 0, "forward": 1, "backward": 2, "optimizer": 3,
                                  "recompute": 4}

_LAYER_RULES, _LAYER_MARKERS, _LAYER_RECOMPUTE = 0, 1, 2


@dataclass(frozen=True)
class PhaseTable:
    """Steps, the phase timeline of each step, and recompute occurrences (tables in
    ``*_table`` fields; ``steps``, ``segments``, ``recompute``, ``forward_runs`` are
    their DataFrames, built on first use)."""

    steps_table: Table
    segments_table: Table
    recompute_table: Table
    recompute_found_by: str
    notes: tuple[str, ...] = ()
    phase_source: str = "rules"
    #: runs of checkpointed regions (ckprof.analysis.forward_runs.find_forward_runs), None when
    #: built by hand
    forward_runs_table: Table | None = None
    #: recompute inside torch.compile'd backward graphs (ckprof/analysis/compiled_recompute.py)
    compiled: CompiledRecompute = field(default_factory=CompiledRecompute)

    steps = frame_of("steps_table")
    segments = frame_of("segments_table")
    recompute = frame_of("recompute_table")
    forward_runs = frame_of("forward_runs_table")

    def lookup(self, ts_ns: np.ndarray | pd.Series | list[int]) -> tuple[
            np.ndarray, np.ndarray, np.ndarray]:
        """``(step, phase, region)`` arrays for instants ``ts_ns``.

        A segment covers ``[start_ns, end_ns)``; instants outside every step give step
        -1, phase ``"other"``, region ``""``.
        """
        return self.segment_labels(self.segment_rows(ts_ns))

    def segment_rows(self, ts_ns: np.ndarray | list[int]) -> np.ndarray:
        """Row of ``segments_table`` whose ``[start_ns, end_ns)`` holds each instant, -1
        when none: one ``numpy.searchsorted`` over the segments."""
        ts = np.asarray(ts_ns, dtype=np.int64)
        seg = self.segments_table
        starts = np.asarray(seg["start_ns"], dtype=np.int64)
        ends = np.asarray(seg["end_ns"], dtype=np.int64)
        if len(starts) == 0:
            return np.full(len(ts), -1, dtype=np.int64)
        idx = np.searchsorted(starts, ts, side="right") - 1
        return np.where((idx >= 0) & (ts < ends[np.maximum(idx, 0)]), idx, -1)

    def segment_labels(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(step, phase, region)`` arrays (int64, object, object) of segment ``rows``
        (from :meth:`segment_rows`): step -1, phase ``"other"``, region ``""`` where the
        row is -1."""
        seg = self.segments_table
        # each column ends with the value for "no segment", which row -1 picks
        step = np.append(np.asarray(seg["step"], dtype=np.int64), np.int64(-1))
        phase = np.append(np.asarray(seg["phase"], dtype=object), np.array(["other"], dtype=object))
        region = np.append(np.asarray(seg["region"], dtype=object), np.array([""], dtype=object))
        return step[rows], phase[rows], region[rows]


# ---------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------

_RECOMPUTE_COLUMNS = ("step", "region", "start_ns", "end_ns", "method")


def _empty_recompute() -> Table:
    """The recompute table without rows (``region`` and ``method`` object columns)."""
    return Table({c: np.empty(0, dtype=object if c in ("region", "method") else np.int64)
                  for c in _RECOMPUTE_COLUMNS},
                 {"step": "int64", "region": "object", "start_ns": "int64", "end_ns": "int64",
                  "method": "object"})


def _objects(values: list) -> np.ndarray:
    """A 1-d object array of ``values`` (strings stay Python strings)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _stripped(codes: np.ndarray, cats: np.ndarray, rows: np.ndarray, prefix: str,
              before: str = "") -> np.ndarray:
    """``before`` + the name of each of ``rows`` (all named) less ``prefix``: an object
    array, one string built per distinct name, not per row."""
    used, inverse = np.unique(codes[rows], return_inverse=True)
    names = _objects([before + str(c)[len(prefix):] for c in cats[used].tolist()])
    return names[inverse.reshape(-1)]


def _cumcount(ids: np.ndarray) -> np.ndarray:
    """Per row, how many earlier rows have the same id (``groupby(ids).cumcount()``)."""
    n = len(ids)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    new = np.ones(n, dtype=bool)
    new[1:] = sorted_ids[1:] != sorted_ids[:-1]
    pos = np.arange(n, dtype=np.int64)
    out = np.empty(n, dtype=np.int64)
    out[order] = pos - np.maximum.accumulate(np.where(new, pos, 0))
    return out


def _group_cummax(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Running maximum of ``values`` within each run of equal ``group`` ids (rows sorted
    by group: ``groupby(group).cummax()``). Exact for any int64 values: the running
    maximum is taken over ``group * n + rank of the value``, which orders by group
    first."""
    n = len(values)
    if n == 0:
        return values.copy()
    dense = np.cumsum(np.concatenate(([0], group[1:] != group[:-1]))).astype(np.int64)
    order = np.argsort(values, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    best = np.maximum.accumulate(dense * n + rank) - dense * n
    return values[order[best]]


# ---------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------

_STEP_DTYPES = {"step": "int64", "start_ns": "int64", "end_ns": "int64"}


def _find_steps(ev: Table, tr: _Tree, notes: list[str]) -> tuple[Table, np.ndarray]:
    """The steps table (module docstring): one row per step number, sorted by start
    (then step), each ending no later than the next one starts; and the event rows of
    the ``ProfilerStep#N`` ranges it was made from (none when the trace has none)."""
    codes, cats = tr.codes, tr.cats
    # annotation rows (legacy: record_function = Operator); their names read once each
    ann = np.flatnonzero((tr.is_ann | tr.is_op) & (codes >= 0))
    ann_codes = codes[ann]
    used = np.flatnonzero(np.bincount(ann_codes, minlength=len(cats)))
    step_of_cat = np.full(len(cats), -1, dtype=np.int64)
    step_of_cat[used] = [(int(m.group(1)) if (m := _STEP_RE.match(c)) else -1)
                         for c in cats[used].tolist()]
    step_like = np.zeros(len(cats), dtype=bool)
    step_like[used] = [c.startswith(_STEP_PREFIX) for c in cats[used].tolist()]
    ann_step = step_of_cat[ann_codes]
    unusable = ann[step_like[ann_codes] & (ann_step < 0)]
    if len(unusable):
        example = str(cats[codes[int(unusable[0])]])
        notes.append(f"ignored {len(unusable)} ProfilerStep annotation(s) without a usable "
                     f"step number (e.g. {example[:60]!r}; a step is ProfilerStep#<0..2^63-1> "
                     "in ASCII digits): their time belongs to no step")
    rows = ann[ann_step >= 0]
    step_no = ann_step[ann_step >= 0]
    ts, end = tr.ts, tr.end
    if len(rows) == 0:
        cpu = ~_kind_mask(ev, *GPU_KINDS, "gpu_annotation")
        if not cpu.any():
            cpu = np.ones(len(ev), dtype=bool)
        notes.append("no ProfilerStep#N annotations: the whole trace is reported as step 0")
        steps = Table({"step": np.array([0], dtype=np.int64),
                       "start_ns": np.array([ts[cpu].min()], dtype=np.int64),
                       "end_ns": np.array([end[cpu].max()], dtype=np.int64)}, _STEP_DTYPES)
        _note_long_steps(steps, notes)
        return steps, rows
    step, start, stop = _renumber_repeated_steps(step_no, ts[rows], end[rows], notes)
    number, inverse = np.unique(step, return_inverse=True)
    inverse = inverse.reshape(-1)
    first = np.full(len(number), np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(len(number), np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, inverse, start)
    np.maximum.at(last, inverse, stop)
    order = np.lexsort((number, first))
    number, first, last = number[order], first[order], last[order]
    nxt = np.append(first[1:], np.iinfo(np.int64).max)
    clipped = last > nxt
    if clipped.any():
        notes.append(f"{int(clipped.sum())} ProfilerStep range(s) overlap the next step: "
                     "cut at the next step's start")
    steps = Table({"step": number, "start_ns": first,
                   "end_ns": np.minimum(last, nxt).astype(np.int64)}, _STEP_DTYPES)
    _note_long_steps(steps, notes)
    return steps, rows


def _renumber_repeated_steps(step: np.ndarray, start: np.ndarray, end: np.ndarray,
                             notes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A step number whose ranges occur at separate times (two runs' traces joined, a
    writer restarting its count) is not one step: the first occurrence keeps the
    number, later ones get numbers after the largest step (noted), so no content is
    merged into a wrong step or dropped. Overlapping ranges of one number (the same
    step seen twice) stay one step. Returns new (step, start, end) arrays of the ranges
    sorted by (step, start, end)."""
    order = np.lexsort((end, start, step))
    step, start, end = step[order], start[order], end[order]
    same = step[1:] == step[:-1]
    if not same.any():
        return step, start, end
    reach = _group_cummax(step, end)
    new_cluster = np.ones(len(step), dtype=bool)
    new_cluster[1:] = ~same | (start[1:] >= reach[:-1])
    cluster = np.cumsum(new_cluster) - 1
    first_of_step = np.ones(len(step), dtype=bool)
    first_of_step[1:] = ~same
    # the cluster index within its step: 0 for the first occurrence
    k = cluster - cluster[np.maximum.accumulate(np.where(first_of_step, np.arange(len(step)), 0))]
    hit = k > 0
    if not hit.any():
        return step, start, end
    # later occurrences, numbered in order of their first start (rows of a cluster are
    # consecutive and sorted by start: its first row starts first)
    repeats, first_row = np.unique(cluster[hit], return_index=True)
    repeats = repeats[np.argsort(start[hit][first_row], kind="stable")]
    top = int(step.max())
    if top + len(repeats) > np.iinfo(np.int64).max:
        notes.append(f"{len(repeats)} repeated ProfilerStep range(s) left out: no step numbers "
                     "are left above the largest one")
        keep = ~hit
        return step[keep], start[keep], end[keep]
    new_number = np.zeros(int(cluster[-1]) + 1, dtype=np.int64)
    new_number[repeats] = np.arange(top + 1, top + 1 + len(repeats), dtype=np.int64)
    old = np.unique(step[hit]).tolist()
    renumbered = step.copy()
    renumbered[hit] = new_number[cluster[hit]]
    shown = ", ".join(f"#{s}" for s in old[:5]) + (" ..." if len(old) > 5 else "")
    notes.append(f"ProfilerStep {shown} occur(s) again later in the trace: {len(repeats)} later "
                 f"occurrence(s) analysed as step(s) {top + 1}..{top + len(repeats)}")
    return renumbered, start, end


def _note_long_steps(steps: Table, notes: list[str]) -> None:
    """Append a note when some step lasts longer than ``LONG_STEP_NS``."""
    dur = (np.asarray(steps["end_ns"], dtype=np.int64)
           - np.asarray(steps["start_ns"], dtype=np.int64))
    long = np.flatnonzero(dur > LONG_STEP_NS)
    if len(long):
        i = int(long[0])
        notes.append(f"{len(long)} step(s) last longer than a day (step "
                     f"{int(steps['step'][i])}: {dur[i] / 3.6e12:,.0f} h): implausible; "
                     "check the trace's timestamps")


# ---------------------------------------------------------------------------------
# recompute detection
# ---------------------------------------------------------------------------------

# NOTE [ Recompute detection ]
# markers:  each ``ckprof::recompute::<region>`` range is one occurrence.
# stack:    each outermost Python frame ``.../torch/utils/checkpoint.py(N): recompute_fn``
#           (non-reentrant checkpoint, with_stack=True) is one occurrence; region = the
#           outermost ``nn.Module: X`` frame inside it (X, e.g. ``Block_3``), else
#           ``recompute@<Node>`` from the enclosing evaluate_function.
# sequence: recomputed forward ops run inside backward with grad mode on, so they carry
#           a ``Sequence number``; ops of backward formulas do not (grad mode is off).
#           Candidates: cpu_ops with seq >= 0 that have an evaluate_function ancestor
#           and are not its direct child (that child is the backward node's own record,
#           e.g. ``AddmmBackward0`` or ``CheckpointFunctionBackward``, which carries the
#           node's seq). Keep the outermost candidates under each nearest
#           evaluate_function (under SAC ``aten::X > PythonDispatchMode > aten::X``
#           only the outer op carries seq), and merge those under the same
#           evaluate_function into one occurrence (first start -> last end). Reentrant
#           checkpoint: the recomputed ops sit under ``CheckpointFunctionBackward``,
#           followed by a nested engine run whose node records are direct children of
#           nested evaluate_functions (excluded) and whose formula ops have no seq.
#           Limits: two regions recomputed by one backward node merge into one
#           occurrence; ``create_graph=True`` backward records grad-enabled formula ops
#           too (they would count as recompute); the span starts at the first recomputed
#           op and ends at the last, so the Python/bookkeeping time around them (which a
#           marker range includes) is backward here: sequence recompute is a lower bound
#           (measured: each sequence occurrence inside its marker range, same counts).
# Region names without markers: ``recompute@<Node>``; when a node name triggers more
# than one occurrence in some step, ``recompute@<Node>#k`` (k = 1.. in time order in
# the step), so positions line up across steps of the same model.

# Occurrences inside the stage are dicts of columns: ``region`` (object), ``start_ns``,
# ``end_ns`` (int64) and, from the stack method, ``frame`` (the recompute_fn row, -1
# for none).

def _occurrences(region: np.ndarray, start_ns: np.ndarray, end_ns: np.ndarray,
                 frame: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Occurrence columns (``frame`` only when given)."""
    occ = {"region": region, "start_ns": np.asarray(start_ns, dtype=np.int64),
           "end_ns": np.asarray(end_ns, dtype=np.int64)}
    if frame is not None:
        occ["frame"] = np.asarray(frame, dtype=np.int64)
    return occ


def _no_occurrences(*, frame: bool = False) -> dict[str, np.ndarray]:
    """Occurrence columns without rows (with an empty ``frame`` when asked)."""
    empty = np.empty(0, dtype=np.int64)
    return _occurrences(np.empty(0, dtype=object), empty, empty, empty if frame else None)


def _markers_recompute(tr: _Tree) -> dict[str, np.ndarray]:
    """One occurrence per ``ckprof::recompute::<region>`` range, in event order."""
    rows = np.flatnonzero(_mask_names(tr.codes, tr.cats,
                                      RECOMPUTE_PREFIX, tr.is_ann))
    return _occurrences(_stripped(tr.codes, tr.cats, rows, RECOMPUTE_PREFIX), tr.ts[rows],
                        tr.end[rows])


def _sequence_tops(parent: np.ndarray, is_eval: np.ndarray, is_op: np.ndarray,
                   seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the outermost recomputed ops, nearest evaluate_function at or above
    each row), see NOTE [ Recompute detection ] 3."""
    n = len(parent)
    # inherited: the nearest evaluate_function strictly above; near_eval: at or above
    inherited = _nearest_above(parent, is_eval)
    near_eval = np.where(is_eval, np.arange(n), inherited)
    has_parent = parent >= 0
    parent_is_eval = has_parent & is_eval[np.where(has_parent, parent, 0)]
    # a candidate: a grad-mode op under an evaluate_function, not its node's own record
    cand = is_op & (seq >= 0) & ~is_eval & (inherited >= 0) & ~parent_is_eval
    # ... counted once, at its outermost: not when a candidate is above it with no
    # evaluate_function in between (the nearest of either kind above is a candidate)
    above = _nearest_above(parent, is_eval | cand)
    under_cand = ~is_eval & (above >= 0) & cand[np.maximum(above, 0)]
    return np.flatnonzero(cand & ~under_cand), near_eval


def _sequence_recompute(tr: _Tree) -> dict[str, np.ndarray]:
    """One occurrence per evaluate_function holding recomputed ops (NOTE [ Recompute
    detection ]), first op start -> last op end, in evaluate_function row order."""
    top, near_eval = _sequence_tops(tr.parent, tr.is_eval, tr.is_op, tr.seq)
    if len(top) == 0:
        return _no_occurrences()
    node, inverse = np.unique(near_eval[top], return_inverse=True)
    inverse = inverse.reshape(-1)
    first = np.full(len(node), np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(len(node), np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, inverse, tr.ts[top])
    np.maximum.at(last, inverse, tr.end[top])
    return _occurrences(_stripped(tr.codes, tr.cats, node, EVAL_PREFIX, "recompute@"), first,
                        last)


def _stack_recompute(tr: _Tree) -> dict[str, np.ndarray]:
    """One occurrence per outermost ``recompute_fn`` Python frame, in event order, with
    its ``frame`` row and a provisional name (``recompute@<Node>`` of the enclosing
    evaluate_function, ``recompute@?`` without one)."""
    codes, cats, ts, end = tr.codes, tr.cats, tr.ts, tr.end
    is_rf = _mask_names(codes, cats, _RECOMPUTE_FN_RE.search, tr.is_py)
    top_rf = is_rf & (_outermost_above(tr.parent, is_rf) < 0)  # outermost recompute_fn frames
    rf_rows = np.flatnonzero(top_rf)
    if len(rf_rows) == 0:
        return _no_occurrences(frame=True)
    # provisional names (recompute@<Node> of the enclosing evaluate_function); the
    # region's own name comes from its forward run (ckprof.analysis.forward_runs)
    ev_rows = np.flatnonzero(tr.is_eval)
    j = np.searchsorted(ts[ev_rows], ts[rf_rows], side="right") - 1
    node = ev_rows[np.maximum(j, 0)] if len(ev_rows) else np.zeros(len(j), dtype=np.int64)
    known = (j >= 0) & (end[node] >= end[rf_rows])
    names = np.full(len(rf_rows), "recompute@?", dtype=object)
    if known.any():
        names[known] = _stripped(codes, cats, node[known], EVAL_PREFIX, "recompute@")
    return _occurrences(names, ts[rf_rows], end[rf_rows], rf_rows)


def _number_repeated(occ: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Occurrences sorted by (step, start) (stable), ``recompute@X`` names that repeat
    within a step numbered ``#k`` (time order); new arrays."""
    if len(occ["step"]) == 0:
        return occ
    order = np.lexsort((occ["start_ns"], occ["step"]))
    occ = {c: a[order] for c, a in occ.items()}
    region = occ["region"]
    names, name_id = np.unique(region, return_inverse=True)
    name_id = name_id.reshape(-1)
    k = _cumcount(factorize(occ["step"], name_id)[0]) + 1
    # a name repeats when some step holds it more than once
    per_name_max = np.zeros(len(names), dtype=np.int64)
    np.maximum.at(per_name_max, name_id, k)
    auto = np.array([str(c).startswith("recompute@") for c in names.tolist()], dtype=bool)
    renamed = np.flatnonzero((auto & (per_name_max > 1))[name_id])
    if len(renamed):
        # one string per distinct (name, k), not per row
        pair, n_pairs = factorize(name_id[renamed], k[renamed])
        first = np.zeros(n_pairs, dtype=np.int64)
        first[pair] = renamed  # any row of a pair: same name, same k
        label = _objects([f"{names[name_id[r]]}#{k[r]}" for r in first.tolist()])
        region = region.copy()
        region[renamed] = label[pair]
    return dict(occ, region=region)


# ---------------------------------------------------------------------------------
# tiling
# ---------------------------------------------------------------------------------

def _tile_step(step: int, s: int, e: int, iv: dict[str, np.ndarray],
               sel: np.ndarray) -> dict[str, np.ndarray]:
    """Segments (columns ``step``, ``phase``, ``region``, ``start_ns``, ``end_ns``)
    tiling [s, e) from labelled intervals ``iv`` (columns as arrays, rows ``sel``), see
    NOTE [ Phase precedence ]."""
    st = np.clip(iv["start_ns"][sel], s, e)
    en = np.clip(iv["end_ns"][sel], s, e)
    keep = en > st
    if not keep.any():
        return {"step": np.array([step], dtype=np.int64), "phase": _objects(["other"]),
                "region": _objects([""]), "start_ns": np.array([s], dtype=np.int64),
                "end_ns": np.array([e], dtype=np.int64)}
    sel = sel[keep]
    st, en = st[keep], en[keep]
    layer, group, order, prio = (iv["layer"][sel], iv["group"][sel], iv["order"][sel],
                                 iv["prio"][sel])
    phase, region = iv["phase"][sel], iv["region"][sel]
    bounds = np.unique(np.concatenate(([s, e], st, en)))
    lo, hi = bounds[:-1], bounds[1:]
    active = (st[None, :] <= lo[:, None]) & (en[None, :] >= hi[:, None])
    big = np.int64(order.max() + 1)  # order is the interval's place among all of them
    # per thread group the innermost (latest order) marker wins; other layers are
    # single-interval groups so this keeps all of them
    winner_in_group = active.copy()
    for g in np.unique(group[layer == _LAYER_MARKERS]):
        cols = np.flatnonzero((group == g) & (layer == _LAYER_MARKERS))
        sub = np.where(active[:, cols], order[cols][None, :], -1)
        best = sub.max(axis=1)
        winner_in_group[:, cols] = active[:, cols] & (sub == best[:, None])
    # the winner of each elementary span: highest (layer, priority, order), i.e. the
    # NOTE [ Phase precedence ]: recompute layer > markers > rules; within a layer the
    # higher-priority phase; then the latest-started interval. +1 so that 0 = inactive.
    score = np.where(winner_in_group,
                     lexicographic_score([layer, prio, order], [3, 10, int(big)]) + 1, 0)
    win = score.argmax(axis=1)
    any_active = score.max(axis=1) > 0
    ph = np.where(any_active, phase[win], "other")
    rg = np.where(any_active, region[win], "")
    # equal neighbours merge (the elementary spans are contiguous)
    new = np.ones(len(lo), dtype=bool)
    new[1:] = (ph[1:] != ph[:-1]) | (rg[1:] != rg[:-1])
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(lo)) - 1
    return {"step": np.full(len(first), step, dtype=np.int64), "phase": ph[first],
            "region": rg[first], "start_ns": lo[first].astype(np.int64),
            "end_ns": hi[last].astype(np.int64)}


#: tile steps whose labelled intervals do not overlap in one vectorised pass (tests
#: turn it off to compare with the per-step reference)
_VECTOR_TILING = True
_SEGMENT_DTYPES = {"step": "int64", "phase": "object", "region": "object",
                   "start_ns": "int64", "end_ns": "int64"}


def _tile_steps(steps: Table, iv: dict[str, np.ndarray]) -> Table:
    """Segments of every step (NOTE [ Phase precedence ]), in step then time order.

    The intervals meeting each step come from one sort (each interval meets a run of
    consecutive steps: steps are sorted and do not overlap), not a scan of all intervals
    per step. Steps whose clipped intervals do not overlap each other -- the rule windows
    of most traces, or no interval at all -- are tiled together, vectorised (each
    interval is its own label, gaps are ``other``, equal neighbours merge); the others go
    through :func:`_tile_step`. Same segments either way, far fewer Python steps."""
    st_step = np.asarray(steps["step"], dtype=np.int64)
    st_s = np.asarray(steps["start_ns"], dtype=np.int64)
    st_e = np.asarray(steps["end_ns"], dtype=np.int64)
    iv_s, iv_e = iv["start_ns"], iv["end_ns"]
    first = np.searchsorted(st_e, iv_s, side="right")    # first step ending after it starts
    last = np.searchsorted(st_s, iv_e, side="left") - 1  # last step starting before it ends
    count = np.maximum(last - first + 1, 0)
    pair_iv = np.repeat(np.arange(len(iv_s), dtype=np.int64), count)
    offset = np.arange(len(pair_iv), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    pair_step = np.repeat(first, count) + offset          # step position of each pair
    by_step = np.argsort(pair_step, kind="stable")        # interval order within a step
    pair_step, pair_iv = pair_step[by_step], pair_iv[by_step]
    bounds = np.searchsorted(pair_step, np.arange(len(st_s) + 1))

    p_s, p_e = st_s[pair_step], st_e[pair_step]
    cst = np.clip(iv_s[pair_iv], p_s, p_e)
    cen = np.clip(iv_e[pair_iv], p_s, p_e)
    same_step = np.zeros(len(pair_step), dtype=bool)
    same_step[1:] = pair_step[1:] == pair_step[:-1]
    keep = cen > cst
    # overlapping kept intervals in a step (sorted by start: neighbours tell)
    kept = np.flatnonzero(keep)
    k_step = pair_step[kept]
    clash = (k_step[1:] == k_step[:-1]) & (cst[kept][1:] < cen[kept][:-1])
    complex_step = np.zeros(len(st_s), dtype=bool)
    complex_step[k_step[1:][clash]] = True
    if not _VECTOR_TILING:
        complex_step[:] = True

    parts: list[dict[str, np.ndarray]] = []
    simple = ~complex_step
    if simple.any():
        parts.append(_tile_disjoint(st_step, st_s, st_e, simple, pair_step[kept], cst[kept],
                                    cen[kept], iv["phase"][pair_iv[kept]],
                                    iv["region"][pair_iv[kept]]))
    for k in np.flatnonzero(complex_step).tolist():  # steps
        tiles = _tile_step(int(st_step[k]), int(st_s[k]), int(st_e[k]), iv,
                           pair_iv[bounds[k]:bounds[k + 1]])
        parts.append(dict(tiles, _pos=np.full(len(tiles["step"]), k, dtype=np.int64)))
    out = {c: np.concatenate([p[c] for p in parts]) if parts
           else np.empty(0, dtype=np.int64 if d == "int64" else object)
           for c, d in _SEGMENT_DTYPES.items()}
    if parts:
        pos_all = np.concatenate([p["_pos"] for p in parts])
        order = np.lexsort((out["start_ns"], pos_all))
        out = {c: a[order] for c, a in out.items()}
    return Table(out, _SEGMENT_DTYPES)


def _tile_disjoint(st_step: np.ndarray, st_s: np.ndarray, st_e: np.ndarray, which: np.ndarray,
                   k_pos: np.ndarray, k_st: np.ndarray, k_en: np.ndarray, k_phase: np.ndarray,
                   k_region: np.ndarray) -> dict[str, np.ndarray]:
    """Segments of the steps ``which`` whose kept (clipped, non-empty) intervals -- step
    position ``k_pos``, ``[k_st, k_en)``, labels -- do not overlap: the intervals, the
    gaps between them and the step's edges as ``other``, equal neighbours merged."""
    sel = which[k_pos]
    k_pos, k_st, k_en = k_pos[sel], k_st[sel], k_en[sel]
    k_phase, k_region = k_phase[sel], k_region[sel]
    steps_pos = np.flatnonzero(which)
    # gap candidates: before each interval (from the previous end or the step start)
    # and after the step's last interval (or the whole step when it has none)
    first_in_step = np.ones(len(k_pos), dtype=bool)
    first_in_step[1:] = k_pos[1:] != k_pos[:-1]
    prev_end = np.where(first_in_step, st_s[k_pos], np.concatenate(([0], k_en[:-1])))
    last_end = np.full(len(st_s), -1, dtype=np.int64)
    last_end[steps_pos] = st_s[steps_pos]
    if len(k_pos):
        last_in_step = np.ones(len(k_pos), dtype=bool)
        last_in_step[:-1] = k_pos[1:] != k_pos[:-1]
        last_end[k_pos[last_in_step]] = k_en[last_in_step]
    tail_s = last_end[steps_pos]
    tail_e = st_e[steps_pos]
    whole = tail_s == tail_e  # a zero-length step without intervals is one segment
    no_iv = np.ones(len(st_s), dtype=bool)
    no_iv[k_pos] = False
    pos = np.concatenate([k_pos, k_pos, steps_pos])
    seg_s = np.concatenate([prev_end, k_st, tail_s])
    seg_e = np.concatenate([k_st, k_en, tail_e])
    phase = np.concatenate([np.full(len(k_pos), "other", dtype=object), k_phase,
                            np.full(len(steps_pos), "other", dtype=object)])
    region = np.concatenate([np.full(len(k_pos), "", dtype=object), k_region,
                             np.full(len(steps_pos), "", dtype=object)])
    real = np.concatenate([k_st > prev_end, np.ones(len(k_pos), dtype=bool),
                           (tail_e > tail_s) | (whole & no_iv[steps_pos])])
    pos, seg_s, seg_e, phase, region = (a[real] for a in (pos, seg_s, seg_e, phase, region))
    order = np.lexsort((seg_s, pos))
    pos, seg_s, seg_e, phase, region = (a[order] for a in (pos, seg_s, seg_e, phase, region))
    new_run = np.ones(len(pos), dtype=bool)
    new_run[1:] = ((pos[1:] != pos[:-1]) | (phase[1:] != phase[:-1])
                   | (region[1:] != region[:-1]) | (seg_s[1:] != seg_e[:-1]))
    starts = np.flatnonzero(new_run)
    ends = np.concatenate([starts[1:], [len(pos)]]) - 1
    return {"step": st_step[pos[starts]], "phase": phase[starts], "region": region[starts],
            "start_ns": seg_s[starts], "end_ns": seg_e[ends], "_pos": pos[starts]}


# ---------------------------------------------------------------------------------
# find_phases
# ---------------------------------------------------------------------------------

def find_phases(trace: Trace, recompute_detection: str = "auto") -> PhaseTable:
    """Steps, phase segments and recompute occurrences of ``trace``.

    ``recompute_detection``: ``auto`` (markers if the trace has
    ``ckprof::recompute::`` ranges, else stack if it has ``recompute_fn`` Python
    frames, else sequence), ``markers``, ``stack``, ``sequence``, ``compiled`` (only
    recompute inside compiled backward graphs), or ``none`` (no recompute carved out).
    Every method but ``none`` also takes the recompute inside torch.compile'd backward
    graphs from the capture's compile record (method ``compiled``; the found method
    then reads e.g. ``markers+compiled``). Raises :class:`NotCapturedError` when an explicit method
    needs what the trace lacks, :class:`EmptyTraceError` on a trace without events.
    """
    check_recompute_detection(recompute_detection)
    ev = trace.event_table
    if len(ev) == 0:
        raise EmptyTraceError("trace has no complete (ph X) events", path=trace.path,
                              hint="Check that the profiler captured at least one step")
    notes: list[str] = []
    # (ckprof.analysis.forward_runs reads this module's helpers, hence the import here)
    from ckprof.analysis import forward_runs as _runs

    tree = _runs._Tree(trace)  # the columns every part below reads
    codes, cats, ts, end, is_ann = tree.codes, tree.cats, tree.ts, tree.end, tree.is_ann
    steps, step_rows = _find_steps(ev, tree, notes)

    # ---- marker ranges ------------------------------------------------------------
    std = {FORWARD, BACKWARD, OPTIMIZER, ZERO_GRAD}
    is_std = _mask_names(codes, cats, frozenset(std), is_ann)
    is_user = _mask_names(codes, cats, PHASE_PREFIX, is_ann)
    has_rc_markers = bool(_mask_names(
        codes, cats, RECOMPUTE_PREFIX, is_ann).any())
    has_region_markers = has_rc_markers or bool(_mask_names(
        codes, cats, CHECKPOINT_PREFIX, is_ann).any())
    phase_source = "markers" if is_std.any() else "rules"

    # ---- recompute ----------------------------------------------------------------
    method = recompute_detection
    is_py = tree.is_py
    has_rf = bool(_mask_names(codes, cats, _RECOMPUTE_FN_RE.search,
                              is_py).any())
    if method == "auto":
        method = "markers" if has_rc_markers else ("stack" if has_rf else "sequence")
    if method == "markers" and not trace.has_markers:
        raise NotCapturedError(
            "trace has no ckprof markers, so recompute cannot be found by markers",
            path=trace.path,
            hint="Capture with ckprof.capture / ckprof.checkpoint, or use "
                 "--recompute-detection auto")
    if method == "markers" and not has_region_markers:
        # like `stack` without frames: asking for markers the trace does not have is an
        # error, not 0% recompute
        raise NotCapturedError(
            "trace has no checkpoint region markers (ckprof::checkpoint:: / "
            "ckprof::recompute::), so recompute cannot be found by markers",
            path=trace.path,
            hint="Capture with the training inside ckprof.instrument_checkpointing() (or "
                 "with ckprof.checkpoint, or `ckprof run`), or use --recompute-detection "
                 "auto / sequence")
    if method == "stack" and not is_py.any():
        raise NotCapturedError(
            "trace has no Python frames, so recompute cannot be found by stack",
            path=trace.path,
            hint="Capture with with_stack=True, or use --recompute-detection auto")
    if method == "markers":
        occ = _with_method(_markers_recompute(tree), "markers")
    elif method == "stack":
        occ = _with_method(_stack_recompute(tree), "stack")
        # reentrant checkpoint has no recompute_fn frame: add what the sequence
        # heuristic finds outside every recompute_fn frame (rows say method=sequence)
        extra = _outside(_sequence_recompute(tree), occ)
        if len(extra["start_ns"]):
            notes.append(f"{len(extra['start_ns'])} recompute occurrence(s) without a "
                         "recompute_fn frame (reentrant checkpoint) found by the "
                         "Sequence-number heuristic")
            extra["frame"] = np.full(len(extra["start_ns"]), -1, dtype=np.int64)
            occ = _concat([occ, _with_method(extra, "sequence")])
    elif method == "sequence":
        occ = _with_method(_sequence_recompute(tree), "sequence")
    else:
        occ = _with_method(_no_occurrences(), "")
    eager_found = bool(len(occ["start_ns"]))

    # ---- forward runs; one name per region whatever the method ------------------------
    runs = _runs.find_forward_runs(trace, steps, _tree=tree)
    if method in ("stack", "sequence") and eager_found:
        named = _runs.link_recompute_names(Table(occ), trace, runs, _tree=tree)
        linked = np.asarray(named["linked"], dtype=bool)
        region = np.array(named["region"], dtype=object)  # a copy: filled in below
        if linked.any():
            notes.append(f"{int(linked.sum())} of {len(linked)} recompute occurrence(s) named "
                         f"after their region's forward run ({runs['source'][0]}), by the "
                         "Sequence number of the backward node that recomputed them")
        if "frame" in occ:
            todo = np.flatnonzero(~linked & (occ["frame"] >= 0))
            fallback = _runs.recompute_frame_names(trace, occ["frame"][todo], _tree=tree)
            for k, name in zip(todo.tolist(), fallback, strict=True):
                if name is not None:
                    region[k] = name
        occ = dict(occ, region=region)
    # recompute inside compiled backward graphs: what the eager methods cannot see
    compiled = (find_compiled_recompute(trace, steps) if method != "none"
                else CompiledRecompute())
    c_occ = compiled.occurrences_table
    if len(c_occ):
        occ = _concat([occ, _with_method(_occurrences(
            np.asarray(c_occ["region"], dtype=object), c_occ["start_ns"], c_occ["end_ns"]),
            "compiled")])
    recompute = _recompute_table(occ, steps, notes, eager_found=eager_found,
                                 eager_method=method in ("markers", "stack", "sequence"),
                                 compiled_region_dtype=c_occ.dtypes.get("region", "object"))
    has_compiled = bool((recompute["method"] == "compiled").any())
    if method == "compiled" or not eager_found:
        found = "compiled" if has_compiled else "none"
    else:
        found = f"{method}+compiled" if has_compiled else method
    if recompute_detection != "none" and found == "none":
        notes.append(f"no recompute found ({method} detection)")
    notes.extend(compiled.notes)
    if method == "sequence" and eager_found:
        notes.append("recompute found by the Sequence-number heuristic"
                     ": regions without a forward run in the "
                     "trace are named after the backward node that triggered them "
                     "(recompute@<Node>); a backward run with create_graph=True would also "
                     "count as recompute")
        if recompute_detection == "auto" and trace.ckprof is not None and not has_region_markers:
            notes.append("this trace was captured by ckprof without checkpoint region "
                         "markers: run the training inside ckprof.instrument_checkpointing() "
                         "(or under `ckprof run`) and recompute is found by markers, with "
                         "regions named after their modules")

    # ---- labelled intervals ---------------------------------------------------------
    parts: list[dict[str, np.ndarray]] = []
    # compiled occurrences span backward work between their pieces: label the pieces
    eager = np.flatnonzero(np.asarray(recompute["method"], dtype=object) != "compiled")
    pieces = compiled.pieces_table
    l_start = np.concatenate([np.asarray(recompute["start_ns"], dtype=np.int64)[eager],
                              np.asarray(pieces["start_ns"], dtype=np.int64)])
    if len(l_start):
        l_end = np.concatenate([np.asarray(recompute["end_ns"], dtype=np.int64)[eager],
                                np.asarray(pieces["end_ns"], dtype=np.int64)])
        l_region = np.concatenate([np.asarray(recompute["region"], dtype=object)[eager],
                                   np.asarray(pieces["region"], dtype=object)])
        parts.append(_labelled(l_start, l_end, "recompute", l_region, _LAYER_RECOMPUTE, -1))
    mk = np.flatnonzero(is_std | is_user)
    if len(mk):
        used, inverse = np.unique(codes[mk], return_inverse=True)
        phase_of_code = _objects([MARKER_PHASE[c] if c in MARKER_PHASE
                                  else phase_of_user_marker(c) for c in cats[used].tolist()])
        tkey = thread_ids(tree.pid[mk], tree.tid[mk])
        parts.append(_labelled(ts[mk], end[mk], phase_of_code[inverse.reshape(-1)], "",
                               _LAYER_MARKERS, tkey))
    if phase_source == "rules":
        parts.append(_rule_windows(ev, tree, steps, step_rows, notes))
    # ckprof::checkpoint::<region> ranges name forward runs (see attribution); they
    # never set phases.
    iv = _labelled(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64),
                   np.empty(0, dtype=object), "", 0, 0)
    if parts:
        iv = {c: np.concatenate([p[c] for p in parts]) for c in iv}
    order = np.lexsort((-iv["end_ns"], iv["start_ns"]))
    iv = {c: a[order] for c, a in iv.items()}
    iv["order"] = np.arange(len(order), dtype=np.int64)
    # non-marker intervals never share a group: each is its own "thread"
    solo = iv["layer"] != _LAYER_MARKERS
    iv["group"] = iv["group"].copy()
    iv["group"][solo] = -(np.arange(int(solo.sum()), dtype=np.int64) + 2)

    segments = _tile_steps(steps, iv)
    unknown = set(segments["phase"].tolist()) - set(PHASES)
    assert not unknown, f"phases outside PHASES: {unknown}"
    return PhaseTable(steps_table=steps, segments_table=segments, recompute_table=recompute,
                      recompute_found_by=found, notes=tuple(notes), phase_source=phase_source,
                      forward_runs_table=runs, compiled=compiled)


def _with_method(occ: dict[str, np.ndarray], method: str) -> dict[str, np.ndarray]:
    """``occ`` with a ``method`` column (every row ``method``)."""
    return dict(occ, method=np.full(len(occ["start_ns"]), method, dtype=object))


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of ``parts`` one after another (the columns of the first)."""
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


def _recompute_table(occ: dict[str, np.ndarray], steps: Table, notes: list[str], *,
                     eager_found: bool, eager_method: bool, compiled_region_dtype: str
                     ) -> Table:
    """The ``recompute`` table: occurrences ``occ`` (eager rows, then compiled ones) in
    their step (those outside every step dropped, noted), sorted by (step, start),
    repeated ``recompute@X`` names numbered.

    The pandas dtypes pinned are those the DataFrame version of this stage produced:
    ``region`` ``str`` when rows are left; ``method`` ``str`` when an eager method ran
    (``object`` for ``compiled`` alone); an empty table is ``object``, or, when every
    occurrence lay outside the steps, what its parts joined to (``str`` only when
    every part's column was ``str``)."""
    n = len(occ["start_ns"])
    if n == 0:
        return _empty_recompute()
    step = _step_of(occ["start_ns"], steps)
    outside = int((step < 0).sum())
    if outside:
        notes.append(f"{outside} recompute occurrence(s) outside every step ignored")
    inside = np.flatnonzero(step >= 0)
    kept = _number_repeated({"step": step[inside], "region": occ["region"][inside],
                             "start_ns": occ["start_ns"][inside],
                             "end_ns": occ["end_ns"][inside],
                             "method": occ["method"][inside]})
    method_dtype = "str" if eager_method else "object"
    if len(inside):
        region_dtype = "str"
    elif eager_found:  # eager "str" joined to the compiled rows' column, if any
        has_compiled = bool((occ["method"] == "compiled").any())
        region_dtype = "str" if not has_compiled or compiled_region_dtype == "str" else "object"
    else:  # the eager part was an empty column (float64 to pandas) joined to compiled rows
        region_dtype = "object"
    return Table(kept, {"step": "int64", "region": region_dtype, "start_ns": "int64",
                        "end_ns": "int64", "method": method_dtype})


def _labelled(start_ns: np.ndarray, end_ns: np.ndarray, phase: np.ndarray | str,
              region: np.ndarray | str, layer: int, group: np.ndarray | int,
              prio: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Labelled intervals for the tiling (NOTE [ Phase precedence ]): scalars are
    broadcast; ``prio`` defaults to the phase's PHASE_PRIORITY (0 when it has none)."""
    n = len(start_ns)
    phase = np.full(n, phase, dtype=object) if isinstance(phase, str) else phase
    if prio is None:
        names, inverse = np.unique(phase, return_inverse=True)
        prio = np.array([PHASE_PRIORITY.get(p, 0) for p in names.tolist()],
                        dtype=np.int64)[inverse.reshape(-1)]
    return {"start_ns": np.asarray(start_ns, dtype=np.int64),
            "end_ns": np.asarray(end_ns, dtype=np.int64), "phase": phase,
            "region": np.full(n, region, dtype=object) if isinstance(region, str) else region,
            "layer": np.full(n, layer, dtype=np.int64),
            "group": np.broadcast_to(np.asarray(group, dtype=np.int64), (n,)).copy(),
            "prio": np.asarray(prio, dtype=np.int64)}


def _outside(occ: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of ``occ`` that overlap no row of ``ref`` (ref rows do not overlap)."""
    if len(occ["start_ns"]) == 0 or len(ref["start_ns"]) == 0:
        return occ
    order = np.argsort(ref["start_ns"], kind="stable")
    rs, re_ = ref["start_ns"][order], ref["end_ns"][order]
    s, e = occ["start_ns"], occ["end_ns"]
    j = np.searchsorted(rs, e, side="left") - 1      # last ref starting before e
    hit = j >= 0
    hit[hit] = re_[j[hit]] > s[hit]
    return {c: a[~hit] for c, a in occ.items()}


def _thread_set(pid: np.ndarray, tid: np.ndarray) -> set[tuple[int, int]]:
    """The distinct (pid, tid) pairs of some rows."""
    ids, count = factorize(pid, tid)
    first = np.full(count, len(ids), dtype=np.int64)
    np.minimum.at(first, ids, np.arange(len(ids), dtype=np.int64))
    return set(zip(pid[first].tolist(), tid[first].tolist(), strict=True))


def _rule_windows(ev: Table, tr: _Tree, steps: Table, step_rows: np.ndarray,
                  notes: list[str]) -> dict[str, np.ndarray]:
    """forward / backward / optimizer windows of plain traces (rules 3); ``step_rows``:
    the ``ProfilerStep#N`` ranges (:func:`_find_steps`)."""
    codes, cats, ts, end = tr.codes, tr.cats, tr.ts, tr.end
    is_range = tr.is_ann | tr.is_op  # legacy traces: record_function = Operator
    ev_rows = np.flatnonzero(tr.is_eval)
    if len(ev_rows) == 0:
        # torch < 1.10 records backward nodes by their own name, without the
        # "autograd::engine::evaluate_function: " wrapper
        ev_rows = np.flatnonzero(_mask_names(
            codes, cats, lambda c: bool(_LEGACY_NODE_RE.search(c))
            and not c.startswith("aten::"), tr.is_op))
        if len(ev_rows):
            notes.append("no autograd evaluate_function records (torch < 1.10 trace): "
                         "backward found from autograd node names (...Backward)")
    e_step = _step_of(ts[ev_rows], steps)
    st = np.asarray(steps["step"], dtype=np.int64)
    s0 = np.asarray(steps["start_ns"], dtype=np.int64)
    s1 = np.asarray(steps["end_ns"], dtype=np.int64)
    # per step holding evaluate_function rows (-1: outside every step): first start,
    # last end
    b_step, inverse = np.unique(e_step, return_inverse=True)
    inverse = inverse.reshape(-1)
    first = np.full(len(b_step), np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(len(b_step), np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, inverse, ts[ev_rows])
    np.maximum.at(last, inverse, end[ev_rows])
    # On CUDA the engine runs backward on its own device thread; what that thread does
    # after the last node (DDP reducer finalisation, final callbacks) is still backward.
    # Backward threads = threads with evaluate_function records that do not hold the
    # ProfilerStep ranges (on CPU backward runs on the calling thread: no extension).
    pid, tid = tr.pid, tr.tid
    main_set = _thread_set(pid[step_rows], tid[step_rows])
    bwd_threads = sorted(_thread_set(pid[ev_rows], tid[ev_rows]) - main_set)
    if bwd_threads and len(b_step):
        on_bwd = np.zeros(len(pid), dtype=bool)
        for p, t in bwd_threads:  # a few threads
            on_bwd |= (pid == p) & (tid == t)
        roots = np.flatnonzero(on_bwd & (tr.depth == 0)
                               & _kind_mask(ev, "cpu_op", "user_annotation", "runtime"))
        r_step = _step_of(ts[roots], steps)
        pos = np.searchsorted(b_step, r_step)
        known = (pos < len(b_step)) & (b_step[np.minimum(pos, len(b_step) - 1)] == r_step)
        ok = (r_step >= 0) & known
        ok[ok] = ts[roots][ok] >= first[pos[ok]]
        if ok.any():
            tail = np.full(len(b_step), np.iinfo(np.int64).min, dtype=np.int64)
            np.maximum.at(tail, pos[ok], end[roots][ok])
            last = np.maximum(last, tail)
    # per step: forward from its start to its first evaluate_function, then backward to
    # its last end (cut at the step's end); a step without any: forward throughout
    at = np.searchsorted(b_step, st)
    has = (at < len(b_step)) & (b_step[np.minimum(at, max(len(b_step) - 1, 0))] == st) \
        if len(b_step) else np.zeros(len(st), dtype=bool)
    f_ns = first[at[has]]
    n_out = np.where(has, 2, 1)
    fwd_at = np.cumsum(n_out) - n_out
    out_s = np.empty(int(n_out.sum()), dtype=np.int64)
    out_e = np.empty_like(out_s)
    out_p = np.full(len(out_s), "forward", dtype=object)
    out_s[fwd_at] = s0
    out_e[fwd_at] = s1
    out_e[fwd_at[has]] = f_ns
    bwd_at = fwd_at[has] + 1
    out_s[bwd_at] = f_ns
    out_e[bwd_at] = np.minimum(last[at[has]], s1[has])
    out_p[bwd_at] = "backward"
    no_bwd = st[~has][:10].tolist()
    if no_bwd:
        notes.append(f"step(s) {', '.join(map(str, no_bwd))} have no backward "
                     "(no autograd evaluate_function): counted as forward")
    opt = np.flatnonzero(_mask_names(codes, cats, _OPTIMIZER_PREFIXES,
                                     is_range))
    # data loading (torch records ``enumerate(DataLoader)#...``) is not forward: it wins
    # over the forward window (same priority, starts later) and loses to the others
    dl = np.flatnonzero(_mask_names(codes, cats, _DATALOADER_PREFIX,
                                    is_range))
    windows = np.where(out_p == "backward", PHASE_PRIORITY["backward"],
                       PHASE_PRIORITY["forward"]).astype(np.int64)
    return _labelled(
        np.concatenate([out_s, ts[opt], ts[dl]]),
        np.concatenate([out_e, end[opt], end[dl]]),
        np.concatenate([out_p, np.full(len(opt), "optimizer", dtype=object),
                        np.full(len(dl), "other", dtype=object)]),
        "", _LAYER_RULES, 0,
        np.concatenate([windows, np.full(len(opt), PHASE_PRIORITY["optimizer"], dtype=np.int64),
                        np.full(len(dl), PHASE_PRIORITY["forward"], dtype=np.int64)]))
