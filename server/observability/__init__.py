"""Statistics, Prometheus metrics and logging."""
