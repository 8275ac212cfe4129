"""The LMDB store: blocks, event counters, the notification outbox and the audit log.

One LMDB environment (a directory holding ``data.mdb`` and ``lock.mdb``) shared by
every Exim process and by the admin. Each read-modify-write is one LMDB write
transaction, which LMDB serialises across processes, so a block is created exactly
once however many connections race for it.

Key layout (all keys are bytes; ``S`` is the subject key, see ``subject_key``):
  blocks    S                        -> JSON block record
  counters  COUNTER NUL S            -> packed Counter
  outbox    8-byte big-endian seq    -> JSON notification
  audit     8-byte big-endian seq    -> JSON event
  meta      b"generation"            -> 8-byte big-endian count of block changes
Counters are packed with ``struct`` and checked without ``json``, because they sit on
the hooks' path where ``import json`` alone would cost ~10 ms.

Work on the store is a *body*: a function of one write transaction, run by ``update``
(a hook: one event, one transaction) or ``update_many`` (the daemon: every request
that queued while the last commit ran, in one transaction and one fsync).
"""

from __future__ import annotations

import _thread
import os
import struct

import lmdb

from ._perms import hand_over, resolve_owner
from .errors import StoreUnavailable

TYPE_CHECKING = False  # typing costs ~10 ms to import on the hooks' path
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, TypeVar

    T = TypeVar("T")

_DBS = (b"blocks", b"counters", b"outbox", b"audit", b"meta")
_GENERATION = b"generation"
# LMDB's default maximum key size is 511 bytes; longer keys are stored by digest and
# the full key lives in the record.
_MAX_RAW_KEY = 400
_SEQ = struct.Struct(">Q")
_HEAD = struct.Struct("<QI")  # total events, number of timestamps
_TRIES = 8  # each retry doubles a full map, or frees reader slots of dead processes
# One reader slot per process that has the store open: every Exim process running a
# hook at the same moment, plus the admin. LMDB's default is 126.
_MAX_READERS = 1024


def subject_key(ns: str, key: str) -> bytes:
    raw = key.encode("utf-8", "surrogateescape")
    if len(raw) <= _MAX_RAW_KEY:
        return ns.encode() + b"\0" + raw
    import hashlib

    # \1 instead of \0 keeps a digest apart from any raw key
    return ns.encode() + b"\1" + hashlib.sha256(raw).digest()


class Counter:
    """Events of one kind for one subject: total, sliding-window times, evidence."""

    __slots__ = ("ips", "recent", "times", "total")

    def __init__(self, total: int = 0, times: list[float] | None = None,
                 recent: list[str] | None = None, ips: list[str] | None = None) -> None:
        self.total = total
        self.times = times or []
        self.recent = recent or []
        self.ips = ips or []

    def encode(self) -> bytes:
        parts = [_HEAD.pack(self.total, len(self.times)), struct.pack(f"<{len(self.times)}d", *self.times)]
        for strings in (self.recent, self.ips):
            parts.append(struct.pack("<H", len(strings)))
            for text in strings:
                data = text.encode("utf-8", "surrogateescape")
                parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes | memoryview | None) -> Counter:
        if not data:
            return cls()
        data = bytes(data)
        total, n = _HEAD.unpack_from(data)
        pos = _HEAD.size
        times = list(struct.unpack_from(f"<{n}d", data, pos))
        pos += 8 * n
        lists: list[list[str]] = []
        for _ in range(2):
            (count,) = struct.unpack_from("<H", data, pos)
            pos += 2
            items = []
            for _ in range(count):
                (size,) = struct.unpack_from("<I", data, pos)
                pos += 4
                items.append(data[pos : pos + size].decode("utf-8", "surrogateescape"))
                pos += size
            lists.append(items)
        return cls(total, times, lists[0], lists[1])


class Outcome:
    """What counting an event did: is the subject blocked now, did this event trip it."""

    __slots__ = ("blocked", "count", "total", "tripped")

    def __init__(self, blocked: bool, tripped: bool, count: int, total: int) -> None:
        self.blocked, self.tripped, self.count, self.total = blocked, tripped, count, total


class Store:
    """An open LMDB environment and its named databases."""

    def __init__(self, path: str, map_size: int = 1 << 32, owner: str | None = None) -> None:
        self.path = path
        # The daemon's threads take turns: LMDB forbids set_mapsize() (a full map, or one
        # another process grew) while any transaction of this process is open.
        self._lock = _thread.allocate_lock()
        try:
            self.owner = resolve_owner(owner, path)  # before makedirs: root must not own the new dir
            os.makedirs(path, mode=0o750, exist_ok=True)
            self.env = lmdb.open(path, map_size=map_size, max_dbs=len(_DBS), max_readers=_MAX_READERS,
                                 subdir=True, readahead=False, meminit=False, metasync=False)
            self._create_dbs()
            hand_over([path, *(os.path.join(path, f) for f in ("data.mdb", "lock.mdb"))], self.owner)
        except (lmdb.Error, OSError, KeyError) as exc:
            raise StoreUnavailable(f"cannot open store {path}: {exc}") from exc

    def _create_dbs(self) -> None:
        try:
            with self.env.begin() as txn:
                for name in _DBS:
                    self.env.open_db(name, txn=txn, create=False)
                return
        except lmdb.NotFoundError:
            pass
        # a new store, or one from an older eximhook without every database: the only
        # write an open needs
        with self.env.begin(write=True) as txn:
            for name in _DBS:
                self.env.open_db(name, txn=txn)

    def _db(self, txn: lmdb.Transaction, name: bytes) -> Any:
        # Each transaction opens the handles it uses (a B-tree lookup, microseconds):
        # py-lmdb aborts read transactions, which closes handles opened in them, and
        # open_db() without a transaction takes the *writer* lock, holding the GIL,
        # which would queue every hook behind any writer and stall the watchdog.
        return self.env.open_db(name, txn=txn, create=False)

    def close(self) -> None:
        with self._lock:
            self.env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions -----------------------------------------------------------

    def update(self, body: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``body`` in one write transaction, growing the map when it is full.

        ``body`` may run more than once (after MapFullError), so it must not have side
        effects outside the transaction.
        """
        return self._transact(body, write=True)

    def update_many(self, bodies: Sequence[Callable[[lmdb.Transaction], Any]]) -> list[Any]:
        """Run ``bodies`` in one write transaction: one commit and one fsync for all.

        Each body runs in a nested transaction, so one that raises leaves nothing
        behind, and its exception stands in its place in the returned list while the
        others commit. LMDB errors (a full map) retry the whole batch.
        """
        def batch(txn: lmdb.Transaction) -> list[Any]:
            out: list[Any] = []
            for body in bodies:
                child = self.env.begin(write=True, parent=txn)
                try:
                    out.append(body(child))
                except lmdb.Error:
                    child.abort()
                    raise
                except Exception as exc:
                    child.abort()
                    out.append(exc)
                else:
                    child.commit()
            return out
        return self._transact(batch, write=True)

    def read(self, body: Callable[[lmdb.Transaction], T]) -> T:
        return self._transact(body, write=False)

    def sync(self) -> None:
        """Flush everything to disk, the meta page included (``metasync=False`` leaves the
        last commit undoable by a power cut until the next one): a new block must survive."""
        try:
            with self._lock:
                self.env.sync(True)
        except lmdb.Error as exc:
            raise StoreUnavailable(f"store {self.path}: {exc}") from exc

    def _transact(self, body: Callable[[lmdb.Transaction], T], write: bool) -> T:
        for _ in range(_TRIES):
            with self._lock:
                try:
                    with self.env.begin(write=write) as txn:
                        return body(txn)
                except lmdb.MapFullError:
                    self.env.set_mapsize(self.env.info()["map_size"] * 2)
                except lmdb.MapResizedError:
                    self.env.set_mapsize(0)  # another process grew the map: adopt its size
                except lmdb.ReadersFullError:
                    self.env.reader_check()  # slots of processes that died (watchdog, kill -9)
                except lmdb.Error as exc:
                    raise StoreUnavailable(f"store {self.path}: {exc}") from exc
        raise StoreUnavailable(f"store {self.path}: gave up after {_TRIES} tries (map full, or readers full)")

    # -- blocks ------------------------------------------------------------------

    def is_blocked(self, ns: str, key: str) -> bool:
        return self.read(self.blocked_in(ns, key))

    def blocked_in(self, ns: str, key: str) -> Callable[[lmdb.Transaction], bool]:
        """The body that tells whether the subject is blocked (the daemon batches it)."""
        sk = subject_key(ns, key)
        return lambda txn: txn.get(sk, db=self._db(txn, b"blocks")) is not None

    def get_block(self, ns: str, key: str) -> dict[str, Any] | None:
        import json

        sk = subject_key(ns, key)
        data = self.read(lambda txn: txn.get(sk, db=self._db(txn, b"blocks")))
        return None if data is None else dict(json.loads(bytes(data)))

    def blocks(self, ns: str | None = None) -> list[dict[str, Any]]:
        return self.read(lambda txn: self.blocks_in(txn, ns))

    def blocks_in(self, txn: lmdb.Transaction, ns: str | None = None) -> list[dict[str, Any]]:
        import json

        prefix = b"" if ns is None else ns.encode()
        cur = txn.cursor(db=self._db(txn, b"blocks"))
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
        data = txn.get(_GENERATION, db=self._db(txn, b"meta"))
        return int(_SEQ.unpack(data)[0]) if data else 0

    def generation(self) -> int:
        return self.read(self.generation_in)

    def _bump(self, txn: lmdb.Transaction) -> None:
        txn.put(_GENERATION, _SEQ.pack(self.generation_in(txn) + 1), db=self._db(txn, b"meta"))

    def block(self, record: dict[str, Any], now: float, notify: bool) -> bool:
        """Store ``record`` as the subject's block unless one exists; True if new."""
        return self.update(lambda txn: self._block_in(txn, record, now, notify))

    def _block_in(self, txn: lmdb.Transaction, record: dict[str, Any], now: float, notify: bool,
                  hold: float = 0.0) -> bool:
        import json

        sk = subject_key(record["ns"], record["key"])
        if not txn.put(sk, json.dumps(record).encode(), db=self._db(txn, b"blocks"), overwrite=False):
            return False
        self._bump(txn)
        self._append(txn, b"audit", {"ts": now, "event": "blocked", "ns": record["ns"], "key": record["key"],
                                     "by": record["by"], "reason": record["reason"]})
        if notify:
            self._append(txn, b"outbox", {"ts": now, "kind": "blocked", "block": record,
                                          "state": "queued", "attempts": 0, "hold_until": now + hold})
        return True

    def unblock(self, ns: str, key: str, now: float, by: str, counters: tuple[str, ...] = ("invalid",)) -> bool:
        """Lift the block and reset the subject's counters; False if it was not blocked."""
        sk = subject_key(ns, key)

        def body(txn: lmdb.Transaction) -> bool:
            for name in counters:
                txn.delete(name.encode() + b"\0" + sk, db=self._db(txn, b"counters"))
            if not txn.delete(sk, db=self._db(txn, b"blocks")):
                return False
            self._bump(txn)
            self._append(txn, b"audit", {"ts": now, "event": "unblocked", "ns": ns, "key": key, "by": by})
            return True
        return self.update(body)

    # -- counters ------------------------------------------------------------------

    def counter(self, ns: str, key: str, name: str = "invalid") -> Counter:
        ck = name.encode() + b"\0" + subject_key(ns, key)
        return Counter.decode(self.read(lambda txn: txn.get(ck, db=self._db(txn, b"counters"))))

    def event(self, ns: str, key: str, now: float, *, limit: int, period: float,
              make_block: Callable[[Counter, int], dict[str, Any]],
              evidence: str | None = None, ip: str | None = None,
              keep_evidence: int = 10, keep_ips: int = 5, name: str = "invalid",
              hold: float = 0.0) -> Callable[[lmdb.Transaction], Outcome]:
        """The body that counts one event; the event over the limit blocks the subject, once.

        Counter, block record, audit event and queued notification are written in one
        transaction: either all of them exist afterwards or none does. ``hold`` delays
        the notification (see ``notify``) so that it can name the tripping message.
        """
        sk = subject_key(ns, key)
        ck = name.encode() + b"\0" + sk

        from . import ratelimit  # here, not at the top: check-blocked never needs it

        def body(txn: lmdb.Transaction) -> Outcome:
            c = Counter.decode(txn.get(ck, db=self._db(txn, b"counters")))
            c.times, count, over = ratelimit.record(c.times, now, limit, period)
            c.total += 1
            if evidence:
                c.recent = [*c.recent, evidence][-keep_evidence:]
            if ip:
                c.ips = [*(x for x in c.ips if x != ip), ip][-keep_ips:]
            txn.put(ck, c.encode(), db=self._db(txn, b"counters"))
            blocked = txn.get(sk, db=self._db(txn, b"blocks")) is not None
            tripped = over and not blocked and self._block_in(txn, make_block(c, count), now, True, hold)
            return Outcome(blocked or tripped, tripped, count, c.total)
        return body

    # -- outbox and audit log ------------------------------------------------------

    def _append(self, txn: lmdb.Transaction, db: bytes, item: dict[str, Any]) -> int:
        import json

        cur = txn.cursor(db=self._db(txn, db))
        seq = _SEQ.unpack(cur.key())[0] + 1 if cur.last() else 1
        item["seq"] = seq
        txn.put(_SEQ.pack(seq), json.dumps(item).encode(), db=self._db(txn, db), append=True)
        return seq

    def audit(self, event: dict[str, Any]) -> int:
        return self.update(lambda txn: self._append(txn, b"audit", dict(event)))

    def history(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self._items(b"audit") if ns is None or (e.get("ns") == ns and e.get("key") == key)]

    def outbox(self) -> list[dict[str, Any]]:
        return self._items(b"outbox")

    def _items(self, db: bytes) -> list[dict[str, Any]]:
        import json

        return self.read(lambda txn: [json.loads(bytes(v)) for _, v in txn.cursor(db=self._db(txn, db))])

    def claim_next(self, now: float, stale_after: float, skip: set[int] | frozenset[int] = frozenset(),
                   release: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()
                   ) -> dict[str, Any] | None:
        """Mark the oldest unclaimed notification not in ``skip`` as being sent by this process.

        Claiming in a write transaction keeps concurrent ``notify`` runs from sending
        the same mail. A claim older than ``stale_after`` seconds belongs to a sender
        that died, and is taken over. A notification still held (``hold_until`` ahead:
        the daemon waits to name the tripping message) waits, unless its subject is in
        ``release``.
        """
        import json

        def body(txn: lmdb.Transaction) -> dict[str, Any] | None:
            for k, v in txn.cursor(db=self._db(txn, b"outbox")):
                item: dict[str, Any] = json.loads(bytes(v))
                if item["seq"] in skip or (item["state"] == "sending" and now - item["claimed"] < stale_after):
                    continue
                subject = (item["block"]["ns"], item["block"]["key"])
                if now < item.get("hold_until", 0) and subject not in release:
                    continue
                item.update(state="sending", claimed=now, claimer=os.getpid())
                txn.put(k, json.dumps(item).encode(), db=self._db(txn, b"outbox"))
                return item
            return None
        return self.update(body)

    def finish_notification(self, item: dict[str, Any], now: float, error: str | None) -> None:
        """Drop a sent notification (audit "notified"), or requeue a failed one."""
        import json

        k = _SEQ.pack(item["seq"])
        block = item["block"]

        def body(txn: lmdb.Transaction) -> None:
            if error is None:
                txn.delete(k, db=self._db(txn, b"outbox"))
                event = {"event": "notified", "notification": item["seq"], "to": item.get("to")}
            else:
                item.update(state="queued", attempts=item["attempts"] + 1, error=error)
                txn.put(k, json.dumps(item).encode(), db=self._db(txn, b"outbox"))
                event = {"event": "notify-failed", "notification": item["seq"], "error": error}
            self._append(txn, b"audit", {"ts": now, "ns": block["ns"], "key": block["key"], "by": "notify", **event})
        self.update(body)
