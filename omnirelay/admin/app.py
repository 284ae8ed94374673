"""The admin endpoints, over whatever process serves them (`AdminSource`).

GET  /healthz /ready /metrics /stats /config_dump /clusters /capabilities /extensions
POST /drain /log_level /tap   (with `Authorization: Bearer <token>`)

The same app runs in the supervisor of `omnirelay run` (the source merges what the workers
report) and in an embedded Relay (the source reads the Relay). docs/operations.md
describes each endpoint.
"""
from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from omnirelay.telemetry.aggregate import RATE_HISTORY
from omnirelay.telemetry.metrics import EXPOSITION_CONTENT_TYPE, as_json, exposition
from omnirelay.telemetry.tap import RelayedTaps, TapBusy, TapError, TapFilter, TapHub

from .capabilities import capabilities
from .http import Request, Response

log = logging.getLogger("omnirelay.admin")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_RATE_WINDOW = 10.0  # seconds; /stats?window=N
MAX_RATE_WINDOW = RATE_HISTORY


class AdminSource(Protocol):
    """What the admin endpoints read and do; implemented in `sources`."""

    def token(self) -> str | None:
        """The bearer token for mutations; None disables them."""

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): ready once a valid config is active, until a drain starts."""

    def series(self) -> Mapping[tuple[str, tuple[str, ...]], Any]:
        """Metric series merged over the processes (telemetry.metrics names)."""

    def stats(self, window: float) -> dict[str, Any]:
        """Process view for /stats: config, workers, request rates over about the last
        `window` seconds (the metrics are added by the app)."""

    def config_dump(self) -> dict[str, Any]: ...

    def cluster_details(self) -> dict[str, dict[str, Any]]:
        """{worker id: {cluster: samples.cluster_detail(...)}}."""

    def extensions(self) -> dict[str, Any]:
        """Extension bindings and packages of every process (extensions.status)."""

    def drain(self) -> str:
        """Start a graceful drain and stop; returns what happens, for the reply."""

    def set_log_level(self, level: str, logger: str) -> None: ...


Handler = Callable[[Request], Response]


class AdminApp:
    """`taps`: the TapHub of an embedded Relay, or the RelayedTaps of the supervisor of
    `omnirelay run` (its workers serve the requests); None answers POST /tap with 501."""

    def __init__(self, source: AdminSource, taps: TapHub | RelayedTaps | None = None):
        self.source = source
        self.taps = taps
        self.routes: dict[str, tuple[str, Handler]] = {
            "/": ("GET", self.index),
            "/healthz": ("GET", self.healthz),
            "/ready": ("GET", self.ready),
            "/metrics": ("GET", self.metrics),
            "/stats": ("GET", self.stats),
            "/config_dump": ("GET", self.config_dump),
            "/clusters": ("GET", self.clusters),
            "/capabilities": ("GET", self.capabilities),
            "/extensions": ("GET", self.extensions),
            "/drain": ("POST", self._mutation(self.drain)),
            "/log_level": ("POST", self._mutation(self.log_level)),
            "/tap": ("POST", self._mutation(self.tap)),
        }

    def handle(self, request: Request) -> Response:
        route = self.routes.get(request.path.rstrip("/") or "/")
        if route is None:
            return Response.error(404, f"no admin endpoint {request.path}; see GET /")
        method, handler = route
        if request.method != method and not (method == "GET" and request.method == "HEAD"):
            return Response.error(405, f"{request.path} takes {method}", [("allow", method)])
        try:
            return handler(request)
        except Exception:  # an admin bug must not take the process down
            log.exception("admin %s %s failed", request.method, request.path)
            return Response.error(500, "internal error; see the log")

    # ---- reads ----
    def index(self, request: Request) -> Response:
        return Response.json(200, {"endpoints": {
            path: method for path, (method, _) in self.routes.items() if path != "/"}})

    def healthz(self, request: Request) -> Response:
        return Response(200, b"ok\n")

    def ready(self, request: Request) -> Response:
        ready, why = self.source.readiness()
        return Response.json(200 if ready else 503, {"ready": ready, "reason": why})

    def metrics(self, request: Request) -> Response:
        return Response(200, exposition(self.source.series()), EXPOSITION_CONTENT_TYPE)

    def stats(self, request: Request) -> Response:
        try:
            window = float(request.query.get("window", DEFAULT_RATE_WINDOW))
        except ValueError:
            window = -1.0
        if not 0 < window <= MAX_RATE_WINDOW:
            return Response.error(400, f"window must be seconds in (0, {MAX_RATE_WINDOW:g}]")
        return Response.json(200, {**self.source.stats(window),
                                   "metrics": as_json(self.source.series())})

    def config_dump(self, request: Request) -> Response:
        return Response.json(200, self.source.config_dump())

    def clusters(self, request: Request) -> Response:
        return Response.json(200, {"clusters": merge_clusters(self.source.cluster_details())})

    def capabilities(self, request: Request) -> Response:
        return Response.json(200, capabilities())

    def extensions(self, request: Request) -> Response:
        return Response.json(200, self.source.extensions())

    # ---- mutations ----
    def _mutation(self, handler: Handler) -> Handler:
        def guarded(request: Request) -> Response:
            denied = self._check_token(request)
            return denied if denied is not None else handler(request)
        return guarded

    def _check_token(self, request: Request) -> Response | None:
        token = self.source.token()
        if token is None:
            return Response.error(403, "admin mutations are disabled: set admin.token or "
                                       "admin.token_file in the config")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return Response.error(401, "send Authorization: Bearer <admin token>",
                                  [("www-authenticate", 'Bearer realm="omnirelay-admin"')])
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            log.warning("admin %s refused: wrong token", request.path)
            return Response.error(403, "wrong admin token")
        return None

    def drain(self, request: Request) -> Response:
        what = self.source.drain()
        log.warning("admin: drain requested: %s", what)
        return Response.json(202, {"draining": True, "detail": what})

    def log_level(self, request: Request) -> Response:
        params = dict(request.query)
        if request.body:
            try:
                body = json.loads(request.body)
            except ValueError:
                return Response.error(400, "the body must be JSON: {\"level\": \"debug\"}")
            if not isinstance(body, dict):
                return Response.error(400, "the body must be a JSON object")
            params.update({k: v for k, v in body.items() if isinstance(v, str)})
        level = params.get("level", "").lower()
        if level not in LOG_LEVELS:
            return Response.error(400, f"level must be one of {', '.join(LOG_LEVELS)}")
        logger = params.get("logger", "")
        self.source.set_log_level(level, logger)
        log.warning("admin: log level of %s set to %s", logger or "the root logger", level)
        return Response.json(200, {"level": level, "logger": logger or "root"})

    def tap(self, request: Request) -> Response:
        """Stream the heads of matching requests as JSON lines: ?path=/prefix,
        ?header=name[:value], ?listener=name, ?max=N (default 100), ?seconds=T (default
        30); credentials headers redacted."""
        if self.taps is None:
            return Response.error(501, "taps are not available here")
        q = request.query
        try:
            count = int(q.get("max", "100"))
            seconds = float(q.get("seconds", "30"))
        except ValueError:
            return Response.error(400, "max must be an integer and seconds a number")
        try:
            flt = TapFilter.parse(q.get("listener"), q.get("path"), q.get("header"))
            tap = self.taps.start(flt, count, seconds)
        except TapError as e:
            return Response.error(429 if isinstance(e, TapBusy) else 400, str(e))
        log.warning("admin: tap started (%s, max %d, %gs)", flt, count, seconds)
        return Response(200, content_type="application/x-ndjson", stream=tap.stream())


_SUMMED = ("active", "open_connections", "idle", "connects", "connect_failures", "reuses",
           "ejections")
_PER_WORKER = ("healthy", "ejected", "active", "open_connections", "idle")


def merge_clusters(details: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Per cluster and endpoint: totals over the workers, and each worker's own view (health
    and ejection are decided per worker)."""
    out: dict[str, Any] = {}
    for worker, clusters in details.items():
        for name, c in clusters.items():
            merged = out.setdefault(name, {"overflows": 0, "rq_active": 0, "rq_pending": 0,
                                           "priority_loads": {}, "endpoints": {}})
            for k in ("overflows", "rq_active", "rq_pending"):
                merged[k] += c.get(k, 0)
            merged["priority_loads"][worker] = c.get("priority_loads", [])
            for ep in c.get("endpoints", ()):
                e = merged["endpoints"].setdefault(ep["address"], {
                    "address": ep["address"], "weight": ep.get("weight"),
                    "priority": ep.get("priority"), "locality": ep.get("locality"),
                    "healthy_workers": 0, "ejected_workers": 0,
                    **{k: 0 for k in _SUMMED}, "workers": {}})
                for k in _SUMMED:
                    e[k] += ep.get(k, 0)
                e["healthy_workers"] += bool(ep.get("healthy"))
                e["ejected_workers"] += bool(ep.get("ejected"))
                e["workers"][worker] = {k: ep.get(k) for k in _PER_WORKER}
    for c in out.values():
        c["endpoints"] = list(c["endpoints"].values())
    return out
