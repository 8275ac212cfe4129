"""Exemptions and per-subject limits: patterns, the config, the admin commands, and what
the hooks and the daemon do with them on a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eximhook.config.load import load
from eximhook.errors import ConfigError
from eximhook.model.patterns import check, first, matches
from eximhook.model.subjects import normalize
from eximhook.serve.protocol import encode

from .conftest import Run, Serve, hook, messages, write_config

V6_GROUP = normalize("relay", "2001:db8:0:1::77")  # 2001.0db8.0000.0001.0000.0000.0000.0000/64


@pytest.mark.parametrize(("ns", "pattern", "key", "hit"), [
    pytest.param("auth", "bob@example.com", "bob@example.com", True, id="exact"),
    pytest.param("auth", "*@lists.example.com", "news@lists.example.com", True, id="glob"),
    pytest.param("auth", "*@lists.example.com", "news@lists.example.com.evil", False, id="glob-anchored"),
    pytest.param("relay", "192.0.2.0/24", "192.0.2.77", True, id="cidr4"),
    pytest.param("relay", "192.0.2.0/24", "192.0.3.1", False, id="cidr4-outside"),
    pytest.param("relay", "2001:db8::/48", V6_GROUP, True, id="cidr6-holds-the-group"),
    pytest.param("relay", "2001:db8:0:2::/64", V6_GROUP, False, id="cidr6-another-group"),
    pytest.param("relay", "192.0.2.0/24", V6_GROUP, False, id="other-family"),
    pytest.param("relay", "customer-17", "customer-17", True, id="radius-id"),
    pytest.param("relay", "customer-*", "customer-17", True, id="radius-glob"),
    pytest.param("auth", "192.0.2.0/24", "192.0.2.1", False, id="cidr-only-for-addresses"),
    pytest.param("sender", "[a]*", "[a]x", False, id="brackets-are-a-class"),
    pytest.param("sender", "[a]x", "[a]x", True, id="but-the-exact-key-matches"),
])
def test_pattern_matches(ns: str, pattern: str, key: str, hit: bool) -> None:
    assert matches(ns, check(ns, pattern), key) is hit


def test_an_exact_key_wins_over_an_earlier_pattern() -> None:
    entries = [("*@example.com", "glob"), ("vip@example.com", "exact")]
    assert first("auth", "vip@example.com", entries) == ("vip@example.com", "exact")
    assert first("auth", "bob@example.com", entries) == ("*@example.com", "glob")
    assert first("auth", "bob@example.org", entries) is None


@pytest.mark.parametrize(("ns", "pattern", "error"), [
    ("relay", "2001:db8::1", "narrower than a /64"),
    ("auth", "  ", "is empty"),
    ("auth", "x" * 500, "at most 400 bytes"),
    ("auth", "a\0b", "without NUL"),
    ("ip", "999.1.1.1", "is not an IP address, a network"),
])
def test_bad_patterns_say_why(ns: str, pattern: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check(ns, pattern)


@given(ns=st.sampled_from(["auth", "relay", "sender", "local"]), pattern=st.text(min_size=1, max_size=60),
       key=st.text(min_size=1, max_size=60))
def test_hostile_patterns_and_keys_never_crash(ns: str, pattern: str, key: str) -> None:
    try:
        canonical = check(ns, pattern)
    except ValueError:
        return
    assert isinstance(matches(ns, canonical, key.lower()), bool)
    assert matches(ns, canonical, canonical) or ns == "relay", "a pattern names itself as a key"


def test_config_reads_exempt_and_overrides(tmp_path: Path) -> None:
    path = write_config(tmp_path, extra="""
[exempt]
auth = ["Monitor@Example.com", "*@lists.example.com"]
relay = {"192.0.2.0/24" = "the office"}
[overrides.auth."newsletter@example.com"]
recipients = {limit = 20000}
[overrides.relay."2001:db8::/48".invalid]
limit = 500
mode = "shadow"
""")
    cfg = load(str(path))
    assert cfg.exempt == {"auth": (("monitor@example.com", "in the config"), ("*@lists.example.com", "in the config")),
                          "relay": (("192.0.2.0/24", "the office"),)}
    news = cfg.policy("auth", "recipients", "newsletter@example.com")
    assert news is not None and news.windows == ((20000, 3600.0),) and news.mode == "shadow"
    assert cfg.policy("auth", "recipients", "bob") == cfg.policy("auth", "recipients")
    v6 = cfg.policy("relay", "invalid", V6_GROUP)
    assert v6 is not None and v6.windows == ((500, 3600.0),) and not v6.enforced
    assert cfg.policy("relay", "invalid", "192.0.2.1") == cfg.policy("relay", "invalid")


@pytest.mark.parametrize(("extra", "error"), [
    ('[exempt]\nauth = "bob"\n', "must be a list of patterns"),
    ('[exempt]\nusers = ["bob"]\n', "unknown key exempt.users"),
    ('[exempt]\nrelay = ["2001:db8::1"]\n', r"exempt.relay: the pattern '2001:db8::1' is narrower"),
    ('[overrides.auth."bob"]\nspam = {limit = 1}\n', "unknown counter"),
    ('[overrides.auth."bob".invalid]\nlimit = 0\n', "limit must be a whole number"),
    ('[overrides.auth."bob".invalid]\nburst = 3\n', "unknown key"),
    ('[overrides.people."bob".invalid]\nlimit = 3\n', "unknown section"),
])
def test_config_errors_name_the_key(tmp_path: Path, extra: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load(str(write_config(tmp_path, extra=extra)))


EXEMPT = '\n[exempt]\nauth = ["monitor@example.com"]\n'


def test_an_exempt_subject_is_counted_but_never_blocked_by_the_hook(tmp_path: Path, cli: Run) -> None:
    config = write_config(tmp_path, extra=EXEMPT, limit=3)
    answers = [hook(config, "record-invalid", "auth", "Monitor@Example.com", "--rcpt", f"r{i}@x").stdout
               for i in range(6)]
    assert answers == [b"0"] * 6
    # another user at the same limit is blocked: the exemption names one subject
    assert [hook(config, "record-invalid", "auth", "bob", "--rcpt", f"r{i}@x").stdout for i in range(4)][-1] == b"1"
    _, out, _ = cli("show", "--json", "auth", "monitor@example.com")
    shown = json.loads(out)
    assert shown["block"] is None and shown["exempt"] == "monitor@example.com: in the config"
    assert shown["counters"]["invalid"]["total"] == 6
    [would] = shown["would_block"]
    assert (would["count"], would["limit"], would["exempt"]) == (4, 3, "monitor@example.com: in the config")
    _, out, _ = cli("show", "auth", "monitor@example.com")
    assert "exempt, never blocked by a limit (still counted): monitor@example.com: in the config" in out
    assert "would have been blocked at" in out and "(exempt)" in out
    _, out, _ = cli("list", "--would-block")
    assert "monitor@example.com" in out and "exempt" in out
    assert "would block (exempt, monitor@example.com: in the config) auth monitor@example.com" in (
        tmp_path / "eximhook.log").read_text()


def test_an_override_raises_one_subjects_limit_only(tmp_path: Path, cli: Run) -> None:
    config = write_config(tmp_path, limit=3, extra='\n[overrides.auth."news@example.com".invalid]\nlimit = 6\n')
    def count(key: str, n: int) -> list[bytes]:
        return [hook(config, "record-invalid", "auth", key, "--rcpt", f"r{i}@x").stdout for i in range(n)]

    assert count("bob", 4) == [b"0"] * 3 + [b"1"], "the namespace's limit: 3"
    assert count("news@example.com", 7) == [b"0"] * 6 + [b"1"], "its own: 6"
    block = json.loads(cli("show", "--json", "auth", "news@example.com")[1])["block"]
    assert (block["count"], block["limit"]) == (7, 6)
    _, out, _ = cli("show", "auth", "news@example.com")
    assert 'limits from [overrides.auth."news@example.com"]' in out and "(limit 6, enforce)" in out


def test_exempt_add_in_the_store_reaches_the_daemon_at_once(tmp_path: Path, serve: Serve, mailbox: Path,
                                                            cli: Run) -> None:
    config = write_config(tmp_path, limit=2, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"',
                          settings={"notify.hold": 0.1})
    d = serve(config)
    code, out, _err = cli("exempt", "add", "relay", "192.0.2.0/24", "--reason", "the office NAT", config_path=config)
    assert code == 0 and "exempt relay 192.0.2.0/24" in out
    ask = [d.request(encode("record-invalid", "relay", "192.0.2.9", rcpt=f"r{i}@x")) for i in range(5)]
    assert ask == [b"0"] * 5
    assert [d.request(encode("record-invalid", "relay", "192.0.3.9", rcpt=f"r{i}@x")) for i in range(3)][-1] == b"1"
    shown = json.loads(cli("show", "--json", "relay", "192.0.2.9", config_path=config)[1])
    assert shown["block"] is None and shown["exempt"] == "192.0.2.0/24: the office NAT"
    assert [w["exempt"] for w in shown["would_block"]] == ["192.0.2.0/24: the office NAT"]
    # no mail about the exempt subject: only the block of 192.0.3.9
    from .e2e.harness import wait_for

    [note] = wait_for("the notification", lambda: messages(mailbox), 10)  # type: ignore[misc]
    assert "192.0.3.9" in note["Subject"]
    # removed: the next event over the limit blocks
    assert cli("exempt", "remove", "relay", "192.0.2.0/24", config_path=config)[0] == 0
    assert d.request(encode("record-invalid", "relay", "192.0.2.9", rcpt="last@x")) == b"1"
    events = [e["event"] for e in json.loads(cli("history", "--json", config_path=config)[1])]
    assert events.count("exempted") == 1 and events.count("exempt-removed") == 1


def test_exempt_commands(cli: Run) -> None:
    assert cli("exempt", "add", "auth", "*@Lists.Example.com")[0] == 0
    code, out, _ = cli("exempt", "add", "auth", "*@lists.example.com")
    assert code == 0 and "exempt already" in out
    code, _, err = cli("exempt", "add", "relay", "2001:db8::1")
    assert code == 64 and "name the group (2001:db8::/64)" in err
    assert cli("block", "auth", "vip@lists.example.com", "--no-notify")[2].startswith(
        "eximhook: note: auth vip@lists.example.com is exempt")
    code, out, _ = cli("exempt", "list", "--json")
    [row] = json.loads(out)["exempt"]
    assert (row["pattern"], row["source"], row["by"].startswith("admin:")) == ("*@lists.example.com", "store", True)
    code, _, err = cli("exempt", "add", "auth", "vip@lists.example.com")
    assert "is blocked now; an exemption does not lift a block: eximhook release (or unblock) auth " \
           "vip@lists.example.com" in err
    code, out, err = cli("exempt", "remove", "auth", "nobody")
    assert code == 1 and "is not exempt" in err
