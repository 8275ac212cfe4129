"""The notification outbox: who is sending which mail, and whether that sender lives.

A block's transaction queues its notification in the store (``Store._block_in``).
Whoever sends it (``eximhook notify``, the maintenance timer, the daemon's outbox
thread) first *claims* it in a write transaction, runs sendmail, and only then drops it
(``finish``). So a notification is never lost, and two senders never both mail it while
both live. The one duplicate left is unavoidable: a sender killed after sendmail took the
mail and before the drop. Its claim is taken over as soon as the claimer is seen dead
(the next run), and the resend carries the same Message-ID (``notify.message_id``), so a
ticket system folds the two.

A burst of blocks is one mail (``[notify] digest_after``, ``digest_every``): once that
many mails about one namespace's blocks (an address's and its network's count as one:
``subjects.family``) went out within ``digest_every``, its next blocks wait, and go out
together in one digest when the oldest of those mails is ``digest_every`` old, then at
most one digest per ``digest_every`` while blocks keep coming. So the abuse desk never
gets more than ``digest_after`` mails about one namespace in any ``digest_every``. A
digest is claimed as one: each of its entries is marked with the digest's number (its
first entry's), so a digest whose sender died is taken over whole and sent again with
the same entries, and so the same Message-ID; ``finish`` drops them all in one
transaction. Each entry is mailed exactly once, in a digest or alone, never both. What a
namespace has mailed lately is kept in the store (``meta``, ``digest NUL NS``): at most
``digest_after`` times, and when its next digest is due.
"""

from __future__ import annotations

import json
import os
from typing import Any

import lmdb

from ..model.subjects import family
from .store import SEQ, Store

Subject = tuple[str, str]
Burst = tuple[int, float]  # [notify] digest_after, digest_every
# the blocks one digest names at most (~300 bytes each in the mail); more wait for the next
DIGEST_MAX = 1000


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
    if start is None:
        return False
    seen = process_start(item["claimer"])
    if seen is not None:
        return bool(seen == start)
    # No /proc entry: either no such process, or /proc hides it. Debian 13's
    # exim4.service has ProtectProc=invisible, so a hook Exim runs (as the Exim user)
    # sees none of root's processes, an admin's `eximhook block` sending its mail
    # among them. The kernel still tells a live pid of another user (EPERM) from none;
    # its start time it keeps to itself, so a reused pid is waited for until
    # [notify] stale_after, like a hung sender: late rather than twice.
    try:
        os.kill(item["claimer"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process, alive
    return True


def stuck(item: dict[str, Any]) -> bool:
    """Claimed by a sender that died: shown by list/show/status until it is resent."""
    return item["state"] == "sending" and not claim_alive(item)


def rationed(item: dict[str, Any]) -> bool:
    """A mail to the abuse desk about a block a limit made: the kind a burst turns into
    a digest (a block by hand is the admin's own doing, and mailed as it comes)."""
    return item.get("kind", "blocked") == "blocked" and bool(item["block"].get("reason") == "limit")


def claim_next(store: Store, now: float, stale_after: float, skip: set[int] | frozenset[int] = frozenset(),
               release: set[Subject] | frozenset[Subject] = frozenset(),
               burst: Burst | None = None) -> dict[str, Any] | None:
    """Mark the oldest unclaimed notification not in ``skip`` as being sent by this process.

    A claim is taken over once its claimer has died, or after ``stale_after`` seconds,
    far longer than a send may take (the config check makes sure). A notification still
    held (``hold_until`` ahead: the daemon waits to name the tripping message) waits,
    unless its subject is in ``release``.

    With ``burst`` ([notify] digest_after, digest_every) the abuse desk's mails about
    blocks are rationed per namespace (see above): such a notification may wait, or be
    claimed with the others of its namespace as one digest, returned as
    ``{"kind": "digest", "ns": NS, "seq": N, "items": [...]}``.
    """
    me = os.getpid()
    my_start = process_start(me)

    def claim(item: dict[str, Any], **more: Any) -> dict[str, Any]:
        item.update(state="sending", claimed=now, claimer=me, claimer_start=my_start, **more)
        return item

    def body(txn: lmdb.Transaction) -> dict[str, Any] | None:
        db = store.db(txn, b"outbox")
        plans: dict[str, str] = {}
        digest: list[tuple[bytes, dict[str, Any]]] = []
        retake: int | None = None  # the number of a digest whose sender died

        def due(item: dict[str, Any]) -> bool:
            subject = (item["block"]["ns"], item["block"]["key"])
            return item["seq"] not in skip and (now >= item.get("hold_until", 0) or subject in release)

        for k, v in txn.cursor(db=db):
            item: dict[str, Any] = json.loads(bytes(v))
            if digest:  # gathering the rest of the digest
                if retake is not None:
                    if item.get("digest") == retake and item["state"] == "sending":
                        digest.append((bytes(k), item))
                elif (len(digest) < DIGEST_MAX and item["state"] == "queued" and rationed(item) and due(item)
                      and family(item["block"]["ns"]) == family(digest[0][1]["block"]["ns"])):
                    digest.append((bytes(k), item))
                continue
            if item["seq"] in skip or (item["state"] == "sending" and now - item["claimed"] < stale_after
                                       and claim_alive(item)):
                continue
            if item["state"] == "sending" and item.get("digest") is not None:  # sent again as it was
                retake = item["digest"]
                digest.append((bytes(k), item))
                continue
            if not due(item):
                continue
            if burst is not None and item["state"] == "queued" and rationed(item):
                ns = family(item["block"]["ns"])
                if ns not in plans:
                    plans[ns] = _plan(store, txn, ns, item, now, burst)
                if plans[ns] == "wait":
                    continue
                if plans[ns] == "digest":
                    digest.append((bytes(k), item))
                    continue
                _mailed(store, txn, ns, now, burst, digest=False)
            txn.put(k, json.dumps(claim(item)).encode(), db=db)
            return item
        if not digest:
            return None
        number = digest[0][1]["seq"] if retake is None else retake
        for k, item in digest:
            txn.put(k, json.dumps(claim(item, digest=number)).encode(), db=db)
        ns = family(digest[0][1]["block"]["ns"])
        if retake is None and burst is not None:
            _mailed(store, txn, ns, now, burst, digest=True)
        return {"kind": "digest", "ns": ns, "seq": number, "items": [item for _, item in digest],
                "block": {"ns": ns, "key": ""}}
    return store.update(body)


def _state_key(ns: str) -> bytes:
    return b"digest\0" + ns.encode()


def _state(store: Store, txn: lmdb.Transaction, ns: str) -> dict[str, Any]:
    data = txn.get(_state_key(ns), db=store.db(txn, b"meta"))
    return {"times": [], "next": None} if data is None else dict(json.loads(bytes(data)))


def _plan(store: Store, txn: lmdb.Transaction, ns: str, oldest: dict[str, Any], now: float, burst: Burst) -> str:
    """What the oldest due notification of namespace ``ns`` (and so all of them) does
    now: "single" (a mail of its own), "wait", or "digest" (with the others)."""
    after, every = burst
    state = _state(store, txn, ns)
    due = state["next"]
    if due is not None:
        if now < due:
            return "wait"
        if oldest["ts"] < due:  # queued during the burst: it goes in the burst's digest
            return "digest"
    recent = [t for t in state["times"] if now - t < every]
    if len(recent) < after:
        return "single"
    # a burst starts: the next mail when the oldest of these is digest_every old
    state.update(times=recent, next=min(recent) + every)
    txn.put(_state_key(ns), json.dumps(state).encode(), db=store.db(txn, b"meta"))
    return "wait"


def _mailed(store: Store, txn: lmdb.Transaction, ns: str, now: float, burst: Burst, *, digest: bool) -> None:
    """Note a mail about ``ns``'s blocks (its last ``digest_after`` times are kept); a
    digest puts the next one ``digest_every`` later, a single mail ends a burst."""
    after, every = burst
    state = _state(store, txn, ns)
    state.update(times=[*state["times"], now][-after:], next=now + every if digest else None)
    txn.put(_state_key(ns), json.dumps(state).encode(), db=store.db(txn, b"meta"))


def next_digest(store: Store) -> float | None:
    """When the earliest digest a burst holds back is due (the daemon wakes for it);
    None when no namespace is in a burst."""
    def body(txn: lmdb.Transaction) -> float | None:
        cur = txn.cursor(db=store.db(txn, b"meta"))
        found, due = cur.set_range(b"digest\0"), []
        while found and bytes(cur.key()).startswith(b"digest\0"):
            due.append(json.loads(bytes(cur.value()))["next"])
            found = cur.next()
        return min((d for d in due if d is not None), default=None)
    return store.read(body)


def finish(store: Store, item: dict[str, Any], now: float, error: str | None) -> None:
    """Drop a sent notification (audit "notified"), or requeue a failed one; a digest's
    entries all at once."""
    members = item["items"] if item.get("kind") == "digest" else [item]
    number = item["seq"] if item.get("kind") == "digest" else None

    def body(txn: lmdb.Transaction) -> None:
        for member in members:
            k = SEQ.pack(member["seq"])
            block = member["block"]
            if error is None:
                txn.delete(k, db=store.db(txn, b"outbox"))
                event = {"event": "notified", "notification": member["seq"], "to": item.get("to")}
                if number is not None:
                    event.update(digest=number, blocks=len(members))
            else:
                member.pop("digest", None)  # the next try gathers its digest afresh: nothing went out
                member.update(state="queued", attempts=member["attempts"] + 1, error=error)
                txn.put(k, json.dumps(member).encode(), db=store.db(txn, b"outbox"))
                event = {"event": "notify-failed", "notification": member["seq"], "error": error}
            store.append_in(txn, b"audit", {"ts": now, "ns": block["ns"], "key": block["key"], "by": "notify",
                                            **event})
    store.update(body)
