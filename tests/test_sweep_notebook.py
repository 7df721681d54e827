"""notebooks/choose_strategy.ipynb runs top to bottom (nbclient) in a temporary folder.
(tests/test_notebooks.py checks every notebook is stored without outputs.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.notebooks import execute_notebook, html_outputs, stream_text

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "choose_strategy.ipynb"


@pytest.mark.slow
def test_choose_strategy_notebook_runs(tmp_path):
    """GIVEN the notebook WHEN executed by nbclient with a temp cwd THEN no cell errors,
    the sweep table and a recommendation are printed, the frontier figure is shown and
    written, the traces are kept and the comparison table is displayed -- all written
    to a temporary folder, nothing next to the notebook."""
    _, outputs = execute_notebook(NOTEBOOK, tmp_path, timeout_s=150)
    text = stream_text(outputs)
    assert "ckprof sweep · device cpu" in text
    assert "Use " in text or "No policy fits" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
    html = html_outputs(outputs)
    assert any("self_diff_ms" in h for h in html) and any("max_batch_est" in h for h in html)
    out_root = Path(text.split("outputs go to ", 1)[1].split()[0])
    try:
        assert (out_root / "frontier.png").read_bytes()[:4] == b"\x89PNG"
        assert len(list((out_root / "sweep_traces").rglob("*.json.gz"))) == 4  # 2 rounds x 2 batch sizes
        # nothing is written next to the notebook (its working directory)
        assert list(tmp_path.iterdir()) == []
    finally:
        import shutil

        shutil.rmtree(out_root, ignore_errors=True)
