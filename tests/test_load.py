"""Tests for ckprof.trace.load: formats, exact times, the event tree, fast == careful.

Real inputs: the shared GPU traces (skipped when ../shared/traces is absent) and CPU
traces this module captures itself with torch.profiler (skipped without torch).
"""

from __future__ import annotations

import gzip
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckprof.errors import CkprofError, TraceNotFoundError
from ckprof.trace import _build, _native
from ckprof.trace import load as load_mod
from ckprof.trace.kineto import fast as _fast
from ckprof.trace.kineto import source as _source
from ckprof.trace.kineto.careful import read_careful
from ckprof.trace.load import find_trace_files, is_trace_path, load_trace
from ckprof.trace.model import KINDS

DATA = Path(__file__).resolve().parent / "data"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
SHARED_FILES = sorted(SHARED.glob("*.json.gz")) if SHARED.is_dir() else []


# ----------------------------------------------------------------------------- helpers

def reference_load(path: Path, salvage: bool = False):
    """The careful (stdlib json) reader end to end: the reference for the fast path."""
    reader = _source.BlockReader(path)
    cols, metadata, fmt, notes = read_careful(reader.read_all(), path=str(path), salvage=salvage)
    if fmt == "kineto" and _build.is_legacy(cols):
        fmt = "kineto-legacy"
    return _build.build_trace(cols, path=str(path), metadata=metadata, source_format=fmt,
                              notes=notes)


def assert_same_trace(a, b) -> None:
    pd.testing.assert_frame_equal(a.events, b.events, check_exact=True)
    pd.testing.assert_frame_equal(a.memory, b.memory, check_exact=True)
    assert a.metadata == b.metadata
    assert a.ckprof == b.ckprof
    assert a.thread_names == b.thread_names
    assert a.source_format == b.source_format
    assert a.notes == b.notes


def write_events(path: Path, events: list[dict], **top) -> Path:
    """A Kineto-shaped file: one event per line group, like the profiler writes."""
    body = ",\n".join("  " + json.dumps(e) for e in events)
    head = "".join(f'  "{k}": {json.dumps(v)},\n' for k, v in top.items())
    path.write_text("{\n" + head + '  "traceEvents": [\n' + body + '\n  ],\n  "traceName": "t"\n}\n')
    return path


def x(name: str, ts, dur, *, cat: str = "cpu_op", pid=1, tid=1, **args) -> dict:
    e = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur}
    if args:
        e["args"] = args
    return e


@pytest.fixture
def fast_only(monkeypatch):
    """Fail if load_trace falls back to the careful reader (so fast == careful is real)."""
    def refuse(*args, **kwargs):
        raise AssertionError("load_trace fell back to the careful reader")
    monkeypatch.setattr(load_mod, "read_careful", refuse)


# ----------------------------------------------------------------------------- captured

@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> dict[str, Path]:
    """CPU traces from torch.profiler: export_chrome_trace (stack, memory, shapes) and a
    schedule + tensorboard_trace_handler run (gzip, no stack)."""
    torch = pytest.importorskip("torch")
    from torch import profiler as tp

    out = tmp_path_factory.mktemp("captured")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = torch.randn(4, 8)

    def step() -> None:
        with tp.record_function("ckprof::forward"):
            loss = model(batch).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()

    with tp.profile(activities=[tp.ProfilerActivity.CPU], profile_memory=True,
                    record_shapes=True, with_stack=True) as prof:
        step()
    plain = out / "stack.json"
    prof.export_chrome_trace(str(plain))

    tb_dir = out / "tb"
    with tp.profile(activities=[tp.ProfilerActivity.CPU], profile_memory=True,
                    record_shapes=True,
                    schedule=tp.schedule(wait=0, warmup=1, active=2, repeat=1),
                    on_trace_ready=tp.tensorboard_trace_handler(str(tb_dir), use_gzip=True)
                    ) as prof:
        for _ in range(3):
            step()
            prof.step()
    (tb_file,) = sorted(tb_dir.glob("*.pt.trace.json.gz"))
    return {"stack": plain, "tb": tb_file, "tb_dir": tb_dir}


def test_captured_traces_load_and_match_reference(captured, fast_only):
    """GIVEN CPU traces captured by torch.profiler (plain, and gzip from tensorboard_trace_handler)
    WHEN loaded by load_trace and by the careful reference reader
    THEN both pass Trace.check() and are identical, with memory, python frames and steps."""
    for key in ("stack", "tb"):
        trace = load_trace(captured[key])
        trace.check()
        assert_same_trace(trace, reference_load(captured[key]))
        kinds = set(trace.events["kind"].astype(str))
        assert {"cpu_op", "user_annotation"} <= kinds
        assert len(trace.memory) > 0 and set(trace.memory["device"].astype(str)) == {"cpu"}
        assert trace.source_format == "kineto"
    stack = load_trace(captured["stack"])
    assert "python_function" in set(stack.events["kind"].astype(str))
    tb = load_trace(captured["tb"])
    steps = [n for n in tb.events["name"].astype(str) if n.startswith("ProfilerStep#")]
    assert len(steps) == 2


def test_python_frames_form_their_own_tree(captured):
    """GIVEN a with_stack trace WHEN loaded THEN python_function events only have python parents
    and ops only have op parents, both trees being per (pid, tid)."""
    ev = load_trace(captured["stack"]).events
    has_parent = ev[ev["parent"] >= 0]
    parent_kind = ev["kind"].to_numpy()[has_parent["parent"].to_numpy()]
    is_py = has_parent["kind"].to_numpy() == "python_function"
    assert (parent_kind[is_py] == "python_function").all()
    assert (parent_kind[~is_py] != "python_function").all()
    same_thread = (ev["tid"].to_numpy()[has_parent["parent"].to_numpy()]
                   == has_parent["tid"].to_numpy())
    assert same_thread.all()


def test_small_chunks_give_the_same_trace(captured, monkeypatch, fast_only):
    """GIVEN tiny chunk and block sizes (so every few events are a piece, gzip streams in
    many blocks) WHEN loading THEN the result is identical to the default load."""
    default = {k: load_trace(captured[k]) for k in ("stack", "tb")}
    monkeypatch.setattr(load_mod, "CHUNK_BYTES", 2048)
    monkeypatch.setattr(_source, "BLOCK_BYTES", 1500)
    monkeypatch.setattr(_source.BlockReader.__init__, "__defaults__", (1500,))
    for key, expected in default.items():
        assert_same_trace(load_trace(captured[key]), expected)


def test_directory_and_discovery(captured, tmp_path):
    """GIVEN the tensorboard_trace_handler folder plus HTA and ckprof outputs next to it
    WHEN discovering THEN only the trace is found and a directory path loads it."""
    folder = tmp_path / "run"
    shutil.copytree(captured["tb_dir"], folder)
    (folder / "rank0_with_counters.json.gz").write_bytes(gzip.compress(b'{"traceEvents": []}'))
    (folder / "summary.json").write_text('{"totals": []}')
    (folder / "run.ckprof.json").write_text('{"traceEvents": []}')
    (folder / "notes.txt").write_text("hello")
    shutil.copy(captured["stack"], folder / "other_name.json")
    found = find_trace_files(folder)
    assert [f.name for f in found] == sorted(
        [captured["tb"].name, "other_name.json"])
    assert is_trace_path(found[0]) and not is_trace_path(folder / "summary.json")
    assert not is_trace_path(folder / "missing.json") and not is_trace_path(folder)
    (folder / "other_name.json").unlink()
    trace = load_trace(folder)
    assert trace.path.endswith(".pt.trace.json.gz")
    with pytest.raises(TraceNotFoundError):
        find_trace_files(folder / "notes.txt")


# ----------------------------------------------------------------------------- shared

@pytest.mark.shared_traces
@pytest.mark.parametrize("path", SHARED_FILES, ids=[p.name for p in SHARED_FILES])
def test_shared_trace_fast_equals_reference(path, fast_only):
    """GIVEN a real GPU trace WHEN loaded THEN check() passes and the fast reader's Trace is
    identical to the careful stdlib-json reader's (events, memory, metadata, notes)."""
    trace = load_trace(path)
    trace.check()
    assert_same_trace(trace, reference_load(path))


@pytest.mark.shared_traces
def test_shared_traces_semantics(shared_traces):
    """GIVEN the shared traces WHEN loaded THEN formats, GPU kinds, devices and ids come out as
    the files say (legacy names, AMD hip runtime, CUDA memory, string tids)."""
    legacy = load_trace(shared_traces / "v100_resnet50_train_legacy.json.gz")
    assert legacy.source_format == "kineto-legacy"
    kinds = legacy.events["kind"].astype(str)
    assert {"cpu_op", "kernel", "runtime", "gpu_memset", "gpu_memcpy"} <= set(kinds)
    assert (legacy.events.loc[kinds == "kernel", "external_id"] >= 0).all()
    assert set(legacy.memory["device"].astype(str)) >= {"cpu"}
    # "stream 7" -> 7, "25738" -> 25738
    assert 7 in set(legacy.events.loc[kinds == "kernel", "tid"])
    assert 25738 in set(legacy.events["tid"])

    amd = load_trace(shared_traces / "mi250_toy_train.json.gz")
    rt = amd.events[amd.events["kind"] == "runtime"]
    assert rt["name"].astype(str).str.startswith("hip").any() and amd.has_gpu

    h100 = load_trace(shared_traces / "h100_bert_small.json.gz")
    cuda = h100.memory[h100.memory["device"] == "cuda:0"]
    assert len(cuda) > 200 and (cuda["total_allocated_bytes"] > 0).all()
    gpu = h100.events[h100.events["kind"].isin(["kernel", "gpu_memcpy", "gpu_memset",
                                                  "gpu_annotation"])]
    assert (gpu["parent"] == -1).all() and (gpu["depth"] == 0).all()
    assert (h100.events.loc[h100.events["kind"] == "kernel", "correlation"] >= 0).all()

    v100 = load_trace(shared_traces / "v100_cnn_train_rank0.pt.trace.json.gz")
    names = {v: k for k, v in v100.thread_names.items()}
    assert "Spans" in names and names["Spans"] < 0
    assert v100.metadata["distributedInfo"]["rank"] == 0
    # exact µs -> ns from the text (1712195495519689.047 is not representable as a float*1000)
    assert 1712195495519689047 in set(v100.events["ts_ns"])


# ----------------------------------------------------------------------------- formats

def test_exact_nanoseconds_from_decimal_text(tmp_path, fast_only):
    """GIVEN epoch-µs timestamps whose ns value a float cannot hold (written as text)
    WHEN loaded THEN ts_ns/dur_ns are the decimal text times 1000 exactly."""
    stamps = {"a": ("1712195495519689.0", "12.5"), "b": ("1712195495519689.047", "0.001"),
              "c": ("1712195495406752.8", "3"), "d": ("5115377103209.598", "7.25")}
    lines = [f'  {{"ph": "X", "cat": "cpu_op", "name": "{k}", "pid": 1, "tid": 1, '
             f'"ts": {ts}, "dur": {dur}}}' for k, (ts, dur) in stamps.items()]
    path = tmp_path / "t.json"
    path.write_text('{"traceEvents": [\n' + ",\n".join(lines) + "\n]}")
    by_name = load_trace(path).events.set_index("name")
    assert by_name.loc["a", "ts_ns"] == 1712195495519689000
    assert by_name.loc["a", "dur_ns"] == 12500
    assert by_name.loc["b", "ts_ns"] == 1712195495519689047
    assert by_name.loc["b", "dur_ns"] == 1
    assert by_name.loc["c", "ts_ns"] == 1712195495406752800
    assert by_name.loc["d", "ts_ns"] == 5115377103209598 and by_name.loc["d", "dur_ns"] == 7250
    assert_same_trace(load_trace(path), reference_load(path))


@given(st.lists(st.tuples(st.integers(0, 9_007_199_254_740), st.integers(0, 999),
                          st.integers(0, 3)), min_size=1, max_size=30))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_time_text_property(tmp_path, stamps):
    """GIVEN any µs value with 0-3 decimals WHEN loaded THEN ts_ns equals the exact decimal."""
    events, expected = [], []
    for i, (whole, frac, decimals) in enumerate(stamps):
        frac_text = f"{frac:03d}"[:decimals]
        text = f"{whole}.{frac_text}" if decimals else f"{whole}"
        ns = whole * 1000 + (int(frac_text.ljust(3, "0")) if decimals else 0)
        events.append(f'  {{"ph": "X", "cat": "cpu_op", "name": "e{i}", "pid": 1, "tid": {i}, '
                      f'"ts": {text}, "dur": {text}}}')
        expected.append((f"e{i}", ns))
    path = tmp_path / "p.json"
    path.write_text('{"traceEvents": [\n' + ",\n".join(events) + "\n]}")
    by_name = load_trace(path).events.set_index("name")
    for name, ns in expected:
        assert by_name.loc[name, "ts_ns"] == ns and by_name.loc[name, "dur_ns"] == ns


def test_kind_mapping_and_ids(tmp_path):
    """GIVEN every category spelling (current, legacy, AMD, unknown) and text pids/tids
    WHEN loaded THEN kinds follow model.KINDS and ids are parsed or coded."""
    cats = {"cpu_op": "cpu_op", "Operator": "cpu_op", "user_annotation": "user_annotation",
            "python_function": "python_function", "kernel": "kernel", "Kernel": "kernel",
            "gpu_memcpy": "gpu_memcpy", "Memcpy": "gpu_memcpy", "gpu_memset": "gpu_memset",
            "Memset": "gpu_memset", "cuda_runtime": "runtime", "cuda_driver": "runtime",
            "Runtime": "runtime", "hip_runtime": "runtime",
            "gpu_user_annotation": "gpu_annotation", "Trace": "other", "mystery": "other"}
    events = [x(f"ev_{c}", 10 + i, 1, cat=c, tid=100 + i) for i, c in enumerate(cats)]
    events.append(x("strtid", 50, 1, tid="25738"))
    events.append(x("stream", 51, 1, cat="kernel", pid=0, tid="stream 7"))
    events.append(x("named", 52, 1, pid="Spans", tid="PyTorch Profiler"))
    trace = load_trace(write_events(tmp_path / "k.json", events))
    ev = trace.events.set_index("name")
    for c, kind in cats.items():
        assert ev.loc[f"ev_{c}", "kind"] == kind, c
    assert set(trace.events["kind"].cat.categories) == set(KINDS)
    assert ev.loc["strtid", "tid"] == 25738
    assert ev.loc["stream", "tid"] == 7
    pid, tid = ev.loc["named", "pid"], ev.loc["named", "tid"]
    assert pid < 0 and tid < 0 and trace.thread_names[pid] == "Spans"
    assert trace.thread_names[tid] == "PyTorch Profiler"
    assert trace.source_format == "kineto-legacy"  # legacy category names present


def test_args_ids_and_memory(tmp_path, fast_only):
    """GIVEN ids in args (current and legacy spelling) and [memory] events for CPU, CUDA and
    another device type WHEN loaded THEN columns and device labels follow the contract."""
    events = [
        x("op", 10, 5, **{"External id": 7, "Sequence number": 3}),
        x("launch", 11, 1, cat="cuda_runtime", correlation=99, **{"external id": 7}),
        x("k", 20, 2, cat="kernel", pid=0, tid=7, correlation=99, **{"External id": 7}),
        {"ph": "i", "s": "t", "name": "[memory]", "pid": 1, "tid": 1, "ts": 12,
         "args": {"Total Allocated": 100, "Total Reserved": 200, "Bytes": 64,
                  "Device Type": 1, "Device Id": 3}},
        {"ph": "i", "s": "t", "name": "[memory]", "pid": 1, "tid": 1, "ts": 11,
         "args": {"Bytes": -8, "Device Type": 0, "Device Id": -1}},
        {"ph": "i", "s": "t", "name": "[memory]", "pid": 1, "tid": 1, "ts": 13.5,
         "args": {"Bytes": 1, "Device Type": 8, "Device Id": 0}},
        {"ph": "i", "s": "g", "name": "Record Window End", "pid": "", "tid": "", "ts": 99},
        {"ph": "s", "id": 1, "pid": 1, "tid": 1, "ts": 10, "cat": "ac2g", "name": "ac2g"},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "x"}},
    ]
    trace = load_trace(write_events(tmp_path / "m.json", events))
    trace.check()
    ev = trace.events.set_index("name")
    assert (ev.loc["op", ["external_id", "seq", "correlation"]].tolist() == [7, 3, -1])
    assert ev.loc["launch", "external_id"] == 7 and ev.loc["launch", "correlation"] == 99
    assert ev.loc["k", "parent"] == -1
    mem = trace.memory
    assert mem["ts_ns"].tolist() == [11000, 12000, 13500]
    assert mem["device"].astype(str).tolist() == ["cpu", "cuda:3", "device8:0"]
    assert mem["total_allocated_bytes"].tolist() == [-1, 100, -1]
    assert mem["total_reserved_bytes"].tolist() == [-1, 200, -1]
    assert mem["bytes"].tolist() == [-8, 64, 1]
    assert_same_trace(trace, reference_load(tmp_path / "m.json"))


def test_array_format_gzip_by_magic_and_ckprof_metadata(tmp_path):
    """GIVEN a bare event list gzip-compressed under a .json name, and an object with a ckprof
    key and unknown top-level keys under a .gz name that is not compressed
    WHEN loaded THEN the format is detected by content, metadata and ckprof are kept."""
    events = [x("a", 1, 10), x("b", 2, 3)]
    arr = tmp_path / "array.json"
    arr.write_bytes(gzip.compress(json.dumps(events).encode()))
    t = load_trace(arr)
    assert t.source_format == "chrome-array" and len(t.events) == 2 and t.metadata == {}
    meta = {"ckprof_version": "0.1.0", "device": "cpu", "markers": True}
    obj = write_events(tmp_path / "plain.json.gz", events, ckprof=meta, futureKey={"v": [1, 2]},
                       schemaVersion=9)
    t = load_trace(obj)
    assert t.ckprof == meta and t.metadata["futureKey"] == {"v": [1, 2]}
    assert t.metadata["traceName"] == "t" and t.metadata["schemaVersion"] == 9
    assert_same_trace(t, reference_load(obj))


def test_one_line_json_takes_the_whole_document_path(tmp_path, fast_only):
    """GIVEN a trace written on one line with keys after the events (no line boundaries)
    WHEN loaded THEN it reads the same as the reference."""
    doc = {"traceEvents": [x("a", 1, 10), x("b", 2, 3)], "deviceProperties": [{"id": 0}],
           "tail": "]}"}
    path = tmp_path / "one.json"
    path.write_text(json.dumps(doc))
    t = load_trace(path)
    assert len(t.events) == 2 and t.metadata["tail"] == "]}"
    assert_same_trace(t, reference_load(path))


# ----------------------------------------------------------------------------- tree

def test_tree_rules(tmp_path):
    """GIVEN nesting, a zero-length event at a parent's end, a partial overlap, an exact
    duplicate, python frames overlapping ops, and a GPU kernel
    WHEN loaded THEN parent/depth follow the NOTE [ Event tree rules ]."""
    events = [
        x("root", 0, 100), x("child", 10, 20), x("grandchild", 12, 5),
        x("at_end", 100, 0),              # zero-length at root's end: not inside root
        x("partial", 25, 10),             # starts in child (10-30), ends after it
        x("inside_partial", 31, 2),
        x("dup", 40, 5), x("dup", 40, 5),
        x("py", 5, 200, cat="python_function"), x("py_inner", 6, 1, cat="python_function"),
        x("kern", 12, 50, cat="kernel", pid=0, tid=7),
        x("other_thread", 11, 1, tid=2),
    ]
    ev = load_trace(write_events(tmp_path / "tree.json", events)).events
    names = ev["name"].astype(str).tolist()

    def parent_of(i: int) -> str:
        p = ev.loc[i, "parent"]
        return "" if p < 0 else names[p]

    got = {(n, parent_of(i), int(ev.loc[i, "depth"])) for i, n in enumerate(names)}
    assert got == {
        ("root", "", 0), ("child", "root", 1), ("grandchild", "child", 2),
        ("at_end", "", 0), ("partial", "root", 1), ("inside_partial", "partial", 2),
        ("dup", "root", 1), ("dup", "dup", 2),
        ("py", "", 0), ("py_inner", "py", 1), ("kern", "", 0), ("other_thread", "", 0),
    }


def test_deep_nesting_100k(tmp_path):
    """GIVEN 100,000 events each nested in the previous one WHEN loaded (fast reader; and
    20,000 through the careful reader) THEN there is no recursion error and depth counts up."""
    n = 100_000
    lines = [f'  {{"ph": "X", "cat": "cpu_op", "name": "f", "pid": 1, "tid": 1, "ts": {i}, '
             f'"dur": {2 * (n - i)}}}' for i in range(n)]
    path = tmp_path / "deep.json"
    path.write_text('{"traceEvents": [\n' + ",\n".join(lines) + "\n]}")
    ev = load_trace(path).events
    assert ev["depth"].max() == n - 1
    assert (ev["parent"].to_numpy()[1:] == np.arange(n - 1)).all()
    # the careful path (forced by an odd event) builds the same tree (fewer rows: slower)
    lines = [*lines[:20_000], '  {"ph": "X", "name": "odd", "pid": 1, "tid": 9, "ts": "x"}']
    path.write_text('{"traceEvents": [\n' + ",\n".join(lines) + "\n]}")
    t = load_trace(path)
    assert t.events["depth"].tolist() == list(range(20_000))
    assert t.notes == ("skipped 1 event: ts is missing or not a number",)


intervals = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 60), st.integers(0, 25)),
                     min_size=1, max_size=60)


@given(intervals)
@settings(max_examples=150, deadline=None)
def test_vectorised_tree_equals_stack_algorithm(items):
    """GIVEN random intervals on a few threads (nested, overlapping, zero-length, duplicate)
    WHEN the tree is built THEN the vectorised path with its fallback equals the reference
    stack algorithm exactly."""
    tid = np.array([i[0] for i in items], dtype=np.int64)
    ts = np.array([i[1] for i in items], dtype=np.int64)
    dur = np.array([i[2] for i in items], dtype=np.int64)
    order = np.lexsort((np.arange(len(ts)), -dur, ts))
    tid, ts, dur = tid[order], ts[order], dur[order]
    kinds = np.zeros(len(ts), dtype=np.int64)  # cpu_op
    tree_of_kind = np.array([0] * len(KINDS), dtype=np.int64)
    parent, depth = _build._tree(kinds, np.ones_like(tid), tid, ts, ts + dur, tree_of_kind)
    group = _build._group_ids(np.zeros_like(tid), np.ones_like(tid), tid)
    ref_parent, ref_depth = _build._tree_loop(group, ts, ts + dur)
    assert parent.tolist() == ref_parent.tolist()
    assert depth.tolist() == ref_depth.tolist()


# ----------------------------------------------------------------------------- data files

def test_hand_made_data_files():
    """GIVEN the small hand-made traces in tests/data WHEN loaded THEN each gives what its
    name promises (legacy string tids, B/E pairs, array format)."""
    legacy = load_trace(DATA / "legacy_min.json")
    assert legacy.source_format == "kineto-legacy"
    assert set(legacy.events["tid"]) - set(legacy.thread_names) == {25738, 7}
    assert legacy.memory["total_allocated_bytes"].tolist() == [-1, -1]
    be = load_trace(DATA / "begin_end.json")
    got = dict(zip(be.events["name"].astype(str), be.events["dur_ns"], strict=True))
    assert got == {"outer": 9500, "inner": 2000}
    assert be.source_format == "chrome-array"
    for f in sorted(DATA.glob("*.json*")):
        try:
            load_trace(f).check()
        except CkprofError:
            assert f.name.startswith("bad_"), f.name


@pytest.mark.parametrize("native", [False, True], ids=["processes", "native-threads"])
def test_parallel_pieces_give_the_same_trace(captured, shared_or_none, monkeypatch, tmp_path,
                                             fast_only, native):
    """GIVEN plain trace files, tiny pieces and 2 worker processes (forced on; 2 scanning
    threads when the native scanner is there) WHEN loading THEN the Trace equals the
    single-process one exactly."""
    if native and _native.scan is None:
        pytest.skip("native scanner not built")
    if not native:
        monkeypatch.setattr(_native, "scan", None)
        monkeypatch.setattr(_native, "tree", None)
    files = [captured["stack"]]
    if shared_or_none is not None:
        plain = tmp_path / "h100.json"
        plain.write_bytes(gzip.decompress((shared_or_none / "h100_bert_small.json.gz")
                                          .read_bytes()))
        files.append(plain)
    single = {f: load_trace(f) for f in files}
    monkeypatch.setattr(load_mod, "CHUNK_BYTES", 16 * 1024)
    monkeypatch.setattr(load_mod, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(load_mod, "NATIVE_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(_fast, "THREAD_PIECE_BYTES", 16 * 1024)
    monkeypatch.setenv("CKPROF_LOAD_WORKERS", "2")
    merged = []
    if native:  # count the pieces scanned off the main thread
        real_scan = _native.scan

        def scan(*args):
            if threading.current_thread() is not threading.main_thread():
                merged.append(1)
            return real_scan(*args)

        monkeypatch.setattr(_native, "scan", scan)
    else:
        real_merge = _fast._merge_piece
        monkeypatch.setattr(_fast, "_merge_piece", lambda c, p: (merged.append(1), real_merge(c, p)))
    for f, expected in single.items():
        merged.clear()
        assert_same_trace(load_trace(f), expected)
        assert len(merged) >= 2, "the worker processes / threads were not used"
    # an explicit workers=1 (what ckprof analyze DIR passes) wins over the environment
    merged.clear()
    assert_same_trace(load_trace(files[0], workers=1), single[files[0]])
    assert merged == [], "workers=1 must not start worker processes"


@pytest.fixture
def shared_or_none():
    return SHARED if SHARED.is_dir() else None


def test_odd_events_are_read_carefully_piece_by_piece(tmp_path, monkeypatch, fast_only):
    """GIVEN a Kineto-layout trace with odd events (string ts, NaN, a 4th decimal, negative
    and huge durations, a text pid) in the middle and at the very end, read in small pieces
    WHEN loaded THEN only those pieces are read the careful way (no whole-file fallback) and
    the Trace, notes included, equals the careful reader's."""
    lines = [f'  {{"ph": "X", "cat": "cpu_op", "name": "op{i % 7}", "pid": 1, "tid": {i % 3}, '
             f'"ts": {1000 + 10 * i}.5, "dur": 4.25, "args": {{"External id": {i}}}}}'
             for i in range(300)]
    lines[40] = '  {"ph": "X", "cat": "cpu_op", "name": "a", "pid": 1, "tid": 1, "ts": "5", "dur": 1}'
    lines[90] = '  {"ph": "X", "cat": "cpu_op", "name": "b", "pid": 1, "tid": 1, "ts": NaN, "dur": 1}'
    lines[140] = '  {"ph": "X", "cat": "cpu_op", "name": "c", "pid": 1, "tid": 1, "ts": 2400.1234, "dur": 1}'
    lines[190] = '  {"ph": "X", "cat": "cpu_op", "name": "d", "pid": 1, "tid": 1, "ts": 3000, "dur": 9999999999}'
    lines[240] = '  {"ph": "X", "cat": "cpu_op", "name": "e", "pid": "host", "tid": 1, "ts": 3500, "dur": 1}'
    lines[299] = '  {"ph": "X", "cat": "cpu_op", "name": "f", "pid": 1, "tid": 1, "ts": 4000, "dur": -1}'
    path = tmp_path / "odd.json"
    path.write_text('{\n  "traceEvents": [\n' + ",\n".join(lines) + '\n  ],\n  "traceName": "x"\n}\n')
    monkeypatch.setattr(load_mod, "CHUNK_BYTES", 2048)
    trace = load_trace(path)
    trace.check()
    assert_same_trace(trace, reference_load(path))
    by_name = trace.events.set_index("name")
    assert by_name.loc["c", "ts_ns"] == 2400123  # 2400.1234 µs, rounded half-even
    assert by_name.loc["d", "dur_ns"] == 9999999999000
    assert trace.thread_names[by_name.loc["e", "pid"]] == "host"
    assert set(trace.notes) == {"skipped 2 events: ts is missing or not a number",
                                "skipped 1 event: dur is negative"}
