"""``relaytest watch``: follow Exim's mainlog and probe the customers who send (seed 003).

Jim Segrave's design: a separate process tails the mainlog, takes the client address
of each arrival, and sends a relay test to a customer not tested lately. This module
is that process's loop; the relay-test table and the probe itself come in as two
callables, so the loop knows nothing of the store or of SMTP:

- ``claim(ip, now) -> probe id | None`` claims a test atomically in the shared table
  (None: not due, or another process has it);
- ``probe(ip, probe_id) -> outcome`` sends it, blocking for up to a minute.

Probes run in a pool of ``concurrency`` threads; the reading thread never waits for
them. An address is only claimed when a probe can start at once, so a claim is never
left waiting in a queue (a claim not sent would count as a test for the whole retest
interval): an address seen while every thread is busy, or once ``rate_per_hour``
probes have started in the last hour, is passed over until its next message. Only
addresses inside ``networks`` are ever claimed or probed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal

from ..errors import ConfigError
from ..log import Logger
from ..model.networks import parse
from . import hosts
from .follow import Follower
from .logline import parse_line

Claim = Callable[[str, float], str | None]
Probe = Callable[[str, str], str]
Offer = Literal["probing", "in-flight", "cooldown", "busy", "rate", "not-due", "error"]
HOUR = 3600.0
NOT_DUE_RECHECK = 60.0  # seconds before an address found not due is asked about again


def _remember(seen: dict[str, float], ip: str, now: float) -> None:
    seen.pop(ip, None)
    seen[ip] = now  # re-inserted: the dict stays in order of asking


class Scheduler:
    """Which addresses to claim and probe, decided in the reading thread; probes run
    in a thread pool. ``close()`` waits for the probes in flight."""

    def __init__(self, claim: Claim, probe: Probe, log: Logger, *, concurrency: int, rate_per_hour: int,
                 cooldown: float) -> None:
        if concurrency < 1 or rate_per_hour < 1 or cooldown < 0:
            raise ConfigError("[relaytest]: concurrency and rate must be at least 1, cooldown not negative")
        self.claim, self.probe, self.log = claim, probe, log
        self.concurrency, self.rate, self.cooldown = concurrency, rate_per_hour, cooldown
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eximhook-probe")
        self.lock = threading.Lock()  # in_flight: the pool's threads remove what they finish
        self.in_flight: set[str] = set()
        # when each address was last claimed, oldest first: the table's own cooldown holds
        # across processes, this spares it the asking
        self.asked: dict[str, float] = {}
        # when each address was last asked for and found not due, oldest first, kept for
        # NOT_DUE_RECHECK only: an admin's `relaytest clear` makes a host due again, and
        # its next mail must get it probed (a trial found a cleared open relay sending
        # unprobed for the whole cooldown)
        self.not_due: dict[str, float] = {}
        self.started: deque[float] = deque()  # when the probes of the last hour were claimed

    def offer(self, ip: str, now: float) -> Offer:
        """Claim and start a probe of ``ip`` if one may start now; says what happened."""
        self._forget(now)
        with self.lock:
            if ip in self.in_flight:
                return "in-flight"
            busy = len(self.in_flight) >= self.concurrency
        if now - self.asked.get(ip, -self.cooldown - 1) < self.cooldown:
            return "cooldown"
        if now - self.not_due.get(ip, -NOT_DUE_RECHECK - 1) < NOT_DUE_RECHECK:
            return "not-due"
        if busy:
            return "busy"
        if len(self.started) >= self.rate:
            return "rate"
        try:
            probe_id = self.claim(ip, now)
        except Exception as exc:  # the store is broken: this address waits for its cooldown
            self.log.log("err", f"relaytest watch: could not claim a probe of {ip}: {type(exc).__name__}: {exc}")
            _remember(self.asked, ip, now)
            return "error"
        if probe_id is None:
            _remember(self.not_due, ip, now)
            return "not-due"
        _remember(self.asked, ip, now)
        self.started.append(now)
        with self.lock:
            self.in_flight.add(ip)
        self.log.log("info", f"relaytest watch: probing {ip} (probe {probe_id})")
        self.pool.submit(self.probe, ip, probe_id).add_done_callback(
            lambda done: self._finished(ip, probe_id, done))
        return "probing"

    def _finished(self, ip: str, probe_id: str, done: Future[str]) -> None:
        with self.lock:
            self.in_flight.discard(ip)
        exc = done.exception()
        if exc is not None:
            self.log.log("err", f"relaytest watch: probe {probe_id} of {ip} failed: {type(exc).__name__}: {exc}")
        else:
            self.log.log("info", f"relaytest watch: probe {probe_id} of {ip}: {done.result()}")

    def _forget(self, now: float) -> None:
        while self.started and self.started[0] <= now - HOUR:
            self.started.popleft()
        for seen, keep in ((self.asked, self.cooldown), (self.not_due, NOT_DUE_RECHECK)):
            while seen:  # oldest first: stop at the first one kept
                ip, when = next(iter(seen.items()))
                if now - when < keep:
                    break
                del seen[ip]

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def run(log_path: str, state_path: str, networks: list[str], claim: Claim, probe: Probe, *,
        concurrency: int, rate_per_hour: int, cooldown: float, log: Logger,
        clock: Callable[[], float] = time.time, stop: threading.Event | None = None,
        poll: float = 1.0, save_every: float = 5.0, grace: float = 10.0,
        own: frozenset[str] | None = None) -> None:
    """Follow ``log_path`` until ``stop`` is set, offering each arrival from inside
    ``networks`` to the scheduler. The position is saved to ``state_path`` every
    ``save_every`` seconds while lines come, and on the way out, after the probes in
    flight have finished. This server's own addresses are never offered (``own``)."""
    try:
        nets = parse(networks)
    except ValueError as exc:
        raise ConfigError(f"[relaytest] networks: {exc}") from None
    # never this server's own addresses (``own``: the machine's, unless a test says which):
    # our own Exim would "relay" a probe to itself (hosts.is_customer)
    own = hosts.own_addresses() if own is None else own
    stop = stop or threading.Event()
    scheduler = Scheduler(claim, probe, log, concurrency=concurrency, rate_per_hour=rate_per_hour,
                          cooldown=cooldown)
    follower: Follower | None = None
    try:
        follower = Follower(log_path, state_path, log, grace=grace)
        where = follower.position()
        log.log("notice", f"relaytest watch: following {log_path} from byte {where[1] if where else 0}, probing "
                          f"{', '.join(map(str, nets))} (at most {concurrency} at once, {rate_per_hour} an hour)")
        saved = time.monotonic()
        while not stop.is_set():
            lines = follower.read()
            for line in lines:
                ip = parse_line(line)
                if ip is not None and hosts.inside(ip, nets) and ip not in own:
                    scheduler.offer(ip, clock())
            if time.monotonic() - saved >= save_every:
                follower.save()
                saved = time.monotonic()
            if not lines:
                stop.wait(poll)
    finally:
        scheduler.close()
        if follower is not None:
            follower.save()
            where = follower.position()
            follower.close()
            log.log("notice", f"relaytest watch: stopped; its position saved to {state_path}"
                              + (f" (byte {where[1]})" if where else ""))
