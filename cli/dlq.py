"""``svc dlq``: list, show, replay and purge the dead letters of durable channels.

A durable channel's dead letters wait on its dead-letter channel (``C.dlq`` by
default), itself durable. These commands read it without consuming anything,
so listing twice shows the same letters; ``replay`` sends a letter's original
message back to its channel, then deletes the letter; ``purge`` empties the
dead-letter channel. The same commands and output on NATS (``dlq_nats.py``:
the JetStream stream, by sequence) and Redis (``dlq_redis.py``: the stream, by
entry id); a letter's id says where it waits (``dlq_letters.py``).

memory:// lives inside one process, so there is nothing another process (this
command) could reach: the command says so.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any
from urllib.parse import urlsplit

import anyio
import typer
from rich.table import Table

from svcbus.durable import DEAD_LETTER_SUFFIX
from svcbus.errors import SvcbusError

from .app import LayerOption, check_channel, fail, layer_url, out
from .dlq_letters import DeadLetterStore, Letter, split_id

dlq_app = typer.Typer(
    help="Dead letters of durable channels (nats:// and redis://): list, show, replay, purge.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]


def check_reachable(url: str) -> None:
    """Fail with the reason unless ``url`` is a layer another process can read letters from."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        fail(
            "memory:// lives inside one process: its dead letters are only reachable from that "
            "process (bus.layer.receive_durable('<channel>.dlq', n)); svc dlq reads nats:// and "
            "redis:// servers"
        )
    if scheme not in ("nats", "tls") and not scheme.startswith("redis"):
        fail(f"svc dlq reads nats:// and redis:// layers, not {scheme}://")


def store_of(layer: Any) -> DeadLetterStore:
    """The dead-letter store of a connected NATS or Redis layer."""
    if layer.system == "redis":
        from .dlq_redis import RedisDeadLetters

        return RedisDeadLetters(layer)
    from .dlq_nats import NatsDeadLetters

    return NatsDeadLetters(layer)


async def resolve(store: DeadLetterStore, channel: str) -> str:
    """The dead-letter channel meant: ``channel.dlq`` when it exists, else ``channel``.

    So a durable channel's own name finds its letters (it exists too).
    """
    own = channel.endswith(DEAD_LETTER_SUFFIX)
    for candidate in (channel,) if own else (channel + DEAD_LETTER_SUFFIX, channel):
        if await store.exists(candidate):
            return candidate
    fail(f"no durable dead-letter channel {channel!r} (nor {channel + DEAD_LETTER_SUFFIX!r})")


async def _with_letters(url: str, work: Any) -> Any:
    """Run ``work(store)`` on a connected layer of ``url``."""
    from svcbus import open_layer

    layer = open_layer(url)
    await layer.connect()
    try:
        return await work(store_of(layer))
    finally:
        await layer.close()


def _run(layer: str | None, work: Any) -> Any:
    url = layer_url(layer, across_processes=True)
    check_reachable(url)
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

    async def work(store: DeadLetterStore) -> list[Letter]:
        return await store.letters(await resolve(store, channel))

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
    dead_letter, position = split_id(letter_id)

    async def work(store: DeadLetterStore) -> Letter | None:
        return await store.get(dead_letter, position)

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

    async def work(store: DeadLetterStore) -> int:
        dead_letter = await resolve(store, channel)
        if letter_id is not None:
            named, position = split_id(letter_id)
            one = await store.get(named, position) if named == dead_letter else None
            if one is None:
                fail(f"no dead letter {letter_id} on {dead_letter}")
            chosen = [one]
        else:
            chosen = await store.letters(dead_letter)
        for letter in chosen:
            if letter.truncated:
                fail(f"{letter.id} holds only the start of its message (truncated): not replayed")
            await store.replay(letter)
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

    async def work(store: DeadLetterStore) -> int:
        return await store.purge(await resolve(store, channel))

    purged: int = _run(layer, work)
    out.print(f"purged {purged} dead letter{'s' if purged != 1 else ''}")


def register(app: typer.Typer) -> None:
    """Add ``svc dlq`` to ``svc``."""
    app.add_typer(dlq_app, name="dlq")
