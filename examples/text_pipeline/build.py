"""Write the text pipeline example repository: text in, a sentence embedding or labels
out, tokenisation and post-processing inside the server, no Python backend.

    python examples/text_pipeline/build.py DIR
    tensorgate serve --model-repository DIR

Models (random weights: this shows the plumbing, not a trained model):
- ``tokenizer``: onnxruntime-extensions' BertTokenizer (a custom op, loaded with
  ``model_operations { op_library_filename: "onnxruntime_extensions" }``); TEXT BYTES [1]
  -> input_ids, attention_mask INT64 [1, sequence].
- ``encoder``: a small BERT-like encoder with variable-length batching; input_ids,
  attention_mask -> sentence_embedding FP32 [batch, 8].
- ``labels``: post-processing: a linear head over the embedding, then the top 2 labels
  (ONNX TopK and a Gather over the label strings): sentence_embedding -> LABELS BYTES
  [batch, 2], SCORES FP32 [batch, 2].
- ``embed`` (ensemble): tokenizer -> encoder; TEXT -> sentence_embedding.
- ``classify`` (ensemble): tokenizer -> encoder -> labels; TEXT -> LABELS, SCORES.

Needs ``pip install onnx onnxruntime-extensions``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests" / "models"))
import build_models  # noqa: E402  (the test models' builders: the encoder)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat",
         "ran", "on", "mat", "park", "in", "good", "bad", "movie", "was", "very", "##s"]
LABELS = ["negative", "neutral", "positive"]
HIDDEN = 8
OPSET, IR_VERSION = 17, 10


def tokenizer() -> onnx.ModelProto:
    nodes = [
        helper.make_node("BertTokenizer", ["TEXT"], ["ids1", "types1", "mask1"],
                         domain="ai.onnx.contrib", vocab_file="\n".join(VOCAB),
                         do_lower_case=1),
        helper.make_node("Unsqueeze", ["ids1", "axes0"], ["input_ids"]),
        helper.make_node("Unsqueeze", ["mask1", "axes0"], ["attention_mask"]),
    ]
    graph = helper.make_graph(
        nodes, "tokenizer", [helper.make_tensor_value_info("TEXT", TensorProto.STRING, [1])],
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "sequence"])],
        initializer=[helper.make_tensor("axes0", TensorProto.INT64, [1], [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("ai.onnx.contrib", 1)])
    model.ir_version = IR_VERSION
    return model


def labels_head() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    w = rng.standard_normal((HIDDEN, len(LABELS))).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["sentence_embedding", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("TopK", ["probs", "k"], ["SCORES", "index"], axis=-1),
        helper.make_node("Gather", ["names", "index"], ["LABELS"]),
    ]
    graph = helper.make_graph(
        nodes, "labels",
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT,
                                       ["batch", HIDDEN])],
        [helper.make_tensor_value_info("LABELS", TensorProto.STRING, ["batch", 2]),
         helper.make_tensor_value_info("SCORES", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            helper.make_tensor("W", TensorProto.FLOAT, list(w.shape), w.ravel()),
            helper.make_tensor("k", TensorProto.INT64, [1], [2]),
            helper.make_tensor("names", TensorProto.STRING, [len(LABELS)],
                               [x.encode() for x in LABELS]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _write(root: Path, name: str, model: onnx.ModelProto | None, config: str) -> None:
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    if model is not None:
        (root / name / "1" / "model.onnx").write_bytes(model.SerializeToString())
    (root / name / "config.pbtxt").write_text(config)


def build(root: Path) -> Path:
    root = Path(root)
    _write(root, "tokenizer", tokenizer(), """name: "tokenizer"
max_batch_size: 0
input { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }
output { name: "input_ids" data_type: TYPE_INT64 dims: [ 1, -1 ] }
output { name: "attention_mask" data_type: TYPE_INT64 dims: [ 1, -1 ] }
model_operations { op_library_filename: "onnxruntime_extensions" }
""")
    _write(root, "encoder", build_models.text_encoder("encoder", vocab=len(VOCAB),
                                                      hidden=HIDDEN),
           build_models.text_encoder_config("encoder", max_batch_size=16, delay_us=1000))
    _write(root, "labels", labels_head(), """name: "labels"
max_batch_size: 16
input { name: "sentence_embedding" data_type: TYPE_FP32 dims: [ 8 ] }
output { name: "LABELS" data_type: TYPE_STRING dims: [ 2 ] }
output { name: "SCORES" data_type: TYPE_FP32 dims: [ 2 ] }
dynamic_batching { }
""")
    tokenize = """  step {
    model_name: "tokenizer" model_version: -1
    input_map { key: "TEXT" value: "TEXT" }
    output_map { key: "input_ids" value: "ids" }
    output_map { key: "attention_mask" value: "mask" }
  }
  step {
    model_name: "encoder" model_version: -1
    input_map { key: "input_ids" value: "ids" }
    input_map { key: "attention_mask" value: "mask" }
    output_map { key: "sentence_embedding" value: "%s" }
  }
"""
    _write(root, "embed", None, """name: "embed"
platform: "ensemble"
max_batch_size: 0
input { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }
output { name: "sentence_embedding" data_type: TYPE_FP32 dims: [ 1, 8 ] }
ensemble_scheduling {
%s}
""" % (tokenize % "sentence_embedding"))
    _write(root, "classify", None, """name: "classify"
platform: "ensemble"
max_batch_size: 0
input { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }
output { name: "LABELS" data_type: TYPE_STRING dims: [ 1, 2 ] }
output { name: "SCORES" data_type: TYPE_FP32 dims: [ 1, 2 ] }
ensemble_scheduling {
%s  step {
    model_name: "labels" model_version: -1
    input_map { key: "sentence_embedding" value: "embedding" }
    output_map { key: "LABELS" value: "LABELS" }
    output_map { key: "SCORES" value: "SCORES" }
  }
}
""" % (tokenize % "embedding"))
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        sys.exit(2)
    print(f"wrote {build(Path(sys.argv[1]))}")
