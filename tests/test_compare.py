"""ckprof.strategy.compare: two runs side by side (synthetic traces; no torch needed)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from support.builders import TraceBuilder

from ckprof.strategy.compare import (
    compare,
    compare_memory,
    compare_ops,
    compare_regions,
    op_times,
    render_comparison,
)

MIB = 2**20


# ---- pure table joins ---------------------------------------------------------------------


def test_op_times_self_total_and_step_window():
    """GIVEN two steps with nested ops, a kernel, and an op outside the steps WHEN op
    times are aggregated THEN self time excludes direct children, totals include them,
    figures are per step, and the op outside the steps is ignored."""
    b = TraceBuilder()
    for n, t0 in ((1, 0.0), (2, 1000.0)):
        b.step(n, t0, 1000)
        b.op("aten::linear", t0 + 10, 100)
        b.op("aten::addmm", t0 + 20, 60)
        b.op("aten::relu", t0 + 200, 30)
        b.launch(ts=t0 + 21, dur=5, kernel="gemm", kernel_ts=t0 + 300, kernel_dur=40)
    b.op("aten::outside", 5000, 50)
    ops = op_times(b.to_trace().events, 0, 2_000_000, 2).set_index(["category", "name"])
    assert ops.loc[("cpu_op", "aten::linear"), "total_ms"] == pytest.approx(0.100)
    assert ops.loc[("cpu_op", "aten::linear"), "self_ms"] == pytest.approx(0.040)
    # addmm holds the 5 us launch (a runtime child)
    assert ops.loc[("cpu_op", "aten::addmm"), "self_ms"] == pytest.approx(0.055)
    assert ops.loc[("cpu_op", "aten::relu"), "count"] == 1.0
    assert ops.loc[("kernel", "gemm"), "self_ms"] == pytest.approx(0.040)
    assert ops.loc[("kernel", "gemm"), "total_ms"] == pytest.approx(0.040)
    assert ("cpu_op", "aten::outside") not in ops.index
    assert not any(c == "runtime" for c, _ in ops.index)


def test_compare_ops_sorted_by_self_change():
    """GIVEN op tables of two runs WHEN compared THEN the outer join fills absent ops with
    zero and the largest self-time change comes first."""
    a = pd.DataFrame({"category": ["cpu_op", "cpu_op"], "name": ["aten::mm", "aten::relu"],
                      "count": [2.0, 2.0], "self_ms": [1.0, 0.2], "total_ms": [1.5, 0.2]})
    b = pd.DataFrame({"category": ["cpu_op", "cpu_op"], "name": ["aten::mm", "aten::gelu"],
                      "count": [4.0, 2.0], "self_ms": [2.5, 0.1], "total_ms": [3.0, 0.1]})
    out = compare_ops(a, b)
    assert out["name"].tolist() == ["aten::mm", "aten::relu", "aten::gelu"]
    mm = out.iloc[0]
    assert (mm["self_diff_ms"], mm["self_diff_pct"], mm["total_diff_ms"]) == (1.5, 150.0, 1.5)
    relu = out.iloc[1]
    assert (relu["candidate_count"], relu["self_diff_ms"]) == (0.0, -0.2)
    assert math.isnan(out.iloc[2]["self_diff_pct"])  # no baseline -> no relative change


def test_compare_memory_outer_join_and_all_row():
    """GIVEN memory tables where one run lacks a phase WHEN compared THEN rows join on
    (phase, device), the absent side is NaN, and an 'all' row holds the max per device."""
    a = pd.DataFrame({"phase": ["forward", "backward"], "device": ["cpu", "cpu"],
                      "peak_bytes": [100 * MIB, 80 * MIB], "step": [1, 1], "at_op": ["", ""]})
    b = pd.DataFrame({"phase": ["forward", "recompute"], "device": ["cpu", "cpu"],
                      "peak_bytes": [40 * MIB, 60 * MIB], "step": [1, 1], "at_op": ["", ""]})
    out = compare_memory(a, b).set_index("phase")
    assert out.loc["all", "baseline_peak_bytes"] == 100 * MIB
    assert out.loc["all", "candidate_peak_bytes"] == 60 * MIB
    assert out.loc["all", "diff_pct"] == pytest.approx(-40.0)
    assert math.isnan(out.loc["recompute", "baseline_peak_bytes"])
    assert math.isnan(out.loc["backward", "candidate_peak_bytes"])
    assert list(out.index) == ["all", "forward", "backward", "recompute"]


def test_compare_regions_per_step():
    """GIVEN region tables over 2 and 4 steps WHEN compared THEN counts and times are
    per step and regions only in one run compare against zero."""
    a = pd.DataFrame({"region": ["blocks.0"], "count": [2], "wall_ms": [4.0], "gpu_ms": [math.nan],
                      "forward_wall_ms": [0.0]})
    b = pd.DataFrame({"region": ["blocks.0", "blocks.1"], "count": [4, 4], "wall_ms": [4.0, 8.0],
                      "gpu_ms": [math.nan] * 2, "forward_wall_ms": [0.0] * 2})
    out = compare_regions(a, b, 2, 4).set_index("region")
    assert out.loc["blocks.0", ["baseline_count", "candidate_count", "baseline_ms", "candidate_ms"]].tolist() == [
        1.0, 1.0, 2.0, 1.0]
    assert out.loc["blocks.1", "diff_ms"] == 2.0
    assert list(out.index) == ["blocks.1", "blocks.0"]


# ---- whole comparisons from synthetic traces ------------------------------------------------


def _run(tmp_path, name: str, *, recompute_us: float, peak_bytes: int, steps: int = 2):
    """A marker trace: forward 300 us, backward 400 us (+ recompute inside it),
    optimizer 100 us per step; one memory peak per step."""
    b = TraceBuilder()
    t = 0.0
    for n in range(1, steps + 1):
        dur = 800 + recompute_us
        b.step(n, t, dur)
        b.marker("forward", t, 300)
        b.op("aten::linear", t + 10, 200)
        if recompute_us:
            b.marker("checkpoint:blocks.0", t + 5, 250)
        b.marker("backward", t + 300, 400 + recompute_us)
        b.evaluate("AddmmBackward0", t + 305, 390 + recompute_us, seq=1)
        if recompute_us:
            b.marker("recompute:blocks.0", t + 310, recompute_us)
            b.op("aten::linear", t + 312, recompute_us - 4)
        b.marker("optimizer", t + 700 + recompute_us, 100)
        b.memory(t + 50, bytes=peak_bytes, total_allocated=peak_bytes)
        b.memory(t + 690 + recompute_us, bytes=-peak_bytes, total_allocated=0)
        t += dur
    return b.write(tmp_path / f"{name}.json")


@pytest.fixture
def two_runs(tmp_path):
    base = _run(tmp_path, "base", recompute_us=0, peak_bytes=64 * MIB)
    cand = _run(tmp_path, "cand", recompute_us=200, peak_bytes=16 * MIB, steps=3)
    return base, cand


def test_compare_paths_phase_and_memory(two_runs):
    """GIVEN a run without and one with recompute (different step counts) WHEN compared
    THEN per-step means differ by exactly the recompute time, memory drops by 75% and
    the region appears only in the candidate."""
    base, cand = two_runs
    c = compare(base, cand)
    ph = c.phases.set_index("phase")
    assert ph.loc["step", "baseline_ms"] == pytest.approx(0.8)
    assert ph.loc["step", "candidate_ms"] == pytest.approx(1.0)
    assert ph.loc["step", "diff_pct"] == pytest.approx(25.0)
    assert ph.loc["recompute", "diff_ms"] == pytest.approx(0.2)
    assert ph.loc["forward", "diff_ms"] == pytest.approx(0.0)
    assert ph[["baseline_ms", "candidate_ms"]].drop(index="step").sum().tolist() == pytest.approx([0.8, 1.0])
    mem = c.memory.set_index("phase")
    assert mem.loc["all", "diff_pct"] == pytest.approx(-75.0)
    reg = c.regions.set_index("region")
    assert reg.loc["blocks.0", "baseline_ms"] == 0 and reg.loc["blocks.0", "candidate_ms"] == pytest.approx(0.2)
    assert c.ops.iloc[0]["name"] == "aten::linear"
    assert any("2 and 3 steps" in n for n in c.notes)
    assert (c.baseline_steps, c.candidate_steps, c.has_gpu) == (2, 3, False)


def test_compare_accepts_analysis_objects_and_is_antisymmetric(two_runs):
    """GIVEN the same two runs as Analysis objects WHEN compared both ways THEN the
    differences change sign."""
    from ckprof.analysis import load

    a, b = (load(p) for p in two_runs)
    ab, ba = compare(a, b), compare(b, a)
    pd.testing.assert_series_equal(ab.phases["diff_ms"], -ba.phases["diff_ms"], check_names=False)


def test_compare_identical_runs_is_zero(two_runs):
    """GIVEN a run compared with itself WHEN compared THEN every difference is zero and
    the step times are within noise."""
    base, _ = two_runs
    c = compare(base, base)
    assert (c.phases["diff_ms"].fillna(0) == 0).all()
    assert (c.ops["self_diff_ms"] == 0).all()
    assert c.within_noise() is True


def test_render_comparison_formats(two_runs):
    """GIVEN a comparison WHEN rendered THEN text names both runs and the step change,
    JSON round-trips (no NaN), CSV has one row per figure, markdown has tables."""
    c = compare(*two_runs)
    text = render_comparison(c)
    assert "step time +25.0%" in text and "blocks.0" in text and "Peak memory" in text
    d = json.loads(render_comparison(c, "json"))
    assert d["phases"][0]["phase"] == "step" and d["candidate_steps"] == 3
    csv_lines = render_comparison(c, "csv").splitlines()
    assert csv_lines[0] == "table,key,metric,baseline,candidate,diff"
    assert sum(1 for line in csv_lines if line.startswith("phases,")) == 6
    md = render_comparison(c, "markdown")
    assert "| phase | baseline ms |" in md
    with pytest.raises(ValueError):
        render_comparison(c, "yaml")


def test_compare_real_gpu_trace_with_itself(shared_traces):
    """GIVEN a real V100 trace without ckprof markers WHEN compared with itself THEN
    GPU columns are filled, kernels appear in the op table and all diffs are zero."""
    path = shared_traces / "v100_cnn_train_rank0.pt.trace.json.gz"
    c = compare(path, path)
    assert c.has_gpu
    step = c.phases.set_index("phase").loc["step"]
    assert step["baseline_gpu_ms"] > 0 and step["gpu_diff_ms"] == 0
    assert (c.ops["category"] == "kernel").any()
    assert (c.ops["self_diff_ms"] == 0).all()


def test_ckprof_compare_is_callable_after_submodule_import(two_runs):
    """GIVEN `import ckprof.strategy.compare` (which binds the module on the package) WHEN
    `ckprof.compare(a, b)` is called THEN it still compares (see NOTE [ Callable module ])."""
    import ckprof
    import ckprof.strategy.compare

    c = ckprof.compare(*two_runs)
    assert c.phases.iloc[0]["phase"] == "step"
