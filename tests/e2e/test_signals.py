"""Issue 24's signals that the DATA ACL's one message request carries, through a real
Exim with the shipped snippets and the daemon: the distinct recipients of a sender
(``rcpts``) and the distinct client networks an account sends from (``networks``)."""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from ..support import harness as h
from ..support.marks import needs_exim, needs_redis, needs_root
from ..support.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, needs_exim, needs_root]


@pytest.fixture
def exim(request: pytest.FixtureRequest) -> Iterator[h.Exim]:
    server = h.make(["bob", "alice"], limit=50, serve=True, record_runs=True, settings=request.param)
    try:
        server.setup().start()
        yield server
    finally:
        h.cleanup(server)


def count(exim: h.Exim, counter: str, ns: str = "auth", key: str = "bob") -> int:
    return int(exim.show(ns, key)["counters"][counter]["windows"][0]["count"])


def history(exim: h.Exim, ns: str = "auth", key: str = "bob") -> list[str]:
    return [e["event"] for e in json.loads(exim.eximhook("history", "--json", ns, key).stdout)]


def remote(*names: str) -> list[str]:
    return [f"{n}@{h.REMOTE}" for n in names]


@pytest.mark.parametrize("exim", [{"limits.auth.rcpts.limit": 5, "limits.auth.rcpts.period": "1h",
                                   "limits.auth.rcpts.mode": "enforce"}], indirect=True)
def test_distinct_recipients_trip_at_the_first_one_over_the_limit(exim: h.Exim) -> None:
    """cPanel's cap on unique recipients: the same recipients again add nothing; the
    sixth distinct one blocks the user, once, and freezes the message that crossed."""
    assert exim.send(remote("a1", "a2", "a3"), user="bob") == {}
    assert count(exim, "rcpts") == 3
    assert exim.send(remote("a1", "A2", "a3"), user="bob") == {}  # the same three (case-blind, as Exim's lookups)
    assert count(exim, "rcpts") == 3 and exim.show("auth", "bob")["block"] is None
    assert exim.send(remote("a4", "a5"), user="bob") == {}
    assert count(exim, "rcpts") == 5 and exim.show("auth", "bob")["block"] is None
    assert exim.send(remote("a6", "a1"), user="bob") == {}
    block = h.wait_for("the block", lambda: exim.show("auth", "bob")["block"])
    assert (block["counter"], block["limit"], block["count"]) == ("rcpts", 5, 6)
    crossed = block["rcpts"][-1].split()[0]  # the evidence: "ID (2 rcpt)" of each message
    assert crossed in exim.queue(frozen=True) and "X-Authenticated-As: bob" in exim.exim("-Mvh", crossed), \
        "the message that crossed is frozen"
    assert history(exim).count("blocked") == 1
    assert count(exim, "recipients") == 3 + 3 + 2 + 2, "volume counts every recipient"
    assert exim.hook_runs() == [], "all through the daemon: no ${run}"


@pytest.mark.parametrize("exim", [{"limits.auth.networks.limit": 3, "limits.auth.networks.period": "1h",
                                   "limits.auth.networks.mode": "enforce"}], indirect=True)
def test_one_account_from_many_networks_trips_once(exim: h.Exim) -> None:
    """CSF's LF_DISTSMTP: two addresses of one /24 are one network; the fourth network
    blocks the account. Eight connections from eight more networks at once: one block,
    one notification."""
    for source in ("127.1.1.1", "127.1.1.2", "127.2.0.1", "127.3.0.1"):
        assert exim.send([f"alice@{h.DOMAIN}"], user="bob", source=source) == {}
    assert count(exim, "networks") == 3 and exim.show("auth", "bob")["block"] is None
    with ThreadPoolExecutor(8) as pool:
        refused = list(pool.map(lambda i: exim.send([f"alice@{h.DOMAIN}"], user="bob", source=f"127.{10 + i}.0.1"),
                                range(8)))
    assert refused == [{}] * 8, "every message accepted (a blocked account's are frozen)"
    block = h.wait_for("the block", lambda: exim.show("auth", "bob")["block"])
    assert (block["counter"], block["limit"], block["count"]) == ("networks", 3, 4)
    assert history(exim).count("blocked") == 1
    exim.settled()
    assert len(exim.maildir("abuse")) == 1, "one notification"
    assert "127.1.1.0/24" in block["rcpts"], "the networks are the evidence"


@needs_redis
def test_two_relays_on_one_redis_count_the_networks_together(own_redis: RedisServer) -> None:
    """A stolen password used through two relays: the networks each saw add up in Redis,
    and the account is blocked once, on both."""
    a, b = (h.make(["bob", "alice"], limit=50, serve=True, settings={
        "store.backend": "redis", "store.redis_url": own_redis.url, "store.node": name,
        "limits.auth.networks.limit": 3, "limits.auth.networks.mode": "enforce"}) for name in "ab")
    try:
        for node in (a, b):
            node.setup().start()
        for node, source in ((a, "127.1.0.1"), (b, "127.2.0.1"), (a, "127.3.0.1"), (b, "127.2.0.9")):
            assert node.send([f"alice@{h.DOMAIN}"], user="bob", source=source) == {}
        assert count(a, "networks") == 3 and a.show("auth", "bob")["block"] is None
        assert b.send([f"alice@{h.DOMAIN}"], user="bob", source="127.4.0.1") == {}
        block = h.wait_for("the block on relay a", lambda: a.show("auth", "bob")["block"])
        assert (block["counter"], block["count"], block["node"]) == ("networks", 4, "b")
        assert history(a).count("blocked") == 1
    finally:
        for node in (a, b):
            h.cleanup(node)


SLOW = {"limits.auth.limit": 10, "limits.auth.recipients.limit": 10, "limits.auth.recipients.mode": "enforce"}


def low_and_slow(exim: h.Exim, other: h.Exim | None = None) -> None:
    """A bot just under two limits: 8 of 10 recipients in one message, then 8 of 10
    invalid ones (through ``other``, another relay, if given) in a session it ends
    before DATA."""
    assert exim.send(remote(*(f"r{i}" for i in range(8))), user="bob") == {}
    with (other or exim).connect("127.0.0.1") as smtp:
        smtp.login("bob", h.PASSWORD)
        smtp.mail(f"bob@{h.DOMAIN}")
        for i in range(8):
            smtp.rcpt(f"nobody{i}@{h.DOMAIN}")


@pytest.mark.parametrize("exim", [{**SLOW, "limits.auth.score.mode": "enforce", "notify.hold": 1}], indirect=True)
def test_a_bot_under_every_limit_trips_the_combined_score(exim: h.Exim) -> None:
    """80 % of the invalid limit and 80 % of the volume limit: 160 % of the limits
    combined, over the score's 150 %; blocked once, the parts as evidence."""
    low_and_slow(exim)
    block = h.wait_for("the block", lambda: exim.show("auth", "bob")["block"])
    assert (block["counter"], block["limit"], block["count"]) == ("score", 150, 160)
    assert block["rcpts"] == ["invalid: 8 / 10", "recipients: 8 / 10"]
    assert history(exim).count("blocked") == 1
    (note,) = h.wait_for("the notification", lambda: exim.maildir("abuse"))  # type: ignore[misc]
    assert b"has reached 160 % of its limits combined (limit 150 %)" in note


@pytest.mark.parametrize("exim", [{**SLOW, "limits.auth.score.mode": "enforce", "limits.auth.rcpts.limit": 5}],
                         indirect=True)
def test_a_shadow_counter_over_its_limit_leaves_the_score_to_block(exim: h.Exim) -> None:
    """One message to 8 invalid recipients: 80 % of the invalid limit at RCPT, 80 % of
    the volume at DATA, where the distinct recipients (shadow) are over theirs too. The
    score blocks at that DATA and freezes the message (the would-block of a shadow
    counter must not keep it from blocking until the bounce comes back)."""
    assert exim.send(h.invalid(8), user="bob") == {}
    block = h.wait_for("the block", lambda: exim.show("auth", "bob")["block"])
    assert (block["counter"], block["count"]) == ("score", 160)
    frozen = exim.queue(frozen=True)
    assert len(frozen) == 1 and "X-Authenticated-As: bob" in exim.exim("-Mvh", frozen[0]), "the message is frozen"


@pytest.mark.parametrize("exim", [SLOW], indirect=True)
def test_the_combined_score_measures_first(exim: h.Exim) -> None:
    """Shadow by default: the same bot is recorded as a would-block, not blocked."""
    low_and_slow(exim)
    shadows = h.wait_for("the would-block record", lambda: [r for r in json.loads(exim.eximhook(
        "list", "--would-block", "--json").stdout) if r["counter"] == "score"])
    assert [(r["key"], r["count"]) for r in shadows] == [("bob", 160)]
    assert exim.show("auth", "bob")["block"] is None
    (row,) = json.loads(exim.eximhook("top", "score", "--json").stdout)
    assert (row["key"], row["windows"][0]["count"], sorted(row["windows"][0]["parts"])) == (
        "bob", 160, ["invalid: 8 / 10", "recipients: 8 / 10"]), "top ranks by the score now, its parts beside"


@needs_redis
def test_two_relays_on_one_redis_add_up_one_score(own_redis: RedisServer) -> None:
    """The bot's volume through relay a, its invalid recipients through relay b: Redis
    holds both counters, and the score blocks it once."""
    a, b = (h.make(["bob", "alice"], limit=50, serve=True, settings={
        **SLOW, "limits.auth.score.mode": "enforce", "store.backend": "redis", "store.redis_url": own_redis.url,
        "store.node": name}) for name in "ab")
    try:
        for node in (a, b):
            node.setup().start()
        low_and_slow(a, b)
        block = h.wait_for("the block on relay a", lambda: a.show("auth", "bob")["block"])
        assert (block["counter"], block["count"], block["node"]) == ("score", 160, "b")
        assert history(a).count("blocked") == 1
    finally:
        for node in (a, b):
            h.cleanup(node)


def try_login(exim: h.Exim, source: str, password: str, user: str = "bob") -> int:
    """One AUTH as ``user`` from ``source``: Exim's reply code."""
    with exim.connect(source) as smtp:
        try:
            return int(smtp.login(user, password)[0])
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code


@pytest.mark.parametrize("exim", [{"limits.login.authfail.limit": 5, "limits.login.authfail.mode": "enforce"}],
                         indirect=True)
def test_a_spray_locks_the_account_only_against_strangers(exim: h.Exim) -> None:
    """Password spraying: six wrong passwords for bob from six networks lock bob's login
    once. Then the right password fails from a network bob never sent mail from, as a
    wrong one does (the spray learns nothing), and works from bob's own; no address is
    blocked, and the connection that tripped it is not dropped."""
    assert exim.send([f"alice@{h.DOMAIN}"], user="bob", source="127.0.0.1") == {}
    h.wait_for("bob's network learned", lambda: exim.show("auth", "bob")["known"] == ["127.0.0.0/24"])
    codes = [try_login(exim, f"127.60.{i}.1", "guess") for i in range(6)]
    assert codes == [535] * 6
    block = h.wait_for("the login block", lambda: exim.show("login", "bob")["block"])
    assert (block["counter"], block["limit"], block["count"]) == ("authfail", 5, 6)
    assert try_login(exim, "127.70.0.1", h.PASSWORD) == 535, "a stranger with the right password is refused"
    assert try_login(exim, "127.0.0.9", h.PASSWORD) == 235, "the owner's network still logs in"
    assert try_login(exim, "127.60.0.1", h.PASSWORD) == 535
    assert exim.show("auth", "bob")["block"] is None, "bob's mail flows"
    assert [b["ns"] for b in json.loads(exim.eximhook("list", "--json").stdout)] == ["login"], "no address blocked"
    assert history(exim, "login", "bob").count("blocked") == 1


@pytest.mark.parametrize("exim", [{"limits.all.authfail.limit": 10, "limits.all.authfail.mode": "enforce"}],
                         indirect=True)
def test_a_spray_across_accounts_locks_every_account_only_against_strangers(exim: h.Exim) -> None:
    """One wrong password for each of eleven accounts, each from a network of its own:
    no address, network or account is near its limit, but every failure together is
    over 10: all logins are blocked, once. Bob still logs in from the network he sent
    mail from, and nobody from a stranger's; alice, who sent no mail, from nowhere;
    unblocking all logins lets her in again."""
    assert exim.send([f"alice@{h.DOMAIN}"], user="bob", source="127.0.0.1") == {}
    h.wait_for("bob's network learned", lambda: exim.show("auth", "bob")["known"] == ["127.0.0.0/24"])
    codes = [try_login(exim, f"127.80.{i}.1", "guess", user=f"user{i}") for i in range(11)]
    assert codes == [535] * 11
    block = h.wait_for("the block of all logins", lambda: exim.show("all", "logins")["block"])
    assert (block["counter"], block["limit"], block["count"]) == ("authfail", 10, 11)
    assert try_login(exim, "127.0.0.9", h.PASSWORD) == 235, "bob's own network"
    assert try_login(exim, "127.70.0.1", h.PASSWORD) == 535, "a stranger's network, the right password"
    assert try_login(exim, "127.0.0.9", h.PASSWORD, user="alice") == 535, "alice has sent no mail from there"
    assert [b["ns"] for b in json.loads(exim.eximhook("list", "--json").stdout)] == ["all"], "no address blocked"
    assert history(exim, "all", "logins").count("blocked") == 1
    assert exim.eximhook("unblock", "all", "logins").returncode == 0
    assert try_login(exim, "127.70.0.1", h.PASSWORD, user="alice") == 235


@needs_redis
@pytest.mark.parametrize("spray", ["login", "all"])
def test_a_network_one_relay_learned_logs_in_through_another(own_redis: RedisServer, spray: str) -> None:
    """Two relays on one Redis: bob sends mail through relay a only; a spray through relay
    b locks bob's login (or all logins). Relay b still lets bob log in from the network
    relay a learned, and refuses strangers, as relay a does."""
    a, b = (h.make(["bob", "alice"], limit=50, serve=True, settings={
        "store.backend": "redis", "store.redis_url": own_redis.url, "store.node": name,
        "limits.login.authfail.limit": 5, "limits.login.authfail.mode": "enforce",
        "limits.all.authfail.limit": 10, "limits.all.authfail.mode": "enforce"}) for name in "ab")
    subject = ("login", "bob") if spray == "login" else ("all", "logins")
    try:
        for node in (a, b):
            node.setup().start()
        assert a.send([f"alice@{h.DOMAIN}"], user="bob", source="127.0.0.1") == {}
        assert b.show("auth", "bob")["known"] == [], "relay b has seen no mail of bob's"
        if spray == "login":
            assert [try_login(b, f"127.60.{i}.1", "guess") for i in range(6)] == [535] * 6
        else:
            assert [try_login(b, f"127.60.{i}.1", "guess", user=f"user{i}") for i in range(11)] == [535] * 11
        for node in (a, b):
            h.wait_for("the block", lambda node=node: node.show(*subject)["block"])  # type: ignore[misc]
        assert b.show("auth", "bob")["known"] == ["127.0.0.0/24"], "relay a's network, copied with the block"
        assert try_login(b, "127.0.0.9", h.PASSWORD) == 235, "bob's own network logs in through relay b"
        assert try_login(b, "127.70.0.1", h.PASSWORD) == 535, "a stranger is refused"
        assert try_login(a, "127.0.0.9", h.PASSWORD) == 235
        assert history(a, *subject).count("blocked") == 1
    finally:
        for node in (a, b):
            h.cleanup(node)


@needs_redis
def test_two_relays_on_one_redis_add_up_recipients_and_customers(own_redis: RedisServer) -> None:
    """Distinct recipients and a customer's total across two relays: a recipient sent
    to through both counts once, the members' volumes add up, each blocked once."""
    a, b = (h.make(["bob", *HACKED], limit=50, serve=True, settings={
        **HACKED_LIMITS, "store.backend": "redis", "store.redis_url": own_redis.url, "store.node": name,
        "limits.auth.rcpts.limit": 4, "limits.auth.rcpts.mode": "enforce"}) for name in "ab")
    try:
        for node in (a, b):
            node.setup().start()
        assert a.send(remote("r1", "r2", "r3"), user="bob") == {}
        assert b.send(remote("r3", "r4"), user="bob") == {}
        assert count(b, "rcpts") == 4 and b.show("auth", "bob")["block"] is None, "r3 once"
        assert a.send(remote("r5"), user="bob") == {}
        block = h.wait_for("bob's block on relay b", lambda: b.show("auth", "bob")["block"])
        assert (block["counter"], block["count"], block["node"]) == ("rcpts", 5, "a")
        assert a.send(remote(*(f"a{i}" for i in range(6))), user=HACKED[0]) == {}
        assert b.send(remote(*(f"b{i}" for i in range(6))), user=HACKED[1]) == {}
        assert b.show("customer", "hacked.example")["block"] is None
        assert a.send(remote("c1"), user=HACKED[2]) == {}
        block = h.wait_for("the customer's block on relay b", lambda: b.show("customer", "hacked.example")["block"])
        assert (block["counter"], block["count"]) == ("recipients", 13)
        assert history(b, "customer", "hacked.example").count("blocked") == 1
    finally:
        for node in (a, b):
            h.cleanup(node)


HACKED = ["u1@hacked.example", "u2@hacked.example", "u3@hacked.example"]


HACKED_LIMITS = {"limits.auth.recipients.limit": 8, "limits.auth.recipients.mode": "enforce",
                 "limits.customer.recipients.limit": 12, "limits.customer.recipients.period": "1h",
                 "limits.customer.recipients.mode": "enforce"}


@pytest.fixture
def hacked() -> Iterator[h.Exim]:
    server = h.make(["bob", *HACKED], limit=50, serve=True, settings=HACKED_LIMITS)
    try:
        server.setup().start()
        yield server
    finally:
        h.cleanup(server)


def test_a_hacked_customer_trips_its_total(hacked: h.Exim) -> None:
    """Three mailboxes of one domain, each under its own limit (6 of 8 recipients): 18
    together, over their customer's 12; the customer (the domain, by default) is blocked
    once, the member that crossed is named, with each member's share (``show`` and the
    abuse desk's mail), and every member's next message is frozen."""
    exim = hacked
    for user in HACKED[:2]:
        assert exim.send(remote(*(f"{user[:2]}r{i}" for i in range(6))), user=user) == {}
    shown = exim.show("customer", "hacked.example")
    assert shown["counters"]["recipients"]["windows"][0]["count"] == 12 and shown["block"] is None
    assert exim.send(remote("x1"), user=HACKED[2]) == {}
    block = h.wait_for("the customer's block", lambda: exim.show("customer", "hacked.example")["block"])
    assert (block["counter"], block["limit"], block["count"]) == ("recipients", 12, 13)
    assert block["rcpts"][-1].startswith("auth u3@hacked.example: "), "the member that crossed"
    assert all(exim.show("auth", u)["block"] is None for u in HACKED), "no member over its own limit"
    crossed = block["rcpts"][-1].split(": ")[1].split()[0]
    assert crossed in exim.queue(frozen=True)
    members = exim.show("customer", "hacked.example")["shares"]["recipients"]
    shares = [(m["key"], m["count"], m["exact"]) for m in members]
    assert sorted(shares) == [(HACKED[0], 6, True), (HACKED[1], 6, True), (HACKED[2], 1, True)]
    text = exim.eximhook("show", "customer", "hacked.example").stdout
    assert "crossed by its member user u3@hacked.example" in text
    assert "  user u1@hacked.example: 6 (46 %)\n" in text and "  user u3@hacked.example: 1 (8 %)\n" in text
    [note] = h.wait_for("the notification", lambda: exim.maildir("abuse"))  # type: ignore[misc]
    mail = email.message_from_bytes(note, policy=email.policy.default).get_content()  # type: ignore[attr-defined]
    assert "Crossed by:  its member user u3@hacked.example" in mail
    assert exim.eximhook("show", "auth", HACKED[0]).stdout.startswith(
        "auth u1@hacked.example: not blocked, but its customer hacked.example is: its mail is frozen\n")
    assert "Members' recipients in the last 1h, from their own counters:" in mail, mail
    assert "  user u2@hacked.example: 6 (46 %)\n" in mail
    before = set(exim.queue(frozen=True))
    assert exim.send(remote("y1"), user=HACKED[0]) == {}
    assert exim.send([f"alice@{h.DOMAIN}"], user="bob") == {}  # another customer's mail flows
    (frozen,) = set(exim.queue(frozen=True)) - before
    assert "X-Authenticated-As: u1@hacked.example" in exim.exim("-Mvh", frozen), "a member's next mail is frozen"
    assert history(exim, "customer", "hacked.example").count("blocked") == 1


def test_a_lookup_file_makes_hosts_and_users_one_customer(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``[customers] lookup``: bob and the relay host 127.0.0.2 are customer acme; bob's
    volume over acme's limit freezes the host's mail too."""
    server = h.make(["bob", "alice"], limit=50, serve=True, settings={
        "limits.customer.recipients.limit": 3, "limits.customer.recipients.period": "1h",
        "limits.customer.recipients.mode": "enforce"})
    try:
        server.setup()
        lookup = server.work / "customers"
        lookup.write_text(f"auth:bob acme\nrelay:{h.RELAY_CLIENT} acme\n# a comment\n")
        lookup.chmod(0o644)
        server.eximhook_conf.write_text(server.eximhook_conf.read_text() + f'[customers]\nlookup = "{lookup}"\n')
        server.start()
        assert server.send(remote("a", "b", "c", "d"), user="bob") == {}
        block = h.wait_for("acme's block", lambda: server.show("customer", "acme")["block"])
        assert (block["counter"], block["count"]) == ("recipients", 4)
        before = set(server.queue(frozen=True))
        assert server.send(remote("e"), source=h.RELAY_CLIENT) == {}
        (frozen,) = set(server.queue(frozen=True)) - before
        assert f"X-Relayed-From: {h.RELAY_CLIENT}" in server.exim("-Mvh", frozen), "the host's mail is frozen"
    finally:
        h.cleanup(server)
