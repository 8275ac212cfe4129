"""The guards against the real Exim. Password guessing: failed SMTP AUTH counted per
client address through the daemon (acl-auth.conf), each attempt once, the address
blocked past the limit with one notification, its next AUTH dropped before the password
is checked; an exempt network is counted and never blocked; on Exim 4.97 and later by
the auth:fail event, each failure when it fails. The spool-space guard: a blocked
user's mail refused instead of frozen when the spool is short."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from typing import Any

import pytest

from ..support import harness as h
from ..support.marks import needs_exim, needs_root

pytestmark = [pytest.mark.e2e, needs_exim, needs_root]
GUESSER, OFFICE = "127.0.0.3", "127.0.0.4"
LIMIT = 5


@pytest.fixture
def exim() -> Iterator[h.Exim]:
    server = h.make(["bob"], serve=True, settings={"limits.ip.authfail.limit": LIMIT, "notify.hold": 0.1},
                    eximhook_extra=f'\n[exempt]\nip = {{"{OFFICE}" = "the office NAT"}}\n')
    try:
        server.setup().start()
        yield server
    finally:
        h.cleanup(server)


def failures(exim: h.Exim, source: str) -> int:
    out = exim.eximhook("show", "--json", "ip", source)
    assert out.returncode == 0, out.stderr
    return int(json.loads(out.stdout)["counters"]["authfail"]["total"])


def attempt(smtp: smtplib.SMTP, password: str) -> int:
    try:
        return smtp.login("bob", password)[0]
    except smtplib.SMTPAuthenticationError as exc:
        return exc.smtp_code
    except smtplib.SMTPServerDisconnected:
        return 554


def guess(exim: h.Exim, source: str, tries: int, *, then_right: bool = False, hang_up: bool = False) -> list[int]:
    """``tries`` wrong passwords on one connection (then the right one): the codes,
    up to the first 554 (the connection is dropped)."""
    codes: list[int] = []
    smtp = exim.connect(source)
    for password in [f"wrong-{i}" for i in range(tries)] + ([h.PASSWORD] if then_right else []):
        codes.append(attempt(smtp, password))
        if codes[-1] == 554:
            smtp.close()
            return codes
    if hang_up:
        smtp.close()
    else:
        smtp.quit()
    return codes


def test_each_failed_auth_counts_once_and_the_guesser_is_blocked(exim: h.Exim) -> None:
    assert guess(exim, GUESSER, 1) == [535]
    h.wait_for("one failure counted", lambda: failures(exim, GUESSER) == 1)
    # two on one connection, then the right password: two failures, the success none
    assert guess(exim, GUESSER, 2, then_right=True) == [535, 535, 235]
    h.wait_for("three", lambda: failures(exim, GUESSER) == 3)
    # a guesser that hangs up after its failure is counted at the end of the connection
    assert guess(exim, GUESSER, 1, hang_up=True) == [535]
    h.wait_for("four", lambda: failures(exim, GUESSER) == 4)
    assert exim.show("ip", GUESSER)["block"] is None
    # the fifth and sixth on one connection: the sixth failure is over the limit (5), and
    # is counted at the next AUTH, which is dropped with a 554
    assert guess(exim, GUESSER, 3) == [535, 535, 554]
    block = exim.show("ip", GUESSER)["block"]
    assert (block["counter"], block["count"], block["limit"]) == ("authfail", 6, LIMIT)
    assert "bob" in block["rcpts"], "the user names tried are the evidence"
    # from now on even the right password gets nowhere: dropped before it is checked
    assert guess(exim, GUESSER, 0, then_right=True) == [554]
    # Exim logs the rejection after it has dropped the connection
    h.wait_for("the log line", lambda: "AUTH from a blocked address (ip 127.0.0.3)" in exim.log("reject"))
    # anyone else logs in as before
    with exim.connect("127.0.0.1") as ok:
        ok.login("bob", h.PASSWORD)
    # one notification, however many attempts followed
    h.wait_for("the notification", lambda: len(exim.maildir("abuse")) == 1, 20)
    exim.settled()  # nothing left to send: a second one cannot come
    [note] = exim.maildir("abuse")
    assert b"client 127.0.0.3 blocked because has failed SMTP AUTH 6 times during 1h (limit 5)" in note
    events = [e["event"] for e in json.loads(exim.eximhook("history", "--json").stdout)]
    assert events.count("blocked") == 1


def test_each_failure_is_counted_once_on_the_path_this_exim_takes(exim: h.Exim) -> None:
    """Exim 4.97 and later: the auth:fail event counts each failure when it fails (the
    next command's answer comes after the count), with the user name it tried. Exim
    4.96: the ACLs count it at the connection's next AUTH or at its end. Either way
    each failure once, and Exim's own log line for each failure (fail2ban's) stays."""
    event = h.auth_event()
    shown = exim.exim("-bP", "event_action", "acl_smtp_quit", "acl_smtp_notquit").splitlines()
    if event:
        assert shown == ["event_action = ${if eq{$event_name}{auth:fail}{${acl{acl_eximhook_authfail}}}}",
                         "acl_smtp_quit = ", "acl_smtp_notquit = "]
    else:
        assert shown == ["event_action = ", "acl_smtp_quit = acl_eximhook_quit",
                         "acl_smtp_notquit = acl_eximhook_notquit"]
    smtp = exim.connect(GUESSER)
    for n, user in enumerate(["mallory", "trudy"], 1):
        try:
            smtp.login(user, "wrong")
        except smtplib.SMTPAuthenticationError as exc:
            assert exc.smtp_code == 535
        assert smtp.noop()[0] == 250
        # counted by now on the event path; on 4.96 at the next AUTH
        assert failures(exim, GUESSER) == (n if event else n - 1)
    assert smtp.quit()[0] == 221  # 4.96: the QUIT ACL counts the last one before it answers
    counted = exim.show("ip", GUESSER)["counters"]["authfail"]
    assert counted["total"] == 2 and sorted(counted["evidence"]) == ["mallory", "trudy"]
    assert exim.show("net", "127.0.0.0/24")["counters"]["authfail"]["total"] == 2
    lines = [ln for ln in exim.log().splitlines() if "authenticator failed for" in ln and f"[{GUESSER}]" in ln]
    assert [ln.split("(set_id=")[-1] for ln in lines] == ["mallory)", "trudy)"], lines


def test_a_config_written_for_4_96_is_told_on_4_97() -> None:
    """A config that names the QUIT ACL and sets no event_action (written for 4.96, as
    README said before): on 4.96 it counts as ever; on 4.97 and later it counts nothing
    (the event is how), and the main log says what to change."""
    server = h.make(["bob"], serve=True)
    try:
        server.setup()
        server.conf.write_text(server.conf.read_text().replace("event_action = EXIMHOOK_EVENT_ACTION",
                                                               "acl_smtp_quit = acl_eximhook_quit"))
        server.start()
        assert guess(server, GUESSER, 1) == [535]
        told = "counted by the event_action eximhook's snippets give, not by acl_eximhook_quit"
        if h.auth_event():
            h.wait_for("the line", lambda: told in server.log())
            assert failures(server, GUESSER) == 0
        else:
            assert failures(server, GUESSER) == 1 and told not in server.log()
    finally:
        h.cleanup(server)


def test_an_exempt_network_is_counted_and_never_blocked(exim: h.Exim) -> None:
    assert guess(exim, OFFICE, LIMIT + 3) == [535] * (LIMIT + 3)
    h.wait_for("every failure counted", lambda: failures(exim, OFFICE) == LIMIT + 3)
    # the daemon answers an exempt count at once and records the would-block behind it
    h.wait_for("the would-block record", lambda: exim.show("ip", OFFICE)["would_block"])
    record = exim.show("ip", OFFICE)
    assert record["block"] is None and record["exempt"] == "127.0.0.4: the office NAT"
    assert [w["count"] for w in record["would_block"]] == [LIMIT + 1]
    with exim.connect(OFFICE) as smtp:
        smtp.login("bob", h.PASSWORD)


def test_guessers_of_one_network_block_it_and_every_address_in_it_is_dropped_by_the_cdb() -> None:
    """Failed AUTH counts against the client's /24 too (127.0.0.x are /24 siblings on
    loopback): two guessing addresses trip the network's own (low) limit, each far
    below its own. Then AUTH from a third address of the /24, never seen before and
    with the right password, is dropped by acl-auth.conf's cdb lookup, with the daemon
    stopped: no request is needed for it."""
    server = h.make(["bob"], serve=True, settings={"limits.ip.authfail.limit": 5, "limits.net.authfail.limit": 3,
                                                     "notify.hold": 0.1})
    try:
        server.setup().start()
        assert guess(server, "127.0.0.5", 2) == [535, 535]
        assert guess(server, "127.0.0.6", 2) == [535, 535]  # the 4th failure of the /24, counted at its QUIT
        net: dict[str, Any] = h.wait_for("the network's block", lambda: json.loads(  # type: ignore[assignment]
            server.eximhook("show", "--json", "net", "127.0.0.0/24").stdout)["block"])
        assert (net["key"], net["counter"], net["count"], net["limit"]) == ("127.0.0.0/24", "authfail", 4, 3)
        assert sorted(net["ips"]) == ["127.0.0.5", "127.0.0.6"]
        assert [b["ns"] for b in json.loads(server.eximhook("list", "--json").stdout)] == ["net"]
        h.wait_for("the notification", lambda: len(server.maildir("abuse")) == 1, 20)
        [note] = server.maildir("abuse")
        assert b"network 127.0.0.0/24 blocked because has failed SMTP AUTH 4 times during 1h (limit 3)" in note
        server.stop_daemon()
        assert guess(server, "127.0.0.7", 0, then_right=True) == [554]
        h.wait_for("the log line", lambda: "AUTH from a blocked address (ip 127.0.0.7, net 127.0.0.0/24)"
                   in server.log("reject"))
        assert failures(server, "127.0.0.7") == 0, "never counted: the cdb file answered"
    finally:
        h.cleanup(server)


def test_the_spool_guard_refuses_a_blocked_users_mail_and_tells_once() -> None:
    """A spool "below" the guard's floor (a floor far above any disk's free space stands
    in for a full spool: Exim reads its real $spool_space): a blocked user's message is
    refused at DATA instead of frozen, an honest user's is delivered, and the abuse desk
    hears once, however often maintenance looks."""
    server = h.make(["bob", "alice"], serve=True, settings={"spool.floor": "1T", "spool.fraction": 0})
    try:
        server.setup().start()
        assert server.eximhook("block", "auth", "bob", "--no-notify").returncode == 0
        with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPServerDisconnected)):
            server.send([f"alice@{h.DOMAIN}"], user="bob", subject="spam")
        assert server.queue() == [], "refused, not frozen: nothing of bob's in the spool"
        assert server.send([f"bob@{h.DOMAIN}"], user="alice") == {}
        h.wait_for("alice's delivery", lambda: len(server.maildir("bob")) == 1)
        h.wait_for("the log line", lambda: "spool space low" in server.log("reject"))
        for _ in range(2):  # the daemon looks on its own, too: either may tell
            server.eximhook("maintain")
        h.wait_for("the notification", lambda: len(server.maildir("abuse")) == 1, 20)
        server.settled()  # nothing left to send: a second one cannot come
        [note] = server.maildir("abuse")
        assert b"spool space low, blocked senders' mail is now refused" in note
    finally:
        h.cleanup(server)
