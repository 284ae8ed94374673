"""Micro benchmark (pytest-benchmark) of one load-balancing pick, `Cluster.choose()`:
8 endpoints in one priority level against the same 8 split over two levels with P0
degraded (1 of 4 available: loads 35/65), so every pick first draws a level. The
one-level case is the hot path and must not pay for priorities."""
from __future__ import annotations

import pytest

from omnirelay._core import Cluster

POLICIES = ["round_robin", "least_request", "random", "ring_hash", "maglev"]


def cluster(lb: str, levels: int) -> Cluster:
    c = Cluster("bench")
    c.set_endpoints([(f"10.0.{i // 4}.{i % 4}", 80, 1, (i // 4) if levels == 2 else 0, None)
                     for i in range(8)])
    c.set_lb(lb, "x-user" if lb in ("ring_hash", "maglev") else None)
    if levels == 2:
        for e in c.endpoints[1:4]:
            e.healthy = False
    return c


@pytest.mark.parametrize("levels", [1, 2], ids=["1-level", "2-levels"])
@pytest.mark.parametrize("lb", POLICIES)
def test_pick(benchmark, lb, levels):
    c = cluster(lb, levels)
    assert c.priority_loads() == ([100] if levels == 1 else [35, 65])
    ep = benchmark(c.choose)
    assert ep is not None and ep.healthy
