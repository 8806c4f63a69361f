"""Server lifecycle: start, load, ready, drain, stop.

Order on start: gRPC listens first (health NOT_SERVING, so probes see a live server),
the repository loads, then health turns SERVING and the ready line is logged. On
SIGTERM/SIGINT: stop accepting (health NOT_SERVING, new calls UNAVAILABLE), let accepted
requests finish within the grace period, release every model, exit 0.
"""

from __future__ import annotations

import asyncio
import os
import logging
import shutil
import signal
import time
from importlib import resources
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from tensorgate._proto import POOL
from tensorgate.cache import ResponseCache
from tensorgate.cache.remote import RedisTier
from tensorgate.dataplane import DataPlane
from tensorgate.diagnostics import warn_if_native_missing
from tensorgate.grpc import control as control_grpc
from tensorgate.grpc import native as native_grpc
from tensorgate.grpc.inference import SERVICE, InferenceService, generic_handler
from tensorgate.http.server import HttpServer
from tensorgate.http.server import ssl_context as _http_ssl_context
from tensorgate.http.service import HttpService
from tensorgate.observability import heap_debug
from tensorgate.observability import logs as obs_logs
from tensorgate.observability import prediction_log as obs_prediction_log
from tensorgate.observability import tracing as obs_tracing
from tensorgate.observability.drift import DriftMonitor
from tensorgate.observability.gpu_metrics import gpu_collector
from tensorgate.observability.hooks import ModelHooks
from tensorgate.observability.live_settings import LogSettings
from tensorgate.observability.metrics import serve_metrics
from tensorgate.repository import config as repository_config
from tensorgate.repository.manager import ModelRepository
from tensorgate.repository.watch import RepositoryWatcher
from tensorgate.routing import store as route_store
from tensorgate.routing.manager import RouteManager
from tensorgate.runtime.pipeline import PipelineVersion
from tensorgate.runtime import heap
from tensorgate.runtime import model as runtime_model
from tensorgate.security.config import from_settings as security_from_settings
from tensorgate.security.tls import server_credentials
from tensorgate.settings import Settings
from tensorgate.shared_memory import SystemSharedMemory

log = logging.getLogger("tensorgate")

HEALTH_SERVICE = "grpc.health.v1.Health"


def demo_repository() -> Path:
    return Path(str(resources.files("tensorgate") / "demo_repository"))


class ServerState:
    """What the health and readiness answers are made of."""

    def __init__(self, repository: ModelRepository, strict: bool) -> None:
        self.live = True
        self.accepting = True
        self.loaded = False
        self._repository = repository
        self._strict = strict

    @property
    def ready(self) -> bool:
        if not (self.live and self.accepting and self.loaded):
            return False
        return not self._strict or self._repository.all_ready


def _register_for_reflection() -> None:
    """Reflection answers from our private pool; add the standard services' files to it."""
    for module in (health_pb2, reflection_pb2):
        try:
            POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)


async def _set_health(servicer, repository: ModelRepository, status) -> None:
    await servicer.set("", status)
    await servicer.set(SERVICE, status)
    for model in repository.models():
        await servicer.set(model.name, status)


def grpc_server_options(settings: Settings) -> list[tuple[str, int]]:
    max_bytes = settings.max_message_mb * 1024 * 1024
    options = [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.so_reuseport", 0),
    ]
    # grpc.aio takes calls from grpc core one event-loop turn at a time; those not taken
    # yet wait in core, which sheds new ones (the client sees CANCELLED, sent before any
    # of our code runs: issue #8) once that backlog passes these limits.
    if settings.max_pending_calls > 0:
        hard = settings.max_pending_calls
        options += [
            ("grpc.server.max_pending_requests", max(1, hard // 3)),
            ("grpc.server.max_pending_requests_hard_limit", hard),
        ]
    return options


def http_ssl_context(settings: Settings):
    """The HTTP port's TLS: the same certificate, key and client CA as gRPC's."""
    if settings.tls_cert is None:
        return None
    return _http_ssl_context(
        str(settings.tls_cert), str(settings.tls_key),
        str(settings.tls_client_ca) if settings.tls_client_ca else None,
    )


def _delay_scheduler(environ) -> int:
    """Triton's test-only TRITONSERVER_DELAY_SCHEDULER, honoured so that Triton's own
    batcher tests run unchanged; never meant for production, hence the warning."""
    raw = environ.get(runtime_model.DELAY_SCHEDULER_ENV)
    if not raw:
        return 0
    try:
        count = int(raw)
    except ValueError:
        raise ValueError(
            f"{runtime_model.DELAY_SCHEDULER_ENV}={raw!r}: expected a number of requests"
        ) from None
    if count < 0:
        raise ValueError(f"{runtime_model.DELAY_SCHEDULER_ENV}={count}: must be >= 0")
    if count:
        log.warning(
            "%s=%d (a test hook): every dynamic batcher holds its first requests until "
            "%d are queued", runtime_model.DELAY_SCHEDULER_ENV, count, count,
        )
    return count


async def serve(settings: Settings) -> int:
    loop = asyncio.get_running_loop()
    runtime_model.INLINE_MAX_US = settings.inline_max_us
    try:
        runtime_model.HOLD_UNTIL = _delay_scheduler(os.environ)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    root = settings.model_repository or demo_repository()
    repository = ModelRepository(
        Path(root), settings.default_max_batch_size, settings.shutdown_grace_secs,
        allow_symlinks_outside=settings.allow_symlinks_outside_repository,
    )
    repository.strict_config = settings.strict_model_config
    state = ServerState(repository, settings.strict_readiness)
    server = grpc.aio.server(options=grpc_server_options(settings))
    try:
        security = security_from_settings(settings)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    # Routes persist inside the repository; not inside the bundled demo repository,
    # which is part of the installed package.
    routes = RouteManager(repository, _state_file(settings, root))
    try:
        registry = _registry_sync(settings, repository, routes)
    except (ValueError, RuntimeError) as exc:
        log.error("%s", exc)
        return 1
    shared_memory = SystemSharedMemory(settings.allow_client_shm)
    try:
        cache = _response_cache(settings, repository)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    dataplane = DataPlane(repository, security.limits, routes, shared_memory, cache)
    # Pipelines run their steps on this data plane and resolve them in this repository.
    PipelineVersion.run_step = dataplane.run_prepared
    PipelineVersion.resolve = repository.resolve
    drift = _drift_monitor(settings, repository, dataplane)
    if settings.request_log_sample_ratio > 0:
        dataplane.observers.append(obs_logs.RequestLog(settings.request_log_sample_ratio))
    try:
        prediction_log = _prediction_log(settings, repository)
    except (RuntimeError, OSError) as exc:
        log.error("%s", exc)
        return 1
    if prediction_log is not None:
        dataplane.observers.append(prediction_log)
    service = InferenceService(
        repository, dataplane, state, security.guard, LogSettings(settings.log_format)
    )
    service.model_control_refusal = _model_control_refusal(settings.model_control_mode)
    server.add_generic_rpc_handlers([
        generic_handler(service),
        control_grpc.generic_handler(control_grpc.RoutingService(routes), security.guard),
    ])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    hooks = ModelHooks(repository, health_servicer)  # per-model health, events, logs
    repository.listeners.append(hooks)
    _register_for_reflection()
    reflection.enable_server_reflection(
        [SERVICE, control_grpc.SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME], server,
        pool=POOL
    )
    address = f"{settings.host}:{settings.grpc_port}"
    frontend = dispatcher = backend_dir = None
    use_native = settings.frontend == "native" or (
        settings.frontend == "auto" and native_grpc.available()
    )
    if use_native and not native_grpc.available():
        log.error("--frontend native: this build has no native front end (grpc++ was not "
                  "found when it was built; see setup.py)")
        return 1
    if use_native:
        backend, backend_dir = native_grpc.backend_address()
        if server.add_insecure_port(backend) == 0:
            log.error("cannot listen on %s", backend)
            return 1
        try:
            frontend = native_grpc.open_frontend(address, backend, settings, security.tls)
        except RuntimeError as exc:
            log.error("cannot listen on %s:%d (%s)", settings.host, settings.grpc_port, exc)
            return 1
        grpc_port = frontend.port
        dispatcher = native_grpc.NativeInferDispatcher(frontend, service)
    elif security.tls is not None:
        grpc_port = server.add_secure_port(address, server_credentials(security.tls))
    else:
        grpc_port = server.add_insecure_port(address)
    log.info("gRPC security: %s; front end: %s", security.summary,
             "native (grpc++)" if frontend is not None else "grpc.aio")
    warn_if_native_missing(settings, log)
    if grpc_port == 0:
        log.error("cannot listen on %s:%d", settings.host, settings.grpc_port)
        return 1
    def give_up(what: str, port: int, exc: OSError) -> int:
        """A port that cannot be served: nothing was served yet, undo and fail."""
        log.error("cannot serve %s on %s:%d: %s", what, settings.host, port, exc)
        if frontend is not None:
            frontend.shutdown(0.0)
            shutil.rmtree(backend_dir, ignore_errors=True)
        return 1

    http_server = None
    http_port = -1
    if settings.http_port >= 0:
        http_server = HttpServer(
            HttpService(service), settings.max_message_mb * 1024 * 1024,
            settings.http_idle_timeout_secs,
        )
        try:
            http_port = await http_server.start(
                settings.host, settings.http_port, http_ssl_context(settings)
            )
        except OSError as exc:
            return give_up("HTTP", settings.http_port, exc)
    metrics_server = None
    metrics_port = -1
    gpus = None
    if settings.metrics_port >= 0:
        gpus = gpu_collector(settings.allow_gpu_metrics)  # None without NVML or a GPU
        try:
            metrics_server, metrics_port = serve_metrics(
                settings.host, settings.metrics_port, lambda: _serving_versions(repository),
                hooks.events, routes, frontend, cache,
                ([prediction_log.collector()] if prediction_log is not None else [])
                + ([registry.collector()] if registry is not None else [])
                + ([gpus] if gpus is not None else []),
            )
        except OSError as exc:
            return give_up("metrics", settings.metrics_port, exc)
        if heap_debug.enabled():
            heap_debug.install(metrics_server)
            log.warning("%s=1: tracemalloc on, GET %s on the metrics port",
                        heap_debug.ENV, heap_debug.PATH)
    obs_tracing.install(
        settings.trace_exporter, settings.trace_sample_ratio, settings.otlp_endpoint
    )
    await server.start()
    if dispatcher is not None:
        dispatcher.start(loop)
    await _set_health(health_servicer, repository, health_pb2.HealthCheckResponse.NOT_SERVING)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    mode = settings.model_control_mode
    if mode == "explicit":
        names = settings.load_model
        log.info("model control explicit: loading %s from %s",
                 ", ".join(names) if names else "nothing", root)
        failed = await repository.load_some(loop, names)
    else:
        log.info("loading models from %s (model control %s)", root, mode)
        await repository.load_all(loop)
        failed = []
    if settings.exit_on_error and (failed or not repository.all_ready):
        failed += [f"{name} ({reason})" for name, _, state, reason in repository.index()
                   if state != "READY" and reason and f"{name} (" not in " ".join(failed)]
        log.error("--exit-on-error: model(s) failed to load: %s", "; ".join(failed))
        await server.stop(0)
        if frontend is not None:
            frontend.shutdown(0.0)
            shutil.rmtree(backend_dir, ignore_errors=True)
        if http_server is not None:
            await http_server.stop(0)
        await repository.unload_all()
        if metrics_server is not None:
            metrics_server.shutdown()
        if gpus is not None:
            gpus.close()
        return 1
    try:
        restored = routes.restore()
    except ValueError as exc:
        log.error("%s", exc)
        restored = 0
    if restored:
        log.info("restored %d route(s) from %s", restored, routes.state_file)
    watcher = None
    poll_secs = settings.repository_poll_secs
    if mode == "poll" and poll_secs == 0:
        poll_secs = DEFAULT_POLL_SECS
    if poll_secs > 0:
        watcher = RepositoryWatcher(repository, poll_secs)
        watcher.start()
        log.info("polling the repository every %g s", poll_secs)
    if registry is not None:
        registry.start()  # after the routes are restored: aliases move routes
    state.loaded = True
    if settings.gc_freeze:
        heap.freeze()  # once everything loaded; each later repository change freezes again
        repository.listeners.append(heap.HeapFreezer())
    trimmer = heap.MallocTrimmer(settings.malloc_trim_secs)
    trimmer.start()
    await _set_health(health_servicer, repository, health_pb2.HealthCheckResponse.SERVING)
    ready = [m.label for m in repository.models()]
    log.info(
        "ready grpc=%s:%d http=%s metrics=%s (%d model version(s): %s)",
        settings.host, grpc_port,
        f"{settings.host}:{http_port}" if http_server else "off",
        f"{settings.host}:{metrics_port}" if metrics_server else "off",
        len(ready), ", ".join(ready) or "none",
    )

    await stop.wait()
    log.info("shutting down: refusing new requests, %.0f s grace for accepted ones",
             settings.shutdown_grace_secs)
    state.accepting = False
    if watcher is not None:
        await watcher.stop()
    if registry is not None:
        await registry.stop()
    await health_servicer.enter_graceful_shutdown()
    # Drain before stopping grpc: server.stop() cancels calls at once (seen as CANCELLED
    # by clients, tests/e2e/test_shutdown.py), so accepted requests finish first while
    # new ones are answered UNAVAILABLE; then what is left (idle streams, health
    # watches) gets a short grace.
    left = await _drain(repository, settings.shutdown_grace_secs)
    if http_server is not None:
        await http_server.stop(min(left, STREAM_GRACE_S))
    if frontend is not None:
        # grpc++ first (it relays to grpc.aio until its last call ended); it blocks
        # until then, so off the loop, which answers the ModelInfer calls it still holds.
        await loop.run_in_executor(None, frontend.shutdown, min(left, STREAM_GRACE_S))
        dispatcher.stop_watching()
    await server.stop(min(left, STREAM_GRACE_S))
    if backend_dir is not None:
        shutil.rmtree(backend_dir, ignore_errors=True)
    trimmer.stop()
    await routes.close()
    await repository.unload_all()
    if drift is not None:
        drift.close()
    if cache is not None:
        await cache.close()
    shared_memory.close()
    dataplane.cuda_shared_memory.close()
    if prediction_log is not None:  # every request is answered: write what is buffered
        await loop.run_in_executor(None, prediction_log.close)
    obs_tracing.uninstall()  # flushes the spans still buffered
    if metrics_server is not None:
        metrics_server.shutdown()
    if gpus is not None:
        gpus.close()
    log.info("stopped")
    return 0


def _response_cache(settings: Settings, repository: ModelRepository) -> ResponseCache | None:
    """The response cache (--cache-size, --cache-redis-url), listening to the repository;
    None when off. Models with response_cache { enable: true } load only with one."""
    repository_config.RESPONSE_CACHE = settings.cache_size > 0
    if settings.cache_size == 0:
        return None
    remote = None
    if settings.cache_redis_url:
        remote = RedisTier(settings.cache_redis_url, settings.cache_redis_ttl_secs,
                           settings.cache_redis_timeout_ms / 1000)
    cache = ResponseCache(settings.cache_size, repository, remote)
    repository.listeners.append(cache)
    log.info("response cache: %d bytes%s", settings.cache_size,
             f", Redis at {remote.where} (TTL {settings.cache_redis_ttl_secs} s)" if remote else "")
    return cache


def _prediction_log(
    settings: Settings, repository: ModelRepository
) -> obs_prediction_log.PredictionLog | None:
    """The prediction log (--prediction-log-dir), listening to the repository; None
    when off. RuntimeError/OSError when it cannot write there."""
    if settings.prediction_log_dir is None:
        return None
    plog = obs_prediction_log.PredictionLog(
        settings.prediction_log_dir, settings.prediction_log_sample_ratio,
        settings.prediction_log_rotate_bytes, settings.prediction_log_rotate_secs,
        settings.prediction_log_buffer_size, repository,
    )
    repository.listeners.append(plog)
    log.info("prediction log: %s, sample ratio %g, files rotated at %d bytes or %g s, "
             "buffer %d requests", settings.prediction_log_dir,
             settings.prediction_log_sample_ratio, settings.prediction_log_rotate_bytes,
             settings.prediction_log_rotate_secs, settings.prediction_log_buffer_size)
    return plog


def _drift_monitor(settings: Settings, repository: ModelRepository, dataplane: DataPlane
                   ) -> DriftMonitor | None:
    """Drift monitoring (observability/drift), listening to the repository: it reads
    the profile.json of each version that loads and puts itself on the data plane's
    observers only while some serving version has one. None with
    --drift-sample-ratio 0."""
    if settings.drift_sample_ratio <= 0:
        return None
    drift = DriftMonitor(repository, dataplane.observers, settings.drift_window_secs,
                         settings.drift_window_rows, settings.drift_sample_ratio)
    repository.listeners.append(drift)
    return drift


def _registry_sync(settings: Settings, repository: ModelRepository, routes: RouteManager):
    """The model registry sync (--model-registry), not started yet; None when off."""
    if not settings.model_registry:
        return None
    from tensorgate import registry

    return registry.from_settings(settings, repository, routes)


STREAM_GRACE_S = 1.0
DEFAULT_POLL_SECS = 15.0  # --model-control-mode poll without --repository-poll-secs (Triton's)


def _state_file(settings: Settings, root) -> Path | None:
    """Where routes and rollouts persist: --state-dir, else inside the repository (not
    inside the bundled demo repository, which is part of the installed package)."""
    if settings.state_dir is not None:
        return Path(settings.state_dir) / route_store.STATE_FILE
    return route_store.state_path(Path(root)) if settings.model_repository else None


def _model_control_refusal(mode: str) -> str | None:
    """Why RepositoryModelLoad/Unload are refused in this mode (Triton's words first)."""
    if mode == "none":
        return ("explicit model load / unload is not allowed: the server runs with "
                "--model-control-mode none (explicit: load and unload through the API)")
    if mode == "poll":
        return ("explicit model load / unload is not allowed if polling is enabled "
                "(--model-control-mode poll: change the repository on disk instead)")
    return None
# After the last accepted request finished, keep answering UNAVAILABLE this long before
# grpc's stop(): calls that reach grpc.aio at the moment of stop() are dropped without
# reaching us (CANCELLED), so clients should first learn that we refuse.
SETTLE_S = 0.25


async def _drain(repository: ModelRepository, grace: float) -> float:
    """Wait until no inference request is in flight (none can enter any more) or
    ``grace`` passed, then settle; returns the grace left."""
    deadline = time.monotonic() + grace
    while any(m.inflight for m in repository.models()):
        if time.monotonic() >= deadline:
            log.warning("grace period over with requests still in flight")
            return 0.0
        await asyncio.sleep(0.005)
    await asyncio.sleep(max(0.0, min(SETTLE_S, deadline - time.monotonic())))
    return max(0.0, deadline - time.monotonic())


def _serving_versions(repository: ModelRepository):
    table = repository.table  # an immutable snapshot: safe to read from the metrics thread
    return [m for versions in table.by_version.values() for m in versions.values()]
