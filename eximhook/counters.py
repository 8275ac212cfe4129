"""The counters that decide blocks: soft state, as Exim's own hints databases are.

The sliding windows, totals and recent evidence live in their own LMDB environment,
``[store] path``/counters, never fsync'd: counting an event is a memory write, not a disk
flush (one synced commit per invalid recipient cost more than Exim's whole native
ratelimit; see README, Performance). What that gives up is only what a power cut or an
OS crash can take: the counts the kernel had not written back, and, as LMDB without
sync depends on an order of writes that ext4 does not promise, possibly the
environment itself. So the environment notes the boot it was written in and is wiped
the first time it is opened after a reboot: counting starts afresh, as after
``unblock``. A process that is killed loses nothing (the page cache survives it). The
blocks these counts trip are records, synced before anyone hears of them (``store``).

Writers take ``write.lock`` (flock) before LMDB's own writer lock. Hooks and admin
commands wait for it; the daemon's event loop only tries it, so a writer in another
process never stalls the loop, which tries again on its next turn.

Key layout (``S``: ``store.subject_key``):
  counters  COUNTER NUL S          -> packed ``Counter``: its windows, evidence
  refs      HOUR(4) DIGEST(16)     -> the subject that sent a message: LEFT(4) NS NUL KEY
Counters are packed with ``struct``, not JSON: ``import json`` alone costs ~10 ms on the
hooks' path. ``refs`` remembers, per hour, which subject sent the message with a given
Message-ID and envelope sender (the digest), so a bounce that names the message counts
against that subject too (README, "Which subject a bounce counts against"). LEFT is how
many more bounces the message can still cause: one per recipient it had. Anyone who got
the message knows its Message-ID and sender, and could forge reports naming it; they
can never make it count for more bounces than it could really cause.
"""

from __future__ import annotations

import fcntl
import os
import struct

from ._perms import hand_over, replace_files
from .lmdbenv import Env
from .store import subject_key

TYPE_CHECKING = False  # typing costs ~10 ms to import on the hooks' path
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, TypeVar

    import lmdb

    from .policy import Policy

    T = TypeVar("T")

_DBS = (b"counters", b"refs")
_HEAD = struct.Struct("<QB")  # total events, number of windows
_WINDOW = struct.Struct("<dIII")  # period, number of events; the count at the last crossing (0: none), its limit
_PEAK = struct.Struct("<II")  # day (since the epoch), the highest count seen in the window that day
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
BOOT_FILE = "boot_id"  # the boot these counts were written in, and their format
_FORMAT = "3"  # counters with named windows; a stamp of another format wipes them, as a reboot does
LOCK_FILE = "write.lock"
PEAK_DAYS = 8  # daily peaks kept per window, for eximhook top --since (up to 7d)
_HOUR = struct.Struct(">I")
_LEFT = struct.Struct("<I")


class Window:
    """One window of a counter: the events in its period (see ``ratelimit``), the
    highest count it reached on each of the last PEAK_DAYS days, and the count at the
    event that last took it over its limit (``crossed``).

    ``crossed`` is what a block record reports. Processes count in one order (the
    counters' write lock) but settle trips in another: a hook that counted the 51st
    event may be overtaken by the daemon settling the 56th. Whoever makes the block, it
    names the event that crossed the limit, as it would without the race. The limit is
    kept with it: after an admin changes the limit, an old crossing names nothing."""

    __slots__ = ("crossed", "crossed_limit", "peaks", "period", "times", "weights")

    def __init__(self, period: float, times: list[float] | None = None, weights: list[int] | None = None,
                 peaks: list[tuple[int, int]] | None = None, crossed: int = 0, crossed_limit: int = 0) -> None:
        self.period = period
        self.times = times or []
        self.weights = weights or []
        self.peaks = peaks or []
        self.crossed, self.crossed_limit = crossed, crossed_limit

    def count(self, now: float) -> int:
        from .ratelimit import in_window

        return in_window(self.times, self.weights, now, self.period)

    def peak(self, since: float) -> tuple[int, int]:
        """The highest count from the day of ``since`` on, and its day (0, 0 if none)."""
        day = int(since // 86400)
        return max(((c, d) for d, c in self.peaks if d >= day), default=(0, 0))


class Counter:
    """Events of one kind for one subject: total, windows, evidence."""

    __slots__ = ("ips", "recent", "total", "windows")

    def __init__(self, total: int = 0, windows: list[Window] | None = None,
                 recent: list[str] | None = None, ips: list[str] | None = None) -> None:
        self.total = total
        self.windows = windows or []
        self.recent = recent or []
        self.ips = ips or []

    def window(self, period: float) -> Window:
        """The window of ``period`` (an empty one if there is none yet)."""
        for w in self.windows:
            if w.period == period:
                return w
        return Window(period)

    def encode(self) -> bytes:
        parts = [_HEAD.pack(self.total, len(self.windows))]
        for w in self.windows:
            n = len(w.times)
            parts += [_WINDOW.pack(w.period, n, min(w.crossed, 0xFFFFFFFF), min(w.crossed_limit, 0xFFFFFFFF)),
                      struct.pack(f"<{n}d{n}I", *w.times, *w.weights),
                      struct.pack("<B", len(w.peaks)), *(_PEAK.pack(*p) for p in w.peaks)]
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
        total, nwin = _HEAD.unpack_from(data)
        pos = _HEAD.size
        windows = []
        for _ in range(nwin):
            period, n, crossed, crossed_limit = _WINDOW.unpack_from(data, pos)
            pos += _WINDOW.size
            values = struct.unpack_from(f"<{n}d{n}I", data, pos)
            pos += 12 * n
            (npeaks,) = struct.unpack_from("<B", data, pos)
            pos += 1
            peaks = [_PEAK.unpack_from(data, pos + i * _PEAK.size) for i in range(npeaks)]
            pos += npeaks * _PEAK.size
            windows.append(Window(period, list(values[:n]), list(values[n:]), peaks, crossed, crossed_limit))
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
        return cls(total, windows, lists[0], lists[1])


class Tally:
    """One event counted for one subject: the counter after it, the count in each of
    the policy's windows, and the first window it is over (-1: none)."""

    __slots__ = ("counter", "counts", "key", "ns", "over", "policy")

    def __init__(self, ns: str, key: str, policy: Policy, counter: Counter, counts: list[int], over: int) -> None:
        self.ns, self.key, self.policy, self.counter, self.counts, self.over = ns, key, policy, counter, counts, over

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def window(self) -> tuple[int, float]:
        return self.policy.windows[self.over]

    @property
    def count(self) -> int:
        """The count in the window it is over, at the event that crossed its limit (the
        count now if it crossed under another limit, or not while counted here)."""
        limit, period = self.window
        w, now = self.counter.window(period), self.counts[self.over]
        return w.crossed if w.crossed_limit == limit and limit < w.crossed <= now else now


def _boot() -> str:
    return (_read(_BOOT_ID) or "") + " " + _FORMAT  # not Linux: no boot to tell apart, only the format


def ref_digest(sender: str, message_id: str) -> bytes:
    """Which message a bounce is about: its Message-ID and the address it bounces to.
    Both: a report must name the message and the sender it went back to."""
    import hashlib

    text = f"{sender.lower()}\0{message_id.strip()}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:16]


class Counters(Env):
    """The unsynced environment of counters, beside the store."""

    what = "counters"

    def __init__(self, store_path: str, map_size: int = 1 << 32, owner: str | None = None) -> None:
        self._lock_fd = -1
        try:
            super().__init__(os.path.join(store_path, "counters"), _DBS, map_size=map_size, owner=owner,
                             sync=False, config_key="[store] path")
        except BaseException:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
            raise

    def prepare(self) -> None:
        """Wipe counts written before the last reboot (see the module's docstring)."""
        lock = os.path.join(self.path, LOCK_FILE)
        self._lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        stamp, boot = os.path.join(self.path, BOOT_FILE), _boot()
        hand_over([lock], self.owner)
        if _read(stamp) == boot:
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            if _read(stamp) != boot:  # the first opener since the boot; the others wait here
                for name in ("data.mdb", "lock.mdb"):
                    try:
                        os.unlink(os.path.join(self.path, name))
                    except FileNotFoundError:
                        pass
                replace_files([(stamp, boot.encode())], self.owner)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        super().close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def update(self, body: Callable[[lmdb.Transaction], T]) -> T:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            return super().update(body)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def try_update_many(self, bodies: Sequence[Callable[[lmdb.Transaction], Any]]) -> list[Any] | None:
        """``update_many`` if no other process is writing right now, else None at once."""
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        try:
            return super().update_many(bodies)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def heartbeat(self, now: float) -> None:
        """A real write, to prove the counters take writes (a NUL first: no counter's key)."""
        self.update(lambda txn: txn.put(b"\0heartbeat", struct.pack(">d", now), db=self.db(txn, b"counters")))

    def get(self, ns: str, key: str, name: str = "invalid") -> Counter:
        ck = name.encode() + b"\0" + subject_key(ns, key)
        return Counter.decode(self.read(lambda txn: txn.get(ck, db=self.db(txn, b"counters"))))

    def all_of(self, name: str) -> list[tuple[bytes, Counter]]:
        """Every subject's counter ``name``: (subject key, counter), for eximhook top."""
        prefix = name.encode() + b"\0"

        def body(txn: lmdb.Transaction) -> list[tuple[bytes, Counter]]:
            cur = txn.cursor(db=self.db(txn, b"counters"))
            out, found = [], cur.set_range(prefix)
            while found and bytes(cur.key()).startswith(prefix):
                out.append((bytes(cur.key())[len(prefix):], Counter.decode(cur.value())))
                found = cur.next()
            return out
        return self.read(body)

    def reset(self, ns: str, key: str, names: tuple[str, ...] | None = None) -> None:
        """Start the subject's counters (all of them, or ``names``) from zero."""
        from .policy import COUNTERS

        sk = subject_key(ns, key)

        def body(txn: lmdb.Transaction) -> None:
            for name in names or COUNTERS:
                txn.delete(name.encode() + b"\0" + sk, db=self.db(txn, b"counters"))
        self.update(body)

    def event(self, ns: str, key: str, now: float, policy: Policy, *, weight: int = 1, evidence: str | None = None,
              ip: str | None = None, keep_evidence: int = 10,
              keep_ips: int = 5) -> Callable[[lmdb.Transaction], Tally]:
        """The body that counts one event of ``weight`` for the subject in each of the
        policy's windows (windows no longer configured are dropped)."""
        ck = policy.name.encode() + b"\0" + subject_key(ns, key)

        from . import ratelimit  # here, not at the top: check-blocked never needs it

        def body(txn: lmdb.Transaction) -> Tally:
            c = Counter.decode(txn.get(ck, db=self.db(txn, b"counters")))
            windows, counts, over = [], [], -1
            day = int(now // 86400)
            for i, (limit, period) in enumerate(policy.windows):
                w = c.window(period)
                w.times, w.weights, count, is_over = ratelimit.record(w.times, w.weights, now, weight, limit, period)
                if is_over and count - weight <= limit:  # this event crossed the limit
                    w.crossed, w.crossed_limit = count, limit
                if w.peaks and w.peaks[-1][0] == day:
                    if count > w.peaks[-1][1]:
                        w.peaks[-1] = (day, count)
                else:
                    w.peaks = [*w.peaks, (day, count)][-PEAK_DAYS:]
                windows.append(w)
                counts.append(count)
                if is_over and over < 0:
                    over = i
            c.windows = windows
            c.total += weight
            if evidence:
                c.recent = [*c.recent, evidence][-keep_evidence:]
            if ip:
                c.ips = [*(x for x in c.ips if x != ip), ip][-keep_ips:]
            txn.put(ck, c.encode(), db=self.db(txn, b"counters"))
            return Tally(ns, key, policy, c, counts, over)
        return body

    # -- which subject sent a message (for bounces) ------------------------------------

    def remember_in(self, txn: lmdb.Transaction, sender: str, message_id: str, ns: str, key: str,
                    now: float, recipients: int) -> None:
        """Remember a message; one sent again with the same Message-ID and sender (a bot
        that reuses both) adds its recipients to the bounces the first may cause."""
        k, db = _HOUR.pack(int(now // 3600)) + ref_digest(sender, message_id), self.db(txn, b"refs")
        old = txn.get(k, db=db)
        left = recipients + (_LEFT.unpack_from(old)[0] if old is not None else 0)
        value = _LEFT.pack(min(left, 0xFFFFFFFF)) + ns.encode() + b"\0" + key.encode("utf-8", "surrogateescape")
        txn.put(k, value, db=db)

    def first_report_in(self, txn: lmdb.Transaction, sender: str, message_id: str, source: str, now: float,
                        remember: float) -> bool:
        """True the first time ``source`` (a reporting MTA's network) reports on the
        message, and remembers that it has: one forger reports each message once."""
        digest = ref_digest(sender, f"{message_id}\0{source}")
        if self._ref_in(txn, digest, now, remember) is not None:
            return False
        txn.put(_HOUR.pack(int(now // 3600)) + digest, b"", db=self.db(txn, b"refs"))
        return True

    def _ref_in(self, txn: lmdb.Transaction, digest: bytes, now: float,
                remember: float) -> tuple[bytes, bytes] | None:
        """The reference ``digest`` in the hour buckets of the last ``remember`` seconds,
        newest first: (its key, its value), or None."""
        db, hour = self.db(txn, b"refs"), int(now // 3600)
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
            txn.put(k, _LEFT.pack(left - 1) + rest, db=self.db(txn, b"refs"))
        ns, _, key = rest.partition(b"\0")
        return ns.decode(), key.decode("utf-8", "surrogateescape")

    def forget(self, now: float, remember: float, batch: int = 1000) -> int:
        """Drop message references older than ``remember``, ``batch`` at a time (each
        batch a short transaction: hooks wait for this lock); returns how many."""
        cutoff = _HOUR.pack(max(int((now - remember) // 3600) - 1, 0))

        def body(txn: lmdb.Transaction) -> int:
            cur = txn.cursor(db=self.db(txn, b"refs"))
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


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None
