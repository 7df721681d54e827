"""Plots, report and annotation on REAL CPU traces captured by the test itself
(tests/support/capture.py: TinyNet, 3 checkpointed blocks, ckprof markers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from support.capture import REGIONS, capture_trace
from test_plots import artists_with_gid, assert_not_blank, bars_with_gid, png_pixels

from ckprof.report import plots


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """(trace path, analysis) of a 2-step capture with markers."""
    import ckprof

    path = capture_trace(tmp_path_factory.mktemp("captured_plots"), variant="markers", steps=2)
    return path, ckprof.load(path)


def test_real_capture_memory_plot_marks_the_analysed_peaks(captured):
    """GIVEN a real CPU capture WHEN the memory timeline is drawn THEN its markers
    are exactly the analysis' (step, phase) peaks, the line (baseline included)
    reaches the highest one, and 3 regions x 2 steps recompute spans are shaded."""
    _path, a = captured
    fig = plots.plot_memory_timeline(a)
    t0 = int(a.phases.steps["start_ns"].min())
    drawn = sorted((line.get_gid().split(":", 1)[1], round(float(x) * 1e6) + t0, int(y))
                   for line in artists_with_gid(fig, "peaks:")
                   for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True))
    peaks = a.memory.peaks
    want = sorted((str(p), int(t), int(b)) for p, t, b in
                  zip(peaks["phase"].astype(str), peaks["at_ts_ns"], peaks["peak_bytes"], strict=True))
    assert drawn == want and len(want) >= 8
    (line,) = artists_with_gid(fig, "memory:cpu")
    assert np.asarray(line.get_ydata()).max() == peaks["peak_bytes"].max()
    (spans,) = artists_with_gid(fig, "phase:recompute")
    assert len(spans.get_paths()) == int((a.phases.segments["phase"].astype(str) == "recompute").sum()) >= 6
    assert_not_blank(png_pixels(fig))


def test_real_capture_regions_and_breakdown(captured):
    """GIVEN a real capture WHEN the regions and breakdown plots are drawn THEN
    there is one bar per checkpointed block and one stacked bar per step."""
    _path, a = captured
    fig = plots.plot_recompute_regions(a)
    assert len(bars_with_gid(fig, "regions:recompute")) == len(REGIONS)
    assert sorted(t.get_text() for t in fig.axes[0].get_yticklabels()) == sorted(REGIONS)
    fig = plots.plot_time_breakdown(a)
    assert len(bars_with_gid(fig, "wall:forward")) == a.step_count == 2


def test_real_capture_report_and_annotation(captured, tmp_path: Path):
    """GIVEN a real capture WHEN reported and annotated THEN the page names every
    region and the annotated copy analyses to the same numbers."""
    import ckprof
    from ckprof.report.annotate import write_annotated_trace
    from ckprof.report.html import render_report

    _path, a = captured
    page = render_report(a)
    for region in REGIONS:
        assert f">{region}<" in page
    out = write_annotated_trace(a, tmp_path / "annotated.json.gz")
    again = ckprof.load(out)
    assert again.totals_table().equals(a.totals_table())
    assert again.memory_table().equals(a.memory_table())
    assert (again.trace.events["cat"].astype(str) == "ckprof").sum() > 0


def test_real_memory_categories_export(tmp_path: Path):
    """GIVEN a real torch profile (no schedule) with prof.export_memory_timeline
    saved as <stem>.raw.json.gz next to the trace WHEN the categories plot is drawn
    THEN it finds the file, aligns it with the trace clock (the stacks lie inside the
    step) and shows parameters, optimizer state, gradients and activations."""
    import warnings

    import torch
    from torch import nn
    from torch.profiler import ProfilerActivity, profile, record_function

    import ckprof

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 1))
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(16, 32)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof, record_function("ProfilerStep#1"):
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()
    trace = tmp_path / "run.pt.trace.json"
    prof.export_chrome_trace(str(trace))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in torch 2.13, still works
        prof.export_memory_timeline(str(tmp_path / "run.raw.json.gz"), device="cpu")
    a = ckprof.load(trace)
    fig = plots.plot_memory_categories(a)
    ax = fig.axes[0]
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"parameter", "optimizer_state", "gradient", "activation"} <= legend
    step = a.phases.steps.iloc[0]
    x_max_ms = (int(step["end_ns"]) - int(step["start_ns"])) / 1e6
    xs = np.concatenate([p.vertices[:, 0] for c in ax.collections if c.get_label() in legend
                         for p in c.get_paths()])
    assert xs.min() >= -1e-6 and xs.max() <= x_max_ms * 1.01
