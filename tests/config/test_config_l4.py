"""L4 listeners (tcp, tls_passthrough), TLS termination and HTTP/2 settings in the config:
decoding, normalization and every rule, checked by the exact "path: message" lines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from omnirelay.config import (
    ConfigError,
    Http2Options,
    SniRoute,
    TcpProxy,
    TlsContext,
    config_to_dict,
    load_config,
)

Doc = dict[str, Any]
Issues = Callable[[Any], list[str]]
L0 = "spec.listeners[0]"


def _listener(doc: Doc, index: int = 0) -> Doc:
    return doc["spec"]["listeners"][index]


def _tcp(doc: Doc, **fields: Any) -> Doc:
    lst = _listener(doc)
    lst.update(protocol="tcp", tcp={"cluster": "api", **fields})
    return lst


def _passthrough(doc: Doc, *routes: dict) -> Doc:
    lst = _listener(doc)
    lst.update(protocol="tls_passthrough",
               sni_routes=list(routes) or [{"server_names": ["*"], "cluster": "web"}])
    return lst


# -- valid documents ----------------------------------------------------------------------------


def test_tcp_listener(doc: Doc) -> None:
    _tcp(doc, idle_timeout="30m")
    _listener(doc)["buffer_limit"] = "256KiB"
    listener = load_config(doc).spec.listeners[0]
    assert listener.protocol == "tcp"
    assert listener.tcp == TcpProxy(cluster="api", idle_timeout=1800.0)
    assert listener.sni_routes == () and listener.tls is None and listener.routes is None
    assert listener.buffer_limit == 256 * 1024


def test_tcp_defaults(doc: Doc) -> None:
    _tcp(doc)
    assert load_config(doc).spec.listeners[0].tcp == TcpProxy("api", 3600.0)


def test_tls_passthrough_listener_normalizes_names(doc: Doc) -> None:
    _passthrough(
        doc,
        {"server_names": ["API.Example.com", "*.Api.Example.COM"], "cluster": "api"},
        {"server_names": ["*"], "cluster": "web"},
    )
    _listener(doc)["idle_timeout"] = "10m"
    listener = load_config(doc).spec.listeners[0]
    assert listener.sni_routes == (
        SniRoute(("api.example.com", "*.api.example.com"), "api"),
        SniRoute(("*",), "web"),
    )
    assert listener.idle_timeout == 600.0 and listener.tcp is None


def test_tls_termination_and_http2_options(doc: Doc) -> None:
    _listener(doc).update(
        tls={"cert_file": "/etc/omnirelay/cert.pem", "key_file": "/etc/omnirelay/key.pem"},
        http2={"max_concurrent_streams": 250, "initial_stream_window_size": "1MiB"},
    )
    listener = load_config(doc).spec.listeners[0]
    # The files are not read here: they are loaded when the listener is built.
    assert listener.tls == TlsContext("/etc/omnirelay/cert.pem", "/etc/omnirelay/key.pem",
                                      ("h2", "http/1.1"))
    assert listener.http2 == Http2Options(250, 1 << 20, 1048576)
    _listener(doc)["tls"]["alpn"] = ["http/1.1"]
    assert load_config(doc).spec.listeners[0].tls.alpn == ("http/1.1",)


def test_cluster_protocol_and_http2(doc: Doc) -> None:
    doc["spec"]["clusters"][0].update(
        protocol="http2",
        http2={"initial_connection_window_size": 65535, "max_concurrent_streams": 2**31 - 1},
    )
    cluster = load_config(doc).spec.clusters[0]
    assert cluster.protocol == "http2"
    assert cluster.http2 == Http2Options(2**31 - 1, 262144, 65535)
    assert load_config(doc).spec.clusters[1].protocol == "http1"


def test_grpc_retry_conditions(doc: Doc) -> None:
    grpc = ["cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"]
    doc["spec"]["routes"][0]["retry_policy"] = {"retry_on": ["5xx", *grpc]}
    assert load_config(doc).spec.routes[0].retry_policy.retry_on == ("5xx", *grpc)


def test_l4_listener_normalized_document_loads_back(doc: Doc) -> None:
    # config_to_dict spells out every field, HTTP-only ones included (at their defaults).
    _tcp(doc)
    doc["spec"]["listeners"].append({
        "name": "tls", "address": "::", "port": 443, "protocol": "tls_passthrough",
        "sni_routes": [{"server_names": ["a.test"], "cluster": "web"}]})
    config = load_config(doc)
    normalized = config_to_dict(config)
    assert normalized["spec"]["listeners"][0]["routes"] is None
    assert normalized["spec"]["listeners"][0]["http2"] == {
        "max_concurrent_streams": 100, "initial_stream_window_size": 262144,
        "initial_connection_window_size": 1048576}
    assert load_config(normalized) == config


def test_http_listener_route_semantics_are_unchanged(doc: Doc) -> None:
    _listener(doc)["routes"] = []
    assert load_config(doc).spec.listeners[0].routes == ()
    del _listener(doc)["routes"]
    assert load_config(doc).spec.listeners[0].routes is None


def test_l4_example_has_a_schema_mapping_everywhere(doc: Doc) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "l4.yaml"
    document = config_to_dict(load_config(example))
    for where in (
        document["spec"]["listeners"][0]["tcp"],
        document["spec"]["listeners"][0]["http2"],
        document["spec"]["listeners"][1]["sni_routes"][0],
        document["spec"]["clusters"][0]["http2"],
    ):
        where["zz_extra"] = 1
        with pytest.raises(ConfigError) as caught:
            load_config(document)
        del where["zz_extra"]
        (issue,) = caught.value.issues
        assert issue.message.startswith("unknown field (allowed: ")
    load_config(document)


# -- rules --------------------------------------------------------------------------------------


def _all_http_fields_on_tcp(doc: Doc) -> None:
    _tcp(doc).update(
        routes=["api"],
        filters=[{"name": "omnirelay.filters.http.headers"}],
        tls={"cert_file": "c.pem", "key_file": "k.pem"},
        http2={"max_concurrent_streams": 10},
        max_header_bytes="32KiB",
        request_timeout="5s",
        via="edge",
        xff_trusted_hops=1,
        idle_timeout="1m",
    )


_ONLY_HTTP = "only allowed on 'http' listeners (protocol is 'tcp')"
_ONLY_HTTP_TLS = "only allowed on 'http' listeners (protocol is 'tls_passthrough')"

RULES: list[tuple[Callable[[Doc], Any], list[str]]] = [
    (
        lambda d: _listener(d).update(protocol="udp"),
        [f"{L0}.protocol: unsupported value 'udp' (allowed: http, tcp, tls_passthrough)"],
    ),
    (
        lambda d: _listener(d).update(protocol="tcp"),
        [f"{L0}.tcp: required when protocol is 'tcp'"],
    ),
    (
        lambda d: _listener(d).update(protocol="tcp", tcp=None),
        [f"{L0}.tcp: required when protocol is 'tcp'"],
    ),
    (
        lambda d: _listener(d).update(tcp={"cluster": "api"}),
        [f"{L0}.tcp: only allowed when protocol is 'tcp' (protocol is 'http')"],
    ),
    (
        lambda d: _listener(d).update(protocol="tls_passthrough"),
        [(f"{L0}.sni_routes: at least one SNI route is required when protocol is "
         "'tls_passthrough'")],
    ),
    (
        lambda d: _listener(d).update(protocol="tls_passthrough", sni_routes=[]),
        [(f"{L0}.sni_routes: at least one SNI route is required when protocol is "
         "'tls_passthrough'")],
    ),
    (
        lambda d: _tcp(d).update(sni_routes=[{"server_names": ["*"], "cluster": "api"}]),
        [f"{L0}.sni_routes: only allowed when protocol is 'tls_passthrough' (protocol is 'tcp')"],
    ),
    (
        lambda d: _listener(d).update(sni_routes=[{"server_names": ["*"], "cluster": "api"}]),
        [f"{L0}.sni_routes: only allowed when protocol is 'tls_passthrough' (protocol is 'http')"],
    ),
    (
        _all_http_fields_on_tcp,
        [
            (f"{L0}.routes: {_ONLY_HTTP}; a 'tcp' listener forwards every connection to "
            "tcp.cluster"),
            f"{L0}.filters: {_ONLY_HTTP}",
            f"{L0}.tls: {_ONLY_HTTP}; to terminate TLS, use protocol 'http' with 'tls'",
            f"{L0}.http2: {_ONLY_HTTP}",
            f"{L0}.max_header_bytes: {_ONLY_HTTP}",
            f"{L0}.request_timeout: {_ONLY_HTTP}",
            f"{L0}.via: {_ONLY_HTTP}",
            f"{L0}.xff_trusted_hops: {_ONLY_HTTP}",
            f"{L0}.idle_timeout: not used by 'tcp' listeners; set tcp.idle_timeout instead",
        ],
    ),
    (
        lambda d: _passthrough(d).update(routes=[], tls={"cert_file": "c", "key_file": "k"}),
        [
            (f"{L0}.routes: {_ONLY_HTTP_TLS}; a 'tls_passthrough' listener routes by SNI with "
            "sni_routes"),
            (f"{L0}.tls: {_ONLY_HTTP_TLS}; 'tls_passthrough' forwards TLS untouched (to "
            "terminate TLS, use protocol 'http')"),
        ],
    ),
    (
        # Route references of an L4 listener are not graph-checked on top: one issue.
        lambda d: _tcp(d).update(routes=["nope"]),
        [(f"{L0}.routes: {_ONLY_HTTP}; a 'tcp' listener forwards every connection to "
         "tcp.cluster")],
    ),
    (
        lambda d: _tcp(d, cluster="apii"),
        [f"{L0}.tcp.cluster: unknown cluster 'apii' (did you mean 'api'? known: api, web)"],
    ),
    (
        lambda d: _listener(d).update(protocol="tcp", tcp={}),
        [f"{L0}.tcp.cluster: missing required field"],
    ),
    (
        lambda d: _tcp(d, idle_timeout="-1s"),
        [f"{L0}.tcp.idle_timeout: invalid duration '-1s': must not be negative"],
    ),
    (
        lambda d: _tcp(d, idel_timeout="1s"),
        [f"{L0}.tcp.idel_timeout: unknown field (did you mean 'idle_timeout'?)"],
    ),
    (
        lambda d: _passthrough(
            d,
            {"server_names": ["a.test"], "cluster": "api"},
            {"server_names": ["b.test"], "cluster": "wbe"},
        ),
        [(f"{L0}.sni_routes[1].cluster: unknown cluster 'wbe' (did you mean 'web'? known: api, "
         "web)")],
    ),
    (
        lambda d: _passthrough(d, {"server_names": [], "cluster": "api"}),
        [f"{L0}.sni_routes[0].server_names: at least one server name is required"],
    ),
    (
        lambda d: _passthrough(d, {"cluster": "api"}),
        [f"{L0}.sni_routes[0].server_names: missing required field"],
    ),
    (
        lambda d: _passthrough(d, {"server_names": ["a.test", "A.test"], "cluster": "api"}),
        [(f"{L0}.sni_routes[0].server_names[1]: server name 'a.test' is listed twice (first at "
         "index 0)")],
    ),
    (
        lambda d: _passthrough(
            d,
            {"server_names": ["a.test", "*.b.test"], "cluster": "api"},
            {"server_names": ["c.test", "*.B.test"], "cluster": "web"},
        ),
        [(f"{L0}.sni_routes[1].server_names[1]: server name '*.b.test' is already routed by "
         f"{L0}.sni_routes[0]")],
    ),
    (
        lambda d: _passthrough(
            d,
            {"server_names": ["a.test", "*"], "cluster": "api"},
            {"server_names": ["c.test"], "cluster": "web"},
        ),
        [(f"{L0}.sni_routes[1]: unreachable: {L0}.sni_routes[0] already matches every server "
         "name with '*'")],
    ),
    (
        lambda d: _passthrough(
            d,
            {"server_names": [
                "*.*.a.test", "a*.test", "10.0.0.1", "[::1]", "::1", "a.test:443", "a.test.",
                "", "a b", 7,
            ], "cluster": "api"},
        ),
        [
            (f"{L0}.sni_routes[0].server_names[0]: invalid server name '*.*.a.test': '*' is only "
            "allowed alone or as a leading '*.' label"),
            (f"{L0}.sni_routes[0].server_names[1]: invalid server name 'a*.test': '*' is only "
            "allowed alone or as a leading '*.' label"),
            (f"{L0}.sni_routes[0].server_names[2]: invalid server name '10.0.0.1': SNI carries "
            "DNS names, not IP addresses"),
            (f"{L0}.sni_routes[0].server_names[3]: invalid server name '[::1]': SNI carries DNS "
            "names, not IP addresses"),
            (f"{L0}.sni_routes[0].server_names[4]: invalid server name '::1': SNI carries DNS "
            "names, not IP addresses"),
            (f"{L0}.sni_routes[0].server_names[5]: invalid server name 'a.test:443': use '*', "
            "'*.example.com' or an exact DNS name (no port, no trailing dot)"),
            (f"{L0}.sni_routes[0].server_names[6]: invalid server name 'a.test.': use '*', "
            "'*.example.com' or an exact DNS name (no port, no trailing dot)"),
            f"{L0}.sni_routes[0].server_names[7]: must not be empty",
            (f"{L0}.sni_routes[0].server_names[8]: invalid server name 'a b': use '*', "
            "'*.example.com' or an exact DNS name (no port, no trailing dot)"),
            f"{L0}.sni_routes[0].server_names[9]: expected string, got integer (quote it)",
        ],
    ),
    (
        lambda d: _listener(d).update(tls={"cert_file": "", "key_file": 3}),
        [f"{L0}.tls.cert_file: must not be empty",
         f"{L0}.tls.key_file: expected string, got integer (quote it)"],
    ),
    (
        lambda d: _listener(d).update(tls={"cert_file": "c.pem"}),
        [f"{L0}.tls.key_file: missing required field"],
    ),
    (
        lambda d: _listener(d).update(tls={"cert_file": "c", "key_file": "k", "alpn": []}),
        [f"{L0}.tls.alpn: at least one ALPN protocol is required"],
    ),
    (
        lambda d: _listener(d).update(
            tls={"cert_file": "c", "key_file": "k", "alpn": ["h2", "h3", "h2"]}),
        [f"{L0}.tls.alpn[1]: unsupported value 'h3' (allowed: h2, http/1.1)"],
    ),
    (
        lambda d: _listener(d).update(
            tls={"cert_file": "c", "key_file": "k", "alpn": ["http/1.1", "h2", "http/1.1"]}),
        [f"{L0}.tls.alpn[2]: protocol 'http/1.1' is listed twice (first at index 0)"],
    ),
    (
        lambda d: _listener(d).update(tls={"cert": "c", "cert_file": "c", "key_file": "k"}),
        [f"{L0}.tls.cert: unknown field (did you mean 'cert_file'?)"],
    ),
    (
        lambda d: _listener(d).update(http2={
            "max_concurrent_streams": 0,
            "initial_stream_window_size": 65534,
            "initial_connection_window_size": 2**31,
        }),
        [
            f"{L0}.http2.max_concurrent_streams: must be between 1 and 2147483647, got 0",
            (f"{L0}.http2.initial_stream_window_size: must be between 65535 and 2147483647 "
            "bytes, got 65534"),
            (f"{L0}.http2.initial_connection_window_size: must be between 65535 and 2147483647 "
            "bytes, got 2147483648"),
        ],
    ),
    (
        lambda d: _listener(d).update(http2=None),
        [f"{L0}.http2: expected mapping, got null"],
    ),
    (
        lambda d: d["spec"]["clusters"][0].update(protocol="h2"),
        ["spec.clusters[0].protocol: unsupported value 'h2' (allowed: http1, http2)"],
    ),
    (
        lambda d: d["spec"]["clusters"][0].update(http2={"max_concurrent_streams": True}),
        ["spec.clusters[0].http2.max_concurrent_streams: expected integer, got boolean"],
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), RULES)
def test_l4_rules(doc: Doc, issues_of: Issues, mutate: Callable[[Doc], Any],
                  expected: list[str]) -> None:
    mutate(doc)
    assert issues_of(doc) == expected


def test_defaults_on_l4_listeners_are_accepted(doc: Doc) -> None:
    # Spelling out an HTTP-only field at its default value is not a mistake worth refusing
    # (the normalized document does exactly that).
    _tcp(doc).update(routes=None, filters=[], tls=None, max_header_bytes=65536, via="omnirelay",
                     idle_timeout=300)
    load_config(doc)
