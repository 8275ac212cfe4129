"""``eximhook relaytest receive``: what comes back to the probe mailbox, handed over
by Exim's pipe transport on stdin (exim-snippets/relaytest-transport.conf).

The message may be anything: a probe a customer host relayed back, a bounce of one,
a forgery, junk. Only the first ``MAX_READ`` bytes are looked at (a bounce quoting a
probe is a few KiB); the rest is read and dropped, so Exim sees the whole message
taken. Tokens are looked for in the raw bytes and in every decoded part (a relay may
re-encode the body, a bounce may quote it base64'd). Each token must carry our
signature, be younger than ``[relaytest] unknown_after``, name a customer address and
be the host's outstanding probe: anything else is logged and changes nothing.

A message with an empty envelope sender, or a delivery-status report, is a bounce: the
host refused the probe (OK). Anything else that carries a good token is the probe
itself, relayed: the host is an open relay (BLOCK).
"""

from __future__ import annotations

import email
import email.policy
import os
import re
from email.header import decode_header, make_header
from typing import TYPE_CHECKING, BinaryIO

from . import hosts, signing, table

if TYPE_CHECKING:
    from ..config.load import Config
    from ..log import Logger
    from ..storage.store import Store

MAX_READ = 1 << 20
_MAX_PARTS = 50  # a hostile message may nest thousands
_CHUNK = 1 << 16
_DSN = re.compile(rb"(?im)^content-type:\s*multipart/report\s*;(?:[^\n]|\n[ \t])*report-type\s*=\s*\"?delivery-status")
_SKEW = 300.0  # a token from the future: our clocks may differ this much between hosts


def read_message(stream: BinaryIO, limit: int = MAX_READ) -> bytes:
    """The first ``limit`` bytes of ``stream``; the rest is read and dropped."""
    data = stream.read(limit)
    while stream.read(_CHUNK):
        pass
    return data


def tokens(data: bytes) -> list[signing.Token]:
    """The tokens in the message, raw and decoded (unverified; at most 10)."""
    found = signing.find(data)
    try:
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        for n, part in enumerate(msg.walk()):
            if n == _MAX_PARTS:
                break
            payload = part.get_payload(decode=True)
            # a relay may have re-encoded a header into encoded words (RFC 2047)
            decoded = [str(make_header(decode_header(v))).encode("utf-8", "replace")
                       for v in part.values() if isinstance(v, str) and "=?" in v]
            for chunk in [*decoded, payload if isinstance(payload, bytes) else b""]:
                found += [t for t in signing.find(chunk) if t not in found]
    except Exception:  # hostile input: what the raw scan found stands
        pass
    return found[:10]


def is_bounce(data: bytes, sender: str | None) -> bool:
    """Empty envelope sender (``--sender=``), or a delivery-status report in the headers."""
    headers = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    return sender == "" or _DSN.search(headers) is not None


def process(cfg: Config, store: Store, data: bytes, sender: str | None, now: float, log: Logger) -> list[str]:
    """Act on every token of the message; what each did, as logged."""
    from ..model import subjects

    rt = cfg.relaytest
    found = tokens(data)
    if not found:
        log.log("notice", f"relaytest receive: no probe token in a message from <{subjects.escape(sender or '')}> "
                          f"({len(data)} bytes): ignored")
        return []
    key = signing.load_key(rt.key_file)
    if rt.contacts and not os.access(rt.contacts, os.R_OK):
        log.log("err", f"relaytest receive: cannot read [relaytest] contacts {rt.contacts}: an open relay's "
                       "postmaster is not told, only the abuse desk")
    bounce = is_bounce(data, sender)
    what = "bounce" if bounce else "return"
    results = []
    for token in found:
        if not signing.valid(key, token):
            result = "ignored: bad signature (forged, or made with another key)"
        elif now - token.time > rt.unknown_after or token.time - now > _SKEW:
            result = f"ignored: stale (probe time {token.time}, [relaytest] unknown_after {rt.unknown_after:g}s)"
        elif not hosts.is_customer(token.ip, rt.networks):
            result = "ignored: not in [relaytest] networks"
        else:
            postmaster = None if bounce else hosts.contact(rt.contacts, token.ip)
            result = table.returned(store, token.ip, token.probe_id, token.time, now, bounce, postmaster, rt.abuse)
        level = "warning" if result == "blocked" else "notice"
        log.log(level, f"relaytest receive: {what} of probe {token.probe_id} of {token.ip}: {result}")
        results.append(result)
    return results
