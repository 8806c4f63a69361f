"""Variable-length batching end to end: a small BERT-like encoder (embedding, masked
mean pooling) served with ``variable_length_batching``; requests of random lengths
from many clients batch together, and every answer equals the request run alone."""

from __future__ import annotations

import threading
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from e2e_support import build_models, start_server

ATOL = 1e-5  # float32 sums in a different order: padding adds exact zeros only


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_models.build_varlen_repository(tmp_path_factory.mktemp("varlen_repo"))


@pytest.fixture(scope="module")
def server(repo):
    with start_server(repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def alone(repo):
    """The encoder in-process: one request at a time, no padding."""
    session = ort.InferenceSession(str(repo / "encoder" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return lambda ids: session.run(None, {"input_ids": ids,
                                          "attention_mask": np.ones_like(ids)})


def _request(ids):
    inputs = [grpcclient.InferInput("input_ids", list(ids.shape), "INT64"),
              grpcclient.InferInput("attention_mask", list(ids.shape), "INT64")]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(np.ones_like(ids))
    return inputs


def _stats(client, model):
    return client.get_inference_statistics(model, as_json=True)["model_stats"][0]


def test_a_model_that_is_not_padding_invariant_is_refused(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["encoder"].state == "READY"
    assert index["encoder_unmasked"].state == "UNAVAILABLE"
    assert "not padding-invariant" in index["encoder_unmasked"].reason
    assert "token_embeddings" in index["encoder_unmasked"].reason or \
        "sentence_embedding" in index["encoder_unmasked"].reason
    client.close()


def test_random_lengths_batch_together_and_answer_as_alone(server, alone):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    before = _stats(client, "encoder")
    rng = np.random.default_rng(7)
    jobs = [rng.integers(1, 50, size=(1, int(n)), dtype=np.int64)
            for n in rng.integers(5, 65, size=96)]
    failures = []
    results = {}

    def worker(k):
        c = grpcclient.InferenceServerClient(server.grpc_url)
        for i in range(k, len(jobs), 16):
            try:
                r = c.infer("encoder", _request(jobs[i]))
                results[i] = (r.as_numpy("token_embeddings"), r.as_numpy("sentence_embedding"))
            except Exception as exc:  # collected: the assertion below names it
                failures.append(exc)
        c.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:3]
    for i, ids in enumerate(jobs):
        tokens, pooled = results[i]
        want_tokens, want_pooled = alone(ids)
        assert tokens.shape == (1, ids.shape[1], 8)  # sliced back to its own length
        np.testing.assert_allclose(tokens, want_tokens, atol=ATOL)
        np.testing.assert_allclose(pooled, want_pooled, atol=ATOL)
    after = _stats(client, "encoder")
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    assert inferences == len(jobs)
    assert executions < inferences, (executions, inferences)  # batches really formed
    assert max(int(b["batch_size"]) for b in after["batch_stats"]) > 1
    metrics = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10)
    text = metrics.read().decode()
    real = padded = None
    for line in text.splitlines():
        if line.startswith('tensorgate_varlen_real_elements_total{model="encoder"'):
            real = float(line.rsplit(" ", 1)[1])
        if line.startswith('tensorgate_varlen_padded_elements_total{model="encoder"'):
            padded = float(line.rsplit(" ", 1)[1])
    assert real == 2 * sum(ids.size for ids in jobs)  # two padded inputs
    assert padded >= real
    print(f"padding overhead {padded / real - 1:.1%}, {inferences} requests in "
          f"{executions} executions")
    client.close()


def test_requests_alone_and_in_batches_of_several_rows(server, alone):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    ids = np.arange(1, 25, dtype=np.int64).reshape(2, 12) % 50
    r = client.infer("encoder", _request(ids))
    for row in range(2):
        want = alone(ids[row:row + 1])
        np.testing.assert_allclose(r.as_numpy("sentence_embedding")[row:row + 1], want[1],
                                   atol=ATOL)
    client.close()


def test_padded_inputs_must_share_their_length(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = [grpcclient.InferInput("input_ids", [1, 5], "INT64"),
              grpcclient.InferInput("attention_mask", [1, 6], "INT64")]
    inputs[0].set_data_from_numpy(np.ones((1, 5), np.int64))
    inputs[1].set_data_from_numpy(np.ones((1, 6), np.int64))
    with pytest.raises(InferenceServerException) as err:
        client.infer("encoder", inputs)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'input_ids' has 5, 'attention_mask' has 6" in err.value.message()
    client.close()
