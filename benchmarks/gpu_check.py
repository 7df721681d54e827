#!/usr/bin/env python
"""GPU acceptance check for ckprof: everything that needs a real CUDA device, in one run.

Usage::

    python benchmarks/gpu_check.py                 # all checks, nsys ones when nsys is on PATH
    python benchmarks/gpu_check.py --no-nsys --out /tmp/ckprof_gpu_check --keep

Exit status: 0 every check passed (skips allowed), 1 a check failed, 2 no CUDA device
(or no torch). Budget: well under 5 minutes on one GPU (a 4-block MLP, 3 active steps;
the nsys part adds one profiled child run and one export).

What is checked (each line prints PASS / FAIL / SKIP with the numbers behind it):

1. capture      ckprof.capture + ckprof.checkpoint on CUDA write one Chrome trace.
2. kernels      the trace holds CUDA kernels, and >= 95 % of GPU events pair with their
                launching runtime call through ``correlation``.
3. memory       CUDA ``[memory]`` events exist, the counter is absolute (metadata says
                so, and the lowest level never drops below the parameters' bytes) and the
                peak stays within torch.cuda.max_memory_allocated().
4. recompute    recompute is found from markers, one ``ckprof::recompute::<region>`` per
                region per step, each region with non-zero recompute GPU time.
5. nvtx         ckprof's NVTX backend is active and gets every marker as a balanced
                push/pop (recorded in-process: without an attached tool NVTX calls are
                no-ops, so only nsys can show they are *recorded*; see 6).
6. nsys         (when ``nsys`` is on PATH) the same training under ``nsys profile`` with
                ckprof.capture(nsys=True), exported with ``nsys export --type sqlite`` and
                read by ckprof.trace.nsys.load_nsys: same regions, same recompute count, non-zero
                recompute GPU time per region, and a recompute share of GPU time within
                2x of the Chrome trace's (CUDA memory events are counted, not required:
                a warmed-up caching allocator may not cudaMalloc inside the range).

``--allow-cpu`` runs the CPU-independent parts on CPU (CUDA-only checks SKIP, GPU-time
comparisons left out) so the script itself can be exercised on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCKS = 4
DIM = 512
HIDDEN = 2048
BATCH = 64
NSYS_CHILD_TIMEOUT_S = 240
NSYS_EXPORT_TIMEOUT_S = 120


@dataclass
class Result:
    name: str
    status: str          # PASS | FAIL | SKIP
    detail: str


@dataclass
class Context:
    device: str
    out: Path
    steps: int
    cuda: bool
    state: dict[str, Any] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)


class Skip(Exception):
    """A check that does not apply here (prerequisite failed, no nsys, CPU mode)."""


# ------------------------------------------------------------------------ the workload


def build(device: str) -> tuple[Any, Any, Any]:
    import torch

    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = torch.nn.Linear(DIM, HIDDEN)
            self.fc2 = torch.nn.Linear(HIDDEN, DIM)

        def forward(self, x: Any) -> Any:
            return self.fc2(torch.nn.functional.gelu(self.fc1(x)))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block() for _ in range(BLOCKS)])
            self.head = torch.nn.Linear(DIM, 1)

        def forward(self, x: Any) -> Any:
            import ckprof

            for block in self.blocks:
                x = ckprof.checkpoint(block, x)
            return self.head(x)

    model = Net().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, DIM, device=device)
    return model, opt, x


def train_step(model: Any, opt: Any, x: Any) -> None:
    opt.zero_grad(set_to_none=True)
    loss = model(x).square().mean()
    loss.backward()
    opt.step()


def run_capture(device: str, out: Path, steps: int, *, nsys: bool = False,
                strict: bool = True) -> list[Path]:
    import torch

    import ckprof

    model, opt, x = build(device)
    for _ in range(2):  # warm up kernels / cuBLAS handles outside the profiled steps
        train_step(model, opt, x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    with ckprof.capture(out, wait=1, warmup=1, active=steps, nsys=nsys) as cap:
        for _ in range(steps + 2):
            train_step(model, opt, x)
            cap.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    if cap.errors and strict:
        raise RuntimeError(f"capture reported errors: {cap.errors}")
    return list(cap.trace_paths)


# ------------------------------------------------------------------------------ checks


def check_capture(ctx: Context) -> str:
    import torch

    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    paths = run_capture(ctx.device, ctx.out / "chrome", ctx.steps)
    if len(paths) != 1:
        raise AssertionError(f"expected 1 trace file, got {len(paths)}: {paths}")
    if ctx.cuda:
        ctx.state["max_allocated"] = int(torch.cuda.max_memory_allocated())
    model, _, _ = build(ctx.device)
    ctx.state["param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    import ckprof

    ctx.state["analysis"] = a = ckprof.load(paths[0])
    ctx.state["trace_path"] = paths[0]
    size_mb = paths[0].stat().st_size / 2**20
    return (f"{paths[0].name} ({size_mb:.1f} MiB), {a.step_count} steps, "
            f"device {a.trace.ckprof.get('device') if a.trace.ckprof else '?'}")


def _analysis(ctx: Context) -> Any:
    a = ctx.state.get("analysis")
    if a is None:
        raise Skip("no analysis (capture failed)")
    return a


def check_kernels(ctx: Context) -> str:
    a = _analysis(ctx)
    if not ctx.cuda:
        raise Skip("CPU mode")
    ev = a.trace.events
    kernels = int((ev["kind"] == "kernel").sum())
    if kernels == 0:
        raise AssertionError("no CUDA kernels in the trace (was CUDA activity recorded?)")
    g = a.time.gpu_events
    matched = float((g["launched_by"] >= 0).mean()) if len(g) else 0.0
    if matched < 0.95:
        raise AssertionError(f"only {matched:.1%} of {len(g)} GPU events pair with a launch")
    a.time.self_check()
    return f"{kernels} kernels, {len(g)} GPU events in steps, {matched:.1%} paired by correlation"


def check_memory(ctx: Context) -> str:
    a = _analysis(ctx)
    if not ctx.cuda:
        raise Skip("CPU mode")
    mem = a.trace.memory
    devices = sorted(d for d in set(mem["device"].astype(str)) if d.startswith("cuda"))
    if not devices:
        raise AssertionError("no CUDA [memory] events in the trace")
    dev = devices[0]
    meta = (a.trace.ckprof or {}).get("memory_baseline", {}).get(dev, {})
    if meta.get("counter_absolute") is not True:
        raise AssertionError(f"capture metadata does not mark {dev} absolute: {meta}")
    if a.memory.absolute.get(dev) is not True:
        raise AssertionError(f"analysis does not treat {dev} as absolute")
    tl = a.memory.timeline
    levels = tl.loc[tl["device"] == dev, "allocated_bytes"]
    low, high = int(levels.min()), int(levels.max())
    params = int(ctx.state["param_bytes"])
    if low < params:
        raise AssertionError(f"lowest {dev} level {low} B < parameter bytes {params} B: "
                             "counter is not absolute")
    peak_max = int(ctx.state["max_allocated"])
    if high > peak_max:
        raise AssertionError(f"trace peak {high} B > torch.cuda.max_memory_allocated {peak_max} B")
    return (f"{int((mem['device'] == dev).sum())} events on {dev}; level {low / 2**20:.1f}-"
            f"{high / 2**20:.1f} MiB (params {params / 2**20:.1f} MiB, "
            f"max_memory_allocated {peak_max / 2**20:.1f} MiB)")


def check_recompute(ctx: Context) -> str:
    a = _analysis(ctx)
    if a.phases.recompute_found_by != "markers":
        raise AssertionError(f"recompute found by {a.phases.recompute_found_by!r}, not markers")
    regions = a.regions_table()
    ctx.state["regions"] = regions
    if len(regions) != BLOCKS:
        raise AssertionError(f"{len(regions)} regions, expected {BLOCKS}: {list(regions['region'])}")
    counts = set(regions["count"].tolist())
    if counts != {a.step_count}:
        raise AssertionError(f"recompute counts {counts}, expected {a.step_count} per region")
    detail = f"{BLOCKS} regions x {a.step_count} recomputes"
    if ctx.cuda:
        zero = regions.loc[~(regions["gpu_ms"] > 0), "region"].tolist()
        if zero:
            raise AssertionError(f"regions without recompute GPU time: {zero}")
        totals = a.totals_table().set_index("phase")
        detail += (f"; recompute GPU {totals.loc['recompute', 'gpu_ms']:.3f} ms vs forward "
                   f"{totals.loc['forward', 'gpu_ms']:.3f} ms; overhead "
                   f"{a.time.recompute_overhead_pct:.1f} %")
    return detail


def check_nvtx(ctx: Context) -> str:
    from ckprof.capture import nvtx as ck_nvtx
    from ckprof.trace.markers import BACKWARD, FORWARD, OPTIMIZER, RECOMPUTE_PREFIX

    backend = ck_nvtx.backend()
    if backend not in ("nvtx", "torch"):
        raise AssertionError(f"NVTX backend is {backend!r}: install the nvtx package")
    impl = ck_nvtx._BACKEND
    pushed: list[str] = []
    pops = [0]
    orig_push, orig_pop = impl.push, impl.pop

    def push(name: str) -> None:
        pushed.append(name)
        orig_push(name)

    def pop() -> None:
        pops[0] += 1
        orig_pop()

    impl.push, impl.pop = push, pop
    try:
        # nsys=True forces NVTX during the active steps (and brackets them with
        # cudaProfilerStart/Stop, harmless without nsys)
        with warnings_ignored():
            run_capture(ctx.device, ctx.out / "nvtx", 1, nsys=True, strict=ctx.cuda)
    finally:
        del impl.push, impl.pop
    if len(pushed) != pops[0]:
        raise AssertionError(f"{len(pushed)} pushes but {pops[0]} pops")
    names = set(pushed)
    missing = {FORWARD, BACKWARD, OPTIMIZER} - names
    recompute = {n for n in names if n.startswith(RECOMPUTE_PREFIX)}
    if missing or len(recompute) != BLOCKS:
        raise AssertionError(f"missing {sorted(missing)}; recompute ranges {sorted(recompute)}")
    return f"backend {backend}: {len(pushed)} balanced ranges, {len(recompute)} recompute regions"


@contextlib.contextmanager
def warnings_ignored():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def check_nsys(ctx: Context, script: Path, no_nsys: bool) -> str:
    if no_nsys:
        raise Skip("--no-nsys")
    nsys = shutil.which("nsys")
    if nsys is None:
        raise Skip("nsys not on PATH")
    chrome = _analysis(ctx)
    from ckprof.cli.nsys_command import build_nsys_command
    from ckprof.trace.nsys import load_nsys

    rep = ctx.out / "nsys_run"
    argv = build_nsys_command(
        [sys.executable, str(script), "--child-nsys", str(ctx.out / "nsys_child"),
         "--steps", str(ctx.steps)],
        output=str(rep), extra=["--force-overwrite=true"])
    argv[0] = nsys
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=NSYS_CHILD_TIMEOUT_S)
    if proc.returncode != 0:
        raise AssertionError(f"nsys profile exited {proc.returncode}: {proc.stderr[-800:]}")
    report = next((p for p in (rep.with_suffix(".nsys-rep"), rep.with_suffix(".qdrep"))
                   if p.exists()), None)
    if report is None:
        raise AssertionError(f"nsys wrote no report next to {rep}: {proc.stdout[-400:]}")
    sqlite = rep.with_suffix(".sqlite")
    proc = subprocess.run([nsys, "export", "--type", "sqlite", "--force-overwrite=true",
                           "-o", str(sqlite), str(report)],
                          capture_output=True, text=True, timeout=NSYS_EXPORT_TIMEOUT_S)
    if proc.returncode != 0 or not sqlite.exists():
        raise AssertionError(f"nsys export exited {proc.returncode}: {proc.stderr[-800:]}")
    trace = load_nsys(sqlite)
    trace.check()
    from ckprof.analysis import analyze

    a = analyze(trace)
    problems = []
    if a.phases.recompute_found_by != "markers":
        problems.append(f"recompute found by {a.phases.recompute_found_by!r}")
    got = a.regions_table().set_index("region")
    want = chrome.regions_table().set_index("region")
    if set(got.index) != set(want.index):
        problems.append(f"regions {sorted(got.index)} != Chrome {sorted(want.index)}")
    else:
        if got["count"].sum() != want["count"].sum():
            problems.append(f"recompute count {int(got['count'].sum())} != Chrome "
                            f"{int(want['count'].sum())}")
        zero = got.index[~(got["gpu_ms"] > 0)].tolist()
        if zero and ctx.cuda:
            problems.append(f"no recompute GPU time for {zero}")
    # informational: with --capture-range=cudaProfilerApi and a warmed-up caching
    # allocator, the active steps may make no cudaMalloc at all
    n_mem = len(trace.memory)

    def share(x: Any) -> float:
        t = x.totals_table().set_index("phase")["gpu_ms"].fillna(0.0)
        return float(t["recompute"] / t.sum()) if t.sum() > 0 else 0.0

    s_nsys, s_chrome = share(a), share(chrome)
    if ctx.cuda and not (s_chrome > 0 and 0.5 <= s_nsys / s_chrome <= 2.0):
        problems.append(f"recompute share of GPU time {s_nsys:.1%} vs Chrome {s_chrome:.1%}")
    if problems:
        raise AssertionError("; ".join(problems))
    n_k = int((trace.events["kind"] == "kernel").sum())
    g = a.time.gpu_events
    paired = float((g["launched_by"] >= 0).mean()) if len(g) else 0.0
    return (f"{sqlite.name}: {n_k} kernels ({paired:.1%} paired with a runtime call), "
            f"{len(got)} regions, recompute share {s_nsys:.1%} (Chrome {s_chrome:.1%}), "
            f"{n_mem} CUDA memory events, "
            f"{time.perf_counter() - t0:.0f} s")


# -------------------------------------------------------------------------------- main


def run_check(ctx: Context, name: str, fn: Callable[[], str]) -> None:
    t0 = time.perf_counter()
    try:
        detail = fn()
        status = "PASS"
    except Skip as why:
        status, detail = "SKIP", str(why)
    except Exception as err:
        status = "FAIL"
        detail = f"{type(err).__name__}: {err}"
        if os.environ.get("CKPROF_GPU_CHECK_DEBUG"):
            traceback.print_exc()
    ctx.results.append(Result(name, status, detail))
    print(f"[{status}] {name:<10} {detail}  ({time.perf_counter() - t0:.1f} s)", flush=True)


def child_nsys(out: Path, steps: int) -> int:
    """The workload nsys profiles: capture(nsys=True) on CUDA."""
    import torch

    cuda = torch.cuda.is_available()
    run_capture("cuda" if cuda else "cpu", out, steps, nsys=True, strict=cuda)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="working folder (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--steps", type=int, default=3, help="active steps to capture")
    ap.add_argument("--no-nsys", action="store_true", help="skip the nsys run even if installed")
    ap.add_argument("--allow-cpu", action="store_true",
                    help="run the CPU-independent checks on CPU (development)")
    ap.add_argument("--child-nsys", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global DIM, HIDDEN, BATCH

    try:
        import torch
    except ImportError:
        print("FAIL: no CUDA device: torch is not installed", file=sys.stderr)
        return 2
    cuda = bool(torch.cuda.is_available())
    if args.child_nsys is not None:
        if not cuda:
            DIM, HIDDEN, BATCH = 64, 128, 8
        return child_nsys(args.child_nsys, args.steps)
    if not cuda and not args.allow_cpu:
        print("FAIL: no CUDA device (torch.cuda.is_available() is False, torch "
              f"{torch.__version__}); run this on a GPU machine", file=sys.stderr)
        return 2

    import ckprof

    device = "cuda" if cuda else "cpu"
    if not cuda:  # development run: a smaller model keeps it quick on a laptop CPU
        DIM, HIDDEN, BATCH = 64, 128, 8
    name = torch.cuda.get_device_name(0) if cuda else "CPU (--allow-cpu)"
    print(f"ckprof GPU check: {name}, torch {torch.__version__}, ckprof {ckprof.__version__}",
          flush=True)
    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="ckprof_gpu_check_")
        out = Path(tmp)
    else:
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
    ctx = Context(device=device, out=out, steps=args.steps, cuda=cuda)
    t0 = time.perf_counter()
    try:
        run_check(ctx, "capture", lambda: check_capture(ctx))
        run_check(ctx, "kernels", lambda: check_kernels(ctx))
        run_check(ctx, "memory", lambda: check_memory(ctx))
        run_check(ctx, "recompute", lambda: check_recompute(ctx))
        run_check(ctx, "nvtx", lambda: check_nvtx(ctx))
        run_check(ctx, "nsys", lambda: check_nsys(ctx, Path(__file__).resolve(), args.no_nsys))
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    counts = {s: sum(r.status == s for r in ctx.results) for s in ("PASS", "FAIL", "SKIP")}
    verdict = "FAIL" if counts["FAIL"] else "PASS"
    print(f"SUMMARY: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
          f"in {time.perf_counter() - t0:.0f} s -> {verdict}"
          + (f" (files kept in {out})" if args.keep or tmp is None else ""), flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
