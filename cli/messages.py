"""``svc send``, ``svc request`` and ``svc tail``: poke the bus from a shell."""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio
import typer

from svcbus.errors import ConfigurationError, InvalidChannelName, MessageInvalid, SvcbusError
from svcbus.redact import redact_text

from .app import LayerOption, check_channel, fail, layer_url, out, parse_json, say

ImportOption = Annotated[
    list[str],
    typer.Option(
        "--import",
        "-i",
        help="Module whose contracts to load (repeatable), e.g. contracts.chat: the message "
        "is then validated here, before it is sent.",
    ),
]


def import_contracts(modules: list[str]) -> None:
    """Import modules so their contracts register; fail in one line if one is missing."""
    from svcbus.references import import_user_module

    for module in modules:
        try:
            import_user_module(module)
        except (ConfigurationError, ImportError) as exc:
            fail(f"--import {module}: {exc}")


def checked_message(channel: str, message: str, imports: list[str]) -> Any:
    """Parse the JSON argument and check it (and the channel) before connecting.

    With ``--import``, the channel's contract validates the message here, so a
    mistake is a one-line error instead of a message some consumer rejects.
    """
    from svcbus.contract import coerce, registry

    body = parse_json(message)
    check_channel(channel)
    import_contracts(imports)
    try:
        coerce(channel, body, registry.get(channel))
    except MessageInvalid as exc:
        fail(str(exc))
    return body


def send(
    channel: Annotated[str, typer.Argument(help="Channel to send on, e.g. chat.posted")],
    message: Annotated[str, typer.Argument(help='The message as JSON, e.g. \'{"room": "a"}\'')],
    layer: LayerOption = None,
    imports: ImportOption = [],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Send one message and print its id (validated first if its contract is imported)."""
    from svcbus import connect

    body = checked_message(channel, message, imports)

    async def go() -> str:
        async with connect(layer_url(layer, across_processes=True)) as bus:
            message_id = await bus.send(channel, body)
            await bus.layer.flush()
            return message_id

    try:
        say("", anyio.run(go), console=out)
    except SvcbusError as exc:
        fail(str(exc))


def request(
    channel: Annotated[str, typer.Argument(help="Request channel, e.g. stats.get")],
    message: Annotated[str, typer.Argument(help="The request as JSON")],
    layer: LayerOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.")] = 5.0,
    imports: ImportOption = [],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Send a request and print the reply as JSON (exit 1 on timeout or remote failure)."""
    from pydantic_core import to_json

    from svcbus import connect

    body = checked_message(channel, message, imports)

    async def go() -> Any:
        async with connect(layer_url(layer, across_processes=True)) as bus:
            return await bus.request(channel, body, timeout=timeout)

    try:
        reply = anyio.run(go)
    except (ConfigurationError, InvalidChannelName, MessageInvalid) as exc:
        fail(str(exc))
    except SvcbusError as exc:  # timeouts, remote failures: the request ran but failed
        say("[bold red]error:[/]", redact_text(str(exc)))
        raise typer.Exit(1) from None
    out.print_json(to_json(reply).decode())


def tail(
    target: Annotated[str, typer.Argument(help="Group to watch (or a channel, with --channel)")],
    channel: Annotated[
        bool,
        typer.Option(
            "--channel",
            help="TARGET is a named channel: consume from it. This TAKES the messages "
            "(other consumers of the channel will not see them).",
        ),
    ] = False,
    count: Annotated[int, typer.Option(min=0, help="Stop after N messages (0: never).")] = 0,
    layer: LayerOption = None,
) -> None:
    """Print messages as they arrive: join a group (default) or drain a channel."""
    from pydantic_core import to_json

    from svcbus import connect
    from svcbus.names import validate_channel, validate_group

    try:
        (validate_channel if channel else validate_group)(target)
    except InvalidChannelName as exc:
        fail(str(exc))

    async def go() -> None:
        seen = 0
        async with connect(layer_url(layer, across_processes=True)) as bus:
            source = target
            renew_at = 0.0
            if not channel:
                source = await bus.new_channel("tail")
            say("[green]svc tail[/]", f"{target}: waiting for messages (Ctrl-C stops)")
            while not count or seen < count:
                if not channel and time.monotonic() >= renew_at:
                    # Re-adding renews the membership before group_expiry ends it.
                    await bus.group_add(target, source)
                    renew_at = time.monotonic() + bus.layer.options.group_expiry / 2
                with anyio.move_on_after(
                    max(0.1, renew_at - time.monotonic()) if not channel else None
                ):
                    raw = await bus.layer.receive(source)
                    seen += 1
                    try:
                        envelope = bus.decode(source, raw)
                    except MessageInvalid as exc:
                        say("[yellow]undecodable:[/]", str(exc))
                        continue
                    stamp = time.strftime("%H:%M:%S", time.localtime(envelope.at / 1000))
                    kind = f"{envelope.ct} v{envelope.cv}" if envelope.ct else "untyped"
                    # print(), not rich: a message is data, its brackets are not markup.
                    print(
                        f"{stamp}.{envelope.at % 1000:03d} {kind} id={envelope.id} "
                        + to_json(envelope.b).decode(),
                        flush=True,
                    )
            if not channel:
                await bus.group_discard(target, source)

    try:
        anyio.run(go)
    except SvcbusError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    """Add the message commands to ``svc``."""
    app.command()(send)
    app.command()(request)
    app.command()(tail)
