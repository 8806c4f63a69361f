"""Model names, and every path the server derives from them, kept inside the repository.

A model name arrives from the network (RepositoryModelLoad, the HTTP endpoints, routes)
and becomes a directory name; a config names files under that directory. Nothing a
caller or a config says may make the server read outside the repository: names are
checked against Triton's rules before anything touches the disk, and each derived path
is resolved (symbolic links included) and must land inside the repository's real
directory. A symbolic link that leads outside (a model directory or file kept on a
shared volume, say) is refused unless the operator allows it with
``--allow-symlinks-outside-repository``; even then a config may not climb out with ``..``
or an absolute path.
"""

from __future__ import annotations

import errno
import logging
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tensorgate.errors import InvalidArgument, ModelLoadError, NotFound

log = logging.getLogger("tensorgate.repository")

_SEPARATORS = ("/", "\\")
_TRAVERSAL = "must not contain path traversal characters"


def _shown(name: str) -> str:
    """The name as a message may show it: control characters escaped."""
    return "".join(c if c.isprintable() or c == " " else ascii(c)[1:-1] for c in name)


def name_problem(name: str, what: str = "model") -> str | None:
    """Why ``name`` cannot name a model (or a route), or None when it can. The rules
    are Triton's (ValidateModelName: empty after trimming; '..' or a separator), with
    Triton's words, plus three it lacks: '.', surrounding whitespace, control
    characters. A name such as 'model..1' or '..my_model' has no separator, so it
    cannot climb out of the repository and is a valid name, as in Triton."""
    trimmed = name.strip()
    if not trimmed:
        return f"{what.capitalize()} name cannot be empty. Please enter a valid name to deploy."
    prefix = f"invalid {what} name '{_shown(name)}', {what} name "
    if trimmed in (".", "..") or any(sep in name for sep in _SEPARATORS):
        return prefix + _TRAVERSAL
    if trimmed != name:
        return prefix + "must not begin or end with whitespace"
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            return prefix + f"must not contain control characters ({ascii(ch)[1:-1]})"
    return None


def check_name(name: str, what: str = "model") -> None:
    """Raise InvalidArgument with the rule ``name`` breaks."""
    problem = name_problem(name, what)
    if problem is not None:
        raise InvalidArgument(problem)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class RepositoryPaths:
    """The one owner of paths derived from model names and configs."""

    def __init__(self, root: Path, allow_symlinks_outside: bool = False) -> None:
        self.root = Path(root)
        self.allow_symlinks_outside = allow_symlinks_outside
        self._warned: set[str] = set()

    def _real_root(self) -> Path:
        return self.root.resolve()

    def _escapes(self, path: Path) -> bool:
        """True when ``path`` resolves outside the repository and that is not allowed."""
        if self.allow_symlinks_outside:
            return False
        return not _inside(path.resolve(), self._real_root())

    def model_dirs(self) -> dict[str, Path]:
        """Every model directory in the repository, by name: hidden entries, names a
        model cannot have, and links leading outside (unless allowed) are skipped."""
        out = {}
        for p in sorted(self.root.iterdir()):
            if p.name.startswith((".", "_")) or name_problem(p.name) is not None:
                continue
            if not p.is_dir():
                continue
            if self._escapes(p):
                if p.name not in self._warned:
                    self._warned.add(p.name)
                    log.warning(
                        "skipping %s: a symbolic link that leads outside the repository "
                        "(--allow-symlinks-outside-repository serves it)", p.name,
                    )
                continue
            out[p.name] = p
        return out

    def model_dir(self, name: str) -> Path:
        """The directory of model ``name``: InvalidArgument for a name a model cannot
        have or a directory that leads outside, NotFound when there is none."""
        check_name(name)
        path = self.root / name
        try:
            found = not name.startswith(".") and path.is_dir()
        except OSError as exc:
            # A name longer than the file system takes (ENAMETOOLONG; a 256-character name
            # was an internal error, found by bench/fuzz_scale.py) has no directory here.
            if exc.errno != errno.ENAMETOOLONG:
                raise
            found = False
        if not found:
            # Hidden entries (the server's own .tensorgate/ among them) are not models.
            raise NotFound(
                f"failed to load '{name}', failed to poll from model repository: it has no "
                f"model directory '{name}'"
            )
        if self._escapes(path):
            raise InvalidArgument(
                f"model '{name}': its directory is a symbolic link that leads outside the "
                "repository; refused (start the server with "
                "--allow-symlinks-outside-repository to serve it)"
            )
        return path

    def model_files(self, model_dir: Path) -> "ModelFiles":
        return ModelFiles(model_dir, self)


@dataclass(frozen=True)
class ModelFiles:
    """The files a model's layout and config name, each checked on the way in."""

    directory: Path
    paths: RepositoryPaths

    def file(self, *parts: str, what: str) -> Path:
        """``directory/parts...``; ModelLoadError when a part climbs out (absolute, ``..``)
        or the result resolves outside the repository (unless links may lead out)."""
        for part in parts:
            pure = PurePosixPath(part)
            if not part or pure.is_absolute() or "\\" in part or ".." in pure.parts:
                raise ModelLoadError(
                    f"{what} {part!r}: must be a path inside the model directory "
                    "(no absolute path, no '..')"
                )
        path = self.directory.joinpath(*parts)
        if self.paths._escapes(path):
            raise ModelLoadError(
                f"{what} {'/'.join(parts)}: a symbolic link that leads outside the "
                "repository; refused (--allow-symlinks-outside-repository serves it)"
            )
        return path

    def config(self) -> Path:
        return self.file("config.pbtxt", what="config")

    def model(self, version: int, filename: str) -> Path:
        return self.file(str(version), filename, what="model file")

    def warmup(self, filename: str) -> Path:
        return self.file("warmup", filename, what="model_warmup input_data_file")

    def labels(self, filename: str) -> Path:
        return self.file(filename, what="label_filename")

    def op_library(self, filename: str) -> Path:
        return self.file(filename, what="model_operations op_library_filename")
