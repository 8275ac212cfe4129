"""What an actor does at a point of the run, how it is played against Exim over SMTP,
and the schedule that plays every actor's steps at their times.

A step is one SMTP session: a submission (STARTTLS, AUTH unless it is a relay customer,
then messages, pipelined: bench/smtpload.py's Session) or a round of password guesses
(STARTTLS, AUTH PLAIN tries). The schedule sleeps until a step's time, which is the
simulated clock itself, not a wait for state; when the machine cannot keep up, steps
start late, and the report says by how much.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from smtpload import Session

from population.internet import SPAM_MARK
from tests.support.harness import DOMAIN


@dataclass(frozen=True)
class Message:
    rcpts: tuple[str, ...]
    spam: bool = False  # carries the content the providers' filters refuse


@dataclass(frozen=True)
class Submit:
    """One session that submits ``messages``: as ``user`` (SMTP AUTH) or, with no user,
    as a relay customer (its source address is in relay_from_hosts)."""

    source: str
    sender: str
    messages: tuple[Message, ...]
    user: str | None = None
    password: str = ""


@dataclass(frozen=True)
class Guess:
    """One session of password guesses: (user, password) tries, in order."""

    source: str
    tries: tuple[tuple[str, str], ...]


Step = Submit | Guess
GUESSES_PER_CONNECTION = 5


@dataclass
class Tally:
    """What one actor saw of the server, as its client counts it."""

    counts: Counter[str] = field(default_factory=Counter)
    # (epoch seconds, user): each password the server checked, when it was sent, and the
    # account it was tried at; and the guesses that worked
    guessed: list[tuple[float, str]] = field(default_factory=list)
    found: list[tuple[float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            self.counts.update(counts)


def body(actor: str, serial: int, message: Message, sender: str) -> bytes:
    """The message: a subject that names the actor (Exim logs it, +subject: how
    outcome.py attributes deliveries) and a Message-ID, as a mail client writes one
    (a bounce's References names it: that is how a bounce finds its sender)."""
    mark = f"\r\n{SPAM_MARK}" if message.spam else ""
    return (f"From: <{sender}>\r\nTo: undisclosed-recipients:;\r\nSubject: [{actor}] {serial}\r\n"
            f"Message-ID: <{actor}.{serial}@bench.{DOMAIN}>\r\n\r\nhello from {actor}{mark}\r\n").encode()


class Player:
    """Plays steps against Exim on ``port``; serials number each actor's messages."""

    def __init__(self, port: int, start: float) -> None:
        self.port, self.start = port, start
        self._serials: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()

    def serial(self, actor: str) -> int:
        with self._lock:
            return next(self._serials.setdefault(actor, itertools.count(1)))

    def play(self, actor: str, step: Step, tally: Tally) -> None:
        try:
            if isinstance(step, Submit):
                self.submit(actor, step, tally)
            else:
                self.guess(step, tally)
        except (OSError, ConnectionError, AssertionError) as exc:
            tally.add(session_errors=1)
            with tally.lock:
                if len(tally.errors) < 5:
                    tally.errors.append(f"{type(exc).__name__}: {exc}")

    def submit(self, actor: str, step: Submit, tally: Tally) -> None:
        session = Session(self.port, source=step.source, user=step.user, password=step.password)
        try:
            tally.add(sessions=1)
            for message in step.messages:
                codes = session.envelope(step.sender, list(message.rcpts))
                accepted = sum(c == b"250" for c in codes)
                tally.add(rcpts=len(codes), rcpts_refused=len(codes) - accepted)
                if not accepted:
                    session.command(b"RSET")
                    continue
                code = session.data(body(actor, self.serial(actor), message, step.sender))
                tally.add(messages=1, data_refused=code != b"250")
        finally:
            session.close()

    def guess(self, step: Guess, tally: Tally) -> None:
        """The tries, GUESSES_PER_CONNECTION on a connection (Exim drops a client after
        smtp_accept_max_nonmail commands, 10, that send no mail; guessers know), a new
        one after a success (AUTH is refused once a session has authenticated). Stops
        at any answer but 535 or 235: eximhook's drop of a blocked address (554)."""
        tries = list(step.tries)
        while tries:
            batch, tries = tries[:GUESSES_PER_CONNECTION], tries[GUESSES_PER_CONNECTION:]
            session = Session(self.port, source=step.source)
            try:
                for n, (user, password) in enumerate(batch):
                    token = base64.b64encode(f"\0{user}\0{password}".encode())
                    sent = time.time()
                    code = session.command(b"AUTH PLAIN " + token)
                    tally.add(**{f"auth_{code.decode()}": 1})
                    if code not in (b"235", b"535"):  # the password was not checked
                        return
                    with tally.lock:
                        tally.guessed.append((sent, user))
                        if code == b"235":
                            tally.found.append((sent, user))
                    if code == b"235":
                        tries = batch[n + 1:] + tries
                        break
            finally:
                session.close()


class Schedule:
    """Every actor's steps, played at their times (seconds after ``start``) by a pool of
    ``workers`` threads: concurrent sessions, as many clients make."""

    def __init__(self, player: Player, workers: int = 16) -> None:
        self.player, self.workers = player, workers
        self._heap: list[tuple[float, int, str, Step, Tally]] = []
        self._seq = itertools.count()
        self.lateness: list[float] = []

    def add(self, at: float, actor: str, step: Step, tally: Tally) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), actor, step, tally))

    def __len__(self) -> int:
        return len(self._heap)

    def run(self, progress: Callable[[float], None] | None = None) -> None:
        start = self.player.start
        futures: list[Future[None]] = []
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            while self._heap:
                at, _, actor, step, tally = heapq.heappop(self._heap)
                delay = start + at - time.time()
                if delay > 0:
                    time.sleep(delay)  # the simulated clock: the step's time has not come yet
                futures.append(pool.submit(self._play, start + at, actor, step, tally))
                if progress is not None:
                    progress(at)
        for f in futures:
            f.result()

    def _play(self, due: float, actor: str, step: Step, tally: Tally) -> None:
        self.lateness.append(max(0.0, time.time() - due))  # a free worker came this late
        self.player.play(actor, step, tally)
