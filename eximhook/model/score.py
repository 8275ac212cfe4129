"""The combined score (issue 24): how far a subject is to each of its enforced counters'
limits, added up. A bot paced at 80 % of every single limit trips none of them; its
score, 80 % of three limits, is 240 %, over the score's limit (150 % by default).

Each counter adds the count of its fullest window over that window's limit (a ratio
counter's percentage over its limit, once judged); of counters that count the same
events (``Kind.group``: invalid recipients, refusals, bounces; volume and distinct
recipients), the fullest alone. The score is a ``Tally`` of the
counter ``score``, whose one window is (LIMIT %, 0 s): it trips, blocks or records a
would-block as any counter does (``settle``), and its evidence names its parts.
"""

from __future__ import annotations

from .counter import Counter, Tally
from .ratelimit import Window

TYPE_CHECKING = False  # the hooks import this module on a count: typing costs ~10 ms
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .policy import Policy


def parts(policies: Mapping[str, Policy], counters: Mapping[str, Counter], now: float) -> list[tuple[str, int, int]]:
    """What the score adds: (name, count, limit) of each group of counters that count
    the same events (``policy.Kind.group``), its fullest enforced counter's fullest
    window, so that no event counts twice (a dead address is an invalid recipient, a
    refusal and a bounce: once); groups that counted nothing are left out."""
    from .policy import KINDS

    best: dict[str, tuple[str, int, int]] = {}
    for name, policy in policies.items():
        c = counters.get(name)
        if c is None or not policy.enforced or policy.adds == "score":
            continue
        windows = [(w.count(now, policy) if policy.adds != "ratio" or w.judged(now, policy.minimum) else 0, limit)
                   for limit, period in policy.windows for w in (c.window(period),)]
        count, limit = max(windows, key=lambda w: w[0] / w[1], default=(0, 1))
        group, old = KINDS[name].group, best.get(KINDS[name].group)
        if count and (old is None or count / limit > old[1] / old[2]):
            best[group] = (name, count, limit)
    return list(best.values())


def tally(ns: str, key: str, policy: Policy, found: list[tuple[str, int, int]]) -> Tally:
    """The score of the subject whose counters' ``parts`` are ``found``, as a tally of the
    counter ``score``: over its one window when above its limit (percent)."""
    percent = sum(count * 100 // limit for _, count, limit in found)
    limit, period = policy.windows[0]
    evidence = [f"{name}: {count} / {limit}" for name, count, limit in found]
    return Tally(ns, key, policy, Counter(0, [Window(period)], evidence), [percent], 0 if percent > limit else -1)

