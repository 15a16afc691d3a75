"""HTTP through the edge: a route's requests go out with ``bus.request``, replies come back.

Status codes the edge itself produces: 404 no route, 405 wrong method, 413
body too large, 422 body does not fit the channel's contract (pydantic's
errors in the response), 401 authentication refused, 503 channel full, bus
unreachable or too many connections, 504 no reply in time, 500 the consumer
failed.

Every response, the consumers' and static files' included, carries
:data:`SECURITY_HEADERS`; HTML also gets a ``Content-Security-Policy`` that
forbids framing by other sites.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError
from pydantic_core import from_json, to_json

from ..contract import Contract
from ..envelope import body_json
from ..errors import (
    ChannelFull,
    LayerError,
    MessageInvalid,
    MessageTooLarge,
    RemoteError,
    RequestTimeout,
    SvcbusError,
)
from ..local import LocalReply
from .contracts import HttpRequest, HttpResponse, Identity, PathParams, owned_identity
from .routing import HttpRoute
from .security import AuthenticationFailed, Limits

if TYPE_CHECKING:
    from .app import EdgeApp
    from .request import Request

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

_JSON = [(b"content-type", b"application/json")]

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
"""Added to every edge response that does not set them itself."""

HTML_POLICY = b"frame-ancestors 'self'"
"""The Content-Security-Policy of HTML without one: no framing by other sites (clickjacking)."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Requests the edge may send again after a bus error without risking a second effect."""


def with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` plus the security headers it lacks (a CSP for HTML)."""
    present = {name.lower() for name, _ in headers}
    added = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
    if b"content-security-policy" not in present:
        for name, value in headers:
            if name.lower() == b"content-type" and value.lower().startswith(b"text/html"):
                added.append((b"content-security-policy", HTML_POLICY))
                break
    return [*headers, *added] if added else headers


def secure_headers(send: Send) -> Send:
    """Wrap an ASGI ``send`` so that every response start carries the security headers."""

    async def secured(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            event = {**event, "headers": with_security_headers(list(event.get("headers", ())))}
        await send(event)

    return secured


_BODILESS_WITHOUT_FRAMING = frozenset({"1.0", "1.1"})
"""HTTP versions whose requests have no body unless Content-Length or Transfer-Encoding says so."""


class BodyTooLarge(Exception):
    """The request body exceeds ``Limits.max_body_size``."""


_JSON_SECURED = with_security_headers(list(_JSON))
"""The headers of a JSON response, security headers included, worked out once."""

RENDERED_HEAD = "svcbus.rendered_head"
"""A key of the edge's ``http.response.start`` events: ``(bytes, length, headers)``, the
headers rendered as HTTP/1.1 lines, the body's length, and the headers rendered (a
list of its own). The edge's httptools protocol writes the bytes as they are while
the event's ``headers`` are still those (:class:`.httptools_protocol.EdgeCycle`: an
ASGI middleware may have changed them); any other server ignores the key."""

_JSON_RENDERED = b"".join(name + b": " + value + b"\r\n" for name, value in _JSON_SECURED)


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> None:
    """Send a complete response with the security headers (``head`` omits the body).

    The edge's own responses and consumers' replies come through here, so the
    security headers are added here, once, rather than by wrapping every
    request's ``send``; only static files (:mod:`.static`) need the wrapper.
    """
    if headers is _JSON:
        await _send_json(send, status, body, head)
        return
    headers = with_security_headers(
        list(headers) if headers else [(b"content-type", b"text/plain; charset=utf-8")]
    )
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _send_json(send: Send, status: int, body: bytes, head: bool) -> None:
    """:func:`send_response` of a JSON body: its headers also rendered (:data:`RENDERED_HEAD`)."""
    length = len(body)
    text = b"%d" % length
    headers = [*_JSON_SECURED, (b"content-length", text)]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers.copy(),
            RENDERED_HEAD: (_JSON_RENDERED + b"content-length: " + text + b"\r\n", length, headers),
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_error(send: Send, status: int, message: str, **detail: Any) -> None:
    """A JSON error response: ``{"error": message, ...detail}``."""
    body = to_json({"error": message, **detail}, fallback=str)
    await send_response(send, status, body, _JSON)


def has_body(scope: dict[str, Any], limit: int) -> bool:
    """Whether the request may have a body to read; raises :class:`BodyTooLarge` early.

    A ``Content-Length`` over ``limit`` is refused before anything is read.
    """
    has_body = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                has_body = True  # the server rejects malformed lengths; count the bytes instead
                continue
            if length > limit:
                raise BodyTooLarge
            has_body = has_body or length > 0
        elif name == b"transfer-encoding":
            has_body = True
    # HTTP/1.x: a request with neither header has no body (RFC 9112, 6.3), so
    # there is nothing to wait for (HTTP/2 may send a body without either).
    return has_body or scope.get("http_version") not in _BODILESS_WITHOUT_FRAMING


async def read_chunks(receive: Receive, limit: int) -> bytes:
    """The body's chunks from ``receive``, joined; :class:`BodyTooLarge` past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def handle_request(
    edge: EdgeApp, route: HttpRoute, request: Request, receive: Receive, send: Send
) -> None:
    """Turn one HTTP request into a bus request and its reply into the response."""
    scope = request.scope
    limit = edge.limits.max_body_size
    try:
        # Calls made only when there is something to do: a coroutine each costs.
        body = await read_chunks(receive, limit) if has_body(scope, limit) else b""
    except BodyTooLarge:
        await send_error(send, 413, f"request body is larger than {limit} bytes")
        return
    identity = None
    if edge.authenticate is not None or edge.require_identity:
        try:
            identity = await edge.identify(request)
        except AuthenticationFailed as exc:
            await send_error(send, 401, str(exc) or "authentication failed")
            return
    contract = edge.bus.contracts.get(route.channel)
    try:
        message = build_message(contract, request, body, identity)
    except InvalidInput as exc:
        await send_error(send, 422, "request does not fit the contract", detail=exc.errors)
        return
    try:
        reply = await _request(edge, route, request, message)
    except Unavailable:
        edge.stats.refused_bus += 1
        await send_error(send, 503, "the service is unavailable; retry later")
        return
    except RequestTimeout:
        await send_error(send, 504, f"no reply from {route.channel!r} in time")
        return
    except ChannelFull:
        await send_error(send, 503, f"{route.channel!r} is busy; retry later")
        return
    except MessageTooLarge:
        await send_error(send, 413, "request too large for the bus")
        return
    except MessageInvalid as exc:
        await send_error(send, 422, "request does not fit the contract", detail=exc.errors)
        return
    except RemoteError as exc:
        await send_error(send, 500, "the service failed", type=exc.error_type)
        return
    except SvcbusError as exc:
        # The detail (hosts, ports) is for the operator's log, not for the client.
        edge.quiet.warning("http-bus-error", "request to %s failed: %s", route.channel, exc)
        await send_error(send, 502, "bus error")
        return
    await send_reply(send, reply, head=scope["method"] == "HEAD")


class Unavailable(Exception):
    """The bus would not take the request within the patience."""


def _request(
    edge: EdgeApp, route: HttpRoute, request: Request, message: Contract
) -> Awaitable[Any]:
    """The reply to ``message``: a consumer in this process's future, else the bus's request.

    Not a coroutine: the request awaits the in-process consumer's future
    itself, without a frame between (:func:`_request_with_retries` otherwise).
    """
    try:
        reply = _hand_over(edge, route.channel, request, message)
    except ChannelFull:
        reply = None  # waited for and retried there
    return _request_with_retries(edge, route, request, message) if reply is None else reply


async def _request_with_retries(
    edge: EdgeApp, route: HttpRoute, request: Request, message: Contract
) -> Any:
    """``bus.request`` (or the hand-over), retried while the bus cannot take the request.

    A full channel means the request was not queued, so any request may be
    sent again; a broken connection may have carried it, so only safe methods
    are. A send's error is about that send only (layers report earlier losses
    from ``flush``).
    """
    limits = edge.limits
    deadline = 0.0  # set on the first pass through the layer
    delay = 0.002
    while True:
        try:
            reply = _hand_over(edge, route.channel, request, message)
            if reply is not None:
                # Fails with RequestTimeout past the request timeout, as bus.request.
                return await reply
            deadline = deadline or _accept_deadline(limits)
            # bus.request bounds the wait for the reply, not the send, which can hang on
            # an unreachable bus (NATS opens a channel's stream on first use). The
            # patience is watched by the edge's shared deadline timer, not by a cancel
            # scope per request, which costs ~40k instructions (see svcbus.deadlines).
            patience = max(deadline - time.monotonic(), 0.0) + limits.request_timeout
            watch = edge.deadlines.watch(patience)
            try:
                return await edge.bus.request(
                    route.channel, message, timeout=limits.request_timeout, reply_type=Any
                )
            except asyncio.CancelledError:
                if watch.expired():
                    raise Unavailable from None  # the send outlived the patience
                raise
            finally:
                edge.deadlines.release(watch)
        except RequestTimeout:
            raise
        except TimeoutError:  # a layer's own timeout, as for an unreachable bus
            raise Unavailable from None
        except (ChannelFull, LayerError) as exc:
            # About this request only: layers report earlier losses from flush().
            retry = isinstance(exc, ChannelFull) or request.scope["method"] in SAFE_METHODS
            if isinstance(exc, LayerError):
                edge.quiet.warning("http-bus", "request to %s failed: %s", route.channel, exc)
            deadline = deadline or _accept_deadline(limits)
            left = deadline - time.monotonic()
            if not retry or left <= 0:
                raise Unavailable from None
            edge.stats.retried += 1
            await anyio.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)


def _hand_over(
    edge: EdgeApp, channel: str, request: Request, message: Contract
) -> asyncio.Future[LocalReply] | None:
    """Hand ``message`` to a consumer in this process; its reply's future, or None.

    None when no consumer of ``channel`` runs here (or it takes another type):
    then the request goes through the layer. The message was built by the edge
    for this request alone (see svcbus.local); an identity dict the auth hook
    may share between requests is copied first. Its size is checked without
    encoding it where :func:`json_size_bound` can tell.
    """
    local = edge.bus.layer.local_consumer(channel)
    if local is None:
        return None
    identity = getattr(message, "identity", None)
    if isinstance(identity, dict):
        _set(message, "identity", owned_identity(identity))
    limits = edge.limits
    bound = json_size_bound(message, request, limits.max_header_length)
    return local.call(message, limits.request_timeout, bound)


_HTTP_REQUEST_SKELETON = len(body_json(HttpRequest(method="", path="")))
"""The JSON size of an HttpRequest with empty strings, mappings and body, and client and
identity null (4 bytes each, where a string takes 2 and more)."""


def json_size_bound(message: Contract, request: Request, cap: int) -> int | None:
    """An upper bound of ``message``'s JSON size: an HttpRequest the edge built for ``request``.

    Worked out from lengths the edge has at hand, in a few operations (summing
    the message's own strings cost more than the encoding it spares): a
    character takes at most 6 bytes in JSON (an escape such as ``\\u001f``),
    a mapping entry 6 more (quotes, colon, comma). A header's name and value
    are each at most ``cap`` characters (:func:`.security.sanitise_headers`
    cuts them); the query's names and values, decoded, are no longer than the
    query string, which has a character per entry at least; path parameters'
    values are cut from the path. Those strings are decoded by the server
    (UTF-8 with replacement, latin-1), so they always encode; an identity
    comes from the authentication hook, so only an ASCII string counts (a
    lone surrogate would not encode). None for other messages and any other
    identity (the hook's dict, say): their size and JSON-ability need the
    encoding.
    """
    if type(message) is not HttpRequest:
        return None
    identity = message.identity
    if identity is None:
        chars = 0
    elif type(identity) is str and identity.isascii():
        chars = len(identity)
    else:
        return None
    scope = request.scope
    chars += (
        len(scope["method"])
        + 2 * (len(scope["path"]) + len(scope.get("query_string") or b""))
        + len(request.headers) * (2 * cap + 1)
        + len(request.client or "")
    )
    params = request.params
    if params:
        chars += sum(map(len, params)) + len(params)  # the route's names (values: the path)
    return _HTTP_REQUEST_SKELETON + 6 * chars + 4 * ((len(message.body) + 2) // 3)


def _accept_deadline(limits: Limits) -> float:
    """When the bus must have taken a request (``accept_timeout``, within the request's)."""
    return time.monotonic() + min(limits.accept_timeout, limits.request_timeout)


class InvalidInput(Exception):
    """The request's input does not fit the channel's contract."""

    def __init__(self, errors: list[Any]) -> None:
        super().__init__("invalid input")
        self.errors = errors


def build_message(
    contract: type[Contract] | None, request: Request, body: bytes, identity: Identity
) -> Contract:
    """The message for the route's channel: the channel's contract, else an HttpRequest."""
    scope = request.scope
    if contract is None or contract is HttpRequest:
        return _http_request(
            scope["method"],
            scope["path"],
            request.params,
            request.query,
            request.headers,
            body,
            request.client,
            identity,
        )
    if issubclass(contract, HttpRequest):
        return contract.model_construct(
            method=scope["method"],
            path=scope["path"],
            params=request.params,
            query=request.query,
            headers=request.headers,
            body=body,
            client=request.client,
            identity=identity,
        )
    data: dict[str, Any] = dict(request.query)
    if body.strip():
        try:
            parsed = from_json(body)
        except ValueError as exc:
            raise InvalidInput(
                [{"type": "json_invalid", "loc": ["body"], "msg": f"body is not JSON: {exc}"}]
            ) from None
        if not isinstance(parsed, dict):
            raise InvalidInput(
                [{"type": "dict_type", "loc": ["body"], "msg": "body must be a JSON object"}]
            )
        data.update(parsed)
    data.update(request.params)
    # A client must never choose its identity: the edge's verdict replaces any it sent.
    data.pop("identity", None)
    if "identity" in contract.model_fields:
        data["identity"] = identity
    try:
        return contract.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(exc.errors(include_url=False, include_context=False)) from None


_set = object.__setattr__
_HTTP_REQUEST_SET = frozenset(HttpRequest.model_fields) - {"type"}
"""The fields model_construct marks as set when all but ``type`` (a default) are given."""


def _http_request(
    method: str,
    path: str,
    params: PathParams,
    query: dict[str, str],
    headers: dict[str, str],
    body: bytes,
    client: str | None,
    identity: Identity,
) -> HttpRequest:
    """``HttpRequest.model_construct(...)`` with every field but ``type`` given.

    What model_construct does for a model without extras, private attributes or
    a post-init (the same ``__dict__`` and fields set), without its loop over
    the fields and their aliases: about 3 µs, a twentieth of a request through
    the edge. ``tests/edge/test_edge_http.py`` checks that both build the same.
    """
    message = HttpRequest.__new__(HttpRequest)
    _set(
        message,
        "__dict__",
        {
            "type": "http.request",
            "method": method,
            "path": path,
            "params": params,
            "query": query,
            "headers": headers,
            "body": body,
            "client": client,
            "identity": identity,
        },
    )
    _set(message, "__pydantic_fields_set__", set(_HTTP_REQUEST_SET))
    _set(message, "__pydantic_extra__", None)
    _set(message, "__pydantic_private__", None)
    return message


def send_reply(send: Send, reply: Any, *, head: bool = False) -> Awaitable[None]:
    """Send a consumer's reply: an HttpResponse as is, anything else as 200 JSON.

    ``reply`` is the decoded body of a reply envelope, or an in-process
    consumer's :class:`~svcbus.local.LocalReply` (its value, already encoded).
    Not a coroutine itself: a JSON reply is :func:`_send_json`'s, without a
    frame around it.
    """
    body = None
    if type(reply) is LocalReply:
        reply, body = reply.value, reply.body
    if isinstance(reply, HttpResponse) or (
        isinstance(reply, dict) and reply.get("type") == "http.response"
    ):
        return _send_http_response(send, reply, head)
    return _send_json(send, 200, to_json(reply) if body is None else body, head)


async def _send_http_response(send: Send, reply: HttpResponse | dict[str, Any], head: bool) -> None:
    """:func:`send_reply` of an HttpResponse, or of a dict that says it is one."""
    if isinstance(reply, HttpResponse):
        response = reply
    else:
        try:
            response = HttpResponse.model_validate(reply)
        except ValidationError as exc:
            await send_error(
                send, 502, "the service sent a malformed HttpResponse", detail=str(exc)
            )
            return
    headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
    ]
    if not any(k == b"content-type" for k, _ in headers):
        headers.append((b"content-type", b"application/octet-stream"))
    headers = [(k, v) for k, v in headers if k != b"content-length"]
    await send_response(send, response.status, response.payload(), headers, head=head)
