"""The runtime under bad input and broken metadata, on real layers: nothing lost without a word.

* a reply channel in a message never makes the worker create anything (NATS streams);
* floods of invalid messages make a few log lines and a summary;
* messages above the size limit are refused, and dead letters fit whatever came in.
"""

from __future__ import annotations

import logging
import uuid

import anyio
import pytest

from svcbus import Bus, Context, Contract, DeadLetter, Runtime, Service
from svcbus.envelope import encode, new_message_id, now_ms
from svcbus.ratelog import RateLimitedLog

pytestmark = pytest.mark.anyio


class Echoed(Contract):
    text: str


class Ask(Contract, channel="rfault.ask", reply=Echoed):
    text: str


def echo_service() -> Service:
    service = Service("rfault")

    @service.consumes("rfault.ask")
    async def ask(message: Ask) -> Echoed:
        return Echoed(text=message.text.upper())

    return service


def raw_request(body: bytes, reply_channel: str) -> bytes:
    """A request envelope with any reply channel and any body (bypassing the Bus's checks)."""
    sent_at = now_ms()
    return encode(
        body,
        id=new_message_id(),
        contract="Ask",
        version=1,
        sent_at=sent_at,
        expires_at=sent_at + 60_000,
        reply_channel=reply_channel,
    )


async def wait_until(predicate, seconds: float = 20.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.02)


async def stream_names(nats_url: str) -> list[str]:
    import nats

    nc = await nats.connect(nats_url)
    try:
        return [info.config.name for info in await nc.jetstream().streams_info()]
    finally:
        await nc.close()


# --- 1. metadata cannot create resources --------------------------------------------


async def test_named_reply_channels_create_no_streams_on_nats(nats_server):
    pytest.importorskip("svcbus.layers.nats")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    url = f"{nats_server.url}?prefix={prefix}&capacity=1000"
    runtime = Runtime(echo_service(), url, concurrency=4)
    async with runtime.running(), Bus(url) as client:
        # The runtime's own stream, and the client's request path, exist before the count.
        assert (await client.request("rfault.ask", Ask(text="warm"))).text == "WARM"
        before = await stream_names(nats_server.url)
        for i in range(500):
            # Half invalid (a body that does not fit), half valid: both used to be answered.
            body = b'{"nope":1}' if i % 2 else b'{"text":"x"}'
            await client.layer.send("rfault.ask", raw_request(body, f"evil.n{i % 200}"))
        await client.layer.flush()
        stats = runtime.stats["rfault.ask"]
        await wait_until(lambda: stats.invalid + stats.processed >= 501)
        after = await stream_names(nats_server.url)
        # The worker keeps serving requesters that wait on a process channel.
        assert (await client.request("rfault.ask", Ask(text="still"))).text == "STILL"
    print(
        f"streams before {len(before)}, after {len(after)}; bad_reply_channel="
        f"{stats.bad_reply_channel} invalid={stats.invalid} processed={stats.processed}"
    )
    assert sorted(after) == sorted(before)
    assert stats.bad_reply_channel == 500
    assert (stats.invalid, stats.processed) == (250, 252)


async def test_context_reads_a_named_reply_channel_as_none():
    seen: list[object] = []
    service = Service("rfault-ctx")

    @service.consumes("rfault.ctx")
    async def handle(message: dict, ctx: Context) -> None:
        seen.append(ctx.reply_channel)
        with pytest.raises(Exception, match="no reply channel"):
            await ctx.reply({"a": 1})

    runtime = Runtime(service, "memory://")
    async with runtime.running():
        await runtime.bus.layer.send("rfault.ctx", raw_request(b"{}", "named.channel"))
        await wait_until(lambda: runtime.stats["rfault.ctx"].processed == 1)
    assert seen == [None]
    assert runtime.stats["rfault.ctx"].bad_reply_channel == 1  # counted once, not replied to


# --- 3. bad input, bounded noise -----------------------------------------------------


async def test_a_flood_of_invalid_messages_logs_a_few_lines_and_a_summary(redis_url, caplog):
    pytest.importorskip("svcbus.layers.redis")
    url = f"{redis_url}?prefix=t{uuid.uuid4().hex[:8]}&capacity=1000"
    caplog.set_level(logging.WARNING, logger="svcbus.runtime")
    runtime = Runtime(echo_service(), url, concurrency=2)
    async with runtime.running(), Bus(url) as client:
        for _ in range(300):
            await client.layer.send("rfault.ask", b"not json at all")
        await client.layer.flush()
        await wait_until(lambda: runtime.stats["rfault.ask"].invalid == 300)
    lines = [r.getMessage() for r in caplog.records if r.name == "svcbus.runtime"]
    invalid_lines = [line for line in lines if line.startswith("invalid message")]
    summaries = [line for line in lines if "more invalid messages" in line]
    print(f"300 invalid messages -> {len(invalid_lines)} lines, summary: {summaries}")
    assert len(invalid_lines) == 5
    assert all("on rfault.ask" in line and "not JSON" in line for line in invalid_lines)
    assert summaries == ["... and 295 more invalid messages on rfault.ask in the last 10 s"]


def test_rate_limited_log_summarizes_each_window():
    now = [0.0]
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger(f"rfault.{uuid.uuid4().hex}")
    logger.addHandler(Collect())
    logger.propagate = False
    limited = RateLimitedLog(logger, "invalid messages", burst=2, window=10, clock=lambda: now[0])
    for i in range(5):
        limited.log("a.b", "bad %d", i)
    limited.flush()  # the window is not over: nothing yet
    assert records == ["bad 0", "bad 1"]
    now[0] = 10.5
    limited.flush()  # the periodic flush writes the summary without waiting for more input
    limited.log("a.b", "bad %d", 5)
    assert records == [
        "bad 0",
        "bad 1",
        "... and 3 more invalid messages on a.b in the last 10 s",
        "bad 5",
    ]


async def test_messages_above_the_limit_are_refused_and_dead_lettered(redis_url):
    pytest.importorskip("svcbus.layers.redis")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    url = f"{redis_url}?prefix={prefix}"
    called: list[int] = []
    service = Service("rfault-big")

    @service.consumes("rfault.big")
    async def big(message: dict) -> None:
        called.append(len(message["text"]))

    @service.consumes("rfault.bigsync")
    def big_sync(message: dict) -> None:
        called.append(len(message["text"]))

    # The sender allows 4 MiB; this service keeps the default 1 MiB.
    runtime = Runtime(service, url, dead_letter="rfault.dead")
    async with (
        runtime.running(),
        Bus(f"{url}&max_message_size={4 << 20}") as client,
    ):
        huge = {"text": "x" * (3 << 19)}  # 1.5 MiB
        await client.send("rfault.big", huge)
        await client.send("rfault.bigsync", huge)
        await client.send("rfault.big", {"text": "small"})
        await client.layer.flush()
        letters = [await client.receive("rfault.dead", DeadLetter) for _ in range(2)]
        await wait_until(lambda: called == [5])
    stats = runtime.stats
    print(
        "too_large:",
        {c: (s.too_large, s.invalid, s.dead_lettered) for c, s in stats.items()},
        "letters:",
        [(lt.b.channel, lt.b.size, len(lt.b.payload), lt.b.truncated) for lt in letters],
    )
    for channel in ("rfault.big", "rfault.bigsync"):
        assert (stats[channel].too_large, stats[channel].dead_lettered) == (1, 1)
    for letter in letters:
        assert letter.b.truncated and letter.b.size > 1 << 20
        assert "max_message_size" in letter.b.reason
        assert letter.b.payload.startswith('{"v":1,"id":') and len(letter.b.payload) == 1024
    assert sorted(letter.b.channel for letter in letters) == ["rfault.big", "rfault.bigsync"]


async def test_an_invalid_message_near_the_limit_is_dead_lettered_as_a_summary():
    runtime = Runtime(echo_service(), "memory://", dead_letter="rfault.dead")
    max_size = runtime.bus.layer.options.max_message_size
    # Just under the limit, but every '"' doubles when the payload is escaped into a letter.
    body = b'{"text":1,"pad":"' + b'\\"' * ((max_size - 200) // 2) + b'"}'
    data = raw_request(body, "reply.x!y")[: max_size - 1]
    assert len(data) < max_size
    async with runtime.running():
        await runtime.bus.layer.send("rfault.ask", data)
        letter = await runtime.bus.receive("rfault.dead", DeadLetter)
    stats = runtime.stats["rfault.ask"]
    print(f"message {len(data)} bytes -> letter payload {len(letter.b.payload)} chars")
    assert (stats.invalid, stats.too_large, stats.dead_lettered) == (1, 0, 1)
    assert letter.b.truncated and letter.b.size == len(data)
    assert letter.b.payload == data[:1024].decode()
