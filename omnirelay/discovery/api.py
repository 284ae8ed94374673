"""`discovery: {type: api}`: endpoints pushed by the program (`Relay.set_endpoints`) or, later,
the control-plane client. There is nothing to poll."""

from __future__ import annotations

from omnirelay.config import Endpoint

from .base import EndpointFeed


class ApiFeed(EndpointFeed):
    type = "api"

    def push(self, endpoints: tuple[Endpoint, ...]) -> None:
        """Apply an already validated endpoint list now; exceptions from applying propagate."""
        if not self._running:
            raise RuntimeError(f"the endpoint feed of cluster {self.cluster!r} is stopped")
        self._deliver(tuple(endpoints))
