"""`ckprof annotate`: a copy of the trace with ckprof's tracks, read back by ckprof."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
from test_plots import build_checkpointed

from ckprof.errors import CkprofError, OutputExistsError
from ckprof.report import annotate as ann


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _doc(path: Path):
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    """(original path, its sha, analysis, annotated path) for a 2-step GPU trace."""
    import ckprof

    d = tmp_path_factory.mktemp("annotate")
    src = build_checkpointed(2, gpu=True).write(d / "gpu.json.gz", gzip=True)
    digest = _sha(src)
    a = ckprof.load(src)
    out = ann.write_annotated_trace(a, d / "gpu.ckprof.json.gz")
    return src, digest, a, out


def test_original_is_untouched_and_copy_keeps_everything(annotated):
    """GIVEN a trace WHEN annotated THEN the original file is byte-identical and
    the copy holds every original event and top-level key, plus ckprof's."""
    src, digest, _a, out = annotated
    assert _sha(src) == digest
    before, after = _doc(src), _doc(out)
    assert {k: v for k, v in after.items() if k != "traceEvents"} == \
        {k: v for k, v in before.items() if k != "traceEvents"}
    n = len(before["traceEvents"])
    assert after["traceEvents"][:n] == before["traceEvents"]
    added = after["traceEvents"][n:]
    assert added and all(e.get("cat", "ckprof") == "ckprof" or e["ph"] == "M" for e in added)
    pids = {e["pid"] for e in before["traceEvents"]}
    assert len({e["pid"] for e in added}) == 1 and added[0]["pid"] not in pids


def test_phase_and_region_tracks_match_the_analysis(annotated):
    """GIVEN the annotated copy WHEN ckprof's own loader reads it THEN the ckprof
    process has one phase slice per segment and one region slice per recompute,
    at exactly the analysed nanoseconds, on threads named phases / recompute regions."""
    from ckprof.trace.load import load_trace

    _src, _digest, a, out = annotated
    t = load_trace(out)
    t.check()
    ev = t.events[t.events["cat"].astype(str) == ann.ANNOTATION_CAT]
    phases = ev[ev["tid"] == ann.PHASES_TID].sort_values("ts_ns")
    seg = a.phases.segments
    seg = seg[seg["end_ns"] > seg["start_ns"]].sort_values("start_ns")
    assert len(phases) == len(seg) > 0
    assert phases["ts_ns"].tolist() == seg["start_ns"].tolist()
    assert (phases["ts_ns"] + phases["dur_ns"]).tolist() == seg["end_ns"].tolist()
    want_names = [f"{p}: {r}" if r else p for p, r in zip(seg["phase"].astype(str), seg["region"].astype(str),
                                                           strict=True)]
    assert phases["name"].astype(str).tolist() == want_names
    regions = ev[ev["tid"] == ann.REGIONS_TID].sort_values("ts_ns")
    rec = a.phases.recompute.sort_values("start_ns")
    assert regions["name"].astype(str).tolist() == rec["region"].astype(str).tolist()
    assert regions["ts_ns"].tolist() == rec["start_ns"].tolist()
    meta = [e for e in _doc(out)["traceEvents"] if e.get("ph") == "M" and e.get("pid") == int(ev["pid"].iloc[0])]
    names = {(e["name"], e["args"].get("name")) for e in meta}
    assert ("process_name", "ckprof") in names
    assert ("thread_name", "phases") in names and ("thread_name", "recompute regions") in names


def test_peak_memory_counters_equal_the_analysed_peaks(annotated):
    """GIVEN the annotated copy WHEN its counter events are read THEN at every
    segment start each device's series equals the analysis' peak of that
    (step, phase), and falls to 0 at each step end."""
    _src, _digest, a, out = annotated
    counters = sorted((e for e in _doc(out)["traceEvents"] if e.get("ph") == "C"), key=lambda e: e["ts"])
    assert counters and all(e["name"] == ann.COUNTER_NAME for e in counters)
    by_ts = {round(e["ts"] * 1000): e["args"] for e in counters}
    peaks = a.memory.peaks
    lookup = {(int(s), str(p), str(d)): int(b) for s, p, d, b in
              zip(peaks["step"], peaks["phase"].astype(str), peaks["device"].astype(str), peaks["peak_bytes"],
                  strict=True)}
    devices = sorted({d for (_s, _p, d) in lookup})
    assert devices == ["cpu", "cuda:0"]
    seg = a.phases.segments
    for step, phase, start in zip(seg["step"], seg["phase"].astype(str), seg["start_ns"], strict=True):
        args = by_ts[int(start)]
        for d in devices:
            assert args[d] == lookup.get((int(step), phase, d), 0)
    for end in a.phases.steps["end_ns"]:
        if int(end) in by_ts and int(end) not in set(seg["start_ns"].tolist()):
            assert all(v == 0 for v in by_ts[int(end)].values())
    assert max(max(e["args"].values()) for e in counters) == int(peaks["peak_bytes"].max())


def test_annotated_copy_analyses_the_same(annotated):
    """GIVEN the annotated copy WHEN analysed again THEN every number equals the
    original analysis (the added tracks never look like ckprof markers)."""
    import ckprof

    _src, _digest, a, out = annotated
    again = ckprof.load(out).to_dict()
    first = a.to_dict()
    for key in ("trace",):
        again.pop(key)
        first.pop(key)
    assert again == first


def test_annotate_refuses_to_overwrite(tmp_path: Path):
    """GIVEN an existing output WHEN annotating without --force THEN exit code 8
    and the file is unchanged; writing onto the input is refused even with --force."""
    from click.testing import CliRunner

    from ckprof.cli.main import cli

    src = build_checkpointed(1).write(tmp_path / "t.json")
    digest = _sha(src)
    out = tmp_path / "t.ckprof.json"
    out.write_text("keep")
    runner = CliRunner()
    res = runner.invoke(cli, ["annotate", str(src), "-o", str(out)])
    assert res.exit_code == 8 and out.read_text() == "keep"
    res = runner.invoke(cli, ["annotate", str(src), "-o", str(out), "--force"])
    assert res.exit_code == 0, res.output
    doc = _doc(out)  # plain JSON for a .json name
    assert any(e.get("ph") == "X" and e.get("cat") == "ckprof" for e in doc["traceEvents"])
    res = runner.invoke(cli, ["annotate", str(src), "-o", str(src), "--force"])
    assert res.exit_code == 1 and "never modifies the original" in res.output
    assert _sha(src) == digest
    with pytest.raises(OutputExistsError):
        import ckprof

        ann.write_annotated_trace(ckprof.load(src), out)


def test_annotate_chrome_array_format(tmp_path: Path):
    """GIVEN a trace in the bare-array Chrome format WHEN annotated THEN the copy
    is still a bare array with the ckprof events appended."""
    import ckprof

    b = build_checkpointed(1)
    src = tmp_path / "array.json"
    src.write_text(json.dumps(b.events()))
    a = ckprof.load(src)
    out = ann.write_annotated_trace(a, tmp_path / "array.ckprof.json")
    doc = _doc(out)
    assert isinstance(doc, list) and doc[: len(b.events())] == b.events()
    assert any(e.get("name") == "process_name" and e["args"]["name"] == "ckprof" for e in doc)


def test_annotate_real_gpu_trace(shared_traces: Path, tmp_path: Path):
    """GIVEN a real H100 trace without ckprof markers WHEN annotated THEN the copy
    loads, has the ckprof tracks and the same analysis."""
    import ckprof

    src = shared_traces / "h100_bert_small.json.gz"
    a = ckprof.load(src)
    out = ann.write_annotated_trace(a, tmp_path / "h100.ckprof.json.gz")
    b = ckprof.load(out)
    ev = b.trace.events
    assert int((ev["cat"].astype(str) == "ckprof").sum()) == int(
        (a.phases.segments["end_ns"] > a.phases.segments["start_ns"]).sum() + len(a.phases.recompute))
    assert b.totals_table().equals(a.totals_table())


def test_annotation_events_reject_nothing_on_empty_memory():
    """GIVEN an analysis without memory events WHEN annotation events are built
    THEN there are phase slices but no counters."""
    from ckprof.analysis import analyze

    a = analyze(build_checkpointed(1, memory=False).to_trace(path="x.json"))
    events = ann.annotation_events(a, pid=7)
    assert not [e for e in events if e["ph"] == "C"]
    assert len([e for e in events if e["ph"] == "X" and e["tid"] == ann.PHASES_TID]) == int(
        (a.phases.segments["end_ns"] > a.phases.segments["start_ns"]).sum())
    with pytest.raises(CkprofError):
        ann.annotated_trace_bytes(a)  # x.json does not exist: it cannot be re-read


def _same_document_but_added_times(streamed: Path, whole: bytes) -> None:
    """The streamed copy equals the whole-document one, added events' ts/dur aside
    (exact decimal text vs floats)."""
    a, b = _doc(streamed), json.loads(whole)
    if isinstance(a, dict):
        assert {k: v for k, v in a.items() if k != "traceEvents"} == \
            {k: v for k, v in b.items() if k != "traceEvents"}
        a, b = a["traceEvents"], b["traceEvents"]
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if x.get("pid") == y.get("pid") and x.get("cat") == "ckprof":
            for k in ("ts", "dur"):
                if k in x:
                    assert x[k] == pytest.approx(y[k], abs=0.5)  # floats of epoch µs
                    x, y = {**x, k: 0}, {**y, k: 0}
        assert x == y


@pytest.mark.parametrize("trailer_list", [False, True], ids=["kineto", "deviceProperties-after-events"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_annotate_streams_kineto_traces(tmp_path: Path, monkeypatch, gz, trailer_list):
    """GIVEN Kineto-layout traces (plain / gzip; a list of objects in the trailer after
    the events, as some Kineto versions write deviceProperties) bigger than the streaming
    tail WHEN annotated THEN the copy is streamed (never decoded whole): the original bytes
    before the insertion point are kept verbatim, the document equals the whole-document
    copy, and the copy analyses to the same figures."""
    from test_shapes import synth

    import ckprof

    src = tmp_path / "t.json"
    synth.write_trace(src, steps=3, layers=3, shape="mixed", seed=1)
    text = src.read_bytes()
    if trailer_list:
        head, _, rest = text.partition(b'  "deviceProperties": [')
        props, _, rest = rest.partition(b"\n  ],\n")
        text = head + rest.replace(b'  "traceName"', b'  "deviceProperties": [' + props + b"\n  ],\n"
                                   b'  "traceName"', 1)
        assert text.index(b'"deviceProperties"') > text.index(b'"traceEvents"')
    if gz:
        src = tmp_path / "t.json.gz"
        src.write_bytes(gzip.compress(text))
    else:
        src.write_bytes(text)
    monkeypatch.setattr(ann, "_TAIL_BYTES", 64 * 1024)  # the file is many tails long
    a = ckprof.load(src)
    whole = ann.annotated_trace_bytes(a, gzip_output=False)

    def refuse(*args, **kwargs):
        raise AssertionError("annotate fell back to decoding the whole document")

    monkeypatch.setattr(ann, "annotated_trace_bytes", refuse)
    out = ann.write_annotated_trace(a, tmp_path / ("copy.json.gz" if gz else "copy.json"))
    copy = gzip.decompress(out.read_bytes()) if gz else out.read_bytes()
    k = copy.index(b',\n  {"ph":"M","name":"process_name"')  # right after the last event
    assert copy[:k] == text[:k] and copy[len(copy) - (len(text) - k):] == text[k:]
    _same_document_but_added_times(out, whole)
    b = ckprof.load(out)
    again, first = b.to_dict(), a.to_dict()
    again.pop("trace")
    first.pop("trace")
    assert again == first
    ev = b.trace.events[b.trace.events["cat"].astype(str) == ann.ANNOTATION_CAT]
    seg = a.phases.segments[a.phases.segments["end_ns"] > a.phases.segments["start_ns"]]
    phases = ev[ev["tid"] == ann.PHASES_TID].sort_values("ts_ns")
    assert phases["ts_ns"].tolist() == sorted(seg["start_ns"].tolist())  # exact on an epoch clock
