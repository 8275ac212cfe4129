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
# LMDB writes its lock file through a shared mmap, one 64-byte slot per reader after a
# header (65,664 bytes for 1024 readers). A page of it first touched when the disk is
# full is a SIGBUS, not an error: a hook would die without its token, the daemon would
# crash. So the file is allocated in full before LMDB maps it.
_LOCK_BYTES = 80 * 1024


def _reason(exc: BaseException, path: str) -> str:
    """The error without the path the caller names already."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).removeprefix(f"{path}: ").removeprefix(f"{path}/")


def _allocate_lock_file(path: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    try:
        st = os.fstat(fd)
        size = max(st.st_size, _LOCK_BYTES)
        if st.st_blocks * 512 < size:  # new, or sparse: once per store
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


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
            _allocate_lock_file(os.path.join(path, "lock.mdb"))
            self.env = lmdb.open(path, map_size=map_size, max_dbs=len(_DBS), max_readers=_MAX_READERS,
                                 subdir=True, readahead=False, meminit=False, metasync=False)
        except (lmdb.Error, OSError, KeyError) as exc:
            raise StoreUnavailable(f"cannot open store {path} ([store] path): {_reason(exc, path)}") from exc
        try:
            self._create_dbs()
            hand_over([path, *(os.path.join(path, f) for f in ("data.mdb", "lock.mdb"))], self.owner)
        except OSError as exc:
            self.env.close()
            raise StoreUnavailable(f"cannot open store {path} ([store] path): {_reason(exc, path)}") from exc
        except StoreUnavailable:
            self.env.close()
            raise

    def _create_dbs(self) -> None:
        def missing(txn: lmdb.Transaction) -> bool:
            try:
                for name in _DBS:
                    self.env.open_db(name, txn=txn, create=False)
            except lmdb.NotFoundError:
                return True
            return False

        if self.read(missing):
            # a new store, or one from an older eximhook without every database: the only
            # write an open needs, inside the retry loop so a small map grows
            self.update(lambda txn: [self.env.open_db(name, txn=txn) for name in _DBS])

    def db(self, txn: lmdb.Transaction, name: bytes) -> Any:
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
                    raise StoreUnavailable(f"store {self.path}: {_reason(exc, self.path)}") from exc
        raise StoreUnavailable(f"store {self.path}: gave up after {_TRIES} tries: the map ([store] map_size) "
                               "could not grow enough, or the reader table stayed full")

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
        return int(_SEQ.unpack(data)[0]) if data else 0

    def generation(self) -> int:
        return self.read(self.generation_in)

    def heartbeat(self, now: float) -> None:
        """A small write, to prove the store takes writes (``eximhook status``, ``maintain``)."""
        self.update(lambda txn: txn.put(b"heartbeat", struct.pack(">d", now), db=self.db(txn, b"meta")))

    def _bump(self, txn: lmdb.Transaction) -> None:
        txn.put(_GENERATION, _SEQ.pack(self.generation_in(txn) + 1), db=self.db(txn, b"meta"))

    def block(self, record: dict[str, Any], now: float, notify: bool) -> bool:
        """Store ``record`` as the subject's block unless one exists; True if new."""
        return self.update(lambda txn: self._block_in(txn, record, now, notify))

    def _block_in(self, txn: lmdb.Transaction, record: dict[str, Any], now: float, notify: bool,
                  hold: float = 0.0) -> bool:
        import json

        sk = subject_key(record["ns"], record["key"])
        if not txn.put(sk, json.dumps(record).encode(), db=self.db(txn, b"blocks"), overwrite=False):
            return False
        self._bump(txn)
        self.append_in(txn, b"audit", {"ts": now, "event": "blocked", "ns": record["ns"], "key": record["key"],
                                     "by": record["by"], "reason": record["reason"]})
        if notify:
            self.append_in(txn, b"outbox", {"ts": now, "kind": "blocked", "block": record,
                                          "state": "queued", "attempts": 0, "hold_until": now + hold})
        return True

    def unblock(self, ns: str, key: str, now: float, by: str, counters: tuple[str, ...] = ("invalid",)) -> bool:
        """Lift the block and reset the subject's counters; False if it was not blocked."""
        sk = subject_key(ns, key)

        def body(txn: lmdb.Transaction) -> bool:
            for name in counters:
                txn.delete(name.encode() + b"\0" + sk, db=self.db(txn, b"counters"))
            if not txn.delete(sk, db=self.db(txn, b"blocks")):
                return False
            self._bump(txn)
            self.append_in(txn, b"audit", {"ts": now, "event": "unblocked", "ns": ns, "key": key, "by": by})
            return True
        return self.update(body)

    # -- counters ------------------------------------------------------------------

    def counter(self, ns: str, key: str, name: str = "invalid") -> Counter:
        ck = name.encode() + b"\0" + subject_key(ns, key)
        return Counter.decode(self.read(lambda txn: txn.get(ck, db=self.db(txn, b"counters"))))

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
            c = Counter.decode(txn.get(ck, db=self.db(txn, b"counters")))
            c.times, count, over = ratelimit.record(c.times, now, limit, period)
            c.total += 1
            if evidence:
                c.recent = [*c.recent, evidence][-keep_evidence:]
            if ip:
                c.ips = [*(x for x in c.ips if x != ip), ip][-keep_ips:]
            txn.put(ck, c.encode(), db=self.db(txn, b"counters"))
            blocked = txn.get(sk, db=self.db(txn, b"blocks")) is not None
            tripped = over and not blocked and self._block_in(txn, make_block(c, count), now, True, hold)
            return Outcome(blocked or tripped, tripped, count, c.total)
        return body

    # -- outbox and audit log ------------------------------------------------------

    def append_in(self, txn: lmdb.Transaction, db: bytes, item: dict[str, Any]) -> int:
        import json

        cur = txn.cursor(db=self.db(txn, db))
        seq = _SEQ.unpack(cur.key())[0] + 1 if cur.last() else 1
        item["seq"] = seq
        txn.put(_SEQ.pack(seq), json.dumps(item).encode(), db=self.db(txn, db), append=True)
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
