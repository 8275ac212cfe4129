"""A sendmail stand-in and what it received (the ``mailbox`` fixture installs it)."""

from __future__ import annotations

import email
import email.message
import email.policy
from pathlib import Path

# One file per message (named by time and pid, so concurrent senders never overwrite
# each other and a duplicate cannot hide; renamed into place whole, so a test never
# reads half a message); fails while FAIL exists; hangs while HANG exists; takes the
# message and then hangs while SLOW exists. (The hang is what those tests are about:
# eximhook kills it at [notify] timeout, or the test does; 30 s only bounds an orphan.)
STAND_IN = """#!/bin/sh
[ -e "{dir}/HANG" ] && sleep 30
[ -e "{dir}/FAIL" ] && {{ echo "stand-in failure" ; exit 75 ; }}
{{ echo "ARGV: $*"; cat; }} > "{dir}/out/.$$.tmp"
mv "{dir}/out/.$$.tmp" "{dir}/out/$(date +%s%N)-$$.eml"
[ -e "{dir}/SLOW" ] && sleep 30
exit 0
"""


def sent(mailbox: Path) -> list[tuple[str, email.message.EmailMessage]]:
    """What the stand-in received, oldest first: (recipient, message)."""
    out = []
    for path in sorted((mailbox / "out").glob("*.eml")):
        argv, _, raw = path.read_bytes().partition(b"\n")
        assert argv.startswith(b"ARGV: -f root ") and argv.count(b" ") == 3, "one recipient, as an argument"
        out.append((argv.rpartition(b" ")[2].decode(), email.message_from_bytes(raw, policy=email.policy.default)))
    return out  # type: ignore[return-value]


def messages(mailbox: Path) -> list[email.message.EmailMessage]:
    """What the stand-in received, oldest first, all of it for the abuse desk."""
    out = sent(mailbox)
    assert [to for to, _ in out] == ["abuse@example.net"] * len(out)
    return [msg for _, msg in out]
