"""ckprof.trace.nsys: Nsight Systems sqlite exports -> Trace (no torch, no nsys needed).

Files are written by tests/support/nsys_fixture.py, which follows the schema in the
NOTE [ Nsight Systems sqlite schema ] of ckprof/trace/nsys.py.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.nsys_fixture import (
    GpuActivity,
    Launch,
    MemEvent,
    NvtxRange,
    global_tid,
    write_nsys_sqlite,
)

from ckprof.errors import EmptyTraceError, TraceFormatError, TraceNotFoundError
from ckprof.trace.nsys import is_nsys_sqlite, load_nsys

PID, TID = 4242, 4250

# One training step: forward with a checkpointed region, backward with its recompute,
# optimizer; one kernel launched in each, a memcpy, CUDA memory on two devices.
RANGES = [
    NvtxRange("ProfilerStep#3", 1_000, 20_000, PID, TID, domain=""),
    NvtxRange("ckprof::forward", 1_100, 6_000, PID, TID, domain="ckprof"),
    NvtxRange("ckprof::checkpoint::blk0", 1_200, 3_000, PID, TID, domain="ckprof"),
    NvtxRange("ckprof::backward", 6_100, 15_000, PID, TID, domain="ckprof"),
    NvtxRange("ckprof::recompute::blk0", 6_500, 8_000, PID, TID, domain="ckprof",
              registered=False),
    NvtxRange("ckprof::optimizer", 15_100, 19_000, PID, TID, domain="ckprof"),
]
LAUNCHES = [
    Launch("cudaLaunchKernel_v7000", 1_300, 1_400, 11, PID, TID),
    Launch("cudaLaunchKernel_v7000", 6_600, 6_700, 12, PID, TID),
    Launch("cudaMemcpyAsync_v3020", 15_200, 15_300, 13, PID, TID),
    Launch("cudaLaunchKernel_v7000", 15_400, 15_500, 14, PID, TID),
]
GPU = [
    GpuActivity("kernel", "void at::native::gemm<float>(float*)", 1_500, 2_500, 11, 0, 7, PID),
    GpuActivity("kernel", "void at::native::gemm<float>(float*)", 8_100, 9_000, 12, 0, 7, PID),
    GpuActivity("memcpy", "HtoD", 15_600, 15_700, 13, 0, 7, PID),
    GpuActivity("kernel", "multi_tensor_apply_kernel", 19_500, 19_900, 14, 0, 13, PID),
]
MEMORY = [
    MemEvent(1_350, 4096, 0, PID),
    MemEvent(6_650, 8192, 0, PID),
    MemEvent(6_660, 1 << 20, 0, PID, mem_kind=1),   # pinned host memory: not device memory
    MemEvent(9_100, -4096, 0, PID),
    MemEvent(15_450, 512, 1, PID),
]


def write_step(path: Path, **kwargs) -> Path:
    args = {"ranges": RANGES, "launches": LAUNCHES, "gpu": GPU, "memory": MEMORY, **kwargs}
    return write_nsys_sqlite(path, **args)


@pytest.fixture(scope="module")
def step_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_step(tmp_path_factory.mktemp("nsys") / "step.sqlite")


@pytest.fixture(scope="module")
def step_trace(step_file: Path):
    return load_nsys(step_file)


# ------------------------------------------------------------------------- detection


def test_is_nsys_sqlite_by_magic_bytes(tmp_path: Path, step_file: Path) -> None:
    """GIVEN an nsys export, a JSON trace, an empty file, a directory and no file
    WHEN is_nsys_sqlite looks at each
    THEN only the sqlite file is recognised, and nothing raises."""
    json_file = tmp_path / "t.json"
    json_file.write_text(json.dumps({"traceEvents": []}))
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    assert is_nsys_sqlite(step_file)
    assert not is_nsys_sqlite(json_file)
    assert not is_nsys_sqlite(empty)
    assert not is_nsys_sqlite(tmp_path)
    assert not is_nsys_sqlite(tmp_path / "missing.sqlite")


# --------------------------------------------------------------------- events contract


def test_events_table_of_one_step(step_trace) -> None:
    """GIVEN one step with NVTX markers, four launches and four GPU activities
    WHEN the export is loaded
    THEN the events table holds exactly those rows, in (ts, -dur) order, with the
    contract's kinds, decoded pid/tid, Kineto-style names, and NVTX nesting."""
    step_trace.check()
    ev = step_trace.events
    got = list(zip(ev["name"].astype(str), ev["kind"].astype(str), ev["cat"].astype(str),
                   ev["pid"], ev["tid"], ev["ts_ns"], ev["dur_ns"], ev["correlation"],
                   ev["parent"], ev["depth"], strict=True))
    gemm = "void at::native::gemm<float>(float*)"
    assert got == [
        ("ProfilerStep#3", "user_annotation", "nvtx", PID, TID, 1_000, 19_000, -1, -1, 0),
        ("ckprof::forward", "user_annotation", "nvtx:ckprof", PID, TID, 1_100, 4_900, -1, 0, 1),
        ("ckprof::checkpoint::blk0", "user_annotation", "nvtx:ckprof", PID, TID, 1_200, 1_800, -1, 1, 2),
        ("cudaLaunchKernel", "runtime", "cuda_runtime", PID, TID, 1_300, 100, 11, 2, 3),
        (gemm, "kernel", "kernel", 0, 7, 1_500, 1_000, 11, -1, 0),
        ("ckprof::backward", "user_annotation", "nvtx:ckprof", PID, TID, 6_100, 8_900, -1, 0, 1),
        ("ckprof::recompute::blk0", "user_annotation", "nvtx:ckprof", PID, TID, 6_500, 1_500, -1, 5, 2),
        ("cudaLaunchKernel", "runtime", "cuda_runtime", PID, TID, 6_600, 100, 12, 6, 3),
        (gemm, "kernel", "kernel", 0, 7, 8_100, 900, 12, -1, 0),
        ("ckprof::optimizer", "user_annotation", "nvtx:ckprof", PID, TID, 15_100, 3_900, -1, 0, 1),
        ("cudaMemcpyAsync", "runtime", "cuda_runtime", PID, TID, 15_200, 100, 13, 9, 2),
        ("cudaLaunchKernel", "runtime", "cuda_runtime", PID, TID, 15_400, 100, 14, 9, 2),
        ("Memcpy HtoD", "gpu_memcpy", "gpu_memcpy", 0, 7, 15_600, 100, 13, -1, 0),
        ("multi_tensor_apply_kernel", "kernel", "kernel", 0, 13, 19_500, 400, 14, -1, 0),
    ]
    assert (ev["seq"] == -1).all() and (ev["external_id"] == -1).all()
    assert step_trace.source_format == "nsys-sqlite"
    assert step_trace.ckprof is None
    assert step_trace.has_gpu and step_trace.has_markers


def test_memory_is_absolute_running_sum_per_device(step_trace) -> None:
    """GIVEN cudaMalloc/cudaFree events on two devices plus a pinned host allocation
    WHEN loaded
    THEN memory holds one row per device event with a per-device running total, the
    host allocation skipped."""
    mem = step_trace.memory
    assert list(zip(mem["ts_ns"], mem["device"].astype(str), mem["bytes"],
                    mem["total_allocated_bytes"], strict=True)) == [
        (1_350, "cuda:0", 4096, 4096),
        (6_650, "cuda:0", 8192, 12288),
        (9_100, "cuda:0", -4096, 8192),
        (15_450, "cuda:1", 512, 512),
    ]
    assert (mem["total_reserved_bytes"] == mem["total_allocated_bytes"]).all()


def test_memory_event_takes_the_thread_of_its_runtime_call(tmp_path: Path) -> None:
    """GIVEN a cudaMalloc on thread 51 and a memory event with its correlation id, and
    one memory event without a correlation id
    WHEN loaded
    THEN the first memory row carries (pid, tid) of the cudaMalloc call, the other
    tid -1; the cudaMalloc call is a runtime row like any other."""
    launches = [Launch("cudaMalloc_v3020", 100, 200, 5, pid=50, tid=51)]
    memory = [MemEvent(150, 1 << 20, pid=50, correlation=5), MemEvent(300, 64, pid=50)]
    trace = load_nsys(write_nsys_sqlite(tmp_path / "m.sqlite", launches=launches,
                                        memory=memory))
    trace.check()
    assert list(zip(trace.memory["pid"], trace.memory["tid"], strict=True)) == [(50, 51), (50, -1)]
    assert trace.events["name"].astype(str).tolist() == ["cudaMalloc"]


def test_frees_of_earlier_allocations_make_memory_relative(tmp_path: Path) -> None:
    """GIVEN a capture-range export whose first CUDA memory event frees a block
    allocated before collection started
    WHEN loaded
    THEN levels are shifted so the lowest is 0 and a note says memory is relative."""
    memory = [MemEvent(10, -4096), MemEvent(20, 1024), MemEvent(30, 8192, device=1)]
    trace = load_nsys(write_nsys_sqlite(tmp_path / "r.sqlite",
                                        ranges=[NvtxRange("ckprof::forward", 0, 50)],
                                        memory=memory))
    assert trace.memory["total_allocated_bytes"].tolist() == [0, 1024, 8192]
    assert any(n.startswith("cuda:0: nsys saw frees") for n in trace.notes)
    assert not any(n.startswith("cuda:1:") for n in trace.notes)


def test_no_memory_table_gives_empty_memory_and_a_note(tmp_path: Path) -> None:
    """GIVEN an export made without --cuda-memory-usage
    WHEN loaded
    THEN memory is empty (with the contract's columns) and a note says how to get it."""
    trace = load_nsys(write_step(tmp_path / "nomem.sqlite", memory=[]))
    trace.check()
    assert trace.memory.empty
    assert any("--cuda-memory-usage=true" in n for n in trace.notes)


# ---------------------------------------------------------------------------- NVTX


def test_nvtx_domains_twins_probe_open_ranges_and_start_end(tmp_path: Path) -> None:
    """GIVEN ckprof markers in domain 'ckprof', their emit_nvtx twins in the default
    domain, ckprof's probe range, a range in a user domain, a start/end range with an
    inline message and a range never closed
    WHEN loaded
    THEN twins, the probe and the open range are dropped (with notes) and the rest keep
    their names, with cat naming the domain."""
    ranges = [
        NvtxRange("ckprof::probe", 10, 10, domain="ckprof"),
        NvtxRange("ckprof::forward", 100, 900, domain="ckprof"),
        NvtxRange("ckprof::forward", 101, 899, domain=""),          # emit_nvtx twin
        NvtxRange("data", 120, 200, domain="my_app"),
        NvtxRange("load_batch", 300, 400, push_pop=False, registered=False),
        NvtxRange("never_closed", 500, None, domain="ckprof"),
    ]
    trace = load_nsys(write_nsys_sqlite(tmp_path / "n.sqlite", ranges=ranges, cuda=False))
    trace.check()
    ev = trace.events
    assert list(zip(ev["name"].astype(str), ev["cat"].astype(str), strict=True)) == [
        ("ckprof::forward", "nvtx:ckprof"), ("data", "nvtx:my_app"), ("load_batch", "nvtx")]
    assert set(ev["kind"].astype(str)) == {"user_annotation"}
    assert any("1 NVTX range(s) never ended" in n for n in trace.notes)
    assert any("1 ckprof:: NVTX range(s) outside domain 'ckprof'" in n for n in trace.notes)
    assert any("no CUDA activity" in n for n in trace.notes)


def test_emit_nvtx_ranges_become_ops_with_sequence_numbers(tmp_path: Path) -> None:
    """GIVEN default-domain ranges named the way torch's emit_nvtx names them, next to
    ckprof's own markers
    WHEN loaded
    THEN ops become cpu_op rows with their name and seq, ProfilerStep/Optimizer stay
    user annotations, emit_nvtx copies of ckprof markers are dropped as twins, and a
    plain range with a comma in its name is left alone."""
    ranges = [
        NvtxRange("ProfilerStep#2, op_id = 1", 0, 1000),
        NvtxRange("ckprof::backward", 10, 900, domain="ckprof"),
        NvtxRange("ckprof::backward, op_id = 2", 11, 899),
        NvtxRange("autograd::engine::evaluate_function: AddmmBackward0, seq = 12, op_id = 3",
                  20, 400),
        NvtxRange("aten::mm, seq = 5, op_id = 4, sizes = [[8, 64], [64, 64]], "
                  "input_op_ids = [(3, 0)]", 30, 100),
        NvtxRange("Optimizer.step#AdamW.step, op_id = 5", 500, 800),
        NvtxRange("load, then cache", 810, 820),
    ]
    trace = load_nsys(write_nsys_sqlite(tmp_path / "e.sqlite", ranges=ranges, cuda=False))
    trace.check()
    ev = trace.events
    assert list(zip(ev["name"].astype(str), ev["kind"].astype(str), ev["seq"], strict=True)) == [
        ("ProfilerStep#2", "user_annotation", -1),
        ("ckprof::backward", "user_annotation", -1),
        ("autograd::engine::evaluate_function: AddmmBackward0", "cpu_op", 12),
        ("aten::mm", "cpu_op", 5),
        ("Optimizer.step#AdamW.step", "user_annotation", -1),
        ("load, then cache", "user_annotation", -1),
    ]


def test_markers_in_default_domain_are_kept_without_a_ckprof_domain(tmp_path: Path) -> None:
    """GIVEN ckprof markers pushed through torch's NVTX binding (default domain only)
    WHEN loaded
    THEN they are the markers (nothing dropped)."""
    ranges = [NvtxRange("ckprof::backward", 100, 900), NvtxRange("ckprof::recompute::b", 200, 300)]
    trace = load_nsys(write_nsys_sqlite(tmp_path / "d.sqlite", ranges=ranges, cuda=False))
    assert trace.events["name"].astype(str).tolist() == ["ckprof::backward", "ckprof::recompute::b"]
    assert trace.events["parent"].tolist() == [-1, 0]


# ---------------------------------------------------------------- schema robustness


def test_newer_nsys_with_extra_table_and_columns_loads_the_same(tmp_path: Path,
                                                                 step_trace) -> None:
    """GIVEN the same run exported by a 'newer nsys' (an extra table, extra columns,
    some placed first)
    WHEN loaded
    THEN events and memory are identical to the plain export."""
    newer = load_nsys(write_step(tmp_path / "newer.sqlite", newer=True))
    con = sqlite3.connect(tmp_path / "newer.sqlite")
    cols = [r[1] for r in con.execute("PRAGMA table_info(CUPTI_ACTIVITY_KIND_KERNEL)")]
    con.close()
    assert cols[0] == "greenContextId" and "futureKernelField" in cols
    pd.testing.assert_frame_equal(newer.events, step_trace.events)
    pd.testing.assert_frame_equal(newer.memory, step_trace.memory)


def test_optional_columns_absent(tmp_path: Path, step_trace) -> None:
    """GIVEN an older export: no demangledName/mangledName (shortName only), no
    globalPid, no domainId/textId in NVTX_EVENTS (inline text only), no memKind
    WHEN loaded
    THEN it still loads, kernel names fall back to shortName and domains to default."""
    ranges = [NvtxRange(r.name, r.start_ns, r.end_ns, r.pid, r.tid, registered=False)
              for r in RANGES]
    drop = {"CUPTI_ACTIVITY_KIND_KERNEL": ["demangledName", "mangledName", "globalPid"],
            "NVTX_EVENTS": ["domainId", "textId"],
            "CUDA_GPU_MEMORY_USAGE_EVENTS": ["memKind"],
            "CUPTI_ACTIVITY_KIND_MEMCPY": ["copyKind", "globalPid"]}
    trace = load_nsys(write_step(tmp_path / "old.sqlite", ranges=ranges, drop_columns=drop))
    trace.check()
    ev = trace.events
    assert ev.loc[ev["kind"] == "kernel", "name"].astype(str).tolist() == [
        "gemm", "gemm", "multi_tensor_apply_kernel"]
    assert ev.loc[ev["kind"] == "gpu_memcpy", "name"].astype(str).tolist() == ["Memcpy"]
    assert set(ev.loc[ev["kind"] == "user_annotation", "cat"].astype(str)) == {"nvtx"}
    keep = ["ts_ns", "dur_ns", "correlation", "parent", "depth"]
    pd.testing.assert_frame_equal(ev[keep], step_trace.events[keep])
    # without memKind the pinned allocation can no longer be told apart
    assert trace.memory["bytes"].tolist() == [4096, 8192, 1 << 20, -4096, 512]


@pytest.mark.parametrize(("omit", "drop", "needle"), [
    (["NVTX_EVENTS"], None, "no NVTX_EVENTS table"),
    (["StringIds"], None, "no StringIds table"),
    ([], {"CUPTI_ACTIVITY_KIND_KERNEL": ["correlationId"]},
     "table CUPTI_ACTIVITY_KIND_KERNEL lacks column(s) correlationId"),
    ([], {"NVTX_EVENTS": ["globalTid", "eventType"]},
     "table NVTX_EVENTS lacks column(s) eventType, globalTid"),
])
def test_missing_required_schema_is_a_format_error(tmp_path: Path, omit, drop, needle) -> None:
    """GIVEN an export lacking a table or column ckprof needs
    WHEN loaded
    THEN TraceFormatError (exit code 4) names the file and what is missing."""
    path = write_step(tmp_path / "bad.sqlite", omit=omit, drop_columns=drop)
    with pytest.raises(TraceFormatError) as err:
        load_nsys(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)
    assert err.value.exit_code == 4


def test_no_nvtx_table_message_says_how_to_profile(tmp_path: Path) -> None:
    """GIVEN an export made without --trace=nvtx
    WHEN loaded
    THEN the error tells the user to profile with --trace=cuda,nvtx."""
    with pytest.raises(TraceFormatError, match="--trace=cuda,nvtx"):
        load_nsys(write_step(tmp_path / "x.sqlite", omit=["NVTX_EVENTS"]))


def test_bad_files(tmp_path: Path) -> None:
    """GIVEN a missing path, a directory, a JSON file, some other application's sqlite
    database and a damaged sqlite file
    WHEN loaded
    THEN typed errors: not found (3) for the first two, format error (4) for the rest."""
    with pytest.raises(TraceNotFoundError):
        load_nsys(tmp_path / "missing.sqlite")
    with pytest.raises(TraceNotFoundError):
        load_nsys(tmp_path)
    j = tmp_path / "t.json"
    j.write_text("{}")
    with pytest.raises(TraceFormatError, match="not an sqlite file"):
        load_nsys(j)
    other = tmp_path / "app.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    con.commit()
    con.close()
    assert is_nsys_sqlite(other)
    with pytest.raises(TraceFormatError, match="not an Nsight Systems export"):
        load_nsys(other)
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    with pytest.raises(TraceFormatError, match="damaged or unreadable"):
        load_nsys(broken)


def test_empty_export_is_an_empty_trace_error(tmp_path: Path) -> None:
    """GIVEN an export with an NVTX table but no ranges and no CUDA activity
    WHEN loaded
    THEN EmptyTraceError (exit code 6)."""
    with pytest.raises(EmptyTraceError) as err:
        load_nsys(write_nsys_sqlite(tmp_path / "e.sqlite", cuda=False))
    assert err.value.exit_code == 6


def test_correlation_ids_do_not_pair_across_processes(tmp_path: Path) -> None:
    """GIVEN two processes (ranks) that both use correlation id 1 on devices 0 and 1
    WHEN loaded
    THEN each kernel pairs with the launch of its own process only."""
    launches = [Launch("cudaLaunchKernel_v7000", 100, 110, 1, pid=10, tid=10),
                Launch("cudaLaunchKernel_v7000", 105, 115, 1, pid=20, tid=20)]
    gpu = [GpuActivity("kernel", "k_rank0", 200, 300, 1, device=0, pid=10),
           GpuActivity("kernel", "k_rank1", 210, 310, 1, device=1, pid=20)]
    trace = load_nsys(write_nsys_sqlite(tmp_path / "mp.sqlite", launches=launches, gpu=gpu))
    ev = trace.events
    launch_pid = dict(zip(ev.loc[ev["kind"] == "runtime", "correlation"],
                          ev.loc[ev["kind"] == "runtime", "pid"], strict=True))
    kernels = ev[ev["kind"] == "kernel"]
    assert len(launch_pid) == 2
    assert [launch_pid[c] for c in kernels["correlation"]] == [10, 20]
    assert kernels["pid"].tolist() == [0, 1]


def test_global_tid_decoding_matches_the_documented_recipe(tmp_path: Path) -> None:
    """GIVEN a thread whose globalTid carries a hardware id in the top bits
    WHEN loaded
    THEN pid = globalTid / 0x1000000 % 0x1000000 and tid = globalTid % 0x1000000."""
    path = write_nsys_sqlite(tmp_path / "g.sqlite", ranges=[NvtxRange("r", 1, 2, 77, 78)],
                             cuda=False)
    gt = global_tid(77, 78) | (3 << 56)
    con = sqlite3.connect(path)
    con.execute("UPDATE NVTX_EVENTS SET globalTid = ?", (gt,))
    con.commit()
    con.close()
    ev = load_nsys(path).events
    assert (int(ev["pid"][0]), int(ev["tid"][0])) == (gt // 0x1000000 % 0x1000000,
                                                      gt % 0x1000000)


# ------------------------------------------------------------------------ properties


@st.composite
def runs(draw):
    """Random well-nested NVTX ranges on 1-2 threads with launches inside and one GPU
    activity per launch (some on a second device)."""
    ranges, launches, gpu = [], [], []
    corr = 0
    for tid in range(draw(st.integers(1, 2))):
        t = 1_000 * (tid + 1)
        for _ in range(draw(st.integers(0, 4))):
            dur = draw(st.integers(10, 500))
            ranges.append(NvtxRange(draw(st.sampled_from(
                ["ckprof::forward", "ckprof::backward", "ckprof::recompute::r0", "x"])),
                t, t + dur, 7, tid, domain="ckprof"))
            if draw(st.booleans()) and dur > 4:
                inner = draw(st.integers(1, dur - 2))
                ranges.append(NvtxRange("ckprof::recompute::r1", t + 1, t + 1 + inner, 7, tid,
                                        domain="ckprof"))
            for _ in range(draw(st.integers(0, 3))):
                ls = t + draw(st.integers(0, dur - 1))
                corr += 1
                launches.append(Launch("cudaLaunchKernel_v7000", ls, ls + 1, corr, 7, tid))
                ks = ls + draw(st.integers(0, 1000))
                gpu.append(GpuActivity(draw(st.sampled_from(["kernel", "memcpy", "memset"])),
                                       "HtoD", ks, ks + draw(st.integers(0, 50)), corr,
                                       device=draw(st.integers(0, 1)), pid=7))
            t += dur + draw(st.integers(0, 20))
    return ranges, launches, gpu


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run=runs())
def test_any_export_satisfies_the_trace_contract(tmp_path: Path, run) -> None:
    """GIVEN random nested ranges, launches and GPU activity
    WHEN written as an nsys export and loaded
    THEN Trace.check() holds, nothing is lost, every GPU row pairs with exactly one
    launch, GPU rows have no parent and each CPU row's parent encloses it on the same
    thread, one level up."""
    ranges, launches, gpu = run
    if not (ranges or launches):
        return
    trace = load_nsys(write_nsys_sqlite(tmp_path / "p.sqlite", ranges=ranges,
                                        launches=launches, gpu=gpu))
    trace.check()
    ev = trace.events
    kinds = ev["kind"].astype(str)
    assert (kinds == "user_annotation").sum() == len(ranges)
    assert (kinds == "runtime").sum() == len(launches)
    assert kinds.isin(["kernel", "gpu_memcpy", "gpu_memset"]).sum() == len(gpu)
    rt = ev[kinds == "runtime"]
    gpu_rows = ev[kinds.isin(["kernel", "gpu_memcpy", "gpu_memset"])]
    assert rt["correlation"].is_unique
    assert gpu_rows["correlation"].isin(rt["correlation"]).all()
    assert (gpu_rows["parent"] == -1).all()
    cpu = ev[~kinds.isin(["kernel", "gpu_memcpy", "gpu_memset"]) & (ev["parent"] >= 0)]
    par = ev.loc[cpu["parent"].to_numpy()]
    assert (par["ts_ns"].to_numpy() <= cpu["ts_ns"].to_numpy()).all()
    assert (par["ts_ns"].to_numpy() + par["dur_ns"].to_numpy() > cpu["ts_ns"].to_numpy()).all()
    assert (par["ts_ns"].to_numpy() + par["dur_ns"].to_numpy()
            >= cpu["ts_ns"].to_numpy() + cpu["dur_ns"].to_numpy()).all()
    assert (par["tid"].to_numpy() == cpu["tid"].to_numpy()).all()
    assert (ev.loc[cpu.index, "depth"].to_numpy() == par["depth"].to_numpy() + 1).all()
    assert np.all(ev.loc[ev["parent"] == -1, "depth"] == 0)


def test_names_with_control_characters_are_escaped_like_kineto_names() -> None:
    """GIVEN events assembled by a reader (as the nsys reader does), one name holding a
    newline and a lone surrogate WHEN finished THEN the name is escaped exactly as the
    Kineto loader escapes it, so it stays one line in every table."""
    from ckprof._text import printable
    from ckprof.trace._build import finish_events

    raw = "aten::mm\nx\ud800"
    frame = pd.DataFrame({"name": [raw, "aten::add"], "cat": ["cpu_op", "cpu_op"],
                          "kind": ["cpu_op", "cpu_op"], "pid": [1, 1], "tid": [1, 1],
                          "ts_ns": [0, 10], "dur_ns": [5, 5], "correlation": [-1, -1]})
    out = finish_events(frame)
    assert out["name"].tolist() == [printable(raw), "aten::add"]
    assert "\n" not in out["name"].iloc[0]
