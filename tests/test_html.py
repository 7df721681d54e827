"""HTML: the Jupyter summary and the self-contained report (structure and content).

The headless-browser check of the same report is in test_html_browser.py.
"""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_plots import build_checkpointed

from ckprof.report import html as ckhtml
from ckprof.report.plots import format_bytes
from ckprof.trace.markers import PHASES


class _Page(HTMLParser):
    """Collects text, tags and attributes of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())


def parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    return p


@pytest.fixture(scope="module")
def analysis():
    from ckprof.analysis import analyze

    return analyze(build_checkpointed(2).to_trace(path="synthetic <ckpt>&.json"))


@pytest.fixture(scope="module")
def report_page(analysis) -> str:
    return ckhtml.render_report(analysis)


def test_summary_html_has_headline_and_every_phase(analysis):
    """GIVEN an analysis WHEN summary_html renders it THEN the step time, recompute
    overhead, every phase with its ms per step, and each device's peak appear."""
    out = ckhtml.summary_html(analysis)
    page = parse(out)
    text = " ".join(page.text)
    n = analysis.step_count
    assert f"{analysis.step_total_ns / 1e6 / n:,.3f} ms" in text
    assert f"{analysis.time.recompute_overhead_pct:.1f}%" in text
    totals = analysis.totals_table()
    for row in totals.itertuples(index=False):
        assert row.phase in page.text
        assert f"{row.wall_ms / n:,.3f}" in text
    for row in analysis.memory_table().itertuples(index=False):
        assert format_bytes(row.peak_bytes) in text
    assert sum(1 for tag, _ in page.tags if tag == "tr") == 1 + len(PHASES)
    # trace-derived text is escaped
    assert "<ckpt>" not in out and "&lt;ckpt&gt;" in out


def test_report_is_self_contained(report_page: str):
    """GIVEN the report WHEN scanned THEN it has no script, no external URL, and
    every image is an embedded PNG that decodes to a non-blank picture."""
    import matplotlib.image as mpimg

    page = parse(report_page)
    assert not any(tag == "script" for tag, _ in page.tags)
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", report_page)
    assert "@import" not in report_page and "url(" not in report_page
    imgs = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(imgs) == 4  # breakdown, regions, memory timeline, memory composition
    for attrs in imgs:
        assert attrs["src"].startswith("data:image/png;base64,")
        assert attrs.get("alt")
        pixels = mpimg.imread(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1])), format="png")
        assert pixels.shape[1] > 400
        assert np.any(pixels[..., :3] < 0.9, axis=-1).mean() > 0.02


def test_report_headline_numbers_match_the_analysis(analysis, report_page: str):
    """GIVEN the report WHEN read as text THEN the headline shows the mean step
    time, the recompute overhead and each phase's peak memory from the analysis,
    and every section has a "How to read this" guide."""
    text = " ".join(parse(report_page).text)
    n = analysis.step_count
    assert f"{analysis.step_total_ns / 1e6 / n:,.2f} ms" in text
    assert f"{analysis.time.recompute_overhead_pct:.1f}%" in text
    for row in analysis.memory_table().itertuples(index=False):
        assert f"{row.phase} {format_bytes(row.peak_bytes)}" in text
        assert f"{int(row.peak_bytes):,}" in text
    # time, regions, memory, composition, ops (no GPU section without kernels)
    assert text.count("How to read this") == 5
    for region in analysis.regions_table()["region"]:
        assert region in text
    for phase in PHASES:
        assert phase in text
    assert "&lt;ckpt&gt;" in report_page


def test_report_without_memory_or_recompute_explains_why():
    """GIVEN a trace with neither memory events nor checkpointing WHEN reported
    THEN the page says memory was not captured and no recompute was found, and
    still shows the time breakdown."""
    from ckprof.analysis import analyze

    a = analyze(build_checkpointed(1, memory=False, regions=()).to_trace(path="plain.json"))
    page = ckhtml.render_report(a)
    text = " ".join(parse(page).text)
    assert "Memory was not captured" in text
    assert "No recompute" in text
    assert sum(1 for tag, _ in parse(page).tags if tag == "img") == 1
    assert "What is each peak made of?" not in text


def test_cli_report_writes_once(tmp_path: Path):
    """GIVEN a trace file WHEN `ckprof report -o report.html` runs twice THEN the
    first writes a complete page and the second exits 8 without touching it."""
    from click.testing import CliRunner

    from ckprof.cli.main import cli

    trace = build_checkpointed(2).write(tmp_path / "t.json")
    out = tmp_path / "report.html"
    runner = CliRunner()
    res = runner.invoke(cli, ["report", str(trace), "-o", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "Where does the step time go?" in page
    res = runner.invoke(cli, ["report", str(trace), "-o", str(out)])
    assert res.exit_code == 8
    assert out.read_text(encoding="utf-8") == page
