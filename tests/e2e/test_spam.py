"""Spam verdicts of outgoing mail against a real Exim and a real rspamd (Debian's
package, started here on loopback with a config of its own): with EXIMHOOK_SPAM_SCAN,
each message of an authenticated user, a relay customer or a local submitter is
scanned (acl-data.conf, acl-not-smtp.conf), and one whose action counts (GTUBE:
"reject"; its test variants "add header" and "no action") is counted against the
sender through the daemon; the message that takes it over an enforced limit blocks it
and is frozen, with one notification. When rspamd or the daemon does not answer, mail
flows and nothing is counted."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator

import pytest

from ..support import harness as h
from ..support.marks import needs_exim, needs_redis, needs_root, needs_rspamd
from ..support.rspamd_server import GTUBE, GTUBE_ADD_HEADER, GTUBE_NO_ACTION, RspamdServer
from .test_seed004 import submit

pytestmark = [pytest.mark.e2e, needs_exim, needs_root, needs_rspamd]
ALICE = f"alice@{h.DOMAIN}"
# as in test_hostile_mail: quotes, a space, a newline and an expansion in an id; Exim
# keeps it printable (the newline as "\n"), eximhook's key is that, lowercased
HOSTILE = '"Q\' x\n${run{/bin/false}}' + "y" * 276
KEY = HOSTILE.lower().replace("\n", "\\n")
LIMIT = 3
Make = Callable[..., h.Exim]


@pytest.fixture
def rspamd() -> Iterator[RspamdServer]:
    server = RspamdServer()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def make(rspamd: RspamdServer) -> Iterator[Make]:
    """An Exim that scans with ``rspamd``, and the daemon; ``settings`` over the test's.

    Exim sends rspamd the client's host name, and looks it up to do so (reverse DNS,
    when host_lookup has not): an empty host_lookup_order keeps that off the network."""
    made: list[h.Exim] = []

    def start(**settings: object) -> h.Exim:
        server = h.make(["bob", "carol", HOSTILE], serve=True, macros={"EXIMHOOK_SPAM_SCAN": "yes"},
                        main=f"spamd_address = {rspamd.address}\nhost_lookup_order =",
                        settings={"notify.hold": 0.1, **settings})
        made.append(server)
        return server.setup().start()

    yield start
    for server in made:
        h.cleanup(server)


def enforced(limit: int = LIMIT) -> dict[str, object]:
    return {"limits.auth.spam.limit": limit, "limits.auth.spam.mode": "enforce"}


def send(exim: h.Exim, body: str, *, user: str | None = "bob", subject: bytes = b"hello",
         source: str = "127.0.0.1") -> str:
    """One message to alice over one connection; its Exim id, from the 250 after DATA."""
    with exim.connect(source) as smtp:
        if user is not None:
            smtp.login(user, h.PASSWORD)
        smtp.mail(f"bob@{h.DOMAIN}")
        assert smtp.rcpt(ALICE)[0] == 250
        code, said = smtp.data(b"From: <bob@" + h.DOMAIN.encode() + b">\r\nSubject: " + subject + b"\r\n\r\n"
                               + body.encode() + b"\r\n")
        assert code == 250, said
        found = re.search(rb"id=(\S+)", said)
        assert found, said
        return found[1].decode()


def spam(exim: h.Exim, ns: str = "auth", key: str = "bob") -> dict[str, object]:
    counter: dict[str, object] = exim.show(ns, key)["counters"]["spam"]
    return counter


def rspamd_status(exim: h.Exim) -> tuple[str, bool]:
    """``eximhook status``'s check of the rspamd Exim's spamd_address names."""
    [check] = [c for c in json.loads(exim.eximhook("status", "--json").stdout)["checks"] if c["name"] == "rspamd"]
    return check["level"], check["up"]


def blocks(exim: h.Exim) -> list[str]:
    return [e["event"] for e in json.loads(exim.eximhook("history", "--json").stdout)]


def test_spam_is_counted_and_the_message_over_the_limit_blocks_and_is_frozen(make: Make) -> None:
    exim = make(**enforced())
    # honest mail, and a verdict that is no spam ("no action"): not counted
    send(exim, "see you at lunch")
    send(exim, f"quoting a test pattern {GTUBE_NO_ACTION}")
    assert spam(exim)["total"] == 0
    # "add header" and "reject" count; three is the limit, not over it: delivered
    counted = [send(exim, GTUBE_ADD_HEADER), send(exim, GTUBE), send(exim, GTUBE)]
    assert spam(exim)["total"] == LIMIT and exim.show("auth", "bob")["block"] is None
    assert spam(exim)["evidence"] == [f"{counted[0]} add header 6.0", f"{counted[1]} reject 15.0",
                                      f"{counted[2]} reject 15.0"]
    assert exim.queue(frozen=True) == []
    # the fourth: over the limit, blocked, and this message frozen as the evidence
    tripped = send(exim, GTUBE, subject=b"the trip")
    assert exim.queue(frozen=True) == [tripped]
    assert "X-Authenticated-As: bob" in exim.headers(tripped)
    block = exim.show("auth", "bob")["block"]
    assert (block["counter"], block["count"], block["limit"]) == ("spam", LIMIT + 1, LIMIT)
    # blocked: its next message is frozen before it is scanned, and not counted again
    after = send(exim, GTUBE, subject=b"after")
    assert sorted(exim.queue(frozen=True)) == sorted([tripped, after])
    assert spam(exim)["total"] == LIMIT + 1
    # carol's mail flows; one notification, naming the message that tripped
    send(exim, "hello", user="carol")
    h.wait_for("the notification", lambda: len(exim.maildir("abuse")) == 1)
    exim.settled()
    [note] = exim.maildir("abuse")
    assert b"user bob blocked because has sent 4 messages scored as spam" in note
    assert tripped.encode() in note
    assert blocks(exim).count("blocked") == 1
    assert len(exim.maildir("alice")) == 2 + LIMIT + 1, "bob's honest two, the three under the limit, carol's"


def test_in_shadow_mode_the_trip_is_a_would_block_record_and_mail_flows(make: Make) -> None:
    exim = make(**{"limits.auth.spam.limit": 1, "limits.relay.spam.limit": 1})  # shadow: the default
    for _ in range(3):
        send(exim, GTUBE)
    assert spam(exim)["total"] == 3 and exim.show("auth", "bob")["block"] is None
    h.wait_for("the would-block record", lambda: "would-block" in blocks(exim))
    listed = json.loads(exim.eximhook("list", "--would-block", "--json").stdout)
    assert [(r["ns"], r["key"], r["counter"]) for r in listed] == [("auth", "bob", "spam")]
    # a relay customer's message counts against its address
    send(exim, GTUBE, user=None, source=h.RELAY_CLIENT)
    assert spam(exim, "relay", h.RELAY_CLIENT)["total"] == 1
    exim.settled()
    assert exim.queue(frozen=True) == [] and len(exim.maildir("alice")) == 4
    assert blocks(exim).count("would-block") == 1, "recorded once, not per message over"


def test_a_local_submitters_spam_is_scanned_too(make: Make) -> None:
    exim = make(**{"limits.local.spam.limit": 1, "limits.local.spam.mode": "enforce"})
    submit(exim, f"To: {ALICE}\nSubject: php mail\n\nhello\n", user="nobody")
    submit(exim, f"To: {ALICE}\nSubject: php mail\n\n{GTUBE}\n", user="nobody")
    assert spam(exim, "local", "nobody")["total"] == 1
    submit(exim, f"To: {ALICE}\nSubject: php mail\n\n{GTUBE}\n", user="nobody")
    [frozen] = h.wait_for("the frozen message", lambda: exim.queue(frozen=True))  # type: ignore[misc]
    assert "X-Local-Sender: nobody" in exim.headers(frozen)
    assert exim.show("local", "nobody")["block"]["counter"] == "spam"


def test_when_rspamd_or_the_daemon_does_not_answer_mail_flows_uncounted(make: Make, rspamd: RspamdServer) -> None:
    exim = make(**enforced(1))
    rspamd.stop()
    send(exim, GTUBE)
    send(exim, GTUBE)
    assert spam(exim)["total"] == 0
    assert exim.queue(frozen=True) == []
    # Exim says why, in its mainlog and paniclog, for each message; eximhook status warns
    assert exim.log().count("spam acl condition: all spamd servers failed") == 2
    assert rspamd_status(exim) == ("WARNING", False)
    # the daemon down: rspamd scans, and nothing counts (no ${run} fallback)
    rspamd.start()
    assert rspamd_status(exim) == ("OK", True)
    exim.stop_daemon()
    send(exim, GTUBE)
    send(exim, GTUBE)
    exim.start_daemon()
    assert spam(exim)["total"] == 0 and exim.queue(frozen=True) == []
    # both back: counted again
    send(exim, GTUBE)
    assert spam(exim)["total"] == 1
    h.wait_for("the five delivered", lambda: len(exim.maildir("alice")) == 5)


def test_a_hostile_id_and_subject_are_one_subject_and_the_evidence_is_ours(make: Make) -> None:
    exim = make(**enforced(1))
    subject = b"\xff\xfe =?utf-8?b?/w==?= ${run{/bin/false}}\r\n\tX-Injected: 1\r\n\tE 1 \"\\"
    first = send(exim, GTUBE, user=HOSTILE, subject=subject)
    assert spam(exim, "auth", KEY)["evidence"] == [f"{first} reject 15.0"]
    second = send(exim, GTUBE, user=HOSTILE, subject=subject)
    assert exim.queue(frozen=True) == [second]
    assert exim.show("auth", KEY)["block"]["counter"] == "spam"
    assert spam(exim, "auth", KEY)["evidence"] == [f"{first} reject 15.0", f"{second} reject 15.0"]
    assert exim.log("panic") == ""


def test_parallel_senders_are_each_counted_once(make: Make) -> None:
    exim = make(**{"limits.auth.spam.limit": 1000})
    h.at_once(8, lambda n: [send(exim, GTUBE, subject=f"bot {n}.{i}".encode()) for i in range(3)])
    assert spam(exim)["total"] == 24
    h.wait_for("all 24 delivered", lambda: len(exim.maildir("alice")) == 24)


@pytest.mark.parametrize("backend", ["lmdb", pytest.param("redis", marks=needs_redis)])
def test_parallel_senders_over_the_limit_are_blocked_once(make: Make, backend: str,
                                                          request: pytest.FixtureRequest) -> None:
    """Counted in this relay's store, or in a Redis shared with others: every message
    counted over the limit is frozen, one block, one notification. (One counted under
    it may be frozen too: its DATA ACL asks once more after the spam count, for the
    volume, and by then another connection's message may have made the block.)"""
    shared = {} if backend == "lmdb" else {"store.backend": "redis",
                                           "store.redis_url": request.getfixturevalue("own_redis").url}
    exim = make(**enforced(), **shared)
    h.at_once(8, lambda n: [send(exim, GTUBE, subject=f"bot {n}.{i}".encode()) for i in range(2)])
    frozen = len(exim.queue(frozen=True))
    assert 16 - LIMIT <= frozen <= 16 - 1, "every message after the first LIMIT counted is frozen"
    h.wait_for("one notification", lambda: len(exim.maildir("abuse")) == 1)
    exim.settled()
    assert len(exim.maildir("alice")) == 16 - frozen and len(exim.maildir("abuse")) == 1
    assert blocks(exim).count("blocked") == 1
