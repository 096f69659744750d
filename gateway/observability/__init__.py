"""Observability: structured logs, the audit log, Prometheus metrics and health endpoints."""
