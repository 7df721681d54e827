"""`ckprof compare` on real CPU traces captured here (none vs full checkpointing), and
the compare CLI (exit codes, formats)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.builders import TraceBuilder

from ckprof.cli.main import cli
from ckprof.strategy.compare import compare


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """Two CPU traces of the same tiny model: no checkpointing and full checkpointing."""
    torch = pytest.importorskip("torch")
    from test_sweep_run import make_batch, make_model

    from ckprof.strategy.runner import run_policy

    out = tmp_path_factory.mktemp("cmp")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        paths = {}
        for policy in ("none", "full"):
            spec = {"make_model": make_model, "make_batch": make_batch, "policy": policy, "batch_size": 8,
                    "steps": 2, "warmup": 0, "device": "cpu", "out_dir": str(out / policy), "optimizer": "sgd"}
            paths[policy] = Path(run_policy(spec)["trace"])
    finally:
        torch.set_num_threads(before)
    return paths


def test_compare_captured_none_vs_full(captured):
    """GIVEN real traces without and with full checkpointing WHEN compared THEN the
    candidate has recompute the baseline lacks, a lower overall peak, every block as a
    region, and more forward matmuls (addmm recomputed in backward)."""
    c = compare(captured["none"], captured["full"])
    ph = c.phases.set_index("phase")
    assert ph.loc["recompute", "baseline_ms"] == 0 and ph.loc["recompute", "candidate_ms"] > 0
    mem = c.memory.set_index(["phase", "device"])
    assert mem.loc[("all", "cpu"), "diff_bytes"] < 0
    assert set(c.regions["region"]) == {f"blocks.{i}" for i in range(4)}
    assert (c.regions["baseline_ms"] == 0).all() and (c.regions["candidate_count"] == 1).all()
    ops = c.ops.set_index(["category", "name"])
    assert ops.loc[("cpu_op", "aten::addmm"), "candidate_count"] > ops.loc[("cpu_op", "aten::addmm"), "baseline_count"]
    assert not c.has_gpu and c.phases["gpu_diff_ms"].isna().all()


def test_cli_compare_formats_and_output_file(captured, tmp_path):
    """GIVEN two captured traces WHEN `ckprof compare` runs THEN the table names the
    regions, --format json parses, -o writes the file and refuses to overwrite it
    without --force."""
    a, b = str(captured["none"]), str(captured["full"])
    res = CliRunner().invoke(cli, ["compare", a, b])
    assert res.exit_code == 0, res.output
    assert "Recompute per region" in res.output and "blocks.0" in res.output
    res = CliRunner().invoke(cli, ["compare", a, b, "--format", "json"])
    assert json.loads(res.output)["candidate"].endswith(Path(b).name)
    out = tmp_path / "diff.md"
    res = CliRunner().invoke(cli, ["compare", a, b, "--format", "markdown", "-o", str(out)])
    assert res.exit_code == 0 and out.read_text().startswith("### ckprof compare")
    res = CliRunner().invoke(cli, ["compare", a, b, "-o", str(out)])
    assert res.exit_code == 8
    res = CliRunner().invoke(cli, ["compare", a, b, "-o", str(out), "--force", "--format", "csv"])
    assert res.exit_code == 0 and out.read_text().startswith("table,key,metric")


def test_cli_compare_missing_and_damaged_files(tmp_path):
    """GIVEN a missing or a non-trace file WHEN `ckprof compare` runs THEN the typed
    error's exit code and a one-line message, no traceback."""
    good = TraceBuilder().step(1, 0, 100).op("aten::mm", 10, 20).write(tmp_path / "good.json")
    res = CliRunner().invoke(cli, ["compare", str(good), str(tmp_path / "absent.json")])
    assert res.exit_code == 3 and "Traceback" not in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("this is not json")
    res = CliRunner().invoke(cli, ["compare", str(bad), str(good)])
    assert res.exit_code == 4 and "Traceback" not in res.output


def test_cli_help_has_examples():
    """GIVEN the strategy commands WHEN --help is asked THEN each shows an example."""
    for cmd in ("compare", "sweep"):
        res = CliRunner().invoke(cli, [cmd, "--help"])
        assert res.exit_code == 0 and "Example:" in res.output and f"ckprof {cmd}" in res.output
