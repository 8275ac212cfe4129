"""``eximhook serve`` with ``[store] backend = "redis"``: the relays count and block in
one Redis (issue 13), and each keeps its own LMDB store as a copy of the blocks.

Why the local store stays: Exim reads the mirror files, the ``${run}`` hooks (the
daemon down) count there, and every admin command, the outbox and the mirror rewrite
read it. So Redis decides (one Lua script per count: one block, one notification
cluster-wide), and every block it holds is copied into each relay's store, whose
mirror files are then rewritten as for a local block:

- a block this relay made: by the worker that counted it, before 1 is answered, with
  its notification (mailed by this relay's outbox thread, as today);
- a block another relay made: by the sync thread, at once from the record the script
  publishes (``RedisBackend.channel``), and from the whole set every ``[serve]
  check_interval`` (a message missed while disconnected); copied without notification.

The event loop never calls Redis: each request is a job for a small thread pool, and
the connection's own deadline answers the fallback token when Redis is slow or down.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import core, owner
from ..backends.base import Event
from ..errors import BadSubject
from ..subjects import FREEZING, normalize
from . import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..backends.redis import RedisBackend
    from ..counters import Tally
    from ..store import Outcome
    from .connection import Connection
    from .server import Server

_WORKERS = 4  # Redis calls at once; each waits at most [store] redis_timeout
_RECONNECT = 1.0  # seconds between two tries of the sync thread to subscribe again


class Shared:
    """The daemon's side of the Redis backend: the request jobs and the sync thread."""

    def __init__(self, server: Server, backend: RedisBackend) -> None:
        self.server, self.backend = server, backend
        self.pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="eximhook-redis")
        self.stopping = threading.Event()
        self.sync_thread = threading.Thread(target=self._sync_loop, name="eximhook-sync", daemon=True)

    def start(self) -> None:
        self.sync_thread.start()

    def stop(self) -> None:
        """After the last answer: let the jobs in flight end, and the sync thread."""
        self.stopping.set()
        self.pool.shutdown(wait=True)
        self.sync_thread.join()

    # -- requests ------------------------------------------------------------------

    def submit(self, conn: Connection, req: protocol.Request, now: float) -> None:
        """Answer ``req`` from a worker thread (the loop goes on at once)."""
        self.pool.submit(self._job, conn, req, now)

    def _job(self, conn: Connection, req: protocol.Request, now: float) -> None:
        loop = self.server.loop
        if conn.state != "waiting":  # answered with the fallback at its deadline: Redis was slow
            return
        try:
            blocked = self._serve(req, now)
        except BadSubject as exc:
            self.server.failure("bad", f"bad request: {exc}; answered E")
            loop.call_soon_threadsafe(conn.answer, protocol.ERROR)
        except Exception as exc:  # Redis down, a store failure or a bug: the fallback, logged
            loop.call_soon_threadsafe(self.server.fail, conn, req, exc)
        else:
            loop.call_soon_threadsafe(conn.answer, protocol.YES if blocked else protocol.NO)

    def _serve(self, req: protocol.Request, now: float) -> bool:
        """Count the request's events in Redis (none for a check); is any of its subjects
        blocked? Each block it finds or makes is in this relay's store and mirror first."""
        cfg = self.server.cfg
        hold = 0.0 if req.op in ("message", "bounce") or req.ns not in FREEZING else cfg.notify.hold
        frozen = req.fields.get("id", "") if req.op == "message" else ""
        blocked, seen = False, set()
        for event in self._events(req, now):
            tally, outcome = self.backend.record(event, now, hold=hold, notify_shadow=cfg.notify_shadow,
                                                 exempt=self._exempt(event.ns))
            self._keep(tally, outcome, now, hold, frozen)
            seen.add((event.ns, event.key))
            blocked = blocked or outcome.blocked
        if (req.ns, req.key) not in seen and self.backend.is_blocked(req.ns, req.key):
            self._copy(req.ns, req.key, now)
            blocked = True
        return blocked

    def _events(self, req: protocol.Request, now: float) -> list[Event]:
        """What the request counts, as ``Server._body`` does on the local counters. The
        message references (a bounce's sender) stay in this relay's counters."""
        cfg, f, counters = self.server.cfg, req.fields, self.server.counters
        keep = {"keep_evidence": cfg.evidence.rcpts, "keep_ips": cfg.evidence.ips}
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
            subjects = [(req.ns, req.key), *([("sender", sender)] if sender and req.ns != "sender" else [])]
            return [Event(ns, key, p, weight=n, evidence=evidence, ip=ip, **keep)
                    for ns, key in subjects if (p := cfg.policy(ns, "recipients", key)) and p.windows]
        if req.op == "bounce":
            mid, remember = core.message_ref(f.get("mid", "")), cfg.bounces.remember
            subjects = counters.update(lambda txn: core.bounce_subjects_in(
                counters, txn, now, req.key, message_id=mid, remember=remember, remote=f.get("remote") == "1", ip=ip))
            failed = core.unfold(f.get("failed") or None)
            return [Event(ns, key, p, evidence=failed, keep_evidence=cfg.evidence.rcpts)
                    for ns, key in subjects if (p := cfg.policy(ns, "bounces", key)) and p.windows]
        policy = cfg.policy(req.ns, req.kind, req.key)
        if policy is None or not policy.windows:
            return []
        return [Event(req.ns, req.key, policy, weight=int(f.get("n") or 1),
                      evidence=f.get("rcpt") or f.get("evidence") or None, ip=ip, **keep)]

    def _exempt(self, ns: str) -> dict[str, tuple[tuple[str, str], ...]]:
        """``[exempt]`` and the admin's ``eximhook exempt add`` (this relay's store)."""
        store = self.server.store
        added = store.read(lambda txn: store.exemptions_in(txn, ns))
        return {ns: (*self.server.cfg.exempt.get(ns, ()), *added)}

    def _keep(self, tally: Tally, outcome: Outcome, now: float, hold: float, frozen: str) -> None:
        """What Redis decided, into this relay's store before anyone hears it (as
        ``Server._settle``): a block it made with its notification, a would-block record,
        or a block another relay made; then the log line, the flush and the mirror."""
        cfg, store, log = self.server.cfg, self.server.store, self.server.log
        ns, key = tally.ns, tally.key
        if outcome.tripped:
            record = self.backend.get_block(ns, key)
            if record is not None:  # else lifted meanwhile
                to = owner.resolver(cfg, log)(ns, key) or "" if cfg.owner.notify else None
                # the sync thread may have copied the published record first, without
                # notification: this relay's script tripped, so the mail is this relay's
                if not store.block(record, now, True, hold, to):
                    store.notify(record, now, hold, to)
        elif outcome.shadowed:
            limit, period = tally.window
            record = core.block_record(ns, key, now, by="eximhook", reason="limit", counter_name=tally.name,
                                       limit=limit, period=period, count=tally.count, counter=tally.counter)
            record["exempt"] = outcome.exempt
            store.shadow(record, now, cfg.notify_shadow and outcome.exempt is None)
        elif outcome.blocked:
            self._copy(ns, key, now)
        core.make_known(store, cfg.store.mirror_dir, log, tally, outcome)
        if outcome.tripped or outcome.shadowed:
            self.server.outbox.tripped({(ns, key)})
            if frozen and outcome.tripped:
                self.server.outbox.report(ns, key, frozen)

    def _copy(self, ns: str, key: str, now: float) -> None:
        """A block in Redis, into this store and mirror if it is not there yet."""
        store = self.server.store
        if not store.is_blocked(ns, key):
            record = self.backend.get_block(ns, key)
            if record is not None:
                self._store([record], now)

    # -- the sync thread: blocks other relays made ---------------------------------

    def _sync_loop(self) -> None:
        while not self.stopping.is_set():
            pubsub = self.backend.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.backend.channel)
                synced = -float("inf")
                while not self.stopping.is_set():
                    if time.monotonic() - synced >= self.server.cfg.serve.check_interval:
                        # the whole set: after subscribing (nothing published since is
                        # missed), then as a check of what the messages brought
                        self._store(self.backend.blocks(), time.time())
                        synced = time.monotonic()
                    message = pubsub.get_message(timeout=min(1.0, self.server.cfg.serve.check_interval))
                    if message is not None:
                        self._store([json.loads(message["data"])], time.time())
            except Exception as exc:  # Redis down or restarted: log, subscribe again, resync
                self.server.failure("sync", f"could not follow the blocks in Redis: {type(exc).__name__}: {exc}; "
                                            f"trying again every {_RECONNECT:g}s")
                self.stopping.wait(_RECONNECT)
            finally:
                pubsub.close()

    def _store(self, records: list[dict[str, Any]], now: float) -> None:
        """Copy the blocks this store lacks (no notification: the relay that made one
        sends it), then rewrite the mirror files."""
        store, log = self.server.store, self.server.log
        added = [r for r in records if not store.is_blocked(r["ns"], r["key"]) and store.block(r, now, False)]
        for record in added:
            log.log("notice", f"blocked {record['ns']} {record['key']}: copied from Redis ({record['by']}, "
                              f"since {record['since']})")
        if added:
            core.refresh_mirror(store, self.server.cfg.store.mirror_dir, log, force=True)
