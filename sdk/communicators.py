"""Drive an edge and its consumers in process: no server, no sockets, no browser.

::

    from svcbus.testing import EdgeClient

    async with EdgeClient(routes, services=[chat_service]) as edge:
        ws = edge.websocket("/chat/lobby?nick=ada")
        assert (await ws.connect()).accepted
        await ws.send_json({"text": "hi"})
        assert (await ws.receive_json())["text"] == "hi"
        await ws.disconnect()

        response = await edge.http("GET", "/api/stats/lobby")
        assert response.status == 200 and response.json()["messages"] == 1

The client calls the edge's ASGI app directly, as a server would: it runs the
app's lifespan (which opens the bus and starts ``services``) on a private
``memory://`` hub, and feeds each connection the ASGI events a browser's
frames would make. Everything between the edge and the consumers is real.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .errors import ConfigurationError
from .service import Service

HOST = "testserver"
DEFAULT_TIMEOUT = 2.0

Event = dict[str, Any]


class EdgeClient:
    """Runs an edge (a ``Routes`` table or an ``EdgeApp``) in process for a test."""

    def __init__(
        self,
        app: Any,
        *,
        services: Iterable[Service] = (),
        layer: Any = None,
    ) -> None:
        from svcbus.edge import EdgeApp, Routes

        if isinstance(app, Routes):
            app = EdgeApp(app)
        if not isinstance(app, EdgeApp):
            raise ConfigurationError(
                f"EdgeClient takes a svcbus.edge Routes table or EdgeApp, not {type(app).__name__}"
            )
        app.services.extend(services)
        if layer is not None:
            app.layer = layer
        elif isinstance(app.layer, str) and app.layer.startswith("memory:"):
            # A hub of its own: tests running one after another never share messages.
            app.layer = f"memory://edge-client-{uuid.uuid4().hex[:12]}"
        self.app = app
        self._tasks: TaskGroup | None = None
        self._lifespan_in: MemoryObjectSendStream[Event] | None = None
        self._lifespan_out: MemoryObjectReceiveStream[Event] | None = None

    async def __aenter__(self) -> EdgeClient:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        to_app, app_in = anyio.create_memory_object_stream[Event](math.inf)
        app_out, from_app = anyio.create_memory_object_stream[Event](math.inf)
        self._lifespan_in, self._lifespan_out = to_app, from_app
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._tasks.start_soon(self.app, scope, app_in.receive, app_out.send)
        await to_app.send({"type": "lifespan.startup"})
        with anyio.fail_after(10):
            event = await from_app.receive()
        if event["type"] != "lifespan.startup.complete":
            await self._tasks.__aexit__(None, None, None)
            raise ConfigurationError(f"the edge did not start: {event.get('message', event)}")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._tasks is not None and self._lifespan_in is not None
        assert self._lifespan_out is not None
        await self._lifespan_in.send({"type": "lifespan.shutdown"})
        with anyio.move_on_after(10):
            await self._lifespan_out.receive()  # lifespan.shutdown.complete (or failed)
        self._tasks.cancel_scope.cancel()
        # The test's own exception (an assert) propagates as it is, not in a group.
        await self._tasks.__aexit__(None, None, None)

    def websocket(
        self,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        subprotocols: Iterable[str] = (),
        origin: str | None = f"http://{HOST}",
    ) -> WebsocketCommunicator:
        """A WebSocket to ``path`` (with its ``?query``); call :meth:`~WebsocketCommunicator.connect`."""
        assert self._tasks is not None, "use the EdgeClient in `async with`"
        return WebsocketCommunicator(self, path, headers, subprotocols, origin)

    async def http(
        self,
        method: str,
        path: str,
        *,
        body: bytes | str | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> HttpResult:
        """Make one HTTP request to the edge and return its whole response."""
        return await HttpCommunicator(self, method, path, body, json_body, headers).get_response(
            timeout
        )


def _scope(kind: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    parts = urlsplit(path)
    return {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws" if kind == "websocket" else "http",
        "path": parts.path or "/",
        "raw_path": (parts.path or "/").encode(),
        "query_string": parts.query.encode(),
        "root_path": "",
        "headers": [(b"host", HOST.encode()), *headers],
        "client": ("127.0.0.1", 50000),
        "server": (HOST, 80),
    }


def _headers(given: Mapping[str, str] | None) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (given or {}).items()]


@dataclass
class Connected:
    """How a WebSocket handshake ended."""

    accepted: bool
    subprotocol: str | None = None
    close_code: int | None = None
    """The code the edge closed with when it did not accept (e.g. 4003, 1008)."""
    status: int | None = None
    """The HTTP status when the edge refused the handshake with a response (e.g. 403)."""

    def __bool__(self) -> bool:
        return self.accepted


class WebsocketClosed(AssertionError):
    """The edge closed the socket while the test waited for a frame."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"the edge closed the WebSocket with code {code} {reason}".strip())
        self.code = code
        self.reason = reason


class WebsocketCommunicator:
    """One WebSocket connection to the edge, as a browser would make it."""

    def __init__(
        self,
        client: EdgeClient,
        path: str,
        headers: Mapping[str, str] | None,
        subprotocols: Iterable[str],
        origin: str | None,
    ) -> None:
        raw = _headers(headers)
        if origin is not None:
            raw.append((b"origin", origin.encode()))
        self.scope = _scope("websocket", path, raw)
        self.scope["subprotocols"] = list(subprotocols)
        self._client = client
        self._to_app, self._app_in = anyio.create_memory_object_stream[Event](math.inf)
        self._app_out, self._from_app = anyio.create_memory_object_stream[Event](math.inf)
        self._done = anyio.Event()
        self.close_code: int | None = None

    async def _run(self) -> None:
        try:
            await self._client.app(self.scope, self._app_in.receive, self._app_out.send)
        finally:
            self._done.set()

    async def connect(self, timeout: float = DEFAULT_TIMEOUT) -> Connected:
        """Open the socket; the result says whether a consumer accepted it."""
        assert self._client._tasks is not None
        self._client._tasks.start_soon(self._run)
        await self._to_app.send({"type": "websocket.connect"})
        event = await self._next(timeout)
        kind = event["type"]
        if kind == "websocket.accept":
            return Connected(True, subprotocol=event.get("subprotocol"))
        if kind == "websocket.close":
            self.close_code = event.get("code", 1000)
            return Connected(False, close_code=self.close_code)
        if kind == "websocket.http.response.start":
            return Connected(False, status=event["status"])
        raise AssertionError(f"unexpected answer to a WebSocket handshake: {event}")

    async def send_text(self, text: str) -> None:
        """Send a text frame."""
        await self._to_app.send({"type": "websocket.receive", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        """Send a binary frame."""
        await self._to_app.send({"type": "websocket.receive", "bytes": data})

    async def send_json(self, value: Any) -> None:
        """Send ``value`` as a JSON text frame."""
        await self.send_text(json.dumps(value))

    async def receive(self, timeout: float = DEFAULT_TIMEOUT) -> str | bytes:
        """The next frame (text or bytes); raises :class:`WebsocketClosed` if the edge closed."""
        event = await self._next(timeout)
        if event["type"] == "websocket.send":
            text = event.get("text")
            frame: str | bytes = text if text is not None else event["bytes"]
            return frame
        if event["type"] == "websocket.close":
            self.close_code = event.get("code", 1000)
            raise WebsocketClosed(self.close_code, event.get("reason") or "")
        raise AssertionError(f"expected a frame, got {event}")

    async def receive_text(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """The next frame, which must be text."""
        frame = await self.receive(timeout)
        assert isinstance(frame, str), f"expected a text frame, got bytes {frame!r}"
        return frame

    async def receive_json(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The next text frame, parsed as JSON."""
        return json.loads(await self.receive_text(timeout))

    async def receive_nothing(self, timeout: float = 0.1) -> bool:
        """True if no frame arrives within ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            event = await self._from_app.receive()
            raise AssertionError(f"expected nothing, got {event}")
        return True

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait until the edge closes the socket (skipping frames); returns the close code."""
        with anyio.fail_after(timeout):
            while True:
                event = await self._from_app.receive()
                if event["type"] == "websocket.close":
                    self.close_code = event.get("code", 1000)
                    return self.close_code

    async def disconnect(self, code: int = 1000, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Close from the browser's side and wait until the edge has finished with the socket."""
        await self._to_app.send({"type": "websocket.disconnect", "code": code})
        with anyio.fail_after(timeout):
            await self._done.wait()

    async def _next(self, timeout: float) -> Event:
        try:
            with anyio.fail_after(timeout):
                return await self._from_app.receive()
        except TimeoutError:
            raise AssertionError(f"the edge sent nothing within {timeout}s") from None


@dataclass
class HttpResult:
    """A complete HTTP response from the edge."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


class HttpCommunicator:
    """One HTTP request to the edge (``EdgeClient.http`` makes and runs one)."""

    def __init__(
        self,
        client: EdgeClient,
        method: str,
        path: str,
        body: bytes | str | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        raw = _headers(headers)
        if json_body is not None:
            body = json.dumps(json_body)
            raw.append((b"content-type", b"application/json"))
        self.body = body.encode() if isinstance(body, str) else (body or b"")
        if self.body:
            raw.append((b"content-length", str(len(self.body)).encode()))
        self.scope = _scope("http", path, raw)
        self.scope["method"] = method.upper()
        self._client = client

    async def get_response(self, timeout: float = 10.0) -> HttpResult:
        """Send the request and wait for the whole response."""
        sent = False
        disconnected = anyio.Event()

        async def receive() -> Event:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        result = HttpResult(status=0)
        chunks: list[bytes] = []
        finished = anyio.Event()

        async def send(event: Event) -> None:
            if event["type"] == "http.response.start":
                result.status = event["status"]
                result.headers = {
                    k.decode("latin-1"): v.decode("latin-1") for k, v in event.get("headers", [])
                }
            elif event["type"] == "http.response.body":
                chunks.append(event.get("body", b""))
                if not event.get("more_body", False):
                    finished.set()

        try:
            with anyio.fail_after(timeout):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._client.app, self.scope, receive, send)
                    await finished.wait()
                    disconnected.set()
        except TimeoutError:
            raise AssertionError(f"the edge did not answer within {timeout}s") from None
        result.body = b"".join(chunks)
        return result
