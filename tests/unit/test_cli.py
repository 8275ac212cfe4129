"""``main([...])``: exit codes and exact stdout of the hooks and admin commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eximhook.errors import Exit

from ..support.config import write_config
from ..support.fixtures import Run


def trip(cli: Run, key: str = "bob", n: int = 6) -> list[str]:
    outs = []
    for i in range(n):
        code, out, err = cli("record-invalid", "auth", key, "--rcpt", f"nobody{i}@example.com", "--ip", "192.0.2.1")
        assert (code, err) == (0, "")
        outs.append(out)
    return outs


def test_hooks_print_one_token(cli: Run) -> None:
    assert cli("check-blocked", "auth", "bob") == (0, "0", "")
    assert trip(cli) == ["0"] * 5 + ["1"]  # LIMIT=5: the 6th trips
    assert cli("check-blocked", "auth", "bob") == (0, "1", "")
    assert cli("check-blocked", "auth", "BOB") == (0, "1", ""), "keys are ASCII case-blind, as lsearch"
    assert cli("check-blocked", "relay", "bob") == (0, "0", "")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        pytest.param(["check-blocked", "auth"], Exit.USAGE, id="missing-key"),
        pytest.param(["check-blocked", "auth", "bob", "extra"], Exit.USAGE, id="extra-arg"),
        pytest.param(["record-invalid", "auth", "bob", "--rcpt"], Exit.USAGE, id="option-without-value"),
        pytest.param(["record-invalid", "auth", "bob", "--bogus", "x"], Exit.USAGE, id="unknown-option"),
        pytest.param(["check-blocked", "smtp", "bob"], Exit.DATAERR, id="bad-namespace"),
        pytest.param(["check-blocked", "auth", ""], Exit.DATAERR, id="empty-key"),
    ],
)
def test_hook_errors_fall_back_open(cli: Run, args: list[str], code: int) -> None:
    assert cli(*args) == (code, "0", "")


def test_key_that_looks_like_an_option(cli: Run) -> None:
    assert cli("record-invalid", "auth", "--ip", "--rcpt=--ip") == (0, "0", "")
    _code, out, _ = cli("show", "--json", "auth", "--", "--ip")  # admin commands: the usual "--"
    assert json.loads(out)["counter"]["rcpts"] == ["--ip"]


def test_hook_after_other_options_is_a_usage_error(cli: Run, config: Path) -> None:
    code, out, err = cli("--config", str(config), "check-blocked", "auth", "bob")  # --config twice
    assert (code, out) == (Exit.USAGE, "") and "before its name" in err


def test_admin_usage_errors_return_64(cli: Run) -> None:
    code, out, err = cli("show", "auth")
    assert (code, out) == (Exit.USAGE, "") and "required: KEY" in err
    assert cli("--help")[0] == 0


def test_config_errors_in_hooks(tmp_path: Path, cli: Run) -> None:
    missing = tmp_path / "missing.toml"
    assert cli("check-blocked", "auth", "bob", config_path=missing) == (Exit.CONFIG, "0", "")


def test_fail_closed_policy(tmp_path: Path, cli: Run) -> None:
    config = write_config(tmp_path, '[hooks]\ncheck = "closed"\n')
    (tmp_path / "store").write_text("not a directory")
    assert cli("check-blocked", "auth", "bob", config_path=config) == (Exit.UNAVAILABLE, "1", "")
    log = (tmp_path / "eximhook.log").read_text()
    assert "cannot open store" in log and "answered 1" in log


def test_unavailable_store_fails_open_and_logs(tmp_path: Path, cli: Run, config: Path) -> None:
    (tmp_path / "store").write_text("not a directory")
    assert cli("record-invalid", "auth", "bob", config_path=config) == (Exit.UNAVAILABLE, "0", "")
    assert "answered 0" in (tmp_path / "eximhook.log").read_text()


def test_list_show_history(cli: Run) -> None:
    assert cli("list") == (0, "no blocked subjects\n", "")
    trip(cli)
    code, out, _ = cli("list")
    assert code == 0 and out.splitlines()[0].split() == ["NS", "KEY", "SINCE", "REASON", "COUNT", "BY",
                                                         "NOTIFICATION"]
    row = out.splitlines()[1].split()
    assert row[:2] == ["auth", "bob"] and row[-1] == "queued", "the hook queued it; no notify ran"
    blocks = json.loads(cli("list", "--json")[1])
    assert [(b["ns"], b["key"], b["count"], b["notification"]["state"]) for b in blocks] == [
        ("auth", "bob", 6, "queued")]
    code, out, _ = cli("show", "auth", "bob")
    assert "user bob blocked because has sent mail to 6 invalid recipients during 1h (limit 5)." in out
    assert "  notification: queued since " in out
    assert "invalid recipients: 6 in the last 1h (limit 5, enforce)" in out and "nobody5@example.com" in out
    shown = json.loads(cli("show", "auth", "bob", "--json")[1])
    assert shown["counter"]["total"] == 6 and shown["block"]["ips"] == ["192.0.2.1"]
    events = json.loads(cli("history", "--json")[1])
    assert [e["event"] for e in events] == ["blocked"]
    assert cli("history", "auth")[0] == Exit.USAGE


def test_manual_block_and_unblock(cli: Run, tmp_path: Path) -> None:
    code, out, _ = cli("block", "relay", "2001:db8::7", "--reason", "spam run", "--no-notify")
    assert json.loads(cli("history", "--json")[1])[-1]["note"] == "spam run", "the reason outlives the block"
    assert (code, out) == (0, "blocked relay 2001.0db8.0000.0000.0000.0000.0000.0000/64\n")
    assert cli("check-blocked", "relay", "2001:db8::1234")[1] == "1", "same /64"
    assert cli("block", "relay", "2001:db8::7", "--no-notify")[1].endswith("was blocked already\n")
    assert b"2001.0db8" in (tmp_path / "mirror" / "blocked_relay_users").read_bytes()
    code, out, _ = cli("unblock", "relay", "2001:db8::7")
    net = "2001.0db8.0000.0000.0000.0000.0000.0000/64"
    assert (code, out) == (0, f"unblocked relay {net}; its counter starts from zero\n")
    code, _, err = cli("unblock", "relay", "2001:db8::7")
    assert code == Exit.FAILED and "is not blocked" in err


def test_export_and_check_config(cli: Run, config: Path) -> None:
    code, out, _ = cli("export")
    assert code == 0 and "blocked_authenticated_users: 0 key(s)" in out
    code, out, _ = cli("check-config")
    assert code == 0 and out.startswith(f"config {config}: ok")
    assert "Redis" not in out, "the LMDB backend, by default"
    # what bounds a password-guessing botnet, as configured
    assert "limits.net.authfail: more than 100 failed AUTH attempts in 1h from one IPv4 /24 or IPv6 /48 " \
        "blocks" in out
    assert "after 20 mails about one namespace's blocks within 1m, one digest per 1m" in out


def test_check_config_names_redis_without_its_password(cli: Run, tmp_path: Path) -> None:
    config = write_config(tmp_path, settings={"store.backend": "redis", "store.node": "mx2",
                                              "store.redis_url": "redis://:s3cret@192.0.2.6:6379/1"})
    code, out, _ = cli("check-config", config_path=config)
    assert code == 0 and "counts and blocks in Redis at redis://:***@192.0.2.6:6379/1 (calls time out after " \
        "0.5s) as relay 'mx2'" in out and "s3cret" not in out, "parsed, not connected to: nothing listens there"


def test_check_config_says_who_counts_toward_a_customer_and_whom_a_login_block_lets_in(
        cli: Run, tmp_path: Path) -> None:
    customer = {"limits.customer.recipients.limit": 20000, "limits.customer.recipients.period": "1h"}
    out = cli("check-config", config_path=write_config(tmp_path, settings=customer))[1]
    assert "  customers: an authenticated user it does not list: its domain; a customer's block freezes every " \
        "member's mail\n" in out and "note: [customers] by_domain makes all users of one domain one customer" in out
    listed_none = write_config(tmp_path, settings={**customer, "customers.by_domain": False})
    out = cli("check-config", config_path=listed_none)[1]
    assert "warning: customer limits are set, but [customers] has no lookup and by_domain = false" in out
    listed = tmp_path / "customers"
    listed.write_text("auth:bob@example.com acme\nrelay:192.0.2.7 acme\nrelay:2001:db8::7 acme\nrelay:radius-42 acme\n"
                      "relay:192.0.2.0/24 acme\nlogin:bob acme\n")
    with_file = write_config(tmp_path, settings={**customer, "customers.lookup": str(listed)})
    out = cli("check-config", config_path=with_file)[1]
    assert f"  customers lookup {listed}: 6 subject(s)\n" in out
    assert f"warning: {listed}: relay:192.0.2.0/24 is a network, and a relay subject is one host" in out
    assert f"warning: {listed}: login:bob is no member (only auth, relay, local are): skipped" in out
    assert out.count(f"warning: {listed}") == 2, "a host, an IPv6 host's /64 and a RADIUS id are members"
    out = cli("check-config", config_path=write_config(tmp_path, settings={"limits.login.authfail.limit": 5}))[1]
    assert "logins: a login block refuses AUTH for its account except from the networks it sent mail from in the " \
        "last 30d ([logins] known)" in out and "customers:" not in out


def test_admin_config_error(tmp_path: Path, cli: Run) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits.auth]\nlimit = -1\n")
    code, out, err = cli("list", config_path=bad)
    assert code == Exit.CONFIG and out == "" and "limits.auth.limit" in err


def test_hook_help_and_a_key_named_help(cli: Run) -> None:
    code, out, _ = cli("record-invalid", "--help")
    assert code == 0 and out.startswith("usage: eximhook record-invalid") and "--fallback" in out
    assert cli("record-invalid", "auth", "--help") == (0, "0", ""), "after NS, --help is a key like any other"


def test_a_key_that_is_two_dashes(cli: Run) -> None:
    """argparse leaves [] for a literal "--" after the separator; it is the key "--"."""
    assert cli("record-invalid", "auth", "--") == (0, "0", "")
    code, out, _ = cli("show", "--json", "auth", "--", "--")
    assert code == 0 and json.loads(out)["key"] == "--" and json.loads(out)["counter"]["total"] == 1


def test_a_relay_block_on_a_loopback_address_warns(cli: Run) -> None:
    """The relay snippets skip the server's own connections (!@[]): say so, keep the block."""
    code, out, err = cli("block", "relay", "127.0.0.1", "--no-notify")
    assert code == 0 and out == "blocked relay 127.0.0.1\n"
    assert "this block freezes nothing" in err
    assert cli("block", "relay", "192.0.2.7", "--no-notify")[2] == ""
