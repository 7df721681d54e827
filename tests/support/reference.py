"""Brute-force reference computations the tests compare ckprof's vectorised stages to."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def reference_segment_peaks(levels: Mapping[str, Sequence[tuple[int, int]]],
                            segments: Iterable[tuple]) -> dict[tuple, tuple[int, int]]:
    """(step, phase, device) -> (peak_bytes, at_ts_ns) by plain loops.

    ``levels``: device -> [(ts_ns, level)] in time order. ``segments``: (step, phase,
    start_ns, end_ns). A segment's candidates are the levels inside [start, end) plus
    the level it was entered with; the peak is their max, the earliest time on ties,
    and a phase's peak is the max over its segments (earliest on ties)."""
    out: dict[tuple, tuple[int, int]] = {}
    for step, phase, s, e in segments:
        for dev, lv in levels.items():
            cands = [(lvl, ts) for ts, lvl in lv if s <= ts < e]
            before = [(lvl, ts) for ts, lvl in lv if ts < s]
            if before:
                cands.append(before[-1])
            if not cands:
                continue
            best = max(lvl for lvl, _ in cands)
            at = min(ts for lvl, ts in cands if lvl == best)
            key = (step, phase, dev)
            if key not in out or (best, -at) > (out[key][0], -out[key][1]):
                out[key] = (best, at)
    return out
