"""The chat service: WebSocket rooms behind the edge.

The edge turns ``/chat/{room}?nick=...`` sockets into ``chat.connect``,
``chat.receive`` and ``chat.disconnect`` messages. This service accepts a
socket into its room's group, fans posts out to the room, keeps each room's
last 50 messages for newcomers, and publishes ``chat.posted``,
``chat.joined`` and ``chat.left`` for the stats service (or anyone else).
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from contracts.chat import ChatPosted, HistoryQuery, HistoryReply, RoomJoined, RoomLeft
from contracts.stats import stats_group
from svcbus import ChannelFull, Context, Contract, Service
from svcbus.edge import Accept, Close, WebSocketConnect, WebSocketDisconnect, WebSocketReceive

from . import frames
from .rooms import Member, Rooms

log = logging.getLogger("services.example_chat")

BAD_REQUEST = 4400
"""Close code for a connection whose room or nickname is invalid (4000-4999: application)."""

service = Service(
    "chat",
    description="WebSocket chat rooms behind the edge: puts each socket in its room's group, "
    "fans posts out, keeps each room's last 50 messages for newcomers, publishes chat events.",
)
rooms = Rooms()
"""This process's rooms (tests may replace it with a fresh ``Rooms()``)."""


def room_group(room: str) -> str:
    """The group of every socket in ``room``: posts and presence go there."""
    return f"room.{room}"


async def publish(ctx: Context, channel: str, event: Contract) -> None:
    """Send an event for other services; a full channel drops it (at-most-once)."""
    try:
        await ctx.send(channel, event)
    except ChannelFull:
        # Nobody is consuming (the stats service is down) or it lags behind:
        # the chat itself must go on, so the event is lost, not retried.
        log.warning("%s is full; event dropped (is the stats service running?)", channel)


@service.consumes("chat.connect", produces=["chat.joined"])
async def connect(msg: WebSocketConnect, ctx: Context) -> None:
    """Accept the socket into its room, greet it with the history, tell the room."""
    try:
        hello = frames.Hello(room=str(msg.params.get("room", "")), nick=msg.query.get("nick", ""))
    except ValidationError as exc:
        # Accept (implicitly, by sending) before closing so the page can show why:
        # a refused handshake only tells a browser "403".
        await ctx.send(msg.reply_channel, frames.error(frames.explain(exc)))
        await ctx.send(msg.reply_channel, Close(code=BAD_REQUEST, reason="invalid room or nick"))
        return
    room = rooms.join(msg.reply_channel, hello.room, hello.nick)
    # The edge joins the groups before it completes the handshake, so nothing
    # sent to the room after this Accept is missed by the newcomer.
    await ctx.send(
        msg.reply_channel, Accept(groups=[room_group(room.name), stats_group(room.name)])
    )
    await ctx.send(
        msg.reply_channel, frames.welcome(room.name, hello.nick, list(room.history), room.nicks)
    )
    await ctx.group_send(room_group(room.name), frames.presence("joined", hello.nick, room.nicks))
    await publish(
        ctx,
        "chat.joined",
        RoomJoined(room=room.name, nick=hello.nick, online=len(room.members), at=rooms.stamp()),
    )


# One worker: posts of a room reach the history, the room and chat.posted in
# the order the edge forwarded them.
@service.consumes("chat.receive", concurrency=1, produces=["chat.posted"])
async def receive(msg: WebSocketReceive, ctx: Context) -> None:
    """Validate a post and fan it out; anything invalid earns an error frame to its sender only."""
    member = rooms.member(msg.reply_channel)
    if member is None:
        # The chat service restarted since this socket connected: its room is unknown.
        await ctx.send(msg.reply_channel, frames.error("you are not in a room; reconnect"))
        return
    if msg.text is None:
        await ctx.send(msg.reply_channel, frames.error('send text frames: {"text": "..."}'))
        return
    try:
        post = frames.PostFrame.model_validate_json(msg.text)
    except ValidationError as exc:
        await ctx.send(msg.reply_channel, frames.error(frames.explain(exc)))
        return
    await post_message(ctx, member, post.text)


async def post_message(ctx: Context, member: Member, text: str) -> ChatPosted:
    """Store a valid post, send it to the room, publish ``chat.posted``."""
    posted = rooms.post(member, text)
    await ctx.group_send(room_group(member.room), frames.message(posted))
    await publish(ctx, "chat.posted", posted)
    return posted


@service.consumes("chat.disconnect", produces=["chat.left"])
async def disconnect(msg: WebSocketDisconnect, ctx: Context) -> None:
    """Tell the room who left (the edge has already taken the socket out of its groups)."""
    member = rooms.leave(msg.reply_channel)
    if member is None:
        return  # refused at connect, or already gone
    room = rooms.room(member.room)
    await ctx.group_send(room_group(room.name), frames.presence("left", member.nick, room.nicks))
    await publish(
        ctx,
        "chat.left",
        RoomLeft(room=room.name, nick=member.nick, online=len(room.members), at=rooms.stamp()),
    )


@service.consumes("chat.history")
async def history(query: HistoryQuery) -> HistoryReply:
    """A room's latest messages (``GET /api/history/{room}`` through the edge)."""
    return HistoryReply(room=query.room, messages=rooms.history(query.room, query.limit))
