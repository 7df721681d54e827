"""ckprof.integrations.hta: ckprof's phase labels inside Holistic Trace Analysis.

Real GPU traces come from ../shared/traces (skipped when absent) and are always
copied into a temporary directory first: HTA reads every trace in a folder and can
write ``*_with_counters.json.gz`` next to them. CPU traces are captured here with a
tiny model. Everything skips cleanly when HTA is not installed.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckprof.errors import CkprofError, NotCapturedError, OptionalDependencyError
from ckprof.integrations import hta as ckhta
from ckprof.trace.markers import PHASES

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
V100 = "v100_cnn_train_rank0.pt.trace.json.gz"
DDP = "a100_cnn_train_ddp2_rank0.json.gz"
AMD = "mi250_toy_train.json.gz"
COMPILED = "a100_compiled_ws16_rank0.json.gz"


def _need_hta() -> None:
    pytest.importorskip("hta.trace_analysis", reason="holistictraceanalysis (ckprof[hta]) not installed")


def _copy_rank_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A private folder holding one shared trace named like a rank file."""
    src = SHARED / name
    if not src.is_file():
        pytest.skip(f"../shared/traces/{name} not present")
    folder = tmp_path_factory.mktemp(name.split(".")[0])
    shutil.copy(src, folder / "rank0.pt.trace.json.gz")
    return folder


@pytest.fixture(scope="module")
def v100_labels(tmp_path_factory: pytest.TempPathFactory) -> ckhta.HtaLabels:
    """The V100 CNN training trace (4 steps, 36k HTA rows), labelled from its folder."""
    _need_hta()
    return ckhta.label_hta(_copy_rank_dir(tmp_path_factory, V100))


@pytest.fixture(scope="module")
def v100_tables(v100_labels: ckhta.HtaLabels) -> ckhta.HtaPhaseTables:
    return ckhta.hta_phase_tables(v100_labels)


@pytest.fixture(scope="module")
def amd_hta(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, pd.DataFrame, Path, list[str]]:
    """HTA's TraceAnalysis of the small MI250 trace, built the user's way, with a
    snapshot of its frame and of the folder taken before ckprof touches anything."""
    _need_hta()
    folder = _copy_rank_dir(tmp_path_factory, AMD)
    ta = ckhta.open_hta(folder)
    return ta, ta.t.get_trace(0).copy(), folder, sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def amd_labels(amd_hta: tuple[Any, pd.DataFrame, Path, list[str]]) -> ckhta.HtaLabels:
    return ckhta.label_hta(amd_hta[0])


@pytest.fixture(scope="module")
def ddp_labels(tmp_path_factory: pytest.TempPathFactory) -> ckhta.HtaLabels:
    _need_hta()
    return ckhta.label_hta(_copy_rank_dir(tmp_path_factory, DDP))


# ----------------------------------------------------------------- missing dependency


def test_missing_hta_raises_optional_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN HTA cannot be imported
    WHEN ckprof.integrations.hta needs it
    THEN OptionalDependencyError (exit code 11) says how to install the extra."""
    for mod in [m for m in sys.modules if m == "hta" or m.startswith("hta.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "hta", None)
    with pytest.raises(OptionalDependencyError) as err:
        ckhta.open_hta(".")
    assert err.value.exit_code == 11
    assert "pip install 'ckprof[hta]'" in str(err.value)
    assert "holistictraceanalysis" in str(err.value)


def test_missing_undeclared_hta_dependency_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN HTA is installed but psutil (which HTA 0.5.0 imports without declaring it) is not
    WHEN ckprof.integrations.hta imports HTA
    THEN the error names the missing module instead of a bare traceback."""
    _need_hta()
    for mod in [m for m in sys.modules if m == "hta" or m.startswith("hta.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "psutil", None)
    with pytest.raises(OptionalDependencyError, match="'psutil' is missing"):
        ckhta.open_hta(".")


def test_hta_failure_becomes_typed_error() -> None:
    """GIVEN an HTA analysis that raises inside HTA
    WHEN it runs through ckprof
    THEN HtaAnalysisError names the analysis, the trace folder and HTA's error."""

    def broken() -> None:
        raise ValueError("Cannot specify both 'axis' and 'index'/'columns'")

    with pytest.raises(ckhta.HtaAnalysisError) as err:
        ckhta._run_hta("critical path", "/runs/job42", broken)
    text = str(err.value)
    assert text.startswith("/runs/job42: HTA's critical path failed on this trace (ValueError: Cannot specify")
    assert isinstance(err.value, CkprofError)


def test_missing_path_is_trace_not_found(tmp_path: Path) -> None:
    """GIVEN a folder without traces WHEN labelled THEN TraceNotFoundError (exit 3)."""
    with pytest.raises(CkprofError) as err:
        ckhta.label_hta(tmp_path)
    assert err.value.exit_code == 3


# ----------------------------------------------------------------- real GPU traces


@pytest.mark.shared_traces
def test_every_hta_event_is_labelled_and_matched(v100_labels: ckhta.HtaLabels) -> None:
    """GIVEN HTA's frame of a real V100 training trace
    WHEN ckprof labels it
    THEN every row is matched to a ckprof event and carries step/phase/recompute_region."""
    frame = v100_labels.frames[0]
    match = v100_labels.match.iloc[0]
    assert match["matched"] == match["events"] == len(frame)
    assert (frame["ckprof_event"] >= 0).all()
    assert set(frame["phase"].astype(str)) <= set(PHASES)
    assert {"forward", "backward", "optimizer"} <= set(frame["phase"].astype(str))
    assert (frame.loc[frame["phase"] != "recompute", "recompute_region"] == "").all()
    steps = set(frame.loc[frame["step"] >= 0, "step"])
    assert steps <= set(v100_labels.analyses[0].phases.steps["step"])


@pytest.mark.shared_traces
def test_matched_rows_are_the_same_events(v100_labels: ckhta.HtaLabels) -> None:
    """GIVEN the labelled frame
    WHEN each HTA row is compared with the ckprof event it was joined to
    THEN names agree and start times agree within HTA's microsecond rounding."""
    frame = v100_labels.frames[0]
    events = v100_labels.analyses[0].trace.events
    row = frame["ckprof_event"].to_numpy()
    names = v100_labels.symbol_names(0)
    assert (events["name"].astype(str).to_numpy()[row] == names.astype(str)).all()
    delta = events["ts_ns"].to_numpy()[row] - frame["ts"].to_numpy() * 1000 - v100_labels.match["offset_ns"].iloc[0]
    assert np.abs(delta).max() <= 1000


@pytest.mark.shared_traces
def test_gpu_labels_follow_ckprof_attribution(v100_labels: ckhta.HtaLabels) -> None:
    """GIVEN ckprof's attribution (a kernel takes the phase of the op that launched it)
    WHEN HTA's GPU rows are labelled
    THEN their phase and step are exactly ckprof's for the same kernel."""
    frame = v100_labels.frames[0]
    gpu = frame[frame["stream"] != -1]
    assert len(gpu) > 1000
    ck = v100_labels.analyses[0].time.gpu_events.set_index("event")
    joined = gpu[["ckprof_event", "phase", "step"]].merge(
        ck[["phase", "step"]], left_on="ckprof_event", right_index=True, how="left", suffixes=("", "_ck"))
    inside = joined["phase_ck"].notna()
    assert inside.mean() > 0.95
    assert (joined.loc[inside, "phase"].astype(str) == joined.loc[inside, "phase_ck"].astype(str)).all()
    assert (joined.loc[inside, "step"] == joined.loc[inside, "step_ck"]).all()


@pytest.mark.shared_traces
def test_labels_and_ckprof_agree_on_the_launch_window(tmp_path_factory: pytest.TempPathFactory) -> None:
    """GIVEN the torch.compile A100 trace whose window opened with 872 kernels of the
    warmup step still queued (launched before profiling)
    WHEN HTA's rows are labelled
    THEN no GPU row is labelled with a step unless ckprof attributed it, and the GPU
    time per step of HTA's labelled rows equals ckprof's for every step HTA keeps."""
    _need_hta()
    labels = ckhta.label_hta(_copy_rank_dir(tmp_path_factory, COMPILED))
    frame = labels.frames[0]
    gpu = frame[frame["stream"] != -1]
    ck = labels.analyses[0].time.gpu_events
    attributed = set(ck["event"].tolist())
    stepped = gpu[gpu["step"] >= 0]
    assert set(stepped["ckprof_event"].tolist()) <= attributed
    hta_ms = stepped.groupby("step")["dur"].sum() / 1e3
    ck_ms = ck.groupby("step")["dur_ns"].sum() / 1e6
    assert len(hta_ms) >= 3
    for step, ms in hta_ms.items():
        assert ms == pytest.approx(ck_ms[step], abs=0.001 * len(stepped)), step
    assert ck_ms[550] == pytest.approx(77.21, abs=0.01)


@pytest.mark.shared_traces
def test_hta_objects_are_not_mutated(amd_hta: tuple[Any, pd.DataFrame, Path, list[str]],
                                     amd_labels: ckhta.HtaLabels) -> None:
    """GIVEN an HTA TraceAnalysis built by the user (AMD MI250 trace)
    WHEN ckprof labels it and runs every per-phase analysis
    THEN HTA's own frame keeps its columns and values, and the folder gets no new files."""
    ta, original, folder, files_before = amd_hta
    tables = ckhta.hta_phase_tables(amd_labels)
    assert {"forward", "backward", "optimizer"} <= set(tables.kernel_time["phase"])
    after = ta.t.get_trace(0)
    assert list(after.columns) == list(original.columns)
    pd.testing.assert_frame_equal(after, original)
    assert "phase" in amd_labels.frames[0].columns
    assert amd_labels.hta is ta
    assert sorted(p.name for p in folder.iterdir()) == files_before


@pytest.mark.shared_traces
def test_with_counters_output_is_not_read_as_a_rank(tmp_path: Path) -> None:
    """GIVEN a folder where HTA once wrote rank0_with_counters.json.gz next to the trace,
    and a ckprof capture wrote its memory timeline (rank0.raw.json.gz)
    WHEN ckprof opens it with HTA
    THEN only the real trace is loaded (one rank), not those as others."""
    import gzip

    _need_hta()
    src = SHARED / AMD
    if not src.is_file():
        pytest.skip("../shared/traces not present")
    shutil.copy(src, tmp_path / "rank0.json.gz")
    shutil.copy(src, tmp_path / "rank0_with_counters.json.gz")
    with gzip.open(tmp_path / "rank0.raw.json.gz", "wt") as fh:
        fh.write("[[1000, 0, 512, 1], [2000, 2, 512, 1]]")
    ta = ckhta.open_hta(tmp_path)
    assert list(ta.t.trace_files.values()) == [str((tmp_path / "rank0.json.gz").resolve())]


@pytest.mark.shared_traces
def test_two_ranks_are_labelled_separately(tmp_path: Path) -> None:
    """GIVEN a folder with two rank traces (the MI250 trace as rank 0, and as rank 1
    shifted 1 ms later, as distributedInfo says)
    WHEN the phase tables are built
    THEN both ranks are matched completely despite HTA aligning all ranks to one clock,
    and each rank's phase split is the same."""
    _need_hta()
    src = SHARED / AMD
    if not src.is_file():
        pytest.skip("../shared/traces not present")
    with gzip.open(src, "rt") as fh:
        doc = json.load(fh)
    for rank, shift_us in ((0, 0.0), (1, 1000.0)):
        events = [dict(e, ts=e["ts"] + shift_us) if "ts" in e else e for e in doc["traceEvents"]]
        one = {**doc, "traceEvents": events,
               "distributedInfo": {"backend": "nccl", "rank": rank, "world_size": 2}}
        with gzip.open(tmp_path / f"job_rank{rank}.json.gz", "wt") as fh:
            json.dump(one, fh)
    tables = ckhta.hta_phase_tables(tmp_path)
    match = tables.match.set_index("rank")
    assert list(match.index) == [0, 1]
    assert (match["matched"] == match["events"]).all()
    assert match.loc[1, "offset_ns"] - match.loc[0, "offset_ns"] == 0  # HTA subtracts one min_ts for all ranks
    kt = tables.kernel_time.set_index(["rank", "phase"])["kernel_time_us"]
    assert kt.loc[0].to_dict() == kt.loc[1].to_dict()


@pytest.mark.shared_traces
def test_phase_kernel_times_add_up_to_hta_total(v100_labels: ckhta.HtaLabels,
                                                 v100_tables: ckhta.HtaPhaseTables) -> None:
    """GIVEN HTA's own GPU kernel breakdown of the whole trace
    WHEN ckprof splits it by phase
    THEN the per-phase kernel times (and the per-kernel rows) sum to HTA's total exactly."""
    with ckhta._quiet_hta():
        _, kernels = v100_labels.hta.get_gpu_kernel_breakdown(
            visualize=False, num_kernels=10**9, duration_ratio=1.0, include_memory_kernels=True)
    hta_total = float(kernels["sum (us)"].sum())
    kt = v100_tables.kernel_time
    assert hta_total > 0
    assert float(kt["kernel_time_us"].sum()) == hta_total
    assert math.isclose(float(kt["pct"].sum()), 100.0)
    per_phase = v100_tables.kernels.groupby("phase")["sum_us"].sum()
    assert per_phase.to_dict() == kt.set_index("phase")["kernel_time_us"].to_dict()
    assert {"forward", "backward", "optimizer"} <= set(kt["phase"])
    types = v100_tables.kernel_types.groupby("phase")["pct"].sum()
    assert np.allclose(types.to_numpy(), 100.0)


@pytest.mark.shared_traces
def test_step_tables_add_up_to_the_whole(v100_labels: ckhta.HtaLabels,
                                         v100_tables: ckhta.HtaPhaseTables) -> None:
    """GIVEN the tables of every step HTA kept
    WHEN added up per phase
    THEN they give the whole-trace tables (kernel time and idle time); an unknown step
    is refused with the steps that exist."""
    frame = v100_labels.frames[0]
    gpu_steps = sorted(int(x) for x in frame.loc[frame["stream"] != -1, "step"].unique())
    assert len(gpu_steps) >= 2 and -1 not in gpu_steps
    per_step = [ckhta.hta_phase_tables(v100_labels, step=s) for s in gpu_steps]
    kernel = pd.concat([t.kernel_time for t in per_step]).groupby("phase")["kernel_time_us"].sum()
    assert kernel.to_dict() == v100_tables.kernel_time.set_index("phase")["kernel_time_us"].to_dict()
    idle = pd.concat([t.idle for t in per_step]).groupby(["phase", "idle_category"])["idle_time_us"].sum()
    whole = v100_tables.idle.groupby(["phase", "idle_category"])["idle_time_us"].sum()
    assert idle.to_dict() == whole.to_dict()
    with pytest.raises(NotCapturedError, match=f"steps: {', '.join(map(str, gpu_steps))}"):
        ckhta.hta_phase_tables(v100_labels, step=10**6)


@pytest.mark.shared_traces
def test_idle_time_by_phase_sums_to_hta_idle_time(v100_labels: ckhta.HtaLabels,
                                                   v100_tables: ckhta.HtaPhaseTables) -> None:
    """GIVEN HTA's idle-time breakdown per stream and category
    WHEN ckprof splits it by the phase of the kernel that waited
    THEN summing the phases gives HTA's numbers exactly."""
    with ckhta._quiet_hta():
        idle, _ = v100_labels.hta.get_idle_time_breakdown(ranks=[0], visualize=False)
    ours = v100_tables.idle.groupby(["stream", "idle_category"])["idle_time_us"].sum()
    theirs = idle.set_index(["stream", "idle_category"])["idle_time"].astype(float)
    assert ours.to_dict() == theirs.to_dict()
    assert len(v100_tables.idle["phase"].unique()) >= 2


@pytest.mark.shared_traces
def test_comm_overlap_by_phase_on_ddp_trace(ddp_labels: ckhta.HtaLabels) -> None:
    """GIVEN a DDP rank trace with NCCL kernels
    WHEN the overlap is split by phase
    THEN the DDP all-reduce shows up in backward, and the communication-time weighted
    mean of the per-phase overlaps is HTA's own overlap for the rank."""
    tables = ckhta.hta_phase_tables(ddp_labels)
    ov = tables.comm_overlap
    assert "backward" in set(ov["phase"])
    assert ((ov["overlap_pct"] >= 0) & (ov["overlap_pct"] <= 100)).all()
    with ckhta._quiet_hta():
        hta_pct = float(ddp_labels.hta.get_comm_comp_overlap(visualize=False)["comp_comm_overlap_pctg"].iloc[0])
    weighted = float((ov["overlap_pct"] * ov["comm_time_us"]).sum() / ov["comm_time_us"].sum())
    assert abs(weighted - hta_pct) < 0.05
    comm = tables.kernel_types[tables.kernel_types["kernel_type"].str.contains("COMMUNICATION")]
    assert "backward" in set(comm["phase"])


@pytest.mark.shared_traces
def test_trace_analysis_view_runs_any_hta_analysis_per_phase(v100_labels: ckhta.HtaLabels,
                                                              v100_tables: ckhta.HtaPhaseTables) -> None:
    """GIVEN the labels
    WHEN a user asks for HTA's TraceAnalysis restricted to backward kernels
    THEN HTA's own breakdown on it equals ckprof's backward kernel time."""
    view = v100_labels.trace_analysis("backward")
    assert view is not v100_labels.hta and view.t is not v100_labels.hta.t
    with ckhta._quiet_hta():
        _, kernels = view.get_gpu_kernel_breakdown(visualize=False, num_kernels=10**9,
                                                   duration_ratio=1.0, include_memory_kernels=True)
    kt = v100_tables.kernel_time.set_index("phase")["kernel_time_us"]
    assert float(kernels["sum (us)"].sum()) == kt["backward"]
    with pytest.raises(ValueError):
        v100_labels.trace_analysis("fwd")


@pytest.mark.shared_traces
def test_render_formats_on_real_tables(v100_tables: ckhta.HtaPhaseTables) -> None:
    """GIVEN the tables of a real trace
    WHEN rendered in each format of ckprof analyze --with-hta
    THEN text shows every title, json parses with every table, csv is one tidy table."""
    text = ckhta.render_hta_tables(v100_tables, "table")
    for _, title in ckhta.HtaPhaseTables.TITLES:
        assert title in text
    doc = json.loads(ckhta.render_hta_tables(v100_tables, "json"))
    assert {"kernel_time", "kernel_types", "kernels", "idle", "comm_overlap", "memory", "match"} <= set(doc)
    assert sum(r["kernel_time_us"] for r in doc["kernel_time"]) == float(
        v100_tables.kernel_time["kernel_time_us"].sum())
    csv_text = ckhta.render_hta_tables(v100_tables, "csv")
    assert csv_text.splitlines()[0].startswith("table,")
    md = ckhta.render_hta_tables(v100_tables, "markdown")
    assert md.count("### ") == len(ckhta.HtaPhaseTables.TITLES)
    with pytest.raises(ValueError):
        ckhta.render_hta_tables(v100_tables, "xml")


# ----------------------------------------------------------------- CPU capture


@pytest.fixture(scope="module")
def cpu_trace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real CPU trace of a tiny training loop with one checkpointed block (3 profiled steps)."""
    _need_hta()
    torch = pytest.importorskip("torch")
    from torch.profiler import ProfilerActivity, profile, schedule
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    head = torch.nn.Linear(16, 4)
    params = [*block.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.1)
    x, y = torch.randn(8, 16), torch.randn(8, 4)
    folder = tmp_path_factory.mktemp("cpu_trace")
    out = str(folder / "rank0.pt.trace.json")
    with warnings.catch_warnings(), profile(
            activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=1, active=3),
            on_trace_ready=lambda p: p.export_chrome_trace(out)) as prof:
        warnings.simplefilter("ignore", UserWarning)  # "Profiler clears events at the end of each cycle"
        for _ in range(4):
            opt.zero_grad()
            hidden = checkpoint(block, x, use_reentrant=False)
            torch.nn.functional.mse_loss(head(hidden), y).backward()
            opt.step()
            prof.step()
    return folder


@pytest.mark.torch
def test_cpu_trace_labels_and_clear_error(cpu_trace_dir: Path) -> None:
    """GIVEN a CPU-only trace of a checkpointed model captured here
    WHEN labelled THEN every HTA row matches a ckprof event, forward/backward/optimizer
    appear, and the recomputed ops inside backward are labelled recompute with a region;
    WHEN the GPU tables are requested THEN NotCapturedError says a GPU trace is needed."""
    labels = ckhta.label_hta(cpu_trace_dir)
    frame = labels.frames[0]
    assert len(frame) > 0
    assert labels.match["matched"].iloc[0] == len(frame)
    assert {"forward", "backward", "optimizer", "recompute"} <= set(frame["phase"].astype(str))
    recompute = frame[frame["phase"] == "recompute"]
    assert (recompute["recompute_region"] != "").all()
    names = set(labels.symbol_names(0)[(frame["phase"] == "recompute").to_numpy()].astype(str))
    assert "aten::linear" in names or "aten::addmm" in names
    with pytest.raises(NotCapturedError, match="no GPU kernels"):
        ckhta.hta_phase_tables(labels)


# ----------------------------------------------------------------- join invariants


@st.composite
def _events_and_hta_view(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, int]:
    """Random ckprof events, and HTA's view of them: ts rounded up to whole us, shifted
    to start at 0, CPU events from a cut time on dropped, one correlation group of GPU
    events dropped, rows shuffled. Returns (events, frame, source_row, offset_ns)."""
    n = draw(st.integers(1, 60))
    names = draw(st.lists(st.sampled_from(["aten::mm", "aten::add", "cudaLaunchKernel", "gemm"]),
                          min_size=n, max_size=n))
    tids = draw(st.lists(st.sampled_from([1, 2, 7]), min_size=n, max_size=n))
    ts = draw(st.lists(st.integers(0, 200_000), min_size=n, max_size=n))
    corr = draw(st.lists(st.sampled_from([-1, -1, 10, 11, 12]), min_size=n, max_size=n))
    base_ns = draw(st.integers(0, 10**12))
    events = pd.DataFrame({
        "name": pd.Categorical(names), "pid": 1, "tid": tids,
        "ts_ns": np.asarray(ts, dtype=np.int64) + base_ns, "dur_ns": 500, "correlation": corr,
    }).sort_values("ts_ns", kind="stable").reset_index(drop=True)
    stream = np.where(events["tid"] == 7, 7, -1)
    ts_us = -(-events["ts_ns"].to_numpy() // 1000)  # ceil
    min_us = int(ts_us.min())
    cut = draw(st.integers(0, 200_001)) + base_ns
    drop_corr = draw(st.sampled_from([10, 11, 12]))
    keep = np.where(stream == -1, events["ts_ns"].to_numpy() < cut, events["correlation"] != drop_corr)
    frame = pd.DataFrame({
        "name": events["name"].astype(str).to_numpy(), "pid": 1, "tid": events["tid"].to_numpy(),
        "ts": ts_us - min_us, "dur": 0.0, "correlation": events["correlation"].to_numpy(),
        "stream": stream,
    })[keep]
    source = np.flatnonzero(keep)
    order = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).permutation(len(frame))
    return events, frame.iloc[order].reset_index(drop=True), source[order], min_us * 1000


@settings(max_examples=40, deadline=None)
@given(_events_and_hta_view())
def test_join_recovers_every_kept_event(case: tuple[pd.DataFrame, pd.DataFrame, np.ndarray, int]) -> None:
    """GIVEN any events and an HTA-style view of them (rounded, shifted, filtered, shuffled)
    WHEN HTA rows are joined to ckprof events
    THEN every row maps to the event it came from, or to an indistinguishable twin
    (same name, thread, correlation and microsecond)."""
    events, frame, source, _ = case
    row, _offset = ckhta._match_events(frame, frame["name"].to_numpy(dtype=object), events, {})
    assert (row >= 0).all()
    assert len(set(row.tolist())) == len(row)
    key = ["name", "pid", "tid", "correlation"]
    got = events.iloc[row][key].astype(str).to_numpy()
    want = events.iloc[source][key].astype(str).to_numpy()
    assert (got == want).all()
    us = -(-events["ts_ns"].to_numpy() // 1000)
    assert (us[row] == us[source]).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 10)), min_size=1, max_size=30))
def test_merged_time_is_the_union_length(intervals: list[tuple[int, int]]) -> None:
    """GIVEN kernels as [ts, ts+dur) intervals WHEN merged THEN the time equals the
    number of covered unit slots (brute force)."""
    df = pd.DataFrame(intervals, columns=["ts", "dur"])
    covered = set()
    for ts, dur in intervals:
        covered.update(range(ts, ts + dur))
    assert ckhta._merged_us(df) == float(len(covered))


# ----------------------------------------------------------------- rendering (golden)


def _tiny_tables() -> ckhta.HtaPhaseTables:
    return ckhta.HtaPhaseTables(
        kernel_time=pd.DataFrame({"rank": [0, 0], "phase": ["forward", "recompute"], "kernels": [3, 1],
                                  "kernel_time_us": [300.0, 100.0], "pct": [75.0, 25.0]}),
        kernel_types=pd.DataFrame({"rank": [0], "phase": ["forward"], "kernel_type": ["COMPUTATION"],
                                   "time_us": [300.0], "pct": [100.0]}),
        kernels=pd.DataFrame({"rank": [0], "phase": ["forward"], "kernel_type": ["COMPUTATION"],
                              "name": ["gemm"], "count": [3], "sum_us": [300.0], "mean_us": [100.0],
                              "max_us": [120.0], "min_us": [80.0], "std_us": [float("nan")]}),
        idle=pd.DataFrame(columns=["rank", "stream", "phase", "idle_category", "idle_time_us",
                                   "pct_of_stream_idle"]),
        comm_overlap=pd.DataFrame(columns=["rank", "phase", "comm_time_us", "overlap_pct"]),
        memory=pd.DataFrame(columns=["rank", "phase", "device", "peak_bytes"]),
        match=pd.DataFrame({"rank": [0], "events": [4], "matched": [4], "unmatched_gpu": [0],
                            "unmatched_cpu": [0], "offset_ns": [0]}),
        notes=("no communication kernels: the overlap table is empty",),
        where="runs/job42",
    )


GOLDEN_TEXT = """\
HTA analyses split by ckprof phase: runs/job42

GPU kernel time by phase (HTA kernels, us)
  rank  phase      kernels  kernel_time_us   pct
  ----  ---------  -------  --------------  ----
     0  forward          3           300.0  75.0
     0  recompute        1           100.0  25.0

HTA kernel-type breakdown by phase (us)
  rank  phase    kernel_type  time_us    pct
  ----  -------  -----------  -------  -----
     0  forward  COMPUTATION    300.0  100.0

HTA top kernels by phase (us)
  rank  phase    kernel_type  name  count  sum_us  mean_us  max_us  min_us  std_us
  ----  -------  -----------  ----  -----  ------  -------  ------  ------  ------
     0  forward  COMPUTATION  gemm      3   300.0    100.0   120.0    80.0       —

HTA GPU idle time by phase (us; a gap counts for the kernel after it)
  (none)

HTA communication/computation overlap by phase
  (none)

ckprof peak memory by phase (HTA drops [memory] events)
  (none)

notes:
  - no communication kernels: the overlap table is empty
"""


def test_render_text_golden() -> None:
    """GIVEN fixed tables WHEN rendered as text THEN the output is exactly the golden text."""
    assert ckhta.render_hta_tables(_tiny_tables(), "table") == GOLDEN_TEXT


def test_render_json_is_strict_json() -> None:
    """GIVEN a NaN in a table WHEN rendered as JSON THEN it becomes null (valid JSON)."""
    doc = json.loads(ckhta.render_hta_tables(_tiny_tables(), "json"))
    assert doc["kernels"][0]["std_us"] is None
    assert doc["kernel_time"][1] == {"rank": 0, "phase": "recompute", "kernels": 1,
                                     "kernel_time_us": 100.0, "pct": 25.0}
    assert doc["notes"] == ["no communication kernels: the overlap table is empty"]


# ----------------------------------------------------------------- command line


@pytest.mark.shared_traces
def test_cli_with_hta_prints_phase_tables(tmp_path: Path) -> None:
    """GIVEN a folder holding the MI250 rank trace
    WHEN `ckprof analyze --with-hta DIR` runs
    THEN it exits 0 and prints HTA's kernel time split into forward, backward and optimizer."""
    _need_hta()
    from click.testing import CliRunner

    from ckprof.cli.main import cli

    src = SHARED / AMD
    if not src.is_file():
        pytest.skip("../shared/traces not present")
    shutil.copy(src, tmp_path / "rank0.json.gz")
    result = CliRunner().invoke(cli, ["analyze", "--with-hta", str(tmp_path)])
    assert result.exit_code == 0, result.output
    block = result.output.split("GPU kernel time by phase (HTA kernels, us)\n", 1)[1].split("\n\n", 1)[0]
    assert [line.split()[1] for line in block.splitlines()[2:]] == ["forward", "backward", "optimizer"]


def test_cli_with_hta_without_hta_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN HTA is not installed WHEN `ckprof analyze --with-hta` runs on a trace
    THEN exit code 11 and a one-line message naming the extra, no traceback."""
    from click.testing import CliRunner

    from ckprof.cli.main import cli

    for mod in [m for m in sys.modules if m == "hta" or m.startswith("hta.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "hta", None)
    (tmp_path / "rank0.json").write_text('{"traceEvents": []}')
    result = CliRunner().invoke(cli, ["analyze", "--with-hta", str(tmp_path)])
    assert result.exit_code == 11
    assert "pip install 'ckprof[hta]'" in result.output
    assert "Traceback" not in result.output
