"""Hostile input, round 2 (issue 16): every case of the corpus in tests/support/hostile.py
gives its documented exit code and a one-line message of the right shape (or the right
answer), in seconds, with no traceback; nothing but a regular file is ever replaced.

Cases needing a real process (a FIFO, /dev/stdin, stdout on /dev/full, a file truncated
while it is read, a file only a non-root user cannot read) run as a subprocess with a
timeout; the others through click's CliRunner.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from support.hostile import CASES, Case, check, run_cli, run_subprocess, unprivileged_prefix


@pytest.fixture
def case_dir():
    """A fresh folder (removed afterwards even when a case locked parts of it)."""
    base = Path(tempfile.mkdtemp(prefix="ckprof-hostile-"))
    yield base
    for p in base.rglob("*"):
        if not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case(case: Case, case_dir: Path):
    """GIVEN one crafted input of the corpus WHEN the ckprof command runs on it THEN the
    exit code, the message shape and the time limit of the case hold."""
    run = case.build(case_dir)
    if run.unprivileged and unprivileged_prefix() is None:
        pytest.skip("root without setpriv: permission bits cannot be made to apply")
    for _ in range(run.repeat):
        if case.subprocess:
            outcome = run_subprocess(run, timeout=case.seconds + 15)
        else:
            outcome = run_cli(run)
        problems = check(case, outcome)
        assert not problems, f"{case.name}: {problems}\nstderr: {outcome.stderr[-2000:]}"


def test_force_never_replaces_a_device_or_fifo(case_dir: Path):
    """GIVEN a FIFO and a symlink to /dev/full as -o targets WHEN report/annotate run with
    --force THEN both are still there, unchanged in type, and /dev/full is a device."""
    from support.hostile import _force_to

    for target, command in (("fifo", "annotate"), ("link-to-dev-full", "report")):
        run = _force_to(target, command)(case_dir)
        out = Path(run.argv[run.argv.index("-o") + 1])
        assert run_cli(run).code == 1
        mode = os.lstat(out).st_mode
        assert stat.S_ISFIFO(mode) if target == "fifo" else stat.S_ISLNK(mode)
        for p in case_dir.iterdir():  # no temporary file left behind
            assert "ckprof-tmp" not in p.name
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_existing_output_is_kept_without_force_and_replaced_with_it(case_dir: Path):
    """GIVEN an existing regular file as analyze -o WHEN run without, then with --force
    THEN it is kept the first time and replaced by the report the second."""
    from support.hostile import _output_exists

    out = case_dir / "out.txt"
    assert run_cli(_output_exists("analyze", False)(case_dir)).code == 8
    assert out.read_text() == "keep me"
    forced = case_dir / "forced"
    forced.mkdir()
    assert run_cli(_output_exists("analyze", True)(forced)).code == 0
    assert "step(s) analysed" in (forced / "out.txt").read_text()
