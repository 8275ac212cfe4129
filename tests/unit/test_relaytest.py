"""Open-relay probing (seed 003) on real store files: the token, the table's claims and
answers, blocked.nets, hostile returns, the probe's refusal of non-customers, the
customer's mail. The whole cycle against a real Exim is in e2e/test_relaytest.py; racing processes in
integration/test_relaytest.py."""

from __future__ import annotations

import functools
import json
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eximhook.config.load import Config, load
from eximhook.errors import ConfigError
from eximhook.log import Logger
from eximhook.relaytest import hosts, nets, receive, signing, table
from eximhook.relaytest.probe import NotACustomer, NotClaimed, send_probe
from eximhook.storage.store import Store

from ..support.fixtures import Run
from ..support.relaytest import DAY, KEY, NOW, relaytest_config


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return load(str(relaytest_config(tmp_path)))


@pytest.fixture
def store(cfg: Config) -> Store:
    return Store(cfg.store.path)


def fail_if_called(ip: str, port: int, timeout: float) -> None:
    raise AssertionError(f"connected to {ip}:{port}")


# -- the token -------------------------------------------------------------------------

@pytest.mark.parametrize("ip", ["192.0.2.7", "2001:db8::25"])
def test_token_round_trip(ip: str) -> None:
    token = signing.make(KEY, ip, 1700000000, "0123456789abcdef")
    [found] = signing.find(f"junk {token} junk {token}".encode())
    assert found == signing.Token("0123456789abcdef", 1700000000, ip, found.sig) and signing.valid(KEY, found)
    assert not signing.valid(b"another key, long enough", found)
    for forged in (found._replace(time=found.time + 1), found._replace(ip="192.0.2.8"),
                   found._replace(probe_id="0" * 16)):
        assert not signing.valid(KEY, forged)


@given(st.binary(max_size=4000))
def test_finding_tokens_in_any_bytes_never_fails(data: bytes) -> None:
    assert len(receive.tokens(data)) <= 10


# -- the table -------------------------------------------------------------------------

def test_claim_respects_cooldown_retest_and_block(store: Store) -> None:
    ip = "192.0.2.7"
    assert table.due(store, ip, NOW, 14 * DAY, 3600)
    first = table.claim(store, ip, NOW, 14 * DAY, 3600)
    assert first and table.get(store, ip)["status"] == table.UNKNOWN  # type: ignore[index]
    assert table.claim(store, ip, NOW + 60, 0, 3600) is None  # within the cooldown, even by hand
    assert table.claim(store, ip, NOW + 2 * DAY, 14 * DAY, 3600) is None  # not due for a retest
    second = table.claim(store, ip, NOW + 2 * 3600, 0, 3600)  # by hand, after the cooldown: supersedes
    assert second and second != first
    assert table.returned(store, ip, first, int(NOW), NOW + 3 * 3600, False, None, "abuse@x") .startswith("ignored")
    assert table.returned(store, ip, second, int(NOW + 2 * 3600), NOW + 3 * 3600, False, None, "abuse@x") == "blocked"
    assert not table.due(store, ip, NOW + 100 * DAY, 14 * DAY, 3600)  # BLOCK: never again by itself
    assert table.claim(store, ip, NOW + 100 * DAY, 0, 0) is None


def test_a_return_blocks_once_and_a_bounce_does_not_stop_it(store: Store) -> None:
    ip = "192.0.2.7"
    probe_id = table.claim(store, ip, NOW, 0, 0)
    assert probe_id
    assert table.returned(store, ip, probe_id, int(NOW), NOW + 60, True, None, "abuse@x") == "ok"
    assert table.returned(store, ip, probe_id, int(NOW), NOW + 61, True, None, "abuse@x").startswith("ignored")
    # the relayed probe itself still blocks: a bounce may be faked by whoever saw the probe
    assert table.returned(store, ip, probe_id, int(NOW), NOW + 120, False, "pm@customer", "abuse@x") == "blocked"
    assert table.returned(store, ip, probe_id, int(NOW), NOW + 130, False, "pm@customer", "abuse@x").startswith(
        "ignored")  # replayed
    [item] = store.outbox()
    assert (item["kind"], item["to"], item["cc"], item["block"]["key"]) == ("relaytest", "pm@customer", "abuse@x", ip)


def test_unknown_settles_ok_after_unknown_after(store: Store) -> None:
    probe_id = table.claim(store, "192.0.2.7", NOW, 0, 0)
    assert probe_id
    assert table.settle(store, NOW + 47 * 3600, 48 * 3600) == []
    assert table.settle(store, NOW + 48 * 3600, 48 * 3600) == ["192.0.2.7"]
    assert table.returned(store, "192.0.2.7", probe_id, int(NOW), NOW + 49 * 3600, False, None, "a@x").startswith(
        "ignored")


# -- blocked.nets ----------------------------------------------------------------------

admin_lines = st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                               max_size=40).map(lambda s: s + "\n"), max_size=6).map("".join)


@given(before=admin_lines, after=admin_lines, rounds=st.lists(st.lists(st.sampled_from(
    ["192.0.2.1", "192.0.2.2", "2001:db8::1"]), unique=True), min_size=1, max_size=4))
def test_merge_keeps_the_admins_lines_byte_for_byte(before: str, after: str, rounds: list[list[str]]) -> None:
    current = None
    first = nets.section([])
    current = before.encode() + first + after.encode()
    for ips in rounds:
        ours = nets.section([{"ip": ip, "blocked_at": NOW, "returned_probe": "x"} for ip in ips])
        current = nets.merge(current, ours)
        assert current == before.encode() + ours + after.encode()


def test_sync_appends_a_section_and_lists(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "blocked.nets"
    path.write_bytes(b"10.0.0.0/8 # by hand, no newline at the end")
    probe_id = table.claim(store, "192.0.2.7", NOW, 0, 0)
    assert probe_id and table.returned(store, "192.0.2.7", probe_id, int(NOW), NOW, False, None, "a@x") == "blocked"
    assert nets.sync(store, str(path)) and not nets.sync(store, str(path))
    data = path.read_bytes()
    assert data.startswith(b"10.0.0.0/8 # by hand, no newline at the end\n" + nets.BEGIN + b"192.0.2.7  # open relay")
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert nets.listed(str(path), "10.1.2.3") == ["10.0.0.0/8 # by hand, no newline at the end"]
    assert len(nets.listed(str(path), "192.0.2.7")) == 1 and nets.listed(str(path), "192.0.2.8") == []


# -- returned messages -----------------------------------------------------------------

@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000), sender=st.one_of(st.none(), st.just(""), st.text(max_size=30)))
def test_hostile_messages_change_nothing(cfg: Config, store: Store, data: bytes, sender: str | None) -> None:
    probe_id = table.claim(store, "192.0.2.7", NOW, 0, 0) or table.get(store, "192.0.2.7")["probe_id"]  # type: ignore[index]
    results = receive.process(cfg, store, data, sender, NOW + 60, Logger(cfg.log.file))
    assert all(r.startswith("ignored") for r in results)
    assert table.get(store, "192.0.2.7")["probe_id"] == probe_id  # type: ignore[index]
    assert store.outbox() == []


def test_tokens_survive_encodings_and_a_bounce_settles(cfg: Config, store: Store, tmp_path: Path) -> None:
    probe_id = table.claim(store, "192.0.2.7", NOW, 0, 0)
    assert probe_id
    token = signing.make(KEY, "192.0.2.7", int(NOW), probe_id)
    import base64

    body = base64.encodebytes(f"Your message\n{token}\n".encode()).decode()
    dsn = ("Content-Type: multipart/report; report-type=delivery-status;\n boundary=b\n\n--b\n"
           "Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n" + body + "--b--\n")
    assert token.encode() not in dsn.encode()
    assert receive.process(cfg, store, dsn.encode(), "someone@customer", NOW + 60, Logger(cfg.log.file)) == ["ok"]
    assert table.get(store, "192.0.2.7")["status"] == table.OK  # type: ignore[index]
    assert receive.process(cfg, store, b"Subject: hi\n\nno token here\n", "", NOW, Logger(cfg.log.file)) == []
    assert "no probe token" in (tmp_path / "eximhook.log").read_text()


# -- the probe -------------------------------------------------------------------------

@pytest.mark.parametrize("ip", ["198.51.100.7", "192.0.3.1", "2001:db9::1", "::ffff:198.51.100.7"])
def test_a_host_outside_the_networks_is_never_connected_to(cfg: Config, store: Store, ip: str) -> None:
    with pytest.raises(NotACustomer):
        send_probe(cfg, ip, "0" * 16, NOW, fail_if_called, store=store)  # type: ignore[arg-type]
    assert table.records(store) == []


def test_an_unclaimed_probe_is_not_sent(cfg: Config, store: Store) -> None:
    with pytest.raises(NotClaimed):
        send_probe(cfg, "192.0.2.7", "0" * 16, NOW, fail_if_called, store=store)  # type: ignore[arg-type]


def test_an_unreachable_host_stays_unknown_without_a_probe(cfg: Config, store: Store) -> None:
    def refused(ip: str, port: int, timeout: float) -> None:
        assert (ip, port) == ("192.0.2.7", 25)
        raise ConnectionRefusedError(111, "Connection refused")

    probe_id = table.claim(store, "::ffff:192.0.2.7".removeprefix("::ffff:"), NOW, 0, 0)
    assert probe_id
    assert send_probe(cfg, "::ffff:192.0.2.7", probe_id, NOW, refused, store=store) == "unreachable"  # type: ignore[arg-type]
    record = table.get(store, "192.0.2.7")
    assert record and (record["status"], record["probe_id"], record["outcome"]) == ("UNKNOWN", None, "unreachable")


class Customer:
    """A customer host on loopback, in a thread, that answers one connection as ``how``
    says: "silent" never greets; "greeting" and "ehlo" send a "220-" greeting line, or
    after the greeting a "250-" EHLO line, every 50 ms without end: each in time for a
    socket timeout, never complete. It stops when the client hangs up, or at ``stop``."""

    def __init__(self, how: str) -> None:
        self.how, self.stop = how, threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            try:
                if self.how == "ehlo":
                    conn.sendall(b"220 customer.example ESMTP\r\n")
                    conn.recv(1000)
                line = {"silent": b"", "greeting": b"220-still greeting\r\n", "ehlo": b"250-still answering\r\n"}
                while not self.stop.wait(0.05):
                    conn.sendall(line[self.how])
            except OSError:  # the client hung up: what a cut-off probe does
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.server.close()


@pytest.mark.parametrize(("how", "connect_timeout", "timeout", "detail"), [
    pytest.param("silent", 0.5, 60, "no connection and greeting within [relaytest] connect_timeout 0.5s",
                 id="silent-greeting"),
    pytest.param("greeting", 0.5, 60, "no connection and greeting within [relaytest] connect_timeout 0.5s",
                 id="endless-greeting"),
    pytest.param("ehlo", 0.5, 1, "EHLO: no answer within [relaytest] timeout 1s", id="endless-ehlo-answer"),
])
def test_a_probe_ends_at_its_deadlines(how: str, connect_timeout: float, timeout: float, detail: str) -> None:
    """The connection and the greeting get connect_timeout together, the whole probe
    gets timeout, also against a host that sends an unfinished answer a line at a time
    (each line within the socket's timeout: before, such a host held a probe, and a
    watcher thread, for as long as it liked)."""
    from eximhook.relaytest.probe import connect_smtp, converse

    customer = Customer(how)
    result: list[tuple[str, str]] = []
    connect = functools.partial(connect_smtp, helo="mx.example.net")
    probing = threading.Thread(target=lambda: result.append(converse(
        connect, "127.0.0.1", customer.port, connect_timeout, timeout, "relaytest@mx.example",
        "relaytest@mx.example", b"Subject: test\r\n\r\ntest\r\n")), daemon=True)
    try:
        probing.start()
        probing.join(60)  # a signal, not a measurement: the probe ends long before, or never
        assert not probing.is_alive(), "the probe still waits for the host"
    finally:
        customer.close()
    assert result == [(table.UNREACHABLE, detail)]


# -- config, commands, the customer's mail ----------------------------------------------

def test_config_defaults_and_errors(tmp_path: Path) -> None:
    rt = load(str(relaytest_config(tmp_path))).relaytest
    assert (rt.sender, rt.port, rt.retest, rt.unknown_after, rt.cooldown) == (rt.mailbox, 25, 14 * DAY, 48 * 3600, 3600)
    assert rt.blocked_nets == f"{tmp_path}/mirror/blocked.nets"
    assert rt.state == f"{tmp_path}/store/relaytest-watch.state"
    assert not Config().relaytest.enabled
    with pytest.raises(ConfigError, match="not a network"):
        load(str(relaytest_config(tmp_path, networks=["192.0.2.0/33"])))
    with pytest.raises(ConfigError, match="mailbox must be set"):
        load(str(relaytest_config(tmp_path, mailbox="")))
    assert hosts.normalize("::ffff:192.0.2.1") == "192.0.2.1"


def test_commands(tmp_path: Path, cli: Run) -> None:
    config = relaytest_config(tmp_path, contacts=str(tmp_path / "contacts"))
    (tmp_path / "contacts").write_text("192.0.2.0/24 noc@customer.example\n192.0.2.7 pm@customer.example\n")
    code, out, _ = cli("check-config", config_path=config)
    assert code == 0 and "relaytest key" in out and "2 network(s)" in out
    code, _, err = cli("relaytest", "probe", "198.51.100.1", config_path=config)
    assert code == 65 and "not in [relaytest] networks" in err
    assert hosts.contact(str(tmp_path / "contacts"), "192.0.2.7") == "pm@customer.example"
    assert hosts.contact(str(tmp_path / "contacts"), "192.0.2.8") == "noc@customer.example"
    cfg = load(str(config))
    with Store(cfg.store.path) as store:
        probe_id = table.claim(store, "192.0.2.7", NOW, 0, 0)
        assert probe_id and table.returned(store, "192.0.2.7", probe_id, int(NOW), NOW, False,
                                           hosts.contact(cfg.relaytest.contacts, "192.0.2.7"), "abuse@x") == "blocked"
    code, out, _ = cli("relaytest", "list", "--json", config_path=config)
    assert code == 0 and [r["status"] for r in json.loads(out)] == ["BLOCK"]
    assert "192.0.2.7  # open relay" in (tmp_path / "mirror" / "blocked.nets").read_text()
    code, out, _ = cli("relaytest", "show", "192.0.2.7", config_path=config)
    assert code == 0 and "status BLOCK" in out and "listed in" in out
    code, _, err = cli("relaytest", "probe", "192.0.2.7", config_path=config)
    assert code == 1 and "clear it first" in err
    code, out, _ = cli("relaytest", "clear", "192.0.2.7", config_path=config)
    assert code == 0 and "cleared (was BLOCK)" in out
    assert "192.0.2.7" not in (tmp_path / "mirror" / "blocked.nets").read_text()
    code, _, _ = cli("relaytest", "show", "192.0.2.7", config_path=config)
    assert code == 1
    code, out, _ = cli("history", "--json", "relaytest", "192.0.2.7", config_path=config)
    assert [e["event"] for e in json.loads(out)] == ["relaytest-probe", "relaytest-blocked", "relaytest-cleared"]
    assert cli("history", "relaytest", "not-an-ip", config_path=config)[0] == 64
    (tmp_path / "relaytest.key").chmod(0o644)
    code, _, err = cli("check-config", config_path=config)
    assert code == 78 and "readable by every local user" in err
