"""Recompute inside torch.compile'd backward graphs on synthetic traces: matching the
capture's compile record to the ``## Call CompiledFxGraph`` children, gaps (C++ kernels
without events), fused kernels, missing events, unknown graphs, GPU attribution, and
the invariants of the stretches. Builder times are microseconds (x1000 = ns)."""

from __future__ import annotations

import gzip
import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.builders import TraceBuilder

from ckprof.analysis import analyze
from ckprof.analysis.attribution import attribute_time
from ckprof.analysis.compiled_recompute import find_compiled_recompute
from ckprof.analysis.phases import find_phases
from ckprof.trace.load import load_trace

US = 1000
KEY = "fk3q7compiledbackwardkey0001"

# calls of the compiled backward graph, in code order (see ckprof/capture/compiled.py)
CALLS = [
    ["aten::addmm", "extern", "r", 0, 1, 0],   # 0: event 30-80      blocks.0 recompute
    ["", "cpp", "r", 0, 3, 0],                 # 1: no event (gap 80-100)
    ["aten::addmm", "extern", "r", 0, 1, 0],   # 2: event 100-150
    ["", "cpp", "m", 0, 2, 3],                 # 3: no event (gap 150-170): fused
    ["aten::mm", "extern", "b", -1, 0, 1],     # 4: event 170-220    backward
    ["aten::addmm", "extern", "r", 1, 1, 0],   # 5: event 230-260    blocks.1 recompute
    ["", "cpp", "r", 1, 5, 0],                 # 6: no event (gap 260-300)
    ["aten::mm", "extern", "b", -1, 0, 1],     # 7: event 300-350
    ["", "cpp", "b", -1, 0, 1],                # 8: no event (gap 350-580): backward
]
#: the events the generated code makes for CALLS (offsets from the ## Call start)
CHILDREN = [("aten::addmm", 30, 50), ("aten::addmm", 100, 50), ("aten::mm", 170, 50),
            ("aten::addmm", 230, 30), ("aten::mm", 300, 50)]
REGIONS = ["blocks.0", "blocks.1"]


def record(calls=CALLS, regions=REGIONS, **extra):
    return {"source": "compiled", "graph_id": 0, "kernel_profile": False,
            "regions": list(regions), "calls": [list(c) for c in calls], **extra}


def metadata(graphs=None, unknown=()):
    return {"ckprof_version": "0.1.0", "markers": True,
            "compiled": {"watched": True, "graphs": graphs if graphs is not None
                         else {KEY: record()}, "unknown": list(unknown), "errors": []}}


def compiled_step(b: TraceBuilder, n: int, t0: float, *, key: str | None = KEY,
                  children=CHILDREN, call_dur: float = 600) -> TraceBuilder:
    """A step: forward 0-250, compiled backward 300-920 whose ## Call starts at 310."""
    b.step(n, t0, 1000).marker("forward", t0, 250).marker("backward", t0 + 300, 620)
    b.evaluate("CompiledFunctionBackward", t0 + 302, 615)
    if key is not None:
        call = t0 + 310
        b.op(f"## Call CompiledFxGraph {key} ##", call, call_dur)
        for name, off, dur in children:
            b.op(name, call + off, dur)
    return b


def recompute_by_region(pt):
    seg = pt.segments[pt.segments["phase"] == "recompute"]
    return ((seg["end_ns"] - seg["start_ns"]).groupby(seg["region"]).sum() // US).to_dict()


# --------------------------------------------------------------------------- matching

def test_pure_recompute_calls_and_their_gaps_are_recompute_fused_ones_are_not():
    # GIVEN two steps of a compiled backward whose record marks calls 0-2 and 5-6 as
    # recompute (C++ kernels 1 and 6 have no event of their own) and call 3 as fused
    b = TraceBuilder().meta(ckprof=metadata())
    compiled_step(b, 1, 0)
    compiled_step(b, 2, 1000)
    # WHEN phases are found
    pt = find_phases(b.to_trace())
    # THEN blocks.0 covers addmm .. addmm (30-150 = 120 us), blocks.1 addmm + the C++
    # kernel after it (230-300 = 70 us), per step; the fused gap stays backward
    assert pt.recompute_found_by == "compiled"
    assert recompute_by_region(pt) == {"blocks.0": 240, "blocks.1": 140}
    assert sorted(pt.recompute["region"]) == ["blocks.0", "blocks.0", "blocks.1", "blocks.1"]
    assert set(pt.recompute["method"]) == {"compiled"}
    rec = pt.compiled
    assert rec.status == "separated"
    fused = rec.fused.assign(d=(rec.fused["end_ns"] - rec.fused["start_ns"]) // US)
    assert fused["d"].tolist() == [20, 20]
    assert rec.to_dict()["fused_wall_ms"] == pytest.approx(0.040)
    assert rec.to_dict()["kernel_events_found"] == rec.to_dict()["kernel_events_expected"] == 10
    # the backward mm events never lie in recompute
    _, phase, _ = pt.lookup(np.array([310 + 170 + 10, 310 + 300 + 10]) * US)
    assert phase.tolist() == ["backward", "backward"]


def test_attribution_and_json_report_compiled_regions():
    b = TraceBuilder().meta(ckprof=metadata())
    compiled_step(b, 1, 0)
    a = analyze(b.to_trace())
    a.time.self_check()
    regions = {r["name"]: r for r in a.to_dict()["regions"]}
    assert regions["blocks.0"]["wall_ms"] == pytest.approx(0.120)
    assert regions["blocks.0"]["count"] == 1
    assert regions["blocks.1"]["wall_ms"] == pytest.approx(0.070)
    out = a.to_dict()["compiled_recompute"]
    assert out["status"] == "separated"
    assert out["recompute_wall_ms"] == pytest.approx(0.190)
    assert out["not_separable_wall_ms"] == 0.0


def test_a_missing_event_costs_only_its_neighbourhood_and_is_reported():
    # GIVEN the second addmm's event is missing from the trace
    b = TraceBuilder().meta(ckprof=metadata())
    compiled_step(b, 1, 0, children=[c for i, c in enumerate(CHILDREN) if i != 1])
    pt = find_phases(b.to_trace())
    # THEN matching resyncs on the next events: blocks.0 keeps only its first addmm,
    # the unmatched stretch (recompute + fused calls) counts as fused, blocks.1 is intact
    assert recompute_by_region(pt) == {"blocks.0": 50, "blocks.1": 70}
    assert pt.compiled.status == "partial"
    assert any("1 of 5 expected kernel events" in n for n in pt.notes)


def test_record_with_kernel_profile_names_matches_cpp_kernel_ranges():
    # GIVEN cpp.enable_kernel_profile was on: C++ kernels are ranges named graph_<id>_<k>
    calls = [["aten::addmm", "extern", "r", 0, 1, 0],
             ["graph_0_cpp_fused_gelu_0", "cpp", "r", 0, 5, 0],
             ["graph_0_cpp_fused_gelu_backward_1", "cpp", "m", 0, 2, 4],
             ["aten::mm", "extern", "b", -1, 0, 1]]
    children = [("aten::addmm", 10, 40), ("graph_0_cpp_fused_gelu_0", 60, 20),
                ("graph_0_cpp_fused_gelu_backward_1", 90, 30), ("aten::mm", 130, 50)]
    b = TraceBuilder().meta(ckprof=metadata({KEY: record(calls, ["blocks.0"])}))
    compiled_step(b, 1, 0, children=children)
    pt = find_phases(b.to_trace())
    # THEN the Python gap between the two recompute calls is recompute too (like a
    # marker range), the fused kernel's own range is fused
    assert recompute_by_region(pt) == {"blocks.0": 70}
    f = pt.compiled.fused
    assert ((f["start_ns"] // US).tolist(), (f["end_ns"] // US).tolist()) == ([400], [430])


# ------------------------------------------------------------------- not separable

def test_compiled_backward_without_a_record_is_reported_not_separable_never_zero():
    # GIVEN the graph key in the trace is not in the capture's record
    b = TraceBuilder().meta(ckprof=metadata({"fother0000000000key": record()}))
    compiled_step(b, 1, 0)
    a = analyze(b.to_trace())
    # THEN no recompute is invented, and the report says why and what to do instead
    assert a.recompute_detection == "none"
    out = a.to_dict()["compiled_recompute"]
    assert out["status"] == "not_separable"
    assert out["not_separable_wall_ms"] == pytest.approx(0.615, abs=1e-5)  # the node record
    assert out["unknown_graphs"] == [KEY]
    assert out["not_separable_gpu_ms"] is None  # a CPU trace: no GPU figure, not 0
    note = next(n for n in a.notes if "not separable" in n)
    assert "CompiledFunctionBackward" in note and "ckprof compare" in note
    assert "did not see those graphs being compiled" in note


def test_old_torch_trace_without_graph_calls_and_without_metadata_is_not_separable():
    # GIVEN a plain trace (no ckprof metadata) from a torch that prints no ## Call range
    b = TraceBuilder()
    compiled_step(b, 1, 0, key=None)
    pt = find_phases(b.to_trace())
    assert pt.compiled.status == "not_separable"
    assert any("no ckprof record" in n for n in pt.notes)


def test_partial_when_one_of_two_graphs_is_known():
    b = TraceBuilder().meta(ckprof=metadata())
    compiled_step(b, 1, 0)
    compiled_step(b, 2, 1000, key="funknown00000000key")
    pt = find_phases(b.to_trace())
    assert pt.compiled.status == "partial"
    assert recompute_by_region(pt) == {"blocks.0": 120, "blocks.1": 70}
    assert pt.compiled.to_dict()["backward_calls"] == 2


def test_no_compiled_backward_means_status_none_and_no_notes():
    b = TraceBuilder().step(1, 0, 1000).marker("forward", 0, 400).marker("backward", 400, 500)
    pt = find_phases(b.to_trace())
    assert pt.compiled.status == "none"
    assert pt.compiled.to_dict()["backward_calls"] == 0
    assert not any("torch.compile" in n for n in pt.notes)


def test_detection_none_ignores_compiled_records():
    b = TraceBuilder().meta(ckprof=metadata())
    compiled_step(b, 1, 0)
    pt = find_phases(b.to_trace(), recompute_detection="none")
    assert pt.recompute.empty and pt.compiled.status == "none"


def test_explicit_compiled_detection_and_combination_with_eager_markers():
    b = TraceBuilder().meta(ckprof=metadata())
    compiled_step(b, 1, 0)
    # an eager (not compiled) checkpointed region recomputed in the same backward
    b.marker("recompute:head", 920, 30)
    trace = b.to_trace()
    both = find_phases(trace)
    assert both.recompute_found_by == "markers+compiled"
    assert set(both.recompute["method"]) == {"markers", "compiled"}
    only = find_phases(trace, recompute_detection="compiled")
    assert only.recompute_found_by == "compiled"
    assert set(only.recompute["region"]) == {"blocks.0", "blocks.1"}


# ----------------------------------------------------------------- caches off (no key)

def test_graph_cache_off_calls_are_matched_to_keyless_records_by_kernel_sequence():
    other = [["aten::bmm", "extern", "r", 0, 1, 0], ["aten::bmm", "extern", "b", -1, 0, 1]]
    graphs = {"nokey-1": record(other, ["attn"], keyless=True),
              "nokey-2": record(keyless=True)}
    b = TraceBuilder().meta(ckprof=metadata(graphs))
    compiled_step(b, 1, 0, key="None")
    pt = find_phases(b.to_trace())
    assert recompute_by_region(pt) == {"blocks.0": 120, "blocks.1": 70}
    assert any("FX graph cache off" in n for n in pt.notes)


# ------------------------------------------------------------------------------- GPU

def test_gpu_kernels_launched_in_compiled_recompute_are_recompute_gpu_time():
    # GIVEN a compiled backward on GPU: extern addmm (recompute) and a Triton kernel
    # (recompute) launched from their CPU ranges, then backward and fused kernels
    calls = [["aten::addmm", "extern", "r", 0, 1, 0],
             ["triton_poi_fused_gelu_0", "triton", "r", 0, 4, 0],
             ["aten::mm", "extern", "b", -1, 0, 1],
             ["triton_poi_fused_gelu_backward_1", "triton", "m", 0, 2, 4]]
    b = TraceBuilder().meta(ckprof=metadata({KEY: record(calls, ["layers.0"])}))
    b.step(1, 0, 1000).marker("forward", 0, 250).marker("backward", 300, 620)
    b.evaluate("CompiledFunctionBackward", 302, 615)
    b.op(f"## Call CompiledFxGraph {KEY} ##", 310, 600)
    for name, ts, kdur in (("aten::addmm", 320, 40), ("triton_poi_fused_gelu_0", 340, 10),
                           ("aten::mm", 360, 50), ("triton_poi_fused_gelu_backward_1", 380, 12)):
        b.op(name, ts, 8)
        b.launch(ts=ts + 2, dur=4, kernel=f"k_{name}", kernel_ts=ts + 500, kernel_dur=kdur)
    trace = b.to_trace()
    pt = find_phases(trace)
    t = attribute_time(trace, pt)
    t.self_check()
    # THEN the recompute region's GPU time is the two recompute kernels (40 + 10 us),
    # although they ran long after the CPU moved on
    reg = t.regions.set_index("region")
    assert reg.loc["layers.0", "gpu_ns"] == 50 * US
    by = t.by_step.set_index("phase")
    assert by.loc["recompute", "gpu_ns"] == 50 * US
    assert by.loc["backward", "gpu_ns"] == (50 + 12) * US
    # AND the fused Triton kernel's GPU time is reported apart
    assert pt.compiled.to_dict()["fused_gpu_ms"] == pytest.approx(0.012)
    assert pt.compiled.to_dict()["not_separable_gpu_ms"] == 0.0


# ------------------------------------------------------------------------- invariants

CLASSES = st.sampled_from(["r", "r", "m", "b", "v"])


@st.composite
def compiled_cases(draw):
    n = draw(st.integers(1, 25))
    calls, children, t = [], [], 5
    for i in range(n):
        cls = draw(CLASSES)
        region = draw(st.integers(0, 2)) if cls in ("r", "m") else -1
        visible = draw(st.booleans())
        name = f"aten::op{draw(st.integers(0, 3))}" if visible else ""
        calls.append([name, "extern" if visible else "cpp", cls, region, 1, 1])
        gap = draw(st.integers(0, 20))
        dur = draw(st.integers(1, 30))
        t += gap
        if visible and draw(st.integers(0, 9)) != 0:  # ~10% of events missing
            children.append((name, t, dur, i))
        t += dur
    # events the record does not expect (allocations, copies): never matched
    extra = draw(st.lists(st.integers(0, max(t - 1, 0)), max_size=3))
    return calls, children, extra, t + 5


@given(compiled_cases())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_recompute_stretches_are_inside_the_call_and_never_cover_backward_events(case):
    calls, children, extra, span = case
    b = TraceBuilder().meta(ckprof=metadata({KEY: record(calls, ["a", "b", "c"])}))
    b.step(1, 0, span + 400).marker("backward", 10, span + 300)
    b.evaluate("CompiledFunctionBackward", 20, span + 200)
    b.op(f"## Call CompiledFxGraph {KEY} ##", 30, span)
    for name, off, dur, _ in children:
        b.op(name, 30 + off, dur)
    for off in extra:
        b.op("aten::empty_strided", 30 + off, 0.5)
    res = find_compiled_recompute(b.to_trace(), find_phases(b.to_trace()).steps)
    stretches = sorted([(r.start_ns, r.end_ns, "recompute") for r in res.pieces.itertuples()]
                       + [(r.start_ns, r.end_ns, "fused") for r in res.fused.itertuples()])
    lo, hi = 30 * US, (30 + span) * US
    for s, e, _ in stretches:
        assert lo <= s < e <= hi
    for (_, e, _), (s_next, _, _) in itertools.pairwise(stretches):
        assert e <= s_next, "stretches overlap"
    missing = sum(1 for c in calls if c[0]) - len(children)
    if missing:
        # a missing event may shift matching until the next distinct name: said so
        assert res.status == "partial"
        return
    # with every expected event present, a backward-only call's event is never recompute
    assert res.status == "separated"
    pieces = [(r.start_ns, r.end_ns) for r in res.pieces.itertuples()]
    matched_b = [(30 + off) * US for name, off, dur, i in children if calls[i][2] in ("b", "v")]
    for t in matched_b:
        assert not any(s <= t < e for s, e in pieces)
    # and a recompute call's event always is (alone or with its gap neighbours)
    matched_r = [((30 + off) * US, (30 + off + dur) * US) for name, off, dur, i in children
                 if calls[i][2] == "r"]
    for s0, e0 in matched_r:
        assert any(s <= s0 and e0 <= e for s, e in pieces)


# ----------------------------------------------------------------- a real GPU trace

@pytest.mark.shared_traces
def test_public_compiled_trace_says_not_separable_with_its_cpu_and_gpu_time(shared_traces):
    # GIVEN a public torch.compile training trace (A100, no ckprof record, torch older
    # than the ## Call ranges)
    path = shared_traces / "a100_compiled_ws16_rank0.json.gz"
    a = analyze(load_trace(str(path)))
    out = a.to_dict()["compiled_recompute"]
    # THEN the compiled backward time is named, never a silent 0 recompute
    assert out["status"] == "not_separable"
    assert any("not separable" in n for n in a.notes)
    # cross-check: CompiledFunctionBackward durations and the GPU time they launched,
    # joined here from the raw JSON by correlation id
    with gzip.open(path, "rt") as fh:
        events = [e for e in json.load(fh)["traceEvents"] if e.get("ph") == "X"]
    steps = [(e["ts"], e["ts"] + e["dur"]) for e in events
             if str(e["name"]).startswith("ProfilerStep#")]
    bws = [e for e in events if e["name"] == "CompiledFunctionBackward"
           and any(s <= e["ts"] < t for s, t in steps)]
    assert out["backward_calls"] == len(bws) > 0
    assert out["not_separable_wall_ms"] == pytest.approx(sum(e["dur"] for e in bws) / 1e3,
                                                         abs=1e-3)
    launches = {e["args"]["correlation"] for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})
                and any(b["tid"] == e["tid"] and b["pid"] == e["pid"]
                        and b["ts"] <= e["ts"] < b["ts"] + b["dur"] for b in bws)}
    gpu_us = sum(e["dur"] for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
                 and e.get("args", {}).get("correlation") in launches)
    assert out["not_separable_gpu_ms"] == pytest.approx(gpu_us / 1e3, abs=1e-3)
    assert gpu_us > 0


def test_step_option_reports_compiled_figures_of_that_step_only():
    b = TraceBuilder().meta(ckprof=metadata())
    compiled_step(b, 1, 0)
    compiled_step(b, 2, 1000, key="funknown00000000key")
    trace = b.to_trace()
    one = analyze(trace, step=1).to_dict()["compiled_recompute"]
    two = analyze(trace, step=2).to_dict()["compiled_recompute"]
    assert (one["status"], one["backward_calls"], one["recompute_wall_ms"]) == (
        "separated", 1, pytest.approx(0.190))
    assert (two["status"], two["backward_calls"], two["recompute_wall_ms"]) == (
        "not_separable", 1, 0.0)


def test_step_option_keeps_only_that_steps_compiled_notes():
    """GIVEN two steps, the second's compiled backward not separable WHEN one step is
    analysed (--step) THEN the notes are that step's: step 1 has no 'not separable'
    note, step 2 has it; the whole trace has it too."""
    b = TraceBuilder().meta(ckprof=metadata())
    compiled_step(b, 1, 0)
    compiled_step(b, 2, 1000, key="funknown00000000key")
    trace = b.to_trace()

    def not_separable(a):
        return [n for n in a.to_dict()["notes"] if "not separable" in n]

    assert not_separable(analyze(trace))
    assert not_separable(analyze(trace, step=1)) == []
    assert not_separable(analyze(trace, step=2))


def test_launches_on_another_thread_with_a_colliding_packed_id_are_not_counted():
    """GIVEN a fused interval on (pid 1, tid 5) and a launch on (pid 0, tid 1000008) --
    the same number under a pid*1000003+tid packing -- WHEN the GPU time launched in the
    interval is summed THEN only the launch on the interval's own thread counts."""
    import pandas as pd

    from ckprof.analysis.compiled_recompute import _gpu_ns_launched_in

    ev = pd.DataFrame({
        "kind": pd.Categorical(["cpu_op", "runtime", "runtime", "kernel", "kernel"]),
        "pid": [1, 1, 0, 0, 0], "tid": [5, 5, 1_000_008, 7, 7],
        "ts_ns": [0, 10, 20, 100, 200], "dur_ns": [1000, 5, 5, 30, 50],
        "correlation": [-1, 1, 2, 1, 2]})
    assert _gpu_ns_launched_in(ev, [(0, 0, 1000)]) == 30.0
