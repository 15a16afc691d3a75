"""A tiny service for CLI tests: `svc run cli.echo_service` (from tests/)."""

from __future__ import annotations

from svcbus import Contract, consumes


class Shout(Contract):
    text: str


class Say(Contract, channel="clitest.say", reply=Shout):
    text: str


@consumes("clitest.say")
async def say(message: Say) -> Shout:
    return Shout(text=message.text.upper())
