"""Robustness of load_trace on bad input (issue 8): every failure is a CkprofError
subclass with a one-line message naming the file, returned within seconds; salvage
returns what a damaged file still holds."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_load import assert_same_trace, reference_load  # shared helpers (tests/ on sys.path)

from ckprof.errors import (
    CkprofError,
    EmptyTraceError,
    TraceFormatError,
    TraceNotFoundError,
    TraceTooLargeError,
    TraceTruncatedError,
)
from ckprof.trace import load as load_mod
from ckprof.trace.kineto import source as _source
from ckprof.trace.load import load_trace

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
DATA = Path(__file__).resolve().parent / "data"


def kineto_text(n_ops: int = 40, *, with_memory: bool = True) -> bytes:
    """A small Kineto-layout trace (one event per line group), ops nested two deep."""
    events = []
    for i in range(n_ops):
        ts = 1000.0 + 10 * i
        events.append({"ph": "X", "cat": "user_annotation", "name": f"step{i}", "pid": 7,
                       "tid": 7, "ts": ts, "dur": 9.5, "args": {"External id": i}})
        events.append({"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 7, "tid": 7,
                       "ts": ts + 1.25, "dur": 3.125,
                       "args": {"External id": 1000 + i, "Sequence number": i}})
        if with_memory:
            events.append({"ph": "i", "s": "t", "name": "[memory]", "pid": 7, "tid": 7,
                           "ts": ts + 2, "args": {"Total Allocated": 64 * i, "Bytes": 64,
                                                  "Device Type": 0, "Device Id": -1}})
    body = ",\n".join("  " + json.dumps(e) for e in events)
    return ('{\n  "schemaVersion": 1,\n  "traceEvents": [\n' + body +
            '\n  ],\n  "traceName": "x"\n}\n').encode()


def load_error(path: Path, **kw) -> CkprofError:
    """Load, expecting a CkprofError; check the message shape and the time taken."""
    t0 = time.perf_counter()
    with pytest.raises(CkprofError) as info:
        load_trace(path, **kw)
    assert time.perf_counter() - t0 < 10
    err = info.value
    text = str(err)
    assert "\n" not in text and str(path) in text, text
    return err


def test_missing_path_and_directory_without_traces(tmp_path):
    """GIVEN a missing file, and a directory holding no trace WHEN loaded THEN
    TraceNotFoundError (exit code 3)."""
    err = load_error(tmp_path / "nope.json")
    assert isinstance(err, TraceNotFoundError) and err.exit_code == 3
    (tmp_path / "readme.txt").write_text("no traces here")
    (tmp_path / "other.json").write_text('{"a": 1}')
    assert isinstance(load_error(tmp_path), TraceNotFoundError)


@pytest.mark.parametrize("content", [b"", b"  \n\t", gzip.compress(b"")],
                         ids=["zero-bytes", "whitespace", "empty-gzip"])
def test_empty_files(tmp_path, content):
    """GIVEN an empty (or blank, or empty gzip) file WHEN loaded THEN EmptyTraceError."""
    path = tmp_path / "t.json"
    path.write_bytes(content)
    assert isinstance(load_error(path), EmptyTraceError)


def test_zero_events_and_no_complete_events(tmp_path):
    """GIVEN traceEvents [] and a trace with only metadata events WHEN loaded THEN
    EmptyTraceError (exit code 6)."""
    for doc in ({"traceEvents": []},
                {"traceEvents": [{"ph": "M", "name": "thread_name", "pid": 1, "tid": 1}]}):
        path = tmp_path / "t.json"
        path.write_text(json.dumps(doc))
        err = load_error(path)
        assert isinstance(err, EmptyTraceError) and err.exit_code == 6


@pytest.mark.parametrize("doc", ["42", '"text"', "[1, 2, 3]", '[{"a": 1}]', '{"name": "x"}',
                                 '{"traceEvents": 3}', "null", "not json at all",
                                 '{"traceEvents": [{"ph": "X"}] } trailing'],
                         ids=["number", "string", "numbers", "objects", "other-tool",
                              "events-not-list", "null", "text", "trailing-garbage"])
def test_valid_or_invalid_json_that_is_not_a_trace(tmp_path, doc):
    """GIVEN JSON that is not a trace (or not JSON) WHEN loaded THEN TraceFormatError or
    EmptyTraceError, never another exception."""
    path = tmp_path / "t.json"
    path.write_text(doc)
    err = load_error(path)
    assert isinstance(err, TraceFormatError | EmptyTraceError), type(err)


def test_truncated_json_and_salvage(tmp_path):
    """GIVEN a trace cut in the middle WHEN loaded THEN TraceTruncatedError with the count of
    complete events; with salvage=True a Trace of exactly those events and a note."""
    text = kineto_text()
    cut = text.index(b'"name": "step25"')
    path = tmp_path / "t.json"
    path.write_bytes(text[:cut])
    err = load_error(path)
    assert isinstance(err, TraceTruncatedError) and err.exit_code == 5
    # 25 steps x (2 ops + 1 memory) complete before the cut (the cut event is incomplete)
    assert err.events_recovered == 75
    trace = load_trace(path, salvage=True)
    trace.check()
    assert len(trace.events) == 50 and len(trace.memory) == 25
    assert trace.notes == ("salvaged 75 events from truncated file",)


def test_truncated_and_damaged_gzip(tmp_path):
    """GIVEN a gzip stream cut short, and one with a corrupted checksum WHEN loaded THEN
    TraceTruncatedError / TraceFormatError; salvage returns what decompressed."""
    packed = gzip.compress(kineto_text(400))
    short = tmp_path / "short.json.gz"
    short.write_bytes(packed[: len(packed) // 2])
    err = load_error(short)
    assert isinstance(err, TraceTruncatedError) and err.events_recovered > 0
    salvaged = load_trace(short, salvage=True)
    salvaged.check()
    assert len(salvaged.events) + len(salvaged.memory) == err.events_recovered
    assert salvaged.notes[0].startswith(f"salvaged {err.events_recovered} events from truncated")

    bad_crc = bytearray(packed)
    bad_crc[-6] ^= 0xFF  # CRC32 in the gzip trailer
    damaged = tmp_path / "crc.json.gz"
    damaged.write_bytes(bytes(bad_crc))
    err = load_error(damaged)
    assert type(err) is TraceFormatError and "gzip" in str(err)
    whole = load_trace(damaged, salvage=True)
    assert len(whole.events) == 800 and "damaged" in whole.notes[0]

    garbage = bytearray(packed)
    garbage[len(garbage) // 3: len(garbage) // 3 + 40] = bytes(40)
    mangled = tmp_path / "mangled.json.gz"
    mangled.write_bytes(bytes(garbage))
    assert isinstance(load_error(mangled), TraceFormatError)


def test_bad_fields_are_skipped_with_notes(tmp_path):
    """GIVEN events with ts as a string, NaN, negative or absent dur, a bad pid, a non-string
    name, unknown categories and duplicates WHEN loaded THEN the good events load, bad ones
    are counted in notes, unknown categories become kind 'other'."""
    events = [
        '{"ph": "X", "cat": "cpu_op", "name": "good", "pid": 1, "tid": 1, "ts": 5, "dur": 2}',
        '{"ph": "X", "cat": "cpu_op", "name": "good", "pid": 1, "tid": 1, "ts": 5, "dur": 2}',
        '{"ph": "X", "cat": "new_category", "name": "odd", "pid": 1, "tid": 1, "ts": 6, "dur": 1}',
        '{"ph": "X", "cat": "cpu_op", "name": "s", "pid": 1, "tid": 1, "ts": "5", "dur": 2}',
        '{"ph": "X", "cat": "cpu_op", "name": "n", "pid": 1, "tid": 1, "ts": NaN, "dur": 2}',
        '{"ph": "X", "cat": "cpu_op", "name": "neg", "pid": 1, "tid": 1, "ts": 5, "dur": -2}',
        '{"ph": "X", "cat": "cpu_op", "name": "nodur", "pid": 1, "tid": 1, "ts": 5}',
        '{"ph": "X", "cat": "cpu_op", "name": "pid", "pid": [1], "tid": 1, "ts": 5, "dur": 1}',
        '{"ph": "X", "cat": "cpu_op", "name": 12, "pid": 1, "tid": 1, "ts": 5, "dur": 1}',
        '{"ph": "X", "cat": "cpu_op", "name": "inf", "pid": 1, "tid": 1, "ts": Infinity, "dur": 1}',
        '{"ph": "X", "cat": "cpu_op", "name": "args", "pid": 1, "tid": 1, "ts": 7, "dur": 1,'
        ' "args": {"External id": "7", "correlation": null, "Sequence number": 1.5}}',
        '17',
    ]
    path = tmp_path / "t.json"
    path.write_text('{"traceEvents": [\n' + ",\n".join(events) + "\n]}")
    trace = load_trace(path)
    trace.check()
    assert trace.events["name"].astype(str).tolist() == ["good", "good", "odd", "args"]
    assert trace.events["kind"].astype(str).tolist() == ["cpu_op", "cpu_op", "other", "cpu_op"]
    assert trace.events.iloc[1]["parent"] == 0  # the exact duplicate nests under its twin
    args = trace.events.iloc[3]
    assert [args["external_id"], args["correlation"], args["seq"]] == [-1, -1, -1]
    assert set(trace.notes) == {
        "skipped 3 events: ts is missing or not a number",
        "skipped 1 event: dur is negative",
        "skipped 1 event: dur is missing or not a number",
        "skipped 1 event: pid/tid is missing or not an id",
        "skipped 1 event: name is missing or not a string",
        "skipped 1 event: not a JSON object",
    }


def test_all_events_unusable_is_an_error(tmp_path):
    """GIVEN a trace whose only complete event has a string ts WHEN loaded THEN
    EmptyTraceError saying why."""
    err = load_error(DATA / "bad_all_events_unusable.json")
    assert isinstance(err, EmptyTraceError) and "ts is missing" in str(err)


def test_non_utf8_names_are_replaced(tmp_path):
    """GIVEN a name with bytes that are not UTF-8 WHEN loaded THEN it decodes with U+FFFD."""
    trace = load_trace(DATA / "non_utf8_name.json")
    assert trace.events["name"].astype(str).tolist() == ["aten::mm \ufffd\ufffd bad bytes"]


def test_deeply_nested_json_is_a_format_error(tmp_path):
    """GIVEN args nested 100,000 levels deep WHEN loaded THEN TraceFormatError, not a
    RecursionError."""
    path = tmp_path / "deep.json"
    path.write_text('{"traceEvents": [{"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 1, '
                    '"dur": 1, "args": ' + "[" * 100_000 + "]" * 100_000 + "}]}")
    assert isinstance(load_error(path), TraceFormatError)


def test_unknown_top_level_keys_and_phases(tmp_path):
    """GIVEN a trace from a newer writer: unknown top-level keys, unknown event fields,
    counter and async events WHEN loaded THEN it loads and keeps the keys in metadata."""
    doc = {"schemaVersion": 99, "newThing": {"deep": [1, 2]}, "traceEvents": [
        {"ph": "X", "cat": "cpu_op", "name": "a", "pid": 1, "tid": 1, "ts": 1, "dur": 2,
         "newField": [1], "args": {"new arg": {"x": 1}}},
        {"ph": "C", "name": "counter", "pid": 1, "tid": 1, "ts": 1, "args": {"v": 1}},
        {"ph": "b", "name": "async", "pid": 1, "tid": 1, "ts": 1, "id": 3},
    ]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc, indent=1))
    trace = load_trace(path)
    assert len(trace.events) == 1 and trace.metadata["newThing"] == {"deep": [1, 2]}


def test_memory_guard(tmp_path, monkeypatch):
    """GIVEN a machine that reports almost no available memory WHEN loading THEN
    TraceTooLargeError (exit code 10) instead of trying."""
    path = tmp_path / "t.json"
    path.write_bytes(kineto_text())
    monkeypatch.setattr(_source, "available_memory_bytes", lambda: 1024)
    err = load_error(path)
    assert isinstance(err, TraceTooLargeError) and err.exit_code == 10
    assert "GiB" in str(err)


# ----------------------------------------------------------------------------- fuzz

def _seed_texts() -> list[bytes]:
    seeds = [kineto_text(8), (DATA / "legacy_min.json").read_bytes()]
    small = SHARED / "cpu_only_small.pt.trace.json.gz"
    if small.exists():
        seeds.append(gzip.decompress(small.read_bytes()))
    amd = SHARED / "mi250_toy_train.json.gz"
    if amd.exists():
        seeds.append(gzip.decompress(amd.read_bytes()))
    return seeds


SEEDS = _seed_texts()

_SWAPS = [(b'"ts": ', b'"ts": "'), (b'"dur": ', b'"dur": -'), (b'"ph": "X"', b'"ph": "B"'),
          (b'"pid": ', b'"pid": ['), (b'"name": ', b'"name": 1, "x": '),
          (b'"args": {', b'"args": ['), (b'"ts": ', b'"ts": 1e'), (b'"ts"', b'"tz"'),
          (b'"dur"', b'"dux"'), (b'"External id": ', b'"External id": "'),
          (b"[memory]", b"[mem]"), (b'"tid": ', b'"tid": "stream '), (b"}", b"]")]


@st.composite
def mutated(draw) -> tuple[bytes, bool]:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "swap", "delete", "insert"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from([b"\xff", b",", b"{", b"]", b"NaN", b"\n  {"]))
        else:
            old, new = draw(st.sampled_from(_SWAPS))
            at = data.find(old, pos)
            if at >= 0:
                data[at:at + len(old)] = new
    return bytes(data), draw(st.booleans())


@given(mutated(), st.booleans())
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_fuzz_mutated_traces(tmp_path, case, compress):
    """GIVEN small real traces with flipped bytes, truncations, deleted spans and swapped
    field types (optionally gzip-compressed) WHEN loaded (with and without salvage) THEN the
    result is either a CkprofError or a Trace whose check() passes -- nothing else."""
    data, salvage = case
    path = tmp_path / "fuzz.json"
    path.write_bytes(gzip.compress(data) if compress else data)
    try:
        trace = load_trace(path, salvage=salvage)
    except CkprofError as err:
        assert "\n" not in str(err)
        return
    trace.check()


@given(mutated())
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_fuzz_fast_reader_agrees_with_careful_reader(tmp_path, monkeypatch, case):
    """GIVEN mutated small real traces read in tiny pieces (so odd events hit single pieces)
    WHEN both the loader and the careful reference reader read them THEN either both refuse
    with a CkprofError or both return the identical Trace."""
    monkeypatch.setattr(load_mod, "CHUNK_BYTES", 600)
    path = tmp_path / "fuzz.json"
    path.write_bytes(case[0])
    try:
        expected = reference_load(path)
    except CkprofError:
        with pytest.raises(CkprofError):
            load_trace(path)
        return
    assert_same_trace(load_trace(path), expected)
