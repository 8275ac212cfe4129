"""The bots, one strategy each. A bot sees success throughout (a blocked subject's mail
is accepted and frozen), so it goes on with its plan to the end; what it achieved is
what left the server, read from Exim's log afterwards.

The senders among them stay under the volume limit (a bot that does not is caught by
it at once, which shows nothing new); ``LowSlow`` stays under every single limit in
force that its own mail lets it read (``actors.pacing``), and each mailbox of ``Hacked``
under its combined score too. Each is an account of a customer of its own, but the
hacked mailboxes, which share theirs. The password bots attack accounts that exist and
never send mail (no network is known for them), with strong passwords but one, at a
rank of their list the table states.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from population.actors import BIG, Actor, Plan, net_address, paced, pacing, provider, remote, sender, unknown
from population.traffic import Guess, Message, Step, Submit
from tests.support.harness import PASSWORD

# what a password spray tries at each account, in order: common passwords, most common
# first, as lists of leaked passwords rank them
COMMON = ("123456", "password", "123456789", "qwerty", "12345678", "111111", "12345", "welcome1", "Password1",
          "letmein", "abc123", "Summer2024!", "iloveyou", "admin123", "1q2w3e4r")
WEAK_RANK = 8  # the rank of the weak account's password in COMMON (--weak-rank)
VICTIMS = "corp.example"  # the domain of the accounts the password bots attack


def strong(name: str) -> str:
    return f"S7r0ng-{name}-x9!q"


class Harvest(Actor):
    honest = False
    domain = "harvest.example"
    what = "a harvested list, 40 % invalid, 10 recipients a message, 90 % of the volume limit, for 1 h"

    def __init__(self, name: str = "harvest", source: str = net_address(20, 0, 1)) -> None:
        super().__init__(name)
        self.source = source

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        rng = plan.rng(self.name)
        serial = 0
        for t in paced(max(1, plan.volume(0.9) // 10), plan.at(0.2), plan.at(1.2)):
            rcpts = []
            for _ in range(10):
                serial += 1
                address = remote(f"{self.name}-h{serial}", provider(rng))
                rcpts.append(unknown(address) if rng.random() < 0.4 else address)
            yield t, Submit(self.source, sender(self.name), (Message(tuple(rcpts)),), self.user, PASSWORD)


class CleanList(Actor):
    honest = False
    domain = "cleanlist.example"
    what = "valid addresses at the big providers, 1 a message, 30 % refused as spam, 90 % of the volume limit"

    def __init__(self, name: str = "cleanlist", source: str = net_address(21, 0, 1)) -> None:
        super().__init__(name)
        self.source = source

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        rng = plan.rng(self.name)
        start = plan.at(0.2)
        for n, t in enumerate(paced(round((plan.hours - 0.2) * plan.volume(0.9)), start, plan.length)):
            message = Message((remote(f"{self.name}-v{n}", provider(rng, big_only=True)),), spam=rng.random() < 0.3)
            yield t, Submit(self.source, sender(self.name), (message,), self.user, PASSWORD)


def under_every_limit(plan: Plan, label: str, share: float, start: float, end: float,
                      score: bool = False) -> Iterator[tuple[float, tuple[str, ...]]]:
    """The messages of a bot at ``share`` of every limit in force (``actors.pacing``;
    ``score``: under the combined score too), hour after hour from ``start`` to ``end``
    (run seconds): (time, recipients), each to addresses of its own (local parts
    ``LABEL-xN``)."""
    rng = plan.rng(label)
    hour = pacing(plan, share, score=score)
    bad_slots = {round(i * hour.slots / len(hour.dead)): dead for i, dead in enumerate(hour.dead)} if hour.dead \
        else {}
    serial = 0
    for h in range(math.ceil((end - start) / plan.at(1))):
        for slot, t in enumerate(paced(hour.slots, start + plan.at(h), start + plan.at(h + 1))):
            if t >= end:
                return
            rcpts = []
            for i in range(hour.rcpts):
                serial += 1
                address = remote(f"{label}-x{serial}", provider(rng))
                rcpts.append(unknown(address) if i < bad_slots.get(slot, 0) else address)
            yield t, tuple(rcpts)


class LowSlow(Actor):
    honest = False
    domain = "lowslow.example"
    what = "90 % of every limit in force, 10 messages an hour, for the whole run"
    messages_divided = False

    def __init__(self, name: str = "lowslow", source: str = net_address(22, 0, 1)) -> None:
        super().__init__(name)
        self.source = source

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        for t, rcpts in under_every_limit(plan, self.name, 0.9, 0.0, plan.length):
            yield t, Submit(self.source, sender(self.name), (Message(rcpts),), self.user, PASSWORD)


class Stolen(Actor):
    """Its messages come one from each network, as a botnet's do: their number is the
    botnet's (``PER_HOUR``, at any --divide), their recipients what keeps the volume at
    90 % of its limit."""

    honest = False
    domain = "stolen.example"
    what = "a stolen password used by a botnet: 45 messages/h of 20 recipients, each from the next of 300 networks"
    messages_divided = False

    NETWORKS, PER_HOUR = 300, 45

    def __init__(self, name: str = "stolen") -> None:
        super().__init__(name)

    @staticmethod
    def source(n: int) -> str:
        n %= Stolen.NETWORKS
        return net_address(100 + n // 256, n % 256, 9)

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        rng = plan.rng(self.name)
        start = plan.at(0.1)
        rcpts = max(1, round(plan.volume(0.9) / self.PER_HOUR))
        for n, t in enumerate(paced(round((plan.hours - 0.1) * self.PER_HOUR), start, plan.length)):
            message = Message(tuple(remote(f"{self.name}-v{n}-{i}", rng.choice(BIG)) for i in range(rcpts)))
            yield t, Submit(self.source(n), sender(self.name), (message,), self.user, PASSWORD)


class Guesser(Actor):
    """IPv6 /48 stands in as an IPv4 /24 here: loopback has only ::1 of IPv6, and all of
    127/8. The ip namespace keys an IPv4 client by its address, as it keys an IPv6 one
    by its /64, and the net namespace holds a /24 as it holds a /48: the same pair of
    counters meets the same strategy, many addresses of one network under the
    per-address limit. Its list holds the account's password at ``RANK``: inside what
    the per-network limit lets through in an hour (100), outside what the per-account
    one does (5)."""

    honest = False
    ADDRESSES, TRIES, RANK = 60, 20, 50
    what = (f"{ADDRESSES} addresses of one network (a /24 for a /48), {TRIES} guesses each at one account, "
            f"whose password is guess {RANK}")

    def __init__(self, name: str = "guesser", target: str = f"ceo@{VICTIMS}") -> None:
        super().__init__(name)
        self.target = self.weak = target
        self.rank, self.tries = self.RANK, self.ADDRESSES * self.TRIES
        self.sources = tuple(net_address(30, 0, n + 1) for n in range(self.ADDRESSES))

    def subjects(self) -> list[tuple[str, str]]:
        return [("ip", s) for s in self.sources] + [("net", "127.30.0.0/24"), ("login", self.target)]

    def accounts(self) -> dict[str, str]:
        return {self.target: strong(self.target)}

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        """Address n tries the list's n-th share of ``TRIES`` guesses, one address after another."""
        guesses = [strong(self.target) if k + 1 == self.rank else f"guess-{k + 1}" for k in range(self.tries)]
        for n, t in enumerate(paced(self.ADDRESSES, plan.at(0.5), plan.at(1.0))):
            mine = guesses[n * self.TRIES:(n + 1) * self.TRIES]
            yield t, Guess(self.sources[n], tuple((self.target, g) for g in mine))


class Spray(Actor):
    """A spray of ``COMMON`` passwords, tried in order at each of its accounts, a round
    (one password at every account) every ``ROUND`` production hours, each try a
    session of its own from the next of its addresses: ``TRIES`` tries per address.
    One account's password is ``COMMON[rank - 1]``."""

    honest = False
    ADDRESSES, TRIES, ROUND = 50, 6, 0.1
    ACCOUNTS = ADDRESSES * TRIES // len(COMMON)

    def __init__(self, name: str = "spray", rank: int = WEAK_RANK) -> None:
        super().__init__(name)
        if not 1 <= rank <= len(COMMON):
            raise ValueError(f"the weak password's rank is 1 to {len(COMMON)}")
        self.rank, self.tries = rank, len(COMMON)
        self.sources = tuple(net_address(40, n, 7) for n in range(self.ADDRESSES))
        self.targets = tuple(f"staff{n + 1:02d}@{VICTIMS}" for n in range(self.ACCOUNTS))
        self.weak = self.targets[self.ACCOUNTS // 2]
        self.what = (f"{self.ADDRESSES} addresses in {self.ADDRESSES} networks, {self.TRIES} tries each: "
                     f"{len(COMMON)} common passwords in order at each of {self.ACCOUNTS} accounts, "
                     f"{1 / self.ROUND:g} an hour; one account's password is at rank {rank}")

    def subjects(self) -> list[tuple[str, str]]:
        return ([("ip", s) for s in self.sources] + [("net", s.rpartition(".")[0] + ".0/24") for s in self.sources]
                + [("login", t) for t in self.targets])  # login: the account a failed AUTH names

    def accounts(self) -> dict[str, str]:
        return {t: COMMON[self.rank - 1] if t == self.weak else strong(t) for t in self.targets}

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        n = 0
        for r, password in enumerate(COMMON):
            start = 0.3 + r * self.ROUND
            for a, t in enumerate(paced(self.ACCOUNTS, plan.at(start), plan.at(start + 0.8 * self.ROUND))):
                yield t, Guess(self.sources[n % self.ADDRESSES], ((self.targets[a], password),))
                n += 1


class Hacked(Actor):
    """50 mailboxes of one customer (their domain), each under every limit of its own,
    its combined score too: what only their customer's totals see."""

    honest = False
    domain = "hacked.example"
    what = ("a hacked customer: 50 mailboxes of one domain, each from a network of its own, each under every "
            "limit of its own (80 % of each; less where the combined score is in force, to stay under it too)")
    messages_divided = False

    MAILBOXES = 50

    def __init__(self, name: str = "hacked") -> None:
        super().__init__(name)
        self.users = tuple(f"m{n + 1:02d}@{self.domain}" for n in range(self.MAILBOXES))

    def subjects(self) -> list[tuple[str, str]]:
        return ([("auth", u) for u in self.users] + [("customer", self.domain)]
                + [("sender", sender(f"{self.name}-{n + 1:02d}")) for n in range(self.MAILBOXES)])

    def accounts(self) -> dict[str, str]:
        return dict.fromkeys(self.users, PASSWORD)

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        for n, user in enumerate(self.users):
            start = plan.at(0.3 + 0.5 * n / self.MAILBOXES)  # the mailboxes wake up one after another
            for t, rcpts in under_every_limit(plan, f"{self.name}{n + 1:02d}", 0.8, start, plan.length, score=True):
                yield t, Submit(net_address(50, n, 3), sender(f"{self.name}-{n + 1:02d}"), (Message(rcpts),), user,
                                PASSWORD)


def population(weak_rank: int = WEAK_RANK) -> list[Actor]:
    return [Harvest(), CleanList(), LowSlow(), Stolen(), Guesser(), Spray(rank=weak_rank), Hacked()]
