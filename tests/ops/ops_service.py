"""A service for the operations tests: `svc run ops.ops_service` (from tests/)."""

from __future__ import annotations

from svcbus import Contract, Service

service = Service("opstest")


class Done(Contract):
    text: str


class Work(Contract, channel="opstest.work", reply=Done):
    text: str


@service.consumes("opstest.work")
async def work(message: Work) -> Done:
    if message.text == "boom":
        raise RuntimeError("asked to fail")
    return Done(text=message.text.upper())
