"""The CPU memory baseline survives what torch.compile leaves in the process (dead
weakref proxies in gc), and a baseline that cannot be measured warns once and is named
as such in the analysis notes."""

from __future__ import annotations

import gc
import warnings
import weakref
from pathlib import Path

import pytest
from support.capture import build_model, one_torch_thread, train_step

torch = pytest.importorskip("torch")

import ckprof  # noqa: E402
from ckprof.capture import metadata as _metadata  # noqa: E402
from ckprof.capture.session import CaptureWarning  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _dead_proxies() -> int:
    dead = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on torch.distributed.reduce_op warns
        for obj in gc.get_objects():
            try:
                isinstance(obj, torch.Tensor)
            except ReferenceError:
                dead += 1
    return dead


class _Ckpt(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.b(torch.utils.checkpoint.checkpoint(self.a, x, use_reentrant=False))


def _capture(tmp_path: Path):
    model, optimizer, x = build_model("none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ckprof.capture(tmp_path, wait=0, warmup=1, active=1) as cap:
            for _ in range(2):
                train_step(model, optimizer, x)
                cap.step()
    return cap, model, [w for w in caught if issubclass(w.category, CaptureWarning)]


def test_baseline_is_measured_after_torch_compile_ran(tmp_path: Path) -> None:
    """GIVEN a process where a checkpointed model was compiled and trained (torch.compile
    leaves a dead weakref proxy that gc still lists)
    WHEN ckprof captures a window
    THEN the CPU baseline is measured (it covers at least the model's parameters),
    nothing lands in errors and no CaptureWarning is raised."""
    compiled = torch.compile(_Ckpt(), backend="eager")
    for _ in range(2):
        compiled(torch.randn(2, 8)).sum().backward()
    assert _dead_proxies() > 0, "precondition: torch.compile left a dead weakref proxy"
    cap, model, warned = _capture(tmp_path)
    assert cap.errors == [] and warned == []
    analysis = ckprof.load(cap.trace_paths[0])
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert analysis.trace.ckprof["memory_baseline"]["cpu"]["bytes"] >= params
    assert analysis.memory.absolute["cpu"] is True
    del compiled


def test_scan_skips_dead_proxies() -> None:
    """GIVEN a dead weakref.proxy in gc next to a live tensor WHEN the storages are
    scanned THEN the scan completes and counts the tensor."""

    class Thing:
        pass

    thing = Thing()
    proxy = weakref.proxy(thing)  # noqa: F841 - kept alive on purpose, dead below
    del thing
    tensor = torch.ones(1000)
    sizes = _metadata.cpu_storages()
    assert sizes.get(tensor.untyped_storage().data_ptr()) == 4000


def test_unmeasurable_baseline_warns_once_and_the_note_says_so(tmp_path: Path,
                                                               monkeypatch) -> None:
    """GIVEN a baseline scan that fails WHEN two windows are captured THEN training
    goes on, ONE CaptureWarning says the baseline was not measured, and the analysis
    note says ckprof captured the trace but could not measure the baseline (not
    'capture with ckprof')."""
    def broken(*args, **kwargs):
        raise RuntimeError("scan failed")

    monkeypatch.setattr("ckprof.capture.session.StorageSnapshot", broken)
    model, optimizer, x = build_model("none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ckprof.capture(tmp_path, wait=0, warmup=1, active=1, repeat=2) as cap:
            for _ in range(4):
                train_step(model, optimizer, x)
                cap.step()
    warned = [w for w in caught if issubclass(w.category, CaptureWarning)]
    assert len(warned) == 1 and "memory baseline not measured" in str(warned[0].message)
    assert sum("memory baseline not measured" in e for e in cap.errors) == 2
    assert len(cap.trace_paths) == 2
    notes = ckprof.load(cap.trace_paths[0]).notes
    assert any("could not measure the memory live when the window started" in n for n in notes)
    assert not any("capture with ckprof" in n for n in notes)
