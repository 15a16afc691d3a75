"""Tests of the test infrastructure: real nats-server / redis-server processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import anyio
import pytest
import servers
from fixtures_servers import provide_url
from servers import (
    NatsServer,
    RedisServer,
    ServerStartError,
    ServerUnavailable,
    nats_url_from_env_or_start,
    probe_nats,
    probe_redis,
    redis_url_from_env_or_start,
)

needs_nats_binary = pytest.mark.skipif(
    servers.find_nats_server() is None, reason="no nats-server binary"
)
needs_redis_binary = pytest.mark.skipif(
    servers.find_redis_server() is None, reason="no redis-server binary"
)


@pytest.fixture
def anyio_backend() -> str:
    """Run the async tests on asyncio only (nats-py and redis.asyncio need it)."""
    return "asyncio"


def _read_info_line(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(5)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, "server closed the connection before INFO"
            data += chunk
    return data.split(b"\r\n", 1)[0]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_free_port_is_bindable() -> None:
    port = servers.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@needs_nats_binary
def test_found_nats_binary_runs() -> None:
    binary = servers.find_nats_server()
    assert binary is not None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert "nats-server" in out.stdout + out.stderr


@needs_nats_binary
def test_nats_server_sends_info_with_jetstream() -> None:
    with NatsServer() as server:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        line = _read_info_line(server.port)
        assert line.startswith(b"INFO {")
        assert probe_nats(server.host, server.port)["jetstream"] is True
        pid = server.pid
        assert pid is not None
        assert server.log_path.exists()
    # Leaving the context stops our process (reaped, so the PID is gone) and
    # removes the temp dir.
    assert not _pid_alive(pid)
    assert not server.workdir.exists()


@needs_nats_binary
def test_nats_restart_keeps_port_and_accepts_new_connections() -> None:
    with NatsServer() as server:
        port, url, old_pid = server.port, server.url, server.pid
        server.restart()
        assert (server.port, server.url) == (port, url)
        assert server.pid != old_pid
        assert _read_info_line(port).startswith(b"INFO ")


@needs_nats_binary
def test_nats_stop_then_start_and_kill() -> None:
    with NatsServer() as server:
        server.stop()
        assert not server.running
        assert server.pid is None
        with pytest.raises(OSError):
            probe_nats(server.host, server.port, timeout=0.5)
        server.stop()  # idempotent
        server.start()
        pid = server.pid
        assert pid is not None
        server.kill()
        assert not _pid_alive(pid)
        server.start()
        assert probe_nats(server.host, server.port)["server_name"] == server.server_name


@needs_nats_binary
def test_start_failure_reports_log_tail() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        # A caller-fixed port is not swapped, so the bind conflict must surface.
        server = NatsServer(port=port, start_timeout=10)
        try:
            with pytest.raises(ServerStartError, match="log tail") as info:
                server.start()
            assert "address already in use" in str(info.value)
            assert not server.running
        finally:
            server.close()


@needs_redis_binary
def test_redis_server_ping_and_restart() -> None:
    with RedisServer() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert probe_redis(server.host, server.port)["process_id"] == str(server.pid)
        port, old_pid = server.port, server.pid
        server.restart()
        assert server.port == port
        assert server.pid != old_pid
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(64).startswith(b"+PONG")


@needs_nats_binary
def test_atexit_stops_servers_left_running() -> None:
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import sys; sys.path.insert(0, {tests_dir!r}); import servers; "
        "s = servers.NatsServer(); s.start(); print(s.pid, s.workdir)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    pid_text, workdir = out.stdout.split()
    assert not _pid_alive(int(pid_text))
    assert not os.path.exists(workdir)


def test_env_var_url_is_used_without_starting_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVCBUS_NATS_URL", "nats://nats.example.invalid:4222")
    monkeypatch.setenv("SVCBUS_REDIS_URL", "redis://redis.example.invalid:6379/3")
    live_before = set(servers._LIVE)

    nats = nats_url_from_env_or_start()
    redis = redis_url_from_env_or_start()

    assert (nats.source, nats.url) == ("env", "nats://nats.example.invalid:4222")
    assert (redis.source, redis.url) == ("env", "redis://redis.example.invalid:6379/3")
    assert nats.server is None and redis.server is None
    assert live_before == servers._LIVE
    # The fixture body yields exactly that URL and its teardown touches nothing.
    gen = provide_url(nats_url_from_env_or_start)
    assert next(gen) == "nats://nats.example.invalid:4222"
    gen.close()
    assert live_before == servers._LIVE


@needs_nats_binary
@needs_redis_binary
def test_empty_env_var_starts_own_servers() -> None:
    for choose, probe in (
        (nats_url_from_env_or_start, probe_nats),
        (redis_url_from_env_or_start, probe_redis),
    ):
        provided = choose({"SVCBUS_NATS_URL": "", "SVCBUS_REDIS_URL": "  "})
        try:
            assert provided.source == "process"
            assert provided.server is not None
            probe("127.0.0.1", provided.server.port)
        finally:
            provided.close()
        assert not provided.server.running


def test_no_binary_and_no_docker_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SVCBUS_NATS_URL", raising=False)
    monkeypatch.setattr(servers, "find_nats_server", lambda: None)
    # Point the Docker client at a socket that cannot exist.
    monkeypatch.setenv("DOCKER_HOST", f"unix:///nonexistent/{uuid.uuid4().hex}.sock")
    with pytest.raises(ServerUnavailable, match="SVCBUS_NATS_URL"):
        nats_url_from_env_or_start()
    gen = provide_url(nats_url_from_env_or_start)
    with pytest.raises(pytest.skip.Exception, match="Docker"):
        next(gen)


@pytest.mark.anyio
async def test_nats_py_jetstream_survives_restart(nats_server: NatsServer) -> None:
    import nats

    reconnected = anyio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await nats.connect(
        nats_server.url,
        reconnected_cb=on_reconnect,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
    )
    try:
        sub = await nc.subscribe("t.core")
        await nc.publish("t.core", b"hello")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"hello"

        js = nc.jetstream()
        stream = f"T{uuid.uuid4().hex[:8]}"
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        await js.publish(f"{stream}.a", b"one")

        # Restart in a worker thread so the client's event loop keeps running.
        await anyio.to_thread.run_sync(nats_server.restart)
        with anyio.fail_after(15):
            await reconnected.wait()

        # The JetStream store dir is kept across restarts, like a real server.
        await js.publish(f"{stream}.a", b"two")
        info = await js.stream_info(stream)
        assert info.state.messages == 2
    finally:
        await nc.close()


@pytest.mark.anyio
async def test_redis_asyncio_roundtrip(redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    # A unique key and channel, because the session server may be shared.
    prefix = f"svcbus-test-{uuid.uuid4().hex[:8]}"
    try:
        assert await client.ping()
        await client.set(f"{prefix}:k", b"v", ex=60)
        assert await client.get(f"{prefix}:k") == b"v"

        pubsub = client.pubsub()
        await pubsub.subscribe(f"{prefix}:ch")
        await client.publish(f"{prefix}:ch", b"hi")
        with anyio.fail_after(5):
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if msg is not None:
                    break
        assert msg["data"] == b"hi"
        await pubsub.aclose()
        await client.delete(f"{prefix}:k")
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_nats_url_fixture_is_usable(nats_url: str) -> None:
    import nats

    nc = await nats.connect(nats_url)
    try:
        assert nc.is_connected
        await nc.flush(timeout=5)
    finally:
        await nc.close()


def test_redis_server_fixture_can_restart(redis_server: RedisServer) -> None:
    port = redis_server.port
    redis_server.restart()
    assert redis_server.port == port
    probe_redis("127.0.0.1", port)


@needs_nats_binary
def test_nats_cluster_has_a_jetstream_leader_through_every_node_and_survives_a_kill() -> None:
    with servers.NatsCluster() as cluster:
        assert cluster.urls == "nats://" + ",".join(f"127.0.0.1:{p}" for p in cluster.ports)
        for port in cluster.ports:
            assert servers.probe_jetstream("127.0.0.1", port)["api"]["errors"] == 0
        cluster.kill(0)
        cluster.wait_ready(10)  # two of three keep a meta leader
        with pytest.raises(OSError):
            servers.probe_jetstream("127.0.0.1", cluster.ports[0])
        cluster.start(0)  # same ports, same store dir
        assert servers.probe_jetstream("127.0.0.1", cluster.ports[0])["api"]["errors"] == 0
