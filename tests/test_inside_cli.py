"""`ckprof analyze --ops / --composition / --gpu-activity` in every format, `ckprof plot
--kind composition`, and the report sections, on the synthetic golden trace (figures
known by construction) through click's CliRunner."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_cli_analyze import golden_trace
from test_plots import artists_with_gid, build_checkpointed

from ckprof.analysis import analyze
from ckprof.cli.main import cli
from ckprof.errors import NotCapturedError

FLAGS = ["--ops", "--composition", "--gpu-activity"]


@pytest.fixture()
def trace(tmp_path: Path) -> Path:
    return golden_trace().write(tmp_path / "run.json")


def run(args: list[str]) -> str:
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_default_output_is_unchanged_by_the_new_stages(trace: Path):
    """GIVEN the golden trace WHEN analysed without the new flags THEN no new section
    or key appears (the goldens of test_cli_analyze stay byte-identical)."""
    text = run(["analyze", str(trace)])
    assert "Recompute by op" not in text and "What each peak" not in text
    data = json.loads(run(["analyze", str(trace), "--format", "json"]))
    assert not {"ops", "memory_composition", "gpu_activity"} & set(data)


def test_json_gains_the_new_keys_only(trace: Path):
    """GIVEN the golden trace WHEN analysed with all three flags as JSON THEN the old
    keys are unchanged and ops / memory_composition / gpu_activity are added: the
    recompute of blk0 is one aten::mm per step (80 us self time, its 40 us kernel), the
    recompute peak splits into forward + recompute + before profiling, and the
    recompute phase's GPU busy time is its kernel's 40 us per step."""
    plain = json.loads(run(["analyze", str(trace), "--format", "json"]))
    data = json.loads(run(["analyze", str(trace), "--format", "json", *FLAGS]))
    assert {k: v for k, v in data.items() if k in plain} == plain
    rc = data["ops"]["recompute"]
    assert rc == [{"region": "blk0", "op": "aten::mm", "count": 2, "wall_ms": 0.16, "gpu_ms": 0.08,
                   "gpu_events": 2, "pct": 100.0}]
    fwd = {(r["region"], r["op"]): r["count"] for r in data["ops"]["forward"]}
    assert fwd == {("blk0", "aten::mm"): 2}
    comp = data["memory_composition"]
    assert comp["captured"] is True
    peaks = {}
    for r in comp["peaks"]:
        peaks.setdefault(r["phase"], {})[r["origin"]] = peaks.get(r["phase"], {}).get(r["origin"], 0) + r["bytes"]
    # step 2's recompute peak: 1 MB baseline + two forward blocks of 4096 (steps 1, 2) + 8192
    assert peaks["recompute"] == {"forward": 8192, "recompute": 8192, "before profiling": 1_000_000}
    gpu = {r["phase"]: r for r in data["gpu_activity"]}
    assert gpu["recompute"]["gpu_busy_ms"] == 0.08 and gpu["recompute"]["kernels"] == 2
    assert gpu["forward"]["overlap_ms"] == 0.0


def test_table_markdown_and_csv(trace: Path):
    """GIVEN the golden trace WHEN analysed with the flags as table, markdown and CSV
    THEN the sections are there, and the CSV keeps its columns (plus op, origin, bytes)
    with op, composition and gpu rows that add up."""
    text = run(["analyze", str(trace), *FLAGS])
    for title in ("GPU activity by phase", "Recompute by op", "Top ops per region",
                  "What each peak is made of", "recompute peak"):
        assert title in text
    md = run(["analyze", str(trace), "--format", "markdown", *FLAGS])
    assert "#### Recompute by op" in md and "| aten::mm |" in md
    rows = list(csv.DictReader(io.StringIO(run(["analyze", str(trace), "--format", "csv", *FLAGS]))))
    assert list(rows[0])[-3:] == ["op", "origin", "bytes"]
    ops = [r for r in rows if r["table"] == "op" and r["phase"] == "recompute"]
    assert [(r["region"], r["op"], r["count"]) for r in ops] == [("blk0", "aten::mm", "2")]
    comp = [r for r in rows if r["table"] == "composition" and r["phase"] == "recompute"]
    assert sum(int(r["bytes"]) for r in comp) == int(comp[0]["peak_bytes"])
    assert {r["phase"] for r in rows if r["table"] == "gpu"} >= {"forward", "recompute"}


def test_plot_composition_bands_add_up(tmp_path: Path):
    """GIVEN a checkpointed trace WHEN `ckprof plot --kind composition` draws it THEN a
    PNG is written, and in the figure the stacked origin bands reach exactly the
    allocated line at every point."""
    path = build_checkpointed(2).write(tmp_path / "t.json")
    out = tmp_path / "c.png"
    run(["plot", str(path), "--kind", "composition", "-o", str(out)])
    assert out.read_bytes()[:4] == b"\x89PNG"
    from ckprof.report.plots import plot_memory_composition

    a = analyze(build_checkpointed(2).to_trace())
    fig = plot_memory_composition(a)
    (total,) = artists_with_gid(fig, "composition:total")
    bands = [c for c in fig.axes[0].collections if str(c.get_gid()).startswith("origin:")]
    assert {c.get_gid() for c in bands} >= {"origin:before profiling", "origin:forward",
                                            "origin:recompute"}
    top = bands[-1].get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(np.max(total.get_ydata()))


def test_plot_composition_without_memory_says_why(tmp_path: Path):
    """GIVEN a trace without memory events WHEN the composition is plotted THEN the
    command exits with 'not captured' (7) and writes nothing."""
    path = build_checkpointed(1, memory=False).write(tmp_path / "t.json")
    res = CliRunner().invoke(cli, ["plot", str(path), "--kind", "composition", "-o",
                                   str(tmp_path / "c.png")])
    assert res.exit_code == NotCapturedError.exit_code
    assert not (tmp_path / "c.png").exists()


def test_report_has_the_new_sections(tmp_path: Path):
    """GIVEN a GPU checkpointed trace WHEN reported THEN the page has the composition,
    GPU activity and ops sections, each with a reading guide."""
    from ckprof.report.html import render_report

    a = analyze(build_checkpointed(2, gpu=True).to_trace(path="gpu.json"))
    page = render_report(a)
    for title in ("What is each peak made of?", "How busy is the GPU in each phase?",
                  "What is recompute made of?"):
        assert title in page
    assert "aten::mm" in page
