"""Subjects are (namespace, key) pairs; this module says which keys are valid and how
to write them wherever they leave the program (lsearch files, headers, shell commands).

Keys are ``str`` decoded from bytes with ``surrogateescape`` (as ``sys.argv`` is), so
non-UTF-8 bytes from Exim survive a round trip unchanged.
"""

from __future__ import annotations

from ..errors import BadSubject

TYPE_CHECKING = False  # the hooks import this module: typing costs ~10 ms
if TYPE_CHECKING:
    import ipaddress

# auth: $authenticated_id; relay: a relay_from_hosts client (IP, IPv6 /64, RADIUS id);
# sender: an envelope sender address (bounces, volume); local: a local user who
# submits with sendmail (the login name Exim gives as $sender_ident); ip: a client
# address that fails SMTP AUTH (IPv6 grouped as relay's); net: the wider network of
# such addresses ([net] prefixes: IPv4 /24, IPv6 /48), counted beside each of them;
# login: an account as a failed SMTP AUTH names it, from any address (password
# spraying): its block refuses AUTH for it only from networks it is not known from;
# customer: the users, hosts and local users of one customer together (``engine.customers``);
# all: one subject, ``ALL_LOGINS``, every failed SMTP AUTH together (a spray of a few
# guesses at each of very many accounts): its block refuses AUTH for every account
# from the networks it is not known from, as a login block does for one
NAMESPACES = ("auth", "relay", "sender", "local", "ip", "net", "login", "customer", "all")
ALL_LOGINS = "logins"
# A namespace whose events also count against the wider network that holds the key:
# a /48 holds 65,536 /64s, each with a limit of its own (fail2ban's and CSF's answer)
WIDER = {"ip": "net"}
GLOB = frozenset("*?[")  # what makes a pattern a glob (``exempt``)
# The header the snippets add to a blocked subject's frozen mail, and the ${lookup}
# file the seeds' own ACLs read (sender and local subjects are in the cdb file only).
HEADERS = {"auth": "X-Authenticated-As", "relay": "X-Relayed-From", "local": "X-Local-Sender"}
LSEARCH_FILES = {"auth": "blocked_authenticated_users", "relay": "blocked_relay_users"}
# Whose mail the snippets freeze once they are blocked (an ip block refuses AUTH instead;
# a customer's block freezes its members' mail)
FREEZING = ("auth", "relay", "sender", "local", "customer")
# Whose block answers no request: a login's acts where the account logs in (the
# authenticator's EXIMHOOK_ALLOWED_*), not on the connection whose failure counted it,
# which the address's own block answers
SILENT = ("login", "all")

MAX_KEY_BYTES = 16384
# Exim's lsearch reads a line into a 4096-byte buffer (src/lookups/lsearch.c); a
# longer quoted key would never match, so such keys live in the cdb file only.
LSEARCH_MAX_LINE = 4000


def key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def fold(text: str) -> str:
    """``text`` with its ASCII letters in lower case, and nothing else changed: Exim's
    ``${lc:}`` and lsearch's rule, for keys (``normalize``) and for recipients told apart
    (``events.recipient_tags``)."""
    return key_bytes(text).lower().decode("utf-8", "surrogateescape")


def normalize(ns: str, key: str, ipv6_prefix: int = 64) -> str:
    """The canonical key Exim's snippets compute for the same subject.

    ASCII letters are folded to lower case, as Exim's ``${lc:}`` does and as lsearch
    compares (case-blind), so ``Bob`` cannot dodge a block on ``bob``. A relay key that
    is an IPv6 address is grouped by ``ipv6_prefix`` and written like Exim's
    ``${mask:}`` of the client's address ``/64`` (``EXIMHOOK_RELAY_KEY``:
    ``2001.0db8.0000.0001.0000.0000.0000.0000/64``).
    """
    if ns not in NAMESPACES:
        raise BadSubject(f"unknown namespace {escape(ns)!r}: use one of {', '.join(NAMESPACES)}")
    try:
        raw = key_bytes(key)
    except UnicodeEncodeError as exc:
        raise BadSubject("key holds characters that are not bytes from Exim") from exc
    if not raw:
        raise BadSubject("empty key")
    if b"\0" in raw:
        raise BadSubject("key contains NUL, which Exim can never pass")
    if len(raw) > MAX_KEY_BYTES:
        raise BadSubject(f"key is {len(raw)} bytes long; the limit is {MAX_KEY_BYTES}")
    raw = raw.lower()
    if ns == "all" and raw != ALL_LOGINS.encode():
        raise BadSubject(f"the namespace all has one key, {ALL_LOGINS}: every failed SMTP AUTH together")
    if ns == "net":
        return _network_key(raw)
    if ns in ("relay", "ip") and b":" in raw:
        raw = _group_ipv6(raw, ipv6_prefix)
    return raw.decode("utf-8", "surrogateescape")


def _group_ipv6(raw: bytes, prefix: int) -> bytes:
    import ipaddress  # only relay keys with a colon pay for this import

    try:
        addr = ipaddress.IPv6Address(raw.decode("ascii").strip("[]"))
    except ValueError:
        return raw  # a RADIUS id or another non-address key: keep it as it is
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped).encode()
    if prefix >= 128:
        return addr.compressed.encode()
    net = ipaddress.IPv6Network((addr, prefix), strict=False)
    return f"{net.network_address.exploded.replace(':', '.')}/{prefix}".encode()


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network a key or pattern names: an address, a CIDR network, or an IPv6 group
    in Exim's ``${mask:}`` form (``2001.0db8.0001.0000.0000.0000.0000.0000/64``); None for
    anything else (a RADIUS id, a user name, a glob)."""
    if not text or not (text[0].isdigit() or text[0] in "abcdef:") or not GLOB.isdisjoint(text):
        return None
    import ipaddress

    address, sep, prefix = text.partition("/")
    if address.count(".") == 7:  # Exim writes IPv6 masks with dots between the groups
        address = address.replace(".", ":")
    try:
        return ipaddress.ip_network(f"{address}/{prefix}" if sep else address, strict=False)
    except ValueError:
        return None


def _network_key(raw: bytes) -> str:
    """A ``net`` key as Exim's ``${mask:}`` writes it: ``192.0.2.0/24``,
    ``2001.0db8.0001.0000.0000.0000.0000.0000/48``; an address given with its network's
    prefix (``192.0.2.7/24``, ``2001:db8:1::/48``) is masked to it."""
    text = raw.decode("utf-8", "surrogateescape")
    net = network(text) if "/" in text else None
    if net is None:
        raise BadSubject(f"a net key is a network, such as 192.0.2.0/24 or 2001:db8:1::/48, not "
                         f"{escape(text)[:80]!r}")
    return _masked(net)


def _masked(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    if net.version == 4:
        return str(net)
    return f"{net.network_address.exploded.replace(':', '.')}/{net.prefixlen}"


def wider(ns: str, key: str, ipv4_prefix: int, ipv6_prefix: int) -> tuple[str, str] | None:
    """The wider network that holds the subject, as the snippets compute it
    (``EXIMHOOK_NET_KEY``: ``${mask:}`` of the client's address ``/24``, ``/48`` for IPv6), or
    None: a namespace not grouped (``WIDER``), or a key that is no address."""
    wide = WIDER.get(ns)
    net = None if wide is None else network(key)
    if wide is None or net is None:
        return None
    want = ipv4_prefix if net.version == 4 else ipv6_prefix
    if want >= net.prefixlen:  # the key is as wide as its network already (or no grouping): none wider
        return None
    return wide, _masked(net.supernet(new_prefix=want))


def family(ns: str) -> str:
    """The namespace whose wider network ``ns`` holds (``net``: ``ip``), else ``ns``:
    one kind of abuse (the exemptions of a network, the digest of a burst of blocks)."""
    return next((narrow for narrow, wide in WIDER.items() if wide == ns), ns)


def own_address(ns: str, key: str) -> bool:
    """A relay key that is a loopback address: the relay snippets skip connections from
    the server itself (``hosts = !@[] : ...``: webmail and other local programs that
    submit over SMTP), so a block on it never freezes anything."""
    if ns != "relay":
        return False
    import ipaddress

    try:
        return ipaddress.ip_address(key).is_loopback
    except ValueError:
        return False


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(key: str) -> str:
    """A one-line, printable rendering of ``key`` for tables, logs and mail headers.

    Control characters and bytes that are not UTF-8 become ``\\n``, ``\\xNN`` etc.;
    backslash is doubled, so two different keys never look the same.
    """
    out = []
    for ch in key:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a non-UTF-8 byte kept by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def quote(key: str) -> bytes:
    """``key`` double-quoted, as Exim's lsearch reads a key: inside, its string escapes
    (``\\\\``, ``\\"``, ``\\xNN``) carry every byte that is not printable ASCII, so no
    key can end the line or start another. ``unquote`` reads it back."""
    out = bytearray(b'"')
    for byte in key_bytes(key):
        if byte in (0x22, 0x5C):
            out += b"\\" + bytes([byte])
        elif 0x20 <= byte < 0x7F:
            out.append(byte)
        else:
            out += b"\\x%02x" % byte
    out += b'"'
    return bytes(out)


def unquote(data: bytes) -> tuple[str, bytes]:
    """The key ``quote`` wrote at the start of ``data``, and what follows it; raises
    ``ValueError`` for an unterminated key or an escape ``quote`` does not write."""
    if not data.startswith(b'"'):
        raise ValueError("a quoted key starts with a double quote")
    out, i = bytearray(), 1
    while i < len(data):
        byte = data[i]
        if byte == 0x22:
            return bytes(out).decode("utf-8", "surrogateescape"), data[i + 1 :]
        if byte == 0x5C:
            escaped = data[i + 1 : i + 2]
            if escaped in (b'"', b"\\"):
                out += escaped
                i += 2
                continue
            digits = data[i + 2 : i + 4]
            if escaped != b"x" or len(digits) != 2 or not all(c in b"0123456789abcdefABCDEF" for c in digits):
                raise ValueError(f"bad escape at byte {i + 1} of the quoted key: use \\\\, \\\" or \\xNN")
            out.append(int(digits, 16))
            i += 4
            continue
        out.append(byte)
        i += 1
    raise ValueError("the quoted key has no closing double quote")


def lsearch_line(key: str) -> bytes | None:
    """One lsearch line for ``key`` (``quote``d), or None when lsearch could not match it."""
    line = quote(key) + b"\n"
    return line if len(line) <= LSEARCH_MAX_LINE else None


def shell_quote(text: str) -> str:
    """``text`` as one shell word an admin can paste, even with control bytes in it."""
    import shlex

    if all(ch.isprintable() and not 0xDC80 <= ord(ch) <= 0xDCFF for ch in text):
        return shlex.quote(text)
    body = "".join(
        f"\\x{b:02x}" if b < 0x20 or b >= 0x7F or b in (0x27, 0x5C) else chr(b)
        for b in key_bytes(text)
    )
    return f"$'{body}'"
