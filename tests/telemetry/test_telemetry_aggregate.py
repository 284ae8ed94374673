"""Merging workers' reports: sums, counters that never go down, retired workers, rates."""
from __future__ import annotations

from omnirelay.telemetry import Aggregate
from omnirelay.telemetry.samples import Reporter

REQ = "omnirelay_downstream_requests_total"
ACTIVE = "omnirelay_downstream_connections_active"
HIST = "omnirelay_upstream_request_duration_seconds"
ZERO_HIST = [0] * 17 + [0.0]


def report(requests: int = 0, errors: int = 0, active: int = 0, hist=None) -> dict:
    series = [[REQ, ["edge", "2xx"], requests], [REQ, ["edge", "5xx"], errors],
              [ACTIVE, ["edge"], active]]
    if hist is not None:
        series.append([HIST, ["c", "r"], hist])
    return {"series": series, "clusters": {"c": {"overflows": 0}}}


def value(agg: Aggregate, name: str, *labels: str):
    return agg.series()[(name, labels)]


def test_counters_and_gauges_sum_over_workers():
    agg = Aggregate()
    agg.update(1, report(requests=3, active=2))
    agg.update(2, report(requests=4, errors=1, active=1))
    assert value(agg, REQ, "edge", "2xx") == 7
    assert value(agg, REQ, "edge", "5xx") == 1
    assert value(agg, ACTIVE, "edge") == 3


def test_a_counter_restart_is_folded_in():
    agg = Aggregate()
    agg.update(1, report(requests=10))
    agg.update(1, report(requests=2))  # the counter started again (a re-created listener)
    assert value(agg, REQ, "edge", "2xx") == 12
    agg.update(1, report(requests=5))
    assert value(agg, REQ, "edge", "2xx") == 15


def test_an_exited_worker_keeps_its_counters_not_its_gauges():
    agg = Aggregate()
    agg.update(1, report(requests=10, active=4))
    agg.update(2, report(requests=1, active=1))
    agg.retire(1)
    agg.update(3, report(requests=0, active=0))  # its replacement starts from 0
    assert value(agg, REQ, "edge", "2xx") == 11
    assert value(agg, ACTIVE, "edge") == 1
    agg.retire(99)  # unknown: nothing happens


def test_a_series_no_longer_reported_keeps_its_total():
    agg, rep = Aggregate(), Reporter()
    agg.update(1, rep.delta(report(requests=5, active=3, hist=[1] * 17 + [0.5])))
    agg.update(1, rep.delta({"series": [], "clusters": {}}))  # listener and route removed
    assert value(agg, HIST, "c", "r") == [1] * 17 + [0.5]
    assert value(agg, REQ, "edge", "2xx") == 5
    assert (ACTIVE, ("edge",)) not in agg.series()  # a gauge goes with its series
    agg.update(1, rep.delta(report(requests=1, hist=[0] * 16 + [1, 2.0])))  # and came back
    assert value(agg, HIST, "c", "r") == [1] * 16 + [2, 2.5]
    assert value(agg, REQ, "edge", "2xx") == 6


def test_reporter_sends_only_changes():
    rep = Reporter()
    first = rep.delta(report(requests=5, active=1))
    assert len(first["series"]) == 3 and first["clusters"] == {"c": {"overflows": 0}}
    second = rep.delta(report(requests=7, active=1))
    assert second == {"series": [[REQ, ["edge", "2xx"], 7]]}
    agg = Aggregate()
    agg.update(1, first)
    agg.update(1, second)
    assert value(agg, REQ, "edge", "2xx") == 7 and value(agg, ACTIVE, "edge") == 1


def test_histograms_add_bucket_by_bucket():
    agg = Aggregate()
    a = [0] * 17 + [0.0]
    a[3] = 2
    a[-1] = 0.008
    b = [0] * 17 + [0.0]
    b[3], b[16], b[-1] = 1, 1, 100.004
    agg.update(1, report(hist=a))
    agg.update(2, report(hist=b))
    merged = value(agg, HIST, "c", "r")
    assert merged[3] == 3 and merged[16] == 1 and abs(merged[-1] - 100.012) < 1e-9


def test_unknown_metrics_are_ignored():
    agg = Aggregate()
    agg.update(1, {"series": [["omnirelay_nonsense_total", [], 5]]})
    assert agg.series() == {}


def test_rates_over_a_window():
    agg = Aggregate()
    assert agg.rates()["requests_per_s"] is None
    agg.update(1, report(requests=0), now=100.0)
    agg.update(1, report(requests=50, errors=10), now=105.0)
    agg.update(1, report(requests=150, errors=10), now=110.0)
    assert agg.rates(window=10) == {"window_s": 10.0, "requests_per_s": 16.0, "5xx_per_s": 1.0}
    assert agg.rates(window=5) == {"window_s": 5.0, "requests_per_s": 20.0, "5xx_per_s": 0.0}
