"""How fast is ``ckprof analyze`` on a big GPU training trace, next to the floor and HTA?

Every measurement runs in a fresh Python process (interpreter start and imports
included, as a user would see them); wall time is measured by this script and peak RSS
is that process's own ``ru_maxrss`` from ``os.wait4``. Prints a table of seconds, MB/s
(1 MB = 10^6 bytes of UNCOMPRESSED trace), peak RSS, the ratios, and a PASS/FAIL line
per target of issue 6.

Usage::

    python benchmarks/bench_analyze.py --size-mb 1000               # generate + measure
    python benchmarks/bench_analyze.py /tmp/big.json                 # an existing trace
    python benchmarks/bench_analyze.py --size-mb 100 --skip-hta
    python benchmarks/bench_analyze.py --size-mb 1000 --hta-size-mb 100   # HTA on a smaller
                                                   # file, extrapolated linearly (labelled)
    python benchmarks/bench_analyze.py --ranks 8 --rank-size-mb 50   # directory mode

Rows: ``python + imports`` (pandas/numpy/ckprof, the fixed cost), ``read bytes`` (the
I/O floor), ``orjson decode`` / ``msgspec decode`` (fastest full JSON decodes, gc off),
``ckprof load_trace``, ``ckprof analyze`` (the CLI end to end, table printed to a pipe),
``ckprof analyze .gz``, ``HTA TraceAnalysis``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MB = 1_000_000
MIB = 1024 * 1024

SNIPPETS: dict[str, str] = {
    # what `ckprof analyze` imports (numpy, msgspec, click, the stages; no pandas)
    "imports": "import ckprof.cli.main, ckprof.trace.load, ckprof.analysis.bundle, ckprof.report.tables",
    "read": "import sys; open(sys.argv[1], 'rb').read()",
    "read_gz": "import sys, gzip; gzip.open(sys.argv[1], 'rb').read()",
    "orjson": "import sys, gc, orjson; gc.disable(); orjson.loads(open(sys.argv[1], 'rb').read())",
    "msgspec": "import sys, gc, msgspec; gc.disable(); msgspec.json.decode(open(sys.argv[1], 'rb').read())",
    "load": "import sys; from ckprof.trace.load import load_trace; t = load_trace(sys.argv[1]); print(len(t.event_table))",
    "stages": ("import sys, time\n"
               "def now():\n"
               "    return (time.perf_counter(), time.process_time())\n"
               "t0 = now()\n"
               "from ckprof.trace.load import load_trace\n"
               "from ckprof.analysis.phases import find_phases\n"
               "from ckprof.analysis.attribution import attribute_time\n"
               "from ckprof.analysis.memory import peak_memory_by_phase\n"
               "from ckprof.analysis import Analysis\n"
               "from ckprof.report.tables import render\n"
               "t = [('imports', now())]\n"
               "tr = load_trace(sys.argv[1]); t.append(('load_trace', now()))\n"
               "ph = find_phases(tr); t.append(('find_phases', now()))\n"
               "ti = attribute_time(tr, ph); t.append(('attribute_time', now()))\n"
               "me = peak_memory_by_phase(tr, ph); t.append(('peak_memory_by_phase', now()))\n"
               "txt = render(Analysis(trace=tr, phases=ph, time=ti, memory=me), 'table')\n"
               "t.append(('render table', now()))\n"
               "prev = t0\n"
               "for name, at in t:\n"
               "    print(f'{name}\t{at[0] - prev[0]:.3f}\t{at[1] - prev[1]:.3f}'); prev = at\n"
               "print(f'events\t{len(tr.event_table)}')\n"),
    "hta": ("import sys, logging; logging.disable(logging.CRITICAL)\n"
            "from hta.trace_analysis import TraceAnalysis\n"
            "a = TraceAnalysis(trace_dir=sys.argv[1]); print(len(a.t.get_trace(0)))"),
}


@dataclass
class Run:
    name: str
    seconds: float
    rss_mib: float          # ru_maxrss of the process (and descendants it reaped), MiB
    rc: int
    note: str = ""
    timed_out: bool = False
    extrapolated: bool = False
    cpu_s: float = 0.0      # user + system CPU seconds (process + reaped descendants)
    own_hwm_mib: float = 0.0   # VmHWM of the process itself (polled), MiB
    tree_peak_mib: float = 0.0  # peak of the summed PSS of the process and all descendants (polled)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _status_kib(pid: int, key: str, source: str = "status") -> int:
    try:
        with open(f"/proc/{pid}/{source}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class _Poller(threading.Thread):
    """Samples the process's own VmHWM and the summed PSS of its process tree (Linux)."""

    def __init__(self, pid: int, interval_s: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.stop = threading.Event()
        self.own_hwm_kib = 0
        self.tree_peak_kib = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.own_hwm_kib = max(self.own_hwm_kib, _status_kib(self.pid, "VmHWM:"))
            tree, todo = 0, [self.pid]
            while todo:
                p = todo.pop()
                # PSS: pages a forked worker shares with its parent are counted once in the sum
                tree += _status_kib(p, "Pss:", "smaps_rollup") or _status_kib(p, "VmRSS:")
                todo += _children(p)
            self.tree_peak_kib = max(self.tree_peak_kib, tree)
            self.stop.wait(self.interval_s)


def measure(name: str, cmd: list[str], *, timeout: float | None = None, note: str = "",
            repeat: int = 1) -> Run:
    """Run ``cmd`` ``repeat`` times, each in a new process; the run with the median wall
    time (its seconds and peak RSS) is returned. A failed or timed-out run stops early."""
    runs = []
    for _ in range(max(1, repeat)):
        r = _measure_once(name, cmd, timeout=timeout, note=note)
        runs.append(r)
        if r.rc != 0 or r.timed_out:
            return r
    runs.sort(key=lambda r: r.seconds)
    best = runs[len(runs) // 2]
    if len(runs) > 1:
        best.note = (best.note + " " if best.note else "") + (
            f"median of {len(runs)}: " + "/".join(f"{r.seconds:.2f}" for r in runs) + " s")
    return best


def _measure_once(name: str, cmd: list[str], *, timeout: float | None = None, note: str = "",
                  capture: list[str] | None = None) -> Run:
    """Run ``cmd`` once in a new process; wall seconds and that process's peak RSS.
    ``capture`` receives the process's stdout lines."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        poller = _Poller(proc.pid)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        poller.stop.set()
        poller.join()
        if timer:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if capture is not None:
            out.seek(0)
            capture.extend(out.read().decode(errors="replace").splitlines())
        if proc.returncode != 0 and not killed.is_set():
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
            note = (note + " " if note else "") + "FAILED: " + " | ".join(tail)
    return Run(name, seconds, usage.ru_maxrss / 1024, proc.returncode, note, timed_out=killed.is_set(),
               cpu_s=usage.ru_utime + usage.ru_stime, own_hwm_mib=poller.own_hwm_kib / 1024,
               tree_peak_mib=poller.tree_peak_kib / 1024)


def py(snippet: str, *args: str) -> list[str]:
    return [sys.executable, "-c", SNIPPETS[snippet], *args]


def ckprof_cli(*args: str) -> list[str]:
    """The ``ckprof`` console script next to this interpreter (not a shell shim such as
    pyenv's, which adds its own start-up time), else ``python -m ckprof.cli.main``."""
    exe = Path(sys.executable).with_name("ckprof")
    if exe.is_file():
        return [str(exe), *args]
    return [sys.executable, "-m", "ckprof.cli.main", *args]


def generate(path: Path, size_mb: float, *, gzip: bool = False, rank: int = 0, seed: int = 0,
             slowdown: float = 1.0) -> None:
    cmd = [sys.executable, str(HERE / "synth_trace.py"), "--size-mb", str(size_mb), "-o", str(path),
           "--rank", str(rank), "--seed", str(seed), "--slowdown", str(slowdown)]
    if gzip:
        cmd.append("--gzip")
    subprocess.run(cmd, check=True)


def gzip_copy(src: Path, dst: Path) -> None:
    """gzip -6 (what ``gzip`` and torch's tensorboard handler default to), C tool if present."""
    if shutil.which("gzip"):
        with open(dst, "wb") as f:
            subprocess.run(["gzip", "-c", "-6", str(src)], stdout=f, check=True)
    else:  # pragma: no cover
        import gzip

        with open(src, "rb") as s, gzip.open(dst, "wb", compresslevel=6) as d:
            shutil.copyfileobj(s, d, 16 * MIB)


def hta_dir(trace: Path, workdir: Path) -> Path:
    """HTA wants a directory of rank files; give it one holding a link to ``trace``."""
    d = workdir / f"hta_{trace.stem.replace('.', '_')}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    suffix = ".json.gz" if trace.name.endswith(".gz") else ".json"
    os.symlink(trace.resolve(), d / f"rank0{suffix}")
    return d


def row(r: Run, size_bytes: int, file_bytes: int) -> list[str]:
    if r.rc != 0 and not r.timed_out:
        return [r.name, "failed", "", "", f"{r.rss_mib:,.0f}", "", r.note]
    secs = f"> {r.seconds:.2f}" if r.timed_out else f"{r.seconds:.2f}"
    mbps = f"{size_bytes / MB / r.seconds:,.1f}" if r.seconds > 0 else ""
    label = ("(extrapolated) " if r.extrapolated else "") + ("(timed out) " if r.timed_out else "") + r.note
    return [r.name, secs, f"{r.cpu_s:.2f}", mbps, f"{r.rss_mib:,.0f}", f"{r.rss_mib * MIB / file_bytes:.2f}",
            label.strip()]


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) if i in (0, len(headers) - 1) else h.rjust(w)
                    for i, (h, w) in enumerate(zip(headers, widths, strict=True))))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) if i in (0, len(r) - 1) else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))))


def verdict(ok: bool | None, text: str) -> str:
    tag = "N/A " if ok is None else ("PASS" if ok else "FAIL")
    return f"{tag}  {text}"


def bench_file(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.trace:
        plain = Path(args.trace)
    else:
        plain = workdir / f"synth_{args.size_mb:g}mb.json"
        if not plain.exists():
            print(f"generating {plain} ({args.size_mb:g} MiB) ...", file=sys.stderr)
            generate(plain, args.size_mb)
    size = plain.stat().st_size
    gz = Path(str(plain) + ".gz")
    if not args.skip_gz and not gz.exists():
        print(f"compressing {gz} (gzip -6) ...", file=sys.stderr)
        gzip_copy(plain, gz)

    runs: list[tuple[Run, int]] = []  # (run, file size on disk for RSS ratio)

    def add(r: Run, on_disk: int = size) -> Run:
        runs.append((r, on_disk))
        print(f"  {r.name}: {r.seconds:.2f} s, {r.rss_mib:,.0f} MiB" + (f"  {r.note}" if r.note else ""),
              file=sys.stderr)
        return r

    rep = args.repeat
    add(measure("python + imports", py("imports"), repeat=rep))
    add(measure("read bytes", py("read", str(plain)), repeat=rep))
    if not args.skip_decoders:
        add(measure("orjson decode (gc off)", py("orjson", str(plain)), repeat=rep))
        add(measure("msgspec untyped (gc off)", py("msgspec", str(plain)), repeat=rep))
    add(measure("ckprof load_trace", py("load", str(plain)), repeat=rep))
    e2e = add(measure("ckprof analyze", ckprof_cli("analyze", str(plain)), repeat=rep))
    e2e_gz = None
    if not args.skip_gz:
        add(measure("read .gz (gunzip)", py("read_gz", str(gz)), repeat=rep))
        e2e_gz = add(measure("ckprof analyze .gz", ckprof_cli("analyze", str(gz)), repeat=rep))
    stage_lines: list[str] = []
    stages = _measure_once("stages", py("stages", str(plain)), capture=stage_lines)
    hta = None
    if not args.skip_hta:
        hta_trace = plain
        if args.hta_size_mb:
            hta_trace = workdir / f"synth_{args.hta_size_mb:g}mb.json"
            if not hta_trace.exists():
                generate(hta_trace, args.hta_size_mb)
        hta = measure("HTA TraceAnalysis", py("hta", str(hta_dir(hta_trace, workdir))), timeout=args.hta_timeout)
        if hta_trace != plain:
            factor = size / hta_trace.stat().st_size
            hta = Run(hta.name, hta.seconds * factor, hta.rss_mib * factor, hta.rc, cpu_s=hta.cpu_s * factor,
                      note=f"measured {hta.seconds:.1f} s / {hta.rss_mib:,.0f} MiB on {hta_trace.stat().st_size / MB:,.0f} MB, "
                      f"scaled x{factor:.1f}", timed_out=hta.timed_out, extrapolated=True)
        add(hta)

    print()
    print(f"file: {plain}  {size / MB:,.1f} MB uncompressed"
          + (f", {gz.stat().st_size / MB:,.1f} MB gzip" if gz.exists() and not args.skip_gz else "")
          + f"  ·  python {sys.version.split()[0]} · {os.cpu_count()} CPUs")
    print()
    print_table(["measurement", "wall s", "CPU s", "MB/s", "peak RSS MiB", "RSS/file", "note"],
                [row(r, size, size) for r, _ in runs])
    print("(MB/s from wall time; CPU s = user + system of the process and the children it reaped: "
          "compare it with wall s to see how busy the machine was)")
    print()

    ok_e2e = e2e.rc == 0
    floor = next(r for r, _ in runs if r.name == "read bytes")
    print("ratios")
    if ok_e2e:
        print(f"  ckprof analyze / read bytes floor : {e2e.seconds / floor.seconds:.1f}x the time")
        fastest = [r for r, _ in runs if r.name.startswith(("orjson", "msgspec")) and r.rc == 0]
        for r in fastest:
            print(f"  ckprof analyze / {r.name:<22}: {e2e.seconds / r.seconds:.2f}x the time")
    if ok_e2e and hta is not None and (hta.rc == 0 or hta.timed_out):
        bound = "at least " if hta.timed_out else ""
        print(f"  HTA / ckprof analyze              : {bound}{hta.seconds / e2e.seconds:.1f}x"
              + (" (HTA extrapolated)" if hta.extrapolated else ""))
    if ok_e2e and e2e_gz is not None and e2e_gz.rc == 0:
        print(f"  ckprof analyze .gz / plain        : {e2e_gz.seconds / e2e.seconds:.2f}x")
    if ok_e2e:
        print(f"  ckprof analyze peak RSS / file    : {e2e.rss_mib * MIB / size:.2f}")
    if stages.rc == 0:
        print()
        print(f"where ckprof's time goes (one process, {stages.seconds:.2f} s wall, {stages.rss_mib:,.0f} MiB; "
              "CPU s of this process only)")
        print(f"  {'stage':<22} {'wall s':>10} {'CPU s':>10}")
        for line in stage_lines:
            name, *values = line.split("\t")
            print(f"  {name:<22} " + " ".join(f"{v:>10}" for v in values))
    print()
    print("targets")
    mbps = size / MB / e2e.seconds if ok_e2e else 0.0
    print(verdict(ok_e2e and mbps >= 100, f"ckprof analyze >= 100 MB/s: {mbps:,.1f} MB/s "
                  f"({e2e.seconds:.2f} s for {size / MB:,.0f} MB)"))
    if hta is None or not (hta.rc == 0 or hta.timed_out):
        print(verdict(None, "ckprof analyze >= 10x faster than HTA TraceAnalysis: HTA not measured"))
    else:
        ratio = hta.seconds / e2e.seconds if ok_e2e else 0.0
        print(verdict(ok_e2e and ratio >= 10, f"ckprof analyze >= 10x faster than HTA TraceAnalysis: "
                      f"{'>= ' if hta.timed_out else ''}{ratio:.1f}x"
                      + (" (HTA extrapolated from a smaller file)" if hta.extrapolated else "")))
    if e2e_gz is None:
        print(verdict(None, ".json.gz within 1.5x of plain: not measured (--skip-gz)"))
    else:
        g = e2e_gz.seconds / e2e.seconds if ok_e2e and e2e_gz.rc == 0 else float("inf")
        print(verdict(g <= 1.5, f".json.gz within 1.5x of plain: {g:.2f}x"))
    if ok_e2e and e2e.cpu_s > 0:
        cpu_mbps = size / MB / e2e.cpu_s
        print(f"      (on CPU time, i.e. without other load on this machine: {cpu_mbps:,.1f} MB/s"
              + (f"; vs HTA {hta.cpu_s / e2e.cpu_s:.1f}x" if hta is not None and hta.rc == 0 and hta.cpu_s else "")
              + ")")
    rss_ratio = e2e.rss_mib * MIB / size
    print(verdict(ok_e2e and rss_ratio <= 1.5, f"peak RSS <= 1.5x uncompressed file size: {rss_ratio:.2f}x "
                  f"({e2e.rss_mib:,.0f} MiB)"))
    return 0 if ok_e2e else 1


def bench_ranks(args: argparse.Namespace) -> int:
    n = args.ranks
    workdir = Path(args.workdir) / f"ranks_{n}x{args.rank_size_mb:g}mb"
    workdir.mkdir(parents=True, exist_ok=True)
    for r in range(n):
        f = workdir / f"job_rank{r}.pt.trace.json"
        if not f.exists():
            generate(f, args.rank_size_mb, rank=r, seed=r, slowdown=1.25 if r == n - 1 else 1.0)
    total = sum(p.stat().st_size for p in workdir.iterdir())
    one = min(workdir.iterdir())
    rep = args.repeat
    imports = measure("python + imports", py("imports"), repeat=rep)
    single = measure("ckprof analyze (one rank file)", ckprof_cli("analyze", str(one)), repeat=rep)
    runs = [measure(f"ckprof analyze DIR --workers {w}", ckprof_cli("analyze", str(workdir), "--workers", str(w)),
                    repeat=rep) for w in args.worker_counts]
    if args.dask:
        runs.append(measure("ckprof analyze DIR --engine dask --workers 2",
                            ckprof_cli("analyze", str(workdir), "--engine", "dask", "--workers", "2")))
    print()
    print(f"{n} rank files of {args.rank_size_mb:g} MiB ({total / MB:,.0f} MB) in {workdir}")
    print("(driver MiB: the ckprof process's own peak RSS (VmHWM); all processes MiB: the peak of the summed PSS "
          "of the driver, the forkserver and every worker, sampled every 50 ms; CPU s of a DIR run counts the "
          "driver only, its workers are the forkserver's children)")
    print()
    print_table(["measurement", "wall s", "CPU s", "MB/s", "driver MiB", "all processes MiB", "note"],
                [[r.name, f"{r.seconds:.2f}", f"{r.cpu_s:.2f}",
                  f"{(total if 'DIR' in r.name else one.stat().st_size) / MB / r.seconds:,.1f}",
                  f"{r.own_hwm_mib:,.0f}", f"{r.tree_peak_mib:,.0f}", r.note] for r in (imports, single, *runs)])
    print()
    base = next((r for r in runs if r.name.endswith("--workers 1")), None)
    print("targets")
    for r in runs:
        if base is not None and r is not base and r.rc == 0 and base.rc == 0:
            print(f"  speedup {r.name.split('DIR ')[1]} vs --workers 1: {base.seconds / r.seconds:.2f}x")
    bound = imports.own_hwm_mib + 64 + n * 0.1
    local = [r for r in runs if "dask" not in r.name]
    ok = all(r.rc == 0 and r.own_hwm_mib <= bound for r in local)
    print(verdict(ok, f"driver peak RSS bounded (<= imports {imports.own_hwm_mib:,.0f} MiB + 64 MiB + 0.1 MiB/rank "
                      f"= {bound:,.0f} MiB; one file analysed alone needs {single.own_hwm_mib:,.0f} MiB): "
                      + ", ".join(f"{r.own_hwm_mib:,.0f}" for r in local)
                      + " (the dask engine runs its scheduler in the driver: not counted)"))
    for r in local:
        w = int(r.name.rsplit(" ", 1)[1])
        cap = r.own_hwm_mib + imports.own_hwm_mib + w * single.own_hwm_mib * 1.25
        print(verdict(r.tree_peak_mib <= cap, f"{r.name}: all processes together peak at {r.tree_peak_mib:,.0f} MiB "
                      f"<= driver + forkserver + {w} x one-file peak x 1.25 = {cap:,.0f} MiB "
                      f"(bounded by workers, not by {n} ranks)"))
    two = next((r for r in runs if r.name.endswith("--workers 2")), None)
    if base is not None and two is not None and base.rc == 0 and two.rc == 0:
        print(verdict(base.seconds / two.seconds >= 1.5, f"2 workers >= 1.5x faster than 1 on {os.cpu_count()} CPUs: "
                      f"{base.seconds / two.seconds:.2f}x"))
    return 0 if all(r.rc == 0 for r in runs) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("trace", nargs="?", help="an existing plain .json trace (default: generate one)")
    ap.add_argument("--size-mb", type=float, default=1000, help="size of the generated trace, MiB")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ckprof-bench"))
    ap.add_argument("--skip-hta", action="store_true")
    ap.add_argument("--hta-timeout", type=float, default=1200, help="seconds before HTA is stopped")
    ap.add_argument("--hta-size-mb", type=float, default=None,
                    help="measure HTA on a generated file of this size and scale linearly (labelled)")
    ap.add_argument("--skip-gz", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median is reported")
    ap.add_argument("--skip-decoders", action="store_true", help="skip the orjson / msgspec rows")
    ap.add_argument("--ranks", type=int, default=0, help="directory mode: N rank files")
    ap.add_argument("--rank-size-mb", type=float, default=50)
    ap.add_argument("--worker-counts", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dask", action="store_true", help="also time --engine dask (ranks mode)")
    args = ap.parse_args(argv)
    return bench_ranks(args) if args.ranks else bench_file(args)


if __name__ == "__main__":
    sys.exit(main())
