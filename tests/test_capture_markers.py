"""Markers and metadata in REAL CPU traces written by ckprof.capture.

The traces are parsed with json/gzip directly (no ckprof analyzer involved).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("torch")

from support.capture import (
    MARKER_VARIANTS,
    REGIONS,
    annotation_counts,
    capture_trace,
    one_torch_thread,
    read_trace,
)

STEPS = 2



@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("marker_traces")
    out = {}
    for variant in (*MARKER_VARIANTS, "none", "plain"):
        out[variant] = read_trace(capture_trace(root, variant, steps=STEPS))
    return out


def _x_events(trace: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e.get("ph") == "X" and e.get("name") == name]


def _inside(inner: dict[str, Any], outer: dict[str, Any]) -> bool:
    return (
        inner["tid"] == outer["tid"]
        and outer["ts"] <= inner["ts"]
        and inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"] + 1e-3
    )


@pytest.mark.parametrize("variant", MARKER_VARIANTS)
def test_every_marker_appears_once_per_step(traces: dict[str, dict[str, Any]], variant: str) -> None:
    """GIVEN a 2-step capture of a 3-block model checkpointed per block (each variant)
    WHEN the trace's ckprof:: annotations are counted
    THEN every phase marker and every region's checkpoint and recompute marker
    appears exactly once per step, and nothing else carries the prefix."""
    expected = {f"ckprof::{p}": STEPS for p in ("forward", "backward", "optimizer", "zero_grad")}
    for region in REGIONS:
        expected[f"ckprof::checkpoint::{region}"] = STEPS
        expected[f"ckprof::recompute::{region}"] = STEPS
    assert annotation_counts(traces[variant]) == expected


def test_markers_are_user_annotations_inside_their_step(traces: dict[str, dict[str, Any]]) -> None:
    """GIVEN the markers trace
    WHEN each ckprof range is located
    THEN it is a user_annotation nested in one ProfilerStep#N (N = 1..steps) on the
    same thread -- no range straddles a step boundary."""
    trace = traces["markers"]
    steps = [e for e in trace["traceEvents"]
             if e.get("ph") == "X" and str(e.get("name", "")).startswith("ProfilerStep#")]
    assert sorted(e["name"] for e in steps) == [f"ProfilerStep#{n}" for n in range(1, STEPS + 1)]
    marks = [e for e in trace["traceEvents"]
             if e.get("ph") == "X" and str(e.get("name", "")).startswith("ckprof::")]
    assert marks
    for mark in marks:
        assert mark["cat"] == "user_annotation"
        assert sum(_inside(mark, s) for s in steps) == 1, mark["name"]


def test_recompute_nests_in_backward_and_checkpoint_in_forward(traces: dict[str, dict[str, Any]]) -> None:
    """GIVEN the markers trace
    WHEN recompute and checkpoint ranges are matched to phase ranges
    THEN each recompute lies inside a ckprof::backward range and each checkpoint range
    inside a ckprof::forward range; forward ends before backward starts."""
    trace = traces["markers"]
    backward = _x_events(trace, "ckprof::backward")
    forward = _x_events(trace, "ckprof::forward")
    for region in REGIONS:
        for rec in _x_events(trace, f"ckprof::recompute::{region}"):
            assert any(_inside(rec, b) for b in backward)
        for fwd in _x_events(trace, f"ckprof::checkpoint::{region}"):
            assert any(_inside(fwd, f) for f in forward)
    for f, b in zip(sorted(forward, key=lambda e: e["ts"]), sorted(backward, key=lambda e: e["ts"]), strict=True):
        assert f["ts"] + f["dur"] <= b["ts"]


def test_recompute_runs_in_reverse_region_order(traces: dict[str, dict[str, Any]]) -> None:
    """GIVEN the markers trace
    WHEN the recompute ranges of the first step are ordered by time
    THEN the last block is recomputed first (backward walks the graph in reverse)."""
    trace = traces["markers"]
    first_step = min(e["ts"] for e in _x_events(trace, "ckprof::backward"))
    recs = sorted(
        (e for r in REGIONS for e in _x_events(trace, f"ckprof::recompute::{r}")), key=lambda e: e["ts"]
    )
    firsts = [e["name"].rsplit("::", 1)[1] for e in recs if e["ts"] >= first_step][: len(REGIONS)]
    assert firsts == list(reversed(REGIONS))


def test_plain_and_none_variants(traces: dict[str, dict[str, Any]]) -> None:
    """GIVEN a plain torch.profiler trace and a ckprof capture without checkpointing
    WHEN their markers are counted
    THEN the plain one has no ckprof markers nor metadata, the other only phase markers."""
    assert annotation_counts(traces["plain"]) == {}
    assert "ckprof" not in traces["plain"]
    assert annotation_counts(traces["none"]) == {
        f"ckprof::{p}": STEPS for p in ("forward", "backward", "optimizer", "zero_grad")
    }


@pytest.mark.parametrize("variant", ["markers", "sac", "reentrant_markers"])
def test_metadata_at_top_level(traces: dict[str, dict[str, Any]], variant: str) -> None:
    """GIVEN a ckprof capture
    WHEN the exported JSON's top level is read
    THEN a "ckprof" object holds the documented fields with this run's values."""
    meta = traces[variant]["ckprof"]
    import torch

    import ckprof

    assert meta["ckprof_version"] == ckprof.__version__
    assert meta["torch_version"] == str(torch.__version__)
    assert meta["device"] == "cpu"
    assert (meta["rank"], meta["world_size"]) == (0, 1)
    assert meta["markers"] is True
    assert meta["schedule"] == {"wait": 0, "warmup": 1, "active": STEPS, "repeat": 1, "skip_first": 0}
    assert meta["active_steps"] == [1, STEPS]
    base = meta["memory_baseline"]["cpu"]
    assert base["counter_absolute"] is False and base["method"] == "gc-tensors"
    assert base["bytes"] > 0
    regions = meta["checkpoint"]["regions"]
    assert sorted(regions) == list(REGIONS)
    reentrant = variant == "reentrant_markers"
    sac = variant == "sac"
    assert all(r == {"use_reentrant": reentrant, "sac": sac} for r in regions.values())
    assert meta["checkpoint"]["early_stop"] is True


def test_sac_recompute_reruns_only_unsaved_ops(traces: dict[str, dict[str, Any]]) -> None:
    """GIVEN SAC saving matmuls (mm/addmm) and recomputing the rest
    WHEN the ops inside its recompute ranges are inspected
    THEN under SAC every op shows as ``aten::X > PythonDispatchMode > aten::X`` when it
    really runs, and a saved op (addmm) has no inner aten::addmm (served from cache),
    while GELU is really recomputed; full recompute (no SAC) re-runs every addmm."""

    def in_recompute(trace: dict[str, Any], op: str) -> list[dict[str, Any]]:
        recs = [e for r in REGIONS for e in _x_events(trace, f"ckprof::recompute::{r}")]
        return [e for e in _x_events(trace, op) if any(_inside(e, r) for r in recs)]

    def nested_pairs(events: list[dict[str, Any]]) -> int:
        return sum(1 for a in events for b in events if a is not b and _inside(b, a))

    sac_addmm = in_recompute(traces["sac"], "aten::addmm")
    sac_gelu = in_recompute(traces["sac"], "aten::gelu")
    assert len(sac_addmm) == 2 * len(REGIONS) * STEPS
    assert nested_pairs(sac_addmm) == 0
    assert nested_pairs(sac_gelu) == len(REGIONS) * STEPS
    full_addmm = in_recompute(traces["markers"], "aten::addmm")
    assert len(full_addmm) == 2 * len(REGIONS) * STEPS
