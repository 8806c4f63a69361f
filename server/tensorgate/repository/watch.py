"""Polling the repository (``--repository-poll-secs``): new, changed and removed models.

Each model directory has a signature: its config.pbtxt's and version directories'
(name, size, mtime) and every file's under them. A changed signature reloads the model:
new versions are loaded and warmed up before they take traffic, unchanged ones keep
serving (manager.py reuses them), removed ones drain before release. A model directory
that disappears is unloaded (drained). Polling, not inotify: it works on every
filesystem a repository may live on (network mounts, Kubernetes volumes).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

log = logging.getLogger("tensorgate.repository")


def signature(model_dir: Path) -> tuple:
    """What a change of the model on disk changes (cheap: stat calls only)."""
    entries = []
    for root, dirs, files in os.walk(model_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            entries.append((os.path.relpath(path, model_dir), st.st_size, st.st_mtime_ns))
    return tuple(entries)


class RepositoryWatcher:
    def __init__(self, repository, interval: float) -> None:
        self.repository = repository
        self.interval = interval
        self._seen: dict[str, tuple] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._seen = self._scan()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _scan(self) -> dict[str, tuple]:
        try:
            dirs = self.repository.paths.model_dirs()
        except OSError:
            return dict(self._seen)
        return {name: signature(path) for name, path in dirs.items()}

    async def poll_once(self) -> None:
        now = await asyncio.to_thread(self._scan)
        for name, sig in now.items():
            if self._seen.get(name) != sig:
                log.info("repository change: model %s %s", name,
                         "added" if name not in self._seen else "changed")
                try:
                    await self.repository.load(name)
                except Exception as exc:  # logged and listed by RepositoryIndex
                    log.warning("reload of %s after a repository change failed: %s", name, exc)
        for name in set(self._seen) - set(now):
            if self.repository.versions_of(name):
                log.info("repository change: model %s removed", name)
                try:
                    await self.repository.unload(name)
                except Exception as exc:
                    log.warning("unload of removed model %s failed: %s", name, exc)
        self._seen = now

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("repository poll failed")
