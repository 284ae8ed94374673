"""omnirelay.filters.http.local_ratelimit: a token bucket per filter binding, per process
(Envoy's local rate limit filter).

config::

    max_tokens: 10          # bucket size, and the tokens it starts with
    tokens_per_fill: 10     # tokens added every fill_interval (up to max_tokens)
    fill_interval: 1s       # duration
    status: 429             # status of the local reply when the bucket is empty
    key: dsl                # optional: one bucket per request key (below)
    max_keys: 10000         # with key: the most buckets kept (least recently used dropped)

The bucket refills lazily from ``time.monotonic()`` when a request arrives: there is no
timer. Tokens are added in whole fills, ``tokens_per_fill`` every ``fill_interval``, on a
fixed schedule starting when the bucket was created.

Which requests share a bucket: one bucket per filter entry in the config (a route's filter
entry, or a listener's, which all of that listener's routes share), per process (each worker
of ``omnirelay run`` has its own buckets). Buckets live in a module-level
``WeakValueDictionary`` keyed by the frozen config and the entry's place in the config
(``spec.routes[0].filters[1]``): a reload whose entry at the same place has the same config
gets the same bucket (its tokens are not reset), any change to the entry starts a new full
bucket, and a bucket is freed once no loaded config uses it. (Consequence: two ``Relay``
objects in one process with the same config share their buckets while both are alive.)

Per-key buckets (``key: dsl``): the entry keeps one bucket per key, the string an earlier
filter stored in ``stream.metadata["omnirelay.ratelimit_key"]`` (the rule language's
``ratelimit_key`` action, docs/dsl.md, or any Python filter). Requests without a key share
one bucket. At most ``max_keys`` buckets are kept: using a key makes its bucket the most
recent, and a new key past the limit drops the least recently used one (that key starts
again with a full bucket if it comes back). The set of buckets follows the same
reload rules as a single bucket.
"""
from __future__ import annotations

import math
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from omnirelay.config import parse_duration
from omnirelay.filters.base import CONTINUE, FilterFactory, HttpFilter, LocalReply
from omnirelay.filters.registry import register

REASON = "local_rate_limited"
BODY = "local rate limit exceeded\n"
# Where filters before this one put the key of a request's bucket (with ``key: dsl``).
KEY_METADATA = "omnirelay.ratelimit_key"
KEY_SOURCES = ("dsl",)
DEFAULT_MAX_KEYS = 10000
_KEYS = ("fill_interval", "key", "max_keys", "max_tokens", "status", "tokens_per_fill")


@dataclass(frozen=True)
class LocalRateLimitConfig:
    max_tokens: int
    tokens_per_fill: int
    fill_interval: float
    status: int = 429
    key: str | None = None          # None: one bucket; "dsl": one per metadata key
    max_keys: int = DEFAULT_MAX_KEYS


class TokenBucket:
    """Whole tokens, refilled lazily in steps of ``tokens_per_fill`` per ``fill_interval``."""

    __slots__ = ("__weakref__", "cfg", "last_fill", "tokens")

    def __init__(self, cfg: LocalRateLimitConfig, now: float | None = None):
        self.cfg = cfg
        self.tokens = cfg.max_tokens
        self.last_fill = time.monotonic() if now is None else now

    def _refill(self, now: float) -> None:
        cfg = self.cfg
        fills = int((now - self.last_fill) // cfg.fill_interval)
        if fills > 0:
            self.tokens = min(cfg.max_tokens, self.tokens + fills * cfg.tokens_per_fill)
            self.last_fill += fills * cfg.fill_interval

    def take(self, now: float | None = None) -> int:
        """Consume one token: the tokens left after it, or -1 if the bucket is empty."""
        if now is None:
            now = time.monotonic()
        self._refill(now)
        if self.tokens <= 0:
            return -1
        self.tokens -= 1
        return self.tokens

    def reset_after(self, now: float | None = None) -> int:
        """Whole seconds (rounded up, at least 1) until the next fill."""
        if now is None:
            now = time.monotonic()
        return max(1, math.ceil(self.last_fill + self.cfg.fill_interval - now))


class KeyedBuckets:
    """A bucket per key, at most ``cfg.max_keys`` of them, least recently used dropped."""

    __slots__ = ("__weakref__", "buckets", "cfg")

    def __init__(self, cfg: LocalRateLimitConfig) -> None:
        self.cfg = cfg
        self.buckets: OrderedDict[str | None, TokenBucket] = OrderedDict()

    def get(self, key: str | None, now: float) -> TokenBucket:
        buckets = self.buckets
        bucket = buckets.get(key)
        if bucket is not None:
            buckets.move_to_end(key)
            return bucket
        if len(buckets) >= self.cfg.max_keys:
            buckets.popitem(last=False)
        bucket = buckets[key] = TokenBucket(self.cfg, now)
        return bucket

    def __len__(self) -> int:
        return len(self.buckets)


# (config, place in the config) -> bucket or keyed buckets; see the module docstring.
_BUCKETS: weakref.WeakValueDictionary[tuple, TokenBucket | KeyedBuckets] = (
    weakref.WeakValueDictionary())


def _positive_int(config: dict, key: str) -> int:
    if key not in config:
        raise ValueError(f"{key} is required (an integer >= 1)")
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{key} must be >= 1, got {value!r}")
    return value


class LocalRateLimitFilter(HttpFilter):
    __slots__ = ("bucket", "remaining")

    def __init__(self, bucket: TokenBucket):
        self.bucket = bucket
        self.remaining = 0

    def on_request_headers(self, stream, end_stream):
        return self.take(self.bucket, time.monotonic())

    def take(self, bucket: TokenBucket, now: float):
        left = bucket.take(now)
        if left < 0:
            reset = str(bucket.reset_after(now))
            cfg = bucket.cfg
            return LocalReply(cfg.status, BODY, headers=[
                ("x-ratelimit-limit", str(cfg.max_tokens)),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", reset),
                ("retry-after", reset),
            ], reason=REASON)
        self.remaining = left
        return CONTINUE

    def on_response_headers(self, stream, end_stream):
        headers = stream.response_headers
        headers.set("x-ratelimit-limit", str(self.bucket.cfg.max_tokens))
        headers.set("x-ratelimit-remaining", str(self.remaining))
        return CONTINUE


class KeyedRateLimitFilter(LocalRateLimitFilter):
    """Takes from the bucket of the request's key (``key: dsl``)."""

    __slots__ = ("keyed",)

    def __init__(self, keyed: KeyedBuckets):
        super().__init__(None)  # type: ignore[arg-type]  (chosen per request)
        self.keyed = keyed

    def on_request_headers(self, stream, end_stream):
        md = stream.metadata
        key = md.get(KEY_METADATA) if isinstance(md, dict) else None
        now = time.monotonic()
        bucket = self.bucket = self.keyed.get(key if isinstance(key, str) else None, now)
        return self.take(bucket, now)


@register("omnirelay.filters.http.local_ratelimit")
class LocalRateLimitFactory(FilterFactory):
    filter_class = LocalRateLimitFilter

    def __init__(self, config, binding: str = ""):
        super().__init__(config, binding)
        cfg: LocalRateLimitConfig = self.config
        make = TokenBucket if cfg.key is None else KeyedBuckets
        if not binding:
            # Built outside a config load: buckets of its own.
            self.bucket = make(cfg)
        else:
            key = (cfg, binding)
            bucket = _BUCKETS.get(key)
            if bucket is None:
                bucket = _BUCKETS[key] = make(cfg)
            self.bucket = bucket

    def parse_config(self, config):
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        unknown = sorted(str(k) for k in set(config) - set(_KEYS))
        if unknown:
            raise ValueError(f"unknown keys {unknown} (known: {list(_KEYS)})")
        max_tokens = _positive_int(config, "max_tokens")
        tokens_per_fill = _positive_int(config, "tokens_per_fill")
        if "fill_interval" not in config:
            raise ValueError("fill_interval is required (a duration such as \"1s\")")
        try:
            fill_interval = parse_duration(config["fill_interval"])
        except TypeError as e:
            raise TypeError(f"fill_interval: {e}") from None
        except ValueError as e:
            raise ValueError(f"fill_interval: {e}") from None
        if fill_interval <= 0:
            raise ValueError(
                f"fill_interval must be greater than 0, got {config['fill_interval']!r}")
        status = config.get("status", 429)
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(
                f"status must be an integer HTTP status from 400 to 599, got {status!r}")
        if not 400 <= status <= 599:
            raise ValueError(f"status must be from 400 to 599, got {status!r}")
        key = config.get("key")
        if key is not None and key not in KEY_SOURCES:
            raise ValueError(f"key must be one of {list(KEY_SOURCES)} (dsl: the key a rule "
                             f"set with ratelimit_key), got {key!r}")
        if "max_keys" in config and key is None:
            raise ValueError("max_keys applies only with key")
        max_keys = _positive_int(config, "max_keys") if "max_keys" in config \
            else DEFAULT_MAX_KEYS
        return LocalRateLimitConfig(max_tokens, tokens_per_fill, fill_interval, status,
                                    key, max_keys)

    def create(self):
        if isinstance(self.bucket, KeyedBuckets):
            return KeyedRateLimitFilter(self.bucket)
        return LocalRateLimitFilter(self.bucket)
