"""More than one Redis (issue 13): the ``[store]`` settings for Sentinel and Redis Cluster,
a failover through a real Sentinel, and a one-node cluster that refuses keys of one
script in two slots (the processes: ``redis_ha.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from eximhook.backends.base import Event
from eximhook.backends.redis import RedisBackend
from eximhook.config.load import StoreConfig, load
from eximhook.errors import ConfigError
from eximhook.model.policy import Policy
from eximhook.storage.store import subject_key

from .conftest import Run, needs_redis, write_config
from .e2e.harness import wait_for
from .redis_ha import HOST, SERVICE, ClusterNode, SentinelGroup

NOW = 1_700_000_000.25
LIMIT_1 = Policy("invalid", ((1, 3600.0),), "enforce")


def redis_config(tmp_path: Path, **store: object) -> Path:
    return write_config(tmp_path, settings={"store.backend": "redis", **{f"store.{k}": v for k, v in store.items()}})


# -- the settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("store", "message"),
    [
        pytest.param({"redis_sentinels": "192.0.2.1:26379"}, r"store\.redis_sentinels must be a list of \"host:port\"",
                     id="sentinels-string"),
        pytest.param({"redis_sentinels": ["192.0.2.1"]}, r"store\.redis_sentinels has '192\.0\.2\.1', which is no "
                     r"\"host:port\"", id="sentinel-without-port"),
        pytest.param({"redis_sentinels": ["2001:db8::1:26379"]}, r"has '2001:db8::1:26379'.*IPv6 address in brackets",
                     id="sentinel-ipv6-bare"),
        pytest.param({"redis_sentinels": ["h:99999"]}, r"store\.redis_sentinels has 'h:99999'", id="sentinel-port"),
        pytest.param({"redis_sentinels": ["redis://h:26379"]}, r"store\.redis_sentinels has 'redis://h:26379'",
                     id="sentinel-url"),
        pytest.param({"redis_sentinels": ["h:26379"], "redis_service": ""}, r"store\.redis_service must be a "
                     r"non-empty string", id="empty-service"),
        pytest.param({"redis_cluster": "yes"}, r"store\.redis_cluster must be true or false", id="cluster-not-bool"),
        pytest.param({"redis_sentinels": ["h:26379"], "redis_cluster": True},
                     r"store\.redis_sentinels and store\.redis_cluster = true exclude each other", id="both"),
        pytest.param({"redis_sentinels": ["h:26379"], "redis_url": "redis://h:6379/0"},
                     r"store\.redis_url 'redis://h:6379/0' names an address, but with store\.redis_sentinels the "
                     r"Sentinels name the master's", id="sentinel-url-with-host"),
        pytest.param({"redis_sentinels": ["h:26379"], "redis_url": "redis://:6379"}, r"names an address",
                     id="sentinel-url-with-port"),
        pytest.param({"redis_sentinels": ["h:26379"], "redis_url": "unix:///run/redis.sock"}, r"names an address",
                     id="sentinel-url-socket"),
        pytest.param({"redis_url": "redis://:pw@/0"}, r"store\.redis_url 'redis://:pw@/0' names no host \(only "
                     r"with store\.redis_sentinels", id="no-host-without-sentinels"),
        pytest.param({}, r"store\.redis_url must be set .* unless store\.redis_sentinels is", id="nothing"),
        pytest.param({"redis_cluster": True}, r"store\.redis_url must be set", id="cluster-without-url"),
        pytest.param({"redis_cluster": True, "redis_url": "unix:///run/redis.sock"},
                     r"store\.redis_url 'unix:///run/redis\.sock': with store\.redis_cluster = true it names one node "
                     r"of the cluster by TCP, in database 0", id="cluster-socket"),
        pytest.param({"redis_cluster": True, "redis_url": "redis://h:6379/2"}, r"in database 0 \(a cluster has no "
                     r"other\)", id="cluster-db"),
        pytest.param({"redis_cluster": True, "redis_url": "redis://h:6379?db=1"}, r"in database 0", id="cluster-db-q"),
    ],
)
def test_settings_errors_name_the_key(tmp_path: Path, store: dict[str, object], message: str) -> None:
    path = redis_config(tmp_path, **store)
    with pytest.raises(ConfigError, match=message) as info:
        load(str(path))
    assert str(info.value).startswith(str(path))


def test_the_settings_wait_for_backend_redis(tmp_path: Path) -> None:
    """With the LMDB backend they are not used, so not held against each other."""
    path = write_config(tmp_path, settings={"store.redis_sentinels": ["h:26379"], "store.redis_cluster": True})
    assert load(str(path)).store.backend == "lmdb"


@pytest.mark.parametrize(
    ("store", "shown"),
    [
        pytest.param({"redis_sentinels": ["192.0.2.1:26379", "[2001:db8::2]:26380"]},
                     "the Redis master 'eximhook' that the Sentinels 192.0.2.1:26379, [2001:db8::2]:26380 name",
                     id="sentinels"),
        pytest.param({"redis_sentinels": ["sentinel-1.example.net:26379"], "redis_service": "mail",
                      "redis_url": "rediss://:s3cret@/2"},
                     "the Redis master 'mail' (rediss://:***@/2) that the Sentinels sentinel-1.example.net:26379 name",
                     id="sentinel-password-tls"),
        pytest.param({"redis_cluster": True, "redis_url": "redis://:s3cret@192.0.2.5:6379"},
                     "the Redis Cluster of redis://:***@192.0.2.5:6379", id="cluster"),
        pytest.param({"redis_cluster": True, "redis_url": "rediss://redis-1.example.net/0"},
                     "the Redis Cluster of rediss://redis-1.example.net/0", id="cluster-db-0"),
    ],
)
def test_check_config_shows_the_settings_never_connects(tmp_path: Path, cli: Run, store: dict[str, object],
                                                        shown: str) -> None:
    path = redis_config(tmp_path, **store)
    code, out, _ = cli("check-config", config_path=path)
    assert code == 0 and f"counts and blocks in {shown} (calls time out after 0.5s)" in out, out
    assert "s3cret" not in out, "parsed, not connected to: nothing listens there"


def test_sentinel_client_takes_password_db_and_tls_from_the_url() -> None:
    """The master gets what redis_url carries; the Sentinels get the timeouts alone."""
    from redis.sentinel import SentinelManagedSSLConnection

    from eximhook.backends.connect import client

    store = StoreConfig(backend="redis", redis_url="rediss://eximhook:s3cret@/3", redis_timeout=0.25,
                        redis_sentinels=(("192.0.2.1", 26379), ("192.0.2.2", 26379)), redis_service="mail")
    master = client(store)
    pool = master.connection_pool
    kwargs = pool.connection_kwargs
    assert (pool.service_name, pool.connection_class) == ("mail", SentinelManagedSSLConnection)
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("eximhook", "s3cret", 3)
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.25, 0.25)
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26379]
    for s in sentinels:
        assert s.connection_pool.connection_kwargs.get("password") is None
        assert s.connection_pool.connection_kwargs["socket_timeout"] == 0.25
    master.close()


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
    """What makes tests/test_backends.py's "redis-cluster" runs a proof that every script
    touches one slot: the node refuses keys in two slots (CROSSSLOT), and so does
    redis-py's cluster client before it sends them."""
    from redis.crc import key_slot
    from redis.exceptions import RedisClusterException, ResponseError

    a, b = subject_key("auth", "carol"), subject_key("auth", "dave")
    backend = RedisBackend.from_config(StoreConfig(backend="redis", redis_url=redis_cluster_url, redis_cluster=True))
    two_slots = [backend._key(a, b"block"), backend._key(b, b"block")]
    one_slot = [backend._key(a, b"block"), backend._key(a, b"c:invalid")]
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
