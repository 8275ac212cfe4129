"""``eximhook serve`` with ``[store] backend = "redis"``: the relays count and block in
one Redis (issue 13), and each keeps its own LMDB store as a copy of the blocks.

Why the local store stays: Exim reads the mirror files, the ``${run}`` hooks (the
daemon down) count there, and every admin command, the outbox and the mirror rewrite
read it. So Redis decides (one Lua script per count: one block, one notification
cluster-wide), and every block it holds is copied into each relay's store, whose
mirror files are then rewritten as for a local block:

- a block this relay made: by the worker that counted it, before 1 is answered, with
  its notification, which it then takes off the shared outbox (``RedisBackend.take``);
- a change another relay (or an admin command) made: by the sync thread, at once from
  what the scripts publish, and from a comparison of the whole set every ``[serve]
  check_interval`` (a message missed while disconnected), which also claims the
  notifications a relay left behind (``RedisBackend.claim``).

When a call to Redis fails, the relay goes on alone (``up`` false, logged): checks
answer from its own store, and counting goes to its own counters, each count kept in
the store's journal. The sync thread tries Redis every second; when it answers, it
reconciles before the relay counts there again: the blocks made alone are pushed to
Redis (their notification went out already), then the journaled counts are sent, once
each (``replay``), so a bot that went on while Redis was down is counted in full; a
block one of them trips is dated when Redis makes it, the count's own time kept as
``event_at``.

A value in Redis that is not what eximhook writes (``RedisBackend.skip``) is logged
once and passed over, as is a published message that is not eximhook's: one bad
entry never stops the sync.

The event loop never calls Redis: each request is a job for a small thread pool, and
the connection's own deadline answers the fallback token when Redis is slow.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..backends.base import Event
from ..backends.lmdb import LmdbBackend
from ..engine import core, owner
from ..errors import BadSubject, NotBlocked
from ..model.subjects import FREEZING, normalize
from ..periods import format_time
from ..storage import relay_copy as local
from . import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..backends.redis import RedisBackend, Undecodable
    from ..storage.counters import Tally
    from ..storage.store import Outcome
    from .connection import Connection
    from .server import Server

_WORKERS = 4  # Redis calls at once; each waits at most [store] redis_timeout
_RECONNECT = 1.0  # seconds between two tries of the sync thread to reach Redis again
_MINE_AFTER = 10.0  # a notification this relay queued and did not take: it stopped in between
_ORPHAN_AFTER = 60.0  # one no relay took: the relay that queued it is down
_SKIPPED = 1000  # bad values in Redis each logged once; past that many, once a minute at most


class Shared:
    """The daemon's side of the Redis backend: the request jobs and the sync thread."""

    def __init__(self, server: Server, backend: RedisBackend) -> None:
        import redis

        self.server, self.backend = server, backend
        self.local = LmdbBackend(server.store, server.counters)  # while Redis is down
        self.unreachable = (redis.ConnectionError, redis.TimeoutError, OSError)
        self.up = True  # False from a failed call until the sync thread has reconciled
        # the ids of this daemon's counts: unique across relays and restarts
        self.run, self.ids = f"{backend.node}:{os.getpid()}:{time.time_ns()}", itertools.count()
        self.pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="eximhook-redis")
        self.stopping = threading.Event()
        self.sync_thread = threading.Thread(target=self._sync_loop, name="eximhook-sync", daemon=True)
        self.skipped: set[tuple[bytes, bytes | str | None]] = set()
        backend.skip = self._skip

    def start(self) -> None:
        self.sync_thread.start()

    def stop(self) -> None:
        """After the last answer: let the jobs in flight end, and the sync thread."""
        self.stopping.set()
        self.pool.shutdown(wait=True)
        self.sync_thread.join()

    def _down(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            import redis

            why = ("refused this relay: check the password in [store] redis_url"
                   if isinstance(exc, redis.AuthenticationError) else "did not answer")
            self.server.log.log("err", f"{self._where()} {why} ({type(exc).__name__}: {exc}): "
                                       "counting on this relay alone until it answers")
            local.counting_alone(self.server.store, time.time())

    def _where(self) -> str:
        from ..backends.connect import describe

        return describe(self.server.cfg.store)

    def _skip(self, bad: Undecodable) -> None:
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

    # -- requests ------------------------------------------------------------------

    def submit(self, conn: Connection, req: protocol.Request, now: float) -> None:
        """Answer ``req`` from a worker thread (the loop goes on at once)."""
        self.pool.submit(self._job, conn, req, now)

    def _job(self, conn: Connection, req: protocol.Request, now: float) -> None:
        loop = self.server.loop
        if conn.state != "waiting":  # answered with the fallback at its deadline: Redis was slow
            return
        try:
            events, blocked = self._events(req, now), None  # once: they mark message references
            if self.up:
                try:
                    blocked = self._serve(req, events, now)
                except self.unreachable as exc:
                    self._down(exc)
            if blocked is None:  # each event with its id: one Redis ran after all is not counted twice
                blocked = self._serve_alone(req, events, now)
        except BadSubject as exc:
            self.server.failure("bad", f"bad request: {exc}; answered E")
            loop.call_soon_threadsafe(conn.answer, protocol.ERROR)
        except Exception as exc:  # a store failure or a bug: the fallback, logged
            loop.call_soon_threadsafe(self.server.fail, conn, req, exc)
        else:
            loop.call_soon_threadsafe(conn.answer, protocol.YES if blocked else protocol.NO)

    def _hold(self, req: protocol.Request) -> float:
        # as Server._settle: only a count at RCPT time waits for its message's id
        return 0.0 if req.op in ("message", "bounce") or req.ns not in FREEZING else self.server.cfg.notify.hold

    def _serve(self, req: protocol.Request, events: list[Event], now: float) -> bool:
        """Count the request's events in Redis (none for a check); is any of its subjects
        blocked? Each block it finds or makes is in this relay's store and mirror first."""
        cfg, hold = self.server.cfg, self._hold(req)
        frozen = req.fields.get("id", "") if req.op == "message" else ""
        blocked, seen, covered = False, set(), set()
        for event in events:
            if cfg.wider(event.ns, event.key) in covered:  # a blocked network stands for its addresses
                continue
            tally, outcome = self.backend.record(event, now, hold=hold, notify_shadow=cfg.notify_shadow,
                                                 exempt=self._exempt(event.ns))
            self._keep(tally, outcome, now, hold, frozen)
            seen.add((event.ns, event.key))
            if outcome.blocked:
                blocked = True
                covered.add((event.ns, event.key))
        if (req.ns, req.key) not in seen and self.backend.is_blocked(req.ns, req.key):
            self._copy(req.ns, req.key, now)
            blocked = True
        return blocked

    def _serve_alone(self, req: protocol.Request, events: list[Event], now: float) -> bool:
        """``_serve`` on this relay's own store and counters (Redis is down): each count
        journaled, for Redis when it is back; the checks against the blocks copied so far."""
        cfg, store, hold = self.server.cfg, self.server.store, self._hold(req)
        frozen = req.fields.get("id", "") if req.op == "message" else ""
        blocked, seen, covered = False, set(), set()
        for event in events:
            if cfg.wider(event.ns, event.key) in covered:  # as _serve
                continue
            tally, outcome = self.local.record(event, now, hold=hold, notify_shadow=cfg.notify_shadow,
                                               exempt=cfg.exempt)
            local.journal(store, {"ts": now, "ns": event.ns, "key": event.key, "counter": event.policy.name,
                           "weight": event.weight, "evidence": event.evidence, "ip": event.ip, "hold": hold,
                           "once": event.once})
            self._made(tally, outcome, frozen)
            seen.add((event.ns, event.key))
            if outcome.blocked:
                blocked = True
                covered.add((event.ns, event.key))
        return blocked or ((req.ns, req.key) not in seen and store.is_blocked(req.ns, req.key))

    def _events(self, req: protocol.Request, now: float) -> list[Event]:
        """What the request counts, as ``Server._body`` does on the local counters, each
        event with its id (``Event.once``). The message references (a bounce's sender)
        stay in this relay's counters."""
        events = self._what(req, now)
        for event in events:
            event.once = f"{self.run}:{next(self.ids)}"
        return events

    def _what(self, req: protocol.Request, now: float) -> list[Event]:
        cfg, f, counters = self.server.cfg, req.fields, self.server.counters
        keep: dict[str, Any] = {"keep_evidence": cfg.evidence.rcpts, "keep_ips": cfg.evidence.ips}
        ip = f.get("ip") or None
        if req.op == "check-blocked":
            return []
        if req.op == "message":
            n, sender, mid = int(f["n"]), "", core.message_ref(f.get("mid", ""))
            if f.get("sender"):
                sender = normalize("sender", f["sender"])
            if sender and mid and req.ns != "sender":
                counters.update(lambda txn: counters.remember_in(txn, sender, mid, req.ns, req.key, now, n))
            evidence = f"{f.get('id') or '-'} ({n} rcpt)"
            return [Event(ns, key, p, weight=n, evidence=evidence, ip=ip, **keep) for ns, key, p in
                    core.counted(cfg.policy, "recipients", core.message_subjects(req.ns, req.key, sender))]
        if req.op == "bounce":
            mid, remember = core.message_ref(f.get("mid", "")), cfg.bounces.remember
            subjects = counters.update(lambda txn: core.bounce_subjects_in(
                counters, txn, now, req.key, message_id=mid, remember=remember, remote=f.get("remote") == "1", ip=ip))
            failed = core.unfold(f.get("failed") or None)
            return [Event(ns, key, p, evidence=failed, keep_evidence=cfg.evidence.rcpts)
                    for ns, key, p in core.counted(cfg.policy, "bounces", subjects)]
        subjects = core.record_subjects(req.ns, req.key, cfg.wider(req.ns, req.key))
        return [Event(ns, key, p, weight=int(f.get("n") or 1), evidence=f.get("rcpt") or f.get("evidence") or None,
                      ip=ip, **keep) for ns, key, p in core.counted(cfg.policy, req.kind, subjects)]

    def _exempt(self, ns: str) -> dict[str, tuple[tuple[str, str], ...]]:
        """``[exempt]`` and the admin's ``eximhook exempt add`` (copied from Redis); for a
        network, those of the addresses in it too (``exempt.spaces``)."""
        store = self.server.store
        return {ns: tuple(store.read(core.exemptions_in(store, self.server.cfg.exempt, ns)))}

    def _keep(self, tally: Tally, outcome: Outcome, now: float, hold: float, frozen: str,
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
                to = owner.resolver(cfg, log)(ns, key) or "" if cfg.owner.notify else None
                # the sync thread may have copied the published record first, without
                # notification: this relay's script tripped, so the mail is this relay's
                if not store.block(record, now, True, hold, to, cfg.expiry.schedule()):
                    store.notify(record, now, hold, to)
        elif outcome.shadowed:
            limit, period = tally.window
            record = core.block_record(ns, key, now, by="eximhook", reason="limit", counter_name=tally.name,
                                       limit=limit, period=period, count=tally.count, counter=tally.counter)
            record["exempt"] = outcome.exempt
            if at is not None and at != now:
                record["event_at"] = at  # as RedisBackend.record's
            store.shadow(record, now, cfg.notify_shadow and outcome.exempt is None)
        elif outcome.blocked:
            self._copy(ns, key, now)
        if outcome.queued:  # in this store's outbox now: this relay mails it
            self.backend.take(ns, key, outcome.queued)
        self._made(tally, outcome, frozen)

    def _made(self, tally: Tally, outcome: Outcome, frozen: str) -> None:
        """The log line, the flush and the mirror; the outbox thread told."""
        ns, key = tally.ns, tally.key
        core.make_known(self.server.store, self.server.cfg.store.mirror_dir, self.server.log, tally, outcome)
        if outcome.tripped or outcome.shadowed:
            self.server.outbox.tripped({(ns, key)})
            if frozen and outcome.tripped:
                self.server.outbox.report(ns, key, frozen)

    def _copy(self, ns: str, key: str, now: float) -> None:
        """A block in Redis, into this store and mirror if it is not there yet."""
        store = self.server.store
        if not store.is_blocked(ns, key):
            record = self.backend.get_block(ns, key)
            if record is not None and store.block(record, now, False):
                self._copied([record])

    def _copied(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.server.log.log("notice", f"blocked {record['ns']} {record['key']}: copied from Redis ({record['by']} "
                                          f"on {record.get('node')}, since {format_time(record['since'])})")
        if records:
            core.refresh_mirror(self.server.store, self.server.cfg.store.mirror_dir, self.server.log, force=True)

    # -- the sync thread -----------------------------------------------------------

    def _sync_loop(self) -> None:
        while not self.stopping.is_set():
            pubsub = self.backend.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.backend.channel)
                synced = -float("inf")
                while not self.stopping.is_set():
                    if time.monotonic() - synced >= self.server.cfg.serve.check_interval or not self.up:
                        # after subscribing (nothing published since is missed), then as a
                        # check of what the messages brought
                        self.reconcile(time.time())
                        synced = time.monotonic()
                    message = pubsub.get_message(timeout=min(1.0, self.server.cfg.serve.check_interval))
                    if message is not None:
                        self._apply(message["data"], time.time())
            except self.unreachable as exc:
                self._down(exc)
                self.stopping.wait(_RECONNECT)
            except Exception as exc:  # a bug must not end the sync: log it, start over
                self.server.failure("sync", f"could not follow the changes in Redis: {type(exc).__name__}: {exc}; "
                                            f"trying again every {_RECONNECT:g}s")
                self.stopping.wait(_RECONNECT)
            finally:
                pubsub.close()

    def _apply(self, data: bytes, now: float) -> None:
        """One change another relay, or an admin command, published (``data``: JSON)."""
        try:
            message = json.loads(data)
            op = message["op"]
            subject = message["record"] if op == "block" else message
            ns, key = (subject["ns"], subject["key"]) if op in ("block", "unblock") else ("", "")
            lift = (f"{message['by']} on {message['node']}", message["event"]) if op == "unblock" else None
        except (ValueError, LookupError, TypeError) as exc:
            self.server.failure("skip", f"a message on {self.backend.channel.decode()} that is not eximhook's "
                                        f"({type(exc).__name__}: {exc}): {data[:200]!r}: passed over")
            return
        if op == "block":
            self._copy(ns, key, now)
        elif lift is not None:
            self._lift(ns, key, now, *lift)
        elif op == "exempt":
            self._exemptions()

    def _lift(self, ns: str, key: str, now: float, by: str, event: str,
              since: float | None = None) -> None:
        """A block lifted in Redis, lifted here (the counters reset, the mirror written)."""
        cfg, store = self.server.cfg, self.server.store
        only = None if since is None else (lambda record: record["since"] == since)
        try:
            core.unblock(store, self.server.counters, cfg.store.mirror_dir, ns, key, now, by=by, event=event,
                         only=only)
        except NotBlocked:
            return  # lifted here already (the admin command ran on this relay), or never copied
        self.server.log.log("notice", f"unblocked {ns} {key}: lifted in Redis ({by})")

    def reconcile(self, now: float) -> None:
        """Bring this relay and Redis together: what this relay did alone goes to Redis,
        then what Redis holds comes here (blocks, lifts, exemptions, notifications no
        relay took). After a failure, the relay counts in Redis again only then."""
        store, node = self.server.store, self.backend.node
        pushed = 0
        for record in store.blocks():
            if record.get("node") is None:  # made here alone: the ${run} hooks, or while Redis was down
                self.backend.block_queued(dict(record, node=node), now, notify=False)  # mailed here already
                local.mark_shared(store, record["ns"], record["key"], node)
                pushed += 1
        replayed = self._replay(now)
        local.counting_alone(store, None)
        if not self.up:
            self.up = True
            replayed += self._replay(time.time())  # counted here while the first pass ran
            self.server.log.log("notice", f"{self._where()} answers again: {pushed} block(s) made here "
                                          f"and {replayed} count(s) sent to it; counting there again")
        self._exemptions()
        self._compare(now)
        self._claim(now)

    def _replay(self, now: float) -> int:
        """The journaled counts, into Redis once each (a count already there: a crash
        between sending it and forgetting it), each at its own time; a block one makes
        is made ``now``."""
        from ..backends.redis import Replayed

        cfg, store, sent = self.server.cfg, self.server.store, 0
        for item in local.journaled(store):
            policy = cfg.policy(item["ns"], item["counter"], item["key"])
            if policy is not None and policy.windows:
                event = Event(item["ns"], item["key"], policy, weight=item["weight"], evidence=item["evidence"],
                              ip=item["ip"], keep_evidence=cfg.evidence.rcpts, keep_ips=cfg.evidence.ips,
                              once=item["once"])
                try:
                    tally, outcome = self.backend.record(event, item["ts"], hold=item["hold"],
                                                         notify_shadow=cfg.notify_shadow,
                                                         exempt=self._exempt(event.ns), made=now)
                except Replayed:
                    pass
                else:
                    self._keep(tally, outcome, now, item["hold"], "", at=item["ts"])
                    sent += 1
            local.sent(store, item["seq"])
        return sent

    def _compare(self, now: float) -> None:
        """The whole set: blocks Redis has that this store lacks are copied; a copy here
        that Redis no longer has was lifted by another relay (Redis keeps the lifted
        record a while) or lost by Redis (a failover, a flush): then it goes back.
        This store is read first: a block copied after that is in Redis's answer too."""
        store = self.server.store
        mine = {(r["ns"], r["key"]): r for r in store.blocks() if r.get("node") is not None}
        theirs = self.backend.blocks()
        have = {(r["ns"], r["key"]) for r in theirs}
        added = [r for r in theirs if not store.is_blocked(r["ns"], r["key"]) and store.block(r, now, False)]
        self._copied(added)
        for (ns, key), record in mine.items():
            if (ns, key) in have:
                continue
            lifted = self.backend.lifted(ns, key)
            if lifted is not None and lifted["since"] >= record["since"]:
                self._lift(ns, key, now, f"{lifted.get('node')} (lifted in {self._where()})", "unblocked",
                           since=record["since"])
            elif self.backend.block_queued(record, now, notify=False) >= 0:
                self.server.failure("lost", f"{ns} {key}: blocked here since {format_time(record['since'])} and "
                                            f"never lifted, but missing in {self._where()} (a failover or a "
                                            "flush lost it): put back")

    def _exemptions(self) -> None:
        """The admin's exemptions, as Redis holds them: those added here alone (before
        the switch to Redis) go there; those another relay removed go from here."""
        store, node = self.server.store, self.backend.node
        theirs = {(r["ns"], r["pattern"]): r for r in self.backend.exemptions()}
        for record in store.exemptions():
            k = (record["ns"], record["pattern"])
            if record.get("node") is None:
                self.backend.exempt(dict(record, node=node))
                local.mark_shared(store, record["ns"], None, node, pattern=record["pattern"])
            elif k not in theirs and store.unexempt(record["ns"], record["pattern"], time.time(), "another relay"):
                self.server.log.log("notice", f"exempt {k[0]} {k[1]}: removed in Redis, so here too")
        for k, record in theirs.items():
            if store.exempt(record):
                self.server.log.log("notice", f"exempt {k[0]} {k[1]}: copied from Redis")

    def _claim(self, now: float) -> None:
        """Notifications no relay took: mailed from here (see ``RedisBackend.claim``)."""
        store, node = self.server.store, self.backend.node
        for entry in self.backend.claim(now, mine_after=_MINE_AFTER, orphan_after=_ORPHAN_AFTER):
            record = entry["block"]
            ns, key = record["ns"], record["key"]
            if entry["kind"] == "would-block":
                store.shadow(record, now, True)
            elif entry["node"] == node and store.is_blocked(ns, key):
                continue  # queued here with the block before this relay stopped
            elif not store.block(record, now, True):
                store.notify(record, now)
            self.server.log.log("notice", f"{entry['kind']} {ns} {key}: notification claimed "
                                          f"(queued by {entry['node']}, not taken)")
            self.server.outbox.tripped({(ns, key)})
