"""Checkpointed training captured on a real GPU (NVIDIA H200, torch 2.11, by
benchmarks/gpu_traces.py; tests/data/gpu/h200/README.md): ckprof's figures against a
ground truth measured in the training run itself and against joins computed here from
the raw JSON, never against ckprof's own code.

- every GPU event is charged to the step whose CPU launched it (raw join: kernel ->
  runtime event with the same correlation -> ProfilerStep containing its start);
- recompute GPU time equals the GPU time of the kernels launched inside the
  ``ckprof::recompute::`` ranges (markers) or the recompute windows ckprof reports;
- recompute wall time is close to the checkpointed callables' own time inside backward;
- CUDA memory is absolute and its peak is the highest allocator level in the file.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import ckprof

DATA = Path(__file__).resolve().parent / "data" / "gpu" / "h200"
TRUTH = json.loads((DATA / "ground_truth.json").read_text())
GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
RUNTIME_CATS = {"cuda_runtime", "cuda_driver"}
EAGER = ["eager_markers", "eager_plain", "reentrant_plain", "sac_plain"]
ALL = [*EAGER, "compiled_markers", "compiled_none"]


def _path(name: str) -> Path:
    return DATA / f"{name}.pt.trace.json.gz"


@cache
def _raw(name: str) -> list[dict[str, Any]]:
    with gzip.open(_path(name), "rt", encoding="utf-8") as fh:
        return [e for e in json.load(fh)["traceEvents"] if e.get("ph") == "X"]


@cache
def _analysis(name: str) -> Any:
    return ckprof.load(_path(name))


def _ns(us: Any) -> int:
    return round(float(us) * 1000)


def _raw_launches(name: str) -> list[tuple[int, int, int]]:
    """(launch ts_ns, launching tid, GPU dur_ns) of every GPU event, by correlation."""
    events = _raw(name)
    launch = {}
    for e in events:
        if e.get("cat") in RUNTIME_CATS and "correlation" in e.get("args", {}):
            launch.setdefault(int(e["args"]["correlation"]), (_ns(e["ts"]), e["tid"]))
    out = []
    for e in events:
        if e.get("cat") in GPU_CATS:
            ts, tid = launch[int(e["args"]["correlation"])]
            out.append((ts, tid, _ns(e["dur"])))
    return out


@pytest.mark.parametrize("name", ALL)
def test_gpu_time_per_step_is_what_the_step_launched(name: str) -> None:
    """GIVEN a real H200 trace WHEN ckprof attributes GPU time THEN per step it equals,
    to the nanosecond, the GPU events whose launching runtime call started in that
    ProfilerStep (joined here from the raw JSON), and nothing is counted twice."""
    steps = [(_ns(e["ts"]), _ns(e["ts"]) + _ns(e["dur"]), int(e["name"].split("#")[1]))
             for e in _raw(name) if e["name"].startswith("ProfilerStep#") and e["cat"] == "user_annotation"]
    want: dict[int, int] = defaultdict(int)
    for ts, _tid, dur in _raw_launches(name):
        for s, e, n in steps:
            if s <= ts < e:
                want[n] += dur
    a = _analysis(name)
    a.time.self_check()
    got = a.time.by_step.groupby("step")["gpu_ns"].sum()
    assert {int(k): int(v) for k, v in got.items()} == dict(want)
    assert a.time.gpu_events["event"].is_unique


def test_recompute_gpu_time_equals_kernels_launched_inside_recompute_markers() -> None:
    """GIVEN the trace captured with ckprof markers WHEN recompute GPU time is reported
    THEN it equals the GPU time of the kernels whose launch lies inside a
    ``ckprof::recompute::`` range on the launching thread (raw join), and each of the
    4 checkpointed blocks is recomputed once per step."""
    ranges = [(_ns(e["ts"]), _ns(e["ts"]) + _ns(e["dur"]), e["tid"]) for e in _raw("eager_markers")
              if e["name"].startswith("ckprof::recompute::")]
    want = sum(dur for ts, tid, dur in _raw_launches("eager_markers")
               if any(s <= ts < e and tid == t for s, e, t in ranges))
    a = _analysis("eager_markers")
    regions = a.time.regions
    assert int(regions["gpu_ns"].sum()) == want > 0
    assert sorted(regions["count"].tolist()) == [3, 3, 3, 3]
    recompute_gpu = a.time.totals.set_index("phase").loc["recompute", "gpu_ns"]
    assert int(recompute_gpu) == want


@pytest.mark.parametrize(("name", "low", "high"), [
    # markers: the range spans the whole recompute context (checkpoint's RNG-state
    # restore and hook bookkeeping included), so it is at least the callables' time
    ("eager_markers", 0.95, 1.6),
    # sequence: first to last recomputed op, a lower bound of the callables' time
    ("eager_plain", 0.6, 1.05),
    ("sac_plain", 0.6, 1.05),
    ("reentrant_plain", 0.6, 1.05),
])
def test_recompute_wall_time_against_the_timed_callables(name: str, low: float, high: float) -> None:
    """GIVEN the checkpointed callables timed inside backward during the same run WHEN
    ckprof reports recompute wall time THEN it finds one recompute per block per step
    and its total lies within the stated bounds of the timed total."""
    a = _analysis(name)
    truth = TRUTH["setups"][name]
    n_calls = sum(r["count"] for r in truth["regions"].values())
    assert int(a.time.regions["count"].sum()) == n_calls == 12
    ckprof_ms = a.time.regions["wall_ns"].sum() / 1e6
    ratio = ckprof_ms / truth["recompute_cpu_ms"]
    assert low <= ratio <= high, (ckprof_ms, truth["recompute_cpu_ms"])


@pytest.mark.parametrize("name", ALL)
def test_cuda_memory_is_absolute_and_peaks_are_allocator_levels(name: str) -> None:
    """GIVEN CUDA [memory] events WHEN peaks are found THEN the CUDA counter is absolute
    and the highest peak over phases equals the highest 'Total Allocated' in the file."""
    with gzip.open(_path(name), "rt", encoding="utf-8") as fh:
        mem = [e for e in json.load(fh)["traceEvents"] if e.get("name") == "[memory]"
               and e["args"].get("Device Type") == 1]
    a = _analysis(name)
    assert a.memory.absolute.get("cuda:0") is True
    peaks = a.memory.peaks
    cuda_peak = int(peaks[peaks["device"] == "cuda:0"]["peak_bytes"].max())
    steps = a.phases.steps
    lo, hi = int(steps["start_ns"].min()), int(steps["end_ns"].max())
    in_steps = [int(e["args"]["Total Allocated"]) for e in mem if lo <= _ns(e["ts"]) < hi]
    assert cuda_peak == max(in_steps)
