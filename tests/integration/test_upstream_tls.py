"""TLS origination toward clusters: verification against a trust bundle with SNI, client
certificates (mTLS), the SPIFFE allow list, and gRPC over h2 negotiated by ALPN, all against
real TLS upstreams on loopback."""
from __future__ import annotations

import contextlib
import pathlib
import ssl
from concurrent import futures

import grpc
import pytest
from aiohttp import web
from harness import HOST, Client, get, make_config
from pki import CA

import omnirelay


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path)


@pytest.fixture(autouse=True, params=["core", "loop"])
def tls_mode(request, monkeypatch) -> str:
    """Every test twice: TLS driven by the core, and by the event loop (the fallback)."""
    if request.param == "loop":
        monkeypatch.setenv("OMNIRELAY_CORE_TLS", "0")
    return request.param


@contextlib.asynccontextmanager
async def tls_origin(cert_file: str, key_file: str, *, client_ca: str | None = None):
    """An aiohttp upstream over TLS that reports the SNI it got and the client's certificate."""
    seen: dict = {"sni": [], "client_cn": []}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.sni_callback = lambda sock, name, _ctx: seen["sni"].append(name)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)

    async def handle(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        if peer:
            seen["client_cn"].append(dict(x[0] for x in peer["subject"])["commonName"])
        return web.Response(text="secure", headers={"x-tls": "yes"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=ctx)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1], seen  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def tls_cluster(port: int, **tls) -> dict:
    return {"endpoints": [{"address": HOST, "port": port}], "tls": tls}


async def one_request(cfg: dict):
    async with omnirelay.Relay(cfg) as relay, await Client.open(relay.address()) as c:
        return await c.request(get("/x"))


async def test_verified_tls_with_sni(ca):
    cert, key = ca.issue("upstream", "upstream.internal")
    async with tls_origin(cert, key) as (port, seen):
        r = await one_request(make_config(cluster=tls_cluster(
            port, sni="upstream.internal", ca_file=ca.cert_file)))
        assert (r.status, r.body, r.headers.get("x-tls")) == (200, b"secure", "yes")
        assert seen["sni"] == ["upstream.internal"]


async def test_untrusted_or_misnamed_upstream_is_refused(ca, tmp_path):
    cert, key = ca.issue("upstream", "upstream.internal")
    other = CA(tmp_path, "other-ca")
    async with tls_origin(cert, key) as (port, _):
        for tls in ({"sni": "upstream.internal", "ca_file": other.cert_file},   # wrong CA
                    {"sni": "elsewhere.internal", "ca_file": ca.cert_file}):    # wrong name
            r = await one_request(make_config(cluster=tls_cluster(port, **tls)))
            assert r.status == 503, tls
            assert r.headers.get("x-omnirelay-reason") == "upstream_tls_failure"
            assert b"certificate verify failed" in r.body or b"TLS handshake" in r.body


async def test_expired_upstream_certificate_fails_closed(ca):
    cert, key = ca.issue("old", "upstream.internal", expired=True)
    async with tls_origin(cert, key) as (port, _):
        r = await one_request(make_config(cluster=tls_cluster(
            port, sni="upstream.internal", ca_file=ca.cert_file)))
        assert r.status == 503 and b"expired" in r.body


async def test_mutual_tls_presents_the_client_certificate(ca):
    cert, key = ca.issue("upstream", "upstream.internal")
    client_cert, client_key = ca.issue("edge-proxy", client=True)
    async with tls_origin(cert, key, client_ca=ca.cert_file) as (port, seen):
        r = await one_request(make_config(cluster=tls_cluster(
            port, sni="upstream.internal", ca_file=ca.cert_file,
            cert_file=client_cert, key_file=client_key)))
        assert r.status == 200
        assert seen["client_cn"] == ["edge-proxy"]
        # Without a client certificate the upstream refuses the connection.
        r = await one_request(make_config(cluster=tls_cluster(
            port, sni="upstream.internal", ca_file=ca.cert_file)))
        assert r.status in (502, 503)


async def test_spiffe_allow_list_checks_the_peer_identity(ca):
    spiffe = "spiffe://example.org/ns/prod/sa/api"
    cert, key = ca.issue("api", spiffe)          # a SPIFFE SVID: no DNS name at all
    async with tls_origin(cert, key) as (port, _):
        r = await one_request(make_config(cluster=tls_cluster(
            port, ca_file=ca.cert_file, allowed_spiffe_ids=[spiffe])))
        assert r.status == 200
        r = await one_request(make_config(cluster=tls_cluster(
            port, ca_file=ca.cert_file,
            allowed_spiffe_ids=["spiffe://example.org/ns/prod/sa/billing"])))
        assert r.status == 503
        assert r.headers.get("x-omnirelay-reason") == "upstream_identity_mismatch"
        assert spiffe.encode() in r.body


def test_bad_trust_bundle_is_a_config_error(tmp_path):
    bad = tmp_path / "bundle.pem"
    bad.write_text("not a certificate")
    with pytest.raises(omnirelay.config.ConfigError) as e:
        omnirelay.Relay(make_config(cluster=tls_cluster(1, ca_file=str(bad))))
    assert "spec.clusters[0].tls.ca_file" in str(e.value)


async def test_grpc_over_tls_h2_negotiated_by_alpn(ca):
    cert, key = ca.issue("grpc", "grpc.internal")
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}),))
    creds = grpc.ssl_server_credentials(
        [(pathlib.Path(key).read_bytes(), pathlib.Path(cert).read_bytes())])
    port = server.add_secure_port(f"{HOST}:0", creds)
    server.start()
    try:
        cluster = tls_cluster(port, sni="grpc.internal", ca_file=ca.cert_file)
        cluster["protocol"] = "http2"
        async with omnirelay.Relay(make_config(cluster=cluster)) as relay:
            host, p = relay.address()
            async with grpc.aio.insecure_channel(f"{host}:{p}") as ch:
                reply = await ch.unary_unary("/test.Echo/Unary")(b"over tls", timeout=5)
            assert reply == b"over tls"
    finally:
        server.stop(0)


# --------------------------------------------------------------------------- downstream mTLS


def mtls_listener(ca, required: bool = True) -> dict:
    cert, key = ca.issue("edge", "localhost", "127.0.0.1")
    return {"tls": {"cert_file": cert, "key_file": key, "alpn": ["http/1.1"],
                    "client_ca_file": ca.cert_file, "require_client_certificate": required}}


async def curl_https(url: str, *args: str) -> tuple[int, str]:
    import asyncio
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-m", "5", "-k", *args, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, (out + err).decode(errors="replace")


async def test_downstream_mtls_accepts_known_clients_and_forwards_their_identity(ca):
    from harness import Origin
    spiffe = "spiffe://example.org/ns/web/sa/frontend"
    client_cert, client_key = ca.issue("frontend", spiffe, client=True)
    async with Origin() as origin, omnirelay.Relay(make_config(
            origin.port, listener=mtls_listener(ca))) as relay:
        url = relay.url() + "/who"
        rc, out = await curl_https(url, "--cert", client_cert, "--key", client_key,
                                   "-H", "x-forwarded-client-cert: URI=spiffe://forged/x")
        assert rc == 0, out
        seen = origin.seen[-1].headers
        assert seen.getall("x-forwarded-client-cert") == [f"URI={spiffe}"]
        # No client certificate: the handshake is refused and nothing reaches the upstream.
        rc, out = await curl_https(url)
        assert rc != 0
        assert len(origin.seen) == 1
        # A certificate from another CA is refused too.
        other = CA(pathlib.Path(ca.dir), "rogue-ca")
        rogue_cert, rogue_key = other.issue("rogue", "spiffe://example.org/ns/web/sa/x",
                                            client=True)
        rc, out = await curl_https(url, "--cert", rogue_cert, "--key", rogue_key)
        assert rc != 0
        assert len(origin.seen) == 1


async def test_optional_client_certificate(ca):
    from harness import Origin
    async with Origin() as origin, omnirelay.Relay(make_config(
            origin.port, listener=mtls_listener(ca, required=False))) as relay:
        rc, out = await curl_https(relay.url() + "/anon")
        assert rc == 0, out
        assert "x-forwarded-client-cert" not in origin.seen[-1].headers


async def test_rbac_on_the_mtls_peer_identity(ca):
    from harness import Origin
    web_cert, web_key = ca.issue("web", "spiffe://example.org/ns/web/sa/frontend", client=True)
    batch_cert, batch_key = ca.issue("batch", "spiffe://example.org/ns/batch/sa/jobs",
                                     client=True)
    listener = mtls_listener(ca)
    listener["filters"] = [{"name": "omnirelay.filters.http.rbac", "config": {
        "action": "ALLOW",
        "policies": {"web-only": {
            "permissions": [{"any": True}],
            "principals": [{"spiffe_id": {"prefix": "spiffe://example.org/ns/web/"}}]}}}}]
    async with Origin() as origin, omnirelay.Relay(make_config(
            origin.port, listener=listener)) as relay:
        url = relay.url() + "/orders"
        rc, out = await curl_https(url, "--cert", web_cert, "--key", web_key,
                                   "-o", "/dev/null", "-w", "%{http_code}")
        assert (rc, out) == (0, "200"), out
        rc, out = await curl_https(url, "--cert", batch_cert, "--key", batch_key,
                                   "-o", "/dev/null", "-w", "%{http_code}")
        assert (rc, out) == (0, "403"), out
        assert [s.path for s in origin.seen] == ["/orders"]
