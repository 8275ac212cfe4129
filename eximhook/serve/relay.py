"""A relay's copy of what the Redis it shares decides (``[store] backend = "redis"``):
the blocks Redis makes or holds, into this relay's own store and mirror files before
anyone hears an answer; and the relay's state, up (counting in Redis) or down (counting
alone, journaled: ``backends.lmdb.Journaled``). ``shared`` answers requests on it,
``sync`` follows what the other relays do."""

from __future__ import annotations

import time

from ..backends.lmdb import Journaled, exemptions_in
from ..engine import actions, settle
from ..errors import NotBlocked
from ..model.records import block_record
from ..periods import format_time
from ..storage import known, mirror
from ..storage import relay_copy as local

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any, Protocol

    from ..backends.redis import RedisBackend
    from ..backends.redis_values import Undecodable
    from ..config.hookcache import View
    from ..config.load import Config
    from ..log import Logger
    from ..model.records import Outcome, Request
    from ..storage.counters import Counter, Counters, Tally
    from ..storage.store import Store
    from .connection import Connection
    from .worker import Outbox

    class Server(Protocol):
        """What the Redis side uses of the daemon (``server.Server``)."""

        loop: asyncio.AbstractEventLoop
        cfg: Config
        view: View
        log: Logger
        store: Store
        counters: Counters
        outbox: Outbox

        def failure(self, kind: str, text: str) -> None: ...
        def fail(self, conn: Connection, req: Request, exc: BaseException) -> None: ...

_SKIPPED = 1000  # bad values in Redis each logged once; past that many, once a minute at most


class Relay:
    """This relay's side of the Redis backend."""

    def __init__(self, server: Server, backend: RedisBackend) -> None:
        import redis

        self.server, self.backend = server, backend
        self.local = Journaled(server.store, server.counters)  # while Redis is down
        self.unreachable = (redis.ConnectionError, redis.TimeoutError, OSError)
        self.up = True  # False from a failed call until the sync thread has reconciled
        self.skipped: set[tuple[bytes, bytes | str | None]] = set()
        backend.skip = self.skip

    def down(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            import redis

            why = ("refused this relay: check the password in [store] redis_url"
                   if isinstance(exc, redis.AuthenticationError) else "did not answer")
            self.server.log.log("err", f"{self.where()} {why} ({type(exc).__name__}: {exc}): "
                                       "counting on this relay alone until it answers")
            local.counting_alone(self.server.store, time.time())

    def counter(self, ns: str, key: str, name: str) -> Counter:
        """A subject's counter in Redis; this relay's own while Redis is down (a customer's
        members' shares, for the outbox thread)."""
        if self.up:
            try:
                return self.backend.counter(ns, key, name)
            except self.unreachable as exc:
                self.down(exc)
        return self.server.counters.get(ns, key, name)

    def where(self) -> str:
        from ..backends.connect import describe

        return describe(self.server.cfg.store)

    def skip(self, bad: Undecodable) -> None:
        """A value in Redis that is not eximhook's: logged once (the sync meets it at each
        comparison), passed over."""
        where = (bad.key, bad.field)
        if where in self.skipped:
            return
        if len(self.skipped) < _SKIPPED:
            self.skipped.add(where)
            self.server.log.log("err", f"{bad}: passed over")
        else:
            self.server.failure("skip", f"{bad}: passed over")

    def exempt(self, ns: str) -> dict[str, tuple[tuple[str, str], ...]]:
        """``[exempt]`` and the admin's ``eximhook exempt add`` (copied from Redis); for a
        network, those of the addresses in it too (``exempt.spaces``)."""
        store = self.server.store
        return {ns: tuple(store.read(exemptions_in(store, self.server.view.exempt, ns)))}

    def keep(self, tally: Tally, outcome: Outcome, now: float, hold: float, frozen: str,
              at: float | None = None) -> None:
        """What Redis decided, into this relay's store before anyone hears it (as
        ``Server._settle``): a block it made with its notification, a would-block record,
        or a block another relay made; then the log line, the flush and the mirror.
        ``at``: the event's time, if before ``now`` (a journaled count)."""
        cfg, store, log = self.server.cfg, self.server.store, self.server.log
        ns, key = tally.ns, tally.key
        if outcome.tripped:
            record = self.backend.get_block(ns, key)
            if record is not None:  # else lifted meanwhile
                self.know([record], now)
                find = settle.owner_of(self.server.view, log)
                to = None if find is None else find(ns, key) or ""
                # the sync thread may have copied the published record first, without
                # notification: this relay's script tripped, so the mail is this relay's
                if not store.block(record, now, True, hold, to, cfg.expiry.schedule()):
                    store.notify(record, now, hold, to)
        elif outcome.shadowed:
            limit, period = tally.window
            record = block_record(ns, key, now, by="eximhook", reason="limit", counter_name=tally.name,
                                       limit=limit, period=period, count=tally.count, counter=tally.counter)
            record["exempt"] = outcome.exempt
            if at is not None and at != now:
                record["event_at"] = at  # as RedisBackend.record's
            store.shadow(record, now, cfg.notify_shadow and outcome.exempt is None)
        elif outcome.blocked:
            self.copy(ns, key, now)
        if outcome.queued:  # in this store's outbox now: this relay mails it
            self.backend.take(ns, key, outcome.queued)
        self.made(tally, outcome, frozen)

    def made(self, tally: Tally, outcome: Outcome, frozen: str) -> None:
        """The log line, the flush and the mirror; the outbox thread told (``settle.after``)."""
        server = self.server
        settle.after(server.store, server.view, server.log, tally, outcome, frozen=frozen, outbox=server.outbox)

    def learned(self, found: tuple[str, str, float] | None) -> None:
        """A network this relay learned an account sends from (``logins.learn``), for
        every relay: a login block there refuses the account's AUTH only from networks
        none of them knows it from. While Redis is down, this relay's alone."""
        if found is not None and self.up:
            try:
                self.backend.learn(*found)
            except self.unreachable as exc:
                self.down(exc)

    def know(self, records: list[dict[str, Any]], now: float) -> None:
        """For each login block of ``records``, the networks its account is known from on
        any relay, into this store before its mirror is written (``storage.known``); for
        the block of all logins, every account's."""
        for record in records:
            if record["ns"] not in ("login", "all") or not self.up:
                continue
            try:  # one account's, or (all logins) every account's
                learned = ([(record["key"], self.backend.known(record["key"]))] if record["ns"] == "login"
                           else self.backend.known_everyone())
            except self.unreachable as exc:
                self.down(exc)
                return
            known.merge(self.server.store, learned, now)

    def copy(self, ns: str, key: str, now: float) -> None:
        """A block in Redis, into this store and mirror if it is not there yet."""
        store = self.server.store
        if not store.is_blocked(ns, key):
            record = self.backend.get_block(ns, key)
            if record is not None and store.block(record, now, False):
                self.copied([record], now)

    def copied(self, records: list[dict[str, Any]], now: float) -> None:
        self.know(records, now)
        for record in records:
            self.server.log.log("notice", f"blocked {record['ns']} {record['key']}: copied from Redis ({record['by']} "
                                          f"on {record.get('node')}, since {format_time(record['since'])})")
        if records:
            mirror.refresh(self.server.store, self.server.cfg.store.mirror_dir, self.server.log, force=True)

    def lift(self, ns: str, key: str, now: float, by: str, event: str,
              since: float | None = None) -> None:
        """A block lifted in Redis, lifted here (the counters reset, the mirror written)."""
        cfg, store = self.server.cfg, self.server.store
        only = None if since is None else (lambda record: record["since"] == since)
        try:
            actions.unblock(store, self.server.counters, cfg.store.mirror_dir, ns, key, now, by=by, event=event,
                         only=only)
        except NotBlocked:
            return  # lifted here already (the admin command ran on this relay), or never copied
        self.server.log.log("notice", f"unblocked {ns} {key}: lifted in Redis ({by})")
