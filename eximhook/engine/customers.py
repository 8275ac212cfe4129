"""Per-customer totals (issue 24): a subject's counts also go to its customer, so that
50 mailboxes of one hacked site, each under its own limits, trip their customer's.

A customer is the domain of an authenticated user (``[customers] by_domain``), or what
the lookup file (``[customers] lookup``) says for a user, relay host or local user: one
``NS:KEY CUSTOMER`` a line, as the owner lookup file (``owner.read``), the first line
for a subject winning. A customer's limits are its own (``[limits.customer.COUNTER]``,
counted only where configured, shadow by default): nested, a customer's count is the
total of its members'. Its block freezes the mail of all of them: the mirror names each
listed member's customer (``member:NS:KEY``) and whether domains are customers, for the
snippets (``EXIMHOOK_CUSTOMER_*``).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # the hooks import this module on a count: typing costs ~10 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ..config.hookcache import View
    from ..model.counter import Counter
    from ..storage.store import Store

MEMBERS = ("auth", "relay", "local")  # who has a customer (a sender address, a client address: none)
# the members whose counters one share report reads, at most: a customer of thousands of
# mailboxes gets the first this many of its lookup lines and evidence, the rest summed
SHARES_READ = 500
# a customer id: one word, no colon (no re: it brings enum, ~2 ms on the hooks' path)
_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_REST = _FIRST | frozenset("._+=@-")
_cache: dict[str, tuple[tuple[int, ...], dict[tuple[str, str], str]]] = {}


def customer_id(text: str) -> str | None:
    """``text`` lower-cased if it is a customer id (a word of letters, digits and
    ``. _ + = @ -``, at most 255 bytes), else None."""
    text = text.lower()
    return text if 0 < len(text) < 256 and text[0] in _FIRST and _REST.issuperset(text) else None


def listed(path: str, ipv6_prefix: int) -> dict[tuple[str, str], str]:
    """The lookup file's members, read again only when the file changed (the daemon asks
    for every count); a file that cannot be read lists none (``check-config`` says why)."""
    from .owner import read

    try:
        st = os.stat(path)
    except OSError:
        return {}
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _cache.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        entries = {k: v for k, v in read(path, ipv6_prefix, customer_id, "CUSTOMER")[0].items() if k[0] in MEMBERS}
    except OSError:
        entries = {}
    _cache[path] = (stamp, entries)
    return entries


def of(view: View, ns: str, key: str) -> str | None:
    """The subject's customer: the lookup file's, else (``by_domain``) an authenticated
    user's domain, else None."""
    if ns not in MEMBERS:
        return None
    if view.customers_lookup and (found := listed(view.customers_lookup, view.ipv6_prefix).get((ns, key))):
        return found
    if view.customers_by_domain and ns == "auth" and "@" in key:
        return customer_id(key.rpartition("@")[2])
    return None


def publish(store: Store, lookup: str | None, by_domain: bool, ipv6_prefix: int) -> bool:
    """Hand the members to the mirror, which has no config (``mirror.rewrite``); True if
    they changed (the mirror is then behind the store, and rewritten on the next look)."""
    from ..storage.mirror import pack_members, unpack_members

    entries = listed(lookup, ipv6_prefix) if lookup else {}
    data = pack_members(by_domain, entries)
    if unpack_members(store.read(lambda txn: store.mirrored_in(txn, b"customers"))) == unpack_members(data):
        return False  # the same members (a store that was never told holds the default): no rewrite
    return store.set_mirrored(b"customers", data)


def members_of(view: View, cid: str, evidence: Iterable[str]) -> list[tuple[str, str]]:
    """The members of customer ``cid`` one can name: the lookup file's, then those its
    evidence names (``NS KEY: ...``, as ``events.customer_events`` writes it; with
    ``by_domain``, the only way to name its users), each still its member."""
    found: dict[tuple[str, str], None] = {}
    if view.customers_lookup:
        found.update((m, None) for m, c in listed(view.customers_lookup, view.ipv6_prefix).items() if c == cid)
    for item in evidence:
        ns, _, rest = item.partition(" ")
        key = rest.split(": ", 1)[0]
        if ns in MEMBERS and of(view, ns, key) == cid:
            found[(ns, key)] = None
    return list(found)


def shares(view: View, cid: str, name: str, adds: str, period: float, now: float, evidence: Iterable[str],
           read: Callable[[str, str, str], Counter]) -> list[tuple[str, str, int, bool]]:
    """Each nameable member's share of customer ``cid``'s counter ``name`` in the last
    ``period``, from the member's own counter (``read(ns, key, name)``), which counted the
    same events: (ns, key, count, exact), the largest first, none of 0. ``exact`` is False
    for a member whose windows are all shorter than ``period`` (its count is then a
    lower bound). At most ``SHARES_READ`` members are read."""
    out = []
    for ns, key in members_of(view, cid, evidence)[:SHARES_READ]:
        count, exact = read(ns, key, name).within(period, now, adds)
        if count:
            out.append((ns, key, count, exact))
    return sorted(out, key=lambda m: -m[2])
