"""Recompute, region names and first-run forward on the training setups people run
(tests/support/real_setups.py): tiny HF Llama / GPT-2 from a config with
gradient_checkpointing_enable (reentrant and not), checkpoint_wrapper,
checkpoint_sequential, selective checkpointing, nested checkpoints -- each checked
against a ground truth timed in the test itself (the checkpointed callables, timed
while ``torch._C._current_graph_task_id() != -1``), and the three detection methods
against each other."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from support.capture import one_torch_thread
from support.real_setups import HF_SETUPS, SETUPS, run_setup

torch = pytest.importorskip("torch")

import ckprof  # noqa: E402

#: slack for clock reads and the marker's own open/close, per occurrence (ns)
CLOCK_NS = 50_000


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("setups")
    have_hf = True
    try:
        import transformers  # noqa: F401
    except ImportError:
        have_hf = False
    return {name: run_setup(name, out) for name in SETUPS if have_hf or name not in HF_SETUPS}


def _setup(runs, name):
    if name not in runs:
        pytest.skip("transformers not installed")
    return runs[name]


def _regions(path: Path, method: str) -> dict[str, tuple[int, float, float]]:
    a = ckprof.load(path, recompute_detection=method)
    assert a.recompute_detection == method
    a.time.self_check()
    r = a.time.regions
    return {str(x.region): (int(x.count), float(x.wall_ns), float(x.forward_wall_ns))
            for x in r.itertuples()}


@pytest.mark.parametrize("name", SETUPS)
def test_markers_match_the_ground_truth(runs, name):
    """GIVEN a real setup captured with ckprof (no ckprof code in the model)
    WHEN recompute is found by markers
    THEN the regions are the checkpointed modules' paths (model.layers.0 ...), no
    phantom region exists (the capture metadata lists the same names), each region is
    recomputed as often as the ground truth saw it, its recompute time encloses the
    ground truth's (the marker wraps the call) and exceeds it by little, and its
    first-run forward time encloses the timed forward call."""
    run = _setup(runs, name)
    got = _regions(run.trace, "markers")
    truth = run.truth.regions()
    assert sorted(got) == sorted(run.expected) == sorted(truth)
    meta = json.loads(json.dumps(ckprof.load(run.trace).trace.ckprof))
    assert sorted(meta["checkpoint"]["regions"]) == sorted(run.expected)
    fwd_truth = run.truth.forward_ns()
    for region, (count, wall, fwd) in got.items():
        t_count, t_ns = truth[region]
        assert count == t_count >= 1, region
        assert wall >= t_ns - CLOCK_NS * count, (region, wall, t_ns)
        assert fwd >= fwd_truth[region] - CLOCK_NS * count, (region, fwd, fwd_truth[region])
    # occurrence by occurrence (same step, region, order): the marker's own cost is
    # small for most of them (a process stall inside a recompute window but outside the
    # timed call -- GC, a busy machine -- moves a few)
    occ = ckprof.load(run.trace).phases.recompute.sort_values("start_ns")
    extra = []
    for (step, region), grp in occ.groupby(["step", "region"]):
        calls = run.truth.calls[(int(step), str(region))]
        assert len(calls) == len(grp)
        extra += [int(e - s) - c for s, e, c in zip(grp["start_ns"], grp["end_ns"], calls,
                                                   strict=True)]
    extra.sort()
    assert extra[(len(extra) - 1) // 2] < 1e6, extra


@pytest.mark.parametrize("name", SETUPS)
def test_stack_and_sequence_name_regions_like_markers(runs, name):
    """GIVEN the same traces (captured with_stack=True)
    WHEN recompute is found by stack frames and by Sequence numbers
    THEN every occurrence carries the marker's region name (linked through the Sequence
    number of the backward node that recomputed it), counts agree, stack time encloses
    the marker range (recompute_fn wraps it) and sequence time lies inside it. Nested
    regions: the Sequence-number heuristic merges an outer and inner recompute triggered
    by one backward node (a documented limit): the inner name carries both."""
    run = _setup(runs, name)
    mk = _regions(run.trace, "markers")
    st = _regions(run.trace, "stack")
    sq = _regions(run.trace, "sequence")
    assert sorted(st) == sorted(mk)
    for region, (count, wall, _) in st.items():
        assert count == mk[region][0], region
        if name != "hf_llama_reentrant":     # reentrant: no recompute_fn, sequence rows
            assert wall >= mk[region][1] - CLOCK_NS * count, region
    assert set(sq) == set(mk)
    if name == "nested":
        merged = {r: v for r, v in sq.items() if v[0]}
        assert sorted(merged) == sorted(r for r in mk if r.endswith(".inner"))
        # each merged occurrence spans from the outer recompute range to the inner one
        mk_occ = ckprof.load(run.trace, recompute_detection="markers").phases.recompute
        sq_occ = ckprof.load(run.trace, recompute_detection="sequence").phases.recompute
        for occ in sq_occ.itertuples():
            hit = mk_occ[(mk_occ["end_ns"] > occ.start_ns) & (mk_occ["start_ns"] < occ.end_ns)]
            assert set(hit["region"]) == {occ.region, occ.region.rsplit(".", 1)[0]}
            assert hit["start_ns"].min() <= occ.start_ns and occ.end_ns <= hit["end_ns"].max()
        return
    for region, (count, wall, _) in sq.items():
        assert count == mk[region][0], region
        assert wall <= mk[region][1] + CLOCK_NS, region


def test_nested_inner_rerun_is_recompute_not_a_forward_run(runs):
    """GIVEN nested checkpoints (each block checkpoints its inner part)
    WHEN analysed
    THEN each inner region has one recompute per step (its re-run while the outer one
    is recomputed counts to the outer region) and its first-run forward time is the
    forward call only, never time inside backward."""
    run = runs["nested"]
    a = ckprof.load(run.trace)
    regions = a.time.regions.set_index("region")
    first = a.phases.forward_runs[a.phases.forward_runs["first_run"]]
    assert sorted(set(first["region"])) == sorted(run.expected)
    for block in ("blocks.0", "blocks.1", "blocks.2"):
        assert regions.loc[f"{block}.inner", "count"] == 2
        fwd = regions.loc[f"{block}.inner", "forward_wall_ns"]
        assert fwd < regions.loc[block, "forward_wall_ns"]
    assert not any("#" in r for r in regions.index)


@pytest.mark.parametrize("name", ["hf_llama", "checkpoint_wrapper"])
def test_first_run_forward_from_python_frames_without_markers(tmp_path, name):
    """GIVEN a setup captured with_stack=True but WITHOUT ckprof markers
    WHEN analysed (auto -> stack)
    THEN regions are named after the checkpointed module as the profiler names it
    (LlamaDecoderLayer_0, not the layer's first norm), each has its first-run forward
    time from the checkpoint() frames of the forward, enclosing the timed call, and the
    JSON / text never show 0 for an unknown value."""
    if name in HF_SETUPS:
        pytest.importorskip("transformers")
    from support import real_setups

    truth = real_setups.GroundTruth()
    built = real_setups.build(name, truth)
    optimizer = torch.optim.AdamW(built.model.parameters(), lr=1e-3)
    with ckprof.capture(tmp_path, wait=0, warmup=1, active=2, with_stack=True,
                        markers=False) as cap:
        for step in range(3):
            truth.step = step
            optimizer.zero_grad(set_to_none=True)
            built.run().backward()
            optimizer.step()
            cap.step()
    truth.record_steps = {1, 2}
    a = ckprof.load(cap.trace_paths[0])
    assert a.recompute_detection == "stack"
    regions = a.time.regions
    want_cls = "LlamaDecoderLayer" if name == "hf_llama" else "_Block"
    assert sorted(regions["region"]) == sorted(f"{want_cls}_{i}" for i in range(len(built.expected)))
    # the profiler numbers instances in call order: LlamaDecoderLayer_k is layer k
    fwd_truth = [ns for _, ns in sorted(truth.forward_ns().items())]
    got = regions.sort_values("region")["forward_wall_ns"].tolist()
    assert all(g >= t - 2 * CLOCK_NS for g, t in zip(got, fwd_truth, strict=True)), (got, fwd_truth)
    doc = a.to_dict()
    assert all(r["forward_wall_ms"] is not None and r["forward_wall_ms"] > 0 for r in doc["regions"])


def test_unknown_forward_time_is_null_and_dash(tmp_path):
    """GIVEN a plain profiler trace (no ckprof markers, no Python frames) of a
    checkpointed model WHEN analysed THEN regions are found by Sequence numbers, their
    first-run forward time is unknown: None in JSON and "—" in the text table, never 0."""
    from support.capture import capture_trace

    from ckprof.report.tables import render_text

    a = ckprof.load(capture_trace(tmp_path, "plain", steps=1))
    assert a.recompute_detection == "sequence" and len(a.time.regions)
    assert a.time.regions["forward_wall_ns"].isna().all()
    assert all(r["forward_wall_ms"] is None for r in a.to_dict()["regions"])
    table = render_text(a).split("Recompute by checkpointed region")[1].split("\n\n")[0]
    rows = [line.split() for line in table.splitlines()[3:] if line.strip()]
    assert rows and all(r[-1] == "—" for r in rows)
    assert not math.isnan(a.time.regions["wall_ns"].sum())
