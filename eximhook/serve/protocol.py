"""The daemon's wire format: one request line from Exim's ``${readsocket}``, one token back.

    request        = OP *(SP ARG) [CR] LF   (or the end of the stream: by default Exim
                                             shuts down its side after the request)
    check-blocked  NS KEY
    record-invalid NS KEY [rcpt=V] [ip=V]
    record         KIND NS KEY [evidence=V] [ip=V] [n=V] [user=V]
    message        NS KEY n=V [sender=V] [mid=V] [ip=V] [id=V] [rcpts=V]
    bounce         SENDER [mid=V] [failed=V] [remote=V] [ip=V]
    delivery       NS KEY id=V rcpt=V outcome=V [sender=V] [evidence=V]
    frozen         NS KEY id=V
    ping

``message`` is one message a subject sent (the DATA ACL, acl_not_smtp): ``n`` recipients
(a decimal number), its envelope ``sender``, its Message-ID header ``mid``, Exim id
``id`` and recipients ``rcpts`` (Exim's ``$recipients``, for the distinct recipients).
A failed AUTH (``record authfail ip KEY``) names the account it tried in ``user``
(the snippets' ``EXIMHOOK_FAIL_USER``, a ``login`` key), counted against it too.
``delivery`` is the outcome of one remote recipient of a message the subject sent (the
transport's event_action): ``outcome`` ``ok``, ``defer`` or ``fail``, the refusal's text
in ``evidence``. ``bounce`` is one bounce to ``SENDER`` (a namespace-``sender`` key); ``mid`` is
the bounce's References header, whose last id names the bounced message; ``remote`` is
``1`` for a report another MTA sent over SMTP (from ``ip``), counted only if ``mid``
names a message we remember sending, once per reporting network (``engine.events.bounce_subjects_in``).

OP, NS and KIND are words from fixed lists. KEY and every V are base64 (the snippets
write ``${base64:$acl_m_user}``): they come from the SMTP client and may hold any byte,
and Exim puts the request on the socket as it is, unquoted. Base64 is reversible and
has no space or newline, so no value can end a field or the request. An empty V means
"not given". Decoding is strict: only base64 as ``${base64:}`` writes it (canonical,
padded to a multiple of 4), never a stray character skipped.

A request longer than ``[serve] max_request`` is still counted: a count is never lost
to the size of its evidence. The daemon keeps the request's first ``max_request``
bytes (``parse(..., cut=True)``). OP, NS and KEY must be whole in them, else the answer
is ``E``. The evidence value the limit falls in (``rcpt``, ``evidence``, ``mid``,
``failed``) is kept as far as it goes and marked ``evidence.CUT_END``; any other value cut
there, and every field after it, is left out (so the snippets send the evidence last).
The snippets cut every value before they encode it (macros.conf,
``EXIMHOOK_EVIDENCE_MAX``), so only a hand-made request ever gets here.

The answer is one token without a newline: ``1`` or ``0``, as the hooks print; ``pong``;
or ``E`` for a request that breaks these rules (the daemon logs why; the snippets then
count through their ``${run}`` hook).
"""

from __future__ import annotations

import binascii

from ..engine.events import OUTCOMES
from ..errors import BadRequest
from ..exim.queue import MESSAGE_ID
from ..model.evidence import CUT_END
from ..model.policy import COUNTED
from ..model.records import Request, is_weight
from ..model.subjects import NAMESPACES, escape

YES, NO, PONG, ERROR = b"1", b"0", b"pong", b"E"
# The kinds of event the generic "record" counts; "invalid" is record-invalid's.
KINDS = COUNTED
_FIELDS = {
    "check-blocked": (),
    "record-invalid": ("rcpt", "ip"),
    "record": ("evidence", "ip", "n", "user"),
    "message": ("n", "sender", "mid", "ip", "id", "rcpts"),
    "bounce": ("mid", "failed", "remote", "ip"),
    "delivery": ("id", "rcpt", "outcome", "sender", "evidence"),
    "frozen": ("id",),
}
_REQUIRED = {"message": ("n",), "frozen": ("id",), "delivery": ("id", "rcpt", "outcome")}
# The requests whose snippets count through their ${run} hook when the daemon does not
# answer in time: one whose client gave up waiting is not counted again (``Connection``).
# The others (a failed AUTH, a spam verdict, a delivery outcome) have no such hook, and
# count when a restarted daemon finds them.
FALLBACK = (b"record-invalid", b"message", b"bounce")
# Evidence that may be cut: text kept for the admin, or a header whose tail names a
# message. The others name a subject or a number, and are whole or left out.
EVIDENCE = ("rcpt", "evidence", "mid", "failed", "rcpts")


def _decode(name: str, value: bytes) -> str:
    try:
        raw = binascii.a2b_base64(value, strict_mode=True) if value else b""
        # strict_mode still takes padding past the end ("Ym9i=") and non-zero spare
        # bits ("Ym9="): only the one spelling ${base64:} writes is base64 here
        if _b64_raw(raw) != value:
            raise binascii.Error("not as ${base64:} writes it")
    except binascii.Error as exc:
        shown = escape(value[:40].decode("latin-1"))
        raise BadRequest(f"{name} is not base64 ({exc}): {shown!r}") from None
    return raw.decode("utf-8", "surrogateescape")


def _cut(words: list[bytes], start: int) -> None:
    """The last of ``words`` was cut by ``[serve] max_request``: keep the start of an
    evidence value, marked; drop anything else (a subject, a number, half a name)."""
    if len(words) <= start:
        raise BadRequest("request cut at [serve] max_request before its KEY ended")
    name, sep, value = words.pop().partition(b"=")
    field = name.decode("latin-1")
    if sep and field in EVIDENCE:
        text = _decode(field, value[: len(value) - len(value) % 4])  # the whole base64 quads
        words.append(name + b"=" + _b64(text + CUT_END))


def parse(line: bytes, cut: bool = False) -> Request:
    """Decode one request (without its line ending); raises ``BadRequest``. ``cut``:
    the line is the first ``[serve] max_request`` bytes of a longer request."""
    words = line.removesuffix(b"\r").split(b" ")
    op = words[0].decode("latin-1")
    if cut:  # the words up to KEY (record has KIND, bounce has no NS) must be whole
        _cut(words, {"record": 4, "bounce": 2}.get(op, 3))
    if op == "ping" and len(words) == 1:
        return Request(op)
    if op not in _FIELDS:
        raise BadRequest(f"unknown operation {escape(op[:40])!r}")
    kind = ""
    if op == "record":
        if len(words) < 2 or words[1].decode("latin-1") not in KINDS:
            raise BadRequest(f"record needs a kind: one of {', '.join(KINDS)}")
        kind = words.pop(1).decode("latin-1")
    if op == "bounce":  # its one subject is always a sender address
        words.insert(1, b"sender")
    if len(words) < 3:
        raise BadRequest(f"{op} needs NS and KEY" if op != "bounce" else "bounce needs SENDER")
    ns = words[1].decode("latin-1")
    if ns not in NAMESPACES:
        raise BadRequest(f"unknown namespace {escape(ns[:40])!r}")
    key = _decode("KEY", words[2])
    fields: dict[str, str] = {}
    for word in words[3:]:
        name, sep, value = word.partition(b"=")
        field = name.decode("latin-1")
        if not sep or field not in _FIELDS[op]:
            raise BadRequest(f"{op} takes no argument {escape(field[:40])!r}")
        if field in fields:
            raise BadRequest(f"{field} given twice")
        fields[field] = _decode(field, value)
    for needed in _REQUIRED.get(op, ()):
        if not fields.get(needed):
            raise BadRequest(f"{op} needs {needed}=")
    if fields.get("id") and not MESSAGE_ID.match(fields["id"].encode("utf-8", "surrogateescape")):
        raise BadRequest(f"id {escape(fields['id'][:40])!r} is not an Exim message id")
    if "n" in fields and not is_weight(fields["n"]):
        raise BadRequest(f"n {escape(fields['n'][:40])!r} is not a number of recipients")
    if op == "delivery" and fields["outcome"] not in OUTCOMES:
        raise BadRequest(f"outcome {escape(fields['outcome'][:40])!r} is none of {', '.join(OUTCOMES)}")
    return Request(op, ns, key, kind or ("invalid" if op == "record-invalid" else ""), fields)


def encode(op: str, ns: str = "", key: str = "", *, kind: str = "", **fields: str) -> bytes:
    """The request line for ``op``, as the snippets build it (for tests, benchmarks and
    ``eximhook serve --check``)."""
    if op == "ping":
        return b"ping\n"
    words = [op.encode(), *([kind.encode()] if kind else []), *([ns.encode()] if ns else []), _b64(key)]
    words += [name.encode() + b"=" + _b64(value) for name, value in fields.items()]
    return b" ".join(words) + b"\n"


def _b64(text: str) -> bytes:
    return _b64_raw(text.encode("utf-8", "surrogateescape"))


def _b64_raw(raw: bytes) -> bytes:
    return binascii.b2a_base64(raw, newline=False)
