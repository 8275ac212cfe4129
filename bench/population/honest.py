"""The honest senders: none of them may be blocked, whatever the signals.

Their volumes are shares of an authenticated user's volume limit (``Plan.volume``), and
so are the sizes of their address books, so that they keep their distance from each
limit (the distinct recipients' too) at any ``--divide``; those that come close (the
bulk sender, the newsletter) pace themselves, as mailing software does, so that no
window of a limit's length holds more than an hour's share plus one message. Each
writes to some addresses that do not exist (``unknown``) and some that its providers
defer (``busy``). The numbers in ``what`` are production's (``--divide 1``). Their
accounts belong to three customers (the domains of their ids): the typist and the
traveller to a small business, the newsletter and the list owner to a shop, the bulk
sender to a mailing service; the office is a relay host, of no customer.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from population.actors import Actor, Plan, busy, net_address, paced, provider, remote, sender, unknown
from population.scale import HOUR
from population.traffic import Message, Step, Submit
from tests.support.harness import DOMAIN, PASSWORD


def flawed(rng: random.Random, address: str, dead: float, deferred: float = 0.01) -> str:
    """``address``, or with probability ``dead`` one that does not exist, or ``deferred`` one its provider defers."""
    draw = rng.random()
    return unknown(address) if draw < dead else busy(address) if draw < dead + deferred else address


class Typist(Actor):
    domain = "smallbiz.example"
    what = "30 % of the volume limit, 1-3 recipients a message among 30 contacts; 1.5 % mistyped"

    def __init__(self, name: str = "typist", source: str = net_address(10, 0, 1)) -> None:
        super().__init__(name)
        self.source = source

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        rng = plan.rng(self.name)
        contacts = [remote(f"{self.name}-c{i}", provider(rng)) for i in range(max(3, plan.volume(0.03)))]
        for t in paced(round(plan.hours * plan.volume(0.3) / 2), 0, plan.length, rng, jitter=1.0):
            rcpts = tuple(flawed(rng, r, 0.015) for r in rng.sample(contacts, rng.randint(1, 3)))
            yield t, Submit(self.source, sender(self.name), (Message(rcpts),), self.user, PASSWORD)


class Newsletter(Actor):
    """Its 800 addresses at once are over the distinct recipients' default (500 an hour)
    by themselves: a known bulk sender, given a limit of its own after the shadow phase."""

    domain = "shop.example"
    what = ("a list of 80 % of the volume limit, 5 % of it stale, sent every 1.5 h in batches of 20; its own rcpts "
            "limit, 1,500/h")
    own_rcpts = ((1500, HOUR),)

    def __init__(self, name: str = "newsletter", source: str = net_address(11, 0, 1)) -> None:
        super().__init__(name)
        self.source = source

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        rng = plan.rng(self.name)
        size = plan.volume(0.8)
        stale = set(rng.sample(range(size), round(0.05 * size)))
        subscribers = [remote(f"{self.name}-s{i}", provider(rng)) for i in range(size)]
        subscribers = [unknown(a) if i in stale else a for i, a in enumerate(subscribers)]
        hour = 0.1
        while hour < plan.hours:
            batches = tuple(Message(tuple(subscribers[i:i + 20])) for i in range(0, size, 20))
            yield plan.at(hour), Submit(self.source, sender(self.name), batches, self.user, PASSWORD)
            hour += 1.5


class ListOwner(Actor):
    domain = "shop.example"
    what = "posts to a list of 40 % of the volume limit (2 % stale) every 0.6 h, one message each"
    messages_divided = False

    def __init__(self, name: str = "listowner", source: str = net_address(12, 0, 1)) -> None:
        super().__init__(name)
        self.source = source

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        rng = plan.rng(self.name)
        size = plan.volume(0.4)
        members = [remote(f"{self.name}-m{i}", provider(rng)) for i in range(size)]
        for i in rng.sample(range(size), max(1, round(0.02 * size))):
            members[i] = unknown(members[i])
        hour = 0.2
        while hour < plan.hours:
            yield plan.at(hour), Submit(self.source, sender(self.name), (Message(tuple(members)),), self.user,
                                        PASSWORD)
            hour += 0.6


class Office(Actor):
    """A customer's office behind one NAT address in relay_from_hosts: no AUTH."""

    what = "25 people behind one NAT address (relay host): 40 % of the volume limit to 120 contacts, 1 % typos"

    def __init__(self, name: str = "office", source: str = net_address(13, 0, 1)) -> None:
        super().__init__(name)
        self.source = source

    def subjects(self) -> list[tuple[str, str]]:
        return [("relay", self.source)] + [("sender", sender(f"{self.name}-{k}")) for k in range(25)]

    def accounts(self) -> dict[str, str]:
        return {}

    def relay_hosts(self) -> tuple[str, ...]:
        return (self.source,)

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        rng = plan.rng(self.name)
        contacts = [remote(f"{self.name}-c{i}", provider(rng)) for i in range(max(4, plan.volume(0.12)))]
        colleagues = [f"{box}@{DOMAIN}" for box in ("alice", "bob", "carol")]
        for t in paced(round(plan.hours * plan.volume(0.4) / 2.5), 0, plan.length, rng, jitter=1.0):
            rcpts = tuple(rng.choice(colleagues) if rng.random() < 0.1 else flawed(rng, rng.choice(contacts), 0.01)
                          for _ in range(rng.randint(1, 4)))
            yield t, Submit(self.source, sender(f"{self.name}-{rng.randrange(25)}"), (Message(tuple(set(rcpts))),))


class Traveller(Actor):
    domain = "smallbiz.example"
    what = "10 % of the volume limit to 20 contacts, from a hotel, a phone and the office in turn (3 networks)"

    def __init__(self, name: str = "traveller") -> None:
        super().__init__(name)
        self.sources = tuple(net_address(14, n, 1) for n in range(3))

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        rng = plan.rng(self.name)
        contacts = [remote(f"{self.name}-c{i}", provider(rng)) for i in range(max(2, plan.volume(0.02)))]
        for t in paced(round(plan.hours * plan.volume(0.1) / 1.5), 0, plan.length, rng, jitter=1.0):
            where = self.sources[int(t / plan.at(0.7)) % len(self.sources)]  # a new network every 0.7 h
            rcpts = tuple(flawed(rng, r, 0.01) for r in rng.sample(contacts, rng.randint(1, 2)))
            yield t, Submit(where, sender(self.name), (Message(rcpts),), self.user, PASSWORD)


class Bulk(Actor):
    """900 new addresses an hour is over the distinct recipients' default (500 an hour,
    cPanel's cap) by itself: the admin who knows this sender gives it a limit of its
    own after the shadow phase (its peak, and more than half as much again)."""

    domain = "bulkmail.example"
    what = "90 % of the volume limit, paced, 10 new recipients a message (0.5 % stale); its own rcpts limit, 1,500/h"
    own_rcpts = ((1500, HOUR),)

    def __init__(self, name: str = "bulk", source: str = net_address(15, 0, 1)) -> None:
        super().__init__(name)
        self.source = source

    def steps(self, plan: Plan) -> Iterator[tuple[float, Step]]:
        rng = plan.rng(self.name)
        size = max(1, plan.volume(0.01))  # recipients a message: 1 % of the limit, so one more stays under it
        serial = 0
        for t in paced(round(plan.hours * plan.volume(0.9) / size), 0, plan.length, rng, jitter=0.2):
            rcpts = []
            for _ in range(size):
                serial += 1
                rcpts.append(flawed(rng, remote(f"{self.name}-r{serial}", provider(rng)), 0.005))
            yield t, Submit(self.source, sender(self.name), (Message(tuple(rcpts)),), self.user, PASSWORD)


def population() -> list[Actor]:
    return [Typist(), Newsletter(), ListOwner(), Office(), Traveller(), Bulk()]
