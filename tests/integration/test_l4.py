"""L4 listeners with real peers on 127.0.0.1: TCP passthrough (bytes both ways, half-close,
backpressure, idle timeout, connect failures, circuit breakers, load balancing) and TLS
passthrough routed by SNI to TLS backends whose own certificates the clients see."""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import pathlib
import shutil
import socket
import ssl
import time
from typing import Self

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness import HOST, Client, RawServer, cluster, eventually, free_port, pattern, sha256

import omnirelay
from omnirelay._core import Cluster as CoreCluster
from omnirelay._core import L4ListenerRuntime, L4ListenerState

MiB = 1 << 20


# --------------------------------------------------------------------------- helpers


def make_cert(directory: pathlib.Path, common_name: str, *sans: str) -> tuple[str, str]:
    """A self-signed EC certificate for `common_name` (plus SANs, DNS names or IPs):
    (cert_file, key_file) written under `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = []
    for name in (common_name, *sans):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file = directory / f"{common_name}.crt"
    key_file = directory / f"{common_name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def der_of(cert_file: str) -> bytes:
    cert = x509.load_pem_x509_certificate(pathlib.Path(cert_file).read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def common_name(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def client_context(alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tcp_config(port: int, *, listener: dict | None = None, clusters: list[dict] | None = None,
               tcp: dict | None = None) -> dict:
    lst = {"name": "l4", "address": HOST, "port": 0, "protocol": "tcp",
           "tcp": {"cluster": "c", **(tcp or {})}}
    lst.update(listener or {})
    return {"spec": {"listeners": [lst], "routes": [],
                     "clusters": clusters or [cluster("c", port)]}}


def sni_config(routes: list[dict], clusters: list[dict], **listener) -> dict:
    lst = {"name": "tls", "address": HOST, "port": 0, "protocol": "tls_passthrough",
           "sni_routes": routes, **listener}
    return {"spec": {"listeners": [lst], "routes": [], "clusters": clusters}}


def l4_stats(relay: omnirelay.Relay, name: str = "l4") -> dict:
    return relay.stats()["listeners"][name]


def endpoint(relay: omnirelay.Relay, cluster_name: str = "c", index: int = 0) -> dict:
    return relay.stats()["clusters"][cluster_name]["endpoints"][index]


async def closed_quiet(relay: omnirelay.Relay, name: str = "l4") -> None:
    await eventually(lambda: l4_stats(relay, name)["connections"] == 0, 3, "L4 connections closed")
    await eventually(
        lambda: all(ep["open_connections"] == 0 and ep["active"] == 0
                    for c in relay.stats()["clusters"].values() for ep in c["endpoints"]),
        3, "upstream connections closed")


async def echo_upper(reader, writer, srv):
    """Echoes upper-cased; on the client's EOF says BYE and closes."""
    while data := await reader.read(65536):
        writer.write(data.upper())
        await writer.drain()
    writer.write(b"BYE")
    await writer.drain()


def named_echo(name: str):
    async def handler(reader, writer, srv):
        while data := await reader.read(65536):
            writer.write(f"{name}:".encode() + data)
            await writer.drain()
    return handler


async def read_exactly(reader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), 5)


async def drain_blocked(writer: asyncio.StreamWriter, timeout: float = 0.5) -> bool:
    """Whether the writer's buffer stays above its high-water mark for `timeout` s: the
    peer (the proxy) has stopped taking bytes."""
    drain = asyncio.ensure_future(writer.drain())
    # The connection may be torn down while the drain still waits: observe its outcome.
    drain.add_done_callback(lambda f: f.cancelled() or f.exception())
    done, _ = await asyncio.wait({drain}, timeout=timeout)
    if done:
        drain.result()
        return False
    drain.cancel()
    return True


# --------------------------------------------------------------------------- TCP passthrough


@pytest.mark.async_timeout(60)
async def test_tcp_passthrough_8_mib_both_ways():
    size = 8 * MiB
    up_data, down_data = pattern(size, seed=1), pattern(size, seed=2)

    async def both_ways(reader, writer, srv):
        async def consume():
            h, n = hashlib.sha256(), 0
            while data := await reader.read(1 << 16):
                h.update(data)
                n += len(data)
            srv.state["got"] = (n, h.hexdigest())

        async def produce():
            writer.write(down_data)
            await writer.drain()
            writer.write_eof()

        await asyncio.gather(consume(), produce())
        srv.event.set()

    async with RawServer(both_ways) as srv, omnirelay.Relay(tcp_config(srv.port)) as relay:
        assert relay.url().startswith("tcp://")
        async with await Client.open(relay.address()) as c:
            async def send():
                for i in range(0, size, 1 << 20):
                    await c.send(up_data[i:i + (1 << 20)])
                c.writer.write_eof()

            async def receive():
                h, n = hashlib.sha256(), 0
                while data := await c.reader.read(1 << 16):
                    h.update(data)
                    n += len(data)
                return n, h.hexdigest()

            _, got = await asyncio.gather(send(), receive())
        assert got == (size, sha256(down_data))
        await asyncio.wait_for(srv.event.wait(), 5)
        assert srv.state["got"] == (size, sha256(up_data))
        await closed_quiet(relay)
        st = l4_stats(relay)
        assert st["downstream_cx_total"] == 1 and st["downstream_cx_active"] == 0
        assert st["downstream_cx_rx_bytes_total"] == size
        assert st["downstream_cx_tx_bytes_total"] == size
        assert st["upstream_cx_total"] == 1 and st["upstream_cx_connect_fail"] == 0
        assert endpoint(relay)["connects"] == 1


async def test_client_half_close_upstream_still_answers():
    async def answer_after_eof(reader, writer, srv):
        question = await reader.read()          # until the client's FIN arrives
        writer.write(b"answer to " + question)
        await writer.drain()

    async with RawServer(answer_after_eof) as srv, \
            omnirelay.Relay(tcp_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            await c.send(b"question")
            c.writer.write_eof()
            data, how = await c.closed()
        assert (data, how) == (b"answer to question", "eof")
        await closed_quiet(relay)


async def test_upstream_half_close_client_can_still_send():
    async def banner_then_listen(reader, writer, srv):
        writer.write(b"banner")
        writer.write_eof()
        srv.state["heard"] = await reader.read()
        srv.event.set()

    async with RawServer(banner_then_listen) as srv, \
            omnirelay.Relay(tcp_config(srv.port)) as relay:
        async with await Client.open(relay.address()) as c:
            assert await asyncio.wait_for(c.reader.read(), 5) == b"banner"   # then EOF
            assert c.reader.at_eof()
            await c.send(b"late words")
            c.writer.write_eof()
            await asyncio.wait_for(srv.event.wait(), 5)
            assert srv.state["heard"] == b"late words"
            assert await c.closed() == (b"", "eof")
        await closed_quiet(relay)


@pytest.mark.async_timeout(60)
async def test_upstream_that_never_reads_blocks_the_client():
    chunk = 256 << 10
    released = asyncio.Event()

    async def lazy(reader, writer, srv):
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        await released.wait()
        h, n = hashlib.sha256(), 0
        while data := await reader.read(1 << 16):
            h.update(data)
            n += len(data)
        srv.state["got"] = (n, h.hexdigest())
        srv.event.set()

    cfg = tcp_config(0, listener={"buffer_limit": "64KiB"},
                     clusters=[{"name": "c", "buffer_limit": "64KiB",
                                "endpoints": [{"address": HOST, "port": 0}]}])
    async with RawServer(lazy) as srv:
        cfg["spec"]["clusters"][0]["endpoints"][0]["port"] = srv.port
        async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
            c.writer.transport.set_write_buffer_limits(high=chunk)
            c.writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
            sent = hashlib.sha256()
            total = 0
            while True:
                block = pattern(chunk, seed=total)
                c.writer.write(block)
                sent.update(block)
                total += chunk
                if await drain_blocked(c.writer):
                    break
                assert total < 256 * MiB, "the proxy kept accepting bytes nobody reads"
            accepted = l4_stats(relay)["downstream_cx_rx_bytes_total"]
            # Kernel buffers on three sockets plus the proxy's 64 KiB per direction.
            assert total <= 48 * MiB, f"client could write {total / MiB:.1f} MiB"
            assert accepted <= total
            # Let the upstream read: everything arrives, in order.
            released.set()
            await asyncio.wait_for(c.writer.drain(), 10)
            c.writer.write_eof()
            await asyncio.wait_for(srv.event.wait(), 10)
            assert srv.state["got"] == (total, sent.hexdigest())


@pytest.mark.async_timeout(60)
async def test_client_that_never_reads_blocks_the_upstream():
    chunk = 256 << 10

    async def flood(reader, writer, srv):
        writer.transport.set_write_buffer_limits(high=chunk)
        sent = 0
        while sent < 256 * MiB:
            writer.write(pattern(chunk, seed=sent))
            sent += chunk
            srv.state["sent"] = sent
            if await drain_blocked(writer):
                srv.event.set()
                await writer.drain()
        await reader.read()

    cfg = tcp_config(0, listener={"buffer_limit": "64KiB"})
    async with RawServer(flood) as srv:
        cfg["spec"]["clusters"][0]["endpoints"][0]["port"] = srv.port
        async with omnirelay.Relay(cfg) as relay:
            c = await Client.open(relay.address(), limit=1 << 16)
            c.writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            try:
                await c.send(b"go")
                await asyncio.wait_for(srv.event.wait(), 20)
                assert srv.state["sent"] <= 48 * MiB
                # Read some: the upstream gets going again.
                blocked_at = srv.state["sent"]
                got = 0
                while srv.state["sent"] <= blocked_at + 4 * chunk:
                    got += len(await asyncio.wait_for(c.reader.read(1 << 16), 5))
                assert got > 0
            finally:
                await c.close()


async def test_idle_timeout_closes_both_sides():
    async with RawServer(echo_upper) as srv, \
            omnirelay.Relay(tcp_config(srv.port, tcp={"idle_timeout": "300ms"})) as relay:
        async with await Client.open(relay.address()) as c:
            # Traffic keeps it open past the timeout ...
            start = time.monotonic()
            while time.monotonic() - start < 0.7:
                await c.send(b"ping")
                assert await read_exactly(c.reader, 4) == b"PING"
                silent = time.monotonic()
                await asyncio.sleep(0.1)
            # ... silence closes it (without the upstream's BYE: the proxy closed first).
            data, _how = await c.closed(3)
            assert 0.28 <= time.monotonic() - silent < 2
            assert data == b""
        assert l4_stats(relay)["downstream_cx_idle_timeout"] == 1
        await closed_quiet(relay)


async def test_connect_failure_closes_client_promptly_and_is_counted():
    cfg = tcp_config(free_port(), clusters=[{
        "name": "c", "endpoints": [{"address": HOST, "port": free_port()}],
        "outlier_detection": {"consecutive_gateway_failure": 2, "consecutive_5xx": 100}}])
    async with omnirelay.Relay(cfg) as relay:
        for attempt in (1, 2):
            start = time.monotonic()
            async with await Client.open(relay.address()) as c:
                await c.send(b"hello?")
                assert await c.closed(2) == (b"", "eof")
            assert time.monotonic() - start < 1.0
            assert l4_stats(relay)["upstream_cx_connect_fail"] == attempt
            assert endpoint(relay)["connect_failures"] == attempt
        # Two consecutive connect failures: outlier detection ejected the endpoint.
        assert endpoint(relay)["ejected"] is True
        await closed_quiet(relay)
        assert relay.stats()["clusters"]["c"]["endpoints"][0]["active"] == 0


async def test_max_connections_circuit_breaker():
    cfg = tcp_config(0)
    async with RawServer(echo_upper) as srv:
        cfg["spec"]["clusters"] = [cluster("c", srv.port,
                                           circuit_breakers={"max_connections": 1})]
        async with omnirelay.Relay(cfg) as relay:
            async with await Client.open(relay.address()) as first:
                await first.send(b"one")
                assert await read_exactly(first.reader, 3) == b"ONE"
                async with await Client.open(relay.address()) as second:
                    assert await second.closed(2) == (b"", "eof")
                assert l4_stats(relay)["upstream_cx_overflow"] == 1
            await closed_quiet(relay)
            async with await Client.open(relay.address()) as third:
                await third.send(b"three")
                assert await read_exactly(third.reader, 5) == b"THREE"
            assert srv.accepted == 2


async def test_round_robin_and_source_ip_hash():
    async with RawServer(named_echo("a")) as a, RawServer(named_echo("b")) as b:
        eps = [{"address": HOST, "port": a.port}, {"address": HOST, "port": b.port}]
        for policy, extra in (("round_robin", {}),
                              ("ring_hash", {"hash_key": {"source_ip": True}}),
                              ("maglev", {"hash_key": {"source_ip": True}})):
            cfg = tcp_config(0, clusters=[{"name": "c", "endpoints": eps,
                                           "lb_policy": policy, **extra}])
            seen = []
            async with omnirelay.Relay(cfg) as relay:
                for _ in range(4):
                    async with await Client.open(relay.address()) as c:
                        await c.send(b"x")
                        seen.append((await read_exactly(c.reader, 3))[:1])
            if policy == "round_robin":
                assert sorted(seen) == [b"a", b"a", b"b", b"b"], seen
            else:
                assert len(set(seen)) == 1, (policy, seen)   # one client address


async def test_reload_swaps_cluster_for_new_connections_only():
    async with RawServer(named_echo("a")) as a, RawServer(named_echo("b")) as b:
        cfg = tcp_config(0, clusters=[cluster("a", a.port), cluster("b", b.port)],
                         tcp={"cluster": "a"})
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            async with await Client.open(addr) as old:
                await old.send(b"1")
                assert await read_exactly(old.reader, 3) == b"a:1"
                cfg["spec"]["listeners"][0]["tcp"]["cluster"] = "b"
                await relay.reload(cfg)
                assert relay.address() == addr          # same socket
                async with await Client.open(addr) as new:
                    await new.send(b"2")
                    assert await read_exactly(new.reader, 3) == b"b:2"
                await old.send(b"3")                   # the open one keeps its upstream
                assert await read_exactly(old.reader, 3) == b"a:3"
            await closed_quiet(relay)


async def test_drain_stops_accepting_and_lets_connections_finish():
    async with RawServer(echo_upper) as srv:
        relay = omnirelay.Relay(tcp_config(srv.port))
        await relay.start()
        addr = relay.address()
        c = await Client.open(addr)
        await c.send(b"before")
        assert await read_exactly(c.reader, 6) == b"BEFORE"
        stop = asyncio.ensure_future(relay.stop(drain_timeout=10))

        async def refused() -> bool:
            try:
                _, w = await asyncio.open_connection(*addr)
            except OSError:
                return True
            w.close()
            return False

        deadline = time.monotonic() + 3
        while not await refused():
            assert time.monotonic() < deadline, "still accepting while draining"
            await asyncio.sleep(0.01)
        # The open connection still works during the drain ...
        await c.send(b"during")
        assert await read_exactly(c.reader, 6) == b"DURING"
        assert not stop.done()
        # ... and once it closes, stop() returns well before the deadline.
        c.writer.write_eof()
        assert await c.closed() == (b"BYE", "eof")
        start = time.monotonic()
        await asyncio.wait_for(stop, 5)
        assert time.monotonic() - start < 2
        await c.close()


async def test_drain_deadline_aborts_open_connections():
    async with RawServer(echo_upper) as srv:
        relay = omnirelay.Relay(tcp_config(srv.port))
        await relay.start()
        async with await Client.open(relay.address()) as c:
            await c.send(b"x")
            assert await read_exactly(c.reader, 1) == b"X"
            start = time.monotonic()
            await relay.stop(drain_timeout=0.3)
            assert 0.25 <= time.monotonic() - start < 3
            _, how = await c.closed(2)
            assert how in ("eof", "reset")


# --------------------------------------------------------------------------- TLS passthrough


class TlsBackend:
    """An asyncio TLS server for one name: answers each line with "<name>:<line>" and
    closes after the first answer."""

    def __init__(self, directory: pathlib.Path, name: str) -> None:
        self.name = name
        self.cert_file, self.key_file = make_cert(directory, name)
        self.der = der_of(self.cert_file)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(self.cert_file, self.key_file)
        self.server_names: list[str | None] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    def _sni(self, sslobj, server_name, ctx):
        self.server_names.append(server_name)

    async def _handle(self, reader, writer):
        try:
            line = await reader.readline()
            writer.write(f"{self.name}:".encode() + line)
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Self:
        self.ctx.sni_callback = self._sni
        self._server = await asyncio.start_server(self._handle, HOST, 0, ssl=self.ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def tls_exchange(addr, server_name: str | None, line: bytes = b"hello\n"):
    """Connect with a Python ssl client: (peer certificate DER, answer)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        addr[0], addr[1], ssl=client_context(), server_hostname=server_name), 5)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(line)
        await writer.drain()
        return der, await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.fixture
def certs(tmp_path):
    return tmp_path


def _two_backends_config(a: TlsBackend, b: TlsBackend, default: str | None = "b") -> dict:
    routes = [{"server_names": ["a.test"], "cluster": "a"},
              {"server_names": ["*.b.test", "b.test"], "cluster": "b"}]
    if default:
        routes.append({"server_names": ["*"], "cluster": default})
    return sni_config(routes, [cluster("a", a.port), cluster("b", b.port)])


async def test_sni_routes_python_clients_to_backends_certificates(certs):
    async with (
        TlsBackend(certs, "a.test") as a,
        TlsBackend(certs, "b.test") as b,
        omnirelay.Relay(_two_backends_config(a, b, None)) as relay,
    ):
        addr = relay.address()
        der, answer = await tls_exchange(addr, "a.test")
        assert der == a.der and answer == b"a.test:hello\n"
        der, answer = await tls_exchange(addr, "x.B.Test", b"hi\n")
        assert der == b.der and answer == b"b.test:hi\n"
        der, answer = await tls_exchange(addr, "b.test")
        assert der == b.der
        # The backends terminated TLS themselves and saw the names the clients sent.
        assert a.server_names == ["a.test"]
        assert b.server_names == ["x.B.Test", "b.test"]
        await closed_quiet(relay, "tls")
        st = l4_stats(relay, "tls")
        assert st["downstream_cx_total"] == 3 and st["upstream_cx_total"] == 3
        assert st["downstream_cx_rx_bytes_total"] > 0 and st["downstream_cx_tx_bytes_total"] > 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")
async def test_sni_routes_openssl_s_client(certs):
    async with (
        TlsBackend(certs, "a.test") as a,
        TlsBackend(certs, "b.test") as b,
        omnirelay.Relay(_two_backends_config(a, b)) as relay,
    ):
        host, port = relay.address()
        for name, backend in (("a.test", a), ("deep.x.b.test", b)):
            proc = await asyncio.create_subprocess_exec(
                "openssl", "s_client", "-connect", f"{host}:{port}", "-servername", name,
                "-ign_eof", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(b"ping\n"), 10)
            text = out.decode(errors="replace")
            assert f"subject=CN = {backend.name}" in text, text
            assert f"{backend.name}:ping" in text, text
        assert a.server_names == ["a.test"] and b.server_names == ["deep.x.b.test"]


async def test_no_sni_goes_to_catch_all_or_is_closed(certs):
    async with TlsBackend(certs, "a.test") as a, TlsBackend(certs, "b.test") as b:
        async with omnirelay.Relay(_two_backends_config(a, b, "a")) as relay:
            # An IP address is never sent as SNI.
            der, answer = await tls_exchange(relay.address(), None)
            assert der == a.der and answer == b"a.test:hello\n"
            der, _ = await tls_exchange(relay.address(), "unknown.test")
            assert der == a.der
        async with omnirelay.Relay(_two_backends_config(a, b, None)) as relay:
            for name in (None, "unknown.test", "b.test.example"):
                with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
                    await tls_exchange(relay.address(), name)
            assert l4_stats(relay, "tls")["downstream_cx_no_route"] == 3
            assert l4_stats(relay, "tls")["upstream_cx_total"] == 0
            await closed_quiet(relay, "tls")


async def test_non_tls_and_broken_hellos_are_closed(certs):
    async with (
        TlsBackend(certs, "a.test") as a,
        TlsBackend(certs, "b.test") as b,
        omnirelay.Relay(_two_backends_config(a, b)) as relay,
    ):
        garbage = [
            b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"\x16\x03\x01\x00\x08\x02\x00\x00\x04\x03\x03\x00\x00",   # ServerHello
            # 1-byte handshake records for a message of ~16 KiB: over the buffer cap.
            b"".join(b"\x16\x03\x01\x00\x01" + bytes([c]) for c in b"\x01\x00\x3f\xf0")
            + b"\x16\x03\x01\x00\x01\x03" * 4000,
        ]
        for data in garbage:
            async with await Client.open(relay.address()) as c:
                await c.send(data)
                got, _ = await c.closed(3)
                assert got == b""
        st = l4_stats(relay, "tls")
        assert st["downstream_cx_tls_invalid"] == 3
        assert st["upstream_cx_total"] == 0
        assert a.server_names == [] and b.server_names == []
        # Still serving.
        der, _ = await tls_exchange(relay.address(), "a.test")
        assert der == a.der


async def test_client_hello_timeout(certs):
    """A client that never completes its ClientHello is closed (core-level, with a short
    timeout; the config-built listener waits a few seconds)."""
    async with TlsBackend(certs, "a.test") as a:
        core = CoreCluster("a")
        core.set_endpoints([(HOST, a.port, 1)])
        state = L4ListenerState("t", "tls_passthrough", [(("*",), core)], hello_timeout=0.2)
        runtime = L4ListenerRuntime(state)
        addr = await runtime.start(HOST, 0)
        try:
            hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"     # cut short
            async with await Client.open(addr) as c:
                start = time.monotonic()
                await c.send(hello)
                assert await c.closed(3) == (b"", "eof")
                assert 0.15 <= time.monotonic() - start < 2
            assert runtime.stats.downstream_cx_hello_timeout == 1
            assert runtime.stats.upstream_cx_total == 0
            await eventually(lambda: runtime.active_connections == 0)
        finally:
            runtime.start_drain()
            runtime.abort_all()


async def test_reload_swaps_sni_routes_and_protocol(certs):
    async with TlsBackend(certs, "a.test") as a, TlsBackend(certs, "b.test") as b:
        cfg = _two_backends_config(a, b, None)
        async with omnirelay.Relay(cfg) as relay:
            addr = relay.address()
            der, _ = await tls_exchange(addr, "a.test")
            assert der == a.der
            cfg["spec"]["listeners"][0]["sni_routes"][0]["cluster"] = "b"
            await relay.reload(cfg)
            assert relay.address() == addr
            der, _ = await tls_exchange(addr, "a.test")
            assert der == b.der
            # tls_passthrough -> tcp keeps the socket: both are L4 listeners.
            listener = cfg["spec"]["listeners"][0]
            del listener["sni_routes"]
            listener.update(protocol="tcp", tcp={"cluster": "a"})
            await relay.reload(cfg)
            assert relay.address() == addr
            der, _ = await tls_exchange(addr, "b.test")
            assert der == a.der       # forwarded without looking at the SNI


async def test_l4_passthrough_on_the_stdlib_loop(certs):
    """Both L4 modes on the asyncio loop (BufferedProtocol fallback), in a thread-free
    nested runner: the test body itself runs on uvloop."""
    a = TlsBackend(certs, "a.test")

    async def exercise():
        assert "uvloop" not in type(asyncio.get_running_loop()).__module__
        async with a, RawServer(echo_upper) as srv:
            cfg = tcp_config(srv.port)
            cfg["spec"]["listeners"].append(
                {"name": "tls", "address": HOST, "port": 0, "protocol": "tls_passthrough",
                 "sni_routes": [{"server_names": ["*"], "cluster": "a"}]})
            cfg["spec"]["clusters"].append(cluster("a", a.port))
            async with omnirelay.Relay(cfg) as relay:
                async with await Client.open(relay.address("l4")) as c:
                    data = pattern(1 * MiB, seed=5)
                    await c.send(data)
                    c.writer.write_eof()
                    got, how = await c.closed()
                    assert got == data.upper() + b"BYE" and how == "eof"
                der, answer = await tls_exchange(relay.address("tls"), "a.test")
                assert der == a.der and answer == b"a.test:hello\n"

    loop = asyncio.new_event_loop()
    try:
        await asyncio.to_thread(loop.run_until_complete, asyncio.wait_for(exercise(), 20))
    finally:
        loop.close()


async def test_reload_between_tcp_and_http_on_the_same_port():
    port = free_port()
    async with RawServer(named_echo("a")) as a, RawServer(named_echo("b")) as b:
        l4 = tcp_config(a.port, listener={"port": port})
        http = {"spec": {
            "listeners": [{"name": "l4", "address": HOST, "port": port}],
            "routes": [{"name": "r", "match": {}, "direct_response": {"status": 200,
                                                                     "body": "http"}}],
            "clusters": [cluster("c", b.port)]}}
        async with omnirelay.Relay(l4) as relay:
            assert relay.url() == f"tcp://{HOST}:{port}"
            async with await Client.open((HOST, port)) as old:
                await old.send(b"1")
                assert await read_exactly(old.reader, 3) == b"a:1"
                await relay.reload(http)
                assert relay.url() == f"http://{HOST}:{port}"
                async with await Client.open((HOST, port)) as c:
                    resp = await c.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert resp.status == 200 and resp.body == b"http"
                # The L4 connection accepted before is drained, not cut.
                await old.send(b"2")
                assert await read_exactly(old.reader, 3) == b"a:2"
            await relay.reload(l4)
            async with await Client.open((HOST, port)) as c:
                await c.send(b"3")
                assert await read_exactly(c.reader, 3) == b"a:3"
