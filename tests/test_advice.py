"""Selective-checkpointing advice (ckprof.strategy.advice): costs and bytes per op type
on a REAL full-checkpointing trace against a raw-JSON reconstruction, the decisions,
the budget form, the policy round trip, the pasted code run under torch, and an
end-to-end run of the advised policy."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.raw_reference import (
    checkpoint_region,
    innermost_op,
    owner_of_alloc,
    pair_blocks,
    phase_at,
    read_raw,
)

from ckprof.analysis import load
from ckprof.cli.main import cli
from ckprof.errors import NotCapturedError
from ckprof.strategy.advice import advise
from ckprof.strategy.policies import Policy, parse_policy

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def full_trace(tmp_path_factory) -> Path:
    from support.capture import capture_trace, one_torch_thread

    with one_torch_thread():
        return capture_trace(tmp_path_factory.mktemp("advice"), "markers", steps=2)


def raw_kept_bytes(path: Path) -> dict[str, float]:
    """Per op type, per step: bytes its calls in the forward run of the checkpointed
    regions allocated that are still live when the call returns (raw JSON, LIFO
    pairing, allocator helpers lifted)."""
    raw = read_raw(path)
    mem = raw.memory
    out: dict[str, int] = defaultdict(int)
    for b in pair_blocks(mem):
        if b["alloc"] is None:
            continue
        m = mem[b["alloc"]]
        if phase_at(raw, m["ts"])[0] != "forward":
            continue
        op = innermost_op(raw, m["tid"], m["ts"])
        if op is None:
            continue
        owner = owner_of_alloc(op)
        if not checkpoint_region(raw, owner.ts):
            continue
        if b["free"] is None or mem[b["free"]]["ts"] >= owner.end:
            out[owner.name] += b["bytes"]
    steps = len(raw.named("ProfilerStep#"))
    return {k: v / steps for k, v in out.items()}


def test_bytes_and_ranking_match_the_raw_trace(full_trace):
    """GIVEN a real trace of TinyNet under full checkpointing WHEN advised THEN each
    candidate's bytes per step equal the raw-JSON reconstruction, candidates are exactly
    the aten ops that keep something (addmm, gelu), ranked by ms per MiB, and views or
    in-place ops are never advised."""
    a = load(full_trace)
    adv = advise(a, dispatch_overhead_us=0)
    t = adv.table
    cand = t[t["rank"] > 0]
    want = raw_kept_bytes(full_trace)
    assert dict(zip(cand["op"], cand["saved_bytes"], strict=True)) == {
        k: v for k, v in want.items() if k.startswith("aten::") and not k.endswith("_")}
    assert set(cand["op"]) == {"aten::addmm", "aten::gelu"}
    # 3 blocks x 8x64 floats: fc1 and fc2 outputs for addmm (fc2's too, although early
    # stop never recomputes it: SAC would store it), one gelu output
    assert cand.set_index("op")["saved_bytes"].to_dict() == {"aten::addmm": 6 * 2048,
                                                             "aten::gelu": 3 * 2048}
    dens = cand["ms_per_mib"].to_numpy()
    assert (dens[:-1] >= dens[1:]).all() and (cand["rank"].to_numpy() == [1, 2]).all()
    assert set(t.loc[t["rank"] == 0, "decision"]) == {"recompute"}
    # every recompute ms goes to exactly one op type: a candidate's cost holds the ops it
    # calls (expand, copy_ inside addmm), the rest stays with the non-candidates
    assert t["cost_ms"].sum() == pytest.approx(adv.estimate["recompute_ms"])
    assert t.loc[t["op"].isin(["aten::expand", "aten::copy_"]), "cost_ms"].sum() == 0


def test_default_threshold_and_budget(full_trace):
    """GIVEN the same trace WHEN advised without a budget THEN an op is saved exactly
    when its ms/MiB reaches the threshold (all recompute time per MiB kept); WHEN a
    budget equal to the trace's own peak is given THEN nothing fits and nothing is
    saved; with a budget far above it every candidate is saved, in rank order."""
    a = load(full_trace)
    adv = advise(a, dispatch_overhead_us=0)
    cand = adv.table[adv.table["rank"] > 0]
    saved = cand[cand["ms_per_mib"] >= adv.threshold_ms_per_mib]["op"].str[6:]
    assert adv.save_ops == tuple(saved)
    total_ms = adv.estimate["recompute_ms"]   # recompute ms per step, spikes clipped
    assert total_ms <= a.ops_table()["wall_ms"].sum() / 2 + 1e-9
    assert adv.threshold_ms_per_mib == pytest.approx(total_ms / (cand["saved_bytes"].sum() / 2**20))
    peak = int(a.memory_table()["peak_bytes"].max())
    # with a budget: ops at or above the ratio, in rank order, while the estimate fits
    assert advise(a, budget_bytes=peak, dispatch_overhead_us=0).save_ops == ()
    big = advise(a, budget_bytes=peak * 10, dispatch_overhead_us=0)
    assert big.save_ops == adv.save_ops
    every = advise(a, budget_bytes=peak * 10, dispatch_overhead_us=0, threshold_ms_per_mib=0)
    assert every.save_ops == tuple(cand["op"].str[6:])
    assert every.estimate["est_peak_bytes"] == peak + cand["saved_bytes"].sum()
    first = cand.iloc[0]
    tight = advise(a, budget_bytes=int(peak + first["saved_bytes"]), dispatch_overhead_us=0,
                   threshold_ms_per_mib=0)
    assert tight.save_ops == (first["op"][6:],)


def test_a_preempted_call_is_clipped_to_three_times_its_peers():
    """GIVEN 4 recompute occurrences of the same two calls, one of them 100x slower once
    (a preempted thread) WHEN costs are cleaned THEN that call counts 3x the median of
    the same call elsewhere, and every other call keeps its time."""
    import pandas as pd

    from ckprof.strategy.advice import _clip_spikes

    rows = []
    for step in (1, 2):
        for region in ("a", "b"):
            rows += [{"event": len(rows), "op": "aten::mm", "step": step, "region": region,
                      "self_ns": 1000, "gpu_ns": 0},
                     {"event": len(rows) + 1, "op": "aten::mm", "step": step, "region": region,
                      "self_ns": 4000, "gpu_ns": 0}]
    rows[5]["self_ns"] = 400_000   # second mm of (step 2, region a)
    out = _clip_spikes(pd.DataFrame(rows))
    assert out["self_ns"].tolist() == [1000, 4000, 1000, 4000, 1000, 12000, 1000, 4000]


def test_dispatch_overhead_can_make_saving_not_worth_it(full_trace):
    """GIVEN TinyNet, whose recomputed matmuls take a few microseconds WHEN advised with
    the dispatch mode's per-op cost THEN the estimate counts one intercepted op per
    sequence-numbered call of the regions' forward and recompute, and when that costs
    more than the saved ops buy back the advice saves nothing (full checkpointing) and
    says why; at 0 us per op (and room in the budget) the ops are saved."""
    a = load(full_trace)
    free = advise(a, budget_bytes=10**12, dispatch_overhead_us=0, threshold_ms_per_mib=0)
    calls = a.ops.calls
    seq = a.trace.events["seq"].to_numpy()
    inside = calls[(calls["phase"] == "recompute")
                   | ((calls["phase"] == "forward") & (calls["region"] != ""))]
    n = int((seq[inside["event"].to_numpy()] >= 0).sum()) / 2
    costly = advise(a, budget_bytes=10**12, dispatch_overhead_us=1e6, threshold_ms_per_mib=0)
    assert costly.estimate["dispatched_ops"] == n > 0
    assert costly.estimate["dispatch_overhead_ms"] == pytest.approx(n * 1e3)
    assert free.save_ops and costly.save_ops == ()
    assert any("would not pay off" in note for note in costly.notes)
    assert costly.policy().chosen(3) == Policy.full().chosen(3)


def test_policy_round_trip_and_trace_form(full_trace):
    """GIVEN an advice WHEN its sweep spec is parsed (also with a label, and from the
    trace path itself) THEN the same selective policy comes back under the same name;
    an empty advice is full checkpointing."""
    adv = advise(load(full_trace), budget_bytes=10**12, dispatch_overhead_us=0,
                 threshold_ms_per_mib=0)
    pol = adv.policy()
    assert pol.kind == "selective" and set(pol.save_ops) == {"addmm", "gelu"}
    assert parse_policy(adv.sweep_spec) == pol
    labelled = adv.policy("advised-big")
    assert parse_policy(labelled.spec) == labelled and labelled.name == "advised-big"
    from_trace = parse_policy(f"advised:{full_trace}")
    assert from_trace.name == "advised" and from_trace.kind in ("selective", "every")
    assert parse_policy("advised:").chosen(4) == Policy.full().chosen(4)
    with pytest.raises(ValueError, match="needs its ops"):
        parse_policy("advised")


def test_pasted_code_runs_and_saves_the_ops():
    """GIVEN the code an advice prints WHEN executed with torch and used as the
    context_fn of a checkpointed block THEN its policy saves exactly the listed ops and
    the gradients equal those without checkpointing."""
    from ckprof.strategy.advice import Advice

    adv = Advice(table=None, save_ops=("addmm",), threshold_ms_per_mib=1.0, cost_basis="wall time",
                 device="cpu", budget_bytes=None, estimate={}, source="test")
    scope: dict = {}
    exec(adv.code(), scope)  # running the pasted code is the point of the test
    from torch.utils.checkpoint import CheckpointPolicy

    assert scope["policy"](None, torch.ops.aten.addmm.default) == CheckpointPolicy.MUST_SAVE
    assert scope["policy"](None, torch.ops.aten.gelu.default) == CheckpointPolicy.PREFER_RECOMPUTE
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 8))
    x = torch.randn(4, 8, requires_grad=True)
    block(x).sum().backward()
    want = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    scope["checkpoint"](block, x, use_reentrant=False, context_fn=scope["context_fn"]).sum().backward()
    for p, g in zip(block.parameters(), want, strict=True):
        assert torch.allclose(p.grad, g)


def test_advised_policy_runs_in_a_sweep_and_stops_recomputing_saved_ops(full_trace, tmp_path):
    """GIVEN the advice saving addmm WHEN ckprof.sweep runs it on TinyNet (inline, 2
    steps) THEN the run's trace shows recompute still rebuilding gelu's output but no
    memory allocated by addmm in recompute: the saved op is served from forward."""
    from support.capture import TinyNet

    import ckprof

    def make():
        torch.manual_seed(0)
        return TinyNet(), (torch.randn(8, 64),), None

    pol = Policy.advised(["addmm"])
    res = ckprof.sweep(make, policies=[pol], steps=2, warmup=0, isolation="inline",
                       out_dir=tmp_path, threads=1)
    assert list(res.table["policy"]) == ["advised"]
    run = load(res.traces[0][2])
    blocks = run.composition.blocks
    rec = blocks[blocks["origin_phase"] == "recompute"]
    assert "aten::gelu" in set(rec["op"]) and "aten::addmm" not in set(rec["op"])


def test_cli_advise_formats_and_missing_memory(full_trace, tmp_path):
    """GIVEN the trace WHEN `ckprof advise` runs THEN the table names the sweep policy
    and the code to paste; --format json parses and lists the ops; a trace without
    memory exits 7 with a one-line reason."""
    res = CliRunner().invoke(cli, ["advise", str(full_trace)])
    assert res.exit_code == 0, res.output
    assert "sweep policy: advised:" in res.output and "create_selective_checkpoint_contexts" in res.output
    res = CliRunner().invoke(cli, ["advise", str(full_trace), "--format", "json",
                                   "--memory-budget", "1GiB"])
    data = json.loads(res.output)
    assert data["budget_bytes"] == 2**30 and {o["op"] for o in data["ops"]} >= {"aten::addmm"}
    from support.builders import TraceBuilder

    b = TraceBuilder()
    b.step(1, 0, 100)
    b.marker("recompute:r", 10, 50)
    b.op("aten::mm", 20, 10)
    path = b.write(tmp_path / "nomem.json")
    res = CliRunner().invoke(cli, ["advise", str(path)])
    assert res.exit_code == NotCapturedError.exit_code and "memory" in res.output
    assert "Traceback" not in res.output


H200 = Path(__file__).parent / "data" / "gpu" / "h200"


def test_on_a_real_gpu_trace_dispatch_estimate_and_launch_bound_costs():
    """GIVEN the H200 traces of one MLP (full checkpointing with markers; the same model
    under selective checkpointing, plain torch.profiler) WHEN the checkpointed trace is
    advised THEN the estimated ops SAC intercepts per step are within 10% of the
    PythonDispatchMode frames the SAC trace shows, and since recompute keeps the GPU
    busy less than half its wall time (launch-bound) the costs are wall time."""
    full = load(H200 / "eager_markers.pt.trace.json.gz")
    sac = load(H200 / "sac_plain.pt.trace.json.gz")
    ev = sac.trace.events
    pdm = ev[ev["name"] == "PythonDispatchMode"]
    step, _phase, _region = sac.phases.lookup(pdm["ts_ns"].to_numpy())
    per_step = (step >= 0).sum() / len(sac.phases.steps)
    adv = advise(full)
    assert adv.estimate["dispatched_ops"] == pytest.approx(per_step, rel=0.10)
    util = full.gpu_table().set_index("phase").loc["recompute", "utilization_pct"]
    assert util < 50 and adv.cost_basis == "wall time"
    assert any("launch-bound" in n for n in adv.notes)


def test_recommends_unchecked_blocks_when_they_buy_more(full_trace):
    """GIVEN TinyNet (3 blocks) WHEN advised with every candidate saved (no ratio floor,
    room in the budget) at several dispatch costs THEN the advice recommends its own
    selective list exactly when what the saved ops buy back, net of the dispatch cost,
    beats the same memory spent on unchecked blocks at the recompute's own ratio (all
    recompute ms per MiB of all candidates), every_<k> otherwise, and full when the
    dispatch cost eats the whole gain."""
    from ckprof.strategy.advice import MIB, _every_k_for

    a = load(full_trace)
    kw = {"budget_bytes": 10**12, "threshold_ms_per_mib": 0}
    for per_op_us in (0.0, 1.0, 1e6):
        adv = advise(a, dispatch_overhead_us=per_op_us, **kw)
        t = adv.table
        cand = t[t["rank"] > 0]
        ratio = adv.estimate["recompute_ms"] / (cand["saved_bytes"].sum() / MIB)
        saved = t[t["decision"] == "save"]
        net = saved["cost_ms"].sum() - adv.estimate["dispatch_overhead_ms"]
        if not adv.save_ops:
            assert adv.recommended == "full" and per_op_us == 1e6
        elif net < ratio * saved["saved_bytes"].sum() / MIB:
            assert adv.recommended.startswith("every_")
            assert adv.recommended_policy().kind == "every"
            assert any("recommended every_" in n for n in adv.notes)
        else:
            assert adv.recommended == "advised" and adv.recommended_policy() == adv.policy()
    assert _every_k_for(0.5, 4) == 2 and _every_k_for(0.75, 4) == 4 and _every_k_for(0.2, 1) == 1
