"""ckprof.integrations.ranks: a directory of per-rank traces, analysed in parallel and compared.

End-to-end cases use small synthetic rank traces from benchmarks/synth_trace.py (one
rank made a straggler by ``slowdown``), plus damaged files that must be reported, not
fatal. The summary logic is also tested on hand-built worker results (pure), with a
golden text rendering and hypothesis properties.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckprof.errors import CkprofError, TraceNotFoundError
from ckprof.integrations.ranks import (
    RankResult,
    analyze_directory,
    analyze_rank_file,
    cross_rank_metrics,
    rank_from_name,
    render_rank_summary,
    summarize_ranks,
)
from ckprof.trace.markers import PHASES
from ckprof.trace.progress import Progress, progress_enabled

REPO = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("synth_trace", REPO / "benchmarks" / "synth_trace.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("synth_trace", module)
    spec.loader.exec_module(module)
    return module


STRAGGLER = 2
SLOWDOWN = 1.6


@pytest.fixture(scope="module")
def rank_dir(tmp_path_factory):
    """GIVEN a directory with 4 rank traces (rank 2 runs 1.6x slower), one truncated
    trace, one with a damaged event in the middle, and a .json file that is no trace."""
    synth = _generator()
    d = tmp_path_factory.mktemp("job")
    for r in range(4):
        synth.write_trace(d / f"host_rank{r}.pt.trace.json", steps=2, layers=2, rank=r, world_size=4,
                          seed=r, slowdown=SLOWDOWN if r == STRAGGLER else 1.0)
    whole = (d / "host_rank0.pt.trace.json").read_bytes()
    (d / "host_rank9.pt.trace.json").write_bytes(whole[: len(whole) // 2])
    middle = whole.index(b'"dur": ', len(whole) // 3)
    (d / "host_rank8.pt.trace.json").write_bytes(whole[:middle] + b'"dur": @@' + whole[middle + 9:])
    (d / "notes.json").write_text("this is not a trace")
    return d


@pytest.fixture(scope="module")
def by_processes(rank_dir):
    """WHEN the directory is analysed by 2 worker processes."""
    return analyze_directory(rank_dir, workers=2, engine="processes", progress=False)


@pytest.fixture(scope="module")
def direct(rank_dir):
    """The same figures from ckprof.load on each good file (the reference)."""
    from ckprof.analysis import load

    out = {}
    for r in range(4):
        a = load(rank_dir / f"host_rank{r}.pt.trace.json")
        totals = a.totals_table().set_index("phase")["wall_ms"]
        out[r] = {"step_ms": a.step_total_ns / 1e6, **{f"{p}_ms": float(totals[p]) for p in PHASES},
                  "recompute_overhead_pct": float(a.time.recompute_overhead_pct)}
    return out


def test_per_rank_table_matches_single_file_analysis(by_processes, direct):
    """THEN there is one row per good rank, numbered from distributedInfo, with the
    figures a single-file analysis of that rank gives."""
    pr = by_processes.per_rank
    assert pr["rank"].tolist() == [0, 1, 2, 3]
    assert set(pr["rank_source"]) == {"distributedInfo"}
    for row in pr.itertuples(index=False):
        ref = direct[row.rank]
        for key, value in ref.items():
            assert getattr(row, key) == pytest.approx(value, rel=1e-9), (row.rank, key)
        assert row.steps == 2
        assert row.recompute_detection == "markers"
        assert row.memory_device.startswith("cuda:")
        assert row.peak_forward_bytes > 0 and row.peak_recompute_bytes > 0
    assert (pr["step_ms"] - pr[[f"{p}_ms" for p in PHASES]].sum(axis=1)).abs().max() < 1e-6


def test_cross_rank_finds_the_straggler(by_processes, direct):
    """THEN the slowest rank of the step and of every compute phase is the straggler,
    and max / median / min / spread are those of the per-rank values."""
    cr = by_processes.cross_rank.set_index("metric")
    for metric in ("step_ms", "forward_ms", "backward_ms", "recompute_ms"):
        values = np.array([direct[r][metric] for r in range(4)])
        assert cr.loc[metric, "slowest_rank"] == STRAGGLER
        assert cr.loc[metric, "max"] == pytest.approx(values.max())
        assert cr.loc[metric, "min"] == pytest.approx(values.min())
        assert cr.loc[metric, "median"] == pytest.approx(np.median(values))
        assert cr.loc[metric, "spread"] == pytest.approx(values.max() - values.min())
        assert cr.loc[metric, "fastest_rank"] == int(np.argmin(values))
    rec = np.array([direct[r]["recompute_ms"] for r in range(4)])
    assert by_processes.recompute_spread_ms == pytest.approx(rec.max() - rec.min())
    assert by_processes.recompute_spread_pct == pytest.approx((rec.max() - rec.min()) / np.median(rec) * 100)
    assert by_processes.slowest_rank("backward_ms") == STRAGGLER
    assert cr.loc["peak_forward_bytes", "unit"] == "bytes"


def test_bad_files_are_reported_not_fatal(by_processes):
    """THEN the truncated and the damaged trace, and the .json file that is not JSON at
    all, are listed with a one-line error each (issue 16: nothing that looks like a trace
    by name is dropped silently), the other ranks are reported, and the file that is no
    trace is not taken for a rank."""
    f = by_processes.failures
    assert sorted(Path(p).name for p in f["file"]) == [
        "host_rank8.pt.trace.json", "host_rank9.pt.trace.json", "notes.json"]
    assert all(m and "\n" not in m for m in f["message"])
    assert set(f["error_type"]) <= {"TraceTruncatedError", "TraceFormatError"}
    assert f.set_index(f["file"].map(lambda p: Path(p).name)).loc["notes.json", "exit_code"] == 4
    assert by_processes.ranks == 4
    assert "notes.json" not in " ".join(by_processes.per_rank["file"])


def test_serial_engine_gives_identical_tables(rank_dir, by_processes):
    """GIVEN the same directory WHEN analysed in this process THEN the tables are equal."""
    serial = analyze_directory(rank_dir, engine="serial", progress=False)
    pd.testing.assert_frame_equal(serial.per_rank, by_processes.per_rank)
    pd.testing.assert_frame_equal(serial.cross_rank, by_processes.cross_rank)
    pd.testing.assert_frame_equal(serial.failures, by_processes.failures)


def test_dask_local_cluster_gives_identical_tables(rank_dir, by_processes):
    """GIVEN a Dask LocalCluster of 2 single-threaded worker processes WHEN the directory
    is analysed on it THEN the per-rank and cross-rank tables equal the local ones."""
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        summary = analyze_directory(rank_dir, engine="dask", scheduler=client, progress=False)
    assert summary.engine == "dask"
    pd.testing.assert_frame_equal(summary.per_rank, by_processes.per_rank)
    pd.testing.assert_frame_equal(summary.per_rank_memory, by_processes.per_rank_memory)
    pd.testing.assert_frame_equal(summary.cross_rank, by_processes.cross_rank)
    pd.testing.assert_frame_equal(summary.failures, by_processes.failures)


def _die_on_rank2(path: str, recompute_detection: str) -> RankResult:
    """A per-rank task whose worker process dies (as if killed for memory) on rank 2."""
    import os

    if "rank2" in Path(path).name:
        os._exit(137)
    return analyze_rank_file(path, recompute_detection)


def test_a_dying_worker_loses_only_its_file(rank_dir, by_processes):
    """GIVEN a worker process that dies while analysing rank 2 (which breaks the whole
    process pool) WHEN the directory is analysed THEN only rank 2 is reported failed and
    every other rank matches the normal run."""
    from ckprof.integrations.ranks import _run_processes

    class _Bar:
        def update(self, *a, **k):
            pass

    files = [rank_dir / f"host_rank{r}.pt.trace.json" for r in (1, 2, 3)]
    summary = summarize_ranks(_run_processes(files, "auto", 2, _Bar(), task=_die_on_rank2))
    assert [Path(f).name for f in summary.failures["file"]] == ["host_rank2.pt.trace.json"]
    assert summary.failures["error_type"].tolist() == ["BrokenProcessPool"]
    expected = by_processes.per_rank[by_processes.per_rank["rank"].isin([1, 3])].reset_index(drop=True)
    pd.testing.assert_frame_equal(summary.per_rank, expected)


def test_worker_result_is_small(rank_dir):
    """GIVEN one rank file WHEN a worker analyses it THEN what it sends back is a few
    hundred bytes, not a Trace (driver memory is bounded by the number of workers)."""
    res = analyze_rank_file(str(rank_dir / "host_rank1.pt.trace.json"))
    assert res.ok and res.rank == 1
    assert len(pickle.dumps(res)) < 4096


def test_rank_from_name_then_index(tmp_path):
    """GIVEN traces that do not record their rank WHEN analysed THEN the rank comes from
    the file name (rankN), else from the file's position, with a note."""
    synth = _generator()
    synth.write_trace(tmp_path / "worker_rank7.json", steps=1, layers=1, rank=7, write_rank_metadata=False)
    synth.write_trace(tmp_path / "anonymous.json", steps=1, layers=1, rank=3, write_rank_metadata=False)
    s = analyze_directory(tmp_path, engine="serial", progress=False)
    got = dict(zip(s.per_rank["file"].map(lambda f: Path(f).name), zip(s.per_rank["rank"], s.per_rank["rank_source"],
                                                                           strict=True), strict=True))
    assert got == {"worker_rank7.json": (7, "file name"), "anonymous.json": (0, "file index")}
    assert any("anonymous.json" in n for n in s.notes)


def test_directory_errors(tmp_path):
    """GIVEN a missing path, an empty directory, or an unknown engine THEN typed errors."""
    with pytest.raises(TraceNotFoundError):
        analyze_directory(tmp_path / "nope")
    with pytest.raises(TraceNotFoundError):
        analyze_directory(tmp_path)
    with pytest.raises(CkprofError, match="unknown engine"):
        analyze_directory(tmp_path, engine="spark")


def test_rank_from_name_patterns():
    """GIVEN file names THEN rank(\\d+) is found case-insensitively, with _ or - or nothing."""
    assert rank_from_name("host_rank12.pt.trace.json.gz") == 12
    assert rank_from_name("/a/b/Rank-3.json") == 3
    assert rank_from_name("rank_0_trace.json") == 0
    assert rank_from_name("trace.json") is None


# ---------------------------------------------------------------------------------------
# Pure summary logic on hand-built worker results
# ---------------------------------------------------------------------------------------

def _result(file: str, rank: int | None, step: float, rec: float, peak: int, *, gpu: bool = True) -> RankResult:
    walls = {"forward": step * 0.3, "backward": step * 0.4 - rec, "recompute": rec, "optimizer": step * 0.2,
             "other": step * 0.1}
    return RankResult(
        file=file, ok=True, rank=rank, rank_source="distributedInfo" if rank is not None else "",
        steps=1, step_ms=step, wall_ms=tuple(walls.items()),
        gpu_ms=tuple((p, v * 0.9 if gpu else math.nan) for p, v in walls.items()),
        recompute_overhead_pct=rec / (step - rec) * 100, recompute_detection="markers",
        memory=(("forward", "cuda:0", peak), ("recompute", "cuda:0", peak // 2), ("forward", "cpu", 10)),
    )


GOLDEN_TEXT = """\
3 rank(s) analysed from /job, 1 failed · engine processes, 2 worker(s)

Per rank (wall ms, all analysed steps)
  rank  step ms  forward ms  backward ms  recompute ms  optimizer ms  other ms  recompute %       peak  file
  ----  -------  ----------  -----------  ------------  ------------  --------  -----------  ---------  -------
     0  100.000      30.000       30.000        10.000        20.000    10.000        11.1%    1.0 GiB  r0.json
     1  120.000      36.000       33.000        15.000        24.000    12.000        14.3%    1.5 GiB  r1.json
     2  110.000      33.000       32.000        12.000        22.000    11.000        12.2%  512.0 MiB  r2.json

Across ranks
  metric                  slowest rank        max     median        min  fastest rank     spread  spread %
  ----------------------  ------------  ---------  ---------  ---------  ------------  ---------  --------
  step_ms                            1    120.000    110.000    100.000             0     20.000     18.2%
  forward_ms                         1     36.000     33.000     30.000             0      6.000     18.2%
  backward_ms                        1     33.000     32.000     30.000             0      3.000      9.4%
  recompute_ms                       1     15.000     12.000     10.000             0      5.000     41.7%
  optimizer_ms                       1     24.000     22.000     20.000             0      4.000     18.2%
  other_ms                           1     12.000     11.000     10.000             0      2.000     18.2%
  recompute_overhead_pct             1      14.3%      12.2%      11.1%             0       3.2%     25.9%
  peak_forward_bytes                 1    1.5 GiB    1.0 GiB  512.0 MiB             2    1.0 GiB    100.0%
  peak_recompute_bytes               1  768.0 MiB  512.0 MiB  256.0 MiB             2  512.0 MiB    100.0%
  recompute spread: 5.000 ms (41.7% of the median)

Failed
  r3.json: /job/r3.json: JSON ends early. Use --salvage
"""


@pytest.fixture()
def hand_summary():
    gib = 1 << 30
    results = [
        _result("/job/r2.json", 2, 110.0, 12.0, gib // 2),
        _result("/job/r0.json", 0, 100.0, 10.0, gib),
        RankResult(file="/job/r3.json", ok=False, error_type="TraceTruncatedError",
                   message="/job/r3.json: JSON ends early. Use --salvage"),
        _result("/job/r1.json", 1, 120.0, 15.0, gib + gib // 2),
    ]
    return summarize_ranks(results, directory="/job", engine="processes", workers=2)


def test_text_rendering_golden(hand_summary):
    """GIVEN known worker results THEN the text table is exactly the golden text."""
    assert render_rank_summary(hand_summary, "table") == GOLDEN_TEXT
    assert render_rank_summary(hand_summary, "text") == GOLDEN_TEXT


def test_machine_formats(hand_summary):
    """GIVEN known worker results THEN json holds every rank and statistic (NaN -> null),
    csv is one tidy table with a row per rank x metric and per statistic, markdown has
    both tables; an unknown format is refused."""
    doc = json.loads(render_rank_summary(hand_summary, "json"))
    assert [r["rank"] for r in doc["ranks"]] == [0, 1, 2]
    assert doc["recompute_spread_ms"] == 5.0
    assert {c["metric"] for c in doc["cross_rank"]} >= {"step_ms", "recompute_ms", "peak_forward_bytes"}
    assert doc["failures"][0]["error_type"] == "TraceTruncatedError"
    assert doc["ranks"][0]["peak_backward_bytes"] == -1
    rows = list(csv.DictReader(io.StringIO(render_rank_summary(hand_summary, "csv"))))
    per = [r for r in rows if r["table"] == "per_rank"]
    cross = [r for r in rows if r["table"] == "cross_rank"]
    assert len(per) == 3 * len(cross_rank_metrics())
    assert len(cross) == 5 * len(hand_summary.cross_rank)
    assert next(r for r in cross if r["metric"] == "step_ms" and r["stat"] == "max")["rank"] == "1"
    assert [r["table"] for r in rows].count("failure") == 1
    md = render_rank_summary(hand_summary, "markdown")
    assert "### Per rank" in md and "### Across ranks" in md and "| 1 | 120.000 |" in md
    with pytest.raises(ValueError, match="unknown format"):
        render_rank_summary(hand_summary, "yaml")


def test_memory_columns_use_the_gpu(hand_summary):
    """GIVEN a rank with cpu and cuda:0 peaks THEN the per-rank peak columns describe the
    GPU, the long table keeps both, and a phase without memory events reads -1."""
    pr = hand_summary.per_rank.set_index("rank")
    assert (pr["memory_device"] == "cuda:0").all()
    assert pr.loc[1, "peak_forward_bytes"] == (1 << 30) + (1 << 29)
    assert pr.loc[1, "peak_optimizer_bytes"] == -1
    mem = hand_summary.per_rank_memory
    assert set(mem["device"]) == {"cpu", "cuda:0"} and len(mem) == 9


rank_values = st.lists(
    st.tuples(st.floats(1.0, 1e4, allow_nan=False), st.floats(0.0, 0.5, allow_nan=False), st.integers(1, 1 << 40)),
    min_size=1, max_size=12,
)


@settings(max_examples=30, deadline=None)
@given(rank_values, st.randoms(use_true_random=False))
def test_cross_rank_properties(values, rnd):
    """GIVEN any per-rank figures, in any arrival order THEN the slowest rank holds the
    maximum (lowest rank on ties), min <= median <= max, spread = max - min, and the
    per-rank table is sorted by rank."""
    results = [_result(f"/d/r{i}.json", i, step, step * frac, peak) for i, (step, frac, peak) in enumerate(values)]
    rnd.shuffle(results)
    s = summarize_ranks(results)
    assert s.per_rank["rank"].tolist() == list(range(len(values)))
    for row in s.cross_rank.itertuples(index=False):
        col = s.per_rank[row.metric].to_numpy(dtype=float)
        assert row.max == col.max() and row.min == col.min()
        assert row.slowest_rank == int(np.flatnonzero(col == col.max())[0])
        assert row.fastest_rank == int(np.flatnonzero(col == col.min())[0])
        assert row.min <= row.median <= row.max
        assert row.spread == pytest.approx(row.max - row.min)


# ---------------------------------------------------------------------------------------
# Progress bar
# ---------------------------------------------------------------------------------------

class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_only_on_a_terminal():
    """GIVEN a non-terminal stream THEN nothing is written; GIVEN a terminal THEN a bar
    is redrawn in place and erased at the end; forcing overrides detection."""
    plain = io.StringIO()
    with Progress(3, unit="ranks", stream=plain) as bar:
        for _ in range(3):
            bar.update(1)
    assert plain.getvalue() == "" and not progress_enabled(plain)
    tty = _Tty()
    with Progress(4, unit="ranks", label="job", stream=tty, min_interval_s=0) as bar:
        bar.update(2)
        bar.update(2)
    out = tty.getvalue()
    assert out.startswith("\r[") and out.endswith("\r\x1b[K")
    assert "4/4 ranks" in out and "#" * 24 in out and "job" in out
    assert progress_enabled(plain, True) and not progress_enabled(tty, False)
    bytes_bar = Progress(3 << 20, unit="MiB", scale=1 << 20, enabled=False)
    bytes_bar.update(1 << 20)
    assert "1/3 MiB" in bytes_bar.render()


def test_a_failure_keeps_the_first_line_of_a_multi_line_error():
    """GIVEN an error whose message runs over several lines (one with a control
    character) WHEN it becomes a rank failure record THEN the message is its first line
    only, escaped, not every line joined into one."""
    from ckprof.integrations.ranks import failed_result

    r = failed_result("r0.json", RuntimeError("first\tline\nsecond line\nthird"))
    assert r.message == "RuntimeError: first\\tline"
