"""Regular expressions of the ``~`` operator, on RE2 (the ``google-re2`` package): matching
takes time linear in the input whatever the pattern, so a rule cannot be turned against the
proxy by a crafted header (Python's ``re`` backtracks: ``(a+)+$`` on 30 a's and a b takes
minutes).

RE2 objects are called through the binding's core class: its ``re``-compatible wrapper
spends several microseconds per call building match objects the language does not need.
The binding is imported on first use, so that rules without ``~`` load without it.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_NO_MATCH = (-1, -1)


@functools.cache
def _re2() -> tuple[Any, Any]:
    try:
        import re2
        from re2 import _re2
    except ImportError as e:
        raise ValueError(f"the ~ operator needs RE2 (pip install google-re2): {e}") from None
    return re2, _re2


def compile_search(pattern: str) -> Callable[[str], bool]:
    """A predicate: does ``pattern`` match somewhere in the value (anchor with ^ and $).
    Raises ValueError with RE2's reason for a pattern it refuses."""
    re2, core = _re2()
    opts = re2.Options()
    opts.log_errors = False        # the reason is in the exception; keep stderr clean
    opts.never_capture = True
    rx = core.RE2(pattern.encode("utf-8"), opts)
    if not rx.ok():
        err = rx.error()
        raise ValueError(err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err))
    match = rx.Match
    unanchored = core.RE2.Anchor.UNANCHORED

    def search(value: str) -> bool:
        data = value.encode("utf-8")
        return match(unanchored, data, 0, len(data))[0] != _NO_MATCH
    return search
