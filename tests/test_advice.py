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
    in_any,
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


@pytest.fixture(scope="module")
def wide_trace(tmp_path_factory) -> Path:
    """TinyNet under full checkpointing at batch 512: activations, not the optimizer's
    state, set the peak (at the default batch AdamW's step does)."""
    from support.capture import capture_trace, one_torch_thread

    with one_torch_thread():
        return capture_trace(tmp_path_factory.mktemp("advice_wide"), "markers", steps=2,
                             batch=512)


def raw_kept_bytes(path: Path) -> dict[str, float]:
    """Per op type, per step: bytes its calls in the forward run of the checkpointed
    regions allocated that are still live when the call returns (raw JSON, LIFO
    pairing, allocator helpers lifted)."""
    return {op: sum(by_region.values()) for op, by_region in raw_outputs_by_region(path).items()}


def raw_outputs_by_region(path: Path) -> dict[str, dict[str, float]]:
    """``raw_kept_bytes`` split by the checkpointed region of the call."""
    raw = read_raw(path)
    mem = raw.memory
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    steps = len(raw.named("ProfilerStep#"))
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
        region = checkpoint_region(raw, owner.ts)
        if region and (b["free"] is None or mem[b["free"]]["ts"] >= owner.end):
            out[owner.name][region] += b["bytes"] / steps
    return out


def raw_blocks(path: Path, device: int = 0) -> tuple[list[str], dict[str, float], dict[str, int]]:
    """Per checkpointed region, per step, from the raw JSON: the regions in forward order
    (first ``ckprof::checkpoint::`` range), the recompute ms (``ckprof::recompute::``
    ranges) and the CPU bytes allocated inside a recompute range still live at its end."""
    raw = read_raw(path)
    steps = len(raw.named("ProfilerStep#"))
    ranges = raw.named("ckprof::recompute::")
    order: list[str] = []
    for ck in sorted(raw.named("ckprof::checkpoint::"), key=lambda e: e.ts):
        name = ck.name[len("ckprof::checkpoint::"):]
        if name not in order:
            order.append(name)
    wall: dict[str, int] = defaultdict(int)
    for r in ranges:
        wall[r.name[len("ckprof::recompute::"):]] += r.dur
    kept: dict[str, int] = defaultdict(int)
    mem = raw.memory
    for b in pair_blocks(mem):
        if b["alloc"] is None or mem[b["alloc"]]["device"] != device:
            continue
        r = in_any(mem[b["alloc"]]["ts"], ranges)
        if r is not None and (b["free"] is None or mem[b["free"]]["ts"] >= r.end):
            kept[r.name[len("ckprof::recompute::"):]] += b["bytes"]
    return (order, {k: v / 1e6 / steps for k, v in wall.items()},
            {k: v // steps for k, v in kept.items()})


def raw_peak_with(path: Path, extra: dict[str, float], device: int = 0) -> float:
    """How much higher the CPU peak gets when each region keeps ``extra`` more bytes
    from the end of its first forward run to the start of its recompute, in every step
    (raw JSON: the memory events' ``Total Allocated``, the ckprof:: ranges)."""
    raw = read_raw(path)
    mem = [m for m in raw.memory if m["device"] == device]
    rec = raw.named("ckprof::recompute::")
    windows = []
    for step in raw.named("ProfilerStep#"):
        inside = lambda e, s=step: s.ts <= e.ts < s.end  # noqa: E731
        for region, b in extra.items():
            runs = [e for e in raw.named(f"ckprof::checkpoint::{region}")
                    if inside(e) and in_any(e.ts, rec) is None and e.name.endswith(region)]
            again = [e for e in raw.named(f"ckprof::recompute::{region}")
                     if inside(e) and e.name.endswith(region)]
            if runs and again:
                windows.append((min(runs, key=lambda e: e.ts).end,
                                min(again, key=lambda e: e.ts).ts, b))
    steps = raw.named("ProfilerStep#")
    mem = [m for m in mem if any(s.ts <= m["ts"] < s.end for s in steps)]

    def level_at(t: int) -> int:
        before = [m["total"] for m in mem if m["ts"] <= t]
        return before[-1] if before else mem[0]["total"]

    def extra_at(t: int) -> float:
        return sum(b for lo, hi, b in windows if lo <= t < hi)

    top = max(m["total"] for m in mem)
    times = [m["ts"] for m in mem] + [lo for lo, _, _ in windows] + [hi for _, hi, _ in windows]
    return max(level_at(t) + extra_at(t) for t in times) - top


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
    when its ms/MiB reaches the threshold: checkpointing's own exchange rate, the
    blocks' recompute ms per MiB their recompute keeps for backward (both from the raw
    JSON); WHEN a budget under the trace's own peak is given THEN nothing fits and
    nothing is saved; with a budget far above it every candidate is saved, in rank
    order."""
    a = load(full_trace)
    adv = advise(a, dispatch_overhead_us=0)
    cand = adv.table[adv.table["rank"] > 0]
    saved = cand[cand["ms_per_mib"] >= adv.threshold_ms_per_mib]["op"].str[6:]
    assert adv.save_ops == tuple(saved)
    total_ms = adv.estimate["recompute_ms"]   # recompute ms per step, spikes clipped
    assert total_ms <= a.ops_table()["wall_ms"].sum() / 2 + 1e-9
    _, wall, kept = raw_blocks(full_trace)
    assert adv.estimate["blocks_kept_bytes"] == sum(kept.values()) > 0
    assert adv.estimate["blocks_recompute_ms"] == pytest.approx(sum(wall.values()), rel=1e-9)
    assert adv.threshold_ms_per_mib == pytest.approx(
        sum(wall.values()) / (sum(kept.values()) / 2**20), rel=1e-9)
    peak = int(a.memory_table()["peak_bytes"].max())
    # with a budget: ops at or above the ratio, in rank order, while the estimate fits
    assert advise(a, budget_bytes=peak - 1, dispatch_overhead_us=0).save_ops == ()
    big = advise(a, budget_bytes=peak * 10, dispatch_overhead_us=0)
    assert big.save_ops == adv.save_ops
    every = advise(a, budget_bytes=peak * 10, dispatch_overhead_us=0, threshold_ms_per_mib=0)
    assert every.save_ops == tuple(cand["op"].str[6:])


def test_saved_outputs_raise_the_peak_only_while_they_are_live(full_trace, wide_trace):
    """GIVEN TinyNet at batch 8 (AdamW's step sets the peak) and at batch 512 (the
    activations do) WHEN every candidate is saved THEN the estimated peak is the trace's
    live bytes with each region's saved outputs added from the end of its forward run to
    the start of its recompute (raw JSON): no higher than the trace's peak at batch 8,
    higher (but below the plain sum) at batch 512; and a budget just under that estimate
    saves less."""
    for path, rises in ((full_trace, False), (wide_trace, True)):
        a = load(path)
        peak = int(a.memory_table()["peak_bytes"].max())
        every = advise(a, budget_bytes=peak * 10, dispatch_overhead_us=0, threshold_ms_per_mib=0)
        cand = every.table[every.table["rank"] > 0]
        per_region = raw_outputs_by_region(path)
        extra: dict[str, float] = defaultdict(float)
        for op in cand["op"]:
            for region, b in per_region[op].items():
                extra[region] += b
        est = every.estimate["est_peak_bytes"]
        assert est == pytest.approx(peak + raw_peak_with(path, extra), abs=1)
        if not rises:
            assert est == peak
            continue
        assert peak < est < peak + cand["saved_bytes"].sum()
        short = advise(a, budget_bytes=int(est) - 2, dispatch_overhead_us=0,
                       threshold_ms_per_mib=0)
        assert len(short.save_ops) < len(every.save_ops)


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
    """GIVEN an advice WHEN its sweep spec is parsed (also with a label) THEN the same
    selective policy comes back under the same name; an empty advice is full
    checkpointing; WHEN the policy is the trace path itself THEN it is what the advice
    recommends, named advised, and its spec parses back to it (a sweep worker reruns
    it)."""
    adv = advise(load(full_trace), budget_bytes=10**12, dispatch_overhead_us=0,
                 threshold_ms_per_mib=0)
    pol = adv.policy()
    assert pol.kind == "selective" and set(pol.save_ops) == {"addmm", "gelu"}
    assert parse_policy(adv.sweep_spec) == pol
    labelled = adv.policy("advised-big")
    assert parse_policy(labelled.spec) == labelled and labelled.name == "advised-big"
    from_trace = parse_policy(f"advised:{full_trace}")
    # the trace form runs what the advice recommends (here none: TinyNet's peak is AdamW's)
    rec = advise(load(full_trace)).recommended_policy()
    assert from_trace.name == "advised" and from_trace.kind == rec.kind
    assert from_trace.chosen(3) == rec.chosen(3) and from_trace.save_ops == rec.save_ops
    assert parse_policy(from_trace.spec) == from_trace   # a sweep worker reruns it
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


def test_recommends_unchecked_blocks_when_they_buy_more(wide_trace, full_trace):
    """GIVEN TinyNet (3 blocks, batch 512) WHEN advised with every candidate saved at
    several dispatch costs, with and without a budget THEN the whole-block points are
    the trace's step minus the unchecked blocks' recompute and its live bytes replayed
    with what their recompute keeps (raw JSON, blocks 0, k, 2k ... in forward order
    checkpointed), and the advice recommends its selective list when it beats the
    whole-block envelope at its peak, else the fastest point needing no more memory than
    the list (than full when nothing is worth saving); with a budget, the fastest point
    within it."""
    order, wall, kept = raw_blocks(wide_trace)
    a = load(wide_trace)
    step_ms = a.step_total_ns / 1e6 / a.step_count
    plain = advise(a, dispatch_overhead_us=0)
    peak = plain.estimate["peak_bytes"]
    want = {}
    for name, checked in (("full", {0, 1, 2}), ("every_2", {0, 2}), ("every_3", {0}),
                          ("none", set())):
        off = [order[i] for i in range(3) if i not in checked]
        # an unchecked block keeps what its recompute keeps, from its forward on
        want[name] = (step_ms - sum(wall[r] for r in off),
                      peak + raw_peak_with(wide_trace, {r: kept[r] for r in off}))
    alt = plain.alternatives
    got = {r.policy: (r.est_step_ms, r.est_peak_bytes) for r in alt.itertuples(index=False)}
    assert set(got) == set(want)
    for name, (t, m) in want.items():
        assert got[name][0] == pytest.approx(t, rel=1e-9)
        assert got[name][1] == pytest.approx(m, abs=1)

    def fastest(rows):
        return min(rows, key=lambda kv: (kv[1][0], kv[1][1]))[0] if rows else None

    def envelope(m):
        """The whole-block points' lower convex envelope at peak m: the fastest of every
        point and every chord between two points that reach m."""
        pts = [(pm, t) for t, pm in want.values()]
        best = [t for pm, t in pts if pm <= m]
        best += [t0 + (t1 - t0) * (m - m0) / (m1 - m0) for m0, t0 in pts for m1, t1 in pts
                 if m0 <= m <= m1 and m1 > m0]
        return min(best, default=float("inf"))

    seen = set()
    for per_op_us in (0.0, 1.0, 30.0, 1e6):
        for budget in (None, int(want["every_2"][1]), int(peak) - 1):
            adv = advise(a, dispatch_overhead_us=per_op_us, budget_bytes=budget,
                         threshold_ms_per_mib=0)
            est = adv.estimate
            sac = (est["est_step_ms"], est["est_peak_bytes"]) if adv.save_ops else None
            if budget is None:
                free = [kv for kv in want.items() if kv[1][1] <= want["full"][1]]
                expect = fastest(free) if sac is None else (
                    "advised" if sac[0] <= envelope(sac[1]) else
                    fastest([kv for kv in want.items() if kv[1][1] <= sac[1]]) or
                    min(want, key=lambda n: want[n][1]))
            else:
                fits = [kv for kv in want.items() if kv[1][1] <= budget]
                if sac and sac[1] <= budget and (not fits or sac[0] <= min(v[0] for _, v in fits)):
                    expect = "advised"
                else:
                    expect = fastest(fits) or "full"
            assert adv.recommended == expect, (per_op_us, budget, sac, want)
            seen.add(expect)
            pol = adv.recommended_policy("advised")
            assert pol.name == "advised"
            if expect == "advised":
                assert pol == adv.policy()
            else:
                assert pol.chosen(3) == parse_policy(expect).chosen(3)
                if adv.save_ops:
                    assert any(f"recommended {expect}" in n for n in adv.notes)
    assert "full" in seen and len(seen) >= 2
    # GIVEN TinyNet at batch 8, whose peak is AdamW's step WHEN nothing is worth saving
    # THEN unchecked blocks cost no peak and the advice recommends none
    small = advise(load(full_trace), dispatch_overhead_us=1e6)
    assert small.save_ops == () and small.recommended == "none"
    assert any("does not raise the peak" in n for n in small.notes)


def test_report_page_has_the_advice(full_trace, tmp_path):
    """GIVEN a real full-checkpointing trace WHEN `ckprof report` writes its page THEN the
    page has the advice section: the recommendation the advice gives, the estimated point
    of every whole-block policy and each candidate op; GIVEN a trace without memory THEN
    the section says why there is no advice instead of failing the report."""
    import html as html_lib

    from ckprof.analysis import analyze
    from ckprof.strategy.advice import advice_section

    out = tmp_path / "r.html"
    res = CliRunner().invoke(cli, ["report", str(full_trace), "-o", str(out)])
    assert res.exit_code == 0, res.output
    page = html_lib.unescape(out.read_text())
    section = page[page.index('<section id="advice">'):]
    section = section[:section.index("</section>")]
    adv = advise(load(full_trace))
    assert "Recommended:" in section
    if adv.recommended == "advised":
        assert "save " + ", ".join(adv.save_ops) in section
    else:
        assert f"run <b>{adv.recommended}</b>" in section
    for r in adv.alternatives.itertuples(index=False):
        assert f">{r.policy}<" in section
    for op in adv.table.loc[adv.table["rank"] > 0, "op"]:
        assert f">{op}<" in section
    a = load(full_trace)
    no_memory = analyze(a.trace.with_frames(memory=a.trace.memory.iloc[0:0]))
    assert "No advice: " in advice_section(no_memory)


def test_real_gpu_trace_whose_peak_is_the_optimizers():
    """GIVEN a real H200 trace of a 4-block transformer under full checkpointing
    (tests/data/gpu/h200, ckprof markers), whose CUDA peak is AdamW's step WHEN advised
    THEN replaying every block's kept bytes (raw JSON, CUDA events) stays under that
    peak, so no whole-block policy costs memory and, nothing being worth saving, the
    advice recommends none and says why."""
    path = Path(__file__).parent / "data" / "gpu" / "h200" / "eager_markers.pt.trace.json.gz"
    a = load(path)
    adv = advise(a)
    assert adv.device == "cuda:0" and adv.cost_basis in ("GPU time", "wall time")
    order, _, kept = raw_blocks(path, device=1)
    # the ground-truth run wrapped each block's callable in a timer: regions are named
    # after it
    assert len(order) == 4 and set(kept) == set(order)
    assert raw_peak_with(path, dict(kept), device=1) == 0 < sum(kept.values())
    assert (adv.alternatives["est_peak_bytes"] == adv.estimate["peak_bytes"]).all()
    assert adv.save_ops == () and adv.recommended == "none"
    assert any("does not raise the peak" in n for n in adv.notes)


def test_kept_bytes_windows_pair_each_micro_batch_with_its_own_recompute():
    """GIVEN one step of gradient accumulation: block a runs forward twice (micro-batches
    1 and 2) and is recomputed after each WHEN the windows its kept bytes live in are
    found THEN each forward run pairs with the recompute that follows it (two windows,
    none dropped); a run with no recompute after it has none."""
    import pandas as pd

    from ckprof.strategy.advice import _keep_windows

    runs = pd.DataFrame({"step": [1, 1, 1], "region": ["a", "a", "b"],
                         "end_ns": [100, 300, 500]})
    occ = pd.DataFrame({"step": [1, 1, 1], "region": ["a", "a", "b"],
                        "start_ns": [400, 200, 450]})
    win = _keep_windows(runs, occ)
    assert list(win.itertuples(index=False, name=None)) == [(1, "a", 100, 200), (1, "a", 300, 400)]
