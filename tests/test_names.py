"""Channel and group names: what passes, what is refused, and how the error reads."""

from __future__ import annotations

import pytest

from svcbus import InvalidChannelName
from svcbus.names import (
    MAX_NAME_LENGTH,
    is_process_specific,
    process_part,
    validate_channel,
    validate_group,
)

GOOD = ["chat.receive", "a", "stats.get", "x-1_y.z9", "edge.3f9a!7d2e", "reply.ab!c.d", "a" * 100]


@pytest.mark.parametrize("name", GOOD)
def test_valid_channel_names_pass(name):
    assert validate_channel(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("chat.*", "wildcard"),
        ("chat.>", "wildcard"),
        ("chat receive", "whitespace"),
        ("chat\nreceive", "whitespace"),
        ("a..b", "empty token"),
        (".a", "empty token"),
        ("a.", "empty token"),
        ("a!", "empty token"),
        ("a!b!c", "more than one"),
        ("Chat", "'C'"),
        ("chät", "'ä'"),
        ("a/b", "'/'"),
        ("a" * (MAX_NAME_LENGTH + 1), "limit is 100"),
    ],
)
def test_bad_channel_names_say_why(name, reason):
    with pytest.raises(InvalidChannelName, match=reason):
        validate_channel(name)


def test_non_string_names_are_refused():
    with pytest.raises(InvalidChannelName, match="must be a str"):
        validate_channel(b"chat")  # type: ignore[arg-type]


def test_groups_cannot_be_process_specific():
    assert validate_group("room.lobby") == "room.lobby"
    with pytest.raises(InvalidChannelName, match="'!'"):
        validate_group("room!x")


def test_process_part():
    assert is_process_specific("edge.ab!cd") and not is_process_specific("chat.receive")
    assert process_part("edge.ab!cd") == "edge.ab"
