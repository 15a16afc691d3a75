"""The wire format: docs/protocol.md's test vectors, byte for byte, both ways."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from svcbus import Contract
from svcbus.envelope import ErrorInfo, body_json, encode, envelope_type

PROTOCOL = Path(__file__).parent.parent / "docs" / "protocol.md"


def vector(name: str) -> bytes:
    """The JSON block that follows `<!-- vector: NAME -->` in docs/protocol.md."""
    text = PROTOCOL.read_text(encoding="utf-8")
    match = re.search(rf"<!-- vector: {re.escape(name)} -->.*?```json\n(.*?)\n```", text, re.S)
    assert match, f"vector {name!r} missing from {PROTOCOL}"
    return match.group(1).encode("utf-8")


class VChatPosted(Contract, name="ChatPosted"):
    room: str
    nick: str
    text: str


class VStatsQuery(Contract, name="StatsQuery", version=2):
    room: str


class VStatsReply(Contract, name="StatsReply"):
    room: str
    messages: int


CASES: dict[str, tuple[Any, dict[str, Any]]] = {
    "message": (
        VChatPosted(room="lobby", nick="ada", text="hi"),
        {"id": "5f0c3a9e12d41", "sent_at": 1767225600000, "expires_at": 1767225660000},
    ),
    "request": (
        VStatsQuery(room="lobby"),
        {
            "id": "5f0c3a9e12d42",
            "sent_at": 1767225600123,
            "expires_at": 1767225660123,
            "reply_channel": "inbox.9a8b7c6d!01f2e3d4c5b6",
            "trace": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        },
    ),
    "reply": (
        VStatsReply(room="lobby", messages=3),
        {
            "id": "77aa01be03c21",
            "sent_at": 1767225600200,
            "expires_at": 1767225660200,
            "reply_to": "5f0c3a9e12d42",
        },
    ),
    "error-reply": (
        None,
        {
            "id": "77aa01be03c22",
            "sent_at": 1767225600250,
            "expires_at": 1767225660250,
            "reply_to": "5f0c3a9e12d42",
            "error": ErrorInfo(type="ValueError", message='room "x" is unknown'),
        },
    ),
    "untyped": (
        {"text": "naïve ✓ \x00 🚀"},
        {"id": "01", "sent_at": 0, "expires_at": None, "headers": {"x-tenant": "acme"}},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoding_matches_vector(name):
    body, meta = CASES[name]
    contract = type(body) if isinstance(body, Contract) else None
    encoded = encode(
        body_json(body),
        contract=contract.__contract_name__ if contract else None,
        version=contract.__version__ if contract else 1,
        **meta,
    )
    assert encoded == vector(name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_vector_decodes_in_one_pass(name):
    body, meta = CASES[name]
    body_type = type(body) if isinstance(body, Contract) else Any
    envelope = envelope_type(body_type).model_validate_json(vector(name))
    assert envelope.id == meta["id"]
    assert envelope.at == meta["sent_at"]
    assert envelope.ex == meta["expires_at"]
    assert envelope.rc == meta.get("reply_channel")
    assert envelope.re == meta.get("reply_to")
    assert envelope.tc == meta.get("trace")
    assert envelope.h == meta.get("headers")
    assert envelope.er == meta.get("error")
    assert envelope.b == body


def test_unknown_keys_are_ignored_for_forward_compatibility():
    raw = vector("message").replace(b'"v":1,', b'"v":1,"zz":{"future":true},')
    envelope = envelope_type(VChatPosted).model_validate_json(raw)
    assert envelope.b.text == "hi"


def test_bytes_fields_travel_as_base64():
    class Blob(Contract):
        data: bytes

    assert body_json(Blob(data=b"\x00\xff")) == b'{"data":"AP8="}'
    assert Blob.model_validate_json(b'{"data":"AP8="}').data == b"\x00\xff"
