"""Never a silent nothing: a capture that writes no trace says why, once; torch's own
profiler chatter is filtered from stderr, real messages are not."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import ckprof  # noqa: E402
from ckprof.capture import noise  # noqa: E402
from ckprof.capture.session import CaptureWarning  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _model():
    torch.manual_seed(0)
    m = torch.nn.Linear(8, 1)
    return m, torch.optim.SGD(m.parameters(), lr=0.1), torch.randn(4, 8)


def _train(m, opt, x) -> None:
    opt.zero_grad()
    m(x).square().mean().backward()
    opt.step()


def _ours(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, CaptureWarning)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_step_never_called(tmp_path: Path) -> None:
    """GIVEN a with-block whose loop never calls cap.step() WHEN it ends THEN no trace,
    and exactly one warning says step() was never called and what to do."""
    m, opt, x = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ckprof.capture(tmp_path, wait=0, warmup=1, active=2) as cap:
            for _ in range(3):
                _train(m, opt, x)
    (msg,) = _ours(caught)
    assert cap.trace_paths == [] and os.listdir(tmp_path) == []
    assert "step() was never called" in msg and "cap.step()" in msg
    assert cap.no_trace_reason in msg


def test_fewer_steps_than_the_schedule(tmp_path: Path) -> None:
    """GIVEN wait=1, warmup=1, active=3 and only 2 steps WHEN the block ends THEN one
    warning names the steps completed, the steps recorded and how many are needed."""
    m, opt, x = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ckprof.capture(tmp_path, wait=1, warmup=1, active=3) as cap:
            for _ in range(2):
                _train(m, opt, x)
                cap.step()
    (msg,) = _ours(caught)
    assert "only 2 step(s) completed" in msg and "steps 2-4" in msg and "at least 3" in msg
    assert os.listdir(tmp_path) == []


def test_exception_in_the_first_window(tmp_path: Path) -> None:
    """GIVEN a step that raises inside the first active window WHEN the block exits
    THEN the exception propagates unchanged and one warning names it."""
    m, opt, x = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ZeroDivisionError), ckprof.capture(tmp_path, wait=0, warmup=1, active=2) as cap:
            for i in range(3):
                _train(m, opt, x)
                if i == 1:
                    1 / 0  # noqa: B018
                cap.step()
    (msg,) = _ours(caught)
    assert "ZeroDivisionError" in msg and "at step 1" in msg
    assert os.listdir(tmp_path) == []


def test_another_profiler_is_said_once(tmp_path: Path) -> None:
    """GIVEN a torch profiler already recording WHEN a capture would start its window
    THEN exactly one warning (at the window), not a second one at the end."""
    m, opt, x = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.profiler.profile(), ckprof.capture(tmp_path, wait=0, warmup=0, active=1) as cap:
            for _ in range(2):
                _train(m, opt, x)
                cap.step()
    msgs = _ours(caught)
    assert len(msgs) == 1 and "another torch profiler" in msgs[0]
    assert "another torch profiler" in cap.no_trace_reason


def test_profile_step_called_too_few_times_says_why_at_exit(tmp_path: Path) -> None:
    """GIVEN a @profile_step function called fewer times than its schedule needs, in a
    script that then just ends WHEN the interpreter exits THEN stderr has the reason
    once (nothing was written), and no torch profiler chatter."""
    script = tmp_path / "short.py"
    script.write_text(textwrap.dedent(f"""
        import torch, ckprof
        torch.set_num_threads(1)
        m = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)

        @ckprof.profile_step({str(tmp_path / 'out')!r}, wait=0, warmup=1, active=3)
        def step():
            opt.zero_grad(); m(torch.randn(2, 4)).sum().backward(); opt.step()

        step()
        print("done")
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    assert proc.stderr.count("ckprof: no trace written") == 1
    assert "only 1 step(s) completed" in proc.stderr
    assert "USDT" not in proc.stderr and "Memory block of unknown size" not in proc.stderr


def test_profile_step_with_completed_steps_is_saved_at_exit(tmp_path: Path) -> None:
    """GIVEN a @profile_step function that completed 2 of its 3 active steps and is not
    called again WHEN the interpreter-exit hook runs (the function atexit calls) THEN
    the trace of those 2 steps is written and the hook is unregistered."""
    import atexit

    m, opt, x = _model()

    @ckprof.profile_step(tmp_path, wait=0, warmup=1, active=3)
    def step() -> None:
        _train(m, opt, x)

    for _ in range(3):
        step()
    cap = step.ckprof_capture
    assert cap._atexit and cap.trace_paths == []
    cap._stop_at_exit()  # what atexit runs at interpreter exit
    atexit.unregister(cap._stop_at_exit)
    (trace,) = cap.trace_paths
    assert ckprof.load(trace).phases.steps["step"].tolist() == [1, 2]


# ----------------------------------------------------------------------------- noise


def test_noise_filter_drops_only_torch_chatter(capfd: pytest.CaptureFixture[str]) -> None:
    """GIVEN the filter active WHEN torch's two noise lines, a real warning from C++ (a
    [W...] line of another file), a progress bar without newline and more lines are
    written to fd 2 THEN only the noise lines are gone, the rest arrives in order."""
    with noise.quiet_profiler_noise():
        os.write(2, b"USDT:2026-11-29 22:09:46 1:1 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"[W1129 22:09:46.54 CPUAllocator.cpp:245] Memory block of unknown size was "
                    b"allocated before the profiling started, profiler results will not include "
                    b"the deallocation event\n")
        os.write(2, b"[W1129 22:09:46.54 Other.cpp:1] a real warning\n")
        os.write(2, b"\r 50%|#####")
        os.write(2, b"\nsecond line\n")
        os.write(2, b"USDT: a line that only looks similar\n")
    err = capfd.readouterr().err
    assert err == ("[W1129 22:09:46.54 Other.cpp:1] a real warning\n\r 50%|#####\nsecond line\n"
                   "USDT: a line that only looks similar\n")


def test_capture_output_has_no_torch_chatter(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """GIVEN a real capture (profiler start/stop, a block allocated before profiling freed
    in the window) WHEN it runs THEN fd 2 carries none of torch's chatter."""
    m, opt, x = _model()
    _train(m, opt, x)
    with ckprof.capture(tmp_path, wait=0, warmup=1, active=1) as cap:
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            m(x).square().mean().backward()
            opt.step()
            cap.step()
    assert len(cap.trace_paths) == 1
    err = capfd.readouterr().err
    assert "USDT" not in err and "Memory block of unknown size" not in err
