"""Crash recovery: SIGKILL the server during control operations, restart, check state.

    python bench/crash_recovery.py                     # 200 kill/restart runs
    python bench/crash_recovery.py --runs 20 --seed 7 --json-out /tmp/cr.json

One repository (canary versions 1-3, swap, a model that fails on every input, an
INT32 model for refused changes) and one ``--state-dir`` for the whole campaign; the
server runs with ``--model-control-mode explicit --load-model '*'``. Each run sends a
random sequence of control operations (route set/replace/delete with weights and
shadows, rollout start/pause/resume/promote/rollback, model load/unload, and inferences
through routes, which let running rollouts advance their stages or roll back on their
guards: writes no client asked for), arms a SIGKILL 0-300 ms after one operation was
sent and keeps sending until the server is dead. Then, before restarting:

- routes.json must parse, and its routes, compared route by route (targets, weights,
  sticky, shadow, rollout state/stage/percent), must be a state the sequence went
  through: the last one listed after an acknowledged change, that change applied, the
  operation in flight applied or not, and any stage the rollout drivers may have reached
  on their own (or their guard's rollback) from those; each route's sticky key ranges
  must tile the key space in its weights' shares;
- temp files (``.routes.json.*.tmp``, left by a kill between the temp file's creation
  and its rename) are counted.

The restart (same repository, same state dir) must print its ready line; the routes it
lists must equal routes.json (so no temp file was read as state), the temp files must
be gone (removed at start) and a route must answer an inference with the right value.
The restarted server is the next run's server. The exit status is 1 if any state was
inconsistent, a restart failed or a route did not serve.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
READY_RE = re.compile(r"ready grpc=([\d.]+):(\d+)")
READY_TIMEOUT_S = 30.0
RPC_TIMEOUT_S = 5.0
MAX_KILL_DELAY_S = 0.3

# Model versions that answer INPUT0 + version; "bad" fails on every input; "other"
# takes INT32 (a route mixing it with the others is refused).
GOOD = [("canary", "1"), ("canary", "2"), ("canary", "3"), ("canary", ""), ("swap", "1"),
        ("swap", "")]
BAD = ("bad", "1")
MODELS = ("canary", "swap", "bad", "other")
ROUTE_NAMES = ("r1", "r2", "r3", "r4")
ACTIVE = ("RUNNING", "PAUSED", "AWAITING_PROMOTION")


def _pb():
    from tensorgate._proto.inference import grpc_service_pb2 as ipb
    from tensorgate._proto.tensorgate.v1 import control_pb2 as cpb
    return ipb, cpb


# -- the repository --------------------------------------------------------------------


def build_repository(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests" / "models"))
    import build_models
    import onnx

    build_models.build_routes_repository(root)
    # canary 3 answers like 1 and 2 here; the failing model is "bad", a model of its own,
    # so the default version of canary serves.
    onnx.save(build_models.versioned_model("canary", 3), str(root / "canary" / "3" / "model.onnx"))
    (root / "bad" / "1").mkdir(parents=True)
    onnx.save(build_models.broken_model("bad"), str(root / "bad" / "1" / "model.onnx"))
    config = (root / "swap" / "config.pbtxt").read_text()
    (root / "bad" / "config.pbtxt").write_text(config.replace('name: "swap"', 'name: "bad"'))
    return root


def model_value(model: str, version: str) -> float | None:
    """OUTPUT0 - INPUT0 of a target, None for one that fails on the FP32 request
    ("bad" always, "other" takes INT32: a route of it alone is valid)."""
    if model in ("bad", "other"):
        return None
    return float(version or {"canary": "3", "swap": "1"}[model])


# -- the server ------------------------------------------------------------------------


class Server:
    def __init__(self, repo: Path, state_dir: Path, log_path: Path) -> None:
        args = [sys.executable, "-m", "tensorgate", "serve", "--model-repository", str(repo),
                "--state-dir", str(state_dir), "--host", "127.0.0.1", "--grpc-port", "0",
                "--http-port", "-1", "--metrics-port", "-1", "--model-control-mode",
                "explicit", "--load-model", "*", "--log-level", "INFO"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORGATE_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path = log_path
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace",
                                     env=env)
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in iter(self.proc.stdout.readline, ""):
            self.lines.append(line)
            if not self._ready.is_set():
                m = READY_RE.search(line)
                if m:
                    self.url = f"{m.group(1)}:{m.group(2)}"
                    self._ready.set()

    def wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready.wait(0.02):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
        return True

    def kill(self) -> int:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait()
        self._reader.join(2.0)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(2.0)

    def save_log(self) -> None:
        self.log_path.write_text("".join(self.lines))


class Client:
    def __init__(self, url: str) -> None:
        from tensorgate._proto.inference import grpc_service_pb2_grpc
        from tensorgate._proto.tensorgate.v1 import control_pb2_grpc

        self.channel = grpc.insecure_channel(url)
        self.control = control_pb2_grpc.RoutingServiceStub(self.channel)
        self.inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def routes(self) -> list:
        ipb, cpb = _pb()
        return list(self.control.ListRoutes(cpb.ListRoutesRequest(),
                                            timeout=RPC_TIMEOUT_S).routes)

    def infer(self, route: str, value: float):
        """(model, version, OUTPUT0 - INPUT0) of one request through ``route``."""
        ipb, _ = _pb()
        req = ipb.ModelInferRequest(model_name=route)
        req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
        req.raw_input_contents.append(np.array([[value]], np.float32).tobytes())
        reply = self.inference.ModelInfer(req, timeout=RPC_TIMEOUT_S)
        out = float(np.frombuffer(reply.raw_output_contents[0], np.float32)[0])
        return reply.model_name, reply.model_version, out - value


# -- routes as comparable values -------------------------------------------------------


def project(route) -> tuple:
    """What must survive a restart of one route, as a hashable value (timestamps,
    reasons and the per-stage counters left out)."""
    shadow = None
    if route.HasField("shadow"):
        s = route.shadow
        shadow = (s.model, s.version, round(s.fraction, 6))
    rollout = None
    if route.HasField("rollout"):
        r = route.rollout
        rollout = (r.state, r.stage, round(r.percent, 6), r.spec.candidate_model,
                   r.spec.candidate_version, r.stable_model, r.stable_version,
                   tuple(round(s, 6) for s in r.spec.stages), r.spec.auto_promote)
    targets = tuple((t.model, t.version, round(t.weight, 6)) for t in route.targets)
    return (route.name, targets, route.sticky, shadow, rollout)


def _with(p: tuple, targets=None, rollout=None) -> tuple:
    return (p[0], p[1] if targets is None else targets, p[2], p[3],
            p[4] if rollout is None else rollout)


def driver_successors(p: tuple | None) -> set:
    """``p`` and every state its rollout driver may move it to without being asked:
    later stages, then AWAITING_PROMOTION or (auto_promote) PROMOTED; and from any active
    state, a guard's rollback."""
    out = {p}
    if p is None or p[4] is None or p[4][0] not in ACTIVE:
        return out
    state, stage, percent, cand_m, cand_v, stable_m, stable_v, stages, auto = p[4]
    reachable = [(state, stage)]
    if state == "RUNNING":
        reachable += [("RUNNING", k) for k in range(stage + 1, len(stages))]
        reachable.append(("AWAITING_PROMOTION", len(stages) - 1))
    for st, k in reachable:
        pct = stages[k] if st != state or k != stage else percent
        targets = ((stable_m, stable_v, round(100.0 - pct, 6)), (cand_m, cand_v, pct))
        if st == "AWAITING_PROMOTION" and state == "RUNNING" and auto:
            out.add(_with(p, ((cand_m, cand_v, 100.0),),
                          ("PROMOTED", k, 100.0) + p[4][3:]))
        elif st != state or k != stage:
            out.add(_with(p, targets, (st, k, pct) + p[4][3:]))
        out.add(_with(p, ((stable_m, stable_v, 100.0),), ("ROLLED_BACK", k, 0.0) + p[4][3:]))
    return out


def apply_op(p: tuple | None, op: dict) -> tuple | None:
    """The route after ``op`` succeeded on route state ``p`` (``p`` when it would be
    refused)."""
    kind = op["kind"]
    active = p is not None and p[4] is not None and p[4][0] in ACTIVE
    if kind == "set":
        if active:
            return p
        total = sum(w for _, _, w in op["targets"])
        targets = tuple((m, v, round(w * 100.0 / total, 6)) for m, v, w in op["targets"])
        return (op["route"], targets, op["sticky"], op["shadow"], p[4] if p else None)
    if kind == "delete":
        return None
    if p is None:
        return p
    r = p[4]
    if kind == "rollout":
        live = [t for t in p[1] if t[2] > 0]
        if active or len(live) != 1:
            return p
        stable = live[0]
        s0 = op["stages"][0]
        return _with(p, ((stable[0], stable[1], round(100.0 - s0, 6)),
                         (op["model"], op["version"], s0)),
                     ("RUNNING", 0, s0, op["model"], op["version"], stable[0], stable[1],
                      tuple(op["stages"]), op["auto_promote"]))
    if not active:
        return p
    if kind == "pause" and r[0] == "RUNNING":
        return _with(p, rollout=("PAUSED",) + r[1:])
    if kind == "resume" and r[0] == "PAUSED":
        return _with(p, rollout=("RUNNING",) + r[1:])
    if kind == "promote":
        return _with(p, ((r[3], r[4], 100.0),), ("PROMOTED", r[1], 100.0) + r[3:])
    if kind == "rollback":
        return _with(p, ((r[5], r[6], 100.0),), ("ROLLED_BACK", r[1], 0.0) + r[3:])
    return p


def closure(states: set) -> set:
    out = set()
    for p in states:
        out |= driver_successors(p)
    return out


def check_key_ranges(route) -> str:
    from tensorgate.routing import layout
    from tensorgate.routing.table import target_label

    ranges = [(r.start, r.target) for r in route.key_ranges]
    weights = [(target_label(t.model, t.version), t.weight) for t in route.targets]
    if not layout.is_valid(ranges):
        return f"route {route.name}: key ranges do not tile the key space"
    if layout.owned(ranges) != layout.shares(weights):
        return f"route {route.name}: key ranges do not follow the weights {weights}"
    return ""


# -- operations ------------------------------------------------------------------------


def random_op(rng: random.Random, known: dict) -> dict:
    """One control operation; ``known``: route name -> projected route (last listed)."""
    name = rng.choice(ROUTE_NAMES)
    roll = rng.random()
    if roll < 0.30:
        n = rng.choice((1, 1, 2, 3))
        picks = rng.sample(GOOD, n)
        weights = [rng.choice((0, 10, 25, 50, 100)) for _ in picks]
        if not any(weights):
            weights[0] = 100
        normalize = sum(weights) != 100
        shadow = None
        if rng.random() < 0.2:
            m, v = rng.choice(GOOD)
            shadow = (m, v, rng.choice((0.1, 0.5)))
        if rng.random() < 0.05:  # an INT32 model: refused among FP32 ones, alone valid
            picks[0] = ("other", "1")
        return {"kind": "set", "route": name, "targets": [p + (w,) for p, w in zip(picks, weights)],
                "normalize": normalize, "sticky": rng.random() < 0.5, "shadow": shadow}
    if roll < 0.38:
        return {"kind": "delete", "route": name}
    if roll < 0.55:
        with_rollout = [n for n, p in known.items() if p and p[4] and p[4][0] in ACTIVE]
        if with_rollout and rng.random() < 0.6:
            return {"kind": rng.choice(("pause", "resume", "promote", "rollback")),
                    "route": rng.choice(with_rollout)}
        model, version = BAD if rng.random() < 0.2 else rng.choice(GOOD)
        stages = sorted(rng.sample((5.0, 10.0, 25.0, 50.0, 75.0, 100.0), rng.choice((1, 2, 3))))
        return {"kind": "rollout", "route": name, "model": model, "version": version,
                "stages": stages, "auto_promote": rng.random() < 0.5,
                "hold_secs": rng.choice((0.05, 0.2)), "min_requests": rng.choice((1, 2))}
    if roll < 0.65:
        return {"kind": rng.choice(("pause", "resume", "promote", "rollback")), "route": name}
    if roll < 0.75:
        return {"kind": rng.choice(("load", "load", "unload")),
                "model": rng.choice(("canary", "swap", "bad"))}
    return {"kind": "infer", "route": rng.choice(list(known) or list(ROUTE_NAMES))}


def send(client: Client, op: dict) -> None:
    ipb, cpb = _pb()
    c = client.control
    kind, t = op["kind"], RPC_TIMEOUT_S
    if kind == "set":
        route = cpb.Route(name=op["route"], sticky=op["sticky"])
        for m, v, w in op["targets"]:
            route.targets.add(model=m, version=v, weight=w)
        if op["shadow"]:
            m, v, f = op["shadow"]
            route.shadow.CopyFrom(cpb.Shadow(model=m, version=v, fraction=f))
        c.SetRoute(cpb.SetRouteRequest(route=route, normalize=op["normalize"]), timeout=t)
    elif kind == "delete":
        c.DeleteRoute(cpb.DeleteRouteRequest(name=op["route"]), timeout=t)
    elif kind == "rollout":
        spec = cpb.RolloutSpec(candidate_model=op["model"], candidate_version=op["version"],
                               stages=op["stages"], hold_secs=op["hold_secs"],
                               auto_promote=op["auto_promote"],
                               guards=cpb.Guards(min_requests=op["min_requests"]))
        c.StartRollout(cpb.StartRolloutRequest(route=op["route"], spec=spec), timeout=t)
    elif kind in ("pause", "resume"):
        c.PauseRollout(cpb.PauseRolloutRequest(route=op["route"], resume=kind == "resume"),
                       timeout=t)
    elif kind == "promote":
        c.PromoteRollout(cpb.PromoteRolloutRequest(route=op["route"]), timeout=t)
    elif kind == "rollback":
        c.RollbackRollout(cpb.RollbackRolloutRequest(route=op["route"], reason="bench"),
                          timeout=t)
    elif kind == "load":
        client.inference.RepositoryModelLoad(
            ipb.RepositoryModelLoadRequest(model_name=op["model"]), timeout=t)
    elif kind == "unload":
        client.inference.RepositoryModelUnload(
            ipb.RepositoryModelUnloadRequest(model_name=op["model"]), timeout=t)
    elif kind == "infer":
        for _ in range(3):  # enough for a stage's min_requests
            client.infer(op["route"], 1.0)


# -- one run ---------------------------------------------------------------------------


class Campaign:
    def __init__(self, work: Path, seed: int, verbose: bool = False) -> None:
        self.work = work
        self.rng = random.Random(seed)
        self.verbose = verbose
        self.repo = build_repository(work / "repo")
        self.state_dir = work / "state"
        self.state_file = self.state_dir / "routes.json"
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.counts = {
            "runs": 0, "kills": 0, "kills_exit_sigkill": 0, "kills_with_change_in_flight": 0,
            "restarts": 0, "restart_failures": 0, "inconsistent_states": 0,
            "corrupt_files": 0, "restore_mismatches": 0, "serve_failures": 0,
            "temp_files_left_by_kills": 0, "temp_files_after_restart": 0,
            "ops_sent": 0, "ops_acked": 0, "ops_refused": 0,
            "ops_in_flight_at_kill": 0, "unexplained_acks": 0, "routes_checked": 0,
            "server_tracebacks": 0,
        }
        self.problems: list[str] = []
        self.seconds: list[float] = []
        self.server: Server | None = None
        self.client: Client | None = None

    def _problem(self, counter: str, text: str) -> None:
        self.counts[counter] += 1
        self.problems.append(f"run {self.counts['runs']}: {text}")
        if self.verbose or len(self.problems) <= 20:
            print(f"  PROBLEM run {self.counts['runs']}: {text}", flush=True)

    def _start(self, tag: str) -> bool:
        self.server = Server(self.repo, self.state_dir, self.logs / f"{tag}.log")
        if not self.server.wait_ready():
            rc = self.server.proc.poll()
            self.server.stop()
            self.server.save_log()
            self._problem("restart_failures", f"server did not start (exit {rc}); log "
                          f"{self.server.log_path}")
            return False
        self.client = Client(self.server.url)
        return True

    def start(self) -> bool:
        return self._start("start")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.server is not None:
            self.server.stop()

    def _list(self) -> dict:
        return {r.name: project(r) for r in self.client.routes()}

    def run_once(self) -> None:
        self.counts["runs"] += 1
        run = self.counts["runs"]
        t0 = time.monotonic()
        client, server = self.client, self.server
        base = self._list()  # route name -> projected route, as listed
        pending: tuple[dict, str] | None = None  # (op since base, "ok"|"refused"|"flight")
        n_ops = self.rng.randint(2, 8)
        delay = self.rng.uniform(0.0, MAX_KILL_DELAY_S)
        timer = None
        dead = threading.Event()

        def kill() -> None:
            server.kill()
            dead.set()

        i = 0
        while not dead.is_set():
            op = random_op(self.rng, base)
            if i == n_ops - 1:
                timer = threading.Timer(delay, kill)
                timer.start()
            i += 1
            self.counts["ops_sent"] += 1
            pending = (op, "flight")
            try:
                send(client, op)
                pending = (op, "ok")
                self.counts["ops_acked"] += 1
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.FAILED_PRECONDITION):
                    pending = (op, "refused")  # answered by the server: nothing changed
                    self.counts["ops_refused"] += 1
                elif timer is not None:
                    timer.join()
                    if dead.is_set():
                        break
                # else: e.g. an inference on an unloaded target: not a route change
                elif op["kind"] != "infer":
                    pending = (op, "refused")
            try:
                listed = self._list()
            except grpc.RpcError:
                if timer is not None:
                    timer.join()
                if dead.is_set():
                    break
                raise
            if pending[1] == "ok" and op["kind"] != "infer":
                name = op.get("route")
                if name is not None:
                    want = closure({apply_op(p, op) for p in closure({base.get(name)})})
                    if listed.get(name) not in want:
                        self._problem("unexplained_acks", f"{op} acknowledged, but the route "
                                      f"listed is {listed.get(name)}")
            base, pending = listed, None
        rc = server.proc.returncode
        if any("Traceback" in line for line in server.lines):
            server.save_log()
            self._problem("server_tracebacks", f"a traceback in {server.log_path}")
        self.counts["kills"] += 1
        self.counts["kills_exit_sigkill"] += rc == -signal.SIGKILL
        client.close()
        if pending is not None and pending[1] == "flight":
            self.counts["ops_in_flight_at_kill"] += 1
        self._check_file(base, pending)
        self.counts["restarts"] += 1
        if not self._start(f"run{run:04d}"):
            self.seconds.append(time.monotonic() - t0)
            return
        self._check_restored()
        self.seconds.append(time.monotonic() - t0)

    def _acceptable(self, base: dict, pending) -> dict:
        """route name -> the set of projected states (None: absent) it may have on disk."""
        names = set(base) | set(ROUTE_NAMES)
        accept = {n: closure({base.get(n)}) for n in names}
        if pending is not None and pending[0].get("route") in names:
            op, outcome = pending
            n = op["route"]
            applied = closure({apply_op(p, op) for p in accept[n]})
            if outcome == "ok":
                accept[n] = applied
            elif outcome == "flight":
                accept[n] = accept[n] | applied
        return accept

    def _check_file(self, base: dict, pending) -> None:
        from tensorgate.routing import store

        self.counts["temp_files_left_by_kills"] += len(list(self.state_dir.glob(".*.tmp")))
        try:
            routes = store.load(self.state_file)
        except ValueError as exc:
            self._problem("corrupt_files", str(exc))
            self.counts["inconsistent_states"] += 1
            self.saved = None
            return
        self.saved = routes
        on_disk = {r.name: project(r) for r in routes}
        accept = self._acceptable(base, pending)
        bad = []
        for name in set(on_disk) | set(accept):
            self.counts["routes_checked"] += 1
            if on_disk.get(name) not in accept.get(name, {None}):
                bad.append(f"route {name}: on disk {on_disk.get(name)}, acceptable "
                           f"{sorted(accept.get(name, {None}), key=repr)}")
        bad += [e for e in map(check_key_ranges, routes) if e]
        if pending is not None and pending[1] == "flight" and pending[0]["kind"] not in (
                "infer", "load", "unload"):
            self.counts["kills_with_change_in_flight"] += 1
        if bad:
            self._problem("inconsistent_states", "; ".join(bad) + f" (in flight: {pending})")

    def _check_restored(self) -> None:
        listed = self.client.routes()
        left = [p.name for p in self.state_dir.glob(".*.tmp")]
        if left:
            self._problem("temp_files_after_restart", f"temp files still there: {left}")
        if self.saved is not None:
            mine = sorted((project(r), [(k.start, k.target) for k in r.key_ranges])
                          for r in self.saved)
            theirs = sorted((project(r), [(k.start, k.target) for k in r.key_ranges])
                            for r in listed)
            if mine != theirs:
                self._problem("restore_mismatches", f"restored {theirs}, routes.json {mine}")
                self.counts["inconsistent_states"] += 1
        # A route whose every target answers: through it; none: make one.
        good = [r for r in listed
                if all(model_value(t.model, t.version) is not None for t in r.targets)]
        if not good:
            _, cpb = _pb()
            route = cpb.Route(name="r1")
            route.targets.add(model="swap", version="1", weight=100)
            if any(r.name == "r1" for r in listed):
                self.client.control.DeleteRoute(cpb.DeleteRouteRequest(name="r1"),
                                                timeout=RPC_TIMEOUT_S)
            self.client.control.SetRoute(cpb.SetRouteRequest(route=route),
                                         timeout=RPC_TIMEOUT_S)
            good = [route]
        route = self.rng.choice(good)
        try:
            model, version, delta = self.client.infer(route.name, 1.0)
        except grpc.RpcError as exc:
            self._problem("serve_failures", f"inference through {route.name}: "
                          f"{exc.code().name} {exc.details()}")
            return
        want = {(t.model, t.version or "", model_value(t.model, t.version))
                for t in route.targets if t.weight > 0}
        got_ok = any(model == m and (not v or v == version) and abs(delta - val) < 1e-6
                     for m, v, val in want)
        if not got_ok:
            self._problem("serve_failures", f"inference through {route.name} answered "
                          f"{model}:{version} +{delta}, targets {want}")


def run_campaign(runs: int, seed: int, work: Path, verbose: bool = False,
                 progress: bool = False) -> dict:
    campaign = Campaign(work, seed, verbose)
    t0 = time.monotonic()
    try:
        if campaign.start():
            for k in range(runs):
                campaign.run_once()
                if campaign.server is None or campaign.server.proc.poll() is not None:
                    break  # the restart failed: reported
                if progress and (k + 1) % 20 == 0:
                    c = campaign.counts
                    print(f"  {k + 1}/{runs} runs, {c['inconsistent_states']} inconsistent, "
                          f"{time.monotonic() - t0:.0f} s", flush=True)
    finally:
        campaign.close()
    seconds = sorted(campaign.seconds) or [0.0]
    return {
        "runs_requested": runs, "seed": seed, **campaign.counts,
        "wall_s": round(time.monotonic() - t0, 1),
        "run_s_median": round(seconds[len(seconds) // 2], 3),
        "run_s_max": round(seconds[-1], 3),
        "problems": campaign.problems[:50],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="kill/restart runs (default 200)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--json-out", type=Path, help="write the summary here as JSON")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it "
                    "(repository, state dir, server logs); default: a temp dir, removed")
    ap.add_argument("--verbose", action="store_true", help="print every problem")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    work = args.keep or Path(tempfile.mkdtemp(prefix="tg-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        summary = run_campaign(args.runs, args.seed, work, args.verbose, progress=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    summary["machine"] = (f"{platform.node()} {os.cpu_count()} CPUs, "
                          f"Python {platform.python_version()}")
    keys = ("runs", "kills", "kills_exit_sigkill", "kills_with_change_in_flight",
            "ops_in_flight_at_kill",
            "restarts", "restart_failures", "inconsistent_states", "corrupt_files",
            "restore_mismatches", "serve_failures", "temp_files_left_by_kills",
            "temp_files_after_restart", "ops_sent", "ops_acked",
            "ops_refused", "unexplained_acks", "server_tracebacks", "routes_checked",
            "wall_s", "run_s_median", "run_s_max")
    for k in keys:
        print(f"{k:24s} {summary[k]}")
    ok = (summary["inconsistent_states"] == 0 and summary["restart_failures"] == 0
          and summary["serve_failures"] == 0 and summary["runs"] == args.runs)
    print("PASS" if ok else "FAIL")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
