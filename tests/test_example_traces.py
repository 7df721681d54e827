"""The example traces shipped in traces/examples analyse as the README says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckprof.cli.main import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "traces" / "examples"


def analyze_json(name: str, *extra: str) -> dict:
    result = CliRunner().invoke(cli, ["analyze", str(EXAMPLES / name), "--format", "json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_markers_example_names_every_block() -> None:
    """GIVEN the demo captured with ckprof WHEN analysed THEN recompute comes from
    markers, each of the 4 blocks is recomputed once per step, memory is absolute."""
    out = analyze_json("demo_markers.pt.trace.json.gz")
    assert out["recompute_detection"] == "markers"
    n = len(out["steps_analyzed"])
    assert sorted(r["name"] for r in out["regions"]) == [f"blocks.{i}" for i in range(4)]
    assert all(r["count"] == n for r in out["regions"])
    assert out["memory_baseline_bytes"]["cpu"] > 0
    assert out["totals"]["recompute"]["wall_ms"] > 0


def test_plain_example_is_found_by_sequence_with_the_same_structure() -> None:
    """GIVEN the same model checkpointed with plain torch and no ckprof code WHEN
    analysed THEN the sequence heuristic finds 4 recomputes per step."""
    out = analyze_json("demo_plain.pt.trace.json.gz")
    assert out["recompute_detection"] == "sequence"
    n = len(out["steps_analyzed"])
    assert sum(r["count"] for r in out["regions"]) == 4 * n
    assert out["recompute_overhead_pct"] > 0


def test_forcing_sequence_on_the_markers_example_cross_checks() -> None:
    """GIVEN the markers example WHEN --recompute-detection sequence is forced THEN it
    finds the same number of recomputes, and no more time than the markers (it is a
    lower bound: the ranges include Python overhead)."""
    marked = analyze_json("demo_markers.pt.trace.json.gz")
    seq = analyze_json("demo_markers.pt.trace.json.gz", "--recompute-detection", "sequence")
    assert seq["recompute_detection"] == "sequence"
    assert sum(r["count"] for r in seq["regions"]) == sum(r["count"] for r in marked["regions"])
    assert 0 < seq["totals"]["recompute"]["wall_ms"] <= marked["totals"]["recompute"]["wall_ms"]
    assert seq["totals"]["recompute"]["wall_ms"] >= 0.5 * marked["totals"]["recompute"]["wall_ms"]


@pytest.mark.parametrize("name", ["demo_markers.pt.trace.json.gz", "demo_plain.pt.trace.json.gz"])
def test_phases_add_up(name: str) -> None:
    out = analyze_json(name)
    total = sum(v["wall_ms"] for v in out["totals"].values())
    assert total == pytest.approx(out["step_ms"], abs=1e-6)
