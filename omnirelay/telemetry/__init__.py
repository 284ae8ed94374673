"""Telemetry: the metric list and its exposition (`metrics`), what a process reports
(`samples`) and the merge of reports across worker processes (`aggregate`)."""
from .aggregate import Aggregate
from .metrics import METRICS, Metric, exposition
from .samples import REPORT_INTERVAL, snapshot

__all__ = ["METRICS", "REPORT_INTERVAL", "Aggregate", "Metric", "exposition", "snapshot"]
