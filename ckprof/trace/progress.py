"""A dependency-free progress bar for long loads and multi-rank analyses.

Contract: :class:`Progress` draws on a text stream (stderr by default) only when that
stream is a terminal (``enabled=None``), or always / never when ``enabled`` is
``True`` / ``False``. It never writes to stdout, so piping ``ckprof analyze`` output
(``--format json | jq``) is never polluted. Redraws are throttled (at most every
``min_interval_s``), so calling :meth:`Progress.update` per chunk or per event batch
is cheap. Disabled bars cost one attribute check per call.

Usage::

    with Progress(total=len(files), unit="ranks", label="analysing") as bar:
        for f in files:
            ...
            bar.update(1)

The loader can report bytes: ``Progress(total=size_bytes, unit="MiB", scale=2**20)``.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress", "progress_enabled"]


def progress_enabled(stream: TextIO | None = None, enabled: bool | None = None) -> bool:
    """``enabled`` when given, else whether ``stream`` (default stderr) is a terminal."""
    if enabled is not None:
        return bool(enabled)
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or unusual streams
        return False


class Progress:
    """``[#####.....]  5/10 ranks  2.1 s  label`` on one self-overwriting line."""

    def __init__(self, total: float, *, unit: str = "", label: str = "", enabled: bool | None = None,
                 stream: TextIO | None = None, scale: float = 1.0, width: int = 24,
                 min_interval_s: float = 0.1):
        self.total = max(float(total), 0.0)
        self.unit = unit
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = progress_enabled(self.stream, enabled)
        self.scale = scale
        self.width = width
        self.min_interval_s = min_interval_s
        self.done = 0.0
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def update(self, amount: float = 1.0, *, label: str | None = None) -> None:
        """Add ``amount`` to the count (and optionally change the label); redraw if due."""
        self.done += amount
        if label is not None:
            self.label = label
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw >= self.min_interval_s or self.done >= self.total:
            self._draw(now)

    def render(self, now: float | None = None) -> str:
        """The bar's text (without the leading carriage return)."""
        now = time.monotonic() if now is None else now
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = round(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        if self.scale == 1.0:
            count = f"{int(self.done)}/{int(self.total)}"
        else:
            count = f"{self.done / self.scale:,.0f}/{self.total / self.scale:,.0f}"
        parts = [f"[{bar}]", f"{count} {self.unit}".rstrip(), f"{now - self._started:.1f} s"]
        if self.label:
            parts.append(self.label)
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        self._last_draw = now
        self.stream.write("\r" + self.render(now) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the bar (only if anything was drawn), leaving the terminal as it was."""
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
