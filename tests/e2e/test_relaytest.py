"""Seed 003 against a real Exim: customer hosts on other loopback addresses, simulated
with small SMTP servers (aiosmtpd), are probed by `eximhook relaytest probe`. The open
relay forwards the probe back to our Exim, which pipes it to `eximhook relaytest
receive`: BLOCK, listed in blocked.nets, the customer's postmaster and the abuse desk
mailed, and the host refused at its next RCPT, also in a session that was already open.
The closed relay refuses (OK), the silent one drops the probe (OK once unknown_after has
passed, on an injected clock), the bouncing one bounces it (OK); forged and replayed
returns change nothing."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import pwd
import smtplib
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from eximhook.config.load import load
from eximhook.relaytest import signing, table
from eximhook.storage.store import Store

from ..support import harness as h
from ..support.marks import needs_exim, needs_root

pytestmark = [pytest.mark.e2e, needs_exim, needs_root]

OPEN, CLOSED, SILENT, BOUNCER = "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"
OUTSIDE = "127.0.0.9"  # not in [relaytest] networks
MAILBOX = f"relaytest@{h.DOMAIN}"
ABUSE = f"abuse@{h.DOMAIN}"
CUSTOMER_POSTMASTER = f"carol@{h.DOMAIN}"  # the contacts file's address for OPEN


def forward(exim: h.Exim, source: str, sender: str, rcpts: list[str], data: bytes) -> None:
    """Submit to our Exim from ``source``, as the customer host would."""
    with smtplib.SMTP("127.0.0.1", exim.port, source_address=(source, 0), timeout=30) as smtp:
        smtp.sendmail(sender, rcpts, data)


class OpenRelay:
    """Relays whatever it is given, to our Exim (where the probe mailbox lives)."""

    def __init__(self, exim: h.Exim) -> None:
        self.exim = exim
        self.relayed: list[bytes] = []
        self.helo: list[str] = []  # the name each prober gave in EHLO

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = bytes(envelope.original_content)
        self.relayed.append(data)
        self.helo.append(session.host_name)
        await asyncio.get_running_loop().run_in_executor(
            None, forward, self.exim, OPEN, envelope.mail_from, list(envelope.rcpt_tos), data)
        return "250 2.0.0 relayed"


class ClosedRelay:
    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        return "550 5.7.1 Relaying denied"


class SilentRelay:
    """Takes the probe and drops it."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 ok"


class BouncingRelay:
    """Takes the probe, then bounces it to its sender: a delivery-status report with the
    probe's headers, from an empty envelope sender, as a relay that checks late does."""

    def __init__(self, exim: h.Exim) -> None:
        self.exim = exim

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        original = bytes(envelope.original_content)
        threading.Thread(target=self.bounce, args=(envelope.mail_from, original), daemon=True).start()
        return "250 2.0.0 queued"

    def bounce(self, to: str, original: bytes) -> None:
        headers = original.split(b"\r\n\r\n", 1)[0].decode()
        dsn = (f"From: Mail Delivery System <MAILER-DAEMON@customer.example>\r\nTo: {to}\r\n"
               "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
               'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
               "--b1\r\nContent-Type: text/plain\r\n\r\nRelaying denied.\r\n"
               "--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; customer.example\r\n\r\n"
               f"Final-Recipient: rfc822; {MAILBOX}\r\nAction: failed\r\nStatus: 5.7.1\r\n\r\n"
               f"--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n{headers}\r\n--b1--\r\n")
        forward(self.exim, BOUNCER, "", [to], dsn.encode())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[h.Exim, OpenRelay]]:
    """Our Exim with the relay-test snippets, and the four customers on one probe port."""
    probe_port = h.free_port(OPEN, CLOSED, SILENT, BOUNCER)
    work = Path(tempfile.mkdtemp(prefix="eximhook-e2e-"))
    exim_user = pwd.getpwnam(h.EXIM_USER)
    key = work / "relaytest.key"
    key.write_bytes(os.urandom(32).hex().encode() + b"\n")
    os.chown(key, 0, exim_user.pw_gid)
    key.chmod(0o640)
    (work / "contacts").write_text(f"# customer networks and their postmasters\n{OPEN} {CUSTOMER_POSTMASTER}\n")
    # neither [relaytest] blocked_nets nor EXIMHOOK_NETS_FILE: with [store] mirror_dir in
    # the test's spool, eximhook writes and Exim reads its blocked.nets there
    rt = {"networks": ["127.0.0.0/29"], "key_file": str(key), "mailbox": MAILBOX, "port": probe_port,
          "contacts": str(work / "contacts"), "connect_timeout": 5, "timeout": 20}
    s = "EXIMHOOK_SNIPPETS"  # the server's copy of the snippets
    server = h.Exim(work, users=["bob"], settings={f"relaytest.{k}": v for k, v in rt.items()},
                    relay_hosts=(h.RELAY_CLIENT, OPEN, CLOSED, SILENT, BOUNCER),
                    rcpt_acl=f".include {s}/acl-rcpt-relaytest.conf\n" + h.Exim.snippet_acl(),
                    routers=f".include {s}/relaytest-router.conf", transports=f".include {s}/relaytest-transport.conf")
    open_relay = OpenRelay(server)
    customers = [Controller(handler, hostname=ip, port=probe_port) for ip, handler in
                 ((OPEN, open_relay), (CLOSED, ClosedRelay()), (SILENT, SilentRelay()),
                  (BOUNCER, BouncingRelay(server)))]
    try:
        server.setup().start()
        for c in customers:
            c.start()
        yield server, open_relay
    finally:
        for c in customers:
            c.stop()
        h.cleanup(server)


def record(exim: h.Exim, ip: str) -> dict[str, Any] | None:
    shown = exim.eximhook("relaytest", "show", ip, "--json")
    return json.loads(shown.stdout)["record"]  # type: ignore[no-any-return]


def status(exim: h.Exim, ip: str) -> str | None:
    r = record(exim, ip)
    return None if r is None else str(r["status"])


def probe(exim: h.Exim, ip: str) -> str:
    result = exim.eximhook("relaytest", "probe", ip)
    assert result.returncode == 0, result.stderr
    return result.stdout


def nets(exim: h.Exim) -> str:
    path = exim.spool / "blocked.nets"
    return path.read_text() if path.exists() else ""


def mails(exim: h.Exim, box: str) -> list[EmailMessage]:
    return [email.message_from_bytes(m, policy=email.policy.default) for m in exim.maildir(box)]  # type: ignore[misc]


def subject_lines(raw: bytes) -> list[bytes]:
    """The Subject header as it was written: its first line and the folds after it."""
    lines = raw.partition(b"\n\n")[0].split(b"\n")
    start = next(i for i, line in enumerate(lines) if line.lower().startswith(b"subject:"))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith((b" ", b"\t"))), len(lines))
    return lines[start:end]


def test_open_relay_is_blocked_and_cut_off_mid_session(world: tuple[h.Exim, OpenRelay]) -> None:
    exim, open_relay = world
    (exim.spool / "blocked.nets").write_text("# support: hand-made entries\n192.0.2.0/24  # a customer we know\n")
    # the customer is sending through us in a session that stays open
    session = exim.connect(OPEN, tls=False)
    session.mail("shop@customer.example")
    assert session.rcpt(f"alice@{h.DOMAIN}")[0] == 250

    assert "accepted" in probe(exim, OPEN)
    h.wait_for("the returned probe to block the host", lambda: status(exim, OPEN) == "BLOCK")
    h.wait_for("blocked.nets to list it", lambda: f"\n{OPEN}  # open relay" in nets(exim))
    assert nets(exim).startswith("# support: hand-made entries\n192.0.2.0/24  # a customer we know\n# BEGIN")

    # the next RCPT of the session that was open before the probe came back
    code, said = session.rcpt(f"bob@{h.DOMAIN}")
    assert code == 550 and b"open relay" in said, (code, said)
    assert session.rcpt(f"Postmaster@{h.DOMAIN}")[0] == 250, "the refusal says to ask us: that must get through"
    session.close()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        exim.send([f"alice@{h.DOMAIN}"], source=OPEN)
    assert refused.value.recipients[f"alice@{h.DOMAIN}"][0] == 550

    # the customer's postmaster, Cc the abuse desk: one mail, the same in both boxes
    h.wait_for("the customer's mail", lambda: mails(exim, "carol") and mails(exim, "abuse"))
    [to_customer], [to_abuse] = mails(exim, "carol"), mails(exim, "abuse")
    assert to_customer["To"] == CUSTOMER_POSTMASTER and to_customer["Cc"] == ABUSE
    # it names our Exim by its primary_hostname, folds its Subject after text, at a space,
    # within 78 characters, and its Message-ID ends as the abuse desk's mails' do
    server = f"mx.{h.DOMAIN}"
    assert to_customer["Subject"] == f"Your host {OPEN} is an open relay: it may no longer send mail through {server}"
    [raw] = exim.maildir("carol")
    first, *folds = subject_lines(raw)
    assert first.startswith(b"Subject: Your host ") and all(len(line) <= 78 for line in [first, *folds]), folds
    assert f"So {server} now refuses mail from {OPEN}" in to_customer.get_content()
    assert to_customer["Message-ID"] == to_abuse["Message-ID"]
    assert to_customer["Message-ID"].endswith(f"@{os.uname().nodename}>")
    history = json.loads(exim.eximhook("history", "--json").stdout)
    assert [(e["event"], e["key"]) for e in history].count(("relaytest-blocked", OPEN)) == 1

    # the probe named our Exim as it names itself too, in EHLO and in its text
    relayed = open_relay.relayed[0]
    probe_mail = email.message_from_bytes(relayed, policy=email.policy.default)
    assert open_relay.helo == [server] and f"abuse desk of {server}" in probe_mail["Subject"]
    assert subject_lines(relayed.replace(b"\r\n", b"\n"))[0].startswith(b"Subject: Open relay test of ")

    # the probe as the relay sent it is a replay now: nothing changes, nothing is mailed
    forward(exim, "127.0.0.1", MAILBOX, [MAILBOX], relayed)
    h.wait_for("the replay to be logged", lambda: "not the host's outstanding probe" in exim.hook_log())
    assert len(mails(exim, "carol")) == 1 and status(exim, OPEN) == "BLOCK"
    # cleared by the desk (fixed, say), the old probe replayed again still blocks nothing
    assert exim.eximhook("relaytest", "clear", OPEN).returncode == 0
    assert OPEN not in nets(exim) and "192.0.2.0/24  # a customer we know" in nets(exim)
    forward(exim, "127.0.0.1", MAILBOX, [MAILBOX], relayed)
    h.wait_for("the second replay to be logged",
               lambda: exim.hook_log().count("not the host's outstanding probe") == 2)
    assert status(exim, OPEN) is None and OPEN not in nets(exim)
    assert exim.send([f"alice@{h.DOMAIN}"], source=OPEN) == {}


def test_closed_silent_and_bouncing_relays_are_ok(world: tuple[h.Exim, OpenRelay]) -> None:
    exim, _ = world
    assert "refused" in probe(exim, CLOSED)
    assert status(exim, CLOSED) == "OK"

    assert "accepted" in probe(exim, BOUNCER)
    h.wait_for("the bounce to settle the host", lambda: status(exim, BOUNCER) == "OK")
    assert (record(exim, BOUNCER) or {})["bounced"] is True

    assert "accepted" in probe(exim, SILENT)
    assert status(exim, SILENT) == "UNKNOWN"
    cfg = load(str(exim.eximhook_conf))
    probed = float((record(exim, SILENT) or {})["probe_time"])
    with Store(cfg.store.path) as store:  # the clock, injected: 47 h later still UNKNOWN, 49 h later OK
        assert table.settle(store, probed + 47 * 3600, cfg.relaytest.unknown_after) == []
        assert table.settle(store, probed + 49 * 3600, cfg.relaytest.unknown_after) == [SILENT]
    assert status(exim, SILENT) == "OK"
    assert nets(exim).count("\n") == 2  # just the markers: nobody listed
    for ip in (CLOSED, SILENT, BOUNCER):
        assert exim.send([f"alice@{h.DOMAIN}"], source=ip) == {}
    assert mails(exim, "abuse") == []


def test_forged_returns_change_nothing(world: tuple[h.Exim, OpenRelay]) -> None:
    exim, _ = world
    assert "accepted" in probe(exim, SILENT)
    r = record(exim, SILENT) or {}
    cfg = load(str(exim.eximhook_conf))
    good = signing.make(signing.load_key(cfg.relaytest.key_file), SILENT, int(r["probe_time"]), r["probe_id"])
    forged = [
        signing.make(b"not the key, but long enough", SILENT, int(r["probe_time"]), r["probe_id"]),  # bad signature
        good[:-1] + ("0" if good[-1] != "0" else "1"),  # tampered
        signing.make(signing.load_key(cfg.relaytest.key_file), SILENT, int(r["probe_time"]), "0" * 16),  # no such probe
        signing.make(signing.load_key(cfg.relaytest.key_file), SILENT, int(r["probe_time"]) - 3 * 86400,
                     r["probe_id"]),  # stale
    ]
    for token in forged:
        msg = f"From: <{MAILBOX}>\r\nTo: <{MAILBOX}>\r\nSubject: test\r\nX-Eximhook-Probe: {token}\r\n\r\n{token}\r\n"
        forward(exim, h.RELAY_CLIENT, MAILBOX, [MAILBOX], msg.encode())
    h.wait_for("four forgeries to be logged", lambda: exim.hook_log().count(f"of {SILENT}: ignored") == 4)
    log = exim.hook_log()
    assert log.count("bad signature") == 2 and "stale" in log and "not the host's outstanding probe" in log
    assert status(exim, SILENT) == "UNKNOWN" and SILENT not in nets(exim)
    assert mails(exim, "abuse") == []
    assert exim.send([f"alice@{h.DOMAIN}"], source=SILENT) == {}


def test_a_host_outside_the_networks_is_never_probed(world: tuple[h.Exim, OpenRelay]) -> None:
    exim, _ = world
    result = exim.eximhook("relaytest", "probe", OUTSIDE)
    assert result.returncode == 65 and "not in [relaytest] networks" in result.stderr
    assert record(exim, OUTSIDE) is None
    # this server's own address, inside the networks: our Exim would "relay" the probe to itself
    result = exim.eximhook("relaytest", "probe", "127.0.0.1")
    assert result.returncode == 65 and "an address of this server" in result.stderr
    assert record(exim, "127.0.0.1") is None


def test_the_watcher_probes_the_customers_that_send_and_cuts_the_open_relay_off(
        world: tuple[h.Exim, OpenRelay]) -> None:
    """The whole cycle of seed 003, started by mail alone: `eximhook relaytest watch`
    follows our Exim's mainlog, probes each customer whose mail arrives, and the open
    relay's returned probe cuts off the session it has open; an address outside the
    networks sends too, and is never probed."""
    exim, _ = world
    watcher = subprocess.Popen([sys.executable, "-IS", h.EXIMHOOK, "--config", str(exim.eximhook_conf), "relaytest",
                                "watch", "--log", str(exim.work / "log" / "mainlog")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        h.wait_for("the watcher to start", lambda: "relaytest watch: following" in exim.hook_log())
        for ip in (OPEN, CLOSED, OUTSIDE):
            assert exim.send([f"alice@{h.DOMAIN}"], source=ip) == {}
        session = exim.connect(OPEN, tls=False)  # the open relay's next session, open while it is probed
        session.mail("shop@customer.example")
        assert session.rcpt(f"alice@{h.DOMAIN}")[0] == 250
        h.wait_for("the open relay to be blocked", lambda: status(exim, OPEN) == "BLOCK", 30)
        code, said = session.rcpt(f"bob@{h.DOMAIN}")
        assert code == 550 and b"open relay" in said, (code, said)
        session.close()
        h.wait_for("the closed relay to be OK", lambda: status(exim, CLOSED) == "OK", 30)
        assert record(exim, OUTSIDE) is None
        # more mail from the same customers: tested now, so not probed again (one claim each)
        for ip in (CLOSED, OUTSIDE):
            assert exim.send([f"alice@{h.DOMAIN}"], source=ip) == {}
        history = json.loads(exim.eximhook("history", "--json").stdout)
        probes = [e["key"] for e in history if e["event"] == "relaytest-probe"]
        assert sorted(probes) == sorted([OPEN, CLOSED]), history
    finally:
        watcher.terminate()
        out = watcher.communicate(timeout=60)[0]
    assert watcher.returncode == 0, out
    assert json.loads((exim.spool / "eximhook" / "relaytest-watch.state").read_text())
