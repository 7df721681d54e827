"""notebooks/choose_strategy.ipynb runs top to bottom (nbclient) in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "choose_strategy.ipynb"


def test_choose_strategy_notebook_is_clean():
    """GIVEN the notebook in the repository WHEN read THEN it is valid and carries no
    outputs or execution counts."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and not [c for c in code if c.get("outputs") or c.get("execution_count") is not None]


@pytest.mark.slow
def test_choose_strategy_notebook_runs(tmp_path):
    """GIVEN the notebook WHEN executed by nbclient with a temp cwd THEN no cell errors,
    the sweep table and a recommendation are printed, the frontier figure is shown and
    written, the traces are kept and the comparison table is displayed."""
    pytest.importorskip("torch")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=150, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "ckprof sweep · device cpu" in text
    assert "Use " in text or "No policy fits" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("self_diff_ms" in h for h in html) and any("max_batch_est" in h for h in html)
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((tmp_path / "sweep_traces").rglob("*.json.gz"))) == 8
