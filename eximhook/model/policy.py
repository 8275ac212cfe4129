"""What is counted per subject, and what a count over a limit does.

A subject (namespace, key) has named counters; each counter has one or more windows
(LIMIT, PERIOD) and a mode: ``enforce`` blocks the subject at the first event over any
window, ``shadow`` only records that it would have (measure first, then enforce). Pure
data, no imports: the hooks read it from the marshal cache (``config.hookcache``).
"""

from __future__ import annotations


class Kind:
    """What one counter counts, and how its events add up and read.

    ``adds``: ``sum`` (the weights of its events: an invalid recipient weighs 1, a
    message its recipients), ``distinct`` (how many different values: each event names
    one, ``Event.tags``; the window keeps the newest ``limit + 1``, exact up to the limit)
    or ``ratio`` (the percentage of its events that were bad, once ``minimum`` of them
    were counted). ``unit`` is how a count reads in logs and tables, ``did`` what a block
    says the subject did, ``evidence`` the title of its kept evidence (the mail) and
    ``item`` what one piece of it is (``show``). ``group``: the counters that count the
    same events (a dead address is an invalid recipient, a refusal, a bounce and a bad
    outcome; a message's recipients are its volume and its distinct recipients), which
    the combined score takes once, at the fullest of them (``model.score``)."""

    __slots__ = ("adds", "did", "evidence", "group", "item", "name", "unit")

    def __init__(self, name: str, adds: str, unit: str, did: str, evidence: str, item: str, group: str = "") -> None:
        self.name, self.adds, self.unit, self.did, self.evidence, self.item = name, adds, unit, did, evidence, item
        self.group = group or name


# invalid: failed recipient verifications (seeds 000-002); bounces: delivery failures
# reported back to the sender; recipients: the volume of mail sent (seed 004);
# authfail: failed SMTP AUTH attempts of a client address (password guessing); then the
# signals of issue 24, each shadow by default: rcpts, the distinct recipients (cPanel's
# per-account cap); networks, the distinct client networks an account sends from
# (CSF's LF_DISTSMTP: a stolen password used by a botnet); failures and failrate, what
# remote MTAs refused or deferred of the mail the subject sent (cPanel's ratio); spam,
# the messages rspamd scored as spam
KINDS = {k.name: k for k in (
    Kind("invalid", "sum", "invalid recipients", "has sent mail to {count} invalid recipients",
         "Last invalid recipients", "invalid recipient", "refused"),
    Kind("bounces", "sum", "bounces", "has caused {count} bounces", "Last bounces (failed recipients)", "bounce for",
         "refused"),
    Kind("recipients", "sum", "recipients", "has sent mail to {count} recipients",
         "Last messages (Exim id, recipients)", "message", "volume"),
    Kind("authfail", "sum", "failed AUTH attempts", "has failed SMTP AUTH {count} times", "Last user names tried",
         "user name tried"),
    Kind("rcpts", "distinct", "distinct recipients", "has sent mail to {count} distinct recipients",
         "Last messages (Exim id, recipients)", "message", "volume"),
    Kind("networks", "distinct", "client networks", "has sent mail from {count} client networks",
         "Last client networks", "client network"),
    Kind("failures", "sum", "remote delivery failures", "has had {count} recipients refused by remote servers",
         "Last refused recipients", "refused", "refused"),
    Kind("failrate", "ratio", "% of remote recipients failed or deferred",
         "has had {count} % of its remote recipients refused or deferred", "Last refused or deferred recipients",
         "refused or deferred", "refused"),
    Kind("spam", "sum", "spam messages", "has sent {count} messages scored as spam",
         "Last spam verdicts (Exim id, action, score)", "spam verdict"),
    # no events of its own: the sum of the subject's enforced counters (``model.score``)
    Kind("score", "score", "% of its limits combined", "has reached {count} % of its limits combined",
         "The score's parts (counter: count / limit)", "part of the score"),
)}
COUNTERS = tuple(KINDS)
# the counters that count events (the score adds theirs up)
COUNTED = tuple(name for name, kind in KINDS.items() if kind.adds != "score")
MODES = ("enforce", "shadow")
# "N invalid recipients", "N bounces", "N recipients": how counts read in logs and mail
UNITS = {name: kind.unit for name, kind in KINDS.items()}
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
    # password spraying: failed AUTH per account tried, from any address; its block
    # refuses AUTH for the account only from networks it has not sent mail from, so it
    # can be low: a spray gets at most this many guesses an hour at an account, and one
    # more (the failure that makes the block)
    ("login", "authfail"): ((5, HOUR),),
    # and a spray of a few guesses at each of very many accounts, which no account's
    # count shows: every failed AUTH together; its block refuses AUTH for every account
    # from the networks it is not known from. A server's own rate of stale passwords
    # sets the limit: measure it (shadow) with `eximhook top authfail --ns all`
    ("all", "authfail"): ((1000, HOUR),),
    # issue 24's signals, measured before they block (shadow): more distinct recipients
    # in an hour than cPanel's default cap; more client networks in a day than a
    # traveller's hotel, phone and office; a fifth of the remote recipients of at least
    # 20 refused or deferred (a stale list, a bot's clean list bounced as spam); more
    # refusals than a newsletter's stale list; SpamExperts' 5 spam messages in 10 minutes
    ("auth", "rcpts"): ((500, HOUR),),
    ("relay", "rcpts"): ((500, HOUR),),
    ("local", "rcpts"): ((500, HOUR),),
    ("auth", "networks"): ((10, DAY),),
    ("auth", "failrate"): ((20, HOUR),),
    ("relay", "failrate"): ((20, HOUR),),
    ("local", "failrate"): ((20, HOUR),),
    ("auth", "failures"): ((50, HOUR),),
    ("relay", "failures"): ((50, HOUR),),
    ("local", "failures"): ((50, HOUR),),
    ("auth", "spam"): ((5, 600.0),),
    ("relay", "spam"): ((5, 600.0),),
    ("local", "spam"): ((5, 600.0),),
    # the combined score: 150 % of the limits, added over the enforced counters (a bot
    # at 80 % of three limits is at 240 %; an honest sender is near one limit at most)
    ("auth", "score"): ((150, 0.0),),
    ("relay", "score"): ((150, 0.0),),
    ("local", "score"): ((150, 0.0),),
}
# a ratio counter (failrate) judges a window once it holds this many events: three
# refusals of an honest user's first five messages are no pattern yet
DEFAULT_MINIMUM = 20


def default_mode(counter: str, ns: str = "") -> str:
    """Blocking counters whose limits are well understood (invalid recipients, password
    guessing per address) enforce; the seed-004 counters and issue 24's signals (the
    spraying of one account from many addresses among them) measure first."""
    return "enforce" if counter in ("invalid", "authfail") and ns not in ("login", "customer", "all") else "shadow"


class Policy:
    """One counter of one namespace: its windows, longest last, and its mode; for a
    ratio counter (``Kind.adds``), the events a window needs before it is judged
    (``minimum``), and a limit that is a percentage."""

    __slots__ = ("adds", "minimum", "mode", "name", "windows")

    def __init__(self, name: str, windows: tuple[tuple[int, float], ...], mode: str, minimum: int = 0) -> None:
        self.name, self.mode, self.adds = name, mode, KINDS[name].adds
        self.minimum = minimum or (DEFAULT_MINIMUM if self.adds == "ratio" else 0)
        self.windows = tuple(sorted(windows, key=lambda w: (w[1], w[0])))

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce"

    def as_tuple(self) -> tuple[str, tuple[tuple[int, float], ...], str, int]:
        return self.name, self.windows, self.mode, self.minimum

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
