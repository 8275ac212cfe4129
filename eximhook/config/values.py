"""Checks and conversions of TOML values, shared by the config's sections.

Each takes the raw TOML value and returns the converted one, or raises ``ValueError``
with what is wrong; the caller adds the file and the dotted key.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from ..model.policy import MODES
from ..periods import parse_period


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def abs_path(value: Any) -> str:
    if not os.path.isabs(text(value)):
        raise ValueError(f"must be an absolute path, not {value!r} (Exim runs hooks in its spool)")
    return str(value)


def opt_abs_path(value: Any) -> str | None:
    return None if value == "" else abs_path(value)


def opt_text(value: Any) -> str | None:
    return None if value == "" else text(value)


def owner(value: Any) -> str | None:
    """``user[:group]``, both existing: a typo would lock every hook out of the store."""
    spec = opt_text(value)
    if spec is None:
        return None
    import grp
    import pwd

    user, _, group = spec.partition(":")
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"is {spec!r}, but there is no user {user!r}") from None
    try:
        if group:
            grp.getgrnam(group)
    except KeyError:
        raise ValueError(f"is {spec!r}, but there is no group {group!r}") from None
    return spec


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


MIN_MAP_SIZE = 1 << 20


def map_size(value: Any) -> int:
    size = positive_int(value)
    if size < MIN_MAP_SIZE:
        raise ValueError(f"is {size} bytes; it must be at least {MIN_MAP_SIZE} (1 MiB): LMDB needs room for "
                         "its own pages before the first block, and the map doubles by itself when full")
    return size


def budget(value: Any) -> int:
    """A size in bytes, or with a unit: ``"256M"``, ``"1G"`` (binary units); at least 1 MiB."""
    size = value
    if isinstance(value, str):
        units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
        text = value.strip().lower().removesuffix("b").removesuffix("i")
        try:
            size = int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)
        except ValueError:
            size = -1
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_MAP_SIZE:
        raise ValueError(f'must be a size of at least {MIN_MAP_SIZE} bytes (1 MiB), in bytes or with a unit: '
                         '"256M", "1G"')
    return size


def seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError("must be a number of seconds above 0")
    return float(value)


def period(value: Any) -> float:
    if isinstance(value, str):
        return parse_period(value)
    return seconds(value)


def period_or_off(value: Any) -> float:
    """A period, or 0 (``"0"``): off."""
    if not isinstance(value, bool) and value in (0, "0"):
        return 0.0
    return period(value)


def factor(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        raise ValueError("must be a number of at least 1 (1: every block lasts the same)")
    return float(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def fail_policy(value: Any) -> str:
    if value not in ("open", "closed"):
        raise ValueError('must be "open" or "closed"')
    return str(value)


def argv(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a list of strings, such as ["/usr/sbin/exim", "-f", "root"]')
    abs_path(value[0])
    return tuple(value)


def socket_path(value: Any) -> str:
    path = abs_path(value)
    if len(path.encode()) > 107:  # sun_path holds 108 bytes with the final NUL
        raise ValueError(f"is {len(path.encode())} bytes long; a Unix socket path holds at most 107")
    return path


def ipv6_prefix(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 128:
        raise ValueError("must be a prefix length from 1 to 128 (128: no grouping)")
    return value


def ipv4_prefix(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
        raise ValueError("must be a prefix length from 1 to 32 (32: no grouping)")
    return value


def count(value: Any) -> int:
    """A whole number, 0 included (0: off)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number (0: off)")
    return value



def owner_patterns(value: Any) -> tuple[tuple[str, str], ...]:
    """``{auth = "$key", local = "$key@example.com"}``: per namespace, how to make the
    owner's address from the key (see ``owner``)."""
    from ..model.placeholders import PATTERN_PLACEHOLDERS, problem
    from ..model.subjects import NAMESPACES

    if not isinstance(value, dict):
        raise ValueError('must be a table such as {auth = "$key"}')
    for ns, pattern in value.items():
        if ns not in NAMESPACES:
            raise ValueError(f"has {ns!r}, which is not a namespace ({', '.join(NAMESPACES)})")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{ns} must be a non-empty string such as \"$key\"")
        found = problem(pattern, PATTERN_PLACEHOLDERS)
        if found:
            raise ValueError(f"{ns}: {found}")
    return tuple(sorted(value.items()))


def mode(value: Any) -> str:
    if value not in MODES:
        raise ValueError('must be "enforce" or "shadow"')
    return str(value)



def table(path: str, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where} must be a table ([{where}])")
    return value



def size_kib(value: Any) -> int:
    """A size as Exim counts ``$spool_space``, in KiB: a number of KiB, or a string
    with a unit, ``"500M"``, ``"2G"`` (``"0"``: none)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    units = {"k": 1, "m": 1024, "g": 1024 ** 2, "t": 1024 ** 3}
    if isinstance(value, str):
        text = value.strip().lower().removesuffix("b").removesuffix("i")
        number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "k")
        try:
            amount = float(number)
        except ValueError:
            amount = -1.0
        if amount >= 0:
            return int(amount * units[unit])
    raise ValueError('must be a size in KiB, or with a unit: "500M", "2G" ("0": none)')


def fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError("must be a fraction from 0 (off) up to, not including, 1")
    return float(value)


def port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError("must be a TCP port from 1 to 65535")
    return value


def networks(value: Any) -> tuple[str, ...]:
    """A list of networks in CIDR notation (``["192.0.2.0/24", "2001:db8::/32"]``),
    normalised; a host address is a /32 (/128); one with its host part set is refused
    (``model.networks.parse``)."""
    from ..model.networks import parse

    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise ValueError('must be a list of networks, such as ["192.0.2.0/24", "2001:db8::/32"]')
    try:
        return tuple(dict.fromkeys(str(net) for net in parse(value)))
    except ValueError as exc:
        raise ValueError(f"has {exc}") from None


def address(value: Any) -> str:
    """A mail address, local@domain, as an SMTP envelope takes it (no brackets, spaces or controls)."""
    addr = text(value)
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or any(c.isspace() or c in "<>\"," or ord(c) < 32 for c in addr):
        raise ValueError(f"is {addr!r}; it must be an address such as relaytest@mx.example.net")
    return addr


def opt_address(value: Any) -> str:
    """An address, or "" (the default the config derives)."""
    return "" if value == "" else address(value)


def opt_path(value: Any) -> str:
    """An absolute path, or "" (the default the config derives)."""
    return "" if value == "" else abs_path(value)


def backend(value: Any) -> str:
    if value not in ("lmdb", "redis"):
        raise ValueError('must be "lmdb" (this machine\'s store) or "redis" (counters and blocks shared by relays)')
    return str(value)


def redis_url(value: Any) -> str:
    """"" (unset), or a URL redis-py opens: ``redis://[[user]:password@]host[:port][/db]``,
    ``rediss://`` (TLS) or ``unix://[[user]:password@]/path/to/socket[?db=N]``.
    Parsed here, never connected to: the config is read where Redis may be down.
    Whether it must name a host depends on ``redis_sentinels`` (``config._check_redis``)."""
    from urllib.parse import parse_qs, urlsplit

    if value == "":
        return ""
    url = text(value)
    example = "such as redis://127.0.0.1:6379/0, rediss://redis.example.net/0 or unix:///run/redis/redis.sock"
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is no number, or out of range, raises here
        query = parse_qs(parts.query, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ValueError(f"is not a URL ({exc}), {example}") from None
    db = query.get("db", [])
    if parts.scheme in ("redis", "rediss"):
        path = parts.path.removeprefix("/")
        if path:
            db.append(path)
    elif parts.scheme == "unix":
        if parts.hostname or port is not None or not os.path.isabs(parts.path):
            raise ValueError(f"{url!r} must name an absolute socket path after unix:// (unix:///path), {example}")
    else:
        raise ValueError(f"{url!r} is not a redis://, rediss:// or unix:// URL, {example}")
    if any(not (d.isascii() and d.isdigit()) for d in db):
        raise ValueError(f"{url!r}: the database must be a number, {example}")
    return url


def sentinels(value: Any) -> tuple[tuple[str, int], ...]:
    """``["192.0.2.1:26379", "[2001:db8::1]:26379"]``: the Sentinels to ask for the
    master's address, as (host, port); ``[]``: none (off)."""
    from urllib.parse import urlsplit

    example = 'such as ["192.0.2.1:26379", "192.0.2.2:26379", "[2001:db8::3]:26379"]'
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValueError(f"must be a list of \"host:port\" strings, {example}")
    out = []
    for addr in value:
        try:
            parts = urlsplit(f"//{addr}")
            port = parts.port
        except ValueError:
            port = None
        else:
            if parts.hostname and port and parts.netloc == addr and not parts.username and not parts.password:
                out.append((parts.hostname, port))
                continue
        raise ValueError(f"has {addr!r}, which is no \"host:port\" (an IPv6 address in brackets), {example}")
    return tuple(out)


def has_password(url: str) -> bool:
    """Does ``url`` hold a password, in its user part or a ``password=`` parameter?"""
    from urllib.parse import parse_qsl, urlsplit

    query = url.partition("?")[2]
    return urlsplit(url).password is not None or any(n == "password" for n, _ in parse_qsl(query))


def shown_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, in the user part and in a
    ``password=`` parameter (redis-py takes both): for check-config and the logs."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    parts = urlsplit(url)
    if parts.password is not None:
        user = parts.username or ""
        url = parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}").geturl()
    base, _, query = url.partition("?")  # by hand: geturl() drops the "//" of unix:///path
    fields = parse_qsl(query, keep_blank_values=True)
    if any(name == "password" for name, _ in fields):
        url = base + "?" + urlencode([(n, "***" if n == "password" else v) for n, v in fields], safe="*/")
    return url
