"""Logging: text or JSON lines, and sampled request logs.

(The control-plane audit trail, with peer and token id, is security/audit.py: logger
``tensorgate.audit``.)

JSON format (``--log-format json``): one object per line with ``ts`` (UTC, ISO 8601,
milliseconds), ``level``, ``logger``, ``msg``, plus the record's event fields (whatever
was passed as ``extra=``), and ``exc`` with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

request_log = logging.getLogger("tensorgate.requests")

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str, fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


# -- sampled request logs: a data plane observer (DataPlane.observers) ------------------


class RequestLog:
    """Logs a sampled fraction of requests (logger tensorgate.requests), one line each.
    On the data plane's observer list only when the ratio is above 0."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    def observe(self, outcome) -> None:
        if outcome.shadow or random.random() >= self.ratio:
            return
        model, ns = outcome.model, outcome.ns
        request_log.info(
            "%s %s:%s %d us", outcome.status, model.name, model.version_str, ns // 1000,
            extra={
                "event": "request", "model": model.name, "version": model.version_str,
                "request_id": outcome.request_id, "duration_us": ns // 1000,
                "code": outcome.status,
            },
        )
