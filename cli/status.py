"""``svc status``: what is on the bus now: channel backlogs, consumers, groups, processes.

It asks the broker directly, read-only, with its own short-lived connection,
in the layer's key/stream layout (see the layer modules' docstrings):

* Redis: named channels are lists ``{prefix}:c:NAME`` (waiting = LLEN), group
  members are the sorted sets ``{prefix}:gn:NAME`` (named channels) plus the
  processes subscribed to ``{prefix}:g:NAME``, and every layer instance (a
  process) listens on its control channel ``{prefix}:ctl:TOKEN``.
* NATS: a named channel's waiting messages are in the JetStream stream
  ``{prefix}_ch_NAME`` (live deliveries never wait); group membership lives in
  the member processes, so the server cannot list it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import typer

from svcbus.errors import ConfigurationError, SvcbusError

from .app import LayerOption, fail, layer_url, out


@dataclass
class Status:
    """A snapshot of one layer's server."""

    layer: str
    channels: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    processes: int | None = None
    notes: list[str] = field(default_factory=list)


def status(
    layer: LayerOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")] = False,
) -> None:
    """Show channels (waiting messages, consumers), groups (members) and processes on a layer."""
    from svcbus.layer import split_options

    url = layer_url(layer, across_processes=True)
    scheme = urlsplit(url).scheme.lower()
    try:
        _, params = split_options(url)
        prefix = params.get("prefix", "svcbus")
        bare = urlunsplit(urlsplit(url)._replace(query=""))
        if scheme.startswith("redis"):
            snapshot = anyio.run(_redis, url, bare, prefix)
        elif scheme in ("nats", "tls"):
            snapshot = anyio.run(_nats, url, bare, prefix)
        elif scheme == "memory":
            fail("memory:// lives inside one process; svc status reads nats:// or redis:// servers")
        else:
            raise ConfigurationError(f"unknown layer URL {url!r}: use nats:// or redis://")
    except SvcbusError as exc:
        fail(str(exc))
    except ImportError as exc:
        fail(f"svc status on {scheme}:// needs {exc.name}: pip install 'svcbus[{scheme[:5]}]'")
    except OSError as exc:
        fail(f"cannot reach {bare}: {exc}; is the server running and the URL right?")
    if as_json:
        out.print_json(json.dumps(asdict(snapshot)))
        return
    _print(snapshot)


async def _redis(url: str, bare: str, prefix: str) -> Status:
    import redis.asyncio as redis_asyncio

    snapshot = Status(layer=url)
    client = redis_asyncio.from_url(bare, socket_connect_timeout=3)
    try:
        async for key in client.scan_iter(match=f"{prefix}:c:*", count=500):
            name = key.decode().split(":c:", 1)[1]
            snapshot.channels.append({"channel": name, "waiting": await client.llen(key)})
        groups: dict[str, dict[str, Any]] = {}
        async for key in client.scan_iter(match=f"{prefix}:gn:*", count=500):
            name = key.decode().split(":gn:", 1)[1]
            groups.setdefault(name, {"group": name, "channels": 0, "processes": 0})
            groups[name]["channels"] = await client.zcard(key)
        for channel in await client.pubsub_channels(f"{prefix}:g:*"):
            text = channel.decode() if isinstance(channel, bytes) else channel
            name = text.split(":g:", 1)[1]
            groups.setdefault(name, {"group": name, "channels": 0, "processes": 0})
            groups[name]["processes"] = dict(await client.pubsub_numsub(channel)).get(channel, 0)
        snapshot.groups = sorted(groups.values(), key=lambda g: g["group"])
        snapshot.processes = len(await client.pubsub_channels(f"{prefix}:ctl:*"))
        snapshot.notes.append(
            "Redis: consumers of a channel wait in blocking pops the server does not name; "
            "group 'channels' are named-channel members, 'processes' hold socket members"
        )
    finally:
        await client.aclose()
    snapshot.channels.sort(key=lambda c: c["channel"])
    return snapshot


async def _nats(url: str, bare: str, prefix: str) -> Status:
    import nats

    snapshot = Status(layer=url)
    nc = await nats.connect(servers=[bare], connect_timeout=3, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        head = f"{prefix}_ch_"
        for info in await js.streams_info():
            name = info.config.name or ""
            if not name.startswith(head):
                continue
            snapshot.channels.append(
                {
                    "channel": name[len(head) :].replace(":", "."),
                    "waiting": info.state.messages,
                    "consumers": info.state.consumer_count,
                }
            )
        snapshot.notes.append(
            "NATS: 'waiting' counts messages in the channel's stream (sent while no consumer "
            "listened); live consumers are core subscriptions, and group membership lives in "
            "the member processes, so neither is listed here"
        )
    finally:
        await nc.close()
    snapshot.channels.sort(key=lambda c: c["channel"])
    return snapshot


def _print(snapshot: Status) -> None:
    from rich.markup import escape
    from rich.table import Table

    out.print(f"[bold]{escape(snapshot.layer)}[/]", highlight=False)
    channels = Table(title="Channels", title_justify="left")
    columns = ["channel", "waiting"] + (
        ["consumers"] if any("consumers" in c for c in snapshot.channels) else []
    )
    for column in columns:
        channels.add_column(column.capitalize(), justify="left" if column == "channel" else "right")
    for row in snapshot.channels:
        channels.add_row(*(escape(str(row.get(c, ""))) for c in columns))
    out.print(channels if snapshot.channels else "no channels with waiting messages")
    if snapshot.groups:
        groups = Table(title="Groups", title_justify="left")
        for column in ("Group", "Channels", "Processes"):
            groups.add_column(column, justify="left" if column == "Group" else "right")
        for row in snapshot.groups:
            groups.add_row(escape(row["group"]), str(row["channels"]), str(row["processes"]))
        out.print(groups)
    if snapshot.processes is not None:
        out.print(f"processes connected: {snapshot.processes}", highlight=False)
    for note in snapshot.notes:
        out.print(f"[dim]{escape(note)}[/]", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``svc status`` to the ``svc`` command line."""
    app.command(name="status")(status)
