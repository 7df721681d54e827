"""What each memory peak is made of (ckprof.analysis.composition): exact splits on REAL
CPU traces captured here against a raw-JSON reconstruction, a property test that the
split adds up to the level at every peak, and the cases where it is not available."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.builders import TraceBuilder
from support.raw_reference import (
    checkpoint_region,
    innermost_op,
    owner_of_alloc,
    pair_blocks,
    phase_at,
    read_raw,
)

from ckprof.analysis import analyze, load
from ckprof.analysis.composition import BEFORE, DRIFT, UNSEEN, match_frees

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> dict[str, Path]:
    from support.capture import capture_trace, one_torch_thread

    root = tmp_path_factory.mktemp("composition")
    with one_torch_thread():
        return {v: capture_trace(root, v, steps=2) for v in ("markers", "sac")}


def expected_split(path: Path, peak_ts: int, peak_bytes: int) -> tuple[dict, int]:
    """(origin, region, op) -> live bytes at the first memory event at ``peak_ts`` whose
    level is ``peak_bytes``, and the bytes of 'before profiling' (baseline + frees of
    blocks allocated before profiling), all from the raw JSON."""
    raw = read_raw(path)
    mem = raw.memory
    base = int(raw.meta["ckprof"]["memory_baseline"]["cpu"]["bytes"])
    level = base + np.cumsum([m["bytes"] for m in mem])
    counter_start = mem[0]["total"] - mem[0]["bytes"]
    # the counter moves exactly by Bytes (no drift in real traces)
    assert [m["total"] - counter_start for m in mem] == list(level - base)
    # the peak event: same time; its level up to the unseen-free correction, which is
    # the over-count at the window's end, at most freed_unseen_bytes (NOTE [ Unseen CPU
    # frees ])
    end = raw.meta["ckprof"]["memory_end"]["cpu"]
    unseen = min(int(end["freed_unseen_bytes"]), max(0, int(level[-1]) - int(end["bytes"])))
    cands = [i for i, m in enumerate(mem) if m["ts"] == peak_ts
             and level[i] - peak_bytes in (0, unseen)]
    k = cands[0]
    split: dict = defaultdict(int)
    before = base
    for b in pair_blocks(mem):
        if b["alloc"] is None:
            if b["free"] <= k:
                before += b["bytes"]
            continue
        if b["alloc"] <= k and (b["free"] is None or b["free"] > k):
            m = mem[b["alloc"]]
            phase, region = phase_at(raw, m["ts"])
            op = innermost_op(raw, m["tid"], m["ts"])
            owner = owner_of_alloc(op) if op is not None else None
            if phase == "forward" and owner is not None:
                region = checkpoint_region(raw, owner.ts)
            split[(phase, region, owner.name if owner else "")] += b["bytes"]
    return dict(split), before


@pytest.mark.parametrize("variant", ["markers", "sac"])
def test_peak_split_equals_raw_reconstruction(traces, variant):
    """GIVEN a real trace (checkpointed, plain and selective) WHEN every phase's peak of
    every step is split by origin THEN the (phase, region, op) parts equal the raw-JSON
    reconstruction byte for byte, 'before profiling' is the baseline less the frees of
    older blocks, the unseen-free correction is what the memory stage subtracts, there is
    no drift, and the parts add up to the peak exactly."""
    a = load(traces[variant])
    comp = a.composition
    assert comp.captured
    ap = comp.at_peaks
    for peak in a.memory.peaks.itertuples(index=False):
        rows = ap[(ap["step"] == peak.step) & (ap["phase"] == peak.phase)]
        got = {(r.origin, r.origin_region, r.op): int(r.bytes)
               for r in rows.itertuples(index=False) if r.origin not in (BEFORE, UNSEEN, DRIFT)}
        want, before = expected_split(traces[variant], int(peak.at_ts_ns), int(peak.peak_bytes))
        assert got == want, (peak.step, peak.phase)
        fixed = rows.set_index("origin")["bytes"]
        assert int(fixed[BEFORE]) == before
        assert DRIFT not in fixed.index
        assert int(rows["bytes"].sum()) == int(peak.peak_bytes)


def test_backward_peak_reads_like_the_issue(traces):
    """GIVEN the markers trace WHEN the composition table is read by origin THEN the
    recompute peak holds bytes allocated in forward (the blocks' saved inputs), backward
    (gradients so far) and recompute (the rebuilt activations), and each peak's rows
    add up to its peak_bytes."""
    a = load(traces["markers"])
    t = a.composition_table()
    for (_d, _p), grp in t.groupby(["device", "phase"]):
        assert int(grp["bytes"].sum()) == int(grp["peak_bytes"].iloc[0])
        assert abs(grp["pct"].sum() - 100.0) < 1e-9
    rc = t[t["phase"] == "recompute"].set_index("origin")["bytes"]
    assert rc["recompute"] > 0 and rc["forward"] > 0 and rc["backward"] > 0 and rc[BEFORE] > 0
    by_op = a.composition_table("recompute", by="op")
    rec = by_op[by_op["origin"] == "recompute"]
    assert set(rec["op"]) <= {"aten::addmm", "aten::gelu"}
    assert set(rec["origin_region"]) <= {"blocks.0", "blocks.1", "blocks.2"}


def test_timeline_bands_add_up(traces):
    """GIVEN the markers trace WHEN the composition timeline is built THEN after every
    memory event the origin columns add up to the memory stage's level."""
    a = load(traces["markers"])
    tl = a.composition.timeline
    cols = [BEFORE, "forward", "backward", "recompute", "optimizer", "other", UNSEEN, DRIFT]
    assert (tl[cols].sum(axis=1) == tl["allocated_bytes"]).all()
    assert len(tl) == len(a.trace.memory)


# ---- property: the split adds up at every peak ----------------------------------------

_PHASE_SPANS = (("forward", 10, 300), ("backward", 320, 480), ("optimizer", 820, 100))


@st.composite
def memory_programs(draw):
    """Allocations and frees at random times of a 2-step trace: frees of live blocks
    (any order), frees of blocks from before profiling, reused addresses (so a free may
    close a block of another size), several events at one instant."""
    n = draw(st.integers(1, 40))
    events, live, next_addr = [], [], 1
    for _ in range(n):
        t = draw(st.floats(0, 1999, allow_nan=False).map(lambda x: round(x, 3)))
        kind = draw(st.sampled_from(["alloc", "alloc", "free", "old_free"]))
        if kind == "alloc" or (kind == "free" and not live):
            size = draw(st.integers(1, 10_000))
            addr = draw(st.sampled_from([next_addr, next_addr, 1, 2]))
            next_addr += 1
            events.append((t, size, addr))
            live.append((addr, size))
        elif kind == "free":
            addr, size = live.pop(draw(st.integers(0, len(live) - 1)))
            events.append((t, -size, addr))
        else:
            events.append((t, -draw(st.integers(1, 5000)), 10_000 + draw(st.integers(0, 3))))
    return sorted(events, key=lambda e: e[0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=memory_programs(), baseline=st.integers(0, 50_000), absolute=st.booleans(),
       unseen=st.integers(0, 3000), holes=st.sets(st.integers(1, 39), max_size=5))
def test_composition_adds_up_at_every_peak(program, baseline, absolute, unseen, holes):
    """GIVEN any sequence of allocations and frees (unmatched frees, reused addresses)
    in a 2-step trace with markers, a recorded baseline, maybe unseen frees and some
    events without 'Total Allocated' (the memory stage fills their counter)
    WHEN the composition is computed THEN at every step x phase peak its parts add up
    EXACTLY to the peak level, the timeline bands add up to the level after every
    event, and there is no drift (the counter moves by Bytes)."""
    b = TraceBuilder()
    total = 100_000
    end_bytes = baseline + sum(x for _t, x, _a in program) - unseen
    meta = {"memory_baseline": {"cpu": {"bytes": baseline, "counter_absolute": absolute}}}
    if not absolute:
        meta["memory_end"] = {"cpu": {"bytes": end_bytes, "freed_unseen_bytes": unseen}}
    b.meta(ckprof=meta)
    for step, t0 in ((1, 0.0), (2, 1000.0)):
        b.step(step, t0, 1000)
        b.marker("zero_grad", t0 + 1, 5)
        for phase, s, d in _PHASE_SPANS:
            b.marker(phase, t0 + s, d)
        b.marker("recompute:blk", t0 + 350, 50)
    for i, (t, x, addr) in enumerate(program):
        total += x
        b.memory(t, bytes=x, total_allocated=None if i in holes else total, addr=addr)
    a = analyze(b.to_trace())
    comp = a.composition
    assert comp.captured
    comp.self_check(a.memory)
    ap = comp.at_peaks
    for peak in a.memory.peaks.itertuples(index=False):
        rows = ap[(ap["step"] == peak.step) & (ap["phase"] == peak.phase)]
        assert int(rows["bytes"].sum()) == int(peak.peak_bytes)
        assert DRIFT not in set(rows["origin"])
    tl = comp.timeline
    assert (tl[DRIFT] == 0).all()
    # the parts read the memory stage's levels (also where it filled a missing counter):
    # blocks from before profiling are what the counter held when profiling started,
    # less the first event when it freed one of them
    start = 100_000 if absolute else baseline
    assert start + min(program[0][1], 0) <= int(tl[BEFORE].iloc[0]) <= start


@given(addr=st.lists(st.integers(0, 3), max_size=30), data=st.data())
@settings(max_examples=100, deadline=None)
def test_free_matching_is_last_in_first_out(addr, data):
    """GIVEN any sequence of allocations, frees and zero-byte events at a few addresses
    WHEN frees are matched THEN each free closes the latest still-open allocation at its
    address (a dict of stacks agrees), or none."""
    nbytes = [data.draw(st.sampled_from([-3, 0, 5])) for _ in addr]
    want, stacks = [], {}
    for a_, x in zip(addr, nbytes, strict=True):
        if x > 0:
            stacks.setdefault(a_, []).append(len(want))
            want.append(-1)
        elif x < 0:
            want.append(stacks[a_].pop() if stacks.get(a_) else -1)
        else:
            want.append(-1)
    assert match_frees(np.array(addr, dtype=np.int64), np.array(nbytes, dtype=np.int64)).tolist() == want


# ---- not available ------------------------------------------------------------------------

def test_without_addresses_or_memory_the_composition_says_why():
    """GIVEN a trace whose [memory] events carry no address, and one with no memory
    events WHEN the composition is asked for THEN it is not captured, the reason says
    why, and composition_table is empty."""
    b = TraceBuilder()
    b.step(1, 0, 100)
    b.marker("forward", 0, 100)
    b.raw({"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", "pid": 1000,
           "tid": 1000, "ts": 10.0, "args": {"Bytes": 64, "Total Allocated": 64,
                                             "Device Type": 0, "Device Id": -1}})
    a = analyze(b.to_trace())
    assert not a.composition.captured and "address" in a.composition.reason
    assert a.composition_table().empty
    b2 = TraceBuilder()
    b2.step(1, 0, 100)
    a2 = analyze(b2.to_trace())
    assert not a2.composition.captured and "[memory]" in a2.composition.reason
