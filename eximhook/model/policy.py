"""What is counted per subject, and what a count over a limit does.

A subject (namespace, key) has named counters; each counter has one or more windows
(LIMIT, PERIOD) and a mode: ``enforce`` blocks the subject at the first event over any
window, ``shadow`` only records that it would have (measure first, then enforce). Pure
data, no imports: the hooks read it from the marshal cache (``config.hookcache``).
"""

from __future__ import annotations

# invalid: failed recipient verifications (seeds 000-002); bounces: delivery failures
# reported back to the sender; recipients: the volume of mail sent (seed 004);
# authfail: failed SMTP AUTH attempts of a client address (password guessing)
COUNTERS = ("invalid", "bounces", "recipients", "authfail")
MODES = ("enforce", "shadow")
# "N invalid recipients", "N bounces", "N recipients": how counts read in logs and mail
UNITS = {"invalid": "invalid recipients", "bounces": "bounces", "recipients": "recipients",
         "authfail": "failed AUTH attempts"}
HOUR, DAY = 3600.0, 86400.0

# The defaults, used for a (namespace, counter) the config does not mention. The
# invalid-recipient counter is today's: enforced. The seed-004 counters start in shadow
# mode with Patrick's numbers: they record what would have been blocked, so an admin
# sees real counts before choosing limits ("the limits are just a guess").
DEFAULT_WINDOWS: dict[tuple[str, str], tuple[tuple[int, float], ...]] = {
    ("auth", "invalid"): ((100, HOUR),),
    ("relay", "invalid"): ((100, HOUR),),
    ("auth", "recipients"): ((1000, HOUR),),
    ("relay", "recipients"): ((1000, HOUR),),
    ("local", "recipients"): ((1000, HOUR),),
    ("sender", "bounces"): ((100, HOUR),),
    ("auth", "bounces"): ((50, HOUR),),
    ("relay", "bounces"): ((50, HOUR),),
    ("local", "bounces"): ((50, HOUR),),
    # counted only where acl-auth.conf is wired in: far above a phone that retries an
    # old password every few minutes, far below a password guesser
    ("ip", "authfail"): ((30, HOUR),),
    # the same guesses per network (IPv4 /24, IPv6 /48: [net]), so that the 65,536 /64s of
    # one /48 do not each get 30: a handful of guessing addresses trips it, a NAT full of
    # phones with a stale password rarely does (exempt or raise it for such a network)
    ("net", "authfail"): ((100, HOUR),),
}


def default_mode(counter: str) -> str:
    """Blocking counters whose limits are well understood (invalid recipients, password
    guessing) enforce; the seed-004 counters measure first."""
    return "enforce" if counter in ("invalid", "authfail") else "shadow"


class Policy:
    """One counter of one namespace: its windows, longest last, and its mode."""

    __slots__ = ("mode", "name", "windows")

    def __init__(self, name: str, windows: tuple[tuple[int, float], ...], mode: str) -> None:
        self.name, self.mode = name, mode
        self.windows = tuple(sorted(windows, key=lambda w: (w[1], w[0])))

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce"

    def as_tuple(self) -> tuple[str, tuple[tuple[int, float], ...], str]:
        return self.name, self.windows, self.mode

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self.as_tuple() == other.as_tuple()

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    def __repr__(self) -> str:
        return f"Policy{self.as_tuple()!r}"


Overrides = dict[tuple[str, str], tuple[tuple[str, Policy], ...]]


def pick(policies: dict[str, dict[str, Policy]], overrides: Overrides, ns: str, counter: str,
         key: str | None = None) -> Policy | None:
    """The policy of ``counter`` for subject (ns, key): its override if a pattern names
    it (``[overrides]``), else the namespace's. Without overrides, one dict lookup."""
    if key is not None and (entries := overrides.get((ns, counter))):
        from .patterns import first

        found = first(ns, key, entries)
        if found is not None:
            return found[1]
    return policies.get(ns, {}).get(counter)
