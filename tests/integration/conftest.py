"""The integration tests' fixtures: a daemon on a default config, one redis-server and
one one-node Redis Cluster for the session (started on first use, stopped by pid)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.config import write_config
from ..support.daemon import Daemon
from ..support.fixtures import Serve
from ..support.marks import CI
from ..support.redis_ha import ClusterNode
from ..support.redis_server import REDIS_SERVER, RedisServer


@pytest.fixture
def daemon(tmp_path: Path, serve: Serve) -> Daemon:
    return serve(write_config(tmp_path, settings={"notify.hold": 0.5}))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session, started on first use and stopped by its pid."""
    if not CI and not os.path.exists(REDIS_SERVER):
        pytest.skip("needs redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server, emptied for this test: its URL."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNode]:
    """A one-node Redis Cluster for the session (support/redis_ha.py: TCP on 127.0.0.1, a
    free port), started on first use and stopped by its pid."""
    if not CI and not os.path.exists(REDIS_SERVER):
        pytest.skip("needs redis-server")
    node = ClusterNode(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: ClusterNode) -> str:
    """The session's one-node cluster, emptied for this test: the URL of its node."""
    with redis_cluster.client() as client:
        client.flushall()
    return redis_cluster.url
