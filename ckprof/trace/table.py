"""Named numpy columns: the tables every stage computes on, without pandas.

Contract::

    Table({"step": np.array([...]), "phase": Coded(codes, categories), ...}) -> Table
    Table.to_frame() -> pandas.DataFrame         (imports pandas; the notebook view)
    Table.from_frame(df) -> Table                (to_frame() gives df back, dtypes too)

A ``Table`` is immutable: its methods return new Tables and never write into the
arrays they were given (callers must not either). Every column is a 1-d numpy array
or a :class:`Coded` column (strings as int32 codes into distinct categories, pandas'
``Categorical`` without pandas), all of one length.

# NOTE [ Tables, not DataFrames, inside the stages ]
# ``import pandas`` costs ~0.2 s, more than reading and analysing a small trace, so the
# stages from reading a file to printing its report compute on numpy columns and
# import no pandas; the DataFrames people and notebooks see (``trace.events``,
# ``phases.steps``, ``time.by_step`` ...) are built from these tables on first use
# (``to_frame``). ``dtypes`` pins the pandas dtype a column gets there (``"str"``,
# ``"object"``, ``"float64"`` ...; ``from_frame`` records every column's), so the
# frames are the same whichever way the table was made; a column without one gets
# pandas' own inference.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Coded", "Column", "Table", "factorize", "frame_of", "text_dtype"]


def factorize(*keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense int64 ids of the rows' key tuples, numbered in order of first appearance
    (``pandas.factorize`` without pandas, except that a missing string -- None -- is a
    value of its own, not -1), and how many distinct tuples there are.

    Keys are combined one at a time (``ids * distinct + codes``, then coded again), so
    the work is a few sorts of one int64 column whatever the number of keys, and no
    product of key ranges can overflow."""
    n = len(keys[0]) if keys else 0
    if n == 0:
        return np.empty(0, dtype=np.int64), 0
    ids, count = _sorted_codes(np.asarray(keys[0]))
    for key in keys[1:]:
        codes, distinct = _sorted_codes(np.asarray(key))
        ids, count = _sorted_codes(ids * np.int64(distinct) + codes)
    first = np.full(count, n, dtype=np.int64)
    np.minimum.at(first, ids, np.arange(n, dtype=np.int64))
    rank = np.empty(count, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(count, dtype=np.int64)
    return rank[ids], count


def _sorted_codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Codes of ``values`` numbered in sorted order (int64), and how many there are.

    The distinct values of a sample are found first and every value is looked up among
    them (``searchsorted``); only the values the sample missed are sorted. Keys such as
    thread ids take a few distinct values over millions of rows, so this is a lookup, not
    a sort of every row."""
    if values.dtype == object:  # strings: coded in one pass, None a group of its own
        coded = Coded.encode(values)
        n = len(coded.categories)
        return np.where(coded.codes >= 0, coded.codes, n).astype(np.int64), n + 1
    uniques = np.unique(values[:: max(1, len(values) // 4096)])
    pos = np.searchsorted(uniques, values)
    missed = uniques[np.minimum(pos, len(uniques) - 1)] != values
    if missed.any():
        uniques = np.union1d(uniques, values[missed])
        pos = np.searchsorted(uniques, values)
    return pos.astype(np.int64, copy=False), len(uniques)


def text_dtype(n_rows: int) -> str:
    """The pandas dtype of a column of ``n_rows`` Python strings: ``"str"``, or
    ``"object"`` when it is empty (pinned so the frames are those pandas would build)."""
    return "str" if n_rows else "object"


@dataclass(frozen=True, eq=False)
class Coded:
    """Strings as ``codes`` (int32, -1 = missing) into distinct ``categories``
    (an object array of str)."""

    codes: np.ndarray
    categories: np.ndarray

    @classmethod
    def encode(cls, values: Iterable[Any] | np.ndarray) -> Coded:
        """Code an array of strings (categories in order of first appearance; None and
        NaN are missing: code -1)."""
        arr = np.asarray(values, dtype=object)
        if len(arr) == 0:
            return cls(np.empty(0, dtype=np.int32), np.empty(0, dtype=object))
        cats: dict[Any, int] = {}
        codes = np.fromiter((-1 if v is None or v != v else cats.setdefault(v, len(cats))
                             for v in arr.tolist()), dtype=np.int32, count=len(arr))
        return cls(codes, np.array(list(cats), dtype=object))

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, rows: np.ndarray) -> Coded:
        return Coded(self.codes[rows], self.categories)

    def decode(self) -> np.ndarray:
        """The strings, an object array (None where missing)."""
        if len(self.categories) == 0:
            return np.full(len(self.codes), None, dtype=object)
        out = self.categories[np.maximum(self.codes, 0)]
        if (self.codes < 0).any():
            out = out.copy()
            out[self.codes < 0] = None
        return out

    def isin(self, values: Iterable[str]) -> np.ndarray:
        """Rows whose string is one of ``values`` (tested once per category)."""
        wanted = set(values)
        hit = np.fromiter((c in wanted for c in self.categories.tolist()), dtype=bool,
                          count=len(self.categories))
        return np.where(self.codes >= 0, hit[np.maximum(self.codes, 0)], False) \
            if len(hit) else np.zeros(len(self.codes), dtype=bool)


Column = np.ndarray | Coded


class Table:
    """Equal-length named columns (numpy arrays or :class:`Coded`). Immutable."""

    __slots__ = ("_columns", "_dtypes", "_length")

    def __init__(self, columns: Mapping[str, Column | Sequence[Any]],
                 dtypes: Mapping[str, Any] | None = None) -> None:
        cols: dict[str, Column] = {}
        length: int | None = None
        for name, col in columns.items():
            if not isinstance(col, (np.ndarray, Coded)):
                col = np.asarray(col)
            if isinstance(col, np.ndarray) and col.ndim != 1:
                raise ValueError(f"column {name!r} is not 1-d")
            if length is None:
                length = len(col)
            elif len(col) != length:
                raise ValueError(f"column {name!r} has {len(col)} rows, not {length}")
            cols[name] = col
        self._columns = cols
        self._dtypes = {k: v for k, v in (dtypes or {}).items() if k in cols}
        self._length = length or 0

    # ---- reading -------------------------------------------------------------------
    def __len__(self) -> int:
        return self._length

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self._columns)

    @property
    def dtypes(self) -> Mapping[str, Any]:
        """The pandas dtypes pinned for :meth:`to_frame`."""
        return dict(self._dtypes)

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __getitem__(self, name: str) -> np.ndarray:
        """A column as a numpy array (a Coded column decoded to strings)."""
        col = self._columns[name]
        return col.decode() if isinstance(col, Coded) else col

    def coded(self, name: str) -> Coded:
        """A string column as :class:`Coded` (coded on the fly if stored as strings)."""
        col = self._columns[name]
        return col if isinstance(col, Coded) else Coded.encode(col)

    def rows(self, *names: str) -> Iterator[tuple[Any, ...]]:
        """Rows as tuples of Python values (of ``names``, default every column)."""
        cols = [self[n].tolist() for n in (names or self.columns)]
        return zip(*cols, strict=True) if cols else iter(())

    # ---- new tables ----------------------------------------------------------------
    def take(self, rows: np.ndarray) -> Table:
        """The rows at ``rows`` (integer positions or a boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return Table({k: c.take(rows) if isinstance(c, Coded) else c[rows]
                      for k, c in self._columns.items()}, self._dtypes)

    def assign(self, dtypes: Mapping[str, Any] | None = None, **columns: Column) -> Table:
        """New or replaced columns (a replaced column keeps its place)."""
        pinned = {k: v for k, v in self._dtypes.items() if k not in columns}
        return Table({**self._columns, **columns}, {**pinned, **(dtypes or {})})

    def select(self, *names: str) -> Table:
        return Table({k: self._columns[k] for k in names}, self._dtypes)

    # ---- pandas --------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """A new DataFrame (RangeIndex), each column with its pinned dtype."""
        import pandas as pd

        data: dict[str, Any] = {}
        for k, col in self._columns.items():
            dtype = self._dtypes.get(k)
            if isinstance(col, Coded):
                cat_dtype = dtype[1] if isinstance(dtype, tuple) else "object"
                data[k] = pd.Categorical.from_codes(
                    col.codes.astype(np.int32, copy=False),
                    categories=pd.Index(col.categories, dtype=cat_dtype))
            elif dtype is not None:
                data[k] = pd.Series(col, dtype=dtype, copy=False)
            else:
                data[k] = col
        return pd.DataFrame(data, index=pd.RangeIndex(self._length), copy=False)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> Table:
        """The columns of ``df`` (a RangeIndex 0..n-1 frame), dtypes pinned."""
        import pandas as pd

        if not (isinstance(df.index, pd.RangeIndex) and df.index.start == 0
                and df.index.step == 1):
            df = df.reset_index(drop=True)
        cols: dict[str, Column] = {}
        dtypes: dict[str, Any] = {}
        for k in df.columns:
            s = df[k]
            if isinstance(s.dtype, pd.CategoricalDtype):
                cats = s.cat.categories
                cols[str(k)] = Coded(s.cat.codes.to_numpy(dtype=np.int32),
                                     np.asarray(cats.to_numpy(), dtype=object))
                dtypes[str(k)] = ("category", str(cats.dtype))
            else:
                dtype = str(s.dtype)
                cols[str(k)] = s.to_numpy(dtype=object if dtype in ("str", "string") else None)
                dtypes[str(k)] = dtype
        return cls(cols, dtypes)

    def __repr__(self) -> str:
        return f"<Table {self._length} rows: {', '.join(self.columns)}>"


class frame_of:
    """A read-only attribute that is the DataFrame of a Table field, built on first use
    and kept (``steps = frame_of("steps_table")``; None when the field is None).

    Holders are frozen dataclasses without ``__slots__``: the frame is stored in the
    instance ``__dict__``, which then answers every later read."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        table = getattr(obj, self.field)
        frame = None if table is None else table.to_frame()
        obj.__dict__[self.name] = frame
        return frame
