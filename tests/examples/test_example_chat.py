"""The chat service under the test harness: rooms, history, validation, presence, events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import pytest
from example_support import FakeSocket

from contracts.chat import MAX_HISTORY, ChatPosted, HistoryQuery, HistoryReply, RoomLeft
from services.example_chat import consumers
from services.example_chat.rooms import Rooms
from svcbus import Bus
from svcbus.edge import Accept, Close
from svcbus.testing import Harness, harness

pytestmark = pytest.mark.anyio


@pytest.fixture
async def chat(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    """The chat service with empty rooms, on a private memory hub."""
    monkeypatch.setattr(consumers, "rooms", Rooms())
    async with harness(consumers.service, concurrency=1) as h:
        yield h


async def joined(bus: Bus, room: str, nick: str) -> tuple[FakeSocket, dict]:
    """A socket accepted into ``room``, and its welcome frame."""
    sock = await FakeSocket.open(bus, room, nick)
    accept = await sock.reply()
    assert isinstance(accept, Accept)
    assert accept.groups == [f"room.{room}", f"stats.{room}"]
    welcome = await sock.frame()
    assert welcome["type"] == "welcome"
    return sock, welcome


async def test_two_sockets_in_a_room_exchange_messages_and_others_see_nothing(
    chat: Harness,
) -> None:
    ada, welcome = await joined(chat.bus, "lobby", "ada")
    assert welcome == {
        "type": "welcome",
        "room": "lobby",
        "nick": "ada",
        "history": [],
        "users": ["ada"],
    }
    bob, welcome = await joined(chat.bus, "lobby", "bob")
    assert welcome["users"] == ["ada", "bob"]
    eve, _ = await joined(chat.bus, "elsewhere", "eve")
    assert (await ada.frames_of("joined"))[0] == {
        "type": "joined",
        "nick": "bob",
        "users": ["ada", "bob"],
    }

    await ada.post("hello bob")
    for sock in (ada, bob):
        (message,) = await sock.frames_of("message")
        assert (message["room"], message["nick"], message["text"]) == ("lobby", "ada", "hello bob")
    await bob.post("hi ada")
    assert (await ada.frames_of("message"))[0]["text"] == "hi ada"

    assert await eve.quiet() == []


async def test_posts_are_published_as_chat_posted_events(chat: Harness) -> None:
    ada, _ = await joined(chat.bus, "lobby", "ada")
    await ada.post("  spaced out  ")
    with anyio.fail_after(3):
        event = (await chat.bus.receive("chat.posted")).b
    assert isinstance(event, ChatPosted)
    assert (event.room, event.nick, event.text) == ("lobby", "ada", "spaced out")
    assert (await ada.frames_of("message"))[0]["id"] == event.id


async def test_a_newcomer_gets_the_last_50_messages_and_history_answers_too(
    chat: Harness,
) -> None:
    ada, _ = await joined(chat.bus, "lobby", "ada")
    for n in range(MAX_HISTORY + 5):
        await ada.post(f"message {n}")
    await ada.frames_of("message", MAX_HISTORY + 5)  # all handled

    _, welcome = await joined(chat.bus, "lobby", "bob")
    texts = [m["text"] for m in welcome["history"]]
    assert texts == [f"message {n}" for n in range(5, MAX_HISTORY + 5)]

    reply = await chat.request("chat.history", HistoryQuery(room="lobby", limit=3))
    assert isinstance(reply, HistoryReply)
    assert [m.text for m in reply.messages] == ["message 52", "message 53", "message 54"]
    empty = await chat.request("chat.history", HistoryQuery(room="nobody-here"))
    assert empty.messages == []


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("{not json", "not JSON"),
        (json.dumps({"text": ""}), "the message is empty"),
        (json.dumps({"text": "   \n "}), "the message is empty"),
        (json.dumps({"text": "x" * 501}), "longer than 500 characters"),
        (json.dumps({"text": 42}), "must be a string"),
        (json.dumps({"txt": "typo"}), "unexpected field"),
        (json.dumps(["text", "hi"]), "JSON object"),
        (json.dumps({}), "JSON object"),
        (None, "send text frames"),  # a binary frame
    ],
)
async def test_invalid_posts_get_an_error_frame_to_the_sender_only(
    chat: Harness, frame: str | None, error: str
) -> None:
    ada, _ = await joined(chat.bus, "lobby", "ada")
    bob, _ = await joined(chat.bus, "lobby", "bob")
    await ada.frames_of("joined")

    await ada.send_text(frame, binary=b"\x00\x01" if frame is None else None)
    (reply,) = await ada.frames_of("error")
    assert error in reply["error"]
    assert await bob.quiet() == []
    assert await chat.request("chat.history", HistoryQuery(room="lobby")) == HistoryReply(
        room="lobby", messages=[]
    )
    # the sender is still in the room and can post
    await ada.post("after the error")
    assert (await bob.frames_of("message"))[0]["text"] == "after the error"


async def test_html_stays_text(chat: Harness) -> None:
    ada, _ = await joined(chat.bus, "lobby", "ada")
    script = '<script>window.__pwned = 1</script><img src=x onerror="alert(1)">'
    await ada.post(script)
    assert (await ada.frames_of("message"))[0]["text"] == script


@pytest.mark.parametrize(
    ("room", "nick", "error"),
    [
        ("Lobby", "ada", "room names"),
        ("-x", "ada", "room names"),
        ("lobby", "", "nickname"),
        ("lobby", "   ", "nickname"),
        ("lobby", "x" * 25, "nickname"),
        ("lobby", "bad\x1b[31mnick", "nickname"),
    ],
)
async def test_a_bad_room_or_nick_is_refused_with_a_reason(
    chat: Harness, room: str, nick: str, error: str
) -> None:
    sock = await FakeSocket.open(chat.bus, room, nick)
    frame = json.loads((await sock.reply()).text)
    assert frame["type"] == "error" and error in frame["error"]
    closed = await sock.reply()
    assert isinstance(closed, Close) and closed.code == consumers.BAD_REQUEST
    assert consumers.rooms.member(sock.reply_channel) is None


async def test_leaving_is_announced_to_the_room_and_published(chat: Harness) -> None:
    ada, _ = await joined(chat.bus, "lobby", "ada")
    bob, _ = await joined(chat.bus, "lobby", "bob")
    await bob.close()
    left = (await ada.frames_of("left"))[0]
    assert left == {"type": "left", "nick": "bob", "users": ["ada"]}
    with anyio.fail_after(3):
        events = [
            (await chat.bus.receive(c)).b for c in ("chat.joined", "chat.joined", "chat.left")
        ]
    assert [e.online for e in events] == [1, 2, 1]
    assert isinstance(events[2], RoomLeft) and events[2].nick == "bob"


async def test_the_chat_goes_on_when_nobody_consumes_its_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # chat.posted holds one event; later posts cannot be published (no stats
    # service), but they still reach the room.
    monkeypatch.setattr(consumers, "rooms", Rooms())
    async with harness(
        consumers.service, channel_capacity={"chat.posted": 1, "chat.joined": 1}
    ) as chat:
        ada, _ = await joined(chat.bus, "lobby", "ada")
        for n in range(3):
            await ada.post(f"post {n}")
        texts = [m["text"] for m in await ada.frames_of("message", 3)]
        assert texts == ["post 0", "post 1", "post 2"]


def test_rooms_are_bounded_and_occupied_rooms_stay() -> None:
    rooms = Rooms(max_rooms=3)
    rooms.join("edge.a!1", "busy", "ada")
    for n in range(5):
        member = rooms.join(f"edge.b!{n}", f"room-{n}", "bob")
        rooms.post(rooms.member(f"edge.b!{n}") or member, "hi")  # type: ignore[arg-type]
        rooms.leave(f"edge.b!{n}")
    assert rooms.member("edge.a!1") is not None
    assert rooms.history("room-4") and not rooms.history("room-0")
    assert "busy" in rooms._rooms and len(rooms._rooms) <= 3
