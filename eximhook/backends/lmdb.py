"""The embedded backend: the LMDB store and counters of one machine, as the hooks and
the daemon use them today (``store.Store``, ``counters.Counters``), behind ``Backend``.

Counting is one write transaction of the unsynced counters, the block one of the
synced store (``core.settle``): two transactions, each serialised by LMDB across
processes, so the block is still made exactly once (``put`` without overwrite).
"""

from __future__ import annotations

from .base import Backend, Event

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..storage.counters import Counter, Counters, Tally
    from ..storage.store import Outcome, Store
    from .base import Exempt


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
        from ..engine import core

        tally = self.counters.update(self.counters.event(
            event.ns, event.key, now, event.policy, weight=event.weight, evidence=event.evidence, ip=event.ip,
            keep_evidence=event.keep_evidence, keep_ips=event.keep_ips))
        return tally, core.settle(self.store, tally, now, hold=hold, notify_shadow=notify_shadow, exempt=exempt)

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
