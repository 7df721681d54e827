"""Typed errors. Every error ckprof raises on bad input is a :class:`CkprofError`.

Each subclass carries the process exit code the CLI uses, so a script can tell a
missing file from a damaged one without parsing text. Messages follow one shape:
``<file>: <what is wrong>. <what to do>.`` and fit on one line.

Exit codes (documented in the README, never renumbered):

====  =========================  ==================================================
code  class                      meaning
====  =========================  ==================================================
1     CkprofError                anything else ckprof refused to do
2     UsageError (and click)     bad command line usage / bad argument value
3     TraceNotFoundError         path does not exist / directory holds no trace
4     TraceFormatError           not JSON, damaged gzip, not a trace, wrong fields
5     TraceTruncatedError        JSON ends early (process killed while writing)
6     EmptyTraceError            a valid trace with no usable events
7     NotCapturedError           the trace lacks what the request needs
8     OutputExistsError          refusing to write over an existing file
9     CaptureError               capture-side failure surfaced to the user
10    TraceTooLargeError         trace would not fit in memory on this machine
11    OptionalDependencyError    an optional extra (hta, nvtx, ray, dask) is missing
====  =========================  ==================================================
"""

from __future__ import annotations

from ckprof._text import printable

__all__ = [
    "CaptureError",
    "CkprofError",
    "EmptyTraceError",
    "NotCapturedError",
    "OptionalDependencyError",
    "OutputExistsError",
    "TraceFormatError",
    "TraceNotFoundError",
    "TraceTooLargeError",
    "TraceTruncatedError",
    "UsageError",
]


class CkprofError(Exception):
    """Base class. ``str(err)`` is the one-line message shown to users."""

    exit_code: int = 1

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None):
        self.path = path
        self.hint = hint
        self.reason = message
        # one line whatever the input held: a newline or a lone surrogate in a file name
        # or an op name is shown escaped (ckprof._text.printable)
        text = f"{printable(str(path))}: {printable(message)}" if path else printable(message)
        if hint:
            text = f"{text.rstrip('.')}. {printable(hint)}"
        super().__init__(text)


class UsageError(CkprofError, ValueError):
    """A bad argument value (an unknown format or detection method, a nonsense worker
    count): the same error from the Python API and the command line. Also a
    ``ValueError``, so callers that caught the old ``ValueError`` keep working."""

    exit_code = 2


class TraceNotFoundError(CkprofError):
    exit_code = 3


class TraceFormatError(CkprofError):
    exit_code = 4


class TraceTruncatedError(TraceFormatError):
    """The JSON ends early. ``events_recovered`` says how many complete events
    precede the damage (usable with ``--salvage``)."""

    exit_code = 5

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None,
                 events_recovered: int = 0):
        super().__init__(message, path=path, hint=hint)
        self.events_recovered = events_recovered


class EmptyTraceError(CkprofError):
    exit_code = 6


class NotCapturedError(CkprofError):
    exit_code = 7


class OutputExistsError(CkprofError):
    exit_code = 8


class CaptureError(CkprofError):
    exit_code = 9


class TraceTooLargeError(CkprofError):
    exit_code = 10


class OptionalDependencyError(CkprofError):
    exit_code = 11
