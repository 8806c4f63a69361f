"""What a run does: the scenario file (YAML or JSON) and the command-line overrides.

A scenario names the model, its inputs and data, and the steps: closed-loop concurrency
levels and/or open-loop request rates, each with a warm-up and a measured part bounded
by time and, optionally, by a request count. Every bound is checked here, so no file or
flag can start an unbounded run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"

# Limits on every setting (STYLE: no unbounded settings).
MAX_STEP_S = 600.0
MAX_WARMUP_S = 120.0
MAX_CONCURRENCY = 4096
MAX_RATE = 1_000_000.0
MAX_REQUESTS = 100_000_000
MAX_BATCH = 65536
MAX_WORKERS = 64
MAX_DISTINCT = 1024


class ScenarioError(ValueError):
    """A scenario or override that can't be run; the message says which field and why."""


@dataclass(frozen=True)
class InputOverride:
    """An input as the scenario gives it. ``shape`` excludes the batch dimension when
    the model batches (max_batch_size > 0); None means: from ModelMetadata."""

    datatype: str | None = None
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Step:
    """One measured load level: closed loop at ``concurrency`` or open loop at ``rate``."""

    concurrency: int = 0
    rate: float = 0.0

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency else "open"

    @property
    def label(self) -> str:
        return f"c={self.concurrency}" if self.concurrency else f"r={self.rate:g}/s"


@dataclass(frozen=True)
class Scenario:
    name: str = "adhoc"
    model: str = ""
    version: str = ""
    inputs: dict[str, InputOverride] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()  # requested outputs; empty: the server sends all
    data: str = "random"  # random | zeros | path to .npy / .json
    distinct_requests: int = 8  # random data: this many different requests, round robin
    batch_size: int = 1
    concurrency: tuple[int, ...] = ()
    rates: tuple[float, ...] = ()
    warmup_s: float = 1.0
    duration_s: float = 5.0  # per step; also the cap when ``requests`` is set
    requests: int | None = None  # per step: it ends at this count or duration_s
    deadline_ms: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    workers: int | None = None  # None: chosen per step from the load (runner.py)
    max_outstanding: int = 4096  # open loop: arrivals beyond this are counted, not sent
    verify: bool = False  # parse every response (costs client CPU)
    seed: int = 0

    def steps(self) -> list[Step]:
        return [Step(concurrency=c) for c in self.concurrency] + [
            Step(rate=r) for r in self.rates
        ]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["inputs"] = {k: asdict(v) for k, v in self.inputs.items()}
        return out

    def validate(self) -> Scenario:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ScenarioError(message)

        check(bool(self.model), "model: required (in the scenario or --model)")
        check(bool(self.concurrency or self.rates), "give concurrency levels or rates")
        check(all(1 <= c <= MAX_CONCURRENCY for c in self.concurrency),
              f"concurrency: each level in 1..{MAX_CONCURRENCY}")
        check(all(0 < r <= MAX_RATE and math.isfinite(r) for r in self.rates),
              f"rates: each in (0, {MAX_RATE:g}] requests/s")
        check(0 <= self.warmup_s <= MAX_WARMUP_S, f"warmup_s: 0..{MAX_WARMUP_S:g}")
        check(0 < self.duration_s <= MAX_STEP_S, f"duration_s: (0, {MAX_STEP_S:g}]")
        check(self.requests is None or 1 <= self.requests <= MAX_REQUESTS,
              f"requests: 1..{MAX_REQUESTS}")
        check(1 <= self.batch_size <= MAX_BATCH, f"batch_size: 1..{MAX_BATCH}")
        check(self.deadline_ms is None or 0 < self.deadline_ms <= MAX_STEP_S * 1000,
              "deadline_ms: positive, at most a step")
        check(self.workers is None or 1 <= self.workers <= MAX_WORKERS,
              f"workers: 1..{MAX_WORKERS}")
        check(1 <= self.distinct_requests <= MAX_DISTINCT, f"distinct_requests: 1..{MAX_DISTINCT}")
        check(1 <= self.max_outstanding <= 1_000_000, "max_outstanding: 1..1000000")
        check(self.data in ("random", "zeros") or Path(self.data).suffix in (".npy", ".json"),
              "data: random, zeros, or a .npy/.json file")
        for key in self.headers:
            # gRPC metadata keys are lowercase ASCII; grpc raises mid-run otherwise.
            check(key == key.lower() and key.isascii() and not key.startswith(":"),
                  f"header {key!r}: metadata keys are lowercase ASCII")
        return self


def _tuple_of(value, kind, name: str) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (int, float, str)):
        value = [value]
    try:
        return tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ScenarioError(f"{name}: expected a list of numbers, got {value!r}") from None


def _inputs_of(raw) -> dict[str, InputOverride]:
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise ScenarioError("inputs: a mapping NAME -> {datatype, shape}")
    out = {}
    for name, spec in raw.items():
        spec = spec or {}
        shape = spec.get("shape")
        out[str(name)] = InputOverride(
            datatype=str(spec["datatype"]).upper() if spec.get("datatype") else None,
            shape=tuple(int(d) for d in shape) if shape is not None else None,
        )
    return out


def from_mapping(raw: dict, *, base_dir: Path | None = None) -> Scenario:
    """A Scenario from a parsed file; unknown keys are an error (a typo must not be
    silently ignored). Relative data paths are relative to the file."""
    known = set(Scenario.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise ScenarioError(f"unknown scenario keys: {sorted(unknown)} (known: {sorted(known)})")
    kw = dict(raw)
    kw["inputs"] = _inputs_of(raw.get("inputs"))
    kw["outputs"] = tuple(str(o) for o in raw.get("outputs") or ())
    kw["concurrency"] = _tuple_of(raw.get("concurrency"), int, "concurrency")
    kw["rates"] = _tuple_of(raw.get("rates"), float, "rates")
    kw["headers"] = {str(k): str(v) for k, v in (raw.get("headers") or {}).items()}
    for key in ("version", "name", "model", "data"):
        if key in kw and kw[key] is not None:
            kw[key] = str(kw[key])
    data = kw.get("data")
    is_file = data not in (None, "random", "zeros")
    if base_dir is not None and is_file and not Path(data).is_absolute():
        kw["data"] = str((base_dir / data).resolve())
    return Scenario(**kw)


def load(path: str | Path) -> Scenario:
    """Read a .yaml/.yml/.json scenario; a bare name is looked up in bench/scenarios/."""
    p = Path(path)
    if not p.exists() and not p.suffix:
        for suffix in (".yaml", ".yml", ".json"):
            if (SCENARIO_DIR / (p.name + suffix)).exists():
                p = SCENARIO_DIR / (p.name + suffix)
                break
    if not p.exists():
        raise ScenarioError(f"scenario file not found: {path}")
    text = p.read_text()
    if p.suffix == ".json":
        raw = json.loads(text)
    else:
        import yaml  # only needed for YAML scenarios

        raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ScenarioError(f"{p}: expected a mapping at the top level")
    raw.setdefault("name", p.stem)
    return from_mapping(raw, base_dir=p.parent)


def parse_input_flag(text: str) -> tuple[str, InputOverride]:
    """``NAME:DTYPE:D1,D2`` or ``NAME::D1,D2`` or ``NAME:DTYPE`` (shape without batch)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise ScenarioError(f"--input {text!r}: expected NAME:DTYPE[:D1,D2,...]")
    dtype = parts[1].upper() or None
    shape = None
    if len(parts) == 3 and parts[2]:
        try:
            shape = tuple(int(d) for d in parts[2].split(","))
        except ValueError:
            raise ScenarioError(f"--input {text!r}: dimensions must be integers") from None
    return parts[0], InputOverride(datatype=dtype, shape=shape)


def parse_header_flag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition(":")
    if not sep or not key:
        raise ScenarioError(f"--header {text!r}: expected KEY:VALUE")
    return key.strip().lower(), value.strip()


def with_overrides(scenario: Scenario, **overrides) -> Scenario:
    """The scenario with every override that is not None applied; then validated.

    ``inputs`` and ``headers`` merge into the scenario's rather than replacing them.
    Giving concurrency drops the scenario's rates and vice versa: a flag chooses the mode.
    """
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "inputs" in changes:
        changes["inputs"] = {**scenario.inputs, **changes["inputs"]}
    if "headers" in changes:
        changes["headers"] = {**scenario.headers, **changes["headers"]}
    if "concurrency" in changes and "rates" not in changes:
        changes["rates"] = ()
    if "rates" in changes and "concurrency" not in changes:
        changes["concurrency"] = ()
    return replace(scenario, **changes).validate()
