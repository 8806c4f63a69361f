"""Model names and the paths derived from them (repository/paths.py)."""

from __future__ import annotations

import os

import pytest

from tensorgate.errors import InvalidArgument, ModelLoadError, NotFound
from tensorgate.repository.paths import RepositoryPaths, check_name, name_problem


@pytest.mark.parametrize(
    "name",
    ["simple_mlp", "model.version1", "model..1", "..my_model", "...", "a b", "модель", "_x"],
)
def test_names_a_model_may_have(name):
    assert name_problem(name) is None


@pytest.mark.parametrize(
    "name, words",
    [
        ("", "cannot be empty"),
        ("  ", "cannot be empty"),
        ("..", "path traversal"),
        (".", "path traversal"),
        (" .. ", "path traversal"),
        ("../x", "path traversal"),
        ("x/..", "path traversal"),
        ("a\\b", "path traversal"),
        ("/abs", "path traversal"),
        (" x", "whitespace"),
        ("x\t", "whitespace"),
        ("x\x00y", "control characters (\\x00)"),
        ("x\x7fy", "control characters (\\x7f)"),
        ("x\u200by", "control characters (\\u200b)"),
    ],
)
def test_names_refused_with_the_rule(name, words):
    assert words in name_problem(name)
    with pytest.raises(InvalidArgument, match="(?i)model name"):
        check_name(name)


def test_the_message_escapes_control_characters():
    assert "'x\\x00y'" in name_problem("x\x00y")


def test_model_dir_and_files(tmp_path):
    outside = tmp_path / "outside"
    (outside / "1").mkdir(parents=True)
    (outside / "1" / "model.onnx").write_bytes(b"x")
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    os.symlink(outside, repo / "out")
    os.symlink("m", repo / "inside")
    (repo / ".hidden").mkdir()
    paths = RepositoryPaths(repo)

    assert set(paths.model_dirs()) == {"m", "inside"}
    assert paths.model_dir("inside") == repo / "inside"
    with pytest.raises(InvalidArgument, match="leads outside the repository"):
        paths.model_dir("out")
    with pytest.raises(NotFound, match="failed to poll from model repository"):
        paths.model_dir(".hidden")
    with pytest.raises(NotFound):
        paths.model_dir("absent")

    files = paths.model_files(repo / "m")
    assert files.model(1, "model.onnx") == repo / "m" / "1" / "model.onnx"
    for bad in ("../../outside/1/model.onnx", "/etc/passwd", "a/../../x", "..\\x"):
        with pytest.raises(ModelLoadError, match="inside the model directory"):
            files.model(1, bad)
    os.symlink(outside / "1" / "model.onnx", repo / "m" / "1" / "linked.onnx")
    with pytest.raises(ModelLoadError, match="leads outside"):
        files.model(1, "linked.onnx")

    allowed = RepositoryPaths(repo, allow_symlinks_outside=True)
    assert set(allowed.model_dirs()) == {"m", "inside", "out"}
    assert allowed.model_files(repo / "m").model(1, "linked.onnx").name == "linked.onnx"
    with pytest.raises(ModelLoadError, match="inside the model directory"):
        allowed.model_files(repo / "m").model(1, "../../outside/1/model.onnx")
