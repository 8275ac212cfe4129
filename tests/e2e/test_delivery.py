"""Remote delivery outcomes against a real Exim: a loopback MTA (tests/support/peer.py)
refuses recipients at RCPT (550) or after the data (550), or defers them (451) until a
test turns the answer into a 250 or a 550; the remote smtp transport's event_action
(EXIMHOOK_DELIVERY_EVENT, as docs/exim.md wires it) reports each outcome to eximhook
serve, which counts each recipient's first outcome in failrate and each first refusal
in failures, against the subject that sent the message and its envelope sender.

The RCPT snippets verify recipients without callouts here (EXIMHOOK_VERIFY = recipient):
every RCPT the peer sees is a delivery attempt, and a refused recipient is not counted
as invalid too."""

from __future__ import annotations

import json
import re
import signal
import smtplib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from ..support import harness as h
from ..support.debian import PRIVATE_CONFIG
from ..support.marks import needs_exim, needs_redis, needs_root
from ..support.paths import EXIM, EXIMHOOK
from ..support.peer import Peer
from ..support.waiting import wait_for

pytestmark = [pytest.mark.e2e, needs_exim, needs_root]

PEER = "peer.example"
REFUSED = "550 5.1.1 <{}> no such user here"
LIMITS = {"limit": 1000, "period": "1h", "mode": "shadow"}  # counted, never blocking, unless a test says


def settings(failures: dict[str, object] | None = None, failrate: dict[str, object] | None = None) -> dict[str, object]:
    """eximhook.toml for the test: [limits.auth.failures] and [limits.auth.failrate] as
    given, the relay's and the envelope sender's counted in shadow mode."""
    out: dict[str, object] = {}
    tables = {"auth.failures": failures or LIMITS, "auth.failrate": failrate or {**LIMITS, "limit": 99},
              "relay.failures": LIMITS, "sender.failures": LIMITS, "sender.failrate": {**LIMITS, "limit": 99}}
    for table, values in tables.items():
        out.update({f"limits.{table}.{k}": v for k, v in values.items()})
    return out


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[tuple[h.Exim, Peer]]:
    param = getattr(request, "param", {})
    shared: dict[str, object] = {}
    if param.get("redis"):  # counted in a Redis (the relay's daemon's own, started by the test)
        shared = {"store.backend": "redis", "store.redis_url": request.getfixturevalue("own_redis").url}
    peer = Peer().start()
    server = h.make(["bob", "alice"], serve=True, routers=peer.router("peer", PEER),
                    transports=peer.transport("peer", wired=param.get("wired", True)),
                    macros={"EXIMHOOK_VERIFY": "recipient"}, activated=param.get("activated", False),
                    settings={**settings(param.get("failures"), param.get("failrate")), **shared})
    try:
        server.setup().start()
        yield server, peer
    finally:
        h.cleanup(server)
        peer.stop()


def message_id(exim: h.Exim, subject: str) -> str:
    """The Exim id of the message with ``subject``, from its ``<=`` line."""
    found = wait_for(f"the message {subject!r} received",
                     lambda: re.search(rf"^\S+ \S+ (\S+) <= .* T=\"{re.escape(subject)}\"", exim.log(), re.M))
    return str(found[1])  # type: ignore[index]


def completed(exim: h.Exim, msg_id: str) -> None:
    """Exim is done with the message: every outcome its delivery raised was answered
    (the events run before its ``Completed`` line, in the process that writes it)."""
    wait_for(f"{msg_id} completed", lambda: f" {msg_id} Completed" in exim.log())


def lines(exim: h.Exim, mark: str, rcpt: str) -> int:
    """Exim's log lines for one recipient: ``=>`` delivered, ``**`` refused, ``==`` deferred."""
    return exim.log().count(f" {mark} {rcpt} ")


def retry(exim: h.Exim, msg_id: str, rcpt: str, tries: int, mark: str = "==") -> None:
    """Deliver the message again (``exim -M``, in the foreground: its outcomes are
    answered when it returns) until ``rcpt`` has ``tries`` lines ``mark``: a delivery
    still finishing holds the message's lock, and Exim then skips it."""
    def tried() -> bool:
        if lines(exim, mark, rcpt) < tries:
            subprocess.run([EXIM, "-C", str(exim.conf), "-M", msg_id], capture_output=True, check=False)
        return lines(exim, mark, rcpt) >= tries

    wait_for(f"{rcpt} tried again", tried)
    assert lines(exim, mark, rcpt) == tries


def counter(exim: h.Exim, ns: str, key: str, name: str) -> dict[str, Any]:
    return exim.show(ns, key)["counters"][name]  # type: ignore[no-any-return]


def total(exim: h.Exim, ns: str, key: str, name: str) -> int:
    return int(counter(exim, ns, key, name)["total"])


def blocks(exim: h.Exim, ns: str, key: str) -> list[dict[str, Any]]:
    return [e for e in exim.show(ns, key)["history"] if e["event"] == "blocked"]


def notifications(exim: h.Exim) -> list[bytes]:
    return [m for m in exim.maildir("abuse") if b"Subject: user bob blocked" in m]


def test_outcomes_count_against_the_user_and_its_sender(world: tuple[h.Exim, Peer]) -> None:
    """Delivered recipients count as good, refusals at RCPT and after the data as bad and
    as failures, each once, for the user and for its envelope sender."""
    exim, peer = world
    peer.rcpt["gone"] = REFUSED.format("gone")
    peer.data["spamtrap"] = "550 5.7.1 message refused as spam"
    assert exim.send([f"a@{PEER}", f"b@{PEER}", f"gone@{PEER}"], user="bob", subject="first") == {}
    assert exim.send([f"spamtrap@{PEER}"], user="bob", subject="second") == {}
    for subject in ("first", "second"):
        completed(exim, message_id(exim, subject))
    assert (lines(exim, "=>", f"a@{PEER}"), lines(exim, "**", f"gone@{PEER}"),
            lines(exim, "**", f"spamtrap@{PEER}")) == (1, 1, 1)
    for ns, key in (("auth", "bob"), ("sender", f"bob@{h.DOMAIN}")):
        assert total(exim, ns, key, "failrate") == 4, "4 remote recipients, each counted once"
        failures = counter(exim, ns, key, "failures")
        assert failures["total"] == 2
        evidence = "\n".join(failures["evidence"])
        assert f"gone@{PEER}: SMTP error from remote mail server after RCPT TO:<gone@{PEER}>: 550 5.1.1" in evidence
        assert f"spamtrap@{PEER}: SMTP error from remote mail server after end of data: 550 5.7.1" in evidence
    assert total(exim, "auth", "bob", "invalid") == 0
    shown = exim.show("auth", "bob")
    assert shown["counters"]["failrate"]["windows"][0]["count"] == 50, "2 bad of 4: shown, to tune from"
    assert shown["would_block"] == [], "but not judged before the minimum (20) of events"
    assert exim.log("panic") == ""


def half_refused_at_once(exim: h.Exim, peer: Peer) -> None:
    """Eight messages at once, each to a recipient the peer takes and one it refuses,
    delivered by as many processes; returns once bob is blocked and Exim is done."""
    for n in range(8):
        peer.rcpt[f"gone{n}"] = REFUSED.format(f"gone{n}")
    h.at_once(8, lambda n: exim.send([f"ok{n}@{PEER}", f"gone{n}@{PEER}"], user="bob", subject=f"run {n}"))
    wait_for("the block", lambda: blocks(exim, "auth", "bob"))
    exim.settled()


FAILURES = {"failures": {"limit": 3, "period": "1h", "mode": "enforce"}}


@pytest.mark.parametrize("world", [pytest.param(FAILURES, id="lmdb"),
                                   pytest.param({**FAILURES, "redis": True}, id="redis", marks=needs_redis)],
                         indirect=True)
def test_refusals_block_once_across_parallel_deliveries(world: tuple[h.Exim, Peer]) -> None:
    """Eight messages at once, each with a refused recipient, delivered by as many
    processes: over the limit of 3 the user is blocked once, the abuse desk told once,
    and every refusal counted once (as many as Exim logged), in this relay's store or
    in Redis."""
    exim, peer = world
    half_refused_at_once(exim, peer)
    [block] = blocks(exim, "auth", "bob")
    assert block["counter"] == "failures"
    assert len(notifications(exim)) == 1
    refused = sum(lines(exim, "**", f"gone{n}@{PEER}") for n in range(8))
    delivered = sum(lines(exim, "=>", f"ok{n}@{PEER}") for n in range(8))
    assert refused > 3 and total(exim, "auth", "bob", "failures") == refused
    assert total(exim, "auth", "bob", "failrate") == refused + delivered
    # blocked: its next message is frozen, and nothing more is blocked or told
    assert exim.send([f"later@{PEER}"], user="bob", subject="after the block") == {}
    wait_for("the next message frozen", lambda: message_id(exim, "after the block") in exim.queue(frozen=True))
    assert len(blocks(exim, "auth", "bob")) == 1 and len(notifications(exim)) == 1


FAILRATE = {"failrate": {"limit": 30, "period": "1h", "minimum": 6, "mode": "enforce"}}


@pytest.mark.parametrize("world", [pytest.param(FAILRATE, id="lmdb"),
                                   pytest.param({**FAILRATE, "redis": True}, id="redis", marks=needs_redis)],
                         indirect=True)
def test_the_failure_ratio_blocks_once(world: tuple[h.Exim, Peer]) -> None:
    """Half of the remote recipients refused, in parallel deliveries: once 6 were
    tried, more than 30 % is over the limit: one block, one notification (counted in
    this relay's store, or in Redis)."""
    exim, peer = world
    half_refused_at_once(exim, peer)
    assert len(blocks(exim, "auth", "bob")) == 1
    block = exim.show("auth", "bob")["block"]
    assert (block["counter"], block["limit"]) == ("failrate", 30) and block["count"] > 30
    assert len(notifications(exim)) == 1


@pytest.mark.parametrize("world", [{"failrate": {"limit": 50, "period": "1h", "minimum": 5, "mode": "enforce"}}],
                         indirect=True)
def test_a_deferral_counts_once_however_often_retried_and_its_fate_once(world: tuple[h.Exim, Peer]) -> None:
    """A 451 retried on every queue run is one bad outcome in failrate; the recipient
    then delivered adds nothing, and one then refused adds its one failure. Counted per
    retry, the 3 recipients' 9 outcomes would be over the minimum of 5, 8 of them bad:
    blocked."""
    exim, peer = world
    peer.rcpt.update({"slow": "451 4.7.1 greylisted, try again later", "doomed": "451 4.3.0 mailbox busy"})
    assert exim.send([f"slow@{PEER}", f"doomed@{PEER}", f"fast@{PEER}"], user="bob", subject="retried") == {}
    msg = message_id(exim, "retried")
    wait_for("the first try", lambda: lines(exim, "==", f"doomed@{PEER}") == 1 and
             total(exim, "auth", "bob", "failrate") == 3)
    for run in range(2, 5):
        retry(exim, msg, f"doomed@{PEER}", run)
        assert lines(exim, "==", f"slow@{PEER}") == run
    assert peer.tried["slow"] == 4 and total(exim, "auth", "bob", "failrate") == 3
    assert total(exim, "auth", "bob", "failures") == 0, "a deferral is no failure"
    peer.rcpt.update({"slow": "250 2.1.5 ok now", "doomed": REFUSED.format("doomed")})
    retry(exim, msg, f"doomed@{PEER}", 1, mark="**")
    completed(exim, msg)
    assert (lines(exim, "=>", f"slow@{PEER}"), lines(exim, "**", f"doomed@{PEER}")) == (1, 1)
    assert total(exim, "auth", "bob", "failrate") == 3, "each recipient's first outcome, once"
    failures = counter(exim, "auth", "bob", "failures")
    assert failures["total"] == 1 and "550 5.1.1 <doomed>" in failures["evidence"][0]
    assert blocks(exim, "auth", "bob") == []


def test_a_relay_hosts_outcomes_count_against_it(world: tuple[h.Exim, Peer]) -> None:
    exim, peer = world
    peer.rcpt["gone"] = REFUSED.format("gone")
    with smtplib.SMTP("127.0.0.1", exim.port, source_address=(h.RELAY_CLIENT, 0), timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.sendmail("shop@customer.example", [f"ok@{PEER}", f"gone@{PEER}"], b"Subject: relayed\r\n\r\nhello\r\n")
    completed(exim, message_id(exim, "relayed"))
    relay = h.RELAY_CLIENT
    assert (total(exim, "relay", relay, "failures"), total(exim, "relay", relay, "failrate")) == (1, 2)
    assert total(exim, "sender", "shop@customer.example", "failures") == 1


def test_mail_of_no_counted_subject_sends_nothing(world: tuple[h.Exim, Peer]) -> None:
    """root's mail (cron: a local submitter eximhook exempts) has no $acl_m_ns: its
    delivery outcomes reach no daemon, not even as a request it refuses."""
    exim, peer = world
    peer.rcpt["gone"] = REFUSED.format("gone")
    subprocess.run([EXIM, "-C", str(exim.conf), "-odi", "-f", f"alice@{h.DOMAIN}", "-t"], check=True,
                   capture_output=True, input=f"To: ok@{PEER}, gone@{PEER}\nSubject: from cron\n\nhello\n".encode())
    completed(exim, message_id(exim, "from cron"))
    assert (lines(exim, "=>", f"ok@{PEER}"), lines(exim, "**", f"gone@{PEER}")) == (1, 1)
    for name in ("failures", "failrate"):
        assert json.loads(exim.eximhook("top", name, "--json").stdout) == []
    assert "bad request" not in exim.hook_log()


def test_hostile_recipient_and_refusal_stay_one_token(world: tuple[h.Exim, Peer]) -> None:
    """A recipient whose local part holds spaces and what looks like the request's own
    fields, refused with a reply of several lines, expansion syntax, 8-bit bytes and
    3000 bytes: one failure, one outcome, the text kept as it came (cut), the daemon
    reads every request."""
    exim, peer = world
    local = '"x evidence=ZmFpbA== outcome=b2s= y"'
    peer.rcpt[local] = "550-first ${run{/bin/false}} evidence=AAAA \udcff\r\n550 " + "z" * 3000
    assert exim.send([f"{local}@{PEER}", f"ok@{PEER}"], user="bob", subject="hostile") == {}
    completed(exim, message_id(exim, "hostile"))
    failures = counter(exim, "auth", "bob", "failures")
    [evidence] = failures["evidence"]
    assert evidence.startswith(f"x evidence=zmfpba== outcome=b2s= y@{PEER}: SMTP error from remote mail server "
                               f"after RCPT TO:<{local}@{PEER}>: 550-first ${{run{{/bin/false}}}} evidence=AAAA ")
    assert evidence.endswith("zzz...[cut]")
    assert failures["total"] == 1 and total(exim, "auth", "bob", "failrate") == 2
    assert "bad request" not in exim.hook_log() and exim.log("panic") == ""


@pytest.mark.parametrize("world", [{"activated": False}, {"activated": True}], ids=["stopped", "killed"],
                         indirect=True)
def test_deliveries_go_on_with_the_daemon_down(world: tuple[h.Exim, Peer]) -> None:
    """Stopped, the daemon removes its socket and nothing is asked. Killed while systemd
    holds its socket (eximhook-serve.socket; here the test does), each outcome waits
    EXIMHOOK_WAIT for an answer and Exim goes on; the daemon, back, reads what waited in
    the socket's backlog and counts it. Either way the mail is delivered or bounced as
    it would be without eximhook."""
    exim, peer = world
    killed = exim.activated
    peer.rcpt["gone"] = REFUSED.format("gone")
    exim.stop_daemon(signal.SIGKILL if killed else signal.SIGTERM)
    assert exim.socket.exists() is killed
    assert exim.send([f"ok@{PEER}", f"gone@{PEER}"], user="bob", subject="daemon down") == {}
    completed(exim, message_id(exim, "daemon down"))
    assert (lines(exim, "=>", f"ok@{PEER}"), lines(exim, "**", f"gone@{PEER}")) == (1, 1)
    wait_for("the bounce", lambda: any(b"Subject: Mail delivery failed" in m for m in exim.maildir("bob")))
    assert exim.log("panic") == "" and "event_action" not in exim.log()
    exim.start_daemon()
    if killed:
        wait_for("the outcomes that waited, counted", lambda: total(exim, "auth", "bob", "failrate") == 2)
        assert total(exim, "auth", "bob", "failures") == 1
    else:
        assert total(exim, "auth", "bob", "failrate") == 0


@pytest.mark.parametrize("world", [{"wired": False}], indirect=True)
def test_a_transport_without_the_event_counts_nothing(world: tuple[h.Exim, Peer]) -> None:
    """The counting is the transport's event_action: without it (a config that has not
    added the lines), outcomes are not counted; the rest of eximhook is unchanged."""
    exim, peer = world
    peer.rcpt["gone"] = REFUSED.format("gone")
    assert exim.send([f"ok@{PEER}", f"gone@{PEER}"], user="bob", subject="unwired") == {}
    completed(exim, message_id(exim, "unwired"))
    assert total(exim, "auth", "bob", "recipients") == 2
    assert (total(exim, "auth", "bob", "failrate"), total(exim, "auth", "bob", "failures")) == (0, 0)


# In a mount namespace: private copies of Debian's config, made a split smarthost set-up
# (the smarthost: the peer), eximhook added by setup-exim4, the generated config kept.
# Arguments: eximhook config, snippets, out dir, smarthost, eximhook.
DEBIAN = PRIVATE_CONFIG + r"""
sed -i -e "s/^dc_use_split_config=.*/dc_use_split_config='true'/" \
  -e "s/^dc_eximconfig_configtype=.*/dc_eximconfig_configtype='smarthost'/" \
  -e "s/^dc_smarthost=.*/dc_smarthost='$4'/" /etc/exim4/update-exim4.conf.conf
update-exim4.conf
"$5" --config "$1" setup-exim4 add --snippets "$2" > "$3/add.out"
cp /var/lib/exim4/config.autogenerated "$3/debian.conf"
"""


def test_debians_smarthost_transport_counts_after_setup_exim4_add() -> None:
    """Debian's own remote_smtp_smarthost, in the config update-exim4.conf generates
    after setup-exim4 add (split layout): a relay host's recipients the smarthost
    refuses count against the host, those it takes as good."""
    peer = Peer("127.0.0.3").start()  # 127.0.0.1 is this host's own address to Exim: a smarthost must not be it
    server = h.make(["bob"], serve=True)
    try:
        server.setup()
        out = server.work / "debian"
        out.mkdir()
        subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", DEBIAN, "bash",
                        str(server.eximhook_conf), str(server.snippets), str(out), f"127.0.0.3::{peer.port}", EXIMHOOK],
                       check=True, capture_output=True, timeout=120)
        assert "30_exim4-config_remote_smtp_smarthost_eximhook" in (out / "add.out").read_text()
        overrides = (f"SPOOLDIR = {server.spool}\nlog_file_path = {server.work}/log/%slog\n"
                     f"deliver_drop_privilege = true\nMAIN_RELAY_NETS = <; 127.0.0.1 ; ::1 ; {h.RELAY_CLIENT}\n")
        server.conf.write_text(overrides + (out / "debian.conf").read_text())
        server.start()
        peer.rcpt["gone"] = REFUSED.format("gone")
        with smtplib.SMTP("127.0.0.1", server.port, source_address=(h.RELAY_CLIENT, 0), timeout=30) as smtp:
            smtp.ehlo("client.example")
            smtp.sendmail("shop@customer.example", [f"ok@{PEER}", f"gone@{PEER}"], b"Subject: smarthost\r\n\r\nhi\r\n")
        # Debian logs no subjects: its one message from this sender
        received = wait_for("the message", lambda: re.search(r" (\S+) <= shop@customer\.example ", server.log()))
        completed(server, received[1])  # type: ignore[index]
        assert (lines(server, "=>", f"ok@{PEER}"), lines(server, "**", f"gone@{PEER}")) == (1, 1)
        relay = h.RELAY_CLIENT
        assert (total(server, "relay", relay, "failures"), total(server, "relay", relay, "failrate")) == (1, 2)
        assert server.log("panic") == ""
    finally:
        h.cleanup(server)
        peer.stop()
