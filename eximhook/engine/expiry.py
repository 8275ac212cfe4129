"""Blocks that lift by themselves, and longer ones for repeat offenders (``[expiry]``).

Off by default: as in the seeds, a block lasts until an admin lifts it. With ``[expiry]
after`` set, a block gets its lift time when it is made, fail2ban-style: the subject's
n-th block lasts ``after`` x ``escalate``^(n-1), at most ``max``, and a subject that has
been free of blocks for ``forget`` starts again at the first step. The step comes from
the subject's *offence record* (the store's ``offences`` database), which outlives
unblocks; it is written in the block's own transaction, so however many processes race
to block a subject, there is one block and one step.

``eximhook maintain`` lifts the blocks whose time has come, through the same path as
``unblock`` (counters reset, mirror rewritten, audited as ``expired``). Unless
``lift_frozen``, a block whose subject still has frozen mail in the queue stays: nobody
has looked at that mail yet, and lifting the block would not thaw it anyway.
"""

from __future__ import annotations

from ..errors import EximError, EximhookError, NotBlocked
from ..model.schedule import due
from ..periods import format_period, format_time
from ..storage.counters import Counters
from ..storage.store import subject_key
from .actions import unblock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import lmdb

    from ..backends.base import Shared
    from ..config.load import Config
    from ..log import Logger
    from ..storage.store import Store

LIFTER = "eximhook (expired)"  # the audit log's "by" of an automatic lift


def lift_due(cfg: Config, store: Store, log: Logger, now: float, shared: Shared | None = None) -> list[str]:
    """``eximhook maintain``: lift every block whose time has come; returns the problems
    left for the next run. Lifted blocks are logged, and so, once, is a block held by
    frozen mail that nobody has reviewed. With ``[expiry] after`` off nothing is lifted,
    not even a block given a time while it was on: the admin decides again. ``shared``:
    the Redis of several relays, where each lift is made first (``backends.cluster``)."""
    if not cfg.expiry.after:
        return []
    blocks = [b for b in store.blocks() if due(b, now)]
    frozen: dict[tuple[str, str], list[str]] = {}
    if blocks and not cfg.expiry.lift_frozen:
        from ..exim.queue import Exim  # not on a hook's path: it imports dataclasses

        try:  # one look at the queue for all of them: maintain runs every minute
            found = Exim.from_config(cfg.exim).messages_of([(b["ns"], b["key"]) for b in blocks], frozen=True)
        except (EximError, OSError, ValueError) as exc:
            problem = (f"{len(blocks)} block(s) due to lift stay: cannot tell whether their frozen mail was "
                       f"reviewed: {exc}")
            log.log("err", f"maintain: {problem}")
            return [problem]
        frozen = {subject: [m.id for m in messages] for subject, messages in found.items()}
    lifting = []
    for block in blocks:
        if ids := frozen.get((block["ns"], block["key"])):
            _hold(store, log, block, ids, now)
        else:
            lifting.append(block)
    return _lift(cfg, store, log, lifting, now, shared) if lifting else []


def _lift(cfg: Config, store: Store, log: Logger, blocks: list[dict[str, Any]], now: float,
          shared: Shared | None) -> list[str]:
    problems = []
    with Counters(cfg.store.path, cfg.store.counters_budget, cfg.store.owner) as counters:
        for block in blocks:
            ns, key = block["ns"], block["key"]
            try:
                # only a block that is still due: not one made again since this run looked;
                # with Redis, lifted on every relay (a SharedUnavailable: the next run)
                unblock(store, counters, cfg.store.mirror_dir, ns, key, now, by=LIFTER, event="expired",
                             only=lambda record: due(record, now), shared=shared)
            except NotBlocked:
                continue  # another maintain run lifted it first
            except EximhookError as exc:  # the mirror: the next run, or any writer, rewrites it
                problems.append(f"lifting {ns} {key}: {exc}")
                log.log("err", f"maintain: lifting {ns} {key}: {exc}")
                continue
            log.log("notice", f"maintain: lifted the block on {ns} {key}: it expired at {when(block)}")
    return problems


def _hold(store: Store, log: Logger, block: dict[str, Any], ids: list[str], now: float) -> None:
    """A due block whose subject has frozen mail stays. Marked ``held`` in its record
    (``show`` and ``list`` say so), audited and logged once, not every minute."""
    import json

    if block.get("held") is not None:
        return
    sk = subject_key(block["ns"], block["key"])

    def body(txn: lmdb.Transaction) -> bool:
        db = store.db(txn, b"blocks")
        data = txn.get(sk, db=db)
        if data is None or json.loads(bytes(data)) != block:  # lifted, or marked, since this run looked
            return False
        txn.put(sk, json.dumps(dict(block, held=now)).encode(), db=db)
        store.append_in(txn, b"audit", {"ts": now, "event": "expiry-held", "ns": block["ns"], "key": block["key"],
                                        "by": "eximhook", "ids": ids})
        return True

    if store.update(body):
        log.log("notice", f"maintain: the block on {block['ns']} {block['key']} was due to lift at "
                          f"{format_time(block['expires'])}, but {len(ids)} frozen message(s) of it wait for "
                          "review: it stays until they are released or purged ([expiry] lift_frozen)")


def when(block: dict[str, Any]) -> str:
    """``2026-11-24T03:12:57+00:00 (after 12h, block 2 of this subject)``."""
    lasts = format_period(round(block["expires"] - block["since"]))
    return f"{format_time(block['expires'])} (after {lasts}, block {block['offence']} of this subject)"


def lift_text(cfg: Config, block: dict[str, Any]) -> str | None:
    """When the block lifts, for ``show``; None for a block made while expiry was off."""
    if block.get("offence") is None:
        return None
    if block.get("expires") is None:
        return (f"lasts until an admin lifts it: block {block['offence']} of this subject, made by hand "
                "([expiry] manual is off)")
    if not cfg.expiry.after:
        return f"was to lift at {when(block)}, but [expiry] after is off now: it lasts until an admin lifts it"
    if block.get("held") is not None:
        return (f"was due to lift at {when(block)}; held since {format_time(block['held'])}: its frozen mail "
                "waits for review (release or purge it; [expiry] lift_frozen)")
    return f"lifts by itself at {when(block)}" + (
        "" if cfg.expiry.lift_frozen else ", if its frozen mail has been released or purged by then")


def lift_cell(block: dict[str, Any]) -> str:
    """The LIFTS column of ``list``: the time, ``held`` (frozen mail waits), or ``-``."""
    if block.get("expires") is None:
        return "-"
    return "held" if block.get("held") is not None else format_time(block["expires"])
