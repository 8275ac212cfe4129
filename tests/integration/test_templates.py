"""A notification template broken after the daemon started is logged and replaced by the
built-in text, never losing the mail."""

from __future__ import annotations

from pathlib import Path

from ..support.config import write_config
from ..support.fixtures import Run, Serve
from ..support.hooks import outbox_drained
from ..support.mailbox import messages
from ..support.waiting import wait_for


def test_a_template_broken_after_start_falls_back_and_the_mail_goes_once(tmp_path: Path, mailbox: Path, cli: Run,
                                                                         serve: Serve) -> None:
    from eximhook.serve.protocol import encode

    custom = tmp_path / "notify.tmpl"
    custom.write_text("Subject: custom $key\n\nCustom text about $key.\n")
    config = write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"', settings={
        "notify.hold": 0.2, "exim.freeze_queued": False, "notify.template": str(custom)})
    assert cli("check-config", config_path=config)[0] == 0
    daemon = serve(config)

    def trip(key: str) -> None:
        for i in range(6):
            daemon.request(encode("record-invalid", "auth", key, rcpt=f"n{i}@example.com"))

    trip("bob")
    [first] = wait_for("the first notification", lambda: messages(mailbox), 10)  # type: ignore[misc]
    assert first["Subject"] == "custom bob" and first.get_content() == "Custom text about bob.\n"
    custom.write_text("Subject: custom $user\n\nCustom text.\n")  # an edit nobody checked
    trip("carol")
    wait_for("the second notification", lambda: len(messages(mailbox)) == 2, 10)
    wait_for("the outbox drained", lambda: outbox_drained(config), 10)  # a copy, if any, has gone by then
    [_, second] = messages(mailbox)
    assert second["Subject"] == "user carol blocked", "the built-in text"
    assert f"--config {config} purge auth carol  " in second.get_content()
    log = (tmp_path / "eximhook.log").read_text()
    assert f"{custom} line 1: unknown placeholder $user" in log and "with the built-in notify template instead" in log
    history = cli("history", "auth", "carol", config_path=config)[1]
    assert history.count("notified") == 1
