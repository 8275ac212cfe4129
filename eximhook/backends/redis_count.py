"""Counting in Redis, the part of ``RedisBackend`` that runs on every request: the
counting script (``redis_lua.RECORD``) for one event, or for a turn's events in one
round trip, and the counters read back.

Key: ``eximhook:{S}:c2:COUNTER`` (the layout is in ``redis``)."""

from __future__ import annotations

import json

from ..model.records import Event, Outcome
from ..periods import format_period
from ..storage.counters import Counter, Tally, Window
from ..storage.store import queued
from .redis_values import Replayed, prefix, window

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from .base import Exempt
    from .connect import Client

COUNTER = b"c2:"  # a counter's key, after the subject's (see ``redis``)
# How long Redis remembers a count done (Event.once): a relay whose call timed out sends
# it again when Redis answers, seconds after Redis ran it, if it ran it at all.
ONCE = 600


class Counting:
    """The counting part of ``RedisBackend``."""

    # RedisBackend's
    client: Client
    node: str
    channel: bytes
    _record: Any  # the registered RECORD script
    _counters: Any  # and COUNTERS
    _keys: Callable[..., list[bytes]]  # (ns, key, *what)

    def record(self, event: Event, now: float, *, hold: float = 0.0, notify_shadow: bool = False,
               exempt: Exempt | None = None, made: float | None = None) -> tuple[Tally, Outcome]:
        """``Backend.record``; ``made``: when a block this count makes is made, if not at
        ``now``, the event's time (a count sent late, from a relay's journal: counted in
        the windows when it happened; its block dated when Redis made it, with the
        event's time as evidence, ``event_at``)."""
        keys, args, why_not = self._record_call(event, now, hold, notify_shadow, exempt, made)
        return self._recorded(event, self._record(keys=keys, args=args), why_not)

    def record_many(self, items: Sequence[tuple[Event, float, float, Exempt | None]], *,
                    notify_shadow: bool = False) -> list[tuple[Tally, Outcome] | Exception]:
        """``record`` for each (event, now, hold, exempt) in one round trip (a pipeline,
        not a transaction: each script runs alone, as one call would). Each answer in
        order: the count, or the error its script raised (``Replayed``: counted already).
        A connection that fails raises for all of them: some may have run (their ids
        tell them apart when they are sent again)."""
        import redis

        pipe = self.client.pipeline(transaction=False)
        calls = []
        for event, now, hold, exempt in items:
            keys, args, why_not = self._record_call(event, now, hold, notify_shadow, exempt, None)
            # EVALSHA itself: handing the pipeline the script would cost a SCRIPT EXISTS first
            pipe.evalsha(self._record.sha, len(keys), *keys, *args)
            calls.append((event, keys, args, why_not))
        out: list[tuple[Tally, Outcome] | Exception] = []
        for (event, keys, args, why_not), result in zip(calls, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, (redis.ConnectionError, redis.TimeoutError)):
                raise result
            try:
                if isinstance(result, redis.exceptions.NoScriptError):  # not run: once more, loading it
                    result = self._record(keys=keys, args=args)
                out.append(result if isinstance(result, Exception) else self._recorded(event, result, why_not))
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except (Replayed, redis.RedisError) as exc:
                out.append(exc)
        return out

    def _record_call(self, event: Event, now: float, hold: float, notify_shadow: bool, exempt: Exempt | None,
                     made: float | None) -> tuple[list[bytes], list[Any], str | None]:
        """The keys and arguments of ``RECORD`` for ``event``, and why it blocks nothing."""
        ns, key, policy = event.ns, event.key, event.policy
        made = now if made is None else made
        why_not = exempt_reason(exempt, ns, key)
        enforce = policy.enforced and why_not is None
        kind = "blocked" if enforce else "would-block"
        # the script adds the block record and the entry's number
        outbox = prefix(queued(made, kind, node=self.node, hold_until=made + hold if enforce else None))
        args: list[Any] = [repr(now), event.weight, json.dumps(event.evidence) if event.evidence else "",
                           json.dumps(event.ip) if event.ip else "", event.keep_evidence, event.keep_ips,
                           "enforce" if enforce else "shadow", int(notify_shadow and why_not is None),
                           json.dumps(self.node), outbox, len(policy.windows)]
        for limit, period in policy.windows:
            record = {"ns": ns, "key": key, "since": made, "by": "eximhook", "reason": "limit", "note": None,
                      "counter": policy.name, "limit": limit, "period": period, "period_text": format_period(period),
                      "node": self.node, **({"event_at": now} if made != now else {})}
            if enforce:
                audit = {"ts": made, "event": "blocked", "ns": ns, "key": key, "by": "eximhook", "reason": "limit",
                         "note": None, "counter": policy.name, "node": self.node}
            else:
                record["exempt"] = why_not
                audit = {"ts": made, "event": "would-block", "ns": ns, "key": key, "by": "eximhook",
                         "counter": policy.name, "limit": limit, "period": period, "exempt": why_not,
                         "node": self.node}
            args += [limit, repr(period), prefix(record), prefix(audit), f"{policy.name}\0{limit}\0{period!r}"]
        # a counter outlives its longest window twice over, then Redis drops it
        ttl = max(1000, int(2000 * max((p for _, p in policy.windows), default=0.5)))
        args += [self.channel.decode(), ttl, event.once, ONCE * 1000, policy.adds, policy.minimum, *event.tags]
        keys = self._keys(ns, key, COUNTER + policy.name.encode(), b"block", b"shadow", b"audit", b"outbox", b"seq",
                          b"once:" + event.once.encode("utf-8", "surrogateescape"))
        return keys, [json.dumps(args)], why_not

    def _recorded(self, event: Event, result: list[Any], why_not: str | None) -> tuple[Tally, Outcome]:
        """What ``RECORD`` answered for ``event``, as a tally and an outcome."""
        ns, key, policy = event.ns, event.key, event.policy
        if result[0] == -2:
            raise Replayed(f"{ns} {key!r}: counted already ({event.once})")
        over, blocked, tripped, shadowed, count, state, number = result
        total, counts, crossings, recent, ips = state
        # the windows' crossings, not their events (``Tally``)
        counter = Counter(int(total), [Window(period, crossed=int(x), crossed_limit=int(limit))
                                       for (_, period), (x, limit) in zip(policy.windows, crossings, strict=True)],
                          [json.loads(x) for x in recent], [json.loads(x) for x in ips])
        tally = Tally(ns, key, policy, counter, [int(n) for n in counts], int(over))
        if over < 0:
            count = max(tally.counts, default=0)
        return tally, Outcome(bool(blocked), bool(tripped), int(count), int(total), shadowed=bool(shadowed),
                              exempt=why_not if over >= 0 else None, queued=int(number))

    def counter(self, ns: str, key: str, name: str = "invalid") -> Counter:
        return self.counters_of(ns, key, (name,))[name]

    def counters_of(self, ns: str, key: str, names: tuple[str, ...]) -> dict[str, Counter]:
        """The subject's counters ``names``, in one script (they share its slot)."""
        found = self._counters(keys=self._keys(ns, key, *(COUNTER + name.encode() for name in names))) if names else []
        return {name: Counter(int(total), [window(w) for w in windows], [json.loads(x) for x in recent],
                              [json.loads(x) for x in ips])
                for name, (total, windows, recent, ips) in zip(names, found, strict=True)}

    def reset(self, ns: str, key: str, names: tuple[str, ...] | None = None) -> None:
        from ..model.policy import COUNTERS

        self.client.delete(*self._keys(ns, key, *(COUNTER + name.encode() for name in names or COUNTERS)))

def exempt_reason(exempt: Exempt | None, ns: str, key: str) -> str | None:
    """Why the subject is exempt (``PATTERN: REASON``), or None."""
    if not exempt or not exempt.get(ns):
        return None
    from ..model.patterns import first

    found = first(ns, key, exempt[ns])
    return None if found is None else f"{found[0]}: {found[1]}"
