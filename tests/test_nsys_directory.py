"""Directories of Nsight Systems exports: ``ckprof analyze DIR`` lists ``*.sqlite``
files (sniffed) beside JSON traces, one rank each."""

from __future__ import annotations

import json

from click.testing import CliRunner
from support.builders import TraceBuilder
from support.nsys_fixture import trace_to_nsys_sqlite

from ckprof.cli.main import cli
from ckprof.trace.load import find_trace_files


def rank_trace(slow: float) -> TraceBuilder:
    b = TraceBuilder()
    b.step(1, 0, 1000 * slow)
    b.marker("forward", 0, 400 * slow)
    b.marker("backward", 400 * slow, 400 * slow)
    b.marker("recompute:blk0", 450 * slow, 100 * slow)
    b.launch(ts=460 * slow, kernel="gemm", kernel_ts=470 * slow, kernel_dur=50)
    b.marker("optimizer", 850 * slow, 100 * slow)
    return b


def test_directory_of_nsys_exports_is_analysed_per_rank(tmp_path) -> None:
    """GIVEN two nsys sqlite exports named by rank (rank 1 twice as slow) and a stray
    sqlite file that is not an export WHEN ckprof analyze DIR THEN both ranks are
    analysed through the same attribution code and rank 1 is the slowest."""
    trace_to_nsys_sqlite(rank_trace(1.0).to_trace(), tmp_path / "job_rank0.sqlite")
    trace_to_nsys_sqlite(rank_trace(2.0).to_trace(), tmp_path / "job_rank1.sqlite")
    (tmp_path / "notes.sqlite").write_bytes(b"not a database")
    assert [p.name for p in find_trace_files(tmp_path)] == []  # JSON only by default
    listed = find_trace_files(tmp_path, include_nsys=True)
    assert [p.name for p in listed] == ["job_rank0.sqlite", "job_rank1.sqlite"]
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path), "--format", "json", "--engine", "processes",
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    per_rank = {r["rank"]: r for r in out["ranks"]}
    assert set(per_rank) == {0, 1}
    assert per_rank[1]["step_ms"] == 2 * per_rank[0]["step_ms"]
    assert per_rank[0]["recompute_ms"] > 0
