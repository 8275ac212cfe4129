"""The notification outbox: who is sending which mail, and whether that sender lives.

A block's transaction queues its notification in the store (``Store._block_in``).
Whoever sends it (``eximhook notify``, the maintenance timer, the daemon's outbox
thread) first *claims* it in a write transaction, runs sendmail, and only then drops it
(``finish``). So a notification is never lost, and two senders never both mail it while
both live. The one duplicate left is unavoidable: a sender killed after sendmail took the
mail and before the drop. Its claim is taken over as soon as the claimer is seen dead
(the next run), and the resend carries the same Message-ID (``notify.message_id``), so a
ticket system folds the two.
"""

from __future__ import annotations

import json
import os
from typing import Any

import lmdb

from .store import SEQ, Store

Subject = tuple[str, str]


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None if there is none.
    A pid with another start time than the one recorded is another process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def claim_alive(item: dict[str, Any]) -> bool:
    """Is the process that claimed this notification still running?"""
    start = item.get("claimer_start")
    return start is not None and process_start(item["claimer"]) == start


def stuck(item: dict[str, Any]) -> bool:
    """Claimed by a sender that died: shown by list/show/status until it is resent."""
    return item["state"] == "sending" and not claim_alive(item)


def claim_next(store: Store, now: float, stale_after: float, skip: set[int] | frozenset[int] = frozenset(),
               release: set[Subject] | frozenset[Subject] = frozenset()) -> dict[str, Any] | None:
    """Mark the oldest unclaimed notification not in ``skip`` as being sent by this process.

    A claim is taken over once its claimer has died, or after ``stale_after`` seconds,
    far longer than a send may take (the config check makes sure). A notification still
    held (``hold_until`` ahead: the daemon waits to name the tripping message) waits,
    unless its subject is in ``release``.
    """
    me = os.getpid()
    my_start = process_start(me)

    def body(txn: lmdb.Transaction) -> dict[str, Any] | None:
        for k, v in txn.cursor(db=store.db(txn, b"outbox")):
            item: dict[str, Any] = json.loads(bytes(v))
            if item["seq"] in skip or (item["state"] == "sending" and now - item["claimed"] < stale_after
                                       and claim_alive(item)):
                continue
            subject = (item["block"]["ns"], item["block"]["key"])
            if now < item.get("hold_until", 0) and subject not in release:
                continue
            item.update(state="sending", claimed=now, claimer=me, claimer_start=my_start)
            txn.put(k, json.dumps(item).encode(), db=store.db(txn, b"outbox"))
            return item
        return None
    return store.update(body)


def finish(store: Store, item: dict[str, Any], now: float, error: str | None) -> None:
    """Drop a sent notification (audit "notified"), or requeue a failed one."""
    k = SEQ.pack(item["seq"])
    block = item["block"]

    def body(txn: lmdb.Transaction) -> None:
        if error is None:
            txn.delete(k, db=store.db(txn, b"outbox"))
            event = {"event": "notified", "notification": item["seq"], "to": item.get("to")}
        else:
            item.update(state="queued", attempts=item["attempts"] + 1, error=error)
            txn.put(k, json.dumps(item).encode(), db=store.db(txn, b"outbox"))
            event = {"event": "notify-failed", "notification": item["seq"], "error": error}
        store.append_in(txn, b"audit", {"ts": now, "ns": block["ns"], "key": block["key"], "by": "notify", **event})
    store.update(body)
