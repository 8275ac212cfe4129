"""The counters' upkeep, so that soft state follows the rate of current abuse, not its
history (issue 21). Run by the daemon's sweeper thread (``serve.sweeper``) every
``[serve] check_interval`` and at once when counting took the counters past their
high-water mark, and by ``eximhook maintain`` every minute (installs without the daemon):

- hourly, by whichever process comes first (``Counters.sweep_due``): the message
  references older than ``[bounces] remember`` go (``forget``), and the counters whose
  windows hold no event are swept (``Counters.sweep``). A blocked subject's counters,
  and those of a subject with a would-block record, stay whole (``show`` tells their
  story; a block record is never touched, it is in the store);
- past the high-water mark below ``[store] counters_budget`` (``Counters.marks``), the
  least recently touched go (``Counters.trim``), down to the low-water mark;
- making room is logged once per episode: when it is first seen, and when nothing has
  gone for ``QUIET`` seconds and the counters are back under the mark. ``eximhook
  status`` warns meanwhile.
"""

from __future__ import annotations

from ..log import Logger
from ..periods import format_time
from .counters import Counters
from .store import Store, subject_key

SWEEP_EVERY = 3600.0
QUIET = 600.0  # seconds without anything dropped that end an episode of making room


def keep(store: Store) -> set[bytes]:
    """The subjects whose counters a sweep leaves whole: blocked, or with a would-block record."""
    return {subject_key(r["ns"], r["key"]) for r in [*store.blocks(), *store.shadows()]}


def upkeep(store: Store, counters: Counters, log: Logger, now: float, remember: float) -> None:
    """One round (see the module's docstring); raises ``EximhookError`` if the counters fail."""
    if counters.sweep_due(now, SWEEP_EVERY):
        refs = counters.forget(now, remember)
        dropped, quieted = counters.sweep(now, keep(store))
        if refs or dropped or quieted:
            log.log("info", f"upkeep: {dropped} quiet counter(s) dropped, {quieted} cut to their totals and peaks, "
                            f"{refs} message reference(s) older than [bounces] remember dropped")
    counters.trim()
    noted = counters.note_episode(now, QUIET)
    if noted is None:
        return
    what, episode = noted
    budget = f"{(counters.budget or 0) / (1 << 20):g} MiB ([store] counters_budget)"
    if what == "started":
        log.log("warning", f"the counters reached their budget of {budget} at {format_time(episode['since'])}: the "
                           "least recently counted subjects are forgotten, counting starts afresh for them (blocks "
                           "are kept); a flood of new subjects? eximhook status warns until it ends")
    else:
        log.log("notice", f"the counters are back under their budget of {budget}: {episode['dropped']:.0f} entries "
                          f"forgotten from {format_time(episode['since'])} to {format_time(episode['last'])}")
