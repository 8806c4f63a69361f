"""The repository's live state: which model versions are loaded, loading or failed.

The routing table (name -> version -> ModelVersion) is replaced as a whole on every
change, so a request resolves against one consistent snapshot without locks. A version
that fails to load never enters the table and the versions it would replace keep serving.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tensorgate.errors import (
    InvalidArgument,
    ModelLoadError,
    ModelLoadFailed,
    NotFound,
    TensorGateError,
    Unavailable,
)
from tensorgate.repository.config import parse_config
from tensorgate.repository.layout import select_versions, versions_on_disk
from tensorgate.repository.paths import ModelFiles, RepositoryPaths
from tensorgate.runtime.model import LOADING, READY, UNAVAILABLE, UNLOADING, ModelVersion
from tensorgate.runtime.pipeline import PipelineVersion, is_pipeline

log = logging.getLogger("tensorgate.repository")

UNLOADED = "unloaded"  # the reason of a model unloaded on request


@dataclass
class VersionState:
    state: str
    reason: str = ""


@dataclass
class ModelEntry:
    """What the repository knows of one model, loaded or not."""

    name: str
    versions: dict[int, VersionState] = field(default_factory=dict)
    reason: str = ""  # a failure that concerns the whole model (e.g. its config)
    state: str = UNAVAILABLE


@dataclass(frozen=True)
class Table:
    """An immutable snapshot of what serves: model -> {version string -> ModelVersion}."""

    by_version: dict[str, dict[str, ModelVersion]]
    default: dict[str, ModelVersion]


def _source_signature(files: ModelFiles, version: int, parsed) -> tuple | None:
    """(config text, model file size and mtime) of one version; None if unreadable."""
    filename = parsed.config.default_model_filename or "model.onnx"
    try:
        st = files.model(version, filename).stat()
        config = files.config()
        text = config.read_bytes() if config.exists() else b""
    except (OSError, ModelLoadError):
        return None
    return (text, st.st_size, st.st_mtime_ns, st.st_ino)


def _check_complete(parsed, files: ModelFiles) -> None:
    """--strict-model-config (Triton's, also --disable-auto-complete-config): nothing is
    filled in from the graph, so the config must say it all."""
    if not files.config().exists():
        raise ModelLoadError(
            "no config.pbtxt, and --strict-model-config needs one (max_batch_size, input, "
            "output)"
        )
    missing = [what for what, present in (
        ("max_batch_size", parsed.max_batch_size_given),
        ("input", bool(parsed.config.input)), ("output", bool(parsed.config.output)),
    ) if not present]
    if missing:
        raise ModelLoadError(
            f"config.pbtxt leaves out {', '.join(missing)}, and --strict-model-config fills "
            "nothing in from the graph"
        )


class ModelRepository:
    def __init__(
        self, root: Path, default_max_batch_size: int, drain_timeout: float,
        allow_symlinks_outside: bool = False,
    ) -> None:
        self.root = root
        self.paths = RepositoryPaths(root, allow_symlinks_outside)
        # --strict-model-config: a model needs a complete config.pbtxt (no auto-complete).
        self.strict_config = False
        self._default_max_batch_size = default_max_batch_size
        self._drain_timeout = drain_timeout
        self._entries: dict[str, ModelEntry] = {}
        self._loaded: dict[str, dict[int, ModelVersion]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.table = Table({}, {})
        self._loop: asyncio.AbstractEventLoop | None = None
        # Awaited on every change: listener(event, model, **fields), events "loading",
        # "loaded" (version, seconds), "load_failed" (reason[, version]), "unloading",
        # "unloaded". Health, metrics and logs hook in here (observability/hooks.py).
        self.listeners: list = []

    # -- lookups (hot path) ---------------------------------------------------------

    def resolve(self, name: str, version: str) -> ModelVersion:
        table = self.table
        if not version:
            model = table.default.get(name)
            if model is not None:
                return model
        else:
            versions = table.by_version.get(name)
            if versions is not None:
                model = versions.get(version)
                if model is not None:
                    return model
        if version and version.isascii() and version.isdigit() and version != str(int(version)):
            return self.resolve(name, str(int(version)))  # "01" names version 1
        raise self._why_not(name, version)

    def _why_not(self, name: str, version: str) -> Exception:
        # Messages begin with Triton's words for the same condition (scripts match them).
        unknown = f"Request for unknown model: '{name}'"
        if version and not (version.isascii() and version.isdigit()):
            return InvalidArgument(
                f"failed to get model version from specified version string '{version}' "
                "(a version is a whole number; leave it empty for the model's default)"
            )
        entry = self._entries.get(name)
        if entry is None:
            return NotFound(f"{unknown} is not found")
        if version:
            if int(version) not in entry.versions:
                ready = sorted(v for v, s in entry.versions.items() if s.state == READY)
                listed = ", ".join(str(v) for v in ready) or "none"
                return NotFound(
                    f"{unknown} version {version} is not found (versions served: {listed})"
                )
            state = entry.versions[int(version)]
            return Unavailable(
                f"{unknown} version {version} is not at ready state: {state.state}"
                + (f" ({state.reason})" if state.reason else "")
            )
        detail = entry.reason or next(
            (s.reason for s in entry.versions.values() if s.reason), ""
        )
        return Unavailable(
            f"{unknown} has no available versions: {entry.state}"
            + (f" ({detail})" if detail else "")
        )

    def known(self, name: str) -> bool:
        return name in self._entries

    def models(self) -> list[ModelVersion]:
        return [m for versions in self._loaded.values() for m in versions.values()]

    def versions_of(self, name: str) -> list[ModelVersion]:
        return sorted(self._loaded.get(name, {}).values(), key=lambda m: m.version)

    def index(self) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every model and version, for RepositoryIndex."""
        rows = []
        names = set(self._entries)
        try:
            names |= set(self.paths.model_dirs())
        except OSError:
            pass
        for name in sorted(names):
            entry = self._entries.get(name)
            if entry is None:
                rows.append((name, "", UNAVAILABLE, "not loaded"))
                continue
            if not entry.versions:
                rows.append((name, "", entry.state, entry.reason))
            for version, state in sorted(entry.versions.items()):
                rows.append((name, str(version), state.state, state.reason or entry.reason))
        return rows

    # -- control ------------------------------------------------------------------

    async def load_all(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        names = list(self.paths.model_dirs())
        # Pipelines (ensembles) load after the models their steps run. A model that
        # fails is logged and listed by RepositoryIndex; the rest serve.
        pipelines = [n for n in names if self._is_pipeline(n)]
        await asyncio.gather(*(self.load(n) for n in names if n not in pipelines),
                             return_exceptions=True)
        await asyncio.gather(*(self.load(n) for n in pipelines), return_exceptions=True)

    def _is_pipeline(self, name: str) -> bool:
        try:
            files = self.paths.model_files(self.paths.model_dir(name))
            return is_pipeline(parse_config(files.config()).config)
        except (ModelLoadError, TensorGateError, OSError):
            return False  # its own load reports what is wrong

    async def load_some(self, loop: asyncio.AbstractEventLoop, names) -> list[str]:
        """--model-control-mode explicit at start: the --load-model ones ('*': all);
        returns what failed, each with its reason."""
        if "*" in names:
            await self.load_all(loop)
            return []
        self._loop = loop
        results = await asyncio.gather(*(self.load(n) for n in names), return_exceptions=True)
        failed = []
        for name, result in zip(names, results):
            if isinstance(result, Exception):
                log.error("--load-model %s: %s", name, result)
                failed.append(f"{name} ({result})")
        return failed

    async def load(self, name: str) -> None:
        """Load (or reload) a model: every version its policy selects."""
        # Checked before anything is recorded under the name: a refused name leaves no
        # lock, no index entry and no event behind.
        model_dir = self.paths.model_dir(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            await self._load_locked(name, self.paths.model_files(model_dir))

    async def _load_locked(self, name: str, files: ModelFiles) -> None:
        model_dir = files.directory
        if not model_dir.is_dir():  # removed while waiting for the lock
            raise NotFound(f"unknown model '{name}': no directory {name}/ in the repository")
        entry = self._entries.setdefault(name, ModelEntry(name))
        entry.state, entry.reason = LOADING, ""
        await self._notify("loading", name)
        try:
            parsed = parse_config(files.config())
            if self.strict_config:
                _check_complete(parsed, files)
            on_disk = versions_on_disk(model_dir)
            wanted = select_versions(parsed.config.version_policy, on_disk)
            if not wanted:
                raise ModelLoadError(
                    "no version directories to serve"
                    + (f" (on disk: {on_disk})" if on_disk else " (expected <model>/<version>/)")
                )
        except ModelLoadError as exc:
            log.error("model %s failed to load: %s", name, exc)
            await self._notify("load_failed", name, reason=str(exc))
            if self._loaded.get(name):
                # The versions already serving keep serving; the index says why the
                # reload failed (a damaged config.pbtxt), until a load succeeds.
                entry.state = READY
                entry.reason = f"reload failed, the versions loaded before kept serving: {exc}"
                raise ModelLoadFailed(f"model '{name}' failed to load: {exc}") from None
            entry.state, entry.reason = UNAVAILABLE, str(exc)
            raise ModelLoadFailed(f"model '{name}' failed to load: {exc}") from None
        current = self._loaded.get(name, {})
        new: dict[int, ModelVersion] = {}
        # A version already serving from unchanged files (same config, same model file)
        # keeps serving as it is: a reload only loads what changed.
        sigs = {v: _source_signature(files, v, parsed) for v in wanted}
        kept = {
            v: current[v] for v in wanted
            if v in current and sigs[v] is not None and current[v].source_sig == sigs[v]
        }
        to_load = [v for v in wanted if v not in kept]
        for version in to_load:
            entry.versions[version] = VersionState(LOADING)
        loader = PipelineVersion.load if is_pipeline(parsed.config) else ModelVersion.load
        loaded = await asyncio.gather(
            *(
                asyncio.to_thread(loader, name, v, files, parsed, self._default_max_batch_size)
                for v in to_load
            ),
            return_exceptions=True,
        )
        by_version = dict(zip(to_load, loaded))
        results = [kept.get(v) or by_version[v] for v in wanted]
        failures = []
        for version, result in zip(wanted, results):
            if version in kept:
                new[version] = result
                continue
            if isinstance(result, ModelVersion):
                result.source_sig = sigs[version]
                result.start(self._loop)
                new[version] = result
                entry.versions[version] = VersionState(READY)
                continue
            if isinstance(result, ModelLoadError):
                reason = str(result)
            else:
                reason = f"internal error: {result!r}"
                log.error("model %s version %d: unexpected load failure", name, version,
                          exc_info=result)
            log.error("model %s version %d failed to load: %s", name, version, reason)
            failures.append(f"version {version}: {reason}")
            entry.versions[version] = VersionState(UNAVAILABLE, reason)
        if failures:
            # The versions the failed ones would have replaced keep serving.
            for version, old in current.items():
                if version not in new:
                    new[version] = old
                    # A version whose files changed and no longer load (a truncated or
                    # overwritten model.onnx seen by the poller) still serves from the
                    # instance loaded before, so it stays READY: readiness and the index
                    # must agree with what answers. But the failed attempt is reported
                    # (its reason was overwritten here before, so RepositoryIndex
                    # showed nothing wrong); the next successful load clears it.
                    tried = entry.versions.get(version)
                    why = tried.reason if tried is not None and tried.state == UNAVAILABLE else ""
                    entry.versions[version] = VersionState(
                        READY, f"reload failed, the instance loaded before kept serving: {why}"
                        if why else "")
        retired = [m for v, m in current.items() if new.get(v) is not m]
        for version in list(entry.versions):
            if version not in wanted and version not in new:
                del entry.versions[version]
        self._loaded[name] = new
        entry.state = READY if new else UNAVAILABLE
        if not new:
            entry.reason = "; ".join(failures)
        self._publish()
        for version, result in zip(wanted, results):
            if version in kept:
                continue
            if isinstance(result, ModelVersion):
                await self._notify("loaded", name, version=version, seconds=result.load_seconds)
            else:
                await self._notify("load_failed", name, version=version,
                                   reason=entry.versions[version].reason)
        await self._retire(retired)
        if failures:
            raise ModelLoadFailed(f"model '{name}' failed to load: " + "; ".join(failures))

    async def unload(self, name: str) -> None:
        if name not in self._entries:  # no path is derived: no name check (as Triton)
            raise NotFound(f"unknown model '{name}'")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self._entries[name]
            current = self._loaded.pop(name, {})
            for version in current:
                entry.versions[version] = VersionState(UNLOADING)
            entry.state = UNLOADING
            self._publish()
            await self._notify("unloading", name)
            await self._retire(list(current.values()))
            for version in current:
                entry.versions[version] = VersionState(UNAVAILABLE, UNLOADED)
            entry.state, entry.reason = UNAVAILABLE, UNLOADED
            await self._notify("unloaded", name)

    async def unload_all(self) -> None:
        await asyncio.gather(*(self.unload(name) for name in list(self._loaded)))

    async def _retire(self, versions: list[ModelVersion]) -> None:
        await asyncio.gather(*(m.drain_and_release(self._drain_timeout) for m in versions))

    async def _notify(self, event: str, name: str, **fields) -> None:
        for listener in self.listeners:
            try:
                await listener(event, name, **fields)
            except Exception:  # an observer must never break a load
                log.exception("listener failed on %s %s", event, name)

    def _publish(self) -> None:
        by_version = {
            name: {m.version_str: m for m in versions.values()}
            for name, versions in self._loaded.items()
            if versions
        }
        default = {name: versions[max(versions)] for name, versions in self._loaded.items() if versions}
        self.table = Table(by_version, default)

    @property
    def all_ready(self) -> bool:
        """Every model the repository knows is serving (Triton's strict readiness)."""
        return all(
            e.state == READY or e.reason == UNLOADED for e in self._entries.values()
        )
