"""The store of records: blocks, the notification outbox, the audit log.

One LMDB environment (a directory holding ``data.mdb`` and ``lock.mdb``) shared by
every Exim process, the daemon and the admin, synced on every commit: these are what
must survive a power cut. (The counters that decide a block are soft state, in their
own unsynced environment: see ``counters``.) Each read-modify-write is one LMDB write
transaction, which LMDB serialises across processes, so a block is created exactly
once however many connections and processes race for it.

Key layout (all keys are bytes; ``S`` is the subject key, see ``subject_key``):
  blocks    S                        -> JSON block record
  shadow    COUNTER NUL W S          -> JSON record of a trip in shadow mode ("would block") of
                                      the window W (LIMIT(4) PERIOD(8)): once per limit setting
  exempt    NS NUL PATTERN           -> JSON record of an admin's exemption (``eximhook exempt``)
  outbox    8-byte big-endian seq    -> JSON notification (kind blocked, would-block, owner)
  audit     8-byte big-endian seq    -> JSON event
  offences  S                        -> JSON {"count", "last"}: the subject's blocks while [expiry] is
                                      on, and when it was last under one (see ``expiry``)
  relaytest IP (text, normalised)    -> JSON record of the host's open-relay tests (``relaytest.table``)
  known     S                        -> JSON [[NETWORK, LAST_SEEN], ...]: where a user sends from (``known``)
  meta      b"generation"            -> 8-byte big-endian count of block changes
            b"heartbeat"             -> the time of the last health probe
            b"spool-low"             -> since when the spool is below the guard's threshold
            b"spool-floor"           -> [spool] floor, KiB, for the mirror
            b"mirror" NUL NAME       -> what else the mirror writes (customers' members: ``set_mirrored``)
            b"digest" NUL NS         -> JSON {"times", "next"}: the namespace's last mails about
                                      blocks, and when its next digest is due (``outbox``)
"""

from __future__ import annotations

import struct

from ..model.subjects import FREEZING
from .env import Env

TYPE_CHECKING = False  # typing costs ~10 ms to import on the hooks' path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    import lmdb

    from ..model.schedule import Schedule

# "counters" is the database where eximhook before 0.2 kept them: listed so that an
# older store still opens with room for all its databases; nothing reads it now.
_DBS = (b"blocks", b"outbox", b"audit", b"meta", b"counters", b"shadow", b"exempt", b"offences",
        b"relaytest", b"journal", b"known")
_GENERATION = b"generation"
# LMDB's default maximum key size is 511 bytes; longer keys are stored by digest and
# the full key lives in the record.
_MAX_RAW_KEY = 400
SEQ = struct.Struct(">Q")  # the key of an item appended to a database (append_in)


def subject_key(ns: str, key: str) -> bytes:
    raw = key.encode("utf-8", "surrogateescape")
    if len(raw) <= _MAX_RAW_KEY:
        return ns.encode() + b"\0" + raw
    import hashlib

    # \1 instead of \0 keeps a digest apart from any raw key
    return ns.encode() + b"\1" + hashlib.sha256(raw).digest()


def decode_subject_key(sk: bytes) -> tuple[str, str | None]:
    """(namespace, key) of a subject key; the key is None when it was too long to keep
    whole (stored by digest; the block record holds it)."""
    ns, sep, raw = sk.partition(b"\0")
    if sep:
        return ns.decode(), raw.decode("utf-8", "surrogateescape")
    return sk.partition(b"\1")[0].decode(), None


def queued(now: float, kind: str, *, hold_until: float | None = None, **fields: Any) -> dict[str, Any]:
    """A new outbox item (``outbox`` sends it): queued, never tried, due at ``hold_until``
    (at once by default); ``fields`` such as ``block``, the record the mail is about."""
    return {"ts": now, "kind": kind, **fields, "state": "queued", "attempts": 0,
            "hold_until": now if hold_until is None else hold_until}


class Store(Env):
    """The records, synced: blocks, outbox, audit log, generation."""

    def __init__(self, path: str, map_size: int = 1 << 32, owner: str | None = None, readonly: bool = False) -> None:
        super().__init__(path, _DBS, map_size=map_size, owner=owner, sync=True, config_key="[store] path",
                         readonly=readonly)

    # -- blocks ------------------------------------------------------------------

    def is_blocked(self, ns: str, key: str) -> bool:
        return self.read(self.blocked_in(ns, key))

    def blocked_in(self, ns: str, key: str) -> Callable[[lmdb.Transaction], bool]:
        """The body that tells whether the subject is blocked (the daemon batches it)."""
        sk = subject_key(ns, key)
        return lambda txn: txn.get(sk, db=self.db(txn, b"blocks")) is not None

    def get_block(self, ns: str, key: str) -> dict[str, Any] | None:
        import json

        sk = subject_key(ns, key)
        data = self.read(lambda txn: txn.get(sk, db=self.db(txn, b"blocks")))
        return None if data is None else dict(json.loads(bytes(data)))

    def blocks(self, ns: str | None = None) -> list[dict[str, Any]]:
        return self.read(lambda txn: self.blocks_in(txn, ns))

    def blocks_in(self, txn: lmdb.Transaction, ns: str | None = None) -> list[dict[str, Any]]:
        import json

        prefix = b"" if ns is None else ns.encode()
        cur = txn.cursor(db=self.db(txn, b"blocks"))
        found = cur.set_range(prefix) if prefix else cur.first()
        out = []
        while found and bytes(cur.key()).startswith(prefix):
            record = json.loads(bytes(cur.value()))
            if ns is None or record["ns"] == ns:
                out.append(record)
            found = cur.next()
        return out

    def generation_in(self, txn: lmdb.Transaction) -> int:
        """How many times the set of blocks has changed: the mirror files carry the
        generation they were written from, so a lagging mirror is seen and rewritten."""
        data = txn.get(_GENERATION, db=self.db(txn, b"meta"))
        return int(SEQ.unpack(data)[0]) if data else 0

    def generation(self) -> int:
        return self.read(self.generation_in)

    def heartbeat(self, now: float) -> None:
        """A small write, to prove the store takes writes (``eximhook status``, ``maintain``)."""
        self.update(lambda txn: txn.put(b"heartbeat", struct.pack(">d", now), db=self.db(txn, b"meta")))

    def _bump(self, txn: lmdb.Transaction) -> None:
        txn.put(_GENERATION, SEQ.pack(self.generation_in(txn) + 1), db=self.db(txn, b"meta"))

    def block(self, record: dict[str, Any], now: float, notify: bool, hold: float = 0.0,
              owner: str | None = None, expiry: Schedule | None = None) -> bool:
        """Store ``record`` as the subject's block unless one exists; True if new. The
        block, its audit event and (with ``notify``) its notifications are one
        transaction. ``hold`` delays the abuse desk's (see ``notify``) so that it can
        name the tripping message. ``owner`` is the address of the owner's mail
        (``[owner]``): "" when one was looked for and none found, None when none is wanted.
        ``expiry`` (``[expiry]`` when on) gives the block its offence number and lift
        time, in the same transaction."""
        return self.update(lambda txn: self._block_in(txn, record, now, notify, hold, owner, expiry))

    def _block_in(self, txn: lmdb.Transaction, record: dict[str, Any], now: float, notify: bool,
                  hold: float, owner: str | None = None, expiry: Schedule | None = None) -> bool:
        import json

        sk = subject_key(record["ns"], record["key"])
        if expiry is not None and txn.get(sk, db=self.db(txn, b"blocks")) is None:
            from .offences import stamp_in

            stamp_in(self.db(txn, b"offences"), txn, sk, record, now, expiry)
        if not txn.put(sk, json.dumps(record).encode(), db=self.db(txn, b"blocks"), overwrite=False):
            return False
        self._bump(txn)
        self.append_in(txn, b"audit", {"ts": now, "event": "blocked", "ns": record["ns"], "key": record["key"],
                                       "by": record["by"], "reason": record["reason"], "note": record.get("note"),
                                       "counter": record.get("counter")})
        if notify:
            self._notify_in(txn, record, now, hold, owner)
        return True

    def notify(self, record: dict[str, Any], now: float, hold: float = 0.0, owner: str | None = None) -> None:
        """Queue the notifications of a block stored already (``block`` without them):
        the daemon's, for a block made in Redis that another thread copied here first."""
        self.update(lambda txn: self._notify_in(txn, record, now, hold, owner))

    def _notify_in(self, txn: lmdb.Transaction, record: dict[str, Any], now: float, hold: float,
                   owner: str | None) -> None:
        self.append_in(txn, b"outbox", queued(now, "blocked", block=record, hold_until=now + hold))
        if owner:  # names no message: not held
            self.append_in(txn, b"outbox", queued(now, "owner", to=owner, block=record))
        elif owner is not None:
            self.append_in(txn, b"audit", {"ts": now, "event": "owner-unknown", "ns": record["ns"],
                                           "key": record["key"], "by": record["by"]})

    # -- shadow mode -----------------------------------------------------------------

    def shadowed_in(self, counter: str, ns: str, key: str,
                    window: tuple[int, float]) -> Callable[[lmdb.Transaction], bool]:
        """The body that tells whether the subject's ``counter`` has a would-block
        record for this window (limit, period)."""
        k = _shadow_key(counter, window, subject_key(ns, key))
        return lambda txn: txn.get(k, db=self.db(txn, b"shadow")) is not None

    def shadow(self, record: dict[str, Any], now: float, notify: bool) -> bool:
        """Record that ``record``'s counter would have blocked its subject: once per
        window and limit (an admin who raises a limit sees the trips at the new one),
        until unblock clears it; True if new. Audited, and mailed with ``notify``."""
        import json

        k = _shadow_key(record["counter"], (record["limit"], record["period"]),
                        subject_key(record["ns"], record["key"]))

        def body(txn: lmdb.Transaction) -> bool:
            if not txn.put(k, json.dumps(record).encode(), db=self.db(txn, b"shadow"), overwrite=False):
                return False
            self.append_in(txn, b"audit", {"ts": now, "event": "would-block", "ns": record["ns"], "key": record["key"],
                                           "by": record["by"], "counter": record["counter"],
                                           "limit": record["limit"], "period": record["period"],
                                           "count": record["count"], "exempt": record.get("exempt")})
            if notify:
                self.append_in(txn, b"outbox", queued(now, "would-block", block=record))
            return True
        return self.update(body)

    def shadows(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        import json

        def body(txn: lmdb.Transaction) -> list[dict[str, Any]]:
            out = [json.loads(bytes(v)) for _, v in txn.cursor(db=self.db(txn, b"shadow"))]
            return [r for r in out if (ns is None or r["ns"] == ns) and (key is None or r["key"] == key)]
        return self.read(body)

    def clear_shadows(self, ns: str, key: str) -> int:
        """Forget the subject's would-block records (the admin has looked); how many."""
        sk = subject_key(ns, key)

        def body(txn: lmdb.Transaction) -> int:
            db = self.db(txn, b"shadow")
            mine = [bytes(k) for k in txn.cursor(db=db).iternext(values=False)
                    if bytes(k).partition(b"\0")[2][_SHADOW_WINDOW.size:] == sk]
            return sum(bool(txn.delete(k, db=db)) for k in mine)
        return self.update(body)

    def unblock(self, ns: str, key: str, now: float, by: str, *, event: str = "unblocked",
                only: Callable[[dict[str, Any]], bool] | None = None) -> bool:
        """Lift the block (``only`` if its record passes that test, in the same
        transaction); False if it was not blocked, or failed the test."""
        import json

        from .offences import lifted_in

        sk = subject_key(ns, key)

        def body(txn: lmdb.Transaction) -> bool:
            data = txn.get(sk, db=self.db(txn, b"blocks"))
            if data is None or (only is not None and not only(json.loads(bytes(data)))):
                return False
            txn.delete(sk, db=self.db(txn, b"blocks"))
            self._bump(txn)
            lifted_in(self.db(txn, b"offences"), txn, sk, now)
            self.append_in(txn, b"audit", {"ts": now, "event": event, "ns": ns, "key": key, "by": by})
            return True
        return self.update(body)

    # -- the spool-space guard -------------------------------------------------------

    def spool_low(self, low: bool, now: float, free: int, limit: int) -> bool:
        """Record whether the spool is below the guard's threshold (``spool``); True if
        that changed. Falling below queues one notification, in the same transaction:
        however many processes look, the abuse desk hears once per episode."""
        def body(txn: lmdb.Transaction) -> bool:
            meta = self.db(txn, b"meta")
            if (txn.get(b"spool-low", db=meta) is not None) == low:
                return False
            if low:
                txn.put(b"spool-low", struct.pack(">d", now), db=meta)
            else:
                txn.delete(b"spool-low", db=meta)
            event = {"ts": now, "event": "spool-low" if low else "spool-ok", "ns": "spool", "key": "",
                     "by": "eximhook", "free_kib": free, "threshold_kib": limit}
            self.append_in(txn, b"audit", event)
            if low:
                blocked = [(b["ns"], b["key"]) for b in self.blocks_in(txn) if b["ns"] in FREEZING]
                notice = {"ns": "spool", "key": "", "since": now, "free": free, "threshold": limit,
                          "blocked": blocked[:50], "blocked_total": len(blocked)}
                self.append_in(txn, b"outbox", queued(now, "spool-low", block=notice))
            return True
        return self.update(body)

    def spool_floor_in(self, txn: lmdb.Transaction) -> int:
        data = txn.get(b"spool-floor", db=self.db(txn, b"meta"))
        return int(SEQ.unpack(data)[0]) if data else 0

    def set_spool_floor(self, kib: int) -> bool:
        """Keep ``[spool] floor`` for the mirror (which has no config); True if it
        changed: the generation moves, so the next look rewrites the mirror files."""
        def body(txn: lmdb.Transaction) -> bool:
            if self.spool_floor_in(txn) == kib:
                return False
            txn.put(b"spool-floor", SEQ.pack(kib), db=self.db(txn, b"meta"))
            self._bump(txn)
            return True
        if self.read(self.spool_floor_in) == kib:  # the common case: a read, no write lock
            return False
        return self.update(body)

    def mirrored_in(self, txn: lmdb.Transaction, name: bytes) -> bytes | None:
        """What an admin command or the daemon handed the mirror under ``name`` (the
        mirror has no config: ``set_mirrored``)."""
        data = txn.get(b"mirror\0" + name, db=self.db(txn, b"meta"))
        return None if data is None else bytes(data)

    def set_mirrored(self, name: bytes, value: bytes) -> bool:
        """Keep ``value`` for the mirror; True if it changed: the generation moves, so the
        next look rewrites the mirror files (as ``set_spool_floor``)."""
        def body(txn: lmdb.Transaction) -> bool:
            if self.mirrored_in(txn, name) == value:
                return False
            txn.put(b"mirror\0" + name, value, db=self.db(txn, b"meta"))
            self._bump(txn)
            return True
        if self.read(lambda txn: self.mirrored_in(txn, name)) == value:  # a read, no write lock
            return False
        return self.update(body)

    def spool_low_since(self) -> float | None:
        data = self.read(lambda txn: txn.get(b"spool-low", db=self.db(txn, b"meta")))
        return None if data is None else float(struct.unpack(">d", data)[0])

    # -- exemptions ------------------------------------------------------------------

    def exemptions_in(self, txn: lmdb.Transaction, ns: str) -> list[tuple[str, str]]:
        """The admin's exemptions in ``ns``: (pattern, reason), in the order added."""
        import json

        prefix = ns.encode() + b"\0"
        cur = txn.cursor(db=self.db(txn, b"exempt"))
        found, out = cur.set_range(prefix), []
        while found and bytes(cur.key()).startswith(prefix):
            record = json.loads(bytes(cur.value()))
            out.append((record["since"], record["pattern"], record["reason"]))
            found = cur.next()
        return [(pattern, reason) for _, pattern, reason in sorted(out)]

    def exemptions(self) -> list[dict[str, Any]]:
        import json

        return self.read(lambda txn: [json.loads(bytes(v)) for _, v in txn.cursor(db=self.db(txn, b"exempt"))])

    def exempt(self, record: dict[str, Any]) -> bool:
        """Add the exemption ``record`` (ns, pattern, reason, by, since); False if that
        pattern is exempt already. Audited."""
        import json

        k = record["ns"].encode() + b"\0" + record["pattern"].encode("utf-8", "surrogateescape")

        def body(txn: lmdb.Transaction) -> bool:
            if not txn.put(k, json.dumps(record).encode(), db=self.db(txn, b"exempt"), overwrite=False):
                return False
            self.append_in(txn, b"audit", {"ts": record["since"], "event": "exempted", "ns": record["ns"],
                                           "key": record["pattern"], "by": record["by"],
                                           "note": record["reason"] or None})
            return True
        return self.update(body)

    def unexempt(self, ns: str, pattern: str, now: float, by: str) -> bool:
        """Remove the admin's exemption of ``pattern``; False if there was none. Audited."""
        k = ns.encode() + b"\0" + pattern.encode("utf-8", "surrogateescape")

        def body(txn: lmdb.Transaction) -> bool:
            if not txn.delete(k, db=self.db(txn, b"exempt")):
                return False
            self.append_in(txn, b"audit", {"ts": now, "event": "exempt-removed", "ns": ns, "key": pattern, "by": by})
            return True
        return self.update(body)

    # -- outbox and audit log ------------------------------------------------------

    def append_in(self, txn: lmdb.Transaction, db: bytes, item: dict[str, Any]) -> int:
        import json

        cur = txn.cursor(db=self.db(txn, db))
        seq = SEQ.unpack(cur.key())[0] + 1 if cur.last() else 1
        item["seq"] = seq
        txn.put(SEQ.pack(seq), json.dumps(item).encode(), db=self.db(txn, db), append=True)
        return seq

    def audit(self, event: dict[str, Any]) -> int:
        return self.update(lambda txn: self.append_in(txn, b"audit", dict(event)))

    def history(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self._items(b"audit") if ns is None or (e.get("ns") == ns and e.get("key") == key)]

    def outbox(self) -> list[dict[str, Any]]:
        return self._items(b"outbox")

    def _items(self, db: bytes) -> list[dict[str, Any]]:
        import json

        return self.read(lambda txn: [json.loads(bytes(v)) for _, v in txn.cursor(db=self.db(txn, db))])



_SHADOW_WINDOW = struct.Struct("<Id")  # limit, period


def _shadow_key(counter: str, window: tuple[int, float], sk: bytes) -> bytes:
    return counter.encode() + b"\0" + _SHADOW_WINDOW.pack(window[0], window[1]) + sk
