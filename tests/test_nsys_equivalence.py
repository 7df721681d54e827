"""The same run read from its Chrome trace and from its nsys sqlite export gives the
same phases, recompute attribution, GPU time and memory, through the same code.

The nsys side is made by tests/support/nsys_fixture.trace_to_nsys_sqlite (what
``nsys export`` of that run would hold: NVTX ranges, CUDA runtime calls, GPU activity,
CUDA memory events). Two runs:

* a synthetic GPU training trace (benchmarks/synth_trace.py: checkpointed blocks,
  recompute on the autograd thread, CUDA memory, kernels launched in one phase and
  running in the next);
* a real CPU capture with ckprof markers (tests/support/capture.py, variant
  "markers") with synthetic CUDA launches and kernels added to its ops.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from support.nsys_fixture import trace_to_nsys_sqlite

from ckprof.analysis import analyze
from ckprof.trace.load import load_trace
from ckprof.trace.nsys import load_nsys

REPO = Path(__file__).resolve().parents[1]


def _synth_module():
    path = REPO / "benchmarks" / "synth_trace.py"
    if not path.exists():
        pytest.skip("benchmarks/synth_trace.py not present")
    spec = importlib.util.spec_from_file_location("ckprof_synth_trace", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def assert_same_analysis(chrome, nsys) -> None:
    """Every table the user sees is identical (exact, not approximate)."""
    assert nsys.phases.recompute_found_by == chrome.phases.recompute_found_by == "markers"
    for table in ("totals_table", "steps_table", "regions_table"):
        pd.testing.assert_frame_equal(getattr(nsys, table)(), getattr(chrome, table)(),
                                      obj=table)
    # at_op names the innermost CPU op at the peak: nsys records no CPU ops
    pd.testing.assert_frame_equal(nsys.memory_table().drop(columns="at_op"),
                                  chrome.memory_table().drop(columns="at_op"))
    pd.testing.assert_frame_equal(nsys.phases.segments, chrome.phases.segments)
    pd.testing.assert_frame_equal(nsys.phases.recompute, chrome.phases.recompute)
    assert nsys.time.recompute_overhead_pct == chrome.time.recompute_overhead_pct
    nsys.time.self_check()
    chrome.time.self_check()


# ------------------------------------------------------------- synthetic GPU training


@pytest.fixture(scope="module")
def synth_pair(tmp_path_factory: pytest.TempPathFactory):
    synth = _synth_module()
    d = tmp_path_factory.mktemp("synth")
    synth.write_trace(d / "run.json", steps=2, layers=4, checkpoint_every=2, hidden=256,
                      tokens=256)
    chrome = load_trace(d / "run.json")
    nsys = load_nsys(trace_to_nsys_sqlite(chrome, d / "run.sqlite"))
    return chrome, nsys


def test_synthetic_gpu_run_same_tables(synth_pair) -> None:
    """GIVEN a GPU training trace with checkpointed blocks and its nsys export
    WHEN both are analysed
    THEN totals, steps, regions (recompute), segments, memory and overhead are
    identical, with non-zero recompute GPU time per region."""
    chrome_trace, nsys_trace = synth_pair
    nsys_trace.check()
    chrome, nsys = analyze(chrome_trace), analyze(nsys_trace)
    assert_same_analysis(chrome, nsys)
    regions = nsys.regions_table()
    assert set(regions["region"]) == {"blk0", "blk2"}
    assert (regions["gpu_ms"] > 0).all()
    assert nsys.memory.captured


def test_synthetic_gpu_run_same_gpu_events(synth_pair) -> None:
    """GIVEN the same pair
    WHEN GPU events and launches are compared row by row
    THEN device, stream, times and correlation are identical (gpu_user_annotation
    mirrors and CPU ops have no nsys equivalent and are not compared)."""
    chrome, nsys = (t.events for t in synth_pair)
    cols = ["pid", "tid", "ts_ns", "dur_ns", "correlation"]
    for kind in ("kernel", "runtime"):
        a = chrome.loc[chrome["kind"] == kind, cols].reset_index(drop=True)
        b = nsys.loc[nsys["kind"] == kind, cols].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, obj=kind)


def test_cli_analyze_reads_the_sqlite_export(synth_pair) -> None:
    """GIVEN the nsys export of the synthetic run
    WHEN `ckprof analyze report.sqlite --format json` runs
    THEN it exits 0 and reports the same recompute regions and overhead as the
    Chrome trace."""
    from click.testing import CliRunner

    from ckprof.cli.main import cli

    chrome_trace, nsys_trace = synth_pair
    result = CliRunner().invoke(cli, ["analyze", nsys_trace.path, "--format", "json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    want = json.loads(CliRunner().invoke(cli, ["analyze", chrome_trace.path, "--format",
                                               "json"]).output)
    assert got["recompute_overhead_pct"] == want["recompute_overhead_pct"]
    assert got["regions"] == want["regions"]
    assert got["totals"] == want["totals"]


def test_cli_analyze_sqlite_without_nvtx_exits_4(tmp_path: Path) -> None:
    """GIVEN an nsys export made without --trace=nvtx
    WHEN `ckprof analyze` reads it
    THEN exit code 4 and a one-line message saying how to profile, no traceback."""
    from click.testing import CliRunner
    from support.nsys_fixture import GpuActivity, Launch, write_nsys_sqlite

    from ckprof.cli.main import cli

    path = write_nsys_sqlite(tmp_path / "nonvtx.sqlite", omit=["NVTX_EVENTS"],
                             launches=[Launch("cudaLaunchKernel_v7000", 1, 2, 1)],
                             gpu=[GpuActivity("kernel", "k", 3, 4, 1)])
    result = CliRunner().invoke(cli, ["analyze", str(path)])
    assert result.exit_code == 4
    assert "no NVTX_EVENTS table" in result.output and "--trace=cuda,nvtx" in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------- real CPU capture + GPU kernels


def _with_synthetic_gpu(obj: dict, delay_us: float = 40.0) -> dict:
    """Add a cudaLaunchKernel inside every leaf aten op of a CPU trace and the kernel it
    launched ``delay_us`` later on device 0, stream 7 (often in the next phase)."""
    events = obj["traceEvents"]
    ops = [e for e in events if e.get("ph") == "X" and e.get("cat") == "cpu_op"
           and str(e.get("name", "")).startswith("aten::")]
    ops.sort(key=lambda e: (e["pid"], e["tid"], float(e["ts"]), -float(e["dur"])))
    leaves = []
    for i, e in enumerate(ops):
        end = float(e["ts"]) + float(e["dur"])
        nxt = ops[i + 1] if i + 1 < len(ops) else None
        inside = nxt is not None and nxt["tid"] == e["tid"] and float(nxt["ts"]) < end
        if not inside and float(e["dur"]) >= 0.004:
            leaves.append(e)
    added = []
    for n, e in enumerate(leaves):
        corr = 900_000 + n
        ts = round(float(e["ts"]) + float(e["dur"]) / 2 - 0.001, 3)
        added.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel",
                      "pid": e["pid"], "tid": e["tid"], "ts": ts, "dur": 0.001,
                      "args": {"correlation": corr, "cbid": 211}})
        added.append({"ph": "X", "cat": "kernel", "name": f"kernel_{e['name'][6:]}",
                      "pid": 0, "tid": 7, "ts": round(ts + delay_us, 3),
                      "dur": round(float(e["dur"]) / 2, 3),
                      "args": {"correlation": corr, "device": 0, "stream": 7}})
    out = dict(obj)
    out["traceEvents"] = events + added
    return out


@pytest.fixture(scope="module")
def captured_pair(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")
    from support import capture
    d = tmp_path_factory.mktemp("captured")
    path = Path(capture.capture_trace(d, "markers", steps=2))
    opener = __import__("gzip").open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        obj = json.load(f)
    gpu_path = d / "with_gpu.json"
    gpu_path.write_text(json.dumps(_with_synthetic_gpu(obj)))
    chrome = load_trace(gpu_path)
    nsys = load_nsys(trace_to_nsys_sqlite(chrome, d / "with_gpu.sqlite"))
    return chrome, nsys


def test_captured_cpu_run_with_kernels_same_recompute_attribution(captured_pair) -> None:
    """GIVEN a real CPU capture with ckprof markers, kernels added to its ops, and the
    nsys export of that run (CPU ops and CPU memory have no nsys equivalent)
    WHEN both are analysed
    THEN phases, recompute attribution and GPU time per phase and region are identical;
    recompute has GPU time."""
    chrome_trace, nsys_trace = captured_pair
    chrome, nsys = analyze(chrome_trace), analyze(nsys_trace)
    assert nsys.phases.recompute_found_by == chrome.phases.recompute_found_by == "markers"
    for table in ("totals_table", "steps_table", "regions_table"):
        pd.testing.assert_frame_equal(getattr(nsys, table)(), getattr(chrome, table)(),
                                      obj=table)
    pd.testing.assert_frame_equal(nsys.phases.segments, chrome.phases.segments)
    assert nsys.time.recompute_overhead_pct == chrome.time.recompute_overhead_pct
    totals = nsys.totals_table().set_index("phase")
    assert totals.loc["recompute", "gpu_ms"] > 0
    assert (nsys.regions_table()["gpu_ms"] > 0).all()
    # the CPU capture has CPU memory only: nsys has none, and says so
    assert nsys_trace.memory.empty and not nsys.memory.captured


# ------------------------------------------------------------- real GPU traces (shared)


@pytest.mark.shared_traces
@pytest.mark.parametrize("name", ["h100_bert_small.json.gz", "v100_cnn_train_rank0.pt.trace.json.gz"])
def test_real_gpu_trace_round_trip(shared_traces: Path, tmp_path: Path, name: str) -> None:
    """GIVEN a real GPU Kineto trace and the nsys export of it
    WHEN both are loaded
    THEN kernels, memcpy/memset and runtime calls match row for row (device, stream,
    times, correlation; thread ids compared where they fit nsys's 24-bit field) and the
    CUDA memory counter matches event for event."""
    chrome = load_trace(shared_traces / name)
    nsys = load_nsys(trace_to_nsys_sqlite(chrome, tmp_path / "real.sqlite"))
    nsys.check()
    cols = ["pid", "tid", "ts_ns", "dur_ns", "correlation"]
    for kind in ("kernel", "gpu_memcpy", "gpu_memset", "runtime"):
        a = chrome.events.loc[chrome.events["kind"] == kind, cols].reset_index(drop=True)
        b = nsys.events.loc[nsys.events["kind"] == kind, cols].reset_index(drop=True)
        fits = (a["tid"] >= 0) & (a["tid"] < 2**24)
        assert len(a) == len(b)
        pd.testing.assert_frame_equal(a[fits], b[fits], obj=kind)
        pd.testing.assert_frame_equal(a.drop(columns="tid"), b.drop(columns="tid"), obj=kind)
    mem = chrome.memory[chrome.memory["device"].astype(str).str.startswith("cuda")]
    got = nsys.memory["total_allocated_bytes"].to_numpy()
    if len(mem):
        assert got[-len(mem):].tolist() == mem["total_allocated_bytes"].tolist()
    else:
        assert nsys.memory.empty


def test_emit_nvtx_run_same_sequence_recompute(tmp_path_factory: pytest.TempPathFactory) -> None:
    """GIVEN a real CPU capture of plain torch checkpointing (no ckprof markers) and
    the nsys export of that run under emit_nvtx (every op an NVTX range with its seq)
    WHEN both are analysed with the `sequence` recompute detection
    THEN phases, recompute occurrences and per-phase wall time are identical."""
    pytest.importorskip("torch")
    from support import capture
    d = tmp_path_factory.mktemp("emit_nvtx")
    chrome_trace = load_trace(capture.capture_trace(d, "plain", steps=1))
    nsys_trace = load_nsys(trace_to_nsys_sqlite(chrome_trace, d / "plain.sqlite",
                                                emit_nvtx=True))
    chrome = analyze(chrome_trace, recompute_detection="sequence")
    nsys = analyze(nsys_trace, recompute_detection="sequence")
    assert nsys.phases.recompute_found_by == chrome.phases.recompute_found_by == "sequence"
    assert len(chrome.phases.recompute) > 0
    pd.testing.assert_frame_equal(nsys.phases.recompute, chrome.phases.recompute)
    pd.testing.assert_frame_equal(nsys.phases.segments, chrome.phases.segments)
    for table in ("totals_table", "steps_table", "regions_table"):
        pd.testing.assert_frame_equal(getattr(nsys, table)(), getattr(chrome, table)(),
                                      obj=table)
