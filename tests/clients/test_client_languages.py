"""The C++, Go and Node.js examples: each is built from proto/ by its own build script,
run against the live server, and its printed OUTPUT0 compared with the Python client's
answer for the same input; run against a recording server, it must send the route key
(header and parameter), the deadline and the input bytes, and reject a wrong answer.

A missing toolchain skips its language, unless TENSORGATE_REQUIRE_CLIENT_TOOLCHAINS is
set (CI), where it fails. A build that fails always fails. Builds are incremental into
clients/<lang>/build (clients/node/node_modules), so only the first run pays for them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as triton_pb

from clients_support import RecordingServer, import_client, reference_input, unavailable

import_client()
from tensorgate_client import Client  # noqa: E402

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
BUILD_TIMEOUT_S = 600
RUN_TIMEOUT_S = 30
# Whichever test comes first for a language pays for its build (a cold C++ build takes
# about 40 s on 2 cores): more than the suite's default timeout allows.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S)


@dataclass(frozen=True)
class Language:
    name: str
    tools: tuple[str, ...]  # commands that must be on PATH
    paths: tuple[str, ...] = ()  # files or directories that must exist
    pkg_config: tuple[str, ...] = ()  # pkg-config modules that must be known
    interpreter: tuple[str, ...] = ()  # what runs the built example

    def missing(self) -> list[str]:
        gone = [t for t in self.tools if shutil.which(t) is None]
        gone += [p for p in self.paths if not Path(p).exists()]
        if self.pkg_config and shutil.which("pkg-config"):
            for module in self.pkg_config:
                if subprocess.run(["pkg-config", "--exists", module]).returncode != 0:
                    gone.append(f"pkg-config {module}")
        return gone


LANGUAGES = [
    Language("cpp", ("cmake", "c++", "make", "pkg-config", "protoc", "grpc_cpp_plugin"),
             pkg_config=("grpc++", "protobuf")),  # fmt: skip
    Language("go", ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"),
             paths=("/usr/share/gocode/src/google.golang.org/grpc",
                    "/usr/share/gocode/src/google.golang.org/protobuf")),  # fmt: skip
    Language("node", ("node", "npm"), interpreter=("node",)),
]


@pytest.fixture(scope="module", params=LANGUAGES, ids=lambda lang: lang.name)
def example(request) -> list[str]:
    """The command that runs the built example of one language."""
    lang: Language = request.param
    missing = lang.missing()
    if missing:
        unavailable(f"{lang.name} toolchain incomplete: {', '.join(missing)} (run clients/setup_toolchains.sh)")
    script = CLIENTS / lang.name / "build.sh"
    start = time.monotonic()
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        pytest.fail(f"{script} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    print(f"{lang.name} build: {time.monotonic() - start:.1f} s")
    built = done.stdout.strip().splitlines()[-1]
    assert Path(built).exists(), built
    return [*lang.interpreter, built]


def run_example(command: list[str], url: str, route_key: str = "", timeout_ms: int = 5000):
    args = [*command, url, route_key, str(timeout_ms)]
    return subprocess.run(args, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def python_answer(server) -> np.ndarray:
    with Client(server.grpc_url, timeout=10) as c:
        return c.infer("simple_mlp", {"INPUT0": reference_input()})["OUTPUT0"]


def test_example_answers_as_the_python_client(example, server, python_answer):
    done = run_example(example, server.grpc_url, route_key="canary")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["model_name"] == "simple_mlp"
    output = answer["OUTPUT0"]
    got = np.array(output["data"], dtype=np.float64).astype(np.float32).reshape(output["shape"])
    # Every example prints FP32 values in enough digits to parse back exactly.
    np.testing.assert_array_equal(got, python_answer)


def test_example_sends_route_key_deadline_and_raw_input(example):
    with RecordingServer() as srv:
        done = run_example(example, srv.url, route_key="tenant-7", timeout_ms=4000)
        assert done.returncode == 0, done.stderr
        call = srv.only_call()
    assert call.method == "ModelInfer"
    assert call.metadata["x-tensorgate-route-key"] == "tenant-7"
    assert call.time_remaining is not None and 1.0 < call.time_remaining <= 4.1
    request = triton_pb.ModelInferRequest.FromString(call.request)
    assert request.model_name == "simple_mlp"
    assert request.parameters["route_key"].string_param == "tenant-7"
    assert [(i.name, i.datatype, list(i.shape)) for i in request.inputs] == [("INPUT0", "FP32", [2, 16])]
    assert request.raw_input_contents[0] == reference_input().astype("<f4").tobytes()


def test_example_honours_its_deadline(example):
    def slow(method, request, context):
        time.sleep(3)
        context.abort(grpc.StatusCode.INTERNAL, "too late")

    with RecordingServer(slow) as srv:
        start = time.monotonic()
        done = run_example(example, srv.url, timeout_ms=300)
        elapsed = time.monotonic() - start
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "deadline" in done.stderr.lower(), done.stderr
    assert elapsed < 2.5


def test_example_rejects_a_wrong_answer(example):
    def wrong_shape(method, request, context):
        response = triton_pb.ModelInferResponse(model_name="simple_mlp")
        response.outputs.add(name="OUTPUT0", datatype="FP32", shape=[2, 4])
        response.raw_output_contents.append(b"\x00" * 32)
        return response.SerializeToString()

    with RecordingServer(wrong_shape) as srv:
        done = run_example(example, srv.url)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "wrong answer" in done.stderr


def test_route_key_is_optional(example, server, python_answer):
    done = run_example(example, server.grpc_url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["OUTPUT0"]["shape"] == [2, 8]
