"""What the engine needs from storage to count and to block, whichever store holds it.

Two backends promise the same things (``tests/integration/test_backends.py`` runs one suite over
both): the embedded LMDB store of one machine (``lmdb.LmdbBackend``, the default) and a
Redis shared by several relays (``redis.RedisBackend``). The promises:

- ``record`` counts one event in every window of the subject's counter, exactly
  ("more than LIMIT in any PERIOD", as ``ratelimit``), and answers with the ``Tally``
  and the ``Outcome``. The first event over a window of an enforced counter makes the
  block, its audit event and its notification (outbox entry) exactly once, however
  many processes, or relays, record at the same moment; the others find it made. A
  counter in shadow mode, or an exempt subject, makes the "would block" record
  instead, once per window and limit.
- ``block`` (by hand) does the same for a record the caller made; ``unblock`` lifts it
  with its audit event and starts the subject afresh (counters and would-block records
  cleared, as ``engine.actions.unblock``); ``reset`` starts the subject's counters from zero.
- Strings (keys, evidence) may be any text, surrogate-escaped bytes included: a key
  is never cut, merged with another or read back changed.

Each relay keeps in its own store what only it can use (see docs/redis.md, "Several relays,
one Redis"): the owner's notification, ``[expiry]`` offence numbers, the spool guard's
floor, daily peaks, the bounce references. The Redis backend adds what only a shared
store needs: exemptions, publishing changes, claiming notifications.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    from ..model.records import Event, Outcome
    from ..model.schedule import Schedule
    from ..model.spool import Guard
    from ..storage.counters import Counter, Tally

    Exempt = Mapping[str, Sequence[tuple[str, str]]]  # ns -> (pattern, reason), as [exempt]
    Owner = Callable[[str, str], str | None]  # (ns, key) -> the owner's address, if any


class Backend:
    """The interface; each method says what every backend promises."""

    name = "?"

    def record(self, event: Event, now: float, *, hold: float = 0.0, notify_shadow: bool = False,
               exempt: Exempt | None = None) -> tuple[Tally, Outcome]:
        """Count ``event`` and settle it: the first count over an enforced window blocks
        the subject (record, audit event "blocked", outbox entry "blocked" held until
        ``now + hold``: one step, exactly once); in shadow mode or for a subject
        ``exempt`` names, the would-block record (audit "would-block", and an outbox
        entry with ``notify_shadow`` unless exempt), once per window and limit.

        The answer's ``blocked`` is true for every count over an enforced limit. Counting
        and settling may be two steps (LMDB: two transactions; Redis: one script), so a
        count under the limit may answer blocked too when another process's block lands
        between them: callers rely on no more than that."""
        raise NotImplementedError

    def settle(self, tally: Tally, now: float, *, hold: float = 0.0, notify_shadow: bool = False,
               exempt: Exempt | None = None, spool: Guard | None = None, owner: Owner | None = None,
               expiry: Schedule | None = None, within: tuple[str, str] | None = None) -> Outcome:
        """The second step of a backend that counts and settles in two (LMDB: its
        counters, then its store; the daemon counts a turn's requests in one transaction
        first): settle ``tally`` as ``record`` would. ``spool``, ``owner``, ``expiry``:
        what a new block records of the spool, whose owner is mailed, when it lifts;
        ``within``: the network that holds the subject, whose block stands for its own.
        A backend that settles as it counts (Redis: one script) settles here only what
        no script counted: the combined score (``engine.scores``)."""
        raise NotImplementedError

    def is_blocked(self, ns: str, key: str) -> bool:
        raise NotImplementedError

    def get_block(self, ns: str, key: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def blocks(self, ns: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def block(self, record: dict[str, Any], now: float, *, notify: bool = True, hold: float = 0.0) -> bool:
        """Store ``record`` (``model.records.block_record``) as the subject's block unless it has
        one, with its audit event and (``notify``) its outbox entry; True if new."""
        raise NotImplementedError

    def unblock(self, ns: str, key: str, now: float, by: str, *, event: str = "unblocked") -> bool:
        """Lift the block, audited as ``event``, and clear the subject's counters and
        would-block records; False if there was no block (with no would-block record
        either, nothing changes: the counters are kept)."""
        raise NotImplementedError

    def counter(self, ns: str, key: str, name: str = "invalid") -> Counter:
        """The subject's counter ``name`` as stored (an empty one if none)."""
        raise NotImplementedError

    def counters_of(self, ns: str, key: str, names: tuple[str, ...]) -> dict[str, Counter]:
        """The subject's counters ``names`` as stored (the combined score reads them)."""
        return {name: self.counter(ns, key, name) for name in names}

    def reset(self, ns: str, key: str, names: tuple[str, ...] | None = None) -> None:
        """Start the subject's counters (all, or ``names``) from zero."""
        raise NotImplementedError

    def shadows(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def clear_shadows(self, ns: str, key: str) -> int:
        """Forget the subject's would-block records; how many there were."""
        raise NotImplementedError

    def history(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        """The audit events (of the subject, if named), oldest first, each with its ``seq``."""
        raise NotImplementedError

    def outbox(self) -> list[dict[str, Any]]:
        """The notifications not sent yet, oldest first, each with its ``seq``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Shared(Backend):
    """A backend several relays share (Redis): what the engine needs besides ``Backend``
    to block and lift on every relay at once (``engine.actions``). Each relay keeps a
    copy in its own store; the notification of a block goes out from the relay whose
    store holds it."""

    node = "?"  # this relay's name, in every record and audit event it writes here

    def block_queued(self, record: dict[str, Any], now: float, *, notify: bool = True, hold: float = 0.0) -> int:
        """``block``, answering -1 if the subject was blocked already, else the number
        of its notification in the shared outbox (0: none), for ``take``."""
        raise NotImplementedError

    def take(self, ns: str, key: str, queued: int) -> bool:
        """The notification ``queued`` is this relay's to send (its own store has it)."""
        raise NotImplementedError

    def lift(self, ns: str, key: str, now: float, by: str, *, event: str = "unblocked") -> int:
        """``unblock`` on every relay (published), answering what it did: 1 lifted a
        block, 2 cleared would-block records, 0 nothing."""
        raise NotImplementedError
