"""The text pipeline example (examples/text_pipeline): a tokenizer as an ONNX model
(onnxruntime-extensions' BertTokenizer, a custom-op library named in config
``model_operations``), an encoder and a post-processing head, chained by ensembles;
text in, an embedding or labels out, equal to the same computation in-process."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from e2e_support import REPO_ROOT, start_server

if importlib.util.find_spec("onnxruntime_extensions") is None:  # importorskip would import it
    pytest.skip("onnxruntime-extensions is not installed", allow_module_level=True)
from tensorgate.runtime.session import import_onnxruntime_extensions  # noqa: E402

# Imported without its os.environ side effect (it would put every server the test
# session starts afterwards on protobuf's pure-Python implementation).
extensions = import_onnxruntime_extensions()
sys.path.insert(0, str(REPO_ROOT / "examples" / "text_pipeline"))
import build as text_pipeline  # noqa: E402

TEXTS = ["The cat sat on the mat", "a dog ran in the park", "the movie was very good",
         "bad"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = text_pipeline.build(tmp_path_factory.mktemp("text_pipeline"))
    (root / "broken_tokenizer").mkdir()
    (root / "broken_tokenizer" / "1").mkdir()
    (root / "broken_tokenizer" / "1" / "model.onnx").write_bytes(
        (root / "tokenizer" / "1" / "model.onnx").read_bytes())
    (root / "broken_tokenizer" / "config.pbtxt").write_text(
        (root / "tokenizer" / "config.pbtxt").read_text()
        .replace('"tokenizer"', '"broken_tokenizer"')
        .replace('op_library_filename: "onnxruntime_extensions"',
                 'op_library_filename: "../../outside.so"'))
    return root


@pytest.fixture(scope="module")
def server(repo):
    with start_server(repo) as srv:
        yield srv


def _in_process(repo, text: str):
    options = ort.SessionOptions()
    options.register_custom_ops_library(extensions.get_library_path())
    tok = ort.InferenceSession(str(repo / "tokenizer" / "1" / "model.onnx"), options,
                               providers=["CPUExecutionProvider"])
    enc = ort.InferenceSession(str(repo / "encoder" / "1" / "model.onnx"),
                               providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(repo / "labels" / "1" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    ids, mask = tok.run(None, {"TEXT": np.array([text], dtype=object)})
    embedding = enc.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    labels, scores = head.run(None, {"sentence_embedding": embedding})
    return embedding, labels, scores


def _text(lib, text):
    inp = lib.InferInput("TEXT", [1], "BYTES")
    inp.set_data_from_numpy(np.array([text.encode()], dtype=object))
    return [inp]


def test_text_in_embedding_out(server, repo):
    grpc_client = grpcclient.InferenceServerClient(server.grpc_url)
    http_client = httpclient.InferenceServerClient(server.http_url)
    for text in TEXTS:
        want, _, _ = _in_process(repo, text)
        got = grpc_client.infer("embed", _text(grpcclient, text)).as_numpy("sentence_embedding")
        np.testing.assert_allclose(got, want, atol=1e-6)
        got = http_client.infer("embed", _text(httpclient, text)).as_numpy("sentence_embedding")
        np.testing.assert_allclose(got, want, atol=1e-6)
    grpc_client.close()
    http_client.close()


def test_text_in_labels_out(server, repo):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for text in TEXTS:
        _, labels, scores = _in_process(repo, text)
        result = client.infer("classify", _text(grpcclient, text))
        got = [x.decode() for x in result.as_numpy("LABELS").reshape(-1)]
        assert got == [str(x) for x in labels.reshape(-1)]
        assert set(x.decode() for x in result.as_numpy("LABELS").reshape(-1)) <= set(
            text_pipeline.LABELS)
        np.testing.assert_allclose(result.as_numpy("SCORES"), scores, atol=1e-6)
    client.close()


def test_an_op_library_outside_the_model_is_refused(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["broken_tokenizer"].state == "UNAVAILABLE"
    assert ("op_library_filename '../../outside.so': must be a path inside the model "
            "directory") in index["broken_tokenizer"].reason
    assert index["tokenizer"].state == "READY"
    client.close()
