"""Recompute inside torch.compile'd backward graphs, from the capture's compile record.

Contract::

    find_compiled_recompute(trace, steps) -> CompiledRecompute

Every table is a :class:`~ckprof.trace.table.Table` (``pieces_table`` ...; ``pieces``
... are the same as DataFrames, built on first use): ``region`` an object column of str,
every other column int64.

- ``pieces``: ``region``, ``start_ns``, ``end_ns``, ``call`` (row of the ``## Call
  CompiledFxGraph`` event): the stretches of a compiled backward that run recomputed
  forward work only, in time order. They are what the phase timeline labels
  ``recompute``; GPU work launched inside them is recompute GPU time.
- ``occurrences``: ``region``, ``start_ns``, ``end_ns``: one row per region per compiled
  backward call (first piece start -> last piece end; backward work may lie between).
- ``fused``: ``region``, ``start_ns``, ``end_ns``: stretches running kernels that fuse
  recomputed nodes with backward nodes (inductor fusion). Not separable: they stay
  backward time.
- ``status``: ``none`` (no compiled backward in the analysed steps), ``separated``
  (every compiled backward has a record and its calls were found), ``partial`` (some
  compiled backward time has no record, or expected kernel events were not found),
  ``not_separable`` (compiled backward present, no record at all).
- ``summary`` (JSON-ready dict) and ``notes``.

Only numpy here (no pandas, NOTE [ Tables, not DataFrames, inside the stages ] in
ckprof/trace/table.py): importable and testable without torch.

# NOTE [ Matching compiled kernel calls ]
# The capture records, per compiled backward graph (keyed by its FX graph cache key,
# which torch prints in the trace as ``## Call CompiledFxGraph <key> ##``), the kernel
# calls of its generated code in order, each classified ``r`` (recompute only), ``m``
# (recompute fused with backward), ``b`` or ``v`` (see ckprof/capture/compiled.py,
# NOTE [ Compiled recompute ]). The generated code runs its calls one after another,
# so under each ``## Call`` range the direct child events appear in call order:
# extern ops (``aten::mm``), Triton launches (a range named after the kernel) and
# C++ kernels when ``cpp.enable_kernel_profile`` was on (``graph_<id>_<kernel>``).
# We walk the children in time order and match each to the next expected call of
# that name (unexpected children are skipped, so one missing event costs one call).
# A matched call's stretch is its event; the calls between two matched events (C++
# kernels without their own event, Python wrapper work) share the gap between them.
# A stretch is recompute when its calls are all ``r`` of one region, ``fused`` when it
# holds any ``r``/``m`` otherwise; everything else stays backward. Recompute is
# therefore a lower bound: ``fused`` bounds what it may miss.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ckprof.analysis.intervals import kind_mask, mask_names, name_codes, step_of
from ckprof.trace.model import GPU_KINDS, Trace
from ckprof.trace.table import Table, factorize, frame_of, text_dtype

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CALL_PREFIX", "COMPILED_BACKWARD", "CompiledRecompute", "find_compiled_recompute"]

CALL_PREFIX = "## Call CompiledFxGraph "
COMPILED_BACKWARD = "CompiledFunctionBackward"
_CALL_RE = re.compile(r"^## Call CompiledFxGraph (\S+) ##$")
_CHILD_KINDS = ("cpu_op", "user_annotation", "runtime")
_AB_HINT = ("measure the full cost A/B instead: capture the same compiled model with and "
            "without checkpointing and run `ckprof compare` on the two traces")


def _span_table(columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]] = ()) -> Table:
    """A new Table of ``rows`` (tuples in ``columns`` order; none: an empty table):
    ``region`` an object column of str (pinned ``object`` in its DataFrame), every other
    column int64."""
    values = list(zip(*rows, strict=True)) if rows else [()] * len(columns)
    return Table({c: np.array(v, dtype=object if c == "region" else np.int64)
                  for c, v in zip(columns, values, strict=True)}, {"region": "object"})


def _occurrence_table(pieces: Table) -> Table:
    """One row per (call, region) of ``pieces``: its first piece's start and last piece's
    end, sorted by start (stable; ties keep the order of each pair's first piece).

    ``region`` is pinned ``str`` in the DataFrame when there are rows (what pandas'
    groupby gave the key before the port), ``object`` when there are none."""
    start_ns = np.asarray(pieces["start_ns"], dtype=np.int64)
    end_ns = np.asarray(pieces["end_ns"], dtype=np.int64)
    group, n = factorize(np.asarray(pieces["call"], dtype=np.int64),
                         pieces.coded("region").codes)
    first_ns = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    last_ns = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first_ns, group, start_ns)
    np.maximum.at(last_ns, group, end_ns)
    first_row = np.unique(group, return_index=True)[1]  # groups are numbered 0..n-1
    order = np.argsort(first_ns, kind="stable")
    return Table({"region": np.asarray(pieces["region"], dtype=object)[first_row][order],
                  "start_ns": first_ns[order], "end_ns": last_ns[order]},
                 {"region": text_dtype(n)})


@dataclass(frozen=True)
class CompiledRecompute:
    """Recompute found inside compiled backward graphs (see the module docstring)."""

    status: str = "none"
    pieces_table: Table = field(default_factory=lambda: _span_table(
        ("region", "start_ns", "end_ns", "call")))
    occurrences_table: Table = field(default_factory=lambda: _span_table(
        ("region", "start_ns", "end_ns")))
    fused_table: Table = field(default_factory=lambda: _span_table(
        ("region", "start_ns", "end_ns")))
    summary: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    pieces = frame_of("pieces_table")
    occurrences = frame_of("occurrences_table")
    fused = frame_of("fused_table")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (``status`` ``none`` with zeros when nothing was compiled)."""
        if self.summary:
            return dict(self.summary)
        return {"status": self.status, "backward_calls": 0, "backward_calls_recorded": 0,
                "recompute_wall_ms": 0.0, "fused_wall_ms": 0.0, "fused_gpu_ms": None,
                "not_separable_wall_ms": 0.0, "not_separable_gpu_ms": None,
                "unknown_graphs": [], "kernel_events_expected": 0, "kernel_events_found": 0}


def _gpu_ns_launched_in(ev: Table | pd.DataFrame, intervals: list[tuple[int, int, int]]
                        ) -> float | None:
    """GPU time (ns) of the events whose launch (runtime event with the same correlation)
    starts inside one of ``intervals`` = (row on the launching thread, start_ns, end_ns);
    None when the trace has no GPU events. ``ev``: the event Table (or its DataFrame)."""
    gpu = np.flatnonzero(kind_mask(ev, *GPU_KINDS))
    if len(gpu) == 0:
        return None
    if not intervals:
        return 0.0
    corr = np.asarray(ev["correlation"], dtype=np.int64)
    ts_ns = np.asarray(ev["ts_ns"], dtype=np.int64)
    pid = np.asarray(ev["pid"], dtype=np.int64)
    tid = np.asarray(ev["tid"], dtype=np.int64)
    rt = np.flatnonzero(kind_mask(ev, "runtime") & (corr >= 0))
    chosen = np.zeros(len(rt), dtype=bool)
    for row, s, e in intervals:  # same thread: pid and tid compared apart (64-bit ids)
        chosen |= ((pid[rt] == pid[row]) & (tid[rt] == tid[row])
                   & (ts_ns[rt] >= s) & (ts_ns[rt] < e))
    ids = np.unique(corr[rt[chosen]])
    hit = np.isin(corr[gpu], ids)
    return float(np.asarray(ev["dur_ns"], dtype=np.int64)[gpu][hit].sum())


def _compiled_backwards(ev: Table, cats: np.ndarray, codes: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """``CompiledFunctionBackward`` rows of the event Table ``ev``, the ``## Call
    CompiledFxGraph`` row each runs (-1 when the trace has none: torch < 2.5) and that
    call's graph key (or None)."""
    bw_mask = mask_names(codes, cats, frozenset({COMPILED_BACKWARD}))
    bw_rows = np.flatnonzero(bw_mask & kind_mask(ev, "cpu_op"))
    if len(bw_rows) == 0:
        return bw_rows, bw_rows, []
    key_of = {i: m.group(1) for i, c in enumerate(cats) if (m := _CALL_RE.match(str(c)))}
    call_of: dict[int, int] = {}
    if key_of:
        parent = np.asarray(ev["parent"], dtype=np.int64)
        bw_set = set(bw_rows.tolist())
        for r in np.flatnonzero(np.isin(codes, list(key_of))).tolist():
            p, hops = int(parent[r]), 0
            while p >= 0 and hops < 4:
                if p in bw_set:
                    call_of.setdefault(p, r)
                    break
                p, hops = int(parent[p]), hops + 1
    calls = np.array([call_of.get(int(b), -1) for b in bw_rows], dtype=np.int64)
    keys = [key_of[int(codes[c])] if c >= 0 else None for c in calls]
    return bw_rows, calls, keys


def _record(graphs: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    rec = graphs.get(key)
    if not isinstance(rec, Mapping):
        return None
    calls, regions = rec.get("calls"), rec.get("regions")
    if not isinstance(calls, list) or not isinstance(regions, list):
        return None
    return {"calls": calls, "regions": [str(r) for r in regions]}


def _best_keyless(graphs: Mapping[str, Any], keyless: list[str],
                  child_names: list[str]) -> str | None:
    """The keyless record whose visible calls match ``child_names`` best (or None)."""
    if len(keyless) == 1:
        return keyless[0]
    scores = []
    for key in keyless:
        expected = [str(c[0]) for c in graphs[key].get("calls", []) if c and c[0]]
        found = sum(1 for m in _match(expected, child_names) if m >= 0)
        scores.append((found / len(expected) if expected else 0.0, key))
    scores.sort(reverse=True)
    if not scores or scores[0][0] < 0.5 or (len(scores) > 1 and scores[1][0] == scores[0][0]):
        return None
    return scores[0][1]


def _match(expected: list[str], child_names: list[str]) -> list[int]:
    """For each expected call, the index of the child matched to it (-1: none)."""
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(expected):
        if name:
            positions.setdefault(name, []).append(i)
    matched = [-1] * len(expected)
    j = 0
    for c, name in enumerate(child_names):
        lst = positions.get(name)
        if not lst:
            continue
        k = bisect.bisect_left(lst, j)
        if k == len(lst):
            continue
        matched[lst[k]] = c
        j = lst[k] + 1
    return matched


def _stretches(calls: list[Any], regions: list[str], matched: list[int], c_start: np.ndarray,
               c_end: np.ndarray, start: int, end: int) -> list[tuple[str, str, int, int]]:
    """``(label, region, start, end)`` with label ``recompute`` or ``fused``."""
    seq: list[tuple[str, str, int, int]] = []  # every stretch, in time order

    def label(run: list[int], s: int, e: int) -> None:
        if e <= s:
            return
        if not run:
            seq.append(("gap", "", s, e))  # wrapper Python between two events
            return
        cls = {str(calls[i][2]) for i in run}
        regs = {int(calls[i][3]) for i in run if str(calls[i][2]) in ("r", "m")}
        if not regs:
            seq.append(("backward", "", s, e))
            return
        first = min(regs)
        name = regions[first] if 0 <= first < len(regions) else "?"
        kind = "recompute" if cls == {"r"} and len(regs) == 1 else "fused"
        seq.append((kind, name, s, e))

    cursor, run = start, []
    for i, c in enumerate(matched):
        if c < 0:
            run.append(i)
            continue
        s, e = int(c_start[c]), int(c_end[c])
        label(run, cursor, s)
        label([i], s, e)
        cursor, run = max(cursor, e), []
    label(run, cursor, end)
    # the wrapper's Python between two recompute stretches of one region is recompute
    # too (a marker range would hold it); touching stretches of a kind merge
    merged: list[tuple[str, str, int, int]] = []
    for k, item in enumerate(seq):
        if item[0] == "gap":
            prev = merged[-1] if merged else None
            nxt = seq[k + 1] if k + 1 < len(seq) else None
            if (prev is not None and nxt is not None and prev[0] == nxt[0] == "recompute"
                    and prev[1] == nxt[1] and prev[3] >= item[2]):
                item = ("recompute", prev[1], item[2], item[3])
            else:
                continue
        if item[0] == "backward":
            continue
        if merged and merged[-1][:2] == item[:2] and merged[-1][3] >= item[2]:
            merged[-1] = (item[0], item[1], merged[-1][2], max(merged[-1][3], item[3]))
        else:
            merged.append(item)
    return merged


def _ms_or_none(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 6)


def find_compiled_recompute(trace: Trace, steps: Table | pd.DataFrame) -> CompiledRecompute:
    """Recompute stretches of every compiled backward in ``trace`` whose start lies in one
    of ``steps`` (a Table or DataFrame with ``step``, ``start_ns``, ``end_ns``, sorted by
    start: ``PhaseTable.steps_table``); see the module docstring. Reads
    ``trace.event_table`` (no pandas)."""
    ev = trace.event_table
    if len(ev) == 0:
        return CompiledRecompute()
    codes, cats = name_codes(ev)
    bw_rows, call_rows, keys = _compiled_backwards(ev, cats, codes)
    ts_ns = np.asarray(ev["ts_ns"], dtype=np.int64)
    end_ns = ts_ns + np.asarray(ev["dur_ns"], dtype=np.int64)
    if len(bw_rows):
        inside = step_of(ts_ns[bw_rows], steps) >= 0
        bw_rows, call_rows = bw_rows[inside], call_rows[inside]
        keys = [k for k, ok in zip(keys, inside, strict=True) if ok]
    if len(bw_rows) == 0:
        return CompiledRecompute()

    meta = trace.ckprof.get("compiled") if isinstance(trace.ckprof, Mapping) else None
    graphs = meta.get("graphs") if isinstance(meta, Mapping) else None
    graphs = graphs if isinstance(graphs, Mapping) else {}
    watched = isinstance(meta, Mapping) and bool(meta.get("watched"))

    parent = np.asarray(ev["parent"], dtype=np.int64)
    kind_ok = kind_mask(ev, *_CHILD_KINDS)
    child_rows = np.flatnonzero(np.isin(parent, call_rows[call_rows >= 0]) & kind_ok)
    by_call: dict[int, np.ndarray] = {}
    if len(child_rows):
        order = np.lexsort((ts_ns[child_rows], parent[child_rows]))
        child_rows = child_rows[order]
        par = parent[child_rows]
        cut = np.flatnonzero(np.diff(par)) + 1
        for chunk in np.split(child_rows, cut):
            by_call[int(parent[chunk[0]])] = chunk

    pieces: list[tuple[str, int, int, int]] = []
    fused: list[tuple[str, int, int, int]] = []
    unknown_rows: list[tuple[int, int, int]] = []
    unknown_ns, unknown_calls, known_calls = 0, 0, 0
    expected_visible, found_visible = 0, 0
    unknown_keys: dict[str, None] = {}
    keyless_used = 0
    keyless = [k for k, v in graphs.items() if isinstance(v, Mapping) and v.get("keyless")]
    for bw_row, row, key in zip(bw_rows.tolist(), call_rows.tolist(), keys, strict=True):
        children = by_call.get(row, np.array([], dtype=np.int64))
        child_names = [str(cats[codes[c]]) for c in children]
        if key == "None" and keyless:
            key = _best_keyless(graphs, keyless, child_names)
            keyless_used += key is not None
        rec = _record(graphs, key) if key is not None else None
        if rec is None:
            unknown_ns += int(end_ns[bw_row] - ts_ns[bw_row])
            unknown_rows.append((bw_row, int(ts_ns[bw_row]), int(end_ns[bw_row])))
            unknown_calls += 1
            if key is not None:
                unknown_keys[key] = None
            continue
        known_calls += 1
        expected = [str(c[0]) if len(c) > 0 else "" for c in rec["calls"]]
        matched = _match(expected, child_names)
        expected_visible += sum(1 for n in expected if n)
        found_visible += sum(1 for m in matched if m >= 0)
        for label, region, s, e in _stretches(rec["calls"], rec["regions"], matched,
                                              ts_ns[children], end_ns[children],
                                              int(ts_ns[row]), int(end_ns[row])):
            if label == "recompute":
                pieces.append((region, s, e, row))
            else:
                fused.append((region, s, e, row))

    pieces_table = _span_table(("region", "start_ns", "end_ns", "call"), pieces)
    fused_table = _span_table(("region", "start_ns", "end_ns"), [f[:3] for f in fused])

    total = known_calls + unknown_calls
    fused_gpu = _gpu_ns_launched_in(ev, [(r, s, e) for _, s, e, r in fused])
    unknown_gpu = _gpu_ns_launched_in(ev, unknown_rows)
    notes: list[str] = []
    if known_calls == 0:
        status = "not_separable"
    elif unknown_calls or found_visible < expected_visible:
        status = "partial"
    else:
        status = "separated"
    ms = lambda ns: f"{ns / 1e6:.3f} ms"  # noqa: E731
    if unknown_calls:
        if watched:
            why = ("ckprof did not see those graphs being compiled (compiled before "
                   "ckprof.capture started, by a backend other than inductor, or loaded "
                   "from torch's compile cache without ckprof's record)")
        elif meta is None and isinstance(trace.ckprof, Mapping):
            why = "this capture recorded no torch.compile activity"
        else:
            why = "the trace has no ckprof record of what torch.compile recomputes"
        notes.append(
            f"recompute inside torch.compile is not separable for {unknown_calls} of "
            f"{total} compiled backward call(s) ({COMPILED_BACKWARD}, {ms(unknown_ns)}"
            + (f", GPU {ms(unknown_gpu)}" if unknown_gpu is not None else "") + "): "
            f"{why}. Any recompute there (activation checkpointing under torch.compile, "
            "or the partitioner's own) is reported as backward and recompute figures "
            "exclude it. Capture with ckprof.capture started before the model is first "
            f"compiled, or {_AB_HINT}")
    fused_ns = int((fused_table["end_ns"] - fused_table["start_ns"]).sum())
    piece_ns = int((pieces_table["end_ns"] - pieces_table["start_ns"]).sum())
    if known_calls:
        notes.append(
            f"recompute inside torch.compile found for {known_calls} compiled backward "
            f"call(s) from ckprof's compile record: {ms(piece_ns)} run recomputed forward "
            "work only")
        if fused_ns:
            notes.append(
                f"{ms(fused_ns)} of compiled backward"
                + (f" (GPU {ms(fused_gpu)})" if fused_gpu is not None else "")
                + " runs kernels that fuse recompute with backward work (inductor "
                "fusion): counted as backward, so compiled recompute is a lower bound, "
                "at most that much higher")
        if keyless_used:
            notes.append(
                f"{keyless_used} compiled backward call(s) ran with torch's FX graph cache "
                "off (no graph key in the trace): matched to ckprof's record by their "
                "kernel sequence")
        if found_visible < expected_visible:
            notes.append(
                f"{expected_visible - found_visible} of {expected_visible} expected kernel "
                "events of compiled backward graphs were not found in the trace: their "
                "time went to the neighbouring stretches")
    summary = {
        "status": status,
        "backward_calls": int(total),
        "backward_calls_recorded": int(known_calls),
        "recompute_wall_ms": round(piece_ns / 1e6, 6),
        "fused_wall_ms": round(fused_ns / 1e6, 6),
        "fused_gpu_ms": _ms_or_none(fused_gpu),
        "not_separable_wall_ms": round(unknown_ns / 1e6, 6),
        "not_separable_gpu_ms": _ms_or_none(unknown_gpu),
        "unknown_graphs": list(unknown_keys),
        "kernel_events_expected": int(expected_visible),
        "kernel_events_found": int(found_visible),
    }
    return CompiledRecompute(status=status, pieces_table=pieces_table,
                             occurrences_table=_occurrence_table(pieces_table),
                             fused_table=fused_table, summary=summary, notes=tuple(notes))
