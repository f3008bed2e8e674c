"""Metrics of the operators' live feed (the default registry: they show on /metrics)."""

from prometheus_client import Counter, Gauge

LIVE_OPERATORS = Gauge("voip_ops_live_connections", "Operators' live-feed sockets open on this node")
LIVE_DROPPED = Counter("voip_ops_live_dropped_total", "Operators' live-feed sockets closed for falling behind")
READINESS_FAILURES = Counter("voip_readiness_failures_total", "Readiness checks that failed or timed out", ["check"])
LIVE_ENTRIES = Counter("voip_ops_live_entries_total", "Timeline entries this node received from the ops channel")
