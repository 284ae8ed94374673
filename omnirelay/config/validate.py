"""Graph checks across spec sections: unique names, resolvable references, distinct sockets.

They work on outlines (names, references and sockets read from each raw entry) rather than on
decoded entries, so an entry with an unrelated field problem still has its references checked
and one pass reports everything.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigIssue, item_path

_LISTED_NAMES = 10  # longer "known: ..." lists are cut short


@dataclass(frozen=True, slots=True)
class Outline:
    """What graph checks need from one spec entry. Anything unreadable is None (its field issue
    is reported elsewhere); `routes` keeps None items so indices match the document."""

    name: str | None
    cluster: str | None = None  # routes only
    weighted_clusters: tuple[str | None, ...] = ()  # routes only; cluster names
    mirrors: tuple[str | None, ...] = ()  # routes only; cluster names
    routes: tuple[str | None, ...] | None = None  # listeners only; None = all routes
    address: str | None = None  # listeners only
    port: int | None = None  # listeners only
    tcp_cluster: str | None = None  # tcp listeners only
    sni_clusters: tuple[str | None, ...] = ()  # tls_passthrough listeners only; by SNI route


def graph_issues(
    listeners: Sequence[Outline], routes: Sequence[Outline], clusters: Sequence[Outline]
) -> list[ConfigIssue]:
    """Issues for one spec whose sections are given as outlines in document order."""
    issues: list[ConfigIssue] = []
    for key, section in (("listeners", listeners), ("routes", routes), ("clusters", clusters)):
        issues += _duplicate_names(f"spec.{key}", key[:-1], section)
    if not listeners:
        issues.append(ConfigIssue("spec.listeners", "at least one listener is required"))
    cluster_names = [c.name for c in clusters if c.name is not None]
    for index, route in enumerate(routes):
        issues += _cluster_refs(item_path("spec.routes", index), route, cluster_names)
    route_names = [r.name for r in routes if r.name is not None]
    for index, listener in enumerate(listeners):
        issues += _route_refs(item_path("spec.listeners", index), listener, route_names)
        issues += _listener_cluster_refs(
            item_path("spec.listeners", index), listener, cluster_names
        )
    issues += _socket_conflicts(listeners)
    return issues


def _duplicate_names(path: str, kind: str, section: Sequence[Outline]) -> list[ConfigIssue]:
    issues = []
    first: dict[str, int] = {}
    for index, name in enumerate(entry.name for entry in section):
        if name is None:
            continue
        if name in first:
            issues.append(
                ConfigIssue(
                    f"{item_path(path, index)}.name",
                    f"duplicate {kind} name {name!r} "
                    f"(first defined at {item_path(path, first[name])})",
                )
            )
        else:
            first[name] = index
    return issues


def _cluster_refs(path: str, route: Outline, cluster_names: list[str]) -> list[ConfigIssue]:
    refs = [(f"{path}.cluster", route.cluster)]
    refs += [
        (f"{item_path(f'{path}.weighted_clusters', i)}.name", name)
        for i, name in enumerate(route.weighted_clusters)
    ]
    refs += [
        (f"{item_path(f'{path}.mirrors', i)}.cluster", name) for i, name in enumerate(route.mirrors)
    ]
    return [
        ConfigIssue(where, _unknown("cluster", name, cluster_names))
        for where, name in refs
        if name is not None and name not in cluster_names
    ]


def _listener_cluster_refs(
    path: str, listener: Outline, cluster_names: list[str]
) -> list[ConfigIssue]:
    """The clusters an L4 listener forwards to: `tcp.cluster` and `sni_routes[i].cluster`."""
    refs = [(f"{path}.tcp.cluster", listener.tcp_cluster)]
    refs += [
        (f"{item_path(f'{path}.sni_routes', i)}.cluster", name)
        for i, name in enumerate(listener.sni_clusters)
    ]
    return [
        ConfigIssue(where, _unknown("cluster", name, cluster_names))
        for where, name in refs
        if name is not None and name not in cluster_names
    ]


def _route_refs(path: str, listener: Outline, route_names: list[str]) -> list[ConfigIssue]:
    if listener.routes is None:
        return []
    issues = []
    first: dict[str, int] = {}
    for index, name in enumerate(listener.routes):
        entry = item_path(f"{path}.routes", index)
        if name is None:
            continue
        if name not in route_names:
            issues.append(ConfigIssue(entry, _unknown("route", name, route_names)))
        elif name in first:
            message = f"route {name!r} is listed twice (first at index {first[name]})"
            issues.append(ConfigIssue(entry, message))
        else:
            first[name] = index
    return issues


def _socket_conflicts(listeners: Sequence[Outline]) -> list[ConfigIssue]:
    # Equal addresses are compared parsed, so "::1" and "0:0:0:0:0:0:0:1" collide. A wildcard
    # and a specific address on one port may coexist (with SO_REUSEPORT the specific one wins).
    issues = []
    bound: dict[tuple[object, int], tuple[int, Outline]] = {}
    for index, listener in enumerate(listeners):
        if listener.address is None or not listener.port:
            continue
        key = (_address_key(listener.address), listener.port)
        if key in bound:
            first_index, first = bound[key]
            owner = item_path("spec.listeners", first_index)
            if first.name is not None:
                owner = f"listener {first.name!r} ({owner})"
            path = f"{item_path('spec.listeners', index)}.port"
            issues.append(ConfigIssue(path, f"{_socket(listener)} is already used by {owner}"))
        else:
            bound[key] = (index, listener)
    return issues


def admin_socket_issues(address: str, port: int, listeners: Sequence[Any]) -> list[ConfigIssue]:
    """The admin listener may not take the socket of a listener (decoded `Listener`s)."""
    if not port:
        return []
    for index, listener in enumerate(listeners):
        if listener.port == port and _address_key(listener.address) == _address_key(address):
            owner = f"listener {listener.name!r} ({item_path('spec.listeners', index)})"
            return [ConfigIssue("admin.port", f"{_socket(listener)} is already used by {owner}")]
    return []


def _address_key(address: str) -> object:
    return address if address == "localhost" else ipaddress.ip_address(address)


def _socket(listener: Outline) -> str:
    host = f"[{listener.address}]" if ":" in listener.address else listener.address
    return f"{host}:{listener.port}"


def _unknown(kind: str, name: str, known: list[str]) -> str:
    if not known:
        return f"unknown {kind} {name!r} (no {kind}s are defined)"
    names = sorted(set(known))
    listing = ", ".join(names[:_LISTED_NAMES])
    if len(names) > _LISTED_NAMES:
        listing += f", ... ({len(names) - _LISTED_NAMES} more)"
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown {kind} {name!r} ({hint}known: {listing})"
