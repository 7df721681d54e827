"""NOTE [ Unseen CPU frees ] in ckprof/analysis/memory.py: blocks allocated before the window
and freed in it (last step's grads, freed by zero_grad) are subtracted from the end
of the first ``ckprof::zero_grad`` range."""

from __future__ import annotations

from support.builders import TraceBuilder

from ckprof.analysis import analyze


def build(unseen: int, with_zero_grad: bool) -> TraceBuilder:
    b = TraceBuilder().meta(ckprof={
        "memory_baseline": {"cpu": {"bytes": 10_000, "counter_absolute": False}},
        "memory_end": {"cpu": {"bytes": 10_000 + 300 - unseen, "freed_unseen_bytes": unseen}},
    })
    b.step(1, 0, 1000)
    if with_zero_grad:
        b.marker("zero_grad", 0, 50)
    b.marker("forward", 100, 300)
    b.op("aten::empty", 110, 10)
    b.memory(115, bytes=300, total_allocated=5300)   # counter carried over from earlier sessions
    b.marker("backward", 400, 400)
    b.op("aten::empty", 410, 10)
    b.memory(415, bytes=200, total_allocated=5500)
    b.memory(600, bytes=-200, total_allocated=5300)
    return b


def test_unseen_frees_subtracted_after_first_zero_grad() -> None:
    """GIVEN 4000 unseen freed bytes and a zero_grad range at the step start
    WHEN peaks are computed THEN levels after it are baseline + counter change - 4000."""
    a = analyze(build(4000, True).to_trace())
    peaks = a.memory_table().set_index("phase")["peak_bytes"].to_dict()
    assert peaks["forward"] == 10_000 + 300 - 4000
    assert peaks["backward"] == 10_000 + 500 - 4000
    assert any("subtracted" in n for n in a.notes)


def test_without_zero_grad_marker_levels_stay_and_a_note_bounds_the_error() -> None:
    """GIVEN unseen frees but no zero_grad marker WHEN analysed THEN levels are
    uncorrected and a note states the bound."""
    a = analyze(build(4000, False).to_trace())
    peaks = a.memory_table().set_index("phase")["peak_bytes"].to_dict()
    assert peaks["backward"] == 10_000 + 500
    assert any("over-count by up to 4,000 bytes" in n for n in a.notes)


def test_no_unseen_frees_no_change() -> None:
    a = analyze(build(0, True).to_trace())
    assert a.memory_table().set_index("phase")["peak_bytes"]["backward"] == 10_500


def test_correction_is_capped_by_the_measured_end_discrepancy() -> None:
    """GIVEN 4000 bytes freed-unseen but levels over-counting only 1000 at the end
    (the profiler reported part of those frees) WHEN analysed THEN only 1000 is
    subtracted, so the end level equals the measured live bytes."""
    b = build(4000, True).meta(ckprof={
        "memory_baseline": {"cpu": {"bytes": 10_000, "counter_absolute": False}},
        "memory_end": {"cpu": {"bytes": 10_300 - 1000, "freed_unseen_bytes": 4000}},
    })
    a = analyze(b.to_trace())
    assert a.memory_table().set_index("phase")["peak_bytes"]["backward"] == 10_500 - 1000
    assert int(a.memory.timeline["allocated_bytes"].iloc[-1]) == 10_300 - 1000
