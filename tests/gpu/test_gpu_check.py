"""benchmarks/gpu_check.py: fails fast without CUDA; passes on a GPU machine.

The full check needs a CUDA device (``@pytest.mark.cuda``, skipped elsewhere); the
no-CUDA contract (exit code 2, "no CUDA device") is checked on every CPU machine.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.skipif(_cuda(), reason="this machine has CUDA")
def test_gpu_check_without_cuda_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN a machine without a CUDA device
    WHEN the GPU check script's main runs
    THEN it stops at once with exit code 2 and says "no CUDA device" on stderr."""
    spec = importlib.util.spec_from_file_location("ckprof_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.cuda
def test_gpu_check_passes_on_cuda(tmp_path: Path) -> None:
    """GIVEN a CUDA device
    WHEN the GPU check runs (nsys part included when nsys is on PATH)
    THEN every check passes or skips, within 5 minutes."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "-> PASS" in proc.stdout
