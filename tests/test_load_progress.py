"""A progress bar on long single-file loads: stderr only, only on a terminal."""

from __future__ import annotations

import io
import sys

import pytest
from support.builders import TraceBuilder

from ckprof.trace import load as load_mod


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def many_events(n: int) -> TraceBuilder:
    b = TraceBuilder()
    b.step(1, 0, n * 10 + 10)
    for i in range(n):
        b.op("aten::add", 1 + i * 10, 5)
    return b


@pytest.mark.parametrize("gz", [False, True])
def test_long_load_draws_a_bar_on_a_terminal_and_erases_it(tmp_path, monkeypatch, gz) -> None:
    """GIVEN stderr is a terminal and the size threshold is lowered WHEN a trace loads
    THEN a bar counting MB is drawn on stderr, erased at the end, stdout untouched, and
    the result equals a load without the bar."""
    path = many_events(2000).write(tmp_path / ("t.json.gz" if gz else "t.json"), gzip=gz)
    plain = load_mod.load_trace(path)
    err, out = TTY(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(load_mod, "PROGRESS_MIN_BYTES", 0)
    monkeypatch.setattr(load_mod, "CHUNK_BYTES", 4096)  # several pieces
    shown = load_mod.load_trace(path)
    text = err.getvalue()
    assert "MB" in text and f"reading {path.name}" in text
    assert text.endswith("\r\x1b[K")  # erased
    assert out.getvalue() == ""
    assert shown.events.equals(plain.events)


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path, monkeypatch) -> None:
    """GIVEN stderr is a pipe WHEN a big-enough trace loads THEN nothing is written."""
    path = many_events(200).write(tmp_path / "t.json")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(load_mod, "PROGRESS_MIN_BYTES", 0)
    load_mod.load_trace(path)
    assert err.getvalue() == ""
