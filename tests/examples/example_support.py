"""Helpers of the example-system tests: a fake edge socket for the harness, and processes.

Unit tests run one service under ``svcbus.testing.harness`` and talk to it
the way the edge does (:class:`FakeSocket`). Integration, browser and CLI
tests start ``svc`` subprocesses from the repository root and stop exactly
those (:class:`Processes`).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx

from svcbus import Bus
from svcbus.edge import Accept, Close, EdgeReply, Send, WebSocketConnect, WebSocketReceive

ROOT = Path(__file__).resolve().parents[2]
SVC = [sys.executable, "-m", "svcbus.cli"]
URL_LINE = re.compile(r"http://\S+")


# -- a socket as the edge would hold it, for harness tests ---------------------------


class FakeSocket:
    """One "browser connection" made by hand: what the edge does, minus the network.

    It sends ``chat.connect`` / ``chat.receive`` / ``chat.disconnect`` like the
    edge and applies ``Accept`` by joining the groups, so ``group_send`` to the
    room reaches it.
    """

    def __init__(self, bus: Bus, reply_channel: str, room: str) -> None:
        self.bus = bus
        self.reply_channel = reply_channel
        self.room = room
        self.order = 0
        self.accepted: Accept | None = None
        self.closed: Close | None = None

    @classmethod
    async def open(cls, bus: Bus, room: str, nick: str) -> FakeSocket:
        """Connect to ``room`` as ``nick``; returns once accepted or closed."""
        sock = cls(bus, await bus.new_channel("edge"), room)
        await bus.send(
            "chat.connect",
            WebSocketConnect(
                reply_channel=sock.reply_channel,
                path=f"/chat/{room}",
                params={"room": room},
                query={"nick": nick},
            ),
        )
        return sock

    async def reply(self, timeout: float = 3.0) -> Any:
        """The next message the service sent to this socket (Accept, Send, Close...)."""
        with anyio.fail_after(timeout):
            envelope = await self.bus.receive(self.reply_channel, EdgeReply)
        reply = envelope.b
        if isinstance(reply, Accept):
            self.accepted = reply
            for group in reply.groups:
                await self.bus.group_add(group, self.reply_channel)
        elif isinstance(reply, Close):
            self.closed = reply
        return reply

    async def frame(self, timeout: float = 3.0) -> dict[str, Any]:
        """The next text frame as JSON (Accept is applied on the way)."""
        while True:
            reply = await self.reply(timeout)
            if isinstance(reply, Send):
                assert reply.text is not None
                return json.loads(reply.text)
            if isinstance(reply, Close):
                raise AssertionError(f"socket closed: {reply}")

    async def frames_of(self, kind: str, count: int = 1) -> list[dict[str, Any]]:
        """The next ``count`` frames of type ``kind``, skipping others."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            frame = await self.frame()
            if frame["type"] == kind:
                found.append(frame)
        return found

    async def quiet(self, seconds: float = 0.2) -> list[dict[str, Any]]:
        """Every frame that arrives within ``seconds`` (to show nothing else came)."""
        got: list[dict[str, Any]] = []
        with anyio.move_on_after(seconds):
            while True:
                got.append(await self.frame(timeout=seconds + 1))
        return got

    async def send_text(self, text: str | None, binary: bytes | None = None) -> None:
        """A frame from the "browser"."""
        self.order += 1
        await self.bus.send(
            "chat.receive",
            WebSocketReceive(
                reply_channel=self.reply_channel,
                path=f"/chat/{self.room}",
                params={"room": self.room},
                order=self.order,
                text=text,
                binary=binary,
            ),
        )

    async def post(self, text: str) -> None:
        """Post ``text`` the way the page does."""
        await self.send_text(json.dumps({"text": text}))

    async def close(self) -> None:
        """The "browser" went away: the edge leaves the groups and tells the service."""
        from svcbus.edge import WebSocketDisconnect

        for group in self.accepted.groups if self.accepted else ():
            await self.bus.group_discard(group, self.reply_channel)
        self.order += 1
        await self.bus.send(
            "chat.disconnect",
            WebSocketDisconnect(
                reply_channel=self.reply_channel,
                path=f"/chat/{self.room}",
                params={"room": self.room},
                order=self.order,
            ),
        )


# -- processes -------------------------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolated(url: str) -> str:
    """``url`` with a key/subject prefix of its own, so tests sharing a server never meet."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}prefix=t{uuid.uuid4().hex[:10]}"


class Processes:
    """``svc`` subprocesses started by one test; each is stopped by its own Popen handle."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[str]]] = []

    def start(self, name: str, *args: str, cwd: Path = ROOT) -> subprocess.Popen[str]:
        """Run ``svc ARGS`` with stdout piped (for the URL line) and stderr to a log file."""
        env = {k: v for k, v in os.environ.items() if k != "SVCBUS_LAYER"}
        log = (self.logs / f"{name}.log").open("w")
        process = subprocess.Popen(
            [*SVC, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        self.started.append((name, process))
        return process

    def log(self, name: str) -> str:
        """What the process ``name`` wrote to stderr so far."""
        return (self.logs / f"{name}.log").read_text()

    def stop(self, process: subprocess.Popen[str], timeout: float = 10.0) -> int:
        """SIGTERM, wait; SIGKILL only if it does not stop in time. Returns the exit code."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    def stop_all(self) -> None:
        """Stop every process this test started, last first."""
        for _, process in reversed(self.started):
            self.stop(process)

    def describe(self) -> str:
        """The logs of every process, for failure messages."""
        return "\n".join(f"--- {name} ---\n{self.log(name)}" for name, _ in self.started)


def read_url(process: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """The ``http://...`` URL ``svc demo`` prints on stdout once it serves."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put("")  # end of output

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if not line:
            break
        found = URL_LINE.search(line)
        if found:
            return found.group(0)
    raise AssertionError(f"svc demo printed no URL within {timeout}s (exit {process.poll()})")


def wait_for_http(url: str, process: subprocess.Popen[str], timeout: float = 20.0) -> None:
    """Poll ``url`` until it answers 200 (the process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} while waiting")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return
            last = response.status_code
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200 within {timeout}s (last: {last!r})")
