"""The embedded backend: the LMDB store and counters of one machine, as the hooks and
the daemon use them today (``store.Store``, ``counters.Counters``), behind ``Backend``.

Counting is one write transaction of the unsynced counters, the block one of the
synced store (``settle``): two transactions, each serialised by LMDB across processes,
so the block is still made exactly once (``put`` without overwrite).
"""

from __future__ import annotations

from ..model.records import Event, Outcome, block_record
from .base import Backend

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    import lmdb

    from ..model.schedule import Schedule
    from ..model.spool import Guard
    from ..storage.counters import Counter, Counters, Tally
    from ..storage.store import Store
    from .base import Exempt, Owner


def exemptions_in(store: Store, configured: Exempt, ns: str) -> Callable[[lmdb.Transaction], list[tuple[str, str]]]:
    """The body that lists what may exempt a subject of ``ns``, (pattern, reason) in
    order: ``[exempt]`` in the config, then the admin's ``eximhook exempt add`` in the
    store; for a network, then those of the addresses in it (``exempt.spaces``)."""
    from ..model.patterns import spaces

    return lambda txn: [e for space in spaces(ns) for e in (*configured.get(space, ()),
                                                             *store.exemptions_in(txn, space))]


def exempt_in(store: Store, configured: Exempt, ns: str, key: str) -> Callable[[lmdb.Transaction], str | None]:
    """The body that says why the subject is exempt (``PATTERN: REASON``), or None."""
    from ..model.patterns import first

    entries = exemptions_in(store, configured, ns)

    def body(txn: lmdb.Transaction) -> str | None:
        found = first(ns, key, entries(txn))
        return None if found is None else f"{found[0]}: {found[1]}"
    return body


def settle(store: Store, tally: Tally, now: float, *, hold: float = 0.0, notify_shadow: bool = False,
           exempt: Exempt | None = None, spool: Guard | None = None,
           owner: Owner | None = None, expiry: Schedule | None = None,
           within: tuple[str, str] | None = None) -> Outcome:
    """Answer for a counted event: over a window, and not blocked yet, makes the block
    (in shadow mode, or for an exempt subject: the record that it would have; ``exempt``
    holds the config's exemptions, the store the admin's). ``within``: the wider network
    that holds the subject (``Config.wider``); while it is blocked, its block stands for
    the subject's, and none is made (no record, no mail: a /48's 65,536 /64s are one block).

    However many processes settle an over-limit count for one subject at once, the
    store creates one block (``put`` without overwrite, in one write transaction) and
    one notification; the others find it there. ``hold`` is the daemon's: see ``notify``.
    ``owner`` (``[owner] notify``) finds the address of the owner's notification, which
    the block queues too; a would-block never mails the owner.
    ``expiry`` is ``[expiry]`` when on: see ``expiry``.
    """
    ns, key, total = tally.ns, tally.key, tally.counter.total
    if tally.over < 0:
        return Outcome(store.is_blocked(ns, key), False, max(tally.counts, default=0), total)
    if tally.policy.enforced and store.is_blocked(ns, key):
        # the common case once blocked: a read, no write lock, no exemption lookup (as
        # the daemon, which settles no count of a subject blocked already)
        return Outcome(True, False, tally.count, total)
    if within is not None and store.is_blocked(*within):
        return Outcome(True, False, tally.count, total)
    limit, period = tally.window
    record = block_record(ns, key, now, by="eximhook", reason="limit", counter_name=tally.name, limit=limit,
                          period=period, count=tally.count, counter=tally.counter)
    why_not = store.read(exempt_in(store, exempt or {}, ns, key))
    if why_not is not None or not tally.policy.enforced:
        # an exempt subject's would-block is for `show`, not for the abuse desk's mailbox
        record["exempt"] = why_not
        shadowed = not store.read(store.shadowed_in(tally.name, ns, key, tally.window)) and store.shadow(
            record, now, notify_shadow and why_not is None)
        return Outcome(store.is_blocked(ns, key), False, tally.count, total, shadowed=shadowed, exempt=why_not)
    if spool is not None:
        record.update(spool.at_block())
        store.set_spool_floor(spool.floor)  # the mirror rewritten for this block holds the floor too
    to = None if owner is None else owner(ns, key) or ""
    return Outcome(True, store.block(record, now, True, hold, to, expiry), tally.count, total)


class LmdbBackend(Backend):
    name = "lmdb"

    def __init__(self, store: Store, counters: Counters) -> None:
        self.store, self.counters = store, counters

    @classmethod
    def open(cls, path: str, map_size: int = 1 << 32, owner: str | None = None) -> LmdbBackend:
        from ..storage.counters import Counters
        from ..storage.store import Store

        store = Store(path, map_size, owner)
        try:
            return cls(store, Counters(path, map_size, owner))
        except BaseException:
            store.close()
            raise

    def record(self, event: Event, now: float, *, hold: float = 0.0, notify_shadow: bool = False,
               exempt: Exempt | None = None) -> tuple[Tally, Outcome]:
        tally = self.counters.update(self.counters.event(event, now))
        return tally, settle(self.store, tally, now, hold=hold, notify_shadow=notify_shadow, exempt=exempt)

    def settle(self, tally: Tally, now: float, *, hold: float = 0.0, notify_shadow: bool = False,
               exempt: Exempt | None = None, spool: Guard | None = None, owner: Owner | None = None,
               expiry: Schedule | None = None, within: tuple[str, str] | None = None) -> Outcome:
        return settle(self.store, tally, now, hold=hold, notify_shadow=notify_shadow, exempt=exempt, spool=spool,
                      owner=owner, expiry=expiry, within=within)

    def is_blocked(self, ns: str, key: str) -> bool:
        return self.store.is_blocked(ns, key)

    def get_block(self, ns: str, key: str) -> dict[str, Any] | None:
        return self.store.get_block(ns, key)

    def blocks(self, ns: str | None = None) -> list[dict[str, Any]]:
        return self.store.blocks(ns)

    def block(self, record: dict[str, Any], now: float, *, notify: bool = True, hold: float = 0.0) -> bool:
        return self.store.block(record, now, notify, hold)

    def unblock(self, ns: str, key: str, now: float, by: str, *, event: str = "unblocked") -> bool:
        if not self.store.is_blocked(ns, key) and not self.store.shadows(ns, key):
            return False
        self.counters.reset(ns, key)
        self.store.clear_shadows(ns, key)
        return self.store.unblock(ns, key, now, by, event=event)

    def counter(self, ns: str, key: str, name: str = "invalid") -> Counter:
        return self.counters.get(ns, key, name)

    def reset(self, ns: str, key: str, names: tuple[str, ...] | None = None) -> None:
        self.counters.reset(ns, key, names)

    def shadows(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        return self.store.shadows(ns, key)

    def clear_shadows(self, ns: str, key: str) -> int:
        return self.store.clear_shadows(ns, key)

    def history(self, ns: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        return self.store.history(ns, key)

    def outbox(self) -> list[dict[str, Any]]:
        return self.store.outbox()

    def close(self) -> None:
        self.counters.close()
        self.store.close()


class Journaled(LmdbBackend):
    """A relay's own store and counters while the Redis it shares does not answer
    (``serve.shared``): it counts and blocks as ``LmdbBackend`` and keeps each count in
    the store's journal (``storage.relay_copy``), to send it to Redis, once, when Redis
    answers again."""

    name = "lmdb+journal"

    def record(self, event: Event, now: float, *, hold: float = 0.0, notify_shadow: bool = False,
               exempt: Exempt | None = None) -> tuple[Tally, Outcome]:
        from ..storage import relay_copy

        counted = super().record(event, now, hold=hold, notify_shadow=notify_shadow, exempt=exempt)
        relay_copy.journal(self.store, {"ts": now, "ns": event.ns, "key": event.key, "counter": event.policy.name,
                                        "weight": event.weight, "evidence": event.evidence, "ip": event.ip,
                                        "hold": hold, "once": event.once, "tags": list(event.tags)})
        return counted
