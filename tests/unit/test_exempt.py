"""Exemptions and per-subject limits: patterns, the config, the admin commands.
(What the hooks and the daemon do with them: integration/test_exempt.py.)"""

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

from ..support.config import write_config
from ..support.fixtures import Run

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
    ('[overrides.auth."bob"]\nham = {limit = 1}\n', "unknown counter"),
    ('[overrides.auth."bob".invalid]\nlimit = 0\n', "limit must be a whole number"),
    ('[overrides.auth."bob".invalid]\nburst = 3\n', "unknown key"),
    ('[overrides.people."bob".invalid]\nlimit = 3\n', "unknown section"),
])
def test_config_errors_name_the_key(tmp_path: Path, extra: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load(str(write_config(tmp_path, extra=extra)))


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
