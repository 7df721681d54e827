"""A sweep verdict that survives noise (pure, no torch): rounds, the ranking that prints
'<' only where noise cannot reverse it, "faster than none" flagged as noise, duplicate
policies, throughput at the largest batch that fits, and a table in 100 columns."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckprof.strategy.policies import Policy, builtin_policies, dedupe_policies, parse_policy
from ckprof.strategy.sweep import (
    PEAK_COLUMNS,
    RUN_COLUMNS,
    SweepResult,
    distinct_pairs,
    render_sweep,
    round_medians,
    speed_groups,
    summarize,
)

MIB = 2**20


def runs_of(spec: dict[str, list[list[float]]], batch_size: int = 4) -> pd.DataFrame:
    """spec: policy -> one list of step times per round."""
    rows = []
    for policy, rounds in spec.items():
        for r, times in enumerate(rounds):
            for i, t in enumerate(times):
                rows.append({"policy": policy, "batch_size": batch_size, "step": 100 * r + i, "step_ms": t,
                             "forward_ms": t / 4, "backward_ms": t / 2, "recompute_ms": 0.0,
                             "optimizer_ms": t / 8, "other_ms": t / 8, "round": r})
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def peaks_of(spec: dict[str, float], batch_size: int = 4, baseline: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame([{"policy": p, "batch_size": batch_size, "device": "cpu", "peak_bytes": v,
                          "baseline_bytes": baseline, "blocks": "x"} for p, v in spec.items()],
                        columns=list(PEAK_COLUMNS))


def test_a_round_that_disagrees_makes_a_difference_noise():
    """GIVEN two policies whose step-time IQRs are apart over all steps but whose order
    flips in one round (a drift burst) WHEN judged THEN they are within noise and the
    ranking says '≈'; GIVEN the same steps as one round THEN the IQR test alone says '<'."""
    a = [[10, 10], [10, 10], [10, 10], [10, 10], [20, 20]]
    b = [[12, 12]] * 5
    table = summarize(runs_of({"a": a, "b": b}), peaks_of({"a": 1.0, "b": 1.0}))
    rows = table.set_index("policy")
    assert rows.loc["a", "step_ms_q3"] < rows.loc["b", "step_ms_q1"]  # IQRs apart
    assert rows.loc["a", "within_noise_of"] == "b"
    assert SweepResult.from_runs(runs_of({"a": a, "b": b}), peaks_of({"a": 1.0, "b": 1.0})).ranking == "a ≈ b"
    one_round = runs_of({"a": [[t for r in a for t in r]], "b": [[t for r in b for t in r]]})
    assert SweepResult.from_runs(one_round, peaks_of({"a": 1.0, "b": 1.0})).ranking == "a < b"


def test_round_spread_is_the_range_of_round_medians():
    """GIVEN per-round medians 10, 11, 12 WHEN summarised THEN round_spread_pct =
    (12 - 10) / overall median x 100."""
    table = summarize(runs_of({"a": [[10, 10], [11, 11], [12, 12]]}), peaks_of({"a": 1.0}))
    assert table.iloc[0]["round_spread_pct"] == pytest.approx(2 / 11 * 100)
    assert round_medians(runs_of({"a": [[1, 3], [5, 7]]}), 4).loc["a"].tolist() == [2, 6]


times = st.floats(min_value=5, max_value=50, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["none", "full", "every_2", "selective", "x"]),
                       st.lists(st.lists(times, min_size=2, max_size=3), min_size=3, max_size=3),
                       min_size=2, max_size=5))
def test_no_printed_lt_can_be_reversed_by_noise(spec):
    """GIVEN any measured rounds (property) WHEN ranked THEN every policy of a group is
    beyond noise (IQRs apart and the same order in every round) faster than every policy
    of each later group, and the groups follow the medians."""
    runs = runs_of(spec)
    table = summarize(runs, peaks_of(dict.fromkeys(spec, 1.0)))
    rounds = round_medians(runs, 4)
    distinct = distinct_pairs(table, rounds)
    groups = speed_groups(table, distinct)
    assert sorted(p for g in groups for p in g) == sorted(spec)
    med = table.set_index("policy")["step_ms"]
    for i, g in enumerate(groups):
        for later in groups[i + 1:]:
            for p in g:
                for q in later:
                    assert distinct[(p, q)] and med[p] < med[q]
                    # every round agrees with the printed order
                    assert (rounds.loc[p] < rounds.loc[q]).all()


def test_checkpointing_faster_than_none_is_called_noise():
    """GIVEN full measured faster than none WHEN judged THEN a warning says the
    measurement is noise-dominated and what to do (with --threads 1 unless pinned to 1)."""
    runs = runs_of({"none": [[10, 11], [10, 12]], "full": [[9, 10], [9, 11]]})
    peaks = peaks_of({"none": 2.0, "full": 1.0})
    result = SweepResult.from_runs(runs, peaks, threads=2)
    assert len(result.warnings) == 1
    assert "full (" in result.warnings[0] and "dominated by noise" in result.warnings[0]
    assert "--threads 1" in result.warnings[0] and "quieter machine" in result.warnings[0]
    assert "--threads 1" not in SweepResult.from_runs(runs, peaks, threads=1).warnings[0]
    assert "dominated by noise" in render_sweep(result)
    assert SweepResult.from_runs(runs_of({"none": [[9]], "full": [[10]]}), peaks).warnings == ()


def test_duplicate_policies_are_measured_once_and_named():
    """GIVEN sqrt and every_2 for 4 blocks (the same blocks) WHEN deduplicated THEN one
    is kept and the other is its alias; for 9 blocks (sqrt = every_3) both are kept;
    selective is never the same as full."""
    asked = [Policy.none(), Policy.full(), Policy.every_k(2), Policy.sqrt(), Policy.selective()]
    kept, aliases = dedupe_policies(asked, 4)
    assert [p.name for p in kept] == ["none", "full", "every_2", "selective"]
    assert aliases == {"every_2": ("sqrt",)}
    kept9, aliases9 = dedupe_policies(asked, 9)
    assert len(kept9) == 5 and aliases9 == {}
    assert dedupe_policies([parse_policy("every_1"), Policy.full()], 3)[1] == {"full": ("full",)}
    assert [p.name for p in builtin_policies(4)] == ["none", "full", "every_2", "selective"]


def test_aliases_are_shown_in_the_table_and_notes():
    """GIVEN an alias WHEN rendered THEN the row says which policies coincide."""
    result = SweepResult.from_runs(runs_of({"none": [[10]], "every_2": [[12]]}),
                                   peaks_of({"none": 2.0, "every_2": 1.0}), aliases={"every_2": ["sqrt"]})
    text = render_sweep(result)
    assert "every_2=sqrt" in text and "sqrt checkpoints exactly the blocks every_2 does" in text
    assert result.to_dict()["aliases"] == {"every_2": ["sqrt"]}


def two_sizes() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Step time = 20 + k x batch ms (a fixed cost per step, as on a GPU); none keeps
    10 MiB per sample, full 4 MiB; 10 MiB fixed."""
    runs = pd.concat([
        runs_of({"none": [[20 + 1.0 * 4] * 3], "full": [[20 + 1.3 * 4] * 3]}, batch_size=4),
        runs_of({"none": [[20 + 1.0 * 8] * 3], "full": [[20 + 1.3 * 8] * 3]}, batch_size=8),
    ])
    peaks = pd.concat([
        peaks_of({"none": 10 * MIB + 40 * MIB, "full": 10 * MIB + 16 * MIB}, batch_size=4),
        peaks_of({"none": 10 * MIB + 80 * MIB, "full": 10 * MIB + 32 * MIB}, batch_size=8),
    ])
    return runs, peaks


def test_recommendation_by_throughput_at_the_largest_batch_that_fits():
    """GIVEN step times and peaks at two batch sizes and a 100 MiB budget WHEN judged
    THEN none fits batch 9 and full batch 22 (estimates); at those batches full gives
    more samples/s (22 / 48.6 ms vs 9 / 29 ms) although its step is slower at batch 4,
    so full is recommended at batch 22, labelled as an estimate."""
    runs, peaks = two_sizes()
    result = SweepResult.from_runs(runs, peaks, budget_bytes=100 * MIB)
    t = result.table.set_index("policy")
    assert t.loc["none", "max_batch_est"] == 9 and t.loc["full", "max_batch_est"] == 22
    assert t.loc["none", "step_ms_at_max_est"] == pytest.approx(29.0)
    assert t.loc["full", "step_ms_at_max_est"] == pytest.approx(20 + 1.3 * 22)
    assert t.loc["full", "samples_per_s_at_max_est"] == pytest.approx(22 / (20 + 1.3 * 22) * 1000)
    assert t.loc["none", "step_ms"] < t.loc["full", "step_ms"]
    rec = result.recommendation
    assert (rec.policy, rec.batch_size, rec.by) == ("full", 22, "throughput")
    assert "Use full at batch 22 (estimate)" in rec.text and "samples/s" in rec.text
    assert t.loc["full", "time_method"] == "measured at batch 4 and 8 (linear)"


def test_one_batch_size_recommends_the_fastest_that_fits():
    """GIVEN one batch size WHEN judged with a budget THEN throughput cannot favour a
    larger batch (time assumed proportional): the fastest fitting policy is recommended."""
    runs, peaks = two_sizes()
    one = SweepResult.from_runs(runs[runs["batch_size"] == 4], peaks[peaks["batch_size"] == 4],
                                budget_bytes=100 * MIB)
    assert one.recommendation.by == "step_time" and one.recommendation.policy == "none"
    assert set(one.table["time_method"]) == {"proportional (assumed)"}


def test_confirmation_is_rendered():
    """GIVEN a confirmation run (GPU path) WHEN rendered THEN it says what ran."""
    import dataclasses

    runs, peaks = two_sizes()
    result = SweepResult.from_runs(runs, peaks, budget_bytes=100 * MIB)
    ok = dataclasses.replace(result, confirmation={"status": "confirmed", "policy": "full", "batch_size": 22,
                                                   "peak_bytes": 98 * MIB, "samples_per_s": 450.0})
    assert "Confirmed by running it: full at batch 22 ran" in render_sweep(ok)
    reduced = dataclasses.replace(result, confirmation={
        "status": "reduced", "policy": "full", "requested_batch_size": 22, "batch_size": 19,
        "reason": "ran out of memory", "peak_bytes": 90 * MIB, "samples_per_s": 400.0})
    assert "Not confirmed: full at batch 22" in render_sweep(reduced)
    assert "batch 19 does" in render_sweep(reduced)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.sampled_from(["none", "full", "every_2", "every_3", "sqrt", "selective",
                                 "selective:mm,addmm,bmm"]), min_size=1, max_size=6, unique=True),
       st.floats(min_value=0.5, max_value=20000), st.booleans())
def test_text_table_fits_in_100_columns(policies, scale, budget):
    """GIVEN up to six policies, step times up to seconds and a budget (property) WHEN
    rendered as text THEN no line is wider than 100 columns."""
    spec = {p: [[scale * (1 + i / 10), scale * (1.1 + i / 10)]] * 3 for i, p in enumerate(policies)}
    runs = pd.concat([runs_of(spec, 8), runs_of(spec, 16)])
    peaks = pd.concat([peaks_of({p: (i + 1) * 300 * MIB for i, p in enumerate(policies)}, 8),
                       peaks_of({p: (i + 2) * 300 * MIB for i, p in enumerate(policies)}, 16)])
    peaks["blocks"] = "12/24 blocks, save matmul/attn"
    result = SweepResult.from_runs(runs, peaks, budget_bytes=8 * 2**30 if budget else None, threads=1,
                                   schedule="3 round(s) x 2 measured step(s) per policy, interleaved",
                                   aliases={policies[0]: ["every_1"]})
    widths = [len(line) for line in render_sweep(result).splitlines()]
    assert max(widths) <= 100, render_sweep(result)
    assert not math.isnan(result.table["step_ms"].iloc[0])


def test_too_few_steps_establish_nothing():
    """GIVEN one or two steps per policy WHEN ranked THEN no '<' (the spread of so few
    steps says nothing about noise) and the output asks for more steps."""
    runs = runs_of({"none": [[10, 10.1]], "full": [[15, 15.2]]})
    result = SweepResult.from_runs(runs, peaks_of({"none": 2.0, "full": 1.0}))
    assert result.ranking == "none ≈ full" and result.beyond_noise == ()
    assert "No step-time difference is beyond noise" in render_sweep(result)


def test_step_time_falling_with_batch_is_taken_as_flat():
    """GIVEN a larger batch measured faster (noise) WHEN estimating throughput THEN the
    step time is not extrapolated downwards: flat, and the method says so."""
    runs = pd.concat([runs_of({"none": [[10] * 3]}, 4), runs_of({"none": [[8] * 3]}, 8)])
    peaks = pd.concat([peaks_of({"none": 40 * MIB}, 4), peaks_of({"none": 80 * MIB}, 8)])
    row = SweepResult.from_runs(runs, peaks, budget_bytes=200 * MIB).table.iloc[0]
    assert row["max_batch_est"] == 20 and row["step_ms_at_max_est"] == pytest.approx(10.0)
    assert "taken as flat" in row["time_method"]
