"""``eximhook serve``: the hooks' operations on a Unix socket, for Exim's ``${readsocket}``.

Four threads, each for a reason:
- the event loop accepts connections, reads one request each and answers one token.
  The requests of one turn of the loop are counted together, in one transaction of the
  unsynced counters (group commit: no fsync, no thread to hand over to; see
  ``counters``), and whether the subject is blocked is one read of the store. Neither
  can wait on another process: the counters' lock is only *tried* (busy: again next
  turn) and LMDB reads never wait for writers. So the loop answers within
  ``[serve] timeout``, with the fallback token if it must;
- the store thread settles the rare count that is over the limit: it creates the block
  (once, however many race), flushes it to disk, rewrites the mirror files, and only
  then is 1 answered. It also checks the mirror every ``[serve] check_interval``;
- the outbox thread (``worker.Outbox``) mails the abuse desk and freezes queued mail;
- the sweeper thread (``sweeper.Sweeper``) keeps the counters bounded: quiet ones swept,
  the least recently counted dropped near their budget (``upkeep``).

With ``[store] backend = "redis"`` the counting requests and checks go to Redis instead,
from a small thread pool, and a sync thread copies the blocks other relays make: see
``shared``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..backends import cluster
from ..backends.lmdb import LmdbBackend, exempt_in
from ..config.hookcache import View
from ..config.load import Config
from ..engine import customers, events, logins, settle, spool
from ..errors import BadRequest, BadSubject, EximhookError, UsageError
from ..log import Logger
from ..model.records import Request
from ..model.subjects import SILENT
from ..storage import mirror
from ..storage.counters import Counter, Counters, Tally
from ..storage.store import Store
from . import protocol, sockets
from .connection import Connection, describe
from .reload import reread
from .sweeper import Sweeper
from .throttle import Throttle
from .worker import Outbox

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..backends.redis import RedisBackend

_STOP = object()
_CHECK_MIRROR = object()  # for the store thread: a blocked answer went out, is the mirror current?


class _Job:
    __slots__ = ("body", "conn", "now", "request")

    def __init__(self, conn: Connection, request: Request, now: float, body: Callable[[Any], Any]) -> None:
        self.conn, self.request, self.now, self.body = conn, request, now, body


_RETRY = 0.001  # seconds before the loop tries the counters' lock again
class Server:
    def __init__(self, cfg: Config, store: Store, counters: Counters, backend: RedisBackend | None = None) -> None:
        self.cfg, self.view = cfg, View.of(cfg)
        self.log = Logger(cfg.log.file)
        self.store, self.counters = store, counters
        self.lmdb = LmdbBackend(store, counters)  # settles what the event loop counted
        self.connections: set[Connection] = set()
        self.pending: list[_Job] = []  # counted at the end of this turn of the loop
        self.flush_scheduled = False
        self.mirror_check_asked = False  # one request to the store thread at a time
        self.trips: queue.SimpleQueue[Any] = queue.SimpleQueue()  # counts over the limit, for the store thread
        self.outbox = Outbox(store, lambda: self.cfg, lambda: self.log, self.counter)
        self.store_thread = threading.Thread(target=self._store_loop, name="eximhook-store", daemon=True)
        self.failure = Throttle(lambda: self.log)
        self.sweeper = Sweeper(store, counters, lambda: self.cfg, lambda: self.log, self.failure)
        self.served = 0
        self.shared = None
        if backend is not None:
            from .shared import Shared

            self.shared = Shared(self, backend)

    def counter(self, ns: str, key: str, name: str) -> Counter:
        """A subject's counter where it counts: Redis's, or this relay's."""
        return self.counters.get(ns, key, name) if self.shared is None else self.shared.counter(ns, key, name)

    # -- the event loop ------------------------------------------------------------

    def handle(self, conn: Connection, line: bytes, cut: bool = False) -> None:
        """Answer at once, or count the request at the end of this turn of the loop.
        ``cut``: ``line`` is the first ``[serve] max_request`` bytes of the request."""
        self.served += 1
        try:
            req = protocol.parse(line, cut)
            req.normalize(self.cfg.relay.ipv6_prefix)
        except (BadRequest, BadSubject) as exc:
            self.failure("bad", f"bad request: {exc}; answered E")
            conn.answer(protocol.ERROR)
            return
        if cut:
            self.failure("cut", f"{describe(req)}: a request longer than {self.cfg.serve.max_request} bytes "
                                "([serve] max_request), counted with its evidence cut")
        if req.op == "ping":
            conn.answer(protocol.PONG)
            return
        if req.op == "frozen":
            conn.answer(protocol.YES if self.outbox.report(req.ns, req.key, req.fields.get("id", "")) else protocol.NO)
            return
        cfg = self.cfg
        policy = cfg.hooks.check if req.op == "check-blocked" else cfg.hooks.record
        conn.fallback = protocol.YES if policy == "closed" else protocol.NO
        conn.request = req
        now = time.time()
        if self.shared is not None:
            conn.state = "waiting"
            self.shared.submit(conn, req, now)
            return
        body = events.counts(self.counters, req, now, self.view)
        if body is None:  # a check, or nothing configured to count: is the subject blocked?
            self._answer_blocked(conn, req)
            return
        conn.state = "waiting"
        self.pending.append(_Job(conn, req, now, body))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)  # after this turn's other requests

    def _learn(self, job: _Job) -> None:
        """Mail that went out (answered 0) teaches where its sender logs in
        (``logins``): a synced write, if any, on the store thread, off the loop."""
        if logins.learning(job.request, self.view) is not None:
            self.trips.put(functools.partial(logins.learn, self.store, job.request, job.now, self.view))

    def _publish(self) -> None:
        """The customers' members, for the mirror (``customers.publish``)."""
        c = self.cfg.customers
        try:
            customers.publish(self.store, c.lookup, c.by_domain, self.cfg.relay.ipv6_prefix)
        except EximhookError as exc:
            self.failure("store", f"could not hand the customers' members to the mirror: {exc}")

    def _answer_blocked(self, conn: Connection, req: Request) -> None:
        try:
            blocked = self.store.read(self.store.blocked_in(req.ns, req.key), wait=False)
        except EximhookError as exc:
            self.failure("store", f"{describe(req)}: {exc}; answered {conn.fallback.decode()}")
            conn.answer(conn.fallback)
            return
        conn.answer(protocol.YES if blocked else protocol.NO)
        if blocked:
            self._check_mirror()

    def _flush(self) -> None:
        self.flush_scheduled = False
        jobs = [job for job in self.pending if job.conn.state == "waiting"]  # not answered at their deadline
        self.pending = []
        if not jobs:
            return
        try:
            results = self.counters.try_update_many([job.body for job in jobs])
        except EximhookError as exc:
            results = [exc] * len(jobs)
        if results is None:  # another process is writing the counters: no waiting here
            self.pending = jobs
            self.flush_scheduled = True
            self.loop.call_later(_RETRY, self._flush)
            return
        if self.counters.pressed:  # room is made off the loop
            self.sweeper.wake.set()
        counted = [(job, r) for job, r in zip(jobs, results, strict=True) if not self._failed(job, r)]
        if not counted:
            return
        store = self.store

        exempt, wider = self.view.exempt, self.view.wider

        def look(txn: Any) -> list[tuple[bool, list[Tally], bool]]:
            """Per job: is any of its subjects blocked; which over-limit counts need the
            store thread (an enforced one not blocked yet, a shadow one or an exempt
            subject's not recorded yet); can one of them block."""
            out = []
            for job, tallies in counted:
                subjects = {(job.request.ns, job.request.key), *((t.ns, t.key) for t in tallies)}
                blocked = {s for s in subjects if store.blocked_in(*s)(txn)}
                # a bounce counts against two subjects: one blocked already must not
                # keep the other from tripping; but a blocked network stands for the
                # addresses in it (backends.lmdb.settle's within)
                over, enforced = [], False
                for t in tallies:
                    if t.over < 0 or (t.ns, t.key) in blocked or wider(t.ns, t.key) in blocked:
                        continue
                    blocks = t.policy.enforced and exempt_in(store, exempt, t.ns, t.key)(txn) is None
                    if blocks or not store.shadowed_in(t.name, t.ns, t.key, t.window)(txn):
                        over.append(t)
                        enforced = enforced or blocks
                out.append((any(ns not in SILENT for ns, _ in blocked), over, enforced))
            return out
        seen: list[Any]
        try:
            seen = store.read(look, wait=False)
        except EximhookError as exc:
            seen = [exc] * len(counted)
        for (job, _), verdict in zip(counted, seen, strict=True):
            if self._failed(job, verdict):
                continue
            blocked, over, can_block = verdict
            enforced = can_block and not blocked  # blocked: answered here, not by the store thread
            if blocked:
                job.conn.answer(protocol.YES)
                self._check_mirror()
            if not blocked and not enforced:  # nothing can block: answer now; the store thread records behind it
                job.conn.answer(protocol.NO)
                self._learn(job)
            if over:  # a block (or would-block) to make: the store thread, which answers when it is on disk
                self.trips.put((job, over, enforced))

    def _check_mirror(self) -> None:
        """As a hook does after a blocked answer: a killed process may have left the
        mirror behind the store. The store thread looks (a stamp read when all is well)."""
        if not self.mirror_check_asked:
            self.mirror_check_asked = True
            self.trips.put(_CHECK_MIRROR)

    def _failed(self, job: _Job, result: Any) -> bool:
        if not isinstance(result, BaseException):
            return False
        self.fail(job.conn, job.request, result)
        return True

    def fail(self, conn: Connection, req: Request, exc: BaseException) -> None:
        """Answer the fallback token for a request the store (or Redis) failed, logged."""
        self.failure("store", f"{describe(req)}: {exc}; answered {conn.fallback.decode()}")
        conn.answer(conn.fallback)

    # -- the store thread ----------------------------------------------------------

    def _store_loop(self) -> None:
        checked = time.monotonic()
        while True:
            try:
                item = self.trips.get(timeout=self.cfg.serve.check_interval)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is _CHECK_MIRROR:
                self.mirror_check_asked = False
            elif callable(item):  # what the loop hands over to write (logins.learn)
                try:
                    item()
                except EximhookError as exc:
                    self.failure("learn", f"could not note where an account sends from: {exc}")
            elif item is not None:
                self._settle(*item)
            if item is _CHECK_MIRROR or time.monotonic() - checked >= self.cfg.serve.check_interval:
                # a block whose mirror rewrite was killed (a hook, an admin command) shows
                # here after the next blocked answer, and within check_interval anyway
                mirror.refresh(self.store, self.cfg.store.mirror_dir, self.log)
                checked = time.monotonic()
                self._check_spool()

    def _check_spool(self) -> None:
        """The spool-space guard: tell the abuse desk once when free space falls below
        what the blocks recorded (the snippets refuse blocked mail from then on)."""
        try:
            if self.store.set_spool_floor(self.cfg.spool.floor):  # a floor edited (and SIGHUP): to the mirror
                mirror.refresh(self.store, self.cfg.store.mirror_dir, self.log)
            if spool.check(self.store, self.cfg.spool.guard(), time.time(), self.log):
                self.outbox.tripped(set())
        except EximhookError as exc:
            self.failure("spool", f"could not check the spool's free space: {exc}")

    def _settle(self, job: _Job, tallies: list[Tally], answer: bool) -> None:
        req, view = job.request, self.view
        hold = settle.hold(req, view)
        frozen = settle.frozen(req)
        blocked = False
        try:
            for tally in tallies:
                outcome = settle.decide(self.lmdb, view, self.log, tally, job.now, hold)
                settle.after(self.store, view, self.log, tally, outcome, frozen=frozen, outbox=self.outbox)
                blocked = blocked or (outcome.blocked and tally.ns not in SILENT)
        except Exception as exc:  # a bug must not kill the store thread: log it, answer the fallback
            if answer:
                self.loop.call_soon_threadsafe(self._failed, job, exc)
            else:
                self.failure("settle", f"{describe(job.request)}: {exc}")
            return
        if answer:
            self.loop.call_soon_threadsafe(job.conn.answer, protocol.YES if blocked else protocol.NO)
            if not blocked:
                logins.learn(self.store, req, job.now, view)  # the store thread's own: a write, if any

    # -- running -------------------------------------------------------------------

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        path = self.cfg.serve.socket
        # files a fresh store has never had: Exim's cdb lookup fails (and the snippets
        # answer 451) while they are missing, so they are there before the first answer;
        # with the customers' members as the config has them now
        self._publish()
        mirror.refresh(self.store, self.cfg.store.mirror_dir, self.log)
        listener = await self._listen(path)
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.store_thread.start()
        self.outbox.start()
        self.sweeper.start()
        where = f"store {self.cfg.store.path}"
        if self.shared is not None:
            from ..backends.connect import describe

            self.shared.start()
            where += f", counting in {describe(self.cfg.store)} as relay {self.cfg.store.node!r}"
        self.log.log("notice", f"eximhook serve: listening on {path} ({where}, pid {os.getpid()})")
        sockets.sd_notify(b"READY=1")
        await stopping.wait()
        sockets.sd_notify(b"STOPPING=1")
        listener.close()  # no new connections; those in progress get their answers
        sockets.unlink(path, self.socket_inode)
        deadline = self.loop.time() + self.cfg.serve.timeout + 1
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.shared is not None:
            await self.loop.run_in_executor(None, self.shared.stop)
        self.trips.put(_STOP)
        await self.loop.run_in_executor(None, self.store_thread.join)
        self.sweeper.stop()
        await self.loop.run_in_executor(None, self.sweeper.join)
        self.outbox.stop()
        await self.loop.run_in_executor(None, self.outbox.join, self.cfg.notify.timeout + 5)
        self.log.log("notice", f"eximhook serve: stopped after {self.served} requests")

    async def _listen(self, path: str) -> asyncio.AbstractServer:
        sock, self.socket_inode = sockets.listening(path)
        # From Python 3.13, asyncio and uvloop (>= 0.21) remove the socket's file when the
        # server closes, also one systemd handed over (eximhook-serve.socket): the next
        # daemon would serve a socket nobody can reach. The daemon removes its own socket
        # itself, and only that (sockets.unlink, by inode); before 3.13 there is no such
        # parameter in asyncio, and uvloop defaults to keeping the file.
        if sys.version_info >= (3, 13):
            return await self.loop.create_unix_server(lambda: Connection(self), sock=sock, cleanup_socket=False)
        return await self.loop.create_unix_server(lambda: Connection(self), sock=sock)

    def reload(self) -> None:
        """SIGHUP: read the config again (``reload.reread``); a broken one is logged and
        the old one kept."""
        new = reread(self.cfg, self.log)
        if new is None:
            return
        self.cfg, self.view = new, View.of(new)
        self.log = Logger(new.log.file)
        self.log.log("notice", f"SIGHUP: config {new.path} read again")
        self._publish()  # an edited [customers] lookup reaches the mirror on the store thread's next look


def serve(cfg: Config, *, allow_root: bool = False) -> None:
    """Run the daemon until SIGTERM."""
    if os.geteuid() == 0 and not allow_root:
        raise UsageError("refusing to run as root: run eximhook serve as the Exim user (the systemd unit "
                         "has User=Debian-exim), or pass --allow-root")
    store = Store(cfg.store.path, cfg.store.map_size, cfg.store.owner)
    counters = Counters(cfg.store.path, cfg.store.counters_budget, cfg.store.owner)
    backend = None
    try:
        for env in (store, counters):
            env.keep_handles()
        backend = cluster.for_daemon(cfg)
        server = Server(cfg, store, counters, backend)
        try:
            import uvloop  # ~2.5x asyncio's requests per second here (bench/serve.py)
        except ImportError:
            asyncio.run(server.run())
        else:
            # what uvloop.run does, which Debian 12's uvloop (0.17) does not have yet (0.18+)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(server.run())
    finally:
        if backend is not None:
            backend.close()
        counters.close()
        store.close()
