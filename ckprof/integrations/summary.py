"""The analysis a run prints at its end (``ckprof run``, the framework callbacks, and
``ckprof analyze`` given several files): one trace -> the full analysis; several ->
the per-rank / per-run comparison.

Contract::

    render_traces(paths, fmt="table", recompute_detection="auto", workers=None,
                  label=None) -> str

Pure of side effects (reads the files, returns text); errors are ckprof errors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["render_traces"]


def render_traces(paths: Sequence[str | os.PathLike[str]], fmt: str = "table", *,
                  recompute_detection: str = "auto", workers: int | None = None,
                  label: str | None = None, engine: str = "processes") -> str:
    """One trace: ``ckprof analyze FILE``'s output. Several: the comparison of
    :func:`ckprof.integrations.ranks.analyze_files` (ranks, or repeated runs of one
    rank; its headline says which)."""
    from ckprof.report.text import check_format

    check_format(fmt)
    files = [os.fspath(p) for p in paths]
    if len(files) == 1:
        from ckprof.analysis import load
        from ckprof.report.tables import render

        return render(load(files[0], recompute_detection=recompute_detection), fmt)
    from ckprof.integrations.ranks import analyze_files, render_rank_summary

    summary = analyze_files(files, workers=workers, recompute_detection=recompute_detection,
                            label=label, engine=engine)
    return render_rank_summary(summary, fmt)
