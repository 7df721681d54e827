"""Property tests on random synthetic steps (hypothesis): random forward ops, backward
nodes with or without recomputed ops, random ckprof markers on several threads,
random kernels (some launched late, some unmatched), random memory events.

Invariants checked against brute-force references written as plain loops:
- phase wall times of each step add up to its duration; segments tile the steps;
- every GPU event launched inside a step is attributed exactly once, to the phase at
  its launch;
- recompute lies inside the backward window (first evaluate_function start -> last end);
- ``lookup`` agrees with a linear scan over the segments;
- peak memory per step x phase x device equals a linear scan (entering level included).
"""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.builders import EVAL_PREFIX, TraceBuilder
from support.reference import reference_segment_peaks

from ckprof.analysis.attribution import attribute_time
from ckprof.analysis.memory import peak_memory_by_phase
from ckprof.analysis.phases import find_phases

SETTINGS = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
STEP_US = 1000


@st.composite
def traces(draw):
    """A TraceBuilder with 1-3 random steps and the evaluate_function windows."""
    b = TraceBuilder()
    markers = draw(st.booleans())
    n_steps = draw(st.integers(1, 3))
    seq = iter(range(1, 10_000))
    corr = iter(range(1, 10_000))
    launches: list[tuple[int, int]] = []    # (runtime ts, correlation)
    t0 = draw(st.integers(0, 50))
    gap = draw(st.integers(0, 30))
    for k in range(n_steps):
        s = t0 + k * (STEP_US + gap)
        b.step(k + 1, s, STEP_US)
        # forward: 1-3 ops in [s+10, s+300)
        f_end = s + draw(st.integers(50, 300))
        if markers:
            b.marker("forward", s + 5, f_end - s - 5)
        x = s + 10
        for _ in range(draw(st.integers(1, 3))):
            d = draw(st.integers(1, 40))
            if x + d >= f_end:
                break
            b.op("aten::linear", x, d, seq=next(seq))
            if draw(st.booleans()):
                c = next(corr)
                launches.append((x, c))
                b.runtime("cudaLaunchKernel", x, min(d, 1), correlation=c)
                b.kernel("fwd_k", x + draw(st.integers(0, 2000)), draw(st.integers(1, 50)),
                         correlation=c)
            x += d + 1
        # backward: 1-4 nodes in [b0, ...)
        b0 = f_end + draw(st.integers(0, 50))
        if markers:
            b.marker("backward", b0 - 1, 500)
        x = b0
        for i in range(draw(st.integers(1, 4))):
            d = draw(st.integers(20, 100))
            bwd_tid = draw(st.sampled_from([None, 4242]))
            b.op(EVAL_PREFIX + f"N{i}Backward0", x, d, seq=next(seq), tid=bwd_tid)
            b.op(f"N{i}Backward0", x + 1, d - 2, seq=next(seq), tid=bwd_tid)
            if draw(st.booleans()):       # recompute inside this node
                r0, r1 = x + 2, x + 2 + draw(st.integers(2, d - 6))
                if markers:
                    b.marker(f"recompute:r{i}", r0, r1 - r0, tid=bwd_tid)
                b.op("aten::addmm", r0 + 0.5, max(r1 - r0 - 1, 0.5), seq=next(seq), tid=bwd_tid)
            if draw(st.booleans()):
                c = next(corr)
                launches.append((x + 1.5, c))
                b.runtime("cudaLaunchKernel", x + 1.5, 0.3, correlation=c, tid=bwd_tid)
                b.kernel("bwd_k", x + draw(st.integers(0, 900)), draw(st.integers(1, 80)),
                         correlation=c)
            x += d
        # optimizer
        o0 = x + draw(st.integers(0, 100))
        o1 = min(o0 + draw(st.integers(1, 200)), s + STEP_US - 1)
        if o1 > o0:
            if markers:
                b.marker("optimizer", o0, o1 - o0, tid=draw(st.sampled_from([None, 77])))
            else:
                b.annotation("Optimizer.step#SGD.step", o0, o1 - o0)
        # a stray user phase range on another thread
        if draw(st.booleans()):
            p0 = s + draw(st.integers(0, STEP_US - 10))
            b.marker("ckprof::phase::data", p0, draw(st.integers(1, 300)), tid=99)
        # an unmatched kernel
        if draw(st.booleans()):
            b.kernel("orphan", s + draw(st.integers(0, STEP_US)), 7)
    # memory: random CPU and CUDA events across the whole range
    tot = {"cpu": 0, "cuda:0": 10_000}
    for _ in range(draw(st.integers(0, 25))):
        dev = draw(st.sampled_from(["cpu", "cuda:0"]))
        n = draw(st.integers(-tot[dev], 5000))
        tot[dev] += n
        b.memory(draw(st.integers(0, n_steps * (STEP_US + gap) + 100)), bytes=n,
                 total_allocated=tot[dev], device=dev)
    b.meta(ckprof={"memory_baseline": {"cpu": {"bytes": 123, "counter_absolute": False}}})
    return b


def brute_lookup(segments, t):
    for r in segments:
        if r[3] <= t < r[4]:
            return r[0], r[1], r[2]
    return -1, "other", ""


@SETTINGS
@given(traces(), st.lists(st.integers(-100, 4000), min_size=1, max_size=30))
def test_invariants_on_random_steps(b, probes_us):
    """GIVEN random steps (markers or not, kernels, memory) WHEN all three stages run
    THEN every invariant of the module docstring holds against its brute-force
    reference (one generated trace feeds all checks, to keep the test fast)."""
    t = b.to_trace()
    pt = find_phases(t)
    check_tiling_lookup_and_recompute_window(t, pt, probes_us)
    check_gpu_events_attributed_once_at_their_launch(t, pt)
    check_memory_peaks_equal_linear_scan(t, pt)


def check_tiling_lookup_and_recompute_window(t, pt, probes_us):
    """Segments tile every step exactly, lookup equals a linear scan, and recompute
    lies inside the backward window."""
    segs = list(pt.segments[["step", "phase", "region", "start_ns", "end_ns"]].itertuples(
        index=False, name=None))
    for s in pt.steps.itertuples():
        mine = [r for r in segs if r[0] == s.step]
        assert mine[0][3] == s.start_ns and mine[-1][4] == s.end_ns
        assert all(a[4] == c[3] for a, c in itertools.pairwise(mine))
        assert sum(r[4] - r[3] for r in mine) == s.end_ns - s.start_ns
    probes = np.array(probes_us, dtype=np.int64) * 1000 + 7
    probes = np.concatenate([probes, pt.segments["start_ns"].to_numpy(),
                             pt.segments["end_ns"].to_numpy()])
    step, phase, region = pt.lookup(probes)
    for i, p in enumerate(probes.tolist()):
        assert (step[i], phase[i], region[i]) == brute_lookup(segs, p)
    ev = t.events
    is_eval = ev["name"].astype(str).str.startswith(EVAL_PREFIX)
    evs = ev[is_eval]
    for r in segs:
        if r[1] != "recompute":
            continue
        s = pt.steps[pt.steps["step"] == r[0]].iloc[0]
        inside = evs[(evs["ts_ns"] >= s.start_ns) & (evs["ts_ns"] < s.end_ns)]
        assert inside["ts_ns"].min() <= r[3]
        assert r[4] <= (inside["ts_ns"] + inside["dur_ns"]).max()


def check_gpu_events_attributed_once_at_their_launch(t, pt):
    """The GPU events counted are exactly those whose launch (or own start, when
    unmatched) is inside a step, each once, with the phase at that time."""
    a = attribute_time(t, pt)
    a.self_check()
    ev = t.events
    segs = list(pt.segments[["step", "phase", "region", "start_ns", "end_ns"]].itertuples(
        index=False, name=None))
    launch = {}
    for r in ev[ev["kind"].astype(str) == "runtime"].itertuples():
        if r.correlation >= 0 and r.correlation not in launch:
            launch[r.correlation] = r.ts_ns
    want = {}
    for i, r in ev[ev["kind"].astype(str).isin(["kernel", "gpu_memcpy", "gpu_memset"])].iterrows():
        at = launch.get(r["correlation"], r["ts_ns"])
        step, phase, region = brute_lookup(segs, at)
        if step >= 0:
            want[i] = (step, phase, region)
    got = {r.event: (r.step, r.phase, r.region) for r in a.gpu_events.itertuples()}
    assert got == want
    assert a.by_step["wall_ns"].sum() == int((pt.steps["end_ns"] - pt.steps["start_ns"]).sum())


def check_memory_peaks_equal_linear_scan(t, pt):
    """Each peak equals the maximum over the phase's segments of (events inside, the
    level entering the segment), first time on ties; CPU levels include the baseline."""
    m = peak_memory_by_phase(t, pt)
    if len(t.memory) == 0:
        assert not m.captured and m.peaks.empty
        return
    levels = {}
    for r in m.timeline.itertuples():
        levels.setdefault(r.device, []).append((r.ts_ns, r.allocated_bytes))
    segs = pt.segments[["step", "phase", "start_ns", "end_ns"]].itertuples(index=False, name=None)
    want = reference_segment_peaks(levels, segs)
    got = {(r.step, r.phase, r.device): (r.peak_bytes, r.at_ts_ns) for r in m.peaks.itertuples()}
    assert got == want
    # the CPU level includes the recorded baseline
    cpu = [v for ts, v in levels.get("cpu", [])]
    if cpu:
        first = t.memory[t.memory["device"].astype(str) == "cpu"].iloc[0]
        assert cpu[0] == 123 + first["bytes"]


# ---------------------------------------------------------------------------------
# time shift: absolute clocks (epoch ns, above 2**53) change nothing but the clock
# ---------------------------------------------------------------------------------

_SHIFT_NS = 2**60  # float64 holds multiples of 256 ns here: any float round trip shows


def _shifted(trace, offset_ns: int):
    """``trace`` with every timestamp moved by ``offset_ns``."""
    import dataclasses

    ev, mem = trace.event_table, trace.memory_table
    return dataclasses.replace(
        trace, event_table=ev.assign(ts_ns=np.asarray(ev["ts_ns"]) + offset_ns),
        memory_table=mem.assign(ts_ns=np.asarray(mem["ts_ns"]) + offset_ns))


def _shift_traces():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return sorted([*root.glob("traces/examples/*.json.gz"),
                   *root.glob("tests/data/gpu/h200/*.pt.trace.json.gz")])


def test_shifting_the_clock_shifts_every_figure_by_exactly_that(tmp_path):
    """GIVEN real CPU and GPU traces (eager, compiled, reentrant, SAC; markers and plain)
    WHEN every timestamp is moved by 2**60 ns (an absolute clock far above 2**53, where
    float64 cannot hold every ns) THEN, with every recompute-detection method, the steps,
    segments and recompute occurrences move by exactly 2**60 ns and the time per phase,
    per region and the memory peaks do not change."""
    from test_compiled_recompute import compiled_step, metadata

    from ckprof.errors import NotCapturedError
    from ckprof.trace.load import load_trace

    compiled = TraceBuilder().meta(ckprof=metadata())  # compiled recompute, separated
    compiled_step(compiled, 1, 0)
    compiled_step(compiled, 2, 1000)
    paths = _shift_traces()
    assert paths, "no example traces"
    for path, trace in [(p, load_trace(p)) for p in paths] + [
            (tmp_path / "compiled_builder", compiled.to_trace())]:
        moved = _shifted(trace, _SHIFT_NS)
        for method in ("auto", "markers", "stack", "sequence", "compiled", "none"):
            try:
                a = find_phases(trace, recompute_detection=method)
            except NotCapturedError:
                continue
            b = find_phases(moved, recompute_detection=method)
            for name in ("steps_table", "segments_table", "recompute_table"):
                x, y = getattr(a, name), getattr(b, name)
                assert x.columns == y.columns, (path.name, method, name)
                for col in x.columns:
                    want = x[col] + _SHIFT_NS if col in ("start_ns", "end_ns") else x[col]
                    assert np.array_equal(y[col], want), (path.name, method, name, col)
            ta, tb = attribute_time(trace, a), attribute_time(moved, b)
            for name in ("by_step_table", "regions_table"):
                for col in getattr(ta, name).columns:
                    assert np.array_equal(getattr(ta, name)[col], getattr(tb, name)[col],
                                          equal_nan=getattr(ta, name)[col].dtype.kind == "f"), \
                        (path.name, method, name, col)
            pa, pb = peak_memory_by_phase(trace, a), peak_memory_by_phase(moved, b)
            assert pa.peaks_table["peak_bytes"].tolist() == pb.peaks_table["peak_bytes"].tolist()
