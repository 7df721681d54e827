"""The full-size hostile inputs of issue 16, which the test suite only runs scaled down.

Each case is written to a temporary folder and given to ``ckprof analyze`` in a fresh
process; the script prints the exit code, the wall time, the process's peak RSS and the
first line of its error, and a PASS/FAIL line per expectation (exit code, and a time
limit in seconds). Baseline in the same run: ``read bytes`` (reading the file once),
so the times can be read as multiples of the I/O floor on this machine.

Usage::

    python benchmarks/hostile_sizes.py                      # every case (~3 GB of disk;
                                                            # the bombs are small files)
    python benchmarks/hostile_sizes.py blank-2GB bomb-16GiB
    python benchmarks/hostile_sizes.py --pythonpath /tmp/old_ckprof   # compare a checkout

Cases:

- ``blank-2GB``: 2 GB of spaces and newlines (exit 6 "nothing but whitespace"; issue 16
  measured 124 s before the fix).
- ``bomb-2GiB`` / ``bomb-16GiB``: that many spaces as 8 / 64 gzip members of 256 MiB
  (a ~2 MB / ~16 MB file; the last member's size field says 256 MiB). Refused as not a
  trace once it expands past 200x after 256 MiB (exit 4), never killed for memory.
- ``bomb-json-4GiB``: a trace header, then 4 GiB of identical events in gzip members
  (~300x): refused by the expansion ratio at 256 MiB (exit 4). Without the ratio rule it
  was read at trace speed and then refused by the careful reader's memory guard
  (exit 10, 138 s here), and before the guard counted events it took 723 s and 19 GB.
- ``identical-1M``: a million identical complete events (exit 0; 14-29 s before).
- ``members-100MB`` / ``members-500MB``: a synthetic GPU trace (benchmarks/synth_trace.py)
  as two gzip members split at 30 % of the text: the JSON output must equal the plain
  file's (the issue saw "invalid stored block lengths" and a runaway decompressor).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Path]
    codes: tuple[int, ...]
    seconds: float
    compare_plain: bool = False


def _blank(d: Path, size: int = 2_000_000_000) -> Path:
    p = d / "blank.json"
    block = (b" " * (MiB - 1)) + b"\n"
    with open(p, "wb") as f:
        for _ in range(size // MiB):
            f.write(block)
    return p


def _gzip_member(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def _bomb(total: int) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        member = _gzip_member(b" " * (256 * MiB))
        p = d / "bomb.json.gz"
        with open(p, "wb") as f:
            for _ in range(total // (256 * MiB)):
                f.write(member)
        return p
    return build


def _bomb_json(d: Path) -> Path:
    line = b'  {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 1, "dur": 1},\n'
    chunk = line * ((256 * MiB) // len(line))
    member = _gzip_member(chunk)
    p = d / "bomb.json.gz"
    with open(p, "wb") as f:
        f.write(_gzip_member(b'{"traceEvents": [\n'))
        for _ in range(16):
            f.write(member)
    return p


def _identical(d: Path, n: int = 1_000_000) -> Path:
    line = (b'  {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, '
            b'"ts": 1000, "dur": 5, "args": {"External id": 1}}')
    p = d / "same.json"
    with open(p, "wb") as f:
        f.write(b'{\n  "traceEvents": [\n')
        f.write(b",\n".join([line] * n))
        f.write(b"\n  ]\n}\n")
    return p


def _members(size_mb: int) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        plain = d / "plain.json"
        subprocess.run([sys.executable, str(HERE / "synth_trace.py"), "--size-mb", str(size_mb),
                        "-o", str(plain)], check=True, stdout=subprocess.DEVNULL)
        data = plain.read_bytes()
        cut = int(len(data) * 0.3)
        p = d / "members.json.gz"
        with open(p, "wb") as f:
            f.write(gzip.compress(data[:cut], compresslevel=6))  # gzip(1) default
            f.write(gzip.compress(data[cut:], compresslevel=6))
        return p
    return build


CASES = [
    Case("blank-2GB", _blank, (6,), 20),
    Case("bomb-2GiB", _bomb(2 * GiB), (4, 6), 20),
    Case("bomb-16GiB", _bomb(16 * GiB), (4,), 20),
    Case("bomb-json-4GiB", _bomb_json, (4, 10), 30),
    Case("identical-1M", _identical, (0,), 20),
    Case("members-100MB", _members(100), (0,), 120, compare_plain=True),
    Case("members-500MB", _members(500), (0,), 300, compare_plain=True),
]


def _run(argv: list[str], pythonpath: str | None) -> tuple[int, float, float, str, str]:
    env = dict(os.environ, PYTHONPATH=pythonpath or str(HERE.parent))
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/")
    out_chunks: list[bytes] = []
    import threading

    err_holder: list[bytes] = []
    t = threading.Thread(target=lambda: err_holder.append(proc.stderr.read()), daemon=True)
    t.start()
    out_chunks.append(proc.stdout.read())
    _, status, usage = os.wait4(proc.pid, 0)
    t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    err = b"".join(err_holder).decode("utf-8", "replace")
    return (proc.returncode, seconds, usage.ru_maxrss / 1024, err,
            b"".join(out_chunks).decode("utf-8", "replace"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--pythonpath", default=None, help="ckprof checkout to run")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    failed = 0
    for case in CASES:
        if args.names and case.name not in args.names:
            continue
        d = Path(tempfile.mkdtemp(prefix=f"ckprof-{case.name}-"))
        try:
            path = case.build(d)
            size = path.stat().st_size
            t0 = time.perf_counter()
            with open(path, "rb") as f:
                while f.read(64 * MiB):
                    pass
            floor = time.perf_counter() - t0
            ck = [sys.executable, "-m", "ckprof.cli.main", "analyze", str(path)]
            code, seconds, rss, err, out = _run([*ck, "--format", "json"], args.pythonpath)
            ok = code in case.codes and seconds <= case.seconds
            note = ""
            if case.compare_plain and code == 0:
                plain = d / "plain.json"
                _, _, _, _, want = _run([*ck[:-1], str(plain), "--format", "json"], args.pythonpath)
                same = _strip_path(json.loads(out)) == _strip_path(json.loads(want))
                ok = ok and same
                note = "same JSON as the plain file" if same else "DIFFERS from the plain file"
            failed += not ok
            first = next((ln for ln in err.splitlines() if ln.strip()), "")
            print(f"{case.name:15s} file {size / MiB:9.1f} MiB  read {floor:5.1f} s  "
                  f"exit {code:4d}  {seconds:6.1f} s  peak RSS {rss:7.0f} MiB  "
                  f"{'PASS' if ok else 'FAIL'} (want exit {case.codes} within {case.seconds:.0f} s)"
                  f"  {note}")
            if first:
                print(f"{'':15s} {first[:200]}")
        finally:
            if not args.keep:
                shutil.rmtree(d, ignore_errors=True)
    return 1 if failed else 0


def _strip_path(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("trace", "path")}


if __name__ == "__main__":
    sys.exit(main())
