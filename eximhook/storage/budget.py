"""The counters' budget, ``[store] counters_budget``: the most their environment takes,
whatever clients send (issue 21). ``counters.Counters`` is a ``Budgeted`` environment.

Its LMDB map is the budget (``storage.env``: never grown). Past a high-water mark below it
(``marks``), or when a write finds the map full (``make_room``), the least recently
touched soft state goes first: counters by when they last counted (the ``touched``
index, kept by ``Counters.event``), message references by their hour (``refs``). Never
a block: blocks are records in the store, not here. Dropping room is an *episode*,
noted in the environment (``episode``), so the log says so once (``upkeep``) and
``eximhook status`` warns while it lasts.

Key layout (``S``: ``store.subject_key``):
  touched   TIME(8) COUNTER NUL S  -> empty: the counters by when they last counted
  counters  NUL "budget"           -> the episode: since, last, how many dropped, logged
"""

from __future__ import annotations

import struct

from ..errors import StoreUnavailable
from .env import PAGE
from .refs import REFS, MessageRefs, ref_time

TYPE_CHECKING = False  # typing costs ~10 ms to import on the hooks' path
if TYPE_CHECKING:
    from collections.abc import Callable

    import lmdb

COUNTERS, TOUCHED = b"counters", b"touched"  # the databases
_TOUCH = struct.Struct(">d")  # a positive time, big-endian: sorts as bytes in time order
# Room kept free below the budget (see ``marks``): LMDB copies every page a transaction
# changes (deleting needs room too), and reuses a freed page only two transactions on
_HEADROOM, _SLACK = 64 * PAGE, 32 * PAGE
DROP = 32  # entries per transaction when making room: the pages one copies fit the headroom
_EPISODE = struct.Struct("<ddQB")  # making room since, last, entries dropped, logged
_BUDGET = b"\0budget"


def touch_key(when: float, ck: bytes) -> bytes:
    """The key in ``touched`` of the counter ``ck`` that last counted at ``when``."""
    return _TOUCH.pack(when) + ck


class Budgeted(MessageRefs):
    """An environment within its ``budget`` (the counters'): see the module's docstring."""

    _making_room = False  # dropping now: a full map then fails, rather than dropping within dropping
    pressed = False  # past the high-water mark after the last write that made no room (the daemon's loop)

    def used_in(self, txn: lmdb.Transaction) -> int:
        """Bytes in use: the pages of the databases (free pages, which LMDB reuses, not)."""
        pages = 0
        for name in self.dbs:
            st = txn.stat(self.db(txn, name))
            pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return int(pages + 4) * PAGE  # + the two meta pages, the main database's and the free list's

    def marks(self) -> tuple[int, int]:
        """(high, low): past the high-water mark the least recently touched go, down to
        the low one. High: 7/8 of the budget, at least 256 KiB below it; low: another
        1/8 (at least 128 KiB) below: room for a burst before the daemon's upkeep makes
        more, and not a drop after every count."""
        budget = self.budget or 0
        high = budget - max(budget // 8, _HEADROOM)
        return high, high - max(budget // 8, _SLACK)

    def over(self, mark: int) -> bool:
        """Are more than ``mark`` bytes in use? Cheap while the file is smaller."""
        if self.budget is None or (self.env.info()["last_pgno"] + 1) * PAGE <= mark:
            return False
        return self.read(self.used_in) > mark

    def make_room(self) -> bool:
        """The map is full at its budget (``storage.env``): drop a few of the least recently
        touched (the upkeep does the rest), unless this is the dropping itself (which
        then fails: counting fails open)."""
        return not self._making_room and self._drop(self.marks()[1], 4 * DROP) > 0

    def _drop(self, until: int, most: int | None = None) -> int:
        """Drop the least recently touched until at most ``until`` bytes are in use (or
        ``most`` are gone), ``DROP`` per transaction; the caller holds the locks.
        Noted in the episode (``episode``); returns how many went.

        Deleting copies pages too: on a map that is full to the last page, a transaction
        of ``DROP`` deletions may not fit. Then fewer: one deletion needs only the pages
        the last commits freed, and each one that goes frees more for the next."""
        import time

        dropped, step = 0, DROP
        self._making_room = True
        try:
            while most is None or dropped < most:
                try:
                    n, used = super().update(self._drop_body(until, min(step, (most or step) - dropped),
                                                             time.time()))
                except StoreUnavailable:
                    if step == 1:
                        raise
                    step //= 2
                    continue
                dropped += n
                if n == 0 or used <= until:
                    break
        finally:
            self._making_room = False
        self.pressed = False
        return dropped

    def _drop_body(self, until: float, most: int, now: float) -> Callable[[lmdb.Transaction], tuple[int, int]]:
        def body(txn: lmdb.Transaction) -> tuple[int, int]:
            db = self.db(txn, COUNTERS)
            touched, refs = txn.cursor(db=self.db(txn, TOUCHED)), txn.cursor(db=self.db(txn, REFS))
            n, used = 0, self.used_in(txn)
            while n < most and used > until:
                has_counter, has_ref = touched.first(), refs.first()
                if not (has_counter or has_ref):
                    break
                if has_ref and (not has_counter or ref_time(refs.key()) < _TOUCH.unpack_from(touched.key())[0]):
                    refs.delete()
                else:
                    txn.delete(bytes(touched.key())[_TOUCH.size:], db=db)
                    touched.delete()
                n += 1
                if n % 16 == 0:
                    used = self.used_in(txn)
            if n:
                old = txn.get(_BUDGET, db=db)
                since, _, total, logged = _EPISODE.unpack(old) if old is not None else (now, now, 0, 0)
                txn.put(_BUDGET, _EPISODE.pack(since, now, total + n, logged), db=db)
            return n, self.used_in(txn)
        return body

    def episode(self) -> dict[str, float] | None:
        """Since when room is being made, when last, how many dropped, whether logged."""
        data = self.read(lambda txn: txn.get(_BUDGET, db=self.db(txn, COUNTERS)))
        if data is None:
            return None
        since, last, dropped, logged = _EPISODE.unpack(data)
        return {"since": since, "last": last, "dropped": dropped, "logged": logged}

    def note_episode(self, now: float, quiet: float) -> tuple[str, dict[str, float]] | None:
        """For one log line per episode: ``("started", episode)`` the first time an
        episode is looked at, ``("ended", episode)`` once nothing was dropped for
        ``quiet`` seconds and the counters are under the high-water mark (then forgotten)."""
        below = not self.over(self.marks()[0])

        def body(txn: lmdb.Transaction) -> tuple[str, dict[str, float]] | None:
            db = self.db(txn, COUNTERS)
            data = txn.get(_BUDGET, db=db)
            if data is None:
                return None
            since, last, dropped, logged = _EPISODE.unpack(data)
            seen = {"since": since, "last": last, "dropped": dropped}
            if not logged:
                txn.put(_BUDGET, _EPISODE.pack(since, last, dropped, 1), db=db)
                return "started", seen
            if below and now - last >= quiet:
                txn.delete(_BUDGET, db=db)
                return "ended", seen
            return None
        return self.update(body)
