"""Which addresses are customers (``[relaytest] networks``) and whom to tell about one
(``[relaytest] contacts``)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from ..model.networks import Network, parse

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def normalize(ip: str) -> str:
    """The address as eximhook keys it: compressed, an IPv4-mapped IPv6 address as IPv4
    (Exim logs a dual-stack listener's IPv4 clients either way). ``ValueError`` if it is none."""
    addr = ipaddress.ip_address(ip.strip())
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def inside(ip: str, networks: Sequence[Network]) -> bool:
    """Is ``ip`` in one of ``networks`` (``parse``)? False for anything that is no address."""
    try:
        addr = ipaddress.ip_address(normalize(ip))
    except ValueError:
        return False
    return any(addr in net for net in networks)


def is_customer(ip: str, networks: Sequence[str]) -> bool:
    """Is ``ip`` one to probe: in one of the customer networks (``[relaytest] networks``),
    and not an address of this server? Our own Exim "relays" a probe to its own mailbox,
    as the final destination: probed, the server would list itself as an open relay
    (a trial found it, with the server's address inside the networks)."""
    return inside(ip, parse(networks)) and normalize(ip) not in own_addresses()


def why_not(ip: str, networks: Sequence[str]) -> str:
    """Why ``ip`` is not probed, for people (``is_customer`` is False)."""
    if inside(ip, parse(networks)):
        return f"{ip} is an address of this server (never probed: it would relay to itself)"
    return f"{ip} is not in [relaytest] networks ({', '.join(networks)})"


@functools.cache
def own_addresses() -> frozenset[str]:
    """This machine's own addresses (Linux: the kernel's local IPv4 routes and IPv6
    addresses), and 127.0.0.1 and ::1 whatever it says. Read once per process."""
    found = {"127.0.0.1", "::1"}
    try:
        with open("/proc/net/fib_trie") as f:
            lines = f.read().splitlines()
        found |= {lines[i - 1].split()[-1] for i, line in enumerate(lines) if line.strip() == "/32 host LOCAL"}
    except (OSError, IndexError):
        pass
    try:
        with open("/proc/net/if_inet6") as f:
            found |= {str(ipaddress.ip_address(bytes.fromhex(line.split()[0]))) for line in f if line.strip()}
    except (OSError, ValueError, IndexError):
        pass
    return frozenset(found)


def read_contacts(path: str) -> tuple[list[tuple[Network, str]], list[str]]:
    """The contacts file: lines ``IP-or-network address`` (``#`` starts a comment);
    returns the entries and the problems, one per bad line. ``OSError`` if unreadable."""
    entries: list[tuple[Network, str]] = []
    problems = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, raw in enumerate(f, 1):
            line = raw.partition("#")[0].strip()
            if not line:
                continue
            words = line.split()
            try:
                net = ipaddress.ip_network(words[0], strict=False)
            except ValueError:
                problems.append(f"line {n}: {words[0]!r} is not an address or network")
                continue
            if len(words) != 2 or "@" not in words[1]:
                problems.append(f"line {n}: expected 'IP-or-network address', got {line!r}")
                continue
            entries.append((net, words[1]))
    return entries, problems


def contact(path: str | None, ip: str) -> str | None:
    """The customer's postmaster address for ``ip``: the most specific network in the
    contacts file that holds it; None without a file, a match, or when it is unreadable
    (the abuse desk is mailed either way)."""
    if path is None:
        return None
    try:
        entries, _ = read_contacts(path)
    except OSError:
        return None
    addr = ipaddress.ip_address(normalize(ip))
    found = [(net.prefixlen, address) for net, address in entries if addr.version == net.version and addr in net]
    return max(found)[1] if found else None
