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

The event loop never calls Redis: the requests of one turn of the loop are one job for
a small thread pool, which counts their events in one round trip (a pipeline of the
counting script: each script still runs alone), and the connection's own deadline
answers the fallback token when Redis is slow. As the LMDB path groups a turn's counts
in one transaction, this groups them in one round trip.
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
    from ..config.hookcache import View
    from ..model.records import Outcome
    from ..storage.counters import Tally
    from .connection import Connection
    from .relay import Server

    Keep = Callable[[Tally, Outcome, float, float, str], None]  # what a count decided, into this relay

_WORKERS = 4  # Redis calls at once; each waits at most [store] redis_timeout


class Shared(Relay):
    """The daemon's side of the Redis backend: the request jobs and the sync thread."""

    def __init__(self, server: Server, backend: RedisBackend) -> None:
        super().__init__(server, backend)
        # the ids of this daemon's counts: unique across relays and restarts
        self.run, self.ids = f"{backend.node}:{os.getpid()}:{time.time_ns()}", itertools.count()
        self.pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="eximhook-redis")
        self.pending: list[tuple[Connection, Request, float]] = []  # this turn's requests (the loop's thread)
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
        """Answer ``req`` from a worker thread (the loop goes on at once), with the other
        requests of this turn of the loop: their counts go to Redis in one round trip."""
        self.pending.append((conn, req, now))
        if len(self.pending) == 1:
            self.server.loop.call_soon(self._flush)

    def _flush(self) -> None:
        jobs, self.pending = self.pending, []
        self.pool.submit(self._jobs, jobs)

    def _jobs(self, jobs: list[tuple[Connection, Request, float]]) -> None:
        """One turn's requests: counted in Redis together (``_serve_many``), or, with
        Redis down, each alone; each answered, or failed alone (a store failure or a bug:
        the fallback, logged)."""
        loop, live, conns = self.server.loop, [], []
        for conn, req, now in jobs:
            if conn.state != "waiting":  # answered with the fallback at its deadline: Redis was slow
                continue
            try:
                live.append(_Count(req, now, self._events(req, now), self.server.view))  # once: they mark
            except Exception as exc:  # message references
                loop.call_soon_threadsafe(self.server.fail, conn, req, exc)
            else:
                conns.append(conn)
        if self.up and live:
            try:
                self._serve_many(live)
            except self.unreachable as exc:
                self.down(exc)
                for c in live:
                    c.answer = None
        answers = []
        for conn, c in zip(conns, live, strict=True):
            try:
                if isinstance(c.failed, Exception):
                    raise c.failed
                blocked = c.answer
                if blocked is None:  # each event with its id: one Redis ran after all is not counted twice
                    blocked = self._serve_alone(c.req, c.events, c.now)
                if not blocked:  # mail that goes out teaches where its sender logs in: here, then every relay
                    self.learned(logins.learn(self.server.store, c.req, c.now, self.server.view))
            except Exception as exc:
                loop.call_soon_threadsafe(self.server.fail, conn, c.req, exc)
            else:
                answers.append((conn, protocol.YES if blocked else protocol.NO))
        if answers:  # one wake-up of the loop for the turn's answers, not one each
            loop.call_soon_threadsafe(_answer, answers)

    def _serve_many(self, counts: list[_Count]) -> None:
        """Count the requests' events in Redis (none for a check), a request's first
        events together in one round trip, then their second ones, and so on (a request
        skips the addresses of a network it found blocked); set each one's ``blocked``,
        or what failed it. Each block it finds or makes is in this relay's store and
        mirror first."""
        view = self.server.view
        while batch := [(c, event) for c in counts if c.failed is None and (event := c.pending(view)) is not None]:
            found = self.backend.record_many([(event, c.now, c.hold, self.exempt(event.ns)) for c, event in batch],
                                             notify_shadow=view.notify_shadow)
            for (c, event), out in zip(batch, found, strict=True):
                if isinstance(out, Exception):
                    c.failed = out
                else:
                    c.took(event, *out, self.keep)
        for c in counts:
            if c.failed is None:
                c.answer = self._settle(c, self.backend, self.keep, self.exempt)

    def _serve_alone(self, req: Request, events: list[Event], now: float) -> bool:
        """The request's events counted on this relay's own store and counters (Redis is
        down): each count journaled, for Redis when it is back; the checks against the
        blocks copied so far. Is any of its subjects blocked?"""
        c, view = _Count(req, now, events, self.server.view), self.server.view

        def keep(tally: Tally, outcome: Outcome, _now: float, _hold: float, frozen: str) -> None:
            self.made(tally, outcome, frozen)

        while (event := c.pending(view)) is not None:
            tally, outcome = self.local.record(event, now, hold=c.hold, notify_shadow=view.notify_shadow,
                                               exempt=view.exempt)
            c.took(event, tally, outcome, keep)
        return self._settle(c, self.local, keep, lambda ns: view.exempt)

    def _settle(self, c: _Count, backend: Backend, keep: Keep,
                exempt: Callable[[str], Mapping[str, Sequence[tuple[str, str]]]]) -> bool:
        """After a request's counts: the combined scores (no script counts them: settled
        here), and whether its subject is blocked when none of its counts said so."""
        view, now = self.server.view, c.now
        for tally in scores(c.tallies, now, view, backend.counters_of):
            outcome = backend.settle(tally, now, hold=c.hold, notify_shadow=view.notify_shadow,
                                     exempt=exempt(tally.ns))
            keep(tally, outcome, now, c.hold, c.frozen)
            c.blocked = c.blocked or (outcome.blocked and tally.ns not in SILENT)
        req = c.req
        if (req.ns, req.key) in c.seen or not backend.is_blocked(req.ns, req.key):
            return c.blocked
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


def _answer(answers: list[tuple[Connection, bytes]]) -> None:
    for conn, token in answers:
        conn.answer(token)


class _Count:
    """One request's counting: its events, the next to count, what those counted found
    (``blocked``), the answer once settled (None until then) or what failed the request
    alone (``failed``)."""

    __slots__ = ("answer", "blocked", "covered", "events", "failed", "frozen", "hold", "next", "now", "req", "seen",
                 "tallies")

    def __init__(self, req: Request, now: float, events: list[Event], view: View) -> None:
        self.req, self.now, self.events = req, now, events
        self.hold, self.frozen = settle.hold(req, view), settle.frozen(req)
        self.next = 0
        self.blocked = False
        self.answer: bool | None = None
        self.failed: Exception | None = None
        self.seen: set[tuple[str, str]] = set()
        self.covered: set[tuple[str, str]] = set()
        self.tallies: list[Tally] = []

    def pending(self, view: View) -> Event | None:
        """The next event to count, past those of a network found blocked (a blocked
        network stands for its addresses); None: all counted."""
        while self.next < len(self.events):
            event = self.events[self.next]
            self.next += 1
            if view.wider(event.ns, event.key) not in self.covered:
                return event
        return None

    def took(self, event: Event, tally: Tally, outcome: Outcome, keep: Keep) -> None:
        """``event`` counted: ``keep`` what its backend decided."""
        keep(tally, outcome, self.now, self.hold, self.frozen)
        self.tallies.append(tally)
        self.seen.add((event.ns, event.key))
        if outcome.blocked and tally.ns not in SILENT:
            self.blocked = True
            self.covered.add((event.ns, event.key))
