"""CUDA-only capture behaviour (skipped without a CUDA device)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from support.capture import annotation_counts, build_model, read_trace, train_step  # noqa: E402

import ckprof  # noqa: E402

pytestmark = pytest.mark.cuda


def _cuda_model() -> tuple[Any, Any, Any]:
    model, _, x = build_model("markers")
    model = model.cuda()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3), x.cuda()


def test_cuda_trace_has_kernels_markers_and_absolute_baseline(tmp_path: Path) -> None:
    """GIVEN a checkpointed model on CUDA
    WHEN one window is captured
    THEN the trace holds GPU kernels and every marker, the metadata names the CUDA
    device and records its baseline as an absolute counter."""
    model, opt, x = _cuda_model()
    train_step(model, opt, x)
    torch.cuda.synchronize()
    with ckprof.capture(tmp_path, wait=0, warmup=1, active=1) as cap:
        for _ in range(2):
            train_step(model, opt, x)
            cap.step()
    trace = read_trace(cap.trace_paths[0])
    meta = trace["ckprof"]
    assert meta["device"].startswith("cuda:")
    base = meta["memory_baseline"][meta["device"]]
    assert base["counter_absolute"] is True and base["bytes"] > 0
    assert any(e.get("cat") == "kernel" for e in trace["traceEvents"])
    counts = annotation_counts(trace)
    assert counts["ckprof::recompute::blocks.0"] == 1 and counts["ckprof::backward"] == 1


def test_nsys_brackets_only_active_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN nsys=True and wait=1, warmup=1, active=2 on CUDA
    WHEN 5 steps run
    THEN torch.cuda.profiler.start is called once as the first active step begins and
    stop once as the last active step ends."""
    model, opt, x = _cuda_model()
    calls: list[tuple[str, int]] = []
    cap = ckprof.capture(tmp_path, wait=1, warmup=1, active=2, nsys=True)
    monkeypatch.setattr(torch.cuda.profiler, "start", lambda: calls.append(("start", cap.step_index)))
    monkeypatch.setattr(torch.cuda.profiler, "stop", lambda: calls.append(("stop", cap.step_index)))
    with cap:
        for _ in range(5):
            train_step(model, opt, x)
            cap.step()
    assert calls == [("start", 1), ("stop", 3)]
