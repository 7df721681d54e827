"""Notebooks run top to bottom and stay in the repository without outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.notebooks import execute_notebook, html_outputs, stream_text

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
#: every notebook in the repository (all must be stored without outputs)
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: the notebook executed here (others have their own execution tests)
EXPLORE = NOTEBOOK_DIR / "explore_checkpointing.ipynb"


def test_there_is_a_notebook():
    """GIVEN the repository WHEN notebooks/ is listed THEN the exploration notebook is there."""
    assert "explore_checkpointing.ipynb" in [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path: Path):
    """GIVEN a notebook in the repository WHEN read THEN no code cell carries
    outputs or an execution count (clear them before committing)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert dirty == [], f"{path.name}: code cells {dirty} have outputs; clear them before committing"


@pytest.mark.slow
def test_explore_notebook_runs_top_to_bottom(tmp_path: Path):
    """GIVEN the notebook WHEN executed by nbclient (kernel python3, cwd a temp dir)
    THEN every cell runs without error, the Analysis objects display as ckprof's HTML
    summary and every figure cell produces a PNG."""
    nb, outputs = execute_notebook(EXPLORE, tmp_path, timeout_s=120)
    html = html_outputs(outputs)
    assert sum("ckprof-summary" in h for h in html) == 2
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    n_fig_cells = sum(1 for c in nb.cells if c.cell_type == "code" and c.source.strip().endswith("fig"))
    assert len(pngs) >= n_fig_cells >= 4
    text = stream_text(outputs)
    assert "re-running forward alone" in text and "a lower bound" in text and "peak memory" in text
    assert list(tmp_path.iterdir()) == []  # nothing written next to the notebook
    # torch's profiler chatter (filtered by the capture) never reaches the outputs
    assert "USDT" not in text and "Memory block of unknown size" not in text
