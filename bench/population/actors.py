"""What every member of the population shares: the plan of the run (its scale, length,
limits and random source), the addresses it writes to, and pacing under limits.

An actor is an honest sender or a bot: it names the subjects eximhook keys it by (an
authenticated user and its customer, a relay host, client addresses and networks), the
accounts and relay hosts the server must know, the limits an admin tuned for it, and
its steps, (time, Step) pairs, in run seconds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from population.internet import BUSY, UNKNOWN
from population.scale import Scale, Windows
from population.traffic import Step, Tally
from tests.support.harness import DOMAIN, PASSWORD

# Where the population's mail goes: three big providers hold most addresses, as the
# internet's big mailbox providers do; a bot's clean list holds only theirs.
BIG = ("big1", "big2", "big3")
SMALL = tuple(f"small{n}" for n in range(1, 18))


def remote(local: str, provider: str) -> str:
    return f"{local}@{provider}.inet.example"


def provider(rng: random.Random, big_only: bool = False) -> str:
    return rng.choice(BIG) if big_only or rng.random() < 0.6 else rng.choice(SMALL)


def unknown(address: str) -> str:
    """The address with a local part that does not exist (a typo, a stale subscriber, a harvested guess)."""
    return UNKNOWN + address


def busy(address: str) -> str:
    """The address, deferred by its provider (451) on every try during the run."""
    return BUSY + address


def sender(name: str) -> str:
    """An actor's envelope sender: its own address here (Exim's bounces to it are
    discarded by the benchmark's router, after eximhook counted them)."""
    return f"bench-{name}@{DOMAIN}"


SENDER_ROUTER = """
bench_senders:
  driver = redirect
  domains = +local_domains
  local_parts = ^bench-
  data = :blackhole:
"""


def net_address(a: int, b: int, host: int) -> str:
    """127.a.b.host: Linux answers all of 127/8 on loopback, so a client socket bound to
    it is a client in network 127.a.b.0/24."""
    return f"127.{a}.{b}.{host}"


@dataclass(frozen=True)
class Plan:
    """The run every actor plans against: its scale, its length in production hours,
    the counters in force ((namespace, counter): ``scale.signals``), and a seed for
    every random choice."""

    scale: Scale
    hours: float
    on: frozenset[tuple[str, str]]
    seed: int = 24

    @property
    def length(self) -> float:
        return self.at(self.hours)

    def at(self, hours: float) -> float:
        """Run seconds after ``hours`` production hours."""
        return hours * self.scale.hour

    def limit(self, counter: str) -> int | None:
        """An authenticated user's limit of ``counter`` in its shortest window (None: the
        counter is not in force)."""
        from eximhook.model.policy import DEFAULT_WINDOWS

        if ("auth", counter) not in self.on or ("auth", counter) not in DEFAULT_WINDOWS:
            return None
        return self.scale.limit("auth", counter)

    def volume(self, share: float) -> int:
        """``share`` of an authenticated user's volume limit, in recipients per hour."""
        limit = self.limit("recipients")
        assert limit is not None
        return max(1, round(share * limit))

    def rng(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}")


def paced(n: int, start: float, end: float, rng: random.Random | None = None, jitter: float = 0.0) -> list[float]:
    """``n`` times evenly spaced in [start, end), each moved by up to ``jitter`` / 2 of
    the spacing either way (an honest sender is not a clock)."""
    if n <= 0 or end <= start:
        return []
    gap = (end - start) / n
    return [start + (i + 0.5 + (rng.uniform(-jitter, jitter) / 2 if rng else 0.0)) * gap for i in range(n)]


@dataclass(frozen=True)
class Pacing:
    """One hour of a bot that stays under every limit in force: ``slots`` messages,
    evenly spaced, each to ``rcpts`` recipients, the first ``bad`` of them carrying
    ``dead[i]`` addresses that do not exist. A window may catch one slot more than an
    hour's (the schedule runs a little late), so each total plus its largest slot stays
    within its limit."""

    slots: int
    rcpts: int
    dead: tuple[int, ...]

    @property
    def volume(self) -> int:
        return self.slots * self.rcpts

    def worst(self) -> dict[str, float]:
        """Per counter it can read from its own mail, the most one window of an hour's
        length may hold (an hour's and its largest slot): volume and distinct recipients
        (it writes to each address once), invalid recipients and remote failures (one
        per dead address), bounces (one per message with a dead address), and the
        failure ratio in percent; one client network."""
        dead = sum(self.dead) + max(self.dead, default=0)
        return {"recipients": (self.slots + 1) * self.rcpts, "rcpts": (self.slots + 1) * self.rcpts,
                "invalid": dead, "failures": dead, "bounces": len(self.dead) + (1 if self.dead else 0),
                "failrate": 100 * dead / self.volume, "networks": 1}

    def score(self, plan: Plan) -> int:
        """Its worst combined score (model/score.py): per group of counters that count the
        same events, the fullest counter in force, added up in percent."""
        from eximhook.model.policy import KINDS

        best: dict[str, int] = {}
        for counter, count in self.worst().items():
            limit = plan.limit(counter)
            if limit is not None and count:
                part = int(count * 100 // limit)
                best[KINDS[counter].group] = max(part, best.get(KINDS[counter].group, 0))
        return sum(best.values())


def pacing(plan: Plan, share: float, slots: int = 10, score: bool = False) -> Pacing:
    """The hour of a bot at ``share`` (0.8, 0.9) of every limit in force that it can
    read from its own mail (``Pacing.worst``); with ``score``, under the combined score
    too where it is in force: the share goes down by 5 % steps until its worst score is
    under the score's limit."""
    hour = _pacing(plan, share, slots)
    limit = plan.limit("score")
    while score and limit is not None and hour.score(plan) >= limit and share > 0.05:
        share -= 0.05
        hour = _pacing(plan, share, slots)
    return hour


def _pacing(plan: Plan, share: float, slots: int) -> Pacing:
    """The hour at ``share`` of each single limit (``pacing``)."""
    volume = min(limit for c in ("recipients", "rcpts") if (limit := plan.limit(c)) is not None)
    rcpts = max(1, math.floor(share * volume / slots))
    while rcpts > 1 and (slots + 1) * rcpts > volume:
        rcpts -= 1
    bounces = plan.limit("bounces")
    bad = slots if bounces is None else max(0, min(slots, math.floor(share * bounces), bounces - 1))
    counts = [limit for c in ("invalid", "failures") if (limit := plan.limit(c)) is not None]
    rate = plan.limit("failrate")  # a percentage of the recipients tried
    dead = 0
    for n in range(1, bad * rcpts + 1):
        if any(n > share * limit or n + math.ceil(n / bad) > limit for limit in counts):
            break
        if rate is not None and n > share * rate / 100 * slots * rcpts:
            break
        dead = n
    spread = [dead // bad + (i < dead % bad) for i in range(bad)]
    return Pacing(slots, rcpts, tuple(d for d in spread if d))


class Actor:
    """One member of the population: ``honest`` or a bot, and ``what`` it does. Its
    account is ``NAME@DOMAIN``, whose customer is DOMAIN ([customers] by_domain)."""

    honest = True
    what = ""
    domain = "example.net"
    weak: str | None = None  # an account it attacks whose password is in its list
    rank = 0  # where: the weak password's rank in the list it tries at that account (1: first)
    tries = 0  # how many passwords it tries at that account
    own_rcpts: Windows = ()  # its own limit of distinct recipients, from the admin (``tuned``)
    # Whether --divide divides its messages (each carries a few recipients) or only its
    # recipients per message (it sends few large messages, or its messages are what a
    # counter of logins or networks counts): the report's production-equivalents
    messages_divided = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.tally = Tally()

    @property
    def user(self) -> str:
        return f"{self.name}@{self.domain}"

    def subjects(self) -> list[tuple[str, str]]:
        """What eximhook keys it by: by default an authenticated user, its envelope
        sender and its customer."""
        return [("auth", self.user), ("sender", sender(self.name)), ("customer", self.domain)]

    def accounts(self) -> dict[str, str]:
        """The SMTP AUTH accounts it uses or attacks, with their passwords."""
        return {self.user: PASSWORD}

    def relay_hosts(self) -> tuple[str, ...]:
        return ()

    def tuned(self) -> tuple[tuple[str, str, str, Windows], ...]:
        """Limits an admin gave it after the shadow phase: (ns, key, counter, production
        windows), as ``[overrides.NS."KEY".COUNTER]``: its own limit of distinct
        recipients (``own_rcpts``), if it has one."""
        return (("auth", self.user, "rcpts", self.own_rcpts),) if self.own_rcpts else ()

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        raise NotImplementedError
