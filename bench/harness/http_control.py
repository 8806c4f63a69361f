"""The control calls of control.py over v2 HTTP/REST, and the pre-step infer check.

Same answers as ServerControl (metadata, max batch size, readiness, statistics), so the
runner drives an HTTP endpoint the same way. Plain urllib, one short request each,
outside the measured window. A server without an endpoint (KServe and MLServer have no
``/config`` or ``/stats``) gives None: the harness leaves those columns blank.
Proxies from the environment are ignored: these URLs are loopback.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from bench.harness.control import ServerError

_STAT_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BODY_CHARS = 2000  # of a failed answer, in the step's failure reason


class HttpError(ServerError):
    """A non-2xx answer; ``status`` and the start of the body."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


def model_path(model: str, version: str = "") -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")


class HttpControl:
    """Control-plane calls to one HTTP endpoint (HOST:PORT); a context manager like
    ServerControl, though there is no connection to close."""

    def __init__(self, url: str, headers: dict[str, str] | None = None,
                 timeout_s: float = 5.0) -> None:
        self.url = url
        self.base = f"http://{url}"
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def close(self) -> None:
        pass

    def __enter__(self) -> HttpControl:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, path: str, body: bytes | None = None,
                timeout_s: float | None = None) -> tuple[int, bytes]:
        """(status, body) of GET (or POST with ``body``); HttpError for non-2xx."""
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=body, headers=headers,
                                     method="POST" if body is not None else "GET")
        try:
            with self._opener.open(req, timeout=timeout_s or self.timeout_s) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")[:BODY_CHARS]
            raise HttpError(exc.code, text) from None

    def _json(self, path: str) -> dict | None:
        """The JSON at ``path``, or None where the server has no such endpoint."""
        try:
            return json.loads(self.request(path)[1])
        except HttpError as exc:
            if exc.status in (400, 401, 403, 404, 405, 501):
                return None
            raise
        except ValueError:
            return None

    def wait_model_ready(self, model: str, version: str = "", timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                self.request(model_path(model, version) + "/ready")
                return
            except HttpError as exc:
                last = str(exc)
            except OSError as exc:  # refused, reset: still starting
                last = repr(exc)
            time.sleep(0.1)
        raise ServerError(f"{model} not ready on http://{self.url} after {timeout_s:.0f} s "
                          f"({last})")

    def model_metadata(self, model: str, version: str = "") -> dict | None:
        meta = self._json(model_path(model, version))
        if not meta:
            return None

        def tensors(items) -> list[dict]:
            return [{"name": t["name"], "datatype": t["datatype"], "shape": list(t["shape"])}
                    for t in items or []]

        return {"inputs": tensors(meta.get("inputs")), "outputs": tensors(meta.get("outputs"))}

    def max_batch_size(self, model: str, version: str = "") -> int | None:
        config = self._json(model_path(model, version) + "/config")
        if not config or "max_batch_size" not in config:
            return None
        return int(config["max_batch_size"])

    def statistics(self, model: str, version: str = "") -> dict | None:
        """Triton's statistics extension (GET .../stats), as ServerControl.statistics."""
        return stats_totals(self._json(model_path(model, version) + "/stats"), model)

    def check_infer(self, model: str, version: str, body: bytes,
                    expect_outputs: tuple[str, ...] = ()) -> str | None:
        """POST ``body`` once: None if the answer is 200 with JSON outputs including
        every name in ``expect_outputs`` (at least one output when empty), else why not
        (with the start of the body the server sent)."""
        path = model_path(model, version) + "/infer"
        try:
            status, raw = self.request(path, body, timeout_s=30.0)
        except HttpError as exc:
            return f"POST {path}: HTTP {exc.status}: {exc.body}"
        except OSError as exc:
            return f"POST {path}: {exc!r}"
        text = raw.decode(errors="replace")
        return infer_answer_problem(status, text, expect_outputs, path)


def stats_totals(answer: dict | None, model: str) -> dict | None:
    """Triton's statistics JSON summed over the model's versions, in the shape of
    ServerControl.statistics; None if it holds none."""
    if not answer or not answer.get("model_stats"):
        return None
    totals = {"inference_count": 0, "execution_count": 0}
    for stats in answer["model_stats"]:
        if stats.get("name") and stats["name"] != model:
            continue
        # proto3 JSON writes 64-bit integers as strings; Triton writes numbers.
        totals["inference_count"] += int(stats.get("inference_count", 0))
        totals["execution_count"] += int(stats.get("execution_count", 0))
        inference = stats.get("inference_stats", {})
        for name in _STAT_FIELDS:
            duration = inference.get(name, {})
            for unit in ("count", "ns"):
                key = f"{name}_{unit}"
                totals[key] = totals.get(key, 0) + int(duration.get(unit, 0))
    return totals


def infer_answer_problem(status: int, text: str, expect_outputs: tuple[str, ...],
                         path: str = "infer") -> str | None:
    """Why an infer answer is not a good one, or None (see HttpControl.check_infer)."""
    if status != 200:
        return f"POST {path}: HTTP {status}: {text[:BODY_CHARS]}"
    try:
        names = [o["name"] for o in json.loads(text)["outputs"]]
    except (ValueError, KeyError, TypeError):
        return f"POST {path}: HTTP 200 but not a v2 infer response: {text[:BODY_CHARS]}"
    missing = [n for n in expect_outputs if n not in names]
    if missing or not names:
        want = list(expect_outputs) or "an output"
        return f"POST {path}: outputs {names}, expected {want}: {text[:BODY_CHARS]}"
    return None
