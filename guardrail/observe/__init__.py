"""What operators see: Prometheus metrics, the audit trail, live policy reload."""
