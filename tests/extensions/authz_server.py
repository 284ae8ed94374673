"""An authorization service for Wasm callout tests: a real aiohttp server on 127.0.0.1:0
answering GET /check with the test's handler."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Self

from aiohttp import web

Check = Callable[[web.Request], Awaitable[web.Response]]


class AuthzServer:
    def __init__(self, check: Check) -> None:
        self.check = check
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/check", self.check)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
