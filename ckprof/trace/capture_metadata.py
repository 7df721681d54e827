"""Validate the ``ckprof`` object capture stores in a trace: it is input like any other.

Contract::

    clean_ckprof_metadata(value) -> (dict | None, notes: list[str])

Input: whatever the file holds under the top-level ``"ckprof"`` key (any JSON value,
or None when absent). Output: None when absent or not a JSON object; else a NEW dict
in which every known field (docs/ARCHITECTURE.md, "ckprof metadata") has its documented
type -- a field of the wrong type (``"bytes": "abc"``, ``1e400``, a list where an
object belongs, a negative byte count) is left out, and one note names the fields left
out. Unknown keys are kept as they are (a newer writer may add fields). Downstream
stages (memory baselines, ranks, the HTML report) can then trust the types. Never
raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["clean_ckprof_metadata"]

_INT64_MAX = 2**63 - 1

Check = Callable[[Any, str, list[str]], Any]
_MISSING = object()


def _describe(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 24 else text[:21] + "..."
    return f"{type(value).__name__} {text}"


def _int(lo: int, hi: int = _INT64_MAX) -> Check:
    """An integer in [lo, hi]; an integral finite float (1024.0) is accepted."""

    def check(value: Any, where: str, bad: list[str]) -> Any:
        number: int | None = None
        if type(value) is int:
            number = value
        elif type(value) is float and math.isfinite(value) and value.is_integer():
            number = int(value)
        if number is None or not lo <= number <= hi:
            bad.append(f"{where} ({_describe(value)})")
            return _MISSING
        return number

    return check


def _of_type(kind: type) -> Check:
    def check(value: Any, where: str, bad: list[str]) -> Any:
        if type(value) is not kind:
            bad.append(f"{where} ({_describe(value)})")
            return _MISSING
        return value

    return check


def _fields(spec: Mapping[str, Check]) -> Check:
    """A JSON object: known fields checked, unknown ones kept."""

    def check(value: Any, where: str, bad: list[str]) -> Any:
        if not isinstance(value, Mapping):
            bad.append(f"{where} ({_describe(value)})")
            return _MISSING
        out: dict[str, Any] = {}
        for key, item in value.items():
            rule = spec.get(key)
            if rule is None:
                out[key] = item
                continue
            kept = rule(item, f"{where}.{key}", bad)
            if kept is not _MISSING:
                out[key] = kept
        return out

    return check


def _each(rule: Check) -> Check:
    """A JSON object whose every value follows ``rule`` (keys: devices, region names)."""

    def check(value: Any, where: str, bad: list[str]) -> Any:
        if not isinstance(value, Mapping):
            bad.append(f"{where} ({_describe(value)})")
            return _MISSING
        out: dict[str, Any] = {}
        for key, item in value.items():
            kept = rule(item, f"{where}.{key}", bad)
            if kept is not _MISSING:
                out[str(key)] = kept
        return out

    return check


def _pair_of_steps(value: Any, where: str, bad: list[str]) -> Any:
    step = _int(0)
    if not isinstance(value, list) or len(value) != 2:
        bad.append(f"{where} ({_describe(value)})")
        return _MISSING
    kept = [step(v, where, bad) for v in value]
    return _MISSING if _MISSING in kept else kept


_STR, _BOOL = _of_type(str), _of_type(bool)
_BYTES = _int(0)

_SPEC: dict[str, Check] = {
    "ckprof_version": _STR, "torch_version": _STR, "python_version": _STR, "device": _STR,
    "rank": _int(0), "world_size": _int(1), "window": _int(0),
    "markers": _BOOL, "with_stack": _BOOL, "nsys": _BOOL,
    "schedule": _each(_int(0)),
    "active_steps": _pair_of_steps,
    "memory_baseline": _each(_fields({"bytes": _BYTES, "method": _STR,
                                      "counter_absolute": _BOOL})),
    "memory_end": _each(_fields({"bytes": _BYTES, "freed_unseen_bytes": _BYTES,
                                 "method": _STR})),
    "checkpoint": _fields({"early_stop": _BOOL,
                           "regions": _each(_fields({"use_reentrant": _BOOL, "sac": _BOOL}))}),
}
_TOP = _fields(_SPEC)


def clean_ckprof_metadata(value: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """The capture metadata with every known field of its documented type (module
    docstring); ``notes`` name what was left out."""
    if value is None:
        return None, []
    if not isinstance(value, Mapping):
        return None, ["ignored the top-level 'ckprof' key: it is not a JSON object"]
    bad: list[str] = []
    cleaned = _TOP(value, "ckprof", bad)
    notes = []
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        notes.append(f"ignored {len(bad)} capture metadata field(s) of the wrong type: {shown}")
    return cleaned, notes
