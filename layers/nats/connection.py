"""The layer's one NATS connection: connecting, reconnecting, background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from svcbus.errors import LayerError
from svcbus.redact import redact_url

from .config import RECONNECT_WAIT
from .losses import Losses

log = logging.getLogger("svcbus.layers.nats")

Listener = Callable[[], Awaitable[None]]


class Connection:
    """A nats-py client made on first use, with the layer's reconnect policy.

    Parts of the layer register :attr:`on_disconnect` / :attr:`on_reconnect`
    listeners and run background work with :meth:`spawn`.
    """

    def __init__(
        self,
        servers: list[str],
        *,
        name: str,
        auth: dict[str, str | None],
        tls: ssl.SSLContext | None,
        tls_hostname: str | None,
        creds: str | None,
        connect_timeout: float,
        pending_msgs_limit: int,
        pending_bytes_limit: int,
        losses: Losses,
    ) -> None:
        self.servers = servers
        self.name = name
        self.connect_timeout = connect_timeout
        self.pending_msgs_limit = pending_msgs_limit
        self.pending_bytes_limit = pending_bytes_limit
        self.auth = auth
        self.tls = tls
        self._tls_hostname = tls_hostname
        self._creds = creds
        self._losses = losses
        self.nc: Client | None = None
        """The client once connected."""
        self.closed = False
        self.reply_root = ""
        """This connection's own inbox root (``_INBOX.<nuid>``)."""
        self.slow_consumer_drops = 0
        """Messages nats-py dropped because a subscription exceeded its pending limits."""
        self.setup: Callable[[Client], Awaitable[None]] | None = None
        """Run on the new client (subscriptions) before anyone else may use it."""
        self.on_disconnect: list[Listener] = []
        self.on_reconnect: list[Listener] = []
        self._lock: asyncio.Lock | None = None
        self._disconnected = False
        self._tasks: set[asyncio.Task[Any]] = set()

    async def subscribe(
        self,
        subject: str,
        handler: Callable[[Msg], Awaitable[None]],
        queue: str = "",
        nc: Client | None = None,
    ) -> Subscription:
        """Subscribe with the layer's pending limits (bounded memory per subscription).

        ``nc``: the client being set up (before :meth:`client` may hand it out).
        """
        nc = nc or await self.client()
        return await nc.subscribe(
            subject,
            queue=queue,
            cb=handler,
            pending_msgs_limit=self.pending_msgs_limit,
            pending_bytes_limit=self.pending_bytes_limit,
        )

    async def client(self) -> Client:
        """The connected client, connecting first if needed."""
        if self.nc is None:
            await self.open()
        assert self.nc is not None
        return self.nc

    async def open(self) -> None:
        """Connect to the first reachable server; :class:`LayerError` within the timeout."""
        if self.nc is not None:
            return
        if self.closed:
            raise LayerError("this NATS layer is closed; open a new one")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.nc is None:
                nc = await self._connect()
                self.reply_root = nc.new_inbox()
                if self.setup is not None:
                    await self.setup(nc)
                self.nc = nc  # only now: nobody uses it before its subscriptions exist

    async def _connect(self) -> Client:
        nc = Client()
        errors: list[BaseException] = []

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                self._slow_consumer(exc)
            else:
                errors.append(exc)
                log.debug("NATS connection error: %r", exc)

        where = ", ".join(redact_url(s) for s in self.servers)
        try:
            await asyncio.wait_for(nc.connect(**self._options(on_error)), self.connect_timeout)
        except (asyncio.TimeoutError, OSError, nats.errors.Error, ssl.SSLError) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            cause = errors[-1] if errors else exc
            if isinstance(cause, nats.errors.AuthorizationError) or "uthoriz" in str(cause):
                raise LayerError(
                    f"NATS at {where} refused the credentials ({cause!r}): check the "
                    "user:password@, token@ or creds= part of the layer URL"
                ) from None
            raise LayerError(
                f"cannot reach NATS at {where}: is nats-server running? ({cause!r}). "
                "Start one with `nats-server -js`, or pass the right nats://host:port "
                "(SVCBUS_LAYER or --layer)"
            ) from None
        nc.options["max_reconnect_attempts"] = -1  # from now on: reconnect forever
        return nc

    def _options(self, on_error: Callable[[Exception], Awaitable[None]]) -> dict[str, Any]:
        options: dict[str, Any] = {
            "servers": self.servers,
            "name": self.name,
            "error_cb": on_error,
            "disconnected_cb": self._disconnected_cb,
            "reconnected_cb": self._reconnected_cb,
            "allow_reconnect": True,
            # Two tries per seed for the first connection, then unlimited (set above).
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": RECONNECT_WAIT,
            "connect_timeout": max(0.2, min(2.0, self.connect_timeout)),
            # Our names are validated (no whitespace, no wildcards) before they
            # become subjects, so nats-py's per-publish check is redundant.
            "skip_subject_validation": True,
            "drain_timeout": 2,
        }
        if self.tls is not None:
            options["tls"] = self.tls
            if self._tls_hostname:
                options["tls_hostname"] = self._tls_hostname
        if self._creds:
            options["user_credentials"] = self._creds
        options.update({k: v for k, v in self.auth.items() if v is not None})
        return options

    def _slow_consumer(self, exc: nats.errors.SlowConsumerError) -> None:
        # The pending limits bound memory; say so once in a while, not per message.
        self.slow_consumer_drops += 1
        self._losses.count_quietly()
        if self.slow_consumer_drops % 10_000 == 1:
            log.warning(
                "NATS slow consumer: dropping messages on %s (pending limits %d msgs, "
                "%d bytes; %d dropped so far)",
                exc.subject,
                self.pending_msgs_limit,
                self.pending_bytes_limit,
                self.slow_consumer_drops,
            )

    async def _disconnected_cb(self) -> None:
        if self.nc is None:
            return  # the first connection failed: open() says why, in one line
        if not self.closed and not self._disconnected:
            self._disconnected = True
            log.warning("disconnected from NATS; reconnecting (sends are buffered meanwhile)")
        for listener in self.on_disconnect:
            await listener()

    async def _reconnected_cb(self) -> None:
        self._disconnected = False
        nc = self.nc
        url = nc.connected_url.netloc if nc is not None and nc.connected_url else "?"
        log.info("reconnected to NATS at %s", (url or "?").rsplit("@", 1)[-1])
        for listener in self.on_reconnect:
            await listener()

    async def connected(self, timeout: float, pending: int = 0) -> Client:
        """The client once it is connected, waiting up to ``timeout`` seconds for it."""
        nc = await self.client()
        deadline = asyncio.get_running_loop().time() + timeout
        while not nc.is_connected:
            if nc.is_closed:
                raise LayerError("the NATS connection is closed; open a new layer")
            if asyncio.get_running_loop().time() >= deadline:
                raise LayerError(
                    f"the NATS connection has been down for over {timeout:g}s; "
                    f"{pending} messages wait in the reconnect buffer and go out "
                    "when the server is back (is nats-server running?)"
                )
            await asyncio.sleep(0.05)
        return nc

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run ``coroutine`` in the background until it ends or the layer closes."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("NATS layer background task failed", exc_info=task.exception())

    async def close(self) -> None:
        """Stop the background tasks and the client."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        nc, self.nc = self.nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
