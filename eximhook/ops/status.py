"""``eximhook status``, for a person or a monitoring system (Nagios/Icinga levels): the
store (its probe and failure state: ``health``), the mirror, the outbox, the spool
guard, Redis, the counters, the daemon and rspamd. Nothing is repaired or made."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from ..backends import cluster
from ..config.load import Config
from ..errors import EximhookError, ServeError
from ..hooks import FALLBACK_STAMP
from ..periods import format_time
from ..storage import mirror, outbox
from ..storage.counters import Counters
from ..storage.store import Store
from . import rspamd
from .health import CannotTell, probe_store, read_state

# The Nagios/Icinga plugin levels, which are also `eximhook status`'s exit codes.
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LEVELS = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
LOW_DISK = 100 << 20  # status warns when the store's filesystem has less free, or less than a tenth
_RECENT_FALLBACK = 3600.0  # a ${run} fallback this recent means the daemon is expected
_OLD_QUEUED = 600.0  # a notification due for this long without going out is worth a warning


class Check:
    """One line of the report."""

    __slots__ = ("data", "level", "name", "text")

    def __init__(self, name: str, level: int, text: str, **data: Any) -> None:
        self.name, self.level, self.text, self.data = name, level, text, data

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "level": LEVELS[self.level], "text": self.text, **self.data}


def status(cfg: Config, now: float) -> list[Check]:
    """Every check, for a person or a monitoring system. Nothing is repaired or made; the
    one write is the probe's heartbeat, as the Exim user."""
    checks = [_store_check(cfg, now)]
    if not os.path.lexists(os.path.join(cfg.store.path, "data.mdb")):  # a link to nowhere is no missing store
        return checks
    try:
        with Store(cfg.store.path, cfg.store.map_size, cfg.store.owner, readonly=True) as store:
            checks += [_mirror_check(cfg, store), _outbox_check(store, now), _spool_check(store)]
            if cluster.shares(cfg):
                checks.append(_redis_check(cfg, store))
    except EximhookError as exc:
        checks.append(Check("store", CRITICAL, f"cannot be read: {exc}"))
    checks.append(_counters_check(cfg))
    checks.append(_serve_check(cfg, now))
    checks += [c for c in (_rspamd_check(cfg),) if c is not None]
    return checks


def _counters_check(cfg: Config) -> Check:
    """The counters against ``[store] counters_budget`` (``upkeep``): near it, or at it,
    forgetting the least recently counted."""
    if not os.path.exists(os.path.join(cfg.store.path, "counters", "data.mdb")):
        return Check("counters", OK, "none yet")
    try:
        with Counters(cfg.store.path, cfg.store.counters_budget, cfg.store.owner, readonly=True) as counters:
            used, episode, budget = counters.read(counters.used_in), counters.episode(), counters.budget or 0
            high = counters.marks()[0]
    except EximhookError as exc:
        return Check("counters", WARNING, f"cannot be read: {exc}")
    text = f"{_mib(used)} of their budget of {_mib(budget)} ([store] counters_budget)"
    data = {"used_bytes": used, "budget_bytes": budget, "making_room": episode}
    if episode is not None:
        return Check("counters", WARNING, f"{text}: full since {format_time(episode['since'])}, the least recently "
                                          f"counted forgotten ({episode['dropped']:.0f} so far, the last at "
                                          f"{format_time(episode['last'])}); a flood of new subjects?", **data)
    if used > high:
        return Check("counters", WARNING, f"{text}: nearly full; the least recently counted go past "
                                          f"{_mib(high)}", **data)
    return Check("counters", OK, text, **data)


def _redis_check(cfg: Config, store: Store) -> Check:
    """The Redis the relays share, as the daemon found it (its mark in the store) and
    as the config names it now; are counts made alone waiting for it."""
    import redis

    from ..backends.connect import client, describe
    from ..storage import relay_copy as local

    waiting, alone = len(local.journaled(store)), local.alone_since(store)
    where = describe(cfg.store)
    if alone is not None:
        return Check("redis", CRITICAL, f"eximhook serve could not use {where} at {format_time(alone)} and counts "
                                        f"alone since ({waiting} count(s) to send when it can; its log says why)",
                     up=False, waiting=waiting)
    conn = client(cfg.store)
    try:
        start = time.monotonic()
        conn.ping()
        rtt = time.monotonic() - start
    except (redis.RedisError, OSError) as exc:
        return Check("redis", CRITICAL, f"{where} does not answer ({type(exc).__name__}: {exc}): the relays count "
                                        f"alone, and admin commands that change blocks refuse", up=False,
                     waiting=waiting)
    finally:
        conn.close()
    if waiting:
        return Check("redis", WARNING, f"{where} answers, and {waiting} count(s) made while it was down are not "
                                       "sent yet: eximhook serve sends them within [serve] check_interval",
                     up=True, waiting=waiting)
    return Check("redis", OK, f"{where} answers ({rtt * 1000:.1f} ms)", up=True, waiting=0,
                 rtt_ms=round(rtt * 1000, 2))


def _store_check(cfg: Config, now: float) -> Check:
    try:
        error = probe_store(cfg, now)
    except CannotTell as exc:
        return Check("store", UNKNOWN, str(exc))
    state = read_state(cfg)
    if error is not None:
        since = f" since {format_time(state['since'])}" if state else ""
        return Check("store", CRITICAL, f"the Exim user cannot do what the hooks do{since}, so counting fails "
                                        f"open: {error}", error=error)
    used = _size(os.path.join(cfg.store.path, "data.mdb"))
    disk = shutil.disk_usage(cfg.store.path)
    text = f"writable, {_mib(used)} used"
    data = {"used_bytes": used, "disk_free_bytes": disk.free}
    if disk.free < min(LOW_DISK, disk.total // 10):
        return Check("store", WARNING, f"{text}, but only {_mib(disk.free)} free on its filesystem", **data)
    return Check("store", OK, text, **data)


def _mirror_check(cfg: Config, store: Store) -> Check:
    generation = store.generation()
    seen = mirror.state(store, cfg.store.mirror_dir)
    behind = {name: g for name, g in seen["files"].items() if g is None or g < generation}
    data = {"generation": generation, "files": seen["files"], "stamp": seen["stamp"], "temp_files": seen["temp_files"]}
    if behind or seen["stamp"] < generation:
        shown = ", ".join(f"{name} at {'?' if g is None else g}" for name, g in behind.items()) or "the stamp"
        return Check("mirror", CRITICAL, f"behind the store (generation {generation}): {shown}; Exim does not "
                                         "see every block (eximhook maintain or export rewrites it)", **data)
    if seen["temp_files"]:
        return Check("mirror", WARNING, f"at generation {generation}, with {len(seen['temp_files'])} temp file(s) "
                                        "left by a killed rewrite (eximhook maintain removes them)", **data)
    return Check("mirror", OK, f"at generation {generation}", **data)


def _outbox_check(store: Store, now: float) -> Check:
    items = store.outbox()
    data = {"items": [describe_item(i, now) for i in items]}
    if not items:
        return Check("outbox", OK, "empty", **data)
    worst, texts = OK, []
    for item in items:
        block = item["block"]
        who = f"{block['ns']} {block['key']}" + (" (to the owner)" if item.get("kind") == "owner" else "")
        if outbox.stuck(item):
            worst = max(worst, WARNING)
            texts.append(f"{who}: stuck in sending since {format_time(item['claimed'])} (its sender died; "
                         "the next notify run resends it)")
        elif item["state"] == "queued" and now - max(item["ts"], item.get("hold_until", 0)) > _OLD_QUEUED:
            worst = max(worst, WARNING)
            texts.append(f"{who}: not sent since {format_time(item['ts'])} ({item['attempts']} attempt(s); "
                         f"{item.get('error') or 'no sender ran'})")
    oldest = min(i["ts"] for i in items)
    summary = f"{len(items)} notification(s), the oldest from {format_time(oldest)}"
    return Check("outbox", worst, "; ".join([summary, *texts]), **data)


def _spool_check(store: Store) -> Check:
    """The spool-space guard's state as maintenance last saw it (``spool.check``)."""
    since = store.spool_low_since()
    if since is None:
        return Check("spool", OK, "blocked subjects' mail is frozen, as evidence")
    return Check("spool", WARNING, f"short of space since {format_time(since)}: blocked subjects' mail is refused, "
                                   "not frozen (purge their frozen spam to make room)", since=since)


def describe_item(item: dict[str, Any], now: float) -> dict[str, Any]:
    """A notification's state for people: queued, held, sending, or stuck (and since)."""
    if outbox.stuck(item):
        state, since = "stuck", item["claimed"]
    elif item["state"] == "sending":
        state, since = "sending", item["claimed"]
    elif now < item.get("hold_until", 0):
        state, since = "held", item["ts"]
    else:
        state, since = "queued", item["ts"]
    block = item["block"]
    return {"seq": item["seq"], "ns": block["ns"], "key": block["key"], "kind": item.get("kind", "blocked"),
            "to": item.get("to"), "state": state, "since": since, "attempts": item["attempts"],
            "error": item.get("error")}


def _serve_check(cfg: Config, now: float) -> Check:
    from ..serve.sockets import ping

    try:
        rtt = ping(cfg.serve.socket, cfg.serve.timeout)
    except ServeError as exc:
        stamp = os.path.join(cfg.store.path, FALLBACK_STAMP)
        fell_back = os.stat(stamp).st_mtime if os.path.exists(stamp) else None
        if fell_back is not None and now - fell_back < _RECENT_FALLBACK:
            return Check("serve", WARNING, f"down ({exc}); Exim fell back to the ${{run}} hook at "
                                           f"{format_time(fell_back)}", up=False)
        if cluster.shares(cfg):  # only the daemon counts in Redis: this relay has left it
            return Check("serve", WARNING, f"down ({exc}): [store] backend is \"redis\", and without the daemon "
                                           "this relay counts in its own store only", up=False)
        return Check("serve", OK, "not running (no ${run} fallback in the last hour: not in use)", up=False)
    return Check("serve", OK, f"up ({rtt * 1000:.1f} ms)", up=True, rtt_ms=round(rtt * 1000, 2))


def _rspamd_check(cfg: Config) -> Check | None:
    """The rspamd Exim scans mail with (``rspamd.servers``): does its scanner answer?
    When none does, Exim accepts mail unscanned and counts no verdict, which its log says
    only message by message. None where Exim uses no rspamd."""
    servers = rspamd.servers(cfg)
    if not servers:
        return None
    down = [f"{' '.join(s[:2])} ({why})" for s in servers if (why := rspamd.no_pong(s, cfg.serve.timeout))]
    if len(down) == len(servers):
        return Check("rspamd", WARNING, f"does not answer: {'; '.join(down)}; Exim accepts mail unscanned and counts "
                                        "no spam verdict (its mainlog: \"spam acl condition: ...\")", up=False)
    return Check("rspamd", WARNING if down else OK, f"answers ({len(servers) - len(down)} of {len(servers)})"
                 + (f"; not {'; '.join(down)}" if down else ""), up=True)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512  # what the sparse file really takes
    except OSError:
        return 0


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
