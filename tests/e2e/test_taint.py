"""A session Exim runs on its stdin with the client's address from its command line,
``exim -bs -oMa ADDR``: an admin trying a client's session by hand, or a wrapper that
starts Exim per connection (``-oMi`` too: then it counts). Exim marks that address
tainted, and Exim 4.96.2 (Debian 12's 4.96) kills the process when ``${mask:}`` gets a
tainted address ("Taint mismatch, Ustrncpy: string_is_ip_addressX" in the paniclog,
421 to the client): the snippets' keys must come out as over SMTP, and no panic."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator

import pytest

from eximhook.config.load import Config
from eximhook.model.subjects import normalize

from ..support import harness as h
from ..support.marks import needs_exim, needs_root

pytestmark = [pytest.mark.e2e, needs_exim, needs_root]
RELAY6 = "2001:db8:1:2::7"  # a relay customer's IPv6 host: relay_from_hosts below ("::" is one colon in a list)


@pytest.fixture
def exim() -> Iterator[h.Exim]:
    # AUTH offered without TLS: -bs on a pipe has none (Debian's AUTH_SERVER_ALLOW_NOTLS_PASSWORDS)
    server = h.make(["bob"], serve=True, macros={"EXIMHOOK_AUTH_ADVERTISE": "true"},
                    relay_hosts=(h.RELAY_CLIENT, "2001::db8::1::2::::/64"))
    try:
        server.setup().start()
        yield server
    finally:
        h.cleanup(server)


def session(exim: h.Exim, address: str | None, *commands: str) -> list[int]:
    """``commands`` in one ``exim -bs`` session from ``address`` (received on port 25,
    so it counts as a connection would; None: a local session, no client address): the
    code of each reply, the greeting's first."""
    script = "".join(f"{c}\r\n" for c in ("EHLO client.example", *commands, "QUIT"))
    client = [] if address is None else ["-oMa", address, "-oMi", "127.0.0.1.25"]
    out = subprocess.run([h.EXIM, "-C", str(exim.conf), "-bs", *client],
                         input=script.encode(), capture_output=True, timeout=60, check=False)
    assert exim.log("panic") == "", exim.log("panic")
    return [int(code) for code in re.findall(rb"^(\d{3}) ", out.stdout, re.M)]


def plain(password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0bob\0{password}".encode()).decode()


def failures(exim: h.Exim, ns: str, key: str) -> int:
    counter = exim.show(ns, key)["counters"].get("authfail")
    return int(counter["total"]) if counter else 0


@pytest.mark.parametrize("address", ["192.0.2.7", "2001:db8:1:2::7"], ids=["ipv4", "ipv6"])
def test_auth_from_an_address_given_on_the_command_line(exim: h.Exim, address: str) -> None:
    """A failed AUTH counts against the client's address and network, the right password
    logs in, and a block on the network refuses the next AUTH: the keys the snippets
    compute (EXIMHOOK_IP_KEY, EXIMHOOK_NET_KEY) are the daemon's."""
    ip_key = normalize("ip", address)
    _, net_key = Config().wider("ip", ip_key)
    assert session(exim, address, plain("wrong")) == [220, 250, 535, 221]
    h.wait_for("the failure counted for the address and its network",
               lambda: (failures(exim, "ip", ip_key), failures(exim, "net", net_key)) == (1, 1))
    assert session(exim, address, plain(h.PASSWORD)) == [220, 250, 235, 221]
    assert exim.eximhook("block", "--no-notify", "net", net_key).returncode == 0
    assert session(exim, address, plain(h.PASSWORD))[:3] == [220, 250, 554]
    assert f"AUTH from a blocked address (ip {ip_key}, net {net_key})" in exim.log()


def test_a_relay_customer_given_on_the_command_line(exim: h.Exim) -> None:
    """An IPv6 customer's mail, its /64 blocked (EXIMHOOK_RELAY_KEY): accepted and frozen."""
    key = normalize("relay", RELAY6)
    assert exim.eximhook("block", "--no-notify", "relay", key).returncode == 0
    codes = session(exim, RELAY6, f"MAIL FROM:<bob@{h.DOMAIN}>", f"RCPT TO:<alice@{h.DOMAIN}>", "DATA",
                    "Subject: from the command line\r\n\r\nhello\r\n.")
    assert codes == [220, 250, 250, 250, 354, 250, 221]
    [frozen] = exim.queue(frozen=True)
    assert f"X-Relayed-From: {key}" in exim.headers(frozen)


def test_auth_in_a_local_session(exim: h.Exim) -> None:
    """``exim -bs`` with no client address: AUTH is answered (no address key to expand,
    which made it a 451 before), and a failure counts nothing and sends the daemon
    nothing (it had answered an empty key with E). A login block refuses the account
    there too (no network it is known from), with a 535, not an expansion error's 435."""
    assert session(exim, None, plain("wrong")) == [220, 250, 535, 221]
    assert session(exim, None, plain(h.PASSWORD)) == [220, 250, 235, 221]
    assert json.loads(exim.eximhook("top", "authfail", "--json").stdout) == []
    assert exim.eximhook("block", "--no-notify", "login", "bob").returncode == 0
    assert session(exim, None, plain(h.PASSWORD)) == [220, 250, 535, 221]
    assert "bad request" not in exim.hook_log()
    assert "not given an IP address" not in exim.log()
