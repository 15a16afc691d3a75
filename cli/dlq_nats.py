"""``svc dlq`` on NATS: a dead-letter channel's JetStream stream, read and changed by sequence.

A durable channel ``C``'s letters wait on ``C.dlq`` (by default), itself durable:
the stream ``<prefix>_dur_C:dlq``. Letters are read by sequence number
(get-message: nothing is consumed), so listing twice shows the same letters; a
letter's position in its id is its stream sequence (``orders.place.dlq:12``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .app import fail
from .dlq_letters import LIMIT, Letter, parse_letter, split_id

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from svcbus.layers.nats import NatsLayer


class NatsDeadLetters:
    """The dead-letter streams of one NATS layer."""

    def __init__(self, layer: NatsLayer) -> None:
        self.layer = layer

    async def js(self) -> JetStreamContext:
        return (await self.layer.conn.client()).jetstream()

    async def exists(self, channel: str) -> bool:
        """Whether durable ``channel`` has its stream on the server."""
        import nats.js.errors

        try:
            await (await self.js()).stream_info(self.layer.durable.stream(channel))
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def letters(self, dead_letter: str, limit: int = LIMIT) -> list[Letter]:
        """The letters waiting on ``dead_letter``, oldest first, without consuming them."""
        js = await self.js()
        state = (await js.stream_info(self.layer.durable.stream(dead_letter))).state
        found: list[Letter] = []
        for seq in range(state.first_seq, state.last_seq + 1):
            if state.messages == 0 or len(found) >= limit:
                break
            letter = await self._at(dead_letter, seq)
            if letter is not None:
                found.append(letter)
        return found

    async def get(self, dead_letter: str, position: str) -> Letter | None:
        """The letter at stream sequence ``position``, or None (replayed, purged, deleted)."""
        if not position.isdigit():
            fail(
                f"{dead_letter}:{position} is not a NATS dead-letter id; they end in the "
                "letter's stream sequence, like orders.place.dlq:12"
            )
        return await self._at(dead_letter, int(position))

    async def _at(self, dead_letter: str, seq: int) -> Letter | None:
        import nats.js.errors

        js = await self.js()
        try:
            msg = await js.get_msg(self.layer.durable.stream(dead_letter), seq)
        except nats.js.errors.NotFoundError:
            return None
        stored = getattr(msg, "time", None)
        return parse_letter(dead_letter, str(seq), msg.data or b"", stored)

    async def replay(self, letter: Letter) -> None:
        """Send the letter's original message back to its channel, then delete the letter."""
        data = letter.payload.encode()
        if await self.exists(letter.channel):
            # The stored original's id may still be in the duplicate window: a replay id
            # of its own, so a replay retried after a lost answer is still stored once.
            js = await self.js()
            await js.publish(
                self.layer.durable.subject(letter.channel),
                data,
                stream=self.layer.durable.stream(letter.channel),
                headers={"Nats-Msg-Id": f"replay:{letter.id}"},
            )
        else:
            await self.layer.send(letter.channel, data)
        dead_letter, seq = split_id(letter.id)
        await (await self.js()).delete_msg(self.layer.durable.stream(dead_letter), int(seq))

    async def purge(self, dead_letter: str) -> int:
        """Delete every letter on ``dead_letter``; how many there were."""
        js = await self.js()
        stream = self.layer.durable.stream(dead_letter)
        waiting = (await js.stream_info(stream)).state.messages
        await js.purge_stream(stream)
        return int(waiting)
