"""Which subject sent a message, for its bounces: the message references the counters
keep beside the windows (``counters.Counters`` is a ``MessageRefs``).

Key layout: refs  HOUR(4) DIGEST(16) -> the subject that sent a message: LEFT(4) NS NUL KEY

``refs`` remembers, per hour, which subject sent the message with a given Message-ID
and envelope sender (the digest), so a bounce that names the message counts against
that subject too (docs/counters.md, "Which subject a bounce counts against"). LEFT is how many
more bounces the message can still cause: one per recipient it had. Anyone who got the
message knows its Message-ID and sender, and could forge reports naming it; they can
never make it count for more bounces than it could really cause.

Soft state like the counts: dropped after ``[bounces] remember`` (``forget``), and,
oldest hour first, when the counters reach their budget (``Counters.make_room``).
"""

from __future__ import annotations

import struct

from .env import Env

TYPE_CHECKING = False  # typing costs ~10 ms to import on the hooks' path
if TYPE_CHECKING:
    import lmdb

_HOUR = struct.Struct(">I")
_LEFT = struct.Struct("<I")
REFS = b"refs"  # the database


def ref_digest(sender: str, message_id: str) -> bytes:
    """Which message a bounce is about: its Message-ID and the address it bounces to.
    Both: a report must name the message and the sender it went back to."""
    import hashlib

    text = f"{sender.lower()}\0{message_id.strip()}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:16]


def ref_time(key: bytes | memoryview) -> float:
    """The end of the hour a reference was made in: when it was last touched, at the latest."""
    return float((_HOUR.unpack_from(key)[0] + 1) * 3600)


class MessageRefs(Env):
    """An environment with the ``refs`` database."""

    def remember_in(self, txn: lmdb.Transaction, sender: str, message_id: str, ns: str, key: str,
                    now: float, recipients: int) -> None:
        """Remember a message; one sent again with the same Message-ID and sender (a bot
        that reuses both) adds its recipients to the bounces the first may cause."""
        k, db = _HOUR.pack(int(now // 3600)) + ref_digest(sender, message_id), self.db(txn, REFS)
        old = txn.get(k, db=db)
        left = recipients + (_LEFT.unpack_from(old)[0] if old is not None else 0)
        value = _LEFT.pack(min(left, 0xFFFFFFFF)) + ns.encode() + b"\0" + key.encode("utf-8", "surrogateescape")
        txn.put(k, value, db=db)

    def first_report_in(self, txn: lmdb.Transaction, sender: str, message_id: str, source: str, now: float,
                        remember: float) -> bool:
        """True the first time ``source`` (a reporting MTA's network) reports on the
        message, and remembers that it has: one forger reports each message once."""
        return self._first_in(txn, ref_digest(sender, f"{message_id}\0{source}"), now, remember)

    def first_in(self, txn: lmdb.Transaction, what: str, which: str, now: float, remember: float) -> bool:
        """True the first time within ``remember`` seconds that ``which`` happens as
        ``what`` (a remote recipient's first delivery outcome, its first refusal), and
        remembers that it has."""
        return self._first_in(txn, ref_digest(f"\0{what}", which), now, remember)

    def _first_in(self, txn: lmdb.Transaction, digest: bytes, now: float, remember: float) -> bool:
        if self._ref_in(txn, digest, now, remember) is not None:
            return False
        txn.put(_HOUR.pack(int(now // 3600)) + digest, b"", db=self.db(txn, REFS))
        return True

    def _ref_in(self, txn: lmdb.Transaction, digest: bytes, now: float,
                remember: float) -> tuple[bytes, bytes] | None:
        """The reference ``digest`` in the hour buckets of the last ``remember`` seconds,
        newest first: (its key, its value), or None."""
        db, hour = self.db(txn, REFS), int(now // 3600)
        for h in range(hour, hour - int(remember // 3600) - 2, -1):
            k = _HOUR.pack(max(h, 0)) + digest
            data = txn.get(k, db=db)
            if data is not None:
                return k, bytes(data)
        return None

    def recall_in(self, txn: lmdb.Transaction, sender: str, message_id: str, now: float,
                  remember: float, take: bool = True, spent: bool = False) -> tuple[str, str] | None:
        """The subject that sent the message, if it was within ``remember`` seconds and
        has bounces left (a recall that ``take``s takes one); with ``spent``, also once
        it has none left (purge still finds the frozen bounces of the subject's spam)."""
        found = self._ref_in(txn, ref_digest(sender, message_id), now, remember)
        if found is None:
            return None
        k, data = found
        (left,), rest = _LEFT.unpack_from(data), data[_LEFT.size:]
        if left == 0 and not spent:
            return None
        if take and left > 0:
            txn.put(k, _LEFT.pack(left - 1) + rest, db=self.db(txn, REFS))
        ns, _, key = rest.partition(b"\0")
        return ns.decode(), key.decode("utf-8", "surrogateescape")

    def forget(self, now: float, remember: float, batch: int = 1000) -> int:
        """Drop message references older than ``remember``, ``batch`` at a time (each
        batch a short transaction: hooks wait for this lock); returns how many."""
        cutoff = _HOUR.pack(max(int((now - remember) // 3600) - 1, 0))

        def body(txn: lmdb.Transaction) -> int:
            cur = txn.cursor(db=self.db(txn, REFS))
            n = 0
            while n < batch and cur.first() and bytes(cur.key()) < cutoff:
                cur.delete()
                n += 1
            return n
        dropped = 0
        while (n := self.update(body)) > 0:
            dropped += n
            if n < batch:
                break
        return dropped
