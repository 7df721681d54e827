"""Every trace shape of the speed benchmark reads to the same figures on every path.

The shapes (benchmarks/synth_trace.py, NOTE [ Trace shapes ]) differ in what the loader
spends its time on; the speed work of issue 17 must not change a single figure. For a
small instance of each shape:

- the golden analysis figures (tests/golden/shapes.json) were computed by the loader as
  it was before issue 17 (msgspec reader, numpy tree); today's figures must equal them;
- the native scanner path, the pure-Python (msgspec) path and the careful stdlib-json
  reference reader give identical Traces, hence identical figures;
- the native scanner refuses what it does not handle exactly like msgspec: on mutated
  pieces, whatever it accepts equals the msgspec reader's columns.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from ckprof.analysis import analyze, load
from ckprof.trace import _build, _native
from ckprof.trace.kineto import fast as _fast
from ckprof.trace.kineto import source as _source
from ckprof.trace.kineto.careful import read_careful, read_careful_piece
from ckprof.trace.load import load_trace

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "shapes.json"


def _synth():
    spec = importlib.util.spec_from_file_location("synth_trace", REPO / "benchmarks" / "synth_trace.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("synth_trace", module)
    spec.loader.exec_module(module)
    return module


synth = _synth()
SHAPES = list(synth.SHAPES)
DETECTIONS = {s: ("auto", "sequence") + (("stack",) if s in ("gpu", "stack", "mixed") else ())
              for s in SHAPES}


@pytest.fixture(scope="module")
def shape_files(tmp_path_factory) -> dict[str, Path]:
    """GIVEN a 2-step, 3-layer instance of every shape (what the golden file was made from)."""
    d = tmp_path_factory.mktemp("shapes")
    files = {}
    for shape in SHAPES:
        files[shape] = d / f"{shape}.json"
        synth.write_trace(files[shape], steps=2, layers=3, shape=shape, seed=5)
    return files


def _figures(analysis) -> dict:
    d = analysis.to_dict()
    d.pop("trace")
    d.pop("ckprof_version")
    return json.loads(json.dumps(d))  # tuples -> lists, as in the golden file


def _careful_trace(path: Path):
    cols, metadata, fmt, notes = read_careful(_source.BlockReader(path).read_all(), path=str(path),
                                              salvage=False)
    if fmt == "kineto" and _build.is_legacy(cols):
        fmt = "kineto-legacy"
    return _build.build_trace(cols, path=str(path), metadata=metadata, source_format=fmt, notes=notes)


def _same_trace(a, b) -> None:
    import pandas as pd

    pd.testing.assert_frame_equal(a.events, b.events, check_exact=True)
    pd.testing.assert_frame_equal(a.memory, b.memory, check_exact=True)
    assert (a.metadata, a.ckprof, a.thread_names, a.source_format, a.notes) == \
        (b.metadata, b.ckprof, b.thread_names, b.source_format, b.notes)


@pytest.mark.parametrize("shape", SHAPES)
def test_figures_equal_the_golden_ones_on_every_path(shape, shape_files, monkeypatch):
    """GIVEN a small instance of the shape
    WHEN analysed with the native scanner, without it (msgspec + numpy tree) and from the
    careful reference reader's Trace, with every recompute detection that applies
    THEN the Traces are identical and every figure equals the pre-issue-17 golden one."""
    golden = json.loads(GOLDEN.read_text())
    path = shape_files[shape]
    careful = _careful_trace(path)
    paths = {"careful": careful}
    if _native.scan is not None:
        paths["native"] = load_trace(path)
    monkeypatch.setattr(_native, "scan", None)
    monkeypatch.setattr(_native, "tree", None)
    paths["msgspec"] = load_trace(path)
    monkeypatch.undo()
    for name, trace in paths.items():
        _same_trace(trace, careful)
        for det in DETECTIONS[shape]:
            assert _figures(analyze(trace, recompute_detection=det)) == golden[f"{shape}/{det}"], \
                (name, det)
    assert _figures(load(path)) == golden[f"{shape}/auto"]  # the public entry point too


def test_shapes_have_their_event_mix(shape_files):
    """GIVEN the small instances THEN each shape has the mix it is named for."""
    kinds = {s: load_trace(p).events["kind"].astype(str).value_counts(normalize=True)
             for s, p in shape_files.items()}
    memory = {s: len(load_trace(p).memory) / (len(load_trace(p).memory) + len(load_trace(p).events))
              for s, p in shape_files.items()}
    assert memory["memory"] > 0.5 > memory["gpu"]
    assert kinds["stack"]["python_function"] > 0.5 > kinds["gpu"]["python_function"]
    assert kinds["compiled"]["kernel"] > 2 * kinds["gpu"]["kernel"]
    assert kinds["compiled"].get("python_function", 0) == 0
    legacy = load_trace(shape_files["legacy"])
    assert legacy.source_format == "kineto-legacy" and legacy.ckprof is None
    assert set(legacy.events["cat"].astype(str)) <= {"Operator", "Runtime", "Kernel", "Trace"}


# ----------------------------------------------------------------------------- scanner fuzz

_EVENT_TEMPLATES = [
    '{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 7, "tid": 8, "ts": 1712.125, "dur": 3.5, '
    '"args": {"External id": 4, "Sequence number": 9, "Input Dims": [[2, 3], []]}}',
    '{"ph": "X", "cat": "kernel", "name": "void k<float>(int)", "pid": 0, "tid": "stream 7", "ts": 1713, '
    '"dur": 1, "args": {"correlation": 55, "external id": 4, "grid": [1, 1, 1], "x": 1.5e-3}}',
    '{"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", "pid": 7, "tid": 8, '
    '"ts": 1714.001, "args": {"Total Reserved": 2097152, "Total Allocated": 512, "Bytes": -512, '
    '"Device Id": 0, "Device Type": 1}}',
    '{"ph": "f", "id": 55, "pid": 0, "tid": 7, "ts": 1713.5, "cat": "ac2g", "name": "ac2g", "bp": "e"}',
    '{"name": "thread_name", "ph": "M", "pid": 7, "tid": 8, "args": {"name": "thread 8 (python)"}}',
    '{"ph": "X", "cat": "python_function", "name": "model.py(3): f\\u00e9", "pid": "7", "tid": 8, '
    '"ts": 1712.000, "dur": 9.999, "args": {"Python id": 3, "Python parent id": null}}',
    '{"ph": "i", "s": "g", "name": "Iteration Start: PyTorch Profiler", "pid": "Traces", "tid": "T", '
    '"ts": 1712.5}',
]
_MUTATIONS = ['"ts": -1', '"ts": 1e3', '"ts": 1.0001', '"dur": "3"', '"dur": NaN', '"pid": 1.5',
              '"pid": true', '"tid": null', '"ph": "B"', '"ph": "Q"', '"name": 5', '"cat": null',
              '"args": []', '"args": {"External id": 1.0}', '"args": {"correlation": 99999999999999999999}',
              '"ts": 01', '"name": "a\\x"', '"name": "\\ud800"', '"p\\u0068": "X"', '"dur": 8589934592',
              '"ts": 9007199254740993', '"args": {"Bytes": -9223372036854775808}', '"ts": 1.', '"dur": .5']


def _msgspec_columns(text: bytes):
    cols = _build.Columns()
    try:
        _fast._ingest(_fast._decode(b"[" + text + b"]"), cols)
    except (_fast.NeedsCarefulReader, ValueError, TypeError, OverflowError, IndexError):
        return None
    return cols


def _as_arrays(cols) -> tuple:
    ev = {k: np.concatenate(v) if v else np.empty(0, np.int64) for k, v in cols.ev.items()}
    mem = {k: np.concatenate(v) if v else np.empty(0, np.int64) for k, v in cols.mem.items()}
    ev["name"] = [cols.names.values[c] for c in ev["name"]]
    ev["cat"] = [cols.cats.values[c] for c in ev["cat"]]
    mem["device"] = [cols.devices.values[c] for c in mem["device"]]
    return ({k: list(map(str, v)) if isinstance(v, list) else v.tolist() for k, v in ev.items()},
            {k: list(map(str, v)) if isinstance(v, list) else v.tolist() for k, v in mem.items()},
            dict(cols.ids.names))


@pytest.mark.skipif(_native.scan is None, reason="native scanner not built")
def test_native_scanner_accepts_only_what_it_reads_like_the_reference():
    """GIVEN 1,000 random pieces of events, mutated (bad numbers, types, escapes, B/E,
    random bytes ...) WHEN the native scanner reads them THEN every piece it accepts gives
    exactly the columns of the msgspec reader -- or, where msgspec refuses the piece (it
    also checks UTF-8 in strings nobody reads), of the careful reader, which then reads it
    -- and a refused piece leaves the columns untouched."""
    rng = random.Random(17)
    accepted = refused = 0
    for _ in range(1000):
        events = [rng.choice(_EVENT_TEMPLATES) for _ in range(rng.randint(1, 6))]
        for _ in range(rng.choice([0, 0, 1, 2])):
            k = rng.randrange(len(events))
            mutation = rng.choice(_MUTATIONS)
            key = mutation.split(":")[0]
            e = events[k]
            events[k] = e.replace(key + ":", mutation + ', "_old":', 1) if key + ":" in e \
                else e[:-1] + ", " + mutation + "}"
        text = ",\n  ".join(events).encode()
        if rng.random() < 0.3:
            flipped = bytearray(text)
            for _ in range(rng.randint(1, 3)):
                flipped[rng.randrange(len(flipped))] = rng.choice(b'{}[]",:019.-eE \\u\x00\xff\xc3')
            text = bytes(flipped)
        want = _msgspec_columns(text)
        if want is None:
            want = _build.Columns()
            try:
                read_careful_piece(text, want)
            except ValueError:
                want = None
        cols = _build.Columns()
        ok = _fast._scan_into(text, 0, len(text), cols)
        if ok:
            accepted += 1
            assert want is not None, text
            assert _as_arrays(cols) == _as_arrays(want), text
        else:
            refused += 1
            assert cols.n_events == cols.n_memory == 0 and not cols.ids.names
    assert accepted > 100 and refused > 100  # both sides of the rule were exercised
