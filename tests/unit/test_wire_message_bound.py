"""errors.bounded: the cap on a message's percent-encoded size on the wire (a gRPC
caller refuses metadata past 8 KiB; bench/results/2026-12-07-fuzz)."""

from __future__ import annotations

import logging
import urllib.parse

import pytest

from tensorgate.errors import WIRE_MESSAGE_MAX_BYTES, NotFound, bounded, wire_message


def encoded_size(message: str) -> int:
    # grpc-message's encoding: printable ASCII but '%' as is, every other byte %XX.
    return len(urllib.parse.quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"))


@pytest.mark.parametrize("text", ["short", "a" * 341, "é" * 100])
def test_short_messages_are_untouched(text):
    assert bounded(text) == text


@pytest.mark.parametrize("char", ["y", "é", "\U0001f600", "%", "\0"])
def test_long_messages_fit_and_say_what_was_cut(char):
    message = f"Request for unknown model: '{char * 70_000}' is not found"
    out = bounded(message)
    assert encoded_size(out) <= WIRE_MESSAGE_MAX_BYTES
    assert out.startswith("Request for unknown model: '")
    cut = len(message) - out.index("... (")
    assert out.endswith(f"... ({cut} more characters)")


def test_wire_message_is_bounded():
    out = wire_message(NotFound("x" * 10_000), logging.getLogger("t"), "ModelMetadata")
    assert len(out) <= WIRE_MESSAGE_MAX_BYTES and out.endswith("more characters)")
