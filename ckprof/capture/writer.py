"""Write a profiler window to disk: the Chrome trace with ckprof's metadata inserted
as its first top-level key, under a name that never replaces an existing file.

Contract: :func:`write_trace` exports ``prof`` into a hidden temporary file in
``out_dir``, streams it (gzip by default) into a second temporary with the metadata,
and gives it the first free name ``<stem>[-k].pt.trace.json[.gz]`` through
:func:`ckprof.report.output.link_to_free_name` (the one no-overwrite primitive every
writer of ckprof uses). Temporaries are removed on every path; an incomplete export
raises ``OSError`` (the capture turns it into one warning).
"""

from __future__ import annotations

import contextlib
import functools
import gzip as _gzip
import json
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

from ckprof.report.output import link_to_free_name
from ckprof.trace.markers import METADATA_KEY

__all__ = ["write_memory_timeline", "write_trace"]


def write_trace(prof: Any, out_dir: Path, stem: str, *, gzip: bool,
                 metadata: dict[str, Any]) -> Path:
    """Export ``prof`` to a fresh file in out_dir with ``metadata`` under the top-level
    key ``ckprof`` (see NOTE [ Capture lifecycle ])."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = ".pt.trace.json.gz" if gzip else ".pt.trace.json"
    token = uuid.uuid4().hex[:8]
    raw = out_dir / f".{stem}.{token}.raw.json"
    tmp = out_dir / f".{stem}.{token}.tmp{ext}"
    try:
        prof.export_chrome_trace(str(raw))
        _check_complete_json(raw)
        opener = functools.partial(_gzip.open, compresslevel=6) if gzip else open
        with open(raw, "rb") as src, opener(tmp, "wb") as dst:
            _copy_with_metadata(src, dst, metadata)
        return link_to_free_name(tmp, out_dir, stem, ext)
    finally:
        for leftover in (raw, tmp):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _copy_with_metadata(src: Any, dst: Any, metadata: dict[str, Any]) -> None:
    """Copy a Chrome-trace JSON object, inserting ``"ckprof": metadata`` as its first
    key. Streams: the trace is never parsed or held in memory."""
    head = src.read(1 << 16)
    brace = head.find(b"{")
    if brace < 0 or head[:brace].strip():
        raise OSError("the profiler's export is not a JSON object")
    dst.write(head[: brace + 1])
    dst.write(b'"' + METADATA_KEY.encode() + b'": ')
    dst.write(json.dumps(metadata, sort_keys=True).encode())
    rest = head[brace + 1:]
    dst.write(b"," if rest.lstrip()[:1] not in (b"}", b"") else b"")
    dst.write(rest)
    shutil.copyfileobj(src, dst, 1 << 20)


def _check_complete_json(path: Path) -> None:
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        raise OSError(f"the profiler wrote nothing to {path.name}")
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 64))
        tail = fh.read().rstrip()
    if not tail.endswith(b"}"):
        raise OSError(f"the profiler's export of {path.name} is incomplete (disk full?)")


def write_memory_timeline(prof: Any, trace_path: Path) -> Path:
    """Save torch's memory timeline of ``prof`` (``export_memory_timeline``, raw
    ``(ts, action, bytes, category)`` points) as ``<trace stem>.raw.json.gz`` next to
    ``trace_path`` -- where :func:`ckprof.trace.memory_timeline.find_memory_timeline_file`
    looks -- through the same temporary-then-free-name path as the trace."""
    name = trace_path.name
    for suffix in (".pt.trace.json.gz", ".pt.trace.json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    out_dir = trace_path.parent
    tmp = out_dir / f".{name}.{uuid.uuid4().hex[:8]}.raw.json.gz"
    try:
        with warnings.catch_warnings():
            # torch marks export_memory_timeline deprecated; the warning is ours, not the user's
            warnings.simplefilter("ignore")
            prof.export_memory_timeline(str(tmp))
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise OSError("torch wrote no memory timeline")
        return link_to_free_name(tmp, out_dir, name, ".raw.json.gz")
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
