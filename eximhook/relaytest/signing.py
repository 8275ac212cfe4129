"""The probe token: the host's address, the probe time and the probe id, signed with
HMAC-SHA256 under the key in ``[relaytest] key_file``.

``ehp1-ID-TIME-ADDR-SIG``: lower-case hex and digits joined by dashes, no spaces, so
that a relay that refolds headers or rewraps text cannot split it, and one regex finds
it in a header, a body or a bounce that quotes either. ADDR is the packed address in
hex (8 digits for IPv4, 32 for IPv6), so no colon or dot of an address can be mangled.
A valid signature proves only that we made the token; that it is the host's current
probe, not yet used, and not stale is the table's business (``table.returned``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from typing import NamedTuple

from ..errors import ConfigError

PATTERN = re.compile(rb"ehp1-([0-9a-f]{16})-([0-9]{1,12})-([0-9a-f]{32}|[0-9a-f]{8})-([0-9a-f]{64})")
MIN_KEY = 16  # bytes; `head -c 32 /dev/urandom | base64` gives 44


class Token(NamedTuple):
    probe_id: str
    time: int
    ip: str
    sig: str


def load_key(path: str) -> bytes:
    """The key: the file's bytes, surrounding whitespace removed."""
    try:
        with open(path, "rb") as f:
            key = f.read(4097).strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the relay-test key ([relaytest] key_file): {exc.strerror}; make one "
                          "with: head -c 32 /dev/urandom | base64 > FILE (root:Debian-exim, mode 0640)") from exc
    if len(key) < MIN_KEY or len(key) > 4096:
        raise ConfigError(f"{path}: the relay-test key ([relaytest] key_file) must hold {MIN_KEY} to 4096 bytes; "
                          "make one with: head -c 32 /dev/urandom | base64")
    return key


def _sign(key: bytes, probe_id: str, time: int, ip: str) -> str:
    return hmac.new(key, f"ehp1\0{probe_id}\0{time}\0{ip}".encode(), hashlib.sha256).hexdigest()


def make(key: bytes, ip: str, time: int, probe_id: str) -> str:
    packed = ipaddress.ip_address(ip).packed.hex()
    return f"ehp1-{probe_id}-{time}-{packed}-{_sign(key, probe_id, time, ip)}"


def find(data: bytes, most: int = 10) -> list[Token]:
    """The distinct tokens in ``data``, in order, at most ``most`` (not yet verified)."""
    out: list[Token] = []
    for m in PATTERN.finditer(data):
        probe_id, time, packed, sig = (g.decode() for g in m.groups())
        token = Token(probe_id, int(time), str(ipaddress.ip_address(bytes.fromhex(packed))), sig)
        if token not in out:
            out.append(token)
            if len(out) == most:
                break
    return out


def valid(key: bytes, token: Token) -> bool:
    return hmac.compare_digest(_sign(key, token.probe_id, token.time, token.ip), token.sig)
