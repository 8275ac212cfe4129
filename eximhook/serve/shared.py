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
import os
import time
from concurrent.futures import ThreadPoolExecutor

from ..engine import events, logins, settle
from ..engine.scores import scores
from ..model.records import Event, Request
from ..model.subjects import SILENT
from . import protocol
from .relay import Relay
from .sync import Sync

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ..backends.base import Backend
    from ..backends.redis import RedisBackend
    from ..model.records import Outcome
    from ..storage.counters import Tally
    from .connection import Connection
    from .relay import Server

_WORKERS = 4  # Redis calls at once; each waits at most [store] redis_timeout


class Shared(Relay):
    """The daemon's side of the Redis backend: the request jobs and the sync thread."""

    def __init__(self, server: Server, backend: RedisBackend) -> None:
        super().__init__(server, backend)
        # the ids of this daemon's counts: unique across relays and restarts
        self.run, self.ids = f"{backend.node}:{os.getpid()}:{time.time_ns()}", itertools.count()
        self.pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="eximhook-redis")
        self.sync = Sync(self)

    def start(self) -> None:
        self.sync.thread.start()

    def stop(self) -> None:
        """After the last answer: let the jobs in flight end, and the sync thread."""
        self.sync.stopping.set()
        self.pool.shutdown(wait=True)
        self.sync.thread.join()

    # -- requests ------------------------------------------------------------------

    def submit(self, conn: Connection, req: Request, now: float) -> None:
        """Answer ``req`` from a worker thread (the loop goes on at once)."""
        self.pool.submit(self._job, conn, req, now)

    def _job(self, conn: Connection, req: Request, now: float) -> None:
        loop = self.server.loop
        if conn.state != "waiting":  # answered with the fallback at its deadline: Redis was slow
            return
        try:
            events, blocked = self._events(req, now), None  # once: they mark message references
            if self.up:
                try:
                    blocked = self._serve(req, events, now)
                except self.unreachable as exc:
                    self.down(exc)
            if blocked is None:  # each event with its id: one Redis ran after all is not counted twice
                blocked = self._serve_alone(req, events, now)
            if not blocked:  # mail that goes out teaches where its sender logs in: here, then every relay
                self.learned(logins.learn(self.server.store, req, now, self.server.view))
        except Exception as exc:  # a store failure or a bug: the fallback, logged
            loop.call_soon_threadsafe(self.server.fail, conn, req, exc)
        else:
            loop.call_soon_threadsafe(conn.answer, protocol.YES if blocked else protocol.NO)

    def _serve(self, req: Request, events: list[Event], now: float) -> bool:
        """Count the request's events in Redis (none for a check); is any of its subjects
        blocked? Each block it finds or makes is in this relay's store and mirror first."""
        return self._count(req, events, now, self.backend, self.keep, self.exempt)

    def _serve_alone(self, req: Request, events: list[Event], now: float) -> bool:
        """``_serve`` on this relay's own store and counters (Redis is down): each count
        journaled, for Redis when it is back; the checks against the blocks copied so far."""
        return self._count(req, events, now, self.local, lambda tally, outcome, _now, _hold, frozen: self.made(
            tally, outcome, frozen), lambda ns: self.server.view.exempt)

    def _count(self, req: Request, events: list[Event], now: float, backend: Backend,
               keep: Callable[[Tally, Outcome, float, float, str], None],
               exempt: Callable[[str], Mapping[str, Sequence[tuple[str, str]]]]) -> bool:
        """Record each event in ``backend`` and ``keep`` what it decided; is any of the
        request's subjects blocked? A blocked network stands for its addresses."""
        view, hold = self.server.view, settle.hold(req, self.server.view)
        frozen = settle.frozen(req)
        blocked, seen, covered, tallies = False, set(), set(), []
        for event in events:
            if view.wider(event.ns, event.key) in covered:
                continue
            tally, outcome = backend.record(event, now, hold=hold, notify_shadow=view.notify_shadow,
                                            exempt=exempt(event.ns))
            keep(tally, outcome, now, hold, frozen)
            tallies.append(tally)
            seen.add((event.ns, event.key))
            if outcome.blocked and tally.ns not in SILENT:
                blocked = True
                covered.add((event.ns, event.key))
        for tally in scores(tallies, now, view, backend.counters_of):  # no script counts them: settled here
            outcome = backend.settle(tally, now, hold=hold, notify_shadow=view.notify_shadow, exempt=exempt(tally.ns))
            keep(tally, outcome, now, hold, frozen)
            blocked = blocked or (outcome.blocked and tally.ns not in SILENT)
        if (req.ns, req.key) in seen or not backend.is_blocked(req.ns, req.key):
            return blocked
        if backend is self.backend:  # blocked in Redis: into this store and mirror before the answer
            self.copy(req.ns, req.key, now)
        return True

    def _events(self, req: Request, now: float) -> list[Event]:
        """What the request counts (``events.events_in``, the one place for it), each
        event with its id (``Event.once``). The message references (a bounce's sender)
        stay in this relay's counters."""
        counters, view = self.server.counters, self.server.view
        found = events.events_of(counters, req, now, view)
        for event in found:
            event.once = f"{self.run}:{next(self.ids)}"
        return found
