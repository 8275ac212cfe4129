"""Operations on subjects, shared by the hooks and the admin commands.

They take plain values rather than a ``Config`` so the hooks can call them without
importing the config machinery. Nothing here exits the process or prints.
"""

from __future__ import annotations

from .counters import Counter, Counters
from .errors import EximhookError, FileError, NotBlocked
from .periods import format_period
from .store import Outcome, Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._log import Logger
    from .exim import Exim


def block_record(ns: str, key: str, now: float, *, by: str, reason: str, limit: int | None = None,
                 period: float | None = None, count: int | None = None,
                 counter: Counter | None = None, note: str | None = None) -> dict[str, Any]:
    """The block as stored, mirrored, mailed and shown: when, why, and the evidence."""
    counter = counter or Counter()
    return {
        "ns": ns, "key": key, "since": now, "by": by, "reason": reason, "note": note,
        "limit": limit, "period": period, "period_text": None if period is None else format_period(period),
        "count": count, "total": counter.total, "ips": counter.ips, "rcpts": counter.recent,
    }


def record_invalid(store: Store, counters: Counters, ns: str, key: str, now: float, *, limit: int,
                   period: float, rcpt: str | None, ip: str | None, keep_rcpts: int, keep_ips: int,
                   hold: float = 0.0) -> Outcome:
    """Count one invalid recipient; the one over the limit blocks the subject, once.

    The count goes to the unsynced counters, the block (with its audit event and
    notification, in one transaction) to the synced store: see ``settle``. The caller
    rewrites the mirror files when the outcome says ``tripped``.
    """
    counter, count, over = counters.update(counters.event(
        ns, key, now, limit=limit, period=period, evidence=rcpt, ip=ip, keep_evidence=keep_rcpts, keep_ips=keep_ips))
    return settle(store, ns, key, now, counter, count, over, limit=limit, period=period, hold=hold)


def settle(store: Store, ns: str, key: str, now: float, counter: Counter, count: int, over: bool, *,
           limit: int, period: float, hold: float = 0.0) -> Outcome:
    """Answer for a counted event: over the limit, and not blocked yet, makes the block.

    However many processes settle an over-limit count for one subject at once, the
    store creates one block (``put`` without overwrite, in one write transaction) and
    one notification; the others find it there. ``hold`` is the daemon's: see ``notify``.
    """
    if not over:
        return Outcome(store.is_blocked(ns, key), False, count, counter.total)
    if store.is_blocked(ns, key):  # the common case once blocked: a read, no write lock
        return Outcome(True, False, count, counter.total)
    record = block_record(ns, key, now, by="eximhook", reason="limit", limit=limit, period=period,
                          count=count, counter=counter)
    return Outcome(True, store.block(record, now, True, hold), count, counter.total)


def make_known(store: Store, mirror_dir: str, log: Logger, ns: str, key: str, outcome: Outcome, *,
               limit: int, period: float) -> None:
    """After an answer that the subject is blocked, and before anyone hears it: a new
    block is logged and flushed to disk (a power cut must not undo it; a failed flush is
    logged, the block is committed all the same), and the mirror is brought up to the
    store (rewritten after a trip; else only if a killed process left it behind)."""
    if outcome.tripped:
        log.log("warning", f"blocked {ns} {key}: {outcome.count} invalid recipients within {period:g}s "
                           f"(limit {limit})")
        try:
            store.sync()
        except EximhookError as exc:
            log.log("err", f"could not flush the new block to disk: {exc}")
    refresh_mirror(store, mirror_dir, log, force=outcome.tripped)


def refresh_mirror(store: Store, mirror_dir: str, log: Logger, *, force: bool = False, wait: float = 0.0) -> bool:
    """Bring the mirror files up to the store's generation (always, with ``force``);
    whether they are there now (False: the failure is logged).

    For hooks, the daemon and maintenance, after a trip or on finding the mirror behind:
    the block is stored already and the answer stays 1, so a mirror that cannot be
    written is logged for the admin (and retried by the next writer that looks), never
    raised. Without ``force`` a lock held past ``wait`` means another process is
    rewriting right now (typically the one that tripped, while the bot's other
    connections find the stamp behind): this one answers instead of queueing behind it.
    """
    from . import mirror

    try:
        if force:
            mirror.rewrite(store, mirror_dir, timeout=max(wait, 1.0))
        elif not mirror.current(store):
            mirror.rewrite(store, mirror_dir, timeout=wait, if_behind=True)
            return mirror.current(store)  # another process may have been rewriting
        return True
    except mirror.LockBusy:
        if force:
            log.log("err", f"could not rewrite the mirror files in {mirror_dir}: another process holds the lock; "
                           "the next event, eximhook maintain or 'eximhook export' will rewrite them")
    except Exception as exc:
        log.log("err", f"could not rewrite the mirror files in {mirror_dir}: {exc}; "
                       "the next event, eximhook maintain or 'eximhook export' will rewrite them")
    return False


def _mirror_after(store: Store, mirror_dir: str, done: str) -> None:
    """An admin's change is in the store: say so when only the mirror failed."""
    from . import mirror

    try:
        mirror.rewrite(store, mirror_dir)
    except FileError as exc:
        raise FileError(f"{done} in the store, but {exc}; eximhook maintain rewrites the mirror "
                        "files once it can (eximhook status shows them behind until then)") from exc


def block(store: Store, counters: Counters, mirror_dir: str, ns: str, key: str, now: float, *, by: str,
          note: str | None, notify: bool = True) -> bool:
    """Block by hand; False (and nothing changed) if the subject was blocked already."""
    counter = counters.get(ns, key)
    created = store.block(block_record(ns, key, now, by=by, reason="manual", counter=counter, note=note),
                          now, notify)
    _mirror_after(store, mirror_dir, f"{ns} {key!r} is blocked")
    return created


def unblock(store: Store, counters: Counters, mirror_dir: str, ns: str, key: str, now: float, *,
            by: str) -> None:
    """Lift the block and reset the subject's counter, so it starts from zero. The
    counter first: lifted the other way round, the sender's next event could count on
    from over the limit and block it again."""
    if not store.is_blocked(ns, key):
        raise NotBlocked(f"{ns} {key!r} is not blocked")
    counters.reset(ns, key)
    if not store.unblock(ns, key, now, by):
        raise NotBlocked(f"{ns} {key!r} is not blocked")
    _mirror_after(store, mirror_dir, f"{ns} {key!r} is unblocked")


def freeze_queued(store: Store, exim: Exim, ns: str, key: str, now: float) -> list[str]:
    """Freeze the subject's mail still waiting in the queue, so the spam accepted just
    before the block does not leave; returns the ids frozen (audited)."""
    ids = exim.message_ids(ns, key, frozen=False)
    if ids:
        exim.act("-Mf", ids)
        store.audit({"ts": now, "event": "froze-queued", "ns": ns, "key": key, "by": "eximhook", "ids": ids})
    return ids


def release(store: Store, counters: Counters, exim: Exim, mirror_dir: str, ns: str, key: str, now: float, *,
            by: str, dry_run: bool = False) -> tuple[list[str], bool]:
    """Not spam after all: lift the block, thaw the subject's frozen mail and start its
    delivery. Returns the ids and whether a block was lifted. Works without a block
    too (mail left frozen by an earlier plain ``unblock``)."""
    ids = exim.message_ids(ns, key, frozen=True)
    blocked = store.is_blocked(ns, key)
    if dry_run:
        return ids, blocked
    if blocked:
        unblock(store, counters, mirror_dir, ns, key, now, by=by)
    if ids:
        exim.act("-Mt", ids)
        exim.deliver_soon(ids)
    store.audit({"ts": now, "event": "released", "ns": ns, "key": key, "by": by, "ids": ids})
    return ids, blocked


def purge(store: Store, counters: Counters, exim: Exim, mirror_dir: str, ns: str, key: str, now: float, *,
          by: str, dry_run: bool = False, lift: bool = False) -> tuple[list[str], bool]:
    """Spam: remove the subject's frozen mail from the queue; keep the block unless
    ``lift``. Returns the ids and whether a block was lifted."""
    ids = exim.message_ids(ns, key, frozen=True)
    lifting = lift and store.is_blocked(ns, key)
    if dry_run:
        return ids, lifting
    if ids:
        exim.act("-Mrm", ids)
    store.audit({"ts": now, "event": "purged", "ns": ns, "key": key, "by": by, "ids": ids})
    if lifting:
        unblock(store, counters, mirror_dir, ns, key, now, by=by)
    return ids, lifting
