"""The HTML report in a real headless browser (Debian chromium; CI installs it with
.ci/chromium.sh). Skips cleanly when no chromium is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_plots import build_checkpointed

from ckprof.trace.markers import PHASES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (run .ci/chromium.sh)")


def _chromium(args: list[str], profile: Path) -> subprocess.Popen:
    """Start headless chromium (isolated profile, no network services)."""
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", *args,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout_s: float = 120.0) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    from click.testing import CliRunner

    from ckprof.cli.main import cli

    d = tmp_path_factory.mktemp("browser")
    trace = build_checkpointed(2).write(d / "ckpt.json.gz", gzip=True)
    out = d / "report.html"
    res = CliRunner().invoke(cli, ["report", str(trace), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_report_renders_in_chromium(report_file: Path, tmp_path: Path):
    """GIVEN the report of a checkpointed trace WHEN chromium renders it headless
    THEN the screenshot is a real page (not blank, several colours incl. the
    recompute red) and the rendered DOM's text names every phase and section."""
    import matplotlib.image as mpimg

    shot = tmp_path / "shot.png"
    # both browsers run at once (they spend most of their time starting up)
    shooter = _chromium([f"--screenshot={shot}", "--window-size=1200,2600", report_file.as_uri()],
                        tmp_path / "profile1")
    dumper = _chromium(["--dump-dom", report_file.as_uri()], tmp_path / "profile2")
    rc, _out, err = _finish(shooter)
    assert shot.is_file(), f"no screenshot: rc={rc} {err[-2000:]}"
    pixels = mpimg.imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (2600, 1200)
    non_white = np.any(pixels < 0.95, axis=-1).mean()
    assert non_white > 0.05, f"screenshot looks blank ({non_white:.3f} non-white)"
    colours = np.unique((pixels.reshape(-1, 3) * 255).round().astype(np.uint8), axis=0)
    assert len(colours) > 50
    # the recompute colour of the plots/swatches is on the page (#C44E52 = 196,78,82)
    close = np.all(np.abs(pixels.reshape(-1, 3) * 255 - np.array([196, 78, 82])) < 12, axis=-1)
    assert close.sum() > 50

    rc, text, err = _finish(dumper)
    assert rc == 0, err[-2000:]
    assert "<img" in text and "data:image/png;base64," in text
    for phase in PHASES:
        assert f">{phase}<" in text
    for heading in ("Where does the step time go?", "Recompute by checkpointed region",
                    "Memory over the step", "What the phases mean"):
        assert heading in text
