"""The combined score of the subjects a request counted (``model.score``), whichever
backend counted them: their counters read back (LMDB: in the counting transaction;
Redis: one script), each subject's score a ``Tally`` of the counter ``score`` that
settles as any other (one block, or one would-block record, however many race)."""

from __future__ import annotations

from ..model import score
from ..model.policy import COUNTED, KINDS

TYPE_CHECKING = False  # the hooks import this module on a count: typing costs ~10 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..config.hookcache import View
    from ..model.counter import Counter, Tally

    Read = Callable[[str, str, tuple[str, ...]], dict[str, "Counter"]]  # (ns, key, names) -> counters


def scores(tallies: Sequence[Tally], now: float, view: View, read: Read) -> list[Tally]:
    """The scores over their limit of the subjects ``tallies`` counted. A subject with an
    enforced counter over its own limit is left out (that counter blocks by itself, and
    names the block; one in shadow mode only records, and must not keep the score from
    blocking), and so is one whose enforced counters are of fewer than two groups when
    the score's limit is 100 % or more (the score adds each group's fullest counter: one
    under its limit is under it), without reading them. ``read`` gives the subject's
    counters as stored, the ones just counted included."""
    out = []
    for ns, key in dict.fromkeys((t.ns, t.key) for t in tallies):
        policy = view.policy(ns, "score", key)
        if policy is None or not policy.windows or any(
                t.over >= 0 and t.policy.enforced for t in tallies if (t.ns, t.key) == (ns, key)):
            continue
        policies = view.policies_on(ns, key, COUNTED)
        enforced = tuple(name for name, p in policies.items() if p.enforced)
        if len({KINDS[name].group for name in enforced}) < 2 and policy.windows[0][0] >= 100:
            continue
        tally = score.tally(ns, key, policy, score.parts(policies, read(ns, key, enforced), now))
        if tally.over >= 0:
            out.append(tally)
    return out
