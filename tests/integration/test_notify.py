"""Notifications through a sendmail stand-in that records its input and fails on
demand: nothing lost, nothing sent twice, nothing injected."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from eximhook.errors import Exit
from eximhook.storage import outbox

from ..support.config import write_config
from ..support.fixtures import Run
from ..support.hooks import hook
from ..support.mailbox import messages
from ..support.marks import needs_root


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



@pytest.mark.parametrize("text", [
    pytest.param("eximhook on mx1.example.net: user somebody.with.a.long.name@customer.example.com blocked",
                 id="colon"),
    pytest.param("user " + "x" * 1500 + "@example.com blocked", id="kilobyte-word"),
])
def test_a_subject_starts_on_its_own_line_and_no_line_passes_smtps_limit(text: str) -> None:
    """Every mail eximhook writes folds its Subject in one place (``mails.fold``): at
    spaces, the first line holding text; a word too long for one SMTP line (998) is
    cut into encoded words rather than sent as one line Exim would refuse."""
    from eximhook.notify.mails import MAIL_POLICY, fold

    msg = EmailMessage(policy=MAIL_POLICY)
    fold(msg, "Subject", text)
    msg.set_content("body")
    raw = msg.as_bytes()
    first = raw.decode("ascii").splitlines()[0]
    assert first.startswith("Subject: ") and first.strip() != "Subject:", first
    assert max(len(line) for line in raw.splitlines()) <= 998
    assert str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"]) == text


def test_a_subject_is_folded_at_spaces_only_where_needed() -> None:
    """Folded as RFC 5322 has it: the first line holds text, a fold comes at a space and
    only where the line would pass 78 characters, a word longer than that is not cut
    (the email package folds a Subject with a colon right after "Subject:"); unfolded,
    it reads as it was."""
    from eximhook.notify.mails import MAIL_POLICY, fold

    for text, lines in [
        ("short: one line", ["Subject: short: one line"]),
        ("a: " + "word " * 30, ["Subject: a: " + " ".join(["word"] * 13), " " + " ".join(["word"] * 15),
                                " word word"]),
        ("long: " + "x" * 100 + " tail", ["Subject: long:", " " + "x" * 100, " tail"]),
    ]:
        msg = EmailMessage(policy=MAIL_POLICY)
        fold(msg, "Subject", text)
        msg.set_content("x")
        assert msg.as_bytes().split(b"\n\n")[0].splitlines()[:len(lines) + 1] == [line.encode() for line in lines] + [
            b"Content-Type: text/plain; charset=\"utf-8\""]
        parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
        assert parsed["Subject"] == " ".join(text.split())


# Debian 13's exim4.service mounts /proc with ProtectProc=invisible: a hook Exim runs, as
# the Exim user, sees none of root's processes. In a namespace of its own, so is this one.
HIDDEN_PROC = ('mount -t proc -o hidepid=invisible proc /proc && '
               'exec setpriv --reuid=Debian-exim --regid=Debian-exim --init-groups "$@"')


@needs_root
def test_a_claim_held_by_a_process_proc_hides_is_alive() -> None:
    """An admin's `eximhook block` (root) claimed the notification and is sending it:
    a hook that cannot see root's processes must not take it for dead and send it too."""
    import subprocess
    import sys

    gone = subprocess.Popen(["true"])
    gone.wait()
    with subprocess.Popen(["cat"], stdin=subprocess.PIPE) as sender:  # root's, alive until its stdin closes
        start = outbox.process_start(sender.pid)
        probe = (f"import os; from eximhook.storage.outbox import claim_alive; "
                 f"print(os.path.exists('/proc/{sender.pid}'), "
                 f"claim_alive({{'claimer': {sender.pid}, 'claimer_start': {start}}}), "
                 f"claim_alive({{'claimer': {gone.pid}, 'claimer_start': {start}}}))")
        seen = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", HIDDEN_PROC, "sh",
                               sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60,
                              check=False)
        assert sender.stdin is not None
        sender.stdin.close()
    assert seen.stdout.split() == ["False", "True", "False"], seen.stdout + seen.stderr
