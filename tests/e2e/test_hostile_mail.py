"""What an authenticated spammer controls, against a real Exim: an id that is no
address must not become the envelope sender (its bounces would fail into the
paniclog), before its block and after `eximhook release`; and `eximhook view` must not
hand a spam's escape sequences to the admin's terminal."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ..support import harness as h
from ..support.marks import needs_exim, needs_root

pytestmark = [pytest.mark.e2e, needs_exim, needs_root]

# 300 bytes: quotes, a space, a newline and an expansion, as seen in the report
HOSTILE = '"Q\' x\n${run{/bin/false}}' + "y" * 276
KEY = HOSTILE.lower().replace("\n", "\\n")  # Exim keeps the id printable: the newline as "\n"
BOUNCED = f"gone@{h.DEAD}"


@pytest.fixture
def exim() -> Iterator[h.Exim]:
    server = h.make(["bob", "alice", HOSTILE], limit=2, serve=True)
    try:
        server.setup().start()
        yield server
    finally:
        h.cleanup(server)


def bounces(exim: h.Exim) -> list[bytes]:
    """Bounces delivered to bob@, the envelope sender the hostile user gave."""
    return [m for m in exim.maildir("bob") if b"report-type=delivery-status" in m]


def test_an_id_that_is_no_address_keeps_its_mail_from_and_its_bounces_arrive(exim: h.Exim) -> None:
    assert len(HOSTILE) == 300
    assert exim.send([f"alice@{h.DOMAIN}", BOUNCED], user=HOSTILE, subject="before") == {}
    h.wait_for("the bounce to MAIL FROM", lambda: bounces(exim))
    assert exim.log("panic") == ""
    # blocked (3 invalid recipients, limit 2): the rest of its mail is frozen
    assert exim.send([*h.invalid(3), BOUNCED], user=HOSTILE, subject="the trip") == {}
    assert exim.send([BOUNCED], user=HOSTILE, subject="after") == {}
    frozen = json.loads(exim.eximhook("frozen", "--json", "auth", KEY).stdout)
    assert len(frozen) == 2 and {m["sender"] for m in frozen} == {f"bob@{h.DOMAIN}"}
    released = exim.eximhook("release", "auth", KEY)
    assert released.returncode == 0, released.stderr
    h.wait_for("the bounces of the released mail", lambda: len(bounces(exim)) == 3)
    h.wait_for("an empty queue", lambda: exim.queue() == [])
    assert exim.log("panic") == ""
    assert "bad addresses" not in exim.log()


def test_view_escapes_what_the_spammer_wrote(exim: h.Exim) -> None:
    assert exim.send([f"q@{h.REMOTE}"], user="bob", subject="\x1b]0;owned\x07\x1b[2J",
                     headers="X-Tab:\ta\tb\r\n") == {}
    [msg_id] = exim.queue()  # the remote MX does not answer: it waits in the queue
    out = exim.eximhook("view", msg_id)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert "Subject: \\x1b]0;owned\\x07\\x1b[2J" in out.stdout, "escaped, readable"
    assert "X-Tab:\ta\tb" in out.stdout, "tabs (and newlines) as they are"
    raw = exim.eximhook("view", "--raw", msg_id)
    assert "Subject: \x1b]0;owned\x07\x1b[2J" in raw.stdout
