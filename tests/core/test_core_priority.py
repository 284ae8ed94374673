"""Priority levels of the core Cluster (Envoy's priority load and failover), driven
directly through `choose()` / `priority_loads()`: no sockets involved."""
from __future__ import annotations

import collections
import random

import pytest

from omnirelay._core import Cluster

POLICIES = ["round_robin", "least_request", "random", "ring_hash", "maglev"]
PICKS = 4000


def make(p0=4, p1=4, lb="round_robin", weights0=None):
    c = Cluster("c")
    weights0 = weights0 or [1] * p0
    c.set_endpoints([(f"10.0.0.{i}", 80, weights0[i], 0, "zone-a") for i in range(p0)]
                    + [(f"10.0.1.{i}", 80, 1, 1, "zone-b") for i in range(p1)])
    hashing = lb in ("ring_hash", "maglev")
    c.set_lb(lb, "x-user" if hashing else None)
    return c


def at(c, priority):
    return [e for e in c.endpoints if e.priority == priority]


def p1_share(c, n=PICKS):
    return sum(c.choose().priority == 1 for _ in range(n)) / n


@pytest.mark.parametrize("lb", POLICIES)
def test_healthy_p0_takes_all_traffic(lb):
    c = make(lb=lb)
    assert c.priority_loads() == [100, 0]
    assert {c.choose().priority for _ in range(500)} == {0}


@pytest.mark.parametrize("lb", POLICIES)
def test_overprovisioning_hides_one_unhealthy_of_four(lb):
    c = make(lb=lb)
    sick = at(c, 0)[0]
    sick.healthy = False
    # min(100, 1.4 x 75) = 100: P0 keeps everything, minus the sick endpoint.
    assert c.priority_loads() == [100, 0]
    picked = {c.choose() for _ in range(500)}
    assert {e.priority for e in picked} == {0} and sick not in picked


@pytest.mark.parametrize("lb", POLICIES)
def test_degraded_p0_spills_to_p1(lb):
    c = make(lb=lb)
    for e in at(c, 0)[1:]:
        e.healthy = False
    assert c.priority_loads() == [35, 65]
    assert p1_share(c) == pytest.approx(0.65, abs=0.05)
    survivor = at(c, 0)[0]
    assert {e for e in (c.choose() for _ in range(500)) if e.priority == 0} == {survivor}


@pytest.mark.parametrize("lb", POLICIES)
def test_dead_p0_sends_everything_to_p1(lb):
    c = make(lb=lb)
    for e in at(c, 0):
        e.healthy = False
    assert c.priority_loads() == [0, 100]
    assert {c.choose().priority for _ in range(500)} == {1}


@pytest.mark.parametrize("lb", POLICIES)
def test_nothing_available_panics_on_p0(lb):
    c = make(lb=lb)
    for e in c.endpoints:
        e.healthy = False
    assert c.priority_loads() == [100, 0]
    picked = [c.choose() for _ in range(500)]
    assert {e.priority for e in picked} == {0}
    if lb != "maglev" and lb != "ring_hash":
        assert set(picked) == set(at(c, 0))     # panic spreads over the whole level


def test_recovery_moves_load_back():
    c = make()
    for e in at(c, 0):
        e.healthy = False
    assert c.priority_loads() == [0, 100]
    for e in at(c, 0):
        e.healthy = True
    assert c.priority_loads() == [100, 0]
    assert {c.choose().priority for _ in range(200)} == {0}


def test_overprovisioning_factor():
    c = make()
    at(c, 0)[0].healthy = False
    c.set_overprovisioning(1.0)
    assert c.overprovisioning == 1.0
    assert c.priority_loads() == [75, 25]
    assert p1_share(c) == pytest.approx(0.25, abs=0.05)
    with pytest.raises(ValueError):
        c.set_overprovisioning(0)


def test_loads_are_normalized_when_total_health_is_short():
    c = make()
    for e in at(c, 0)[1:] + at(c, 1)[1:]:
        e.healthy = False
    # 35 + 35 = 70 < 100: both scale up to 50.
    assert c.priority_loads() == [50, 50]
    assert p1_share(c) == pytest.approx(0.5, abs=0.05)


def test_weights_set_health():
    c = make(weights0=[7, 1, 1, 1])
    heavy, *light = at(c, 0)
    heavy.healthy = False
    # 3 of 10 weight available: int(1.4 x 30) = 42.
    assert c.priority_loads() == [42, 58]
    assert p1_share(c) == pytest.approx(0.58, abs=0.05)
    heavy.healthy = True
    for e in light:
        e.healthy = False
    # 7 of 10: min(100, 1.4 x 70) = 98.
    assert c.priority_loads() == [98, 2]


def test_tiny_available_weight_still_gets_load():
    c = make(weights0=[1, 200, 200, 200])
    for e in at(c, 0)[1:]:
        e.healthy = False
    for e in at(c, 1):
        e.healthy = False
    # 1.4 x 100 / 601 < 1%: still preferred over panic.
    assert c.priority_loads() == [100, 0]
    assert {c.choose() for _ in range(100)} == {at(c, 0)[0]}


@pytest.mark.parametrize("lb", ["round_robin", "least_request", "random"])
def test_ejection_via_report_moves_load(lb):
    c = make(lb=lb)
    c.set_outlier_detection(consecutive_5xx=2, base_ejection=30.0, max_percent=100)
    for e in at(c, 0)[1:]:
        c.report(e, 500)
        c.report(e, 503)
        assert e.ejected
    assert c.priority_loads() == [35, 65]
    assert p1_share(c) == pytest.approx(0.65, abs=0.05)
    # Back from ejection once it expires.
    c.sweep(max(e.ejected_until for e in c.endpoints))
    assert not any(e.ejected for e in c.endpoints)
    assert c.priority_loads() == [100, 0]


def test_ejected_setter_and_health_are_independent():
    c = make()
    e = at(c, 0)[0]
    e.ejected = True
    e.healthy = False
    e.ejected = False
    assert not e.healthy and not e.ejected
    e.healthy = True
    assert e.healthy
    for other in at(c, 0)[1:]:
        other.ejected = True
    assert c.priority_loads() == [35, 65]


@pytest.mark.parametrize("lb", ["ring_hash", "maglev"])
def test_hash_keys_stick_within_a_level(lb):
    c = make(lb=lb)
    for e in at(c, 0)[1:]:
        e.healthy = False
    keys = [random.getrandbits(64) for _ in range(PICKS)]
    before = {k: c.choose(k) for k in keys}
    assert all(c.choose(k) is before[k] for k in keys)      # deterministic per key
    share = sum(ep.priority == 1 for ep in before.values()) / len(keys)
    assert share == pytest.approx(0.65, abs=0.05)
    # Losing one of four P1 endpoints leaves the loads alone (1.4 x 75 >= 100):
    # only that endpoint's keys move, and they stay in P1.
    gone = at(c, 1)[0]
    gone.healthy = False
    assert c.priority_loads() == [35, 65]
    for k, ep in before.items():
        now = c.choose(k)
        if ep is gone:
            assert now.priority == 1 and now is not gone
        else:
            assert now is ep
    used = collections.Counter(ep for ep in before.values() if ep.priority == 1)
    assert len(used) == 4           # the keys were spread over the whole level


def test_set_endpoints_keeps_identity_and_state():
    c = make()
    a, b, d, e = at(c, 0)
    a.healthy = False
    b.ejected = True
    b.ejections = 2
    # Move a and b to P1, drop d, reweight e, move the old P1 up to P0.
    specs = [(a.host, 80, 3, 1, "zone-c"), (b.host, 80, 1, 1, None), (e.host, 80, 5, 0, "zone-a")]
    specs += [(x.host, 80, 1, 0, "zone-b") for x in at(c, 1)]
    old_p1 = at(c, 1)
    c.set_endpoints(specs)
    assert [x.host for x in c.endpoints] == [s[0] for s in specs]
    assert c.endpoints[0] is a and c.endpoints[1] is b and c.endpoints[2] is e
    assert c.endpoints[3:] == old_p1
    assert d not in c.endpoints
    assert (a.priority, a.weight, a.locality, a.healthy) == (1, 3, "zone-c", False)
    assert (b.priority, b.locality, b.ejected, b.ejections) == (1, None, True, 2)
    assert (e.priority, e.weight) == (0, 5)
    # P0 (e + old P1) all available; P1 has nothing available.
    assert c.priority_loads() == [100, 0]
    assert {x.priority for x in (c.choose() for _ in range(200))} == {0}
    for x in at(c, 0):
        x.healthy = False
    assert c.priority_loads() == [100, 0]     # panic on P0: P1 has nothing either
    a.healthy = True
    assert c.priority_loads() == [0, 100]
    assert {c.choose() for _ in range(50)} == {a}


def test_three_tuples_and_bad_priorities():
    c = Cluster("c")
    c.set_endpoints([("h", 1, 2), ("i", 1, 1)])
    assert [(e.priority, e.locality, e.weight) for e in c.endpoints] == [(0, None, 2), (0, None, 1)]
    assert c.priority_loads() == [100]
    kept = list(c.endpoints)
    with pytest.raises(ValueError):
        c.set_endpoints([("h", 1, 1, 0, None), ("j", 1, 1, 8, None)])
    assert c.endpoints == kept      # rejected before anything changed


def test_sparse_priorities_and_empty_cluster():
    c = Cluster("c")
    assert c.priority_loads() == [] and c.choose() is None
    c.set_endpoints([("h", 1, 1, 2, None), ("i", 1, 1, 5, None)])
    assert c.priority_loads() == [0, 0, 100, 0, 0, 0]
    c.endpoints[0].healthy = False
    assert c.priority_loads() == [0, 0, 0, 0, 0, 100]
    c.endpoints[1].healthy = False
    assert c.priority_loads() == [0, 0, 100, 0, 0, 0]      # panic on the first level
    assert c.choose() is c.endpoints[0]


def test_stats_show_priority_and_locality():
    c = make(p0=1, p1=1)
    c.endpoints[0].healthy = False
    st = c.stats()
    assert st["priority_loads"] == [0, 100]
    assert [(e["priority"], e["locality"], e["healthy"]) for e in st["endpoints"]] == [
        (0, "zone-a", False), (1, "zone-b", True)]


class _Transport:
    """The transport surface an idle pooled connection touches."""

    def __init__(self):
        self.closed = False

    def write(self, data):
        pass

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    abort = close

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def get_extra_info(self, name, default=None):
        return default


def test_sweep_gates_unejection_by_interval_but_not_idle_sweeping():
    c = Cluster("c", idle_timeout=5.0)
    c.set_endpoints([("h", 1, 1, 0, None), ("i", 1, 1, 1, None)])
    c.set_outlier_detection(consecutive_gateway=1, base_ejection=1.0, max_percent=100, interval=10.0)
    ep = c.endpoints[0]
    c.report(ep, 0)
    assert ep.ejected and c.priority_loads() == [0, 100]
    t0 = ep.ejected_until
    c.sweep(t0 - 0.5)           # first pass: nothing expired yet
    assert ep.ejected
    ep.adopt(_Transport())      # idle since ~t0 - 1, idle_timeout 5 s
    c.sweep(t0 + 1.0)           # expired, but only 1.5 s since the last pass
    assert ep.ejected and ep.stats()["idle"] == 1
    c.sweep(t0 + 5.0)           # idle sweeping runs on every call, between passes too
    assert ep.ejected and ep.stats()["idle"] == 0
    c.sweep(t0 + 9.4)
    assert ep.ejected
    c.sweep(t0 + 9.5)           # 10 s since the last pass
    assert not ep.ejected and c.priority_loads() == [100, 0]


def test_sweep_with_default_interval_runs_first_pass_immediately():
    c = Cluster("c")
    c.set_endpoints([("h", 1, 1)])
    c.set_outlier_detection(consecutive_5xx=1, base_ejection=1.0, max_percent=100)
    assert c.od_interval == 10.0
    ep = c.endpoints[0]
    c.report(ep, 500)
    c.sweep(ep.ejected_until)
    assert not ep.ejected
