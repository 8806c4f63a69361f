"""The run's manifest: what the run is (its fingerprint) and which chunks are done.

Replaced atomically after every committed chunk, so after a crash (SIGKILL included)
it names exactly the chunks whose part files are in place. A rerun with the same
arguments finds the same fingerprint and skips those chunks; any difference (another
model version or model file, other input files or sizes or times, another mapping or
chunk size) is refused, naming what differs, so no output mixes two jobs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tensorgate.batch.common import BatchError, atomic_write_bytes

FORMAT = 1


@dataclass
class Manifest:
    path: Path
    fingerprint: dict
    done: dict[str, list[int]] = field(default_factory=dict)  # "file:chunk" -> [ok, failed]
    complete: bool = False
    merged: bool = False

    @classmethod
    def open(cls, path: Path, fingerprint: dict) -> "Manifest":
        """The manifest at ``path`` when its fingerprint matches, a new one when there is
        none; BatchError when it belongs to another job."""
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path, fingerprint)
        except (OSError, ValueError) as exc:
            raise BatchError(f"{path}: unreadable manifest ({exc}); remove the output to "
                             "start again") from None
        old = state.get("fingerprint", {})
        if state.get("format") != FORMAT or old != fingerprint:
            differ = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise BatchError(
                f"the output holds a run with other arguments (different: "
                f"{', '.join(differ) or 'format'}); give a new --output, or --overwrite to "
                "start again")
        return cls(path, fingerprint, {k: list(v) for k, v in state.get("done", {}).items()},
                   bool(state.get("complete")), bool(state.get("merged")))

    @staticmethod
    def key(file_index: int, chunk: int) -> str:
        return f"{file_index}:{chunk}"

    def done_chunks(self, file_index: int) -> frozenset[int]:
        prefix = f"{file_index}:"
        return frozenset(int(k[len(prefix):]) for k in self.done if k.startswith(prefix))

    def record(self, file_index: int, chunk: int, ok: int, failed: int) -> None:
        self.done[self.key(file_index, chunk)] = [ok, failed]

    def totals(self) -> tuple[int, int]:
        return (sum(v[0] for v in self.done.values()), sum(v[1] for v in self.done.values()))

    def save(self) -> None:
        state = {"format": FORMAT, "fingerprint": self.fingerprint, "complete": self.complete,
                 "merged": self.merged, "done": self.done}
        atomic_write_bytes(self.path, json.dumps(state, separators=(",", ":")).encode())
