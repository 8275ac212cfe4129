"""Both doors are one path: a ``${run}`` hook's argv and the daemon's request line for the
same event are the same ``Request`` (``hooks.request``, ``serve.protocol.parse``), and
``engine.events`` turns a ``Request`` into counts for both. Keys, recipients and
headers may hold any text, non-UTF-8 bytes (surrogate-escaped) included."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eximhook import hooks
from eximhook.model.records import Request
from eximhook.serve import protocol

# what a hook's argv can hold: any bytes but NUL (an argv word ends there), as Python
# gives them (surrogateescape: a non-UTF-8 byte becomes a lone surrogate)
TEXT = st.binary(min_size=1, max_size=60).filter(lambda b: b"\0" not in b).map(
    lambda b: b.decode("utf-8", "surrogateescape"))
IP = st.sampled_from(["192.0.2.1", "2001:db8::1", ""])
MID = st.sampled_from(["1xVbPi-0005Ww-2y", "<a@b> <c@d>", ""])


def door(line: bytes) -> Request:
    """What the daemon makes of a request line (``Server.handle``: parse, then its keys
    normalized)."""
    req = protocol.parse(line.removesuffix(b"\n"))
    req.normalize(64)
    return req


def same(a: Request, b: Request) -> bool:
    return (a.op, a.ns, a.key, a.kind, a.fields) == (b.op, b.ns, b.key, b.kind, b.fields)


@given(ns=st.sampled_from(["auth", "relay"]), key=TEXT, rcpt=TEXT, ip=IP)
def test_an_invalid_recipient_is_one_request_by_either_door(ns: str, key: str, rcpt: str, ip: str) -> None:
    if ns == "relay":
        key = "192.0.2.7"
    by_hook, fallback = hooks.request("record-invalid", [ns, key, "--rcpt", rcpt, "--ip", ip, "--fallback"], 64)
    assert fallback
    assert same(by_hook, door(protocol.encode("record-invalid", ns, key, rcpt=rcpt, ip=ip)))


@given(key=TEXT, n=st.integers(1, (1 << 31) - 1), sender=TEXT, mid=MID, ip=IP, rcpts=TEXT)
def test_a_message_is_one_request_by_either_door(key: str, n: int, sender: str, mid: str, ip: str,
                                                 rcpts: str) -> None:
    by_hook, _ = hooks.request("record-message", ["auth", key, "--count", str(n), "--sender", sender, "--mid", mid,
                                                  "--ip", ip, "--id", "1xVbPi-0005Ww-2y", "--rcpts", rcpts], 64)
    line = protocol.encode("message", "auth", key, n=str(n), sender=sender, mid=mid, ip=ip, id="1xVbPi-0005Ww-2y",
                           rcpts=rcpts)
    assert same(by_hook, door(line))


@given(sender=TEXT, mid=MID, failed=TEXT, remote=st.booleans())
def test_a_bounce_is_one_request_by_either_door(sender: str, mid: str, failed: str, remote: bool) -> None:
    argv = [sender, "--mid", mid, "--failed", failed, *(["--remote"] if remote else [])]
    by_hook, _ = hooks.request("record-bounce", argv, 64)
    line = protocol.encode("bounce", key=sender, mid=mid, failed=failed, **({"remote": "1"} if remote else {}))
    assert same(by_hook, door(line))


def test_a_check_is_one_request_by_either_door() -> None:
    assert same(hooks.request("check-blocked", ["auth", "bob"], 64)[0],
                door(protocol.encode("check-blocked", "auth", "bob")))


def test_recipients_are_told_apart_as_exim_compares_them() -> None:
    """Distinct recipients (rcpts) fold ASCII letters only, as Exim's ``${lc:}`` and the
    subjects' keys do: ``Bob@`` is ``bob@``, while ``Ärger@`` and ``ärger@`` are two
    mailboxes (``str.lower`` made them one); a repeated address counts once."""
    from eximhook.engine.events import recipient_tags

    tags = recipient_tags("Bob@example.com, bob@EXAMPLE.com,Ärger@example.com, ärger@example.com", 4, "id")
    assert len(tags) == 3
