"""Accuracy of ckprof's figures on real setups and real traces (issue 12).

1. Recompute per training setup (tests/support/real_setups.py: tiny HF Llama / GPT-2
   from a config with gradient_checkpointing_enable, checkpoint_wrapper,
   checkpoint_sequential, selective checkpointing, nested checkpoints), each captured
   once with ckprof.capture(with_stack=True) + instrument_checkpointing, against the
   ground truth timed in the same run (the checkpointed callables, timed while
   ``torch._C._current_graph_task_id() != -1``). One row per setup x detection method
   (markers, stack, sequence on the same trace; auto picks markers): ckprof recompute
   ms, ground truth ms, ratio, region names, whether the names equal the markers'.
2. First-step GPU ms on the real traces in ../shared/traces: "before" = what a GPU
   event whose launch is not in the trace got under the old rule (its own start time),
   "after" = ckprof now; "launched" = the GPU time whose launching runtime event lies
   in the step, joined from the raw JSON here (no ckprof code).

Usage: python benchmarks/accuracy_table.py [--steps 2] [--repeat 3] [--setups hf_llama,...]
       [--no-traces]
Prints markdown tables; each setup row is the run (of --repeat) with the median ratio,
the spread of the ratio in brackets (a process stall inside one recompute window moves
one run: that is noise, a bias moves them all).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "Kernel", "Memcpy", "Memset"}
RUNTIME_CATS = {"cuda_runtime", "cuda_driver", "Runtime", "hip_runtime"}


def setup_rows(names: list[str], steps: int, repeat: int) -> list[str]:

    import torch
    from support.real_setups import run_setup

    import ckprof

    torch.set_num_threads(1)
    out = [f"| setup | method | ckprof recompute ms | ground truth ms | ratio (median of {repeat}) "
           "| regions (count per region) | same names as markers |",
           "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows: dict[str, list[tuple[float, float, str, str]]] = defaultdict(list)
            auto = ""
            for k in range(repeat):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    run = run_setup(name, Path(tmp) / str(k), steps=steps)
                truth_ms = run.truth.recompute_ns() / 1e6
                auto = ckprof.load(run.trace).recompute_detection
                marker_names: set[str] = set()
                for method in ("markers", "stack", "sequence"):
                    a = ckprof.load(run.trace, recompute_detection=method)
                    r = a.time.regions.sort_values("region")
                    names_ = {str(x.region): int(x.count) for x in r.itertuples()}
                    if method == "markers":
                        marker_names = set(names_)
                    same = "yes" if set(names_) == marker_names else "no"
                    regions = ", ".join(f"{n} ({c})" for n, c in names_.items())
                    rows[method].append((float(r["wall_ns"].sum()) / 1e6, truth_ms, regions, same))
            for method, got in rows.items():
                # the repeat with the median ratio: one run, its own numbers
                ms, truth_ms, regions, same = sorted(got, key=lambda g: g[0] / g[1])[len(got) // 2]
                label = method + (" (auto)" if method == auto else "")
                same = "yes" if all(g[3] == "yes" for g in got) else "no"
                spread = (f" ({min(g[0] / g[1] for g in got):.2f}-{max(g[0] / g[1] for g in got):.2f})"
                          if repeat > 1 else "")
                out.append(f"| {name} | {label} | {ms:.3f} | {truth_ms:.3f} | "
                           f"{ms / truth_ms:.2f}{spread} | {regions} | {same} |")
    return out


def _raw_first_step(path: Path) -> tuple[int, float, float]:
    """(first step, GPU ms it launched, GPU ms under the old own-start rule)."""
    with gzip.open(path, "rt") as fh:
        raw = json.load(fh)
    events = raw["traceEvents"] if isinstance(raw, dict) else raw
    steps, launch, gpu = [], {}, []
    for e in events:
        if e.get("ph") != "X":
            continue
        name, cat, args = str(e.get("name", "")), e.get("cat", ""), e.get("args") or {}
        ts = round(float(e["ts"]) * 1000)
        if name.startswith("ProfilerStep#") and cat in ("user_annotation", "Operator"):
            steps.append((ts, ts + round(float(e["dur"]) * 1000), int(name.split("#")[1])))
        elif cat in RUNTIME_CATS and "correlation" in args:
            c = int(args["correlation"])
            launch[c] = min(launch.get(c, ts), ts)
        elif cat in GPU_CATS:
            gpu.append((ts, round(float(e.get("dur", 0)) * 1000), args.get("correlation")))
    steps.sort()
    launched: dict[int, int] = defaultdict(int)
    old: dict[int, int] = defaultdict(int)
    for ts, dur, corr in gpu:
        at = launch.get(int(corr)) if corr is not None else None
        for s, e, n in steps:
            if at is not None and s <= at < e:
                launched[n] += dur
            if s <= (ts if at is None else at) < e:
                old[n] += dur
    first = steps[0][2]
    return first, launched[first] / 1e6, old[first] / 1e6


def trace_rows(folder: Path) -> list[str]:
    import ckprof

    out = ["| trace | first step | before: GPU ms (own-start rule) | after: ckprof GPU ms | "
           "launched by the step (raw JSON) | note |",
           "| --- | ---: | ---: | ---: | ---: | --- |"]
    for path in sorted(folder.glob("*.json.gz")):
        a = ckprof.load(path)
        if not a.has_gpu:
            continue
        first, launched, old = _raw_first_step(path)
        after = float(a.time.by_step.groupby("step")["gpu_ns"].sum()[first]) / 1e6
        note = next((n.split(":")[0] for n in a.notes if "before profiling began" in n), "")
        out.append(f"| {path.name} | {first} | {old:.3f} | {after:.3f} | {launched:.3f} | {note} |")
    return out


def main() -> None:
    from support.real_setups import SETUPS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per setup; the row is the run with the median ratio")
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--no-traces", action="store_true")
    parser.add_argument("--traces-dir", type=Path, default=ROOT.parent / "shared" / "traces")
    args = parser.parse_args()
    print("\n".join(setup_rows([s for s in args.setups.split(",") if s], args.steps,
                                args.repeat)))
    if not args.no_traces and args.traces_dir.is_dir():
        print()
        print("\n".join(trace_rows(args.traces_dir)))


if __name__ == "__main__":
    main()
