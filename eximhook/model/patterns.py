"""Patterns that name subjects: for exemptions (never blocked) and per-subject limits.

A pattern is a key as ``eximhook show`` prints it (exact), a glob (``*@lists.example.com``,
``fnmatch`` rules), or, where subjects are client addresses (``relay``, ``ip``), a network
in CIDR notation (``192.0.2.0/24``, ``2001:db8::/48``) that holds the subject's address,
or its whole IPv6 group (keys there are /64 groups, written as Exim's ``${mask:}`` does);
for the wider networks of ``ip`` (``net``), one that overlaps the network.
Keys are lower case (``subjects.normalize``), so patterns are too.

An exact key wins over a pattern, then patterns in the order given (the config's,
then the admin's ``eximhook exempt add``). Only the rare paths match patterns: a
count over a limit asks whether its subject is exempt, and a count asks for the
subject's limits only when overrides exist for that counter.
"""

from __future__ import annotations

from .subjects import GLOB, family, network

TYPE_CHECKING = False  # the hooks import this module: typing costs ~10 ms
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import TypeVar

    T = TypeVar("T")

# namespaces whose keys are client addresses (IPv6 grouped) or networks: CIDR patterns make sense there
ADDRESS_NAMESPACES = ("relay", "ip", "net")
MAX_PATTERN_BYTES = 400  # a store key: LMDB keys hold 511 bytes


def check(ns: str, pattern: str, ipv6_prefix: int = 64) -> str:
    """The pattern as matched (lower case; a network in its canonical form); raises
    ``ValueError`` saying what is wrong with it."""
    text = pattern.strip().lower()
    if not text:
        raise ValueError("is empty")
    if "\0" in text or len(text.encode("utf-8", "surrogateescape")) > MAX_PATTERN_BYTES:
        raise ValueError(f"must be at most {MAX_PATTERN_BYTES} bytes, without NUL")
    net = network(text) if ns in ADDRESS_NAMESPACES else None
    if net is None:
        if ns in ("ip", "net") and GLOB.isdisjoint(text):  # its keys are addresses: anything else names nobody
            raise ValueError("is not an IP address, a network (192.0.2.0/24, 2001:db8::/48) or a glob")
        return text
    if ns != "net" and net.version == 6 and net.prefixlen > ipv6_prefix:
        raise ValueError(f"is narrower than a /{ipv6_prefix}: {ns} subjects are IPv6 /{ipv6_prefix} groups "
                         f"([relay] ipv6_prefix), so name the group ({net.supernet(new_prefix=ipv6_prefix)})")
    return str(net) if "/" in text else str(net.network_address)


def spaces(ns: str) -> tuple[str, ...]:
    """Whose patterns exempt a subject of ``ns``: its own namespace's, and for a network
    (``net``) also those of the addresses in it (``ip``): an office NAT exempt there must
    not lose its logins to a block of its /24."""
    return (ns,) if family(ns) == ns else (ns, family(ns))


def matches(ns: str, pattern: str, key: str) -> bool:
    """Does ``pattern`` name the subject? A network key (``net``) is named by a network
    that overlaps it: one exempt address in it exempts the whole network."""
    if pattern == key:
        return True
    if ns in ADDRESS_NAMESPACES and (net := network(pattern)) is not None:
        held = network(key)
        if held is None or held.version != net.version:
            return False
        return held.overlaps(net) if ns == "net" else held.subnet_of(net)  # type: ignore[arg-type]
    if GLOB.isdisjoint(pattern):
        return False
    from fnmatch import fnmatchcase

    return fnmatchcase(key, pattern)


def first(ns: str, key: str, entries: Iterable[tuple[str, T]]) -> tuple[str, T] | None:
    """The entry whose pattern names the subject: an exact key first, then the first
    pattern that matches; None if none does."""
    entries = list(entries)
    for entry in entries:
        if entry[0] == key:
            return entry
    for entry in entries:
        if matches(ns, entry[0], key):
            return entry
    return None
