"""attribute_time on synthetic traces: kernels follow their launch, sums are exact,
regions, overhead, self_check."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from support.builders import TraceBuilder

from ckprof.analysis.attribution import attribute_time
from ckprof.analysis.phases import find_phases
from ckprof.trace.markers import PHASES
from ckprof.trace.table import Table

US = 1000


def gpu_marked_trace() -> TraceBuilder:
    """Two marked steps. Per step: a forward kernel that runs during backward, a
    recompute kernel, a backward kernel, an optimizer memset."""
    b = TraceBuilder()
    for n, t0 in ((1, 0), (2, 1000)):
        b.step(n, t0, 1000)
        b.marker("forward", t0 + 10, 300)
        b.marker("checkpoint:blk", t0 + 20, 100)
        b.op("aten::mm", t0 + 30, 50, seq=1)
        b.launch(ts=t0 + 40, kernel="fwd_gemm", kernel_ts=t0 + 350, kernel_dur=40)
        b.marker("backward", t0 + 320, 400)
        b.marker("recompute:blk", t0 + 400, 60)
        b.launch(ts=t0 + 410, kernel="rc_gemm", kernel_ts=t0 + 460, kernel_dur=25)
        b.launch(ts=t0 + 500, kernel="bwd_gemm", kernel_ts=t0 + 510, kernel_dur=70)
        b.marker("optimizer", t0 + 750, 200)
        b.launch("cudaMemsetAsync", ts=t0 + 760, kernel="Memset (Device)", kernel_ts=t0 + 990,
                 kernel_dur=30, cat="gpu_memset")
    return b


@pytest.fixture(scope="module")
def marked():
    t = gpu_marked_trace().to_trace()
    ph = find_phases(t)
    return t, ph, attribute_time(t, ph)


def test_kernels_take_the_phase_of_their_launch(marked):
    """GIVEN a kernel launched in forward that runs during backward, and a memset
    launched in optimizer that runs into the next step WHEN time is attributed THEN
    each takes the phase and step of its launch, never its own timestamp."""
    t, _, a = marked
    g = a.gpu_events.assign(name=t.events["name"].astype(str).to_numpy()[a.gpu_events["event"]])
    got = {(r.step, r.name): (r.phase, r.region) for r in g.itertuples()}
    for step in (1, 2):
        assert got[(step, "fwd_gemm")] == ("forward", "")
        assert got[(step, "rc_gemm")] == ("recompute", "blk")
        assert got[(step, "bwd_gemm")] == ("backward", "")
        assert got[(step, "Memset (Device)")] == ("optimizer", "")
    assert (a.gpu_events["launched_by"] >= 0).all()
    a.self_check()


def test_by_step_is_complete_and_exact(marked):
    """GIVEN the marked trace WHEN time is attributed THEN by_step has every step x
    phase, wall times sum to each step's duration and GPU times match the kernels."""
    _, _, a = marked
    assert len(a.by_step) == 2 * len(PHASES)
    per = a.by_step.set_index(["step", "phase"])
    for step in (1, 2):
        assert per.loc[step]["wall_ns"].sum() == 1000 * US
        assert per.loc[(step, "forward"), "gpu_ns"] == 40 * US
        assert per.loc[(step, "recompute"), "gpu_ns"] == 25 * US
        assert per.loc[(step, "backward"), "gpu_ns"] == 70 * US
        assert per.loc[(step, "optimizer"), "gpu_ns"] == 30 * US
        assert per.loc[(step, "other"), "gpu_ns"] == 0
        assert per.loc[(step, "recompute"), "wall_ns"] == 60 * US
    tot = a.totals.set_index("phase")
    assert a.totals["phase"].tolist() == list(PHASES)
    assert tot.loc["backward", "wall_ns"] == 2 * (400 - 60) * US


def test_regions_and_overhead(marked):
    """GIVEN one checkpointed region recomputed once per step WHEN attributed THEN the
    region shows count 2, its recompute wall and GPU time, its forward time from the
    checkpoint markers, and the headline overhead is recompute / (step - recompute)."""
    _, _, a = marked
    assert a.regions.to_dict("records") == [
        {"region": "blk", "count": 2, "wall_ns": 120 * US, "gpu_ns": 50.0 * US,
         "forward_wall_ns": 200 * US}]
    assert a.recompute_overhead_pct == pytest.approx(120 / (2000 - 120) * 100)


def test_unmatched_and_outside_kernels_are_noted():
    """GIVEN a kernel without correlation and one launched before the first step WHEN
    attributed THEN the first falls back to its own start (noted), the second is not
    counted (noted)."""
    b = (TraceBuilder().launch(ts=-50, kernel="early", kernel_ts=-40, kernel_dur=5)
         .step(1, 0, 1000).op("aten::mm", 10, 100)
         .kernel("orphan", 500, 10))
    t = b.to_trace()
    a = attribute_time(t, find_phases(t))
    assert a.gpu_events["launched_by"].tolist() == [-1]
    assert a.gpu_events["phase"].tolist() == ["forward"]
    assert a.gpu_events["placed_by"].tolist() == ["own_start"]
    assert any("carry no correlation id" in n for n in a.notes)
    assert any("outside the analysed steps" in n for n in a.notes)
    a.self_check()


def launch_window_trace() -> TraceBuilder:
    """Two marked steps on a GPU that lags the CPU. Correlation ids (launch order):
    1-3 launched before profiling (kernels still running in step 1's forward), 10 and
    13 launched in step 1's forward/backward, 11-12 lost (no runtime event) between
    them, 20 launched in step 2's forward, 30 after the last launch id without a
    runtime event, and one memset without any correlation id."""
    b = TraceBuilder()
    for n, t0 in ((1, 0), (2, 1000)):
        b.step(n, t0, 1000).marker("forward", t0, 400).marker("backward", t0 + 400, 500)
    for c, k_ts in ((1, 5), (2, 50), (3, 120)):              # warmup's queue
        b.kernel(f"stale{c}", k_ts, 40, correlation=c)
    b.runtime("cudaLaunchKernel", 100, 5, correlation=10).kernel("k10", 300, 20, correlation=10)
    b.kernel("lost11", 330, 30, correlation=11).kernel("lost12", 900, 30, correlation=12,
                                                      cat="gpu_memset")
    b.runtime("cudaLaunchKernel", 450, 5, correlation=13).kernel("k13", 950, 20, correlation=13)
    b.runtime("cudaLaunchKernel", 1100, 5, correlation=20).kernel("k20", 1150, 20,
                                                                  correlation=20)
    b.kernel("late30", 1500, 7, correlation=30)
    b.kernel("nocorr", 1600, 3, cat="gpu_memset")
    return b


def test_gpu_events_follow_launch_order_not_their_own_start():
    """GIVEN kernels launched before profiling, kernels whose launch is lost between
    two recorded launches, one above every launch id and one without an id WHEN
    attributed THEN the pre-profiling ones belong to no step (how many and how many ms
    noted), the lost ones take the step and phase of the launch before them by id
    (even when they run in the next phase), the last two keep their own start (noted);
    each step's GPU time is exactly what it launched."""
    t = launch_window_trace().to_trace()
    a = attribute_time(t, find_phases(t))
    a.self_check()
    names = t.events["name"].astype(str).to_numpy()
    got = {names[r.event]: (r.step, r.phase, r.placed_by) for r in a.gpu_events.itertuples()}
    assert got == {
        "k10": (1, "forward", "runtime"),
        "lost11": (1, "forward", "neighbours"),
        "lost12": (1, "forward", "neighbours"),
        "k13": (1, "backward", "runtime"),
        "k20": (2, "forward", "runtime"),
        "late30": (2, "backward", "own_start"),
        "nocorr": (2, "backward", "own_start"),
    }
    gpu = a.by_step.groupby("step")["gpu_ns"].sum()
    assert gpu.to_dict() == {1: (20 + 30 + 30 + 20) * US, 2: (20 + 7 + 3) * US}
    notes = " | ".join(a.notes)
    assert "3 GPU event(s) (0.120 ms of GPU time) were launched before profiling" in notes
    assert "2 GPU event(s) whose launch is not in the trace took the step and phase" in notes
    assert "for 2 of them the launch after them lies in another step or phase" in notes
    assert "1 GPU event(s) carry no correlation id" in notes
    assert "correlation id above every launch" in notes


def test_cpu_only_trace_has_nan_gpu_and_nan_free_walls():
    """GIVEN a CPU-only trace WHEN attributed THEN has_gpu is False and every gpu_ns is
    NaN (not zero), walls still add up."""
    b = TraceBuilder().step(1, 0, 100).op("aten::mm", 10, 20)
    t = b.to_trace()
    a = attribute_time(t, find_phases(t))
    assert not a.has_gpu
    assert a.by_step["gpu_ns"].isna().all() and a.totals["gpu_ns"].isna().all()
    assert a.by_step["wall_ns"].sum() == 100 * US
    assert math.isclose(a.recompute_overhead_pct, 0.0)
    a.self_check()


def test_self_check_catches_broken_numbers(marked):
    """GIVEN an attribution whose numbers were tampered with WHEN self_check runs THEN
    it fails (so it is a real check)."""
    _, _, a = marked
    walls = a.by_step.assign(wall_ns=a.by_step["wall_ns"] + np.arange(len(a.by_step)))
    with pytest.raises(AssertionError, match="step durations"):
        dataclasses.replace(a, by_step_table=Table.from_frame(walls)).self_check()
    twice = a.gpu_events.iloc[np.r_[0, np.arange(len(a.gpu_events))]]
    with pytest.raises(AssertionError, match="twice"):
        dataclasses.replace(a, gpu_events_table=Table.from_frame(twice)).self_check()


def test_duplicate_correlation_takes_earliest_launch():
    """GIVEN two runtime events with the same correlation id WHEN attributed THEN the
    earliest launch wins and a note says so."""
    b = (TraceBuilder().step(1, 0, 1000).marker("forward", 0, 400).marker("optimizer", 500, 400)
         .runtime("cudaLaunchKernel", 10, 5, correlation=7)
         .runtime("cudaLaunchKernel", 600, 5, correlation=7)
         .kernel("k", 700, 10, correlation=7))
    t = b.to_trace()
    a = attribute_time(t, find_phases(t))
    assert a.gpu_events["phase"].tolist() == ["forward"]
    assert any("share a correlation" in n for n in a.notes)


def test_step_filter_keeps_only_that_step(marked):
    """GIVEN phases restricted to one step (as Analysis does for --step) WHEN
    attributed THEN only that step's kernels count and the checks hold."""
    t, ph, _ = marked
    one = dataclasses.replace(ph, steps_table=ph.steps_table.take(ph.steps_table["step"] == 2),
                              segments_table=ph.segments_table.take(ph.segments_table["step"] == 2),
                              recompute_table=ph.recompute_table.take(ph.recompute_table["step"] == 2))
    a = attribute_time(t, one)
    assert set(a.gpu_events["step"]) == {2}
    assert a.regions["count"].tolist() == [1]
    assert a.regions["forward_wall_ns"].tolist() == [100 * US]
    a.self_check()


def test_rocm_memset_without_flow_links_by_correlation():
    """GIVEN a ROCm-style step: hipMemsetAsync (category hip_runtime) launched in
    forward, its gpu_memset running during backward, no flow events at all WHEN
    attributed THEN the memset takes forward by its correlation id."""
    b = (TraceBuilder().step(1, 0, 1000).marker("forward", 0, 400).marker("backward", 400, 500)
         .runtime("hipMemsetAsync", 50, 5, correlation=41, cat="hip_runtime")
         .kernel("Memset (Device)", 600, 10, correlation=41, cat="gpu_memset"))
    t = b.to_trace()
    a = attribute_time(t, find_phases(t))
    assert a.gpu_events[["phase", "placed_by"]].to_dict("records") == [
        {"phase": "forward", "placed_by": "runtime"}]
    a.self_check()


def test_launch_order_is_compared_within_one_process_namespace():
    """GIVEN correlation ids of two processes kept apart as the nsys reader does
    (process k at k << 32) and a kernel of process 1 whose id is below every launch of
    process 1 but above those of process 0 WHEN attributed THEN it was launched before
    profiling (no step), not between process 0's last launch and process 1's first."""
    hi = 1 << 32
    b = (TraceBuilder().step(1, 0, 1000).marker("forward", 0, 900)
         .runtime("cudaLaunchKernel", 100, 5, correlation=7).kernel("p0", 200, 10, correlation=7)
         .runtime("cudaLaunchKernel", 300, 5, correlation=hi + 10, tid=2)
         .kernel("p1", 400, 10, correlation=hi + 10)
         .kernel("p1_stale", 20, 30, correlation=hi + 3))
    t = b.to_trace()
    a = attribute_time(t, find_phases(t))
    names = t.events["name"].astype(str).to_numpy()
    assert sorted(names[a.gpu_events["event"]]) == ["p0", "p1"]
    assert any("1 GPU event(s) (0.030 ms of GPU time) were launched before profiling" in n
               for n in a.notes)
