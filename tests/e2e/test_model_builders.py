"""The model builders themselves (no server): deterministic output, configs that parse as
Triton's ModelConfig, and a committed demo repository that matches its generator."""

from __future__ import annotations

import filecmp

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from e2e_support import DEMO_REPOSITORY, build_models


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_test_repository_is_deterministic(test_repo, tmp_path):
    again = build_models.build_test_repository(tmp_path / "again")
    assert _files(again) == _files(test_repo)
    for rel in _files(test_repo):
        assert filecmp.cmp(test_repo / rel, again / rel, shallow=False), rel


def test_committed_demo_repository_matches_generator(tmp_path):
    fresh = build_models.build_demo_repository(tmp_path / "demo")
    regenerate = "python tests/models/build_models.py demo server/tensorgate/demo_repository"
    assert _files(DEMO_REPOSITORY) == _files(fresh), regenerate
    for rel in _files(fresh):
        assert filecmp.cmp(DEMO_REPOSITORY / rel, fresh / rel, shallow=False), (rel, regenerate)


@pytest.mark.parametrize("which", ["demo", "test"])
def test_configs_parse_as_model_config(which, test_repo):
    root = DEMO_REPOSITORY if which == "demo" else test_repo
    configs = sorted(root.glob("*/config.pbtxt"))
    assert configs
    for path in configs:
        if path.parent.name == "bad_config":
            with pytest.raises(text_format.ParseError):
                text_format.Parse(path.read_text(), mc.ModelConfig())
            continue
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
        if config.name:
            assert config.name == path.parent.name


def test_model_files_are_valid_onnx(test_repo):
    for path in sorted([*test_repo.rglob("model.onnx"), *DEMO_REPOSITORY.rglob("model.onnx")]):
        if "corrupt_model" in path.parts:
            continue
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        assert model.ir_version == build_models.IR_VERSION
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [
            build_models.OPSET
        ]


def test_identity_models_round_trip_in_onnxruntime(test_repo):
    for dtype in build_models.DTYPES:
        x = build_models.sample(dtype, (3, 4), np.random.default_rng(5))
        path = test_repo / f"identity_{dtype.suffix}" / "1" / "model.onnx"
        out = build_models.run_onnx(path, {"INPUT0": x})
        for name in ("OUTPUT0", "OUTPUT1"):
            if dtype.numpy is np.object_:
                assert list(out[name].ravel()) == list(x.ravel())
            else:
                assert out[name].dtype == x.dtype and out[name].tobytes() == x.tobytes()
