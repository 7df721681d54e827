"""A/B and interleaved sweep: do their verdicts survive this machine's noise? (issue 13)

For the demo transformer (ckprof.capture.demo) and a small HF-style transformer (a tiny
Llama from a config, no download), prints, every figure measured in this run:

1. **A/B cost against a separately timed pair.** ``ckprof.capture(ab=True)`` gives the
   measured cost of checkpointing (median step on vs off, steps interleaved
   on, off, off, on) and its noise band (half the relative IQR of each variant, in
   points). The separately timed pair is what a user would do without ckprof: one run
   of ``--pair-steps`` steps with checkpointing, then one without (no profiler, timed
   with perf_counter), cost = ratio of the two medians, with its own band. Target: the
   two costs differ by less than the sum of their bands ("within noise").
2. **Sweep run-to-run spread and ranking flips.** ``ckprof.sweep`` (interleaved, the
   default) over none / full / every_2 / selective, ``--reps`` times: each policy's
   median per repetition and their spread ((max - min) / mean), how many repetitions
   measured full slower than none (a flip = a repetition disagreeing with the
   majority), and how many printed rankings claimed a checkpointing policy faster than
   none beyond noise (``X < none``: they must not).
   Target: no flip across the repetitions. ``--sequential`` also runs the former
   schedule (each policy in its own block) for contrast.

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


def ab_cost(name: str, active: int, out: Path) -> dict[str, Any]:
    _, step = checkpointed(name)
    with ckprof.capture(out / f"ab-{name}", wait=1, warmup=2, active=active, ab=True) as cap:
        for _ in range(active + 3):
            cap.run_step(step)
    ab = ckprof.load(cap.trace_paths[0]).ab
    used = ab.steps[~ab.steps["excluded"]]
    on = used[used["variant"] == "on"]["step_ms"].tolist()
    off = used[used["variant"] == "off"]["step_ms"].tolist()
    return {"cost_pct": ab.diff.cost_pct, "band": band(on) + band(off), "saving": ab.diff.saving_bytes,
            "recompute_pct": ab.diff.recompute_pct, "on_ms": ab.diff.candidate_step_ms,
            "off_ms": ab.diff.baseline_step_ms}


def pair_cost(name: str, steps: int) -> dict[str, Any]:
    """One run with checkpointing, then one without: the separately timed pair."""
    medians, bands = {}, {}
    for label, on in (("on", True), ("off", False)):
        _, step = checkpointed(name)
        times = []
        with ckprof.instrument_checkpointing(), checkpointing(on):
            for i in range(steps + 2):
                t0 = time.perf_counter()
                step()
                if i >= 2:
                    times.append((time.perf_counter() - t0) * 1e3)
        medians[label], bands[label] = statistics.median(times), band(times)
    return {"cost_pct": (medians["on"] - medians["off"]) / medians["off"] * 100,
            "band": bands["on"] + bands["off"], "on_ms": medians["on"], "off_ms": medians["off"]}


# ---- 2. sweep repetitions ---------------------------------------------------------------------


def sweep_reps(name: str, reps: int, schedule: str, steps: int, rounds: int) -> dict[str, Any]:
    factory = build_demo_model if name == "demo" else build_hf
    medians: dict[str, list[float]] = {p: [] for p in POLICIES}
    rankings, claims, full_slower, seconds = [], [], [], []
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
    majority = sum(full_slower) * 2 >= len(full_slower)
    return {"medians": medians, "rankings": rankings, "wrong_claims": sum(claims),
            "full_slower": sum(full_slower), "flips": sum(1 for x in full_slower if x != majority),
            "seconds": statistics.median(seconds)}


def spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / statistics.mean(xs) * 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="demo,hf", help="comma-separated: demo, hf")
    parser.add_argument("--reps", type=int, default=3, help="sweep repetitions")
    parser.add_argument("--ab-steps", type=int, default=16, help="active steps of the A/B capture")
    parser.add_argument("--pair-steps", type=int, default=8, help="timed steps per run of the pair")
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
        print("\n1. A/B cost (capture(ab=True), one run) vs a separately timed pair of runs")
        print(f"   {'model':6} {'A/B cost':>10} {'band':>6} {'pair cost':>10} {'band':>6} {'diff':>6}  "
              f"{'within noise':12} {'A/B saving':>11} {'recompute':>9}")
        for name in models:
            ab = ab_cost(name, args.ab_steps, Path(tmp))
            pair = pair_cost(name, args.pair_steps)
            diff = abs(ab["cost_pct"] - pair["cost_pct"])
            within = diff <= ab["band"] + pair["band"]
            ok &= within
            print(f"   {name:6} {ab['cost_pct']:+9.1f}% {ab['band']:5.1f}p {pair['cost_pct']:+9.1f}% "
                  f"{pair['band']:5.1f}p {diff:5.1f}p  {'yes' if within else 'NO':12} "
                  f"{ab['saving'] / 2**20:8.2f} MiB {ab['recompute_pct']:+8.1f}%")
            print(f"          (A/B medians {ab['on_ms']:.1f} / {ab['off_ms']:.1f} ms on/off under the profiler; "
                  f"pair {pair['on_ms']:.1f} / {pair['off_ms']:.1f} ms without it)")
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
                print(f"     full slower than none in {rep['full_slower']}/{args.reps} repetitions; "
                      f"flips: {rep['flips']}; rankings printing a policy '< none': {rep['wrong_claims']}")
                for i, r in enumerate(rep["rankings"]):
                    print(f"     ranking {i + 1}: {r}")
                if schedule == "interleaved":
                    ok &= rep["flips"] == 0 and rep["wrong_claims"] == 0
    print(f"\n{'PASS' if ok else 'FAIL'}: A/B within noise of the pair; no none/full flip and no "
          "printed ranking reversed by noise (interleaved)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
