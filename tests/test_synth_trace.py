"""benchmarks/synth_trace.py: realistic synthetic Kineto GPU traces.

The generator feeds the speed benchmark and the multi-rank tests, so what matters is
that its text is what Kineto writes (layout the loader's fast path relies on, field
shapes of the real GPU traces), that it is deterministic, and that ckprof reads it.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_generator():
    spec = importlib.util.spec_from_file_location("synth_trace", REPO / "benchmarks" / "synth_trace.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["synth_trace"] = module
    spec.loader.exec_module(module)
    return module


synth = _load_generator()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """GIVEN a 3-step, 3-layer trace (blocks 0 and 2 checkpointed), world size 2, rank 1."""
    path = tmp_path_factory.mktemp("synth") / "rank1.json"
    info = synth.write_trace(path, steps=3, layers=3, checkpoint_every=2, rank=1, world_size=2, seed=7)
    text = path.read_text()
    return info, text, json.loads(text)


def _events(doc, ph=None, cat=None, name=None):
    return [e for e in doc["traceEvents"]
            if (ph is None or e.get("ph") == ph) and (cat is None or e.get("cat") == cat)
            and (name is None or e.get("name") == name)]


def test_layout_is_kinetos(small):
    """GIVEN the generated text
    WHEN it is split at every "\\n  {" (Kineto starts each event on its own line)
    THEN each piece is exactly one event of traceEvents, in the file order Kineto uses:
    metadata first, ops/kernels/flows by ts, then all [memory], then all python_function,
    and the top-level keys (incl. distributedInfo and ckprof) precede traceEvents."""
    info, text, doc = small
    head, _, body = text.partition('"traceEvents": [')
    for key in ("schemaVersion", "deviceProperties", "distributedInfo", "ckprof"):
        assert f'"{key}"' in head
    assert '"traceName"' in body.rsplit("]", 1)[1]
    pieces = body.split("\n  {")[1:]
    events = doc["traceEvents"]
    assert len(pieces) == len(events) == info.events
    last = events[-1]
    for piece, event in zip(pieces[:-1], events[:-1], strict=True):
        assert json.loads("{" + piece.rstrip().rstrip(",")) == event
    assert json.loads("{" + pieces[-1].rsplit("]", 1)[0].rstrip()) == last

    kinds = ["tail" if e.get("pid") in ("Spans", "Traces", "") else "meta" if e["ph"] == "M"
             else "memory" if e.get("name") == "[memory]" else "python" if e.get("cat") == "python_function"
             else "op" for e in events]
    order = {"meta": 0, "op": 1, "memory": 2, "python": 3, "tail": 4}
    ranks = [order[k] for k in kinds]
    assert ranks == sorted(ranks), "sections out of Kineto's order"
    for section in ("op", "memory", "python"):
        ts = [float(e["ts"]) for e, k in zip(events, kinds, strict=True) if k == section]
        assert ts == sorted(ts), f"{section} events not in timestamp order"
    # Kineto's number format: microseconds with exactly three decimals
    assert re.search(r'"ts": \d+\.\d{3}, "dur": \d+\.\d{3},', text)


def test_event_mix_and_fields(small):
    """GIVEN the generated trace
    THEN it has every event kind a GPU training trace has, with Kineto's fields, and the
    ids link up: each kernel's correlation is one launch's, ac2g and fwdbwd flows pair."""
    info, _, doc = small
    mix = Counter((e["ph"], e.get("cat")) for e in doc["traceEvents"])
    for key in [("X", "cpu_op"), ("X", "cuda_runtime"), ("X", "kernel"), ("s", "ac2g"), ("f", "ac2g"),
                ("s", "fwdbwd"), ("f", "fwdbwd"), ("i", "cpu_instant_event"), ("X", "python_function"),
                ("X", "user_annotation"), ("X", "gpu_user_annotation"), ("M", None)]:
        assert mix[key] > 0, key
    launches = {e["args"]["correlation"]: e for e in _events(doc, "X", "cuda_runtime", "cudaLaunchKernel")}
    kernels = _events(doc, "X", "kernel")
    assert {k["args"]["correlation"] for k in kernels} == set(launches)
    for k in kernels:
        launch = launches[k["args"]["correlation"]]
        assert k["args"]["External id"] == launch["args"]["External id"]
        assert float(k["ts"]) >= float(launch["ts"])
        assert k["pid"] == 1 and k["tid"] in (7, 20)  # device = rank % 8, streams
    for cat in ("ac2g", "fwdbwd"):
        assert Counter(e["id"] for e in _events(doc, "s", cat)) == Counter(e["id"] for e in _events(doc, "f", cat))
    ops = _events(doc, "X", "cpu_op")
    assert all({"External id", "Record function id", "Ev Idx"} <= set(o["args"]) for o in ops)
    with_seq = [o for o in ops if "Sequence number" in o["args"]]
    assert with_seq and all("Fwd thread id" in o["args"] for o in with_seq)
    assert any("Input Dims" in o["args"] for o in ops)
    mem = _events(doc, "i", "cpu_instant_event", "[memory]")
    assert len(mem) == info.memory_events
    assert all(m["args"]["Device Type"] == 1 and m["args"]["Total Allocated"] > 0 for m in mem)
    pys = _events(doc, "X", "python_function")
    assert len(pys) == info.python_events
    assert len({p["args"]["Python id"] for p in pys}) == len(pys)
    assert any("checkpoint.py" in p["name"] and "recompute_fn" in p["name"] for p in pys)
    assert doc["distributedInfo"]["rank"] == 1 and doc["ckprof"]["rank"] == 1
    assert set(doc["ckprof"]["checkpoint"]["regions"]) == set(info.regions) == {"blk0", "blk2"}


def test_markers_follow_ckprof_semantics(small):
    """GIVEN the generated trace
    THEN every step has one forward, backward and optimizer marker inside its
    ProfilerStep, and each checkpointed block is recomputed once per step on the
    autograd thread, inside backward, with grad-mode (Sequence number) ops inside."""
    info, _, doc = small
    steps = _events(doc, "X", "user_annotation")
    by_name = Counter(e["name"] for e in steps)
    n = info.steps
    assert by_name["ckprof::forward"] == by_name["ckprof::backward"] == by_name["ckprof::optimizer"] == n
    assert sorted(int(e["name"].split("#")[1]) for e in steps if e["name"].startswith("ProfilerStep#")) \
        == info.step_numbers
    assert by_name["Optimizer.step#AdamW.step"] == n
    for region in info.regions:
        assert by_name[f"ckprof::checkpoint::{region}"] == n
        assert by_name[f"ckprof::recompute::{region}"] == n
    assert not any(name.endswith("blk1") for name in by_name)
    backward = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in steps if e["name"] == "ckprof::backward"]
    main_tid = next(e for e in steps if e["name"] == "ckprof::forward")["tid"]
    ops = _events(doc, "X", "cpu_op")
    for rec in (e for e in steps if e["name"].startswith("ckprof::recompute::")):
        start, end = float(rec["ts"]), float(rec["ts"]) + float(rec["dur"])
        assert rec["tid"] != main_tid
        assert any(b0 <= start and end <= b1 for b0, b1 in backward)
        inside = [o for o in ops if o["tid"] == rec["tid"] and start <= float(o["ts"]) < end]
        assert inside and any("Sequence number" in o["args"] for o in inside)


def test_deterministic_and_seeded(tmp_path):
    """GIVEN two writes with the same options THEN the bytes are identical; a different
    seed or rank gives a different trace; gzip holds the same text."""
    a, b, c, d = (tmp_path / n for n in ("a.json", "b.json", "c.json", "d.json.gz"))
    kw = dict(steps=2, layers=2, seed=3)
    synth.write_trace(a, **kw)
    synth.write_trace(b, **kw)
    synth.write_trace(c, steps=2, layers=2, seed=4)
    synth.write_trace(d, gzip=True, **kw)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert gzip.decompress(d.read_bytes()) == a.read_bytes()


def test_size_target_and_layouts(tmp_path):
    """GIVEN a size target THEN the file reaches it, overshooting by less than one step;
    the expanded (torch 2.13) layout is valid JSON with one event per "\\n  {" too."""
    path = tmp_path / "one.json"
    info = synth.write_trace(path, size_mb=1.0, layers=2)
    size = path.stat().st_size
    assert size == info.bytes_written >= synth.MIB
    one_step = synth.write_trace(tmp_path / "step.json", steps=1, layers=2).bytes_written
    assert size < synth.MIB + one_step
    exp = tmp_path / "exp.json"
    info = synth.write_trace(exp, steps=1, layers=2, layout="expanded")
    text = exp.read_text()
    assert '"dur": ' in text and '\n    ,\n    "args"' in text
    assert len(json.loads(text)["traceEvents"]) == info.events == text.count("\n  {")


def test_cli_writes_file(tmp_path):
    """GIVEN the command line WHEN asked for 2 steps of rank 3 THEN it writes that."""
    out = tmp_path / "r3.json"
    assert synth.main(["--steps", "2", "--layers", "2", "--rank", "3", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["distributedInfo"]["rank"] == 3 and doc["distributedInfo"]["world_size"] == 8


def test_loads_with_ckprof(small, tmp_path):
    """GIVEN a generated trace WHEN ckprof's loader reads it THEN the Trace passes its
    contract check and holds every complete event and every [memory] event; the
    analysis finds the checkpointed regions by their markers."""
    from ckprof.trace import load

    info, text, doc = small
    path = tmp_path / "t.json"
    path.write_text(text)
    trace = load.load_trace(path)
    trace.check()
    complete = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(trace.events) == len(complete)
    assert len(trace.memory) == info.memory_events
    assert trace.has_gpu and trace.has_markers
    assert dict(trace.ckprof)["rank"] == 1
    import ckprof.analysis as analysis_mod

    a = analysis_mod.analyze(trace)
    assert a.recompute_detection == "markers"
    assert sorted(a.phases.steps["step"].tolist()) == info.step_numbers
    assert set(a.regions_table()["region"]) == set(info.regions)
    assert (a.regions_table()["count"] == info.steps).all()


def test_gradient_accumulation(tmp_path):
    """GIVEN 2 micro-batches per step WHEN written THEN each ProfilerStep holds two
    forward/backward passes (each recomputing every checkpointed block) and one optimizer
    step, and ckprof counts each region's recompute twice per step."""
    path = tmp_path / "accum.json"
    info = synth.write_trace(path, steps=2, layers=2, checkpoint_every=1, microbatches=2)
    doc = json.loads(path.read_text())
    names = Counter(e["name"] for e in _events(doc, "X", "user_annotation"))
    assert names["ckprof::forward"] == names["ckprof::backward"] == 4
    assert names["ckprof::recompute::blk0"] == names["ckprof::recompute::blk1"] == 4
    assert names["ckprof::optimizer"] == names["Optimizer.step#AdamW.step"] == 2
    import ckprof.analysis as analysis_mod

    a = analysis_mod.load(path)
    regions = a.regions_table().set_index("region")["count"]
    assert regions.to_dict() == {r: 2 * info.steps for r in info.regions}
