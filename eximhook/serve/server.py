"""``eximhook serve``: the hooks' operations on a Unix socket, for Exim's ``${readsocket}``.

Three threads, each for a reason:
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
- the outbox thread (``worker.Outbox``) mails the abuse desk and freezes queued mail.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import core
from .._log import Logger
from ..config import Config, load
from ..counters import Counter, Counters
from ..errors import BadRequest, BadSubject, ConfigError, EximhookError, ServeError, UsageError
from ..store import Store
from ..subjects import normalize
from . import protocol
from .connection import Connection, describe
from .worker import Outbox

_STOP = object()
_CHECK_MIRROR = object()  # for the store thread: a blocked answer went out, is the mirror current?
_LOG_EVERY = 60.0  # seconds between two log lines of one kind of per-request failure


class _Throttle:
    """Failures that come per request (a broken store, a snippet sending garbage) would
    write a log line per RCPT: log the first, then one line a minute with a count."""

    def __init__(self, log: Callable[[], Logger]) -> None:
        self.log = log
        self.last: dict[str, tuple[float, int]] = {}
        self.lock = threading.Lock()

    def __call__(self, kind: str, text: str) -> None:
        now = time.monotonic()
        with self.lock:
            last, suppressed = self.last.get(kind, (-_LOG_EVERY, 0))
            if now - last < _LOG_EVERY:
                self.last[kind] = (last, suppressed + 1)
                return
            self.last[kind] = (now, 0)
        more = f" (and {suppressed} more like it in the last {_LOG_EVERY:g}s)" if suppressed else ""
        self.log().log("err", text + more)


class _Job:
    __slots__ = ("body", "conn", "now", "request")

    def __init__(self, conn: Connection, request: protocol.Request, now: float, body: Callable[[Any], Any]) -> None:
        self.conn, self.request, self.now, self.body = conn, request, now, body


_RETRY = 0.001  # seconds before the loop tries the counters' lock again


class Server:
    def __init__(self, cfg: Config, store: Store, counters: Counters) -> None:
        self.cfg = cfg
        self.log = Logger(cfg.log.file)
        self.store, self.counters = store, counters
        self.connections: set[Connection] = set()
        self.pending: list[_Job] = []  # counted at the end of this turn of the loop
        self.flush_scheduled = False
        self.mirror_check_asked = False  # one request to the store thread at a time
        self.trips: queue.SimpleQueue[Any] = queue.SimpleQueue()  # counts over the limit, for the store thread
        self.outbox = Outbox(store, lambda: self.cfg, lambda: self.log)
        self.store_thread = threading.Thread(target=self._store_loop, name="eximhook-store", daemon=True)
        self.failure = _Throttle(lambda: self.log)
        self.served = 0

    # -- the event loop ------------------------------------------------------------

    def handle(self, conn: Connection, line: bytes) -> None:
        """Answer at once, or count the request at the end of this turn of the loop."""
        self.served += 1
        try:
            req = protocol.parse(line)
            if req.ns:
                req.key = normalize(req.ns, req.key, self.cfg.relay.ipv6_prefix)
        except (BadRequest, BadSubject) as exc:
            self.failure("bad", f"bad request: {exc}; answered E")
            conn.answer(protocol.ERROR)
            return
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
        if req.op == "check-blocked":
            try:
                blocked = self.store.read(self.store.blocked_in(req.ns, req.key), wait=False)
            except EximhookError as exc:
                self.failure("store", f"{describe(req)}: {exc}; answered {conn.fallback.decode()}")
                conn.answer(conn.fallback)
                return
            conn.answer(protocol.YES if blocked else protocol.NO)
            if blocked:
                self._check_mirror()
            return
        lim, now = cfg.limits[req.ns], time.time()
        body = self.counters.event(
            req.ns, req.key, now, limit=lim.limit, period=lim.period,
            evidence=req.fields.get("rcpt") or req.fields.get("evidence") or None, ip=req.fields.get("ip") or None,
            keep_evidence=cfg.evidence.rcpts, keep_ips=cfg.evidence.ips)
        conn.state = "waiting"
        self.pending.append(_Job(conn, req, now, body))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)  # after this turn's other requests

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
        counted = [(job, r) for job, r in zip(jobs, results, strict=True) if not self._failed(job, r)]
        if not counted:
            return
        blocked: list[Any]
        try:
            blocked = self.store.read(
                lambda txn: [self.store.blocked_in(job.request.ns, job.request.key)(txn) for job, _ in counted],
                wait=False)
        except EximhookError as exc:
            blocked = [exc] * len(counted)
        for (job, (counter, count, over)), is_blocked in zip(counted, blocked, strict=True):
            if self._failed(job, is_blocked):
                continue
            if is_blocked:
                job.conn.answer(protocol.YES)
                self._check_mirror()
            elif over:  # a block to make: the store thread, which answers when it is on disk
                self.trips.put((job, counter, count))
            else:
                job.conn.answer(protocol.NO)

    def _check_mirror(self) -> None:
        """As a hook does after a blocked answer: a killed process may have left the
        mirror behind the store. The store thread looks (a stamp read when all is well)."""
        if not self.mirror_check_asked:
            self.mirror_check_asked = True
            self.trips.put(_CHECK_MIRROR)

    def _failed(self, job: _Job, result: Any) -> bool:
        if not isinstance(result, BaseException):
            return False
        self.failure("store", f"{describe(job.request)}: {result}; answered {job.conn.fallback.decode()}")
        job.conn.answer(job.conn.fallback)
        return True

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
            elif item is not None:
                self._settle(*item)
            if item is _CHECK_MIRROR or time.monotonic() - checked >= self.cfg.serve.check_interval:
                # a block whose mirror rewrite was killed (a hook, an admin command) shows
                # here after the next blocked answer, and within check_interval anyway
                core.refresh_mirror(self.store, self.cfg.store.mirror_dir, self.log)
                checked = time.monotonic()

    def _settle(self, job: _Job, counter: Counter, count: int) -> None:
        req, cfg = job.request, self.cfg
        lim = cfg.limits[req.ns]
        try:
            outcome = core.settle(self.store, req.ns, req.key, job.now, counter, count, True,
                                  limit=lim.limit, period=lim.period, hold=cfg.notify.hold)
        except Exception as exc:  # a bug must not kill the store thread: log it, answer the fallback
            self.loop.call_soon_threadsafe(self._failed, job, exc)
            return
        core.make_known(self.store, cfg.store.mirror_dir, self.log, req.ns, req.key, outcome,
                        limit=lim.limit, period=lim.period)
        if outcome.tripped:
            self.outbox.tripped({(req.ns, req.key)})
        self.loop.call_soon_threadsafe(job.conn.answer, protocol.YES)

    # -- running -------------------------------------------------------------------

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        path = self.cfg.serve.socket
        listener = await self._listen(path)
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.store_thread.start()
        self.outbox.start()
        self.log.log("notice", f"eximhook serve: listening on {path} (store {self.cfg.store.path}, pid {os.getpid()})")
        _sd_notify(b"READY=1")
        await stopping.wait()
        _sd_notify(b"STOPPING=1")
        listener.close()  # no new connections; those in progress get their answers
        _unlink_socket(path, self.socket_inode)
        deadline = self.loop.time() + self.cfg.serve.timeout + 1
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        self.trips.put(_STOP)
        await self.loop.run_in_executor(None, self.store_thread.join)
        self.outbox.stop()
        await self.loop.run_in_executor(None, self.outbox.join, self.cfg.notify.timeout + 5)
        self.log.log("notice", f"eximhook serve: stopped after {self.served} requests")

    async def _listen(self, path: str) -> asyncio.AbstractServer:
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)  # systemd's RuntimeDirectory= makes it
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise ServeError(f"{path} exists and is not a socket ([serve] socket)")
            try:
                ping(path, 1.0)
            except ServeError:
                os.unlink(path)  # left by a daemon that died
            else:
                raise ServeError(f"another eximhook serve answers on {path}")
        old = os.umask(0o177)  # the socket is born 0600: only the Exim user (and root) may connect
        try:
            listener = await self.loop.create_unix_server(lambda: Connection(self), path, backlog=1024)
        except OSError as exc:
            raise ServeError(f"cannot listen on {path}: {exc.strerror}") from exc
        finally:
            os.umask(old)
        self.socket_inode = os.stat(path).st_ino
        return listener

    def reload(self) -> None:
        """SIGHUP: read the config again; a broken one is logged and the old one kept."""
        try:
            new = load(self.cfg.path)
        except ConfigError as exc:
            self.log.log("err", f"SIGHUP: {exc}; still serving with the config read before")
            return
        kept = [name for name, old, now in (("[serve] socket", self.cfg.serve.socket, new.serve.socket),
                                            ("[store] path", self.cfg.store.path, new.store.path),
                                            ("[store] map_size", self.cfg.store.map_size, new.store.map_size))
                if old != now]
        if kept:
            import dataclasses

            new = dataclasses.replace(new, store=self.cfg.store,
                                      serve=dataclasses.replace(new.serve, socket=self.cfg.serve.socket))
            self.log.log("warning", f"SIGHUP: {', '.join(kept)} changed; that takes a restart, the rest is in force")
        self.cfg = new
        self.log = Logger(new.log.file)
        self.log.log("notice", f"SIGHUP: config {new.path} read again")


def _unlink_socket(path: str, inode: int) -> None:
    try:
        if os.stat(path).st_ino == inode:  # not the socket of a daemon started since
            os.unlink(path)
    except OSError:
        pass


def _sd_notify(state: bytes) -> None:
    """Tell systemd (Type=notify) that the socket is ready, or that we are stopping."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.send(state)
    except OSError:
        pass


def ping(path: str, timeout: float) -> float:
    """Ask the daemon on ``path`` for ``pong``; the round trip in seconds, or ServeError."""
    start = time.monotonic()
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(protocol.encode("ping"))
            s.shutdown(socket.SHUT_WR)
            answer = s.recv(16)
    except OSError as exc:
        raise ServeError(f"eximhook serve does not answer on {path}: {exc.strerror or exc}") from exc
    if answer != protocol.PONG:
        raise ServeError(f"eximhook serve on {path} answered {answer!r} to ping")
    return time.monotonic() - start


def serve(cfg: Config, *, allow_root: bool = False) -> None:
    """Run the daemon until SIGTERM."""
    if os.geteuid() == 0 and not allow_root:
        raise UsageError("refusing to run as root: run eximhook serve as the Exim user (the systemd unit "
                         "has User=Debian-exim), or pass --allow-root")
    store = Store(cfg.store.path, cfg.store.map_size, cfg.store.owner)
    counters = Counters(cfg.store.path, cfg.store.map_size, cfg.store.owner)
    try:
        for env in (store, counters):
            env.keep_handles()
        server = Server(cfg, store, counters)
        try:
            import uvloop  # ~2.5x asyncio's requests per second here (bench/serve.py)
        except ImportError:
            asyncio.run(server.run())
        else:
            uvloop.run(server.run())
    finally:
        counters.close()
        store.close()
