"""What the admin (and the outbox) do to a subject: block it by hand, lift its block
(``unblock``: counters reset, mirror rewritten, with Redis on every relay), and its mail
in Exim's queue: freeze what is still waiting when it is blocked, release it (not spam)
or purge it (spam, with the frozen bounces it caused). Nothing here exits or prints.
"""

from __future__ import annotations

from ..errors import FileError, NotBlocked
from ..model.records import block_record
from .events import message_ref

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    import lmdb

    from ..backends.base import Owner, Shared
    from ..exim.queue import Exim, Message
    from ..model.schedule import Schedule
    from ..model.spool import Guard
    from ..storage.counters import Counters
    from ..storage.store import Store


def freeze_queued(store: Store, exim: Exim, subjects: Sequence[tuple[str, str]], now: float) -> None:
    """Freeze the subjects' mail still waiting in the queue, so the spam accepted just
    before their blocks does not leave (audited per subject); one look at the queue."""
    found = exim.messages_of(subjects, frozen=False)
    ids = [m.id for messages in found.values() for m in messages]
    if ids:
        exim.act("-Mf", list(dict.fromkeys(ids)))
    for (ns, key), messages in found.items():
        if messages:
            store.audit({"ts": now, "event": "froze-queued", "ns": ns, "key": key, "by": "eximhook",
                         "ids": [m.id for m in messages]})


def bounces_of(exim: Exim, counters: Counters, messages: list[Message], ns: str, key: str, now: float,
               remember: float) -> list[str]:
    """The frozen bounces of the subject's spam: spam it sent before the block went out,
    bounced to a sender that takes no mail, and the bounce stayed frozen in the queue.
    A bounce names the message it reports last in References; it is the subject's if
    that is one of its frozen ``messages``, or a message the volume count remembered as
    the subject's (within ``remember``)."""
    ours = {mid for m in messages if (mid := message_ref(m.header("message-id")))}
    reported = [(b, message_ref(b.header("references"))) for b in exim.frozen_bounces() if b.recipients]

    def look(txn: lmdb.Transaction) -> list[str]:
        return [b.id for b, mid in reported if mid and (mid in ours or counters.recall_in(
            txn, b.recipients[0], mid, now, remember, take=False, spent=True) == (ns, key))]
    return counters.read(look) if reported else []


def release(store: Store, counters: Counters, exim: Exim, mirror_dir: str, ns: str, key: str, now: float, *,
            by: str, dry_run: bool = False, shared: Shared | None = None) -> tuple[list[str], bool]:
    """Not spam after all: lift the block, thaw the subject's frozen mail and start its
    delivery. Returns the ids and whether a block was lifted. Works without a block
    too (mail left frozen by an earlier plain ``unblock``; with ``shared``, on each
    relay whose queue holds some: the block is lifted on all of them at once)."""
    ids = exim.message_ids(ns, key, frozen=True)
    blocked = store.is_blocked(ns, key)
    if dry_run:
        return ids, blocked
    if blocked:
        unblock(store, counters, mirror_dir, ns, key, now, by=by, shared=shared)
    if ids:
        exim.act("-Mt", ids)
        exim.deliver_soon(ids)
    store.audit({"ts": now, "event": "released", "ns": ns, "key": key, "by": by, "ids": ids})
    return ids, blocked


def purge(store: Store, counters: Counters, exim: Exim, mirror_dir: str, ns: str, key: str, now: float, *,
          by: str, dry_run: bool = False, lift: bool = False, remember: float = 0.0,
          shared: Shared | None = None) -> tuple[list[str], bool]:
    """Spam: remove the subject's frozen mail from the queue, and the frozen bounces of
    its spam (see ``bounces_of``); keep the block unless ``lift``. Returns the ids and
    whether a block was lifted."""
    messages = exim.messages(ns, key, frozen=True)
    ids = [m.id for m in messages] + bounces_of(exim, counters, messages, ns, key, now, remember)
    lifting = lift and store.is_blocked(ns, key)
    if dry_run:
        return ids, lifting
    if ids:
        exim.act("-Mrm", ids)
    store.audit({"ts": now, "event": "purged", "ns": ns, "key": key, "by": by, "ids": ids})
    if lifting:
        unblock(store, counters, mirror_dir, ns, key, now, by=by, shared=shared)
    return ids, lifting


def _mirror_after(store: Store, mirror_dir: str, done: str) -> None:
    """An admin's change is in the store: say so when only the mirror failed."""
    from ..storage import mirror

    try:
        mirror.rewrite(store, mirror_dir)
    except FileError as exc:
        raise FileError(f"{done} in the store, but {exc}; eximhook maintain rewrites the mirror "
                        "files once it can (eximhook status shows them behind until then)") from exc


def block(store: Store, counters: Counters, mirror_dir: str, ns: str, key: str, now: float, *, by: str,
          note: str | None, notify: bool = True, spool: Guard | None = None, owner: Owner | None = None,
          expiry: Schedule | None = None, shared: Shared | None = None) -> bool:
    """Block by hand; False (and nothing changed) if the subject was blocked already.
    ``owner``: mail the owner too (``[owner] manual``), at the address it finds.
    ``shared``: the Redis of several relays, blocked there first (``cluster``); a
    block another relay made is copied here."""
    counter = counters.get(ns, key)
    record = block_record(ns, key, now, by=by, reason="manual", counter=counter, note=note)
    if spool is not None:
        record.update(spool.at_block())
        store.set_spool_floor(spool.floor)  # the mirror rewritten for this block holds the floor too
    queued = 0
    if shared is not None:
        record["node"] = shared.node
        queued = shared.block_queued(record, now, notify=notify)
        if queued < 0:
            made = shared.get_block(ns, key)
            if made is not None and store.block(made, now, False):
                _mirror_after(store, mirror_dir, f"{ns} {key!r} is blocked")
            return False
    to = None if owner is None or not notify or store.is_blocked(ns, key) else owner(ns, key) or ""
    created = store.block(record, now, notify, owner=to, expiry=expiry)
    if shared is not None and queued > 0:  # this store has it: this relay mails it
        shared.take(ns, key, queued)
    _mirror_after(store, mirror_dir, f"{ns} {key!r} is blocked")
    return created


def unblock(store: Store, counters: Counters, mirror_dir: str, ns: str, key: str, now: float, *,
            by: str, event: str = "unblocked", only: Callable[[dict[str, Any]], bool] | None = None,
            shared: Shared | None = None) -> None:
    """Lift the block (and any would-block records) and reset the subject's counters,
    so they start from zero. The counters first: lifted the other way round, the
    sender's next event could count on from over the limit and block it again.
    ``event`` and ``only`` are for automatic lifts (see ``Store.unblock``).
    ``shared``: the Redis of several relays, where it is lifted first (in one script,
    counters included), and published: every relay lifts its copy."""
    if shared is not None and only is not None:  # tested here, before Redis lifts it
        record = store.get_block(ns, key)
        if record is None or not only(record):
            raise NotBlocked(f"{ns} {key!r} is not blocked")
    lifted = shared is not None and shared.lift(ns, key, now, by, event=event) > 0
    blocked = store.is_blocked(ns, key)
    if not blocked and not store.shadows(ns, key):
        if not lifted:
            raise NotBlocked(f"{ns} {key!r} is not blocked")
        # the copy here was lifted already, by this relay's daemon: the mirror is still
        # the caller's to see written before it says unblocked
        _mirror_after(store, mirror_dir, f"{ns} {key!r} is unblocked")
        return
    counters.reset(ns, key)
    if store.clear_shadows(ns, key):
        store.audit({"ts": now, "event": "shadow-cleared", "ns": ns, "key": key, "by": by})
    if not blocked:
        return
    # lifted in Redis: this relay's daemon may have lifted the copy meanwhile
    if not store.unblock(ns, key, now, by, event=event, only=only) and not lifted:
        raise NotBlocked(f"{ns} {key!r} is not blocked")
    _mirror_after(store, mirror_dir, f"{ns} {key!r} is unblocked")
