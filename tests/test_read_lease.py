"""NOTE [ Mapped reads and truncation ] in ckprof/trace/load.py: while the loader maps a
plain trace it holds a read lease, so a process that opens the file to truncate it
waits until the read is over instead of the loader dying of SIGBUS."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckprof.trace.load import _read_lease

WRITER = ("import sys, time; t = time.time(); f = open(sys.argv[1], 'r+b'); "
          "print(round(time.time() - t, 2), flush=True); f.truncate(1)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux file leases")
def test_a_writer_waits_while_the_lease_is_held(tmp_path: Path) -> None:
    """GIVEN a file open under ckprof's read lease WHEN another process opens it to
    truncate it THEN that process waits until the lease is released, and the file is
    whole for as long as the lease is held."""
    path = tmp_path / "trace.json"
    path.write_bytes(b"x" * 4096)
    with open(path, "rb") as f, _read_lease(f) as leased:
        if not leased:
            pytest.skip("this file system grants no leases")
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert writer.poll() is None  # still blocked in open()
        assert path.stat().st_size == 4096
    out, _ = writer.communicate(timeout=30)
    assert float(out) >= 0.8
    assert path.stat().st_size == 1


def test_no_lease_off_the_main_thread(tmp_path: Path) -> None:
    """GIVEN a worker thread (signal handlers live on the main thread) WHEN a lease is
    asked for THEN none is taken and the loader streams the file instead."""
    import threading

    path = tmp_path / "t.json"
    path.write_bytes(b"{}")
    got = []

    def run() -> None:
        with open(path, "rb") as f, _read_lease(f) as leased:
            got.append(leased)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert got == [False]
