"""Shared test configuration.

- ``cuda`` marked tests skip cleanly without a CUDA device.
- ``shared_traces`` gives the folder of real GPU traces (../shared/traces) or skips.
- Test helpers live in tests/support (builders for synthetic traces, capture helpers).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED_TRACES = REPO.parent / "shared" / "traces"

if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

os.environ.setdefault("MPLBACKEND", "Agg")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(item.get_closest_marker("cuda") for item in items) and not _has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if item.get_closest_marker("cuda"):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    """The real GPU traces in ../shared/traces; skip when the folder is absent."""
    if not SHARED_TRACES.is_dir():
        pytest.skip("../shared/traces not present")
    return SHARED_TRACES
