"""Listener sockets as the supervisor sees them: port reservations and binding changes.

A listener configured with port 0 must get the same port in every worker, so the
supervisor picks it once. It holds a bound (never listening) SO_REUSEPORT socket on
that port for its whole life: the kernel cannot hand the port to anyone else, and
workers join the same reuseport group when they bind it.

A fixed port is probed first without SO_REUSEPORT: workers bind with it, and would
otherwise quietly share the port with another process (say, a second omnirelay).
"""
from __future__ import annotations

import socket

from omnirelay.config import Config


class BindError(OSError):
    """A listener's address cannot be bound; the message names the listener."""


class Reservations:
    """Ports picked for the port-0 listeners of a config, held until `close()`.

    Raises BindError if a fixed port is taken or an address cannot be bound.
    """

    def __init__(self, config: Config):
        self.ports: dict[str, int] = {}
        self._socks: list[socket.socket] = []
        try:
            for lst in config.spec.listeners:
                try:
                    if lst.port == 0:
                        sock = _bound_socket(lst.address, 0, reuse_port=True)
                        self._socks.append(sock)
                        self.ports[lst.name] = sock.getsockname()[1]
                    else:
                        _bound_socket(lst.address, lst.port, reuse_port=False).close()
                except OSError as e:
                    raise BindError(f"listener {lst.name!r}: cannot listen on "
                                    f"{lst.address}:{lst.port}: {e.strerror or e}") from None
        except BaseException:
            self.close()
            raise

    def fds(self) -> list[int]:
        return [s.fileno() for s in self._socks]

    def close(self) -> None:
        for s in self._socks:
            s.close()
        self._socks.clear()


def _bound_socket(address: str, port: int, *, reuse_port: bool) -> socket.socket:
    family, type_, proto, _, addr = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the workers do
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # asyncio binds IPv6 listeners v6-only; match it so both share the port.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def binding_changes(old: Config, new: Config) -> list[str]:
    """Listener socket changes between two configs; workers cannot apply these on reload."""
    before = {lst.name: (lst.address, lst.port) for lst in old.spec.listeners}
    after = {lst.name: (lst.address, lst.port) for lst in new.spec.listeners}
    changes = [f"listener {name!r} removed" for name in before if name not in after]
    for name, (address, port) in after.items():
        if name not in before:
            changes.append(f"listener {name!r} added ({address}:{port})")
        elif before[name] != (address, port):
            was = "{}:{}".format(*before[name])
            changes.append(f"listener {name!r} moves from {was} to {address}:{port}")
    return changes
