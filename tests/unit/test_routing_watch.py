"""Repository polling (repository/watch.py) over a fake repository: which changes load,
reload or unload a model."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from tensorgate.repository.paths import RepositoryPaths
from tensorgate.repository.watch import RepositoryWatcher, signature
from tensorgate.settings import Settings


class FakeRepository:
    def __init__(self, root) -> None:
        self.root = root
        self.paths = RepositoryPaths(root)
        self.calls: list[tuple[str, str]] = []

    async def load(self, name):
        self.calls.append(("load", name))
        if name == "bad":
            raise RuntimeError("does not load")

    async def unload(self, name):
        self.calls.append(("unload", name))

    def versions_of(self, name):
        return [1]


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_poll_loads_reloads_and_unloads(tmp_path):
    _touch(tmp_path / "a" / "1" / "model.onnx")
    _touch(tmp_path / "b" / "1" / "model.onnx")
    repo = FakeRepository(tmp_path)

    async def scenario():
        w = RepositoryWatcher(repo, 3600)
        w.start()
        await w.poll_once()
        assert repo.calls == []  # nothing changed since start
        _touch(tmp_path / "a" / "2" / "model.onnx")  # new version
        _touch(tmp_path / "c" / "1" / "model.onnx")  # new model
        _touch(tmp_path / "bad" / "1" / "model.onnx")  # fails to load: logged, poll goes on
        (tmp_path / "a" / ".staging").mkdir()  # hidden: ignored
        await w.poll_once()
        assert sorted(repo.calls) == [("load", "a"), ("load", "bad"), ("load", "c")]
        repo.calls.clear()
        _touch(tmp_path / "a" / ".staging" / "model.onnx")
        await w.poll_once()
        assert repo.calls == []
        shutil.rmtree(tmp_path / "b")
        (tmp_path / "c" / "config.pbtxt").write_text("max_batch_size: 2\n")
        await w.poll_once()
        assert sorted(repo.calls) == [("load", "c"), ("unload", "b")]
        await w.stop()

    asyncio.run(scenario())


def test_signature_sees_rewrites(tmp_path):
    path = tmp_path / "m" / "1" / "model.onnx"
    _touch(path, b"one")
    before = signature(tmp_path / "m")
    _touch(path, b"two!")
    os.utime(path, ns=(1, 1))
    assert signature(tmp_path / "m") != before


def test_poll_setting_is_bounded():
    assert Settings(repository_poll_secs=0.5).repository_poll_secs == 0.5
    with pytest.raises(ValueError, match="repository_poll_secs"):
        Settings(repository_poll_secs=-1)
