"""Server settings: one frozen, validated dataclass; each field is a flag and an env var.

``--grpc-port 9000`` on the command line and ``TENSORGATE_GRPC_PORT=9000`` in the
environment set the same field; the flag wins. Field docs become the ``--help`` text.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "TENSORGATE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FRONTENDS = ("auto", "native", "grpcio")
CONTROL_MODES = ("auto", "none", "poll", "explicit")
# Flags that take a list: repeated on the command line, comma-separated in the env.
REPEATED = ("load_model", "registry_models")
# Flags with a second spelling (Triton's).
ALIASES = {
    "strict_model_config": ("--disable-auto-complete-config",),
    "cache_size": ("--cache-config", "--response-cache-byte-size"),
}
# Triton flags TensorGate has no field for, with what to use instead.
TRITON_EQUIVALENTS = {
    "--exit-timeout-secs": "--shutdown-grace-secs",
    "--allow-http": "--http-port -1 turns HTTP off",
    "--allow-grpc": "gRPC is always served (--grpc-port)",
    "--allow-metrics": "--metrics-port -1 turns metrics off",
    "--allow-cpu-metrics": "process metrics are always on /metrics",
    "--http-address": "--host", "--grpc-address": "--host", "--metrics-address": "--host",
    "--log-verbose": "--log-level DEBUG",
    "--log-info": "--log-level", "--log-warning": "--log-level", "--log-error": "--log-level",
    "--log-file": "logs go to stderr; collect them with the container runtime",
    "--trace-config": "--trace-exporter, --otlp-endpoint, --trace-sample-ratio and the "
                      "OTEL_* variables",
    "--backend-config": "per model: config.pbtxt parameters (e.g. intra_op_thread_count)",
    "--backend-directory": "TensorGate serves ONNX models with ONNX Runtime only",
    "--repoagent-directory": "repository agents are not supported",
    "--pinned-memory-pool-byte-size": "not used: batches are gathered in host memory",
    "--cuda-memory-pool-byte-size": "not used: ONNX Runtime's CUDA arena per session",
    "--min-supported-compute-capability": "CUDA is used where ONNX Runtime's provider works",
    "--model-load-thread-count": "models load concurrently",
    "--model-namespacing": "one repository per server (--model-repository)",
    "--rate-limit": "--rate-limit-rps (per client) and --max-inflight",
    "--grpc-use-ssl": "--tls-cert and --tls-key", "--grpc-server-cert": "--tls-cert",
    "--grpc-server-key": "--tls-key", "--grpc-root-cert": "--tls-client-ca",
    "--grpc-use-ssl-mutual": "--tls-client-ca",
    "--grpc-infer-allocation-pool-size": "not needed (the native front end pools calls)",
    "--http-thread-count": "HTTP runs on the event loop",
    "--id": "the server name is tensorgate (ServerMetadata)",
}


def _doc(text: str, **extra: Any) -> dict:
    return {"doc": text, **extra}


_BYTE_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _parse_bytes(name: str, raw: str) -> int:
    """A size in bytes with an optional K/M/G/T suffix (powers of 1024)."""
    match = _BYTE_SIZE_RE.match(raw)
    if match is None:
        raise ValueError(f"{name}: expected a size in bytes such as 1048576, 64M or 1G, "
                         f"got {raw!r}")
    return int(match.group(1)) * _BYTE_UNITS[match.group(2).lower()]


def parse_cache_size(raw: str) -> int:
    """--cache-size: bytes, with an optional K/M/G/T suffix (powers of 1024: 64M, 1G,
    64MiB); also Triton's spellings, --cache-config local,size=N and
    --response-cache-byte-size N."""
    text = raw.strip()
    if "," in text or "=" in text:
        kind, _, rest = text.partition(",")
        kind = kind.strip()
        if kind == "redis":
            raise ValueError(
                "cache_size: Triton's redis cache (--cache-config redis,...) is "
                "--cache-redis-url redis://HOST:PORT/DB here, beside --cache-size"
            )
        if kind != "local":
            raise ValueError(
                f"cache_size: cache implementation {kind!r}: TensorGate has the local "
                "cache (--cache-config local,size=N, or --cache-size N) and Redis "
                "(--cache-redis-url)"
            )
        size = None
        for item in rest.split(","):
            key, _, value = item.partition("=")
            if key.strip() != "size":
                raise ValueError(
                    f"cache_size: --cache-config local takes size=N only, got {item!r}"
                )
            size = value
        if size is None:
            raise ValueError("cache_size: --cache-config local needs size=N (bytes)")
        text = size
    match = _BYTE_SIZE_RE.match(text)
    if match is None:
        raise ValueError(
            f"cache_size: expected a size in bytes such as 1048576, 64M or 1G, got {raw!r}"
        )
    return int(match.group(1)) * _BYTE_UNITS[match.group(2).lower()]


@dataclass(frozen=True)
class Settings:
    model_repository: Path | None = field(
        default=None,
        metadata=_doc(
            "Triton-layout model repository; default: the bundled demo repository. One "
            "repository per server (given twice: refused)."
        ),
    )
    model_control_mode: str = field(
        default="auto",
        metadata=_doc(
            "As Triton's: none (load every model at start; RepositoryModelLoad/Unload "
            "refused), poll (as none, and poll the repository every --repository-poll-secs, "
            "15 unless set), explicit (load only the --load-model ones at start; load and "
            "unload through the API). auto: load every model at start, the API works, and "
            "polling runs when --repository-poll-secs > 0."
        ),
    )
    load_model: tuple = field(
        default=(),
        metadata=_doc(
            "With --model-control-mode explicit: a model to load at start (repeat the flag "
            "for several; '*' loads them all); env: comma-separated."
        ),
    )
    state_dir: Path | None = field(
        default=None,
        metadata=_doc(
            "Where state that outlives a restart is kept (routes and rollouts: "
            "routes.json), so the repository can be mounted read-only; default: "
            "<repository>/.tensorgate (none for the bundled demo repository)."
        ),
    )
    exit_on_error: bool = field(
        default=False,
        metadata=_doc(
            "Exit (code 1) when a model fails to load at start, as Triton's --exit-on-error "
            "(true by default there); false: the others serve, the failure is in the log, "
            "RepositoryIndex and readiness."
        ),
    )
    strict_model_config: bool = field(
        default=False,
        metadata=_doc(
            "Every model needs a complete config.pbtxt (max_batch_size, input, output): "
            "nothing is filled in from the graph, as Triton's --strict-model-config "
            "(alias: --disable-auto-complete-config)."
        ),
    )
    host: str = field(default="127.0.0.1", metadata=_doc("Address both ports listen on."))
    grpc_port: int = field(default=8001, metadata=_doc("gRPC port (0 picks a free port)."))
    http_idle_timeout_secs: float = field(
        default=60.0,
        metadata=_doc(
            "Close an HTTP keep-alive connection that sent nothing for this long (a request "
            "being answered is never idle); 0 = never."
        ),
    )
    http_port: int = field(
        default=8000,
        metadata=_doc(
            "HTTP/REST port (KServe v2, as Triton's; 0 picks a free port, -1 disables)."
        ),
    )
    metrics_port: int = field(
        default=8002, metadata=_doc("HTTP /metrics port (0 picks a free port, -1 disables).")
    )
    log_level: str = field(default="INFO", metadata=_doc("One of " + ", ".join(LOG_LEVELS) + "."))
    # -- observability (server/tensorgate/observability) --
    log_format: str = field(
        default="text",
        metadata=_doc("text, or json: one JSON object per line (ts, level, logger, msg, fields)."),
    )
    request_log_sample_ratio: float = field(
        default=0.0,
        metadata=_doc("Fraction of inference requests logged (logger tensorgate.requests)."),
    )
    # -- drift monitoring (observability/drift; only versions with a profile.json) --
    drift_window_secs: float = field(
        default=60.0,
        metadata=_doc(
            "Drift windows close after this many seconds or --drift-window-rows rows, "
            "whichever comes first (a window of fewer than 100 rows is extended instead); "
            "PSI and KS are computed per closed window."
        ),
    )
    drift_window_rows: int = field(
        default=5000,
        metadata=_doc("Rows per drift window at most (see --drift-window-secs)."),
    )
    drift_sample_ratio: float = field(
        default=1.0,
        metadata=_doc(
            "Fraction of requests to versions with a drift profile that are summarised "
            "(0 = drift monitoring off, profiles are then not read)."
        ),
    )
    prediction_log_dir: Path | None = field(
        default=None,
        metadata=_doc(
            "Write a sampled share of served requests (inputs, outputs, model, version, "
            "route, request and trace id, latency, status) as Parquet files under this "
            "directory, DIR/<model>/<date>/part-*.parquet (needs pyarrow: the logs "
            "extra); unset: off."
        ),
    )
    prediction_log_sample_ratio: float = field(
        default=1.0,
        metadata=_doc(
            "With --prediction-log-dir: the fraction of requests logged; a model's "
            "config.pbtxt parameter prediction_log_sample_ratio replaces it for that model."
        ),
    )
    prediction_log_rotate_bytes: int = field(
        default=64 << 20,
        metadata=_doc(
            "Start a new prediction log file once one holds this many bytes (K, M, G "
            "suffixes: powers of 1024).",
            parse=lambda raw: _parse_bytes("prediction_log_rotate_bytes", raw),
        ),
    )
    prediction_log_rotate_secs: float = field(
        default=60.0,
        metadata=_doc(
            "Finish a prediction log file after this many seconds (also at a new UTC date "
            "and on shutdown); a crash loses at most the file being written."
        ),
    )
    prediction_log_buffer_size: int = field(
        default=4096,
        metadata=_doc(
            "Requests captured for the prediction log and not yet taken by its writer "
            "thread; past this many, captures are dropped (counted on /metrics, the "
            "requests are served as usual)."
        ),
    )
    trace_exporter: str = field(
        default="",
        metadata=_doc(
            "Where OpenTelemetry spans go: none (tracing off), console, or otlp. Unset: "
            "OTEL_TRACES_EXPORTER, else otlp when --otlp-endpoint or "
            "OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set, else none."
        ),
    )
    trace_sample_ratio: float | None = field(
        default=None,
        metadata=_doc(
            "Fraction of new traces sampled (a caller's traceparent decides for its own); "
            "unset: OTEL_TRACES_SAMPLER_ARG, else 1.0."
        ),
    )
    otlp_endpoint: str = field(
        default="",
        metadata=_doc(
            "OTLP/gRPC collector for --trace-exporter otlp, e.g. http://127.0.0.1:4317; "
            "unset: OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317."
        ),
    )
    default_max_batch_size: int = field(
        default=4,
        metadata=_doc(
            "max_batch_size given to a model whose config omits it and whose graph has a "
            "dynamic first dimension on every input and output (Triton's default is 4)."
        ),
    )
    max_message_mb: int = field(
        default=256, metadata=_doc("Largest gRPC message accepted or sent, in MiB.")
    )
    strict_readiness: bool = field(
        default=True,
        metadata=_doc(
            "ServerReady is true only when every model in the repository loaded (Triton's "
            "--strict-readiness); false: ready once loading finished, whatever failed."
        ),
    )
    inline_max_us: float = field(
        default=100.0,
        metadata=_doc(
            "A model whose batch-1 run, measured at load, takes at most this many µs runs "
            "on the event loop thread when a request finds it idle: cheaper than handing it "
            "to a worker thread and back. 0 sends every request through the batcher."
        ),
    )
    allow_symlinks_outside_repository: bool = field(
        default=False,
        metadata=_doc(
            "Serve model directories and files that are symbolic links leading outside "
            "the repository (e.g. onto a shared volume). Off: they are skipped by the "
            "scan and refused by RepositoryModelLoad, so no name a caller sends and no "
            "link in the repository makes the server read outside it."
        ),
    )
    allow_gpu_metrics: bool = field(
        default=True,
        metadata=_doc(
            "Triton's GPU metrics on /metrics (nv_gpu_utilization, "
            "nv_gpu_memory_{total,used}_bytes, nv_gpu_power_{usage,limit}, "
            "nv_energy_consumption), read through NVML at each scrape, as Triton's "
            "--allow-gpu-metrics. Without nvidia-ml-py (the gpu extra), an NVIDIA driver or "
            "a GPU there are none; one INFO line at start says why."
        ),
    )
    allow_client_shm: bool = field(
        default=False,
        metadata=_doc(
            "Let clients register system shared-memory regions (files in /dev/shm) and "
            "pass inputs and outputs through them (the v2 shared-memory extension, as "
            "tritonclient's utils.shared_memory and perf_analyzer --shared-memory system "
            "use it). Off, as in Triton: registering is refused, since a region gives a "
            "caller read and write access to a file the server maps."
        ),
    )
    repository_poll_secs: float = field(
        default=0.0,
        metadata=_doc(
            "Poll the repository this often for new, changed and removed models and "
            "versions (loaded and warmed up before they take traffic; removed ones drain "
            "first); 0 = off (RepositoryModelLoad/Unload still work)."
        ),
    )
    # -- model registry (server/tensorgate/registry; unset = off) --
    model_registry: str = field(
        default="",
        metadata=_doc(
            "Sync registered ONNX models from an MLflow model registry into the "
            "repository (new versions loaded, archived and deleted ones removed, aliases "
            "as routes <model>@<alias>): mlflow://HOST:PORT (http), "
            "mlflow+https://HOST[:PORT][/PATH], or mlflow to take MLFLOW_TRACKING_URI; "
            "MLflow's own MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN apply. Needs "
            "--model-repository (written to) and --registry-models or --registry-tag, "
            "and pip install 'tensorgate[mlflow]'."
        ),
    )
    registry_models: tuple = field(
        default=(),
        metadata=_doc(
            "With --model-registry: a registered model to sync (repeat the flag for "
            "several); env: comma-separated."
        ),
    )
    registry_tag: str = field(
        default="",
        metadata=_doc(
            "With --model-registry: also sync every registered model with this tag, "
            "KEY=VALUE or KEY (any value)."
        ),
    )
    registry_poll_secs: float = field(
        default=30.0,
        metadata=_doc(
            "How often the registry is polled; while it cannot be reached, polls back "
            "off, doubling from one period to eight (at most 300 s), and what is loaded "
            "keeps serving."
        ),
    )
    registry_alias_move: str = field(
        default="switch",
        metadata=_doc(
            "What a moved alias does to its route: switch (blue-green, all traffic at "
            "once) or canary (a rollout with --registry-canary-stages and "
            "--registry-canary-hold-secs, default guards, promoted automatically)."
        ),
    )
    registry_canary_stages: str = field(
        default="5,25,50,100",
        metadata=_doc("With --registry-alias-move canary: the traffic percentages, in order."),
    )
    registry_canary_hold_secs: float = field(
        default=60.0,
        metadata=_doc("With --registry-alias-move canary: how long each stage is held."),
    )
    shutdown_grace_secs: float = field(
        default=30.0,
        metadata=_doc("On SIGTERM/SIGINT, how long accepted requests may take to finish."),
    )
    # -- security and limits (server/tensorgate/security; 0 / unset = off) --
    tls_cert: Path | None = field(
        default=None, metadata=_doc("PEM certificate chain: serve gRPC over TLS (with --tls-key).")
    )
    tls_key: Path | None = field(default=None, metadata=_doc("PEM private key for --tls-cert."))
    tls_client_ca: Path | None = field(
        default=None,
        metadata=_doc("PEM CA bundle: require client certificates signed by it (mutual TLS)."),
    )
    auth_tokens_file: Path | None = field(
        default=None,
        metadata=_doc(
            "Bearer tokens, one 'TOKEN ROLE[,ROLE]' per line (roles: infer, admin); "
            "TENSORGATE_AUTH_TOKENS adds ';'-separated entries. Unset and empty: no auth."
        ),
    )
    rate_limit_rps: float = field(
        default=0.0,
        metadata=_doc("Per-client requests/s (keyed by token, else peer host); 0 = off."),
    )
    rate_limit_burst: int = field(
        default=0, metadata=_doc("Per-client burst for --rate-limit-rps; 0 = the rps, rounded up.")
    )
    max_tensor_elements: int = field(
        default=0,
        metadata=_doc("Most elements in one input tensor; 0 = bounded by the message size only."),
    )
    max_bytes_element: int = field(
        default=0, metadata=_doc("Longest BYTES element in an input, in bytes; 0 = off.")
    )
    max_inflight: int = field(
        default=0,
        metadata=_doc("Server-wide cap on inference requests in flight (more: shed); 0 = off."),
    )
    gc_freeze: bool = field(
        default=True,
        metadata=_doc(
            "Freeze the heap once models are loaded (and again after each repository "
            "change), so the garbage collector stops walking long-lived objects on the "
            "request path; false: Python's default collection."
        ),
    )
    malloc_trim_secs: float = field(
        default=10.0,
        metadata=_doc(
            "Every this many seconds, hand the heap's free pages back to the system "
            "(glibc malloc_trim; a pass takes a few ms on its own thread); 0 = never."
        ),
    )
    # -- response cache (server/tensorgate/cache; 0 / unset = off) --
    cache_size: int = field(
        default=0,
        metadata=_doc(
            "Response cache size in bytes (K, M, G, T suffixes are powers of 1024: 64M, "
            "1G), shared by every model whose config.pbtxt has response_cache { enable: "
            "true }, least recently used answers evicted first; 0 = no cache (such models "
            "are refused). Triton's --cache-config local,size=N and "
            "--response-cache-byte-size N are the same setting.",
            parse=parse_cache_size,
        ),
    )
    cache_redis_url: str = field(
        default="",
        metadata=_doc(
            "redis://[:PASSWORD@]HOST:PORT/DB (or rediss://, unix://): a second cache tier "
            "in Redis, shared by the replicas that name it, behind the local one "
            "(--cache-size). A Redis that is down or slow makes lookups misses (a "
            "warning at most every 30 s), never failed requests."
        ),
    )
    cache_redis_ttl_secs: int = field(
        default=3600,
        metadata=_doc("How long an answer stored in Redis lives there, in seconds."),
    )
    cache_redis_timeout_ms: float = field(
        default=100.0,
        metadata=_doc(
            "Longest wait for Redis to connect or answer one call; past it the call "
            "counts as failed (a miss) and Redis is left alone for a while."
        ),
    )
    frontend: str = field(
        default="auto",
        metadata=_doc(
            "Who owns the gRPC port: native (grpc++ in C++ threads; ModelInfer goes to "
            "Python in batches, every other RPC is relayed to grpc.aio on a private "
            "socket), grpcio (grpc.aio serves everything), or auto (native when it was "
            "built, see setup.py)."
        ),
    )
    max_pending_calls: int = field(
        default=0,
        metadata=_doc(
            "Calls grpc core may hold before the server's event loop accepts them: past "
            "a third of this many, new calls are shed at random, at this many all of "
            "them, as CANCELLED before they reach TensorGate (grpc's "
            "grpc.server.max_pending_requests[_hard_limit]). Lower: shorter waits under "
            "overload, but bursts of concurrency above it are shed too; 0 = grpc's "
            "default (3000, random shedding from 1000). With the native front end: "
            "ModelInfer calls that may wait for the event loop, the rest answered "
            "RESOURCE_EXHAUSTED at once (0 = 3000)."
        ),
    )

    def __post_init__(self) -> None:
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            low = -1 if name != "grpc_port" else 0
            if not low <= port <= 65535:
                raise ValueError(f"{name} must be in {low}..65535, got {port}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, got {self.log_format!r}")
        if self.frontend not in FRONTENDS:
            raise ValueError(f"frontend must be one of {FRONTENDS}, got {self.frontend!r}")
        if self.trace_exporter not in ("", "none", "console", "otlp"):
            raise ValueError(
                f"trace_exporter must be none, console or otlp, got {self.trace_exporter!r}"
            )
        if self.model_control_mode not in CONTROL_MODES:
            raise ValueError(
                f"model_control_mode must be one of {', '.join(CONTROL_MODES)}, got "
                f"{self.model_control_mode!r}"
            )
        if self.repository_poll_secs > 0 and self.model_control_mode in ("none", "explicit"):
            raise ValueError(
                f"repository_poll_secs polls the repository in model_control_mode poll or "
                f"auto, not {self.model_control_mode}"
            )
        if self.load_model and self.model_control_mode != "explicit":
            raise ValueError(
                "load_model needs model_control_mode explicit (in the other modes every "
                "model loads at start)"
            )
        for name in ("request_log_sample_ratio", "trace_sample_ratio"):
            ratio = getattr(self, name)
            if ratio is not None and not 0.0 <= ratio <= 1.0:
                raise ValueError(f"{name} must be in 0..1, got {ratio}")
        if not 0.0 <= self.drift_sample_ratio <= 1.0:
            raise ValueError(f"drift_sample_ratio must be in 0..1, got {self.drift_sample_ratio}")
        if not 0.1 <= self.drift_window_secs <= 86400:
            raise ValueError(
                f"drift_window_secs must be in 0.1..86400, got {self.drift_window_secs}"
            )
        if not 10 <= self.drift_window_rows <= 10_000_000:
            raise ValueError(
                f"drift_window_rows must be in 10..10000000, got {self.drift_window_rows}"
            )
        if not 1 <= self.default_max_batch_size <= 1 << 20:
            raise ValueError(
                f"default_max_batch_size must be in 1..{1 << 20}, got {self.default_max_batch_size}"
            )
        if not 1 <= self.max_message_mb <= 2047:
            raise ValueError(f"max_message_mb must be in 1..2047, got {self.max_message_mb}")
        if not 0 <= self.inline_max_us <= 10_000:
            raise ValueError(f"inline_max_us must be in 0..10000, got {self.inline_max_us}")
        if not 0 <= self.malloc_trim_secs <= 3600:
            raise ValueError(
                f"malloc_trim_secs must be in 0..3600, got {self.malloc_trim_secs}"
            )
        if not 0 <= self.http_idle_timeout_secs <= 86400:
            raise ValueError(
                f"http_idle_timeout_secs must be in 0..86400, got {self.http_idle_timeout_secs}"
            )
        if not 0 <= self.repository_poll_secs <= 3600:
            raise ValueError(
                f"repository_poll_secs must be in 0..3600, got {self.repository_poll_secs}"
            )
        if not 0 <= self.shutdown_grace_secs <= 3600:
            raise ValueError(
                f"shutdown_grace_secs must be in 0..3600, got {self.shutdown_grace_secs}"
            )
        self._check_registry()
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        for name, high in (
            ("rate_limit_rps", 1e9), ("rate_limit_burst", 1 << 30),
            ("max_tensor_elements", 1 << 62), ("max_bytes_element", 1 << 31),
            ("max_inflight", 1 << 30),
            ("max_pending_calls", 1 << 30),
        ):
            if not 0 <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in 0..{high:g}, got {getattr(self, name)}")
        if not 0 <= self.cache_size <= 1 << 40:
            raise ValueError(f"cache_size must be in 0..{1 << 40} (1T), got {self.cache_size}")
        if self.cache_redis_url:
            if not self.cache_redis_url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(
                    "cache_redis_url must start with redis://, rediss:// or unix://, got "
                    f"{self.cache_redis_url.split('@')[-1]!r}"
                )
            if self.cache_size == 0:
                raise ValueError(
                    "cache_redis_url needs cache_size > 0: the local cache in front of "
                    "Redis (e.g. --cache-size 64M)"
                )
        if not 1 <= self.cache_redis_timeout_ms <= 60_000:
            raise ValueError(
                f"cache_redis_timeout_ms must be in 1..60000, got {self.cache_redis_timeout_ms}"
            )
        if not 1 <= self.cache_redis_ttl_secs <= 30 * 86400:
            raise ValueError(
                f"cache_redis_ttl_secs must be in 1..{30 * 86400}, got {self.cache_redis_ttl_secs}"
            )
        if not 0.0 <= self.prediction_log_sample_ratio <= 1.0:
            raise ValueError(f"prediction_log_sample_ratio must be in 0..1, got "
                             f"{self.prediction_log_sample_ratio}")
        if not 1 << 10 <= self.prediction_log_rotate_bytes <= 1 << 40:
            raise ValueError(f"prediction_log_rotate_bytes must be in 1K..1T, got "
                             f"{self.prediction_log_rotate_bytes}")
        if not 1.0 <= self.prediction_log_rotate_secs <= 86400:
            raise ValueError(f"prediction_log_rotate_secs must be in 1..86400, got "
                             f"{self.prediction_log_rotate_secs}")
        if not 1 <= self.prediction_log_buffer_size <= 1 << 20:
            raise ValueError(f"prediction_log_buffer_size must be in 1..{1 << 20}, got "
                             f"{self.prediction_log_buffer_size}")
        if self.model_repository is not None and not Path(self.model_repository).is_dir():
            raise ValueError(f"model_repository {str(self.model_repository)!r} is not a directory")


    def _check_registry(self) -> None:
        if not 0.1 <= self.registry_poll_secs <= 86400:
            raise ValueError(
                f"registry_poll_secs must be in 0.1..86400, got {self.registry_poll_secs}"
            )
        if self.registry_alias_move not in ("switch", "canary"):
            raise ValueError(f"registry_alias_move must be switch or canary, got "
                             f"{self.registry_alias_move!r}")
        try:
            stages = [float(x) for x in self.registry_canary_stages.split(",") if x.strip()]
        except ValueError:
            stages = []
        if not stages or stages != sorted(stages) or not all(0 < x <= 100 for x in stages):
            raise ValueError("registry_canary_stages must be ascending percentages in "
                             f"(0, 100], got {self.registry_canary_stages!r}")
        if not 0 <= self.registry_canary_hold_secs <= 86400:
            raise ValueError(f"registry_canary_hold_secs must be in 0..86400, got "
                             f"{self.registry_canary_hold_secs}")
        if not self.model_registry:
            if self.registry_models or self.registry_tag:
                raise ValueError("registry_models and registry_tag need model_registry")
            return
        if self.model_registry != "mlflow" and not self.model_registry.startswith(
                ("mlflow://", "mlflow+http://", "mlflow+https://")):
            raise ValueError(f"model_registry must be mlflow://HOST:PORT, "
                             f"mlflow+https://HOST[:PORT][/PATH] or mlflow "
                             f"(MLFLOW_TRACKING_URI), got {self.model_registry!r}")
        if self.model_repository is None:
            raise ValueError("model_registry needs model_repository: the synced versions "
                             "are written there")
        if not self.registry_models and not self.registry_tag:
            raise ValueError("model_registry needs registry_models (names) or registry_tag "
                             "(KEY=VALUE): which registered models to sync")


def _field_type(f: dataclasses.Field) -> type:
    hint = str(f.type)
    if "Path" in hint:
        return Path
    for name, typ in (("int", int), ("float", float), ("bool", bool)):
        if hint.startswith(name):
            return typ
    return str


def _parse_value(f: dataclasses.Field, raw: str) -> Any:
    typ = _field_type(f)
    if typ is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{f.name}: expected a boolean, got {raw!r}")
    if f.name == "log_level":
        return raw.upper()
    parse = f.metadata.get("parse")
    if parse is not None:
        return parse(raw)
    try:
        return typ(raw)
    except ValueError:
        raise ValueError(f"{f.name}: expected {typ.__name__}, got {raw!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per settings field; defaults stay None so env vars can apply."""
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        default = f.default if f.default not in (None, "", ()) else "(see above)"
        # A boolean flag given alone means true ("--gc-freeze" = "--gc-freeze true").
        boolean = _field_type(f) is bool
        # Every flag is collected as a list: --load-model repeats, and a repeated
        # --model-repository (several repositories, in Triton) must be refused, not lost.
        parser.add_argument(
            flag,
            *ALIASES.get(f.name, ()),
            dest=f.name,
            default=None,
            action="append",
            metavar="BOOL" if boolean else f.name.upper(),
            nargs="?" if boolean else None,
            const="true" if boolean else None,
            help=f"{f.metadata['doc']} Env: {env}. Default: {default}.",
        )


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def from_sources(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Build Settings from flags (first), ``TENSORGATE_*`` env vars, then defaults. A
    ValueError names each setting as the user gave it (``--log-format``, or
    ``TENSORGATE_LOG_FORMAT``)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    given: dict[str, str] = {}
    try:
        for f in dataclasses.fields(Settings):
            raw = getattr(args, f.name, None)
            if raw is not None:
                given[f.name] = flag_of(f.name)
                if f.name in REPEATED:
                    values[f.name] = tuple(raw)
                    continue
                if len(raw) > 1 and f.name == "model_repository":
                    # Triton serves several repositories when the flag repeats.
                    raise ValueError(
                        f"{f.name} given {len(raw)} times ({', '.join(map(str, raw))}); "
                        "TensorGate serves one model repository: put the models in one "
                        "directory (links to other volumes: "
                        "--allow-symlinks-outside-repository)"
                    )
                raw = raw[-1]  # a repeated flag: the last one wins, as usual
            else:
                raw = environ.get(ENV_PREFIX + f.name.upper())
                if raw is None:
                    continue
                given[f.name] = ENV_PREFIX + f.name.upper()
                if f.name in REPEATED:
                    values[f.name] = tuple(x.strip() for x in raw.split(",") if x.strip())
                    continue
            values[f.name] = _parse_value(f, raw)
        return Settings(**values)
    except ValueError as exc:
        raise ValueError(_as_typed(str(exc), given)) from None


def _as_typed(message: str, given: dict[str, str]) -> str:
    """A settings error with each field name written as the user gave the setting."""
    names = sorted((f.name for f in dataclasses.fields(Settings)), key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(names) + r")\b")
    return pattern.sub(lambda m: given.get(m.group(1), flag_of(m.group(1))), message)


def triton_flag_error(unknown: list[str]) -> str | None:
    """For flags argparse did not know: a message naming TensorGate's equivalent when
    one of them is Triton's; None when none is."""
    for arg in unknown:
        name = arg.split("=", 1)[0]
        if name in TRITON_EQUIVALENTS:
            return (f"{name} is a Triton flag TensorGate does not take; instead: "
                    f"{TRITON_EQUIVALENTS[name]}")
    return None
