"""The recompute-detection methods: their one definition (light: no pandas, so the
command line can list them without loading the analysis).

A caller ASKS for a method (``recompute_detection=`` of :func:`ckprof.load`, the CLI's
``--recompute-detection``); :attr:`ckprof.analysis.phases.PhaseTable.recompute_found_by`
says which method FOUND the recompute that was reported. See NOTE [ Recompute
detection ] in :mod:`ckprof.analysis.phases` for what each method reads.
"""

from __future__ import annotations

from ckprof.errors import UsageError

__all__ = ["FOUND_BY", "RECOMPUTE_DETECTIONS", "check_recompute_detection"]

#: What a caller may ask for: ``auto`` tries markers, stack, sequence in that order;
#: ``none`` carves no recompute out of backward (useful for comparisons).
RECOMPUTE_DETECTIONS: tuple[str, ...] = ("auto", "markers", "stack", "sequence", "compiled", "none")

#: What may have found the recompute that is reported (``none``: nothing found).
FOUND_BY: tuple[str, ...] = ("markers", "stack", "sequence", "compiled", "none")


def check_recompute_detection(method: str) -> str:
    """Return ``method`` if it is one of :data:`RECOMPUTE_DETECTIONS`, else raise
    :class:`~ckprof.errors.UsageError`."""
    if method not in RECOMPUTE_DETECTIONS:
        raise UsageError(f"unknown recompute detection {method!r}",
                         hint=f"Choose one of {', '.join(RECOMPUTE_DETECTIONS)}")
    return method
