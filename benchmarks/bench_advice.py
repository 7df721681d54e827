"""Does ckprof's selective-checkpointing advice land on the measured time-memory frontier?
(issue 14, item 4)

    python benchmarks/bench_advice.py                       # demo model + tiny HF Llama
    python benchmarks/bench_advice.py --model demo --steps 20 --plot /tmp/frontier.png

For each model:

1. ``ckprof.sweep`` profiles the model under FULL checkpointing (ckprof's capture: markers
   and memory); :func:`ckprof.strategy.advice.advise` reads that trace alone (no torch)
   and ranks the op types; ``advised`` is what it recommends without a budget (its
   default op list, or the whole-block policy -- every_<k>, full -- it estimates to beat
   that list: NOTE [ Selective checkpointing or unchecked blocks ]), ``advised-budget``
   with a budget (the trace's peak plus ``--budget-fraction`` of what saving every
   candidate would add) and ``advised-tight`` with a budget half way from full's peak to
   the leanest whole-block policy above it (where only full and selective lists fit);
   a selective list the advice did not recommend is measured too (``advised-sac*``, for
   reference, not judged);
2. ``ckprof.sweep`` measures ``none``, ``full``, ``every_2``, the built-in matmul-saving
   ``selective`` and both advised policies, each on a fresh model in its own process:
   the peak memory of each, and wall-clock step times under the profiler;
3. the same policies run again without the profiler, interleaved (``--rounds`` rounds in
   shuffled order, each on its own fresh model, one thread), timed in CPU time of the
   process: on a shared machine wall time also counts the time other processes held the
   core (the sweep's IQRs on this 2-core VM reached +-30%), CPU time does not (+-3%);
4. for each advised policy: PASS when no other policy dominates it beyond timing noise
   (another policy counts only if its step-time IQR lies wholly below, or overlaps and it
   needs >= 1% less memory), with the strict dominance and the distance to the frontier
   of the four others (their step time at the advised peak, linear between neighbouring
   frontier points, minus the advised step time; positive = faster than the frontier).
   ``--plot`` draws the CPU-time frontier with the advised points ringed.

Models (``--model``, comma-separated): ``demo`` (``ckprof.capture.demo:make_demo``: 4
pre-norm blocks, nn.MultiheadAttention, 4x GELU MLP, dim 128, 64 tokens; batch 32),
``demo-wide`` (the same at dim 512, 128 tokens; batch 8), ``hf`` (a LlamaForCausalLM built
from a config, no weights downloaded: 4 layers, hidden 128, SDPA; batch 32; a small
hand-written transformer when transformers is missing) and ``hf-wide`` (hidden 512, 128
tokens; batch 8).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SEQ = 64
VOCAB = 256


def make_demo_wide(batch_size: int = 8) -> tuple[Any, tuple[Any, ...], Any]:
    """The demo transformer (ckprof.capture.demo) at dim 512, 128 tokens: per-op compute
    large enough that selective checkpointing's dispatch cost is small beside it."""
    from ckprof.capture.demo import build_demo

    model, make_batch, loss_fn = build_demo(dim=512, heads=8, seq_len=128, batch_size=batch_size,
                                            checkpointing=False)
    return model, make_batch(batch_size), loss_fn


def make_hf(batch_size: int = 8, *, hidden: int = 128, seq: int = SEQ) -> tuple[Any, tuple[Any, ...], Any]:
    """A tiny Llama (transformers) built from a config: (model, (input_ids,), loss_fn)."""
    import torch
    from torch.nn import functional as F

    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:  # pragma: no cover - depends on the environment
        return make_small_transformer(batch_size)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=4 * hidden,
                      num_hidden_layers=4, num_attention_heads=hidden // 32,
                      num_key_value_heads=hidden // 32, max_position_embeddings=2 * seq,
                      attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, VOCAB, (batch_size, seq), generator=torch.Generator().manual_seed(1))

    def loss_fn(output: Any, batch: Any) -> Any:
        logits = output.logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, VOCAB), batch[0][:, 1:].reshape(-1))

    return model, (ids,), loss_fn


def make_hf_wide(batch_size: int = 8) -> tuple[Any, tuple[Any, ...], Any]:
    """The tiny Llama at hidden 512, 128 tokens."""
    return make_hf(batch_size, hidden=512, seq=128)


def make_small_transformer(batch_size: int = 8) -> tuple[Any, tuple[Any, ...], Any]:
    """Fallback without transformers: pre-norm blocks with SDPA attention and a GELU MLP."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self, dim: int = 128, heads: int = 4) -> None:
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

        def forward(self, x: Any) -> Any:
            b, s, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, d // self.heads).unbind(2)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=True)
            x = x + self.out(a.transpose(1, 2).reshape(b, s, d))
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, 128)
            self.blocks = nn.ModuleList(Block() for _ in range(4))
            self.head = nn.Linear(128, VOCAB)

        def forward(self, ids: Any) -> Any:
            x = self.emb(ids)
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (batch_size, SEQ), generator=torch.Generator().manual_seed(1))

    def loss_fn(output: Any, batch: Any) -> Any:
        return F.cross_entropy(output[:, :-1].reshape(-1, VOCAB), batch[0][:, 1:].reshape(-1))

    return Net(), (ids,), loss_fn


MODELS = {"demo": "ckprof.capture.demo:make_demo", "demo-wide": "bench_advice:make_demo_wide",
          "hf": "bench_advice:make_hf", "hf-wide": "bench_advice:make_hf_wide"}
#: batch size per model (the demo's default sweep size is 8; 32 gives compute a chance)
BATCH = {"demo": 32, "demo-wide": 8, "hf": 32, "hf-wide": 8}
OTHERS = ("none", "full", "every_2", "selective")
ADVISED = ("advised", "advised-budget", "advised-tight")


def dominated_by(table: Any, name: str, *, beyond_noise: bool) -> list[str]:
    """Policies of :data:`OTHERS` that dominate ``name``: no more memory and no more time,
    better in one. ``beyond_noise``: only when the other's step-time q1..q3 lies wholly
    below ``name``'s, or its time IQR overlaps and it needs >= 1% less memory."""
    a = table[table["policy"] == name].iloc[0]
    out = []
    for r in table[table["policy"].isin(OTHERS)].dropna(subset=["peak_bytes"]).itertuples(index=False):
        if beyond_noise:
            faster = r.step_ms_q3 < a.step_ms_q1
            tie = not faster and r.step_ms_q1 <= a.step_ms_q3 and a.step_ms_q1 <= r.step_ms_q3
            leaner = r.peak_bytes <= a.peak_bytes * 0.99
            if r.peak_bytes <= a.peak_bytes and (faster or (tie and leaner)):
                out.append(str(r.policy))
        elif (r.step_ms <= a.step_ms and r.peak_bytes <= a.peak_bytes
              and (r.step_ms < a.step_ms or r.peak_bytes < a.peak_bytes)):
            out.append(str(r.policy))
    return out


def frontier_gap(table: Any, name: str) -> float:
    """The others' frontier step ms at ``name``'s peak (linear between neighbouring
    frontier points) minus its step ms; NaN outside the frontier's memory range."""
    import numpy as np

    from ckprof.strategy.sweep import pareto_mask

    a = table[table["policy"] == name].iloc[0]
    others = table[table["policy"].isin(OTHERS)].dropna(subset=["peak_bytes"])
    front = others[pareto_mask(others["step_ms"], others["peak_bytes"])].sort_values("peak_bytes")
    m, t = front["peak_bytes"].to_numpy(float), front["step_ms"].to_numpy(float)
    if len(front) == 0 or not (m[0] <= a.peak_bytes <= m[-1]):
        return math.nan
    return float(np.interp(a.peak_bytes, m, t)) - float(a.step_ms)


def cpu_times(factory: str, policies: list[Any], batch_size: int, rounds: int, steps: int,
              seed: int = 0) -> Any:
    """CPU time of the training process per step (one thread), every policy on its own
    fresh model, interleaved: ``rounds`` rounds, each policy in a shuffled order runs one
    unmeasured and ``steps`` measured steps. On a shared machine this is what the step
    costs; wall time also holds the time other processes took the core."""
    import random
    from importlib import import_module

    import pandas as pd
    import torch

    from ckprof.strategy.apply import apply_policy, find_blocks
    from ckprof.strategy.policies import policy_signature

    torch.set_num_threads(1)
    module, _, attr = factory.partition(":")
    make = getattr(import_module(module), attr)
    runs = {}
    same_as: dict[str, str] = {}  # a policy that does exactly what an earlier one does
    signatures: dict[Any, str] = {}
    for pol in policies:
        torch.manual_seed(seed)
        n_blocks = len(find_blocks(make(batch_size=1)[0]))
        first = signatures.setdefault(policy_signature(pol, n_blocks), pol.name)
        if first != pol.name:  # measured once, like the sweep does
            same_as[pol.name] = first
            continue
        model, batch, loss_fn = make(batch_size=batch_size)
        args = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        model.train()
        runs[pol.name] = (model, args, loss_fn, torch.optim.AdamW(model.parameters(), lr=1e-4),
                          find_blocks(model))
    rng = random.Random(seed)
    rows = []
    for rnd in range(rounds):
        order = [p for p in policies if p.name not in same_as]
        rng.shuffle(order)
        for pol in order:
            model, args, loss_fn, opt, blocks = runs[pol.name]
            with apply_policy(model, pol, blocks):
                for i in range(steps + 1):
                    t0 = time.process_time()
                    opt.zero_grad(set_to_none=True)
                    loss_fn(model(*args), args).backward()
                    opt.step()
                    dt = (time.process_time() - t0) * 1e3
                    if i:
                        rows.append({"policy": pol.name, "batch_size": batch_size,
                                     "step": rnd * 1000 + i, "step_ms": dt, "forward_ms": math.nan,
                                     "backward_ms": math.nan, "recompute_ms": 0.0,
                                     "optimizer_ms": math.nan, "other_ms": math.nan,
                                     "round": rnd})
    out = pd.DataFrame(rows)
    copies = [out[out["policy"] == first].assign(policy=name) for name, first in same_as.items()]
    return pd.concat([out, *copies], ignore_index=True)


def canonical(name: str, aliases: Any) -> str:
    """The sweep measures policies that behave alike once (issue 13's dedupe): the row
    a policy's figures are under."""
    for key, names in (aliases or {}).items():
        if name in names:
            return str(key)
    return name


def with_aliases(peaks: Any, aliases: Any) -> Any:
    """The sweep's peaks with a row for every alias (a copy of its policy's row)."""
    import pandas as pd

    extra = [peaks[peaks["policy"] == key].assign(policy=alias)
             for key, names in (aliases or {}).items() for alias in names]
    return pd.concat([peaks, *extra], ignore_index=True) if extra else peaks


def report(label: str, table: Any, name: str, *, shown: str | None = None,
           verdict: bool = True) -> bool:
    strict = dominated_by(table, name, beyond_noise=False)
    noisy = dominated_by(table, name, beyond_noise=True)
    gap = frontier_gap(table, name)
    gap_text = ("outside the others' memory range" if math.isnan(gap)
                else f"{gap:+.1f} ms vs the others' frontier at its memory "
                     f"({'faster' if gap >= 0 else 'slower'})")
    mark = ("PASS" if not noisy else "FAIL") if verdict else "info"
    print(f"{mark} {label} {shown or name}: "
          + (f"dominated by {', '.join(strict)}" if strict else "on or beyond the frontier")
          + (f" (beyond timing noise: {', '.join(noisy)})" if noisy else
             " (not beyond timing noise)" if strict else "")
          + f"; {gap_text}")
    return not noisy


def run_model(name: str, args: argparse.Namespace, root: Path) -> bool:
    import ckprof
    from ckprof.analysis import load
    from ckprof.report.plots import save_figure
    from ckprof.report.text import format_bytes
    from ckprof.strategy.advice import advise, plot_advised_frontier
    from ckprof.strategy.policies import parse_policy
    from ckprof.strategy.sweep import SweepResult

    factory = MODELS[name]
    batch = args.batch_size or BATCH[name]
    print(f"\n=== {name}: {factory} · batch {batch} · {args.threads} thread(s) ===")
    t0 = time.perf_counter()
    first = ckprof.sweep(factory, policies=["full"], steps=args.steps, warmup=args.warmup,
                         threads=args.threads, batch_size=batch, isolation="process",
                         rounds=1, out_dir=root / f"{name}-advice")
    trace = first.traces[0][2]
    full = load(trace)
    advice = advise(full)
    cand = advice.table[advice.table["rank"] > 0]
    budget = int(advice.estimate["peak_bytes"] + args.budget_fraction * cand["saved_bytes"].sum())
    budgeted = advise(full, budget_bytes=budget)
    # a tight budget: half way from full's peak to the leanest whole-block policy above it,
    # where only full and selective lists can fit
    alt = advice.alternatives
    above = alt.loc[alt["est_peak_bytes"] > advice.estimate["peak_bytes"], "est_peak_bytes"]
    tight_budget = int(advice.estimate["peak_bytes"]
                       + 0.5 * ((above.min() if len(above) else advice.estimate["peak_bytes"])
                                - advice.estimate["peak_bytes"]))
    tight = advise(full, budget_bytes=tight_budget)
    print(f"1. advice from the full-checkpointing trace {Path(trace).name} "
          f"({time.perf_counter() - t0:.0f} s), per step:")
    for r in cand.itertuples(index=False):
        print(f"  {int(r.rank):2d}. {r.op:52s} {r.cost_ms:9.3f} ms  {format_bytes(r.saved_bytes):>10s}"
              f"  {r.ms_per_mib:8.3f} ms/MiB  {r.decision}")
    print(f"  threshold {advice.threshold_ms_per_mib:.3f} ms/MiB (checkpointing as a whole); "
          f"SAC dispatch ~{advice.estimate['dispatch_overhead_ms']:.1f} ms for "
          f"{advice.estimate['dispatched_ops']:.0f} ops")
    for label, adv in (("advised", advice), (f"advised-budget ({format_bytes(budget)})", budgeted),
                       (f"advised-tight ({format_bytes(tight_budget)})", tight)):
        est = adv.estimate
        print(f"  {label}: save {', '.join(adv.save_ops) or 'nothing'}; estimate step "
              f"{est['step_ms']:.1f} -> {est['est_step_ms']:.1f} ms, peak "
              f"{format_bytes(est['peak_bytes'])} -> {format_bytes(est['est_peak_bytes'])}")
        for note in adv.notes:
            print(f"    note: {note}")
    policies = [parse_policy(p) for p in OTHERS]
    # what the advice recommends, named advised / advised-budget: its selective list, or
    # the whole-block policy it estimated to beat that list
    policies += [advice.recommended_policy("advised"), budgeted.recommended_policy("advised-budget"),
                 tight.recommended_policy("advised-tight")]
    info = []  # the selective lists the advice did not recommend: measured, not judged
    for adv, label in ((advice, "advised-sac"), (budgeted, "advised-sac_budget"),
                       (tight, "advised-sac_tight")):
        if adv.recommended != "advised" and adv.save_ops and all(
                p.save_ops != tuple(adv.save_ops) or p.kind != "selective" for p in policies):
            policies.append(adv.policy(label))
            info.append(label)
    for adv, label in ((advice, "advised"), (budgeted, "advised-budget"), (tight, "advised-tight")):
        if adv.recommended != "advised":
            print(f"  {label}: the advice recommends {adv.recommended}"
                  + (" instead of its selective list" if adv.save_ops else ""))
    print(f"  sweep policies: {'  '.join(p.name + '=' + (p.spec or p.kind) for p in policies[len(OTHERS):])}")
    t0 = time.perf_counter()
    swept = ckprof.sweep(factory, policies=policies, steps=args.steps, warmup=args.warmup,
                         threads=args.threads, batch_size=batch, isolation="process",
                         rounds=args.sweep_rounds, out_dir=root / f"{name}-sweep")
    print(f"2. ckprof sweep ({time.perf_counter() - t0:.0f} s): peak memory, and wall-clock step "
          "time under the profiler")
    print(swept.render("table"))
    t0 = time.perf_counter()
    cpu = cpu_times(factory, policies, batch, args.rounds, args.cpu_steps)
    result = SweepResult.from_runs(cpu, with_aliases(swept.peaks, swept.aliases),
                                   notes=[f"CPU time per step, {args.rounds} interleaved rounds "
                                          f"of {args.cpu_steps} steps, 1 thread, no profiler; "
                                          "peaks from the sweep"])
    print(f"3. CPU time per step ({time.perf_counter() - t0:.0f} s) with the sweep's peaks")
    print(result.render("table"))
    ok = True
    for adv in ADVISED:
        same = canonical(adv, swept.aliases)
        if same in OTHERS:  # the advice IS one of the others (same blocks, same saved ops)
            print(f"  {name} {adv} is {same} (same blocks, same saved ops): judged as {same}")
            ok &= report(f"{name} (CPU time)", result.table, same, shown=f"{adv} = {same}")
            continue
        ok &= report(f"{name} (CPU time)", result.table, adv)
        if same == adv:
            report(f"{name} (sweep wall time)", swept.table, adv)
        else:
            print(f"  {name} {adv}: the sweep measured it as {same} (same blocks, same saved ops)")
    for label in info:
        report(f"{name} (CPU time, not recommended, for reference)", result.table, label,
               verdict=False)
    if args.plot:
        out = Path(args.plot)
        out = out.with_name(f"{out.stem}-{name}{out.suffix}")
        fig = plot_advised_frontier(result.table, "advised",
                                    title=f"{name}: CPU ms per step vs peak memory (advised ringed)")
        fig.axes[0].set_xlabel("CPU time per step, median (ms); bars: q1-q3")
        save_figure(fig, out, force=True)
        print(f"wrote {out}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo,hf",
                    help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--steps", type=int, default=3, help="profiled steps per policy in the sweep")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved CPU-time rounds")
    ap.add_argument("--sweep-rounds", type=int, default=1,
                    help="rounds of the (interleaved) ckprof sweep that measures peaks and wall time")
    ap.add_argument("--cpu-steps", type=int, default=3, help="measured steps per policy and round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=None, help="default: per model")
    ap.add_argument("--budget-fraction", type=float, default=0.4,
                    help="budget of advised-budget: the full trace's peak plus this fraction of "
                         "what saving every candidate would add")
    ap.add_argument("--plot", default=None, help="frontier figure path (one per model, suffixed)")
    ap.add_argument("--out-dir", default=None, help="keep the traces here")
    args = ap.parse_args()
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)  # spawn workers import bench_advice:make_hf from here
    names = [n.strip() for n in args.model.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    with tempfile.TemporaryDirectory(prefix="ckprof-bench-advice-") as tmp:
        root = Path(args.out_dir) if args.out_dir else Path(tmp)
        ok = [run_model(n, args, root) for n in names]
    if not all(ok):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
