"""Benchmarks: call-status throughput and call set-up latency on real nodes (see docs/benchmarks.md)."""
