"""Admin commands on a relay that shares Redis with others (``[store] backend = "redis"``).

Redis holds the cluster's truth; each relay's store is a copy its daemon keeps (see
``serve.shared``). So a command that changes a block or an exemption changes Redis
first, which publishes it to every relay, and then this relay's copy, as with LMDB
alone. If Redis does not answer, the command changes nothing and says so: a change
made here alone would be undone by the daemon's next comparison with Redis.
"""

from __future__ import annotations

import contextlib

from .errors import SharedUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from .backends.redis import RedisBackend
    from .config import Config


@contextlib.contextmanager
def shared(cfg: Config) -> Iterator[RedisBackend | None]:
    """The shared backend while the block runs (None with LMDB alone); a Redis error
    inside it becomes ``SharedUnavailable``."""
    if cfg.store.backend != "redis":
        yield None
        return
    import redis

    from ._values import shown_url
    from .backends.redis import RedisBackend

    backend = RedisBackend.open(cfg.store.redis_url, timeout=max(cfg.store.redis_timeout, 2.0), node=cfg.store.node)
    try:
        yield backend
    except (redis.RedisError, OSError) as exc:
        raise SharedUnavailable(f"the shared Redis at {shown_url(cfg.store.redis_url)} did not answer "
                                f"({type(exc).__name__}: {exc}); this relay's store was not changed: run the "
                                "command again when Redis is back (eximhook status)") from exc
    finally:
        backend.close()
