"""The compressed clock and the limits the population meets.

A production hour lasts ``hour`` seconds of the run, and every window eximhook's
defaults give a counter (model/policy.py: DEFAULT_WINDOWS, README's production limits)
shrinks with it, so a sender paced to a production limit is paced to the scaled one.

The counts of the counters that cost the run mail (invalid recipients, bounces,
volume, distinct recipients, failures, spam) are also divided by ``divide``, and so
are the volumes of the population, which are written as shares of those limits: what
50 hacked mailboxes at 80 % of 1,000 recipients an hour send would take this machine
longer than a benchmark may. What a division keeps: each sender's share of every
per-recipient limit, in expectation. What it does not: the weight of one event, which
is ``divide`` times its production share (a typo is 1 % of a divided invalid limit of
10, not 0.1 % of 100), and so the combined score of a sender with a few such events;
and per-message counts of a sender whose messages are few and large (a list owner's
two bounces an hour are 40 % of a divided bounce limit of 5). So the honest senders,
whose blocks must be exact, run at their own ``divide`` (1 by default: production's
volumes), with their limits set back to match as per-subject limits ([overrides]).

Counts of logins and networks (failed AUTH, distinct networks) cost nothing to
simulate and keep production's values; ratios (failrate) and the combined score are
percentages, which stay, and so does the failure ratio's minimum of recipients (its
guard against judging a handful). Reported figures are given as measured and,
converted back, production-equivalent.

Per-customer totals (``[limits.customer.COUNTER]``) have no default: a customer's size
is the admin's to know. The run's "after" signals give every customer ``CUSTOMER_SIZE``
times an account's limit of each mail counter (``production``): a customer of up to
that many accounts, each at its full limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HOUR = 3600.0
# the signals eximhook had before the new counters (--signals before), as (namespace,
# counter): today's defaults (model/policy.py at git 77f4e86)
BEFORE = frozenset({("auth", "invalid"), ("relay", "invalid"), ("auth", "recipients"), ("relay", "recipients"),
                    ("local", "recipients"), ("sender", "bounces"), ("auth", "bounces"), ("relay", "bounces"),
                    ("local", "bounces"), ("ip", "authfail"), ("net", "authfail")})
# counts of logins or networks: kept at production values (see above)
UNDIVIDED = ("authfail", "networks")
# the customers' limits: this many accounts' worth of each mail counter (see above)
CUSTOMER_SIZE = 10
CUSTOMER_COUNTERS = ("invalid", "bounces", "recipients", "rcpts", "failures")


@dataclass(frozen=True)
class Scale:
    hour: float  # seconds of the run per production hour
    divide: int  # mail counts (limits and volumes) divided by this

    def seconds(self, production: float) -> float:
        """Run seconds for ``production`` seconds."""
        return production * self.hour / HOUR

    def production(self, seconds: float) -> float:
        """Production seconds for ``seconds`` of the run."""
        return seconds * HOUR / self.hour

    def count(self, counter: str, production: int) -> int:
        """The limit of ``counter`` in the run for a production limit (at least 1)."""
        if counter in UNDIVIDED or adds(counter) in ("ratio", "score"):
            return production
        return max(1, math.floor(production / self.divide))

    def limit(self, ns: str, counter: str) -> int:
        """The run's limit of the first (shortest) production window of (ns, counter)."""
        return self.count(counter, production()[(ns, counter)][0][0])


Windows = tuple[tuple[int, float], ...]


def production() -> dict[tuple[str, str], Windows]:
    """The production windows of every (namespace, counter) the installed eximhook has a
    default for, and the customers' (``CUSTOMER_SIZE`` accounts' worth)."""
    from eximhook.model.policy import DEFAULT_WINDOWS

    customers = {("customer", c): tuple((CUSTOMER_SIZE * limit, period) for limit, period in windows)
                 for c in CUSTOMER_COUNTERS if (windows := DEFAULT_WINDOWS.get(("auth", c)))}
    return {**DEFAULT_WINDOWS, **customers}


def signals(which: str) -> frozenset[tuple[str, str]]:
    """The (namespace, counter) pairs in force: "before", today's; "after", every one
    the installed eximhook has a default for, and the customers' totals."""
    return BEFORE if which == "before" else frozenset(production())


def adds(counter: str) -> str:
    """How the installed eximhook adds ``counter``'s events up: sum, distinct or ratio."""
    from eximhook.model import policy

    kinds = getattr(policy, "KINDS", {})
    return kinds[counter].adds if counter in kinds else "sum"


def windows(scale: Scale, counter: str, production: Windows) -> list[dict[str, object]]:
    """A counter's production windows, scaled, as the config writes them."""
    return [{"limit": scale.count(counter, limit), "period": f"{scale.seconds(period):g}s"}
            for limit, period in production]


def settings(scale: Scale, on: frozenset[tuple[str, str]], own: Scale | None = None,
             subjects: tuple[tuple[str, str], ...] = (),
             tuned: tuple[tuple[str, str, str, Windows], ...] = ()) -> dict[str, object]:
    """The harness's eximhook settings ("section.key": value): every counter ``on``
    (``signals``) enforced at its production windows, scaled; every other counter that
    has a default off. ``subjects`` get the windows of ``own`` instead, as per-subject
    limits ([overrides]): the honest senders run at production's counts
    (``--honest-divide 1``). ``tuned``: (ns, key, counter, production windows), the
    limits an admin gave a subject after the shadow phase, at ``own``'s scale too."""
    from eximhook.model.policy import DEFAULT_WINDOWS

    own = own or scale
    out: dict[str, object] = {}
    for (ns, counter), prod in production().items():
        if (ns, counter) not in on and (ns, counter) not in DEFAULT_WINDOWS:
            continue  # a customer's limit: no default to turn off
        if adds(counter) == "score":  # a percentage of the other limits, no period of its own
            out.update({f"limits.{ns}.{counter}.limit": prod[0][0], f"limits.{ns}.{counter}.mode": "enforce"}
                       if (ns, counter) in on else {f"limits.{ns}.{counter}.windows": []})
            continue
        if own != scale and (ns, counter) in on:
            for key in (key for sns, key in subjects if sns == ns):
                out[f'overrides.{ns}."{key}".{counter}.windows'] = windows(own, counter, prod)
        scaled = windows(scale, counter, prod) if (ns, counter) in on else []
        if counter == "invalid" and ns != "customer":  # [limits.NS] itself: the harness writes its limit there
            if not scaled:
                raise ValueError("the invalid counter is always on")
            out.update({f"limits.{ns}.limit": scaled[0]["limit"], f"limits.{ns}.period": scaled[0]["period"],
                        f"limits.{ns}.mode": "enforce"})
        else:
            out[f"limits.{ns}.{counter}.windows"] = scaled
            if scaled:
                out[f"limits.{ns}.{counter}.mode"] = "enforce"
    for ns, key, counter, prod in tuned:
        if (ns, counter) in on:
            out[f'overrides.{ns}."{key}".{counter}.windows'] = windows(own, counter, prod)
    return out
