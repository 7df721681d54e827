"""ckprof.trace.table: the numpy tables the stages compute on (no pandas) and their
DataFrame views."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pandas.testing import assert_frame_equal

from ckprof.trace.table import Coded, Table, factorize, frame_of

ROOT = Path(__file__).resolve().parents[1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.sampled_from([0, 7, 2**40, -(2**62)])),
                max_size=40))
def test_factorize_numbers_pairs_like_pandas(pairs):
    """GIVEN (pid, tid)-like pairs WHEN factorized THEN the ids are pandas.factorize's:
    dense, in order of first appearance, equal exactly when the pairs are."""
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    ids, n = factorize(a, b)
    if not pairs:
        assert len(ids) == 0 and n == 0
        return
    want = pd.factorize(pd.MultiIndex.from_arrays([a, b]))[0]
    assert ids.tolist() == want.tolist()
    assert n == len(set(pairs))
    assert factorize(a)[0].tolist() == pd.factorize(a)[0].tolist()


def test_factorize_finds_values_its_sample_skipped():
    """GIVEN 20,000 rows of two common thread ids and a few rare ones placed between the
    rows a sample would look at WHEN factorized THEN every rare value gets its own id, in
    order of first appearance, as pandas numbers them."""
    pid = np.full(20_000, 7, dtype=np.int64)
    tid = np.where(np.arange(20_000) % 2 == 0, 2**40, 3).astype(np.int64)
    tid[[4_001, 9_999, 15_003]] = [11, -(2**62), 11]
    ids, n = factorize(pid, tid)
    assert n == 4
    assert ids.tolist() == pd.factorize(pd.MultiIndex.from_arrays([pid, tid]))[0].tolist()
    names = np.array(["b", "a", "b", "c"], dtype=object)
    assert factorize(names)[0].tolist() == [0, 1, 0, 2]
    missing = np.array(["None", None, "None", None], dtype=object)  # text "None" is not None
    assert factorize(missing)[0].tolist() == [0, 1, 0, 1]
    assert factorize(missing)[1] == 2


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "step": np.array([3, 1, 2], dtype=np.int64),
        "phase": ["forward", "backward", "forward"],              # pandas 3: str
        "region": pd.Series(["a", "", "b"], dtype=object),        # object kept
        "gpu_ns": np.array([1.5, np.nan, 2.0]),
        "depth": np.array([0, 1, 2], dtype=np.int32),
        "name": pd.Categorical.from_codes([1, 0, 1], categories=pd.Index(["x", "y"], dtype=object)),
        "ok": np.array([True, False, True]),
    })


def test_from_frame_to_frame_gives_the_frame_back_dtypes_too():
    """GIVEN a frame with str, object, float (NaN), int32, categorical and bool columns
    WHEN it goes through a Table THEN the frame comes back exactly, dtypes included."""
    df = _frame()
    back = Table.from_frame(df).to_frame()
    assert_frame_equal(back, df, check_exact=True)
    assert [str(t) for t in back.dtypes] == [str(t) for t in df.dtypes]


def test_table_reads_and_new_tables_leave_the_original_alone():
    """GIVEN a table WHEN rows are taken, columns assigned or selected THEN new tables
    come back and the original's arrays are unchanged."""
    t = Table.from_frame(_frame())
    before = {c: np.array(t[c], copy=True) for c in t.columns}
    assert t.take(t["step"] > 1)["region"].tolist() == ["a", "b"]
    assert t.take(np.array([1, 0]))["name"].tolist() == ["x", "y"]
    assert t.assign(step=np.zeros(3, dtype=np.int64)).columns == t.columns
    assert t.select("ok", "step").columns == ("ok", "step")
    assert list(t.rows("step", "phase")) == [(3, "forward"), (1, "backward"), (2, "forward")]
    for c in t.columns:
        np.testing.assert_array_equal(t[c], before[c])


def test_tables_refuse_ragged_columns():
    """GIVEN columns of different lengths WHEN a Table is made THEN ValueError names it."""
    with pytest.raises(ValueError, match="'b' has 1 rows, not 2"):
        Table({"a": np.arange(2), "b": np.arange(1)})


def test_coded_columns_test_and_decode_once_per_category():
    """GIVEN strings coded WHEN tested with isin and decoded THEN rows match the strings
    (missing codes decode to None and match nothing)."""
    c = Coded.encode(["b", "a", "b", "c"])
    assert c.categories.tolist() == ["b", "a", "c"] and c.codes.tolist() == [0, 1, 0, 2]
    assert c.isin({"b", "z"}).tolist() == [True, False, True, False]
    missing = Coded(np.array([0, -1], dtype=np.int32), np.array(["a"], dtype=object))
    assert missing.decode().tolist() == ["a", None]
    assert missing.isin({"a"}).tolist() == [True, False]
    assert Table({"n": np.array(["b", "a", "b"], dtype=object)}).coded("n").codes.tolist() == \
        [0, 1, 0]
    gaps = Table({"n": np.array(["a", None, "a"], dtype=object)})
    assert gaps.coded("n").codes.tolist() == [0, -1, 0]
    assert gaps.coded("n").categories.tolist() == ["a"]
    assert Table({"n": gaps.coded("n")}).to_frame()["n"].isna().tolist() == [False, True, False]


def test_frame_of_builds_the_frame_once_and_none_for_none():
    """GIVEN a frozen dataclass with Table fields and frame_of views WHEN a view is read
    twice THEN the same DataFrame comes back (built once); a None table gives None."""

    @dataclasses.dataclass(frozen=True)
    class Holder:
        rows_table: Table
        more_table: Table | None = None
        rows = frame_of("rows_table")
        more = frame_of("more_table")

    h = Holder(Table.from_frame(_frame()))
    assert h.rows is h.rows
    assert_frame_equal(h.rows, _frame())
    assert h.more is None


def test_a_small_analyze_imports_no_pandas(tmp_path):
    """GIVEN the example trace WHEN `ckprof analyze` runs in a fresh interpreter (table
    and json) THEN it answers without ever importing pandas (NOTE [ Tables, not
    DataFrames, inside the stages ])."""
    trace = ROOT / "traces" / "examples" / "demo_markers.pt.trace.json.gz"
    code = (
        "import sys\n"
        "from ckprof.cli.main import main\n"
        "for fmt in ('table', 'json', 'csv', 'markdown'):\n"
        "    try:\n"
        f"        main(['analyze', {str(trace)!r}, '--format', fmt])\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "print('PANDAS', sorted(m for m in sys.modules if m.split('.')[0] == 'pandas')[:3])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "recompute" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "PANDAS []", out.stdout[-500:]
