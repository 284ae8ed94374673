"""Python filters through the proxy: header edits, local replies, STOP/resume, and body
buffering with rewrite."""
from __future__ import annotations

import asyncio
import time

import pytest
from harness import (
    Client,
    ClosedBeforeMessage,
    Origin,
    RawServer,
    assert_healthy,
    assert_quiescent,
    endpoint_stats,
    eventually,
    get,
    keepalive_handler,
    make_config,
    read_request,
    relay_short_drain,
    sha256,
)

import omnirelay
from omnirelay import CONTINUE, STOP, FilterFactory, HttpFilter, LocalReply

LOG: list[tuple[str, str]] = []


class _Configured(HttpFilter):
    def __init__(self, config):
        self.config = config


class AddRequestHeader(_Configured):
    def on_request_headers(self, stream, end_stream):
        stream.request_headers.set(self.config["name"], self.config["value"])
        return CONTINUE


@omnirelay.register("tests.add_request_header")
class AddRequestHeaderFactory(FilterFactory):
    filter_class = AddRequestHeader


class Deny(_Configured):
    def on_request_headers(self, stream, end_stream):
        if stream.request_headers.get("x-allow") == "yes":
            return CONTINUE
        return LocalReply(403, b"denied by filter\n", headers=[("x-denied-by", "tests.deny")])


@omnirelay.register("tests.deny")
class DenyFactory(FilterFactory):
    filter_class = Deny


class PauseThenResume(_Configured):
    def on_request_headers(self, stream, end_stream):
        stream.request_headers.set("x-paused", "yes")
        asyncio.get_running_loop().call_later(0.05, stream.resume)
        return STOP


@omnirelay.register("tests.pause")
class PauseFactory(FilterFactory):
    filter_class = PauseThenResume


class EditResponseHeaders(_Configured):
    def on_response_headers(self, stream, end_stream):
        stream.response_headers.set("x-origin", "rewritten-" + stream.response_headers.get(
            "x-origin", "none"))
        stream.response_headers.remove("server")
        stream.response_headers.add("x-filtered", "1")
        return CONTINUE


@omnirelay.register("tests.edit_response_headers")
class EditResponseHeadersFactory(FilterFactory):
    filter_class = EditResponseHeaders


class BufferResponseBody(_Configured):
    def on_response_body(self, stream, data, end_stream):
        if not end_stream:
            return STOP
        return b"<<" + bytes(data).upper() + b">>"


@omnirelay.register("tests.buffer_response_body")
class BufferResponseBodyFactory(FilterFactory):
    filter_class = BufferResponseBody


class BufferRequestBody(_Configured):
    def on_request_body(self, stream, data, end_stream):
        if not end_stream:
            return STOP
        return b"[" + bytes(data)[::-1] + b"]+extra"


@omnirelay.register("tests.buffer_request_body")
class BufferRequestBodyFactory(FilterFactory):
    filter_class = BufferRequestBody


class Tag(_Configured):
    def on_request_headers(self, stream, end_stream):
        stream.request_headers.add("x-order", self.config["tag"])
        return CONTINUE

    def on_response_headers(self, stream, end_stream):
        stream.response_headers.add("x-order", self.config["tag"])
        return CONTINUE

    def on_log(self, stream):
        LOG.append((self.config["tag"], stream.path))


@omnirelay.register("tests.tag")
class TagFactory(FilterFactory):
    filter_class = Tag


class PauseResponseHeaders(_Configured):
    def on_response_headers(self, stream, end_stream):
        stream.response_headers.set("x-checked", "later")
        asyncio.get_running_loop().call_later(0.05, stream.resume)
        return STOP


@omnirelay.register("tests.pause_response_headers")
class PauseResponseHeadersFactory(FilterFactory):
    filter_class = PauseResponseHeaders


class AsyncDeny(_Configured):
    def on_request_headers(self, stream, end_stream):
        # An "external auth check" that answers later and says no.
        asyncio.get_running_loop().call_later(
            0.02, lambda: stream.reply(401, b"nope\n", headers=[("www-authenticate", "Basic")]))
        return STOP


@omnirelay.register("tests.async_deny")
class AsyncDenyFactory(FilterFactory):
    filter_class = AsyncDeny


class Explode(_Configured):
    """Raises (or returns nonsense) from the hook named in its config."""

    def _maybe(self, hook):
        if self.config.get("hook") == hook:
            if self.config.get("mode") == "bad-return":
                return "banana"
            raise RuntimeError(f"filter bug in {hook}")
        return CONTINUE

    def on_request_headers(self, stream, end_stream):
        return self._maybe("request_headers")

    def on_request_body(self, stream, data, end_stream):
        return self._maybe("request_body")

    def on_response_headers(self, stream, end_stream):
        return self._maybe("response_headers")

    def on_response_body(self, stream, data, end_stream):
        return self._maybe("response_body")


@omnirelay.register("tests.explode")
class ExplodeFactory(FilterFactory):
    filter_class = Explode


class SlowResume(_Configured):
    def on_request_headers(self, stream, end_stream):
        asyncio.get_running_loop().call_later(0.2, stream.resume)
        return STOP


@omnirelay.register("tests.slow_resume")
class SlowResumeFactory(FilterFactory):
    filter_class = SlowResume


class BadLocalReply(_Configured):
    def on_request_headers(self, stream, end_stream):
        if self.config.get("later"):
            def answer():
                try:
                    stream.reply(403, b"no", headers=[("x-bad", "a\r\nInjected: yes")])
                except ValueError:
                    # The caller hears about its bad header; the stream stays answerable.
                    stream.reply(403, b"no", headers=[("x-good", "1")])
                else:
                    raise AssertionError("reply() accepted a header value with CR LF")
            asyncio.get_running_loop().call_later(0.01, answer)
            return STOP
        return LocalReply(403, b"no", headers=[("x-bad", "a\r\nInjected: yes")])


@omnirelay.register("tests.bad_local_reply")
class BadLocalReplyFactory(FilterFactory):
    filter_class = BadLocalReply


class NeverResume(_Configured):
    def on_request_headers(self, stream, end_stream):
        return STOP


@omnirelay.register("tests.never_resume")
class NeverResumeFactory(FilterFactory):
    filter_class = NeverResume


def with_filters(port, *filters, listener_filters=()):
    return make_config(port, route={"filters": list(filters)},
                       listener={"filters": list(listener_filters)})


async def test_filter_adds_request_header_seen_upstream():
    async with Origin() as origin, omnirelay.Relay(with_filters(origin.port, {
            "name": "tests.add_request_header",
            "config": {"name": "x-tenant", "value": "acme"}})) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/f", headers="X-Tenant: spoofed\r\n"))
        assert r.status == 200
        assert origin.seen[0].headers.getall("x-tenant") == ["acme"]


async def test_filter_local_reply_never_contacts_upstream():
    async with RawServer(keepalive_handler) as srv, omnirelay.Relay(
            with_filters(srv.port, {"name": "tests.deny"})) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/secret"))
            assert r.status == 403
            assert r.body == b"denied by filter\n"
            assert r.headers.get("x-denied-by") == "tests.deny"
            # The connection stays usable and a request with a body is answered too.
            r2 = await c.request(b"POST /secret HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            assert r2.status == 403
        assert srv.accepted == 0, "the upstream was contacted for a denied request"
        async with await Client.open(relay.address()) as c:
            ok = await c.request(get("/open", headers="X-Allow: yes\r\n"))
            assert ok.status == 200
        assert srv.accepted == 1


async def test_filter_stop_then_resume_from_timer():
    async with Origin() as origin, omnirelay.Relay(
            with_filters(origin.port, {"name": "tests.pause"})) as relay:
        async with await Client.open(relay.address()) as c:
            t0 = time.monotonic()
            r = await c.request(get("/paused"))
            elapsed = time.monotonic() - t0
            assert r.status == 200
            assert elapsed >= 0.045
            body = b"b" * 300_000
            r2 = await c.request(b"POST /paused-body HTTP/1.1\r\nHost: a\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert r2.status == 200
            assert r2.json()["sha256"] == sha256(body)
        assert [s.headers.get("x-paused") for s in origin.seen] == ["yes", "yes"]


async def test_filter_modifies_response_headers():
    async with Origin("up1") as origin, omnirelay.Relay(
            with_filters(origin.port, {"name": "tests.edit_response_headers"})) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/h"))
        assert r.status == 200
        assert r.headers.getall("x-origin") == ["rewritten-up1"]
        assert "server" not in r.headers
        assert r.headers.get("x-filtered") == "1"
        assert r.json()["path"] == "/h"   # body untouched, framing intact


async def test_filter_buffers_and_rewrites_response_body():
    async with (
        Origin() as origin,
        omnirelay.Relay(
            with_filters(origin.port, {"name": "tests.buffer_response_body"})) as relay,
        await Client.open(relay.address()) as c,
    ):
        r = await c.request(get("/chunked/100000"))
        assert r.status == 200
        from harness import pattern
        assert r.body == b"<<" + pattern(100000).upper() + b">>"
        r2 = await c.request(get("/size/5000"))
        assert r2.body == b"<<" + pattern(5000).upper() + b">>"
        declared = r2.headers.get("content-length")
        assert declared is None or int(declared) == len(r2.body)


async def test_filter_buffers_and_rewrites_request_body():
    async with (
        Origin() as origin,
        omnirelay.Relay(
            with_filters(origin.port, {"name": "tests.buffer_request_body"})) as relay,
        await Client.open(relay.address()) as c,
    ):
        body = b"0123456789" * 1000
        r = await asyncio.wait_for(c.request(
            b"POST /rb HTTP/1.1\r\nHost: a\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body), 5)
        assert r.status == 200
        expected = b"[" + body[::-1] + b"]+extra"
        assert r.json()["sha256"] == sha256(expected), \
            f"upstream saw {r.json()['body_len']} bytes, expected {len(expected)}"
        # chunked request body too
        r2 = await asyncio.wait_for(c.request(
            b"POST /rb2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"), 5)
        assert r2.status == 200
        assert origin.seen[-1].body == b"[fedcba]+extra"


async def test_filter_order_listener_then_route_and_reverse_on_response():
    LOG.clear()
    async with Origin() as origin, omnirelay.Relay(with_filters(
            origin.port, {"name": "tests.tag", "config": {"tag": "route"}},
            listener_filters=[{"name": "tests.tag", "config": {"tag": "listener"}}])) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/order"))
        assert origin.seen[0].headers.getall("x-order") == ["listener", "route"]
        assert r.headers.getall("x-order") == ["route", "listener"]
    assert sorted(LOG) == [("listener", "/order"), ("route", "/order")]


async def test_filter_stop_on_response_headers_then_resume():
    async with (
        Origin() as origin,
        omnirelay.Relay(
            with_filters(origin.port, {"name": "tests.pause_response_headers"})) as relay,
        await Client.open(relay.address()) as c,
    ):
        for path in ("/small", "/size/100", "/chunked/50000"):
            r = await c.request(get(path))
            assert r.status == 200, r.start_line
            assert r.headers.get("x-checked") == "later"
            if path == "/small":
                assert r.json()["path"] == "/small"
            else:
                from harness import pattern
                assert r.body == pattern(int(path.rsplit("/", 1)[1]))


async def test_filter_stop_then_async_local_reply():
    async with RawServer(keepalive_handler) as srv, omnirelay.Relay(
            with_filters(srv.port, {"name": "tests.async_deny"})) as relay:
        async with await Client.open(relay.address()) as c:
            r = await c.request(get("/x"))
            assert r.status == 401
            assert r.body == b"nope\n"
            assert r.headers.get("www-authenticate") == "Basic"
            r2 = await c.request(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
            assert r2.status == 401
        assert srv.accepted == 0


async def test_buffering_body_filter_with_upstream_trailers_keeps_the_body():
    async def with_trailers(reader, writer, srv):
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n")
            await writer.drain()

    async with (
        RawServer(with_trailers) as srv,
        omnirelay.Relay(
            with_filters(srv.port, {"name": "tests.buffer_response_body"})) as relay,
        await Client.open(relay.address()) as c,
    ):
        r = await c.request(get("/t", headers="TE: trailers\r\n"))
        assert r.status == 200
        assert r.body == b"<<HELLO WORLD>>", f"client got body {r.body!r}"
        assert r.trailers.get("x-checksum") == "abc"


@pytest.mark.parametrize("mode", ["raise", "bad-return"])
@pytest.mark.parametrize("hook", ["request_headers", "request_body", "response_headers",
                                  "response_body"])
async def test_failing_filter_gets_5xx_and_proxy_survives(hook, mode):
    """A filter that raises (or returns something that is not a filter status) is a
    server-side bug: the client gets a 500-class reply, or, once the response head is
    already out, a closed connection without a complete-looking response. Nothing
    escapes to the event loop and the proxy keeps serving."""
    async with Origin() as origin, omnirelay.Relay(make_config(origin.port, routes=[
            {"name": "boom", "match": {"path": {"prefix": "/boom"}}, "cluster": "c",
             "filters": [{"name": "tests.explode", "config": {"hook": hook, "mode": mode}}]},
            {"name": "ok", "match": {}, "cluster": "c"}])) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(b"POST /boom HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            data, _ = await c.closed() if hook == "response_body" else (b"", None)
            if hook == "response_body":
                head, _, body = data.partition(b"\r\n\r\n")
                if head.startswith(b"HTTP/1.1 200"):
                    assert b"content-length" not in head.lower() or \
                        len(body) < int(head.lower().split(b"content-length: ")[1].split(b"\r")[0])
                else:
                    assert not head or head.startswith(b"HTTP/1.1 5"), head
            else:
                try:
                    r = await c.response()
                except (asyncio.IncompleteReadError, ConnectionError, ClosedBeforeMessage) as e:
                    raise AssertionError(f"a failing {hook} filter dropped the connection "
                                         f"without a response ({e!r})") from None
                assert 500 <= r.status < 600, \
                    f"a filter bug answered as {r.start_line!r}: {r.body[:100]!r}"
        await assert_healthy(relay.address())
        await assert_quiescent(relay)


async def test_filter_failing_after_resume_gets_500_and_proxy_survives():
    """The first filter pauses and resumes from a timer; the next one raises while the
    chain runs inside resume()."""
    async with Origin() as origin, relay_short_drain(make_config(origin.port, routes=[
            {"name": "boom", "match": {"path": {"prefix": "/boom"}}, "cluster": "c",
             "filters": [{"name": "tests.pause"},
                         {"name": "tests.explode", "config": {"hook": "request_headers"}}]},
            {"name": "ok", "match": {}, "cluster": "c"}])) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(get("/boom"))
            try:
                r = await c.response(timeout=3)
            except TimeoutError:
                raise AssertionError("no reply after a filter failed inside resume()") from None
            assert r.status == 500, r.start_line
        assert not origin.seen
        await assert_healthy(relay.address())


async def test_filter_that_never_resumes_is_bounded_by_the_route_timeout():
    async with RawServer(keepalive_handler) as srv, relay_short_drain(make_config(
            srv.port, route={"timeout": 0.3, "filters": [{"name": "tests.never_resume"}]})) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(get("/stuck"))
            try:
                r = await c.response(timeout=3)
            except TimeoutError:
                raise AssertionError("a stream paused by a filter that never resumes got no "
                                     "reply within 3 s (route timeout 0.3 s)") from None
            assert r.status == 504
        assert srv.accepted == 0


async def test_resume_after_client_left_is_harmless():
    async with RawServer(keepalive_handler) as srv, omnirelay.Relay(
            with_filters(srv.port, {"name": "tests.slow_resume"})) as relay:
        c = await Client.open(relay.address())
        await c.send(get("/gone"))
        c.writer.transport.abort()
        await assert_quiescent(relay)
        async with await Client.open(relay.address()) as c2:
            r = await c2.request(get("/ok"))
            assert r.status == 200
        await assert_quiescent(relay)


async def test_connection_pooled_while_a_filter_held_the_response_notices_upstream_close():
    """While a response-headers filter holds the head, the proxy stops reading the
    upstream; the response may complete in that state and the connection go back to the
    pool. It must read again there, or it never sees the upstream close it and the next
    request (with a body, so it cannot be retried) fails."""
    closed = asyncio.Queue()

    async def idle_closer(reader, writer, srv):
        while True:
            try:
                req = await asyncio.wait_for(read_request(reader), 0.1)
            except TimeoutError:
                writer.close()
                closed.put_nowait(True)
                return
            srv.requests.append(req)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmall")
            await writer.drain()

    async with RawServer(idle_closer) as srv, omnirelay.Relay(
            with_filters(srv.port, {"name": "tests.pause_response_headers"})) as relay:
        async with await Client.open(relay.address()) as c:
            for i in range(3):
                r = await c.request(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
                assert r.status == 200 and r.body == b"small", (i, r.start_line, r.body)
                assert r.headers.get("x-checked") == "later"
                await asyncio.wait_for(closed.get(), 2)
                await eventually(lambda: endpoint_stats(relay)["idle"] == 0, 1.0,
                                 "the proxy noticing the upstream closed its idle connection")
        assert srv.accepted == 3


async def test_returned_local_reply_with_header_injection_attempt_is_a_500():
    async with (
        RawServer(keepalive_handler) as srv,
        relay_short_drain(make_config(srv.port, route={"filters": [
            {"name": "tests.bad_local_reply"}]})) as relay,
        await Client.open(relay.address()) as c,
    ):
        await c.send(get("/x"))
        r = await c.response(timeout=3)
        assert "injected" not in r.headers, f"header injection: {r.headers}"
        assert r.status == 500, f"{r.start_line}: {r.body!r}"
    assert srv.accepted == 0


async def test_stream_reply_with_bad_header_raises_and_stream_stays_answerable():
    async with (
        RawServer(keepalive_handler) as srv,
        relay_short_drain(make_config(srv.port, route={"filters": [
            {"name": "tests.bad_local_reply", "config": {"later": True}}]})) as relay,
        await Client.open(relay.address()) as c,
    ):
        await c.send(get("/x"))
        r = await c.response(timeout=3)
        assert r.status == 403 and r.body == b"no"
        assert r.headers.get("x-good") == "1"
        assert "injected" not in r.headers and "x-bad" not in r.headers
        assert len(r.headers.getall("x-omnirelay-reason")) <= 1
        assert len(r.headers.getall("content-type")) <= 1
    assert srv.accepted == 0


class PickCluster(_Configured):
    def on_request_headers(self, stream, end_stream):
        want = stream.request_headers.get("x-cluster")
        if want:
            try:
                stream.set_cluster(want)
            except ValueError as e:
                return LocalReply(400, str(e).encode())
        return CONTINUE


@omnirelay.register("tests.pick_cluster")
class PickClusterFactory(FilterFactory):
    filter_class = PickCluster


async def test_filter_picks_the_cluster():
    async with Origin("a") as a, Origin("b") as b:
        cfg = make_config(routes=[{"name": "r", "match": {"path": {"prefix": "/"}},
                                   "cluster": "ca", "filters": [{"name": "tests.pick_cluster"}]}],
                          clusters=[{"name": "ca", "endpoints": [{"address": "127.0.0.1",
                                                                  "port": a.port}]},
                                    {"name": "cb", "endpoints": [{"address": "127.0.0.1",
                                                                  "port": b.port}]}])
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            r1 = await c.request(get("/x"))
            r2 = await c.request(get("/x", headers="X-Cluster: cb\r\n"))
            r3 = await c.request(get("/x", headers="X-Cluster: nope\r\n"))
            assert (r1.headers.get("x-origin"), r2.headers.get("x-origin")) == ("a", "b")
            assert r3.status == 400 and b"unknown cluster 'nope'" in r3.body
            assert len(b.seen) == 1 and len(a.seen) == 1
            # The override's counters live under the route, keyed by the chosen cluster.
            stats = relay._builder.upstream_stats[("r", "cb")]
            assert stats.rq_total == 1
