"""A hostile-input corpus for the ckprof command line (issue 16), built in a folder.

Each :class:`Case` builds its inputs in a fresh folder and says what must happen:
the accepted exit codes, a pattern the one-line error (stderr) or the output (stdout)
must contain, and a time limit. ``tests/test_hostile_input.py`` runs every case;
cases that need a real process (a FIFO, /dev/stdin, stdout on /dev/full, a file
truncated while read, an unreadable file) run as a subprocess with a timeout, the
others through click's CliRunner.

Run it by hand to see what each case does with the ckprof on ``PYTHONPATH`` (this is
how the before/after table of issue 16 was made)::

    PYTHONPATH=. python tests/support/hostile.py            # every case, a subprocess each
    PYTHONPATH=. python tests/support/hostile.py fifo-no-writer stdout-dev-full

Sizes are scaled down (megabytes, not the gigabytes of the issue's report);
``benchmarks/hostile_sizes.py`` runs the full-size ones.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Run:
    """How to invoke ckprof for a case."""

    argv: list[str]
    #: None: no stdin; "pipe": an empty pipe (a writer that never writes); a Path: that file
    stdin: Any = None
    #: write stdout to this path (e.g. /dev/full) instead of capturing it
    stdout_to: str | None = None
    #: run without root's permission override (a file with mode 000 only is unreadable
    #: to a process that permission bits apply to)
    unprivileged: bool = False
    #: called with the process while it runs (e.g. truncate the input meanwhile)
    during: Callable[[subprocess.Popen], None] | None = None
    #: run this many times (racy cases), every run must meet the expectation
    repeat: int = 1


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Run]
    codes: tuple[int, ...]
    #: regex the stderr must contain (an error: exactly one line "ckprof: error: ...")
    err: str | None = None
    #: regex the stdout must contain
    out: str | None = None
    #: regex the stdout must NOT contain
    not_out: str | None = None
    subprocess: bool = False
    seconds: float = 20.0
    #: what ckprof did before issue 16 (for the record; not checked)
    before: str = ""
    marks: tuple[str, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------- traces

def trace_doc(*, steps: tuple[Any, ...] = (1, 2), op: str = "aten::mm", memory: bool = True,
              extra_events: list[dict] | None = None, step_us: float = 1000.0,
              **top: Any) -> dict[str, Any]:
    """A small Kineto-shaped trace: per step a forward op, a backward node and an
    optimizer annotation, plus [memory] events (CPU)."""
    ev: list[dict[str, Any]] = []
    ext = iter(range(1, 1_000_000))

    def x(name: str, cat: str, ts: float, dur: float, **args: Any) -> None:
        ev.append({"ph": "X", "cat": cat, "name": name, "pid": 100, "tid": 100,
                   "ts": round(ts, 3), "dur": round(dur, 3),
                   "args": {"External id": next(ext), **args}})

    total = 0
    for k, n in enumerate(steps):
        t0 = 1_000_000.0 + k * step_us * 1.2
        x(f"ProfilerStep#{n}", "user_annotation", t0, step_us)
        x(op, "cpu_op", t0 + 10, 200, **{"Sequence number": 10 * k + 1})
        x("autograd::engine::evaluate_function: MmBackward0", "cpu_op", t0 + 300, 300,
          **{"Sequence number": 10 * k + 1})
        x("MmBackward0", "cpu_op", t0 + 301, 298, **{"Sequence number": 10 * k + 1})
        x("Optimizer.step#SGD.step", "user_annotation", t0 + 700, 200)
        if memory:
            for dt, b in ((20, 4096), (320, 8192), (600, -4096)):
                total += b
                ev.append({"ph": "i", "s": "t", "cat": "cpu_instant_event", "name": "[memory]",
                           "pid": 100, "tid": 100, "ts": t0 + dt,
                           "args": {"Total Allocated": total, "Total Reserved": 1 << 20,
                                    "Bytes": b, "Device Type": 0, "Device Id": -1}})
    ev += extra_events or []
    return {"schemaVersion": 1, **top, "traceEvents": ev}


def kineto_bytes(doc: dict[str, Any]) -> bytes:
    """Kineto's layout: top-level keys, then one event per line (fast-path shaped)."""
    head = "".join(f'  {json.dumps(k)}: {json.dumps(v)},\n' for k, v in doc.items()
                   if k != "traceEvents")
    body = ",\n".join("  " + json.dumps(e) for e in doc["traceEvents"])
    return ("{\n" + head + '  "traceEvents": [\n' + body + "\n  ]\n}\n").encode()


def write(path: Path, doc: dict[str, Any] | None = None, **kw: Any) -> Path:
    path.write_bytes(kineto_bytes(doc if doc is not None else trace_doc(**kw)))
    return path


def analyze(path: Path | str, *more: str) -> Run:
    return Run(["analyze", str(path), *more])


# --------------------------------------------------------------------------- builders

def _two_members(d: Path) -> Run:
    data = kineto_bytes(trace_doc(steps=tuple(range(1, 40))))
    cut = len(data) * 2 // 5
    p = d / "t.json.gz"
    p.write_bytes(gzip.compress(data[:cut]) + b"\0\0" + gzip.compress(data[cut:]))
    return analyze(p)


def _step_named(name: str) -> Callable[[Path], Run]:
    def build(d: Path) -> Run:
        doc = trace_doc(extra_events=[{"ph": "X", "cat": "user_annotation", "name": name,
                                       "pid": 100, "tid": 100, "ts": 1_005_000, "dur": 10}])
        return analyze(write(d / "t.json", doc))
    return build


def _steps_overflow_dir(d: Path) -> Run:
    rd = d / "ranks"
    rd.mkdir()
    write(rd / "rank0.json")
    write(rd / "rank1.json", trace_doc(steps=(1, 99999999999999999999999)))
    return analyze(rd)


def _surrogate(fmt: str) -> Callable[[Path], Run]:
    def build(d: Path) -> Run:
        return analyze(write(d / "t.json", op="aten::\ud800mm"), "--format", fmt)
    return build


def _surrogate_report(d: Path) -> Run:
    return Run(["report", str(write(d / "t.json", op="x\ud800")), "-o", str(d / "r.html")])


def _surrogate_compare(d: Path) -> Run:
    a = write(d / "a.json", op="x\ud800")
    b = write(d / "b.json", op="y\udfff")
    return Run(["compare", str(a), str(b)])


def _surrogate_plot(d: Path) -> Run:
    return Run(["plot", str(write(d / "t.json", op="x\ud800")), "--kind", "memory",
                "-o", str(d / "m.svg")])


def _surrogate_annotate(d: Path) -> Run:
    return Run(["annotate", str(write(d / "t.json", op="x\ud800")), "-o", str(d / "a.json.gz")])


def _metadata(ck: Any) -> Callable[[Path], Run]:
    def build(d: Path) -> Run:
        return analyze(write(d / "t.json", ckprof=ck))
    return build


def _metadata_1e400(d: Path) -> Run:
    text = kineto_bytes(trace_doc(ckprof={"memory_baseline": {"cpu": {"bytes": 7}}}))
    (d / "t.json").write_bytes(text.replace(b'"bytes": 7', b'"bytes": 1e400'))
    return analyze(d / "t.json")


def _rank_2_70(d: Path) -> Run:
    rd = d / "ranks"
    rd.mkdir()
    write(rd / "a.json", distributedInfo={"rank": 0})
    write(rd / "b.json", distributedInfo={"rank": 2**70})
    return analyze(rd)


def _plot_dpi(dpi: str) -> Callable[[Path], Run]:
    def build(d: Path) -> Run:
        return Run(["plot", str(write(d / "t.json")), "-o", str(d / "p.png"), "--dpi", dpi])
    return build


def _report_unreadable_folder(d: Path) -> Run:
    locked = d / "locked"
    locked.mkdir()
    locked.chmod(0)
    return Run(["report", str(write(d / "t.json")), "-o", str(locked / "r.html")],
               unprivileged=True)


def _stdout_full(d: Path) -> Run:
    return Run(["analyze", str(write(d / "t.json"))], stdout_to="/dev/full")


def _fifo(d: Path) -> Run:
    p = d / "t.json"
    os.mkfifo(p)
    return analyze(p)


def _stdin_pipe(d: Path) -> Run:
    return Run(["analyze", "/dev/stdin"], stdin="pipe")


def _stdin_file(d: Path) -> Run:
    return Run(["analyze", "/dev/stdin"], stdin=write(d / "t.json"))


def _truncate_meanwhile(d: Path) -> Run:
    """~16 MB of Kineto-layout events, cut to a third by another process as soon as
    ckprof has the file open (a memory-mapped read died of SIGBUS here)."""
    ops = b",\n".join(
        b'  {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 100, "tid": 100, '
        b'"ts": %d.5, "dur": 1.25, "args": {"External id": %d}}' % (2_000_000 + 2 * i, i)
        for i in range(120_000))
    base = kineto_bytes(trace_doc())
    data = base[: base.rindex(b"}\n  ]")] + b"},\n" + ops + b"\n  ]\n}\n"
    p = d / "big.json"
    p.write_bytes(data)

    def truncate_when_open(proc: subprocess.Popen) -> None:
        fd_dir = Path(f"/proc/{proc.pid}/fd")
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if any(os.readlink(fd) == str(p) for fd in fd_dir.iterdir()):
                    break
            except OSError:
                pass
            time.sleep(0.002)
        with open(p, "r+b") as f:
            f.truncate(len(data) // 3)
        proc.wait()
        p.write_bytes(data)  # whole again for the next repeat

    return Run(["analyze", str(p)], during=truncate_when_open)


def _whitespace(size: int) -> Callable[[Path], Run]:
    def build(d: Path) -> Run:
        p = d / "blank.json"
        with open(p, "wb") as f:
            block = b" " * (1 << 20)
            for _ in range(size >> 20):
                f.write(block)
            f.write(b"\n\t\r\n")
        return analyze(p)
    return build


def _whitespace_inside(d: Path) -> Run:
    p = d / "t.json"
    p.write_bytes(b'{"traceEvents": [' + b" " * (16 << 20) + b"]}")
    return analyze(p)


def _identical(n: int) -> Callable[[Path], Run]:
    def build(d: Path) -> Run:
        line = b'  {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, ' \
               b'"ts": 1000, "dur": 5, "args": {"External id": 1}}'
        mem = (b'  {"ph": "i", "s": "t", "name": "[memory]", "pid": 1, "tid": 1, "ts": 1010, '
               b'"args": {"Total Allocated": 64, "Bytes": 64, "Device Type": 0, '
               b'"Device Id": -1}}')
        p = d / "same.json"
        p.write_bytes(b'{\n  "traceEvents": [\n' + b",\n".join([line] * n + [mem]) + b"\n  ]\n}\n")
        return analyze(p)
    return build


def _rank_dir(d: Path, n: int = 3) -> Path:
    rd = d / "ranks"
    rd.mkdir()
    for r in range(n):
        write(rd / f"host_rank{r}.pt.trace.json", distributedInfo={"rank": r})
    return rd


def _workers(value: str) -> Callable[[Path], Run]:
    def build(d: Path) -> Run:
        return analyze(_rank_dir(d), "--workers", value)
    return build


def _force_to(target: str, command: str = "report") -> Callable[[Path], Run]:
    def build(d: Path) -> Run:
        t = write(d / "t.json")
        out = target
        if target == "fifo":
            out = str(d / "out.json.gz")
            os.mkfifo(out)
        elif target == "dir":
            out = str(d)
        elif target == "link-to-dev-full":
            out = str(d / "r.html")
            os.symlink("/dev/full", out)
        return Run([command, str(t), "-o", out, "--force"])
    return build


def _output_exists(command: str, force: bool) -> Callable[[Path], Run]:
    def build(d: Path) -> Run:
        t = write(d / "t.json")
        out = d / "out.txt"
        out.write_text("keep me")
        argv = ["analyze", str(t)] if command == "analyze" else ["compare", str(t), str(t)]
        return Run([*argv, "-o", str(out), *(["--force"] if force else [])])
    return build


def _output_dir_without_force(d: Path) -> Run:
    return Run(["report", str(write(d / "t.json")), "-o", str(d)])


def _bad_files(rd: Path) -> list[str]:
    (rd / "empty.json").write_bytes(b"")
    (rd / "notjson.json").write_bytes(b"this is not a trace")
    (rd / "badgzip.json.gz").write_bytes(b"\x1f\x8b\x09garbage-header" + bytes(40))
    (rd / "utf16.json").write_bytes(kineto_bytes(trace_doc()).decode().encode("utf-16"))
    os.symlink("loop_b.json", rd / "loop_a.json")
    os.symlink("loop_a.json", rd / "loop_b.json")
    os.mkfifo(rd / "fifo.json")
    os.symlink("missing.json", rd / "dangling.json")
    return ["empty.json", "notjson.json", "badgzip.json.gz", "utf16.json", "loop_a.json",
            "loop_b.json", "fifo.json", "dangling.json"]


def _rank_dir_bad(d: Path) -> Run:
    rd = _rank_dir(d, 2)
    _bad_files(rd)
    (rd / "config.json").write_text('{"lr": 0.1}')  # another tool's JSON: not a failure
    return analyze(rd)


def _rank_dir_unreadable(d: Path) -> Run:
    rd = _rank_dir(d, 2)
    (rd / "host_rank7.pt.trace.json").write_bytes(kineto_bytes(trace_doc()))
    (rd / "host_rank7.pt.trace.json").chmod(0)
    d.chmod(0o755)
    rd.chmod(0o755)
    return Run(["analyze", str(rd)], unprivileged=True)


def _rank_dir_all_bad(d: Path) -> Run:
    rd = d / "ranks"
    rd.mkdir()
    _bad_files(rd)
    return analyze(rd)


def _rank_dir_all_truncated(d: Path) -> Run:
    rd = d / "ranks"
    rd.mkdir()
    for r in range(2):
        data = kineto_bytes(trace_doc())
        (rd / f"rank{r}.json").write_bytes(data[: len(data) // 2])
    return analyze(rd)


def _duplicate_key(d: Path) -> Run:
    good = kineto_bytes(trace_doc())
    p = d / "t.json"
    p.write_bytes(good.replace(b"{\n", b'{\n  "traceEvents": [],\n', 1))
    return analyze(p)


def _nan_total(d: Path) -> Run:
    text = kineto_bytes(trace_doc())
    at = text.index(b'"Total Allocated": ') + len(b'"Total Allocated": ')
    end = text.index(b",", at)
    (d / "t.json").write_bytes(text[:at] + b"NaN" + text[end:])
    return analyze(d / "t.json")


def _huge_step(d: Path) -> Run:
    doc = trace_doc(steps=(1,), step_us=float(2**52))
    return analyze(write(d / "t.json", doc))


def _unreadable_input(d: Path) -> Run:
    p = write(d / "t.json")
    p.chmod(0)
    d.chmod(0o755)
    return Run(["analyze", str(p)], unprivileged=True)


def _unreadable_dir(d: Path) -> Run:
    rd = _rank_dir(d, 2)
    rd.chmod(0o300)  # can enter, cannot list
    return Run(["analyze", str(rd)], unprivileged=True)


def _symlink_loop(d: Path) -> Run:
    os.symlink("b.json", d / "a.json")
    os.symlink("a.json", d / "b.json")
    return analyze(d / "a.json")


def _dangling(d: Path) -> Run:
    os.symlink("gone.json", d / "a.json")
    return analyze(d / "a.json")


def _newline_name(d: Path) -> Run:
    return analyze(write(d / "t.json", op="aten::mm\nBOGUS ROW"))


def _newline_file(d: Path) -> Run:
    p = d / "bad\nname.json"
    p.write_text("not json")
    return analyze(p)


def _utf16(d: Path) -> Run:
    p = d / "t.json"
    p.write_bytes(kineto_bytes(trace_doc()).decode().encode("utf-16"))
    return analyze(p)


ERR = r"^ckprof: error: .*"


def _all(*patterns: str) -> str:
    """A regex matching text that contains every pattern, in any order."""
    return "(?s)" + "".join(f"(?=.*{p})" for p in patterns)


_FAILED_NAMES = ["empty.json", "notjson.json", "badgzip.json.gz", "utf16.json", "loop_a.json",
                 "loop_b.json", "fifo.json", "dangling.json"]

CASES: list[Case] = [
    # -- data corruption
    Case("gzip-two-members", _two_members, (0,), out=r"39 step\(s\) analysed",
         before="right for small members; 100 MB split at 30 MB: 'invalid stored block "
                "lengths'; 500 MB: 1,000 bytes too many or endless growth"),
    # -- tracebacks
    Case("step-int64-overflow", _step_named("ProfilerStep#99999999999999999999999"), (0,),
         out=r"ignored 1 ProfilerStep annotation", before="OverflowError traceback"),
    Case("step-4300-digits", _step_named("ProfilerStep#" + "7" * 5000), (0,),
         out=r"ignored 1 ProfilerStep", before="ValueError traceback (int digit limit)"),
    Case("step-overflow-in-rank-dir", _steps_overflow_dir, (0,), out=r"2 rank\(s\) analysed",
         not_out="OverflowError", before="raw 'OverflowError...' in the failure list"),
    Case("surrogate-table", _surrogate("table"), (0,), out=r"\\ud800",
         before="UnicodeEncodeError traceback"),
    Case("surrogate-csv", _surrogate("csv"), (0,), before="UnicodeEncodeError traceback"),
    Case("surrogate-markdown", _surrogate("markdown"), (0,), before="UnicodeEncodeError traceback"),
    Case("surrogate-json", _surrogate("json"), (0,), before="worked"),
    Case("surrogate-report", _surrogate_report, (0,), err=r"wrote ",
         before="UnicodeEncodeError traceback"),
    Case("surrogate-compare", _surrogate_compare, (0,), before="UnicodeEncodeError traceback"),
    Case("surrogate-plot", _surrogate_plot, (0,), err=r"wrote "),
    Case("surrogate-annotate", _surrogate_annotate, (0,), err=r"wrote ",
         before="exit 4 'cannot re-read the trace as complete JSON'"),
    Case("metadata-bytes-string", _metadata({"memory_baseline": {"cpu": {"bytes": "abc"}}}),
         (0,), out=r"capture metadata field.*memory_baseline\.cpu\.bytes",
         before="ValueError traceback in memory.py"),
    Case("metadata-bytes-1e400", _metadata_1e400, (0,), out=r"capture metadata field",
         before="OverflowError traceback in memory.py"),
    Case("metadata-list-for-object", _metadata({"memory_baseline": [1, 2]}), (0,),
         out=r"capture metadata field", before="AttributeError traceback in memory.py"),
    Case("metadata-device-list", _metadata({"memory_baseline": {"cpu": [1]},
                                            "memory_end": {"cpu": {"freed_unseen_bytes": "x",
                                                                   "bytes": 1}}}),
         (0,), out=r"capture metadata field", before="TypeError traceback in memory.py"),
    Case("rank-2**70", _rank_2_70, (0,), out=r"distributedInfo\.rank .* is not a rank",
         before="OverflowError: the whole multi-rank report lost"),
    Case("plot-dpi-0", _plot_dpi("0"), (2,), err=r"dpi", before="matplotlib traceback"),
    Case("plot-dpi-negative", _plot_dpi("-5"), (2,), err=r"dpi", before="matplotlib traceback"),
    Case("plot-dpi-100000", _plot_dpi("100000"), (2,), err=r"dpi",
         before="matplotlib traceback (image too large)"),
    Case("report-unreadable-folder", _report_unreadable_folder, (1,),
         err=ERR + r"locked.*(permission denied|Permission denied)", subprocess=True,
         before="PermissionError traceback"),
    Case("stdout-dev-full", _stdout_full, (1,), err=ERR + r"cannot write to standard output",
         subprocess=True, before="'Exception ignored ... OSError: No space left on device', exit 120"),
    # -- hangs, signals, memory
    Case("fifo-no-writer", _fifo, (4,), err=ERR + r"named pipe \(FIFO\)", subprocess=True,
         seconds=15, before="blocked forever in open()"),
    Case("dev-stdin-pipe", _stdin_pipe, (4,), err=ERR + r"/dev/stdin: is a named pipe",
         subprocess=True, seconds=15, before="'the file is empty' (or a hang with a writer)"),
    Case("dev-stdin-file", _stdin_file, (0,), out=r"2 step\(s\) analysed", subprocess=True),
    Case("char-device-input", lambda d: analyze("/dev/zero"), (4,),
         err=ERR + r"/dev/zero: is a character device", before="read /dev/zero forever"),
    Case("truncated-while-read", _truncate_meanwhile, (0, 4, 5), subprocess=True, seconds=60,
         before="killed by SIGBUS in 8 of 16 runs (mmap of a shrinking file)"),
    Case("whitespace-32MB", _whitespace(32 << 20), (6,), err=ERR + r"nothing but whitespace",
         seconds=10, before="2 GB: 124 s, then 'empty' (256 MB: 15 s)"),
    Case("whitespace-inside-events", _whitespace_inside, (6,), err=ERR + r"empty", seconds=10),
    Case("identical-events-100k", _identical(100_000), (0,), out=r"1 step\(s\) analysed",
         seconds=30, before="a million: 14-29 s (35 s in recompute detection)"),
    Case("workers-0", _workers("0"), (2,), err=r"workers", before="silently 1"),
    Case("workers-negative", _workers("-3"), (2,), err=r"workers", before="silently 1"),
    Case("workers-1000", _workers("1000"), (0,), out=r"--workers 1000 lowered to \d+",
         seconds=60, before="a process per file (9.9 GB RSS on 200 files)"),
    # -- writing outputs
    Case("report-force-dev-full", _force_to("/dev/full"), (1,),
         err=ERR + r"/dev/full: is a character device, not a regular file",
         before="renamed a file over the system's /dev/full"),
    Case("annotate-force-fifo", _force_to("fifo", "annotate"), (1,),
         err=ERR + r"is a named pipe \(FIFO\), not a regular file", before="replaced the FIFO"),
    Case("report-force-directory", _force_to("dir"), (1,), err=ERR + r"is a directory",
         before="'already exists' / IsADirectoryError"),
    Case("report-o-directory", _output_dir_without_force, (1,),
         err=ERR + r"is a directory, not a file name", before="'already exists'"),
    Case("report-force-link-to-dev-full", _force_to("link-to-dev-full"), (1,),
         err=ERR + r"is a character device"),
    Case("analyze-o-existing", _output_exists("analyze", False), (8,),
         err=ERR + r"already exists.*--force", before="suggested a --force analyze did not have"),
    Case("analyze-o-existing-force", _output_exists("analyze", True), (0,), err=r"wrote "),
    Case("compare-o-existing", _output_exists("compare", False), (8,),
         err=ERR + r"already exists.*--force"),
    # -- rank directories
    Case("rank-dir-bad-files", _rank_dir_bad, (0,),
         out=_all(r"2 rank\(s\) analysed[^\n]*8 failed",
                  *(rf"\n  {re.escape(n)}: [^\n]*{re.escape(n)}: " for n in _FAILED_NAMES)),
         not_out="config.json",
         before="8 of 8 bad files silently dropped"),
    Case("rank-dir-unreadable-file", _rank_dir_unreadable, (0,),
         out=r"(?s)1 failed.*host_rank7\.pt\.trace\.json: .*cannot be read", subprocess=True,
         before="silently dropped"),
    Case("rank-dir-all-bad", _rank_dir_all_bad, (1,),
         err=ERR + r"none of the 8 trace file\(s\) could be analysed",
         out=r"0 rank\(s\) analysed.*8 failed", before="exit 0, '0 rank(s) analysed'"),
    Case("rank-dir-all-truncated", _rank_dir_all_truncated, (5,),
         err=ERR + r"none of the 2 trace file", before="exit 0"),
    # -- smaller, but wrong answers
    Case("duplicate-traceEvents", _duplicate_key, (0,),
         out=r"repeats the 'traceEvents' key", before="''traceEvents' is not a list', exit 4"),
    Case("nan-total-allocated", _nan_total, (0,), out=r"lack a usable 'Total Allocated'",
         not_out="legacy trace", before="whole device silently switched to the running sum"),
    Case("repeated-step", _step_named("ProfilerStep#1"), (0,),
         out=r"ProfilerStep #1 occur\(s\) again later", before="merged; content dropped; generic note"),
    Case("arabic-digit-step", _step_named("ProfilerStep#\u0663"), (0,),
         out=r"ignored 1 ProfilerStep", before="read as step 3"),
    Case("step-abc", _step_named("ProfilerStep#abc"), (0,), out=r"ignored 1 ProfilerStep",
         before="vanished without a note"),
    Case("step-1.5", _step_named("ProfilerStep#1.5"), (0,), out=r"ignored 1 ProfilerStep",
         before="vanished without a note"),
    Case("step-negative", _step_named("ProfilerStep#-3"), (0,), out=r"ignored 1 ProfilerStep",
         before="vanished without a note"),
    Case("step-2^52-us", _huge_step, (0,), out=r"longer than a day", before="no warning"),
    Case("unreadable-input", _unreadable_input, (4,), err=ERR + r"cannot be read",
         subprocess=True, before="exit 2 with a usage message"),
    Case("unreadable-directory", _unreadable_dir, (4,), err=ERR + r"cannot list the directory",
         subprocess=True, before="exit 2 with a usage message"),
    Case("symlink-loop", _symlink_loop, (3,), err=ERR + r"symbolic link loop",
         before="'no such file or directory'"),
    Case("dangling-symlink", _dangling, (3,), err=ERR + r"symbolic link to a missing file"),
    Case("newline-in-op-name", _newline_name, (0,), out=r"aten::mm\\nBOGUS ROW",
         not_out=r"\nBOGUS ROW", before="a broken text table"),
    Case("newline-in-file-name", _newline_file, (4,), err=ERR + r"bad\\nname\.json",
         before="the one-line error split in two"),
    Case("utf16-input", _utf16, (4,), err=ERR + r"is UTF-16 text",
         before="'is not valid JSON: invalid JSON at character 0'"),
]


# --------------------------------------------------------------------------- running

@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    seconds: float


def unprivileged_prefix() -> list[str] | None:
    """A command prefix under which permission bits apply: nothing for a normal user;
    for root, ``setpriv`` dropping CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (root stays
    root, so the interpreter and its packages remain readable). None when impossible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def run_subprocess(run: Run, *, timeout: float, pythonpath: str | None = None) -> Outcome:
    """Run ckprof in a fresh interpreter; a hang becomes code -999 after ``timeout``."""
    env = dict(os.environ, PYTHONPATH=pythonpath or str(REPO), MPLBACKEND="Agg",
               PYTHONIOENCODING="utf-8")
    prefix = unprivileged_prefix() if run.unprivileged else []
    if prefix is None:
        raise RuntimeError("cannot drop root's permission override (no setpriv)")
    argv = [*prefix, sys.executable, "-m", "ckprof.cli.main", *run.argv]
    stdin: Any = subprocess.DEVNULL
    if run.stdin == "pipe":
        stdin = subprocess.PIPE
    elif run.stdin is not None:
        stdin = open(run.stdin, "rb")  # noqa: SIM115 - closed below
    stdout: Any = subprocess.PIPE
    if run.stdout_to:
        stdout = open(run.stdout_to, "wb")  # noqa: SIM115 - closed below
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env,
                            cwd="/")  # not REPO: python -m puts the cwd first on sys.path
    watcher = None
    if run.during is not None:
        watcher = threading.Thread(target=run.during, args=(proc,), daemon=True)
        watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        code = -999
    finally:
        for f in (stdin, stdout):
            if hasattr(f, "close"):
                f.close()
    if watcher is not None:
        watcher.join(timeout=10)
    return Outcome(code, (out or b"").decode("utf-8", "replace"),
                   (err or b"").decode("utf-8", "replace"), time.perf_counter() - t0)


def run_cli(run: Run) -> Outcome:
    """Run ckprof in this process through click's CliRunner."""
    from click.testing import CliRunner

    from ckprof.cli.main import cli

    t0 = time.perf_counter()
    result = CliRunner().invoke(cli, run.argv, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(result.exception))
        return Outcome(-1, result.stdout, result.stderr + tb, time.perf_counter() - t0)
    return Outcome(result.exit_code, result.stdout, result.stderr, time.perf_counter() - t0)


def check(case: Case, outcome: Outcome) -> list[str]:
    """What is wrong with ``outcome`` for ``case`` (empty when it is right)."""
    problems = []
    if outcome.code not in case.codes:
        problems.append(f"exit {outcome.code}, expected {case.codes}")
    if "Traceback (most recent call last)" in outcome.stderr:
        problems.append("a traceback")
    if outcome.seconds > case.seconds:
        problems.append(f"took {outcome.seconds:.1f} s > {case.seconds} s")
    lines = [ln for ln in outcome.stderr.splitlines() if ln.strip()]
    if outcome.code not in (0, 2) and outcome.code in case.codes:
        errors = [ln for ln in lines if ln.startswith("ckprof: error: ")]
        if len(errors) != 1:
            problems.append(f"expected one 'ckprof: error:' line, got {lines!r}")
    if case.err and not any(re.search(case.err, ln) for ln in lines):
        problems.append(f"stderr {lines!r} lacks /{case.err}/")
    if case.out and not re.search(case.out, outcome.stdout):
        problems.append(f"stdout lacks /{case.out}/: {outcome.stdout[-600:]!r}")
    if case.not_out and re.search(case.not_out, outcome.stdout):
        problems.append(f"stdout holds /{case.not_out}/")
    return problems


def main(argv: list[str]) -> int:
    """``hostile.py [--pythonpath DIR] [--skip NAME ...] [NAME ...]``: run cases against the
    ckprof in DIR (default: this checkout), one subprocess each, and print a table."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*")
    parser.add_argument("--pythonpath", default=None)
    parser.add_argument("--skip", nargs="*", default=[])
    args = parser.parse_args(argv)
    wanted = set(args.names)
    bad = 0
    for case in CASES:
        if (wanted and case.name not in wanted) or case.name in args.skip:
            continue
        base = Path(tempfile.mkdtemp(prefix="ckprof-hostile-"))
        base.chmod(0o755)
        try:
            run = case.build(base)
            outcomes = [run_subprocess(run, timeout=max(case.seconds, 30),
                                       pythonpath=args.pythonpath) for _ in range(run.repeat)]
        finally:
            for p in base.rglob("*"):
                if not p.is_symlink():
                    p.chmod(0o755)
            shutil.rmtree(base, ignore_errors=True)
        worst = next((o for o in outcomes if check(case, o)), outcomes[-1])
        problems = check(case, worst)
        bad += bool(problems)
        first = next((ln for ln in worst.stderr.splitlines() if ln.strip()), "")
        print(f"{case.name:30s} exit {worst.code:4d}  {worst.seconds:5.1f}s  "
              f"{'OK ' if not problems else 'BAD'}  {first[:150]}")
        for p in problems:
            print(f"{'':30s} - {p[:300]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
