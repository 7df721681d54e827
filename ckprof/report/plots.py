"""Figures of an :class:`~ckprof.analysis.Analysis` (matplotlib).

Contract: every ``plot_*`` function is a pure function of the analysis (plus
options) and returns a NEW :class:`matplotlib.figure.Figure`; none calls
``show()``, touches pyplot's global figure list, or changes the matplotlib
backend. Figures are created with an Agg canvas attached, so ``savefig`` works in
scripts, CLIs and CI without a display; in Jupyter (``%matplotlib inline``) they
display like any other figure.

- :func:`plot_memory_timeline` -- allocated bytes over time, phases shaded, the
  peak of every phase marked (the marked values ARE ``analysis.memory.peaks``).
- :func:`plot_time_breakdown` -- one stacked bar per step (wall, and GPU when present).
- :func:`plot_recompute_regions` -- recompute time per checkpointed region, sorted.
- :func:`plot_memory_categories` -- torch's memory-profiler categories over time,
  when the capture saved a ``.raw.json[.gz]`` memory timeline next to the trace.
- :func:`plot_memory_composition` -- live bytes stacked by the phase that allocated
  them (ckprof's own block lifetimes, :mod:`ckprof.analysis.composition`).
- :func:`plot_ab` -- an A/B trace (``capture(ab=True)``): per variant, the median
  step split by phase with every step's time as a dot, and peak memory per phase.

Artists that tests (and curious users) look for carry a ``gid``:
``phase:<phase>`` (shaded spans, one path per segment), ``memory:<device>``
(timeline line), ``peaks:<phase>`` (peak markers), ``wall:<phase>`` /
``gpu:<phase>`` (breakdown bars), ``regions:recompute`` / ``regions:forward``,
``origin:<origin>`` (composition bands), ``composition:total`` (its outline),
``ab:<phase>`` (A/B median phase bars), ``ab:steps:<variant>`` (A/B step dots),
``ab:peak:<variant>`` (A/B peak bars).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ckprof.errors import CkprofError, NotCapturedError
from ckprof.report.output import write_new_file
from ckprof.report.text import format_bytes
from ckprof.trace.markers import PHASE_COLORS, PHASES
from ckprof.trace.memory_timeline import (
    MEMORY_CATEGORIES,
    find_memory_timeline_file,
    read_memory_timeline,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ckprof.analysis import Analysis

__all__ = [
    "FIGURE_FORMATS",
    "PLOT_KINDS",
    "downsample_envelope",
    "figure_bytes",
    "format_bytes",
    "make_plot",
    "plot_ab",
    "plot_memory_categories",
    "plot_memory_composition",
    "plot_memory_timeline",
    "plot_recompute_regions",
    "plot_time_breakdown",
    "save_figure",
]

#: ``ckprof plot --kind`` values
PLOT_KINDS: tuple[str, ...] = ("memory", "breakdown", "regions", "categories", "composition", "ab")
#: output suffix -> matplotlib format
FIGURE_FORMATS: dict[str, str] = {".png": "png", ".svg": "svg", ".pdf": "pdf"}

# Line colours for devices: neutral, distinct from PHASE_COLORS.
_DEVICE_COLORS: tuple[str, ...] = ("#1A1A1A", "#7B3294", "#8C510A", "#01665E", "#B2182B")
_SPAN_ALPHA = 0.22


# --------------------------------------------------------------------------- helpers
def _new_figure(width_in: float, height_in: float) -> Figure:
    """A Figure with an Agg canvas, outside pyplot (nothing global is touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _bytes_unit(max_bytes: float) -> tuple[str, float]:
    unit, div = "B", 1.0
    for u, d in (("KiB", 1024.0), ("MiB", 1024.0**2), ("GiB", 1024.0**3), ("TiB", 1024.0**4)):
        if max_bytes >= d:
            unit, div = u, d
    return unit, div


def _set_bytes_axis(ax: Axes, top_bytes: float) -> str:
    """Y axis in bytes, ticked at round numbers of one binary unit. Returns the unit."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    unit, div = _bytes_unit(top_bytes)
    ticks = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(0.0, top_bytes / div)
    ticks = [t for t in ticks if 0 <= t <= top_bytes / div + 1e-9]
    ax.yaxis.set_major_locator(FixedLocator([t * div for t in ticks]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v / div:g}" if v else "0"))
    ax.set_ylim(0, top_bytes if top_bytes > 0 else 1)
    return unit


def _trace_name(analysis: Analysis) -> str:
    return Path(str(analysis.trace.path)).name


def downsample_envelope(
    ts: np.ndarray, values: np.ndarray, n_buckets: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a sorted series to at most ``4 * n_buckets`` points without losing
    any extreme.

    # NOTE [ Max-preserving downsampling ]
    # The time range is cut into ``n_buckets`` equal buckets (about one per pixel
    # column). From every non-empty bucket we keep its first sample, its last
    # sample, and the first occurrence of its minimum and of its maximum, in time
    # order (``numpy.minimum/maximum.reduceat``, O(n)). So every bucket's min and
    # max survive -- in particular the global peak, at its exact timestamp -- and
    # a step-style line drawn through the kept points covers the same pixels as
    # the full series.

    Returns NEW arrays (the inputs are not modified). ``ts`` must be sorted.
    """
    ts = np.asarray(ts)
    values = np.asarray(values)
    keep = _envelope_keep(ts, values, n_buckets)
    return ts[keep], values[keep]


def _envelope_keep(ts: np.ndarray, values: np.ndarray, n_buckets: int) -> np.ndarray:
    """The sorted positions :func:`downsample_envelope` keeps (all when few)."""
    n = len(ts)
    if n != len(values):
        raise ValueError("ts and values must have the same length")
    if n_buckets < 1:
        raise ValueError("n_buckets must be >= 1")
    if n <= 4 * n_buckets:
        return np.arange(n)
    t0 = float(ts[0])
    span = float(ts[-1]) - t0
    if span <= 0:
        bucket = np.zeros(n, dtype=np.int64)
    else:
        bucket = np.minimum(
            ((ts.astype(np.float64) - t0) * (n_buckets / span)).astype(np.int64), n_buckets - 1
        )
    starts = np.flatnonzero(np.diff(bucket, prepend=-1))
    ends = np.append(starts[1:] - 1, n - 1)
    counts = ends - starts + 1
    maxes = np.maximum.reduceat(values, starts)
    mins = np.minimum.reduceat(values, starts)
    idx = np.arange(n)
    first_max = np.minimum.reduceat(np.where(values == np.repeat(maxes, counts), idx, n), starts)
    first_min = np.minimum.reduceat(np.where(values == np.repeat(mins, counts), idx, n), starts)
    return np.unique(np.concatenate([starts, ends, first_max, first_min]))


def _selected_steps(analysis: Analysis, steps: Iterable[int] | None) -> pd.DataFrame:
    all_steps = analysis.phases.steps
    if all_steps.empty:
        raise NotCapturedError(
            "the trace has no training step to plot",
            path=str(analysis.trace.path),
            hint="Capture at least one step (ProfilerStep) and try again",
        )
    if steps is None:
        return all_steps.sort_values("start_ns").reset_index(drop=True)
    wanted = [int(s) for s in steps]
    have = set(all_steps["step"].astype(int).tolist())
    missing = [s for s in wanted if s not in have]
    if missing:
        raise NotCapturedError(
            f"step(s) {missing} not in the trace (steps: {sorted(have)})",
            path=str(analysis.trace.path),
            hint="Pick steps that exist",
        )
    sel = all_steps[all_steps["step"].isin(wanted)]
    return sel.sort_values("start_ns").reset_index(drop=True)


def _shade_phases(
    ax: Axes, segments: pd.DataFrame, t0_ns: int, *, label_regions: bool, x_span_ms: float
) -> list[str]:
    """One ``broken_barh`` per phase (gid ``phase:<phase>``, one path per segment),
    ``other`` (time between ckprof's phases: data loading, Python, the user's own
    ``ckprof.phase`` ranges) too, so that every peak marker sits on a shaded span that
    the legend explains. Returns the phases drawn, in display order."""
    drawn: list[str] = []
    trans = ax.get_xaxis_transform()
    for phase in PHASES:
        seg = segments[segments["phase"] == phase]
        if seg.empty:
            continue
        start_ms = (seg["start_ns"].to_numpy(np.int64) - t0_ns) / 1e6
        width_ms = (seg["end_ns"].to_numpy(np.int64) - seg["start_ns"].to_numpy(np.int64)) / 1e6
        ax.broken_barh(
            list(zip(start_ms.tolist(), width_ms.tolist(), strict=True)),
            (0.0, 1.0),
            transform=trans,
            facecolors=PHASE_COLORS[phase],
            alpha=_SPAN_ALPHA,
            linewidth=0,
            gid=f"phase:{phase}",
            zorder=0,
        )
        drawn.append(phase)
        if phase == "recompute" and label_regions and x_span_ms > 0:
            for s, w, region in zip(start_ms, width_ms, seg["region"].astype(str), strict=True):
                if region and w >= 0.025 * x_span_ms:
                    ax.text(
                        s + w / 2, 0.98, region, transform=trans, rotation=90, ha="center",
                        va="top", fontsize=7, color=PHASE_COLORS["recompute"], clip_on=True,
                        gid="region-label",
                    )
    return drawn


#: Legend text of a phase shading ("other" says what it is).
_PHASE_LEGEND = {"other": "other (between phases)"}


def _phase_legend_handles(phases: Sequence[str], *, alpha: float = 1.0) -> list[Any]:
    from matplotlib.patches import Patch

    return [Patch(facecolor=PHASE_COLORS[p], alpha=alpha, label=_PHASE_LEGEND.get(p, p)) for p in phases]


# --------------------------------------------------------------------------- memory
def plot_memory_timeline(
    analysis: Analysis,
    *,
    steps: Iterable[int] | None = None,
    devices: Iterable[str] | None = None,
    max_points: int = 1500,
    width_in: float = 11.0,
    height_in: float = 4.8,
) -> Figure:
    """Allocated bytes over time, one line per device, phases shaded.

    Contract: reads ``analysis.memory.timeline`` (absolute bytes, baseline
    included), ``analysis.phases.segments`` and ``analysis.memory.peaks``. The
    x axis is milliseconds from the start of the first plotted step. Every
    ``(step, phase, device)`` peak of the plotted steps is a marker at
    ``(at_ts_ns, peak_bytes)`` -- exactly the analysis' numbers -- and the
    highest peak of each phase is labelled. Each device's line is downsampled with
    :func:`downsample_envelope` to about ``max_points`` buckets, so the figure
    stays fast with millions of memory events and never loses a peak.

    Raises :class:`NotCapturedError` when the trace has no memory events.
    """
    mem = analysis.memory
    path = str(analysis.trace.path)
    timeline = mem.timeline
    if not mem.captured or timeline.empty:
        reason = mem.reason or "the trace has no [memory] events"
        raise NotCapturedError(
            f"memory was not captured, nothing to plot: {reason}", path=path,
            hint=None if "profile_memory" in reason else
            "Capture with profile_memory=True (ckprof.capture does by default)",
        )
    sel = _selected_steps(analysis, steps)
    t0_ns = int(sel["start_ns"].iloc[0])
    t1_ns = int(sel["end_ns"].iloc[-1])
    step_ids = set(sel["step"].astype(int).tolist())
    all_devices = [str(d) for d in pd.unique(timeline["device"].astype(str))]
    if devices is not None:
        wanted = [str(d) for d in devices]
        unknown = [d for d in wanted if d not in all_devices]
        if unknown:
            raise NotCapturedError(
                f"device(s) {unknown} have no memory events (devices: {all_devices})",
                path=path, hint="Pick one of those devices",
            )
        all_devices = wanted

    fig = _new_figure(width_in, height_in)
    ax = fig.add_subplot(1, 1, 1)
    x_span_ms = (t1_ns - t0_ns) / 1e6

    segments = analysis.phases.segments
    segments = segments[segments["step"].isin(step_ids)]
    drawn_phases = _shade_phases(ax, segments, t0_ns, label_regions=True, x_span_ms=x_span_ms)

    # Step boundaries.
    trans = ax.get_xaxis_transform()
    for row in sel.itertuples(index=False):
        x = (int(row.start_ns) - t0_ns) / 1e6
        ax.axvline(x, color="#555555", linewidth=0.8, linestyle=(0, (4, 3)), zorder=1, gid="step-start")
        ax.text(x, 1.005, f" step {int(row.step)}", transform=trans, fontsize=8, va="bottom",
                ha="left", color="#333333")

    y_max = 0.0
    device_handles = []
    ts_all = timeline["ts_ns"].to_numpy(np.int64)
    dev_all = timeline["device"].astype(str).to_numpy()
    val_all = timeline["allocated_bytes"].to_numpy(np.int64)
    for i, device in enumerate(all_devices):
        mask = dev_all == device
        ts = ts_all[mask]
        vals = val_all[mask]
        # window: the level entering the first step, then everything up to the end
        lo = max(int(np.searchsorted(ts, t0_ns, side="left")) - 1, 0)
        hi = int(np.searchsorted(ts, t1_ns, side="right"))
        ts, vals = ts[lo:hi], vals[lo:hi]
        if len(ts) == 0:
            continue
        ts = np.clip(ts, t0_ns, None)
        ts_d, vals_d = downsample_envelope(ts, vals, max(1, max_points))
        # hold the last level to the end of the window
        x = np.append((ts_d - t0_ns) / 1e6, x_span_ms)
        y = np.append(vals_d, vals_d[-1]).astype(np.float64)
        (line,) = ax.plot(
            x, y, drawstyle="steps-post", color=_DEVICE_COLORS[i % len(_DEVICE_COLORS)],
            linewidth=1.2, label=f"allocated ({device})", gid=f"memory:{device}", zorder=3,
        )
        device_handles.append(line)
        y_max = max(y_max, float(vals.max()))

    # Peaks: every (step, phase, device) of the plotted steps, exactly as analysed.
    peaks = mem.peaks
    peaks = peaks[peaks["step"].isin(step_ids) & peaks["device"].astype(str).isin(all_devices)]
    peak_handles = []
    for phase in PHASES:
        p = peaks[peaks["phase"].astype(str) == phase]
        if p.empty:
            continue
        px = (p["at_ts_ns"].to_numpy(np.int64) - t0_ns) / 1e6
        py = p["peak_bytes"].to_numpy(np.int64).astype(np.float64)
        top = p.loc[p["peak_bytes"].idxmax()]
        label = f"{phase} peak: {format_bytes(int(top['peak_bytes']))}"
        if len(all_devices) > 1:
            label += f" ({top['device']})"
        (marks,) = ax.plot(
            px, py, linestyle="none", marker="v", markersize=7, color=PHASE_COLORS[phase],
            markeredgecolor="black", markeredgewidth=0.6, zorder=5, gid=f"peaks:{phase}", label=label,
        )
        peak_handles.append(marks)
        y_max = max(y_max, float(py.max()))
    # In the plot, name the highest point of each device.
    for device, grp in peaks.groupby(peaks["device"].astype(str), sort=True, observed=True):
        top = grp.loc[grp["peak_bytes"].idxmax()]
        ax.annotate(
            f"peak {format_bytes(int(top['peak_bytes']))} ({top['phase']}, step {int(top['step'])})"
            + (f" {device}" if len(all_devices) > 1 else ""),
            xy=((int(top["at_ts_ns"]) - t0_ns) / 1e6, float(top["peak_bytes"])), xytext=(0, 10),
            textcoords="offset points", ha="center", va="bottom", fontsize=8, zorder=6,
            bbox={"boxstyle": "round,pad=0.25", "facecolor": "white", "alpha": 0.9,
                  "edgecolor": PHASE_COLORS.get(str(top["phase"]), "black"), "linewidth": 0.9},
            arrowprops={"arrowstyle": "-", "color": "#444444", "linewidth": 0.6},
            gid=f"peak-label:{device}",
        )

    unit = _set_bytes_axis(ax, y_max * 1.15)
    ax.set_xlim(0, x_span_ms if x_span_ms > 0 else 1)
    ax.set_xlabel("time since start of first plotted step (ms)")
    ax.set_ylabel(f"allocated memory ({unit})")
    relative = [d for d in all_devices if not mem.absolute.get(d, False)]
    title = f"Allocated memory over time - {_trace_name(analysis)}"
    if relative:
        title += f"\n({', '.join(relative)}: relative to profiling start; memory live before it is not included)"
    ax.set_title(title, fontsize=10, loc="left", pad=14)
    ax.grid(axis="y", color="#DDDDDD", linewidth=0.6)
    ax.legend(
        handles=[*device_handles, *_phase_legend_handles(drawn_phases, alpha=_SPAN_ALPHA * 2), *peak_handles],
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
    )
    return fig


# --------------------------------------------------------------------------- breakdown
def plot_time_breakdown(analysis: Analysis, *, width_in: float | None = None,
                        height_in: float = 4.2) -> Figure:
    """One stacked bar per step: forward, backward, recompute, optimizer, other.

    Contract: reads ``analysis.time.by_step``. Wall time bars (gid
    ``wall:<phase>``, one rectangle per step) always; when the trace has GPU
    events, a second hatched bar per step with the GPU kernel time attributed to
    each phase (gid ``gpu:<phase>``). The total is written above each bar.
    """
    by = analysis.time.by_step
    if by.empty:
        raise NotCapturedError("the trace has no training step to plot", path=str(analysis.trace.path),
                               hint="Capture at least one step and try again")
    wall = by.pivot_table(index="step", columns="phase", values="wall_ns", aggfunc="sum", observed=True)
    wall = wall.reindex(columns=list(PHASES)).fillna(0.0) / 1e6
    has_gpu = bool(analysis.time.has_gpu)
    gpu = None
    if has_gpu:
        gpu = by.pivot_table(index="step", columns="phase", values="gpu_ns", aggfunc="sum", observed=True)
        gpu = gpu.reindex(index=wall.index, columns=list(PHASES)).fillna(0.0) / 1e6
    steps = [int(s) for s in wall.index]
    n = len(steps)
    if width_in is None:
        width_in = min(11.0, max(8.0, 2.5 + n * (1.3 if has_gpu else 0.8)))
    fig = _new_figure(width_in, height_in)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(n, dtype=np.float64)
    bar_w = 0.38 if has_gpu else 0.6
    x_wall = xs - bar_w / 2 - 0.01 if has_gpu else xs
    x_gpu = xs + bar_w / 2 + 0.01

    def stack(x: np.ndarray, table: pd.DataFrame, kind: str) -> None:
        bottom = np.zeros(n)
        for phase in PHASES:
            h = table[phase].to_numpy(np.float64)
            ax.bar(
                x, h, bar_w, bottom=bottom, color=PHASE_COLORS[phase], gid=f"{kind}:{phase}",
                label=phase if kind == "wall" else None, edgecolor="white", linewidth=0.5,
                hatch="//" if kind == "gpu" else None,
            )
            bottom = bottom + h
        for xi, total in zip(x, bottom, strict=True):
            ax.text(xi, total, f"{total:,.1f} ms" if total >= 10 else f"{total:.3g} ms",
                    ha="center", va="bottom", fontsize=7.5)

    stack(x_wall, wall, "wall")
    if has_gpu and gpu is not None:
        stack(x_gpu, gpu, "gpu")
    labels = [f"step {s}" for s in steps]
    if has_gpu:
        ax.set_xticks(np.concatenate([x_wall, x_gpu]),
                      [f"{lab}\nwall" for lab in labels] + [f"{lab}\nGPU" for lab in labels],
                      fontsize=8)
    else:
        ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("time (ms)")
    pad = max(0.0, (3 - n) * 0.5)  # few steps: keep bars bar-shaped
    ax.set_xlim(-0.6 - pad, n - 0.4 + pad)
    top = float(wall.sum(axis=1).max()) if n else 1.0
    if gpu is not None:
        top = max(top, float(gpu.sum(axis=1).max()))
    ax.set_ylim(0, top * 1.12 if top > 0 else 1)
    overhead = analysis.time.recompute_overhead_pct
    sub = ("" if overhead is None or math.isnan(overhead)
           else f", forward re-run +{overhead:.1f}% (lower bound of checkpointing's cost)")
    ax.set_title(f"Time per step by phase{sub}\n{_trace_name(analysis)}", fontsize=10, loc="left")
    ax.grid(axis="y", color="#DDDDDD", linewidth=0.6)
    ax.set_axisbelow(True)
    handles = _phase_legend_handles(PHASES)
    if has_gpu:
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="GPU kernel time"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------- regions
def plot_recompute_regions(analysis: Analysis, *, max_regions: int = 40,
                           width_in: float = 9.0) -> Figure:
    """A horizontal bar per checkpointed region: recompute wall time, sorted.

    Contract: reads ``analysis.regions_table()`` (sorted by recompute time,
    largest first, drawn at the top). Bars (gid ``regions:recompute``) are the
    total recompute time over the analysed steps; the label says how many times the
    region was recomputed. When the capture marked the region's first forward run,
    an outlined bar (gid ``regions:forward``) shows that forward time for
    comparison. More than ``max_regions`` regions: the rest are summed into one
    "(N more)" bar. No recompute found: a figure that says so.
    """
    table = analysis.regions_table()
    if len(table) > max_regions:
        head = table.iloc[: max_regions - 1]
        rest = table.iloc[max_regions - 1:]
        more = pd.DataFrame({
            "region": [f"({len(rest)} more regions)"], "count": [int(rest["count"].sum())],
            "wall_ms": [float(rest["wall_ms"].sum())], "gpu_ms": [float(rest["gpu_ms"].sum())],
            "forward_wall_ms": [float(rest["forward_wall_ms"].sum(min_count=1))],
        })
        table = pd.concat([head, more], ignore_index=True)
    n = len(table)
    fig = _new_figure(width_in, max(2.4, 0.34 * n + 1.4))
    ax = fig.add_subplot(1, 1, 1)
    title = f"Recompute time per checkpointed region - {_trace_name(analysis)}"
    if n == 0:
        ax.set_axis_off()
        ax.text(0.5, 0.5,
                f"No recompute found in this trace (recompute detection: {analysis.recompute_found_by}).\n"
                "Either nothing is checkpointed, or the capture did not mark it.",
                ha="center", va="center", fontsize=10, transform=ax.transAxes, gid="no-regions")
        ax.set_title(title, fontsize=10, loc="left")
        return fig
    ys = np.arange(n)[::-1].astype(np.float64)  # largest at the top
    wall = table["wall_ms"].to_numpy(np.float64)
    fwd = table["forward_wall_ms"].to_numpy(np.float64)
    ax.barh(ys, wall, 0.62, color=PHASE_COLORS["recompute"], gid="regions:recompute",
            label="recompute (in backward)")
    if (fwd > 0).any():
        ax.barh(ys, fwd, 0.62, facecolor="none", edgecolor=PHASE_COLORS["forward"], linewidth=1.2,
                linestyle="--", gid="regions:forward", label="first forward run")
    xmax = float(np.nanmax(np.r_[wall, fwd, 0.0])) if n else 1.0
    # each label starts past BOTH bars of its row, so the forward outline never crosses it
    for y, w, f, c in zip(ys, wall, fwd, table["count"].to_numpy(np.int64), strict=True):
        ax.text(float(np.nanmax([w, f])) + xmax * 0.015, y, f"{w:.3g} ms  ({int(c)}x)", va="center", ha="left",
                fontsize=8, gid="regions:label")
    ax.set_yticks(ys, table["region"].astype(str).tolist(), fontsize=8)
    ax.set_xlim(0, xmax * 1.3 if xmax > 0 else 1)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("recompute wall time over the analysed steps (ms)")
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(axis="x", color="#DDDDDD", linewidth=0.6)
    ax.set_axisbelow(True)
    # the legend sits under the axes, never over a bar
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower right", ncol=2, fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------- categories
# torch.profiler._memory_profiler._CATEGORY_TO_INDEX order (torch 2.4 .. 2.13)
_CATEGORY_COLORS: dict[str, str] = {
    "parameter": "#1B7837", "optimizer_state": "#DAA520", "input": "#333333",
    "temporary": "#9370DB", "activation": "#D6604D", "gradient": "#2166AC",
    "autograd_detail": "#4393C3", "unknown": "#BBBBBB",
}


def plot_memory_categories(analysis: Analysis, *, timeline_path: str | os.PathLike[str] | None = None,
                           width_in: float = 11.0, height_in: float = 4.8) -> Figure:
    """torch's memory categories (parameter / optimizer state / gradient /
    activation / temporary ...) stacked over time, with the phases shaded.

    # NOTE [ Memory categories and recompute ]
    # torch's memory profiler labels tensors created during recomputation as
    # AUTOGRAD_DETAIL or TEMPORARY, never ACTIVATION (checked on torch 2.13). The
    # figure says so in its title; ckprof's own per-phase peaks (the memory
    # timeline plot) attribute memory by time ranges and are not affected.

    Contract: reads the raw memory timeline saved next to the trace (see
    :func:`find_memory_timeline_file`) or ``timeline_path``. Its timestamps are
    epoch nanoseconds; they are moved onto the trace clock with the trace's
    ``baseTimeNanoseconds``. Raises :class:`NotCapturedError` when there is none.
    """
    trace_path = str(analysis.trace.path)
    found = Path(timeline_path) if timeline_path is not None else find_memory_timeline_file(trace_path)
    if found is None or not found.is_file():
        raise NotCapturedError(
            "memory categories were not captured (no .raw.json[.gz] memory timeline next to the trace)",
            path=trace_path,
            hint="Save one with prof.export_memory_timeline('<trace stem>.raw.json.gz') "
                 "(needs record_shapes, profile_memory and with_stack)",
        )
    df = read_memory_timeline(found)
    base_ns = int(analysis.trace.metadata.get("baseTimeNanoseconds", 0) or 0)
    ts = df["ts_ns"].to_numpy(np.int64)
    pre = ts < 0  # PREEXISTING tensors have t = -1: live from the start
    sel = _selected_steps(analysis, None)
    t0_ns = int(sel["start_ns"].iloc[0])
    t1_ns = int(sel["end_ns"].iloc[-1])
    ts_trace = np.where(pre, t0_ns, ts - base_ns)
    order = np.argsort(ts_trace, kind="stable")
    ts_trace = ts_trace[order]
    codes = df["category"].cat.codes.to_numpy()[order]
    nbytes = df["bytes"].to_numpy(np.int64)[order]
    levels = np.zeros((len(MEMORY_CATEGORIES), len(ts_trace)), dtype=np.int64)
    for i in range(len(MEMORY_CATEGORIES)):
        levels[i] = np.cumsum(np.where(codes == i, nbytes, 0))
    fig = _new_figure(width_in, height_in)
    ax = fig.add_subplot(1, 1, 1)
    segments = analysis.phases.segments
    _shade_phases(ax, segments, t0_ns, label_regions=False, x_span_ms=(t1_ns - t0_ns) / 1e6)
    x = (ts_trace - t0_ns) / 1e6
    present = [i for i in range(len(MEMORY_CATEGORIES)) if np.abs(levels[i]).max() > 0]
    ax.stackplot(x, *[levels[i] for i in present], step="post",
                 labels=[MEMORY_CATEGORIES[i] for i in present],
                 colors=[_CATEGORY_COLORS[MEMORY_CATEGORIES[i]] for i in present], alpha=0.85)
    top = float(levels.sum(axis=0).max()) if levels.size else 1.0
    unit = _set_bytes_axis(ax, top * 1.1)
    ax.set_xlim(0, (t1_ns - t0_ns) / 1e6)
    ax.set_xlabel("time since start of first step (ms)")
    ax.set_ylabel(f"memory ({unit})")
    ax.set_title(
        f"Memory by category (torch memory profiler) - {_trace_name(analysis)}\n"
        "Caution: torch labels recomputed tensors autograd_detail/temporary, not activation",
        fontsize=10, loc="left",
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------- A/B
def plot_ab(analysis: Analysis) -> Figure:
    """A/B trace: left, one stacked bar per variant (median time of each phase) with
    every step's time as a dot and the IQR as an error bar; right, peak memory per
    phase per variant on the A/B device. Raises NotCapturedError without A/B steps."""
    ab = analysis.ab
    if ab is None or ab.variants.empty:
        raise NotCapturedError("the trace has no A/B steps", path=str(analysis.trace.path),
                               hint="Capture with ckprof.capture(..., ab=True)")
    variants = [str(v) for v in ab.variants["variant"]]
    fig = _new_figure(10.0, 4.2)
    ax_t, ax_m = fig.subplots(1, 2)
    x = np.arange(len(variants), dtype=float)
    bottom = np.zeros(len(variants))
    table = ab.variants.set_index("variant")
    for phase in PHASES:
        vals = table.loc[variants, f"{phase}_ms"].to_numpy(dtype=float)
        ax_t.bar(x, vals, bottom=bottom, width=0.5, color=PHASE_COLORS[phase], label=phase, gid=f"ab:{phase}")
        bottom = bottom + vals
    used = ab.steps[~ab.steps["excluded"]]
    for i, v in enumerate(variants):
        ys = used.loc[used["variant"] == v, "step_ms"].to_numpy(dtype=float)
        jitter = (np.arange(len(ys)) - (len(ys) - 1) / 2) * (0.3 / max(len(ys), 1))
        ax_t.scatter(i + 0.35 + jitter, ys, s=14, color="#1A1A1A", zorder=3, gid=f"ab:steps:{v}")
        row = table.loc[v]
        ax_t.errorbar([i + 0.35], [row["step_ms"]], yerr=[[row["step_ms"] - row["step_ms_q1"]],
                      [row["step_ms_q3"] - row["step_ms"]]], fmt="_", color="#C44E52", capsize=4, zorder=4)
    ax_t.set_xticks(x, variants)
    ax_t.set_ylabel("ms per step (bars: median per phase; dots: steps)")
    title = "Step time by variant"
    if ab.diff is not None and not math.isnan(ab.diff.cost_pct):
        title += f": checkpointing {ab.diff.cost_pct:+.1f}%"
    ax_t.set_title(title, fontsize=10, loc="left")
    ax_t.legend(fontsize=7, loc="lower right", frameon=False)
    mem = ab.memory[ab.memory["device"] == ab.device]
    if mem.empty:
        ax_m.text(0.5, 0.5, "memory not captured", ha="center", va="center", transform=ax_m.transAxes)
        ax_m.set_axis_off()
    else:
        phases = [p for p in PHASES if (mem["phase"] == p).any()]
        width = 0.8 / max(len(variants), 1)
        top = float(mem["peak_bytes"].max())
        colors = ("#4C72B0", "#C44E52", "#55A868", "#8172B2", "#CCB974", "#64B5CD")
        for j, v in enumerate(variants):
            sel = mem[mem["variant"] == v].set_index("phase")
            vals = [float(sel.loc[p, "peak_bytes"]) if p in sel.index else 0.0 for p in phases]
            ax_m.bar(np.arange(len(phases)) + (j - (len(variants) - 1) / 2) * width, vals, width=width,
                     color=colors[j % len(colors)], label=v, gid=f"ab:peak:{v}")
        unit = _set_bytes_axis(ax_m, top * 1.1)
        ax_m.set_xticks(np.arange(len(phases)), phases)
        ax_m.set_ylabel(f"peak allocated ({unit}, {ab.device})")
        mtitle = "Peak memory by phase"
        if ab.diff is not None and not math.isnan(ab.diff.saving_bytes):
            mtitle += f": checkpointing saves {format_bytes(ab.diff.saving_bytes)}"
        ax_m.set_title(mtitle, fontsize=10, loc="left")
        ax_m.legend(fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------- composition
_ORIGIN_COLORS: dict[str, str] = {"before profiling": "#B0B0B0", **PHASE_COLORS}


def plot_memory_composition(analysis: Analysis, *, steps: Iterable[int] | None = None,
                            device: str | None = None, max_points: int = 1500,
                            width_in: float = 11.0, height_in: float = 4.8) -> Figure:
    """Live bytes over time stacked by the phase that allocated them.

    Contract: reads ``analysis.composition.timeline`` (bands: ``before profiling`` --
    blocks live when profiling started, net of their frees seen and unseen -- then one
    band per phase, :data:`ckprof.analysis.composition.ORIGINS` order; gid
    ``origin:<origin>``) and draws the memory stage's level on top (gid
    ``composition:total``): the bands add up to it exactly. Phases are shaded in the
    background; every phase's peak is marked as in :func:`plot_memory_timeline`.
    ``device`` defaults to the device with the highest peak. Points are thinned with the
    peak-preserving envelope of the total. Raises :class:`NotCapturedError` when the
    composition is not available (no memory events, or no block addresses)."""
    from ckprof.analysis.composition import BEFORE, DRIFT, ORIGINS, UNSEEN

    comp = analysis.composition
    path = str(analysis.trace.path)
    if not comp.captured or comp.timeline.empty:
        raise NotCapturedError(f"memory composition not available: {comp.reason}", path=path,
                               hint="Capture with profile_memory=True (ckprof.capture does)")
    line = comp.timeline
    devices = sorted(set(line["device"].astype(str)))
    if device is None:
        peaks = analysis.memory.peaks_total
        device = (str(peaks.sort_values("peak_bytes", ascending=False).iloc[0]["device"])
                  if len(peaks) else devices[0])
    if device not in devices:
        raise NotCapturedError(f"device {device} has no memory composition (devices: {devices})",
                               path=path, hint="Pick one of those devices")
    sel = _selected_steps(analysis, steps)
    t0_ns = int(sel["start_ns"].iloc[0])
    t1_ns = int(sel["end_ns"].iloc[-1])
    d = line[line["device"].astype(str) == device]
    ts = d["ts_ns"].to_numpy(np.int64)
    lo = max(int(np.searchsorted(ts, t0_ns, side="left")) - 1, 0)
    hi = int(np.searchsorted(ts, t1_ns, side="right"))
    d = d.iloc[lo:hi]
    ts = np.clip(d["ts_ns"].to_numpy(np.int64), t0_ns, None)
    total = d["allocated_bytes"].to_numpy(np.int64)
    keep = _envelope_keep(ts, total, max(1, max_points))
    bands = {o: d[o].to_numpy(np.int64)[keep] for o in ORIGINS}
    bands[BEFORE] = bands[BEFORE] + (d[UNSEEN].to_numpy(np.int64) + d[DRIFT].to_numpy(np.int64))[keep]
    x_span_ms = (t1_ns - t0_ns) / 1e6
    x = np.append((ts[keep] - t0_ns) / 1e6, x_span_ms)
    fig = _new_figure(width_in, height_in)
    ax = fig.add_subplot(1, 1, 1)
    segments = analysis.phases.segments
    segments = segments[segments["step"].isin(set(sel["step"].astype(int)))]
    _shade_phases(ax, segments, t0_ns, label_regions=False, x_span_ms=x_span_ms)
    present = [o for o in ORIGINS if np.abs(bands[o]).max(initial=0) > 0]
    base = np.zeros(len(keep) + 1, dtype=np.float64)
    for origin in present:
        y = np.append(bands[origin], bands[origin][-1]).astype(np.float64)
        ax.fill_between(x, base, base + y, step="post", color=_ORIGIN_COLORS[origin], alpha=0.85,
                        linewidth=0, label=f"allocated in {origin}" if origin in PHASES else origin,
                        gid=f"origin:{origin}", zorder=2)
        base = base + y
    tot = np.append(total[keep], total[keep][-1]).astype(np.float64)
    ax.plot(x, tot, drawstyle="steps-post", color="black", linewidth=0.9, zorder=3,
            label=f"allocated ({device})", gid="composition:total")
    peaks = analysis.memory.peaks
    peaks = peaks[peaks["step"].isin(set(sel["step"].astype(int)))
                  & (peaks["device"].astype(str) == device)]
    for phase in PHASES:
        p = peaks[peaks["phase"] == phase]
        if len(p):
            ax.plot((p["at_ts_ns"].to_numpy(np.int64) - t0_ns) / 1e6,
                    p["peak_bytes"].to_numpy(np.float64), linestyle="none", marker="v",
                    markersize=6, color=PHASE_COLORS[phase], markeredgecolor="black",
                    markeredgewidth=0.5, zorder=5, gid=f"peaks:{phase}")
    top = float(max(tot.max(initial=0), base.max(initial=0)))
    unit = _set_bytes_axis(ax, top * 1.12 if top > 0 else 1.0)
    ax.set_xlim(0, x_span_ms if x_span_ms > 0 else 1)
    ax.set_xlabel("time since start of first plotted step (ms)")
    ax.set_ylabel(f"live memory ({unit})")
    title = f"Live memory by the phase that allocated it - {_trace_name(analysis)} ({device})"
    if not analysis.memory.absolute.get(device, False):
        title += "\n(relative to profiling start: memory live before it is not included)"
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(axis="y", color="#DDDDDD", linewidth=0.6)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------- dispatch/save
def make_plot(analysis: Analysis, kind: str, **options: Any) -> Figure:
    """``kind`` in :data:`PLOT_KINDS` -> the matching figure."""
    if kind == "memory":
        return plot_memory_timeline(analysis, **options)
    if kind == "breakdown":
        return plot_time_breakdown(analysis, **options)
    if kind == "regions":
        return plot_recompute_regions(analysis, **options)
    if kind == "categories":
        return plot_memory_categories(analysis, **options)
    if kind == "composition":
        return plot_memory_composition(analysis, **options)
    if kind == "ab":
        return plot_ab(analysis, **options)
    raise CkprofError(f"unknown plot kind {kind!r}", hint=f"Use one of {', '.join(PLOT_KINDS)}")


def figure_bytes(fig: Figure, fmt: str = "png", *, dpi: int = 120) -> bytes:
    """The figure rendered as ``png``, ``svg`` or ``pdf`` bytes."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike[str], *, force: bool = False,
                dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix: .png, .svg, .pdf).

    Never overwrites an existing file unless ``force``: raises
    :class:`OutputExistsError` (checked before rendering, and again atomically
    when the file is created)."""
    out = Path(path)
    fmt = FIGURE_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise CkprofError(f"cannot tell the image format from the suffix {out.suffix!r}", path=str(out),
                          hint=f"Use one of {', '.join(FIGURE_FORMATS)}")
    from ckprof.report.output import check_output_target

    check_output_target(out, force=force)  # before rendering (NOTE [ Output targets ])
    return write_new_file(out, figure_bytes(fig, fmt, dpi=dpi), force=force)
