"""Open-relay probing (seed 003): the customer's mail and the probe name the server as
the real Exim names it (its primary_hostname, read with ``exim -bP``)."""

from __future__ import annotations

import email
import email.policy
import os
from pathlib import Path

import pytest

from eximhook.config.load import EximConfig, load
from eximhook.exim.queue import primary_hostname
from eximhook.relaytest import table
from eximhook.storage.store import Store

from ..support.marks import needs_exim
from ..support.paths import EXIM
from ..support.relaytest import NOW, relaytest_config


def exim_named(tmp_path: Path, name: str) -> EximConfig:
    """An [exim] whose config gives Exim the primary_hostname ``name``."""
    conf = tmp_path / "exim.conf"
    conf.write_text(f"primary_hostname = {name}\nspool_directory = {tmp_path}/spool\n"
                    f"log_file_path = {tmp_path}/%slog\n")
    return EximConfig(binary=EXIM, config=str(conf))


def headers_of(raw: bytes) -> list[bytes]:
    """The header lines as they were written, folds included."""
    return raw.partition(b"\n\n")[0].split(b"\n")


@needs_exim
@pytest.mark.parametrize("ip", ["192.0.2.7", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"])
def test_the_customers_mail_goes_to_postmaster_and_abuse(tmp_path: Path, mailbox: Path, ip: str) -> None:
    """To the postmaster, Cc the abuse desk; it names the server as Exim does (its
    primary_hostname, not the machine's name), its Subject's first line holds text and
    no line is longer than 78, and its Message-ID has the abuse desk's mails' domain
    (the machine's name for a bare "root", not "root")."""
    from eximhook.notify import send as notify

    cfg = load(str(relaytest_config(tmp_path)))
    server = "mx-out.relay-provider.example.net"
    with Store(cfg.store.path) as store:
        probe_id = table.claim(store, ip, NOW, 0, 0)
        assert probe_id and table.returned(store, ip, probe_id, int(NOW), NOW, False, "pm@customer",
                                           "abuse@example.net") == "blocked"
        sent, errors = notify.send_pending(store, to="desk@example.net", sender="root", sendmail=[
            str(mailbox / "sendmail.sh"), "-f", "root"], timeout=10, stale_after=300, budget=10, command=["eximhook"],
            clock=lambda: NOW, exim=exim_named(tmp_path, server))
        assert (sent, errors, store.outbox()) == (1, [], [])
    [out] = (mailbox / "out").glob("*.eml")
    argv, _, raw = out.read_bytes().partition(b"\n")
    assert argv == b"ARGV: -f root pm@customer abuse@example.net"
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert (msg["To"], msg["Cc"]) == ("pm@customer", "abuse@example.net")
    assert msg["Subject"] == f"Your host {ip} is an open relay: it may no longer send mail through {server}"
    [first] = [line for line in headers_of(raw) if line.startswith(b"Subject:")]
    assert first.startswith(b"Subject: Your host "), first
    assert all(len(line) <= 78 for line in headers_of(raw)), headers_of(raw)
    assert f"So {server} now refuses mail from {ip}" in msg.get_content()
    assert os.uname().nodename not in msg.get_content()
    assert msg["Message-ID"] == f"<eximhook.relaytest.blocked.{probe_id}@{os.uname().nodename}>"


@needs_exim
def test_the_probe_names_the_server_as_exim_does(tmp_path: Path) -> None:
    """The probe's From, Subject and text name the server by Exim's primary_hostname, its
    Subject is folded where a line would pass 78 characters, and its Message-ID is built
    as every mail of eximhook's."""
    from eximhook.notify import relaytest as message
    from eximhook.notify.mails import new_message_id

    server = primary_hostname(exim_named(tmp_path, "mx.relay-provider.example.net"))
    assert server == "mx.relay-provider.example.net"
    msg = message.probe(ip="2001:db8::25", probe_id="0123456789abcdef", probe_time=NOW, token="ehp1-x",
                        sender="relaytest@mx.example", mailbox="relaytest@mx.example",
                        abuse="abuse-desk@relay-provider.example.net", server=server)
    raw = msg.as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == ("Open relay test of 2001:db8::25 by the abuse desk of mx.relay-provider.example.net "
                                 "- questions: abuse-desk@relay-provider.example.net")
    assert parsed["From"].addresses[0].display_name == "Open relay test, abuse desk of " + server
    [first] = [line for line in headers_of(raw) if line.startswith(b"Subject:")]
    assert first == b"Subject: Open relay test of 2001:db8::25 by the abuse desk of"
    assert all(len(line) <= 78 for line in headers_of(raw)), headers_of(raw)
    assert parsed["Message-ID"] == new_message_id("relaytest.0123456789abcdef", "relaytest@mx.example")
    assert parsed["Message-ID"].endswith("@mx.example>")
