"""What the run did, read where an admin would read it: Exim's main log for the mail
that left the server, eximhook's store (``list``, ``list --would-block``, ``top``) for
the blocks, would-blocks and how close each subject came to its limits.

Deliveries are attributed by the subject line each actor's message carries (Exim logs
it, ``+subject``): ``[ACTOR] N``. "Left the server" means delivered to a remote MTA
(``=>``/``->`` lines of the router ``internet``): a message refused by its provider
did not leave, though it may have cost the server's reputation.
"""

from __future__ import annotations

import json
import re
import string
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from population.actors import Actor
from population.traffic import Tally

ACCEPTED = re.compile(r'^\S+ \S+ (\S+) <= .*? T="\[([^\]]+)\] \d+"', re.M)
DELIVERED = re.compile(r"^\S+ \S+ (\S+) [=-]> \S+ .*\bR=internet\b", re.M)
FAILED = re.compile(r"^\S+ \S+ (\S+) \*\* ", re.M)
DEFERRED = re.compile(r"^\S+ \S+ (\S+) == ", re.M)


@dataclass
class Mail:
    """One actor's mail, from Exim's log."""

    accepted: int = 0  # messages Exim accepted from it (frozen ones included)
    left: int = 0  # messages with at least one recipient delivered to a remote MTA
    rcpts: int = 0  # remote recipients delivered
    refused: int = 0  # recipients a remote MTA refused (bounced)
    deferred: int = 0  # recipients a remote MTA deferred
    # when Exim began to take each message that left (``started``)
    left_started: list[int] = field(default_factory=list)

    def left_after(self, since: float) -> int:
        """Messages that left although Exim began to take them after ``since`` (a block:
        its subject's mail is frozen from then on), with a second's grace for the
        message in flight (its RCPT checked before the block)."""
        return sum(t > since + 1 for t in self.left_started)


BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def started(mid: str) -> int:
    """When Exim began to take the message (its DATA), to the second: the first six
    characters of its id, in base 62 (Exim 4.96's ids and 4.97's longer ones)."""
    n = 0
    for c in mid[:6]:
        n = n * 62 + BASE62.index(c)
    return n


def mail(log: str) -> dict[str, Mail]:
    """Per actor, what Exim's main log says became of its messages."""
    owner = {mid: actor for mid, actor in ACCEPTED.findall(log)}
    out: dict[str, Mail] = defaultdict(Mail)
    for actor in owner.values():
        out[actor].accepted += 1
    left: set[str] = set()
    for mid in DELIVERED.findall(log):
        if mid in owner:
            out[owner[mid]].rcpts += 1
            if mid not in left:
                left.add(mid)
                out[owner[mid]].left += 1
                out[owner[mid]].left_started.append(started(mid))
    for pattern, name in ((FAILED, "refused"), (DEFERRED, "deferred")):
        for mid in pattern.findall(log):
            if mid in owner:
                setattr(out[owner[mid]], name, getattr(out[owner[mid]], name) + 1)
    return dict(out)


def deferred_ids(log: str) -> set[str]:
    return set(DEFERRED.findall(log))


@dataclass
class Held:
    """What eximhook's store holds at the end: blocks, would-blocks, and the highest
    share of a limit each subject reached (``top``'s daily peaks), by (ns, key)."""

    blocks: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    would: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    closest: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    counted: dict[str, int] = field(default_factory=dict)  # per counter, the subjects it counted anything for


def held(run: Any, counters: tuple[str, ...]) -> Held:
    """``run(*args)``: the harness's ``eximhook`` (a CompletedProcess)."""

    def call(*args: str) -> Any:
        result = run(*args)
        if result.returncode != 0:
            raise RuntimeError(f"eximhook {' '.join(args)}: {result.stderr.strip()}")
        return json.loads(result.stdout)

    out = Held()
    for b in call("list", "--json"):
        out.blocks[(b["ns"], b["key"])] = b
    for w in call("list", "--would-block", "--json"):
        out.would.setdefault((w["ns"], w["key"]), []).append(w)
    for counter in counters:
        rows = call("top", counter, "--json", "--limit", "100000")
        out.counted[counter] = len(rows)
        for row in rows:
            for w in row["windows"]:
                share = w["peak"] / w["limit"]
                if row["key"] is not None and share > out.closest.get((row["ns"], row["key"]), (0.0, ""))[0]:
                    out.closest[(row["ns"], row["key"])] = (share, counter)
    return out


@dataclass
class Guesses:
    """A password bot's guesses (the passwords the server checked), by what stood in
    their way: a ``login`` block of the account tried refuses AUTH from a network the
    account has not sent mail from, whatever the password, so a guess made after it
    could not succeed."""

    made: int = 0
    before_block: int = 0  # made before the bot's first block of any kind
    locked: int = 0  # made at an account after its login block: could not succeed
    found: list[tuple[float, str]] = field(default_factory=list)  # (epoch seconds, account): guesses that worked
    found_locked: int = 0  # of them, made after the account's login block: must be 0


@dataclass
class Result:
    """One actor under one set of signals."""

    actor: Actor
    mail: Mail
    blocks: list[dict[str, Any]]  # its subjects' blocks, oldest first
    would: list[dict[str, Any]]
    closest: tuple[float, str]  # the highest share of a limit one of its subjects reached, and the counter
    start: float  # when its first step was due (epoch seconds)
    guesses: Guesses
    errors: list[str]

    @property
    def blocked_after(self) -> float | None:
        """Seconds from its first step to its first block."""
        return self.blocks[0]["since"] - self.start if self.blocks else None


def guesses(tally: Tally, blocks: list[dict[str, Any]]) -> Guesses:
    """What ``tally``'s guesses met: ``blocks`` are the bot's, oldest first."""
    first = blocks[0]["since"] if blocks else float("inf")
    locked = {b["key"]: b["since"] for b in blocks if b["ns"] == "login"}

    def after_lock(t: float, user: str) -> bool:
        return t > locked.get(user.lower(), float("inf"))

    return Guesses(len(tally.guessed), sum(t < first for t, _ in tally.guessed),
                   sum(after_lock(t, user) for t, user in tally.guessed), sorted(tally.found),
                   sum(after_lock(t, user) for t, user in tally.found))


def results(actors: list[Actor], mails: dict[str, Mail], held: Held, starts: dict[str, float]) -> list[Result]:
    out = []
    for actor in actors:
        subjects = actor.subjects()
        blocks = sorted((held.blocks[s] for s in subjects if s in held.blocks), key=lambda b: b["since"])
        would = [w for s in subjects for w in held.would.get(s, [])]
        closest = max((held.closest.get(s, (0.0, "")) for s in subjects), default=(0.0, ""))
        out.append(Result(actor, mails.get(actor.name, Mail()), blocks, would, closest, starts.get(actor.name, 0.0),
                          guesses(actor.tally, blocks), list(actor.tally.errors)))
    return out
