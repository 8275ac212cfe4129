"""More than one Redis (issue 13): a failover through a real Sentinel, and a one-node
cluster that refuses keys of one script in two slots (the processes: support/redis_ha.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from eximhook.backends.redis import RedisBackend
from eximhook.config.load import StoreConfig, load
from eximhook.model.policy import Policy
from eximhook.model.records import Event
from eximhook.storage.store import subject_key

from ..support.config import redis_config
from ..support.marks import needs_redis
from ..support.redis_ha import HOST, SERVICE, ClusterNode, SentinelGroup
from ..support.waiting import wait_for

NOW = 1_700_000_000.25
LIMIT_1 = Policy("invalid", ((1, 3600.0),), "enforce")


# -- Sentinel: a failover --------------------------------------------------------------------------


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path / "redis")
    try:
        yield group.start()
    finally:
        group.stop()


@needs_redis
def test_a_failover_keeps_the_blocks_and_counting_goes_on(tmp_path: Path, sentinel_group: SentinelGroup) -> None:
    group = sentinel_group
    cfg = load(str(redis_config(tmp_path, redis_sentinels=[f"{HOST}:{group.sentinel.port}"])))
    assert cfg.store.redis_service == SERVICE
    backend = RedisBackend.from_config(cfg.store)
    try:
        outcomes = [backend.record(Event("auth", "bot", LIMIT_1), NOW + i)[1] for i in range(2)]
        assert [o.tripped for o in outcomes] == [False, True] and backend.is_blocked("auth", "bot")
        # the replica has the block: a failover keeps it (WAIT under the client's 0.5 s timeout)
        wait_for("the replica's ack", lambda: backend.client.wait(1, 300) == 1, 10)
        group.fail_over()

        # a backend opened from the same config now: the new master, the block on it
        after = RedisBackend.from_config(cfg.store)
        with RedisBackend.open(f"redis://{HOST}:{group.replica.port}") as new_master:
            assert after.is_blocked("auth", "bot")
            assert [after.record(Event("auth", "late", LIMIT_1), NOW + i)[1].tripped for i in range(2)] == [False, True]
            assert new_master.is_blocked("auth", "late")
            after.close()

            # the backend opened before: its connection is to the old master, which
            # stays one until the Sentinel turns it into a replica (its +convert-to-slave,
            # ~10 s later; README); from then on a write there fails (READONLY) and the
            # connection asks the Sentinel again: the new master
            wait_for("the old master turned replica", lambda: group.master.client().role()[0] == b"slave", 20)
            outcome = backend.record(Event("auth", "later", LIMIT_1), NOW + 10)[1]
            assert not outcome.blocked and new_master.counter("auth", "later").total == 1
            assert backend.is_blocked("auth", "bot") and backend.is_blocked("auth", "late")
            assert backend.record(Event("auth", "later", LIMIT_1), NOW + 11)[1].tripped
            assert new_master.is_blocked("auth", "later")
    finally:
        backend.close()


# -- Redis Cluster: one slot per script ---------------------------------------------------------------


@needs_redis
def test_the_cluster_refuses_a_script_with_keys_in_two_slots(redis_cluster: ClusterNode,
                                                            redis_cluster_url: str) -> None:
    """What makes integration/test_backends.py's "redis-cluster" runs a proof that every script
    touches one slot: the node refuses keys in two slots (CROSSSLOT), and so does
    redis-py's cluster client before it sends them."""
    from redis.crc import key_slot
    from redis.exceptions import RedisClusterException, ResponseError

    a, b = subject_key("auth", "carol"), subject_key("auth", "dave")
    backend = RedisBackend.from_config(StoreConfig(backend="redis", redis_url=redis_cluster_url, redis_cluster=True))
    two_slots = [backend._key(a, b"block"), backend._key(b, b"block")]
    one_slot = [backend._key(a, b"block"), backend._key(a, b"c2:invalid")]
    assert key_slot(two_slots[0]) != key_slot(two_slots[1]) and key_slot(one_slot[0]) == key_slot(one_slot[1])
    script = "redis.call('SET', KEYS[1], 1); return redis.call('SET', KEYS[2], 2)"
    try:
        # past redis-py's check: the server's CROSSSLOT (ClusterCrossSlotError from redis-py 6.0)
        with redis_cluster.client() as node, pytest.raises(ResponseError, match="don't hash to the same slot"):
            node.eval(script, 2, *two_slots)
        with pytest.raises(RedisClusterException, match="all keys must map to the same key slot"):
            backend.client.eval(script, 2, *two_slots)
        assert backend.client.eval(script, 2, *one_slot) == b"OK"
        # the backend's calls of one subject: a script of one key, a DEL of several
        assert backend.counter("auth", "alice").total == 0 and not backend.is_blocked("auth", "alice")
        backend.reset("auth", "alice")
        assert backend.clear_shadows("auth", "alice") == 0
    finally:
        backend.close()


@needs_redis
def test_only_a_script_with_a_shebang_is_kept_from_undeclared_keys(redis_cluster: ClusterNode,
                                                                  redis_cluster_url: str) -> None:
    """A key the script does not name in KEYS, in another slot: a real cluster refuses it
    when that slot is on another node; this one node holds every slot, and Redis 7 checks
    it only for a script that starts with "#!lua" (without, it is allowed, as before 7.0).
    So the "redis-cluster" runs prove one slot per script only for scripts with "#!lua",
    or that name every key in KEYS."""
    from redis.exceptions import ResponseError

    body = "redis.call('SET', KEYS[1], 1); return redis.call('SET', KEYS[1] .. 'x', 1)"
    with redis_cluster.client() as node:
        assert node.eval(body, 1, "a") == b"OK"  # "ax": another slot, allowed
        with pytest.raises(ResponseError, match="Script attempted to access keys that do not hash to the same slot"):
            node.eval("#!lua\n" + body, 1, "a")
        assert node.eval("#!lua\n" + body, 1, "{a}") == b"OK"  # "{a}x": the same hash tag, the same slot
