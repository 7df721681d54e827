"""find_phases on synthetic traces: steps, phase rules, marker precedence, recompute
detection (markers / stack / sequence), lookup. Times in the builder are microseconds;
the PhaseTable is in nanoseconds (x1000)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.builders import EVAL_PREFIX, TraceBuilder

from ckprof.analysis.phases import find_phases
from ckprof.errors import CkprofError, EmptyTraceError, NotCapturedError

US = 1000


def seg_list(pt, step=None):
    seg = pt.segments if step is None else pt.segments[pt.segments["step"] == step]
    return [(r.phase, r.region, r.start_ns // US, r.end_ns // US) for r in seg.itertuples()]


def assert_tiles(pt):
    for st in pt.steps.itertuples():
        seg = pt.segments[pt.segments["step"] == st.step]
        assert seg["start_ns"].iloc[0] == st.start_ns
        assert seg["end_ns"].iloc[-1] == st.end_ns
        assert (seg["start_ns"].to_numpy()[1:] == seg["end_ns"].to_numpy()[:-1]).all()
        assert int((seg["end_ns"] - seg["start_ns"]).sum()) == st.end_ns - st.start_ns


def plain_step(b: TraceBuilder, n: int, t0: float) -> TraceBuilder:
    """zero_grad, forward ops, backward (2 nodes), optimizer; 1000 us per step."""
    return (b.step(n, t0, 1000)
            .annotation("Optimizer.zero_grad#AdamW.zero_grad", t0 + 10, 20)
            .op("aten::linear", t0 + 50, 200, seq=1)
            .evaluate("AddmmBackward0", t0 + 400, 100, seq=1)
            .evaluate("torch::autograd::AccumulateGrad", t0 + 520, 30)
            .annotation("Optimizer.step#AdamW.step", t0 + 700, 200))


def test_plain_rules_split_each_step_exactly():
    """GIVEN a plain two-step trace WHEN phases are found THEN forward runs from the
    step start to the first evaluate_function, backward to the last one's end,
    optimizer annotations are optimizer (zero_grad first too), the rest other."""
    b = TraceBuilder()
    plain_step(b, 1, 0)
    plain_step(b, 2, 1000)
    pt = find_phases(b.to_trace())
    assert pt.phase_source == "rules"
    assert pt.steps["step"].tolist() == [1, 2]
    assert seg_list(pt, 1) == [
        ("forward", "", 0, 10), ("optimizer", "", 10, 30), ("forward", "", 30, 400),
        ("backward", "", 400, 550), ("other", "", 550, 700), ("optimizer", "", 700, 900),
        ("other", "", 900, 1000)]
    assert_tiles(pt)
    assert pt.recompute_found_by == "none"


def test_no_profiler_step_gives_step_zero_over_cpu_events():
    """GIVEN no ProfilerStep annotation WHEN phases are found THEN one step 0 spans the
    CPU events (GPU events that run later do not extend it) and a note says so."""
    b = (TraceBuilder().op("aten::mm", 100, 50)
         .launch(ts=110, kernel_ts=300, kernel_dur=500))
    pt = find_phases(b.to_trace())
    assert pt.steps.to_dict("records") == [{"step": 0, "start_ns": 100 * US, "end_ns": 150 * US}]
    assert any("step 0" in n for n in pt.notes)


def test_overlapping_steps_are_cut_at_next_start():
    """GIVEN ProfilerStep ranges that overlap WHEN phases are found THEN each step ends
    where the next starts, with a note, and the segments still tile each step."""
    b = TraceBuilder().step(1, 0, 600).step(2, 500, 500).op("aten::mm", 10, 10)
    pt = find_phases(b.to_trace())
    assert pt.steps["end_ns"].tolist() == [500 * US, 1000 * US]
    assert any("overlap" in n for n in pt.notes)
    assert_tiles(pt)


def test_empty_trace_raises():
    """GIVEN a trace without complete events WHEN phases are found THEN EmptyTraceError."""
    with pytest.raises(EmptyTraceError):
        find_phases(TraceBuilder().memory(1, bytes=4, total_allocated=4).to_trace())


def test_bad_method_raises_typed_error():
    """GIVEN an unknown recompute_detection WHEN called THEN a CkprofError names it."""
    b = plain_step(TraceBuilder(), 1, 0)
    with pytest.raises(CkprofError, match="bogus"):
        find_phases(b.to_trace(), recompute_detection="bogus")


def marker_step(b: TraceBuilder, n: int, t0: float, *, bwd_tid: int | None = None):
    """A ckprof-marked step with one recompute of region r0 inside backward."""
    b.step(n, t0, 1000)
    b.marker("zero_grad", t0 + 5, 10)
    b.marker("forward", t0 + 20, 300)
    b.marker("checkpoint:r0", t0 + 50, 100)
    b.op("aten::linear", t0 + 60, 80, seq=1)
    b.marker("backward", t0 + 350, 350)
    b.evaluate("AddmmBackward0", t0 + 400, 200, seq=1, tid=bwd_tid)
    b.marker("recompute:r0", t0 + 420, 100, tid=bwd_tid)
    b.op("aten::linear", t0 + 430, 80, seq=9, tid=bwd_tid)
    b.marker("optimizer", t0 + 750, 200)
    return b


def test_markers_innermost_wins_and_recompute_is_carved_out():
    """GIVEN ckprof markers WHEN phases are found THEN marker ranges set the phases,
    recompute is cut out of backward, and gaps between markers are other."""
    pt = find_phases(marker_step(TraceBuilder(), 1, 0).to_trace())
    assert pt.phase_source == "markers" and pt.recompute_found_by == "markers"
    assert seg_list(pt) == [
        ("other", "", 0, 5), ("optimizer", "", 5, 15), ("other", "", 15, 20),
        ("forward", "", 20, 320), ("other", "", 320, 350), ("backward", "", 350, 420),
        ("recompute", "r0", 420, 520), ("backward", "", 520, 700), ("other", "", 700, 750),
        ("optimizer", "", 750, 950), ("other", "", 950, 1000)]
    assert pt.recompute[["step", "region", "method"]].to_dict("records") == [
        {"step": 1, "region": "r0", "method": "markers"}]


def test_markers_on_other_thread_recompute_beats_backward():
    """GIVEN backward nodes and the recompute marker on the autograd thread (CUDA)
    while ckprof::backward is on the main thread WHEN phases are found THEN the
    recompute still wins over backward, across threads."""
    pt = find_phases(marker_step(TraceBuilder(), 1, 0, bwd_tid=2222).to_trace())
    assert ("recompute", "r0", 420, 520) in seg_list(pt)


def test_cross_thread_overlap_uses_priority():
    """GIVEN ranges on two threads overlapping in time (forward on one, optimizer on
    another) WHEN phases are found THEN optimizer wins over forward where they overlap,
    whichever started later; on one thread the innermost wins."""
    b = (TraceBuilder().step(1, 0, 1000)
         .marker("optimizer", 100, 300, tid=7)
         .marker("forward", 200, 400)
         .marker("ckprof::phase::data", 650, 50)        # other, innermost on main thread
         .marker("backward", 600, 200))
    pt = find_phases(b.to_trace())
    assert seg_list(pt) == [
        ("other", "", 0, 100), ("optimizer", "", 100, 400), ("forward", "", 400, 600),
        ("backward", "", 600, 650), ("other", "", 650, 700), ("backward", "", 700, 800),
        ("other", "", 800, 1000)]


def test_user_phase_marker_named_like_a_phase():
    """GIVEN ckprof::phase::optimizer and ckprof::phase::zero_grad ranges in a plain
    trace WHEN phases are found THEN they count as optimizer (over the rule windows)."""
    b = plain_step(TraceBuilder(), 1, 0).marker("ckprof::phase::zero_grad", 300, 50)
    pt = find_phases(b.to_trace())
    assert ("optimizer", "", 300, 350) in seg_list(pt)


def test_dataloader_is_other_not_forward():
    """GIVEN an enumerate(DataLoader) annotation at the start of a plain step WHEN
    phases are found THEN that time is other, the rest up to backward is forward."""
    b = plain_step(TraceBuilder(), 1, 0).annotation(
        "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", 35, 10)
    assert seg_list(find_phases(b.to_trace()))[2:5] == [
        ("forward", "", 30, 35), ("other", "", 35, 45), ("forward", "", 45, 400)]


def test_legacy_backward_nodes_without_evaluate_function():
    """GIVEN a torch<1.10 style trace (Operator category, backward nodes by name, no
    evaluate_function) WHEN phases are found THEN backward spans the node ops."""
    b = TraceBuilder()
    b.op("ProfilerStep#3", 0, 1000, cat="Operator")
    b.op("aten::conv2d", 10, 100, cat="Operator")
    b.op("CudnnConvolutionBackward", 300, 100, cat="Operator")
    b.op("aten::cudnn_convolution_backward", 310, 80, cat="Operator")
    b.op("torch::autograd::AccumulateGrad", 420, 10, cat="Operator")
    b.op("Optimizer.step#SGD.step", 600, 100, cat="Operator")
    pt = find_phases(b.to_trace())
    assert pt.steps["step"].tolist() == [3]
    assert seg_list(pt) == [("forward", "", 0, 300), ("backward", "", 300, 430),
                            ("other", "", 430, 600), ("optimizer", "", 600, 700),
                            ("other", "", 700, 1000)]


# ---- recompute detection without markers -------------------------------------------

def nonreentrant_backward(b: TraceBuilder, t0: float, node_seq: int, seq0: int):
    """evaluate_function: AddmmBackward0 > AddmmBackward0 > [linear > t, addmm], relu,
    linear (recomputed forward, with seq) then formula ops (no seq)."""
    b.op(EVAL_PREFIX + "AddmmBackward0", t0, 300, seq=node_seq)
    b.op("AddmmBackward0", t0 + 1, 290, seq=node_seq)
    b.op("aten::linear", t0 + 10, 50, seq=seq0)
    b.op("aten::t", t0 + 11, 5, seq=seq0)
    b.op("aten::addmm", t0 + 20, 30, seq=seq0 + 1)
    b.op("aten::relu", t0 + 70, 20, seq=seq0 + 2)
    b.op("aten::linear", t0 + 100, 60, seq=seq0 + 3)
    b.op("aten::mm", t0 + 200, 40)                       # backward formula: no seq
    return b


def test_sequence_detects_nonreentrant_recompute_and_merges_per_node():
    """GIVEN recomputed forward ops (with seq) under a backward node WHEN sequence
    detection runs THEN they merge into one occurrence from the first start to the
    last end, named after the node; the node's own record (seq) is not recompute."""
    b = TraceBuilder().step(1, 0, 1000).op("aten::linear", 10, 50, seq=1)
    nonreentrant_backward(b, 100, node_seq=5, seq0=20)
    pt = find_phases(b.to_trace(), recompute_detection="sequence")
    assert pt.recompute_found_by == "sequence"
    assert pt.recompute[["region", "start_ns", "end_ns"]].to_dict("records") == [
        {"region": "recompute@AddmmBackward0", "start_ns": 110 * US, "end_ns": 260 * US}]
    assert ("recompute", "recompute@AddmmBackward0", 110, 260) in seg_list(pt)


def test_sequence_handles_reentrant_nested_engine_run():
    """GIVEN reentrant checkpoint: CheckpointFunctionBackward holds the recompute, then
    a nested engine run whose node records carry seq WHEN sequence detection runs THEN
    only the recomputed ops count (the nested node records are not recompute)."""
    b = TraceBuilder().step(1, 0, 1000)
    b.op(EVAL_PREFIX + "CheckpointFunctionBackward", 100, 500, seq=3)
    b.op("CheckpointFunctionBackward", 101, 498, seq=3)
    b.op("aten::linear", 110, 50, seq=30)
    b.op("aten::relu", 170, 20, seq=31)
    b.evaluate("ReluBackward0", 300, 50, seq=31)
    b.op("aten::threshold_backward", 310, 20)
    b.evaluate("AddmmBackward0", 400, 100, seq=30)
    pt = find_phases(b.to_trace(), recompute_detection="auto")
    assert pt.recompute[["region", "start_ns", "end_ns"]].to_dict("records") == [
        {"region": "recompute@CheckpointFunctionBackward", "start_ns": 110 * US,
         "end_ns": 190 * US}]


def test_sequence_dedupes_sac_dispatch_mode_nesting():
    """GIVEN SAC shapes (aten::X > PythonDispatchMode > aten::X, a saved op with only
    PythonDispatchMode) WHEN sequence detection runs THEN the outer ops form one
    occurrence and nothing is counted twice."""
    b = TraceBuilder().step(1, 0, 1000)
    b.evaluate("AddmmBackward0", 100, 400, seq=5)
    b.op("aten::addmm", 110, 40, seq=40)
    b.op("PythonDispatchMode", 112, 30)
    b.op("aten::gelu", 160, 60, seq=41)
    b.op("PythonDispatchMode", 162, 50)
    b.op("aten::gelu", 170, 30)
    pt = find_phases(b.to_trace(), recompute_detection="sequence")
    assert len(pt.recompute) == 1
    assert pt.recompute[["start_ns", "end_ns"]].iloc[0].tolist() == [110 * US, 220 * US]


def test_sequence_finds_nothing_in_plain_backward():
    """GIVEN a backward without recompute (formula ops carry no seq) WHEN auto runs
    THEN recompute_detection is none and the note says sequence was tried."""
    pt = find_phases(plain_step(TraceBuilder(), 1, 0).to_trace())
    assert pt.recompute_found_by == "none" and pt.recompute.empty
    assert any("sequence" in n for n in pt.notes)


def test_repeated_node_names_are_numbered_by_position():
    """GIVEN two recomputes triggered by nodes of the same name per step WHEN sequence
    detection runs THEN regions are recompute@Node#1 / #2 in time order each step."""
    b = TraceBuilder()
    for n, t0 in ((1, 0), (2, 1000)):
        b.step(n, t0, 1000)
        nonreentrant_backward(b, t0 + 100, node_seq=5, seq0=20)
        nonreentrant_backward(b, t0 + 500, node_seq=3, seq0=30)
    pt = find_phases(b.to_trace())
    assert pt.recompute[["step", "region"]].to_dict("records") == [
        {"step": 1, "region": "recompute@AddmmBackward0#1"},
        {"step": 1, "region": "recompute@AddmmBackward0#2"},
        {"step": 2, "region": "recompute@AddmmBackward0#1"},
        {"step": 2, "region": "recompute@AddmmBackward0#2"}]


def test_stack_detection_names_regions_by_module():
    """GIVEN with_stack Python frames (recompute_fn with an nn.Module frame inside,
    and one without) WHEN auto runs THEN stack detection is used: regions are the
    module name, or recompute@<Node> from the enclosing evaluate_function."""
    b = TraceBuilder().step(1, 0, 1000)
    b.evaluate("AddmmBackward0", 100, 300, seq=5)
    b.python("torch/utils/checkpoint.py(1165): unpack_hook", 105, 200)
    b.python("torch/utils/checkpoint.py(1657): recompute_fn", 110, 150)
    b.python("nn.Module: Block_1", 120, 100)
    b.python("nn.Module: Linear_3", 130, 20)
    b.evaluate("MmBackward0", 500, 300, seq=4)
    b.python("/opt/venv/lib/python3.11/site-packages/torch/utils/checkpoint.py(1657): "
             "recompute_fn", 510, 100)
    b.python("mymodel.py(10): body", 520, 50)
    pt = find_phases(b.to_trace())
    assert pt.recompute_found_by == "stack"
    assert pt.recompute[["region", "start_ns", "end_ns"]].to_dict("records") == [
        {"region": "Block_1", "start_ns": 110 * US, "end_ns": 260 * US},
        {"region": "recompute@MmBackward0", "start_ns": 510 * US, "end_ns": 610 * US}]


def test_explicit_methods_need_what_they_read():
    """GIVEN a plain trace without Python frames WHEN markers or stack detection is
    requested THEN NotCapturedError says what capture option is missing."""
    t = plain_step(TraceBuilder(), 1, 0).to_trace()
    with pytest.raises(NotCapturedError, match="markers"):
        find_phases(t, recompute_detection="markers")
    with pytest.raises(NotCapturedError, match="with_stack"):
        find_phases(t, recompute_detection="stack")


def test_sequence_on_marker_trace_ignores_recompute_markers():
    """GIVEN a marked trace WHEN sequence detection is forced THEN the recompute comes
    from Sequence numbers (inside the marker range), not from the markers, and it is
    named like the markers name it: the backward node (seq 1) was created inside the
    checkpoint::r0 forward run."""
    pt = find_phases(marker_step(TraceBuilder(), 1, 0).to_trace(),
                     recompute_detection="sequence")
    assert pt.recompute[["region", "start_ns", "end_ns", "method"]].to_dict("records") == [
        {"region": "r0", "start_ns": 430 * US, "end_ns": 510 * US, "method": "sequence"}]
    assert any("named after their region's forward run" in n for n in pt.notes)
    none = find_phases(marker_step(TraceBuilder(), 1, 0).to_trace(), recompute_detection="none")
    assert none.recompute.empty and "recompute" not in set(none.segments["phase"])


def test_lookup_is_half_open_and_outside_is_minus_one():
    """GIVEN segments WHEN instants at boundaries and outside steps are looked up THEN
    a segment owns its start, not its end; outside every step gives -1/other/""."""
    pt = find_phases(marker_step(TraceBuilder(), 1, 100).to_trace())
    ts = np.array([99, 100, 519, 520, 619, 620, 1099, 1100, 5000]) * US
    step, phase, region = pt.lookup(ts)
    assert step.tolist() == [-1, 1, 1, 1, 1, 1, 1, -1, -1]
    assert phase.tolist() == ["other", "other", "backward", "recompute", "recompute",
                              "backward", "other", "other", "other"]
    assert region.tolist() == ["", "", "", "r0", "r0", "", "", "", ""]


def test_inputs_are_not_mutated():
    """GIVEN a trace WHEN find_phases runs THEN the trace's events are unchanged."""
    t = marker_step(TraceBuilder(), 1, 0).to_trace()
    before = t.events.copy(deep=True)
    find_phases(t)
    pd.testing.assert_frame_equal(before, t.events)


def test_builder_trace_equals_loaded_file(tmp_path):
    """GIVEN a synthetic trace (markers, kernels, Python frames, memory, legacy-style
    Operator events) WHEN it is built directly and also written and read by load_trace
    THEN both Traces are equal, so synthetic tests see what the loader produces."""
    from ckprof.trace.load import load_trace

    b = marker_step(TraceBuilder(), 1, 0, bwd_tid=4242)
    b.launch(ts=30, kernel="k", kernel_ts=600, kernel_dur=5)
    b.python("model.py(3): forward", 20, 200).python("nn.Module: Block_0", 25, 100)
    b.op("aten::relu", 900, 10, cat="Operator")
    b.memory(61, bytes=64, total_allocated=64).memory(62, bytes=8, total_allocated=8,
                                                      device="cuda:0")
    b.meta(ckprof={"markers": True})
    built = b.to_trace()
    loaded = load_trace(b.write(tmp_path / "t.json.gz", gzip=True))
    built.check()
    for frame in ("events", "memory"):
        x, y = getattr(built, frame), getattr(loaded, frame)
        assert list(x.columns) == list(y.columns)
        for col in x.columns:
            assert x[col].astype(str).tolist() == y[col].astype(str).tolist(), (frame, col)
    assert built.ckprof == loaded.ckprof == {"markers": True}
    assert find_phases(built).segments.equals(find_phases(loaded).segments)


def test_autograd_thread_tail_is_backward():
    """GIVEN a CUDA-style plain trace: backward nodes on the autograd thread followed on
    that thread by DDP reducer work, and the main thread's ops afterwards WHEN phases
    are found THEN backward lasts until the autograd thread's last top-level event,
    while main-thread work after the last node does not extend it."""
    b = TraceBuilder().step(1, 0, 1000)
    b.op("aten::linear", 10, 100, seq=1)
    b.evaluate("AddmmBackward0", 200, 100, seq=1, tid=4242)
    b.op("torch.distributed.ddp.reducer::copy_bucket_to_grad", 320, 80, tid=4242)
    b.op("aten::item", 450, 20)                                      # main thread
    b.annotation("Optimizer.step#SGD.step", 600, 100)
    assert seg_list(find_phases(b.to_trace())) == [
        ("forward", "", 0, 200), ("backward", "", 200, 400), ("other", "", 400, 600),
        ("optimizer", "", 600, 700), ("other", "", 700, 1000)]
    cpu = TraceBuilder().step(1, 0, 1000).evaluate("AddmmBackward0", 200, 100, seq=1)
    cpu.op("aten::item", 450, 20)
    assert seg_list(find_phases(cpu.to_trace()))[1] == ("backward", "", 200, 300)


def test_stack_fills_reentrant_gaps_with_sequence():
    """GIVEN a with_stack trace with one non-reentrant recompute (recompute_fn frame)
    and one reentrant recompute (CheckpointFunctionBackward, no frame) WHEN stack
    detection runs THEN both are found: the frame one by stack, the other by sequence,
    and no occurrence is counted twice."""
    b = TraceBuilder().step(1, 0, 1000)
    nonreentrant_backward(b, 100, node_seq=5, seq0=20)
    b.python("torch/utils/checkpoint.py(1657): recompute_fn", 105, 160)
    b.python("nn.Module: Block_1", 108, 150)
    b.op(EVAL_PREFIX + "CheckpointFunctionBackward", 500, 300, seq=3)
    b.op("CheckpointFunctionBackward", 501, 298, seq=3)
    b.op("aten::linear", 510, 50, seq=30)
    pt = find_phases(b.to_trace())
    assert pt.recompute_found_by == "stack"
    assert pt.recompute[["region", "method"]].to_dict("records") == [
        {"region": "Block_1", "method": "stack"},
        {"region": "recompute@CheckpointFunctionBackward", "method": "sequence"}]


def test_recompute_wins_over_a_marker_listed_much_later():
    """GIVEN a recompute occurrence and, inside it, a forward marker whose place among
    all labelled intervals is far beyond the two intervals of this step (other steps'
    intervals come between them) WHEN the step is tiled THEN recompute still wins where
    they overlap (NOTE [ Phase precedence ]: the recompute layer beats every marker)."""
    from ckprof.analysis import phases

    iv = {"start_ns": np.array([10, 20]), "end_ns": np.array([50, 30]),
          "layer": np.array([phases._LAYER_RECOMPUTE, phases._LAYER_MARKERS]),
          "group": np.array([0, 1]), "order": np.array([0, 41]),
          "prio": np.array([phases.PHASE_PRIORITY["recompute"], phases.PHASE_PRIORITY["forward"]]),
          "phase": np.array(["recompute", "forward"], dtype=object),
          "region": np.array(["blocks.0", ""], dtype=object)}
    tiles = phases._tile_step(1, 0, 60, iv, np.array([0, 1]))
    assert list(zip(tiles["phase"].tolist(), tiles["start_ns"].tolist(),
                    tiles["end_ns"].tolist(), strict=True)) == [
        ("other", 0, 10), ("recompute", 10, 50), ("other", 50, 60)]
