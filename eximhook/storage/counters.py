"""The counters that decide blocks: soft state, as Exim's own hints databases are.

The sliding windows, totals and recent evidence (``counter.Counter``) live in their own
LMDB environment, ``[store] path``/counters, never fsync'd: counting an event is a memory
write, not a disk flush (one synced commit per invalid recipient cost more than Exim's
whole native ratelimit; see docs/performance.md). What that gives up is only what a
power cut or an OS crash can take: the counts the kernel had not written back, and, as
LMDB without sync depends on an order of writes that ext4 does not promise, possibly
the environment itself. So the environment notes the boot it was written in and is
wiped the first time it is opened after a reboot: counting starts afresh, as after
``unblock``. A process that is killed loses nothing (the page cache survives it). The
blocks these counts trip are records, synced before anyone hears of them (``store``).

Writers take ``write.lock`` (flock) before LMDB's own writer lock, and the threads of
one process a lock of their own first (flock does not keep them apart: they share the
descriptor). Hooks and admin commands wait for them; the daemon's event loop only tries
them, so a writer in another process, or another thread, never stalls the loop, which
tries again on its next turn.

Bounded whatever clients send (issue 21): each counter by ``counter.max_bytes`` (its
evidence cut here, ``evidence.cut``); the quiet ones by ``sweep``; all of them by
``[store] counters_budget`` (``budget``). Never a block: those are records in the store.

Key layout (``S``: ``store.subject_key``):
  counters  COUNTER NUL S          -> packed ``Counter``: its windows, evidence
            NUL NAME               -> this environment's own marks (heartbeat, budget, swept)
  touched, refs                    -> see ``budget``, ``refs``
"""

from __future__ import annotations

import _thread
import fcntl
import os
import struct

from ..errors import EximhookError
from ..model.counter import PEAK_DAYS, Counter, Tally, touched_of
from ..model.evidence import cut, newest
from ..model.ratelimit import Window
from ..perms import Dir, replace_files
from .budget import COUNTERS, DROP, TOUCHED, Budgeted, touch_key
from .refs import REFS, ref_digest
from .store import subject_key

TYPE_CHECKING = False  # typing costs ~10 ms to import on the hooks' path
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, TypeVar

    import lmdb

    from ..model.records import Event

    T = TypeVar("T")

__all__ = ["PEAK_DAYS", "Counter", "Counters", "Tally", "Window", "ref_digest"]

_DBS = (COUNTERS, REFS, TOUCHED)
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
BOOT_FILE = "boot_id"  # the boot these counts were written in, and their format
_FORMAT = "6"  # windows that keep their sums; a stamp of another format wipes them, as a reboot does
LOCK_FILE = "write.lock"
_BATCH = 256  # counters per sweeping transaction: hooks wait for the lock meanwhile
_YIELD = 0.05  # seconds the upkeep waits at most, between two batches, for the loop to write
_SWEPT, _HEARTBEAT = b"\0swept", b"\0heartbeat"


def _boot() -> str:
    return (_read(_BOOT_ID) or "") + " " + _FORMAT  # not Linux: no boot to tell apart, only the format


class Counters(Budgeted):
    """The unsynced environment of counters, beside the store, within ``budget`` bytes."""

    what = "counters"

    def __init__(self, store_path: str, budget: int = 1 << 32, owner: str | None = None,
                 readonly: bool = False) -> None:
        self._lock_fd = -1
        self._writing = _thread.allocate_lock()  # this process's writer, between its threads
        # the daemon's loop only tries the locks: when it found them taken (``wanted``),
        # the upkeep lets it in between two of its batches (``_let_loop_in``)
        self._wanted, self._written = False, 0
        try:
            super().__init__(os.path.join(store_path, "counters"), _DBS, map_size=budget, owner=owner,
                             sync=False, config_key="[store] path", readonly=readonly, budget=budget)
        except BaseException:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
            raise

    def prepare(self, directory: Dir) -> None:
        """Wipe counts written before the last reboot (see the module's docstring)."""
        self._lock_fd = directory.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o640, self.owner)
        boot = _boot()
        if _stamp(directory) == boot:
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            if _stamp(directory) != boot:  # the first opener since the boot; the others wait here
                for name in ("data.mdb", "lock.mdb"):
                    directory.unlink(name)
                replace_files([(os.path.join(self.path, BOOT_FILE), boot.encode())], self.owner)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        super().close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- writing -------------------------------------------------------------------

    def _lock(self) -> None:
        """This process's writer lock, then ``write.lock`` (waiting for both)."""
        self._writing.acquire()
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except BaseException:
            self._writing.release()
            raise

    def _unlock(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._writing.release()

    def _room_first(self, most: int) -> None:
        """Past the high-water mark (``marks``), drop up to ``most`` of the least recently
        touched before writing: the write, and the drop after it, find pages free (on a
        map full to its last page, even deleting is refused). A few at a time, so no
        writer waits long; the daemon's upkeep, or the next writer, goes on."""
        high, low = self.marks()
        if self._making_room or not self.over(high):
            return
        try:
            self._drop(low, most)
        except EximhookError:  # no room made: the write tries all the same (make_room)
            pass
        self.pressed = self.over(high)

    def update(self, body: Callable[[lmdb.Transaction], T]) -> T:
        """One write transaction, waiting for the locks (a hook: no upkeep runs beside
        it, so it makes room itself)."""
        self._lock()
        try:
            self._room_first(8 * DROP)
            return super().update(body)
        finally:
            self._unlock()

    def try_update_many(self, bodies: Sequence[Callable[[lmdb.Transaction], Any]]) -> list[Any] | None:
        """``update_many`` if no other process or thread is writing right now, else None
        at once. Past the high-water mark afterwards, ``pressed`` says so: the daemon's
        upkeep makes room, off the event loop (which drops a few itself only when the
        upkeep falls behind)."""
        if not self._writing.acquire(False):
            self._wanted = True
            return None
        try:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._wanted = True
                return None
            try:
                self._room_first(DROP)
                out = super().update_many(bodies)
                self.pressed = self.over(self.marks()[0])
                self._wanted, self._written = False, self._written + 1
                return out
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._writing.release()

    def _let_loop_in(self) -> None:
        """Between two batches of the upkeep (another thread of the daemon): if the
        loop found the locks taken meanwhile, wait until it has written, at most
        ``_YIELD`` seconds. Else the upkeep, taking the locks again at once, could keep
        the loop, which only tries them, out until its requests' deadlines (a million
        counters trimmed to the budget left a request unanswered for a second)."""
        import time

        seen, deadline = self._written, time.monotonic() + _YIELD
        while self._wanted and self._written == seen and time.monotonic() < deadline:
            time.sleep(0.0005)

    def heartbeat(self, now: float) -> None:
        """A real write, to prove the counters take writes (a NUL first: no counter's key)."""
        self.update(lambda txn: txn.put(_HEARTBEAT, struct.pack(">d", now), db=self.db(txn, COUNTERS)))

    # -- counting ------------------------------------------------------------------

    def get(self, ns: str, key: str, name: str = "invalid") -> Counter:
        return self.read(lambda txn: self.get_in(txn, ns, key, (name,))[name])

    def get_in(self, txn: lmdb.Transaction, ns: str, key: str, names: tuple[str, ...]) -> dict[str, Counter]:
        """The subject's counters ``names`` in transaction ``txn`` (an empty one if none)."""
        sk, db = subject_key(ns, key), self.db(txn, COUNTERS)
        return {name: Counter.decode(txn.get(name.encode() + b"\0" + sk, db=db)) for name in names}

    def all_of(self, name: str) -> list[tuple[bytes, Counter]]:
        """Every subject's counter ``name``: (subject key, counter), for eximhook top."""
        prefix = name.encode() + b"\0"

        def body(txn: lmdb.Transaction) -> list[tuple[bytes, Counter]]:
            cur = txn.cursor(db=self.db(txn, COUNTERS))
            out, found = [], cur.set_range(prefix)
            while found and bytes(cur.key()).startswith(prefix):
                out.append((bytes(cur.key())[len(prefix):], Counter.decode(cur.value())))
                found = cur.next()
            return out
        return self.read(body)

    def _drop_in(self, txn: lmdb.Transaction, ck: bytes, touched: float) -> None:
        """Delete the counter ``ck`` and its place in ``touched`` (when it last counted)."""
        txn.delete(touch_key(touched, ck), db=self.db(txn, TOUCHED))
        txn.delete(ck, db=self.db(txn, COUNTERS))

    def reset(self, ns: str, key: str, names: tuple[str, ...] | None = None) -> None:
        """Start the subject's counters (all of them, or ``names``) from zero."""
        from ..model import policy

        sk = subject_key(ns, key)

        def body(txn: lmdb.Transaction) -> None:
            for name in names or policy.COUNTERS:
                ck = name.encode() + b"\0" + sk
                old = txn.get(ck, db=self.db(txn, COUNTERS))
                if old is not None:
                    self._drop_in(txn, ck, touched_of(old))
        self.update(body)

    def event(self, e: Event, now: float) -> Callable[[lmdb.Transaction], Tally]:
        """The body that counts event ``e`` for its subject in each of its policy's
        windows, as the counter's kind adds up (``ratelimit.add``: the weight, or the
        values its tags name); windows no longer configured are dropped. The evidence and
        the address are kept cut (``evidence.cut``), the last ``keep_evidence`` and
        ``keep_ips`` of them, within ``evidence.EVIDENCE_KEPT`` bytes each (``newest``)."""
        ns, key, policy, weight, tags = e.ns, e.key, e.policy, e.weight, e.tags
        keep_evidence, keep_ips = e.keep_evidence, e.keep_ips
        ck = policy.name.encode() + b"\0" + subject_key(ns, key)
        evidence, ip = e.evidence and cut(e.evidence), e.ip and cut(e.ip)

        from ..model import ratelimit  # here, not at the top: check-blocked never needs it

        def body(txn: lmdb.Transaction) -> Tally:
            db, touched = self.db(txn, COUNTERS), self.db(txn, TOUCHED)
            c = Counter.decode(txn.get(ck, db=db))
            windows, counts, over = [], [], -1
            day = int(now // 86400)
            for i, (limit, period) in enumerate(policy.windows):
                w = c.window(period)
                count, is_over, crossed = ratelimit.add(w, policy.adds, now, weight, tags, limit, policy.minimum)
                if crossed:  # this event took the window over its limit
                    w.crossed, w.crossed_limit = count, limit
                # a ratio's peak only once judged: 100 % of a first refusal is no figure to tune from
                peak = count if policy.adds != "ratio" or w.judged(now, policy.minimum) else 0
                if w.peaks and w.peaks[-1][0] == day:
                    if peak > w.peaks[-1][1]:
                        w.peaks[-1] = (day, peak)
                else:
                    w.peaks = [*w.peaks, (day, peak)][-PEAK_DAYS:]
                windows.append(w)
                counts.append(count)
                if is_over and over < 0:
                    over = i
            c.windows = windows
            c.total += weight
            if evidence:  # a distinct counter's evidence names values: each once, the newest last
                kept = c.recent if policy.adds != "distinct" else [x for x in c.recent if x != evidence]
                c.recent = newest([*kept, evidence], keep_evidence)
            if ip:
                c.ips = newest([*(x for x in c.ips if x != ip), ip], keep_ips)
            if c.touched:
                txn.delete(touch_key(c.touched, ck), db=touched)
            c.touched = now
            txn.put(touch_key(now, ck), b"", db=touched)
            txn.put(ck, c.encode(), db=db)
            return Tally(ns, key, policy, c, counts, over)
        return body

    # -- bounds: the sweep, and room made with the locks (see ``budget``) --------------

    def trim(self) -> int:
        """For the upkeep: past the high-water mark, drop the least recently touched
        down to the low one (the locks taken for every few transactions)."""
        high, low = self.marks()
        dropped = 0
        while self.over(high if not dropped else low):
            self._lock()
            try:
                n = self._drop(low, 8 * DROP)
            finally:
                self._unlock()
            if n == 0:
                break
            dropped += n
            self._let_loop_in()
        self.pressed = False
        return dropped

    def sweep_due(self, now: float, every: float) -> bool:
        """True, once per ``every`` seconds across processes, for the one that sweeps."""
        def body(txn: lmdb.Transaction) -> bool:
            db = self.db(txn, COUNTERS)
            last = txn.get(_SWEPT, db=db)
            if last is not None and now - struct.unpack(">d", last)[0] < every:
                return False
            txn.put(_SWEPT, struct.pack(">d", now), db=db)
            return True
        return self.update(body)

    def sweep(self, now: float, keep: set[bytes]) -> tuple[int, int]:
        """Forget the counters whose windows hold no event: drop those whose daily
        peaks are past ``top --since`` (PEAK_DAYS), keep only the total and the peaks of
        the others (``Counter.quiet``). Subjects in ``keep`` (blocked, or with a
        would-block record: ``show`` tells their story) keep theirs whole. A batch per
        transaction; returns (dropped, made quiet)."""
        first_day = int(now // 86400) - (PEAK_DAYS - 1)
        start: bytes | None = b"\x01"  # after this environment's own marks (NUL NAME)
        dropped = quieted = 0
        while start is not None:
            start, n, q = self.update(self._sweep_body(start, now, first_day, keep))
            dropped, quieted = dropped + n, quieted + q
            self._let_loop_in()
        return dropped, quieted

    def _sweep_body(self, start: bytes, now: float, first_day: int,
                    keep: set[bytes]) -> Callable[[lmdb.Transaction], tuple[bytes | None, int, int]]:
        def body(txn: lmdb.Transaction) -> tuple[bytes | None, int, int]:
            db = self.db(txn, COUNTERS)
            cur, seen, last = txn.cursor(db=db), 0, start
            found, gone, quiet = cur.set_range(start), [], []
            while found and seen < _BATCH:
                last, seen = bytes(cur.key()), seen + 1
                c = Counter.decode(cur.value())
                if not c.active(now) and last.partition(b"\0")[2] not in keep:
                    if not c.peaked_since(first_day):
                        gone.append((last, c.touched))
                    elif not c.is_quiet():
                        quiet.append((last, c.quiet()))
                found = cur.next()
            for ck, when in gone:
                self._drop_in(txn, ck, when)
            for ck, c in quiet:
                txn.put(ck, c.encode(), db=db)
            return (last + b"\0" if found else None), len(gone), len(quiet)
        return body


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _stamp(directory: Dir) -> str | None:
    """The boot the counters were written in; None: none, or not a file to trust (the
    counters are wiped, and the stamp renamed over)."""
    from ..errors import UnsafePath

    try:
        return directory.read(BOOT_FILE).decode("utf-8", "replace").strip()
    except (OSError, UnsafePath):
        return None
