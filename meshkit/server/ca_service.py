"""The CA's gRPC services: `CertificateAuthority` (nodes: Sign, GetBundle with the CRLs) and
`CaAdmin` (operators, bearer tokens like MeshAdmin). protos/ca.proto documents both.
`maintain` is the CA's housekeeping loop (CRL file refresh; pruning on the leader)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from cryptography import x509

from omnirelay.config.protos import ca_pb2, ca_pb2_grpc

from ..api.auth import MUTATE, READ, AuthError, Principal, TokenAuthority
from ..ca.authority import (
    DEFAULT_RETENTION,
    DENIED,
    INVALID,
    NOT_FOUND,
    NOT_INITIALIZED,
    UNAUTHENTICATED,
    CaError,
    CertificateAuthority,
    Issued,
)
from ..ca.svid import serial_hex, spiffe_id_of, to_pem

log = logging.getLogger("meshkit.ca")

_STATUS = {
    UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    DENIED: grpc.StatusCode.PERMISSION_DENIED,
    INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    NOT_INITIALIZED: grpc.StatusCode.FAILED_PRECONDITION,
    NOT_FOUND: grpc.StatusCode.NOT_FOUND,
}


def peer_certificate(context: grpc.aio.ServicerContext) -> x509.Certificate | None:
    """The TLS client certificate gRPC verified for this call, if any."""
    pem = (context.auth_context() or {}).get("x509_pem_cert")
    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem[0])
    except ValueError:
        return None


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


async def _abort(context: grpc.aio.ServicerContext, exc: CaError):
    await context.abort(_STATUS.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))


def sign_response(issued: Issued) -> ca_pb2.SignResponse:
    cert = issued.certificate
    return ca_pb2.SignResponse(
        certificate_pem=to_pem(*issued.chain), bundle_pem=to_pem(*issued.bundle),
        serial=issued.serial, spiffe_id=issued.spiffe_id,
        not_before_unix=int(cert.not_valid_before_utc.timestamp()),
        not_after_unix=int(cert.not_valid_after_utc.timestamp()))


class CertificateAuthorityService(ca_pb2_grpc.CertificateAuthorityServicer):
    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca

    async def Sign(self, request, context):
        token = None
        authorization = _authorization(context)
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        peer = peer_certificate(context)
        try:
            spiffe_id = await self.ca.authenticate(request.node_id, token=token, peer=peer)
            how = "bootstrap token" if token is not None and peer is None else "certificate"
            issued = await self.ca.sign_csr(
                request.node_id, request.csr_pem, spiffe_id=spiffe_id,
                actor=f"node:{request.node_id}", ttl=request.ttl_seconds or None)
        except CaError as exc:
            log.warning("refused a certificate for node %r (%s): %s", request.node_id,
                        context.peer(), exc)
            await self.ca.store.append_audit(actor=f"node:{request.node_id}",
                                             action="ca-refused", detail=str(exc))
            await _abort(context, exc)
            raise
        log.info("issued %s (serial %s, until %s) to node %s by %s", spiffe_id, issued.serial,
                 issued.certificate.not_valid_after_utc.isoformat(), request.node_id, how)
        return sign_response(issued)

    async def GetBundle(self, request, context):
        try:
            crls = await self.ca.crls()  # reads the CA state (a rotation by another replica)
        except CaError as exc:
            await _abort(context, exc)
            raise
        return ca_pb2.TrustBundle(bundle_pem=self.ca.bundle_pem(),
                                  trust_domain=self.ca.trust_domain,
                                  revoked_serials=sorted(await self.ca.revoked()),
                                  crl_pem=crls.pem,
                                  crl_next_update_unix=int(crls.next_update))


class CaAdminService(ca_pb2_grpc.CaAdminServicer):
    def __init__(self, ca: CertificateAuthority, tokens: TokenAuthority) -> None:
        self.ca = ca
        self.tokens = tokens

    async def _authorize(self, context, permission: str) -> Principal:
        try:
            return self.tokens.authorize(_authorization(context), permission)
        except AuthError as exc:
            code = (grpc.StatusCode.PERMISSION_DENIED if exc.denied
                    else grpc.StatusCode.UNAUTHENTICATED)
            await context.abort(code, str(exc))
            raise

    def _status(self) -> ca_pb2.CaStatus:
        status = ca_pb2.CaStatus(initialized=self.ca.initialized,
                                 trust_domain=self.ca.trust_domain,
                                 default_ttl_seconds=int(self.ca.default_ttl))
        active = self.ca.active if self.ca.initialized else None
        for a in self.ca.authorities:
            status.authorities.append(ca_pb2.CaAuthority(
                id=a.id, subject=a.cert.subject.rfc4514_string(), key_ref=a.key_ref,
                fingerprint_sha256=a.cert.fingerprint(_sha256()).hex(),
                not_before_unix=int(a.cert.not_valid_before_utc.timestamp()),
                not_after_unix=int(a.cert.not_valid_after_utc.timestamp()),
                active=a is active, overlap_until_unix=int(a.overlap_until or 0),
                active_from_unix=int(a.active_from)))
        if self.ca.initialized:
            status.bundle_pem = self.ca.bundle_pem()
        return status

    async def _call(self, context, coro):
        try:
            return await coro
        except CaError as exc:
            await _abort(context, exc)
            raise

    async def Init(self, request, context):
        principal = await self._authorize(context, MUTATE)
        if request.trust_domain and request.trust_domain != self.ca.trust_domain:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"this MeshKit's trust domain is {self.ca.trust_domain!r} "
                                "(meshkit serve --trust-domain)")
        await self._call(context, self.ca.init(actor=principal.actor))
        return self._status()

    async def Rotate(self, request, context):
        principal = await self._authorize(context, MUTATE)
        prepare = request.prepare_seconds if request.HasField("prepare_seconds") else None
        await self._call(context, self.ca.rotate(actor=principal.actor, prepare=prepare,
                                                 overlap=request.overlap_seconds or None))
        return self._status()

    async def Status(self, request, context):
        await self._authorize(context, READ)
        await self.ca.load()
        return self._status()

    async def RegisterNode(self, request, context):
        principal = await self._authorize(context, MUTATE)
        token = await self._call(context, self.ca.register_node(
            request.node_id, request.spiffe_id, actor=principal.actor,
            rotate_token=request.rotate_token))
        return ca_pb2.RegisterNodeResponse(node_id=request.node_id, spiffe_id=request.spiffe_id,
                                           bootstrap_token=token)

    async def Issue(self, request, context):
        principal = await self._authorize(context, MUTATE)
        issued = await self._call(context, self.ca.issue(
            request.csr_pem, request.spiffe_id, actor=principal.actor,
            ttl=request.ttl_seconds or None))
        return sign_response(issued)

    async def Revoke(self, request, context):
        principal = await self._authorize(context, MUTATE)
        record = await self._call(context, self.ca.revoke(request.serial, actor=principal.actor,
                                                          reason=request.reason))
        return ca_pb2.RevokeResponse(serial=request.serial.lower(),
                                     spiffe_id=record["spiffe_id"])

    async def ListCertificates(self, request, context):
        await self._authorize(context, READ)
        records = await self.ca.issued(include_expired=request.include_expired)
        return ca_pb2.ListCertificatesResponse(
            certificates=[ca_pb2.IssuedCertificate(
                serial=r["serial"], spiffe_id=r["spiffe_id"], node_id=r["node_id"],
                authority_id=r["authority"], not_before_unix=int(r["not_before"]),
                not_after_unix=int(r["not_after"]), revoked=r["revoked"],
                revoke_reason=r["revoke_reason"], issued_by=r["actor"]) for r in records],
            nodes=[ca_pb2.RegisterNodeResponse(node_id=n, spiffe_id=s)
                   for n, s in await self.ca.nodes()])


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


class PeerCheck(grpc.aio.ServerInterceptor):
    """On the mTLS port: the node services (config watch, discovery, status) serve a caller
    only as the node its SVID is registered for: the node id in the request (a watch's Hello)
    must be registered with the certificate's SPIFFE ID, and the certificate must not be
    revoked. (gRPC has verified the chain against the trust bundle at the handshake.)"""

    def __init__(self, ca: CertificateAuthority, services: set[str]) -> None:
        self.ca = ca
        self.services = services

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.rpartition("/")[0].lstrip("/")
        if handler is None or service not in self.services:
            return handler
        return _guarded(handler, self._check)

    async def _check(self, context, message) -> None:
        cert = peer_certificate(context)
        if cert is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "a client certificate (the node's SVID) is required")
        node_id = _node_id(message)
        try:
            await self.ca.authenticate(node_id, peer=cert)
        except CaError as exc:
            log.warning("refused %s (%s) as node %r: %s", context.peer(), _sid(cert), node_id,
                        exc)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))


def _node_id(message) -> str:
    if message is None:
        return ""
    if message.DESCRIPTOR.fields_by_name.get("hello") is not None:
        return message.hello.node.id
    return message.node.id


def _sid(cert: x509.Certificate) -> str:
    try:
        return spiffe_id_of(cert)
    except ValueError:
        return f"serial {serial_hex(cert)}"


HELLO_TIMEOUT = 30.0


async def _prepend(first, rest):
    yield first
    async for item in rest:
        yield item


def _guarded(handler: grpc.RpcMethodHandler, check) -> grpc.RpcMethodHandler:
    """`handler` with `await check(context, first request)` before its behaviour runs."""
    inner = (handler.unary_unary or handler.unary_stream or handler.stream_unary
             or handler.stream_stream)

    async def checked(request, context):
        if handler.request_streaming:  # peek at the first message (a watch's Hello)
            requests = request.__aiter__()
            try:
                first = await asyncio.wait_for(anext(requests), HELLO_TIMEOUT)
            except (StopAsyncIteration, TimeoutError):
                first = None
            await check(context, first)
            return inner(_prepend(first, requests) if first is not None else requests, context)
        await check(context, request)
        return inner(request, context)

    if not handler.response_streaming:
        async def unary(request, context):
            return await (await checked(request, context))

        make = (grpc.stream_unary_rpc_method_handler if handler.request_streaming
                else grpc.unary_unary_rpc_method_handler)
        return make(unary, handler.request_deserializer, handler.response_serializer)

    async def streamed(request, context):
        result = await checked(request, context)
        if hasattr(result, "__aiter__"):
            async for response in result:
                yield response
        else:
            await result

    make = (grpc.stream_stream_rpc_method_handler if handler.request_streaming
            else grpc.unary_stream_rpc_method_handler)
    return make(streamed, handler.request_deserializer, handler.response_serializer)


# Services a node calls on the mTLS port, checked by PeerCheck.
NODE_SERVICES = {"omnirelay.mesh.v1.ConfigWatch", "omnirelay.mesh.v1.EndpointDiscovery",
                 "omnirelay.mesh.v1.NodeStatus"}


async def load_ca(ca: CertificateAuthority, *, needs_ca: bool, actor: str) -> None:
    """Load the CA state; serving mTLS needs a CA, so then create one if there is none."""
    try:
        if not await ca.load() and needs_ca:
            await ca.init(actor=actor, exist_ok=True)  # replicas starting together: one CA
    except CaError as exc:
        raise OSError(f"certificate authority: {exc}") from None
    if ca.initialized:
        ca.write_bundle()
        log.info("CA %s for trust domain %s; %d CA certificates in the bundle", ca.active.id,
                 ca.trust_domain, len(ca.bundle()))
    else:
        log.info("CA for trust domain %s not initialized yet (omnirctl ca init)",
                 ca.trust_domain)


MAINTENANCE_INTERVAL = 300.0


async def maintain(ca: CertificateAuthority, *, leading: Callable[[], bool], actor: str,
                   retention: float = DEFAULT_RETENTION,
                   interval: float = MAINTENANCE_INTERVAL) -> None:
    """Forever, every `interval` seconds: keep the CRL file fresh (signed anew before half its
    validity has passed) and, on the replica that `leading()` (the only one, without an
    election), prune the records of certificates expired more than `retention` ago."""
    interval = min(interval, ca.crl_validity / 4)  # the CRL file is re-signed at half life
    while True:
        try:
            if await ca.load():
                await ca.write_crl()
                if leading():
                    pruned = await ca.prune(retention=retention, actor=actor)
                    if pruned:
                        await ca.store.append_audit(
                            actor=actor, action="ca-prune",
                            detail=f"{pruned} expired certificates past {retention:g}s")
        except asyncio.CancelledError:
            raise
        except Exception:  # a store hiccup: try again next round
            log.exception("CA maintenance failed; retrying in %gs", interval)
        await asyncio.sleep(interval)


def interceptors(ca: CertificateAuthority | None, tls) -> list[grpc.aio.ServerInterceptor]:
    return [PeerCheck(ca, NODE_SERVICES)] if ca is not None and tls is not None else []


def add_services(server: grpc.aio.Server, ca: CertificateAuthority,
                 tokens: TokenAuthority) -> None:
    ca_pb2_grpc.add_CertificateAuthorityServicer_to_server(CertificateAuthorityService(ca),
                                                           server)
    ca_pb2_grpc.add_CaAdminServicer_to_server(CaAdminService(ca, tokens), server)

