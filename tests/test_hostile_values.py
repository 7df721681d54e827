"""Hostile values inside valid traces (issue 16): capture metadata of any type, step
numbers that do not fit, repeated steps, NaN counters, names that break text, the
memory guards of the careful path and annotate, and the worker clamp. Each checked
against an independent expectation written here."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from support.builders import TraceBuilder
from support.hostile import kineto_bytes, trace_doc

from ckprof._text import printable
from ckprof.analysis import analyze
from ckprof.analysis.memory import peak_memory_by_phase
from ckprof.analysis.phases import find_phases
from ckprof.cli.main import cli
from ckprof.errors import CkprofError, TraceTooLargeError
from ckprof.trace import load as load_mod
from ckprof.trace.capture_metadata import clean_ckprof_metadata
from ckprof.trace.kineto import source as _source
from ckprof.trace.load import load_trace

# --------------------------------------------------------------------- capture metadata

_KEYS = ["ckprof_version", "device", "rank", "world_size", "window", "markers", "schedule",
         "active_steps", "memory_baseline", "memory_end", "checkpoint", "bytes",
         "freed_unseen_bytes", "counter_absolute", "method", "cpu", "regions", "sac", "other"]
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner,
                                                                max_size=4),
    max_leaves=12)

_INT_FIELDS = {"rank", "world_size", "window"}
_BOOL_FIELDS = {"markers", "with_stack", "nsys"}


def _assert_documented_types(ck: dict) -> None:
    """Independent statement of the ARCHITECTURE.md metadata types."""
    for k in _INT_FIELDS & ck.keys():
        assert type(ck[k]) is int and 0 <= ck[k] < 2**63
    for k in _BOOL_FIELDS & ck.keys():
        assert type(ck[k]) is bool
    for section, fields in (("memory_baseline", {"bytes": int, "method": str,
                                                 "counter_absolute": bool}),
                            ("memory_end", {"bytes": int, "freed_unseen_bytes": int,
                                            "method": str})):
        if section in ck:
            assert isinstance(ck[section], dict)
            for per_device in ck[section].values():
                assert isinstance(per_device, dict)
                for field, kind in fields.items():
                    if field in per_device:
                        assert type(per_device[field]) is kind
                        if kind is int:
                            assert 0 <= per_device[field] < 2**63


METADATA = st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=6) | _JSON


@given(meta=METADATA)
@settings(max_examples=200, deadline=None)
def test_any_capture_metadata_is_cleaned_to_the_documented_types(meta):
    """GIVEN any JSON value under the top-level "ckprof" key WHEN cleaned THEN None or a
    dict whose known fields have their documented types, and at most one one-line note."""
    cleaned, notes = clean_ckprof_metadata(meta)
    assert cleaned is None or isinstance(cleaned, dict)
    assert len(notes) <= 1 and all("\n" not in n for n in notes)
    if cleaned is not None:
        _assert_documented_types(cleaned)


_MEMORY_TRACE = (TraceBuilder().step(1, 0, 100).op("aten::mm", 10, 20)
                 .memory(15, bytes=64, total_allocated=64))
_PHASES = find_phases(_MEMORY_TRACE.to_trace())


@given(meta=METADATA)
@settings(max_examples=25, deadline=None)
def test_memory_stage_survives_any_capture_metadata(meta):
    """GIVEN a Trace built by hand (not through the loader) carrying any raw "ckprof"
    value WHEN its memory is analysed THEN no exception: the stage reads the metadata
    through the same cleaning rules."""
    import dataclasses

    t = dataclasses.replace(_MEMORY_TRACE.to_trace(), ckprof=meta)
    peak_memory_by_phase(t, _PHASES)


@pytest.mark.parametrize("meta", [
    {"memory_baseline": {"cpu": {"bytes": "abc"}}},
    {"memory_baseline": {"cpu": {"bytes": 1e400}}},
    {"memory_baseline": [1, 2]},
    {"memory_baseline": {"cpu": [1]}},
    {"memory_end": {"cpu": {"freed_unseen_bytes": {"a": 1}, "bytes": -5}}},
    {"rank": 2**70, "world_size": "8"},
], ids=["bytes-text", "bytes-1e400", "list-for-object", "device-list", "end-wrong", "rank"])
def test_wrong_typed_metadata_loads_with_a_note(tmp_path, meta):
    """GIVEN a trace file whose capture metadata has wrong-typed fields WHEN loaded and
    analysed THEN the memory report is the one without those fields, and a note names
    them."""
    text = kineto_bytes(trace_doc(ckprof=meta)).replace(b"Infinity", b"1e400")
    path = tmp_path / "t.json"
    path.write_bytes(text)
    a = analyze(load_trace(path))
    assert any("capture metadata field" in n for n in a.trace.notes)
    clean = load_trace(_write(tmp_path / "clean.json", trace_doc()))
    assert a.memory.timeline["allocated_bytes"].tolist() == \
        analyze(clean).memory.timeline["allocated_bytes"].tolist()


def _write(path, doc):
    path.write_bytes(kineto_bytes(doc))
    return path


def test_valid_metadata_is_kept_whole():
    """GIVEN metadata exactly as capture writes it (plus an unknown key) WHEN cleaned
    THEN it is returned equal, with no note."""
    meta = {"ckprof_version": "0.1.0", "device": "cpu", "rank": 3, "world_size": 8,
            "markers": True, "schedule": {"wait": 1, "warmup": 1, "active": 3},
            "memory_baseline": {"cpu": {"bytes": 123, "method": "gc-tensors",
                                        "counter_absolute": False}},
            "checkpoint": {"early_stop": True, "regions": {"b0": {"use_reentrant": False,
                                                                  "sac": False}}},
            "window": 0, "active_steps": [2, 4], "with_stack": False, "nsys": False,
            "memory_end": {"cpu": {"bytes": 1, "freed_unseen_bytes": 0, "method": "gc"}},
            "future_field": {"x": [1]}}
    assert clean_ckprof_metadata(meta) == (meta, [])


# --------------------------------------------------------------------- steps

def _steps_of(names_and_times):
    b = TraceBuilder()
    for name, ts in names_and_times:
        b.annotation(name, ts, 100)
        b.op("aten::mm", ts + 10, 50)
    return find_phases(b.to_trace())


def test_repeated_step_numbers_are_renumbered_not_merged():
    """GIVEN ProfilerStep#1, #2, then #1 and #2 again (two runs' traces joined) WHEN phases
    are found THEN four steps: the first occurrences keep 1 and 2, the later ones become 3
    and 4 in time order, each spanning only its own range, and a note says so."""
    p = _steps_of([("ProfilerStep#1", 0), ("ProfilerStep#2", 200), ("ProfilerStep#1", 400),
                   ("ProfilerStep#2", 600)])
    steps = p.steps
    assert steps["step"].tolist() == [1, 2, 3, 4]
    assert (steps["end_ns"] - steps["start_ns"]).tolist() == [100_000] * 4
    assert any("occur(s) again later" in n and "3..4" in n for n in p.notes)


def test_overlapping_ranges_of_one_step_stay_one_step():
    """GIVEN ProfilerStep#1 recorded twice, overlapping WHEN phases are found THEN one step
    covering both, no renumbering note."""
    p = _steps_of([("ProfilerStep#1", 0), ("ProfilerStep#1", 50)])
    assert p.steps["step"].tolist() == [1]
    assert int(p.steps["end_ns"].iloc[0]) == 150_000
    assert not any("again" in n for n in p.notes)


@pytest.mark.parametrize("name", ["ProfilerStep#99999999999999999999999",
                                  "ProfilerStep#" + "9" * 5000, "ProfilerStep#\u0663",
                                  "ProfilerStep#abc", "ProfilerStep#1.5", "ProfilerStep#-3",
                                  "ProfilerStep#"])
def test_unusable_step_numbers_are_ignored_with_a_note(name):
    """GIVEN a real step and an annotation named like a step but without an ASCII int64
    number WHEN phases are found THEN only the real step, and a note counts the other."""
    p = _steps_of([("ProfilerStep#5", 0), (name, 200)])
    assert p.steps["step"].tolist() == [5]
    assert any(n.startswith("ignored 1 ProfilerStep annotation") for n in p.notes)


def test_leading_zeros_and_the_largest_int64_step():
    """GIVEN ProfilerStep#007 and ProfilerStep#9223372036854775807 WHEN found THEN steps
    7 and 2^63-1 (19 digits with leading zeros allowed; 18 significant always fit)."""
    p = _steps_of([("ProfilerStep#007", 0), ("ProfilerStep#999999999999999999", 200)])
    assert p.steps["step"].tolist() == [7, 999_999_999_999_999_999]


def test_a_step_longer_than_a_day_is_noted():
    """GIVEN a step of 2^52 µs WHEN found THEN a note calls it implausible."""
    b = TraceBuilder().step(1, 0, float(2**52)).op("aten::mm", 10, 5)
    p = find_phases(b.to_trace())
    assert any("longer than a day" in n for n in p.notes)


# --------------------------------------------------------------------- memory counters

def test_one_missing_counter_is_filled_not_switching_the_device():
    """GIVEN CPU [memory] events with Total Allocated, one of them missing it WHEN
    analysed THEN the levels equal the complete file's (the gap is the neighbour's
    counter plus Bytes), with a note -- not the running-sum rebuild of legacy traces."""
    def trace(skip: int | None):
        b = TraceBuilder().step(1, 0, 1000).op("aten::mm", 10, 900)
        total = 5000
        for i, nbytes in enumerate([100, 200, -50, 400, -300]):
            total += nbytes
            b.memory(20 + 100 * i, bytes=nbytes, total_allocated=None if i == skip else total)
        return b.to_trace()

    full = trace(None)
    want = peak_memory_by_phase(full, find_phases(full)).timeline["allocated_bytes"].tolist()
    for skip in range(5):
        t = trace(skip)
        m = peak_memory_by_phase(t, find_phases(t))
        assert m.timeline["allocated_bytes"].tolist() == want, skip
        assert any("1 of 5 [memory] events lack" in n for n in m.notes)
        assert not any("legacy" in n for n in m.notes)


# --------------------------------------------------------------------- names

@pytest.mark.parametrize("raw, shown", [("a\nb", "a\\nb"), ("x\ud800y", "x\\ud800y"),
                                        ("tab\there", "tab\\there"), ("\x1b[31m", "\\u001b[31m"),
                                        ("plain ü ✓", "plain ü ✓")])
def test_printable(raw, shown):
    assert printable(raw) == shown
    printable(raw).encode("utf-8")


def test_names_that_collide_once_escaped_stay_distinct(tmp_path):
    """GIVEN one op named with a real newline and another named with the two characters
    backslash-n WHEN loaded THEN both names are printable and still distinct."""
    doc = trace_doc(extra_events=[
        {"ph": "X", "cat": "cpu_op", "name": "a\nb", "pid": 1, "tid": 1, "ts": 5, "dur": 1},
        {"ph": "X", "cat": "cpu_op", "name": "a\\nb", "pid": 1, "tid": 1, "ts": 7, "dur": 1}])
    t = load_trace(_write(tmp_path / "t.json", doc))
    names = set(t.events["name"].astype(str)) & {"a\\nb", "a\\nb#2"}
    assert names == {"a\\nb", "a\\nb#2"}
    assert any("shown escaped" in n for n in t.notes)


# --------------------------------------------------------------------- memory guards

def _careful_layout(tmp_path):
    """A trace only the careful reader reads (B/E pairs), ~0.5 MB."""
    events = [{"ph": ph, "name": f"op{i}", "pid": 1, "tid": 1, "ts": 10 * i + (5 if ph == "E" else 0)}
              for i in range(4000) for ph in ("B", "E")]
    path = tmp_path / "be.json"
    path.write_text(json.dumps({"traceEvents": events}, indent=1))
    return path


def test_careful_path_guard_is_4x(tmp_path, monkeypatch):
    """GIVEN a careful-path trace of S bytes and 3.8 x S available (above the old 3.5x
    estimate, below what it needs) WHEN loaded THEN TraceTooLargeError; with 4.1 x S it
    loads."""
    path = _careful_layout(tmp_path)
    size = path.stat().st_size
    overhead = load_mod.FIXED_OVERHEAD_BYTES
    monkeypatch.setattr(_source, "available_memory_bytes", lambda: int(3.8 * size) + overhead)
    with pytest.raises(TraceTooLargeError, match="careful reader"):
        load_trace(path)
    monkeypatch.setattr(_source, "available_memory_bytes", lambda: int(4.1 * size) + overhead)
    assert len(load_trace(path).events) == 4000


def test_annotate_is_guarded_and_streams(tmp_path, monkeypatch):
    """GIVEN a plain trace of S bytes WHEN annotated with less memory available than
    loading the trace needs THEN exit 10 before anything is written, one line; with
    2 x S available it is written: annotate streams the original (NOTE [ Streaming
    annotate ]) instead of holding it as Python objects, so it never needs the 4.5 x S
    a whole-document re-read did."""
    path = _write(tmp_path / "t.json", trace_doc(steps=tuple(range(1, 200))))
    size = path.stat().st_size
    overhead = load_mod.FIXED_OVERHEAD_BYTES
    need = load_mod.FAST_BYTES_PER_BYTE
    monkeypatch.setattr(_source, "available_memory_bytes", lambda: int(0.5 * need * size) + overhead)
    result = CliRunner().invoke(cli, ["annotate", str(path), "-o", str(tmp_path / "a.json")])
    assert result.exit_code == 10, result.output
    assert "\n" not in result.stderr.strip()
    assert not (tmp_path / "a.json").exists()
    monkeypatch.setattr(_source, "available_memory_bytes", lambda: int(2.0 * size) + overhead)
    result = CliRunner().invoke(cli, ["annotate", str(path), "-o", str(tmp_path / "a.json")])
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------- workers

def test_workers_are_clamped_to_cores_files_and_memory(tmp_path, monkeypatch):
    """GIVEN 6 trace files of ~1 MB, 8 cores and memory for 3 workers WHEN the worker
    count is chosen THEN 1000 requested -> 3 with a note naming memory; 0 -> ValueError;
    with plenty of memory -> min(cores, files) = 6."""
    from ckprof.integrations import ranks

    files = []
    for r in range(6):
        p = tmp_path / f"rank{r}.json"
        p.write_bytes(b" " * (1 << 20))
        files.append(p)
    monkeypatch.setattr(ranks, "_cores", lambda: 8)
    per = ranks.WORKER_BASE_BYTES + (1 << 20)
    monkeypatch.setattr(_source, "available_memory_bytes", lambda: 3 * per + 10)
    notes: list[str] = []
    assert ranks.clamp_workers(1000, files, notes) == 3
    assert notes and "lowered to 3" in notes[0] and "memory" in notes[0]
    with pytest.raises(ValueError):
        ranks.clamp_workers(0, files)
    monkeypatch.setattr(_source, "available_memory_bytes", lambda: 1 << 40)
    assert ranks.clamp_workers(None, files) == 6
    notes.clear()
    assert ranks.clamp_workers(1000, files, notes) == 6 and "8 core(s)" not in notes[0]


def test_ranks_beyond_int64_are_not_used(tmp_path):
    """GIVEN distributedInfo.rank 2**70 and ckprof rank 3 WHEN the rank is read THEN 3 from
    the capture metadata, with a note about the other."""
    from ckprof.integrations.ranks import rank_from_metadata, rank_from_name

    notes: list[str] = []
    assert rank_from_metadata({"distributedInfo": {"rank": 2**70}}, {"rank": 3}, notes) == \
        (3, "ckprof")
    assert "not a rank" in notes[0]
    assert rank_from_name("host_rank" + "9" * 30 + ".json") is None
    assert rank_from_name("host_rank\u0663.json") is None
    assert rank_from_name("host_rank12.pt.trace.json") == 12


def test_error_messages_are_one_line_whatever_the_input():
    """GIVEN a path and a reason with newlines and a lone surrogate WHEN an error is made
    THEN its text is one encodable line."""
    err = CkprofError("bad\nthing \udcff", path="a\nb.json", hint="do\rthis")
    text = str(err)
    assert "\n" not in text and "\r" not in text
    text.encode("utf-8")
