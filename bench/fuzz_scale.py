"""Fuzzing at scale: >= 100,000 malformed cases per protocol surface against one real
``tensorgate serve``.

    python bench/fuzz_scale.py                                # 100,000 per surface
    python bench/fuzz_scale.py --cases 2000 --json-out /tmp/fuzz.json   # a smoke run

One server (test repository of tests/models/build_models.py, free 127.0.0.1 ports,
gRPC on its default front end, native where it was built, HTTP on, client shared
memory allowed) takes, one surface after another:

- ``infer``: ModelInfer with raw bytes (grpc.aio, no client-side serialization),
  ``concurrency`` calls in flight: random bytes, valid-ish requests truncated and bit
  flipped, structured-invalid ones (wrong datatypes, shapes, sizes, names; huge and
  negative shapes; BYTES with lying length prefixes; raw and typed contents mixed);
- ``stream``: the same messages on a few long-lived ModelStreamInfer streams, with a
  valid request every 25th message: each message gets exactly one answer, a bad one an
  ``error_message``, and the good ones after it still succeed (a bad message never ends
  the stream, as on Triton, whose stream answers each failed request in
  ``error_message`` and keeps going);
- ``control``: the other RPCs (metadata, config, statistics, readiness, repository
  index/load/unload, system and CUDA shared memory, trace and log settings) with names
  and parameters that escape (``../x``), hold NUL bytes, are huge; plus each RPC's
  valid message truncated or bit flipped on the wire;
- ``http``: every route of the REST server with every method, fuzzed path segments,
  random and mutated infer bodies (JSON and the binary extension), random headers, bad
  Content-Length and Transfer-Encoding, and garbage on a raw socket.

Every answer is classified: a documented status (README "Errors", the CI fuzz tests'
ALLOWED sets) with a written message, never UNKNOWN, never the generic internal error,
never an HTTP 5xx but a model's own runtime failure; every call within its timeout (a
hang is a failure). At the end the server still serves, its log holds no traceback, and
it exits 0 on SIGTERM. Cases per surface and findings go to stdout and --json-out; the
exit status is 1 when anything failed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "models"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import build_models  # noqa: E402
import fuzz_cases as fc  # noqa: E402
from tensorgate._proto.inference import grpc_service_pb2 as pb  # noqa: E402

READY_RE = re.compile(r"ready grpc=([\d.]+):(\d+) http=([\d.]+):(\d+) metrics=([\d.]+):(\d+)")
SERVICE = "/inference.GRPCInferenceService/"
CALL_TIMEOUT_S = 20.0  # a 2-core machine shared with other work: generous, still a hang bound
GRPC_OK_ANSWERS = {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}
INTERNAL_OK_PREFIXES = ("onnxruntime failed",)
# A RepositoryModelLoad that failed: INTERNAL with each version's reason (README "Errors").
LOAD_FAILED = re.compile(r"model '.*' failed to load: ", re.S)
# The model the control plane may unload and load; the inference surfaces never need it.
CHURN_MODEL = "identity_int64"
GENERIC_INTERNAL = "internal error"


class Tally:
    """Cases and answers per surface; findings with a few examples each."""

    def __init__(self) -> None:
        self.cases: collections.Counter = collections.Counter()
        self.kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.answers: dict[str, collections.Counter] = collections.defaultdict(
            collections.Counter)
        self.kind_answers: dict[str, collections.Counter] = collections.defaultdict(
            collections.Counter)
        self.failures: dict[str, list] = collections.defaultdict(list)
        self.failure_counts: collections.Counter = collections.Counter()

    def case(self, surface: str, kind: str, answer: str) -> None:
        self.cases[surface] += 1
        self.kinds[surface][kind] += 1
        self.answers[surface][answer] += 1
        self.kind_answers[surface][f"{kind} {answer}"] += 1

    def fail(self, surface: str, reason: str, example) -> None:
        # Quoted names and numbers vary per case; one key per kind of finding.
        reason = re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'...'", reason))[:160]
        key = f"{surface}: {reason}"
        self.failure_counts[key] += 1
        if len(self.failures[key]) < 5:
            self.failures[key].append(example if isinstance(example, str) else repr(example)[:600])

    def summary(self) -> dict:
        return {
            "cases": dict(self.cases),
            "kinds": {k: dict(v) for k, v in self.kinds.items()},
            "answers": {k: dict(v) for k, v in self.answers.items()},
            "answers_by_kind": {k: dict(sorted(v.items())) for k, v in self.kind_answers.items()},
            "failures": {k: {"count": self.failure_counts[k], "examples": v}
                         for k, v in self.failures.items()},
        }


# --------------------------------------------------------------------------- server


class Server:
    def __init__(self, repo: Path, extra: list[str]) -> None:
        args = [sys.executable, "-m", "tensorgate", "serve", "--model-repository", str(repo),
                "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0",
                "--metrics-port", "0", "--max-message-mb", "4", "--allow-client-shm", "true",
                *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORGATE_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace",
                                     env=env)
        self.lines: list[str] = []
        self.grpc = self.http_host = ""
        self.http_port = 0
        ready = threading.Event()

        def drain() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                m = READY_RE.search(line)
                if m and not ready.is_set():
                    self.grpc = f"{m.group(1)}:{m.group(2)}"
                    self.http_host, self.http_port = m.group(3), int(m.group(4))
                    ready.set()

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        if not ready.wait(120):
            self.proc.kill()
            raise SystemExit("tensorgate serve never got ready:\n" + "".join(self.lines[-40:]))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is not None:  # died on its own
            return self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return -9


# --------------------------------------------------------------------------- helpers


def check_grpc(tally: Tally, surface: str, kind: str, code: grpc.StatusCode, details: str,
               allowed: set, data) -> None:
    name = code.name
    tally.case(surface, kind, name)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        tally.fail(surface, "hang (no answer within the call timeout)", data)
    elif code == grpc.StatusCode.INTERNAL and details.startswith(INTERNAL_OK_PREFIXES):
        return
    elif name not in allowed:
        tally.fail(surface, f"status {name}: {details[:120]}", data)
    elif name != "OK" and (not details or GENERIC_INTERNAL in details):
        tally.fail(surface, f"{name} without a written message: {details[:120]!r}", data)


async def workers(n: int, concurrency: int, seed: int, one) -> None:
    """Run ``one(rng, i)`` for i in range(n), ``concurrency`` at a time; each worker has its
    own seeded generator, so a run is reproducible per (seed, worker)."""
    counter = iter(range(n))

    async def worker(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        for i in counter:
            await one(rng, i)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))


def progress(surface: str, tally: Tally, start: float) -> None:
    n = tally.cases[surface]
    print(f"  {surface}: {n} cases in {time.monotonic() - start:.0f} s "
          f"({n / max(1e-9, time.monotonic() - start):.0f}/s), "
          f"failures {sum(v for k, v in tally.failure_counts.items() if k.startswith(surface))}",
          flush=True)


def valid_infer(request_id: str = "") -> bytes:
    req = pb.ModelInferRequest(model_name="identity_fp32", id=request_id)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 2])
    req.raw_input_contents.append(np.array([1, 2], np.float32).tobytes())
    return req.SerializeToString()


# --------------------------------------------------------------------------- surfaces


SHM_REGION = "fuzz-infer-region"


async def shm_churn(path: Path, stop: asyncio.Event, seed: int) -> None:
    """Cut and regrow the registered region's file while requests read it (README: every
    use checks the object's current size, so this is INVALID_ARGUMENT, never a SIGBUS)."""
    rng = random.Random(seed)
    while not stop.is_set():
        os.truncate(path, rng.choice([0, 3, 4095, 4096, 4096, 4096, 8192]))
        await asyncio.sleep(0.02)
    os.truncate(path, 4096)


async def fuzz_infer(channel, tally: Tally, n: int, concurrency: int, seed: int,
                     shm_path: Path) -> None:
    infer = channel.unary_unary(SERVICE + "ModelInfer")
    register = pb.SystemSharedMemoryRegisterRequest(name=SHM_REGION, key=SHM_KEY, offset=0,
                                                    byte_size=4096)
    await channel.unary_unary(SERVICE + "SystemSharedMemoryRegister")(
        register.SerializeToString(), timeout=CALL_TIMEOUT_S)
    stop = asyncio.Event()
    churn = asyncio.create_task(shm_churn(shm_path, stop, seed))

    async def one(rng: random.Random, i: int) -> None:
        if rng.random() < 0.1:
            kind, data = "shared_memory", fc.shm_request(rng, SHM_REGION).SerializeToString()
        else:
            kind, data = fc.infer_case(rng)
        try:
            await infer(data, timeout=CALL_TIMEOUT_S)
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        check_grpc(tally, "infer", kind, code, details, GRPC_OK_ANSWERS, data[:300])

    try:
        await workers(n, concurrency, seed, one)
    finally:
        stop.set()
        await churn


async def fuzz_stream(channel, tally: Tally, n: int, streams: int, seed: int) -> None:
    """``streams`` long-lived ModelStreamInfer calls, n messages over them all."""
    per_stream = n // streams
    window = 32  # messages in flight per stream

    async def one_stream(s: int) -> None:
        rng = random.Random(seed * 7919 + s)
        call = channel.stream_stream(SERVICE + "ModelStreamInfer")()
        credit = asyncio.Semaphore(window)
        sent_good = set()
        pending = {"n": 0}
        kinds: collections.deque = collections.deque()

        async def write() -> None:
            for i in range(per_stream):
                await credit.acquire()
                if i % 25 == 0:
                    tag = f"good-{s}-{i}"
                    sent_good.add(tag)
                    data, kind = valid_infer(tag), "good"
                else:
                    kind, data = fc.infer_case(rng)
                kinds.append(kind)
                pending["n"] += 1
                await call.write(data)
            await call.done_writing()

        writer = asyncio.create_task(write())
        answered = 0
        while answered < per_stream:
            try:
                raw = await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
            except asyncio.TimeoutError:
                tally.fail("stream", "hang (no answer within the call timeout)",
                           f"stream {s}: {per_stream - answered} unanswered")
                call.cancel()
                break
            except grpc.aio.AioRpcError as exc:
                tally.fail("stream", f"stream ended early: {exc.code().name} {exc.details()}",
                           f"stream {s} after {answered} answers")
                break
            if raw is grpc.aio.EOF:
                tally.fail("stream", "stream ended before every message was answered",
                           f"stream {s} after {answered} of {per_stream}")
                break
            answered += 1
            pending["n"] -= 1
            credit.release()
            # Answers come in completion order; the kind counted is the oldest one sent.
            kind = kinds.popleft() if kinds else "?"
            msg = pb.ModelStreamInferResponse.FromString(raw)
            if msg.error_message:
                error = msg.error_message
                tally.case("stream", kind, "error_message")
                if GENERIC_INTERNAL in error:
                    tally.fail("stream", f"error_message: {error[:120]}", f"stream {s}")
            else:
                tally.case("stream", kind, "response")
                sent_good.discard(msg.infer_response.id)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        if answered == per_stream:
            code = await call.code()
            if code != grpc.StatusCode.OK:
                tally.fail("stream", f"stream status {code.name}", f"stream {s}")
        for tag in sorted(sent_good)[:5]:
            tally.fail("stream", "a valid message after bad ones was not answered with a "
                                 "response", tag)
        tally.answers["stream"]["good_unanswered"] += len(sent_good)

    await asyncio.gather(*(one_stream(s) for s in range(streams)))


SHM_KEY = f"/tg-fuzz-{os.getpid()}"


def _name(rng: random.Random, real=("identity_fp32", "add_sub", "fixed_shape")) -> str:
    roll = rng.random()
    if roll < 0.55:
        return rng.choice(fc.EVIL_NAMES)
    if roll < 0.8:
        return rng.choice(real)
    return rng.randbytes(rng.randint(0, 40)).decode("utf-8", "replace")


def _params(rng: random.Random, target) -> None:
    for _ in range(rng.randint(0, 2)):
        p = target[rng.choice(["config", "file:1/model.onnx", "file:../x", "unload_dependents",
                               "", _name(rng)])]
        kind = rng.choice(["string_param", "bool_param", "int64_param", "bytes_param"])
        value = {"string_param": rng.choice(["{}", "{", "x", "", '{"backend":"onnxruntime"}']),
                 "bool_param": True, "int64_param": rng.choice([-1, 2**63 - 1]),
                 "bytes_param": rng.randbytes(rng.randint(0, 32))}[kind]
        if kind == "bytes_param" and not hasattr(p, "bytes_param"):
            kind, value = "string_param", "x"
        setattr(p, kind, value)


def control_case(rng: random.Random) -> tuple[str, object, set]:
    """(rpc, request message, statuses allowed beside OK, INVALID_ARGUMENT, NOT_FOUND)."""
    rpc = rng.choice(["ModelMetadata", "ModelConfig", "ModelReady", "ModelStatistics",
                      "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
                      "SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
                      "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
                      "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
                      "ServerMetadata", "ServerLive", "ServerReady", "TraceSetting",
                      "LogSettings"])
    version = rng.choice(["", "", "1", "2", "-1", "x", "99999999999999999999"]
                         + list(fc.EVIL_NAMES[:12]))
    extra: set = set()
    if rpc in ("ModelMetadata", "ModelConfig", "ModelReady", "ModelStatistics"):
        msg = getattr(pb, rpc + "Request")(name=_name(rng), version=version)
        extra = {"UNAVAILABLE"}  # the churn model may be between unload and load
    elif rpc == "RepositoryIndex":
        msg = pb.RepositoryIndexRequest(repository_name=rng.choice(["", "", "x", "../x"]),
                                        ready=rng.random() < 0.5)
    elif rpc in ("RepositoryModelLoad", "RepositoryModelUnload"):
        # The churn model, the test repository's broken ones (a load that fails), or
        # names that are not there or cannot be.
        name = rng.choice([CHURN_MODEL, "corrupt_model", "bad_config", "contradicting_config"]
                          ) if rng.random() < 0.1 else _name(rng, real=("no_such",))
        msg = getattr(pb, rpc + "Request")(
            model_name=name, repository_name=rng.choice(["", "", "", "x", "../x"]))
        if rng.random() < 0.3:
            _params(rng, msg.parameters)
        # A load that failed is INTERNAL with each version's reason (README "Errors").
        extra = {"UNAVAILABLE", "INTERNAL_LOAD"}
    elif rpc == "SystemSharedMemoryStatus":
        msg = pb.SystemSharedMemoryStatusRequest(name=_name(rng, real=("fuzz-region",)))
    elif rpc == "SystemSharedMemoryRegister":
        msg = pb.SystemSharedMemoryRegisterRequest(
            name=_name(rng, real=("fuzz-region",)),
            key=rng.choice([SHM_KEY, SHM_KEY, "/no-such-key", "../x", "/../x", "", "x\0y",
                            "/dev/shm" + SHM_KEY, "//" + SHM_KEY, "y" * 70_000]),
            offset=rng.choice([0, 0, 1, 4095, 4096, 4097, 2**63, 2**64 - 1]),
            byte_size=rng.choice([0, 4, 4096, 4097, 2**63, 2**64 - 1]))
        extra = {"ALREADY_EXISTS", "RESOURCE_EXHAUSTED"}
    elif rpc == "SystemSharedMemoryUnregister":
        msg = pb.SystemSharedMemoryUnregisterRequest(name=_name(rng, real=("fuzz-region",)))
    elif rpc.startswith("Cuda"):
        msg = getattr(pb, rpc + "Request")(name=_name(rng))
        extra = {"UNIMPLEMENTED"}
    elif rpc == "TraceSetting":
        msg = pb.TraceSettingRequest(model_name=rng.choice(["", "", _name(rng)]))
        for _ in range(rng.randint(0, 2)):
            # Invalid values only: a valid change would turn tracing on for the rest.
            msg.settings[rng.choice(["trace_rate", "trace_level", "x", "", _name(rng)])].value.extend(
                rng.choice([["-1"], ["abc"], ["\0"], [], ["1", "2"], ["9" * 30]]))
    elif rpc == "LogSettings":
        msg = pb.LogSettingsRequest()
        for _ in range(rng.randint(0, 2)):
            # Wrong types and values only: a valid change (a verbose level, log_info off)
            # would flood the log or hide the tracebacks this run looks for.
            kind = rng.choice(["string_param", "uint32_param", "bool_param", None])
            if kind == "string_param":
                p = msg.settings[rng.choice(["log_verbose_level", "log_format", "log_info",
                                             "x", "", _name(rng)])]
                p.string_param = rng.choice(["abc", "", "\0", "-1"])
            elif kind == "uint32_param":
                p = msg.settings[rng.choice(["log_format", "log_info", "x", _name(rng)])]
                p.uint32_param = rng.choice([2**32 - 1, 999999])
            elif kind == "bool_param":
                p = msg.settings[rng.choice(["log_verbose_level", "log_format", "x"])]
                p.bool_param = True
            else:
                msg.settings[rng.choice(["log_verbose_level", "x", _name(rng)])]
    else:
        msg = getattr(pb, rpc + "Request")()
    return rpc, msg, extra


async def fuzz_control(channel, tally: Tally, n: int, concurrency: int, seed: int) -> None:
    stubs = {}

    def stub(rpc: str):
        if rpc not in stubs:
            stubs[rpc] = channel.unary_unary(SERVICE + rpc)  # bytes in, bytes out
        return stubs[rpc]

    async def one(rng: random.Random, i: int) -> None:
        rpc, msg, extra = control_case(rng)
        data = msg.SerializeToString()
        kind = rpc
        if rng.random() < 0.2 and rpc not in ("LogSettings", "TraceSetting"):
            # The message itself broken on the wire (not the settings RPCs: a flipped
            # byte can make a valid change, and the log level matters to this run).
            data = fc.flip(rng, data) if rng.random() < 0.5 else data[: rng.randint(0, len(data))]
            kind = rpc + "/wire"
        try:
            await stub(rpc)(data, timeout=CALL_TIMEOUT_S)
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        allowed = GRPC_OK_ANSWERS | extra
        if (code == grpc.StatusCode.INTERNAL and "INTERNAL_LOAD" in extra
                and LOAD_FAILED.match(details)):
            allowed = allowed | {"INTERNAL"}
        check_grpc(tally, "control", kind, code, details, allowed, (rpc, data[:300]))

    await workers(n, concurrency, seed, one)


# ----------------------------------------------------------------------------- HTTP

METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "GET", "POST")
WAITS = ("wire", "framing_long_cl", "framing_chunked_bad")
HTTP_OK = {200, 400, 404, 405, 409, 413, 429, 501, 503}


def _segment(rng: random.Random, real=("identity_fp32", "add_sub", "fixed_shape")) -> str:
    name = _name(rng, real)[:2000]
    return urllib.parse.quote(name, safe="") if rng.random() < 0.8 else name.replace(
        " ", "%20").replace("\0", "%00").replace("\n", "%0a")


def http_route(rng: random.Random) -> str:
    m = _segment(rng)
    version = rng.choice(["", "", f"/versions/{rng.choice(['1', '2', 'x', '%2e%2e', '-1'])}"])
    return rng.choice([
        "/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/stats",
        f"/v2/models/{m}{version}/infer", f"/v2/models/{m}{version}/ready",
        f"/v2/models/{m}{version}/config", f"/v2/models/{m}{version}/stats",
        f"/v2/models/{m}{version}/trace/setting", f"/v2/models/{m}{version}",
        "/v2/repository/index",
        f"/v2/repository/models/"
        f"{_segment(rng, real=('no_such', CHURN_MODEL, 'corrupt_model', 'bad_config'))}/"
        f"{rng.choice(['load', 'unload'])}",
        "/v2/trace/setting", "/v2/logging",
        f"/v2/systemsharedmemory/region/{_segment(rng, real=('fuzz-region',))}/"
        f"{rng.choice(['status', 'register', 'unregister'])}",
        f"/v2/systemsharedmemory/{rng.choice(['status', 'unregister'])}",
        f"/v2/cudasharedmemory/region/{_segment(rng)}/register", "/v2/cudasharedmemory/status",
        "/", "/v2/", "/v3/models", "//v2//models", "/v2/models/%", "/v2/models/%zz/infer",
        "*", "/v2/models/" + "a/" * 200,
    ])


def http_case(rng: random.Random) -> tuple[str, bytes, bool]:
    """(kind, request bytes, whether the framing is broken: a fresh connection, closed
    after). A kind whose request may be incomplete (a body shorter than its length, a
    chunk cut short, garbage) is also half-closed after it (``WAITS``): the server then
    sees the end instead of waiting for the rest. Not the complete ones: the server
    takes a half-close as the caller going away and drops its answer (as nginx's 499)."""
    kind = rng.choice(["route", "infer", "infer", "shm", "headers", "framing", "wire"])
    headers: dict = {}
    method, body = "POST", b""
    if kind == "route":
        method, path = rng.choice(METHODS), http_route(rng)
        if path in ("/v2/logging", "/v2/trace/setting") and method == "POST":
            method = "GET"  # a random valid change could turn verbose logging on
        if method not in ("GET", "HEAD") and rng.random() < 0.6:
            body = json.dumps(fc.random_json(rng)).encode()
    elif kind == "infer":
        path = rng.choice(["/v2/models/identity_fp32/infer", "/v2/models/add_sub/infer",
                           "/v2/models/identity_bytes/infer", "/v2/models/fixed_shape/infer",
                           "/v2/models/identity_fp32/versions/1/infer"])
        if rng.random() < 0.1:  # tensors in the registered region (fuzz_infer's)
            kind = "shared_memory"
            params = {"shared_memory_region": rng.choice([SHM_REGION, SHM_REGION, "no_such"]),
                      "shared_memory_byte_size": rng.choice(fc.SHM_SIZES + ("8", None)),
                      "shared_memory_offset": rng.choice(fc.SHM_SIZES + ("8", None))}
            tensor = {"name": "INPUT0", "shape": rng.choice([[1, 3], [1, 1024], [2**40]]),
                      "datatype": "FP32", "parameters": params}
            body = json.dumps({"inputs": [tensor], "outputs": [
                {"name": "OUTPUT0", "parameters": dict(params)}] if rng.random() < 0.5
                else []}).encode()
        else:
            kind, body, headers = fc.http_infer_body(rng)
            kind = "infer_" + kind
    elif kind == "shm":
        path = (f"/v2/systemsharedmemory/region/{_segment(rng, real=('fuzz-region',))}/"
                f"{rng.choice(['register', 'register', 'unregister', 'status'])}")
        doc = fc.random_json(rng) if rng.random() < 0.5 else {
            "key": rng.choice([SHM_KEY, "/../x", "../x", "", "x\0", 5]),
            "offset": rng.choice([0, -1, 4096, 2**64, "0", None]),
            "byte_size": rng.choice([4, 0, -5, 2**64, 4096, "4", None])}
        body = json.dumps(doc).encode()
    elif kind == "headers":
        path = "/v2/models/identity_fp32/infer"
        body = json.dumps(fc.valid_http_body()).encode()
        for _ in range(rng.randint(1, 3)):
            name, value = rng.choice([
                ("Content-Type", "text/plain"), ("Content-Type", "\x01"),
                ("Inference-Header-Content-Length", rng.choice(["-1", "x", "99999999999",
                                                                str(len(body) + 1), ""])),
                ("Accept-Encoding", "gzip"), ("Content-Encoding", "gzip"),
                ("X-Big", "v" * rng.choice([100, 8000, 70_000])),
                ("Authorization", "Bearer \0"), ("traceparent", "00-zz-zz-01"),
                ("x-tensorgate-route-key", rng.choice(fc.EVIL_NAMES[:20])),
                ("Expect", "100-continue"), ("Connection", rng.choice(["close", "x"])),
                ("Host", ""), (rng.choice(["X\x7f", "X Y", "::"]), "v"),
            ])
            headers[name] = value
    elif kind == "framing":
        path = "/v2/models/identity_fp32/infer"
        body = json.dumps(fc.valid_http_body()).encode()
        variant = rng.choice(["long_cl", "short_cl", "neg_cl", "bad_cl", "two_cl", "huge_cl",
                              "chunked_bad", "chunked_ok", "cl_and_te", "http10", "no_cl"])
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\n"
        cl = {"long_cl": len(body) + rng.randint(1, 100), "short_cl": rng.randint(0, len(body)),
              "neg_cl": -rng.randint(1, 10), "huge_cl": 2**64 + 1}.get(variant, len(body))
        if variant == "bad_cl":
            head += f"Content-Length: {rng.choice(['x', '1e3', ' ', '0x10', '+5'])}\r\n"
        elif variant == "two_cl":
            head += f"Content-Length: {len(body)}\r\nContent-Length: {len(body) + 1}\r\n"
        elif variant == "chunked_bad":
            head += "Transfer-Encoding: chunked\r\n"
            body = rng.choice([b"zz\r\n" + body, f"{len(body) + 9:x}\r\n".encode() + body,
                               b"-1\r\n\r\n", f"{len(body):x}\r\n".encode() + body + b"\r\n"])
        elif variant == "chunked_ok":
            head += "Transfer-Encoding: chunked\r\n"
            body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        elif variant == "cl_and_te":
            head += f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n"
        elif variant == "http10":
            head = head.replace("HTTP/1.1", "HTTP/1.0") + f"Content-Length: {len(body)}\r\n"
        elif variant != "no_cl":
            head += f"Content-Length: {cl}\r\n"
        return "framing_" + variant, head.encode() + b"\r\n" + body, True
    else:
        garbage = rng.randbytes(rng.randint(1, 300))
        if rng.random() < 0.5:  # a request line, then garbage
            garbage = f"{rng.choice(METHODS)} {http_route(rng)} HTTP/1.1\r\n".encode() + garbage
        return "wire", garbage + b"\r\n\r\n", True
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if body or method in ("POST", "PUT", "PATCH"):
        headers.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
    return kind, raw, False


async def read_response(reader: asyncio.StreamReader, head_only: bool):
    """(status, headers, body) of one response; None where the server closed first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if status == 100:  # Expect: 100-continue: the real answer follows
        return await read_response(reader, head_only)
    length = int(headers.get("content-length", "0"))
    body = b"" if head_only else await reader.readexactly(length)
    return status, headers, body


def check_http(tally: Tally, kind: str, reply, data: bytes, broken: bool) -> bool:
    """Record the answer; True when the connection can be reused."""
    if reply is None:
        tally.case("http", kind, "closed")
        if kind not in WAITS:
            tally.fail("http", "connection closed without an answer to a well-framed request",
                       data[:300])
        return False
    status, headers, body = reply
    tally.case("http", kind, str(status))
    if status not in HTTP_OK:
        if status == 500 and body:
            try:
                error = json.loads(body).get("error", "")
            except ValueError:
                error = ""
            if error.startswith(INTERNAL_OK_PREFIXES) or LOAD_FAILED.match(error):
                return headers.get("connection", "").lower() != "close"
        tally.fail("http", f"status {status}: {body[:120]!r}", data[:300])
    elif status >= 400 and body:
        try:
            error = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            tally.fail("http", f"status {status} without a JSON error: {body[:120]!r}",
                       data[:300])
        else:
            if not error or GENERIC_INTERNAL in error:
                tally.fail("http", f"status {status}: {error[:120]!r}", data[:300])
    return not broken and headers.get("connection", "").lower() != "close"


async def fuzz_http(host: str, port: int, tally: Tally, n: int, concurrency: int,
                    seed: int) -> None:
    async def one_conn():
        return await asyncio.open_connection(host, port, limit=1 << 22)

    conns: dict = {}

    async def one(rng: random.Random, i: int) -> None:
        kind, data, broken = http_case(rng)
        key = id(rng)
        if broken or key not in conns:
            if key in conns:
                conns.pop(key)[1].close()
            conns[key] = await one_conn()
        reader, writer = conns[key]
        head_only = data.startswith(b"HEAD ")
        try:
            writer.write(data)
            await writer.drain()
            if kind in WAITS:
                writer.write_eof()
            reply = await asyncio.wait_for(read_response(reader, head_only), CALL_TIMEOUT_S)
        except asyncio.TimeoutError:
            tally.case("http", kind, "hang")
            tally.fail("http", "hang (no answer within the call timeout)", data[:300])
            reply, broken = None, True
        except (ConnectionError, asyncio.IncompleteReadError):
            reply = None
        reuse = check_http(tally, kind, reply, data, broken) if reply is not None or \
            not broken else check_http(tally, kind, None, data, True)
        if not reuse:
            conns.pop(key)[1].close()

    await workers(n, concurrency, seed, one)
    for _, writer in conns.values():
        writer.close()


# ------------------------------------------------------------------------------ main


async def still_serving(srv: Server, tally: Tally) -> None:
    async with grpc.aio.insecure_channel(srv.grpc) as ch:
        live = ch.unary_unary(SERVICE + "ServerLive")
        resp = pb.ServerLiveResponse.FromString(await live(b"", timeout=10))
        out = pb.ModelInferResponse.FromString(
            await ch.unary_unary(SERVICE + "ModelInfer")(valid_infer("end"), timeout=10))
        if not resp.live or np.frombuffer(out.raw_output_contents[0], np.float32).tolist() != [1, 2]:
            tally.fail("end", "the server does not serve a valid gRPC request", repr(out)[:300])
    reader, writer = await asyncio.open_connection(srv.http_host, srv.http_port)
    body = json.dumps(fc.valid_http_body()).encode()
    writer.write(b"POST /v2/models/identity_fp32/infer HTTP/1.1\r\nHost: x\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    reply = await asyncio.wait_for(read_response(reader, False), 10)
    writer.close()
    if reply is None or reply[0] != 200:
        tally.fail("end", "the server does not serve a valid HTTP request", repr(reply)[:300])


async def run(srv: Server, args, tally: Tally, shm_path: Path) -> dict:
    opts = [("grpc.max_send_message_length", 16 << 20),
            ("grpc.max_receive_message_length", 16 << 20)]
    timings = {}
    surfaces = args.surfaces.split(",")
    async with grpc.aio.insecure_channel(srv.grpc, options=opts) as channel:
        for surface in surfaces:
            start = time.monotonic()
            print(f"{surface}: {args.cases} cases ...", flush=True)
            if surface == "infer":
                await fuzz_infer(channel, tally, args.cases, args.concurrency, args.seed,
                                 shm_path)
            elif surface == "stream":
                await fuzz_stream(channel, tally, args.cases, args.streams, args.seed)
            elif surface == "control":
                await fuzz_control(channel, tally, args.cases, args.concurrency, args.seed)
            elif surface == "http":
                await fuzz_http(srv.http_host, srv.http_port, tally, args.cases,
                                args.concurrency, args.seed)
            else:
                raise SystemExit(f"unknown surface {surface!r}")
            timings[surface] = round(time.monotonic() - start, 1)
            progress(surface, tally, start)
            if srv.proc.poll() is not None:
                tally.fail("end", f"the server died during {surface}: exit code "
                                  f"{srv.proc.returncode}", srv.log[-3000:])
                return timings
    await still_serving(srv, tally)
    return timings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000, help="per surface")
    ap.add_argument("--surfaces", default="infer,stream,http,control",
                    help="comma-separated, run in this order (control last: it unloads)")
    ap.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    ap.add_argument("--streams", type=int, default=4, help="long-lived ModelStreamInfer calls")
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra `tensorgate serve` flag, e.g. --serve-arg=--frontend=grpcio")
    ap.add_argument("--json-out", help="write the summary as JSON here")
    ap.add_argument("--server-log", help="write the server's log here")
    args = ap.parse_args()

    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="fuzz-scale-") as tmp:
        repo = build_models.build_test_repository(Path(tmp) / "repo")
        shm_path = Path("/dev/shm") / SHM_KEY.lstrip("/")
        shm_path.write_bytes(b"\0" * 4096)
        srv = Server(repo, args.serve_arg)
        found = re.search(r"front end: ([^\n]+)", srv.log)
        frontend = found.group(1) if found else "unknown"
        print(f"server pid {srv.proc.pid}, grpc {srv.grpc} (front end: {frontend}), "
              f"http {srv.http_host}:{srv.http_port}", flush=True)
        started = time.monotonic()
        try:
            timings = asyncio.run(run(srv, args, tally, shm_path))
        finally:
            code = srv.stop()
            shm_path.unlink(missing_ok=True)
        log = srv.log
    if args.server_log:
        Path(args.server_log).write_text(log)
    if code != 0:
        tally.fail("end", f"exit code {code} on SIGTERM", log[-2000:])
    for marker in ("Traceback", GENERIC_INTERNAL):
        if marker in log:
            at = log.index(marker)
            tally.fail("end", f"{marker!r} in the server log", log[max(0, at - 500):at + 2500])
    summary = tally.summary()
    summary.update(seconds=round(time.monotonic() - started, 1), surface_seconds=timings,
                   exit_code=code, cases_per_surface=args.cases, seed=args.seed,
                   concurrency=args.concurrency, streams=args.streams,
                   serve_args=args.serve_arg, frontend=frontend,
                   server_log_lines=len(log.splitlines()))
    print(json.dumps({k: summary[k] for k in ("cases", "answers", "seconds", "exit_code")},
                     indent=1))
    for key, found in summary["failures"].items():
        print(f"FAIL {key}: {found['count']}x, e.g. {found['examples'][0][:400]}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1) + "\n")
    print("PASS" if not summary["failures"] else "FAIL")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
