"""The rough edges a new user hit (issue 15, item 4), each with its test. Synthetic
traces from the builders, so every expected figure is written here."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.builders import TraceBuilder

from ckprof.cli.main import COMMANDS, cli

_META = {"ckprof_version": "test", "device": "cpu", "markers": True,
         "memory_baseline": {"cpu": {"bytes": 1_000_000, "method": "test", "counter_absolute": False}}}


def marked_trace(*, rank: int | None = None, user_phase: bool = False, regions: bool = True,
                 unseen_bytes: int = 0) -> TraceBuilder:
    """2 steps of 1000 us: forward 0-400 (a checkpointed region 100-200), backward
    400-800 (its recompute 450-550), optimizer 850-950; with ``user_phase`` a
    ``ckprof.phase("data")`` range 800-850 (inside the other gap) and an inner
    ``ckprof.phase("decode")`` 820-830 nested in it."""
    meta = dict(_META)
    if rank is not None:
        meta = {**meta, "rank": rank, "world_size": 2}
    if unseen_bytes:
        meta = {**meta, "memory_end": {"cpu": {"bytes": 0, "freed_unseen_bytes": unseen_bytes}}}
    b = TraceBuilder().meta(ckprof=meta)
    for i, t0 in enumerate((0.0, 1000.0)):
        b.step(i + 1, t0, 1000)
        b.marker("zero_grad", t0 + 1, 2)
        b.marker("forward", t0 + 0, 400)
        if regions:
            b.marker("checkpoint:blk0", t0 + 100, 100)
        b.op("aten::mm", t0 + 110, 80, seq=10 + i)
        b.memory(t0 + 150, bytes=4096, total_allocated=4096 * (i + 1))
        b.marker("backward", t0 + 400, 400)
        b.evaluate("MmBackward0", t0 + 420, 300, seq=10 + i)
        if regions:
            b.marker("recompute:blk0", t0 + 450, 100)
        b.op("aten::mm", t0 + 460, 80, seq=20 + i)
        b.memory(t0 + 480, bytes=8192, total_allocated=4096 * (i + 1) + 8192)
        b.memory(t0 + 700, bytes=-8192, total_allocated=4096 * (i + 1))
        if user_phase:
            b.marker("phase:data", t0 + 800, 50)
            b.marker("phase:decode", t0 + 820, 10)
        b.marker("optimizer", t0 + 850, 100)
    return b


def invoke(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


# ----------------------------------------------------------------- several files


def test_analyze_several_files_as_ranks(tmp_path: Path) -> None:
    """GIVEN two trace files recording ranks 0 and 1 WHEN `ckprof analyze a b` runs
    THEN exit 0 and the headline says 2 ranks (the --help example now works)."""
    a = marked_trace(rank=0).write(tmp_path / "a.json")
    b = marked_trace(rank=1).write(tmp_path / "b.json")
    result = invoke(["analyze", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("2 rank(s) analysed")
    assert "Per rank" in result.stdout and "Across ranks" in result.stdout


def test_analyze_several_files_of_one_rank_are_runs(tmp_path: Path) -> None:
    """GIVEN two traces that both record rank 0 (two runs of a single process)
    WHEN analysed together, as files or as their directory THEN they are compared as
    repeated runs of one rank, and the output says so instead of "both rank 0"."""
    a = marked_trace(rank=0).write(tmp_path / "run1.json")
    b = marked_trace(rank=0).write(tmp_path / "run2.json")
    for args in ([str(a), str(b)], [str(tmp_path)]):
        result = invoke(["analyze", *args, "--format", "json"])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["kind"] == "runs"
        assert [r["rank"] for r in doc["ranks"]] == [0, 1]
        assert any("repeated runs of one rank" in n for n in doc["notes"])
    text = invoke(["analyze", str(a), str(b)]).stdout
    assert text.startswith("2 runs of one rank analysed") and "Per run" in text


# ----------------------------------------------------------------- --force


def test_every_command_with_output_has_force() -> None:
    """GIVEN every ckprof command WHEN it writes a file with -o/--output THEN it also
    has --force, so "pass --force" in the exists message is always true."""
    for name in COMMANDS:
        command = cli.get_command(None, name)  # type: ignore[arg-type]
        opts = {o for p in command.params for o in getattr(p, "opts", [])}
        if "--output" in opts and name != "nsys-command":  # nsys-command's -o names nsys' report
            assert "--force" in opts, name


def test_analyze_output_exists_then_force(tmp_path: Path) -> None:
    """GIVEN an existing output file WHEN analyze -o writes there THEN exit 8 with the
    --force advice and the file untouched; with --force it is replaced."""
    trace = marked_trace().write(tmp_path / "t.json")
    out = tmp_path / "out.txt"
    out.write_text("precious")
    refused = invoke(["analyze", str(trace), "-o", str(out)])
    assert refused.exit_code == 8 and "--force" in refused.output
    assert out.read_text() == "precious"
    forced = invoke(["analyze", str(trace), "-o", str(out), "--force"])
    assert forced.exit_code == 0 and "Time by phase" in out.read_text()


# ----------------------------------------------------------------- user phases


def test_user_phases_are_rows_inside_other(tmp_path: Path) -> None:
    """GIVEN ckprof.phase("data") ranges of 50 us per step in the gap between backward
    and optimizer, with ckprof.phase("decode") of 10 us nested inside
    WHEN analysed THEN data gets 2 x 40 us and decode 2 x 10 us (the inner range wins),
    shown as rows under other in text and markdown, and in JSON and CSV."""
    trace = marked_trace(user_phase=True).write(tmp_path / "t.json")
    text = invoke(["analyze", str(trace)]).stdout
    assert re.search(r"^  other\s+0\.200\s+10\.0%", text, re.M)
    assert re.search(r"^    data\s+0\.080\s+4\.0%", text, re.M)
    assert re.search(r"^    decode\s+0\.020\s+1\.0%", text, re.M)
    doc = json.loads(invoke(["analyze", str(trace), "--format", "json"]).stdout)
    assert doc["user_phases"] == [
        {"name": "data", "phase": "other", "count": 2, "wall_ms": 0.08},
        {"name": "decode", "phase": "other", "count": 2, "wall_ms": 0.02}]
    md = invoke(["analyze", str(trace), "--format", "markdown"]).stdout
    assert "| ↳ data | 0.080 | 4.0% |  |" in md
    rows = list(csv.DictReader(io.StringIO(invoke(["analyze", str(trace), "--format", "csv"]).stdout)))
    user = {r["user_phase"]: r["wall_ms"] for r in rows if r["table"] == "user_phase"}
    assert user == {"data": "0.080000", "decode": "0.020000"}


# ----------------------------------------------------------------- recompute detection


def test_markers_without_region_markers_exits_7_like_stack_without_frames(tmp_path: Path) -> None:
    """GIVEN a ckprof trace with phase markers but no checkpoint region markers
    WHEN --recompute-detection markers is asked THEN exit 7 with advice (as stack
    without frames does), never 0% recompute."""
    trace = marked_trace(regions=False).write(tmp_path / "t.json")
    markers = invoke(["analyze", str(trace), "--recompute-detection", "markers"])
    stack = invoke(["analyze", str(trace), "--recompute-detection", "stack"])
    assert markers.exit_code == stack.exit_code == 7
    assert "no checkpoint region markers" in markers.output
    assert "instrument_checkpointing()" in markers.output


def test_auto_falling_back_to_sequence_on_a_ckprof_trace_suggests_instrumenting(tmp_path: Path) -> None:
    """GIVEN a trace captured by ckprof (metadata) whose checkpointing was not
    instrumented WHEN auto detection falls back to sequence THEN a note suggests
    ckprof.instrument_checkpointing(); a plain torch trace gets no such note."""
    trace = marked_trace(regions=False).write(tmp_path / "t.json")
    doc = json.loads(invoke(["analyze", str(trace), "--format", "json"]).stdout)
    assert doc["recompute_detection"] == "sequence"
    assert any("instrument_checkpointing()" in n for n in doc["notes"])
    plain = marked_trace(regions=False).meta(ckprof=None)
    raw = plain.to_json()
    raw.pop("ckprof", None)
    (tmp_path / "plain.json").write_text(json.dumps(raw))
    doc = json.loads(invoke(["analyze", str(tmp_path / "plain.json"), "--format", "json"]).stdout)
    assert not any("instrument_checkpointing()" in n for n in doc["notes"])


# ----------------------------------------------------------------- one content, four formats


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d[\d,]*\.\d+%?|\d[\d,]{3,}", text))


def test_markdown_and_csv_carry_the_text_tables_content(tmp_path: Path) -> None:
    """GIVEN one trace WHEN rendered as text, markdown and CSV THEN every figure of the
    text table is in the markdown, the CSV has forward_wall_ms, step_ms, the overhead
    and the notes, and the markdown has the per-step table and the notes."""
    trace = marked_trace(user_phase=True, unseen_bytes=100_000).write(tmp_path / "t.json")
    text = invoke(["analyze", str(trace)]).stdout
    md = invoke(["analyze", str(trace), "--format", "markdown"]).stdout
    missing = {n for n in _numbers(text) if n not in md}
    assert not missing, missing
    assert "#### Per step (wall ms)" in md and "#### Notes" in md and "first-run fwd ms" in md
    rows = list(csv.DictReader(io.StringIO(invoke(["analyze", str(trace), "--format", "csv"]).stdout)))
    summary = {r["metric"]: r["value"] for r in rows if r["table"] == "summary"}
    overhead = re.search(r"forward re-run \+([\d.]+)%", text).group(1)
    assert f"{float(summary['recompute_overhead_pct']):.1f}" == overhead
    assert summary["steps_analyzed"] == "1 2" and summary["recompute_found_by"] == "markers"
    region = next(r for r in rows if r["table"] == "region")
    assert region["forward_wall_ms"] == "0.200000"
    assert {r["step_ms"] for r in rows if r["table"] == "step"} == {"1.000000"}
    notes = [r["note"] for r in rows if r["table"] == "note"]
    assert notes and all(n in text for n in notes)
    mem = [r for r in rows if r["table"] == "memory"]
    assert mem and all("absolute: includes" in r["note"] for r in mem)


# ----------------------------------------------------------------- small ones


def test_small_unseen_frees_are_not_noted(tmp_path: Path) -> None:
    """GIVEN 4 bytes (a scalar grad) freed unseen WHEN analysed THEN no note about it;
    GIVEN 100,000 bytes THEN the note is there."""
    small = json.loads(invoke(["analyze", str(marked_trace(unseen_bytes=4).write(tmp_path / "s.json")),
                               "--format", "json"]).stdout)
    big = json.loads(invoke(["analyze", str(marked_trace(unseen_bytes=100_000).write(tmp_path / "b.json")),
                             "--format", "json"]).stdout)
    assert not any("allocated before profiling" in n for n in small["notes"])
    assert any("allocated before profiling" in n for n in big["notes"])


def test_report_says_profile_memory_once(tmp_path: Path) -> None:
    """GIVEN a trace without memory events WHEN the HTML report is written THEN the
    advice to capture with profile_memory=True appears once."""
    b = TraceBuilder()
    b.step(1, 0, 100).marker("forward", 0, 50).marker("backward", 50, 40)
    trace = b.write(tmp_path / "t.json")
    out = tmp_path / "r.html"
    assert invoke(["report", str(trace), "-o", str(out)]).exit_code == 0
    assert out.read_text().count("profile_memory=True") == 1


def test_analyze_dir_says_it_skips_subfolders_or_recurses(tmp_path: Path) -> None:
    """GIVEN a folder with one trace and a subfolder holding another
    WHEN analysed THEN stderr says the subfolder was not searched (one trace analysed);
    with --recursive both are (as runs of one rank)."""
    marked_trace().write(tmp_path / "a.json")
    (tmp_path / "more").mkdir()
    marked_trace().write(tmp_path / "more" / "b.json")
    plain = invoke(["analyze", str(tmp_path)])
    assert plain.exit_code == 0
    assert "subfolders not searched (more)" in plain.stderr and "--recursive" in plain.stderr
    assert plain.stdout.startswith("ckprof ")  # one trace: the single-file analysis
    deep = invoke(["analyze", str(tmp_path), "--recursive"])
    assert deep.exit_code == 0 and deep.stdout.startswith("2 ")


def test_several_traces_reject_single_trace_options(tmp_path: Path) -> None:
    """GIVEN two files and --step WHEN analysed THEN a usage error (exit 2)."""
    a = marked_trace().write(tmp_path / "a.json")
    b = marked_trace().write(tmp_path / "b.json")
    result = invoke(["analyze", str(a), str(b), "--step", "1"])
    assert result.exit_code == 2 and "--step" in result.output


def test_partial_step_is_left_out(tmp_path: Path) -> None:
    """GIVEN a trace whose metadata names step 2 as still running when the capture
    stopped WHEN analysed THEN step 2 is left out with a note; --step 2 still shows it."""
    b = marked_trace()
    b.meta(ckprof={**_META, "partial_step": 2})
    trace = b.write(tmp_path / "t.json")
    doc = json.loads(invoke(["analyze", str(trace), "--format", "json"]).stdout)
    assert doc["steps_analyzed"] == [1]
    assert any("step 2 was still running" in n for n in doc["notes"])
    only = json.loads(invoke(["analyze", str(trace), "--format", "json", "--step", "2"]).stdout)
    assert only["steps_analyzed"] == [2]


# ----------------------------------------------------------------- memory categories


def test_capture_memory_timeline_feeds_plot_categories(tmp_path: Path) -> None:
    """GIVEN ckprof.capture(memory_timeline=True) WHEN a window is saved THEN torch's
    memory timeline sits next to the trace and `ckprof plot --kind categories` draws it."""
    torch = pytest.importorskip("torch")
    import ckprof

    torch.manual_seed(0)
    m = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with ckprof.capture(tmp_path / "t", wait=0, warmup=1, active=1, memory_timeline=True) as cap:
        for _ in range(2):
            opt.zero_grad()
            m(torch.randn(4, 8)).square().mean().backward()
            opt.step()
            cap.step()
    (trace,) = cap.trace_paths
    (timeline,) = cap.memory_timeline_paths
    assert timeline.parent == trace.parent and timeline.name.endswith(".raw.json.gz")
    out = tmp_path / "cat.png"
    result = invoke(["plot", str(trace), "--kind", "categories", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_memory_timeline_from_a_fifo_is_refused_not_opened(tmp_path):
    """GIVEN a FIFO named like a memory timeline WHEN it is read THEN a typed error at
    once (opening a FIFO with no writer would block forever); a damaged gzip one is a
    TraceFormatError too."""
    import os

    from ckprof.errors import TraceFormatError
    from ckprof.trace.memory_timeline import read_memory_timeline

    fifo = tmp_path / "run.raw.json.gz"
    os.mkfifo(fifo)
    with pytest.raises(TraceFormatError):
        read_memory_timeline(fifo)
    bad = tmp_path / "bad.raw.json.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    with pytest.raises(TraceFormatError):
        read_memory_timeline(bad)
