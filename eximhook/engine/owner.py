"""The owner of a subject: where the owner's notification goes (``[owner]``).

The admin maps subjects to addresses in a lookup file, or gives a pattern per namespace
that makes the address from the key: ``"$key"`` for authenticated ids that are
addresses, ``"postmaster@$domain"`` for the domain's owner. The address is looked up as
the block is made, so that the owner's mail is queued in the block's own transaction
(``Store._block_in``) and sent exactly once, as the abuse desk's is. None found, none is
queued (the audit log says so), and the abuse desk is told alone.

The lookup file holds one subject per line, ``NS:KEY ADDRESS``::

    # comment
    auth:bob@example.com      bob.private@example.org
    relay:192.0.2.7           noc@customer.example
    auth:"name with spaces"   someone@example.org

KEY runs to the first space or tab, or is double-quoted as Exim's lsearch quotes a key
(``subjects.quote``: ``\\"``, ``\\\\`` and ``\\xNN`` inside) when it holds a space, a tab,
a leading quote or bytes that are not printable ASCII. Keys are normalised as eximhook
normalises subjects (ASCII lower case, IPv6 relay hosts by ``[relay] ipv6_prefix``). The
first line for a subject wins.
"""

from __future__ import annotations

import re
import string

from ..errors import BadSubject
from ..model.subjects import NAMESPACES, escape, normalize, unquote

TYPE_CHECKING = False  # a hook imports this module when it blocks: typing costs ~10 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ..config.load import Config
    from ..log import Logger

# A plain user@domain and nothing else: the address is a sendmail argument, so no leading
# "-" (an option), no comma (a list), no quotes, spaces, pipes or slashes (a key from a
# client can reach here through a pattern), ASCII only.
_ATOM = r"[A-Za-z0-9_+=-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"(?!-){_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*", re.ASCII)
Entries = dict[tuple[str, str], str]


def address(text: str) -> str | None:
    """``text`` if it is a plain address eximhook mails, else None."""
    local = text.rpartition("@")[0]
    return text if len(text) <= 254 and len(local) <= 64 and _ADDRESS.fullmatch(text) else None


def from_pattern(pattern: str, key: str) -> str | None:
    """The address ``pattern`` makes of ``key``, if that is an address."""
    local, at, domain = key.rpartition("@")
    return address(string.Template(pattern).substitute(key=key, local=local, domain=domain if at else ""))


def read(path: str, ipv6_prefix: int, value: Callable[[str], str | None] | None = None,
         what: str = "ADDRESS") -> tuple[Entries, list[str]]:
    """The lookup file's entries, and what is wrong with the lines left out ("line N:
    ..."); ``OSError`` if it cannot be read. ``value`` checks what follows a key (an
    ``address`` by default; ``engine.customers`` reads its lookup file here too), as
    ``what`` names it."""
    with open(path, "rb") as f:
        data = f.read()
    entries: Entries = {}
    where: dict[tuple[str, str], int] = {}
    problems = []
    for n, line in enumerate(data.split(b"\n"), 1):
        line = line.strip(b" \t\r")
        if not line or line.startswith(b"#"):
            continue
        try:
            ns, key, to = _entry(line, ipv6_prefix, value or address, what)
        except ValueError as exc:
            problems.append(f"line {n}: {exc}")
            continue
        if (ns, key) in entries:
            problems.append(f"line {n}: {ns} {escape(key)} is on line {where[ns, key]} already (the first one counts)")
            continue
        entries[ns, key], where[ns, key] = to, n
    return entries, problems


def _entry(line: bytes, ipv6_prefix: int, value: Callable[[str], str | None], what: str) -> tuple[str, str, str]:
    raw_ns, sep, rest = line.partition(b":")
    ns = raw_ns.decode("ascii", "replace")
    if not sep or ns not in NAMESPACES:
        raise ValueError(f"not 'NS:KEY {what}' with NS one of {', '.join(NAMESPACES)}")
    if rest.startswith(b'"'):
        key, after = unquote(rest)
    else:
        cut = min((i for i in (rest.find(b" "), rest.find(b"\t")) if i >= 0), default=len(rest))
        key, after = rest[:cut].decode("utf-8", "surrogateescape"), rest[cut:]
    if after[:1] not in (b" ", b"\t") or not after.strip():
        raise ValueError(f"no {what.lower()} after the key (NS:KEY {what})")
    raw = after.strip(b" \t").decode("ascii", "replace")
    to = value(raw)
    if to is None:
        raise ValueError(f"{escape(raw)!r} is not a plain {what.lower()}" + (
            " (user@domain: letters, digits, . _ + = -)" if value is address else ""))
    try:
        return ns, normalize(ns, key, ipv6_prefix), to
    except BadSubject as exc:
        raise ValueError(str(exc)) from None


def resolve(ns: str, key: str, *, lookup: str | None, patterns: Mapping[str, str], ipv6_prefix: int,
            log: Logger) -> str | None:
    """The owner's address: the lookup file's, else the namespace's pattern's, else
    None. A lookup file that cannot be read, or lines of it that do not parse, are
    logged; what parses still counts."""
    if lookup:
        try:
            entries, problems = read(lookup, ipv6_prefix)
        except OSError as exc:
            entries, problems = {}, [f"cannot read it: {exc.strerror}"]
        if problems:
            log.log("err", f"[owner] lookup {lookup}: {problems[0]}" + (
                f" (and {len(problems) - 1} more)" if len(problems) > 1 else "") + "; eximhook check-config shows all")
        if (ns, key) in entries:
            return entries[ns, key]
    found = from_pattern(patterns[ns], key) if ns in patterns else None
    if found is None:
        log.log("notice", f"no owner address for {ns} {key} ([owner] lookup and pattern): only the abuse desk is told")
    return found


def resolver(cfg: Config, log: Logger) -> Callable[[str, str], str | None]:
    """``resolve`` with the config's settings, for ``engine.settle`` and ``actions.block``."""
    patterns = dict(cfg.owner.pattern)
    return lambda ns, key: resolve(ns, key, lookup=cfg.owner.lookup, patterns=patterns,
                                   ipv6_prefix=cfg.relay.ipv6_prefix, log=log)
