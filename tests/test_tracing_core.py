"""Tracing in the core: spans, attributes, parent/child across a send, error status.

Each test uses its own TracerProvider with an in-memory exporter, handed to the
Bus, so the rest of the suite runs with tracing off.
"""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from svcbus import Bus, Context, Runtime, Service, tracing
from svcbus.layers.memory import MemoryHub, MemoryLayer

pytestmark = pytest.mark.anyio


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter, provider.get_tracer("svcbus")
    tracing.configure(parent="child")


def make_service() -> Service:
    service = Service("traced")

    @service.consumes("ttest.first")
    async def first(message: dict, ctx: Context) -> None:
        await ctx.send("ttest.second", {"hop": 2})

    @service.consumes("ttest.second")
    async def second(message: dict) -> None: ...

    @service.consumes("ttest.ask")
    async def ask(message: dict) -> dict:
        if message.get("fail"):
            raise KeyError("missing")
        return {"ok": True}

    @service.consumes("ttest.sync")
    def sync(message: dict) -> dict:
        return {"sync": True}

    return service


async def run(tracer, body):
    hub = MemoryHub()
    server = Bus(MemoryLayer(hub=hub), tracer=tracer)
    runtime = Runtime(make_service(), server, concurrency=1)
    async with server, runtime.running(), Bus(MemoryLayer(hub=hub), tracer=tracer) as client:
        await body(client, runtime)


async def wait_processed(runtime, channel, n=1):
    import anyio

    with anyio.fail_after(5):
        while runtime.stats[channel].processed < n:
            await anyio.sleep(0.01)


async def test_one_trace_follows_a_message_across_consumers(spans):
    exporter, tracer = spans

    async def body(client, runtime):
        await client.send("ttest.first", {"hop": 1})
        await wait_processed(runtime, "ttest.second")

    await run(tracer, body)
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    send1, process1 = by_name["send ttest.first"], by_name["process ttest.first"]
    send2, process2 = by_name["send ttest.second"], by_name["process ttest.second"]
    assert len({s.context.trace_id for s in (send1, process1, send2, process2)}) == 1
    assert process1.parent.span_id == send1.context.span_id
    assert send2.parent.span_id == process1.context.span_id
    assert process2.parent.span_id == send2.context.span_id
    assert send1.kind == SpanKind.PRODUCER and process1.kind == SpanKind.CONSUMER
    attributes = process1.attributes
    assert attributes["messaging.system"] == "memory"
    assert attributes["messaging.destination.name"] == "ttest.first"
    assert attributes["messaging.operation.name"] == "process"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.consumer.group.name"] == "ttest.first"
    assert attributes["messaging.message.id"] == send1.attributes["messaging.message.id"]
    assert (
        attributes["messaging.message.body.size"] == send1.attributes["messaging.message.body.size"]
    )


async def test_request_is_a_client_span_and_failures_mark_the_process_span(spans):
    exporter, tracer = spans

    async def body(client, runtime):
        assert await client.request("ttest.ask", {}) == {"ok": True}
        with pytest.raises(Exception, match="KeyError"):
            await client.request("ttest.ask", {"fail": True})

    await run(tracer, body)
    finished = exporter.get_finished_spans()
    requests = [s for s in finished if s.name == "request ttest.ask"]
    processes = [s for s in finished if s.name == "process ttest.ask"]
    assert [s.kind for s in requests] == [SpanKind.CLIENT, SpanKind.CLIENT]
    assert processes[0].parent.span_id == requests[0].context.span_id
    assert processes[0].status.status_code == StatusCode.UNSET
    assert processes[1].status.status_code == StatusCode.ERROR
    assert processes[1].attributes["error.type"] == "KeyError"
    assert requests[1].status.status_code == StatusCode.ERROR
    assert requests[1].attributes["error.type"] == "RemoteError"


async def test_sync_consumers_are_traced_too(spans):
    exporter, tracer = spans

    async def body(client, runtime):
        assert await client.request("ttest.sync", {}) == {"sync": True}

    await run(tracer, body)
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    assert (
        by_name["process ttest.sync"].parent.span_id
        == by_name["request ttest.sync"].context.span_id
    )


async def test_link_mode_links_instead_of_parenting(spans):
    exporter, tracer = spans
    tracing.configure(parent="link")

    async def body(client, runtime):
        await client.send("ttest.second", {})
        await wait_processed(runtime, "ttest.second")

    await run(tracer, body)
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    process, send = by_name["process ttest.second"], by_name["send ttest.second"]
    assert process.parent is None
    assert process.links[0].context.span_id == send.context.span_id


async def test_tracing_off_carries_no_trace_context():
    hub = MemoryHub()
    async with Bus(MemoryLayer(hub=hub)) as bus:
        assert bus.tracer is None
        await bus.send("ttest.plain", {})
        raw = await bus.layer.receive("ttest.plain")
    assert b'"tc"' not in raw
