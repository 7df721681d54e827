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
- ``recompute_detection``: ``markers`` | ``stack`` | ``sequence`` when that method found
  recompute, ``none`` when nothing was found.
- ``phase_source``: ``markers`` (ckprof phase markers) or ``rules`` (plain traces).
- ``notes``: remarks for the user.
- ``lookup(ts_ns)`` -> ``(step, phase, region)`` arrays (step -1 / "other" / "" outside
  every step), one ``numpy.searchsorted`` over the segments.

Only numpy/pandas here: importable and testable without torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ckprof.errors import CkprofError, EmptyTraceError, NotCapturedError
from ckprof.markers import (
    BACKWARD,
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

__all__ = [
    "EVAL_PREFIX",
    "PHASE_PRIORITY",
    "RECOMPUTE_DETECTIONS",
    "PhaseTable",
    "find_phases",
]

RECOMPUTE_DETECTIONS: tuple[str, ...] = ("auto", "markers", "stack", "sequence", "none")

#: autograd engine node executions (one per backward node run)
EVAL_PREFIX = "autograd::engine::evaluate_function: "
# ASCII digits only ("#٣" is not step 3), at most 18 significant ones (int64)
_STEP_RE = re.compile(r"^ProfilerStep#0*([0-9]{1,18})$")
_STEP_PREFIX = "ProfilerStep#"
#: a step longer than a day is implausible (a clock or writer error): noted
LONG_STEP_NS = 24 * 3600 * 10**9
_RECOMPUTE_FN_RE = re.compile(r"checkpoint\.py\(\d+\): recompute_fn$")
_MODULE_PREFIX = "nn.Module: "
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
    """Steps, the phase timeline of each step, and recompute occurrences."""

    steps: pd.DataFrame
    segments: pd.DataFrame
    recompute: pd.DataFrame
    recompute_detection: str
    notes: tuple[str, ...] = ()
    phase_source: str = "rules"

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

def _names(ev: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(codes per row, category strings): string tests run once per distinct name."""
    col = ev["name"]
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy(), col.cat.categories.astype(str).to_numpy(dtype=object)
    cat = pd.Categorical(col.astype(str))
    return np.asarray(cat.codes), np.asarray(cat.categories, dtype=object)


def _mask_names(codes: np.ndarray, cats: np.ndarray, pred) -> np.ndarray:
    hit = np.fromiter((bool(pred(c)) for c in cats), dtype=bool, count=len(cats))
    out = np.zeros(len(codes), dtype=bool)
    valid = codes >= 0
    out[valid] = hit[codes[valid]]
    return out


def _kind_mask(ev: pd.DataFrame, *kinds: str) -> np.ndarray:
    return ev["kind"].isin(kinds).to_numpy()  # categorical: tests categories, not rows


# NOTE [ Ancestor queries ]
# Recompute detection asks, for every event, about its ancestors: the nearest enclosing
# evaluate_function, the outermost recompute_fn frame, whether a candidate op or a
# module frame lies in between. Each is a "nearest strict ancestor with property P"
# query, answered for all rows at once by pointer jumping: every row holds a pointer
# up the tree that skips only rows without P, and pointers double their reach each
# round, so the cost is O(n log depth) whatever the depth. (A level-by-level walk cost
# a numpy round trip per level: a million identical events, which nest a million deep,
# took half a minute.)


def nearest_marked_ancestor(parent: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """For every row, its nearest strict ancestor whose ``mask`` is True, else -1."""
    jump = parent.astype(np.int64, copy=True)
    active = np.flatnonzero(jump >= 0)
    active = active[~mask[jump[active]]]
    while len(active):
        # rows strictly between a row and jump[row] are unmarked, and so is jump[row]
        jump[active] = jump[jump[active]]
        active = active[jump[active] >= 0]
        active = active[~mask[jump[active]]]
    return jump


def _chain_top(up: np.ndarray) -> np.ndarray:
    """For every row, the last row of its chain ``row -> up[row] -> ...`` (itself when
    ``up[row] < 0``), by pointer jumping."""
    top = np.where(up >= 0, up, np.arange(len(up)))
    while True:
        nxt = top[top]
        if np.array_equal(nxt, top):
            return top
        top = nxt


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


def _step_of(starts: np.ndarray, steps: pd.DataFrame) -> np.ndarray:
    """Step number whose [start, end) contains each instant, -1 when none."""
    s = steps["start_ns"].to_numpy(dtype=np.int64)
    e = steps["end_ns"].to_numpy(dtype=np.int64)
    idx = np.searchsorted(s, starts, side="right") - 1
    ok = idx >= 0
    ok[ok] = starts[ok] < e[idx[ok]]
    return np.where(ok, steps["step"].to_numpy(dtype=np.int64)[np.maximum(idx, 0)], -1)


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
    is_rc = _mask_names(codes, cats, lambda c: c.startswith(RECOMPUTE_PREFIX))
    is_rc &= _kind_mask(ev, "user_annotation")
    rows = np.flatnonzero(is_rc)
    ts = ev["ts_ns"].to_numpy(dtype=np.int64)[rows]
    return pd.DataFrame({
        "region": [c[len(RECOMPUTE_PREFIX):] for c in cats[codes[rows]]],
        "start_ns": ts, "end_ns": ts + ev["dur_ns"].to_numpy(dtype=np.int64)[rows]})


def _evals(ev, codes, cats) -> np.ndarray:
    return _mask_names(codes, cats, lambda c: c.startswith(EVAL_PREFIX)) & _kind_mask(ev, "cpu_op")


def _sequence_recompute(ev, codes, cats) -> pd.DataFrame:
    n = len(ev)
    parent = ev["parent"].to_numpy(dtype=np.int64)
    seq = ev["seq"].to_numpy(dtype=np.int64)
    is_eval = _evals(ev, codes, cats)
    is_op = _kind_mask(ev, "cpu_op")
    # NOTE [ Ancestor queries ]; near_eval: nearest evaluate_function at or above
    inherited = nearest_marked_ancestor(parent, is_eval)
    near_eval = np.where(is_eval, np.arange(n), inherited)
    ok = parent >= 0
    parent_is_eval = ok & is_eval[np.maximum(parent, 0)]
    cand = is_op & (seq >= 0) & ~is_eval & (inherited >= 0) & ~parent_is_eval
    # a candidate above, below near_eval: the nearest candidate-or-eval ancestor is a
    # candidate (an evaluate_function in between ends the search)
    hit = nearest_marked_ancestor(parent, cand | is_eval)
    under_cand = ~is_eval & (hit >= 0) & cand[np.maximum(hit, 0)]
    top = np.flatnonzero(cand & ~under_cand)
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
    n = len(ev)
    parent = ev["parent"].to_numpy(dtype=np.int64)
    is_py = _kind_mask(ev, "python_function")
    is_rf = is_py & _mask_names(codes, cats, lambda c: bool(_RECOMPUTE_FN_RE.search(c)))
    is_mod = is_py & _mask_names(codes, cats, lambda c: c.startswith(_MODULE_PREFIX))
    # NOTE [ Ancestor queries ]
    up = nearest_marked_ancestor(parent, is_rf)            # innermost recompute_fn strictly above
    top_rf = is_rf & (up < 0)
    inner = np.where(is_rf, np.arange(n), up)       # innermost recompute_fn at or above
    near_rf = np.where(inner >= 0, _chain_top(up)[np.maximum(inner, 0)], -1)  # outermost
    # a module frame between a row and near_rf: the nearest module frame above that is
    # itself inside a recompute_fn
    mod_above = nearest_marked_ancestor(parent, is_mod & (near_rf >= 0)) >= 0
    rf_rows = np.flatnonzero(top_rf)
    ts = ev["ts_ns"].to_numpy(dtype=np.int64)
    end = ts + ev["dur_ns"].to_numpy(dtype=np.int64)
    if len(rf_rows) == 0:
        return pd.DataFrame({"region": [], "start_ns": [], "end_ns": []})
    # outermost module frame inside each recompute_fn (first in time)
    mods = np.flatnonzero(is_mod & (near_rf >= 0) & ~mod_above)
    first_mod = (pd.DataFrame({"rf": near_rf[mods], "row": mods})
                 .groupby("rf")["row"].min())
    # enclosing evaluate_function (innermost that started last before the frame)
    ev_rows = np.flatnonzero(_evals(ev, codes, cats))
    j = np.searchsorted(ts[ev_rows], ts[rf_rows], side="right") - 1
    names: list[str] = []
    for k, r in enumerate(rf_rows):
        m = first_mod.get(r)
        if m is not None:
            names.append(str(cats[codes[m]])[len(_MODULE_PREFIX):])
            continue
        node = "?"
        if j[k] >= 0 and end[ev_rows[j[k]]] >= end[r]:
            node = str(cats[codes[ev_rows[j[k]]]])[len(EVAL_PREFIX):]
        names.append(f"recompute@{node}")
    return pd.DataFrame({"region": names, "start_ns": ts[rf_rows], "end_ns": end[rf_rows]})


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
    score = np.where(winner_in_group,
                     layer.astype(np.int64) * 10 * big * big + prio.astype(np.int64) * big * big
                     + order.astype(np.int64) + 1, 0)
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


# ---------------------------------------------------------------------------------
# find_phases
# ---------------------------------------------------------------------------------

def find_phases(trace: Trace, recompute_detection: str = "auto") -> PhaseTable:
    """Steps, phase segments and recompute occurrences of ``trace``.

    ``recompute_detection``: ``auto`` (markers if the trace has
    ``ckprof::recompute::`` ranges, else stack if it has ``recompute_fn`` Python
    frames, else sequence), ``markers``, ``stack``, ``sequence``, or ``none`` (no
    recompute carved out). Raises :class:`NotCapturedError` when an explicit method
    needs what the trace lacks, :class:`EmptyTraceError` on a trace without events.
    """
    if recompute_detection not in RECOMPUTE_DETECTIONS:
        raise CkprofError(
            f"recompute_detection must be one of {', '.join(RECOMPUTE_DETECTIONS)}, "
            f"not {recompute_detection!r}", hint="Use auto unless you compare methods")
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
    is_std = is_ann & _mask_names(codes, cats, lambda c: c in std)
    is_user = is_ann & _mask_names(codes, cats, lambda c: c.startswith(PHASE_PREFIX))
    has_rc_markers = bool((is_ann & _mask_names(
        codes, cats, lambda c: c.startswith(RECOMPUTE_PREFIX))).any())
    phase_source = "markers" if is_std.any() else "rules"

    # ---- recompute ----------------------------------------------------------------
    method = recompute_detection
    is_py = _kind_mask(ev, "python_function")
    has_rf = bool((is_py & _mask_names(codes, cats,
                                       lambda c: bool(_RECOMPUTE_FN_RE.search(c)))).any())
    if method == "auto":
        method = "markers" if has_rc_markers else ("stack" if has_rf else "sequence")
    if method == "markers" and not trace.has_markers:
        raise NotCapturedError(
            "trace has no ckprof markers, so recompute cannot be found by markers",
            path=trace.path,
            hint="Capture with ckprof.capture / ckprof.checkpoint, or use "
                 "--recompute-detection auto")
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
    found = method if len(recompute) else "none"
    if recompute_detection != "none" and found == "none":
        notes.append(f"no recompute found ({method} detection)")
    if method == "sequence" and len(recompute):
        notes.append("recompute found by the Sequence-number heuristic: region names "
                     "are the backward nodes that triggered it; a backward run with "
                     "create_graph=True would also count as recompute")

    # ---- labelled intervals ---------------------------------------------------------
    parts: list[pd.DataFrame] = []
    if len(recompute):
        parts.append(pd.DataFrame({
            "start_ns": recompute["start_ns"].to_numpy(), "end_ns": recompute["end_ns"].to_numpy(),
            "phase": "recompute", "region": recompute["region"].to_numpy(dtype=object),
            "layer": _LAYER_RECOMPUTE, "group": -1}))
    mk = np.flatnonzero(is_std | is_user)
    if len(mk):
        mnames = cats[codes[mk]]
        mphase = [MARKER_PHASE[c] if c in MARKER_PHASE else phase_of_user_marker(c)
                  for c in mnames]
        tkey = (ev["pid"].to_numpy(dtype=np.int64)[mk] * 1_000_003
                + ev["tid"].to_numpy(dtype=np.int64)[mk])
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

    rows: list[tuple] = []
    arrays = {c: iv[c].to_numpy(dtype=object if c in ("phase", "region") else np.int64)
              for c in ("start_ns", "end_ns", "layer", "group", "order", "prio", "phase",
                        "region")}
    iv_s, iv_e = arrays["start_ns"], arrays["end_ns"]
    for step, s, e in steps[["step", "start_ns", "end_ns"]].itertuples(index=False):
        sel = np.flatnonzero((iv_s < e) & (iv_e > s))
        rows.extend(_tile_step(int(step), int(s), int(e), arrays, sel))
    segments = pd.DataFrame(rows, columns=["step", "phase", "region", "start_ns", "end_ns"])
    segments = segments.astype({"step": "int64", "start_ns": "int64", "end_ns": "int64",
                                "phase": object, "region": object})
    unknown = set(segments["phase"]) - set(PHASES)
    assert not unknown, f"phases outside PHASES: {unknown}"
    return PhaseTable(steps=steps.reset_index(drop=True), segments=segments,
                      recompute=recompute.reset_index(drop=True), recompute_detection=found,
                      notes=tuple(notes), phase_source=phase_source)


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
        ev_rows = np.flatnonzero(_kind_mask(ev, "cpu_op") & _mask_names(
            codes, cats, lambda c: bool(_LEGACY_NODE_RE.search(c))
            and not c.startswith("aten::")))
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
    step_rows = np.flatnonzero(is_range & _mask_names(codes, cats, lambda c: bool(
        _STEP_RE.match(c))))
    main = set(zip(pid[step_rows].tolist(), tid[step_rows].tolist(), strict=True))
    bwd_threads = set(zip(pid[ev_rows].tolist(), tid[ev_rows].tolist(), strict=True)) - main
    if bwd_threads and len(first):
        key = pid * 1_000_003 + tid
        on_bwd = np.isin(key, [p * 1_000_003 + t for p, t in bwd_threads])
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
    for k, step in enumerate(st):
        if step in first.index:
            f, la = int(first[step]), min(int(last[step]), int(s1[k]))
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
