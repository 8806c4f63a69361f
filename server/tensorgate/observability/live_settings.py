"""Log and trace settings that change while serving: Triton's LogSettings and
TraceSetting APIs (gRPC and HTTP) over the same state the flags set at start.

Keys are Triton's, mapped onto what TensorGate has: Python logging levels and its text
or JSON format; OpenTelemetry tracing with a parent-based sample ratio. A key or value
TensorGate cannot honour (a log file, tensor-level traces, per-model trace settings,
trace counts) is refused with INVALID_ARGUMENT naming it, never silently accepted.
Changes are validated as a whole before any applies.
"""

from __future__ import annotations

import logging

from tensorgate.errors import FailedPrecondition, InvalidArgument
from tensorgate.observability import logs as _logs
from tensorgate.observability import tracing as _tracing

_FORMATS = {"default": "text", "ISO8601": "text", "text": "text", "json": "json"}


class LogSettings:
    """Triton's log settings over the root logger (``--log-level``, ``--log-format``)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def current(self) -> dict:
        level = logging.getLogger().level
        return {
            "log_file": "",
            "log_info": level <= logging.INFO,
            "log_warning": level <= logging.WARNING,
            "log_error": level <= logging.ERROR,
            "log_verbose_level": 1 if level <= logging.DEBUG else 0,
            "log_format": self.fmt,
        }

    def update(self, changes: dict) -> dict:
        """Apply ``changes`` (key -> bool, int or str); the settings now in effect."""
        merged = self.current()
        for key, value in changes.items():
            if key not in merged:
                raise InvalidArgument(
                    f"log setting '{key}' is not known (known: {', '.join(merged)})"
                )
            expected = type(merged[key])
            if expected is int and not isinstance(value, bool) and isinstance(value, int):
                if value < 0:
                    raise InvalidArgument(f"log setting '{key}': must be >= 0, got {value}")
            elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise InvalidArgument(
                    f"log setting '{key}': expected a {expected.__name__}, got {value!r}"
                )
            if key == "log_file" and value:
                raise InvalidArgument(
                    "log setting 'log_file' is not supported: TensorGate logs to standard "
                    "error (route it with the process manager)"
                )
            if key == "log_format" and value not in _FORMATS:
                raise InvalidArgument(
                    f"log setting 'log_format': one of {', '.join(_FORMATS)}, got {value!r}"
                )
            merged[key] = value
        if merged["log_verbose_level"] > 0:
            level = "DEBUG"
        elif merged["log_info"]:
            level = "INFO"
        elif merged["log_warning"]:
            level = "WARNING"
        elif merged["log_error"]:
            level = "ERROR"
        else:
            level = "CRITICAL"
        self.fmt = _FORMATS[merged["log_format"]]
        _logs.configure(level, self.fmt)
        return self.current()


class TraceSettings:
    """Triton's trace settings over OpenTelemetry tracing (``--trace-exporter``,
    ``--trace-sample-ratio``): ``trace_level`` OFF or TIMESTAMPS turns the installed
    tracer off and on, ``trace_rate`` N samples one new trace in N
    (``trace_sample_ratio`` sets the ratio itself)."""

    def __init__(self) -> None:
        self._start_ratio: float | None = None  # read at first use: after tracing starts

    @property
    def _default_ratio(self) -> float:
        if self._start_ratio is None:
            tracing = _tracing.INSTALLED
            self._start_ratio = tracing.ratio if tracing is not None else 1.0
        return self._start_ratio

    @_default_ratio.setter
    def _default_ratio(self, value: float) -> None:
        self._start_ratio = value

    def current(self) -> dict[str, list[str]]:
        tracing = _tracing.INSTALLED
        ratio = tracing.ratio if tracing is not None else self._default_ratio
        return {
            "trace_level": ["TIMESTAMPS" if _tracing.ACTIVE is not None else "OFF"],
            "trace_rate": [str(round(1 / ratio)) if ratio > 0 else "0"],
            "trace_sample_ratio": [repr(ratio)],
            "trace_count": ["-1"],
            "log_frequency": ["0"],
            "trace_file": [""],
            "trace_mode": ["opentelemetry"],
        }

    def update(self, changes: dict[str, list[str]], model_name: str = "") -> dict:
        """Apply ``changes`` (key -> list of strings; [] resets to the start value)."""
        if model_name:
            raise InvalidArgument(
                f"trace settings for model '{model_name}': per-model trace settings are not "
                "supported (TensorGate's trace settings are server-wide)"
            )
        start = self._default_ratio  # captured before the first change, for resets
        tracing = _tracing.INSTALLED
        on = _tracing.ACTIVE is not None
        ratio = tracing.ratio if tracing is not None else start
        fixed = {"trace_count": "-1", "log_frequency": "0", "trace_file": "",
                 "trace_mode": "opentelemetry"}
        for key, values in changes.items():
            if not values:  # reset
                if key == "trace_level":
                    on = tracing is not None
                elif key in ("trace_rate", "trace_sample_ratio"):
                    ratio = start
                elif key not in fixed:
                    raise InvalidArgument(f"trace setting '{key}' is not known")
                continue
            if len(values) != 1 and key != "trace_level":
                raise InvalidArgument(f"trace setting '{key}': expected one value, got {values}")
            value = values[0]
            if key == "trace_level":
                levels = set(values)
                if levels == {"OFF"}:
                    on = False
                elif levels == {"TIMESTAMPS"}:
                    on = True
                else:
                    raise InvalidArgument(
                        f"trace setting 'trace_level': OFF or TIMESTAMPS, got {values} "
                        "(TensorGate's traces carry timestamps, never tensors)"
                    )
            elif key == "trace_rate":
                try:
                    rate = int(value)
                except ValueError:
                    rate = -1
                if rate < 1:
                    raise InvalidArgument(
                        f"trace setting 'trace_rate': a whole number >= 1 (one new trace in "
                        f"N is sampled), got {value!r}"
                    )
                ratio = 1.0 / rate
            elif key == "trace_sample_ratio":
                try:
                    ratio = float(value)
                except ValueError:
                    ratio = -1.0
                if not 0.0 <= ratio <= 1.0:
                    raise InvalidArgument(
                        f"trace setting 'trace_sample_ratio': a number in 0..1, got {value!r}"
                    )
            elif key in fixed:
                if value != fixed[key]:
                    raise InvalidArgument(
                        f"trace setting '{key}': only {fixed[key]!r} is supported, got {value!r}"
                    )
            else:
                raise InvalidArgument(
                    f"trace setting '{key}' is not known (known: {', '.join(self.current())})"
                )
        if on and tracing is None:
            raise FailedPrecondition(
                "tracing cannot be turned on: no exporter was configured (start the server "
                "with --trace-exporter console or otlp)"
            )
        if tracing is not None:
            tracing.ratio = ratio
        else:
            self._default_ratio = ratio
        _tracing.ACTIVE = tracing if on else None
        return self.current()
