"""``ckprof demo``, the README's first command, through CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckprof.cli.main import cli


@pytest.mark.slow
def test_demo_writes_a_trace_and_prints_the_analysis(tmp_path: Path) -> None:
    """GIVEN a fresh output folder WHEN ckprof demo runs (2 active steps, JSON) THEN a
    trace is written there, every demo block is a region recomputed once per step, the
    phases add up, and CPU memory includes the captured baseline; a second run writes
    a new file instead of overwriting the first."""
    pytest.importorskip("torch")
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--steps", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    traces = sorted(out.glob("*.pt.trace.json.gz"))
    assert len(traces) == 1 and doc["trace"] == str(traces[0])
    assert doc["recompute_detection"] == "markers"
    assert sorted(r["name"] for r in doc["regions"]) == [f"blocks.{i}" for i in range(4)]
    assert all(r["count"] == 2 for r in doc["regions"])
    assert sum(v["wall_ms"] for v in doc["totals"].values()) == pytest.approx(doc["step_ms"], abs=1e-6)
    assert doc["memory_baseline_bytes"]["cpu"] > 0
    again = CliRunner().invoke(cli, ["demo", "--out", str(out), "--steps", "1", "--format", "json"])
    assert again.exit_code == 0, again.output
    assert len(list(out.glob("*.pt.trace.json.gz"))) == 2


def test_demo_table_ends_with_next_steps(tmp_path: Path) -> None:
    """GIVEN the default table format WHEN ckprof demo runs THEN the analysis is
    followed by the next commands to try, naming the written trace."""
    pytest.importorskip("torch")
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path), "--steps", "1"])
    assert result.exit_code == 0, result.output
    (trace,) = tmp_path.glob("*.pt.trace.json.gz")
    assert "Time by phase" in result.stdout and "Recompute by checkpointed region" in result.stdout
    assert f"ckprof report {trace}" in result.stdout
