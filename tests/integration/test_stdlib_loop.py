"""The core on the stdlib asyncio loop (the fallback when uvloop is absent):
the same BufferedProtocol connections must proxy correctly there too."""
from __future__ import annotations

import asyncio

from harness import Client, Origin, get, make_config, pattern, sha256

import omnirelay


async def _exercise() -> None:
    assert "uvloop" not in type(asyncio.get_running_loop()).__module__
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(get("/p/1") + get("/p/2"))
            first, second = await c.response(), await c.response()
            assert [first.json()["path"], second.json()["path"]] == ["/p/1", "/p/2"]
            body = pattern(300_000)
            chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                               for i in range(0, len(body), 65536)) + b"0\r\n\r\n"
            up = await c.request(b"POST /up HTTP/1.1\r\nHost: a\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n" + chunked, "POST")
            assert up.json()["sha256"] == sha256(body)
            down = await c.request(get("/size/2000000"))
            assert down.body == pattern(2_000_000)
        assert len(origin.connections) == 1


def test_proxy_on_the_stdlib_event_loop():
    asyncio.run(asyncio.wait_for(_exercise(), 20))
