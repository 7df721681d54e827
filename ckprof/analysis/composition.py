"""Stage 4b: what each phase's memory peak is made of.

Contract::

    memory_composition(trace, phases, memory, context=None) -> MemoryComposition

- ``blocks``: one row per allocation seen: ``device``, ``alloc_row`` / ``free_row``
  (rows of ``trace.memory``; ``free_row`` -1 when the free is not in the trace),
  ``bytes``, ``alloc_ts_ns``, ``free_ts_ns`` (-1 when never freed in the trace),
  ``origin_step``, ``origin_phase``, ``origin_region`` (where it was allocated: the
  step, phase and region at the allocation; in forward the enclosing checkpoint
  region), ``op`` (the op call that allocated it: the innermost op enclosing the
  allocation on its thread, allocator helpers lifted to their caller, NOTE [ Who
  allocated a block ] in :mod:`ckprof.analysis.ops`; "" when none), ``op_event`` (that
  call's row in ``trace.events``, -1 when none).
- ``at_peaks``: for every row of ``memory.peaks`` (step x phase x device), the live
  bytes at the peak split into components: ``step``, ``phase``, ``device``,
  ``peak_bytes``, ``at_ts_ns``, ``origin``, ``origin_step``, ``origin_region``, ``op``,
  ``bytes``. ``origin`` is a phase (blocks allocated in the trace and live at the
  peak), :data:`BEFORE` (blocks live when profiling started, less those whose free
  the trace shows), :data:`UNSEEN` (minus the frees the CPU profiler never reported,
  NOTE [ Unseen CPU frees ] in :mod:`ckprof.analysis.memory`) or :data:`DRIFT` (the
  allocator counter moved by other than the events' ``Bytes``; 0 in every trace seen
  so far, kept so the sum is exact whatever the input). Per peak, ``bytes`` sums
  EXACTLY to ``peak_bytes`` (NOTE [ Composition adds up ]).
- ``timeline``: ``ts_ns``, ``device``, ``allocated_bytes`` and one int64 column per
  entry of :data:`ORIGINS` (live bytes by origin phase after every memory event);
  the origin columns add up to ``allocated_bytes``.
- ``captured``, ``reason`` (why not, "" when captured), ``notes``.

# NOTE [ Block lifetimes ]
# Every ``[memory]`` event carries the block's address (``Addr``): an allocation
# (``Bytes`` > 0) and the free (``Bytes`` < 0) of the same block share it. Per device
# and address the events are matched last-in-first-out, like brackets: a free closes
# the latest still-open allocation at its address. A free with none open is the free
# of a block allocated before profiling started; it lowers :data:`BEFORE`. A block with
# no free in the trace is live to the end. An address reused while its block is open
# (a free the profiler missed) keeps both blocks open, as the allocator counter does.
#
# NOTE [ Composition adds up ]
# The memory stage's level at event k is ``raw_k - unseen_k`` where ``raw_k`` is the
# counter level (``baseline + total_allocated_k - counter_start``; an absolute counter
# as is; a legacy running sum of ``Bytes``) and ``unseen_k`` its unseen-free
# correction. Here every event's ``Bytes`` goes to exactly one origin: an allocation
# to its own, a free to its block's, an unmatched free to BEFORE. So
#   sum over origins = baseline + sum(Bytes up to k)
#   BEFORE = baseline + unmatched frees up to k;  UNSEEN = -unseen_k
#   DRIFT  = raw_k - (baseline + sum(Bytes up to k))
# and the components add up to the level exactly, in integer bytes. For an absolute
# counter the baseline is the counter before the first event (``total_allocated -
# Bytes`` of the first event).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ckprof.analysis.memory import PhaseMemory, innermost_op_rows, raw_levels
from ckprof.analysis.ops import OpContext, op_context
from ckprof.analysis.phases import PhaseTable
from ckprof.trace.markers import PHASES
from ckprof.trace.model import Trace

__all__ = ["BEFORE", "DRIFT", "ORIGINS", "UNSEEN", "MemoryComposition", "memory_composition"]

#: origin of blocks that were live when profiling started
BEFORE = "before profiling"
#: origin of the correction for frees the CPU profiler does not report
UNSEEN = "freed unseen"
#: origin of counter movements the events' Bytes do not explain
DRIFT = "counter drift"
#: the origin columns of ``MemoryComposition.timeline``, in stacking order
ORIGINS: tuple[str, ...] = (BEFORE, *PHASES)

_BLOCK_COLUMNS = {"device": object, "alloc_row": "int64", "free_row": "int64",
                  "bytes": "int64", "alloc_ts_ns": "int64", "free_ts_ns": "int64",
                  "origin_step": "int64", "origin_phase": object, "origin_region": object,
                  "op": object, "op_event": "int64"}
_PEAK_COLUMNS = {"step": "int64", "phase": object, "device": object, "peak_bytes": "int64",
                 "at_ts_ns": "int64", "origin": object, "origin_step": "int64",
                 "origin_region": object, "op": object, "bytes": "int64"}


def _empty(cols: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in cols.items()})


@dataclass(frozen=True)
class MemoryComposition:
    """Block lifetimes and what the live bytes at each peak are. See the module docstring."""

    blocks: pd.DataFrame
    at_peaks: pd.DataFrame
    timeline: pd.DataFrame
    captured: bool
    reason: str = ""
    notes: tuple[str, ...] = field(default=())

    def self_check(self, memory: PhaseMemory) -> None:
        """Assert that every peak's components add up to its level exactly."""
        if not self.captured:
            return
        got = self.at_peaks.groupby(["step", "phase", "device"])["bytes"].sum()
        want = memory.peaks.set_index(["step", "phase", "device"])["peak_bytes"]
        want = want.reindex(got.index)
        assert (got == want).all(), "composition does not add up to the peak level"
        cols = [c for c in ORIGINS if c in self.timeline.columns]
        extra = [c for c in (UNSEEN, DRIFT) if c in self.timeline.columns]
        total = self.timeline[cols + extra].sum(axis=1)
        assert (total == self.timeline["allocated_bytes"]).all(), "timeline does not add up"


def match_frees(addr: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """For events of one device in time order: the position of the allocation each free
    closes (-1 for a free with no open allocation, and for non-frees), per
    NOTE [ Block lifetimes ]. Vectorised bracket matching per address."""
    n = len(addr)
    match = np.full(n, -1, dtype=np.int64)
    step = np.where(nbytes > 0, 1, np.where(nbytes < 0, -1, 0)).astype(np.int64)
    live = np.flatnonzero(step != 0)
    if len(live) == 0:
        return match
    a = np.asarray(addr, dtype=np.int64)[live]
    order = np.lexsort((live, a))                  # by address, then time
    pos = live[order]
    grp = a[order]
    s = step[pos]
    first = np.ones(len(pos), dtype=bool)
    first[1:] = grp[1:] != grp[:-1]
    gid = np.cumsum(first) - 1
    depth = pd.Series(s).groupby(gid).cumsum().to_numpy(dtype=np.int64)   # after the event
    low = pd.Series(depth).groupby(gid).cummin().to_numpy(dtype=np.int64)
    prev_low = np.zeros(len(pos), dtype=np.int64)  # the minimum BEFORE the event (start 0)
    prev_low[1:] = np.minimum(low[:-1], 0)
    prev_low[first] = 0
    is_free = s < 0
    matched = is_free & (depth >= prev_low)        # a new minimum = nothing open
    # the allocation a free closes: the latest allocation of its address whose
    # depth-after is one more than the free's (bracket matching), searched on packed
    # (address group, depth, position) keys
    allocs = np.flatnonzero(s > 0)
    q = np.flatnonzero(matched)
    if len(q) and len(allocs):
        width = len(pos) + 1
        dmin = int(min(depth[allocs].min(), (depth[q] + 1).min()))
        span = int(max(depth[allocs].max(), (depth[q] + 1).max())) - dmin + 1
        key_a = (gid[allocs] * span + (depth[allocs] - dmin)) * width + allocs
        order_a = np.argsort(key_a, kind="stable")
        key_a, allocs = key_a[order_a], allocs[order_a]
        key_q = (gid[q] * span + (depth[q] + 1 - dmin)) * width + q
        k = np.searchsorted(key_a, key_q, side="left") - 1
        ok = k >= 0
        hit = allocs[np.maximum(k, 0)]
        ok &= (gid[hit] == gid[q]) & (depth[hit] == depth[q] + 1)
        match[pos[q[ok]]] = pos[hit[ok]]
    return match


def _parts_at(at: np.ndarray, owner: np.ndarray, b: np.ndarray, phase: np.ndarray,
              step: np.ndarray, region: np.ndarray, op: np.ndarray) -> list[pd.DataFrame]:
    """For each event position in ``at``: the bytes live there by (origin, origin_step,
    origin_region, op) of the blocks, as the sum of the signed Bytes of the events up to
    it that belong to blocks of that origin (an allocation to its own block, a free to
    the block it closes; NOTE [ Composition adds up ]). Vectorised over all positions:
    one cumulative sum per origin key, read at every position with one searchsorted."""
    mine = np.flatnonzero(owner >= 0)
    keys = pd.MultiIndex.from_arrays([phase[owner[mine]], step[owner[mine]],
                                      region[owner[mine]], op[owner[mine]]])
    key, uniq = pd.factorize(keys)
    key = key.astype(np.int64)
    n_pos = len(owner) + 1
    order = np.lexsort((mine, key))
    k_sorted, p_sorted = key[order], mine[order]
    csum = np.concatenate([[0], np.cumsum(b[mine][order])])
    first = np.searchsorted(k_sorted, np.arange(len(uniq)), side="left")
    packed = k_sorted * n_pos + p_sorted
    out = []
    for pos in np.asarray(at, dtype=np.int64).tolist():
        j = np.searchsorted(packed, np.arange(len(uniq), dtype=np.int64) * n_pos + pos,
                            side="right")             # events of each key up to pos
        val = csum[j] - csum[first]
        keep = np.flatnonzero(val != 0)
        out.append(pd.DataFrame({
            "origin": uniq.get_level_values(0)[keep].to_numpy(dtype=object),
            "origin_step": uniq.get_level_values(1)[keep].to_numpy(dtype=np.int64),
            "origin_region": uniq.get_level_values(2)[keep].to_numpy(dtype=object),
            "op": uniq.get_level_values(3)[keep].to_numpy(dtype=object),
            "bytes": val[keep].astype(np.int64)}))
    return out


def memory_composition(trace: Trace, phases: PhaseTable, memory: PhaseMemory,
                       context: OpContext | None = None) -> MemoryComposition:
    """Block lifetimes, the make-up of every peak, and live bytes by origin over time
    (pure). See NOTE [ Block lifetimes ] and NOTE [ Composition adds up ]."""
    mem = trace.memory
    if not memory.captured or len(mem) == 0:
        return MemoryComposition(_empty(_BLOCK_COLUMNS), _empty(_PEAK_COLUMNS),
                                 pd.DataFrame(), captured=False,
                                 reason=memory.reason or "trace has no [memory] events")
    addr_all = (mem["addr"].to_numpy(dtype=np.int64) if "addr" in mem.columns
                else np.full(len(mem), -1, dtype=np.int64))
    b_all = mem["bytes"].to_numpy(dtype=np.int64)
    if ((addr_all < 0) & (b_all != 0)).all():
        return MemoryComposition(_empty(_BLOCK_COLUMNS), _empty(_PEAK_COLUMNS),
                                 pd.DataFrame(), captured=False,
                                 reason="the [memory] events carry no block address (Addr), "
                                        "so block lifetimes cannot be rebuilt")
    ctx = context if context is not None else op_context(trace)
    notes: list[str] = []
    ts_all = mem["ts_ns"].to_numpy(dtype=np.int64)
    dev_all = mem["device"].astype(str).to_numpy(dtype=object)
    ta_all = mem["total_allocated_bytes"].to_numpy(dtype=np.int64)
    level_all = memory.timeline["allocated_bytes"].to_numpy(dtype=np.int64)
    # where each allocation happened
    step, phase, region = phases.lookup(ts_all)
    op_row = ctx.allocating_call(innermost_op_rows(trace.events, mem["pid"].to_numpy(dtype=np.int64),
                                           mem["tid"].to_numpy(dtype=np.int64), ts_all))
    names = trace.events["name"].astype(str).to_numpy(dtype=object)
    op = np.where(op_row >= 0, names[np.maximum(op_row, 0)] if len(names) else "", "")
    region = np.where(phase == "forward",
                      np.where(op_row >= 0, ctx.checkpoint_region[np.maximum(op_row, 0)]
                               if len(names) else "", ""),
                      np.where(phase == "recompute", region, "")).astype(object)

    block_parts: list[pd.DataFrame] = []
    peak_parts: list[pd.DataFrame] = []
    line_parts: list[pd.DataFrame] = []
    peaks = memory.peaks
    for device in sorted(set(dev_all)):
        rows = np.flatnonzero(dev_all == device)
        b = b_all[rows]
        if (addr_all[rows] < 0).any() and ((addr_all[rows] < 0) & (b != 0)).any():
            notes.append(f"{device}: some [memory] events carry no address: composition "
                         "not available for this device")
            continue
        match = match_frees(addr_all[rows], b)
        is_alloc = b > 0
        is_free = b < 0
        unmatched = is_free & (match < 0)
        freed_at = np.full(len(rows), -1, dtype=np.int64)
        m = np.flatnonzero(match >= 0)
        freed_at[match[m]] = m
        sizes = (b[match[m]] != -b[m])
        if sizes.any():
            notes.append(f"{device}: {int(sizes.sum())} free(s) differ in size from their "
                         "allocation (each event's own Bytes is used)")
        if unmatched.any():
            notes.append(f"{device}: {int(unmatched.sum())} free(s) of blocks allocated before "
                         f"profiling ({int(-b[unmatched].sum()):,} bytes) count against "
                         f"'{BEFORE}'")
        # origin of every event: its block's allocation (unmatched frees: BEFORE)
        owner = np.where(is_alloc, np.arange(len(rows)), np.where(match >= 0, match, -1))
        a_rows = rows[is_alloc]
        ai = np.flatnonzero(is_alloc)
        fr = freed_at[ai]
        block_parts.append(pd.DataFrame({
            "device": device, "alloc_row": a_rows,
            "free_row": np.where(fr >= 0, rows[np.maximum(fr, 0)], -1),
            "bytes": b[ai], "alloc_ts_ns": ts_all[a_rows],
            "free_ts_ns": np.where(fr >= 0, ts_all[rows[np.maximum(fr, 0)]], -1),
            "origin_step": step[a_rows], "origin_phase": phase[a_rows],
            "origin_region": region[a_rows], "op": op[a_rows], "op_event": op_row[a_rows]}))
        raw, base, _absolute, _filled = raw_levels(trace, device, ta_all[rows], b)
        level = level_all[rows]
        seen = base + np.cumsum(b)
        unseen = raw - level                  # the memory stage's correction (>= 0)
        drift = raw - seen
        before = base + np.cumsum(np.where(unmatched, b, 0))
        if (drift != 0).any():
            notes.append(f"{device}: the allocator counter moved by {int(np.abs(drift).max()):,} "
                         "bytes more than the events' Bytes explain: shown as "
                         f"'{DRIFT}'")
        # timeline: live bytes by origin phase
        ph_owner = np.where(owner >= 0, phase[rows[np.maximum(owner, 0)]], BEFORE)
        line = {"ts_ns": ts_all[rows], "device": device, "allocated_bytes": level,
                BEFORE: before}
        for p in PHASES:
            line[p] = np.cumsum(np.where((owner >= 0) & (ph_owner == p), b, 0))
        line[UNSEEN] = -unseen
        line[DRIFT] = drift
        line_parts.append(pd.DataFrame(line, index=rows))
        # peaks of this device: the memory row of each, then all parts at once
        pk = peaks[peaks["device"].astype(str) == device].reset_index(drop=True)
        t_dev = ts_all[rows]
        lo = np.searchsorted(t_dev, pk["at_ts_ns"].to_numpy(dtype=np.int64), side="left")
        hi = np.searchsorted(t_dev, pk["at_ts_ns"].to_numpy(dtype=np.int64), side="right")
        at = np.full(len(pk), -1, dtype=np.int64)
        for i, (a, z, want) in enumerate(zip(lo.tolist(), hi.tolist(),
                                             pk["peak_bytes"].tolist(), strict=True)):
            hit = np.flatnonzero(level[a:z] == want)
            at[i] = a + hit[0] if len(hit) else -1
        if (at < 0).any():
            notes.append(f"{device}: {int((at < 0).sum())} peak(s) not found among the memory "
                         "events")
        found = np.flatnonzero(at >= 0)
        parts = _parts_at(at[found], owner, b, phase[rows], step[rows], region[rows], op[rows])
        for j, i in enumerate(found):
            k = int(at[i])
            r = pk.iloc[i]
            part = parts[j]
            fixed = pd.DataFrame({"origin": [BEFORE, UNSEEN, DRIFT], "origin_step": -1,
                                  "origin_region": "", "op": "",
                                  "bytes": [int(before[k]), -int(unseen[k]), int(drift[k])]})
            fixed = fixed[(fixed["bytes"] != 0) | (fixed["origin"] == BEFORE)]
            peak_parts.append(pd.concat([part, fixed], ignore_index=True).assign(
                step=int(r["step"]), phase=str(r["phase"]), device=device,
                peak_bytes=int(r["peak_bytes"]), at_ts_ns=int(r["at_ts_ns"])))
    blocks = (pd.concat(block_parts, ignore_index=True).astype(_BLOCK_COLUMNS)
              if block_parts else _empty(_BLOCK_COLUMNS))
    at_peaks = _empty(_PEAK_COLUMNS)
    if peak_parts:
        at_peaks = pd.concat(peak_parts, ignore_index=True)
        rank = {o: i for i, o in enumerate((*PHASES, BEFORE, UNSEEN, DRIFT))}
        prank = {p: i for i, p in enumerate(PHASES)}
        at_peaks = (at_peaks.assign(_p=at_peaks["phase"].map(prank),
                                    _o=at_peaks["origin"].map(rank), _b=-at_peaks["bytes"])
                    .sort_values(["step", "_p", "device", "_o", "_b", "origin_region", "op"],
                                 kind="stable")
                    .drop(columns=["_p", "_o", "_b"]))
        at_peaks = at_peaks.astype(_PEAK_COLUMNS)[list(_PEAK_COLUMNS)].reset_index(drop=True)
    timeline = (pd.concat(line_parts).sort_index(kind="stable").reset_index(drop=True)
                if line_parts else pd.DataFrame())
    if not block_parts:
        return MemoryComposition(blocks, at_peaks, timeline, captured=False,
                                 reason="no device's [memory] events carry block addresses",
                                 notes=tuple(notes))
    return MemoryComposition(blocks=blocks, at_peaks=at_peaks, timeline=timeline,
                             captured=True, reason="", notes=tuple(dict.fromkeys(notes)))
