"""server/tensorgate/security and the tensor limits, without a server: token parsing, token ids,
token buckets on a fake clock, the guard over a fake call context, element limits."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest

from tensorgate.context import RequestContext
from tensorgate.errors import (
    InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated,
)
from tensorgate.security import ADMIN, INFER, Guard, RateLimiter, TokenTable, token_id
from tensorgate.security.auth import parse_entries
from tensorgate.security.guard import peer_host
from tensorgate.tensors import Limits, _element_count, TensorSpec
from tensorgate.dtypes import DType  # noqa: F401  (TensorSpec's dtype type)


def FakeContext(token: str | None = None, peer: str = "ipv4:10.1.2.3:40000",
                raw_header: str | None = None) -> RequestContext:
    """The neutral context a front end would build for a call with these credentials."""
    md = []
    if raw_header is not None:
        md.append(("authorization", raw_header))
    elif token is not None:
        md.append(("authorization", f"Bearer {token}"))
    md.append(("user-agent", "test"))
    return RequestContext(0.0, tuple(md), peer)


TABLE = TokenTable(parse_entries(["s3cret-infer infer", "s3cret-admin admin"], "test"))


def test_parse_entries_roles_and_errors():
    entries = dict(parse_entries(["# comment", "", "a infer", "b admin", "c infer,admin"], "x"))
    assert entries == {
        "a": frozenset({INFER}),
        "b": frozenset({INFER, ADMIN}),
        "c": frozenset({INFER, ADMIN}),
    }
    with pytest.raises(ValueError, match="unknown role"):
        parse_entries(["tok root"], "src")
    with pytest.raises(ValueError, match="expected 'TOKEN ROLE") as info:
        parse_entries(["only-a-token-here"], "src")
    assert "only-a-token-here" not in str(info.value)  # errors never echo a token


def test_token_table_load_from_file_and_env(tmp_path):
    f = tmp_path / "tokens"
    f.write_text("filetok infer\n")
    table = TokenTable.load(f, "envtok admin; other infer")
    assert len(table) == 3
    assert ADMIN in table.lookup(b"envtok").roles
    assert table.lookup(b"filetok").roles == frozenset({INFER})
    assert table.lookup(b"nope") is None
    assert TokenTable.load(None, None) is None
    assert TokenTable.load(None, "") is None
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no token"):
        TokenTable.load(empty, None)


def test_token_id_is_a_sha256_prefix():
    assert token_id("abc") == hashlib.sha256(b"abc").hexdigest()[:8]
    assert TABLE.lookup(b"s3cret-infer").token_id == token_id("s3cret-infer")


def test_rate_limiter_refills_on_a_fake_clock():
    lim = RateLimiter(rps=2, burst=3)
    assert [lim.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert lim.allow("b", 0.0)  # another client has its own bucket
    assert not lim.allow("a", 0.2)  # 0.4 token refilled: not yet one
    assert lim.allow("a", 0.6)  # 1.2 tokens by now
    assert not lim.allow("a", 0.6)
    assert [lim.allow("a", 100.0) for _ in range(4)] == [True, True, True, False]  # capped


def test_rate_limiter_table_is_bounded():
    lim = RateLimiter(rps=1000, burst=1, max_clients=100)
    for i in range(1000):
        lim.allow(f"client{i}", i * 0.01)
    assert len(lim) <= 100


def test_peer_host_drops_the_port():
    assert peer_host("ipv4:127.0.0.1:5555") == "ipv4:127.0.0.1"
    assert peer_host("ipv6:[::1]:80") == "ipv6:[::1]"
    assert peer_host("unix:/tmp/sock") == "unix:/tmp/sock"


def test_guard_off_is_none():
    assert Guard.build(None, 0, 0, 0) is None
    assert Guard.build(None, 0, 0, 5) is not None


def test_guard_authenticates_and_authorizes(caplog):
    guard = Guard(TABLE)
    caplog.set_level(logging.INFO, logger="tensorgate.audit")
    assert guard.check(FakeContext("s3cret-infer"), INFER, "ModelInfer").token_id == token_id(
        "s3cret-infer"
    )
    assert ADMIN in guard.check(FakeContext("s3cret-admin"), ADMIN, "RepositoryModelLoad").roles
    with pytest.raises(Unauthenticated, match="missing credentials"):
        guard.check(FakeContext(), INFER, "ModelInfer")
    with pytest.raises(Unauthenticated, match="missing credentials"):
        guard.check(FakeContext(raw_header="Basic abc"), INFER, "ModelInfer")
    with pytest.raises(Unauthenticated, match="not known"):
        guard.check(FakeContext("s3cret-wrong"), INFER, "ModelInfer")
    with pytest.raises(PermissionDenied, match="'admin' role"):
        guard.check(FakeContext("s3cret-infer"), ADMIN, "RepositoryModelLoad")
    text = caplog.text
    assert text.count("denied rpc=") == 4
    assert "peer=ipv4:10.1.2.3:40000" in text
    assert f"token={token_id('s3cret-infer')}" in text
    assert "s3cret" not in text  # never the token itself


def test_guard_rate_limits_per_token_and_per_peer():
    guard = Guard(None, RateLimiter(1, 2))
    a, b = FakeContext(peer="ipv4:1.1.1.1:1"), FakeContext(peer="ipv4:2.2.2.2:1")
    guard.check(a, INFER, "ModelInfer")
    guard.check(FakeContext(peer="ipv4:1.1.1.1:2"), INFER, "ModelInfer")  # same host
    with pytest.raises(ResourceExhausted, match="rate limit exceeded.*--rate-limit-rps"):
        guard.check(a, INFER, "ModelInfer")
    guard.check(b, INFER, "ModelInfer")


def test_guard_inflight_cap():
    guard = Guard(max_inflight=2)
    guard.enter()
    guard.enter()
    with pytest.raises(ResourceExhausted, match="--max-inflight"):
        guard.enter()
    guard.leave()
    guard.enter()
    assert guard.inflight == 2


SPEC = TensorSpec("INPUT0", None, (-1,), None)  # dtype unused by _element_count


@pytest.mark.parametrize(
    "shape, count",
    [((2, 3), 6), ((0, 2**62), 0), ((2**40, 2**40, 0), 0), ((), 1), ((1000,), 1000)],
)
def test_element_count_within_limit(shape, count):
    assert _element_count(SPEC, shape, Limits(1000)) == count


@pytest.mark.parametrize("shape", [(1001,), (2**40, 2**40), (2**62, 2**62, 2**62), (8, 2**63 - 1)])
def test_element_count_over_limit_names_it(shape):
    with pytest.raises(InvalidArgument, match=r"more than 1000 elements.*--max-tensor-elements"):
        _element_count(SPEC, shape, Limits(1000, 0, "--max-tensor-elements"))


def test_bytes_element_limit():
    from tensorgate.tensors import _utf8_strings

    arr = np.array([b"ab", b"abcdef"], dtype=object)
    assert list(_utf8_strings(SPEC, arr, "m", 6)) == ["ab", "abcdef"]
    with pytest.raises(InvalidArgument, match=r"element 1 holds 6 bytes.*--max-bytes-element"):
        _utf8_strings(SPEC, arr, "m", 5)
