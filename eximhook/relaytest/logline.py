"""The client address of an Exim 4.96 mainlog arrival (``<=``) line.

Exim writes (receive.c, host.c)::

    DATE TIME [PID] ID <= SENDER [R=REF] [DS] H=FULLHOST [I=[IP]:PORT] ... P=PROTO ... S=SIZE ...

where FULLHOST is ``[IP]``, ``NAME [IP]``, ``(HELO) [IP]`` or ``NAME (HELO) [IP]``, each
``[IP]`` followed by ``:PORT`` with ``log_selector = +incoming_port``. A local
submission has no ``H=``.

Much of the line is chosen by whoever sends the message, and the addresses a spammer
puts there must not decide what we probe:

- SENDER comes from MAIL FROM: a quoted local part can hold spaces, brackets and a
  fake `` H=[10.0.0.1]``. So the sender is read as Exim wrote it, quoted strings
  (with their backslash escapes) and all, and ``H=`` must come right after it;
- after the address, ``A=`` (the authenticated id), ``id=`` (the Message-ID, logged
  by default, whose quoted local part keeps spaces), ``T=`` (the subject) and the
  recipients can hold ``) [10.0.0.1] P=esmtp``. So the first ``[IP]`` that ends the
  host field is the one, never the last bracket on the line;
- the HELO sits before the address. Exim refuses a HELO that is not a name of letters,
  digits, dots and hyphens or an address literal ``[IP]`` (smtp_in.c ``check_helo``),
  neither of which can hold ``) [``; so the first ``) [IP]`` after ``H=(`` ends it.
  A literal in the HELO (``H=([10.0.0.1]) [192.0.2.7]``) is not taken for the address.

What this cannot tell apart: a server with ``helo_accept_junk_hosts`` (or spaces and
parentheses in ``helo_allow_chars``) logs any HELO, and a client that writes
``a) [10.0.0.9] (b`` there names another address before its own. An open relay's
abusers never choose that HELO (the relay's own MTA sends it), so seed 003's threat is
covered; only the customer itself could steer its probe, to another customer's
address inside the networks, under the same rate cap and cool-down.
"""

from __future__ import annotations

import ipaddress
import re

# DATE TIME[.mmm][ +zone] [[PID] ]ID <= : a 4.96 id is 6-6-2 characters, 4.97's 6-11-4
_ARRIVAL = re.compile(
    rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{3})?(?: [-+]\d{4})? (?:\[\d+\] )?"
    rb"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4} <= ")
# what Exim puts between the sender and the host: R=, then DS (dnssec)
_BEFORE_HOST = re.compile(rb"(?: R=\S+)?(?: DS)? H=")
# [IP] then :PORT, ending the host field (a space before the next field, or the end)
_ADDRESS = re.compile(rb"\[([0-9A-Fa-f:.]{2,45})\](?::\d{1,5})?(?= |$)")
_HELO_END = re.compile(rb"\) (?=\[)")


def parse_line(line: bytes) -> str | None:
    """The client address of an arrival over SMTP, in its canonical form (an IPv4-mapped
    IPv6 address as IPv4); None for any other line, a local submission or a line
    that does not parse."""
    m = _ARRIVAL.match(line)
    if m is None:
        return None
    end = _sender_end(line, m.end())
    if end is None:
        return None
    m = _BEFORE_HOST.match(line, end)
    if m is None:
        return None  # no H=: a local submission
    return _host_address(line, m.end())


def _sender_end(line: bytes, pos: int) -> int | None:
    """Where the sender ends: the first space outside a quoted string. None if a quote
    is still open at the end of the line (not something Exim writes)."""
    quoted = escaped = False
    for i in range(pos, len(line)):
        c = line[i]
        if escaped:
            escaped = False
        elif quoted and c == 0x5C:  # backslash: the next byte is literal
            escaped = True
        elif c == 0x22:  # "
            quoted = not quoted
        elif c == 0x20 and not quoted:
            return i
    return None


def _host_address(line: bytes, pos: int) -> str | None:
    if line[pos:pos + 1] == b"(":  # (HELO) [IP]
        return _after_helo(line, pos)
    if line[pos:pos + 1] != b"[":  # NAME: no spaces (dns_check_names_pattern vets PTR answers)
        space = line.find(b" ", pos)
        if space < 0:
            return None
        pos = space + 1
        if line[pos:pos + 1] == b"(":
            return _after_helo(line, pos)
    m = _ADDRESS.match(line, pos)
    return _canonical(m.group(1)) if m else None


def _after_helo(line: bytes, pos: int) -> str | None:
    """The address after ``(HELO) ``: the first ``) [IP]`` that ends a host field."""
    for m in _HELO_END.finditer(line, pos + 1):
        address = _ADDRESS.match(line, m.end())
        if address is not None:
            return _canonical(address.group(1))
    return None


def _canonical(raw: bytes) -> str | None:
    try:
        ip = ipaddress.ip_address(raw.decode("ascii"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
