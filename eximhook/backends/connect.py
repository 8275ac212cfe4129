"""The redis-py client that ``[store]`` names (issue 13): one Redis at ``redis_url``, the
master of ``redis_service`` that ``redis_sentinels`` name, or a Redis Cluster.

Nothing here connects: redis-py does on the first call, so with a Redis down when the
daemon starts, the relay counts alone until it answers (``serve.shared``). ``redis`` is imported inside
``client``: ``describe`` serves check-config and the daemon's log, and a ``${run}`` hook
imports neither (``tests/test_backends.py``, test_hooks_never_import_redis).

Every connection, to a Sentinel too, waits at most ``redis_timeout`` to connect and for
each answer, and a failed call is tried once more at once (on a new connection: the
pooled one may be from before a Redis restart), not redis-py's default of three
times with backoff, so a Redis that is down costs a request two timeouts at most.
Through Sentinel, a connection that finds its Redis gone or turned replica
(READONLY: a failover happened) asks the Sentinels again on its next try; the Sentinels
get the timeouts, not the password (a Sentinel with ``requirepass`` is not supported).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import redis
    from redis.cluster import RedisCluster

    from ..config import StoreConfig

    Client = redis.Redis | RedisCluster


def client(store: StoreConfig) -> Client:
    """A client for the Redis ``store`` names; no connection is made yet."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    timeouts: dict[str, Any] = {"socket_timeout": store.redis_timeout, "socket_connect_timeout": store.redis_timeout}
    if store.redis_cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(store.redis_url, **timeouts)
    timeouts["retry"] = Retry(NoBackoff(), 1)
    if store.redis_sentinels:
        return _sentinel(store, timeouts)
    return redis.Redis.from_url(store.redis_url, **timeouts)


def _sentinel(store: StoreConfig, timeouts: dict[str, Any]) -> redis.Redis:
    from redis.connection import SSLConnection, parse_url
    from redis.sentinel import Sentinel

    # redis_url names no host here (config._check_redis): the master's password, db, TLS
    options: dict[str, Any] = parse_url(store.redis_url) if store.redis_url else {}  # type: ignore[no-untyped-call]
    ssl = options.pop("connection_class", None) is SSLConnection
    sentinels = Sentinel(list(store.redis_sentinels), sentinel_kwargs=dict(timeouts),
                         **timeouts)
    master: redis.Redis = sentinels.master_for(store.redis_service, ssl=ssl, **options)
    return master


def describe(store: StoreConfig) -> str:
    """Where the daemon counts, for check-config and the log (never a password)."""
    from .._values import shown_url

    if store.redis_sentinels:
        sentinels = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in store.redis_sentinels)
        how = f" ({shown_url(store.redis_url)})" if store.redis_url else ""
        return f"the Redis master {store.redis_service!r}{how} that the Sentinels {sentinels} name"
    if store.redis_cluster:
        return f"the Redis Cluster of {shown_url(store.redis_url)}"
    return f"Redis at {shown_url(store.redis_url)}"
