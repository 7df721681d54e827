"""How fast the memory plot's max-preserving downsampling and rendering are on a
memory timeline of a million events (issue 3: "fast and readable on hundreds of
thousands of memory events ... never lose the peak").

    python benchmarks/bench_plot_downsample.py [--points 1000000] [--buckets 1500]

Prints the downsampling time, the points kept, whether the global max (value and
timestamp) survived, and the time to render a step line to PNG with and without
downsampling (the ratio is the point: both in this run).
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from matplotlib.figure import Figure

from ckprof.report.plots import downsample_envelope


def render_png_s(ts: np.ndarray, values: np.ndarray) -> float:
    t0 = time.perf_counter()
    fig = Figure(figsize=(11, 4.8))
    ax = fig.add_subplot()
    ax.step(ts, values, where="post", linewidth=0.8)
    fig.savefig(io.BytesIO(), format="png", dpi=120)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--buckets", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    ts = np.cumsum(rng.integers(1, 2000, args.points)).astype(np.int64)
    values = np.cumsum(rng.integers(-4096, 4097, args.points)).astype(np.int64) + 2**30
    t0 = time.perf_counter()
    ts_d, v_d = downsample_envelope(ts, values, args.buckets)
    down_s = time.perf_counter() - t0
    peak = int(values.argmax())
    kept = bool(v_d.max() == values[peak] and ts[peak] in set(ts_d[v_d == v_d.max()].tolist()))
    full_s = render_png_s(ts, values)
    small_s = render_png_s(ts_d, v_d)
    print(f"points                 {args.points:,}")
    print(f"downsample_envelope    {down_s:.3f} s -> {len(ts_d):,} points ({args.buckets} buckets)")
    print(f"global peak kept       {'yes' if kept else 'NO'} ({values[peak]:,} bytes at {ts[peak]})")
    print(f"render PNG, all points {full_s:.3f} s")
    print(f"render PNG, downsampled {small_s:.3f} s  ({full_s / small_s:.1f}x faster)")
    if not kept:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
