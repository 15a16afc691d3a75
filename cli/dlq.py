"""``svc dlq``: list, show, replay and purge the dead letters of durable channels.

A durable channel's dead letters wait on its dead-letter channel (``C.dlq`` by
default), itself durable: on NATS the JetStream stream ``<prefix>_dur_C:dlq``.
These commands read that stream by sequence number (get-message, nothing is
consumed), so listing twice shows the same letters; ``replay`` publishes the
letter's original message back to its channel, then deletes the letter by
sequence; ``purge`` empties the stream.

A letter's id is ``<dead-letter channel>:<stream sequence>`` (``:`` never
appears in a channel name), so ``svc dlq show`` needs no channel argument.

memory:// lives inside one process, so there is nothing to reach from another
one; Redis durable channels are not built yet.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import anyio
import typer
from rich.table import Table

from svcbus.durable import DEAD_LETTER_SUFFIX
from svcbus.errors import SvcbusError

from .app import LayerOption, check_channel, fail, layer_url, out

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from svcbus.layers.nats import NatsLayer

dlq_app = typer.Typer(
    help="Dead letters of durable channels: list, show, replay, purge.", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
LIMIT = 1000
"""Letters ``list`` and ``replay --all`` read at most per call."""


@dataclass
class Letter:
    """One dead letter as stored: where it waits, and what the runtime wrote into it."""

    id: str
    channel: str
    """The channel the message was sent to (where ``replay`` sends it back)."""
    reason: str
    attempts: int | None
    error_type: str | None
    time: str
    message_id: str | None
    truncated: bool
    payload: str


def letter_id(dead_letter: str, seq: int) -> str:
    """The id ``svc dlq show`` takes: ``<dead-letter channel>:<stream sequence>``."""
    return f"{dead_letter}:{seq}"


def split_id(letter: str) -> tuple[str, int]:
    """``(dead-letter channel, sequence)`` of an id made by :func:`letter_id`."""
    channel, sep, seq = letter.rpartition(":")
    if not sep or not seq.isdigit():
        fail(f"{letter!r} is not a dead-letter id; ids look like orders.place.dlq:12")
    check_channel(channel)
    return channel, int(seq)


def parse_letter(dead_letter: str, seq: int, data: bytes, stored: datetime | None) -> Letter:
    """A :class:`Letter` from a stored message (a ``DeadLetter`` envelope)."""
    try:
        body: dict[str, Any] = json.loads(data)["b"]
    except (ValueError, KeyError, TypeError):
        body = {
            "channel": "?",
            "reason": "not a dead letter",
            "payload": data.decode(errors="replace"),
        }
    return Letter(
        id=letter_id(dead_letter, seq),
        channel=str(body.get("channel", "?")),
        reason=str(body.get("reason", "")),
        attempts=body.get("attempts"),
        error_type=body.get("error_type"),
        time=stored.isoformat(timespec="seconds") if stored else "",
        message_id=body.get("message_id"),
        truncated=bool(body.get("truncated", False)),
        payload=str(body.get("payload", "")),
    )


def nats_only(url: str) -> None:
    """Fail with the reason unless ``url`` is a NATS layer."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        fail(
            "memory:// lives inside one process: its dead letters are only reachable from that "
            "process (bus.layer.receive_durable('<channel>.dlq', n)); svc dlq reads nats:// servers"
        )
    if scheme.startswith("redis"):
        fail(
            "svc dlq is not available on redis:// yet: read a dead-letter channel's stream "
            "with redis-cli (XRANGE <prefix>:d:<channel>.dlq - +) meanwhile"
        )
    if scheme not in ("nats", "tls"):
        fail(f"svc dlq reads nats:// layers, not {scheme}://")


class DeadLetters:
    """The dead-letter streams of one NATS layer, read and changed by sequence number."""

    def __init__(self, layer: NatsLayer) -> None:
        self.layer = layer

    async def js(self) -> JetStreamContext:
        return (await self.layer.conn.client()).jetstream()

    async def resolve(self, channel: str) -> str:
        """The dead-letter channel meant: ``channel.dlq`` when it exists, else ``channel``.

        So a durable channel's own name finds its letters (its stream exists too).
        """
        own = channel.endswith(DEAD_LETTER_SUFFIX)
        for candidate in (channel,) if own else (channel + DEAD_LETTER_SUFFIX, channel):
            if await self.exists(candidate):
                return candidate
        fail(f"no durable dead-letter channel {channel!r} (nor {channel + DEAD_LETTER_SUFFIX!r})")

    async def exists(self, channel: str) -> bool:
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
            letter = await self.get(dead_letter, seq)
            if letter is not None:
                found.append(letter)
        return found

    async def get(self, dead_letter: str, seq: int) -> Letter | None:
        """The letter at ``seq``, or None when there is none (replayed, purged, deleted)."""
        import nats.js.errors

        js = await self.js()
        try:
            msg = await js.get_msg(self.layer.durable.stream(dead_letter), seq)
        except nats.js.errors.NotFoundError:
            return None
        return parse_letter(dead_letter, seq, msg.data or b"", getattr(msg, "time", None))

    async def replay(self, letter: Letter) -> None:
        """Send the letter's original message back to its channel, then delete the letter."""
        if letter.truncated:
            fail(f"{letter.id} holds only the start of its message (truncated): not replayed")
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
        await (await self.js()).delete_msg(self.layer.durable.stream(dead_letter), seq)

    async def purge(self, dead_letter: str) -> int:
        """Delete every letter on ``dead_letter``; how many there were."""
        js = await self.js()
        stream = self.layer.durable.stream(dead_letter)
        waiting = (await js.stream_info(stream)).state.messages
        await js.purge_stream(stream)
        return int(waiting)


async def _with_letters(url: str, work: Any) -> Any:
    """Run ``work(DeadLetters)`` on a connected NATS layer of ``url``."""
    from svcbus import open_layer

    layer = open_layer(url)
    await layer.connect()
    try:
        return await work(DeadLetters(layer))  # type: ignore[arg-type]
    finally:
        await layer.close()


def _run(layer: str | None, work: Any) -> Any:
    url = layer_url(layer, across_processes=True)
    nats_only(url)
    try:
        return anyio.run(_with_letters, url, work)
    except SvcbusError as exc:
        fail(str(exc))


@dlq_app.command("list")
def list_letters(
    channel: Annotated[str, typer.Argument(help="Dead-letter channel (or its durable channel).")],
    layer: LayerOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the dead letters waiting on a dead-letter channel (nothing is consumed)."""
    check_channel(channel)

    async def work(letters: DeadLetters) -> list[Letter]:
        return await letters.letters(await letters.resolve(channel))

    found: list[Letter] = _run(layer, work)
    if as_json:
        out.print_json(json.dumps([asdict(letter) for letter in found]))
        return
    table = Table("id", "channel", "reason", "attempts", "error", "time", title=channel)
    for letter in found:
        attempts = "" if letter.attempts is None else str(letter.attempts)
        table.add_row(
            letter.id, letter.channel, letter.reason, attempts, letter.error_type or "", letter.time
        )
    out.print(table if found else f"no dead letters on {channel}")


@dlq_app.command("show")
def show(
    letter_id: Annotated[str, typer.Argument(metavar="ID", help="A dead-letter id from list.")],
    layer: LayerOption = None,
) -> None:
    """Show one dead letter with its original message."""
    dead_letter, seq = split_id(letter_id)

    async def work(letters: DeadLetters) -> Letter | None:
        return await letters.get(dead_letter, seq)

    found: Letter | None = _run(layer, work)
    if found is None:
        fail(f"no dead letter {letter_id} (replayed, purged or never there)")
    out.print_json(json.dumps(asdict(found)))


@dlq_app.command("replay")
def replay(
    channel: Annotated[str, typer.Argument(help="Dead-letter channel (or its durable channel).")],
    letter_id: Annotated[str | None, typer.Option("--id", help="Replay this letter.")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every letter.")] = False,
    layer: LayerOption = None,
) -> None:
    """Send dead letters' original messages back to their channels, then remove the letters."""
    check_channel(channel)
    if (letter_id is None) == (not replay_all):
        fail("give either --id ID or --all")

    async def work(letters: DeadLetters) -> int:
        dead_letter = await letters.resolve(channel)
        if letter_id is not None:
            named, seq = split_id(letter_id)
            one = await letters.get(named, seq) if named == dead_letter else None
            if one is None:
                fail(f"no dead letter {letter_id} on {dead_letter}")
            chosen = [one]
        else:
            chosen = await letters.letters(dead_letter)
        for letter in chosen:
            await letters.replay(letter)
        return len(chosen)

    replayed: int = _run(layer, work)
    out.print(f"replayed {replayed} dead letter{'s' if replayed != 1 else ''}")


@dlq_app.command("purge")
def purge(
    channel: Annotated[str, typer.Argument(help="Dead-letter channel (or its durable channel).")],
    layer: LayerOption = None,
) -> None:
    """Delete every dead letter waiting on a dead-letter channel."""
    check_channel(channel)

    async def work(letters: DeadLetters) -> int:
        return await letters.purge(await letters.resolve(channel))

    purged: int = _run(layer, work)
    out.print(f"purged {purged} dead letter{'s' if purged != 1 else ''}")


def register(app: typer.Typer) -> None:
    """Add ``svc dlq`` to ``svc``."""
    app.add_typer(dlq_app, name="dlq")
