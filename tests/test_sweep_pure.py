"""The pure half of the sweep: byte parsing, frontier, recommendation, batch estimate,
plot and rendering. No torch needed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckprof.strategy.sweep import (
    PEAK_COLUMNS,
    RUN_COLUMNS,
    SweepResult,
    estimate_max_batch,
    pareto_mask,
    parse_bytes,
    plot_frontier,
    recommend,
    render_sweep,
    summarize,
)

MIB = 2**20


def make_runs(spec: dict[str, list[float]], recompute: dict[str, list[float]] | None = None,
              batch_size: int = 4) -> pd.DataFrame:
    rows = []
    for policy, times in spec.items():
        for i, t in enumerate(times):
            rec = (recompute or {}).get(policy, [0.0] * len(times))[i]
            rows.append({"policy": policy, "batch_size": batch_size, "step": i, "step_ms": t,
                         "forward_ms": t / 4, "backward_ms": t / 2 - rec, "recompute_ms": rec,
                         "optimizer_ms": t / 8, "other_ms": t / 8})
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def make_peaks(spec: dict[str, float], batch_size: int = 4, baseline: float = 10 * MIB) -> pd.DataFrame:
    return pd.DataFrame(
        [{"policy": p, "batch_size": batch_size, "device": "cpu", "peak_bytes": v, "baseline_bytes": baseline,
          "blocks": "x"} for p, v in spec.items()],
        columns=list(PEAK_COLUMNS),
    )


# ---- parse_bytes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GiB", 8 * 2**30),
        ("8 GiB", 8 * 2**30),
        ("512MiB", 512 * 2**20),
        ("1.5GB", 1_500_000_000),
        ("1.5 gb", 1_500_000_000),
        ("2k", 2000),
        ("1e9", 1_000_000_000),
        ("4096", 4096),
        (4096, 4096),
        (2.5, 2),
        ("0", 0),
    ],
)
def test_parse_bytes_accepts_units(text, expected):
    """GIVEN a size as users type it WHEN parsed THEN binary units are 1024-based and
    decimal ones 1000-based."""
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "8 parsecs", "-1GiB", "nan", "1,5GB", True])
def test_parse_bytes_rejects_garbage(text):
    """GIVEN something that is not a size WHEN parsed THEN ValueError names it."""
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes(text)


@given(st.integers(min_value=0, max_value=2**50), st.sampled_from(["KiB", "MiB", "GiB"]))
def test_parse_bytes_round_trips_binary_units(n, unit):
    """GIVEN an integer count of a binary unit WHEN parsed THEN it is exact."""
    factor = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
    assert parse_bytes(f"{n}{unit}") == n * factor


# ---- pareto ------------------------------------------------------------------------------


def test_pareto_mask_small_case():
    """GIVEN four points, one dominated and one with NaN WHEN the frontier is taken
    THEN only the non-dominated measured points are on it."""
    mask = pareto_mask([10, 12, 15, 11, 9], [100, 60, 50, 110, math.nan])
    assert mask.tolist() == [True, True, True, False, False]


def test_pareto_mask_equal_points_are_both_kept():
    """GIVEN two identical points WHEN the frontier is taken THEN neither dominates."""
    assert pareto_mask([5, 5], [7, 7]).tolist() == [True, True]


points = st.lists(
    st.tuples(st.floats(0.1, 1e4, allow_nan=False), st.floats(1, 1e12, allow_nan=False)), min_size=1, max_size=25
)


@settings(max_examples=150, deadline=None)
@given(points)
def test_pareto_mask_invariants(pts):
    """GIVEN any set of points WHEN the frontier is taken THEN (1) it is non-empty,
    (2) no frontier point dominates another, (3) every point off it is dominated by a
    frontier point, (4) the fastest and the leanest points are on it."""
    t = np.array([p[0] for p in pts])
    m = np.array([p[1] for p in pts])
    mask = pareto_mask(t, m)
    assert mask.any()

    def dominates(i, j):
        return t[i] <= t[j] and m[i] <= m[j] and (t[i] < t[j] or m[i] < m[j])

    front = np.flatnonzero(mask)
    for i in front:
        for j in front:
            assert not dominates(i, j)
    for j in np.flatnonzero(~mask):
        assert any(dominates(i, j) for i in front)
    fastest = np.flatnonzero(t == t.min())
    assert mask[fastest[np.argmin(m[fastest])]]
    leanest = np.flatnonzero(m == m.min())
    assert mask[leanest[np.argmin(t[leanest])]]


# ---- summarize / recommend -----------------------------------------------------------------


@pytest.fixture
def measured():
    runs = make_runs(
        {
            "none": [100, 102, 98, 101, 99],
            "full": [140, 141, 139, 142, 138],
            "every_2": [120, 121, 119, 122, 118],
            "selective": [101, 102, 100, 103, 99],  # overlaps "none" -> within noise
            "sqrt": [150, 151, 149, 152, 148],  # slower than full and fatter: dominated
        },
        recompute={"full": [30] * 5, "every_2": [15] * 5, "selective": [2] * 5, "sqrt": [10] * 5},
    )
    peaks = make_peaks({"none": 400 * MIB, "full": 150 * MIB, "every_2": 250 * MIB, "selective": 300 * MIB,
                        "sqrt": 260 * MIB})
    return runs, peaks


def test_summarize_figures(measured):
    """GIVEN five steps per policy WHEN summarised THEN medians, spreads, overhead,
    savings, frontier and noise neighbours follow from the numbers."""
    runs, peaks = measured
    t = summarize(runs, peaks).set_index("policy")
    assert t.loc["none", "step_ms"] == 100
    assert (t.loc["none", "step_ms_q1"], t.loc["none", "step_ms_q3"]) == (99, 101)
    assert (t.loc["full", "step_ms_min"], t.loc["full", "step_ms_max"]) == (138, 142)
    assert t.loc["full", "recompute_ms"] == 30
    assert t.loc["full", "recompute_overhead_pct"] == pytest.approx(150 / (700 - 150) * 100)
    assert t.loc["none", "recompute_overhead_pct"] == 0
    assert t.loc["full", "slowdown_pct"] == pytest.approx(40.0)
    assert t.loc["full", "saving_pct"] == pytest.approx(62.5)
    assert t.loc["none", "saving_pct"] == 0
    assert t.loc["none", "throughput_per_s"] == pytest.approx(4 / 0.1)
    assert t["on_frontier"].to_dict() == {"none": True, "full": True, "every_2": True, "selective": True,
                                          "sqrt": False}
    assert t.loc["selective", "within_noise_of"] == "none"
    assert t.loc["none", "within_noise_of"] == "selective"
    assert t.loc["full", "within_noise_of"] == ""
    assert list(t.index) == ["none", "full", "every_2", "selective", "sqrt"]


def test_summarize_without_none_has_no_savings(measured):
    """GIVEN no 'none' run WHEN summarised THEN savings and slowdowns are NaN, not invented."""
    runs, peaks = measured
    t = summarize(runs[runs["policy"] != "none"], peaks[peaks["policy"] != "none"])
    assert t["saving_pct"].isna().all() and t["slowdown_pct"].isna().all()


def test_recommend_fastest_that_fits_and_reports_ties(measured):
    """GIVEN a budget that excludes 'none' WHEN recommending THEN the fastest fitting
    policy wins; GIVEN a budget that fits 'none' THEN 'none' wins with 'selective' named
    as within noise."""
    runs, peaks = measured
    t = summarize(runs, peaks)
    rec = recommend(t, 300 * MIB)
    assert rec.policy == "selective" and rec.ties == ()
    assert rec.fits == ("selective", "every_2", "full", "sqrt")
    rec = recommend(t, 1024 * MIB)
    assert rec.policy == "none" and rec.ties == ("selective",)
    assert "Within timing noise of it: selective" in rec.text
    assert "selective needs 100.0 MiB less memory" in rec.text


def test_recommend_nothing_fits(measured):
    """GIVEN a budget below every peak WHEN recommending THEN no policy, and the text
    names the leanest."""
    runs, peaks = measured
    rec = recommend(summarize(runs, peaks), 100 * MIB)
    assert rec.policy is None
    assert "leanest is full at 150.0 MiB" in rec.text


def test_recommend_without_budget_lists_frontier_fastest_first(measured):
    """GIVEN no budget WHEN recommending THEN the frontier is listed fastest first."""
    runs, peaks = measured
    rec = recommend(summarize(runs, peaks))
    assert rec.policy is None
    assert rec.frontier == ("none", "selective", "every_2", "full")
    assert rec.text.index("none (") < rec.text.index("full (")


# ---- max batch ------------------------------------------------------------------------------


def test_estimate_max_batch_measured_slope():
    """GIVEN peaks at batch 2 and 4 WHEN estimating THEN the line through both gives the
    largest batch under the budget."""
    peaks = pd.concat([
        make_peaks({"none": 30 * MIB, "full": 20 * MIB}, batch_size=2),
        make_peaks({"none": 50 * MIB, "full": 24 * MIB}, batch_size=4),
    ])
    est = estimate_max_batch(peaks, 100 * MIB).set_index("policy")
    assert est.loc["none", "bytes_per_sample_est"] == 10 * MIB
    assert est.loc["none", "fixed_bytes_est"] == 10 * MIB
    assert est.loc["none", "max_batch_est"] == 9
    assert est.loc["full", "max_batch_est"] == math.floor((100 - 16) / 2)
    assert est.loc["full", "method"].startswith("measured slope")


def test_estimate_max_batch_proportional_assumption():
    """GIVEN one batch size WHEN estimating THEN memory above the baseline is assumed
    proportional to the batch, and the method says it is assumed."""
    peaks = make_peaks({"none": 50 * MIB}, batch_size=4, baseline=10 * MIB)
    est = estimate_max_batch(peaks, 90 * MIB).iloc[0]
    assert est["bytes_per_sample_est"] == 10 * MIB
    assert est["max_batch_est"] == 8
    assert est["method"] == "proportional (assumed)"
    assert math.isnan(estimate_max_batch(peaks, None).iloc[0]["max_batch_est"])


def test_estimate_max_batch_flat_peak_gives_no_estimate():
    """GIVEN a peak that does not grow with the batch WHEN estimating THEN no number."""
    peaks = pd.concat([make_peaks({"x": 30 * MIB}, 2), make_peaks({"x": 30 * MIB}, 4)])
    est = estimate_max_batch(peaks, 100 * MIB).iloc[0]
    assert math.isnan(est["max_batch_est"]) and "no estimate" in est["method"]


# ---- result, plot, rendering ----------------------------------------------------------------


def test_plot_frontier_greys_dominated(measured):
    """GIVEN a sweep table WHEN plotted THEN one point per policy, dominated ones grey,
    the budget line and the recommended star present, and it saves as PNG."""
    runs, peaks = measured
    result = SweepResult.from_runs(runs, peaks, budget_bytes=300 * MIB)
    fig = result.plot()
    ax = fig.axes[0]
    labels = {t.get_text(): t.get_color() for t in ax.texts}
    assert set(labels) == {"none", "full", "every_2", "selective", "sqrt"}
    assert labels["sqrt"] == "#888888" and labels["full"] == "black"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "recommended: selective" in legend and any(x.startswith("budget 300.0 MiB") for x in legend)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_plot_frontier_without_memory_is_empty_but_valid():
    """GIVEN no peak measured WHEN plotted THEN a figure with no points (no crash)."""
    table = summarize(make_runs({"none": [1, 2, 3]}), make_peaks({"none": math.nan}))
    fig = plot_frontier(table)
    assert len(fig.axes[0].texts) == 0 and len(fig.axes[0].lines) == 0


EXPECTED_TABLE = """\
ckprof sweep · device cpu · batch 4 · 3 measured step(s) per policy
  step ms: median over steps; IQR: its spread (± half the interquartile range); rounds: spread of
  the per-round medians; vs none / saving: against 'none'; recompute: share of the step spent
  re-running forward
memory budget: 64.0 MiB (67,108,864 bytes)

  policy  step ms    IQR  rounds  vs none  recompute      peak  saving  samples/s
  ------  -------  -----  ------  -------  ---------  --------  ------  ---------
  none       10.0  ±5.0%       —        —       0.0%  80.0 MiB       —      400.0
  full       15.0  ±3.3%       —   +50.0%      50.0%  40.0 MiB   50.0%      266.7
  blocks checkpointed: none x; full x

  policy  fits at 4  max batch (est.)  step ms (est.)  samples/s (est.)
  ------  ---------  ----------------  --------------  ----------------
  none           no                 3             7.5             400.0
  full          yes                 7            26.2             266.7
  max batch, step ms and samples/s at it are ESTIMATES: proportional (assumed); step time
  proportional (assumed)

- Speed, fastest first ('<' holds beyond the spread and in every round; '≈': within noise): none <
  full

Recommendation: Use full: the fastest policy whose measured peak fits 64.0 MiB (15.0 ms per step
  median, peak 40.0 MiB).
"""


def test_render_sweep_text_golden():
    """GIVEN a two-policy sweep WHEN rendered as text THEN it matches the golden text."""
    runs = make_runs({"none": [9, 10, 11], "full": [14, 15, 16]}, recompute={"full": [5, 5, 5]})
    result = SweepResult.from_runs(runs, make_peaks({"none": 80 * MIB, "full": 40 * MIB}), budget_bytes=64 * MIB)
    assert render_sweep(result) == EXPECTED_TABLE


def test_render_sweep_other_formats(measured):
    """GIVEN a sweep WHEN rendered as json/csv/markdown THEN each parses back / has
    one row per policy."""
    import io
    import json

    runs, peaks = measured
    result = SweepResult.from_runs(runs, peaks)
    d = json.loads(render_sweep(result, "json"))
    assert [p["policy"] for p in d["policies"]] == ["none", "full", "every_2", "selective", "sqrt"]
    assert d["recommendation"]["frontier"] == ["none", "selective", "every_2", "full"]
    csv = pd.read_csv(io.StringIO(render_sweep(result, "csv")))
    assert len(csv) == 5 and "max_batch_est" in csv.columns
    md = render_sweep(result, "markdown")
    assert md.count("\n| ") == 6 and "**Recommendation.**" in md
    with pytest.raises(ValueError, match="unknown format"):
        render_sweep(result, "xml")


def test_with_budget_rejudges_same_measurements(measured):
    """GIVEN a sweep without budget WHEN a budget is applied THEN the same measured
    table gets a recommendation and max-batch estimates; the runs are untouched."""
    runs, peaks = measured
    result = SweepResult.from_runs(runs, peaks)
    assert result.recommendation.policy is None and result.table["max_batch_est"].isna().all()
    judged = result.with_budget("300MiB")
    assert judged.recommendation.policy == "selective"
    assert judged.table["max_batch_est"].notna().all()
    assert judged.runs is result.runs
    budget_columns = ["max_batch_est", "step_ms_at_max_est", "samples_per_s_at_max_est"]
    pd.testing.assert_frame_equal(judged.table.drop(columns=budget_columns),
                                  result.table.drop(columns=budget_columns))
