"""Which backend a relay counts in (``[store] backend``: the one place that reads it), and
the admin commands' Redis on a relay that shares it with others (``"redis"``).

Redis holds the cluster's truth; each relay's store is a copy its daemon keeps (see
``serve.shared``). So a command that changes a block or an exemption changes Redis
first, which publishes it to every relay, and then this relay's copy, as with LMDB
alone. If Redis does not answer, the command changes nothing and says so: a change
made here alone would be undone by the daemon's next comparison with Redis.
"""

from __future__ import annotations

import contextlib
import dataclasses

from ..errors import SharedUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ..config.load import Config
    from ..model.counter import Counter
    from ..storage.counters import Counters
    from .redis import RedisBackend


def shares(cfg: Config) -> bool:
    """Does this relay count in a Redis it shares with others (else in its own store)?"""
    return cfg.store.backend == "redis"


def for_daemon(cfg: Config) -> RedisBackend | None:
    """The daemon's shared backend (None: this relay's own store). No connection yet:
    with Redis down at start, the relay counts alone until it answers (``serve.shared``)."""
    if not shares(cfg):
        return None
    from .redis import RedisBackend

    return RedisBackend.from_config(cfg.store)


@contextlib.contextmanager
def shared(cfg: Config) -> Iterator[RedisBackend | None]:
    """The shared backend while the block runs (None with LMDB alone); a Redis error
    inside it becomes ``SharedUnavailable``."""
    if not shares(cfg):
        yield None
        return
    import redis

    from .connect import describe
    from .redis import RedisBackend

    # an admin can wait longer than Exim: at least 2 s a call
    backend = RedisBackend.from_config(dataclasses.replace(cfg.store, redis_timeout=max(cfg.store.redis_timeout, 2.0)))
    try:
        yield backend
    except (redis.RedisError, OSError) as exc:
        raise SharedUnavailable(f"{describe(cfg.store)} did not answer "
                                f"({type(exc).__name__}: {exc}); this relay's store was not changed: run the "
                                "command again when Redis is back (eximhook status)") from exc
    finally:
        backend.close()


@contextlib.contextmanager
def reader(cfg: Config, counters: Counters,
           note: Callable[[str], None]) -> Iterator[Callable[[str, str, str], Counter]]:
    """Where a subject's counts are, as ``read(ns, key, name)``: Redis's shared ones, or
    this relay's (``counters``). While Redis does not answer, this relay's own, made
    while it was down, and ``note`` is told why, once."""
    if not shares(cfg):
        yield counters.get
        return
    import redis

    from .connect import describe
    from .redis import RedisBackend

    backend: RedisBackend | None = RedisBackend.from_config(cfg.store)

    def read(ns: str, key: str, name: str) -> Counter:
        nonlocal backend
        if backend is not None:
            try:
                return backend.counter(ns, key, name)
            except (redis.RedisError, OSError) as exc:
                note(f"{describe(cfg.store)} did not answer ({type(exc).__name__}: {exc}); the counts below are "
                     "this relay's own, made while it was down")
                backend.close()
                backend = None
        return counters.get(ns, key, name)
    try:
        yield read
    finally:
        if backend is not None:
            backend.close()
