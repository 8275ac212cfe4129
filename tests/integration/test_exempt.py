"""Exemptions and per-subject limits in the hook processes and the daemon, on a real store."""

from __future__ import annotations

import json
from pathlib import Path

from eximhook.serve.protocol import encode

from ..support.config import write_config
from ..support.fixtures import Run, Serve
from ..support.hooks import hook
from ..support.mailbox import messages

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
    from ..support.waiting import wait_for

    [note] = wait_for("the notification", lambda: messages(mailbox), 10)  # type: ignore[misc]
    assert "192.0.3.9" in note["Subject"]
    # removed: the next event over the limit blocks
    assert cli("exempt", "remove", "relay", "192.0.2.0/24", config_path=config)[0] == 0
    assert d.request(encode("record-invalid", "relay", "192.0.2.9", rcpt="last@x")) == b"1"
    events = [e["event"] for e in json.loads(cli("history", "--json", config_path=config)[1])]
    assert events.count("exempted") == 1 and events.count("exempt-removed") == 1
