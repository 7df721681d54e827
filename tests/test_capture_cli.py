"""``ckprof nsys-command`` and the built-in demo model (capture side)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckprof.cli.main import cli

EXPECTED = (
    "nsys profile --trace=cuda,nvtx,osrt --capture-range=cudaProfilerApi "
    "--capture-range-end=stop --cuda-memory-usage=true -o ckprof_%p "
    "python train.py --lr 1e-3 'a b'\n"
)


def test_nsys_command_prints_the_recommended_line() -> None:
    """GIVEN a training command after --
    WHEN ckprof nsys-command runs
    THEN it prints exactly the nsys line (shell-quoted) and exits 0."""
    result = CliRunner().invoke(cli, ["nsys-command", "--", "python", "train.py", "--lr", "1e-3", "a b"])
    assert result.exit_code == 0, result.output
    assert result.output == EXPECTED


def test_nsys_command_options() -> None:
    """GIVEN -o and --capture-range none
    WHEN printed THEN the name is used and no cudaProfilerApi options appear."""
    result = CliRunner().invoke(cli, ["nsys-command", "-o", "runs/x", "--capture-range", "none",
                                      "--", "python", "t.py"])
    assert result.exit_code == 0
    assert result.output == ("nsys profile --trace=cuda,nvtx,osrt --cuda-memory-usage=true "
                             "-o runs/x python t.py\n")


def test_nsys_command_without_command_is_an_error() -> None:
    """GIVEN nothing after -- WHEN run THEN a one-line ckprof error, exit code 2 (a bad
    command line, as the README's exit-code table says)."""
    result = CliRunner().invoke(cli, ["nsys-command"])
    assert result.exit_code == 2
    assert "no command to profile" in result.output
    assert "Traceback" not in result.output


def test_nsys_command_run_without_nsys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """GIVEN --run and no nsys on PATH
    WHEN run THEN the line is still printed, then an error with exit code 11."""
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(cli, ["nsys-command", "--run", "--", "python", "t.py"])
    assert result.exit_code == 11
    assert "nsys (Nsight Systems) is not on PATH" in result.output


def test_nsys_command_run_executes_nsys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """GIVEN --run and a stand-in nsys on PATH that records its arguments and exits 3
    WHEN run THEN it receives the printed arguments and its exit code is passed on."""
    record = tmp_path / "args.txt"
    fake = tmp_path / "nsys"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nexit 3\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    result = CliRunner().invoke(cli, ["nsys-command", "--run", "--", "python", "t.py"])
    assert result.exit_code == 3
    assert record.read_text().splitlines() == [
        "profile", "--trace=cuda,nvtx,osrt", "--capture-range=cudaProfilerApi",
        "--capture-range-end=stop", "--cuda-memory-usage=true", "-o", "ckprof_%p", "python", "t.py"]


def test_run_demo_writes_a_marked_trace(tmp_path: Path) -> None:
    """GIVEN the built-in demo transformer (4 blocks checkpointed via ckprof.checkpoint)
    WHEN run_demo profiles 1 active step
    THEN it returns the written trace, which has one checkpoint and one recompute
    range per block (blocks.0..3), the phase markers and the ckprof metadata."""
    pytest.importorskip("torch")
    from support.capture import annotation_counts, one_torch_thread, read_trace

    from ckprof.capture.demo import run_demo

    with one_torch_thread():
        path = run_demo(tmp_path, steps=1)
    assert path.parent == tmp_path and path.name.endswith(".pt.trace.json.gz")
    trace = read_trace(path)
    counts = annotation_counts(trace)
    for i in range(4):
        assert counts[f"ckprof::checkpoint::blocks.{i}"] == 1
        assert counts[f"ckprof::recompute::blocks.{i}"] == 1
    assert counts["ckprof::forward"] == counts["ckprof::backward"] == 1
    assert sorted(trace["ckprof"]["checkpoint"]["regions"]) == [f"blocks.{i}" for i in range(4)]


def test_build_demo_is_seeded_and_sweep_compatible() -> None:
    """GIVEN build_demo / make_demo
    WHEN built twice with the same seed THEN parameters and batches are equal; the
    model returns logits, or the loss when given targets, equal to loss_fn's."""
    torch = pytest.importorskip("torch")
    from ckprof.capture.demo import build_demo, make_demo

    (m1, b1, loss_fn), (m2, b2, _) = build_demo(depth=2, dim=32), build_demo(depth=2, dim=32)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters(), strict=True))
    batch = b1(2)
    assert torch.equal(batch[0], b2(2)[0]) and batch[0].shape == (2, 64)
    logits = m1(batch[0])
    assert logits.shape == (2, 64, 256)
    assert torch.equal(m1(*batch), loss_fn(logits, batch))
    model, args, _ = make_demo(batch_size=3)
    assert model.checkpointing is False and args[0].shape[0] == 3
