"""One-line, encodable text for anything that came from input (names, paths, values).

``printable(text)`` escapes what would break a one-line message, a text table or a
UTF-8 stream: control characters (``\\n`` -> the two characters ``\\n``, others as
``\\u001b``), lone surrogates (valid in JSON as ``"\\ud800"``, not encodable as UTF-8,
and what Python uses for undecodable bytes in file names) and the Unicode line
separators. Everything else is returned unchanged; text without such characters is
returned as is (same object). No imports beyond ``re``: errors and the trace builder
both use it.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT.get(char) or f"\\u{ord(char):04x}"


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped (module docstring)."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)
