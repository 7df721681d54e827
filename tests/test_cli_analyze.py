"""``ckprof analyze`` through click's CliRunner: golden outputs, the JSON contract,
bad input, and the no-overwrite rule.

The golden trace is synthetic (tests/support/builders.py) so every figure in it is
known by construction: two steps of 1000 us with ckprof markers, one checkpointed
region ``blk0`` recomputed once per step, a GPU kernel per phase, and CPU memory with
a recorded baseline. Regenerate the golden files with ``CKPROF_REGEN_GOLDEN=1``
after an intended output change, and review the diff.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.builders import TraceBuilder

from ckprof.cli.main import cli

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("CKPROF_REGEN_GOLDEN") == "1"


def golden_trace() -> TraceBuilder:
    b = TraceBuilder().meta(ckprof={
        "ckprof_version": "test", "device": "cpu", "markers": True,
        "memory_baseline": {"cpu": {"bytes": 1_000_000, "method": "test", "counter_absolute": False}},
    })
    for i, t0 in enumerate((0.0, 1000.0)):
        b.step(i + 1, t0, 1000)
        # forward 0-400 with the region's first run inside
        b.marker("forward", t0 + 0, 400)
        b.marker("checkpoint:blk0", t0 + 100, 100)
        b.op("aten::mm", t0 + 110, 80, seq=10 + i)
        b.launch(ts=t0 + 120, kernel="gemm_fwd", kernel_ts=t0 + 130, kernel_dur=50)
        b.memory(t0 + 150, bytes=4096, total_allocated=4096 * (i + 1))
        # backward 400-800, recompute 450-550
        b.marker("backward", t0 + 400, 400)
        b.evaluate("MmBackward0", t0 + 420, 300, seq=10 + i)
        b.marker("recompute:blk0", t0 + 450, 100)
        b.op("aten::mm", t0 + 460, 80, seq=20 + i)
        b.launch(ts=t0 + 470, kernel="gemm_recompute", kernel_ts=t0 + 600, kernel_dur=40)
        b.memory(t0 + 480, bytes=8192, total_allocated=4096 * (i + 1) + 8192)
        b.memory(t0 + 700, bytes=-8192, total_allocated=4096 * (i + 1))
        # optimizer 850-950
        b.marker("optimizer", t0 + 850, 100)
        b.annotation("Optimizer.step#AdamW.step", t0 + 851, 98)
        b.launch(ts=t0 + 860, kernel="adam", kernel_ts=t0 + 870, kernel_dur=20)
    return b


@pytest.fixture()
def trace_dir(tmp_path: Path) -> Path:
    golden_trace().write(tmp_path / "run.json")
    return tmp_path


def invoke(args: list[str], cwd: Path):
    runner = CliRunner()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(cli, args, catch_exceptions=False)
    finally:
        os.chdir(old)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGEN:
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}; run with CKPROF_REGEN_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("fmt,suffix", [("table", "txt"), ("json", "json"), ("csv", "csv"), ("markdown", "md")])
def test_analyze_output_matches_golden(trace_dir: Path, fmt: str, suffix: str) -> None:
    """GIVEN a synthetic marker trace WHEN analysed in each format THEN the output
    equals the reviewed golden file byte for byte."""
    result = invoke(["analyze", "run.json", "--format", fmt], trace_dir)
    assert result.exit_code == 0, result.output
    check_golden(f"analyze_markers.{suffix}", result.stdout)


def test_rendering_imports_no_pandas(trace_dir: Path) -> None:
    """GIVEN analyses of the golden trace and the example traces WHEN pandas cannot be
    imported any more THEN every format renders, the same text as before, and the
    Analysis and report modules hold no pandas module (the reports read the Analysis's
    Tables: NOTE [ Tables, not DataFrames, inside the stages ])."""
    examples = Path(__file__).parents[1] / "traces" / "examples"
    paths = [trace_dir / "run.json", *sorted(examples.glob("*.json.gz"))]
    code = (
        "import sys\n"
        "import ckprof.analysis as A\n"
        "from ckprof.report.tables import render\n"
        f"analyses = [A.load(p) for p in {[str(p) for p in paths]!r}]\n"
        "fmts = ('table', 'json', 'csv', 'markdown')\n"
        "before = [render(a, f) for a in analyses for f in fmts]\n"
        "for m in [k for k in sys.modules if k.split('.')[0] == 'pandas']:\n"
        "    sys.modules[m] = None\n"
        "after = [render(a, f) for a in analyses for f in fmts]\n"
        "assert after == before\n"
        "import ckprof.analysis.ab, ckprof.analysis.user_phases, ckprof.report.ab, ckprof.report.inside\n"
        "for name in ('ckprof.analysis.bundle', 'ckprof.analysis.ab', 'ckprof.analysis.user_phases',\n"
        "             'ckprof.report.tables', 'ckprof.report.text', 'ckprof.report.ab', 'ckprof.report.inside'):\n"
        "    held = [k for k, v in vars(sys.modules[name]).items()\n"
        "            if getattr(v, '__name__', '').split('.')[0] == 'pandas']\n"
        "    assert not held, (name, held)  # pandas imported at module level\n"
        "print('rendered', len(after))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"rendered {4 * len(paths)}"


def test_json_contract_values(trace_dir: Path) -> None:
    """GIVEN the golden trace WHEN printed as JSON THEN the documented keys hold the
    figures known by construction (phases add up; recompute carved from backward)."""
    out = json.loads(invoke(["analyze", "run.json", "--format", "json"], trace_dir).stdout)
    assert out["recompute_detection"] == "markers"
    assert set(out["totals"]) == {"forward", "backward", "recompute", "optimizer", "other"}
    t = {k: v["wall_ms"] for k, v in out["totals"].items()}
    assert t == pytest.approx({"forward": 0.8, "backward": 0.6, "recompute": 0.2,
                               "optimizer": 0.2, "other": 0.2})
    assert sum(t.values()) == pytest.approx(out["step_ms"]) == pytest.approx(2.0)
    assert [s["step"] for s in out["steps"]] == [1, 2]
    assert out["regions"] == [{"name": "blk0", "count": 2, "wall_ms": 0.2, "gpu_ms": 0.08,
                               "forward_wall_ms": 0.2}]
    # kernels take the phase of their launch: the recompute kernel runs at 600 us,
    # after the recompute range ended, and still counts as recompute
    assert out["totals"]["recompute"]["gpu_ms"] == pytest.approx(0.08)
    assert out["totals"]["forward"]["gpu_ms"] == pytest.approx(0.1)
    assert out["recompute_overhead_pct"] == pytest.approx(0.2 / 1.8 * 100, abs=1e-3)
    mem = {(m["phase"], m["device"]): m["peak_bytes"] for m in out["memory"]}
    # baseline 1,000,000 + counter change; step 2 peaks at 8192 + 8192 above its start
    assert mem[("recompute", "cpu")] == 1_000_000 + 4096 * 2 + 8192
    assert mem[("forward", "cpu")] == 1_000_000 + 4096 * 2


def test_step_filter_and_unknown_step(trace_dir: Path) -> None:
    """GIVEN two steps WHEN --step picks one THEN only it is reported; an unknown
    step is a one-line error with exit code 7 that lists the steps."""
    out = json.loads(invoke(["analyze", "run.json", "--step", "2", "--format", "json"], trace_dir).stdout)
    assert out["steps_analyzed"] == [2]
    bad = invoke(["analyze", "run.json", "--step", "9"], trace_dir)
    assert bad.exit_code == 7
    assert "step 9 is not in the trace (steps: 1, 2)" in bad.stderr
    assert "Traceback" not in bad.output


def test_gzip_and_plain_give_the_same_json(tmp_path: Path) -> None:
    """GIVEN the same trace plain and gzipped WHEN analysed THEN identical figures."""
    golden_trace().write(tmp_path / "a.json")
    golden_trace().write(tmp_path / "b.json.gz", gzip=True)
    a = json.loads(invoke(["analyze", "a.json", "--format", "json"], tmp_path).stdout)
    b = json.loads(invoke(["analyze", "b.json.gz", "--format", "json"], tmp_path).stdout)
    a.pop("trace"), b.pop("trace")
    assert a == b


def test_output_file_is_never_overwritten(trace_dir: Path) -> None:
    """GIVEN an existing output file WHEN -o names it THEN exit 8 and the file is untouched."""
    (trace_dir / "out.txt").write_text("mine")
    result = invoke(["analyze", "run.json", "-o", "out.txt"], trace_dir)
    assert result.exit_code == 8
    assert (trace_dir / "out.txt").read_text() == "mine"
    ok = invoke(["analyze", "run.json", "-o", "new.txt"], trace_dir)
    assert ok.exit_code == 0 and "Time by phase" in (trace_dir / "new.txt").read_text()


BAD_INPUTS = {
    "missing": (None, 3, "no such file"),
    "empty.json": (b"", 6, ""),
    "truncated.json": (b'{"traceEvents": [{"ph": "X", "name": "a", "ts": 1, "dur": 2, "pid": 1, "tid": 1},\n  {"ph": "X", "na', 5, ""),
    "not_json.json": (b"hello, world", 4, ""),
    "number.json": (b"42", 4, ""),
    "other_tool.json": (b'{"name": "package", "version": "1.0"}', 4, ""),
    "no_events.json": (b'{"traceEvents": []}', 6, ""),
    "damaged.json.gz": (gzip.compress(b'{"traceEvents": []}')[:12] + b"\x00garbage", 4, ""),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_error(tmp_path: Path, name: str) -> None:
    """GIVEN a broken input WHEN analysed THEN one line on stderr naming the file, the
    documented exit code, and no traceback."""
    data, code, text = BAD_INPUTS[name]
    if data is not None:
        (tmp_path / name).write_bytes(data)
    result = invoke(["analyze", name], tmp_path)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ckprof: error: ") and name in lines[0]
    assert text in lines[0]
    assert "Traceback" not in result.output


def test_every_command_has_help_with_an_example() -> None:
    """GIVEN every registered command WHEN --help THEN it exits 0 and shows an example."""
    from ckprof.cli.main import COMMANDS

    for name in COMMANDS:
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Example" in result.output, name


def test_version() -> None:
    from ckprof import __version__

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
