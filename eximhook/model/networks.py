"""Networks an admin lists (``[relaytest] networks``), in CIDR notation."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse(networks: Sequence[str]) -> list[Network]:
    """The customer networks; ``ValueError`` for one that is none, or whose host part is
    set (``10.1.2.3/8``): a typo, not a /8, since every address inside gets probed."""
    out = []
    for net in networks:
        try:
            out.append(ipaddress.ip_network(net.strip()))
        except ValueError as exc:
            raise ValueError(f"{net!r} is not a network in CIDR notation ({exc})") from None
    return out
