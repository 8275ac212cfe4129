"""The fixture the Redis backend's tests stand on: a real server of our own, stopped by
its pid, never the system's service."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from ..support.marks import needs_redis
from ..support.redis_server import RedisServer


@needs_redis
def test_own_server_on_a_temp_socket_stopped_by_pid(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    try:
        pid = server.pid
        client = redis.Redis.from_url(server.url)
        client.set(b"k\n\0", b"v")
        assert client.get(b"k\n\0") == b"v"
        # our own process: nothing persisted, and not the system's redis-server
        assert client.config_get("save")["save"] == "" and client.config_get("appendonly")["appendonly"] == "no"
        assert client.info("server")["process_id"] == pid
        client.close()
        server.stop()
        assert not server.ping()
        assert server.proc is not None and server.proc.returncode is not None  # ended, and reaped
        server.start()  # again on the same socket (a test can take Redis away and bring it back)
        assert server.ping() and server.pid != pid
    finally:
        server.close()
    assert not server.ping()


@pytest.mark.parametrize("run", [1, 2])
def test_session_server_is_emptied_per_test(redis_url: str, run: int) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-behind", "1")  # the next test that asks for redis_url must not see it
