"""The MLflow side of the registry sync: blocking calls through the ``mlflow`` client
(``mlflow-skinny`` is enough), run on a worker thread by sync.py.

``snapshot()`` reads what the selection holds (registered models by name or by tag,
their versions and aliases) in one pass; ``download()`` fetches one version's artifacts
and finds its ONNX model (the ``onnx`` flavor's file per the MLmodel file, or a plain
``model.onnx``). Any failure to reach or read the registry is RegistryUnavailable; a
version whose artifacts hold no usable model is VersionUnusable.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("tensorgate.registry")

ARCHIVED = "Archived"
READY = "READY"
PAGE = 1000


class RegistryUnavailable(Exception):
    """The registry could not be reached or read (the message says what failed)."""


class VersionUnusable(Exception):
    """A registered version's artifacts hold nothing TensorGate can serve."""


@dataclass(frozen=True)
class VersionInfo:
    version: int
    stage: str
    status: str
    source: str
    run_id: str
    user_id: str
    updated_ms: int
    tags: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    aliases: dict  # alias -> version (int)
    tags: dict
    updated_ms: int
    versions: dict  # version (int) -> VersionInfo


def tracking_uri(setting: str, environ=os.environ) -> str:
    """--model-registry as the mlflow client takes it: ``mlflow://HOST:PORT[/PATH]`` is
    http, ``mlflow+https://...`` https, ``mlflow`` alone is MLFLOW_TRACKING_URI."""
    if setting == "mlflow":
        uri = environ.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            raise ValueError("--model-registry mlflow takes the registry from "
                             "MLFLOW_TRACKING_URI, which is not set")
        return uri
    for prefix, scheme in (("mlflow://", "http"), ("mlflow+http://", "http"),
                           ("mlflow+https://", "https")):
        if setting.startswith(prefix):
            return f"{scheme}://{setting[len(prefix):]}"
    raise ValueError(f"--model-registry {setting!r}: expected mlflow://HOST:PORT, "
                     "mlflow+https://HOST[:PORT][/PATH] or mlflow (MLFLOW_TRACKING_URI)")


def shown(uri: str) -> str:
    """The URI without credentials, for logs and metrics."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


class MlflowSource:
    """One MLflow tracking server's model registry, and a selection of its models."""

    def __init__(self, uri: str, names: tuple = (), tag: str = "",
                 request_timeout_s: float = 10.0) -> None:
        self.uri = uri
        self.where = shown(uri)
        self.names = tuple(names)
        key, sep, value = tag.partition("=")
        self.tag = (key.strip(), value.strip() if sep else None) if tag else None
        self._timeout = request_timeout_s
        self._client = None
        self._missing: set[str] = set()

    def _mlflow(self):
        if self._client is None:
            # Our own loop retries with backoff: the client's (7 retries, backoff factor
            # 2, 120 s timeouts by default) would hold a poll for minutes. A value the
            # operator set in the environment wins.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(self._timeout)))
            try:
                from mlflow import MlflowClient
            except ImportError:
                raise RuntimeError(
                    "--model-registry needs the mlflow client: pip install "
                    "'tensorgate[mlflow]' (mlflow-skinny)"
                ) from None
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def check_client(self) -> None:
        """RuntimeError now (at start) when the mlflow client is not installed."""
        self._mlflow()

    # -- reads --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, RegisteredModel]:
        """Every selected registered model with its versions and aliases."""
        try:
            client = self._mlflow()
            models = self._selected(client)
            return {m.name: self._read(client, m) for m in models}
        except RegistryUnavailable:
            raise
        except Exception as exc:  # the client raises MlflowException, requests' errors...
            raise RegistryUnavailable(_reason(exc)) from None

    def _selected(self, client) -> list:
        from mlflow.exceptions import MlflowException

        found = []
        for name in self.names:
            try:
                found.append(client.get_registered_model(name))
                self._missing.discard(name)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise
                if name not in self._missing:
                    self._missing.add(name)
                    log.warning("registry %s: no registered model '%s' (yet)", self.where, name)
        if self.tag is not None:
            key, value = self.tag
            token = None
            while True:
                page = client.search_registered_models(max_results=PAGE, page_token=token)
                for m in page:
                    tags = m.tags or {}
                    if key in tags and (value is None or tags[key] == value) and \
                            m.name not in self.names:
                        found.append(m)
                token = page.token
                if not token:
                    break
        return found

    def _read(self, client, model) -> RegisteredModel:
        versions = {}
        token = None
        while True:
            page = client.search_model_versions(f"name='{_quoted(model.name)}'",
                                                max_results=PAGE, page_token=token)
            for v in page:
                info = VersionInfo(
                    version=int(v.version), stage=v.current_stage or "",
                    status=v.status or "", source=v.source or "", run_id=v.run_id or "",
                    user_id=v.user_id or "", updated_ms=int(v.last_updated_timestamp or 0),
                    tags=dict(v.tags or {}),
                )
                versions[info.version] = info
            token = page.token
            if not token:
                break
        aliases = {a: int(v) for a, v in (getattr(model, "aliases", None) or {}).items()}
        return RegisteredModel(model.name, aliases, dict(model.tags or {}),
                               int(model.last_updated_timestamp or 0), versions)

    # -- artifacts ----------------------------------------------------------------------

    def download(self, name: str, version: int, into: Path) -> tuple[str, str]:
        """Fetch a version's artifacts as the directory ``into`` (which must not exist
        yet; its parent is the model's directory, so the move is a rename) and make its
        model ``into/model.onnx``; (artifact URI, what the model file was)."""
        scratch = Path(tempfile.mkdtemp(prefix=f".download-{version}-", dir=into.parent))
        try:
            try:
                from mlflow.artifacts import download_artifacts

                client = self._mlflow()
                uri = client.get_model_version_download_uri(name, str(version))
                fetched = Path(download_artifacts(artifact_uri=uri, dst_path=str(scratch),
                                                  tracking_uri=self.uri))
            except Exception as exc:  # MlflowException, requests' errors...
                raise RegistryUnavailable(f"downloading {name} version {version}: "
                                          f"{_reason(exc)}") from None
            if fetched.is_file():  # the source was the model file itself
                into.mkdir()
                shutil.move(str(fetched), into / "model.onnx")
                return uri, fetched.name
            os.replace(fetched, into)
            return uri, _place_model(into)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _place_model(directory: Path) -> str:
    """Make ``directory/model.onnx`` the version's ONNX model; which file it was."""
    mlmodel = directory / "MLmodel"
    chosen = None
    if mlmodel.exists():
        import yaml  # mlflow's own dependency

        try:
            meta = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise VersionUnusable(f"MLmodel: {exc}") from None
        flavor = (meta.get("flavors") or {}).get("onnx")
        if flavor is None:
            flavors = ", ".join(sorted(meta.get("flavors") or {})) or "none"
            raise VersionUnusable(f"MLmodel has no onnx flavor (flavors: {flavors})")
        chosen = str(flavor.get("data") or "model.onnx")
    elif (directory / "model.onnx").exists():
        chosen = "model.onnx"
    else:
        found = sorted(p.name for p in directory.glob("*.onnx"))
        if len(found) != 1:
            raise VersionUnusable(
                "no ONNX model in the artifacts (expected an MLmodel with the onnx flavor, "
                f"a model.onnx, or one .onnx file; found {found or 'none'})"
            )
        chosen = found[0]
    path = directory / chosen
    if ".." in Path(chosen).parts or not path.is_file():
        raise VersionUnusable(f"the model file {chosen!r} is not in the artifacts")
    if chosen != "model.onnx":
        if (directory / "model.onnx").exists():
            raise VersionUnusable(f"the onnx flavor names {chosen!r} beside a model.onnx")
        shutil.copyfile(path, directory / "model.onnx")
    return chosen


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _reason(exc: BaseException) -> str:
    """A short reason: the client's message without its stack of causes and URLs' query
    strings."""
    text = str(getattr(exc, "message", "") or exc) or type(exc).__name__
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:300]
