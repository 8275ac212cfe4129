"""What a SIGHUP changes in the daemon: the config read again, except what only a restart
can change (the socket, the store and the Redis the daemon holds open)."""

from __future__ import annotations

import dataclasses

from ..config.load import Config, load
from ..errors import ConfigError
from ..log import Logger

# what SIGHUP cannot change: the socket, the store and the Redis the daemon holds open
_RESTART = (("serve", "socket"), ("store", "path"), ("store", "map_size"), ("store", "counters_budget"),
            ("store", "backend"), ("store", "redis_url"), ("store", "redis_timeout"), ("store", "redis_sentinels"),
            ("store", "redis_service"), ("store", "redis_cluster"), ("store", "node"))


def reread(old: Config, log: Logger) -> Config | None:
    """The config read again from ``old``'s file, with what takes a restart kept as in
    ``old`` (and logged); None, logged, if it no longer loads: the old one stays."""
    try:
        new = load(old.path)
    except ConfigError as exc:
        log.log("err", f"SIGHUP: {exc}; still serving with the config read before")
        return None
    kept = [f"[{section}] {key}" for section, key in _RESTART
            if getattr(getattr(old, section), key) != getattr(getattr(new, section), key)]
    if kept:
        new = dataclasses.replace(new, store=old.store, serve=dataclasses.replace(new.serve, socket=old.serve.socket))
        log.log("warning", f"SIGHUP: {', '.join(kept)} changed; that takes a restart, the rest is in force")
    return new
