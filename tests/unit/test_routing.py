"""Routing without a server: target choice, sticky hashing, validation, persistence,
shadow comparison and rollout guards (a fake repository stands in for models)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorgate._proto.tensorgate.v1 import control_pb2 as pb
from tensorgate.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from tensorgate.routing import layout
from tensorgate.routing import rollout as ro
from tensorgate.routing import store
from tensorgate.routing.manager import RouteManager
from tensorgate.routing.shadow import compare
from tensorgate.routing.table import CompiledRoute, VariantStats, make_target


def _route(weights, sticky=False):
    targets = [make_target("m", str(i + 1), w) for i, w in enumerate(weights)]
    return CompiledRoute("r", targets, sticky, [VariantStats() for _ in targets], None)


def _sigma_bound(n, p, sigmas=4.0):
    return sigmas * math.sqrt(n * p * (1 - p))


def test_weighted_split_within_binomial_bound():
    route = _route([90, 10])
    n = 20_000
    counts = np.bincount([route.pick(None) for _ in range(n)], minlength=2)
    assert abs(counts[1] - n * 0.1) <= _sigma_bound(n, 0.1), counts


def test_zero_weight_target_never_chosen():
    route = _route([0, 100, 0])
    assert {route.pick(None) for _ in range(2000)} == {1}
    assert {route.pick_sticky(f"k{i}") for i in range(500)} == {1}


def test_sticky_is_stable_and_split_by_weight():
    route = _route([90, 10], sticky=True)
    keys = [f"user-{i}" for i in range(10_000)]
    first = [route.pick(k) for k in keys]
    assert first == [route.pick(k) for k in keys]  # same key, same variant
    share = sum(first) / len(keys)
    assert abs(share - 0.1) <= _sigma_bound(len(keys), 0.1) / len(keys)
    # A stable hash: the same in another process (no Python hash randomisation).
    again = _route([90, 10], sticky=True)
    assert first == [again.pick(k) for k in keys]


def _keys_by_variant(route, keys):
    return [route.pick(k) for k in keys]


def _sticky_route_after(previous, weights):
    """The route compiled as the manager would after a weight change: its key ranges
    rebalanced from the previous compilation's."""
    targets = [make_target("m", str(i + 1), w) for i, w in enumerate(weights)]
    ranges = [(s, previous.targets[i].label)
              for s, i in zip(previous.range_starts, previous.range_targets)]
    fitted = layout.rebalance(ranges, [(t.label, t.weight) for t in targets])
    return CompiledRoute("r", targets, True, [VariantStats() for _ in targets], None,
                         key_ranges=fitted)


@pytest.mark.parametrize("before_w, after_w, must_move, src, dst", [
    ([90, 10], [80, 20], 0.10, {0}, {1}),
    ([50, 30, 20], [40, 30, 30], 0.10, {0}, {2}),
    ([25, 25, 25, 25], [10, 20, 30, 40], 0.20, {0, 1}, {2, 3}),
])
def test_sticky_keys_move_minimally_when_weights_change(before_w, after_w, must_move, src,
                                                        dst):
    keys = [f"user-{i}" for i in range(10_000)]
    first = _route(before_w, sticky=True)
    second = _sticky_route_after(first, after_w)
    moved = [(b, a) for b, a in zip(_keys_by_variant(first, keys),
                                    _keys_by_variant(second, keys)) if a != b]
    # Only keys of a shrunk variant move, only onto a grown one, and as many as must:
    # a variant with unchanged weight keeps every key (weighted rendezvous hashing moved
    # 13% of keys for the 10% that must move in the three-variant case).
    assert all(b in src and a in dst for b, a in moved), set(moved)
    n = len(keys)
    assert abs(len(moved) - must_move * n) <= _sigma_bound(n, must_move), len(moved)
    share = np.bincount(_keys_by_variant(second, keys), minlength=len(after_w)) / n
    for got, want in zip(share, after_w):
        assert abs(got - want / 100) <= _sigma_bound(n, want / 100) / n


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 10), min_size=4, max_size=4)
                .filter(lambda w: sum(w) > 0), min_size=2, max_size=12))
def test_rebalance_moves_exactly_the_weight_that_changed(history):
    """Over any sequence of weight changes, each step hands over exactly the key space
    the shares changed by (the sum of the growths), and each label owns its share."""
    labels = ["a", "b", "c", "d"]
    ranges = layout.rebalance([], list(zip(labels, history[0])))
    for weights in history[1:]:
        before = layout.owned(ranges)
        want = layout.shares(list(zip(labels, weights)))
        fitted = layout.rebalance(ranges, list(zip(labels, weights)))
        assert layout.is_valid(fitted)
        assert layout.owned(fitted) == want
        growth = sum(max(want.get(x, 0) - before.get(x, 0), 0) for x in labels)
        assert layout.moved(ranges, fitted) == growth
        ranges = fitted


def test_rebalance_starts_afresh_from_an_invalid_layout():
    weights = [("a", 60.0), ("b", 40.0)]
    fresh = layout.rebalance([], weights)
    assert fresh == [(0, "a"), (layout.shares(weights)["a"], "b")]
    for broken in ([(5, "a")], [(0, "a"), (0, "b")], [(0, "a"), (layout.SPACE, "b")]):
        assert layout.rebalance(broken, weights) == fresh
    assert layout.rebalance(fresh, weights) is fresh  # unchanged weights: same layout
    with pytest.raises(ValueError):
        layout.rebalance(fresh, [("a", 0.0)])


def test_compare_exact_diff_and_top1():
    a = {"OUT": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}
    assert compare(a, {"OUT": a["OUT"].copy()}, 0.0) == (True, 0.0, 2, 2, True)
    b = {"OUT": np.array([[0.1, 0.9], [0.3, 0.7]], np.float32)}
    exact, diff, rows, agree_rows, agree = compare(a, b, 1.0)
    assert not exact and diff == pytest.approx(0.5) and (rows, agree_rows) == (2, 1)
    assert not agree  # a top-1 flip is a disagreement whatever the tolerance
    c = {"OUT": a["OUT"] + np.float32(1e-4)}
    assert compare(a, c, 1e-3)[4] and not compare(a, c, 1e-6)[4]
    assert compare(a, {"OUT": np.zeros((3, 2), np.float32)}, 1.0)[4] is False


def test_p99_from_buckets():
    counts = [0] * 19
    counts[3] = 99
    counts[10] = 1
    assert ro.p99_ns(counts) == 250_000  # the 250 µs bucket holds the 99th
    counts[10] = 5
    assert ro.p99_ns(counts) == 50_000_000
    assert ro.p99_ns([0] * 19) is None


def test_store_round_trip_and_atomic(tmp_path):
    path = store.state_path(tmp_path)
    assert store.load(path) == []
    route = pb.Route(name="r", sticky=True)
    route.targets.add(model="m", version="1", weight=100)
    store.save(path, [route])
    assert store.load(path) == [route]
    assert [p.name for p in path.parent.iterdir()] == ["routes.json"]  # no temp left
    assert json.loads(path.read_text())["routes"][0]["name"] == "r"
    path.write_text("{not json")
    with pytest.raises(ValueError):
        store.load(path)


# -- the manager over a fake repository ----------------------------------------------------


class FakeRepository:
    def __init__(self, root: Path, models: dict[str, list[str]], inputs=None) -> None:
        self.root = root
        self.models = models
        self.not_ready: set[tuple[str, str]] = set()
        self.inputs = inputs or {}

    def known(self, name):
        return name in self.models

    def resolve(self, name, version):
        if name not in self.models:
            raise NotFound(f"unknown model '{name}'")
        if version and version not in self.models[name]:
            raise NotFound(f"model '{name}' has no version '{version}'")
        if (name, version) in self.not_ready:
            raise Unavailable(f"model '{name}' is not ready")
        spec = SimpleNamespace(dtype=SimpleNamespace(wire=self.inputs.get(name, "FP32")))
        return SimpleNamespace(label=f"{name}:{version}", inputs={"INPUT0": spec})


def _manager(tmp_path) -> RouteManager:
    repo = FakeRepository(tmp_path, {"a": ["1", "2"], "b": ["1"], "c": ["1"], "i": ["1"]},
                          inputs={"i": "INT32"})
    return RouteManager(repo, store.state_path(tmp_path))


def _spec(name, *targets, sticky=False):
    route = pb.Route(name=name, sticky=sticky)
    for model, version, weight in targets:
        route.targets.add(model=model, version=version, weight=weight)
    return route


def test_set_route_validates_as_a_whole(tmp_path):
    m = _manager(tmp_path)
    m.set_route(_spec("ab", ("a", "1", 90), ("b", "", 10)))
    bad = [
        (_spec("a", ("b", "", 100)), InvalidArgument, "model's name"),
        (_spec("x", ("a", "1", 90), ("b", "", 20)), InvalidArgument, "add up to 110"),
        (_spec("x", ("nope", "", 100)), NotFound, "unknown model 'nope'"),
        (_spec("x", ("a", "7", 100)), NotFound, "no version '7'"),
        (_spec("x", ("ab", "", 100)), InvalidArgument, "is a route"),
        (_spec("x", ("a", "1", 50), ("a", "1", 50)), InvalidArgument, "listed twice"),
        (_spec("x", ("a", "1", 50), ("i", "", 50)), InvalidArgument, "same inputs"),
        (_spec("x"), InvalidArgument, "no targets"),
    ]
    for spec, cls, text in bad:
        with pytest.raises(cls, match=text):
            m.set_route(spec)
    m.repository.not_ready.add(("c", ""))
    with pytest.raises(InvalidArgument, match="not ready"):
        m.set_route(_spec("x", ("c", "", 100)))
    # Nothing of the refused changes applied.
    assert [r.name for r in m.list_routes()] == ["ab"]
    assert set(m.table.routes) == {"ab"}
    route, notes = m.set_route(_spec("n", ("a", "1", 3), ("b", "", 1)), normalize=True)
    assert [t.weight for t in route.targets] == [75, 25] and "normalised" in notes[0]


def test_manager_keeps_sticky_keys_across_changes_and_restarts(tmp_path):
    keys = [f"user-{i}" for i in range(5_000)]
    m = _manager(tmp_path)
    m.set_route(_spec("abc", ("a", "1", 50), ("b", "", 30), ("c", "", 20), sticky=True))
    before = [m.table.routes["abc"].pick(k) for k in keys]
    forged = _spec("abc", ("a", "1", 40), ("b", "", 30), ("c", "", 30), sticky=True)
    forged.key_ranges.add(start=0, target="c:default")  # read-only: ignored
    route, _ = m.set_route(forged)
    assert layout.owned([(r.start, r.target) for r in route.key_ranges]) == layout.shares(
        [("a:1", 40), ("b:default", 30), ("c:default", 30)])
    after = [m.table.routes["abc"].pick(k) for k in keys]
    moved = {(b, a) for b, a in zip(before, after) if a != b}
    assert moved == {(0, 2)}  # a -> c only; b's keys all stay
    again = _manager(tmp_path)
    again.restore()
    assert [again.table.routes["abc"].pick(k) for k in keys] == after


def test_routes_persist_and_restore(tmp_path):
    m = _manager(tmp_path)
    m.set_route(_spec("ab", ("a", "1", 90), ("b", "", 10), sticky=True))
    m.set_route(_spec("cc", ("c", "", 100)))
    m.delete_route("cc")
    again = _manager(tmp_path)
    assert again.restore() == 1
    assert again.get_route("ab") == m.get_route("ab")
    assert again.table.routes["ab"].sticky
    with pytest.raises(NotFound):
        again.get_route("cc")
    kinds = [e.kind for e in m.list_events()]
    assert kinds == ["set", "set", "delete"]


def test_restore_ignores_and_removes_temp_files_of_a_killed_write(tmp_path):
    m = _manager(tmp_path)
    m.set_route(_spec("ab", ("a", "1", 100)))
    state = store.state_path(tmp_path)
    # What a SIGKILL between the temp file's creation and its rename leaves behind
    # (bench/crash_recovery.py finds one every ~15 kills): a newer, even half, state.
    stale = [state.parent / ".routes.json.k1ll3d.tmp", state.parent / ".routes.json.x.tmp"]
    stale[0].write_text('{"routes": [{"name": "ab", "targets": [{"model": "b"')
    stale[1].write_text(state.read_text().replace('"ab"', '"zz"'))
    other = state.parent / ".other.json.x.tmp"  # not ours
    other.write_text("{}")
    again = _manager(tmp_path)
    assert again.restore() == 1
    assert [r.name for r in again.list_routes()] == ["ab"]
    assert not any(p.exists() for p in stale) and other.exists()


def test_rollout_rolls_back_on_candidate_errors(tmp_path):
    async def scenario():
        m = _manager(tmp_path)
        m.set_route(_spec("r", ("a", "1", 100)))
        spec = pb.RolloutSpec(candidate_model="a", candidate_version="2", stages=[50, 100],
                              hold_secs=30, guards=pb.Guards(min_requests=5))
        m.start_rollout("r", spec)
        with pytest.raises(FailedPrecondition):
            m.set_route(_spec("r", ("b", "", 100)))
        route = m.table.routes["r"]
        assert [t.weight for t in route.targets] == [50, 50] and route.candidate == 1
        for _ in range(4):  # below min_requests: not judged yet
            route.stats[1].requests += 1
            route.stats[1].failures += 1
            route.rollout.on_failure()
        assert m.get_route("r").rollout.state == ro.RUNNING
        route.stats[1].requests += 1
        route.stats[1].failures += 1
        route.rollout.on_failure()
        status = m.get_route("r").rollout
        assert status.state == ro.ROLLED_BACK and "error rate" in status.reason
        assert [(t.model, t.version, t.weight) for t in m.get_route("r").targets] == [
            ("a", "1", 100)]
        assert m.table.routes["r"].rollout is None
        assert m.list_events()[-1].kind == "rollback"
        # The rollback survives a restart.
        again = _manager(tmp_path)
        again.restore()
        assert again.get_route("r").rollout.state == ro.ROLLED_BACK
        await m.close()

    asyncio.run(scenario())


def test_rollout_stages_and_auto_promote(tmp_path):
    async def scenario():
        m = _manager(tmp_path)
        m.set_route(_spec("r", ("a", "1", 100)))
        spec = pb.RolloutSpec(candidate_model="b", stages=[10, 100], hold_secs=0.15,
                              auto_promote=True, guards=pb.Guards(min_requests=5))
        m.start_rollout("r", spec)
        # No traffic: the stage's hold passes, but it waits for its requests, and says so.
        await asyncio.sleep(0.5)
        status = m.get_route("r").rollout
        assert status.state == ro.RUNNING and status.stage == 0
        assert status.waiting_for == "requests: 0 of 5 on the candidate"
        for _ in range(100):
            m.table.routes["r"].stats[1].requests += 1  # the candidate is called
            await asyncio.sleep(0.05)
            if m.get_route("r").rollout.state == ro.PROMOTED:
                break
        route = m.get_route("r")
        assert route.rollout.state == ro.PROMOTED
        assert [(t.model, t.weight) for t in route.targets] == [("b", 100)]
        kinds = [e.kind for e in m.list_events("r")]
        assert kinds == ["set", "rollout_start", "stage", "promote"]
        await m.close()

    asyncio.run(scenario())


def test_rollout_manual_promotion_and_pause(tmp_path):
    async def scenario():
        m = _manager(tmp_path)
        m.set_route(_spec("r", ("a", "1", 100)))
        m.start_rollout("r", pb.RolloutSpec(candidate_model="a", candidate_version="2",
                                            stages=[100], hold_secs=0.1,
                                            guards=pb.Guards(min_requests=1)))
        m.table.routes["r"].stats[1].requests += 1
        m.pause_rollout("r", resume=False)
        await asyncio.sleep(0.35)
        assert m.get_route("r").rollout.state == ro.PAUSED  # a pause holds the stage
        m.pause_rollout("r", resume=True)
        for _ in range(40):
            await asyncio.sleep(0.05)
            if m.get_route("r").rollout.state == ro.AWAITING:
                break
        assert m.get_route("r").rollout.state == ro.AWAITING
        m.promote_rollout("r")
        route = m.get_route("r")
        assert route.rollout.state == ro.PROMOTED
        assert [(t.model, t.version) for t in route.targets] == [("a", "2")]
        with pytest.raises(FailedPrecondition):
            m.rollback_rollout("r", "")
        await m.close()

    asyncio.run(scenario())


def test_rollout_latency_and_shadow_guards(tmp_path):
    async def scenario():
        m = _manager(tmp_path)
        m.set_route(_spec("r", ("a", "1", 100)))
        guards = pb.Guards(min_requests=10, max_p99_ratio=2.0)
        m.start_rollout("r", pb.RolloutSpec(candidate_model="a", candidate_version="2",
                                            stages=[50], hold_secs=60, guards=guards))
        route = m.table.routes["r"]
        rollout = route.rollout
        for _ in range(50):
            route.stats[0].requests += 1
            route.stats[0].latency.observe(200_000)  # stable: 0.2 ms
            route.stats[1].requests += 1
            route.stats[1].latency.observe(300_000)  # candidate: 0.3 ms, same bucket
        assert rollout.evaluate() == ""
        for _ in range(5):
            route.stats[1].requests += 1
            route.stats[1].latency.observe(40_000_000)  # a slow tail: 40 ms
        assert "p99 guard" in rollout.evaluate()
        await m.close()

        m2 = _manager(tmp_path / "b")
        (tmp_path / "b").mkdir()
        spec = _spec("s", ("a", "1", 100))
        spec.shadow.CopyFrom(pb.Shadow(model="a", version="2", fraction=1.0))
        m2.set_route(spec)
        m2.start_rollout("s", pb.RolloutSpec(
            candidate_model="a", candidate_version="2", stages=[10], hold_secs=60,
            guards=pb.Guards(min_requests=10, max_disagreement=0.1)))
        route = m2.table.routes["s"]
        route.shadow.stats.compared += 20
        route.shadow.stats.agree += 19
        assert route.rollout.evaluate() == ""
        route.shadow.stats.compared += 10
        route.shadow.stats.agree += 5
        assert "shadow guard" in route.rollout.evaluate()
        await m2.close()

    asyncio.run(scenario())


def test_running_rollout_resumes_after_restart(tmp_path):
    async def scenario():
        m = _manager(tmp_path)
        m.set_route(_spec("r", ("a", "1", 100)))
        m.start_rollout("r", pb.RolloutSpec(candidate_model="b", stages=[25, 100],
                                            hold_secs=60))
        await m.close()  # the process goes away mid-rollout
        again = _manager(tmp_path)
        assert again.restore() == 1
        route = again.table.routes["r"]
        assert route.rollout is not None and route.candidate == 1
        assert [t.weight for t in route.targets] == [75, 25]
        assert again.get_route("r").rollout.state == ro.RUNNING
        assert again.list_events()[-1].kind == "resume"
        again.rollback_rollout("r", "operator said so")
        assert again.get_route("r").rollout.reason == "operator said so"
        await again.close()

    asyncio.run(scenario())
