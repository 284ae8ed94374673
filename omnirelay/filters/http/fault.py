"""omnirelay.filters.http.fault: inject delays and aborts into requests (Envoy's fault filter).

config::

    delay: {fixed: "100ms" | seconds, percentage: 0..100}
    abort: {status: 400..599, percentage: 0..100, body: "..."}
    header_control: false

Per request the delay is drawn first; the abort is drawn after the delay has elapsed (as
Envoy does). With ``header_control: true`` the request headers
``x-omnirelay-fault-delay-request: <ms>`` and ``x-omnirelay-fault-abort-request: <status>``
force a delay / an abort for that request, and are removed before the request is forwarded.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass

from omnirelay.config import parse_duration
from omnirelay.filters.base import CONTINUE, STOP, FilterFactory, HttpFilter, LocalReply
from omnirelay.filters.registry import register

# The percentage draw: a module-level name so it can be replaced in one place.
_random = random.random

DELAY_HEADER = "x-omnirelay-fault-delay-request"
ABORT_HEADER = "x-omnirelay-fault-abort-request"
DEFAULT_ABORT_BODY = "fault filter abort\n"
REASON = "fault_abort"

_KEYS = ("abort", "delay", "header_control")
_DELAY_KEYS = ("fixed", "percentage")
_ABORT_KEYS = ("body", "percentage", "status")

_log = logging.getLogger("omnirelay.filters")


@dataclass(frozen=True)
class FaultDelay:
    seconds: float
    percentage: float = 100.0


@dataclass(frozen=True)
class FaultAbort:
    status: int
    percentage: float = 100.0
    body: str = DEFAULT_ABORT_BODY


@dataclass(frozen=True)
class FaultConfig:
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    header_control: bool = False


def _mapping(value, key: str) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be a mapping, got {type(value).__name__}")
    return value


def _reject_unknown(config: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in set(config) - set(known))
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}unknown keys {unknown} (known: {list(known)})")


def _percentage(value, key: str) -> float:
    if value is None:
        return 100.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{key} must be a number from 0 to 100, got {value!r}")
    if not (math.isfinite(value) and 0 <= value <= 100):
        raise ValueError(f"{key} must be from 0 to 100, got {value!r}")
    return float(value)


def _status(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} must be an integer HTTP status from 400 to 599, got {value!r}")
    if not 400 <= value <= 599:
        raise ValueError(f"{key} must be from 400 to 599, got {value!r}")
    return value


def _parse_delay(value) -> FaultDelay:
    cfg = _mapping(value, "delay")
    _reject_unknown(cfg, _DELAY_KEYS, "delay")
    if "fixed" not in cfg:
        raise ValueError("delay.fixed is required (a duration such as \"100ms\" or seconds)")
    try:
        seconds = parse_duration(cfg["fixed"])
    except TypeError as e:
        raise TypeError(f"delay.fixed: {e}") from None
    except ValueError as e:
        raise ValueError(f"delay.fixed: {e}") from None
    return FaultDelay(seconds, _percentage(cfg.get("percentage"), "delay.percentage"))


def _parse_abort(value) -> FaultAbort:
    cfg = _mapping(value, "abort")
    _reject_unknown(cfg, _ABORT_KEYS, "abort")
    if "status" not in cfg:
        raise ValueError("abort.status is required (an HTTP status from 400 to 599)")
    status = _status(cfg["status"], "abort.status")
    body = cfg.get("body", DEFAULT_ABORT_BODY)
    if not isinstance(body, str):
        raise TypeError(f"abort.body must be a string, got {type(body).__name__}")
    return FaultAbort(status, _percentage(cfg.get("percentage"), "abort.percentage"), body)


def _draw(percentage: float) -> bool:
    # random() is in [0, 1): percentage 0 never fires, 100 always does.
    return percentage > 0 and _random() * 100.0 < percentage


def _header_delay(value: str | None) -> float | None:
    """Seconds from a delay header (integer milliseconds); None if absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 9:
        return None
    return int(value) / 1000.0


def _header_abort(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) != 3:
        return None
    status = int(value)
    return status if 400 <= status <= 599 else None


class FaultFilter(HttpFilter):
    __slots__ = ("abort_body", "abort_status", "cfg", "timer")

    def __init__(self, cfg: FaultConfig):
        self.cfg = cfg
        self.abort_status: int | None = None   # forced by header, drawn after any delay
        self.abort_body = cfg.abort.body if cfg.abort is not None else DEFAULT_ABORT_BODY
        self.timer: asyncio.TimerHandle | None = None

    def on_request_headers(self, stream, end_stream):
        cfg = self.cfg
        delay = None
        if cfg.header_control:
            headers = stream.request_headers
            delay = _header_delay(headers.get(DELAY_HEADER))
            self.abort_status = _header_abort(headers.get(ABORT_HEADER))
            headers.remove(DELAY_HEADER)
            headers.remove(ABORT_HEADER)
        if delay is None and cfg.delay is not None and _draw(cfg.delay.percentage):
            delay = cfg.delay.seconds
        if delay is not None and delay > 0:
            self.timer = asyncio.get_running_loop().call_later(delay, self._after_delay, stream)
            return STOP
        status = self._abort_status()
        if status is not None:
            return LocalReply(status, self.abort_body, reason=REASON)
        return CONTINUE

    def _abort_status(self) -> int | None:
        if self.abort_status is not None:
            return self.abort_status
        abort = self.cfg.abort
        if abort is not None and _draw(abort.percentage):
            return abort.status
        return None

    def _after_delay(self, stream) -> None:
        self.timer = None
        # Runs from the loop: an exception here would reach the loop's handler, not the
        # request, so answer the request with a 500 instead.
        try:
            status = self._abort_status()
            if status is not None:
                stream.reply(status, self.abort_body, reason=REASON)
            else:
                stream.resume()
        except Exception as e:  # noqa: BLE001 - a loop callback must not raise
            _log.error("fault filter: resuming after the delay failed: %s", e, exc_info=True)
            try:
                stream.reply(500, b"filter failure\n", reason="filter_failure")
            except Exception:  # noqa: BLE001 - already logged, nothing left to do
                _log.exception("fault filter: could not answer the request")

    def on_log(self, stream) -> None:
        # The request finished (e.g. the client went away) while delayed: drop the timer.
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


@register("omnirelay.filters.http.fault")
class FaultFactory(FilterFactory):
    filter_class = FaultFilter

    def parse_config(self, config):
        if config is None:
            config = {}
        config = _mapping(config, "config")
        _reject_unknown(config, _KEYS, "")
        delay = _parse_delay(config["delay"]) if config.get("delay") is not None else None
        abort = _parse_abort(config["abort"]) if config.get("abort") is not None else None
        header_control = config.get("header_control", False)
        if not isinstance(header_control, bool):
            raise TypeError(f"header_control must be true or false, got {header_control!r}")
        return FaultConfig(delay, abort, header_control)
