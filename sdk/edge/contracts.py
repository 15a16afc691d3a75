"""The standard edge contracts: what the edge sends to consumers and what they answer.

The edge turns WebSocket and HTTP traffic into these messages. They are
contracts without a fixed channel, so any route's channels can carry them and
consumers annotate their parameter with them::

    @consumes("chat.connect")
    async def connect(msg: WebSocketConnect, ctx: Context) -> None:
        await ctx.send(msg.reply_channel, Accept(groups=["room." + msg.params["room"]]))

Replies to a connection travel on its ``reply_channel`` (directly or through a
group) as one of :data:`EdgeReply`: a union discriminated on ``type``, so the
edge decodes each message with one pydantic pass.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from pydantic_core import from_json, to_json

from ..contract import Contract

Identity = str | dict[str, Any] | None
"""What an authentication hook returns: a user id, a dict of claims, or None (anonymous)."""

PathParams = dict[str, int | str]


# -- edge -> consumers: WebSocket ---------------------------------------------------


class WebSocketConnect(Contract):
    """A browser (or any client) opened a WebSocket on a route; answer with Accept or Close.

    Headers travel only here, once per connection, already sanitised (no
    cookies or credentials). ``identity`` is what the edge's authentication
    hook returned; consumers never see the raw credentials.
    """

    type: Literal["websocket.connect"] = "websocket.connect"
    reply_channel: str
    """Where answers to this connection go: Accept, Send, Close, Join, Leave."""
    path: str
    params: PathParams = Field(default_factory=dict)
    """Typed path parameters of the route (``/chat/{room}`` -> ``{"room": "lobby"}``)."""
    query: dict[str, str] = Field(default_factory=dict)
    """Query parameters; for a repeated key the last value wins."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Selected request headers, lower-case names, credentials removed."""
    subprotocols: list[str] = Field(default_factory=list)
    """Subprotocols the client offers; Accept may pick one."""
    client: str | None = None
    """``host:port`` of the peer as the server saw it."""
    identity: Identity = None
    order: int = 0
    """Position of this message in the connection's stream (connect is 0)."""


class WebSocketReceive(Contract):
    """A frame from the client: ``text`` for text frames, ``binary`` for binary ones."""

    type: Literal["websocket.receive"] = "websocket.receive"
    reply_channel: str
    path: str
    params: PathParams = Field(default_factory=dict)
    identity: Identity = None
    order: int
    """1, 2, 3... per connection, so consumers on several workers can restore order."""
    text: str | None = None
    binary: bytes | None = None


class WebSocketDisconnect(Contract):
    """The connection ended (client went away, was closed, or broke a limit)."""

    type: Literal["websocket.disconnect"] = "websocket.disconnect"
    reply_channel: str
    path: str
    params: PathParams = Field(default_factory=dict)
    identity: Identity = None
    order: int
    code: int = 1000
    """The WebSocket close code (1000 normal, 1001 going away, 1006 abnormal...)."""


# -- consumers -> edge: replies on a connection's reply channel ---------------------


class Accept(Contract):
    """Accept the connection; optionally pick a subprotocol and join groups.

    Groups listed here are joined by the edge before the handshake completes,
    and the edge leaves them when the connection ends: prefer this (or
    :class:`Join`) to calling ``group_add`` yourself, so no member outlives its
    socket.
    """

    type: Literal["websocket.accept"] = "websocket.accept"
    subprotocol: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra response headers for the handshake."""
    groups: list[str] = Field(default_factory=list)


class Send(Contract):
    """Send one frame to the client: ``Send(text="hi")`` or ``Send(binary=b"...")``.

    ``group_send`` a Send to reach every socket in a group, on every edge.
    """

    type: Literal["websocket.send"] = "websocket.send"
    text: str | None = None
    binary: bytes | None = None

    @model_validator(mode="after")
    def _one_payload(self) -> Send:
        if (self.text is None) == (self.binary is None):
            raise ValueError("give exactly one of text= or binary=")
        return self


class Close(Contract):
    """Close the connection with ``code`` (before Accept: reject it with HTTP 403)."""

    type: Literal["websocket.close"] = "websocket.close"
    code: int = Field(1000, ge=1000, le=4999)
    reason: str = Field("", max_length=120)


class Join(Contract):
    """Make the edge add this connection to ``groups`` (and leave them on disconnect)."""

    type: Literal["websocket.join"] = "websocket.join"
    groups: list[str]


class Leave(Contract):
    """Make the edge remove this connection from ``groups``."""

    type: Literal["websocket.leave"] = "websocket.leave"
    groups: list[str]


EdgeReply = Annotated[
    Accept | Send | Close | Join | Leave,
    Field(discriminator="type"),
]
"""Everything a consumer may send to a connection's reply channel."""


# -- HTTP --------------------------------------------------------------------------


class HttpRequest(Contract):
    """An HTTP request routed to a request/reply channel without a contract of its own.

    Reply with :class:`HttpResponse` for full control, or with any contract or
    JSON value for a ``200`` JSON response.
    """

    type: Literal["http.request"] = "http.request"
    method: str
    path: str
    params: PathParams = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    body: bytes = b""
    client: str | None = None
    identity: Identity = None

    def json_body(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` if it is not JSON)."""
        return from_json(self.body)


class HttpResponse(Contract):
    """The response the edge sends back. ``text`` (UTF-8), if set, replaces ``body``."""

    type: Literal["http.response"] = "http.response"
    status: int = Field(200, ge=100, le=599)
    headers: dict[str, str] = Field(default_factory=dict)
    body: bytes = b""
    text: str | None = None

    @classmethod
    def from_json(cls, value: Any, *, status: int = 200, **headers: str) -> HttpResponse:
        """A JSON response."""
        return cls(
            status=status,
            headers={"content-type": "application/json", **headers},
            text=to_json(value).decode(),
        )

    @classmethod
    def from_text(
        cls, text: str, *, status: int = 200, content_type: str = "text/plain; charset=utf-8"
    ) -> HttpResponse:
        """A text response."""
        return cls(status=status, headers={"content-type": content_type}, text=text)

    def payload(self) -> bytes:
        """The bytes to send as the body."""
        return self.text.encode() if self.text is not None else self.body


def owned_identity(identity: Identity) -> Identity:
    """A copy of a dict ``identity`` made for one message, as decoding would make it.

    An authentication hook may return the same dict for many requests (a
    cache): a consumer handed a request in process (svcbus.local) must not
    share it, nor see values JSON would not carry.
    """
    return from_json(to_json(identity)) if isinstance(identity, dict) else identity
