"""What ``Bus.send`` keeps about a named channel after its first send.

The first send on a channel validates its name, looks up its contract and
durability and declares it to the layer. Later sends of an instance of that
contract only format the envelope: the id, the clock, the body's JSON and the
bytes in between, which stay the same, in one step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .contract import Contract
from .envelope import contract_part, encode_reply, encode_request, envelope_head, now_ms

MAX_ROUTES = 4096
"""Named channels a bus keeps routes for; more are sent the long way (names are unbounded)."""


class Route:
    """One named channel as a target of ``Bus.send``: its contract and fixed envelope bytes."""

    __slots__ = ("contract", "expiry_ms", "head", "part", "serialize")

    def __init__(self, contract: type[Contract], expiry_ms: int) -> None:
        self.contract = contract
        """Instances of exactly this class take the fast path (they were validated when built)."""
        self.head = envelope_head(contract.__contract_name__, contract.__version__)
        self.part = contract_part(contract.__contract_name__, contract.__version__)
        self.expiry_ms = expiry_ms
        self.serialize: Callable[[Any], bytes] = contract.__pydantic_serializer__.to_json

    def envelope(self, message_id: str, body: Contract) -> bytes:
        """The envelope of ``body``: byte-identical to :func:`~svcbus.envelope.encode_plain`."""
        sent_at = now_ms()
        return b'{"v":1,"id":"%s%s%d,"ex":%d,"b":%s}' % (
            message_id.encode(),
            self.head,
            sent_at,
            sent_at + self.expiry_ms,
            self.serialize(body),
        )

    def request_envelope(self, message_id: str, reply_channel: str, body: Contract) -> bytes:
        """The envelope of a request: :func:`~svcbus.envelope.encode`'s, in one step."""
        sent_at = now_ms()
        return encode_request(
            self.serialize(body),
            message_id,
            self.part,
            reply_channel,
            sent_at,
            sent_at + self.expiry_ms,
        )

    def reply_envelope(self, message_id: str, request_id: str, body: Contract) -> bytes:
        """The envelope of a reply: :func:`~svcbus.envelope.encode`'s, in one step."""
        sent_at = now_ms()
        return encode_reply(
            self.serialize(body),
            message_id,
            self.part,
            request_id,
            sent_at,
            sent_at + self.expiry_ms,
        )
