"""Notifications through a sendmail stand-in that records its input and fails on
demand: nothing lost, nothing sent twice, nothing injected."""

from __future__ import annotations

from pathlib import Path

import pytest

from eximhook.errors import Exit

from .conftest import Run, hook, messages, write_config


@pytest.fixture
def config(tmp_path: Path, mailbox: Path) -> Path:
    return write_config(tmp_path, "", sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"').with_suffix(".toml")


def trip(cli: Run, key: str) -> None:
    for i in range(6):
        cli("record-invalid", "auth", key, "--rcpt", f"n{i}@example.com", "--ip", "192.0.2.1")


def test_notification_is_sent_once(cli: Run, mailbox: Path) -> None:
    trip(cli, "bob")
    assert cli("notify") == (0, "1", "")
    assert cli("notify") == (0, "0", "")
    [msg] = messages(mailbox)
    assert msg["Subject"] == "user bob blocked"
    assert msg["To"] == "abuse@example.net" and msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_content()
    assert "user bob blocked because has sent mail to 6 invalid recipients during 1h (limit 5)." in body
    assert "n5@example.com" in body and "192.0.2.1" in body
    assert "release auth bob" in body and "purge auth bob" in body
    assert [e["event"] for e in __import__("json").loads(cli("history", "--json")[1])] == ["blocked", "notified"]


@pytest.mark.parametrize(("key", "cte"), [("bob", "7bit"), ("bøb", "8bit"), ("b" * 1200, "quoted-printable")])
def test_the_commands_are_paste_ready(cli: Run, mailbox: Path, key: str, cte: str) -> None:
    """The body as it reads: no quoted-printable '=' breaking a long command line, unless
    a line is past SMTP's 998 octets."""
    trip(cli, key)
    assert cli("notify")[1] == "1"
    raw = next((mailbox / "out").glob("*.eml")).read_bytes()
    assert f"Content-Transfer-Encoding: {cte}".encode() in raw
    [msg] = messages(mailbox)
    commands = [line for line in msg.get_content().splitlines() if " purge auth " in line]
    assert commands
    if cte != "quoted-printable":
        assert all(line.encode() in raw.splitlines() for line in commands), "each command whole, on its own line"


def test_failure_keeps_it_queued(cli: Run, mailbox: Path, tmp_path: Path) -> None:
    trip(cli, "bob")
    (mailbox / "FAIL").touch()
    assert cli("notify") == (Exit.TEMPFAIL, "0", "")
    assert cli("notify") == (Exit.TEMPFAIL, "0", "")
    assert messages(mailbox) == []
    assert "stand-in failure" in (tmp_path / "eximhook.log").read_text()
    (mailbox / "FAIL").unlink()
    assert cli("notify") == (0, "1", "")
    assert cli("notify") == (0, "0", "")
    assert len(messages(mailbox)) == 1


def test_hung_sendmail_is_killed(tmp_path: Path, cli: Run, mailbox: Path) -> None:
    config = write_config(tmp_path, "", sendmail=f'"{mailbox}/sendmail.sh"')
    config.write_text(config.read_text().replace('to = "abuse@example.net"', 'to = "abuse@example.net"\ntimeout = 1'))
    trip(cli, "bob")
    (mailbox / "HANG").touch()
    proc = hook(config, "notify", timeout=15)
    assert (proc.returncode, proc.stdout) == (Exit.TEMPFAIL, b"0")
    assert "did not finish within 1s" in (tmp_path / "eximhook.log").read_text()


def test_hostile_key_cannot_inject_headers(cli: Run, mailbox: Path) -> None:
    key = "evil\r\nBcc: victim@example.org\r\n\r\nbody"
    trip(cli, key)
    assert cli("notify") == (0, "1", "")
    [msg] = messages(mailbox)
    assert msg["Bcc"] is None
    assert msg["Subject"] == "user evil\\r\\nbcc: victim@example.org\\r\\n\\r\\nbody blocked"
    assert "$'evil\\x0d\\x0abcc: victim@example.org\\x0d\\x0a\\x0d\\x0abody'" in msg.get_content()


def test_manual_block_notifies(cli: Run, mailbox: Path) -> None:
    code, out, _ = cli("block", "auth", "carol", "--reason", "phished")
    assert code == 0 and out == "blocked auth carol\nnotification sent to abuse@example.net\n"
    [msg] = messages(mailbox)
    assert "user carol blocked by hand (admin:" in msg.get_content() and "phished" in msg.get_content()
