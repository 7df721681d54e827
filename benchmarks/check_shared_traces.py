"""`ckprof analyze` (the CLI, JSON output) on every trace in ../shared/traces, held against
counts made from the raw JSON without ckprof:

- each step's duration: the ``ProfilerStep#N`` CPU range (``user_annotation`` / legacy
  ``Operator``), exact to the ns;
- each step's GPU time: the GPU events (kernels, memcpy, memset) whose launching runtime
  event, joined by correlation id, starts inside the step (tests/test_gpu_traces.py's
  plain-Python join).

    python benchmarks/check_shared_traces.py            # exit 1 on any mismatch
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_gpu_traces import raw_gpu_launched_per_step  # noqa: E402

STEP_CATS = ("user_annotation", "cpu_op", "Operator")


def main() -> int:
    shared = ROOT.parent / "shared" / "traces"
    files = sorted(shared.glob("*.json.gz"))
    if not files:
        print(f"no traces in {shared}")
        return 1
    bad = 0
    for p in files:
        out = subprocess.run([sys.executable, "-m", "ckprof", "analyze", str(p), "--format", "json"],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{p.name}: ckprof failed: {out.stderr.strip()[:200]}")
            bad += 1
            continue
        d = json.loads(out.stdout)
        with gzip.open(p, "rt") as fh:
            raw = json.load(fh, parse_float=Decimal)
        events = raw["traceEvents"] if isinstance(raw, dict) else raw
        step_ns = {int(e["name"].split("#")[1]): int(Decimal(str(e["dur"])) * 1000) for e in events
                   if e.get("ph") == "X" and str(e.get("name", "")).startswith("ProfilerStep#")
                   and e.get("cat") in STEP_CATS}
        gpu_raw, _ = raw_gpu_launched_per_step(p)
        step_off = gpu_off = 0
        for s in d["steps"]:
            n = s["step"]
            if n not in step_ns or abs(s["step_ms"] * 1e6 - step_ns[n]) > 1:
                step_off += 1
            if d["has_gpu"]:
                gpu_ms = sum(s[ph]["gpu_ms"] or 0 for ph in
                             ("forward", "backward", "recompute", "optimizer", "other"))
                if abs(gpu_ms * 1e6 - gpu_raw.get(n, 0)) > 5:  # 5 phases rounded to 1e-6 ms
                    gpu_off += 1
        missing = sorted(set(step_ns) - {s["step"] for s in d["steps"]})  # raw steps ckprof lost
        bad += step_off + gpu_off + len(missing) + (not d["steps"])
        first = d["steps"][0] if d["steps"] else {"step": None, "step_ms": float("nan")}
        print(f"{p.name:40s} {len(d['steps'])} step(s) (raw {len(step_ns)}, missing {missing or 0}); "
              f"step ms off: {step_off}; "
              f"GPU ms off: {gpu_off if d['has_gpu'] else 'n/a (no GPU)'}; step {first['step']}: "
              f"{first['step_ms']:.3f} ms, raw {step_ns.get(first['step'], 0) / 1e6:.3f} ms")
    print("all equal" if not bad else f"{bad} mismatch(es)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
