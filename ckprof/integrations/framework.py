"""What the framework callbacks share: a profiled run driven by the framework's own step
events, with the analysis of each window logged by rank 0 across ranks.

Contract::

    FrameworkProfiler(out_dir, *, owner, wait=1, warmup=1, active=3, repeat=1,
                      skip_first=0, steps=None, with_stack=False, memory_timeline=False,
                      nsys=False, fmt="table", log=None, rank_timeout=120.0)
        .start()           training begins: capture + instrument_checkpointing
        .step()            one optimizer step of the framework ended
        .finish(error)     training ended (or raised): traces kept, reasons said
        .trace_paths       this rank's traces;  .analysis  the last text logged (rank 0)

``log`` receives each message (default: one write to stderr). Every rank writes its
own trace; at the end of a window each rank hands its outcome to rank 0 through the
output folder (NOTE [ Rank hand-shake ] in ckprof/capture/run.py) and rank 0 logs the
analysis of all ranks' traces of that window -- the full analysis for one rank, the
cross-rank comparison for several. torch and the capture are imported when training
starts, never at import time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FrameworkProfiler"]


def _stderr(text: str) -> None:
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    sys.stderr.flush()


class FrameworkProfiler:
    """A :class:`ckprof.capture.run.RunSession` stepped by a framework (see module doc)."""

    def __init__(self, out_dir: str | os.PathLike[str] = "ckprof_traces", *, owner: str,
                 wait: int = 1, warmup: int = 1, active: int = 3, repeat: int = 1,
                 skip_first: int = 0, steps: str | None = None, with_stack: bool = False,
                 memory_timeline: bool = False, nsys: bool = False, fmt: str = "table",
                 log: Callable[[str], Any] | None = None, rank_timeout: float = 120.0) -> None:
        from ckprof.report.text import check_format

        self.out_dir = Path(out_dir)
        self.owner = owner
        self.fmt = check_format(fmt)
        self.log = log or _stderr
        self.rank_timeout = float(rank_timeout)
        self.options = {"with_stack": with_stack, "memory_timeline": memory_timeline, "nsys": nsys}
        self.schedule: dict[str, int] = {"skip_first": skip_first, "wait": wait,
                                         "warmup": warmup, "active": active, "repeat": repeat}
        self._steps_text = steps
        self.session: Any = None
        self.analysis = ""
        self._windows = 0
        self._seen_paths = 0
        self._seen_errors = 0
        self._seen_failures = 0

    @property
    def trace_paths(self) -> list[Path]:
        return list(self.session.trace_paths) if self.session is not None else []

    # -- lifecycle
    def start(self) -> None:
        if self.session is not None:
            return
        from ckprof.capture.run import (
            RunSession,
            clear_outcomes,
            env_rank,
            run_key,
            schedule_from_steps,
        )

        schedule = (schedule_from_steps(self._steps_text) if self._steps_text is not None
                    else dict(self.schedule))
        self.session = RunSession(self.out_dir, schedule=schedule, detect_steps=False,
                                  owner=self.owner, **self.options)
        rank, world = env_rank()
        if rank == 0 and world > 1:
            clear_outcomes(self.out_dir, run_key(""))
        self.session.start()

    def step(self) -> None:
        if self.session is None or self.session._finished is not None:
            return
        self.session.step()
        self._after_window()

    def finish(self, error: BaseException | None = None) -> None:
        if self.session is None or self.session._finished is not None:
            return
        outcome = self.session.finish(error=error)
        self._after_window()
        if outcome.trace_paths:
            return
        from ckprof.capture.run import gather_outcomes, publish_outcome, run_key

        key = run_key("none")
        if outcome.world_size > 1:
            publish_outcome(self.out_dir, key, outcome)
            if outcome.rank != 0:
                return
            others, _ = gather_outcomes(self.out_dir, key, outcome.world_size,
                                        timeout_s=min(self.rank_timeout, 10.0))
        else:
            others = [outcome]
        if outcome.rank == 0:
            for o in others:
                where = f"rank {o.rank}: " if outcome.world_size > 1 else ""
                if not o.trace_paths:
                    why = "see the warning above" if o.warned else o.reason
                    self.log(f"ckprof ({self.owner}): {where}no trace written to {self.out_dir}: {why}")

    # -- windows
    def _after_window(self) -> None:
        """When this step ended a window (a trace written, or a window that failed),
        hand it to rank 0, which logs the analysis of every rank's trace."""
        cap = self.session.capture
        new_paths = [str(p) for p in cap.trace_paths[self._seen_paths:]]
        new_errors = cap.errors[self._seen_errors:]
        if not new_paths and cap.trace_write_failures == self._seen_failures:
            return  # no window ended here
        self._seen_paths = len(cap.trace_paths)
        self._seen_errors = len(cap.errors)
        self._seen_failures = cap.trace_write_failures
        from ckprof.capture.run import (
            RunOutcome,
            env_rank,
            gather_outcomes,
            publish_outcome,
            run_key,
        )

        rank, world = env_rank()
        window = self._windows
        self._windows += 1
        mine = RunOutcome(rank=rank, world_size=world, trace_paths=tuple(new_paths),
                          reason="" if new_paths else "; ".join(new_errors),
                          errors=tuple(new_errors))
        if world > 1:
            key = run_key(f"w{window}")
            publish_outcome(self.out_dir, key, mine)
            if rank != 0:
                return
            outcomes, missing = gather_outcomes(self.out_dir, key, world, timeout_s=self.rank_timeout)
        else:
            outcomes, missing = [mine], []
        paths = [o.trace_paths[-1] for o in outcomes if o.trace_paths]
        lines = [f"ckprof ({self.owner}): window {window}: "
                 + ", ".join(f"{'rank ' + str(o.rank) + ': ' if world > 1 else ''}"
                             + (o.trace_paths[-1] if o.trace_paths else f"not written ({o.reason})")
                             for o in outcomes)]
        lines += [f"ckprof ({self.owner}): rank {r}: no answer within {self.rank_timeout:g} s"
                  for r in missing]
        if paths:
            from ckprof.errors import CkprofError
            from ckprof.integrations.summary import render_traces

            try:
                self.analysis = render_traces(paths, self.fmt, label=str(self.out_dir))
                lines.append(self.analysis.rstrip("\n"))
            except CkprofError as err:
                lines.append(f"ckprof: error: {err}")
        self.log("\n".join(lines))
