"""A single-process aiohttp reverse proxy on uvloop: the Python peer for bench/e2e/run.py.

It is written the way a competent aiohttp user would write a proxy: one shared ClientSession
with a keep-alive TCPConnector, hop-by-hop headers dropped, the response streamed back.

    python bench/e2e/aiohttp_proxy.py --port 8081 --upstream 127.0.0.1:8080
"""
from __future__ import annotations

import argparse
import asyncio
import signal

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Request headers the client session recomputes itself.
REQUEST_DROP = HOP_BY_HOP | {"host", "content-length"}
CHUNK = 64 * 1024


def _filtered(headers, drop) -> CIMultiDict:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def make_app(upstream: str) -> web.Application:
    base = f"http://{upstream}"
    app = web.Application()

    async def on_startup(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=None)
        app["session"] = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
        )

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        body = await request.read() if request.can_read_body else None
        try:
            async with session.request(
                request.method,
                base + str(request.rel_url),
                headers=_filtered(request.headers, REQUEST_DROP),
                data=body,
                allow_redirects=False,
            ) as upstream_resp:
                resp = web.StreamResponse(
                    status=upstream_resp.status,
                    reason=upstream_resp.reason,
                    headers=_filtered(upstream_resp.headers, HOP_BY_HOP),
                )
                await resp.prepare(request)
                async for chunk in upstream_resp.content.iter_chunked(CHUNK):
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.Response(status=502, text=f"upstream error: {exc!r}\n")

    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def serve(host: str, port: int, upstream: str) -> None:
    runner = web.AppRunner(make_app(upstream), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the upstream")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.host, args.port, args.upstream))


if __name__ == "__main__":
    main()
