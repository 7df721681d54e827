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

Only numpy/pandas here: importable and testable without torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ckprof.analysis.compiled_recompute import CompiledRecompute, find_compiled_recompute
from ckprof.analysis.detection import RECOMPUTE_DETECTIONS, check_recompute_detection
from ckprof.analysis.intervals import kind_mask as _kind_mask
from ckprof.analysis.intervals import lexicographic_score, thread_ids
from ckprof.analysis.intervals import mask_names as _mask_names
from ckprof.analysis.intervals import name_codes as _names
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
from ckprof.trace.table import Table, frame_of

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
        ts = np.asarray(ts_ns, dtype=np.int64)
        seg = self.segments
        starts = seg["start_ns"].to_numpy(dtype=np.int64)
        ends = seg["end_ns"].to_numpy(dtype=np.int64)
        idx = np.searchsorted(starts, ts, side="right") - 1
        ok = idx >= 0
        ok[ok] = ts[ok] < ends[idx[ok]]
        safe = np.where(ok, idx, 0)
        if len(seg) == 0:
            n = len(ts)
            return (np.full(n, -1, dtype=np.int64), np.full(n, "other", dtype=object),
                    np.full(n, "", dtype=object))
        step = np.where(ok, seg["step"].to_numpy(dtype=np.int64)[safe], -1)
        phase = np.where(ok, seg["phase"].to_numpy(dtype=object)[safe], "other")
        region = np.where(ok, seg["region"].to_numpy(dtype=object)[safe], "")
        return step.astype(np.int64), phase.astype(object), region.astype(object)


# ---------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------

def _empty_recompute() -> pd.DataFrame:
    return pd.DataFrame({
        "step": pd.Series([], dtype="int64"), "region": pd.Series([], dtype=object),
        "start_ns": pd.Series([], dtype="int64"), "end_ns": pd.Series([], dtype="int64"),
        "method": pd.Series([], dtype=object)})


# ---------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------

def _find_steps(trace: Trace, codes, cats, notes: list[str]) -> pd.DataFrame:
    ev = trace.events
    is_ann = _kind_mask(ev, "user_annotation", "cpu_op")  # legacy: record_function = Operator
    step_of_cat = np.array([(int(m.group(1)) if (m := _STEP_RE.match(c)) else -1)
                            for c in cats], dtype=np.int64)
    step_like = np.array([c.startswith(_STEP_PREFIX) for c in cats], dtype=bool)
    step_no = np.where(codes >= 0, step_of_cat[np.maximum(codes, 0)], -1)
    step_no = np.where(is_ann, step_no, -1)
    unusable = is_ann & (codes >= 0) & step_like[np.maximum(codes, 0)] & (step_no < 0)
    if unusable.any():
        example = str(ev["name"].iloc[int(np.flatnonzero(unusable)[0])])
        notes.append(f"ignored {int(unusable.sum())} ProfilerStep annotation(s) without a usable "
                     f"step number (e.g. {example[:60]!r}; a step is ProfilerStep#<0..2^63-1> "
                     "in ASCII digits): their time belongs to no step")
    rows = np.flatnonzero(step_no >= 0)
    ts = ev["ts_ns"].to_numpy(dtype=np.int64)
    end = ts + ev["dur_ns"].to_numpy(dtype=np.int64)
    if len(rows) == 0:
        cpu = ~_kind_mask(ev, *GPU_KINDS, "gpu_annotation")
        if not cpu.any():
            cpu = np.ones(len(ev), dtype=bool)
        notes.append("no ProfilerStep#N annotations: the whole trace is reported as step 0")
        df = pd.DataFrame({"step": np.array([0], dtype=np.int64),
                           "start_ns": np.array([ts[cpu].min()], dtype=np.int64),
                           "end_ns": np.array([end[cpu].max()], dtype=np.int64)})
        _note_long_steps(df, notes)
        return df
    df = pd.DataFrame({"step": step_no[rows], "start_ns": ts[rows], "end_ns": end[rows]})
    df = _renumber_repeated_steps(df, notes)
    df = (df.groupby("step", as_index=False).agg(start_ns=("start_ns", "min"),
                                                 end_ns=("end_ns", "max"))
          .sort_values(["start_ns", "step"], kind="stable").reset_index(drop=True))
    nxt = np.append(df["start_ns"].to_numpy()[1:], np.iinfo(np.int64).max)
    clipped = df["end_ns"].to_numpy() > nxt
    if clipped.any():
        notes.append(f"{int(clipped.sum())} ProfilerStep range(s) overlap the next step: "
                     "cut at the next step's start")
    df = df.assign(end_ns=np.minimum(df["end_ns"].to_numpy(), nxt).astype(np.int64))
    _note_long_steps(df, notes)
    return df


def _renumber_repeated_steps(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """A step number whose ranges occur at separate times (two runs' traces joined, a
    writer restarting its count) is not one step: the first occurrence keeps the
    number, later ones get numbers after the largest step (noted), so no content is
    merged into a wrong step or dropped. Overlapping ranges of one number (the same
    step seen twice) stay one step."""
    df = df.sort_values(["step", "start_ns", "end_ns"], kind="stable").reset_index(drop=True)
    same = df["step"].to_numpy()[1:] == df["step"].to_numpy()[:-1]
    if not same.any():
        return df
    reach = df.groupby("step")["end_ns"].cummax().to_numpy()
    new_cluster = np.ones(len(df), dtype=bool)
    new_cluster[1:] = ~same | (df["start_ns"].to_numpy()[1:] >= reach[:-1])
    cluster = np.cumsum(new_cluster) - 1
    first_of_step = np.ones(len(df), dtype=bool)
    first_of_step[1:] = ~same
    # the cluster index within its step: 0 for the first occurrence
    k = cluster - cluster[np.maximum.accumulate(np.where(first_of_step, np.arange(len(df)), 0))]
    if not (k > 0).any():
        return df
    starts = pd.DataFrame({"cluster": cluster, "start_ns": df["start_ns"].to_numpy()})
    repeats = starts[k > 0].groupby("cluster")["start_ns"].min().sort_values(kind="stable")
    top = int(df["step"].max())
    if top + len(repeats) > np.iinfo(np.int64).max:
        notes.append(f"{len(repeats)} repeated ProfilerStep range(s) left out: no step numbers "
                     "are left above the largest one")
        return df[k == 0].reset_index(drop=True)
    new_number = dict(zip(repeats.index.tolist(), range(top + 1, top + 1 + len(repeats)),
                          strict=True))
    step = df["step"].to_numpy().copy()
    hit = k > 0
    step[hit] = [new_number[c] for c in cluster[hit].tolist()]
    old = sorted(set(df["step"].to_numpy()[hit].tolist()))
    shown = ", ".join(f"#{s}" for s in old[:5]) + (" ..." if len(old) > 5 else "")
    notes.append(f"ProfilerStep {shown} occur(s) again later in the trace: {len(repeats)} later "
                 f"occurrence(s) analysed as step(s) {top + 1}..{top + len(repeats)}")
    return df.assign(step=step)


def _note_long_steps(steps: pd.DataFrame, notes: list[str]) -> None:
    dur = steps["end_ns"].to_numpy(dtype=np.int64) - steps["start_ns"].to_numpy(dtype=np.int64)
    long = np.flatnonzero(dur > LONG_STEP_NS)
    if len(long):
        i = int(long[0])
        notes.append(f"{len(long)} step(s) last longer than a day (step "
                     f"{int(steps['step'].iloc[i])}: {dur[i] / 3.6e12:,.0f} h): implausible; "
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

def _markers_recompute(ev, codes, cats) -> pd.DataFrame:
    is_rc = _mask_names(codes, cats, lambda c: c.startswith(RECOMPUTE_PREFIX),
                        _kind_mask(ev, "user_annotation"))
    rows = np.flatnonzero(is_rc)
    ts = ev["ts_ns"].to_numpy(dtype=np.int64)[rows]
    return pd.DataFrame({
        "region": [c[len(RECOMPUTE_PREFIX):] for c in cats[codes[rows]]],
        "start_ns": ts, "end_ns": ts + ev["dur_ns"].to_numpy(dtype=np.int64)[rows]})


def _evals(ev, codes, cats) -> np.ndarray:
    return _mask_names(codes, cats, lambda c: c.startswith(EVAL_PREFIX), _kind_mask(ev, "cpu_op"))


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


def _sequence_recompute(ev, codes, cats) -> pd.DataFrame:
    parent = ev["parent"].to_numpy(dtype=np.int64)
    seq = ev["seq"].to_numpy(dtype=np.int64)
    is_eval = _evals(ev, codes, cats)
    is_op = _kind_mask(ev, "cpu_op")
    top, near_eval = _sequence_tops(parent, is_eval, is_op, seq)
    if len(top) == 0:
        return pd.DataFrame({"region": [], "start_ns": [], "end_ns": []})
    ts = ev["ts_ns"].to_numpy(dtype=np.int64)
    end = ts + ev["dur_ns"].to_numpy(dtype=np.int64)
    df = pd.DataFrame({"eval": near_eval[top], "start_ns": ts[top], "end_ns": end[top]})
    occ = df.groupby("eval", as_index=False).agg(start_ns=("start_ns", "min"),
                                                 end_ns=("end_ns", "max"))
    node = cats[codes[occ["eval"].to_numpy()]]
    occ["region"] = [f"recompute@{c[len(EVAL_PREFIX):]}" for c in node]
    return occ[["region", "start_ns", "end_ns"]]


def _stack_recompute(ev, codes, cats) -> pd.DataFrame:
    parent = ev["parent"].to_numpy(dtype=np.int64)
    is_py = _kind_mask(ev, "python_function")
    is_rf = _mask_names(codes, cats, lambda c: bool(_RECOMPUTE_FN_RE.search(c)), is_py)
    top_rf = is_rf & (_outermost_above(parent, is_rf) < 0)  # outermost recompute_fn frames
    rf_rows = np.flatnonzero(top_rf)
    ts = ev["ts_ns"].to_numpy(dtype=np.int64)
    end = ts + ev["dur_ns"].to_numpy(dtype=np.int64)
    if len(rf_rows) == 0:
        return pd.DataFrame({"region": [], "start_ns": [], "end_ns": [], "frame": []})
    # provisional names (recompute@<Node> of the enclosing evaluate_function); the
    # region's own name comes from its forward run (ckprof.analysis.forward_runs)
    ev_rows = np.flatnonzero(_evals(ev, codes, cats))
    j = np.searchsorted(ts[ev_rows], ts[rf_rows], side="right") - 1
    names: list[str] = []
    for k, r in enumerate(rf_rows):
        node = "?"
        if j[k] >= 0 and end[ev_rows[j[k]]] >= end[r]:
            node = str(cats[codes[ev_rows[j[k]]]])[len(EVAL_PREFIX):]
        names.append(f"recompute@{node}")
    return pd.DataFrame({"region": names, "start_ns": ts[rf_rows], "end_ns": end[rf_rows],
                         "frame": rf_rows})


def _number_repeated(df: pd.DataFrame) -> pd.DataFrame:
    """``recompute@X`` names that repeat within a step get ``#k`` (time order)."""
    if df.empty:
        return df
    df = df.sort_values(["step", "start_ns"], kind="stable").reset_index(drop=True)
    auto = df["region"].str.startswith("recompute@")
    k = df.groupby(["step", "region"]).cumcount() + 1
    # a name repeats when some step holds it more than once
    per_step_max = df.assign(k=k).groupby("region")["k"].transform("max")
    repeated = per_step_max > 1
    region = np.where(auto & repeated, df["region"] + "#" + k.astype(str), df["region"])
    return df.assign(region=region)


# ---------------------------------------------------------------------------------
# tiling
# ---------------------------------------------------------------------------------

def _tile_step(step: int, s: int, e: int, iv: dict[str, np.ndarray],
               sel: np.ndarray) -> list[tuple]:
    """Segments tiling [s, e) from labelled intervals ``iv`` (columns as arrays, rows
    ``sel``), see NOTE [ Phase precedence ]."""
    st = np.clip(iv["start_ns"][sel], s, e)
    en = np.clip(iv["end_ns"][sel], s, e)
    keep = en > st
    if not keep.any():
        return [(step, "other", "", s, e)]
    sel = sel[keep]
    st, en = st[keep], en[keep]
    layer, group, order, prio = (iv["layer"][sel], iv["group"][sel], iv["order"][sel],
                                 iv["prio"][sel])
    phase, region = iv["phase"][sel], iv["region"][sel]
    bounds = np.unique(np.concatenate(([s, e], st, en)))
    lo, hi = bounds[:-1], bounds[1:]
    active = (st[None, :] <= lo[:, None]) & (en[None, :] >= hi[:, None])
    big = np.int64(len(order) + 1)
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
    out: list[tuple] = []
    for k in range(len(lo)):
        if out and out[-1][1] == ph[k] and out[-1][2] == rg[k] and out[-1][4] == lo[k]:
            out[-1] = (step, ph[k], rg[k], out[-1][3], int(hi[k]))
        else:
            out.append((step, ph[k], rg[k], int(lo[k]), int(hi[k])))
    return out


#: tile steps whose labelled intervals do not overlap in one vectorised pass (tests
#: turn it off to compare with the per-step reference)
_VECTOR_TILING = True
_SEGMENT_COLUMNS = ["step", "phase", "region", "start_ns", "end_ns"]


def _tile_steps(steps: pd.DataFrame, iv: dict[str, np.ndarray]) -> pd.DataFrame:
    """Segments of every step (NOTE [ Phase precedence ]), in step then time order.

    The intervals meeting each step come from one sort (each interval meets a run of
    consecutive steps: steps are sorted and do not overlap), not a scan of all intervals
    per step. Steps whose clipped intervals do not overlap each other -- the rule windows
    of most traces, or no interval at all -- are tiled together, vectorised (each
    interval is its own label, gaps are ``other``, equal neighbours merge); the others go
    through :func:`_tile_step`. Same segments either way, far fewer Python steps."""
    st_step = steps["step"].to_numpy(dtype=np.int64)
    st_s = steps["start_ns"].to_numpy(dtype=np.int64)
    st_e = steps["end_ns"].to_numpy(dtype=np.int64)
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

    parts: list[pd.DataFrame] = []
    simple = ~complex_step
    if simple.any():
        parts.append(_tile_disjoint(st_step, st_s, st_e, simple, pair_step[kept], cst[kept],
                                    cen[kept], iv["phase"][pair_iv[kept]],
                                    iv["region"][pair_iv[kept]]))
    if complex_step.any():
        rows: list[tuple] = []
        pos: list[int] = []
        for k in np.flatnonzero(complex_step):
            tiles = _tile_step(int(st_step[k]), int(st_s[k]), int(st_e[k]), iv,
                               pair_iv[bounds[k]:bounds[k + 1]])
            rows.extend(tiles)
            pos.extend([int(k)] * len(tiles))
        df = pd.DataFrame(rows, columns=_SEGMENT_COLUMNS)
        parts.append(df.assign(_pos=np.asarray(pos, dtype=np.int64)))
    if not parts:
        out = pd.DataFrame({c: [] for c in _SEGMENT_COLUMNS})
    else:
        out = pd.concat(parts, ignore_index=True)
        out = out.iloc[np.lexsort((out["start_ns"].to_numpy(dtype=np.int64),
                                   out["_pos"].to_numpy(dtype=np.int64)))]
        out = out.drop(columns="_pos").reset_index(drop=True)
    return out.astype({"step": "int64", "start_ns": "int64", "end_ns": "int64",
                       "phase": object, "region": object})


def _tile_disjoint(st_step: np.ndarray, st_s: np.ndarray, st_e: np.ndarray, which: np.ndarray,
                   k_pos: np.ndarray, k_st: np.ndarray, k_en: np.ndarray, k_phase: np.ndarray,
                   k_region: np.ndarray) -> pd.DataFrame:
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
    return pd.DataFrame({"step": st_step[pos[starts]], "phase": phase[starts],
                         "region": region[starts], "start_ns": seg_s[starts],
                         "end_ns": seg_e[ends], "_pos": pos[starts]})


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
    ev = trace.events
    if len(ev) == 0:
        raise EmptyTraceError("trace has no complete (ph X) events", path=trace.path,
                              hint="Check that the profiler captured at least one step")
    notes: list[str] = []
    codes, cats = _names(ev)
    steps = _find_steps(trace, codes, cats, notes)
    is_ann = _kind_mask(ev, "user_annotation")
    ts = ev["ts_ns"].to_numpy(dtype=np.int64)
    end = ts + ev["dur_ns"].to_numpy(dtype=np.int64)

    # ---- marker ranges ------------------------------------------------------------
    std = {FORWARD, BACKWARD, OPTIMIZER, ZERO_GRAD}
    is_std = _mask_names(codes, cats, lambda c: c in std, is_ann)
    is_user = _mask_names(codes, cats, lambda c: c.startswith(PHASE_PREFIX), is_ann)
    has_rc_markers = bool(_mask_names(
        codes, cats, lambda c: c.startswith(RECOMPUTE_PREFIX), is_ann).any())
    has_region_markers = has_rc_markers or bool(_mask_names(
        codes, cats, lambda c: c.startswith(CHECKPOINT_PREFIX), is_ann).any())
    phase_source = "markers" if is_std.any() else "rules"

    # ---- recompute ----------------------------------------------------------------
    method = recompute_detection
    is_py = _kind_mask(ev, "python_function")
    has_rf = bool(_mask_names(codes, cats, lambda c: bool(_RECOMPUTE_FN_RE.search(c)),
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
        occ = _markers_recompute(ev, codes, cats).assign(method="markers")
    elif method == "stack":
        occ = _stack_recompute(ev, codes, cats).assign(method="stack")
        # reentrant checkpoint has no recompute_fn frame: add what the sequence
        # heuristic finds outside every recompute_fn frame (rows say method=sequence)
        extra = _outside(_sequence_recompute(ev, codes, cats), occ)
        if len(extra):
            notes.append(f"{len(extra)} recompute occurrence(s) without a recompute_fn frame "
                         "(reentrant checkpoint) found by the Sequence-number heuristic")
            occ = pd.concat([occ, extra.assign(method="sequence")], ignore_index=True)
    elif method == "sequence":
        occ = _sequence_recompute(ev, codes, cats).assign(method="sequence")
    else:
        occ = pd.DataFrame({"region": [], "start_ns": [], "end_ns": [], "method": []})

    # ---- forward runs; one name per region whatever the method ------------------------
    # (ckprof.analysis.forward_runs reads this module's helpers, hence the import here)
    from ckprof.analysis import forward_runs as _runs

    tree = _runs._Tree(trace)
    runs = _runs.find_forward_runs(trace, steps, _tree=tree).to_frame()
    if method in ("stack", "sequence") and len(occ):
        occ = _runs.link_recompute_names(occ, trace, runs, _tree=tree)
        linked = occ["linked"].to_numpy(dtype=bool)
        if linked.any():
            notes.append(f"{int(linked.sum())} of {len(occ)} recompute occurrence(s) named after "
                         f"their region's forward run ({runs['source'].iloc[0]}), by the "
                         "Sequence number of the backward node that recomputed them")
        if "frame" in occ:
            frames = occ["frame"].to_numpy(dtype=np.float64)
            todo = np.flatnonzero(~linked & ~np.isnan(frames))
            fallback = _runs.recompute_frame_names(trace, frames[todo].astype(np.int64),
                                                   _tree=tree)
            region = occ["region"].to_numpy(dtype=object).copy()
            for k, name in zip(todo, fallback, strict=True):
                if name is not None:
                    region[k] = name
            occ = occ.assign(region=region)
    # recompute inside compiled backward graphs: what the eager methods cannot see
    compiled = (find_compiled_recompute(trace, steps) if method != "none"
                else CompiledRecompute())
    eager_found = bool(len(occ))
    if len(compiled.occurrences):
        occ = pd.concat([occ, compiled.occurrences.assign(method="compiled")],
                        ignore_index=True)
    if len(occ):
        occ_start = occ["start_ns"].to_numpy(dtype=np.int64)
        occ = occ.assign(step=_step_of(occ_start, steps))
        outside = int((occ["step"] < 0).sum())
        if outside:
            notes.append(f"{outside} recompute occurrence(s) outside every step ignored")
        occ = occ[occ["step"] >= 0]
        recompute = _number_repeated(
            occ[["step", "region", "start_ns", "end_ns", "method"]].astype(
                {"step": "int64", "start_ns": "int64", "end_ns": "int64"}))
    else:
        recompute = _empty_recompute()
    has_compiled = bool((recompute["method"] == "compiled").any()) if len(recompute) else False
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
    parts: list[pd.DataFrame] = []
    # compiled occurrences span backward work between their pieces: label the pieces
    labelled = recompute[recompute["method"] != "compiled"] if len(recompute) else recompute
    if len(compiled.pieces):
        labelled = pd.concat([labelled[["region", "start_ns", "end_ns"]],
                              compiled.pieces[["region", "start_ns", "end_ns"]]],
                             ignore_index=True)
    if len(labelled):
        parts.append(pd.DataFrame({
            "start_ns": labelled["start_ns"].to_numpy(), "end_ns": labelled["end_ns"].to_numpy(),
            "phase": "recompute", "region": labelled["region"].to_numpy(dtype=object),
            "layer": _LAYER_RECOMPUTE, "group": -1}))
    mk = np.flatnonzero(is_std | is_user)
    if len(mk):
        mnames = cats[codes[mk]]
        mphase = [MARKER_PHASE[c] if c in MARKER_PHASE else phase_of_user_marker(c)
                  for c in mnames]
        tkey = thread_ids(ev["pid"].to_numpy(dtype=np.int64)[mk],
                          ev["tid"].to_numpy(dtype=np.int64)[mk])
        parts.append(pd.DataFrame({"start_ns": ts[mk], "end_ns": end[mk], "phase": mphase,
                                   "region": "", "layer": _LAYER_MARKERS,
                                   "group": tkey}))
    if phase_source == "rules":
        parts.append(_rule_windows(ev, codes, cats, steps, notes, ts, end, is_ann))
    # ckprof::checkpoint::<region> ranges name forward runs (see attribution); they
    # never set phases.
    iv = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"start_ns": [], "end_ns": [], "phase": [], "region": [], "layer": [], "group": []})
    iv = iv.astype({"start_ns": "int64", "end_ns": "int64", "layer": "int64", "group": "int64"})
    iv = iv.assign(_neg=-iv["end_ns"]).sort_values(["start_ns", "_neg"], kind="stable")
    iv = iv.drop(columns="_neg").reset_index(drop=True)
    iv["order"] = np.arange(len(iv), dtype=np.int64)
    base_prio = iv["phase"].map(PHASE_PRIORITY).fillna(0)
    iv["prio"] = (iv["prio"].fillna(base_prio) if "prio" in iv else base_prio).astype(np.int64)
    # non-marker intervals never share a group: each is its own "thread"
    solo = iv["layer"].to_numpy() != _LAYER_MARKERS
    grp = iv["group"].to_numpy().copy()
    grp[solo] = -(np.arange(int(solo.sum())) + 2)
    iv["group"] = grp

    arrays = {c: iv[c].to_numpy(dtype=object if c in ("phase", "region") else np.int64)
              for c in ("start_ns", "end_ns", "layer", "group", "order", "prio", "phase",
                        "region")}
    segments = _tile_steps(steps, arrays)
    unknown = set(segments["phase"]) - set(PHASES)
    assert not unknown, f"phases outside PHASES: {unknown}"
    return PhaseTable(steps_table=Table.from_frame(steps), segments_table=Table.from_frame(segments),
                      recompute_table=Table.from_frame(recompute), recompute_found_by=found,
                      notes=tuple(notes), phase_source=phase_source,
                      forward_runs_table=None if runs is None else Table.from_frame(runs),
                      compiled=compiled)


def _outside(occ: pd.DataFrame, ref: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``occ`` that overlap no row of ``ref`` (ref rows do not overlap)."""
    if occ.empty or ref.empty:
        return occ
    ref = ref.sort_values("start_ns", kind="stable")
    rs = ref["start_ns"].to_numpy(dtype=np.int64)
    re_ = ref["end_ns"].to_numpy(dtype=np.int64)
    s = occ["start_ns"].to_numpy(dtype=np.int64)
    e = occ["end_ns"].to_numpy(dtype=np.int64)
    j = np.searchsorted(rs, e, side="left") - 1      # last ref starting before e
    hit = j >= 0
    hit[hit] = re_[j[hit]] > s[hit]
    return occ[~hit].reset_index(drop=True)


def _rule_windows(ev, codes, cats, steps, notes, ts, end, is_ann) -> pd.DataFrame:
    """forward / backward / optimizer windows of plain traces (rules 3)."""
    is_range = is_ann | _kind_mask(ev, "cpu_op")  # legacy traces: record_function = Operator
    ev_rows = np.flatnonzero(_evals(ev, codes, cats))
    if len(ev_rows) == 0:
        # torch < 1.10 records backward nodes by their own name, without the
        # "autograd::engine::evaluate_function: " wrapper
        ev_rows = np.flatnonzero(_mask_names(
            codes, cats, lambda c: bool(_LEGACY_NODE_RE.search(c))
            and not c.startswith("aten::"), _kind_mask(ev, "cpu_op")))
        if len(ev_rows):
            notes.append("no autograd evaluate_function records (torch < 1.10 trace): "
                         "backward found from autograd node names (...Backward)")
    e_step = _step_of(ts[ev_rows], steps)
    st = steps["step"].to_numpy(dtype=np.int64)
    s0 = steps["start_ns"].to_numpy(dtype=np.int64)
    s1 = steps["end_ns"].to_numpy(dtype=np.int64)
    first = pd.Series(ts[ev_rows]).groupby(e_step).min()
    last = pd.Series(end[ev_rows]).groupby(e_step).max()
    # On CUDA the engine runs backward on its own device thread; what that thread does
    # after the last node (DDP reducer finalisation, final callbacks) is still backward.
    # Backward threads = threads with evaluate_function records that do not hold the
    # ProfilerStep ranges (on CPU backward runs on the calling thread: no extension).
    pid = ev["pid"].to_numpy(dtype=np.int64)
    tid = ev["tid"].to_numpy(dtype=np.int64)
    step_rows = np.flatnonzero(_mask_names(codes, cats, lambda c: bool(_STEP_RE.match(c)),
                                           is_range))
    main = set(zip(pid[step_rows].tolist(), tid[step_rows].tolist(), strict=True))
    bwd_threads = set(zip(pid[ev_rows].tolist(), tid[ev_rows].tolist(), strict=True)) - main
    if bwd_threads and len(first):
        on_bwd = pd.MultiIndex.from_arrays([pid, tid]).isin(list(bwd_threads))
        roots = np.flatnonzero(on_bwd & (ev["depth"].to_numpy() == 0)
                               & _kind_mask(ev, "cpu_op", "user_annotation", "runtime"))
        r_step = _step_of(ts[roots], steps)
        f_of = first.reindex(r_step).to_numpy()
        ok = (r_step >= 0) & ~np.isnan(f_of)
        ok[ok] = ts[roots][ok] >= f_of[ok]
        if ok.any():
            tail = pd.Series(end[roots][ok]).groupby(r_step[ok]).max()
            last = pd.concat([last, tail], axis=1).max(axis=1)
    out_s, out_e, out_p = [], [], []
    no_bwd = []
    first_of = dict(zip(first.index.tolist(), first.tolist(), strict=True))
    last_of = dict(zip(last.index.tolist(), last.tolist(), strict=True))
    for k, step in enumerate(st.tolist()):
        if step in first_of:
            f, la = int(first_of[step]), min(int(last_of[step]), int(s1[k]))
            out_s += [int(s0[k]), f]
            out_e += [f, la]
            out_p += ["forward", "backward"]
        else:
            out_s.append(int(s0[k]))
            out_e.append(int(s1[k]))
            out_p.append("forward")
            no_bwd.append(int(step))
    if no_bwd:
        notes.append(f"step(s) {', '.join(map(str, no_bwd[:10]))} have no backward "
                     "(no autograd evaluate_function): counted as forward")
    opt = np.flatnonzero(is_range & _mask_names(codes, cats,
                                              lambda c: c.startswith(_OPTIMIZER_PREFIXES)))
    out_s += ts[opt].tolist()
    out_e += end[opt].tolist()
    out_p += ["optimizer"] * len(opt)
    prio = [PHASE_PRIORITY[p] for p in out_p]
    # data loading (torch records ``enumerate(DataLoader)#...``) is not forward: it wins
    # over the forward window (same priority, starts later) and loses to the others
    dl = np.flatnonzero(is_range & _mask_names(codes, cats,
                                               lambda c: c.startswith(_DATALOADER_PREFIX)))
    out_s += ts[dl].tolist()
    out_e += end[dl].tolist()
    out_p += ["other"] * len(dl)
    prio += [PHASE_PRIORITY["forward"]] * len(dl)
    return pd.DataFrame({"start_ns": out_s, "end_ns": out_e, "phase": out_p, "region": "",
                         "layer": _LAYER_RULES, "group": 0, "prio": prio})
