"""Edge benchmark: svcbus's edge vs Daphne + Channels vs a raw uvicorn app, same load.

    python bench/bench_edge.py            # full: 10,000 sockets (a few minutes)
    python bench/bench_edge.py --quick    # small counts, about a minute
    python bench/bench_edge.py --compare [--rounds 5] [--before REF]
        # echo (1,000 sockets x 20 frames), one socket, HTTP and a 1,000-socket
        # broadcast, servers interleaved round by round, medians, ratios to raw
        # uvicorn and the servers' CPU time per frame and request; --before REF
        # also serves the edge of an older commit (bench/checkout.py);
        # "layered" is the svcbus edge with its HTTP requests sent through the
        # memory layer (in_process=False): the path to consumers elsewhere;
        # --servers svcbus,raw,svcbus-uvloop,raw-uvloop adds both on uvloop
        # (needs uvloop installed), each compared with raw uvicorn on its loop;
        # a "+h11" or "+httptools" suffix (svcbus+h11,raw+h11) picks the HTTP
        # parser of that server's uvicorn protocol, compared with raw uvicorn on
        # the same parser (default: auto, httptools when installed, as uvicorn)

Each server runs in its own process on a loopback port; the load comes from
several client processes speaking WebSocket through websockets' sans-I/O
protocol on bare asyncio transports (cheap clients, so the servers are what is
measured). Measured, for each server:

* idle: connections held open by one server process, and the growth of its
  resident memory per connection;
* broadcast: one message to every socket of a group (svcbus ``group_send``,
  Channels ``group_send`` on its in-memory layer, the raw app looping over its
  sockets); latency from send to each socket's receipt, p50/p99, at 1,000 /
  5,000 / 10,000 sockets;
* echo: round trips of 1,000 concurrent clients, p50/p99 and messages/s;
* HTTP: keep-alive request/reply through the server (svcbus: edge -> the
  consumer, handed over in process, -> reply; "layered": edge -> bus request
  through the memory layer -> consumer -> reply envelope), requests/s and p50/p99.

svcbus runs with its default security and limits (origin check, rate limit,
header sanitising) except ``max_connections``, raised for 10,000 sockets; its
edge channels get a capacity of 2,000 (the layer default, 100, is sized for
service channels, not 1,000 clients' frames in flight).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import multiprocessing as mp
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svcbus import Context, Service
from svcbus.edge import (
    Accept,
    EdgeApp,
    HttpRequest,
    HttpRoute,
    Limits,
    Routes,
    Send,
    WebSocketConnect,
    WebSocketReceive,
    WebSocketRoute,
)

HOST = "127.0.0.1"
BROADCAST_ROUNDS = 3
COLLECT_TIMEOUT = 20.0
PAD = "x" * 80  # ~100-byte broadcast frames

# -- the servers under test ----------------------------------------------------------------


def svcbus_app(in_process: bool = True) -> Any:
    """The svcbus edge, with its echo/broadcast consumers in the same process (memory://).

    ``in_process=False``: HTTP requests go through the memory layer as envelopes
    (the edge's path to consumers in other processes) instead of being handed
    to the consumer directly (svcbus.local).
    """
    service = Service("bench-edge")

    @service.consumes("bench.ws.connect")
    async def connect(msg: WebSocketConnect, ctx: Context) -> None:
        await ctx.send(msg.reply_channel, Accept(groups=["bench"]))

    @service.consumes("bench.ws.receive")
    async def receive(msg: WebSocketReceive, ctx: Context) -> None:
        text = msg.text or ""
        if text.startswith("b:"):
            await ctx.group_send("bench", Send(text=text))
        else:
            await ctx.send(msg.reply_channel, Send(text=text))

    @service.consumes("bench.http")
    async def api(request: HttpRequest) -> dict:
        return {"ok": True, "path": request.path}

    routes = Routes(
        WebSocketRoute("/ws", "bench.ws", disconnect=None),
        HttpRoute("/api", "bench.http"),
    )
    return EdgeApp(
        routes,
        # Room for 1,000 clients' frames in flight: the layer's default capacity
        # (100 per channel) is meant for service channels, not a busy edge.
        layer="memory://bench?channel_capacity=bench.ws.*:2000",
        services=[service],
        limits=Limits(max_connections=20_000),
        # Named only when off: --before serves edges older than the option.
        **({} if in_process else {"in_process": False}),
    )


class RawApp:
    """The floor: a bare ASGI app that keeps its sockets in a set and loops over them."""

    def __init__(self) -> None:
        self.sockets: set[Any] = set()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http":
            body = b'{"ok":true,"path":"' + scope["path"].encode() + b'"}'
            await receive()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            self.sockets.add(send)
            try:
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        return
                    text = message.get("text") or ""
                    if text.startswith("b:"):
                        event = {"type": "websocket.send", "text": text}
                        for other in list(self.sockets):
                            with contextlib.suppress(OSError):
                                await other(event)
                    else:
                        await send({"type": "websocket.send", "text": text})
            finally:
                self.sockets.discard(send)


def channels_app() -> Any:
    """Django Channels: an AsyncWebsocketConsumer and AsyncHttpConsumer, in-memory layer."""
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
        ALLOWED_HOSTS=["*"],
    )
    django.setup()
    from channels.generic.http import AsyncHttpConsumer
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import path

    class Echo(AsyncWebsocketConsumer):
        groups = ["bench"]

        async def receive(self, text_data: str | None = None, bytes_data: Any = None) -> None:
            if text_data and text_data.startswith("b:"):
                await self.channel_layer.group_send(
                    "bench", {"type": "bench.msg", "text": text_data}
                )
            else:
                await self.send(text_data=text_data)

        async def bench_msg(self, event: dict) -> None:
            await self.send(text_data=event["text"])

    class Api(AsyncHttpConsumer):
        async def handle(self, body: bytes) -> None:
            payload = b'{"ok":true,"path":"' + self.scope["path"].encode() + b'"}'
            await self.send_response(
                200,
                payload,
                headers=[
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            )

    return ProtocolTypeRouter(
        {
            "websocket": URLRouter([path("ws", Echo.as_asgi())]),
            "http": URLRouter([path("api", Api.as_asgi())]),
        }
    )


def serve(kind: str, port: int) -> None:
    """Run one server in this process until SIGTERM."""
    raise_fd_limit()
    if kind == "daphne":
        from daphne.server import Server

        application = channels_app()
        Server(
            application=application,
            endpoints=[f"tcp:port={port}:interface={HOST}:backlog=4096"],
            verbosity=0,
        ).run()
        return
    import uvicorn

    from svcbus.edge import uvicorn_options

    # Each kind names its event loop, so that installing uvloop (which uvicorn's
    # default "auto" would take) does not change what "svcbus" and "raw" measure.
    kind, loop, parser = kind_parts(kind)
    # Named only when not auto: --before serves edges older than the option.
    http = {} if parser == "auto" else {"http": parser}
    if kind in ("svcbus", "layered"):
        import svcbus

        print(f"serving the edge of {Path(svcbus.__file__).parent}", file=sys.stderr, flush=True)
        app = svcbus_app(in_process=kind == "svcbus")
        options = uvicorn_options(app, **http)
        # As svc edge runs it: the collector set up for serving (absent before it existed).
        tune = getattr(importlib.import_module("svcbus.startup_gc"), "tune_for_serving", None)
        if tune is not None:
            tune()
    else:
        app = RawApp()
        options = uvicorn_options(**http)
        options["lifespan"] = "on"
    uvicorn.run(app, host=HOST, port=port, log_level="error", loop=loop, **options)


# -- clients --------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class WsClient(asyncio.Protocol):
    """A WebSocket client on websockets' sans-I/O protocol: a few hundred bytes, no tasks."""

    def __init__(self, uri: Any, worker: Worker) -> None:
        from websockets.client import ClientProtocol

        self.proto = ClientProtocol(uri, max_size=None)
        self.worker = worker
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reply: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proto.send_request(self.proto.connect())
        self.flush()

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Opcode
        from websockets.http11 import Response
        from websockets.protocol import State

        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, Response):
                if self.proto.state is State.OPEN:
                    self.opened.set_result(None)
                else:
                    self.opened.set_exception(ConnectionError(f"HTTP {event.status_code}"))
            elif event.opcode is Opcode.TEXT:
                self.worker.on_text(self, event.data)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("connection lost during handshake"))
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(ConnectionError("connection lost"))

    def flush(self) -> None:
        assert self.transport is not None
        for chunk in self.proto.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:
                self.transport.close()

    def send(self, text: str) -> None:
        self.proto.send_text(text.encode())
        self.flush()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.proto.send_close(1000)
            self.flush()
            self.transport.close()


class Worker:
    """A client process: holds sockets, counts broadcast arrivals, runs echo and HTTP load."""

    def __init__(self) -> None:
        self.clients: list[WsClient] = []
        self.latencies: list[float] = []
        self.round_done: asyncio.Event = asyncio.Event()
        self.expect = 0

    def on_text(self, client: WsClient, data: bytes) -> None:
        if data.startswith(b"b:"):
            sent = int(data[2 : data.index(b":", 2)])
            self.latencies.append((time.monotonic_ns() - sent) / 1e9)
            if len(self.latencies) >= self.expect:
                self.round_done.set()
        elif client.reply is not None and not client.reply.done():
            client.reply.set_result(data)

    async def open(self, port: int, count: int, into: list[WsClient] | None = None) -> int:
        from websockets.uri import parse_uri

        uri = parse_uri(f"ws://{HOST}:{port}/ws")
        loop = asyncio.get_running_loop()
        target = self.clients if into is None else into
        gate = asyncio.Semaphore(64)

        async def one() -> None:
            async with gate:
                for attempt in range(3):
                    try:
                        _, client = await loop.create_connection(
                            lambda: WsClient(uri, self), HOST, port
                        )
                        await asyncio.wait_for(client.opened, 30)
                        target.append(client)
                        return
                    except (OSError, asyncio.TimeoutError):
                        await asyncio.sleep(0.2 * (attempt + 1))

        await asyncio.gather(*(one() for _ in range(count)))
        return len(target)

    async def collect(self, timeout: float) -> tuple[list[float], int]:
        """This round's broadcast latencies, once every live socket got it (or at timeout)."""
        expect = sum(1 for c in self.clients if not c.lost)
        self.expect = expect
        # Arrivals before this command saw a stale expectation: judge them afresh.
        self.round_done.clear()
        if len(self.latencies) < expect:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.round_done.wait(), timeout)
        found, self.latencies = self.latencies, []
        self.round_done.clear()
        return found, expect

    async def echo(self, port: int, count: int, rounds: int) -> tuple[list[float], float, int]:
        clients: list[WsClient] = []
        await self.open(port, count, clients)
        loop = asyncio.get_running_loop()
        latencies: list[float] = []

        async def run(client: WsClient) -> None:
            for i in range(rounds):
                client.reply = loop.create_future()
                start = time.perf_counter()
                client.send(f"e:{i}:{PAD}")
                try:
                    await asyncio.wait_for(client.reply, 10)
                except (asyncio.TimeoutError, ConnectionError):
                    return
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(run(c) for c in clients))
        wall = time.perf_counter() - start
        for client in clients:
            client.close()
        return latencies, wall, len(clients)

    async def single(self, port: int, sockets: int, frames: int) -> list[float]:
        """Round trips of one socket alone, ``frames`` in a row, on ``sockets`` fresh sockets.

        Fresh sockets keep each one within the edge's default burst (100 frames):
        the rate limit is not what this measures.
        """
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        for _ in range(sockets):
            clients: list[WsClient] = []
            await self.open(port, 1, clients)
            for client in clients:
                for i in range(frames):
                    client.reply = loop.create_future()
                    start = time.perf_counter()
                    client.send(f"e:{i}:{PAD}")
                    await asyncio.wait_for(client.reply, 10)
                    latencies.append(time.perf_counter() - start)
                client.close()
        return latencies

    async def http(self, port: int, connections: int, seconds: float) -> list[float]:
        request = f"GET /api HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def one() -> None:
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                while time.perf_counter() < deadline:
                    start = time.perf_counter()
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    await reader.readexactly(length)
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
                    latencies.append(time.perf_counter() - start)
            finally:
                writer.close()

        await asyncio.gather(*(one() for _ in range(connections)))
        return latencies

    def close_all(self) -> None:
        for client in self.clients:
            client.close()
        self.clients = []


def worker_main(pipe: Any) -> None:
    raise_fd_limit()

    async def loop() -> None:
        worker = Worker()
        running = asyncio.get_running_loop()
        while True:
            command, *args = await running.run_in_executor(None, pipe.recv)
            if command == "exit":
                worker.close_all()
                return
            if command == "open":
                pipe.send(await worker.open(*args))
            elif command == "collect":
                pipe.send(await worker.collect(*args))
            elif command == "echo":
                pipe.send(await worker.echo(*args))
            elif command == "http":
                pipe.send(await worker.http(*args))
            elif command == "single":
                pipe.send(await worker.single(*args))
            elif command == "close":
                worker.close_all()
                await asyncio.sleep(0.5)
                pipe.send(0)

    asyncio.run(loop())


@dataclass
class Pool:
    """The client processes and their pipes."""

    size: int
    pipes: list[Any] = field(default_factory=list)
    processes: list[Any] = field(default_factory=list)

    def start(self) -> None:
        context = mp.get_context("fork")
        for _ in range(self.size):
            mine, theirs = context.Pipe()
            process = context.Process(target=worker_main, args=(theirs,), daemon=True)
            process.start()
            self.pipes.append(mine)
            self.processes.append(process)

    async def all(self, command: str, *args: Any, split: int | None = None) -> list[Any]:
        """Send ``command`` to every worker (``split`` spreads a count over them)."""
        for i, pipe in enumerate(self.pipes):
            if split is None:
                pipe.send((command, *args))
            else:
                share = split // self.size + (1 if i < split % self.size else 0)
                pipe.send((command, args[0], share, *args[2:]))
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(None, p.recv) for p in self.pipes)))

    async def one(self, command: str, *args: Any) -> Any:
        """Send ``command`` to the first worker only."""
        self.pipes[0].send((command, *args))
        return await asyncio.get_running_loop().run_in_executor(None, self.pipes[0].recv)

    def stop(self) -> None:
        for pipe in self.pipes:
            pipe.send(("exit",))
        for process in self.processes:
            process.join(5)


# -- measuring ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def pct(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    if not samples:
        return float("nan"), float("nan")
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


class Server:
    """One server under test in its own process, on a free loopback port.

    ``kind`` is ``svcbus``, ``daphne`` or ``raw``; ``before`` serves the svcbus
    edge from an older commit (its shim dir first on ``PYTHONPATH``, see
    ``bench/checkout.py``).
    """

    def __init__(self, kind: str, shim: Path | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        self.log_path = Path(tempfile.gettempdir()) / f"bench_edge_{kind}.log"
        self.log_file = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ)
        if shim is not None:
            env["PYTHONPATH"] = str(shim)  # ahead of the editable install's finder
        serve_as = "svcbus" if kind == "before" else kind
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", serve_as, "--port", str(self.port)],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tempfile.gettempdir() if shim is not None else None,
        )
        try:
            wait_for_port(self.port, self.process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log_file.close()
        print(f"  server log: {self.log_path}", file=sys.stderr, flush=True)


async def broadcast(pool: Pool, sender: WsClient) -> tuple[list[float], int]:
    """One broadcast from ``sender``: every client's receipt latency (s), and the live sockets."""
    for pipe in pool.pipes:
        pipe.send(("collect", COLLECT_TIMEOUT))
    sender.send(f"b:{time.monotonic_ns()}:{PAD}")
    loop = asyncio.get_running_loop()
    got = await asyncio.gather(*(loop.run_in_executor(None, p.recv) for p in pool.pipes))
    return [x for part in got for x in part[0]], sum(part[1] for part in got)


async def measure(
    kind: str,
    pool: Pool,
    sizes: list[int],
    echo: tuple[int, int],
    http_s: float,
    shim: Path | None = None,
) -> dict:
    running = Server(kind, shim)
    port, server = running.port, running.process
    result: dict[str, Any] = {"kind": kind}
    try:
        # Warm up (imports, first connections, first request) before the baseline.
        await pool.all("open", port, 20, split=20)
        await pool.all("close")
        await pool.all("http", port, 1, 0.3)
        control = Worker()
        await control.open(port, 1)
        sender = control.clients[0]
        await asyncio.sleep(1.0)
        baseline = rss_kib(server.pid)
        held = 0
        for size in sizes:
            opened = await pool.all("open", port, size - held, split=size - held)
            held = sum(opened)
            await asyncio.sleep(0.5)
            if size == sizes[-1]:
                await asyncio.sleep(1.0)
                result["held"] = held
                result["kib_per_conn"] = (rss_kib(server.pid) - baseline) / max(held, 1)
            samples: list[float] = []
            complete: list[float] = []
            delivered = expected = 0
            for _ in range(BROADCAST_ROUNDS):
                flat, live = await broadcast(pool, sender)
                delivered += len(flat)
                expected += live
                samples += flat
                complete.append(max(flat) if flat else float("nan"))
                control.latencies.clear()
                await asyncio.sleep(0.2)
            p50, p99 = pct(samples)
            result[f"bcast{size}"] = (
                p50,
                p99,
                statistics.median(complete) * 1000,
                delivered / max(expected, 1),
            )
            if size == sizes[-1]:
                result["held"] = expected // BROADCAST_ROUNDS  # still open after the broadcasts
        control.close_all()
        await pool.all("close")
        await asyncio.sleep(1.0)
        clients, rounds = echo
        parts = await pool.all("echo", port, clients, rounds, split=clients)
        latencies = [x for part in parts for x in part[0]]
        wall = max(part[1] for part in parts)
        result["echo"] = (*pct(latencies), len(latencies) / wall, sum(part[2] for part in parts))
        await asyncio.sleep(0.5)
        parts = await pool.all("http", port, 50 // pool.size, http_s)
        latencies = [x for part in parts for x in part]
        result["http"] = (*pct(latencies), len(latencies) / http_s)
    finally:
        running.stop()
    return result


NAMES = {
    "svcbus": "svcbus edge",
    "layered": "svcbus edge, through the layer",
    "before": "svcbus edge, before",
    "daphne": "Daphne + Channels",
    "raw": "raw uvicorn (floor)",
}


def auto_parser() -> str:
    """The HTTP parser uvicorn's protocol takes when none is named (svcbus.edge.server)."""
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def kind_parts(kind: str) -> tuple[str, str, str]:
    """``server[-loop][+parser]`` (e.g. ``raw-uvloop+h11``) as (server, loop, HTTP parser)."""
    kind, _, parser = kind.partition("+")
    kind, _, loop = kind.partition("-")
    return kind, loop or "asyncio", parser or "auto"


def name_of(kind: str) -> str:
    """The table's name of ``kind``: its server, then its loop and parser where not the default."""
    server, loop, parser = kind_parts(kind)
    extras = [x for x in (loop, parser) if x not in ("asyncio", "auto")]
    return ", ".join([NAMES[server], *extras])


def floor_of(kind: str) -> str:
    """The raw app on the same event loop and HTTP parser as ``kind``: its ratios' base."""
    _, loop, parser = kind_parts(kind)
    return (
        "raw"
        + ("" if loop == "asyncio" else f"-{loop}")
        + ("" if parser == "auto" else f"+{parser}")
    )


@dataclass
class Rows:
    """One server's samples over the interleaved rounds of :func:`compare`."""

    echo_p50: list[float] = field(default_factory=list)
    echo_p99: list[float] = field(default_factory=list)
    echo_rate: list[float] = field(default_factory=list)
    echo_cpu: list[float] = field(default_factory=list)
    """Server CPU time (user + system) per echoed frame, µs: steadier than wall time
    on a shared machine, since waiting for a core costs no CPU time."""
    single_p50: list[float] = field(default_factory=list)
    http_rate: list[float] = field(default_factory=list)
    http_p50: list[float] = field(default_factory=list)
    http_cpu: list[float] = field(default_factory=list)
    """Server CPU time per HTTP request, µs."""
    bcast_p50: list[float] = field(default_factory=list)
    bcast_all: list[float] = field(default_factory=list)


async def broadcast_round(pool: Pool, port: int, sockets: int, row: Rows) -> None:
    """Open ``sockets`` sockets, broadcast to them BROADCAST_ROUNDS times, close them."""
    await pool.all("open", port, sockets, split=sockets)
    control = Worker()
    await control.open(port, 1)
    await asyncio.sleep(0.3)
    for _ in range(BROADCAST_ROUNDS):
        flat, _ = await broadcast(pool, control.clients[0])
        row.bcast_p50.append(pct(flat)[0])
        row.bcast_all.append(max(flat) * 1000 if flat else float("nan"))
        await asyncio.sleep(0.1)
    control.close_all()
    await pool.all("close")


async def compare(
    kinds: list[str],
    pool: Pool,
    rounds: int,
    echo: tuple[int, int],
    single: tuple[int, int],
    http_s: float,
    shim: Path | None,
    fanout: int,
) -> dict[str, Rows]:
    """Echo, one-socket echo, HTTP and broadcast of every server, interleaved round by round.

    All servers run at once (idle while another is measured); each round
    measures each server once, in a rotating order, so that drift on a shared
    machine hits every server alike. The table takes the median of the rounds.
    """
    servers = {kind: Server(kind, shim if kind == "before" else None) for kind in kinds}
    rows = {kind: Rows() for kind in kinds}
    try:
        for server in servers.values():  # warm up: imports, first connections and requests
            await pool.all("echo", server.port, 30, 5, split=30)
            await pool.all("http", server.port, 1, 0.3)
        for number in range(rounds):
            order = kinds[number % len(kinds) :] + kinds[: number % len(kinds)]
            for kind in order:
                port, row, pid = servers[kind].port, rows[kind], servers[kind].process.pid
                clients, frames = echo
                cpu = cpu_seconds(pid)
                parts = await pool.all("echo", port, clients, frames, split=clients)
                latencies = [x for part in parts for x in part[0]]
                row.echo_cpu.append((cpu_seconds(pid) - cpu) / max(len(latencies), 1) * 1e6)
                p50, p99 = pct(latencies)
                row.echo_p50.append(p50)
                row.echo_p99.append(p99)
                row.echo_rate.append(len(latencies) / max(part[1] for part in parts))
                row.single_p50.append(pct(await pool.one("single", port, *single))[0])
                cpu = cpu_seconds(pid)
                parts = await pool.all("http", port, 50 // pool.size, http_s)
                latencies = [x for part in parts for x in part]
                row.http_cpu.append((cpu_seconds(pid) - cpu) / max(len(latencies), 1) * 1e6)
                row.http_rate.append(len(latencies) / http_s)
                row.http_p50.append(pct(latencies)[0])
                await broadcast_round(pool, port, fanout, row)
                await asyncio.sleep(0.3)
            print(f"  round {number + 1}/{rounds} done", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return rows


def compare_table(rows: dict[str, Rows], echo: tuple[int, int], fanout: int) -> str:
    """Medians of :func:`compare`, with ratios to the floor (raw uvicorn on the same loop)."""
    med = statistics.median
    floors = {floor_of(kind) for kind in rows} & rows.keys()
    columns = [
        "server",
        f"echo {echo[0]:,}x{echo[1]} p50 ms",
        "p99 ms",
        "msg/s",
        "CPU µs/frame",
        "one socket p50 µs",
        "HTTP req/s",
        "HTTP p50 ms",
        "CPU µs/req",
        f"bcast {fanout:,} p50 ms",
        "all ms",
    ]
    if floors:
        columns += ["RTT vs raw", "rate vs raw", "one socket vs raw", "HTTP vs raw"]
        columns += ["CPU/frame vs raw", "CPU/req vs raw"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for kind, row in rows.items():
        cells = [
            name_of(kind),
            f"{med(row.echo_p50):.1f}",
            f"{med(row.echo_p99):.1f}",
            f"{med(row.echo_rate):,.0f}",
            f"{med(row.echo_cpu):.0f}",
            f"{med(row.single_p50) * 1000:.0f}",
            f"{med(row.http_rate):,.0f}",
            f"{med(row.http_p50):.2f}",
            f"{med(row.http_cpu):.0f}",
            f"{med(row.bcast_p50):.1f}",
            f"{med(row.bcast_all):.1f}",
        ]
        base = rows.get(floor_of(kind))
        if base is not None:
            cells += [
                f"{med(row.echo_p50) / med(base.echo_p50):.2f}x",
                f"{med(row.echo_rate) / med(base.echo_rate):.2f}x",
                f"{med(row.single_p50) / med(base.single_p50):.2f}x",
                f"{med(row.http_rate) / med(base.http_rate):.2f}x",
                f"{med(row.echo_cpu) / med(base.echo_cpu):.2f}x",
                f"{med(row.http_cpu) / med(base.http_cpu):.2f}x",
            ]
        elif floors:
            cells += [""] * 6
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(results: list[dict], sizes: list[int], echo_clients: int) -> str:
    columns = ["server", f"idle {sizes[-1]:,} held", "KiB/conn"]
    columns += [f"bcast {s:,} p50/p99/all ms" for s in sizes]
    columns += [f"echo {echo_clients:,} p50/p99 ms", "echo msg/s", "HTTP req/s", "HTTP p50/p99 ms"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        cells = [name_of(r["kind"]), f"{r.get('held', 0):,}", f"{r.get('kib_per_conn', 0):.1f}"]
        for s in sizes:
            p50, p99, whole, share = r[f"bcast{s}"]
            lost = "" if share >= 0.9995 else f" ({share:.0%} delivered)"
            cells.append(f"{p50:.1f} / {p99:.1f} / {whole:.1f}{lost}")
        e50, e99, rate, _ = r["echo"]
        h50, h99, hrate = r["http"]
        cells += [
            f"{e50:.1f} / {e99:.1f}",
            f"{rate:,.0f}",
            f"{hrate:,.0f}",
            f"{h50:.2f} / {h99:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (about a minute)")
    parser.add_argument("--servers", default=None, help="comma-separated subset")
    parser.add_argument("--clients", type=int, default=3, help="client processes")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="echo, one-socket echo and HTTP only, servers interleaved over --rounds",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --compare (median)")
    parser.add_argument("--before", metavar="REF", help="also serve the edge of git REF")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    raise_fd_limit()
    echo = (100, 10) if args.quick else (1000, 20)
    http_s = 2.0 if args.quick else 5.0
    pool = Pool(args.clients)
    pool.start()
    try:
        if args.compare:
            run_compare(args, pool, echo, http_s)
        else:
            run_full(args, pool, echo, http_s)
    finally:
        pool.stop()


def run_compare(args: argparse.Namespace, pool: Pool, echo: tuple[int, int], http_s: float) -> None:
    """``--compare``: the echo and HTTP rows, interleaved rounds, medians and ratios."""
    kinds = (args.servers or "svcbus,layered,raw").split(",")
    single = (2, 40) if args.quick else (5, 80)
    fanout = 100 if args.quick else 1000
    worktree = shim = None
    if args.before:
        from checkout import checkout, remove

        worktree, shim = checkout(args.before, "svcbus-edge-before")
        kinds.insert(1, "before")
    try:
        rows = asyncio.run(compare(kinds, pool, args.rounds, echo, single, http_s, shim, fanout))
    finally:
        if worktree is not None and shim is not None:
            remove(worktree, shim)
    print()
    print(compare_table(rows, echo, fanout))
    print()
    print(
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, HTTP parser (auto): "
        f"{auto_parser()}, {args.clients} client "
        f"processes; median of {args.rounds} interleaved rounds; echo: {echo[0]:,} sockets x "
        f"{echo[1]} sequential frames; one socket: {single[0]} sockets x {single[1]} frames, "
        f"one at a time; HTTP: {50 // pool.size * pool.size} keep-alive connections, {http_s:g} s; "
        f"broadcast: {BROADCAST_ROUNDS} per round to {fanout:,} fresh sockets"
        + (f"; before = {args.before}" if args.before else "")
    )


def run_full(args: argparse.Namespace, pool: Pool, echo: tuple[int, int], http_s: float) -> None:
    """Every measurement, one server after the other."""
    sizes = [100, 500, 1000] if args.quick else [1000, 5000, 10_000]
    kinds = (args.servers or "svcbus,daphne,raw").split(",")
    worktree = shim = None
    if args.before:
        from checkout import checkout, remove

        worktree, shim = checkout(args.before, "svcbus-edge-before")
        kinds.insert(1, "before")
    results = []
    try:
        for kind in kinds:
            print(f"measuring {name_of(kind)}...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            results.append(asyncio.run(measure(kind, pool, sizes, echo, http_s, shim)))
            print(f"  done in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    finally:
        if worktree is not None and shim is not None:
            remove(worktree, shim)
    print()
    print(table(results, sizes, echo[0]))
    print()
    print(
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, HTTP parser (auto): "
        f"{auto_parser()}, {args.clients} client processes, "
        f"{BROADCAST_ROUNDS} broadcast rounds per size; 'all' = time until the last socket got it."
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
