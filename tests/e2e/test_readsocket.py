"""The snippets through ``eximhook serve`` (EXIMHOOK_SOCKET defined), against a real Exim:
no ${run} on the normal path, the fallback when the daemon is gone, notifications
across a restart, and a block that reaches a message already in its RCPT phase."""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
from collections.abc import Iterator

import pytest

from ..support import harness as h
from ..support.marks import needs_exim, needs_root

pytestmark = [pytest.mark.e2e, needs_exim, needs_root]



@pytest.fixture
def exim() -> Iterator[h.Exim]:
    server = h.make(["bob", "alice", "carol"], limit=5, serve=True, record_runs=True)
    try:
        server.setup().start()
        yield server
    finally:
        h.cleanup(server)


def body(note: bytes) -> str:
    return email.message_from_bytes(note, policy=email.policy.default).get_content()  # type: ignore[no-any-return,attr-defined]


def test_trip_through_the_daemon_runs_nothing(exim: h.Exim) -> None:
    assert exim.send([*h.invalid(5), f"alice@{h.DOMAIN}"], user="bob") == {}
    assert exim.queue(frozen=True) == []
    assert exim.send([*h.invalid(1, "extra"), f"alice@{h.DOMAIN}"], user="bob", subject="the trip") == {}
    [msg_id] = exim.queue(frozen=True)
    assert "X-Authenticated-As: bob" in exim.headers(msg_id)
    [note] = h.wait_for("the notification", lambda: exim.maildir("abuse"))  # type: ignore[misc]
    assert f"Frozen messages (1 when this was sent): {msg_id}" in body(note), "names the tripping message"
    exim.settled()
    assert len(exim.maildir("abuse")) == 1
    assert exim.hook_runs() == [], "no ${run} on the daemon's path"
    assert "blocked auth bob: 6 invalid recipients" in exim.hook_log()
    assert "Frozen messages" not in exim.log("panic")


def test_ten_connections_one_block_one_notification(exim: h.Exim) -> None:
    h.parallel_bot(exim, "carol")
    h.wait_for("the notification", lambda: exim.maildir("abuse"))
    exim.settled()
    assert len(exim.maildir("abuse")) == 1
    history = json.loads(exim.eximhook("history", "--json", "auth", "carol").stdout)
    assert [e["event"] for e in history] == ["blocked", "notified"]
    assert exim.hook_runs() == []


def test_daemon_gone_the_hook_counts_on_exactly(exim: h.Exim) -> None:
    assert exim.send([*h.invalid(3), f"alice@{h.DOMAIN}"], user="bob", subject="daemon up") == {}
    exim.stop_daemon()
    assert exim.send([*h.invalid(2, "later"), f"alice@{h.DOMAIN}"], user="bob", subject="daemon down") == {}
    assert exim.queue(frozen=True) == [], "5 events: not yet"
    h.wait_for("delivery", lambda: [m for m in exim.maildir("alice") if b"daemon down" in m])
    assert exim.send([*h.invalid(1, "last"), f"alice@{h.DOMAIN}"], user="bob", subject="the trip") == {}
    assert len(exim.queue(frozen=True)) == 1, "the 6th event trips, through the hook"
    h.wait_for("the notification (the hook path runs notify)", lambda: exim.maildir("abuse"))
    shown = json.loads(exim.eximhook("show", "--json", "auth", "bob").stdout)
    assert shown["counter"]["total"] == 6 and shown["block"]["count"] == 6
    assert sum("record-invalid" in r and r.endswith("--fallback") for r in exim.hook_runs()) == 3
    assert exim.hook_log().count("eximhook serve did not answer") == 1, "logged once, not per event"


def test_a_crash_behind_a_held_socket_loses_no_mail_and_counts_exactly() -> None:
    """With the socket held (eximhook-serve.socket), a daemon killed mid-run leaves
    Exim's connects succeeding: the requests wait in the backlog for the restarted
    daemon, each counted once, and no file of Exim's is closed under it (the failed
    connect that trips Exim 4.96's readsocket bug never happens)."""
    import select
    import signal
    import threading

    server = h.make(["bob", "alice"], limit=5, serve=True, activated=True, record_runs=True)
    try:
        server.setup().start()
        assert server.send([*h.invalid(3), f"alice@{h.DOMAIN}"], user="bob", subject="daemon up") == {}
        server.stop_daemon(signal.SIGKILL)
        assert server.socket.exists(), "a killed daemon cannot remove its socket; systemd's stays listening"
        sent: list[object] = []
        bot = threading.Thread(target=lambda: sent.append(server.send(
            [*h.invalid(2, "later"), f"alice@{h.DOMAIN}"], user="bob", subject="while it restarts")))
        bot.start()
        held = server.held
        assert held is not None, "socket activation: the test holds the listening socket"
        # the first RCPT's request waits in the backlog: the listening socket is readable
        h.wait_for("a connection in the backlog", lambda: select.select([held], [], [], 0)[0])
        server.start_daemon()
        bot.join(30)
        assert sent == [{}]
        h.wait_for("delivery", lambda: [m for m in server.maildir("alice") if b"while it restarts" in m])
        shown = json.loads(server.eximhook("show", "--json", "auth", "bob").stdout)
        assert shown["counter"]["total"] == 5, "each event once: the restarted daemon took the waiting ones"
        assert server.hook_runs() == [], "answered within EXIMHOOK_WAIT: no fallback"
        assert "errno=9" not in server.log() + server.log("panic")
    finally:
        h.cleanup(server)


def test_a_daemon_restarted_late_does_not_count_what_the_hook_counted() -> None:
    """Killed behind a held socket and back only after ``EXIMHOOK_WAIT``: Exim gave up
    on each request and its ``${run}`` hook counted the event; the requests left in the
    backlog come from clients that are gone, and the restarted daemon counts none of
    them again."""
    import select
    import signal

    server = h.make(["bob", "alice"], limit=50, serve=True, activated=True, record_runs=True)
    try:
        server.setup().start()
        server.stop_daemon(signal.SIGKILL)
        assert server.send([*h.invalid(2), f"alice@{h.DOMAIN}"], user="bob", subject="nobody answers") == {}
        runs = server.hook_runs()
        assert sum(" record-invalid auth bob " in r for r in runs) == 2 and sum(" record-message " in r for r in runs)
        held = server.held
        assert held is not None and select.select([held], [], [], 0)[0], "the requests wait in the backlog"
        server.start_daemon()
        h.wait_for("an abandoned request passed over", lambda: "not counted" in server.hook_log())
        # after the backlog (accepted first, its data there already): one message more, through the daemon
        assert server.send([*h.invalid(1, "after"), f"alice@{h.DOMAIN}"], user="bob", subject="answered") == {}
        assert len(server.hook_runs()) == len(runs), "answered by the daemon"
        shown = json.loads(server.eximhook("show", "--json", "auth", "bob").stdout)["counters"]
        assert (shown["invalid"]["total"], shown["recipients"]["total"]) == (3, 5), "each event once"
    finally:
        h.cleanup(server)


@pytest.mark.parametrize("serve", [True, False], ids=["daemon", "run-hook"])
def test_exim_bh_counts_nothing(serve: bool) -> None:
    """`exim -bh IP`, the usual way to test ACLs, runs them for real: it must not count
    a customer's invalid recipients, block it, or mail the abuse desk."""
    import subprocess

    server = h.make(["bob", "alice"], limit=2, serve=serve, record_runs=True)
    try:
        server.setup().start()
        script = (f"EHLO client.example\r\nMAIL FROM:<alice@{h.DOMAIN}>\r\n" +
                  "".join(f"RCPT TO:<{r}>\r\n" for r in h.invalid(4)) + "QUIT\r\n")
        out = subprocess.run([h.EXIM, "-C", str(server.conf), "-bh", h.RELAY_CLIENT], input=script.encode(),
                             capture_output=True, timeout=60, check=False)
        assert out.stdout.count(b"250 Accepted") == 4, "as over SMTP: a relay customer's bot sees success"
        shown = json.loads(server.eximhook("show", "--json", "relay", h.RELAY_CLIENT).stdout)
        assert shown["counter"]["total"] == 0 and shown["block"] is None
        assert server.hook_runs() == []
        # the same over SMTP counts (the guard is -bh's alone)
        assert server.send(h.invalid(1), source=h.RELAY_CLIENT, sender=f"alice@{h.DOMAIN}") == {}
        shown = json.loads(server.eximhook("show", "--json", "relay", h.RELAY_CLIENT).stdout)
        assert shown["counter"]["total"] == 1
    finally:
        h.cleanup(server)


def test_restart_with_a_held_notification_sends_it_once() -> None:
    server = h.make(["bob", "alice"], limit=5, serve=True, settings={"notify.hold": 3})
    try:
        server.setup().start()
        with server.connect() as smtp:  # the bot gives up before DATA: no message id is ever reported
            smtp.login("bob", h.PASSWORD)
            smtp.mail(f"bob@{h.DOMAIN}")
            assert [smtp.rcpt(r)[0] for r in h.invalid(6)] == [250] * 6
        server.stop_daemon()
        assert server.maildir("abuse") == [], "still held when the daemon stopped"
        server.start_daemon()
        assert server.eximhook("notify").stdout == "0", "the maintenance run respects the hold"
        h.wait_for("the notification", lambda: server.maildir("abuse"), 15)
        server.settled()
        assert len(server.maildir("abuse")) == 1
        assert server.eximhook("notify").stdout == "0"
    finally:
        h.cleanup(server)


@pytest.mark.parametrize("serve", [True, False], ids=["daemon", "run-hook"])
def test_block_from_another_connection_freezes_a_message_in_progress(serve: bool) -> None:
    server = h.make(["bob", "alice"], limit=5, serve=serve)
    try:
        server.setup().start()
        with server.connect() as first:
            first.login("bob", h.PASSWORD)
            first.mail(f"bob@{h.DOMAIN}")
            assert first.rcpt(f"alice@{h.DOMAIN}")[0] == 250  # bob is not blocked yet
            # the bot's other connection trips the block meanwhile
            assert server.send(h.invalid(6), user="bob", subject="other connection") == {}
            assert server.eximhook("check-blocked", "auth", "bob").stdout == "1"
            assert first.rcpt(f"carol@{h.DOMAIN}")[0] == 250
            first.data(b"Subject: in progress\r\n\r\nhello\r\n")
        frozen = json.loads(server.eximhook("frozen", "--json", "auth", "bob").stdout)
        assert sorted(str(m["subject"]) for m in frozen) == ["in progress", "other connection"]
        assert all(m["frozen_by_eximhook"] for m in frozen)
        in_progress = next(m for m in frozen if m["subject"] == "in progress")
        assert "X-Authenticated-As: bob" in server.headers(str(in_progress["id"]))
        assert not [m for m in server.maildir("alice") if b"in progress" in m]
    finally:
        h.cleanup(server)


def test_relay_host_through_the_daemon(exim: h.Exim) -> None:
    assert exim.send(h.invalid(6), source=h.RELAY_CLIENT, sender=f"alice@{h.DOMAIN}", subject="relay trip") == {}
    [msg_id] = exim.queue(frozen=True)
    assert f"X-Relayed-From: {h.RELAY_CLIENT}" in exim.headers(msg_id)
    [note] = h.wait_for("the notification", lambda: exim.maildir("abuse"))  # type: ignore[misc]
    assert msg_id in body(note)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        exim.send(["nobody@nowhere.invalid"], source="127.0.0.3", sender=f"x@{h.DOMAIN}")  # not a customer
    assert exim.hook_runs() == []


def test_the_owner_is_told_once_in_their_own_mailbox() -> None:
    """[owner]: the daemon finds the owner's address as it blocks (here by the pattern),
    and the real Exim delivers the owner's mail, once, beside the abuse desk's."""
    server = h.make(["carol"], limit=5, serve=True,
                    settings={"owner.notify": True, "owner.pattern": {"auth": f"$key@{h.DOMAIN}"}})
    try:
        server.setup().start()
        h.parallel_bot(server, "carol")

        def to_owner() -> list[bytes]:  # carol also gets bounces of the spam that left before the block
            return [m for m in server.maildir("carol") if b"\nSubject: Outgoing mail stopped: user carol\n" in m]

        [note] = h.wait_for("the owner's mail", to_owner)  # type: ignore[misc]
        h.wait_for("the abuse desk's", lambda: server.maildir("abuse"))
        server.settled()  # a copy of either, if any, has come by now
        assert len(to_owner()) == 1 and len(server.maildir("abuse")) == 1
        msg = email.message_from_bytes(note, policy=email.policy.default)
        assert (msg["Subject"], msg["To"]) == ("Outgoing mail stopped: user carol", f"carol@{h.DOMAIN}")
        assert (msg["Reply-To"], msg["Auto-Submitted"]) == (f"abuse@{h.DOMAIN}", "auto-generated")
        assert "because it has sent mail to 6 invalid recipients during 1h (limit 5)." in body(note)
        history = json.loads(server.eximhook("history", "--json", "auth", "carol").stdout)
        assert sorted((e["event"], e.get("to")) for e in history) == [
            ("blocked", None), ("notified", f"abuse@{h.DOMAIN}"), ("notified", f"carol@{h.DOMAIN}")]
    finally:
        h.cleanup(server)
