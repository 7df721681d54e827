"""Degenerate traces read to the same result as the reference algorithms.

Issue 17 replaced three algorithms whose cost grew with the depth or the number of
steps (a million identical events nest a million deep; a staircase of partial overlaps;
half a million ProfilerSteps): the event tree in C (``_scan.tree``), top-down marks by
pointer jumping (``phases._sequence_tops``, the outermost recompute_fn frames) and vectorised tiling of
steps whose intervals do not overlap. Each is checked here against a plain reference
written in the test (the pre-issue-17 definitions), on random and degenerate inputs.
Timings live in benchmarks/bench_shapes.py (``--degenerate``), not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ckprof.analysis import analyze, phases
from ckprof.trace import _build, _native
from ckprof.trace.load import load_trace


def _sorted_events(rng, n: int, span: int = 40):
    ts = rng.integers(0, span, n).astype(np.int64)
    dur = rng.choice([0, 0, 1, 2, 3, 7, 15, 40], n).astype(np.int64)
    order = np.argsort(-dur, kind="stable")
    order = order[np.argsort(ts[order], kind="stable")]
    return ts[order], ts[order] + dur[order]


@pytest.mark.skipif(_native.tree is None, reason="native scanner not built")
def test_native_tree_is_the_reference_stack_algorithm():
    """GIVEN 3,000 random event sets (partial overlaps, zero durations, exact duplicates,
    two threads) sorted as the loader sorts them, and a 200,000-step staircase of
    partial overlaps WHEN the C tree runs THEN parents and depths equal _tree_loop's."""
    rng = np.random.default_rng(11)
    for _ in range(3000):
        n = int(rng.integers(1, 40))
        ts, end = _sorted_events(rng, n)
        group = rng.integers(0, 2, n).astype(np.int64)
        group = np.unique(group, return_inverse=True)[1].astype(np.int64)
        want = _build._tree_loop(group, ts, end)
        par, dep = _native.tree(group, ts, end)
        assert np.frombuffer(par, np.int64).tolist() == want[0].tolist()
        assert np.frombuffer(dep, np.int32).tolist() == want[1].tolist()
    n = 200_000  # each event starts inside all earlier ones and outlasts them
    ts = np.arange(n, dtype=np.int64)
    par, dep = _native.tree(np.zeros(n, np.int64), ts, ts + 10**9)
    assert (np.frombuffer(par, np.int64) == -1).all() and (np.frombuffer(dep, np.int32) == 0).all()


def _random_forest(rng, n: int):
    parent = np.full(n, -1, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        if rng.random() < 0.85:
            parent[i] = rng.integers(max(0, i - 6), i)  # often deep chains
            depth[i] = depth[parent[i]] + 1
    return parent, depth


def _ref_sequence(parent, is_eval, is_op, seq):
    """The pre-issue-17 definition, row by row (parents precede children)."""
    n = len(parent)
    near_eval = np.where(is_eval, np.arange(n), -1)
    cand = np.zeros(n, bool)
    under = np.zeros(n, bool)
    for r in range(n):
        p = parent[r]
        ok = p >= 0
        inherited = near_eval[p] if ok else -1
        near_eval[r] = r if is_eval[r] else inherited
        p_eval = ok and is_eval[p]
        cand[r] = is_op[r] and seq[r] >= 0 and not is_eval[r] and inherited >= 0 and not p_eval
        under[r] = ok and not is_eval[r] and not p_eval and (cand[p] or under[p])
    return np.flatnonzero(cand & ~under), near_eval


def _ref_stack(parent, is_rf, is_mod):
    n = len(parent)
    near_rf = np.where(is_rf, np.arange(n), -1)
    top_rf = is_rf.copy()
    mod_above = np.zeros(n, bool)
    for r in range(n):
        p = parent[r]
        ok = p >= 0
        inherited = near_rf[p] if ok else -1
        top_rf[r] = is_rf[r] and inherited < 0
        near_rf[r] = inherited if inherited >= 0 else (r if is_rf[r] else -1)
        mod_above[r] = ok and inherited >= 0 and (mod_above[p] or is_mod[p])
    return top_rf, near_rf, mod_above


def test_pointer_jumping_marks_equal_the_level_by_level_definitions():
    """GIVEN 400 random forests (deep chains included) with random evaluate_function,
    grad-mode op, recompute_fn and module flags WHEN the recompute marks are computed by
    pointer jumping THEN they equal the row-by-row definitions."""
    rng = np.random.default_rng(5)
    for _ in range(400):
        n = int(rng.integers(1, 60))
        parent, _depth = _random_forest(rng, n)
        is_eval, is_op = rng.random(n) < 0.2, rng.random(n) < 0.6
        seq = np.where(rng.random(n) < 0.5, 1, -1)
        top, near = phases._sequence_tops(parent, is_eval, is_op, seq)
        want_top, want_near = _ref_sequence(parent, is_eval, is_op, seq)
        assert top.tolist() == want_top.tolist() and near.tolist() == want_near.tolist()
        is_rf, is_mod = rng.random(n) < 0.15, rng.random(n) < 0.3
        top_rf = is_rf & (phases._outermost_above(parent, is_rf) < 0)  # as _stack_recompute
        assert top_rf.tolist() == _ref_stack(parent, is_rf, is_mod)[0].tolist()


def _write(path: Path, events: list[dict]) -> Path:
    path.write_text('{\n  "traceEvents": [\n' + ",\n".join("  " + json.dumps(e) for e in events)
                    + "\n  ]\n}\n")
    return path


def _x(name, ts, dur, cat="cpu_op", tid=1, **args):
    e = {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur}
    if args:
        e["args"] = args
    return e


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory) -> dict[str, Path]:
    """GIVEN small degenerate traces: identical events, a staircase of partial overlaps,
    many short steps with backward nodes, zero-length events at one instant."""
    d = tmp_path_factory.mktemp("degenerate")
    ev = _x("aten::add", 100.0, 5.0, **{"External id": 1, "Sequence number": 3})
    steps = []
    for k in range(400):
        t = 100.0 * k
        steps += [_x(f"ProfilerStep#{k}", t, 90.0, cat="user_annotation"),
                  _x("aten::mm", t + 1, 10.0, **{"Sequence number": k}),
                  _x("autograd::engine::evaluate_function: MmBackward0", t + 20, 30.0),
                  _x("MmBackward0", t + 21, 20.0, **{"Sequence number": k}),
                  _x("aten::mm", t + 22, 5.0, **{"Sequence number": 10_000 + k}),
                  _x("Optimizer.step#SGD.step", t + 60, 10.0, cat="user_annotation")]
    return {
        "identical": _write(d / "identical.json", [ev] * 3000),
        "staircase": _write(d / "staircase.json", [_x(f"op{i % 7}", float(i), 1e6) for i in range(3000)]),
        "steps": _write(d / "steps.json", steps),
        "zero": _write(d / "zero.json", [_x("z", 7.0, 0)] * 3000 + [_x("ProfilerStep#1", 7.0, 0)]),
    }


@pytest.mark.parametrize("name", ["identical", "staircase", "steps", "zero"])
def test_degenerate_traces_match_the_reference_paths(degenerate, name, monkeypatch):
    """WHEN each degenerate trace is analysed with the fast algorithms and with the
    reference ones (numpy/Python tree, per-step tiling) THEN the Trace and every figure
    are identical, for each recompute detection."""
    path = degenerate[name]
    fast = load_trace(path)
    figures = {det: analyze(fast, recompute_detection=det).to_dict()
               for det in ("auto", "sequence", "none")}
    monkeypatch.setattr(_native, "scan", None)
    monkeypatch.setattr(_native, "tree", None)
    monkeypatch.setattr(phases, "_VECTOR_TILING", False)
    ref = load_trace(path)
    pd.testing.assert_frame_equal(fast.events, ref.events, check_exact=True)
    for det, want in figures.items():
        assert analyze(ref, recompute_detection=det).to_dict() == want
    if name == "identical":
        assert int(fast.events["depth"].max()) == 2999  # duplicates nest under their twin
    if name == "steps":
        a = analyze(fast)
        assert a.step_count == 400 and a.recompute_detection == "sequence"
        assert len(a.phases.recompute) == 400
