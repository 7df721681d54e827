"""Renderers: Analysis -> tables, figures, HTML, annotated traces.

Each submodule is imported on demand (matplotlib is only loaded by
:mod:`ckprof.report.plots` and :mod:`ckprof.report.html`).
"""

from __future__ import annotations
