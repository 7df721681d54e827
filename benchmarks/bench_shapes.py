"""Speed on every trace shape: ``ckprof analyze`` next to HTA on the same file, same run.

For each trace shape of ``synth_trace.py`` (NOTE [ Trace shapes ] there: ``gpu``,
``mixed``, ``memory``, ``stack``, ``compiled``, ``legacy``) this generates one file (cached
under ``--workdir``) and measures, each in a fresh process as a user runs it:

- ``ckprof analyze FILE`` (median of ``--repeat``): wall and CPU seconds, MB/s (10^6 bytes
  of uncompressed trace per wall second), peak RSS / file size;
- ``ckprof analyze FILE.gz`` (``gzip -6`` copy): the .gz / plain time ratio;
- ``ckprof annotate FILE OUT.json``: peak RSS / file size;
- HTA 0.5.0 ``TraceAnalysis(trace_dir=...)`` construction on the same file, once: the
  ratio HTA / ckprof (wall, and CPU for reference);

then, once: a small (~1 MB) trace end to end (``ckprof analyze``, process start to exit,
median of ``--small-repeat``) next to ``python -c pass`` and ``python -c "import pandas"``;
six degenerate files of a million events each (identical events, a staircase of partial
overlaps, half a million steps, a million distinct names ...; ckprof only); and 1 GB
files (``--big-mb``) of ``--big-shapes`` (ckprof only). Prints a table per part and a
PASS/FAIL line per target of issue 17: >= 14x HTA on every shape; 1 GB in <= 6 s with
peak RSS <= 0.75x the file; .json.gz <= 1.3x plain; annotate <= 2x the file in memory;
1 MB end to end <= 0.3 s (and degenerate files within 4x the slowest shape's events/s).

Usage::

    python benchmarks/bench_shapes.py                        # everything (~25 min, mostly HTA)
    python benchmarks/bench_shapes.py --shapes mixed         # issue 17's 300 MB shape
    python benchmarks/bench_shapes.py --size-mb 100 --skip-big --skip-degenerate
    python benchmarks/bench_shapes.py --skip-hta --stages    # ckprof only, where the time goes

Files are kept in ``--workdir`` (default ``benchmarks/_data``, ignored by git) and reused.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_analyze import (  # noqa: E402
    MB,
    MIB,
    SNIPPETS,
    Run,
    _measure_once,
    ckprof_cli,
    gzip_copy,
    hta_dir,
    measure,
    print_table,
    py,
    verdict,
)

SHAPES = ("gpu", "mixed", "memory", "stack", "compiled", "legacy")
HTA_TARGET = 14.0
BIG_SECONDS = 6.0
BIG_RSS = 0.75
GZ_TARGET = 1.3
ANNOTATE_RSS = 2.0
SMALL_SECONDS = 0.3


@dataclass
class ShapeResult:
    shape: str
    size: int
    gz_size: int
    analyze: Run
    gz: Run | None
    annotate: Run | None
    hta: Run | None
    stages: list[str]


def generate(path: Path, shape: str, size_mb: float) -> None:
    if path.exists():
        return
    print(f"generating {path.name} ({shape}, {size_mb:g} MiB) ...", file=sys.stderr)
    tmp = path.with_suffix(".partial")
    subprocess.run([sys.executable, str(HERE / "synth_trace.py"), "--shape", shape, "--size-mb",
                    str(size_mb), "-o", str(tmp)], check=True)
    tmp.rename(path)


def trace_path(workdir: Path, shape: str, size_mb: float) -> Path:
    return workdir / f"shape_{shape}_{size_mb:g}mb.json"


def bench_shape(args: argparse.Namespace, shape: str, size_mb: float) -> ShapeResult:
    workdir = Path(args.workdir)
    plain = trace_path(workdir, shape, size_mb)
    generate(plain, shape, size_mb)
    size = plain.stat().st_size
    gz_file = Path(str(plain) + ".gz")
    if not args.skip_gz and not gz_file.exists():
        print(f"compressing {gz_file.name} (gzip -6) ...", file=sys.stderr)
        gzip_copy(plain, gz_file)

    def say(r: Run | None) -> Run | None:
        if r is not None:
            print(f"  [{shape}] {r.name}: {r.seconds:.2f} s (CPU {r.cpu_s:.2f} s), {r.rss_mib:,.0f} MiB"
                  + (f"  {r.note}" if r.note else ""), file=sys.stderr)
        return r

    analyze = say(measure("ckprof analyze", ckprof_cli("analyze", str(plain)), repeat=args.repeat))
    gz = None
    if not args.skip_gz:
        gz = say(measure("ckprof analyze .gz", ckprof_cli("analyze", str(gz_file)), repeat=args.repeat))
    annotate = None
    if not args.skip_annotate:
        out = workdir / f"annotated_{shape}.json"
        out.unlink(missing_ok=True)
        annotate = say(_measure_once("ckprof annotate", ckprof_cli("annotate", str(plain), "-o", str(out))))
        out.unlink(missing_ok=True)
    stages: list[str] = []
    if args.stages:
        _measure_once("stages", py("stages", str(plain)), capture=stages)
    hta = None
    if not args.skip_hta:
        hta = say(measure("HTA TraceAnalysis", py("hta", str(hta_dir(plain, workdir))),
                          timeout=args.hta_timeout))
    return ShapeResult(shape, size, gz_file.stat().st_size if gz_file.exists() else 0, analyze, gz,
                       annotate, hta, stages)


def _ok(r: Run | None) -> bool:
    return r is not None and r.rc == 0 and not r.timed_out


def _hta_cell(r: Run | None) -> str:
    if r is None:
        return "-"
    if r.timed_out:
        return f"> {r.seconds:.0f}"
    return f"{r.seconds:.1f}" if r.rc == 0 else "failed"


def print_shapes(results: list[ShapeResult]) -> list[tuple[bool | None, str]]:
    rows = []
    for s in results:
        a = s.analyze
        hta_ratio = s.hta.seconds / a.seconds if _ok(a) and _ok(s.hta) else None
        cpu_ratio = s.hta.cpu_s / a.cpu_s if hta_ratio and a.cpu_s else None
        rows.append([
            s.shape, f"{s.size / MB:,.0f}",
            f"{a.seconds:.2f}" if _ok(a) else "failed", f"{a.cpu_s:.2f}",
            f"{s.size / MB / a.seconds:,.0f}" if _ok(a) else "",
            f"{a.rss_mib * MIB / s.size:.2f}",
            _hta_cell(s.hta),
            f"{hta_ratio:.1f}x" if hta_ratio else "-",
            f"{cpu_ratio:.1f}x" if cpu_ratio else "-",
            f"{s.gz.seconds / a.seconds:.2f}x" if _ok(s.gz) and _ok(a) else "-",
            f"{s.annotate.rss_mib * MIB / s.size:.2f}" if _ok(s.annotate) else (
                "failed" if s.annotate else "-"),
            a.note,
        ])
    print_table(["shape", "MB", "ckprof s", "CPU s", "MB/s", "RSS/file", "HTA s", "HTA/ckprof",
                 "(CPU)", "gz/plain", "annotate RSS/file", "note"], rows)
    print("(ckprof s: `ckprof analyze FILE` wall time, process start to exit; CPU s: user + system of the "
          "process and the workers it reaped; HTA/ckprof: wall-time ratio in this run, (CPU): CPU-time ratio)")
    checks: list[tuple[bool | None, str]] = []
    for s in results:
        a = s.analyze
        if s.hta is None:
            checks.append((None, f"{s.shape}: >= {HTA_TARGET:g}x HTA: HTA not measured"))
        elif _ok(a) and (_ok(s.hta) or s.hta.timed_out):
            r = s.hta.seconds / a.seconds
            checks.append((r >= HTA_TARGET, f"{s.shape}: >= {HTA_TARGET:g}x HTA TraceAnalysis: "
                           f"{'>= ' if s.hta.timed_out else ''}{r:.1f}x ({s.hta.seconds:.1f} s vs "
                           f"{a.seconds:.2f} s on {s.size / MB:,.0f} MB)"))
        else:
            checks.append((False, f"{s.shape}: HTA or ckprof failed"))
        if s.gz is not None:
            g = s.gz.seconds / a.seconds if _ok(s.gz) and _ok(a) else float("inf")
            checks.append((g <= GZ_TARGET, f"{s.shape}: .json.gz <= {GZ_TARGET:g}x plain: {g:.2f}x"))
        if s.annotate is not None:
            m = s.annotate.rss_mib * MIB / s.size if _ok(s.annotate) else float("inf")
            checks.append((m <= ANNOTATE_RSS, f"{s.shape}: annotate peak RSS <= {ANNOTATE_RSS:g}x the file: "
                           f"{m:.2f}x ({s.annotate.rss_mib:,.0f} MiB, {s.annotate.seconds:.1f} s)"))
    return checks


def bench_small(args: argparse.Namespace) -> list[tuple[bool | None, str]]:
    """A ~1 MB trace end to end, next to the interpreter's own start and pandas' import."""
    path = Path(args.workdir) / "shape_gpu_small.json"
    if not path.exists():
        subprocess.run([sys.executable, str(HERE / "synth_trace.py"), "--steps", "1", "--layers", "10",
                        "-o", str(path)], check=True)
    size = path.stat().st_size
    n = args.small_repeat

    def median(name: str, cmd: list[str]) -> Run:
        runs = [_measure_once(name, cmd) for _ in range(n)]
        runs.sort(key=lambda r: r.seconds)
        r = runs[len(runs) // 2]
        r.note = f"min {runs[0].seconds:.3f} s, median of {n}"
        return r

    rows = [median("python -c pass", [sys.executable, "-c", "pass"]),
            median("python -c 'import pandas'", [sys.executable, "-c", "import pandas"]),
            median("python + ckprof analyze imports", py("imports")),
            median("ckprof analyze (1 MB)", ckprof_cli("analyze", str(path))),
            median("ckprof analyze --format json (1 MB)", ckprof_cli("analyze", str(path), "--format", "json"))]
    print()
    print(f"small trace: {path.name}, {size / MB:.2f} MB")
    print_table(["measurement", "wall s", "CPU s", "peak RSS MiB", "note"],
                [[r.name, f"{r.seconds:.3f}", f"{r.cpu_s:.3f}", f"{r.rss_mib:,.0f}", r.note] for r in rows])
    e2e = rows[3]
    return [(e2e.rc == 0 and e2e.seconds <= SMALL_SECONDS,
             f"{size / MB:.1f} MB trace end to end (ckprof analyze, process start to exit) <= "
             f"{SMALL_SECONDS:g} s: {e2e.seconds:.3f} s median (min {e2e.note.split()[1]} s; "
             f"python -c pass {rows[0].seconds:.3f} s)")]


def bench_big(args: argparse.Namespace) -> list[tuple[bool | None, str]]:
    rows, checks = [], []
    for shape in args.big_shapes:
        plain = trace_path(Path(args.workdir), shape, args.big_mb)
        generate(plain, shape, args.big_mb)
        size = plain.stat().st_size
        r = measure("ckprof analyze", ckprof_cli("analyze", str(plain)), repeat=args.repeat)
        print(f"  [{shape} big] {r.seconds:.2f} s (CPU {r.cpu_s:.2f}), {r.rss_mib:,.0f} MiB  {r.note}",
              file=sys.stderr)
        ratio = r.rss_mib * MIB / size
        rows.append([shape, f"{size / MB:,.0f}", f"{r.seconds:.2f}", f"{r.cpu_s:.2f}",
                     f"{size / MB / r.seconds:,.0f}", f"{r.rss_mib:,.0f}", f"{ratio:.2f}", r.note])
        # the target is for 1 GB: scale the time when the file is another size
        scaled = r.seconds * 1e9 / size
        checks.append((r.rc == 0 and scaled <= BIG_SECONDS,
                       f"{shape}: 1 GB in <= {BIG_SECONDS:g} s: {r.seconds:.2f} s for {size / MB:,.0f} MB"
                       + (f" ({scaled:.2f} s per GB)" if abs(size - 1e9) > 0.05e9 else "")))
        checks.append((r.rc == 0 and ratio <= BIG_RSS, f"{shape}: 1 GB peak RSS <= {BIG_RSS:g}x the file: "
                       f"{ratio:.2f}x ({r.rss_mib:,.0f} MiB)"))
        if args.delete_big:
            plain.unlink()
    print()
    print(f"big files ({args.big_mb:g} MiB, ckprof only)")
    print_table(["shape", "MB", "wall s", "CPU s", "MB/s", "peak RSS MiB", "RSS/file", "note"], rows)
    return checks


# degenerate files: what a loader's worst cases look like (NOTE in tests/test_degenerate.py)
DEGENERATE = ("identical", "identical_memory", "staircase", "many_steps", "unique_names",
              "zero_same_ts")


def write_degenerate(path: Path, kind: str, n: int = 1_000_000) -> None:
    """A million events of one degenerate kind, Kineto's one-event-per-line layout."""
    def x(name: str, ts: str, dur: str, cat: str = "cpu_op", tid: int = 1, args: str = "") -> str:
        return (f'  {{"ph": "X", "cat": "{cat}", "name": "{name}", "pid": 1, "tid": {tid}, '
                f'"ts": {ts}, "dur": {dur}{args}}}')

    if kind == "identical":  # one event a million times: nests a million deep
        lines = (x("aten::add", "100.000", "5.000", args=', "args": {"External id": 1}')
                 for _ in range(n))
    elif kind == "identical_memory":
        mem = ('  {"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", "pid": 1, '
               '"tid": 1, "ts": 101.000, "args": {"Total Allocated": 512, "Total Reserved": 2048, '
               '"Bytes": 512, "Device Type": 0, "Device Id": -1}}')
        lines = itertools.chain([x("aten::add", "100.000", "5.000")], itertools.repeat(mem, n))
    elif kind == "staircase":  # each event starts inside all earlier ones and outlasts them
        lines = (x(f"op{i % 50}", f"{i}.000", "1000000.000") for i in range(n))
    elif kind == "many_steps":  # half a million ProfilerSteps
        lines = itertools.chain(
            (x(f"ProfilerStep#{k}", f"{k * 10}.000", "10.000", cat="user_annotation")
             for k in range(n // 2)),
            (x("aten::mm", f"{k * 10 + 1}.000", "1.000") for k in range(n // 2)))
    elif kind == "unique_names":
        lines = (x(f"op_{i}", f"{i}.500", "0.250", tid=i % 4) for i in range(n))
    elif kind == "zero_same_ts":
        lines = (x("z", "7.000", "0") for _ in range(n))
    else:
        raise ValueError(kind)
    tmp = path.with_suffix(".partial")
    with open(tmp, "w") as f:
        f.write('{\n  "traceEvents": [\n')
        f.write(",\n".join(lines))
        f.write("\n  ]\n}\n")
    tmp.rename(path)


def _events_in(path: Path) -> int:
    """Events of a file written with one event per line (the shapes, the degenerate files)."""
    with open(path, "rb") as f:
        return sum(block.count(b"\n  {") for block in iter(lambda: f.read(16 * MIB), b""))


def bench_degenerate(args: argparse.Namespace, shape_rates: list[float]) -> list[tuple[bool | None, str]]:
    """Degenerate events are tiny (~100 bytes), so they are compared per event: each file
    must be read at no less than a quarter of the slowest shape's events per second."""
    d = Path(args.workdir) / "degenerate"
    d.mkdir(parents=True, exist_ok=True)
    rows, checks = [], []
    floor = min(shape_rates) if shape_rates else None
    for kind in DEGENERATE:
        path = d / f"{kind}.json"
        if not path.exists():
            print(f"generating {path.name} ...", file=sys.stderr)
            write_degenerate(path, kind)
        size = path.stat().st_size
        r = measure("ckprof analyze", ckprof_cli("analyze", str(path)), repeat=1,
                    timeout=args.degenerate_timeout)
        print(f"  [degenerate {kind}] {r.seconds:.2f} s (CPU {r.cpu_s:.2f}), {r.rss_mib:,.0f} MiB",
              file=sys.stderr)
        mbps = size / MB / r.seconds
        rate = _events_in(path) / r.seconds
        rows.append([kind, f"{size / MB:,.0f}", ("> " if r.timed_out else "") + f"{r.seconds:.2f}",
                     f"{r.cpu_s:.2f}", f"{mbps:,.0f}", f"{rate / 1e3:,.0f}",
                     f"{r.rss_mib * MIB / size:.2f}", "" if r.rc == 0 or r.timed_out else "FAILED"])
        if floor is not None:
            checks.append((r.rc == 0 and not r.timed_out and rate >= floor / 4,
                           f"degenerate {kind}: {r.seconds:.2f} s for 1 M events ({rate / 1e3:,.0f} k "
                           f"events/s; >= a quarter of the slowest shape's {floor / 1e3:,.0f} k/s)"))
    print()
    print("degenerate files (a million events each, ckprof only)")
    print_table(["file", "MB", "wall s", "CPU s", "MB/s", "k events/s", "RSS/file", "note"], rows)
    return checks


def _compile_bytecode() -> None:
    """Write ckprof's ``.pyc`` files first, as ``pip install`` of a wheel does: an editable
    checkout run with ``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile every module
    in every measured process (~0.06 s of the small trace's time)."""
    import compileall

    import ckprof

    compileall.compile_dir(str(Path(ckprof.__file__).parent), quiet=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    ap.add_argument("--size-mb", type=float, default=300, help="size of each shape's file, MiB")
    ap.add_argument("--mixed-size-mb", type=float, default=300,
                    help="size of the mixed shape's file (issue 17 measured 300 MB), MiB")
    ap.add_argument("--workdir", default=str(HERE / "_data"))
    ap.add_argument("--repeat", type=int, default=3, help="ckprof runs per measurement (median)")
    ap.add_argument("--small-repeat", type=int, default=9)
    ap.add_argument("--skip-shapes", action="store_true",
                    help="only the small / degenerate / big parts (no 300 MB files, no HTA)")
    ap.add_argument("--skip-hta", action="store_true")
    ap.add_argument("--hta-timeout", type=float, default=900)
    ap.add_argument("--skip-gz", action="store_true")
    ap.add_argument("--skip-annotate", action="store_true")
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--big-mb", type=float, default=1000 * MB / MIB, help="size of the big files, MiB")
    ap.add_argument("--big-shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    ap.add_argument("--delete-big", action="store_true", help="delete each big file after its run")
    ap.add_argument("--stages", action="store_true", help="also print where ckprof's time goes per shape")
    ap.add_argument("--skip-degenerate", action="store_true")
    ap.add_argument("--degenerate-timeout", type=float, default=300)
    args = ap.parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    _compile_bytecode()
    started = time.perf_counter()

    results = [] if args.skip_shapes else [
        bench_shape(args, s, args.mixed_size_mb if s == "mixed" else args.size_mb)
        for s in args.shapes]
    checks: list[tuple[bool | None, str]] = []
    print()
    print(f"python {sys.version.split()[0]} · {os.cpu_count()} CPUs · load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end of the shape runs")
    print()
    if results:
        checks += print_shapes(results)
    if args.stages and results:
        print()
        print("where ckprof's time goes (one process each; wall s)")
        names = [line.split("\t")[0] for line in results[0].stages if "\t" in line]
        print_table(["stage", *[s.shape for s in results]],
                    [[n, *[next((ln.split("\t")[1] for ln in s.stages if ln.split("\t")[0] == n), "")
                           for s in results]] for n in names])
    if not args.skip_small:
        checks += bench_small(args)
    if not args.skip_degenerate:
        checks += bench_degenerate(args, [_events_in(trace_path(Path(args.workdir), s.shape,
                                                                args.mixed_size_mb if s.shape == "mixed"
                                                                else args.size_mb)) / s.analyze.seconds
                                          for s in results if _ok(s.analyze)])
    if not args.skip_big:
        checks += bench_big(args)
    print()
    print(f"targets (issue 17; {time.perf_counter() - started:.0f} s in all)")
    for ok, text in checks:
        print(verdict(ok, text))
    med = [s.hta.seconds / s.analyze.seconds for s in results if _ok(s.hta) and _ok(s.analyze)]
    if med:
        print(f"      HTA / ckprof over the shapes: min {min(med):.1f}x, median {statistics.median(med):.1f}x")
    return 0 if all(_ok(s.analyze) for s in results) else 1  # (all() of none: 0)


if __name__ == "__main__":
    assert "hta" in SNIPPETS
    sys.exit(main())
