"""The one path from a count to a block and its aftermath, for every door and backend.

Whichever backend decided (``backends.lmdb.settle`` in this machine's store, or Redis's
script), what follows is the same: a new block or would-block record is logged and
flushed to disk, the mirror files are brought up to the store before anyone hears the
answer, and the daemon's outbox thread is told (a hook has none: ``eximhook notify``
and the daemon send what it queued). ``hold`` is the rule for when the abuse desk's
mail may go.
"""

from __future__ import annotations

from ..errors import EximhookError
from ..model.policy import UNITS
from ..model.subjects import FREEZING

TYPE_CHECKING = False  # the hooks import this module on a count: typing costs ~10 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol

    from ..backends.base import Backend
    from ..config.hookcache import View
    from ..log import Logger
    from ..model.counter import Tally
    from ..model.records import Outcome, Request
    from ..storage.store import Store

    # the daemon's outbox thread: told of new blocks (tripped) and of a tripping
    # message's id (report), so the notification can name it and freeze it
    class Outbox(Protocol):
        def tripped(self, subjects: set[tuple[str, str]]) -> None: ...
        def report(self, ns: str, key: str, message_id: str) -> bool: ...


def hold(req: Request, view: View) -> float:
    """How long the abuse desk's mail about a block this request trips waits. Only a
    count made at RCPT time trips before its message has an id: that notification
    waits ``[notify] hold`` for the DATA ACL to report it (``frozen``). A message count
    names its message now; a bounce, a delivery outcome or an ip block freezes nothing."""
    return 0.0 if req.op in ("message", "bounce", "delivery") or req.ns not in FREEZING else view.hold


def frozen(req: Request) -> str:
    """The id of the message a request counts, which a block it trips freezes and its
    notification names (only a message count knows it)."""
    return req.fields.get("id", "") if req.op == "message" else ""


def owner_of(view: View, log: Logger) -> Callable[[str, str], str | None] | None:
    """The owner's address for a new block (``[owner] notify``), or None when off."""
    if not view.owner_notify:
        return None

    def find(ns: str, key: str) -> str | None:
        from .owner import resolve  # only a block pays for it

        return resolve(ns, key, lookup=view.owner_lookup, patterns=view.owner_pattern,
                       ipv6_prefix=view.ipv6_prefix, log=log)
    return find


def decide(backend: Backend, view: View, log: Logger, tally: Tally, now: float, hold: float) -> Outcome:
    """The second step of a backend that counts and settles in two (``Backend.settle``):
    the block, or the would-block record, once however many race."""
    if tally.over < 0:  # the common case: under every limit, nothing to make (and nothing to look up)
        return backend.settle(tally, now)
    return backend.settle(tally, now, hold=hold, notify_shadow=view.notify_shadow, exempt=view.exempt,
                          spool=view.guard(), owner=owner_of(view, log), expiry=view.expiry,
                          within=view.wider(tally.ns, tally.key))


def after(store: Store, view: View, log: Logger, tally: Tally, outcome: Outcome, *, frozen: str = "",
          outbox: Outbox | None = None) -> None:
    """What follows a decision, before anyone hears the answer: ``make_known``, then
    the daemon's outbox thread told (``frozen``: the id of the message that tripped)."""
    make_known(store, view.mirror_dir, log, tally, outcome)
    if outbox is not None and (outcome.tripped or outcome.shadowed):
        outbox.tripped({(tally.ns, tally.key)})
        if frozen and outcome.tripped:
            outbox.report(tally.ns, tally.key, frozen)


def trip_text(tally: Tally) -> str:
    """``6 invalid recipients within 3600s (limit 5)``: what a trip logs."""
    limit, period = tally.window
    if tally.policy.adds == "score":
        return f"{tally.count} {UNITS[tally.name]} (limit {limit} %: {', '.join(tally.counter.recent)})"
    return f"{tally.count} {UNITS[tally.name]} within {period:g}s (limit {limit})"


def make_known(store: Store, mirror_dir: str, log: Logger, tally: Tally | None, outcome: Outcome) -> None:
    """After an answer that the subject is blocked, and before anyone hears it: a new
    block is logged and flushed to disk (a power cut must not undo it; a failed flush is
    logged, the block is committed all the same), and the mirror is brought up to the
    store (rewritten after a trip; else only if a killed process left it behind). A new
    would-block record (shadow mode) is logged and flushed; it changes no mirror."""
    if tally is not None and (outcome.tripped or outcome.shadowed):
        what = "blocked" if outcome.tripped else (
            f"would block (exempt, {outcome.exempt})" if outcome.exempt else "would block (shadow mode)")
        log.log("warning", f"{what} {tally.ns} {tally.key}: {trip_text(tally)}")
        try:
            store.sync()
        except EximhookError as exc:
            log.log("err", f"could not flush the new record to disk: {exc}")
    if outcome.blocked:
        from ..storage import mirror  # not on a count that blocks nothing

        mirror.refresh(store, mirror_dir, log, force=outcome.tripped)
