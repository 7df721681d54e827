"""A/B and interleaved sweep: do their verdicts survive this machine's noise? (issue 13)

For the demo transformer (ckprof.capture.demo) and a small HF-style transformer (a tiny
Llama from a config, no download), prints, every figure measured in this run:

1. **A/B cost against a separately timed pair.** ``ckprof.capture(ab=True)`` gives the
   measured cost of checkpointing (median step on vs off, steps interleaved
   on, off, off, on) on its ``--ab-wait`` unprofiled steps (timed by the wall clock) and
   on its profiled steps, each with a noise band (half the relative IQR of each
   variant, in points); the unprofiled one is compared. The separately timed pair is what a user would do without ckprof: one run
   of ``--pair-steps`` steps with checkpointing, then one without (no profiler, timed
   with perf_counter), cost = ratio of the two medians; ``--pairs`` such pairs (order
   alternating), their median cost, and as band the larger of the within-run spread
   and half the range of the pairs' costs. Target: the A/B cost and the pairs' median
   differ by less than the sum of the bands ("within noise").
2. **Sweep run-to-run spread and ranking flips.** ``ckprof.sweep`` (interleaved, the
   default) over none / full / every_2 / selective, ``--reps`` times: each policy's
   median per repetition and their spread ((max - min) / mean), how many repetitions
   measured full slower than none (a flip = a repetition disagreeing with the
   majority), and how many printed rankings claimed a checkpointing policy faster than
   none beyond noise (``X < none``: they must not).
   Also: pairs of policies printed in opposite orders (beyond noise) by different
   repetitions. Target: no flip, no contradiction. ``--sequential`` also runs the
   former schedule (each policy in its own block) for contrast.

Usage::

    python benchmarks/bench_ab_sweep.py                 # both models, 3 repetitions
    python benchmarks/bench_ab_sweep.py --models demo --reps 3 --sequential

Torch runs on ``--threads`` (default 1) intra-op threads throughout, as the sweep pins
them on CPU. Takes a few minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import ckprof
from ckprof.capture.ab import checkpointing
from ckprof.capture.demo import build_demo

POLICIES = ("none", "full", "every_2", "selective")


# ---- the two models ------------------------------------------------------------------------


def build_demo_model(batch_size: int = 8) -> tuple[Any, Any, Any]:
    """Sweep factory: the demo transformer without its own checkpointing."""
    model, make_batch, loss_fn = build_demo(batch_size=batch_size, checkpointing=False)
    return model, make_batch(batch_size), loss_fn


def _hf_config() -> Any:
    import transformers

    return transformers.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=512,
                                    num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                    max_position_embeddings=128, use_cache=False)


def build_hf(batch_size: int = 8) -> tuple[Any, Any, Any]:
    """Sweep factory: a tiny Llama (4 decoder layers) and a dict batch with labels."""
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(_hf_config())
    ids = torch.randint(0, 256, (batch_size, 64), generator=torch.Generator().manual_seed(1))
    return model, {"input_ids": ids, "labels": ids}, None


def checkpointed(name: str) -> tuple[Any, Callable[[], None]]:
    """(model, train_step) with the model's OWN checkpointing on, as a user has it."""
    if name == "demo":
        model, make_batch, loss_fn = build_demo(checkpointing=True)
        batch = make_batch()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(batch[0]), batch).backward()
            opt.step()

        return model, step
    model, batch, _ = build_hf()
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()  # HF binds torch's checkpoint here
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def hf_step() -> None:
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.step()

    return model, hf_step


# ---- 1. A/B against a separately timed pair -------------------------------------------------


def band(xs: list[float]) -> float:
    """Half the interquartile range relative to the median, in percent."""
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")[0], statistics.median(xs), \
        statistics.quantiles(xs, n=4, method="inclusive")[2]
    return (q3 - q1) / 2 / med * 100


def ab_cost(name: str, wait: int, active: int, out: Path) -> dict[str, Any]:
    """One run with capture(ab=True): the cost on its unprofiled (wait) steps and under
    the profiler (active steps), each with its noise band."""
    _, step = checkpointed(name)
    with ckprof.capture(out / f"ab-{name}", wait=wait, warmup=2, active=active, ab=True) as cap:
        for _ in range(wait + active + 2):
            cap.run_step(step)
    analysis = ckprof.load(cap.trace_paths[0])
    ab = analysis.ab
    used = ab.steps[~ab.steps["excluded"]]
    on = used[used["variant"] == "on"]["step_ms"].tolist()
    off = used[used["variant"] == "off"]["step_ms"].tolist()
    timed = analysis.trace.ckprof["ab"].get("unprofiled") or []
    u_on = [ms for _, v, ms in timed if v == "on"]
    u_off = [ms for _, v, ms in timed if v == "off"]
    d = ab.diff
    return {"cost_pct": d.cost_pct, "band": band(on) + band(off), "saving": d.saving_bytes,
            "recompute_pct": d.recompute_pct, "on_ms": d.candidate_step_ms, "off_ms": d.baseline_step_ms,
            "u_cost_pct": d.unprofiled_cost_pct,
            "u_band": band(u_on) + band(u_off) if len(u_on) > 1 and len(u_off) > 1 else float("nan"),
            "u_on_ms": d.unprofiled_candidate_ms, "u_off_ms": d.unprofiled_baseline_ms, "u_steps": d.unprofiled_steps}


def pair_cost(name: str, steps: int, pairs: int) -> dict[str, Any]:
    """What a user does without ckprof: one run with checkpointing, one without (no
    profiler), cost = ratio of their median steps; ``pairs`` such pairs, the order
    alternating (on-off, off-on, ...), so the run-to-run noise of separate runs shows."""
    costs, bands, on_ms, off_ms = [], [], [], []
    for k in range(pairs):
        medians, inner = {}, 0.0
        for label in (("on", "off") if k % 2 == 0 else ("off", "on")):
            _, step = checkpointed(name)
            times = []
            with ckprof.instrument_checkpointing(), checkpointing(label == "on"):
                for i in range(steps + 2):
                    t0 = time.perf_counter()
                    step()
                    if i >= 2:
                        times.append((time.perf_counter() - t0) * 1e3)
            medians[label] = statistics.median(times)
            inner += band(times)
        costs.append((medians["on"] - medians["off"]) / medians["off"] * 100)
        bands.append(inner)
        on_ms.append(medians["on"])
        off_ms.append(medians["off"])
    # noise of a separately timed pair: the within-run spread, or (larger, usually) how
    # much the pairs disagree with each other
    half_range = (max(costs) - min(costs)) / 2 if len(costs) > 1 else 0.0
    return {"cost_pct": statistics.median(costs), "costs": costs,
            "band": max(statistics.median(bands), half_range),
            "on_ms": statistics.median(on_ms), "off_ms": statistics.median(off_ms)}


# ---- 2. sweep repetitions ---------------------------------------------------------------------


def sweep_reps(name: str, reps: int, schedule: str, steps: int, rounds: int) -> dict[str, Any]:
    factory = build_demo_model if name == "demo" else build_hf
    medians: dict[str, list[float]] = {p: [] for p in POLICIES}
    rankings, claims, full_slower, seconds = [], [], [], []
    established: list[set[tuple[str, str]]] = []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = ckprof.sweep(factory, policies=list(POLICIES), steps=steps, rounds=rounds, optimizer="adamw",
                              schedule=schedule, isolation="inline", warmup=1)
        seconds.append(time.perf_counter() - t0)
        t = result.table.set_index("policy")
        for p in POLICIES:
            medians[p].append(float(t.loc[p, "step_ms"]))
        full_slower.append(t.loc["full", "step_ms"] > t.loc["none", "step_ms"])
        rankings.append(result.ranking)
        # a checkpointing policy printed as faster than none, beyond noise: a wrong verdict
        claims.append(any(pair.endswith(" < none") for pair in result.beyond_noise))
        established.append({tuple(pair.split(" < ")) for pair in result.beyond_noise})
    majority = sum(full_slower) * 2 >= len(full_slower)
    # printed verdicts that contradict each other: a < b in one repetition, b < a in another
    contradictions = {tuple(sorted(ab)) for e in established for ab in e
                      if any((ab[1], ab[0]) in other for other in established)}
    return {"medians": medians, "rankings": rankings, "wrong_claims": sum(claims),
            "contradictions": sorted(contradictions),
            "full_slower": sum(full_slower), "flips": sum(1 for x in full_slower if x != majority),
            "seconds": statistics.median(seconds)}


def spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / statistics.mean(xs) * 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="demo,hf", help="comma-separated: demo, hf")
    parser.add_argument("--reps", type=int, default=3, help="sweep repetitions")
    parser.add_argument("--ab-steps", type=int, default=12, help="active (profiled) steps of the A/B capture")
    parser.add_argument("--ab-wait", type=int, default=13,
                        help="wait steps of the A/B capture: alternated and timed without the profiler")
    parser.add_argument("--pair-steps", type=int, default=8, help="timed steps per run of the pair")
    parser.add_argument("--pairs", type=int, default=3, help="separately timed pairs (order alternating)")
    parser.add_argument("--steps", type=int, default=6, help="sweep: measured steps per policy")
    parser.add_argument("--rounds", type=int, default=3, help="sweep: interleaved rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sequential", action="store_true", help="also run the former sequential sweep")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "hf" in models:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers is not installed: skipping the HF model (pip install 'ckprof[test]')")
            models.remove("hf")
    print(f"torch {torch.__version__} · {args.threads} intra-op thread(s) · models: {', '.join(models)}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="ckprof-bench-ab-") as tmp:
        print("\n1. A/B cost (capture(ab=True), one run) vs separately timed pairs of runs")
        print(f"   {'model':6} {'A/B (wait steps)':>17} {'band':>6} {'pairs':>8} {'band':>6} {'diff':>6}  "
              f"{'within noise':12} {'A/B profiled':>12} {'saving':>10}")
        for name in models:
            ab = ab_cost(name, args.ab_wait, args.ab_steps, Path(tmp))
            pair = pair_cost(name, args.pair_steps, args.pairs)
            diff = abs(ab["u_cost_pct"] - pair["cost_pct"])
            within = diff <= ab["u_band"] + pair["band"]
            ok &= within
            print(f"   {name:6} {ab['u_cost_pct']:+16.1f}% {ab['u_band']:5.1f}p {pair['cost_pct']:+7.1f}% "
                  f"{pair['band']:5.1f}p {diff:5.1f}p  {'yes' if within else 'NO':12} "
                  f"{ab['cost_pct']:+11.1f}% {ab['saving'] / 2**20:6.2f} MiB")
            print(f"          A/B without the profiler: {ab['u_on_ms']:.1f} / {ab['u_off_ms']:.1f} ms on/off "
                  f"({ab['u_steps'][0]} / {ab['u_steps'][1]} wait steps); under it: {ab['on_ms']:.1f} / "
                  f"{ab['off_ms']:.1f} ms (band {ab['band']:.1f}p, re-running forward {ab['recompute_pct']:+.1f}%)")
            print(f"          pairs: {pair['on_ms']:.1f} / {pair['off_ms']:.1f} ms on/off, costs "
                  + ", ".join(f"{c:+.1f}%" for c in pair["costs"]))
        schedules = ["interleaved", *(["sequential"] if args.sequential else [])]
        for schedule in schedules:
            print(f"\n2. ckprof.sweep ({schedule}), {args.reps} repetitions, {args.steps} steps per policy"
                  + (f" in {args.rounds} rounds" if schedule == "interleaved" else ""))
            for name in models:
                rep = sweep_reps(name, args.reps, schedule, args.steps, args.rounds)
                print(f"   {name}: median step ms per repetition (spread = (max - min) / mean); "
                      f"{rep['seconds']:.0f} s per sweep")
                for p in POLICIES:
                    xs = rep["medians"][p]
                    print(f"     {p:10} " + "  ".join(f"{x:8.1f}" for x in xs) + f"   spread {spread(xs):5.1f}%")
                ratios = [f / n for f, n in zip(rep["medians"]["full"], rep["medians"]["none"], strict=True)]
                print("     full / none per repetition: " + "  ".join(f"{r:.3f}" for r in ratios)
                      + f"   spread {spread(ratios):.1f}%")
                print(f"     full slower than none in {rep['full_slower']}/{args.reps} repetitions; "
                      f"flips: {rep['flips']}; rankings printing a policy '< none': {rep['wrong_claims']}; "
                      f"pairs ranked both ways across repetitions: "
                      f"{', '.join(' vs '.join(c) for c in rep['contradictions']) or 'none'}")
                for i, r in enumerate(rep["rankings"]):
                    print(f"     ranking {i + 1}: {r}")
                if schedule == "interleaved":
                    ok &= rep["flips"] == 0 and rep["wrong_claims"] == 0 and not rep["contradictions"]
    print(f"\n{'PASS' if ok else 'FAIL'}: A/B within noise of the pair; no none/full flip and no "
          "printed ranking reversed by noise (interleaved)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
