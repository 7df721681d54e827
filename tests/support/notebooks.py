"""Executing the repository's notebooks in tests (nbclient, kernel python3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def execute_notebook(path: Path, cwd: Path, *, timeout_s: int = 150) -> tuple[Any, list[dict]]:
    """Run ``path`` top to bottom with ``cwd`` as its working directory; return the
    executed notebook and all code-cell outputs. Skips when torch or the notebook
    tools are missing; fails on any cell error (listing it)."""
    pytest.importorskip("torch")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    return nb, outputs


def stream_text(outputs: list[dict]) -> str:
    """Everything the cells printed."""
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


def html_outputs(outputs: list[dict]) -> list[str]:
    return [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
