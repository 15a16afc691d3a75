"""HTTP to consumers in the edge's own process (svcbus.local), against the same through the layer.

Every scenario runs twice: with the runtime serving in-process requests (the
default on memory://) and with ``in_process=False``, which sends them through
the layer. The client must not see a difference, and the runtime's counts
must balance with what the client got, either way.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from svcbus import Bus, Context, Contract, Runtime, Service
from svcbus.edge import (
    EdgeApp,
    HttpRequest,
    HttpRoute,
    Limits,
    Routes,
    Send,
    WebSocketReceive,
    WebSocketRoute,
)
from svcbus.errors import MessageTooLarge

pytestmark = pytest.mark.anyio
BOTH_PATHS = True


class Total(Contract):
    total: int


service = Service("edge-local-test")
running = {"now": 0, "most": 0, "finished": 0}


@service.consumes("local.busy", concurrency=3)
async def busy(request: HttpRequest, ctx: Context) -> dict[str, Any]:
    running["now"] += 1
    running["most"] = max(running["most"], running["now"])
    try:
        await anyio.sleep(0.02)
    finally:
        running["now"] -= 1
    return {"rc": ctx.reply_channel, "id": ctx.message_id, "path": request.path}


@service.consumes("local.slow")
async def slow(request: HttpRequest) -> dict[str, Any]:
    await anyio.sleep(1.3)
    running["finished"] += 1
    return {"late": True}


@service.consumes("local.early")
async def early(request: HttpRequest, ctx: Context) -> dict[str, Any]:
    await ctx.reply({"early": True})
    await ctx.reply({"twice": True})  # as through the layer: only the first arrives
    return {"late": True}


@service.consumes("local.big")
async def big(request: HttpRequest) -> dict[str, Any]:
    return {"text": "x" * 3000}


@service.consumes("local.wrong")
async def wrong(request: HttpRequest) -> Total:
    return {"total": "not a number"}  # type: ignore[return-value]  # what the test is about


@service.consumes("local.queue", concurrency=1)
async def queue(request: HttpRequest) -> dict[str, Any]:
    await anyio.sleep(0.2)  # longer than the edge retries a full channel (accept_timeout)
    return {"ok": True}


REQUESTER = contextvars.ContextVar("requester", default="none")


@service.consumes("local.context")
async def context(request: HttpRequest) -> dict[str, Any]:
    return {"requester": REQUESTER.get()}


STEPPED: list[asyncio.Task[Any] | None] = []
"""The task each ``local.steps`` handling ran in."""


STEP = contextvars.ContextVar[int]("step")
"""Set by each ``local.steps`` handling before it suspends, read after."""


@service.consumes("local.steps", concurrency=2)
async def steps(request: HttpRequest) -> dict[str, Any]:
    """Suspends (``/suspend``) under deadlines of either library, is cancelled by scopes past
    theirs (``/cancelled``), or returns at once; may fail in either step."""
    first = asyncio.current_task()
    STEPPED.append(first)
    mine = len(STEPPED)
    STEP.set(mine)
    if request.path.startswith("/fail-now"):
        raise RuntimeError("failed in its first step")
    if request.path.startswith("/cancelled"):
        # Scopes past their deadline, entered in the first step: they cancel the worker.
        with anyio.move_on_after(0):
            await anyio.sleep(5)
        try:
            async with asyncio.timeout(0):
                await asyncio.sleep(5)
        except TimeoutError:
            pass
    if request.path.startswith(("/suspend", "/fail-later")):
        with anyio.fail_after(5):
            await anyio.sleep(0.01)
        await asyncio.wait_for(asyncio.sleep(0.01), 5)
        with anyio.move_on_after(0):  # a scope already past its deadline: cancelled at once
            await anyio.sleep(5)
        if request.path.startswith("/fail-later"):
            raise RuntimeError("failed after suspending")
    return {
        "context": REQUESTER.get(),
        "same_task": asyncio.current_task() is first,
        "kept": STEP.get() == mine,  # its own value, though others ran meanwhile
    }


class Abort(BaseException):
    """Raised past the runtime's handling of failures, as KeyboardInterrupt would be."""


@service.consumes("local.abort", concurrency=1)
async def abort(request: HttpRequest) -> dict[str, Any]:
    if request.path == "/abort":
        raise Abort
    return {"ok": True}


CLAIMS = {"sub": "ada", "roles": ["reader"]}
"""What the authentication hook returns, the same dict every time (as a cache would)."""


def authenticate(handshake: Any) -> dict[str, Any]:
    return CLAIMS


@service.consumes("local.ws.receive")
async def frame(msg: WebSocketReceive, ctx: Context) -> None:
    if msg.text == "replies":
        await replies(msg, ctx)
        return
    seen = {
        "order": msg.order,
        "params": dict(msg.params),
        "identity": json.loads(json.dumps(msg.identity)),
    }
    msg.params["mutated"] = 1  # a consumer's own copy: no other frame may see this
    msg.identity["roles"].append("admin")
    await ctx.send(msg.reply_channel, Send(text=json.dumps(seen)))


async def replies(msg: WebSocketReceive, ctx: Context) -> None:
    """Replies a consumer in the edge's process sends to a socket (handed over unencoded)."""
    # The edge takes Sends as objects while it listens on the socket's reply channel.
    listening = msg.reply_channel in ctx.bus.layer.hub.message_listeners  # type: ignore[attr-defined]
    reply = Send(text=f"listening={listening}")
    await ctx.send(msg.reply_channel, reply)
    reply.text = "reused"  # the sender's object again: what was sent must not change
    await ctx.send(msg.reply_channel, reply)
    try:  # over the layer's limit (2,000 bytes): refused as the encoded reply would be
        await ctx.send(msg.reply_channel, Send(text="x" * 3000))
    except MessageTooLarge:
        await ctx.send(msg.reply_channel, Send(text="too large"))
    await ctx.send(msg.reply_channel, Send(binary=b"\x00\xff"))


@service.consumes("local.whoami")
async def whoami(request: HttpRequest) -> dict[str, Any]:
    seen = {"identity": json.loads(json.dumps(request.identity)), "params": dict(request.params)}
    request.identity["roles"].append("admin")
    request.params["mutated"] = True  # the route has no parameters: the edge's match does not
    return seen


routes = Routes(
    WebSocketRoute("/ws/{room}", connect=None, receive="local.ws.receive", disconnect=None),
    HttpRoute("/whoami", "local.whoami"),
    HttpRoute("/busy", "local.busy"),
    HttpRoute("/slow", "local.slow"),
    HttpRoute("/early", "local.early"),
    HttpRoute("/big", "local.big", methods=["GET", "POST"]),
    HttpRoute("/wrong", "local.wrong"),
    HttpRoute("/queue", "local.queue"),
    HttpRoute("/quick", "local.steps"),
    HttpRoute("/suspend", "local.steps"),
    HttpRoute("/fail-now", "local.steps"),
    HttpRoute("/cancelled", "local.steps"),
    HttpRoute("/fail-later", "local.steps"),
)


@pytest.fixture
async def served(
    serve: Any, hub_url: str, in_process: bool
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime, bool]]:
    """(client, runtime, in_process): the routes above, their consumers beside the edge."""
    running.update(now=0, most=0, finished=0)
    url = f"{hub_url}?max_message_size=2000&channel_capacity=local.queue:2"
    limits = Limits(accept_timeout=0.1, request_timeout=1.0, max_body_size=10_000)
    async with Bus(url) as bus:
        runtime = Runtime(service, bus, in_process=in_process)
        async with runtime.running():
            app = EdgeApp(routes, layer=bus, limits=limits, authenticate=authenticate)
            addr = await serve(app)
            async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as client:
                client.addr = addr  # type: ignore[attr-defined]  # for the WebSocket tests
                yield client, runtime, in_process


async def test_requests_balance_with_the_consumers_counts_and_concurrency(served) -> None:
    client, runtime, in_process = served
    responses = await asyncio.gather(*(client.get("/busy") for _ in range(40)))
    assert [r.status_code for r in responses] == [200] * 40
    replies = [r.json() for r in responses]
    assert len({r["id"] for r in replies}) == 40  # one handling per request, none twice
    # Which path served them: the in-process context shows the runtime's own channel.
    assert all(r["rc"].startswith("local." if in_process else "reply.") for r in replies)
    stats = runtime.stats["local.busy"]
    assert (stats.received, stats.processed, stats.failed) == (40, 40, 0)
    assert 1 < running["most"] <= 3  # the consumer's concurrency holds


async def test_a_timeout_answers_504_and_leaves_the_handler_running(served) -> None:
    client, runtime, _ = served
    response = await client.get("/slow")
    assert response.status_code == 504
    assert running["finished"] == 0
    await anyio.sleep(0.5)
    assert running["finished"] == 1  # not cancelled by the requester giving up
    stats = runtime.stats["local.slow"]
    assert (stats.received, stats.processed, stats.failed) == (1, 1, 0)


async def test_ctx_reply_answers_once(served) -> None:
    client, _, _ = served
    response = await client.get("/early")
    assert (response.status_code, response.json()) == (200, {"early": True})


async def test_sizes_and_reply_contracts_hold_as_on_the_layer(served) -> None:
    client, runtime, _ = served
    # A body the edge takes (max_body_size) but the layer's limit does not.
    too_large = await client.post("/big", content=b"y" * 5000)
    assert too_large.status_code == 413
    assert runtime.stats["local.big"].received == 0
    # A reply above the layer's limit, and one that breaks its contract.
    big_reply = await client.get("/big")
    assert (big_reply.status_code, big_reply.json()["type"]) == (500, "MessageTooLarge")
    wrong_reply = await client.get("/wrong")
    assert (wrong_reply.status_code, wrong_reply.json()["type"]) == (500, "MessageInvalid")


async def test_capacity_refuses_what_cannot_wait(served) -> None:
    """concurrency 1, capacity 2: what cannot wait is refused, what was taken is answered."""
    client, runtime, in_process = served
    responses = await asyncio.gather(*(client.get("/queue") for _ in range(6)))
    codes = [r.status_code for r in responses]
    answered, refused = codes.count(200), codes.count(503)
    assert answered + refused == 6 and refused >= 1
    if in_process:
        assert answered == 3  # one running, two waiting
    # Through the layer a worker takes what waits as one batch, which frees the
    # channel for more: more may be answered there, never fewer.
    stats = runtime.stats["local.queue"]
    assert (stats.received, stats.processed) == (answered, answered)


async def test_frames_and_requests_share_nothing_with_each_other(served) -> None:
    """Each message is the consumer's own: mutating it changes no other frame, request or hook."""
    client, runtime, _ = served
    async with connect(f"ws://{client.addr}/ws/lobby") as ws:
        for _ in range(5):
            await ws.send("hi")
        seen = [json.loads(await ws.recv()) for _ in range(5)]
    assert [s["order"] for s in seen] == [1, 2, 3, 4, 5]
    assert all(s["params"] == {"room": "lobby"} for s in seen)
    assert all(s["identity"] == {"sub": "ada", "roles": ["reader"]} for s in seen)
    for _ in range(3):
        response = await client.get("/whoami")
        assert response.json() == {"identity": {"sub": "ada", "roles": ["reader"]}, "params": {}}
    assert CLAIMS == {"sub": "ada", "roles": ["reader"]}
    frames, requests = runtime.stats["local.ws.receive"], runtime.stats["local.whoami"]
    assert (frames.received, frames.processed, frames.failed) == (5, 5, 0)
    assert (requests.received, requests.processed, requests.failed) == (3, 3, 0)


async def test_replies_to_a_socket_arrive_in_order_and_unchanged(served) -> None:
    client, runtime, _ = served
    async with connect(f"ws://{client.addr}/ws/lobby") as ws:
        await ws.send("replies")
        got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(4)]
    assert got == ["listening=True", "reused", "too large", b"\x00\xff"]
    frames = runtime.stats["local.ws.receive"]
    assert (frames.received, frames.processed, frames.failed) == (1, 1, 0)


async def test_stop_drains_in_process_requests(hub_url: str) -> None:
    """Requests handed over (running or waiting) when the runtime stops are still answered."""
    async with Bus(hub_url) as bus:
        runtime = Runtime(service, bus)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: runtime.run(handle_signals=False))
            await runtime.started.wait()
            local = bus.layer.local_consumer("local.queue")
            assert local is not None
            message = HttpRequest(method="GET", path="/queue")
            replies = [local.call(message) for _ in range(2)]  # one runs, one waits
            runtime.stop()
            assert bus.layer.local_consumer("local.queue") is None  # new ones: the layer
        assert [(await r).value for r in replies if r is not None] == [{"ok": True}] * 2
        assert runtime.stats["local.queue"].processed == 2


async def test_the_handler_runs_in_the_runtimes_context_not_the_requesters(hub_url: str) -> None:
    """As a worker would: what the requester's task set does not leak into the consumer."""
    async with Bus(hub_url) as bus, Runtime(service, bus).running():
        REQUESTER.set("the edge's request task")
        local = bus.layer.local_consumer("local.context")
        assert local is not None
        reply = local.call(HttpRequest(method="GET", path="/context"))
        assert reply is not None
        assert (await reply).value == {"requester": "none"}


async def test_handlers_keep_their_task_across_suspensions(served) -> None:
    """Deadlines, cancel scopes and context variables hold, whether the handler suspends or not.

    In process, a request finds an idle worker and starts at once: its first
    step runs within the edge's request task, as the worker's task and in the
    worker's context; one that suspends is carried on by that worker.
    Failures in either step reach the client as 500 and are counted.
    """
    client, runtime, _ = served
    STEPPED.clear()
    paths = ["/quick", "/suspend", "/cancelled", "/fail-now", "/fail-later"] * 10
    responses = await asyncio.gather(*(client.get(path) for path in paths))
    by_path = {
        path: [r for p, r in zip(paths, responses, strict=True) if p == path] for path in set(paths)
    }
    for path in ("/quick", "/suspend", "/cancelled"):
        assert [r.status_code for r in by_path[path]] == [200] * 10
        assert all(
            r.json() == {"context": "none", "same_task": True, "kept": True} for r in by_path[path]
        )
    for path in ("/fail-now", "/fail-later"):
        assert [r.status_code for r in by_path[path]] == [500] * 10
        assert all(r.json()["type"] == "RuntimeError" for r in by_path[path])
    stats = runtime.stats["local.steps"]
    assert (stats.received, stats.processed, stats.failed) == (50, 30, 20)
    assert len(set(STEPPED)) <= 2  # the consumer's two workers, on either path
    assert asyncio.current_task() not in STEPPED


async def test_a_first_step_raising_past_the_runtime_leaves_its_worker_idle(hub_url: str) -> None:
    """The exception reaches the requester; the consumer's one worker still takes the next request."""
    async with Bus(hub_url) as bus, Runtime(service, bus).running():
        local = bus.layer.local_consumer("local.abort")
        assert local is not None and local.start_now is not None
        for _ in range(3):
            with pytest.raises(Abort):
                local.call(HttpRequest(method="GET", path="/abort"))
            assert (len(local.idle), local.pending) == (1, 0)
        reply = local.call(HttpRequest(method="GET", path="/fine"))
        assert reply is not None
        assert (await asyncio.wait_for(reply, 5)).value == {"ok": True}
