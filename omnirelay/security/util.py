"""Small helpers shared by the security filters: config checking (messages that name the
key, in the style of the other built-in filters), per-binding counters and a log limiter."""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from omnirelay.config import parse_duration


def mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def reject_unknown(cfg: dict, known: tuple[str, ...] | frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in set(cfg) - set(known))
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}unknown keys {unknown} (known: {sorted(known)})")


def string(value: Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a string, got {type(value).__name__}")
    if not empty and not value:
        raise ValueError(f"{where} must not be empty")
    return value


def string_list(value: Any, where: str, *, empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise TypeError(f"{where} must be a string or a list of strings, "
                        f"got {type(value).__name__}")
    out = tuple(string(v, f"{where}[{i}]") for i, v in enumerate(value))
    if not out and not empty:
        raise ValueError(f"{where} must not be empty")
    return out


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where} must be true or false, got {value!r}")
    return value


def duration(value: Any, where: str, *, positive: bool = False) -> float:
    try:
        seconds = parse_duration(value)
    except TypeError as e:
        raise TypeError(f"{where}: {e}") from None
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if positive and seconds <= 0:
        raise ValueError(f"{where} must be greater than 0, got {value!r}")
    return seconds


def header_name(value: Any, where: str) -> str:
    name = string(value, where)
    if any(c in name for c in ":\r\n\0 \t") or not name.isascii():
        raise ValueError(f"{where}: invalid header name {name!r}")
    return name.lower()


class Counters:
    """Named monotonically increasing counters of one filter entry (a binding), kept across
    reloads so that exported totals never go backwards."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def inc(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def __getitem__(self, name: str) -> int:
        return self.counts[name]

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


class LogLimiter:
    """At most ``per_second`` log lines per second from one source; the lines dropped are
    counted and reported with the next line that gets through. Request-driven logs (every
    denied request) must not become a way to flood the proxy's log."""

    __slots__ = ("dropped", "log", "per_second", "sent", "window")

    def __init__(self, log: logging.Logger, per_second: int = 20) -> None:
        self.log = log
        self.per_second = per_second
        self.window = 0
        self.sent = 0
        self.dropped = 0

    def __call__(self, level: int, msg: str, *args: Any) -> None:
        if not self.log.isEnabledFor(level):
            return
        now = int(time.monotonic())
        if now != self.window:
            self.window = now
            self.sent = 0
        if self.sent >= self.per_second:
            self.dropped += 1
            return
        self.sent += 1
        if self.dropped:
            msg += " (%d similar lines suppressed)"
            args = (*args, self.dropped)
            self.dropped = 0
        self.log.log(level, msg, *args)
