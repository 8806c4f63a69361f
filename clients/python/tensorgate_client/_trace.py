"""W3C trace context for outgoing calls, when OpenTelemetry is there and in use.

OpenTelemetry is optional (``pip install tensorgate-client[otel]``): without it, or
without a valid span current in the caller, no header is added. With it, the globally
configured propagator (W3C ``traceparent``/``tracestate`` and ``baggage`` by default)
writes the headers, so a caller's custom propagator choice is honoured.
"""

from __future__ import annotations

try:
    from opentelemetry import propagate as _propagate
except ImportError:  # an optional dependency
    _propagate = None


def trace_headers() -> list[tuple[str, str]]:
    """gRPC metadata pairs for the current trace context (empty when there is none)."""
    if _propagate is None:
        return []
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    # gRPC metadata keys must be lowercase; some propagators (B3) capitalise theirs.
    return [(key.lower(), value) for key, value in carrier.items()]
