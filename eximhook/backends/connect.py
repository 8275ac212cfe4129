"""The redis-py client that ``[store]`` names (issue 13): one Redis at ``redis_url``, the
master of ``redis_service`` that ``redis_sentinels`` name, or a Redis Cluster.

Nothing here connects: redis-py does on the first call, so with a Redis down when the
daemon starts, the relay counts alone until it answers (``serve.shared``). ``redis`` is imported inside
``client``: ``describe`` serves check-config and the daemon's log, and a ``${run}`` hook
imports neither (``tests/integration/test_hook_imports.py``).

Every connection, to a Sentinel too, waits at most ``redis_timeout`` to connect and for
each answer, and a failed call is tried once more at once (on a new connection: the
pooled one may be from before a Redis restart), not redis-py's default of three
times with backoff, so a Redis that is down costs a request two timeouts at most.
Through Sentinel, a connection that finds its Redis gone or turned replica
(READONLY: a failover happened) asks the Sentinels again on its next try; the Sentinels
get the timeouts, not the password (a Sentinel with ``requirepass`` is not supported).

The password is in ``redis_url``, or in ``redis_password_file`` (issue 21: not in a
config file that more users may read than the password's own file), read at each new
connection, so a changed password reaches the daemon without a restart; the URL may
still name the ACL user then. redis-py before 4.4 (Debian 12 ships 4.3.4) cannot ask
for a password at each connect: there the file is read once, when the client is made.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import redis
    from redis.cluster import RedisCluster

    from ..config.load import StoreConfig

    Client = redis.Redis | RedisCluster


def client(store: StoreConfig) -> Client:
    """A client for the Redis ``store`` names; no connection is made yet."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    timeouts = socket_timeouts(store.redis_url, store.redis_timeout)
    url = store.redis_url
    auth: dict[str, Any] = {}
    if store.redis_password_file:
        url, auth = _password_file(store)
    if store.redis_cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url, **timeouts, **auth)
    timeouts["retry"] = Retry(NoBackoff(), 1)
    if store.redis_sentinels:
        return _sentinel(store, url, timeouts, auth)
    return redis.Redis.from_url(url, **timeouts, **auth)


def _sentinel(store: StoreConfig, url: str, timeouts: dict[str, Any], auth: dict[str, Any]) -> redis.Redis:
    from redis.connection import SSLConnection, parse_url
    from redis.sentinel import Sentinel

    # redis_url names no host here (config._check_redis): the master's password, db, TLS
    options: dict[str, Any] = parse_url(url) if url else {}  # type: ignore[no-untyped-call]
    ssl = options.pop("connection_class", None) is SSLConnection
    sentinels = Sentinel(list(store.redis_sentinels), sentinel_kwargs=dict(timeouts),
                         **timeouts)
    master: redis.Redis = sentinels.master_for(store.redis_service, ssl=ssl, **options, **auth)
    return master


def socket_timeouts(url: str, timeout: float) -> dict[str, Any]:
    """redis-py's options for waiting at most ``timeout`` to connect and for each answer."""
    timeouts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    # redis-py before 4.6 has no socket_connect_timeout for a Unix socket (before 4.5.2: a
    # TypeError at the first call); its socket_timeout bounds the connect there
    if url.partition(":")[0].lower() == "unix" and _older_than(4, 6):
        del timeouts["socket_connect_timeout"]
    return timeouts


def _older_than(major: int, minor: int) -> bool:
    """Is the redis-py installed older than ``major.minor``? (Debian 12 ships 4.3.4.)"""
    import redis

    return tuple(int(part) for part in redis.__version__.split(".")[:2]) < (major, minor)


def _password_file(store: StoreConfig) -> tuple[str, dict[str, Any]]:
    """``redis_url`` without its user, and the client's options for logging in: a
    credential provider that names that user (if any) and reads the password from
    ``redis_password_file`` at each connect (the URL holds no password then:
    config._check_redis). redis-py takes a provider or a user and password, never both;
    before 4.4 it has no providers, and gets the user and the password read now."""
    from urllib.parse import unquote

    import redis

    scheme, sep, rest = store.redis_url.partition("://")
    netloc, slash, tail = rest.partition("/")
    user, at, host = netloc.rpartition("@")
    path = store.redis_password_file
    url = scheme + sep + (host if at else netloc) + slash + tail

    def credentials() -> tuple[str] | tuple[str, str]:
        try:
            with open(path, "rb") as f:
                password = f.read().decode("utf-8").rstrip("\r\n")  # as `echo s3cret > FILE` leaves it
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise redis.ConnectionError(f"cannot read [store] redis_password_file {path}: {why}") from None
        if not password:
            raise redis.ConnectionError(f"[store] redis_password_file {path} is empty")
        return (unquote(user), password) if user else (password,)

    if _older_than(4, 4):
        read = credentials()
        return url, {"username": read[0] if len(read) == 2 else None, "password": read[-1]}
    from redis.credentials import CredentialProvider

    class PasswordFile(CredentialProvider):
        def get_credentials(self) -> tuple[str] | tuple[str, str]:
            return credentials()

    return url, {"credential_provider": PasswordFile()}


def describe(store: StoreConfig) -> str:
    """Where the daemon counts, for check-config and the log (never a password)."""
    from ..config.values import shown_url

    secret = f" (password in {store.redis_password_file})" if store.redis_password_file else ""
    if store.redis_sentinels:
        sentinels = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in store.redis_sentinels)
        how = f" ({shown_url(store.redis_url)})" if store.redis_url else ""
        return f"the Redis master {store.redis_service!r}{how}{secret} that the Sentinels {sentinels} name"
    if store.redis_cluster:
        return f"the Redis Cluster of {shown_url(store.redis_url)}{secret}"
    return f"Redis at {shown_url(store.redis_url)}{secret}"
