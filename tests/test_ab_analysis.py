"""The A/B analysis (ckprof/analysis/ab.py) and everything that shows it -- analyze
(text, markdown, csv, json), report, compare, plot -- on a synthetic A/B trace whose
figures are computed by hand below. No torch needed."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from support.builders import TraceBuilder

from ckprof.analysis import analyze, load
from ckprof.analysis.ab import step_variants
from ckprof.cli.main import cli
from ckprof.errors import NotCapturedError
from ckprof.strategy.compare import compare_variants
from ckprof.trace.markers import variant_marker

BASE = 1_000_000

#: (step, variant, start_us, duration_us): on, off, off, on -- the capture's order
STEPS = [(1, "on", 0.0, 1000.0), (2, "off", 1000.0, 700.0), (3, "off", 1700.0, 760.0), (4, "on", 2460.0, 1100.0)]
ON_ALLOC, RECOMPUTE_ALLOC, OFF_ALLOC = 4096, 8192, 16384


def ab_trace(*, metadata: bool = True, oom_step: int | None = None) -> TraceBuilder:
    """Checkpointed steps: forward 300 us (4 KiB kept), recompute 200 us inside backward
    (8 KiB briefly). Off steps: forward 200 us keeping 16 KiB, backward, no recompute."""
    b = TraceBuilder()
    meta = {"ckprof_version": "test", "device": "cpu", "markers": True,
            "memory_baseline": {"cpu": {"bytes": BASE, "method": "test", "counter_absolute": False}}}
    if metadata:
        meta["ab"] = {"mode": "checkpointing", "variants": ["on", "off"], "baseline": "off",
                      "steps": {str(s): v for s, v, _, _ in STEPS},
                      "excluded": [] if oom_step is None else [oom_step],
                      "off_fits": oom_step is None,
                      "oom": [] if oom_step is None else [{"step": oom_step, "error": "OutOfMemoryError: sim"}]}
    b.meta(ckprof=meta)
    total = 0
    for step, variant, t0, dur in STEPS:
        b.step(step, t0, dur)
        b.marker(variant_marker(variant), t0 + 1, 1)
        if step == oom_step:
            b.marker(variant_marker("oom"), t0 + 3, 1)
        if variant == "on":
            b.marker("forward", t0 + 5, 295)
            b.marker("checkpoint:blk", t0 + 50, 100)
            total += ON_ALLOC
            b.memory(t0 + 100, bytes=ON_ALLOC, total_allocated=total)
            b.marker("backward", t0 + 300, 600)
            b.marker("recompute:blk", t0 + 400, 200)
            total += RECOMPUTE_ALLOC
            b.memory(t0 + 450, bytes=RECOMPUTE_ALLOC, total_allocated=total)
            total -= RECOMPUTE_ALLOC
            b.memory(t0 + 550, bytes=-RECOMPUTE_ALLOC, total_allocated=total)
            total -= ON_ALLOC
            b.memory(t0 + 850, bytes=-ON_ALLOC, total_allocated=total)
            b.marker("optimizer", t0 + 900, 50)
        else:
            b.marker("forward", t0 + 5, 195)
            total += OFF_ALLOC
            b.memory(t0 + 100, bytes=OFF_ALLOC, total_allocated=total)
            b.marker("backward", t0 + 200, 450)
            total -= OFF_ALLOC
            b.memory(t0 + 600, bytes=-OFF_ALLOC, total_allocated=total)
            b.marker("optimizer", t0 + 650, 40)
    return b


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


# the hand-computed answer
ON_MS = median([1.0, 1.1])
OFF_MS = median([0.7, 0.76])
COST_PCT = (ON_MS - OFF_MS) / OFF_MS * 100
RECOMPUTE_PCT = 0.2 / OFF_MS * 100
SAVING = (BASE + OFF_ALLOC) - (BASE + ON_ALLOC + RECOMPUTE_ALLOC)


@pytest.fixture()
def ab_file(tmp_path: Path) -> Path:
    return ab_trace().write(tmp_path / "ab.json")


def test_ab_result_matches_hand_computed_figures():
    """GIVEN two on and two off steps WHEN analysed THEN per-variant medians, the
    measured cost, the recompute part of it and the peak saving are the hand-computed
    ones (checkpointing keeps 4+8 KiB at its peak, no checkpointing 16 KiB)."""
    ab = analyze(ab_trace().to_trace()).ab
    assert ab is not None and ab.mode == "checkpointing" and ab.device == "cpu"
    v = ab.variants.set_index("variant")
    assert list(v.index) == ["on", "off"] and v["steps"].tolist() == [2, 2]
    assert v.loc["on", "step_ms"] == pytest.approx(ON_MS)
    assert v.loc["off", "step_ms"] == pytest.approx(OFF_MS)
    assert v.loc["on", "recompute_ms"] == pytest.approx(0.2) and v.loc["off", "recompute_ms"] == 0
    assert v.loc["off", "peak_bytes"] == BASE + OFF_ALLOC
    assert v.loc["on", "peak_bytes"] == BASE + ON_ALLOC + RECOMPUTE_ALLOC
    d = ab.diff
    assert d.cost_pct == pytest.approx(COST_PCT)
    assert d.recompute_pct == pytest.approx(RECOMPUTE_PCT)
    assert d.recompute_share_pct == pytest.approx(0.2 / (ON_MS - OFF_MS) * 100)
    assert d.saving_bytes == SAVING and not d.within_noise
    mem = ab.memory.set_index(["variant", "phase"])["peak_bytes"]
    assert mem[("on", "recompute")] == BASE + ON_ALLOC + RECOMPUTE_ALLOC
    assert mem[("off", "forward")] == BASE + OFF_ALLOC
    assert ("off", "recompute") not in mem.index


def test_variants_from_ranges_equal_variants_from_metadata():
    """GIVEN the same trace with and without the capture metadata WHEN the variants are
    read THEN the ckprof::variant:: ranges give the same steps and figures."""
    with_meta = analyze(ab_trace().to_trace())
    bare = analyze(ab_trace(metadata=False).to_trace())
    assert step_variants(bare.trace, bare.phases.steps).equals(
        step_variants(with_meta.trace, with_meta.phases.steps))
    assert bare.ab.diff.cost_pct == pytest.approx(with_meta.ab.diff.cost_pct)


@pytest.mark.parametrize("metadata", [True, False])
def test_out_of_memory_step_is_excluded_and_reported(metadata):
    """GIVEN an 'off' step that ran out of memory (metadata, or only the oom range)
    WHEN analysed THEN it is excluded, the other off step is the baseline, and the
    result says the step does not fit without checkpointing."""
    ab = analyze(ab_trace(metadata=metadata, oom_step=3).to_trace()).ab
    assert not ab.baseline_fits
    assert ab.steps.set_index("step").loc[3, "excluded"]
    assert ab.variants.set_index("variant").loc["off", "steps"] == 1
    assert ab.diff.baseline_step_ms == pytest.approx(0.7)
    from ckprof.report.ab import ab_headline

    assert any("Without checkpointing this step does not fit" in h for h in ab_headline(ab))


def test_trace_without_variants_has_no_ab():
    """GIVEN an ordinary trace WHEN analysed THEN ab is None and the JSON says null."""
    b = TraceBuilder().step(1, 0, 100)
    b.marker("forward", 1, 50)
    a = analyze(b.to_trace())
    assert a.ab is None and a.to_dict()["ab"] is None


def test_variant_filter_keeps_that_variants_steps(ab_file):
    """GIVEN --variant WHEN loaded THEN only its steps are analysed; an unknown variant
    names the ones that exist."""
    assert load(ab_file, variant="on").phases.steps["step"].tolist() == [1, 4]
    assert load(ab_file, variant="off").time.totals.set_index("phase").loc["recompute", "wall_ns"] == 0
    with pytest.raises(NotCapturedError, match="variants: on, off"):
        load(ab_file, variant="maybe")


@settings(max_examples=20, deadline=None)
@given(st.lists(st.sampled_from(["on", "off"]), min_size=2, max_size=12))
def test_every_step_gets_the_variant_of_its_range(order):
    """GIVEN any sequence of on/off steps (property) WHEN the variants are read from the
    ranges alone THEN each step has the variant its range named."""
    b = TraceBuilder()
    for i, v in enumerate(order):
        b.step(i, i * 100.0, 100)
        b.marker(variant_marker(v), i * 100.0 + 1, 1)
        b.marker("forward", i * 100.0 + 5, 50)
    a = analyze(b.to_trace())
    got = step_variants(a.trace, a.phases.steps)
    assert got["variant"].tolist() == order and not got["excluded"].any()


# ---- what users see ----------------------------------------------------------------------


def run_cli(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_analyze_text_and_markdown_show_the_measured_answer(ab_file):
    """GIVEN an A/B trace WHEN `ckprof analyze` (table, markdown) THEN the cost, the
    recompute part and the saving are printed with the measured numbers."""
    text = run_cli(["analyze", str(ab_file)]).output
    assert f"Checkpointing cost: {COST_PCT:+.1f}% step time (measured" in text
    assert f"of which re-running forward: {RECOMPUTE_PCT:+.1f}%" in text
    assert "Checkpointing saving: 4.0 KiB peak on cpu" in text
    md = run_cli(["analyze", str(ab_file), "--format", "markdown"]).output
    assert "#### A/B: checkpointing on vs off (same run)" in md and f"{COST_PCT:+.1f}%" in md


def test_analyze_json_and_csv_add_keys_only(ab_file):
    """GIVEN an A/B trace WHEN json/csv THEN the old keys are there, plus ``ab`` (json)
    and a ``variant`` column with ab rows (csv)."""
    d = json.loads(run_cli(["analyze", str(ab_file), "--format", "json"]).output)
    assert {"totals", "steps", "memory", "recompute_overhead_pct"} <= set(d)
    assert d["ab"]["diff"]["cost_pct"] == pytest.approx(COST_PCT, abs=1e-4)
    assert d["ab"]["diff"]["saving_bytes"] == SAVING
    rows = list(csv.DictReader(io.StringIO(run_cli(["analyze", str(ab_file), "--format", "csv"]).output)))
    assert {r["variant"] for r in rows if r["table"] == "step"} == {"on", "off"}
    ab_steps = {r["variant"]: float(r["wall_ms"]) for r in rows if r["table"] == "ab" and r["phase"] == "step"}
    assert ab_steps == pytest.approx({"on": ON_MS, "off": OFF_MS})


def test_compare_one_ab_trace_is_off_against_on(ab_file):
    """GIVEN one A/B trace WHEN `ckprof compare TRACE` THEN off steps are the baseline
    and on steps the candidate, with the A/B verdict on top; per-step ops only count
    each variant's own steps."""
    out = run_cli(["compare", str(ab_file)]).output
    assert "[off] (2 step(s))" in out and "[on] (2 step(s))" in out
    assert "A/B within the trace" in out
    c = compare_variants(ab_file)
    mem = c.memory.set_index(["phase", "device"])
    assert mem.loc[("all", "cpu"), "diff_bytes"] == -SAVING
    phases = c.phases.set_index("phase")
    assert phases.loc["recompute", "baseline_ms"] == 0 and phases.loc["recompute", "candidate_ms"] == pytest.approx(0.2)
    assert c.to_dict()["ab"]["run"]["diff"]["saving_bytes"] == SAVING


def test_compare_without_ab_asks_for_two_traces(tmp_path):
    """GIVEN a trace without A/B WHEN compared alone THEN one-line error, exit 7."""
    b = TraceBuilder().step(1, 0, 100)
    b.marker("forward", 1, 50)
    path = b.write(tmp_path / "plain.json")
    res = CliRunner().invoke(cli, ["compare", str(path)])
    assert res.exit_code == 7 and "no A/B steps" in res.output and "Traceback" not in res.output


def test_report_and_plot_show_ab(ab_file, tmp_path):
    """GIVEN an A/B trace WHEN `ckprof report` and `ckprof plot --kind ab` THEN the page
    has the A/B section with its figure, and the figure has one bar set per variant."""
    html_path = tmp_path / "r.html"
    assert run_cli(["report", str(ab_file), "-o", str(html_path)]).exit_code == 0
    html = html_path.read_text()
    assert '<section id="ab">' in html and f"{COST_PCT:+.1f}%" in html
    assert html.index('id="ab"') < html.index('id="memory"')
    png = tmp_path / "ab.png"
    assert run_cli(["plot", str(ab_file), "--kind", "ab", "-o", str(png)]).exit_code == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    from ckprof.report.plots import plot_ab

    fig = plot_ab(load(ab_file))
    gids = {a.get_gid() for ax in fig.axes for a in ax.get_children() if a.get_gid()}
    assert {"ab:peak:on", "ab:peak:off", "ab:steps:on", "ab:steps:off"} <= gids
    assert math.isclose(fig.axes[1].get_ylim()[1], (BASE + OFF_ALLOC) * 1.1, rel_tol=1e-6)


def test_on_steps_without_recompute_are_called_out():
    """GIVEN an A/B trace whose 'on' steps recomputed nothing (checkpointing the switch
    never reached) WHEN analysed THEN a note says so."""
    b = TraceBuilder().meta(ckprof={"ab": {"mode": "checkpointing", "steps": {"1": "on", "2": "off"}}})
    for step, v in ((1, "on"), (2, "off")):
        t0 = step * 100.0
        b.step(step, t0, 100)
        b.marker(variant_marker(v), t0 + 1, 1)
        b.marker("forward", t0 + 5, 50)
    ab = analyze(b.to_trace()).ab
    assert any("recomputed nothing" in n for n in ab.notes)


def test_unprofiled_wait_steps_give_the_cost_without_the_profiler():
    """GIVEN the capture's timed wait steps (on 12, 14 ms; off 10, 10 ms) WHEN analysed
    THEN the unprofiled cost is (13 - 10) / 10 and the headline leads with it, the
    profiled figure second."""
    b = ab_trace()
    meta = b._meta["ckprof"]
    meta["ab"]["unprofiled"] = [[-4, "on", 12.0], [-3, "off", 10.0], [-2, "off", 10.0], [-1, "on", 14.0]]
    ab = analyze(b.to_trace()).ab
    assert ab.diff.unprofiled_cost_pct == pytest.approx(30.0)
    assert ab.diff.unprofiled_steps == (2, 2) and ab.diff.unprofiled_within_noise is False
    from ckprof.report.ab import ab_headline

    head = ab_headline(ab)
    assert head[0].startswith("Checkpointing cost: +30.0% step time (measured without the profiler")
    assert head[1].strip().startswith(f"under the profiler: {COST_PCT:+.1f}%")
    assert ab.to_dict()["diff"]["unprofiled_cost_pct"] == pytest.approx(30.0)
    without = analyze(ab_trace().to_trace()).ab
    assert math.isnan(without.diff.unprofiled_cost_pct)
    assert any("wait=8" in n for n in without.notes)
