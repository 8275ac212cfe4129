"""More than one Redis (issue 13): the ``[store]`` settings for Sentinel and Redis Cluster.
(The real processes: integration/test_redis_ha.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from eximhook.config.load import StoreConfig, load
from eximhook.errors import ConfigError

from ..support.config import redis_config, write_config
from ..support.fixtures import Run

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
