"""Password guessing per wider network: a failed AUTH counts against the client's
address (ip, a /64 for IPv6) and against its network (net: IPv4 /24, IPv6 /48), with
its own limit, so the 65,536 /64s of one /48 cannot each guess 30 times; a blocked
network stands for every address in it (no more blocks or mails for them), and the
blocks made before it stay. The keys are the snippets' own: what Exim's ${mask:}
writes."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from eximhook.config.load import Config, load
from eximhook.errors import BadSubject, ConfigError
from eximhook.model.subjects import normalize
from eximhook.notify import send as notify
from eximhook.serve.protocol import encode
from eximhook.storage.store import Store

from ..support.config import write_config
from ..support.daemon import Daemon
from ..support.fixtures import Run, Serve
from ..support.mailbox import messages
from ..support.marks import needs_redis
from ..support.waiting import wait_for

IP_LIMIT, NET_LIMIT = 1, 5  # each /64 blocks at its 2nd guess, the /48 at its 6th


@pytest.mark.parametrize(("given", "key"), [
    ("192.0.2.0/24", "192.0.2.0/24"), ("192.0.2.77/24", "192.0.2.0/24"),
    ("2001:DB8:1::/48", "2001.0db8.0001.0000.0000.0000.0000.0000/48"),
    ("2001.0db8.0001.0000.0000.0000.0000.0000/48", "2001.0db8.0001.0000.0000.0000.0000.0000/48"),
])
def test_an_admin_names_a_network_in_any_usual_form(given: str, key: str) -> None:
    assert normalize("net", given) == key


@pytest.mark.parametrize("given", ["192.0.2.7", "bob", "192.0.2.0/x", "2001:db8::/200"])
def test_a_net_key_that_is_no_network_is_refused(given: str) -> None:
    with pytest.raises(BadSubject, match="a net key is a network"):
        normalize("net", given)


def test_the_prefixes_and_limits_are_configurable(tmp_path: Path) -> None:
    cfg = load(str(write_config(tmp_path, settings={"net.ipv4_prefix": 16, "net.ipv6_prefix": 32,
                                                    "limits.net.authfail.limit": 7})))
    assert cfg.wider("ip", "192.0.2.7") == ("net", "192.0.0.0/16")
    assert cfg.wider("ip", normalize("ip", "2001:db8:1:2::5")) == ("net", "2001.0db8.0000.0000.0000.0000.0000.0000/32")
    assert cfg.wider("auth", "192.0.2.7") is None and cfg.wider("relay", "192.0.2.7") is None
    policy = cfg.policy("net", "authfail", "192.0.0.0/16")
    assert policy is not None and policy.windows == ((7, 3600.0),) and policy.enforced
    assert Config().policy("net", "authfail") == load(str(write_config(tmp_path))).policy("net", "authfail")
    off = load(str(write_config(tmp_path, settings={"net.ipv4_prefix": 32})))
    assert off.wider("ip", "192.0.2.7") is None, "32: IPv4 addresses are not grouped"
    narrow = write_config(tmp_path, settings={"net.ipv6_prefix": 80})
    with pytest.raises(ConfigError, match=r"net\.ipv6_prefix 80 is narrower than relay\.ipv6_prefix 64"):
        load(str(narrow))


def guess(daemon: Daemon, net64: int, n: int = 1) -> list[bytes]:
    """``n`` failed AUTHs from the /64 number ``net64`` of 2001:db8:1::/48, as
    acl-auth.conf reports them (the key as ${mask:} writes it)."""
    key = f"2001.0db8.0001.{net64:04x}.0000.0000.0000.0000/64"
    return [daemon.request(encode("record", "ip", key, kind="authfail", evidence=f"user{net64}",
                                  ip=f"2001:db8:1:{net64:x}::1")) for _ in range(n)]


NET = "2001.0db8.0001.0000.0000.0000.0000.0000/48"


def blocks(cli: Run) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for record in json.loads(cli("list", "--json")[1]):
        out.setdefault(record["ns"], []).append(record["key"])
    return out


def wider_config(tmp_path: Path, mailbox: Path, **settings: Any) -> Path:
    return write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"', settings={
        "limits.ip.authfail.limit": IP_LIMIT, "limits.net.authfail.limit": NET_LIMIT,
        "notify.digest_after": 1, "notify.digest_every": "1h", **settings})


def test_ten_thousand_64s_of_one_48_give_a_handful_of_blocks_and_one_mail(
        tmp_path: Path, mailbox: Path, serve: Serve, cli: Run, config: Path) -> None:
    """Two guesses from each of 10,000 /64s of one /48 (each /64 over its own limit):
    the /48's limit stops them after a few. Before, each /64 was blocked and mailed on
    its own: 10,000 block records, mirror rewrites and mails."""
    config.write_text(wider_config(tmp_path, mailbox).read_text())
    daemon = serve(config)
    # the first three /64s one after the other: two are blocked on their own, the third
    # trips the /48 (its 6th guess) before its own block, which the /48's supersedes
    assert guess(daemon, 0, 2) == [b"0", b"1"]
    assert guess(daemon, 1, 2) == [b"0", b"1"]
    assert guess(daemon, 2, 2) == [b"0", b"1"]
    assert blocks(cli) == {"ip": ["2001.0db8.0001.0000.0000.0000.0000.0000/64",
                                  "2001.0db8.0001.0001.0000.0000.0000.0000/64"], "net": [NET]}
    # the other 9,997, in parallel as guessers come: every one is refused, none blocked alone
    with ThreadPoolExecutor(8) as pool:
        answers = [a for batch in pool.map(lambda i: guess(daemon, i, 2), range(3, 10_000)) for a in batch]
    assert answers == [b"1"] * 2 * 9_997
    assert blocks(cli) == {"ip": ["2001.0db8.0001.0000.0000.0000.0000.0000/64",
                                  "2001.0db8.0001.0001.0000.0000.0000.0000/64"], "net": [NET]}, \
        "a handful of block records, and the blocks made before stay"
    events = json.loads(cli("history", "--json")[1])
    assert [e["event"] for e in events].count("blocked") == 3
    # mail: the first block at once; with digest_after = 1 the other two wait for the
    # digest, due an hour after it ([notify] digest_every)
    wait_for("the first mail", lambda: len(messages(mailbox)) == 1)
    assert cli("notify")[:2] == (0, "0"), "nothing else is due within the hour"
    daemon.stop()
    assert len(messages(mailbox)) == 1
    with Store(str(tmp_path / "store")) as store:
        later = time.time() + 3601
        sent, errors = notify.send_pending(
            store, to="abuse@example.net", sender="root", sendmail=[f"{mailbox}/sendmail.sh", "-f", "root"],
            timeout=10, stale_after=300, budget=20, command=["eximhook"], clock=lambda: later, burst=(1, 3600))
        assert (sent, errors) == (2, []) and store.outbox() == []
    first, digest = messages(mailbox)
    assert "client 2001.0db8.0001.0000.0000.0000.0000.0000/64 blocked because" in first.get_content()
    assert str(digest["Subject"]).startswith("2 clients and networks blocked on "), "one digest: one kind of abuse"
    text = digest.get_content()
    assert f"network {NET} blocked because has failed SMTP AUTH 6 times during 1h (limit {NET_LIMIT})" in text
    assert "client 2001.0db8.0001.0001.0000.0000.0000.0000/64 blocked because has failed SMTP AUTH 2 times" in text
    assert f"eximhook unblock net {NET}" in text


def test_show_list_and_unblock_work_for_a_network(tmp_path: Path, mailbox: Path, serve: Serve, cli: Run,
                                                  config: Path) -> None:
    config.write_text(wider_config(tmp_path, mailbox).read_text())
    daemon = serve(config)
    for net64 in range(3):
        guess(daemon, net64, 2)
    shown = json.loads(cli("show", "--json", "net", "2001:db8:1::/48")[1])
    assert shown["block"]["key"] == NET and shown["block"]["counter"] == "authfail"
    assert shown["counters"]["authfail"]["total"] == 6
    assert shown["block"]["ips"][-1] == "2001:db8:1:2::1" and "user2" in shown["block"]["rcpts"]
    code, out, _ = cli("list", "--ns", "net")
    assert code == 0 and NET in out
    assert cli("unblock", "net", "2001:db8:1::/48")[0] == 0
    assert blocks(cli) == {"ip": ["2001.0db8.0001.0000.0000.0000.0000.0000/64",
                                  "2001.0db8.0001.0001.0000.0000.0000.0000/64"]}, "the addresses' own blocks stay"
    assert guess(daemon, 7) == [b"0"], "the network counts from zero again"
    mirror = (tmp_path / "mirror" / "blocked_subjects.cdb").read_bytes()
    assert f"net:{NET}".encode() not in mirror and b"ip:2001.0db8.0001.0000" in mirror


def test_an_address_inside_a_blocked_network_is_neither_counted_into_a_block_nor_mailed(
        tmp_path: Path, mailbox: Path, serve: Serve, cli: Run, config: Path) -> None:
    """A network blocked by hand: the addresses in it trip no block of their own."""
    config.write_text(wider_config(tmp_path, mailbox, **{"notify.digest_after": 0}).read_text())
    daemon = serve(config)
    assert cli("block", "net", "2001:db8:1::/48", "--no-notify")[0] == 0
    assert guess(daemon, 5, IP_LIMIT + 3) == [b"1"] * (IP_LIMIT + 3)
    assert blocks(cli) == {"net": [NET]}
    assert cli("notify")[:2] == (0, "0") and messages(mailbox) == []


@pytest.mark.parametrize(("exempt", "why"), [
    pytest.param('ip = {"2001:db8:1::/48" = "the branch"}', "2001:db8:1::/48: the branch", id="ip-covering"),
    pytest.param('ip = {"2001:db8:1:5::/64" = "the office"}', "2001:db8:1:5::/64: the office", id="ip-inside"),
    pytest.param('net = {"2001:db8::/32" = "ours"}', "2001:db8::/32: ours", id="net-covering"),
])
def test_an_exemption_covers_the_network(tmp_path: Path, mailbox: Path, serve: Serve, cli: Run, config: Path,
                                         exempt: str, why: str) -> None:
    """A CIDR exemption that covers the /48 exempts it; so does an address exempt in it
    (an office NAT must not lose its logins to a block of its network)."""
    config.write_text(wider_config(tmp_path, mailbox).read_text() + f"\n[exempt]\n{exempt}\n")
    daemon = serve(config)
    for net64 in range(NET_LIMIT + 2):
        assert guess(daemon, 100 + net64) == [b"0"]

    def shown() -> dict[str, Any]:
        return json.loads(cli("show", "--json", "net", NET)[1])  # type: ignore[no-any-return]

    # nothing can block, so 0 is answered at once and the store thread records the
    # would-block behind it (Server._flush): wait for the record, then look at it
    wait_for("the would-block record", lambda: shown()["would_block"], 10)
    assert shown()["block"] is None and shown()["exempt"] == why
    assert [w["count"] for w in shown()["would_block"]] == [NET_LIMIT + 1]


def test_an_override_gives_a_network_its_own_limit(tmp_path: Path) -> None:
    extra = '\n[overrides.net."2001:db8:1::/48".authfail]\nlimit = 500\n'
    cfg = load(str(write_config(tmp_path, extra)))
    policy = cfg.policy("net", "authfail", NET)
    assert policy is not None and policy.windows == ((500, 3600.0),)
    other = cfg.policy("net", "authfail", "2001.0db8.0002.0000.0000.0000.0000.0000/48")
    assert other is not None and other.windows == ((100, 3600.0),)


@needs_redis
def test_the_redis_path_counts_the_network_too(tmp_path: Path, mailbox: Path, serve: Serve, cli: Run,
                                               config: Path, redis_url: str) -> None:
    """``[store] backend = "redis"``: the daemon builds its events from the same function,
    so a /48 trips there too, and the /64s in it trip no more blocks."""
    config.write_text(wider_config(tmp_path, mailbox, **{"store.backend": "redis", "store.redis_url": redis_url,
                                                         "exim.freeze_queued": False}).read_text())
    daemon = serve(config)
    for net64 in range(3):
        assert guess(daemon, net64, 2) == [b"0", b"1"]
    assert [a for net64 in range(3, 200) for a in guess(daemon, net64, 2)] == [b"1"] * 2 * 197
    assert blocks(cli) == {"ip": ["2001.0db8.0001.0000.0000.0000.0000.0000/64",
                                  "2001.0db8.0001.0001.0000.0000.0000.0000/64"], "net": [NET]}
