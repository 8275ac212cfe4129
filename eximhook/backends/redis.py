"""The shared backend: counters and blocks of several relays in one Redis (issue 13).

Only the daemon and the admin commands import this (and redis-py): a ``${run}`` hook
never does (``bench/redis_hook.py``: ~0.1 s per fork for the import alone).

One server-side Lua script (``RECORD``, run by EVALSHA, loaded again on NOSCRIPT)
counts an event in the subject's windows, decides the trip, and writes the block
record, its audit event and its outbox entry: Redis runs a script alone, so two relays
recording at the same moment make exactly one block and one notification.

Key layout (``S``: ``store.subject_key``, the same bytes LMDB uses). Every key a script
touches is one subject's, and all of them share the hash tag ``{S}``, so each script
touches one slot and runs unchanged on Redis Cluster:
  eximhook:{S}:c2:COUNTER  msgpack (cmsgpack) of the counter: total, windows (period,
                           events as packed strings with their sums, the last
                           crossing), evidence, IPs; it expires at twice its longest
                           window. ("c:" held windows as lists before their sums were
                           kept: a relay of either version counts in its own during a
                           rolling upgrade, and the old ones expire.)
  eximhook:{S}:block       JSON block record, as LMDB stores it, plus the relay ("node")
  eximhook:{S}:shadow      hash COUNTER NUL LIMIT NUL PERIOD -> JSON would-block record
  eximhook:{S}:audit       list of JSON events, numbered by eximhook:{S}:seq
  eximhook:{S}:outbox      hash SEQ -> JSON notification not yet taken by a relay
  eximhook:{S}:once:ID     a count done (ID: the relay's), for ONCE seconds: sent again
                           after a timeout, it is not counted twice
  eximhook:{S}:lifted      the block record last lifted, for TOMBSTONE seconds
  eximhook:{S}:known       hash NETWORK -> until when an authenticated user (S: its auth
                           subject) is known from it (``storage.known``), every relay's
  eximhook:exempt          hash NS NUL PATTERN -> JSON exemption (admin commands only)
Lists across subjects (blocks, history, outbox) SCAN for them: admin commands and the
daemons' periodic comparison, never a request.

Changes are published on eximhook:changes as JSON, ``{"op": "block", "node": N,
"record": R}`` by the script that blocks and ``{"op": "unblock", ...}`` by the one that
lifts, ``{"op": "exempt"}`` by exemption changes: each relay's daemon follows them
(``serve.shared``).

Notifications: the script that blocks queues one in the subject's outbox, naming the
relay ("node") whose request made it. That relay copies it into its own store's outbox
(which mails it, as for a local block) and then ``take``s it off; one that stopped in
between claims its own at restart, and any relay claims one nobody took in a minute
(``claim``): each is deleted by exactly one relay's call.

Keys and evidence may hold any byte: they travel as ASCII JSON, which no script decodes
(``redis_lua``). A value eximhook did not write (corrupt, or another program's) is an
``Undecodable`` error, or, for the daemon, which sets ``skip``, reported and passed
over: one bad value never stops the others.

The scripts are in ``redis_lua``; counting, the part every request runs, in ``redis_count``.
"""

from __future__ import annotations

import json

from ..model.records import Outcome, block_record
from ..storage.counters import Tally
from ..storage.store import queued, subject_key
from .base import Shared
from .redis_count import COUNTER, Counting, exempt_reason
from .redis_known import KnownNetworks
from .redis_lua import BLOCK, CLAIM, CLEAR, COUNTERS, LEARN, RECORD, SHADOW, UNBLOCK
from .redis_values import (
    Undecodable,
    decoded,
    is_exemption,
    is_lifted,
    is_notification,
    is_subject,
    prefix,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..config.load import StoreConfig
    from ..model.schedule import Schedule
    from ..model.spool import Guard
    from .base import Exempt, Owner
    from .connect import Client

# How long Redis remembers a lifted block: a relay cut off for longer than this and
# holding a copy of it would take the block for lost and put it back.
TOMBSTONE = 7 * 86400


class RedisBackend(Counting, KnownNetworks, Shared):
    name = "redis"

    def __init__(self, client: Client, prefix: str = "eximhook", node: str = "eximhook") -> None:
        self.client, self.node = client, node
        self.prefix = prefix.encode()
        self._record = client.register_script(RECORD)  # EVALSHA; on NOSCRIPT, loaded again
        self._block = client.register_script(BLOCK)
        self._unblock = client.register_script(UNBLOCK)
        self._claim = client.register_script(CLAIM)
        self._clear = client.register_script(CLEAR)
        self._counters = client.register_script(COUNTERS)
        self._shadow = client.register_script(SHADOW)
        self._learn = client.register_script(LEARN)
        self.channel = self.prefix + b":changes"
        self.k_exempt = self.prefix + b":exempt"
        # a value that is not what eximhook writes: raised (None), or handed to this and
        # passed over (the daemon's sync: it logs it and goes on)
        self.skip: Callable[[Undecodable], None] | None = None

    @classmethod
    def open(cls, url: str, prefix: str = "eximhook", timeout: float = 2.0, node: str = "eximhook") -> RedisBackend:
        """``redis://host:port/db``, ``rediss://`` (TLS) or ``unix:///path/to/socket``."""
        import redis

        from .connect import socket_timeouts

        return cls(redis.Redis.from_url(url, **socket_timeouts(url, timeout)), prefix, node)

    @classmethod
    def from_config(cls, store: StoreConfig, prefix: str = "eximhook") -> RedisBackend:
        """The Redis ``[store]`` names: ``redis_url``, through ``redis_sentinels``, or a
        ``redis_cluster`` (``connect.client``); ``redis_timeout`` bounds each call."""
        from .connect import client

        return cls(client(store), prefix, store.node)

    def _key(self, sk: bytes, what: bytes) -> bytes:
        # everything after the tag is one of a few fixed suffixes without "}": whatever
        # bytes S holds, the last "}:" splits a key, so two subjects never share one; and
        # Redis Cluster hashes what lies between "{" and the first "}" after it, the same
        # bytes in every key of a subject (S starts with its namespace, never with "}")
        return self.prefix + b":{" + sk + b"}:" + what

    def _keys(self, ns: str, key: str, *what: bytes) -> list[bytes]:
        sk = subject_key(ns, key)
        return [self._key(sk, w) for w in what]

    def _scan(self, what: bytes) -> list[bytes]:
        """Every subject's key ``what`` (SCAN: on every node of a Redis Cluster)."""
        return sorted(self.client.scan_iter(match=self.prefix + b":{*}:" + what, count=1000))

    def _load(self, raw: bytes | str, key: bytes, field: bytes | str | None = None, *,
              valid: Callable[[dict[str, Any]], bool] = is_subject, what: str = "a record") -> dict[str, Any] | None:
        """The JSON object ``raw`` (read from ``key``, ``field``) if ``valid``, else
        ``Undecodable``: raised, or, with ``skip``, handed to it (None)."""
        value, why = decoded(raw, valid, what)
        if value is None:
            self._bad(Undecodable(key, field, raw, why))
        return value

    def _bad(self, bad: Undecodable) -> None:
        if self.skip is None:
            raise bad
        self.skip(bad)

    def is_blocked(self, ns: str, key: str) -> bool:
        return bool(self.client.exists(self._key(subject_key(ns, key), b"block")))

    def get_block(self, ns: str, key: str) -> dict[str, Any] | None:
        k = self._key(subject_key(ns, key), b"block")
        data = self.client.get(k)
        return None if data is None else self._load(data, k)

    def blocks(self, ns: str | None = None) -> list[dict[str, Any]]:
        out = []
        for k in self._scan(b"block"):
            data = self.client.get(k)
            if data is not None:  # else lifted since the scan
                record = self._load(data, k)
                if record is not None and (ns is None or record["ns"] == ns):
                    out.append(record)
        return out

    def block(self, record: dict[str, Any], now: float, *, notify: bool = True, hold: float = 0.0) -> bool:
        return self.block_queued(record, now, notify=notify, hold=hold) >= 0

    def block_queued(self, record: dict[str, Any], now: float, *, notify: bool = True, hold: float = 0.0) -> int:
        """``block``, answering -1 if the subject was blocked already, else the number
        of its notification in the subject's outbox (0: none), for ``take``."""
        record = {**record, "node": record.get("node") or self.node}
        audit = prefix({"ts": now, "event": "blocked", "ns": record["ns"], "key": record["key"], "by": record["by"],
                         "reason": record["reason"], "note": record.get("note"), "counter": record.get("counter"),
                         "node": self.node})
        outbox = prefix(queued(now, "blocked", node=self.node, hold_until=now + hold)) if notify else ""
        keys = self._keys(record["ns"], record["key"], b"block", b"audit", b"outbox", b"seq")
        message = f'{{"op": "block", "node": {json.dumps(self.node)}, "record": '
        return int(self._block(keys=keys, args=[json.dumps(record), audit, outbox, self.channel, message]))

    def unblock(self, ns: str, key: str, now: float, by: str, *, event: str = "unblocked") -> bool:
        """Lift the block and clear the subject's would-block records and counters (as
        ``engine.actions.unblock`` does), in one step; published, so every relay lifts its copy."""
        return self.lift(ns, key, now, by, event=event) == 1

    def lift(self, ns: str, key: str, now: float, by: str, *, event: str = "unblocked") -> int:
        """``unblock``, answering what it did: 1 lifted a block; 2 cleared would-block
        records, and the counters with them; 0 nothing (not blocked: counters kept)."""
        from ..model.policy import COUNTERS

        audit = prefix({"ts": now, "event": event, "ns": ns, "key": key, "by": by, "node": self.node})
        message = json.dumps({"op": "unblock", "node": self.node, "ns": ns, "key": key, "by": by, "event": event})
        keys = self._keys(ns, key, b"block", b"audit", b"seq", b"shadow", b"lifted",
                          *(COUNTER + n.encode() for n in COUNTERS))
        return int(self._unblock(keys=keys, args=[audit, self.channel, message, TOMBSTONE]))

    def lifted(self, ns: str, key: str) -> dict[str, Any] | None:
        """The subject's block record last lifted here (for ``TOMBSTONE`` seconds)."""
        k = self._key(subject_key(ns, key), b"lifted")
        data = self.client.get(k)
        return None if data is None else self._load(data, k, valid=is_lifted)

    def take(self, ns: str, key: str, queued: int) -> bool:
        """The notification ``queued`` is this relay's to send (its own store has it): off
        the shared outbox; False if another relay claimed it first, or Redis did not
        answer (then this relay's next ``claim`` finds it, and its store has it)."""
        import redis

        try:
            return bool(self.client.hdel(self._key(subject_key(ns, key), b"outbox"), queued))
        except redis.RedisError:
            return False

    def claim(self, now: float, *, mine_after: float, orphan_after: float) -> list[dict[str, Any]]:
        """The notifications this relay now sends: its own not taken after ``mine_after``
        seconds, and any no relay took in ``orphan_after``; each claimed by one relay
        (``CLAIM`` deletes it if it is still the entry read here). One that no relay
        can send (``Undecodable``) is, with ``skip``, taken off by the one relay that
        reports it; without, raised before anything is taken."""
        read = [(k, field, raw, *decoded(raw, is_notification, "a notification"))
                for k in self._scan(b"outbox") for field, raw in self.client.hgetall(k).items()]
        if self.skip is None:
            for k, field, raw, entry, why in read:
                if entry is None:
                    raise Undecodable(k, field, raw, why)
        out = []
        for k, field, raw, entry, why in read:
            if entry is None:
                if self._claim(keys=[k], args=[field, raw]):
                    self._bad(Undecodable(k, field, raw, why))
            elif ((entry["node"] == self.node and now - entry["ts"] >= mine_after)
                  or now - entry["ts"] >= orphan_after) and self._claim(keys=[k], args=[field, raw]):
                out.append(entry)
        return out

    def settle(self, tally: Tally, now: float, *, hold: float = 0.0, notify_shadow: bool = False,
               exempt: Exempt | None = None, spool: Guard | None = None, owner: Owner | None = None,
               expiry: Schedule | None = None, within: tuple[str, str] | None = None) -> Outcome:
        """``Backend.settle`` for a tally no script counted (the combined score): the
        block (``block_queued``: once, however many relays race), or the would-block
        record (``SHADOW``: once per window and limit). What only a relay's own store
        keeps (the spool's floor, the owner's mail, [expiry]) its copy of the block gets
        (``serve.relay``), as for a block a script made."""
        ns, key, total = tally.ns, tally.key, tally.counter.total
        if tally.over < 0:
            return Outcome(self.is_blocked(ns, key), False, max(tally.counts, default=0), total)
        why_not = exempt_reason(exempt, ns, key)
        limit, period = tally.window
        record = {**block_record(ns, key, now, by="eximhook", reason="limit", counter_name=tally.name, limit=limit,
                                 period=period, count=tally.count, counter=tally.counter), "node": self.node}
        if tally.policy.enforced and why_not is None:
            number = self.block_queued(record, now, hold=hold)
            return Outcome(True, number >= 0, tally.count, total, queued=max(number, 0))
        record["exempt"] = why_not
        audit = {"ts": now, "event": "would-block", "ns": ns, "key": key, "by": "eximhook", "counter": tally.name,
                 "limit": limit, "period": period, "count": tally.count, "exempt": why_not, "node": self.node}
        field = f"{tally.name}\0{limit}\0{period!r}".encode()
        keys = self._keys(ns, key, b"shadow", b"audit", b"outbox", b"seq")
        number = int(self._shadow(keys=keys, args=[field, json.dumps(record), prefix(audit),
                                                   prefix(queued(now, "would-block", node=self.node)),
                                                   int(notify_shadow and why_not is None)]))
        return Outcome(self.is_blocked(ns, key), False, tally.count, total, shadowed=number >= 0, exempt=why_not,
                       queued=max(number, 0))

    def shadows(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        hashes = self._keys(ns, key, b"shadow") if ns is not None and key is not None else self._scan(b"shadow")
        out = [json.loads(v) for h in hashes for v in self.client.hvals(h)]
        return [r for r in out if (ns is None or r["ns"] == ns) and (key is None or r["key"] == key)]

    def clear_shadows(self, ns: str, key: str) -> int:
        return int(self._clear(keys=self._keys(ns, key, b"shadow")))

    def history(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        """Oldest first; each subject numbers its own events (``seq``): a Redis Cluster
        has no one counter every script could touch."""
        lists = self._keys(ns, key, b"audit") if ns is not None and key is not None else self._scan(b"audit")
        events = [json.loads(e) for k in lists for e in self.client.lrange(k, 0, -1)]
        return sorted(events, key=lambda e: (e["ts"], e["seq"]))

    def outbox(self) -> list[dict[str, Any]]:
        items = [json.loads(v) for k in self._scan(b"outbox") for v in self.client.hvals(k)]
        return sorted(items, key=lambda e: (e["ts"], e["seq"]))

    def exemptions(self) -> list[dict[str, Any]]:
        """The admin's exemptions (``eximhook exempt add``), every relay's."""
        found = (self._load(v, self.k_exempt, f, valid=is_exemption, what="an exemption")
                 for f, v in self.client.hgetall(self.k_exempt).items())
        return sorted((r for r in found if r is not None), key=lambda r: r["since"])

    def exempt(self, record: dict[str, Any]) -> bool:
        """Add the exemption ``record`` (as ``Store.exempt``); False if that pattern is
        exempt already. Published: each relay copies it into its store."""
        field = record["ns"].encode() + b"\0" + record["pattern"].encode("utf-8", "surrogateescape")
        if not self.client.hsetnx(self.k_exempt, field, json.dumps(record)):
            return False
        self.client.publish(self.channel, json.dumps({"op": "exempt", "node": self.node}))
        return True

    def unexempt(self, ns: str, pattern: str) -> bool:
        field = ns.encode() + b"\0" + pattern.encode("utf-8", "surrogateescape")
        if not self.client.hdel(self.k_exempt, field):
            return False
        self.client.publish(self.channel, json.dumps({"op": "exempt", "node": self.node}))
        return True

    def close(self) -> None:
        self.client.close()

