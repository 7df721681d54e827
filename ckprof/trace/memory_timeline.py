"""Read torch's memory timeline (``profiler.export_memory_timeline(path.raw.json[.gz])``):
the categories torch's memory profiler assigns to each allocation.

Contract::

    find_memory_timeline_file(trace_path) -> Path | None   the file saved next to a trace
    read_memory_timeline(path) -> DataFrame ts_ns, category, bytes (sorted by time)

Errors: :class:`~ckprof.errors.TraceFormatError` when the file is not such a timeline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ckprof.errors import TraceFormatError

__all__ = ["MEMORY_CATEGORIES", "find_memory_timeline_file", "read_memory_timeline"]

#: torch.profiler._memory_profiler.Category order (index in the raw file's 4th field)
MEMORY_CATEGORIES: tuple[str, ...] = (
    "parameter", "optimizer_state", "input", "temporary", "activation", "gradient",
    "autograd_detail", "unknown",
)


def find_memory_timeline_file(trace_path: str | os.PathLike[str]) -> Path | None:
    """The ``.raw.json[.gz]`` memory timeline saved next to a trace, if any.

    Looks for ``<stem>.raw.json.gz``, ``<stem>.raw.json``, ``<stem>.memory.raw.json.gz``
    and ``<stem>.memory.raw.json`` where ``<stem>`` is the trace name without
    ``.json[.gz]`` (and without ``.pt.trace``)."""
    p = Path(trace_path)
    name = p.name
    for suffix in (".json.gz", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    stems = [name]
    if name.endswith(".pt.trace"):
        stems.append(name[: -len(".pt.trace")])
    for stem in stems:
        for ext in (".raw.json.gz", ".raw.json", ".memory.raw.json.gz", ".memory.raw.json"):
            cand = p.with_name(stem + ext)
            if cand.is_file():
                return cand
    return None


def read_memory_timeline(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read torch's ``export_memory_timeline`` raw file: a JSON list of
    ``[ts_ns, action, nbytes, category_index]`` (plain or gzip). Returns a NEW
    DataFrame ``ts_ns, category, bytes`` sorted by time (category names from
    :data:`MEMORY_CATEGORIES`). Raises :class:`TraceFormatError` when it is not one."""
    from ckprof.trace.kineto import source as _source
    from ckprof.trace.load import ANNOTATE_BYTES_PER_BYTE, max_stream_bytes

    p = Path(path)
    _source.check_input_file(p)  # a FIFO or device is never opened
    try:  # read like a trace: gzip by its magic bytes, counted against memory as it grows
        reader = _source.BlockReader(p, max_bytes=max_stream_bytes(ANNOTATE_BYTES_PER_BYTE))
        raw_bytes = reader.read_all()
        if reader.problem is not None:
            raise ValueError(f"the gzip stream is {reader.problem}")
        rows = json.loads(raw_bytes)
    except _source.DecompressedTooLarge as err:
        raise TraceFormatError(f"the memory timeline expands past what memory holds ({err})",
                               path=str(p), hint="Re-export a shorter window") from None
    except (OSError, ValueError, EOFError) as err:
        raise TraceFormatError(f"cannot read the memory timeline ({err})", path=str(p),
                               hint="Re-export it with prof.export_memory_timeline(path.raw.json.gz)") from err
    if not isinstance(rows, list) or any(not isinstance(r, list) or len(r) != 4 for r in rows[:100]):
        raise TraceFormatError("not a raw memory timeline (expected [[ts_ns, action, bytes, category], ...])",
                               path=str(p), hint="Pass the .raw.json.gz written by export_memory_timeline")
    arr = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    cats = np.clip(arr[:, 3], 0, len(MEMORY_CATEGORIES) - 1)
    df = pd.DataFrame({
        "ts_ns": arr[:, 0],
        "category": pd.Categorical.from_codes(cats, categories=list(MEMORY_CATEGORIES)),
        "bytes": arr[:, 2],
    })
    return df.sort_values("ts_ns", kind="stable").reset_index(drop=True)
