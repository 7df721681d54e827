"""The analysis side imports and runs without torch (design rule: only capture imports
torch at import time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "traces" / "examples" / "demo_markers.pt.trace.json.gz"

SCRIPT = f"""
import sys
import ckprof
a = ckprof.load({str(EXAMPLE)!r})
import ckprof.report.tables, ckprof.report.plots, ckprof.report.html, ckprof.report.annotate
import ckprof.compare, ckprof.sweep, ckprof.policies, ckprof.nsys, ckprof.ranks, ckprof.hta
from ckprof.cli.main import cli
ckprof.report.tables.render(a, "json")
ckprof.compare(a, a)
assert "torch" not in sys.modules, "the analysis side imported torch"
print("ok")
"""


def test_analysis_side_never_imports_torch() -> None:
    """GIVEN a fresh interpreter WHEN ckprof loads, analyses, renders and compares a
    trace, and every analysis module is imported THEN torch was never imported."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
