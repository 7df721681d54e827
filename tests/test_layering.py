"""The layering of ckprof's folders, as docs/ARCHITECTURE.md states it, checked on the
source: every ``import ckprof.<part>`` of every module, at module level or inside a
function, must be allowed for the importing part; only capture/ imports torch at
import time; and a fresh interpreter that loads, analyses, renders and compares a
trace never imports torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ckprof"
EXAMPLE = ROOT / "traces" / "examples" / "demo_markers.pt.trace.json.gz"

#: part -> the parts it may import (itself always allowed). Foundation modules
#: (errors, _version) may be imported by anyone.
ALLOWED: dict[str, set[str]] = {
    "trace": set(),
    "analysis": {"trace"},
    "report": {"trace", "analysis"},
    "integrations": {"trace", "analysis", "report"},
    "strategy": {"trace", "analysis", "report"},
    "capture": {"trace", "report"},
    "cli": {"trace", "analysis", "report", "integrations", "strategy", "capture"},
    "__init__": {"analysis", "strategy", "capture"},
    "__main__": {"cli"},
}
FOUNDATION = {"errors", "_version", "_text"}

#: The documented upward edges (docs/ARCHITECTURE.md, "Allowed exceptions"): each is a
#: function-level import, so importing the lower module never loads the upper one.
UPWARD_EDGES: set[tuple[str, str]] = {
    ("ckprof.analysis.bundle", "ckprof.report.html"),        # Analysis._repr_html_ (Jupyter)
    ("ckprof.strategy.runner", "ckprof.capture"),            # the sweep runs policies (torch)
    ("ckprof.strategy.apply", "ckprof.capture"),             # a policy wraps blocks in ckprof.checkpoint
    ("ckprof.integrations.framework", "ckprof.capture"),     # HF / Lightning callbacks drive a capture
}
#: report.output is the one file-writing path; capture's trace writer uses it.
CAPTURE_MAY_IMPORT = {"ckprof.report.output"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _part(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import; ``if TYPE_CHECKING:``
    blocks are skipped (they never run)."""
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.append((child.module, top))
                out.extend((f"{child.module}.{a.name}", top) for a in child.names)
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return out


def _all_modules() -> list[tuple[str, ast.Module]]:
    return [(_module_name(p), ast.parse(p.read_text(encoding="utf-8")))
            for p in sorted(PACKAGE.rglob("*.py"))]


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def test_every_import_follows_the_layering() -> None:
    """GIVEN every module of ckprof WHEN its ckprof imports are listed (module level and
    inside functions) THEN each goes to its own part, a foundation module, a part its
    part may import, or one of the documented upward edges."""
    bad = []
    for module, tree in _all_modules():
        part = _part(module)
        for target, _top in _imports(tree):
            if not target.startswith("ckprof.") or not _is_module(target):
                continue
            tpart = target.split(".")[1]
            if tpart == part or tpart in FOUNDATION or tpart in ALLOWED.get(part, set()):
                if part == "capture" and tpart == "report" and target not in CAPTURE_MAY_IMPORT:
                    bad.append(f"{module} -> {target}")
                continue
            if any(module == a and target.startswith(b) for a, b in UPWARD_EDGES):
                continue
            bad.append(f"{module} -> {target}")
    assert not bad, "imports that break the layering:\n" + "\n".join(bad)


def test_upward_edges_are_function_level() -> None:
    """GIVEN the documented upward edges THEN each is imported inside a function only."""
    modules = dict(_all_modules())
    for source, target in UPWARD_EDGES:
        tops = [t for t, top in _imports(modules[source]) if t.startswith(target) and top]
        assert not tops, f"{source} imports {target} at module level"


def test_only_capture_imports_torch_at_import_time() -> None:
    """GIVEN every module outside capture/ THEN none imports torch at module level."""
    offenders = [module for module, tree in _all_modules()
                 if _part(module) != "capture"
                 and any(t == "torch" or t.startswith("torch.") for t, top in _imports(tree) if top)]
    assert not offenders, offenders


SCRIPT = f"""
import sys
import ckprof
a = ckprof.load({str(EXAMPLE)!r})
import ckprof.report.tables, ckprof.report.plots, ckprof.report.html, ckprof.report.annotate
import ckprof.strategy.compare, ckprof.strategy.sweep, ckprof.strategy.policies
import ckprof.trace.nsys, ckprof.trace.memory_timeline
import ckprof.integrations.ranks, ckprof.integrations.hta
from ckprof.cli.main import cli
ckprof.report.tables.render(a, "json")
ckprof.compare(a, a)
a._repr_html_()
assert "torch" not in sys.modules, "the analysis side imported torch"
assert not any(m.startswith("ckprof.capture") for m in sys.modules), "the analysis side imported capture"
print("ok")
"""


@pytest.mark.skipif(not EXAMPLE.is_file(), reason="example trace missing")
def test_analysis_side_never_imports_torch_or_capture() -> None:
    """GIVEN a fresh interpreter WHEN ckprof loads, analyses, renders and compares a
    trace, and every analysis-side module is imported THEN neither torch nor
    ckprof.capture was ever imported."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
