"""Header rewriting at the proxy: hop-by-hop removal both ways, X-Forwarded-For/-Proto,
Via, x-request-id."""
from __future__ import annotations

import re

from harness import Client, Origin, RawServer, get, make_config, read_request

import omnirelay

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "upgrade", "trailer"}


async def test_hop_by_hop_request_headers_removed():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            resp = await c.request(
                b"GET /hop HTTP/1.1\r\nHost: a\r\n"
                b"Connection: keep-alive, X-Drop-Me, x-also-drop\r\n"
                b"Keep-Alive: timeout=30\r\n"
                b"Proxy-Connection: keep-alive\r\n"
                b"TE: trailers\r\n"
                b"Upgrade: h2c\r\n"
                b"X-Drop-Me: secret\r\n"
                b"X-Also-Drop: secret2\r\n"
                b"X-Keep: kept\r\n\r\n")
        assert resp.status == 200
        seen = origin.seen[0].headers
        leaked = seen.names() & (HOP_BY_HOP | {"x-drop-me", "x-also-drop"})
        assert not leaked, f"hop-by-hop headers reached the upstream: {sorted(leaked)}"
        assert seen.get("x-keep") == "kept"


async def test_hop_by_hop_response_headers_removed():
    async def upstream(reader, writer, srv):
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                         b"Connection: keep-alive, X-Internal\r\n"
                         b"Keep-Alive: timeout=5, max=100\r\n"
                         b"Proxy-Connection: keep-alive\r\n"
                         b"Upgrade: h2c\r\n"
                         b"TE: trailers\r\n"
                         b"X-Internal: do-not-leak\r\n"
                         b"X-Public: yes\r\n\r\nok")
            await writer.drain()

    async with (
        RawServer(upstream) as srv,
        omnirelay.Relay(make_config(srv.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        resp = await c.request(get("/"))
        assert resp.status == 200
        assert resp.body == b"ok"
        names = resp.headers.names()
        assert not names & {"keep-alive", "proxy-connection", "upgrade", "te", "x-internal"}, \
            f"hop-by-hop response headers reached the client: {resp.headers}"
        assert resp.headers.get("connection") is None
        assert resp.headers.get("x-public") == "yes"
        # and the connection stays reusable
        resp2 = await c.request(get("/2"))
        assert resp2.status == 200


async def test_x_forwarded_for_appended_and_proto_set():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            r1 = await c.request(get("/xff", headers="X-Forwarded-For: 203.0.113.7\r\n"
                                                     "X-Forwarded-Proto: https\r\n"))
            r2 = await c.request(get("/noxff"))
        assert r1.status == r2.status == 200
        first, second = origin.seen
        assert first.headers.getall("x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
        # No trusted hops in front: the client's claim is replaced by what we know.
        assert first.headers.getall("x-forwarded-proto") == ["http"]
        assert second.headers.getall("x-forwarded-for") == ["127.0.0.1"]
        assert second.headers.getall("x-forwarded-proto") == ["http"]


async def test_x_forwarded_for_multiple_lines_joined_in_order():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/", headers="X-Forwarded-For: 198.51.100.1\r\n"
                                                  "X-Forwarded-For: 198.51.100.2, 198.51.100.3\r\n"))
        assert r.status == 200
        assert origin.seen[0].headers.getall("x-forwarded-for") == [
            "198.51.100.1, 198.51.100.2, 198.51.100.3, 127.0.0.1"]


async def test_via_added_on_request_and_response():
    async def upstream(reader, writer, srv):
        while True:
            srv.requests.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nVia: 1.1 backend\r\n\r\n")
            await writer.drain()

    async with RawServer(upstream) as srv, omnirelay.Relay(make_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            r1 = await c.request(get("/"))
            r2 = await c.request(get("/", headers="Via: 1.1 cdn-edge\r\n"))
        assert srv.requests[0].headers.getall("via") == ["1.1 omnirelay"]
        assert srv.requests[1].headers.getall("via") == ["1.1 cdn-edge, 1.1 omnirelay"]
        assert r1.headers.getall("via") == ["1.1 backend, 1.1 omnirelay"]
        assert r2.headers.getall("via") == ["1.1 backend, 1.1 omnirelay"]


async def test_via_with_several_header_lines_keeps_every_hop():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/", headers="Via: 1.1 first\r\nVia: 1.1 second\r\n"))
        assert r.status == 200
        vias = ", ".join(origin.seen[0].headers.getall("via"))
        assert vias == "1.1 first, 1.1 second, 1.1 omnirelay", vias


async def test_via_name_from_listener_config():
    async with Origin() as origin, omnirelay.Relay(
            make_config(origin.port, listener={"via": "edge-7"})) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/"))
        assert origin.seen[0].headers.get("via") == "1.1 edge-7"
        assert r.headers.get("via") == "1.1 edge-7"


async def test_request_id_generated_when_absent():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            for _ in range(20):
                assert (await c.request(get("/"))).status == 200
        ids = [s.headers.getall("x-request-id") for s in origin.seen]
        assert all(len(v) == 1 for v in ids)
        flat = [v[0] for v in ids]
        for rid in flat:
            assert UUID4.match(rid), f"x-request-id {rid!r} is not a UUID4"
        assert len(set(flat)) == len(flat), "request ids repeat"


async def test_request_id_preserved_when_present():
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port)) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/", headers="X-Request-Id: my-trace-0042\r\n"))
        assert r.status == 200
        assert origin.seen[0].headers.getall("x-request-id") == ["my-trace-0042"]



async def test_empty_via_name_disables_via():
    """docs/configuration.md: `via: ""` means "do not add a Via header" (examples/edge.yaml
    uses it on the internal listener)."""
    async with (
        Origin() as origin,
        omnirelay.Relay(make_config(origin.port, listener={"via": ""})) as relay,
        await Client.open(relay.address()) as c,
    ):
        r = await c.request(get("/", headers="Via: 1.1 upstream-lb\r\n"))
    assert r.status == 200
    assert origin.seen[0].headers.getall("via") == ["1.1 upstream-lb"]
    assert "via" not in r.headers


async def test_trusted_hop_keeps_forwarded_proto():
    async with (
        Origin() as origin,
        omnirelay.Relay(make_config(origin.port, listener={"xff_trusted_hops": 1})) as relay,
        await Client.open(relay.address()) as c,
    ):
        await c.request(get("/", headers="X-Forwarded-Proto: https\r\n"
                                         "X-Forwarded-For: 198.51.100.9\r\n"))
        await c.request(get("/"))
    first, second = origin.seen
    assert first.headers.getall("x-forwarded-proto") == ["https"]
    assert first.headers.getall("x-forwarded-for") == ["198.51.100.9, 127.0.0.1"]
    assert second.headers.getall("x-forwarded-proto") == ["http"]


async def test_oversized_or_empty_request_id_is_replaced():
    async with (
        Origin() as origin,
        omnirelay.Relay(make_config(origin.port)) as relay,
        await Client.open(relay.address()) as c,
    ):
        await c.request(get("/", headers=f"X-Request-Id: {'r' * 200}\r\n"))
        await c.request(get("/", headers="X-Request-Id: \r\n"))
    for seen in origin.seen:
        (rid,) = seen.headers.getall("x-request-id")
        assert UUID4.match(rid), rid
