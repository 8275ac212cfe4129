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

Key layout: ``COUNTER NUL S`` -> packed ``Counter`` (``S``: ``store.subject_key``).
Counters are packed with ``struct``, not JSON: ``import json`` alone costs ~10 ms on the
hooks' path.
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

    T = TypeVar("T")

_DBS = (b"counters",)
_HEAD = struct.Struct("<QI")  # total events, number of timestamps
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
BOOT_FILE = "boot_id"  # the boot these counts were written in
LOCK_FILE = "write.lock"


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


def _boot() -> str:
    return _read(_BOOT_ID) or ""  # not Linux: no boot to tell apart


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

    def reset(self, ns: str, key: str, names: tuple[str, ...] = ("invalid",)) -> None:
        sk = subject_key(ns, key)

        def body(txn: lmdb.Transaction) -> None:
            for name in names:
                txn.delete(name.encode() + b"\0" + sk, db=self.db(txn, b"counters"))
        self.update(body)

    def event(self, ns: str, key: str, now: float, *, limit: int, period: float, evidence: str | None = None,
              ip: str | None = None, keep_evidence: int = 10, keep_ips: int = 5,
              name: str = "invalid") -> Callable[[lmdb.Transaction], tuple[Counter, int, bool]]:
        """The body that counts one event: (the counter after it, events in the window,
        whether this one is over the limit)."""
        ck = name.encode() + b"\0" + subject_key(ns, key)

        from . import ratelimit  # here, not at the top: check-blocked never needs it

        def body(txn: lmdb.Transaction) -> tuple[Counter, int, bool]:
            c = Counter.decode(txn.get(ck, db=self.db(txn, b"counters")))
            c.times, count, over = ratelimit.record(c.times, now, limit, period)
            c.total += 1
            if evidence:
                c.recent = [*c.recent, evidence][-keep_evidence:]
            if ip:
                c.ips = [*(x for x in c.ips if x != ip), ip][-keep_ips:]
            txn.put(ck, c.encode(), db=self.db(txn, b"counters"))
            return c, count, over
        return body


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None
