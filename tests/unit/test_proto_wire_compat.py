"""Wire compatibility of proto/inference/*.proto with Triton's own definitions.

The reference is the official client, ``tritonclient.grpc`` (``service_pb2`` is
built from Triton's grpc_service.proto, ``model_config_pb2`` from its
model_config.proto). Its descriptors are read in a *subprocess*, so this test never
has two sets of ``inference.*`` symbols in one process and does not rely on our
generated code living in a private descriptor pool. Our side is compiled from the
.proto sources with grpc_tools.protoc into a descriptor set under tmp_path, so the
test does not depend on a build of the package either.

Compared, for every message (nested ones included), enum and service: field
names, numbers, types, labels, type names, oneof membership, field options
(packed-ness), map-entry-ness, enum values, methods with their input/output types
and streaming flags. Comments, json_name, file names and declaration order are
ignored.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Skip only when the reference client is absent. Importing the top-level package
# does not load its *_pb2 modules into this process.
pytest.importorskip("tritonclient")

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"

# Our file (relative to proto/) -> the reference module that mirrors it.
FILES = {
    "inference/model_config.proto": "tritonclient.grpc.model_config_pb2",
    "inference/grpc_service.proto": "tritonclient.grpc.service_pb2",
}

# A config.pbtxt exercising most of what real Triton model repositories use.
TRITON_CONFIG_PBTXT = """
name: "resnet50"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 32
version_policy { specific { versions: [ 1, 3 ] } }
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape { shape: [ 1, 3, 224, 224 ] }
  },
  {
    name: "mask"
    data_type: TYPE_BOOL
    dims: [ -1 ]
    optional: true
    allow_ragged_batch: true
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1, 1000 ] }
    label_filename: "labels.txt"
  }
]
dynamic_batching {
  preferred_batch_size: [ 8, 16 ]
  max_queue_delay_microseconds: 100
  preserve_ordering: true
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy {
    timeout_action: REJECT
    default_timeout_microseconds: 5000
    allow_timeout_override: true
    max_queue_size: 64
  }
  priority_queue_policy [
    { key: 1 value { timeout_action: DELAY max_queue_size: 16 } },
    { key: 2 value { default_timeout_microseconds: 100000 } }
  ]
}
instance_group [
  { name: "gpu_group" count: 2 kind: KIND_GPU gpus: [ 0, 1 ] },
  { count: 1 kind: KIND_CPU rate_limiter { resources [ { name: "R1" count: 4 } ] priority: 2 } }
]
optimization {
  graph { level: 1 }
  priority: PRIORITY_MAX
  execution_accelerators {
    gpu_execution_accelerator [
      {
        name: "tensorrt"
        parameters { key: "precision_mode" value: "FP16" }
        parameters { key: "max_workspace_size_bytes" value: "1073741824" }
      }
    ]
    cpu_execution_accelerator [ { name: "openvino" } ]
  }
  cuda { graphs: true busy_wait_events: false }
  input_pinned_memory { enable: true }
  output_pinned_memory { enable: false }
}
parameters { key: "intra_op_thread_count" value { string_value: "4" } }
parameters [ { key: "enable_mem_arena" value { string_value: "1" } } ]
model_warmup [
  {
    name: "zeros"
    batch_size: 8
    count: 2
    inputs { key: "input" value { data_type: TYPE_FP32 dims: [ 3, 224, 224 ] zero_data: true } }
  },
  {
    name: "random"
    batch_size: 1
    inputs [ { key: "input" value { data_type: TYPE_FP32 dims: [ 3, 224, 224 ] random_data: true } } ]
  }
]
default_model_filename: "model.onnx"
metric_tags { key: "team" value: "vision" }
response_cache { enable: true }
model_transaction_policy { decoupled: false }
"""

# Alternatives for the other oneof arms and schedulers, each parsed on its own.
EXTRA_CONFIGS = {
    "version_policy_latest": 'name: "a" version_policy { latest { num_versions: 2 } }',
    "version_policy_all": 'name: "a" version_policy { all {} }',
    "sequence_batching": """
        name: "seq"
        max_batch_size: 4
        sequence_batching {
          max_sequence_idle_microseconds: 5000000
          oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2, 4 ] }
          control_input [
            { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
            { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
          ]
          state [
            {
              input_name: "INPUT_STATE" output_name: "OUTPUT_STATE"
              data_type: TYPE_INT32 dims: [ -1 ]
              initial_state { name: "init" data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }
            }
          ]
        }
    """,
    "ensemble": """
        name: "ens"
        platform: "ensemble"
        ensemble_scheduling {
          step [
            {
              model_name: "pre" model_version: -1
              input_map { key: "IN" value: "RAW" }
              output_map { key: "OUT" value: "PREPPED" }
            }
          ]
        }
    """,
}

_REFERENCE_SCRIPT = textwrap.dedent(
    """
    import base64, importlib, json, sys
    from google.protobuf import descriptor_pb2, text_format

    request = json.load(sys.stdin)
    out = {"descriptors": {}, "configs": {}}
    for ours, module_name in request["files"].items():
        module = importlib.import_module(module_name)
        fdp = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(fdp)
        out["descriptors"][ours] = base64.b64encode(fdp.SerializeToString()).decode()
    from tritonclient.grpc import model_config_pb2
    for key, text in request["configs"].items():
        cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
        out["configs"][key] = base64.b64encode(cfg.SerializeToString(deterministic=True)).decode()
    json.dump(out, sys.stdout)
    """
)


def _all_configs() -> dict[str, str]:
    return {"main": TRITON_CONFIG_PBTXT, **EXTRA_CONFIGS}


@pytest.fixture(scope="module")
def reference() -> dict:
    """Triton's descriptors and serialized configs, produced by tritonclient in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-c", _REFERENCE_SCRIPT],
        input=json.dumps({"files": FILES, "configs": _all_configs()}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"reading tritonclient's descriptors failed:\n{proc.stderr}"
    raw = json.loads(proc.stdout)
    descriptors = {}
    for ours, b64 in raw["descriptors"].items():
        fdp = descriptor_pb2.FileDescriptorProto()
        fdp.ParseFromString(base64.b64decode(b64))
        descriptors[ours] = fdp
    configs = {key: base64.b64decode(b64) for key, b64 in raw["configs"].items()}
    return {"descriptors": descriptors, "configs": configs}


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Our .proto files compiled with grpc_tools.protoc into a descriptor set."""
    from grpc_tools import protoc  # build requirement: its absence is a failure, not a skip

    out = tmp_path_factory.mktemp("proto") / "inference.pb"
    include = Path(protoc.__file__).resolve().parent / "_proto"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--descriptor_set_out={out}",
            *[str(PROTO_ROOT / rel) for rel in FILES],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"protoc rejected proto/inference:\n{proc.stderr}{proc.stdout}"
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    by_name = {f.name: f for f in fds.file}
    missing = set(FILES) - set(by_name)
    assert not missing, f"descriptor set lacks {sorted(missing)}"
    return {name: by_name[name] for name in FILES}


# --------------------------------------------------------------------------------------
# Normalisation: turn a FileDescriptorProto into plain, order-independent dicts.
# --------------------------------------------------------------------------------------

_TYPE = {v: k for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()}
_LABEL = {v: k for k, v in descriptor_pb2.FieldDescriptorProto.Label.items()}


def _type_name(name: str, package: str) -> str:
    name = name.lstrip(".")
    prefix = package + "."
    return name[len(prefix) :] if package and name.startswith(prefix) else name


def _options(opts) -> str:
    # Field/enum options (packed, deprecated, allow_alias, ...) in a stable text form.
    return text_format.MessageToString(opts, as_one_line=True)


def _field(f, msg, package: str) -> dict:
    return {
        "name": f.name,
        "type": _TYPE[f.type],
        "label": _LABEL[f.label],
        "type_name": _type_name(f.type_name, package) if f.type_name else "",
        "oneof": msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None,
        "proto3_optional": f.proto3_optional,
        "default_value": f.default_value,
        "extendee": _type_name(f.extendee, package) if f.extendee else "",
        "options": _options(f.options),
    }


def _enum(e) -> dict:
    return {
        "values": {v.number: v.name for v in e.value},
        "value_names": sorted(v.name for v in e.value),
        "options": _options(e.options),
    }


def _collect(fdp: descriptor_pb2.FileDescriptorProto) -> dict:
    """Flatten one file into {'messages', 'enums', 'services'} keyed by qualified name."""
    package = fdp.package
    messages: dict[str, dict] = {}
    enums: dict[str, dict] = {}

    def walk(msg, scope: str) -> None:
        qual = f"{scope}{msg.name}"
        messages[qual] = {
            "map_entry": msg.options.map_entry,
            "fields": {f.number: _field(f, msg, package) for f in msg.field},
            "oneofs": sorted(o.name for o in msg.oneof_decl),
            "reserved_ranges": sorted((r.start, r.end) for r in msg.reserved_range),
            "reserved_names": sorted(msg.reserved_name),
            "extension_ranges": sorted((r.start, r.end) for r in msg.extension_range),
        }
        for e in msg.enum_type:
            enums[f"{qual}.{e.name}"] = _enum(e)
        for nested in msg.nested_type:
            walk(nested, qual + ".")

    for msg in fdp.message_type:
        walk(msg, "")
    for e in fdp.enum_type:
        enums[e.name] = _enum(e)

    services = {
        s.name: {
            m.name: {
                "input_type": _type_name(m.input_type, package),
                "output_type": _type_name(m.output_type, package),
                "client_streaming": m.client_streaming,
                "server_streaming": m.server_streaming,
            }
            for m in s.method
        }
        for s in fdp.service
    }
    return {
        "package": package,
        "syntax": fdp.syntax or "proto2",
        "dependencies": sorted(Path(d).name for d in fdp.dependency),
        "extensions": sorted(x.name for x in fdp.extension),
        "messages": messages,
        "enums": enums,
        "services": services,
    }


def _differences(expected, actual, path: str):
    """Yield readable differences between two normalised structures, in a stable order."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual), key=lambda k: (str(type(k)), k)):
            where = f"{path}.{key}" if path else str(key)
            if key not in actual:
                yield f"{where}: missing in ours (Triton has {expected[key]!r})"
            elif key not in expected:
                yield f"{where}: extra in ours ({actual[key]!r}), Triton has no such entry"
            else:
                yield from _differences(expected[key], actual[key], where)
    elif expected != actual:
        yield f"{path}: Triton has {expected!r}, ours has {actual!r}"


@pytest.mark.parametrize("filename", sorted(FILES))
def test_descriptors_match_triton(filename, reference, ours):
    expected = _collect(reference["descriptors"][filename])
    actual = _collect(ours[filename])
    diffs = list(_differences(expected, actual, ""))
    assert not diffs, (
        f"{filename} is not wire-compatible with {FILES[filename]}; first difference:\n"
        f"  {diffs[0]}\n({len(diffs)} difference(s) in all)"
    )


def test_reference_is_not_empty(reference):
    # Guard against a vacuous pass (e.g. an empty descriptor coming back).
    svc = _collect(reference["descriptors"]["inference/grpc_service.proto"])
    cfg = _collect(reference["descriptors"]["inference/model_config.proto"])
    methods = svc["services"]["GRPCInferenceService"]
    assert len(methods) == 20
    assert methods["ModelStreamInfer"]["client_streaming"]
    assert methods["ModelStreamInfer"]["server_streaming"]
    assert "ModelConfig" in cfg["messages"] and "DataType" in cfg["enums"]


def _our_model_config_class(ours):
    pool = descriptor_pool.DescriptorPool()  # private: never the default pool
    for name in FILES:  # dependency order: model_config first
        pool.Add(ours[name])
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


@pytest.mark.parametrize("key", sorted(_all_configs()))
def test_triton_config_pbtxt_round_trips(key, reference, ours):
    """A Triton config.pbtxt parses with our schema and encodes to Triton's exact bytes."""
    model_config_cls = _our_model_config_class(ours)
    text = _all_configs()[key]
    cfg = text_format.Parse(text, model_config_cls())
    ours_bytes = cfg.SerializeToString(deterministic=True)
    assert ours_bytes == reference["configs"][key], (
        f"config {key!r}: our encoding differs from tritonclient's"
    )
    # And Triton's bytes decode with our schema to the same message.
    back = model_config_cls()
    back.ParseFromString(reference["configs"][key])
    assert back == cfg


def test_main_config_fields(ours):
    model_config_cls = _our_model_config_class(ours)
    cfg = text_format.Parse(TRITON_CONFIG_PBTXT, model_config_cls())
    assert cfg.max_batch_size == 32
    assert list(cfg.input[0].reshape.shape) == [1, 3, 224, 224]
    assert cfg.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]
    assert cfg.dynamic_batching.priority_queue_policy[1].max_queue_size == 16
    kind = cfg.instance_group[0].DESCRIPTOR.fields_by_name["kind"].enum_type
    assert cfg.instance_group[0].kind == kind.values_by_name["KIND_GPU"].number
    assert cfg.instance_group[1].kind == kind.values_by_name["KIND_CPU"].number
    assert list(cfg.instance_group[0].gpus) == [0, 1]
    assert cfg.version_policy.WhichOneof("policy_choice") == "specific"
    assert cfg.parameters["intra_op_thread_count"].string_value == "4"
    assert cfg.optimization.graph.level == 1
    accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    assert cfg.model_warmup[0].inputs["input"].WhichOneof("input_data_type") == "zero_data"
