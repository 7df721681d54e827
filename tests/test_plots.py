"""Plots: figures whose content is checked against the analysis, not just saved.

The synthetic trace used here (and by test_html.py / test_annotate.py) is a small
checkpointed training step built with tests/support/builders.py: two regions,
markers, CPU [memory] events with a capture baseline, optionally GPU kernels and
CUDA memory.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.builders import TraceBuilder

from ckprof.errors import NotCapturedError, OutputExistsError
from ckprof.report import plots
from ckprof.trace.markers import PHASE_COLORS, PHASES

BASELINE_CPU = 1_000_000
REGIONS = ("block0", "block1")


# --------------------------------------------------------------------------- fixtures
def build_checkpointed(n_steps: int = 2, *, gpu: bool = False, memory: bool = True,
                       regions: tuple[str, ...] = REGIONS) -> TraceBuilder:
    """GIVEN-side helper: ``n_steps`` ProfilerSteps of forward (checkpointed regions),
    backward (each region recomputed once), optimizer; memory rises in forward,
    peaks in recompute, drops after backward. Step i allocates (i+1) times more so
    every step has its own peaks."""
    b = TraceBuilder()
    meta = {
        "ckprof_version": "0.1.0", "torch_version": "2.13.0+cpu", "device": "cuda:0" if gpu else "cpu",
        "rank": 0, "world_size": 1, "markers": True,
        "memory_baseline": {"cpu": {"bytes": BASELINE_CPU, "method": "gc-tensors", "counter_absolute": False}},
        "checkpoint": {"early_stop": True, "regions": {r: {"use_reentrant": False, "sac": False} for r in regions}},
    }
    if gpu:
        meta["memory_baseline"]["cuda:0"] = {"bytes": 0, "method": "torch.cuda.memory_allocated",
                                             "counter_absolute": True}
    b.meta(ckprof=meta)
    total = {"cpu": 50_000, "cuda:0": 4_000_000}

    def mem(ts: float, nbytes: int, device: str = "cpu") -> None:
        if not memory:
            return
        total[device] += nbytes
        b.memory(ts, bytes=nbytes, total_allocated=total[device], total_reserved=total[device] * 2,
                 device=device)

    seq = 0
    for i in range(n_steps):
        s = 100.0 + i * 1000.0
        scale = i + 1
        b.step(i + 1, s, 1000)
        b.marker("forward", s + 10, 290)
        for k, region in enumerate(regions):
            t = s + 20 + k * 110
            b.marker(f"checkpoint:{region}", t, 100)
            seq += 1
            b.op("aten::mm", t + 10, 50, seq=seq)
            if gpu:
                b.launch(ts=t + 12, kernel="gemm_fwd", kernel_ts=t + 15, kernel_dur=30)
                mem(t + 13, 1_000_000 * scale, "cuda:0")
            mem(t + 11, 2_000 * (k + 1) * scale)
        b.op("aten::mse_loss", s + 250, 20, seq=999)
        b.marker("backward", s + 320, 480)
        b.evaluate("MseLossBackward0", s + 322, 10, seq=999)
        for n, k in enumerate(reversed(range(len(regions)))):
            t = s + 340 + n * 200
            b.evaluate("MmBackward0", t, 150, seq=10 + k)
            b.marker(f"recompute:{regions[k]}", t + 5, 60)
            seq += 1
            b.op("aten::mm", t + 10, 40, seq=seq)
            mem(t + 11, 5_000 * scale)
            if gpu:
                b.launch(ts=t + 12, kernel="gemm_recompute", kernel_ts=t + 20, kernel_dur=25)
                mem(t + 14, 2_000_000 * scale, "cuda:0")
                mem(t + 90, -2_000_000 * scale, "cuda:0")
            mem(t + 100, -5_000 * scale)
            if gpu:
                b.launch(ts=t + 110, kernel="gemm_bwd", kernel_ts=t + 115, kernel_dur=20)
        for k in range(len(regions)):
            mem(s + 790 + k * 0.5, -2_000 * (k + 1) * scale)
            if gpu:
                mem(s + 791 + k * 0.5, -1_000_000 * scale, "cuda:0")
        b.marker("optimizer", s + 820, 130)
        b.op("aten::add_", s + 830, 50)
        mem(s + 835, 300 * scale)
        mem(s + 890, -300 * scale)
    return b


@pytest.fixture(scope="module")
def analysis():
    """A 2-step checkpointed CPU analysis (markers, memory, baseline)."""
    from ckprof.analysis import analyze

    return analyze(build_checkpointed(2).to_trace(path="synthetic_ckpt.json"))


@pytest.fixture(scope="module")
def gpu_analysis():
    from ckprof.analysis import analyze

    return analyze(build_checkpointed(3, gpu=True).to_trace(path="synthetic_gpu.json"))


def png_pixels(fig) -> np.ndarray:
    """Render a figure to PNG and read it back as an RGB(A) array."""
    import matplotlib.image as mpimg

    return mpimg.imread(io.BytesIO(plots.figure_bytes(fig, "png", dpi=60)), format="png")


def assert_not_blank(pixels: np.ndarray) -> None:
    rgb = pixels[..., :3]
    non_white = np.any(rgb < 0.97, axis=-1)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 200
    assert non_white.mean() > 0.02, "figure is (almost) blank"
    assert len(np.unique(rgb.reshape(-1, 3).round(2), axis=0)) > 5, "figure has almost no colours"


def artists_with_gid(fig, prefix: str) -> list:
    return [a for a in fig.findobj() if (a.get_gid() or "").startswith(prefix)]


def bars_with_gid(fig, prefix: str) -> list:
    """The bar rectangles (matplotlib puts a bar() call's gid on each rectangle)."""
    from matplotlib.patches import Rectangle

    return [a for a in artists_with_gid(fig, prefix) if isinstance(a, Rectangle)]


# --------------------------------------------------------------------------- downsampling
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(-10**12, 10**12)), min_size=1, max_size=600),
    st.integers(1, 50),
)
def test_downsample_envelope_keeps_every_bucket_extreme(points, n_buckets):
    """GIVEN any sorted series WHEN it is downsampled THEN the kept points are a
    time-ordered subset, at most 4 per bucket, and every bucket's min and max
    (so the global peak, at its timestamp) survive; the inputs are untouched."""
    points = sorted(points, key=lambda p: p[0])
    ts = np.array([p[0] for p in points], dtype=np.int64)
    vals = np.array([p[1] for p in points], dtype=np.int64)
    ts_before, vals_before = ts.copy(), vals.copy()
    ts_d, vals_d = plots.downsample_envelope(ts, vals, n_buckets)
    assert np.array_equal(ts, ts_before) and np.array_equal(vals, vals_before)
    assert len(ts_d) <= max(4 * n_buckets, len(ts))
    if len(ts) > 4 * n_buckets:
        assert len(ts_d) <= 4 * n_buckets
    assert np.all(np.diff(ts_d) >= 0)
    assert vals_d.max() == vals.max() and vals_d.min() == vals.min()
    peak_times = set(ts[vals == vals.max()].tolist())
    assert set(ts_d[vals_d == vals.max()].tolist()) <= peak_times
    # each kept (t, v) pair exists in the input
    pairs = set(zip(ts.tolist(), vals.tolist(), strict=True))
    assert set(zip(ts_d.tolist(), vals_d.tolist(), strict=True)) <= pairs
    # per-bucket extremes preserved
    if len(ts) > 4 * n_buckets and ts[-1] > ts[0]:
        bucket = np.minimum(((ts - ts[0]) * (n_buckets / (ts[-1] - ts[0]))).astype(np.int64), n_buckets - 1)
        bucket_d = np.minimum(((ts_d - ts[0]) * (n_buckets / (ts[-1] - ts[0]))).astype(np.int64), n_buckets - 1)
        for b_id in np.unique(bucket):
            assert vals_d[bucket_d == b_id].max() == vals[bucket == b_id].max()
            assert vals_d[bucket_d == b_id].min() == vals[bucket == b_id].min()


def test_downsample_envelope_one_million_points_is_small_and_exact():
    """GIVEN 1,000,000 noisy samples with one spike WHEN downsampled to 1,000
    buckets THEN at most 4,000 points remain and the spike is kept exactly."""
    rng = np.random.default_rng(0)
    ts = np.cumsum(rng.integers(1, 50, 1_000_000)).astype(np.int64)
    vals = rng.integers(0, 1_000_000, 1_000_000).astype(np.int64)
    vals[123_457] = 5_000_000
    ts_d, vals_d = plots.downsample_envelope(ts, vals, 1000)
    assert len(ts_d) <= 4000
    assert vals_d.max() == 5_000_000
    assert ts_d[np.argmax(vals_d)] == ts[123_457]


# --------------------------------------------------------------------------- memory timeline
def test_memory_timeline_marks_exactly_the_analysed_peaks(analysis):
    """GIVEN a 2-step checkpointed trace WHEN the memory timeline is drawn THEN
    every (step, phase, device) peak of the analysis is a marker at
    (at_ts_ns, peak_bytes), no more, no less."""
    fig = plots.plot_memory_timeline(analysis)
    t0 = int(analysis.phases.steps["start_ns"].min())
    drawn = set()
    for line in artists_with_gid(fig, "peaks:"):
        phase = line.get_gid().split(":", 1)[1]
        for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True):
            drawn.add((phase, round(float(x) * 1e6) + t0, int(y)))
    peaks = analysis.memory.peaks
    expected = {(str(p), int(ts), int(b)) for p, ts, b in
                zip(peaks["phase"].astype(str), peaks["at_ts_ns"], peaks["peak_bytes"], strict=True)}
    assert len(expected) >= 2 * 4  # 2 steps x forward/backward/recompute/optimizer at least
    assert drawn == expected
    # each phase's legend entry names its overall peak; the plot names the highest
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for row in analysis.memory.peaks_total.itertuples(index=False):
        assert f"{row.phase} peak: {plots.format_bytes(int(row.peak_bytes))}" in legend
    (label,) = artists_with_gid(fig, "peak-label:cpu")
    top = peaks.loc[peaks["peak_bytes"].idxmax()]
    assert label.get_text().startswith(f"peak {plots.format_bytes(int(top['peak_bytes']))} ({top['phase']}")


def test_memory_timeline_line_is_absolute_and_reaches_the_peak(analysis):
    """GIVEN a CPU trace with a 1 MB capture baseline WHEN drawn THEN the line is
    in absolute bytes (baseline included) and its max equals the highest peak."""
    fig = plots.plot_memory_timeline(analysis)
    (line,) = artists_with_gid(fig, "memory:cpu")
    y = np.asarray(line.get_ydata())
    assert y.min() >= BASELINE_CPU
    assert y.max() == analysis.memory.peaks["peak_bytes"].max()


def test_memory_timeline_shades_one_span_per_segment(analysis):
    """GIVEN the phase segments WHEN drawn THEN each phase, "other" included (so its
    peak marker sits on a span the legend explains), has one shaded span per segment,
    in that phase's colour."""
    from matplotlib.colors import to_hex

    fig = plots.plot_memory_timeline(analysis)
    seg = analysis.phases.segments
    for phase in PHASES:
        spans = artists_with_gid(fig, f"phase:{phase}")
        n_expected = int((seg["phase"].astype(str) == phase).sum())
        if n_expected == 0:
            assert spans == []
            continue
        (coll,) = spans
        assert len(coll.get_paths()) == n_expected
        assert to_hex(coll.get_facecolor()[0], keep_alpha=False) == PHASE_COLORS[phase].lower()
    assert n_expected_recompute(analysis) == 4
    assert len(artists_with_gid(fig, "phase:recompute")[0].get_paths()) == 4
    assert_not_blank(png_pixels(fig))


def n_expected_recompute(analysis) -> int:
    return int((analysis.phases.segments["phase"].astype(str) == "recompute").sum())


def test_memory_timeline_one_step_and_one_line_per_device(gpu_analysis):
    """GIVEN a 3-step trace with CPU and CUDA memory WHEN only step 2 is drawn
    THEN there is one line per device and only step 2's peaks are marked."""
    fig = plots.plot_memory_timeline(gpu_analysis, steps=[2])
    lines = artists_with_gid(fig, "memory:")
    assert sorted(line.get_gid() for line in lines) == ["memory:cpu", "memory:cuda:0"]
    n_marked = sum(len(line.get_xdata()) for line in artists_with_gid(fig, "peaks:"))
    peaks = gpu_analysis.memory.peaks
    assert n_marked == int((peaks["step"] == 2).sum())
    with pytest.raises(NotCapturedError):
        plots.plot_memory_timeline(gpu_analysis, steps=[42])


def with_memory_noise(trace, n_pairs: int):
    """The same trace with ``n_pairs`` extra 64-byte alloc/free pairs spread over
    its first forward (memory table rebuilt per the Trace contract)."""

    import pandas as pd

    ev = trace.events
    fwd = ev[ev["name"].astype(str) == "ckprof::forward"].iloc[0]
    start, dur = int(fwd["ts_ns"]), int(fwd["dur_ns"])
    ts = start + 1 + (np.arange(2 * n_pairs) * (dur - 2)) // (2 * n_pairs)
    noise = pd.DataFrame({"ts_ns": ts, "bytes": np.tile([64, -64], n_pairs)})
    mem = trace.memory
    both = pd.concat([mem[["ts_ns", "bytes"]], noise], ignore_index=True).sort_values("ts_ns", kind="stable")
    first_total = int(mem["total_allocated_bytes"].iloc[0] - mem["bytes"].iloc[0])
    total = first_total + both["bytes"].cumsum().to_numpy()
    n = len(both)
    new_mem = pd.DataFrame({
        "ts_ns": both["ts_ns"].to_numpy(np.int64),
        "device": pd.Categorical(["cpu"] * n),
        "pid": np.full(n, int(mem["pid"].iloc[0]), dtype=np.int64),
        "tid": np.full(n, int(mem["tid"].iloc[0]), dtype=np.int64),
        "total_allocated_bytes": total.astype(np.int64),
        "total_reserved_bytes": (2 * total).astype(np.int64),
        "bytes": both["bytes"].to_numpy(np.int64),
        "addr": np.full(n, -1, dtype=np.int64),
    })
    out = trace.with_frames(memory=new_mem)
    out.check()
    return out


def test_memory_timeline_stays_small_with_many_events():
    """GIVEN a trace with 300,000 [memory] events WHEN drawn with 800 buckets
    THEN the line holds at most 4 x 800 (+1) points and still reaches the peak."""
    from ckprof.analysis import analyze

    a = analyze(with_memory_noise(build_checkpointed(1).to_trace(path="big.json"), 150_000))
    assert len(a.memory.timeline) > 300_000
    fig = plots.plot_memory_timeline(a, max_points=800)
    (line,) = artists_with_gid(fig, "memory:cpu")
    assert len(line.get_xdata()) <= 4 * 800 + 1
    assert np.asarray(line.get_ydata()).max() == a.memory.peaks["peak_bytes"].max()
    assert_not_blank(png_pixels(fig))


def test_memory_timeline_not_captured_says_so():
    """GIVEN a trace without [memory] events WHEN the memory plot is asked for
    THEN NotCapturedError (exit code 7) explains it."""
    from ckprof.analysis import analyze

    a = analyze(build_checkpointed(1, memory=False).to_trace(path="nomem.json"))
    with pytest.raises(NotCapturedError) as err:
        plots.plot_memory_timeline(a)
    assert err.value.exit_code == 7
    assert "memory" in str(err.value)


# --------------------------------------------------------------------------- breakdown
def test_time_breakdown_bars_match_by_step(analysis):
    """GIVEN 2 steps WHEN the breakdown is drawn THEN each phase has one bar per
    step whose height is that step's wall ms, stacked in PHASES order."""
    fig = plots.plot_time_breakdown(analysis)
    by = analysis.time.by_step
    bottoms = np.zeros(2)
    for phase in PHASES:
        patches = bars_with_gid(fig, f"wall:{phase}")
        assert len(patches) == 2
        want = by[by["phase"].astype(str) == phase].sort_values("step")["wall_ns"].to_numpy() / 1e6
        assert np.allclose([p.get_height() for p in patches], want)
        assert np.allclose([p.get_y() for p in patches], bottoms)
        bottoms = bottoms + want
    assert artists_with_gid(fig, "gpu:") == []
    assert_not_blank(png_pixels(fig))


def test_time_breakdown_adds_gpu_bars_when_present(gpu_analysis):
    """GIVEN a trace with GPU kernels WHEN drawn THEN a second (GPU) stack per
    step appears: 3 steps x 5 phases x 2 kinds of bars."""
    fig = plots.plot_time_breakdown(gpu_analysis)
    n_wall = len(bars_with_gid(fig, "wall:"))
    n_gpu = len(bars_with_gid(fig, "gpu:"))
    assert n_wall == n_gpu == 3 * len(PHASES)
    gpu_recompute = sum(p.get_height() for p in bars_with_gid(fig, "gpu:recompute"))
    by = gpu_analysis.time.by_step
    want = by[by["phase"].astype(str) == "recompute"]["gpu_ns"].sum() / 1e6
    assert gpu_recompute == pytest.approx(want) and want > 0


# --------------------------------------------------------------------------- regions
def test_recompute_regions_one_sorted_bar_per_region(analysis):
    """GIVEN two recomputed regions WHEN drawn THEN one bar each, the longest at
    the top, widths equal to the regions table."""
    fig = plots.plot_recompute_regions(analysis)
    bars = bars_with_gid(fig, "regions:recompute")
    table = analysis.regions_table()
    assert len(bars) == len(table) == len(REGIONS)
    widths = [p.get_width() for p in sorted(bars, key=lambda p: -p.get_y())]
    assert np.allclose(widths, table["wall_ms"].to_numpy())
    assert widths == sorted(widths, reverse=True)
    ax = fig.axes[0]
    tick_labels = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(tick_labels) == sorted(table["region"].tolist())
    assert_not_blank(png_pixels(fig))


def test_recompute_regions_without_recompute_says_so():
    """GIVEN a step without checkpointing WHEN drawn THEN the figure says no
    recompute was found instead of drawing empty axes."""
    from ckprof.analysis import analyze

    a = analyze(build_checkpointed(1, regions=()).to_trace(path="plain.json"))
    fig = plots.plot_recompute_regions(a)
    (msg,) = artists_with_gid(fig, "no-regions")
    assert "No recompute" in msg.get_text()


# --------------------------------------------------------------------------- categories
def test_memory_categories_from_raw_timeline(tmp_path: Path, analysis):
    """GIVEN a torch-style .raw.json.gz memory timeline next to the trace WHEN the
    categories plot is drawn THEN it stacks the categories present and states the
    recompute mislabelling; without the file it raises NotCapturedError."""
    import dataclasses
    import gzip
    import json

    trace_path = tmp_path / "run.pt.trace.json.gz"
    trace_path.write_bytes(b"")
    t0 = int(analysis.phases.steps["start_ns"].min())
    rows = [[-1, 0, 4096, 0], [t0 + 1000, 2, 8192, 4], [t0 + 2000, 2, 1024, 5], [t0 + 500_000, 4, -8192, 4]]
    (tmp_path / "run.raw.json.gz").write_bytes(gzip.compress(json.dumps(rows).encode()))
    a = dataclasses.replace(analysis, trace=dataclasses.replace(analysis.trace, path=str(trace_path)))
    fig = plots.plot_memory_categories(a)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["parameter", "activation", "gradient"]
    assert "recomputed" in ax.get_title(loc="left")
    (tmp_path / "run.raw.json.gz").unlink()
    with pytest.raises(NotCapturedError, match="not captured"):
        plots.plot_memory_categories(a)


# --------------------------------------------------------------------------- saving / CLI
def test_save_figure_never_overwrites(tmp_path: Path, analysis):
    """GIVEN an existing file WHEN saving without force THEN OutputExistsError and
    the file is unchanged; with force it is replaced by a real PNG."""
    out = tmp_path / "fig.png"
    out.write_bytes(b"keep me")
    fig = plots.plot_time_breakdown(analysis)
    with pytest.raises(OutputExistsError):
        plots.save_figure(fig, out)
    assert out.read_bytes() == b"keep me"
    plots.save_figure(fig, out, force=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plots") / "ckpt.json.gz"
    build_checkpointed(2).write(path, gzip=True)
    return path


@pytest.mark.parametrize(("kind", "suffix"), [("memory", ".png"), ("breakdown", ".svg"), ("regions", ".pdf")])
def test_cli_plot_writes_real_images(tmp_path: Path, trace_file: Path, kind: str, suffix: str):
    """GIVEN a trace file WHEN `ckprof plot --kind K -o F` runs THEN F is a real
    image of that format; running it again without --force exits 8 and leaves it."""
    from click.testing import CliRunner

    from ckprof.cli.main import cli

    out = tmp_path / f"{kind}{suffix}"
    runner = CliRunner()
    res = runner.invoke(cli, ["plot", str(trace_file), "--kind", kind, "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = out.read_bytes()
    if suffix == ".png":
        import matplotlib.image as mpimg

        assert_not_blank(mpimg.imread(io.BytesIO(data), format="png"))
    elif suffix == ".svg":
        assert b"<svg" in data[:2000] and data.count(b"<path") > 10
    else:
        assert data[:5] == b"%PDF-" and len(data) > 5000
    res = runner.invoke(cli, ["plot", str(trace_file), "--kind", kind, "-o", str(out)])
    assert res.exit_code == 8
    assert "already exists" in res.output
    assert out.read_bytes() == data
    res = runner.invoke(cli, ["plot", str(trace_file), "--kind", kind, "-o", str(out), "--force"])
    assert res.exit_code == 0, res.output


def test_cli_plot_categories_not_captured_exit_code(tmp_path: Path, trace_file: Path):
    """GIVEN a trace without a saved memory timeline WHEN --kind categories
    THEN exit code 7 with a one-line reason and no file."""
    from click.testing import CliRunner

    from ckprof.cli.main import cli

    out = tmp_path / "cat.png"
    res = CliRunner().invoke(cli, ["plot", str(trace_file), "--kind", "categories", "-o", str(out)])
    assert res.exit_code == 7
    assert "not captured" in res.output
    assert not out.exists()
