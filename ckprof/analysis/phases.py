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
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ckprof.analysis.detection import RECOMPUTE_DETECTIONS, check_recompute_detection
from ckprof.analysis.intervals import lexicographic_score, thread_ids
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

__all__ = [
    "EVAL_PREFIX",
    "PHASE_PRIORITY",
    "RECOMPUTE_DETECTIONS",
    "PhaseTable",
    "find_phases",
]


#: autograd engine node executions (one per backward node run)
EVAL_PREFIX = "autograd::engine::evaluate_function: "
_STEP_RE = re.compile(r"^ProfilerStep#(\d+)$")
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
    recompute_found_by: str
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


def _down_tree(parent: np.ndarray, depth: np.ndarray, fn) -> None:
    """Visit rows level by level (roots first); ``fn(rows, parents)`` fills arrays
    for ``rows`` from their (already filled) ``parents``. Vectorised per level."""
    if len(depth) == 0:
        return
    order = np.argsort(depth, kind="stable")
    d_sorted = depth[order]
    bounds = np.searchsorted(d_sorted, np.arange(int(d_sorted[-1]) + 2))
    for d in range(1, int(d_sorted[-1]) + 1):
        rows = order[bounds[d]:bounds[d + 1]]
        if len(rows):
            fn(rows, parent[rows])


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
    step_no = np.where(codes >= 0, step_of_cat[np.maximum(codes, 0)], -1)
    step_no = np.where(is_ann, step_no, -1)
    rows = np.flatnonzero(step_no >= 0)
    ts = ev["ts_ns"].to_numpy(dtype=np.int64)
    end = ts + ev["dur_ns"].to_numpy(dtype=np.int64)
    if len(rows) == 0:
        cpu = ~_kind_mask(ev, *GPU_KINDS, "gpu_annotation")
        if not cpu.any():
            cpu = np.ones(len(ev), dtype=bool)
        notes.append("no ProfilerStep#N annotations: the whole trace is reported as step 0")
        return pd.DataFrame({"step": np.array([0], dtype=np.int64),
                             "start_ns": np.array([ts[cpu].min()], dtype=np.int64),
                             "end_ns": np.array([end[cpu].max()], dtype=np.int64)})
    df = pd.DataFrame({"step": step_no[rows], "start_ns": ts[rows], "end_ns": end[rows]})
    df = (df.groupby("step", as_index=False).agg(start_ns=("start_ns", "min"),
                                                 end_ns=("end_ns", "max"))
          .sort_values(["start_ns", "step"], kind="stable").reset_index(drop=True))
    nxt = np.append(df["start_ns"].to_numpy()[1:], np.iinfo(np.int64).max)
    clipped = df["end_ns"].to_numpy() > nxt
    if clipped.any():
        notes.append(f"{int(clipped.sum())} ProfilerStep range(s) overlap the next step: "
                     "cut at the next step's start")
    return df.assign(end_ns=np.minimum(df["end_ns"].to_numpy(), nxt).astype(np.int64))


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
    depth = ev["depth"].to_numpy(dtype=np.int64)
    seq = ev["seq"].to_numpy(dtype=np.int64)
    is_eval = _evals(ev, codes, cats)
    is_op = _kind_mask(ev, "cpu_op")
    near_eval = np.where(is_eval, np.arange(n), -1)   # nearest evaluate_function at or above
    cand = np.zeros(n, dtype=bool)
    under_cand = np.zeros(n, dtype=bool)              # a candidate above, below near_eval

    def fill(rows: np.ndarray, par: np.ndarray) -> None:
        ok = par >= 0
        p = np.where(ok, par, 0)
        inherited = np.where(ok, near_eval[p], -1)
        near_eval[rows] = np.where(is_eval[rows], rows, inherited)
        parent_is_eval = ok & is_eval[p]
        cand[rows] = (is_op[rows] & (seq[rows] >= 0) & ~is_eval[rows] & (inherited >= 0)
                      & ~parent_is_eval)
        under_cand[rows] = ok & ~is_eval[rows] & ~parent_is_eval & (cand[p] | under_cand[p])

    _down_tree(parent, depth, fill)
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
    depth = ev["depth"].to_numpy(dtype=np.int64)
    is_py = _kind_mask(ev, "python_function")
    is_rf = is_py & _mask_names(codes, cats, lambda c: bool(_RECOMPUTE_FN_RE.search(c)))
    is_mod = is_py & _mask_names(codes, cats, lambda c: c.startswith(_MODULE_PREFIX))
    near_rf = np.where(is_rf, np.arange(n), -1)   # outermost recompute_fn at or above
    top_rf = is_rf.copy()
    mod_above = np.zeros(n, dtype=bool)           # a module frame between it and near_rf

    def fill(rows: np.ndarray, par: np.ndarray) -> None:
        ok = par >= 0
        p = np.where(ok, par, 0)
        inherited = np.where(ok, near_rf[p], -1)
        top_rf[rows] = is_rf[rows] & (inherited < 0)
        near_rf[rows] = np.where(inherited >= 0, inherited, np.where(is_rf[rows], rows, -1))
        mod_above[rows] = ok & (inherited >= 0) & (mod_above[p] | is_mod[p])

    _down_tree(parent, depth, fill)
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
    is_std = is_ann & _mask_names(codes, cats, lambda c: c in std)
    is_user = is_ann & _mask_names(codes, cats, lambda c: c.startswith(PHASE_PREFIX))
    has_rc_markers = bool((is_ann & _mask_names(
        codes, cats, lambda c: c.startswith(RECOMPUTE_PREFIX))).any())
    has_region_markers = has_rc_markers or bool((is_ann & _mask_names(
        codes, cats, lambda c: c.startswith(CHECKPOINT_PREFIX))).any())
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
        if recompute_detection == "auto" and trace.ckprof is not None and not has_region_markers:
            notes.append("this trace was captured by ckprof without checkpoint region "
                         "markers: run the training inside ckprof.instrument_checkpointing() "
                         "(or under `ckprof run`) and recompute is found by markers, with "
                         "regions named after their modules")

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
                      recompute=recompute.reset_index(drop=True), recompute_found_by=found,
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
