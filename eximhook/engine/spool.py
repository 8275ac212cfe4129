"""The spool-space guard: a frozen bot must not fill the spool.

A blocked subject's mail is accepted and frozen, as evidence; a bot that keeps sending
keeps filling the spool ("a spambot will continue to fill your queue with frozen
messages"). So each block records the spool's free space when it starts (as the Exim
wiki's BlockCracking does), and ``fraction`` of it: below that, its mail is refused
rather than frozen, and below ``floor`` too (the config's current one, which the store
keeps for the mirror). The mirror's cdb file holds the highest of these
(``LOW_KEY``), and the DATA and not-SMTP ACL snippets compare Exim's
own ``$spool_space`` with it: past it, a blocked subject's message is dropped with a
5xx, natively, for every message. Maintenance (the daemon's periodic look and
``eximhook maintain``) tells the abuse desk once when free space falls below it, and
notes when it is back (``Store.spool_low``).
"""

from __future__ import annotations

from ..model.spool import Guard, threshold
from ..model.subjects import FREEZING

TYPE_CHECKING = False  # the hooks import this on a trip: typing costs ~10 ms
if TYPE_CHECKING:

    from ..log import Logger
    from ..storage.store import Store

def check(store: Store, guard: Guard, now: float, log: Logger, free: int | None = None) -> bool:
    """Compare free space (``free``: a reading; default, the spool's now) with the
    threshold; on a change, record it, once however many processes look
    (``Store.spool_low``). True if it has just fallen below: a notification is queued."""
    free = guard.free() if free is None else free
    if free is None:
        log.log("err", f"spool space: cannot read the free space of {guard.directory} ([spool] directory)")
        return False
    blocks = [b for b in store.blocks() if b["ns"] in FREEZING]  # an ip block has no mail to refuse
    limit = threshold(blocks, guard.floor)
    low = bool(blocks) and free < limit
    if not store.spool_low(low, now, free, limit):
        return False
    if low:
        log.log("warning", f"spool space: {free} KiB free in {guard.directory}, below {limit} KiB: blocked "
                           "subjects' mail is refused instead of frozen; the abuse desk is told")
    else:
        log.log("notice", f"spool space: {free} KiB free in {guard.directory} again (threshold {limit} KiB): "
                          "blocked subjects' mail is frozen again")
    return low
