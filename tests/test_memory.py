"""peak_memory_by_phase: absolute levels, entering level, legacy rebuild, and the
KEY check against a plain-Python computation over a real captured trace."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict

import pytest
from support.builders import TraceBuilder
from support.reference import reference_segment_peaks

from ckprof.analysis.memory import NO_MEMORY_REASON, peak_memory_by_phase
from ckprof.analysis.phases import find_phases

US = 1000


def one_step(b: TraceBuilder) -> TraceBuilder:
    return (b.step(1, 0, 1000)
            .marker("forward", 0, 400)
            .op("aten::empty", 100, 10)
            .marker("backward", 400, 300)
            .op("aten::mm", 450, 100)
            .op("aten::empty", 460, 20)
            .marker("optimizer", 800, 100))


def test_cpu_levels_use_the_recorded_baseline():
    """GIVEN a relative CPU counter (starting at 1000 from an earlier session) and a
    ckprof baseline of 5000 bytes WHEN memory is analysed THEN levels are baseline +
    (total_allocated - counter_start) and the device is absolute."""
    b = one_step(TraceBuilder())
    b.meta(ckprof={"memory_baseline": {"cpu": {"bytes": 5000, "counter_absolute": False}}})
    b.memory(105, bytes=100, total_allocated=1100)
    b.memory(465, bytes=300, total_allocated=1400)
    b.memory(470, bytes=-100, total_allocated=1300)
    t = b.to_trace()
    m = peak_memory_by_phase(t, find_phases(t))
    assert m.captured and m.reason == ""
    assert m.baseline_bytes == {"cpu": 5000} and m.absolute == {"cpu": True}
    assert m.timeline["allocated_bytes"].tolist() == [5100, 5400, 5300]
    peaks = {r.phase: (r.peak_bytes, r.at_ts_ns // US, r.at_op) for r in m.peaks.itertuples()}
    # forward: its own event; backward: 5400 at 465 inside aten::empty (innermost op);
    # optimizer and the gaps: the level they were entered with
    assert peaks == {"forward": (5100, 105, "aten::empty"), "backward": (5400, 465, "aten::empty"),
                     "optimizer": (5300, 470, "aten::empty"),
                     "other": (5300, 470, "aten::empty")}
    assert not any("relative" in n for n in m.notes)


def test_without_metadata_levels_are_relative_and_say_so():
    """GIVEN no ckprof metadata WHEN memory is analysed THEN the CPU baseline is 0, the
    level starts from the counter before the first event, and a note says relative."""
    b = one_step(TraceBuilder()).memory(105, bytes=64, total_allocated=10_064)
    t = b.to_trace()
    m = peak_memory_by_phase(t, find_phases(t))
    assert m.timeline["allocated_bytes"].tolist() == [64]
    assert m.absolute == {"cpu": False} and m.baseline_bytes == {"cpu": 0}
    assert any("relative to profiling start" in n for n in m.notes)


def test_cuda_counter_is_absolute_and_devices_are_separate():
    """GIVEN CPU and CUDA events WHEN analysed THEN CUDA levels are Total Allocated as
    is, and each device has its own peak per phase."""
    b = (one_step(TraceBuilder())
         .memory(105, bytes=512, total_allocated=1_000_512, device="cuda:0")
         .memory(106, bytes=8, total_allocated=8)
         .memory(465, bytes=-512, total_allocated=1_000_000, device="cuda:0"))
    t = b.to_trace()
    m = peak_memory_by_phase(t, find_phases(t))
    assert m.absolute == {"cpu": False, "cuda:0": True}
    fwd = m.peaks[m.peaks["phase"] == "forward"].set_index("device")["peak_bytes"].to_dict()
    assert fwd == {"cpu": 8, "cuda:0": 1_000_512}
    bwd = m.peaks[(m.peaks["phase"] == "backward") & (m.peaks["device"] == "cuda:0")]
    assert bwd["peak_bytes"].tolist() == [1_000_512]          # entered with it
    assert bwd["at_ts_ns"].tolist() == [105 * US]


def test_legacy_events_are_rebuilt_from_bytes():
    """GIVEN events without Total Allocated (2021 traces) WHEN analysed THEN levels are
    the running sum of Bytes and a note says so."""
    b = one_step(TraceBuilder())
    for ts, n in ((101, 10), (102, 30), (460, -5), (470, 100)):
        b.memory(ts, bytes=n)
    t = b.to_trace()
    m = peak_memory_by_phase(t, find_phases(t))
    assert m.timeline["allocated_bytes"].tolist() == [10, 40, 35, 135]
    assert any("running sum" in n for n in m.notes)


def test_no_memory_events():
    """GIVEN a trace without [memory] events WHEN analysed THEN captured is False with
    the reason, and the frames are empty with their columns."""
    t = one_step(TraceBuilder()).to_trace()
    m = peak_memory_by_phase(t, find_phases(t))
    assert not m.captured and m.reason == NO_MEMORY_REASON
    assert list(m.peaks.columns) == ["step", "phase", "device", "peak_bytes", "at_ts_ns", "at_op"]
    assert m.peaks.empty and m.timeline.empty and m.peaks_total.empty


def test_peaks_total_takes_max_over_steps_and_timeline_marks_outside():
    """GIVEN two steps with different peaks and an event before the first step WHEN
    analysed THEN peaks_total has the larger one with its step; the early event's
    timeline row has step -1."""
    b = TraceBuilder().step(1, 0, 100).step(2, 100, 100)
    b.op("aten::mm", 10, 10).op("aten::mm", 110, 10)
    b.memory(-5, bytes=1, total_allocated=1)
    b.memory(15, bytes=10, total_allocated=11)
    b.memory(18, bytes=-10, total_allocated=1)
    b.memory(115, bytes=50, total_allocated=51)
    t = b.to_trace()
    m = peak_memory_by_phase(t, find_phases(t))
    assert m.timeline["step"].tolist() == [-1, 1, 1, 2]
    fwd = m.peaks_total[m.peaks_total["phase"] == "forward"]
    assert fwd[["peak_bytes", "step"]].values.tolist() == [[51, 2]]


# ---- KEY TEST: real trace vs. a plain loop over the JSON ----------------------------

@pytest.fixture(scope="module")
def captured_markers(tmp_path_factory):
    pytest.importorskip("torch")
    from support.capture import capture_trace

    return capture_trace(tmp_path_factory.mktemp("mem"), "markers", steps=2)


def reference_peaks(raw: dict, segments: list[tuple]) -> dict[tuple, tuple[int, int]]:
    """(step, phase, device) -> (peak_bytes, at_ts_ns), straight from the JSON."""
    base = {d: v["bytes"] for d, v in raw.get("ckprof", {}).get("memory_baseline", {}).items()}
    events = []
    for i, e in enumerate(raw["traceEvents"]):
        if e.get("ph") == "i" and e.get("name") == "[memory]":
            a = e["args"]
            dev = "cpu" if a["Device Type"] == 0 else f"cuda:{a['Device Id']}"
            events.append((round(e["ts"] * 1000), i, dev, a["Total Allocated"], a["Bytes"]))
    events.sort()
    levels: dict[str, list[tuple[int, int]]] = defaultdict(list)
    start: dict[str, int] = {}
    for ts, _, dev, total, nbytes in events:
        if dev not in start:
            start[dev] = total - nbytes
        absolute = dev != "cpu"
        level = total if absolute else base.get(dev, 0) + total - start[dev]
        levels[dev].append((ts, level))
    # NOTE [ Unseen CPU frees ]: subtract the over-count measured at the window's end
    # (at most freed_unseen_bytes) from the end of the first ckprof::zero_grad range
    zg_ends = [round((e["ts"] + e["dur"]) * 1000) for e in raw["traceEvents"]
               if e.get("name") == "ckprof::zero_grad" and e.get("ph") == "X"]
    for dev, lv in levels.items():
        end = raw.get("ckprof", {}).get("memory_end", {}).get(dev, {})
        if dev != "cpu" or not end or not zg_ends or not lv:
            continue
        over = min(end.get("freed_unseen_bytes", 0), max(0, lv[-1][1] - end["bytes"]))
        cut = min(zg_ends)
        levels[dev] = [(ts, lvl - over if ts >= cut else lvl) for ts, lvl in lv]
    return reference_segment_peaks(levels, segments)


def test_peaks_match_plain_python_on_real_trace(captured_markers):
    """GIVEN a real CPU trace captured with ckprof (markers, profile_memory, baseline)
    WHEN peaks per phase are computed THEN they equal a plain Python loop over the raw
    JSON events (baseline + counter delta, entering level included), to the byte."""
    from ckprof.trace.load import load_trace

    with gzip.open(captured_markers, "rt") as fh:
        raw = json.load(fh)
    t = load_trace(captured_markers)
    ph = find_phases(t)
    m = peak_memory_by_phase(t, ph)
    segs = [(r.step, r.phase, r.start_ns, r.end_ns) for r in ph.segments.itertuples()]
    want = reference_peaks(raw, segs)
    got = {(r.step, r.phase, r.device): (r.peak_bytes, r.at_ts_ns) for r in m.peaks.itertuples()}
    assert len(got) >= 8 and got == want
    assert m.absolute["cpu"] is True and m.baseline_bytes["cpu"] > 0
    # backward (or recompute) holds the largest activation footprint, and an op is named
    assert m.peaks["at_op"].str.len().gt(0).any()


def test_stages_do_not_mutate_their_inputs():
    """GIVEN a trace with GPU events and memory WHEN time and memory are attributed
    THEN the trace's frames and the PhaseTable's frames are unchanged (pure stages)."""
    from ckprof.analysis.attribution import attribute_time

    b = one_step(TraceBuilder()).launch(ts=120, kernel="k", kernel_ts=500, kernel_dur=9)
    b.memory(105, bytes=100, total_allocated=100).memory(465, bytes=5, total_allocated=105)
    t = b.to_trace()
    ph = find_phases(t)
    frames = [t.events, t.memory, ph.steps, ph.segments, ph.recompute]
    before = [f.copy(deep=True) for f in frames]
    attribute_time(t, ph).self_check()
    peak_memory_by_phase(t, ph)
    for old, new in zip(before, frames, strict=True):
        assert old.equals(new)


def test_innermost_op_rows_is_the_deepest_enclosing_cpu_op():
    """GIVEN 12 threads over two pids (more than get a pass each) of randomly nested ops
    and annotations, one holding a nest of 200 identical ops (deeper than the walk goes
    one parent at a time) WHEN innermost_op_rows is asked about random instants on those
    threads and on unknown ones THEN each answer is the deepest cpu_op of that thread
    containing the instant, -1 when none (the latest row: nested events follow their
    parents), for the event Table and the DataFrame alike."""
    import numpy as np

    from ckprof.analysis.memory import innermost_op_rows

    rng = np.random.default_rng(7)
    b = TraceBuilder()

    def nest(lo: int, hi: int, depth: int, pid: int, tid: int) -> None:
        t = lo
        while t < hi and rng.random() < 0.9:
            s = t + int(rng.integers(0, 3))
            e = min(hi, s + int(rng.integers(0, max(2, (hi - lo) // 2))))
            if e < s:
                return
            if rng.random() < 0.6:
                b.op(f"op{depth}", s, e - s, pid=pid, tid=tid)
            else:
                b._x("user_annotation", f"ann{depth}", s, e - s, pid=pid, tid=tid, args={})
            if depth < 4:
                nest(s, e, depth + 1, pid, tid)
            t = e

    threads = [(1000 + k % 2, 10 + k) for k in range(12)]
    for pid, tid in threads:
        nest(0, 400, 0, pid, tid)
    b.op("outer", 480, 60, pid=threads[0][0], tid=threads[0][1])
    for _ in range(200):  # past them the walk climbs 200 ops; inside, 200 annotations
        b.op("aten::add", 500, 10, pid=threads[0][0], tid=threads[0][1])
        b._x("user_annotation", "ann", 515, 10, pid=threads[0][0], tid=threads[0][1], args={})
    t = b.to_trace()
    et = t.event_table
    n = 400
    pick = rng.integers(0, len(threads) + 1, n)  # the last: a thread with no events
    pid = np.array([threads[k][0] if k < len(threads) else 7 for k in pick], dtype=np.int64)
    tid = np.array([threads[k][1] if k < len(threads) else 7 for k in pick], dtype=np.int64)
    when = rng.integers(-1, 520, n) * US + rng.choice([0, 0, 1, 999], n)
    pid[:20], tid[:20], when[:20] = threads[0][0], threads[0][1], rng.integers(499, 530, 20) * US
    ts, end = et["ts_ns"], et["ts_ns"] + et["dur_ns"]
    is_op = et["kind"] == "cpu_op"
    want = []
    for p, q, w in zip(pid, tid, when, strict=True):
        hit = np.flatnonzero((et["pid"] == p) & (et["tid"] == q) & is_op & (ts <= w) & (w < end))
        want.append(int(hit.max()) if len(hit) else -1)
    assert sum(w >= 0 for w in want) > n // 3
    assert innermost_op_rows(et, pid, tid, when).tolist() == want
    assert innermost_op_rows(t.events, pid, tid, when).tolist() == want
