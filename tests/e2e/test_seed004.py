"""Seed 004 against a real Exim: bounces Exim generates (a sink that refuses the data),
delivery reports arriving over SMTP, volume per message, local submitters by uid, and
shadow mode. Each counts through eximhook serve, one round trip per message."""

from __future__ import annotations

import json
import pwd
import subprocess
from collections.abc import Iterator

import pytest

from ..support import harness as h
from ..support.marks import needs_exim, needs_root

pytestmark = [pytest.mark.e2e, needs_exim, needs_root]


def make(**settings: object) -> h.Exim:
    return h.make(["bob", "alice", "carol"], limit=50, serve=True, record_runs=True, settings=settings)


@pytest.fixture
def exim(request: pytest.FixtureRequest) -> Iterator[h.Exim]:
    server = make(**getattr(request, "param", {}))
    try:
        server.setup().start()
        yield server
    finally:
        h.cleanup(server)


def total(exim: h.Exim, ns: str, key: str, counter: str) -> int:
    return int(exim.show(ns, key)["counters"][counter]["total"])


def top(exim: h.Exim, counter: str) -> list[tuple[str, str, int]]:
    rows = json.loads(exim.eximhook("top", counter, "--json").stdout)
    return sorted((r["ns"], r["key"], r["total"]) for r in rows)


def submit(exim: h.Exim, text: str, *args: str, user: str | None = None) -> None:
    """Local submission: root's cron through ``exim -C`` (a trusted caller), or a
    user's PHP script through ``sendmail -t -i``, as that user.

    A non-root caller's ``-C`` makes Exim drop root (Debian's TRUSTED_CONFIG_LIST keeps
    it only for root and the Exim user), so the user's sendmail must find the test's
    configuration where Exim looks first, /etc/exim4/exim4.conf. It does, in a mount
    namespace of its own: a tmpfs over /etc/exim4 holding a file that includes it. The
    machine's /etc is never touched, and nothing is left if the test is killed."""
    argv = [h.EXIM, "-C", str(exim.conf), *args, "-t"]
    if user:
        pw = pwd.getpwnam(user)
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs -o mode=0755 eximhook-e2e /etc/exim4 && '
                'printf ".include %s\\n" "$1" > /etc/exim4/exim4.conf && shift && exec "$@"',
                "sh", str(exim.conf), "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
                "/usr/sbin/sendmail", *args, "-t", "-i"]
    subprocess.run(argv, input=text.encode(), check=True, capture_output=True, cwd="/")


def bounces_to(exim: h.Exim, box: str, n: int) -> list[bytes]:
    found = h.wait_for(f"{n} bounce(s) in {box}'s maildir",
                       lambda: [m for m in exim.maildir(box) if b"report-type=delivery-status" in m][n - 1:] and
                       [m for m in exim.maildir(box) if b"report-type=delivery-status" in m])
    return found  # type: ignore[return-value]


DEAD = [f"gone{i}@{h.DEAD}" for i in range(3)]


def test_each_bounce_counts_once_against_the_sender_and_the_user(exim: h.Exim) -> None:
    assert exim.send(DEAD, user="bob", headers="Message-ID: <first@client.example>\r\n") == {}
    bounces_to(exim, "bob", 1)
    assert exim.sink.messages == 1
    exim.settled()
    assert top(exim, "bounces") == [("auth", "bob", 1), ("sender", f"bob@{h.DOMAIN}", 1)], \
        "one bounce (for three failed recipients), against the address and the user that sent it"
    evidence = exim.show("auth", "bob")["counters"]["bounces"]["evidence"]
    assert any(DEAD[0] in e for e in evidence), "the failed recipients are the evidence"
    # mail that is not a bounce Exim generated: cron's, a vacation reply, a forward
    submit(exim, f"From: root\nTo: alice@{h.DOMAIN}\nSubject: cron output\n\nok\n")
    submit(exim, f"From: alice@{h.DOMAIN}\nTo: bob@{h.DOMAIN}\nAuto-Submitted: auto-replied\n"
                 "Subject: away\n\nI am away\n", "-f", "<>")
    assert exim.send([f"{h.FORWARD}@{h.DOMAIN}"], user="bob", subject="forwarded") == {}
    h.wait_for("the forward", lambda: [m for m in exim.maildir("alice") if b"forwarded" in m])
    h.wait_for("the vacation reply", lambda: [m for m in exim.maildir("bob") if b"I am away" in m])
    exim.settled()
    assert top(exim, "bounces") == [("auth", "bob", 1), ("sender", f"bob@{h.DOMAIN}", 1)]
    assert [r for r in top(exim, "recipients") if r[0] == "local"] == [], "root's mail is exempt"
    assert exim.hook_runs() == [], "all through the daemon: no ${run}"


def test_a_delivery_report_over_smtp_counts(exim: h.Exim) -> None:
    assert exim.send([f"alice@{h.DOMAIN}"], user="bob", headers="Message-ID: <sent@client.example>\r\n") == {}
    report = (f"From: MAILER-DAEMON@elsewhere.example\r\nTo: bob@{h.DOMAIN}\r\nSubject: Undelivered\r\n"
              "References: <older@x> <sent@client.example>\r\nMIME-Version: 1.0\r\n"
              'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
              "--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
              "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; elsewhere.example\r\n\r\n"
              "Final-Recipient: rfc822; x@elsewhere.example\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n")
    backscatter = report.replace("<sent@client.example>", "<forged@spammer.example>").replace(
        "Undelivered", "Backscatter")
    report = report.replace("multipart/report; report-type", "multipart/report;\r\n\treport-type")  # folded
    with exim.connect(tls=False) as smtp:  # from the internet: no AUTH, empty sender
        assert smtp.sendmail("", [f"bob@{h.DOMAIN}"], report.encode()) == {}
        assert smtp.sendmail("", [f"bob@{h.DOMAIN}"], backscatter.encode()) == {}
    h.wait_for("the reports", lambda: [m for m in exim.maildir("bob") if b"Undelivered" in m] and
               [m for m in exim.maildir("bob") if b"Backscatter" in m])
    exim.settled()
    assert top(exim, "bounces") == [("auth", "bob", 1), ("sender", f"bob@{h.DOMAIN}", 1)], \
        "the report of bob's message counts; one naming no message of ours (backscatter) does not"
    with exim.connect(tls=False) as smtp:  # a forger who knows the Message-ID, from the same host
        assert smtp.sendmail("", [f"bob@{h.DOMAIN}"], report.encode()) == {}
    exim.settled()
    assert top(exim, "bounces") == [("auth", "bob", 1), ("sender", f"bob@{h.DOMAIN}", 1)], \
        "one report per message from one network (and never more than its recipients)"


@pytest.mark.parametrize("exim", [{"limits.auth.bounces.limit": 1, "limits.auth.bounces.period": "6s",
                                   "limits.auth.bounces.mode": "enforce"}], indirect=True)
def test_the_bounce_limit_blocks_once_and_the_block_stays(exim: h.Exim) -> None:
    for n in range(2):
        assert exim.send(DEAD[:1], user="bob", subject=f"spam {n}") == {}
        bounces_to(exim, "bob", n + 1)
    block = h.wait_for("the block", lambda: exim.show("auth", "bob")["block"])
    assert (block["counter"], block["count"], block["limit"], block["period"]) == ("bounces", 2, 1, 6)  # type: ignore[index]
    [note] = h.wait_for("the notification", lambda: exim.maildir("abuse"))  # type: ignore[misc]
    assert b"has caused 2 bounces during 6s (limit 1)" in note
    # the window (6s) passes on the hooks' own clock, which no test can set: wait until
    # they see the bounce rate back to zero; the block stays
    h.wait_for("the window to pass", lambda: exim.show("auth", "bob")["counters"]["bounces"]["windows"][0]["count"]
               == 0, 30)
    now = exim.show("auth", "bob")
    assert now["block"] is not None and now["counters"]["bounces"]["windows"][0]["count"] == 0
    assert exim.send([f"alice@{h.DOMAIN}"], user="bob", subject="after the window") == {}
    assert len(exim.queue(frozen=True)) == 1, "still frozen: only an admin lifts it"
    assert len(exim.maildir("abuse")) == 1


@pytest.mark.parametrize("exim", [{"limits.auth.recipients.windows": [{"limit": 5, "period": "1h"},
                                                                      {"limit": 7, "period": "1d"}],
                                   "limits.auth.recipients.mode": "enforce"}], indirect=True)
def test_the_volume_limit_trips_at_the_right_message(exim: h.Exim) -> None:
    everyone = [f"{u}@{h.DOMAIN}" for u in ("alice", "carol", "postmaster")]
    assert exim.send(everyone, user="bob", subject="three") == {}
    assert exim.send(everyone[:2], user="bob", subject="two, five in all") == {}
    assert exim.queue(frozen=True) == []
    assert exim.send(everyone[:1], user="bob", subject="one, six in all") == {}
    [tripped] = exim.queue(frozen=True)
    assert "X-Authenticated-As: bob" in exim.headers(tripped)
    block = exim.show("auth", "bob")["block"]
    assert (block["counter"], block["count"], block["limit"], block["period"]) == ("recipients", 6, 5, 3600)
    assert exim.send(everyone[:1], user="bob", subject="after") == {}
    assert len(exim.queue(frozen=True)) == 2, "everything after it is frozen too"
    [note] = h.wait_for("the notification", lambda: exim.maildir("abuse"))  # type: ignore[misc]
    assert b"has sent mail to 6 recipients during 1h (limit 5)" in note and tripped.encode() in note
    windows = exim.show("auth", "bob")["counters"]["recipients"]["windows"]
    assert [(w["period"], w["count"]) for w in windows] == [(3600, 6), (86400, 6)]


@pytest.mark.parametrize("exim", [{"limits.auth.recipients.limit": 2}], indirect=True)
def test_shadow_mode_records_and_freezes_nothing(exim: h.Exim) -> None:
    for n in range(4):
        assert exim.send([f"alice@{h.DOMAIN}"], user="bob", subject=f"newsletter {n}") == {}
    h.wait_for("delivery", lambda: len(exim.maildir("alice")) == 4)
    assert exim.queue(frozen=True) == [] and exim.show("auth", "bob")["block"] is None
    listed = exim.eximhook("list", "--would-block")
    assert listed.returncode == 0 and "recipients>2/1h" in listed.stdout and "bob" in listed.stdout
    events = json.loads(exim.eximhook("history", "--json", "auth", "bob").stdout)
    assert [e["event"] for e in events] == ["would-block"], "recorded once, not per message over"
    out = exim.eximhook("top", "recipients").stdout
    assert "bob" in out and "200%" in out, "the peak against the limit: 4 of 2"
    exim.settled()
    assert exim.maildir("abuse") == [], "[limits] notify_shadow is off by default"


@pytest.mark.parametrize("exim", [{"limits.local.recipients.limit": 2, "limits.local.recipients.mode": "enforce"}],
                         indirect=True)
def test_a_local_user_is_counted_and_frozen(exim: h.Exim) -> None:
    for n in range(3):
        submit(exim, f"To: alice@{h.DOMAIN}\nSubject: php mail {n}\n\nhello\n", user="nobody")
    [frozen] = h.wait_for("the frozen message", lambda: exim.queue(frozen=True))  # type: ignore[misc]
    assert "X-Local-Sender: nobody" in exim.headers(frozen)
    block = exim.show("local", "nobody")["block"]
    assert (block["counter"], block["count"]) == ("recipients", 3)
    listed = exim.eximhook("frozen", "--json", "local", "nobody")
    assert [m["id"] for m in json.loads(listed.stdout)] == [frozen]
    h.wait_for("the two before it", lambda: len(exim.maildir("alice")) == 2)


def test_a_local_users_bounce_counts_against_the_user(exim: h.Exim) -> None:
    submit(exim, f"To: gone1@{h.DEAD}\nSubject: php mail\n\nhello\n", user="nobody")
    h.wait_for("the bounce to count", lambda: ("local", "nobody", 1) in top(exim, "bounces"))
    assert top(exim, "bounces") == [("local", "nobody", 1), ("sender", f"nobody@{h.DOMAIN}", 1)]
    assert exim.hook_runs() == []


def test_purge_takes_the_frozen_bounces_of_the_spam_and_freeze_queued_is_ours(exim: h.Exim) -> None:
    """A customer host's bot sends spam with a sender that takes no mail: what went out
    before the block bounces, and the bounce stays frozen ("delivery error message").
    purge removes it with the frozen spam; mail freeze_queued froze shows as eximhook's."""
    relay = exim.eximhook_conf
    relay.write_text(relay.read_text().replace("[limits.relay]\nlimit = 50", "[limits.relay]\nlimit = 2"))
    ghost = f"ghost@{h.DOMAIN}"  # no such mailbox: its bounces are frozen
    assert exim.send(DEAD[:1], source=h.RELAY_CLIENT, sender=ghost, headers="Message-ID: <s1@bot>\r\n") == {}
    [bounce] = h.wait_for("the frozen bounce", lambda: exim.queue(frozen=True))  # type: ignore[misc]
    assert exim.send([f"q@{h.REMOTE}"], source=h.RELAY_CLIENT, sender=ghost, subject="queued spam") == {}
    [queued] = exim.queue(frozen=False)  # the remote MX does not answer: it waits in the queue
    exim.stop_daemon()  # reload the limit
    exim.start_daemon()
    assert exim.send(h.invalid(3), source=h.RELAY_CLIENT, sender=ghost, subject="the trip") == {}
    h.wait_for("the notification", lambda: exim.maildir("abuse"))
    frozen = {m["id"]: m["frozen_by_eximhook"]
              for m in json.loads(exim.eximhook("frozen", "--json", "relay", h.RELAY_CLIENT).stdout)}
    assert frozen.get(queued) is True, "frozen by freeze_queued at the block: eximhook's"
    assert len(frozen) == 2 and all(frozen.values())
    out = exim.eximhook("purge", "relay", h.RELAY_CLIENT)
    assert out.returncode == 0 and bounce in out.stdout, out.stdout
    assert exim.queue() == [], "the spam and the bounce of the spam before it are gone"


def test_hostile_sender_addresses(exim: h.Exim) -> None:
    """A customer host's envelope sender is its own (no submission mode rewrites it):
    quotes, a space and an @ in the local part, upper case. Its bounce counts against
    that address, folded, and against the host; nothing breaks on the way."""
    sender = '"Odd \\"Q\\" x@y"@Test.Example'
    assert exim.send(DEAD[:1], source=h.RELAY_CLIENT, sender=sender,
                     headers="Message-ID: <odd@client.example>\r\n") == {}
    key = '"odd \\"q\\" x@y"@test.example'
    h.wait_for("the bounce to count", lambda: total(exim, "sender", key, "bounces") == 1)
    assert total(exim, "relay", h.RELAY_CLIENT, "bounces") == 1, "the quoted sender maps back to its host"
    assert top(exim, "bounces") == [("relay", h.RELAY_CLIENT, 1), ("sender", key, 1)]
    assert exim.log("panic") == ""
