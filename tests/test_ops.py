"""Which ops recompute and forward are made of (ckprof.analysis.ops), on REAL CPU traces
captured here, compared exactly with an independent reconstruction from the raw JSON
(tests/support/raw_reference.py), plus synthetic GPU cases for kernel attribution."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest
from support.builders import TraceBuilder
from support.raw_reference import (
    call_of,
    checkpoint_region,
    in_steps,
    phase_at,
    read_raw,
    self_ns,
)

from ckprof.analysis import analyze, load
from ckprof.analysis.ops import NO_OP, PYTHON_DISPATCH

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> dict[str, Path]:
    from support.capture import capture_trace, one_torch_thread

    root = tmp_path_factory.mktemp("ops")
    with one_torch_thread():
        return {v: capture_trace(root, v, steps=2, with_stack=(v == "markers"))
                for v in ("markers", "sac", "plain")}


def expected_ops(path: Path, phase: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(region, op) -> (count, self ns) from the raw JSON: op calls starting in ``phase``
    (by the markers) inside a ProfilerStep; SAC frames merged into their call."""
    raw = read_raw(path)
    count: Counter = Counter()
    wall: defaultdict = defaultdict(int)
    for e in raw.events:
        if e.cat != "cpu_op":
            continue
        call = call_of(e)
        if not in_steps(raw, call.ts):
            continue
        ph, region = phase_at(raw, call.ts)
        if ph != phase:
            continue
        if phase == "forward":
            region = checkpoint_region(raw, call.ts)
        key = (region, call.name)
        wall[key] += self_ns(e)
        if call is e:
            count[key] += 1
    return {k: (count[k], wall[k]) for k in wall}


def got_ops(analysis, phase: str) -> dict[tuple[str, str], tuple[int, int]]:
    b = analysis.ops.by_step
    b = b[b["phase"] == phase].groupby(["region", "op"])[["count", "self_ns"]].sum()
    return {k: (int(r["count"]), int(r["self_ns"])) for k, r in b.iterrows()}


@pytest.mark.parametrize("variant", ["markers", "sac"])
@pytest.mark.parametrize("phase", ["recompute", "forward"])
def test_op_table_equals_raw_reconstruction(traces, variant, phase):
    """GIVEN a real trace captured with ckprof markers (plain and selective checkpointing)
    WHEN ops are tabulated per region for recompute and forward
    THEN every (region, op) count and self time equals the raw-JSON reconstruction, to
    the nanosecond, and no PythonDispatchMode frame is listed as an op."""
    a = load(traces[variant])
    got = got_ops(a, phase)
    assert got == expected_ops(traces[variant], phase)
    assert not any(op == PYTHON_DISPATCH for _r, op in got)
    if phase == "recompute":
        assert {r for r, _op in got} == {"blocks.0", "blocks.1", "blocks.2"}


def test_recompute_ops_fit_in_recompute_time(traces):
    """GIVEN the markers trace WHEN its recompute ops are summed per region THEN their
    self time is at most the region's recompute wall time (single thread: self times
    never overlap) and the addmm/gelu of the blocks are there, 2 steps x 2 and 2 x 1."""
    a = load(traces["markers"])
    regions = a.regions_table().set_index("region")
    per = a.ops_table(by_region=True)
    for region, grp in per.groupby("region"):
        assert grp["wall_ms"].sum() <= regions.loc[region, "wall_ms"] + 1e-9
        ops = grp.set_index("op")["count"]
        assert ops["aten::addmm"] == 4 and ops["aten::gelu"] == 2
        assert abs(grp["pct"].sum() - 100.0) < 1e-9


def test_stack_and_sequence_find_the_same_recompute_ops(traces):
    """GIVEN one trace with markers and Python frames, and a plain one (no markers)
    WHEN ops are tabulated with marker, stack and sequence detection
    THEN stack lists exactly the marker ops (same calls, same self time), and
    sequence on the plain trace finds the same op counts as the markers."""
    markers = load(traces["markers"]).ops_table()
    stack = load(traces["markers"], recompute_detection="stack").ops_table()
    assert markers[["op", "count", "wall_ms"]].equals(stack[["op", "count", "wall_ms"]])
    seq = load(traces["plain"], recompute_detection="sequence")
    assert seq.recompute_found_by == "sequence"
    counts = dict(zip(seq.ops_table()["op"], seq.ops_table()["count"], strict=True))
    assert counts == dict(zip(markers["op"], markers["count"], strict=True))
    assert all(r.startswith("recompute@") for r in seq.ops_table(by_region=True)["region"])


def test_forward_ops_are_grouped_by_checkpoint_region(traces):
    """GIVEN the markers trace WHEN forward ops are listed for one region THEN they are
    the ops that ran inside its ckprof::checkpoint range (addmm twice per step), and
    ops outside every region have region ''."""
    a = load(traces["markers"])
    blk = a.ops_table("forward", region="blocks.1").set_index("op")
    assert blk.loc["aten::addmm", "count"] == 4 and blk.loc["aten::gelu", "count"] == 2
    outside = a.ops_table("forward", region="")
    assert "aten::mean" in set(outside["op"])  # the loss, outside the blocks


# ---- synthetic GPU cases ------------------------------------------------------------

def gpu_trace() -> TraceBuilder:
    b = TraceBuilder()
    b.step(1, 0, 1000)
    b.marker("forward", 0, 400)
    b.op("aten::linear", 10, 100, seq=1)
    b.op("aten::addmm", 20, 80)
    b.launch(ts=30, kernel="gemm", kernel_ts=40, kernel_dur=50)        # runtime inside addmm
    b.launch(ts=150, kernel="stray", kernel_ts=160, kernel_dur=5)      # outside every op
    b.marker("backward", 400, 500)
    b.evaluate("AddmmBackward0", 420, 300, seq=1)
    b.marker("recompute:blk", 430, 200)
    b.op("aten::addmm", 440, 100, seq=2)
    b.launch(ts=450, kernel="gemm_rc", kernel_ts=900, kernel_dur=30)   # runs after backward
    return b


def test_kernels_go_to_the_op_that_launched_them():
    """GIVEN kernels launched from inside aten::addmm (forward and recompute) and one
    launched outside any op WHEN ops are tabulated THEN each addmm carries its kernel's
    GPU time and count, the runtime call is part of addmm's self time, the stray kernel
    is listed as (no op), and per phase the GPU time equals the attribution's."""
    a = analyze(gpu_trace().to_trace())
    fwd = a.ops_table("forward").set_index("op")
    assert fwd.loc["aten::addmm", "gpu_ms"] == pytest.approx(0.050)
    assert fwd.loc["aten::addmm", "gpu_events"] == 1
    assert fwd.loc["aten::addmm", "wall_ms"] == pytest.approx(0.080)   # launch included
    assert fwd.loc["aten::linear", "wall_ms"] == pytest.approx(0.020)  # minus nested addmm
    assert fwd.loc[NO_OP, "gpu_ms"] == pytest.approx(0.005) and fwd.loc[NO_OP, "count"] == 0
    rc = a.ops_table("recompute", region="blk").set_index("op")
    assert rc.loc["aten::addmm", "gpu_ms"] == pytest.approx(0.030)
    k = a.kernels_table("recompute")
    assert k[["op", "kernel", "count"]].values.tolist() == [["aten::addmm", "gemm_rc", 1]]
    by_phase = a.ops.by_step.groupby("phase")["gpu_ns"].sum()
    want = a.time.totals.set_index("phase")["gpu_ns"]
    for phase, value in by_phase.items():
        assert value == want[phase]


def test_ops_table_rejects_an_unknown_phase():
    """GIVEN an analysis WHEN asked for the ops of phase 'warmup' THEN a UsageError
    names the phases."""
    from ckprof.errors import UsageError

    a = analyze(gpu_trace().to_trace())
    with pytest.raises(UsageError, match="forward"):
        a.ops_table("warmup")
