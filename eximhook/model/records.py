"""The values that travel through the counting path, whichever door they came in by
(a ``${run}`` hook's argv, a ``${readsocket}`` request) and whichever backend counts
them: the request, the events it counts, and what counting one did."""

from __future__ import annotations

TYPE_CHECKING = False  # the hooks import this module: typing costs ~10 ms
if TYPE_CHECKING:
    from typing import Any

    from .counter import Counter
    from .policy import Policy


MAX_WEIGHT = 1 << 31  # a count's weight ("n", --count) must fit the window's 32-bit weights


def is_weight(text: str) -> bool:
    """Is ``text`` a number of recipients one event may count (1 up to ``MAX_WEIGHT``)?"""
    return text.isascii() and text.isdigit() and 0 < int(text) < MAX_WEIGHT


class Request:
    """A decoded request: what to do, for which subject, with which evidence."""

    __slots__ = ("fields", "key", "kind", "ns", "op")

    def __init__(self, op: str, ns: str = "", key: str = "", kind: str = "",
                 fields: dict[str, str] | None = None) -> None:
        self.op, self.ns, self.key, self.kind, self.fields = op, ns, key, kind, fields or {}

    def __repr__(self) -> str:
        return f"Request({self.op!r}, {self.ns!r}, {self.key!r}, {self.kind!r}, {self.fields!r})"

    def normalize(self, ipv6_prefix: int) -> None:
        """Its subjects' keys as eximhook keeps them (``subjects.normalize``): the key, a
        message's (or a delivery's) envelope sender and the account a failed AUTH tried.
        At the door, before anything is counted: a subject that is no key
        (``BadSubject``) makes a bad request, not a failed count."""
        from .subjects import normalize

        if self.ns:
            self.key = normalize(self.ns, self.key, ipv6_prefix)
        if self.op in ("message", "delivery") and self.fields.get("sender"):
            self.fields["sender"] = normalize("sender", self.fields["sender"])
        if self.kind == "authfail" and self.fields.get("user"):
            self.fields["user"] = normalize("login", self.fields["user"])


class Event:
    """One event to count against a subject: ``weight`` of them (a message counts its
    recipients), with its evidence (the recipient, the failure) and the client's IP,
    both cut here (``evidence.cut``), before any backend stores them.
    ``once``: an id that makes the count happen once however often it is sent (Redis:
    a relay sends again what it counted alone after a call that timed out). ``tags``:
    the values a distinct counter counts (``ratelimit.tag``), or (1,) for a bad event of
    a ratio counter and (0,) for a good one."""

    __slots__ = ("evidence", "ip", "keep_evidence", "keep_ips", "key", "ns", "once", "policy", "tags", "weight")

    def __init__(self, ns: str, key: str, policy: Policy, *, weight: int = 1, evidence: str | None = None,
                 ip: str | None = None, keep_evidence: int = 10, keep_ips: int = 5, once: str = "",
                 tags: tuple[int, ...] = ()) -> None:
        from .evidence import cut  # not on a check's path, which makes no event

        self.ns, self.key, self.policy, self.weight = ns, key, policy, weight
        self.evidence, self.ip = evidence and cut(evidence), ip and cut(ip)
        self.keep_evidence, self.keep_ips = keep_evidence, keep_ips
        self.once, self.tags = once, tags


class Outcome:
    """What counting an event did: is the subject blocked now, did this event trip it
    (or, in shadow mode, make the record that it would have)."""

    __slots__ = ("blocked", "count", "exempt", "queued", "shadowed", "total", "tripped")

    def __init__(self, blocked: bool, tripped: bool, count: int, total: int, shadowed: bool = False,
                 exempt: str | None = None, queued: int = 0) -> None:
        self.blocked, self.tripped, self.count, self.total = blocked, tripped, count, total
        # Redis only: the number of the notification this event queued in the shared
        # outbox, which the relay takes once its own store has it (0: none)
        self.shadowed, self.exempt, self.queued = shadowed, exempt, queued


def block_record(ns: str, key: str, now: float, *, by: str, reason: str, counter_name: str | None = None,
                 limit: int | None = None, period: float | None = None, count: int | None = None,
                 counter: Counter | None = None, note: str | None = None) -> dict[str, Any]:
    """The block as stored, mirrored, mailed and shown: when, why (which counter over
    which window), and the evidence: the counter's, each piece cut (``evidence.cut``),
    the newest within ``EVIDENCE_KEPT`` bytes a list (``evidence.newest``), so a record
    holds at most 2 KiB of evidence besides its key and note."""
    from ..periods import format_period  # a block's: not on a count's path
    from .counter import Counter
    from .evidence import cut, newest

    counter = counter or Counter()
    return {
        "ns": ns, "key": key, "since": now, "by": by, "reason": reason, "note": note, "counter": counter_name,
        "limit": limit, "period": period, "period_text": None if period is None else format_period(period),
        "count": count, "total": counter.total, "ips": newest([cut(x) for x in counter.ips], len(counter.ips)),
        "rcpts": newest([cut(x) for x in counter.recent], len(counter.recent)),
    }
