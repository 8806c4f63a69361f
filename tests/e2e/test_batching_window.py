"""The dynamic batcher's queue delay against Triton's: TensorGate's idle flush may send
a request sooner than Triton would, never later; requests sent together batch together;
a request of another shape sends the batch ahead of it at once; Triton's
TRITONSERVER_DELAY_SCHEDULER test hook is honoured.

The windows are seconds long on purpose: a request that waits one out shows as seconds,
far beyond any scheduling noise on a loaded machine.
"""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from e2e_support import infer_input, server_env, start_server

WINDOW_US = 10_000_000  # the idle-flush model: nothing may wait this long
STRICT_WINDOW_US = 4_000_000


def _model(test_repo, repo, name: str, delay_us: int, idle_flush: bool) -> None:
    """identity_fp32 (INPUT0 [-1, -1] FP32) with Triton's L0_batcher window."""
    shutil.copytree(test_repo / "identity_fp32", repo / name)
    flush = "" if idle_flush else (
        'parameters {\n  key: "batching_idle_flush"\n  value: { string_value: "false" }\n}\n'
    )
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }\n'
        'output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }\n'
        'output { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ -1 ] }\n'
        "dynamic_batching {\n  preferred_batch_size: [ 2, 6 ]\n"
        f"  max_queue_delay_microseconds: {delay_us}\n}}\n" + flush
    )


def _slow_model(root, name: str, delay_us: int) -> None:
    """INPUT0 [batch, 1024] FP32 through 400 MatMul+Tanh layers (one weight): ~50 ms per
    row, so that requests sent together queue behind the first one's run."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width, layers = 1024, 400
    weight = numpy_helper.from_array(
        (np.random.default_rng(0).standard_normal((width, width)) / width).astype(np.float32),
        "W",
    )
    nodes, last = [], "INPUT0"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [last, "W"], [f"m{i}"]))
        last = f"t{i}" if i < layers - 1 else "OUTPUT0"
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [last]))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", width])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    (root / name / "1").mkdir(parents=True)
    onnx.save(model, root / name / "1" / "model.onnx")
    (root / name / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1024 ] }\n'
        'output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1024 ] }\n'
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}\n"
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
    )


@pytest.fixture(scope="module")
def repo(test_repo, tmp_path_factory):
    root = tmp_path_factory.mktemp("window") / "repo"
    _model(test_repo, root, "window", WINDOW_US, idle_flush=True)
    _slow_model(root, "slow_window", WINDOW_US)
    _model(test_repo, root, "window_strict", STRICT_WINDOW_US, idle_flush=False)
    _model(test_repo, root, "held", 0, idle_flush=False)
    _model(test_repo, root, "held_flush", 0, idle_flush=True)
    return root


@pytest.fixture(scope="module")
def server(repo):
    with start_server(repo) as srv:
        yield srv


def _send_together(url: str, model: str, requests: list[tuple[int, int, float]],
                   check: bool = True):
    """Send each (rows, width, start offset s) from its own thread and client; the
    seconds each took, from its own start, in order. ``check``: an identity model,
    whose output must equal the input."""
    took = [None] * len(requests)
    errors = []
    start = time.monotonic()

    def one(i, rows, width, offset):
        client = grpcclient.InferenceServerClient(url)
        try:
            time.sleep(max(0.0, start + offset - time.monotonic()))
            t0 = time.monotonic()
            x = np.full((rows, width), i, np.float32)
            out = client.infer(model, [infer_input("INPUT0", x)], client_timeout=60)
            if check:
                np.testing.assert_array_equal(out.as_numpy("OUTPUT0"), x)
            took[i] = time.monotonic() - t0
        except Exception as exc:  # reported below, on the test's thread
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=(i, *r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    return took


def _batches(client, model: str) -> dict[int, int]:
    stats = client.get_inference_statistics(model).model_stats[0]
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def test_requests_sent_together_never_wait_out_the_window(server):
    """Triton runs two batch-1 requests sent together as one batch of 2 at once. The
    idle flush sends the first at once; the second must not then wait 10 s: it goes
    when the model is idle again."""
    for count in (2, 4, 2):
        took = _send_together(server.grpc_url, "window", [(1, 16, 0.0)] * count)
        assert max(took) < WINDOW_US / 1e6 / 2, took


def test_what_queues_during_a_batch_goes_as_one_batch_when_it_ends(server, client):
    """Six requests sent together to a model that takes milliseconds (no preferred
    sizes: a batch may take all 8 rows): the first goes at once, those that queue
    behind its run go together when it ends, not after the 10 s window."""
    # One channel, six calls in flight at once (microseconds apart, while a run
    # takes tens of milliseconds): none arrives after the first run ended.
    done, results = threading.Event(), []

    def callback(result, error):
        results.append((time.monotonic(), error))
        if len(results) == 6:
            done.set()

    x = np.ones((1, 1024), np.float32)
    start = time.monotonic()
    for _ in range(6):
        client.async_infer("slow_window", [infer_input("INPUT0", x)], callback)
    assert done.wait(60), results
    assert all(error is None for _, error in results), results
    took = [t - start for t, _ in results]
    assert max(took) < WINDOW_US / 1e6 / 2, took
    batches = _batches(client, "slow_window")
    assert sum(batches.values()) < 6, batches  # they shared batches
    assert max(batches) >= 2, batches


def test_strict_window_batches_requests_sent_together(server, client):
    before = _batches(client, "window_strict")
    took = _send_together(server.grpc_url, "window_strict", [(1, 16, 0.0)] * 2)
    assert max(took) < STRICT_WINDOW_US / 1e6 / 2, took  # preferred size 2 reached
    after = _batches(client, "window_strict")
    assert after.get(2, 0) - before.get(2, 0) == 1


def test_a_request_of_another_shape_sends_the_batch_ahead_of_it(server, client):
    """Triton's test_multi_batch_not_preferred_different_shape: 1 + 3 rows (4, between
    the preferred sizes) wait until a request of another shape arrives 0.5 s later and
    then go at once as one batch; the newcomer waits its own window."""
    before = _batches(client, "window_strict")
    took = _send_together(
        server.grpc_url, "window_strict", [(1, 16, 0.0), (3, 16, 0.0), (1, 8, 0.5)]
    )
    window = STRICT_WINDOW_US / 1e6
    assert took[0] < window / 2 and took[1] < window / 2, took
    assert took[2] >= window * 0.9, took
    after = _batches(client, "window_strict")
    assert after.get(4, 0) - before.get(4, 0) == 1
    assert after.get(1, 0) - before.get(1, 0) == 1


def test_tritons_delay_scheduler_hook_holds_the_first_requests(repo):
    env = server_env(TRITONSERVER_DELAY_SCHEDULER="3")
    with start_server(repo, env=env) as srv:
        assert "TRITONSERVER_DELAY_SCHEDULER=3 (a test hook)" in srv.log
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        try:
            # Two requests are held (the model's delay is 0) until the third arrives;
            # then the batching rules apply as usual: preferred size 2, then the rest.
            # The idle flush and inline runs do not bypass the hold either.
            for model in ("held", "held_flush"):
                took = _send_together(
                    srv.grpc_url, model, [(1, 4, 0.0), (1, 4, 0.0), (1, 4, 1.0)]
                )
                assert min(took[:2]) >= 0.8, (model, took)
                assert _batches(client, model) == {2: 1, 1: 1}, model
        finally:
            client.close()
