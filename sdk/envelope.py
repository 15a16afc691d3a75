"""The envelope: svcbus's wire format, written out in ``docs/protocol.md``.

One message is one JSON object, metadata first and the body last::

    {"v":1,"id":"…","ct":"ChatPosted","cv":1,"rc":"…","re":"…","at":…,"ex":…,
     "tc":{…},"h":{…},"er":{…},"b":{…}}

Keeping the metadata in the payload (not in transport headers) keeps NATS and
Redis on their fast paths, and lets one pydantic model validate metadata and
body in a single pass over the raw bytes.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic_core import to_json

PROTOCOL_VERSION = 1

B = TypeVar("B")


class ErrorInfo(BaseModel):
    """A failure carried back to a requester instead of a reply body."""

    type: str
    message: str

    @classmethod
    def of(cls, error: BaseException) -> ErrorInfo:
        """What travels back about ``error``: its class name and (the start of) its message."""
        return cls(type=type(error).__name__, message=str(error)[:1000])


class Envelope(BaseModel, Generic[B]):
    """A decoded message: metadata plus a body of type ``B``.

    ``Envelope[ChatPosted].model_validate_json(raw)`` decodes and validates the
    whole message in one pass.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1]
    id: str
    ct: str | None = None
    cv: int = 1
    rc: str | None = None
    re: str | None = None
    at: int
    ex: int | None = None
    tc: dict[str, str] | None = None
    h: dict[str, str] | None = None
    er: ErrorInfo | None = None
    b: B

    @property
    def message_id(self) -> str:
        """The unique id of this message."""
        return self.id

    @property
    def reply_channel(self) -> str | None:
        """Where a reply to this message goes, if anywhere."""
        return self.rc

    @property
    def body(self) -> B:
        """The validated body."""
        return self.b


_envelope_types: dict[Any, type[Envelope[Any]]] = {}


def envelope_type(body: Any) -> type[Envelope[Any]]:
    """The (cached) envelope model whose body is validated as ``body``."""
    cls = _envelope_types.get(body)
    if cls is None:
        cls = _envelope_types[body] = Envelope[body]
    return cls


Decoder = Callable[[bytes], Envelope[Any]]
"""Raw bytes -> a validated envelope, in one pass (raises pydantic's ValidationError)."""

_decoders: dict[Any, Decoder] = {}


def envelope_decoder(body: Any) -> Decoder:
    """The (cached) one-pass decoder of envelopes whose body is validated as ``body``.

    It is the model's validator itself: ``model_validate_json`` adds a Python
    call per message, which a receive loop pays on every message.
    """
    decode = _decoders.get(body)
    if decode is None:
        decode = _decoders[body] = envelope_type(body).__pydantic_validator__.validate_json
    return decode


_HEAD = b'{"v":1,"id":"'
_CONTRACT_AFTER_ID = b',"ct":"'
_VERSION_AFTER_CONTRACT = b',"cv":'


def peek_contract(data: bytes) -> tuple[str, int] | None:
    """The contract name and version an envelope names, read without decoding it.

    Reads only the fixed head svcbus writes (``{"v":1,"id":"…","ct":"…","cv":N``);
    anything else (no contract, escapes in the id, another field order) gives
    None, and the caller decodes the body as any JSON value. Lets a receiver of a
    process channel validate the body as its contract in the one decoding pass.
    """
    if not data.startswith(_HEAD):
        return None
    id_end = data.find(b'"', len(_HEAD))
    if (
        id_end < 0
        or data[id_end - 1] == 0x5C
        or not data.startswith(_CONTRACT_AFTER_ID, id_end + 1)
    ):
        return None
    name_start = id_end + 1 + len(_CONTRACT_AFTER_ID)
    name_end = data.find(b'"', name_start)
    if name_end < 0 or not data.startswith(_VERSION_AFTER_CONTRACT, name_end + 1):
        return None
    name = data[name_start:name_end]
    if b"\\" in name:
        return None
    digits_start = name_end + 1 + len(_VERSION_AFTER_CONTRACT)
    digits_end = digits_start
    while digits_end < len(data) and 0x30 <= data[digits_end] <= 0x39:
        digits_end += 1
    if digits_end == digits_start or digits_end - digits_start > 9:
        return None
    return name.decode("ascii", "replace"), int(data[digits_start:digits_end])


class _Ids:
    """Message ids: a random per-process prefix plus a counter (unique, cheap)."""

    def __init__(self) -> None:
        self.reset()
        if hasattr(os, "register_at_fork"):
            # A forked child must not repeat its parent's ids.
            os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(6).hex()
        self.counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):x}"


_ids = _Ids()
new_message_id = _ids.next


def now_ms() -> int:
    """Wall-clock time in integer milliseconds, the envelope's time unit."""
    return time.time_ns() // 1_000_000


def body_json(body: Any) -> bytes:
    """Serialise a contract instance or JSON-compatible value to JSON bytes."""
    if isinstance(body, BaseModel):
        return body.__pydantic_serializer__.to_json(body)
    return to_json(body, bytes_mode="base64")


_PLAIN = re.compile(r"[A-Za-z0-9_.!:-]*").fullmatch


def json_string(value: str) -> bytes:
    """``value`` as a JSON string (its quotes included)."""
    # Ids, contract names and channel names are plain ASCII: skip the JSON encoder.
    if _PLAIN(value):
        return b'"%s"' % value.encode()
    return json.dumps(value, ensure_ascii=False).encode()


_contract_parts: dict[tuple[str, int], bytes] = {}


def contract_part(contract: str, version: int) -> bytes:
    """The envelope's ``,"ct":…,"cv":N`` bytes for a contract (cached)."""
    part = _contract_parts.get((contract, version))
    if part is None:
        part = b',"ct":%s,"cv":%d' % (json_string(contract), version)
        if len(_contract_parts) < 10_000:
            _contract_parts[(contract, version)] = part
    return part


def envelope_head(contract: str | None, version: int) -> bytes:
    """The bytes between a plain envelope's id and its ``at`` value, for :func:`encode_plain`.

    A sender that sends many messages of one contract keeps it and formats each
    message in one step (``Bus.send``'s fast path); the result is byte-identical
    to :func:`encode_plain`.
    """
    part = contract_part(contract, version) if contract is not None else b""
    return b'"%s,"at":' % part


def encode_plain(
    body: bytes, id: str, contract: str | None, version: int, sent_at: int, expires_at: int | None
) -> bytes:
    """:func:`encode` for the common message: no reply channel, trace, headers or error.

    The send path calls it directly: one formatting step, no keyword handling.
    """
    part = contract_part(contract, version) if contract is not None else b""
    if expires_at is None:
        return b'{"v":1,"id":%s%s,"at":%d,"b":%s}' % (json_string(id), part, sent_at, body)
    return b'{"v":1,"id":%s%s,"at":%d,"ex":%d,"b":%s}' % (
        json_string(id),
        part,
        sent_at,
        expires_at,
        body,
    )


def encode_request(
    body: bytes, id: str, part: bytes, reply_channel: str, sent_at: int, expires_at: int
) -> bytes:
    """:func:`encode` for a request (``rc``, an expiry, nothing else optional) in one step.

    ``part`` is :func:`contract_part`'s bytes, or empty for an untyped body.
    """
    return b'{"v":1,"id":%s%s,"rc":%s,"at":%d,"ex":%d,"b":%s}' % (
        json_string(id),
        part,
        json_string(reply_channel),
        sent_at,
        expires_at,
        body,
    )


def encode_reply(
    body: bytes, id: str, part: bytes, reply_to: str, sent_at: int, expires_at: int
) -> bytes:
    """:func:`encode` for a reply (``re``, an expiry, nothing else optional) in one step."""
    return b'{"v":1,"id":%s%s,"re":%s,"at":%d,"ex":%d,"b":%s}' % (
        json_string(id),
        part,
        json_string(reply_to),
        sent_at,
        expires_at,
        body,
    )


def encode(
    body: bytes,
    *,
    id: str,
    contract: str | None,
    version: int,
    sent_at: int,
    expires_at: int | None,
    reply_channel: str | None = None,
    reply_to: str | None = None,
    trace: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    error: ErrorInfo | None = None,
) -> bytes:
    """Assemble an envelope around an already-serialised JSON ``body``.

    Field order is fixed (see docs/protocol.md) so encodings are byte-exact.
    """
    if not trace and not headers and error is None:
        if reply_channel is None and reply_to is None:
            return encode_plain(body, id, contract, version, sent_at, expires_at)
        if expires_at is not None and (reply_channel is None or reply_to is None):
            # A request (rc) or a reply (re): one formatting step, as encode_plain.
            part = contract_part(contract, version) if contract is not None else b""
            if reply_to is None:
                assert reply_channel is not None  # see above
                return encode_request(body, id, part, reply_channel, sent_at, expires_at)
            return encode_reply(body, id, part, reply_to, sent_at, expires_at)
    head = b'{"v":1,"id":' + json_string(id)
    if contract is not None:
        head += contract_part(contract, version)
    parts = [head]
    if reply_channel is not None:
        parts += [b',"rc":', json_string(reply_channel)]
    if reply_to is not None:
        parts += [b',"re":', json_string(reply_to)]
    parts += [b',"at":', str(sent_at).encode()]
    if expires_at is not None:
        parts += [b',"ex":', str(expires_at).encode()]
    if trace:
        parts += [b',"tc":', to_json(trace)]
    if headers:
        parts += [b',"h":', to_json(headers)]
    if error is not None:
        parts += [b',"er":', error.__pydantic_serializer__.to_json(error)]
    parts += [b',"b":', body, b"}"]
    return b"".join(parts)
