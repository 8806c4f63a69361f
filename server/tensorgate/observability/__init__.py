"""Statistics, Prometheus metrics, OpenTelemetry tracing, health hooks and logging."""
