"""The optional native field scanner (C extension ``ckprof.trace._scan``).

Contract::

    scan(buffer, start, stop) -> tuple | str    # a piece of traceEvents, see _scan.c
    tree(group, ts, end) -> (parent, depth)     # NOTE [ Event tree rules ] in _build

Both are ``None`` when the extension was not built (no C compiler at install time)
or when ``CKPROF_NATIVE=0`` is set; the fast reader then decodes every piece with
msgspec, with the same result.

# NOTE [ Native scanner ]
# The fast reader's cost was two thirds Python: msgspec builds a struct per event, then
# ``_ingest`` pulls ~10 fields out of every struct into lists and numpy arrays. The C
# scanner reads a piece of the events array once, keeps only what ckprof uses
# (ph, name, cat, pid, tid, ts, dur and the args ids) straight into int64 columns, and
# interns names/categories/text ids per piece (first-seen order, raw JSON text), without
# the GIL: two threads scan two pieces at once. Times are parsed from their decimal
# text exactly (integer µs and up to 3 decimals -> ns), which is what the careful reader
# computes.
#
# It refuses (returns a reason) whatever it does not handle exactly like the msgspec
# reader: invalid JSON, a "ph" other than the known tags, B/E events, escaped keys,
# duplicate keys, a sign, exponent or 4th decimal in ts/dur, out-of-range numbers,
# wrongly typed fields. A refused piece goes through the msgspec path (and from there,
# if need be, the careful reader), so the result never depends on whether the extension
# is there; tests run both paths and compare them with the careful reader. The texts
# ckprof keeps (names, categories, text ids) are decoded in Python (strict UTF-8,
# msgspec for escapes): a piece where one is not valid UTF-8 is refused too. Strings
# nobody reads are only checked for JSON syntax (msgspec also checks their UTF-8 and
# then hands the piece to the careful reader, which ignores them: same result).
#
# ``tree`` is the reference stack algorithm of NOTE [ Event tree rules ] (``_tree_loop``)
# in C, O(n) for nested events, partial overlaps included: the numpy version
# (``_tree_nested``, a sort of 2n open/close tokens) stays as the pure-Python path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["available", "scan", "tree"]

scan: Callable[[Any, int, int], Any] | None
tree: Callable[[Any, Any, Any], tuple[bytes, bytes]] | None
try:
    from ckprof.trace._scan import scan, tree  # type: ignore[import-not-found,no-redef]
except ImportError:  # not built: the pure-Python path reads everything
    scan = tree = None
if os.environ.get("CKPROF_NATIVE", "").strip() == "0":
    scan = tree = None


def available() -> bool:
    """True when the native scanner will be used."""
    return scan is not None
