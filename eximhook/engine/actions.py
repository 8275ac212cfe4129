"""What the admin and the outbox do with a subject's mail in Exim's queue: freeze what
is still waiting when it is blocked, release it (not spam) or purge it (spam, with the
frozen bounces it caused). On top of ``core`` (``unblock``); nothing here exits or prints.
"""

from __future__ import annotations

from .core import message_ref, unblock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    import lmdb

    from ..backends.redis import RedisBackend
    from ..exim.queue import Exim, Message
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
            by: str, dry_run: bool = False, shared: RedisBackend | None = None) -> tuple[list[str], bool]:
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
          shared: RedisBackend | None = None) -> tuple[list[str], bool]:
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
