"""Recompute inside torch.compile on CPU: ckprof's figure against two ground truths.

    python benchmarks/compiled_recompute.py                 # 4 blocks, d=256, batch 512
    python benchmarks/compiled_recompute.py --blocks 3 --dim 128 --steps 6

A model of ``--blocks`` blocks (x + Linear(d, 4d) -> GELU -> Linear(4d, d)), every block
under non-reentrant checkpointing, compiled with inductor and captured by
``ckprof.capture`` with ``cpp.enable_kernel_profile`` on (so every C++ kernel is a trace
event and the truth can be measured event by event). Printed per step:

- ckprof: compiled recompute (``recompute`` wall), fused (recompute fused with backward
  by inductor, reported apart), per region;
- truth 1 (same trace): the summed durations of the backward graph's kernel events
  that compute only forward nodes, classified by torch's own kernel provenance
  (``trace.provenance_tracking_level``) and the partitioner's ``classify_nodes``;
  ckprof's figure should equal it plus the wrapper's Python between those kernels;
- truth 2 (A/B): the backward time of the same compiled model with and without
  checkpointing, steps interleaved to share the machine's noise. It includes what
  checkpointing changes besides recompute (fused kernels, memory traffic), so ckprof's
  recompute is below it; the gap is what the A/B mode exists for.

The compile caches go to a temporary folder (a cold compile takes tens of seconds).
One torch thread: inductor's OpenMP kernels spin badly on a busy small machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6, help="active (profiled) steps")
    parser.add_argument("--ab-steps", type=int, default=20, help="A/B timing steps per arm")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="ckprof-compiled-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")
    import torch

    torch.set_num_threads(1)
    torch._inductor.config.cpp.enable_kernel_profile = True
    torch._inductor.config.trace.provenance_tracking_level = 1
    import torch._functorch.partitioners as partitioners
    import torch._inductor.compile_fx as compile_fx
    import torch._inductor.debug as inductor_debug

    import ckprof

    truth: dict[str, Any] = {}
    original = compile_fx.min_cut_rematerialization_partition

    @functools.wraps(original)
    def partition(gm: Any, *a: Any, **k: Any) -> Any:
        fw, bw = original(gm, *a, **k)
        info = partitioners.classify_nodes(gm, k.get("static_lifetime_input_indices") or [],
                                           k["num_fwd_outputs"])
        truth["forward"] = {n.name for n in info.required_fw_nodes}
        truth["backward_nodes"] = {n.name: n for n in bw.graph.nodes}
        return fw, bw

    compile_fx.min_cut_rematerialization_partition = partition

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = torch.nn.Linear(args.dim, 4 * args.dim)
            self.fc2 = torch.nn.Linear(4 * args.dim, args.dim)

        def forward(self, x: Any) -> Any:
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))

    class Net(torch.nn.Module):
        def __init__(self, checkpointed: bool) -> None:
            super().__init__()
            self.checkpointed = checkpointed
            self.blocks = torch.nn.ModuleList(Block() for _ in range(args.blocks))

        def forward(self, x: Any) -> Any:
            for block in self.blocks:
                x = (torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                     if self.checkpointed else block(x))
            return x.tanh().sum()

    x = torch.randn(args.batch, args.dim)

    def model(checkpointed: bool) -> tuple[Any, Any]:
        torch.manual_seed(0)
        net = Net(checkpointed)
        return torch.compile(net), torch.optim.SGD(net.parameters(), lr=1e-4)

    # ---- ckprof capture (kernel profile on: every kernel is an event) ---------------
    compiled, opt = model(True)
    # torch resets its provenance map around each compile_fx call and restores it
    # after: what stays is the lazily compiled backward graph's map
    before = set(inductor_debug._inductor_triton_kernel_to_post_grad_node_info)
    with ckprof.capture(tmp / "trace", wait=1, warmup=1, active=args.steps) as cap:
        for _ in range(2 + args.steps):
            compiled(x).backward()
            opt.step()
            opt.zero_grad()
            cap.step()
    provenance = {k: v for k, v in
                  inductor_debug._inductor_triton_kernel_to_post_grad_node_info.items()
                  if k not in before}
    analysis = ckprof.load(cap.trace_paths[0])
    steps = len(analysis.phases.steps)
    out = analysis.to_dict()["compiled_recompute"]
    regions = analysis.regions_table()

    # ---- truth 1: torch provenance x partitioner, on the raw JSON -------------------
    nodes, forward = truth["backward_nodes"], truth["forward"]
    calls = []
    for key in sorted(provenance, key=lambda k: int(k.rsplit(":", 1)[1])):
        kernel = key.rsplit(":", 1)[0]
        real = [nodes[n] for n in provenance[key] if n in nodes]
        real = [n for n in real if n.op == "call_function"
                and not getattr(n.target, "is_view", False)]
        fwd = [n for n in real if n.name in forward]
        name = ("aten::" + kernel.split(".", 1)[1] if kernel.startswith("extern_kernels.")
                else kernel)
        calls.append((name, bool(fwd) and len(fwd) == len(real)))
    import gzip

    with gzip.open(cap.trace_paths[0], "rt") as fh:
        events = [e for e in json.load(fh)["traceEvents"] if e.get("ph") == "X"]
    truth_ms = []
    for bw in (e for e in events if e["name"] == "CompiledFunctionBackward"):
        inner = sorted((e for e in events if e.get("tid") == bw.get("tid")
                        and bw["ts"] < e["ts"] and e["ts"] + e["dur"] <= bw["ts"] + bw["dur"] + 1e-3
                        and e.get("cat") in ("cpu_op", "user_annotation")),
                       key=lambda e: (e["ts"], -e["dur"]))
        call = next(e for e in inner if e["name"].startswith("## Call CompiledFxGraph"))
        top, until = [], -1.0
        for e in inner:
            if e["ts"] > call["ts"] and e["ts"] >= until:
                top.append(e)
                until = e["ts"] + e["dur"]
        j, total = 0, 0.0
        for e in top:
            for i in range(j, len(calls)):
                if e["name"] == calls[i][0] or e["name"].endswith("_" + calls[i][0]):
                    total += e["dur"] / 1e3 if calls[i][1] else 0.0
                    j = i + 1
                    break
        truth_ms.append(total)
    truth_ms = truth_ms[-steps:]

    # ---- truth 2: A/B backward time, interleaved ------------------------------------
    arms = {True: model(True), False: model(False)}
    for ck in (True, False):  # compile + warm up both
        for _ in range(2):
            arms[ck][0](x).backward()
    times: dict[bool, list[float]] = {True: [], False: []}
    import time

    for _ in range(args.ab_steps):
        for ck in (True, False):
            loss = arms[ck][0](x)
            t0 = time.perf_counter()
            loss.backward()
            times[ck].append((time.perf_counter() - t0) * 1e3)
            arms[ck][1].zero_grad()

    rc = float(analysis.totals_table().set_index("phase").loc["recompute", "wall_ms"]) / steps
    bw_ck, bw_plain = statistics.median(times[True]), statistics.median(times[False])
    print(f"model: {args.blocks} blocks, d={args.dim}, batch {args.batch}, CPU, 1 thread; "
          f"{steps} profiled steps; trace {cap.trace_paths[0]}")
    print(f"found by: {analysis.recompute_detection}; status {out['status']}; kernel events "
          f"{out['kernel_events_found']}/{out['kernel_events_expected']}")
    print(f"ckprof compiled recompute   {rc:9.3f} ms/step   (+ fused with backward "
          f"{out['fused_wall_ms'] / steps:.3f} ms/step, reported apart)")
    for row in regions.itertuples(index=False):
        print(f"    {row.region:14s} {row.wall_ms / steps:9.3f} ms/step  x{row.count // steps}")
    tm = statistics.mean(truth_ms)
    print(f"truth 1: recompute kernels  {tm:9.3f} ms/step   (torch provenance x "
          f"classify_nodes); ckprof / truth = {rc / tm:.3f}")
    print(f"truth 2: A/B backward       {bw_ck - bw_plain:9.3f} ms/step   (median backward "
          f"{bw_ck:.3f} ms checkpointed vs {bw_plain:.3f} ms not); ckprof recompute + fused "
          f"= {(rc + out['fused_wall_ms'] / steps) / max(bw_ck - bw_plain, 1e-9):.2f} of it")
    ok = tm <= rc * 1.0001 and rc <= tm * 1.25
    print(f"{'PASS' if ok else 'FAIL'}: ckprof's compiled recompute holds every recompute "
          "kernel and at most 25% wrapper overhead on top")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
