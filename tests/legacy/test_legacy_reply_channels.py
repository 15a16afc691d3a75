"""The legacy worker, like the runtime, replies only to process-specific channels.

A request whose reply channel is a named channel is handled but not answered:
answering would make the transport create a NATS stream for whatever name a
message carries.
"""

from __future__ import annotations

import uuid

import pytest
from test_interop import LAdd, LegacyWorker, LSum

from svcbus import Bus
from svcbus.envelope import encode, new_message_id, now_ms

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def stream_names(nats_url: str) -> list[str]:
    import nats

    nc = await nats.connect(nats_url)
    try:
        return [info.config.name for info in await nc.jetstream().streams_info()]
    finally:
        await nc.close()


async def test_named_reply_channels_create_no_streams(nats_server, tmp_path):
    pytest.importorskip("svcbus.layers.nats")
    url = f"{nats_server.url}?prefix=t{uuid.uuid4().hex[:10]}"
    worker = LegacyWorker(url, tmp_path)
    worker.start()
    try:
        async with Bus(url) as bus:
            assert await bus.request("lg.add", LAdd(a=1, b=1)) == LSum(total=2)
            before = await stream_names(nats_server.url)
            for i in range(100):
                sent_at = now_ms()
                data = encode(
                    b'{"a":1,"b":2}',
                    id=new_message_id(),
                    contract="LAdd",
                    version=1,
                    sent_at=sent_at,
                    expires_at=sent_at + 60_000,
                    reply_channel=f"evil.n{i % 40}",
                )
                await bus.layer.send("lg.add", data)
            await bus.layer.flush()
            # FIFO per sender: once this is answered, the 100 before it were handled.
            assert await bus.request("lg.add", LAdd(a=2, b=2)) == LSum(total=4)
            after = await stream_names(nats_server.url)
    finally:
        worker.stop()
    log = worker.log_text()
    print(f"streams before {len(before)}, after {len(after)}; warnings: {log.count('evil.n')}")
    assert sorted(after) == sorted(before)
    assert log.count("not a process-specific channel") == 1
