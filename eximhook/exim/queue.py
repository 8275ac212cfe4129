"""The queue, through exim and exipick, without ever handing them a key.

exipick criteria are Perl code, and ``--show-vars`` prints values raw between quotes,
so a key with a quote or a newline could forge output. Hence: the queue is listed as
message ids only, by ``exim -bpri`` where Exim has it (4.97 and later: no Perl) or
else by exipick under fixed criteria (``-z`` frozen, ``-x`` not frozen); whether a
message is frozen, and its subject, are read from its spool ``-H`` file, where Exim
writes every ACL variable with its length (spec, "Format of spool files"); ids are
checked before they reach ``exim -Mt/-Mf/-Mrm``.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config.load import EximConfig
from ..errors import BadMessageId, EximError, NoSuchMessage
from ..model.subjects import escape

# 4.96: 6-6-2 base-62 characters (16 in all); 4.97 and later: 6-11-4 (23)
MESSAGE_ID = re.compile(rb"^[0-9A-Za-z]{6}-(?:[0-9A-Za-z]{6}-[0-9A-Za-z]{2}|[0-9A-Za-z]{11}-[0-9A-Za-z]{4})\Z")
# the first Exim whose -bpi lists message ids only (NewStuff 4.97, item 10)
IDS_SINCE = (4, 97)


@dataclass(frozen=True)
class Message:
    """What the spool says about one message."""

    id: str
    sender: str
    received: float
    frozen: bool
    acl_m: dict[str, bytes]
    recipients: list[str] = field(default_factory=list)
    headers: list[bytes] = field(default_factory=list)
    size: int = 0

    def header(self, wanted: str) -> str:
        """The first header of that name, unfolded ("" if none)."""
        for h in self.headers:
            name, _, value = h.partition(b":")
            if name.strip().lower() == wanted.lower().encode():
                return " ".join(value.decode("utf-8", "replace").split())
        return ""

    @property
    def subject(self) -> str:
        return self.header("subject")

    def of(self, ns: str, key: str, qualify_domain: str = "") -> bool:
        """Sent by the subject: the snippets' ACL variables say so, or (a sender subject,
        whatever user or host sent it) its envelope sender, qualified as Exim addresses
        its bounces, is the key (keys are lower case: ``subjects.normalize``)."""
        if ns == "sender":
            sender = self.sender if "@" in self.sender or not qualify_domain else f"{self.sender}@{qualify_domain}"
            return sender.lower() == key
        if ns == "customer":  # a member's: the snippets kept its customer (EXIMHOOK_CUSTOMER)
            return self.acl_m.get("_customer") == key.encode("utf-8", "surrogateescape")
        return self.acl_m.get("_ns") == ns.encode() and self.acl_m.get("_user") == key.encode(
            "utf-8", "surrogateescape")

    @property
    def frozen_by_us(self) -> bool:
        return self.frozen and self.acl_m.get("_eximhook") == b"frozen"


class _Cursor:
    def __init__(self, name: str, data: bytes) -> None:
        self.name, self.data, self.pos = name, data, 0

    def line(self) -> bytes:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise EximError(f"spool file {self.name} ends early")
        out, self.pos = self.data[self.pos : end], end + 1
        return out

    def take(self, size: int) -> bytes:
        """``size`` bytes that may hold newlines, then the newline that ends them."""
        out, self.pos = self.data[self.pos : self.pos + size], self.pos + size + 1
        return out

    def at(self, prefix: bytes) -> bool:
        return self.data.startswith(prefix, self.pos)


def parse_header_file(msg_id: str, data: bytes, data_size: int = 0) -> Message:
    """Parse a spool ``ID-H`` file (the fields eximhook needs)."""
    cur = _Cursor(f"{msg_id}-H", data)
    if cur.line() != f"{msg_id}-H".encode():
        raise EximError(f"spool file {msg_id}-H does not start with its name")
    cur.line()  # login uid gid
    sender = cur.line().decode("utf-8", "surrogateescape")[1:-1]
    received = float(cur.line().split()[0])
    frozen, acl_m = False, {}
    while cur.at(b"-"):
        # a second dash marks a tainted value (--aclm _user 3, --auth_id bob)
        tag, _, arg = cur.line().removeprefix(b"-").removeprefix(b"-").partition(b" ")
        if tag == b"frozen":
            frozen = True
        elif tag in (b"aclm", b"aclc"):  # each value is LENGTH bytes on lines of its own
            name, _, length = arg.rpartition(b" ")
            value = cur.take(int(length))
            if tag == b"aclm":
                acl_m[name.decode("ascii", "replace")] = value
    _skip_tree(cur)
    recipients = [cur.line().decode("utf-8", "surrogateescape").split(" ")[0] for _ in range(int(cur.line()))]
    cur.line()  # the blank line before the headers
    headers, hsize = [], 0
    while m := re.match(rb"(\d+)(.) ", data[cur.pos : cur.pos + 16]):
        size = int(m.group(1))
        cur.pos += m.end()
        text = data[cur.pos : cur.pos + size]
        cur.pos += size
        if m.group(2) != b"*":  # '*' marks a header Exim has removed
            headers.append(text)
            hsize += size
    return Message(msg_id, sender, received, frozen, acl_m, recipients, headers, hsize + data_size)


def _skip_tree(cur: _Cursor) -> None:
    """Skip the tree of delivered recipients: ``XX`` when empty, else nodes ``LR address``
    whose Y/N flags say whether a left and a right subtree follow."""
    node = cur.line()
    if node.startswith(b"XX"):
        return
    if node[0:1] == b"Y":
        _skip_tree(cur)
    if node[1:2] == b"Y":
        _skip_tree(cur)


class Exim:
    def __init__(self, binary: str, config: str | None, exipick: str, timeout: float) -> None:
        self.binary, self.config, self.exipick, self.timeout = binary, config, exipick, timeout
        self._spool: str | None = None
        self._qualify: str | None = None
        self._lists_ids: bool | None = None

    @classmethod
    def from_config(cls, cfg: EximConfig) -> Exim:
        return cls(cfg.binary, cfg.config, cfg.exipick, cfg.timeout)

    def _run(self, argv: Sequence[str]) -> bytes:
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=self.timeout, check=False)
        except FileNotFoundError as exc:
            raise EximError(f"{argv[0]} not found: set [exim] in the config") from exc
        except subprocess.TimeoutExpired as exc:
            raise EximError(f"{argv[0]} did not finish within {self.timeout:g}s") from exc
        except OSError as exc:
            raise EximError(f"cannot run {argv[0]}: {exc.strerror}") from exc
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip()[:500]
            raise EximError(f"{os.path.basename(argv[0])} {' '.join(argv[1:3])} ... exited {proc.returncode}: {said}")
        return proc.stdout

    def _exim(self, *args: str) -> bytes:
        return self._run([self.binary, *(["-C", self.config] if self.config else []), *args])

    def spool_directory(self) -> str:
        if self._spool is None:
            self._spool = self._exim("-n", "-bP", "spool_directory").decode().strip()
        return self._spool

    def qualify_domain(self) -> str:
        if self._qualify is None:
            self._qualify = self._exim("-n", "-bP", "qualify_domain").decode().strip()
        return self._qualify

    def option(self, name: str) -> str:
        """What ``exim -bP`` says of the main option ``name`` (a boolean: ``name`` or
        ``no_name``)."""
        return self._exim("-n", "-bP", name).decode("utf-8", "replace").strip()

    def authenticators(self) -> str:
        """``exim -bP authenticators``: each authenticator's options, macros substituted
        (``exim.authenticators`` reads it)."""
        return self._exim("-bP", "authenticators").decode("utf-8", "replace")

    def macro(self, name: str) -> str | None:
        """The value of the config's macro ``name`` (None: not defined)."""
        try:
            found = self._exim("-bP", "macro", name).decode("utf-8", "replace").rstrip("\n")
        except EximError:
            return None  # Exim says "macro NAME not found" and exits 1
        return found.partition("=")[2] if found.startswith(f"{name}=") else None

    def lists_ids(self) -> bool:
        """Whether this Exim lists the queue's ids itself (``-bpi``, from 4.97), as
        ``exim -bV`` says its version; asked once. Where it does not (4.96, or a binary
        that gives no version), exipick lists them."""
        if self._lists_ids is None:
            version = re.match(rb"Exim version (\d+)\.(\d+)", self._exim("-bV"))
            self._lists_ids = version is not None and (int(version[1]), int(version[2])) >= IDS_SINCE
        return self._lists_ids

    def ids(self, frozen: bool) -> list[str]:
        """Message ids in the queue, frozen or not; exipick gets only fixed criteria."""
        if self.lists_ids():
            return [m.id for m in self.queued(frozen)]
        return message_ids(self._run([self.exipick, *(["-C", self.config] if self.config else []), "-i",
                                      "-z" if frozen else "-x"]))

    def queued(self, frozen: bool) -> list[Message]:
        """The queue's messages, frozen or not, as their spool files say."""
        # -bpri: every id, unsorted; frozen or not is in the -H file, read anyway
        listed = message_ids(self._exim("-bpri")) if self.lists_ids() else self.ids(frozen)
        found = (self.message(i) for i in listed)
        return [m for m in found if m is not None and m.frozen == frozen]

    def message(self, msg_id: str) -> Message | None:
        """The message as its spool files say, or None if it has left the queue."""
        spool = os.path.join(self.spool_directory(), "input")
        for base in (spool, os.path.join(spool, msg_id[5])):  # plain or split_spool_directory
            try:
                with open(os.path.join(base, f"{msg_id}-H"), "rb") as f:
                    data = f.read()
                size = os.path.getsize(os.path.join(base, f"{msg_id}-D"))
            except FileNotFoundError:
                continue
            return parse_header_file(msg_id, data, size)
        return None

    def messages(self, ns: str, key: str, frozen: bool) -> list[Message]:
        return self.messages_of([(ns, key)], frozen)[ns, key]

    def messages_of(self, subjects: Sequence[tuple[str, str]],
                    frozen: bool) -> dict[tuple[str, str], list[Message]]:
        """Each subject's messages, from one look at the queue (each message's spool file
        is read: ``eximhook maintain`` asks about many subjects at once)."""
        found = self.queued(frozen)
        qualify = self.qualify_domain() if any(ns == "sender" for ns, _ in subjects) else ""
        return {(ns, key): [m for m in found if m.of(ns, key, qualify)] for ns, key in subjects}

    def message_ids(self, ns: str, key: str, frozen: bool) -> list[str]:
        return [m.id for m in self.messages(ns, key, frozen)]

    def frozen_bounces(self) -> list[Message]:
        """Frozen bounces (empty sender): a bounce Exim could not deliver either."""
        return [m for m in self.queued(True) if m.sender == ""]

    def act(self, option: str, ids: Sequence[str]) -> None:
        """``exim -Mt`` (thaw), ``-Mf`` (freeze) or ``-Mrm`` (remove) on checked ids."""
        self._check_ids(ids)
        for start in range(0, len(ids), 100):
            self._exim(option, *ids[start : start + 100])

    def deliver_soon(self, ids: Sequence[str]) -> None:
        """Start ``exim -M`` on ``ids`` and return at once: delivery may take long, and
        a queue runner would get there anyway; this only saves the wait for it."""
        self._check_ids(ids)
        argv = [self.binary, *(["-C", self.config] if self.config else []), "-M", *ids]
        try:
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise EximError(f"cannot run {self.binary}: {exc.strerror}") from exc

    @staticmethod
    def _check_ids(ids: Sequence[str]) -> None:
        bad = [i for i in ids if not MESSAGE_ID.match(i.encode())]
        if bad:
            raise EximError(f"not message ids: {bad!r}")

    def view(self, msg_id: str, body_lines: int = 40, raw: bool = False) -> str:
        """The message's headers and the start of its body, for a terminal: what a
        spammer wrote is shown with ``printable`` (unless ``raw``), so an escape
        sequence in it cannot drive the admin's terminal."""
        if not MESSAGE_ID.match(msg_id.encode("utf-8", "surrogateescape")):
            raise BadMessageId(f"{msg_id!r} is not an Exim message id (16 characters in 4.96, 23 from 4.97)")
        if self.message(msg_id) is None:
            raise NoSuchMessage(f"no message {msg_id} in the queue")

        def shown(data: bytes) -> str:
            return data.decode("utf-8", "replace") if raw else printable(data.decode("utf-8", "surrogateescape"))

        headers = shown(self._exim("-Mvh", msg_id))
        body = shown(self._exim("-Mvb", msg_id)).split("\n")
        more = f"\n[... {len(body) - body_lines} more lines]" if len(body) > body_lines else ""
        return f"{headers}\n{chr(10).join(body[:body_lines])}{more}\n"


def message_ids(listing: bytes) -> list[str]:
    """The message ids in a listing of one a line (exipick -i, exim -bpi); any other
    line is skipped."""
    return [raw.strip().decode() for raw in listing.split(b"\n") if MESSAGE_ID.match(raw.strip())]


def printable(text: str) -> str:
    """``text`` with its lines and tabs as they are and everything else ``escape``d:
    control characters (ESC, CR, backspace...), bytes that are not UTF-8 and a
    backslash (doubled, so no text can pass for an escape)."""
    return "\n".join("\t".join(escape(part) for part in line.split("\t")) for line in text.split("\n"))


@functools.cache
def primary_hostname(cfg: EximConfig) -> str:
    """Exim's ``primary_hostname`` (``exim -bP`` with the [exim] settings): the name this
    server gives itself in SMTP and in its Received lines, so the one a customer knows
    it by. Asked once per process: the watcher probes and the daemon mails all day."""
    try:
        words = Exim.from_config(cfg).option("primary_hostname").split()
    except EximError:
        words = []
    # Exim's own default for the option is the machine's name, so it is the best guess
    # when Exim cannot say (not installed, a config it refuses, slower than [exim]
    # timeout): a mail to a customer must not fail for a name
    return words[0] if words else os.uname().nodename
