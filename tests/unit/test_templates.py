"""Notification templates: the built-in ones are today's mail byte for byte, a custom one
fills every placeholder, check-config refuses a broken one (naming file and line).
(One broken after the daemon started: integration/test_templates.py.)"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eximhook.errors import ConfigError, Exit
from eximhook.model import placeholders
from eximhook.notify import send as notify
from eximhook.notify import templates

from ..support.config import write_config
from ..support.fixtures import Run
from ..support.paths import ROOT

BLOCK: dict[str, Any] = {
    "ns": "auth", "key": "bob@example.com", "since": 1700000000.0, "by": "eximhook", "reason": "limit", "note": None,
    "counter": "invalid", "limit": 5, "period": 3600.0, "period_text": "1h", "count": 6, "total": 7,
    "ips": ["192.0.2.1", "192.0.2.7"], "rcpts": [f"n{i}@example.com" for i in range(3)]}
SHADOW = dict(BLOCK, ns="sender", key="news@shop.example", counter="bounces", limit=50, count=51, total=51,
              shadow=True, rcpts=["gone@example.org"], ips=[])
MANUAL = dict(BLOCK, ns="relay", key="192.0.2.7", by="admin:root", reason="manual", note="phished", counter=None,
              limit=None, period=None, period_text=None, count=None, total=0, ips=[], rcpts=[])
COMMAND = ["eximhook", "--config", "/e/o t.toml"]

# compose()'s output for these blocks before the text moved into templates, as it was
TODAY = {
    "block": """\
Subject: user bob@example.com blocked
From: root@example.net
To: abuse@example.net
Date: Tue, 14 Nov 2023 22:13:20 +0000
Message-ID: <eximhook.3d2fa131ce83eb6b9060882622204f57@example.net>
Auto-Submitted: auto-generated
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: 7bit
MIME-Version: 1.0

user bob@example.com blocked because has sent mail to 6 invalid recipients during 1h (limit 5).

Namespace:   auth
Key:         bob@example.com
Blocked at:  Tue, 14 Nov 2023 22:13:20 +0000
Counter:     invalid, 7 in all since it was last reset
Client IPs:  192.0.2.1, 192.0.2.7
Last invalid recipients:
  n0@example.com
  n1@example.com
  n2@example.com

Frozen messages (2 when this was sent): 1xVbMq-0004rw-1g 1xVbMq-0004rw-2h

From now on everything this sender submits is accepted and frozen.
Look at the frozen mail, then decide:
  eximhook --config '/e/o t.toml' show auth bob@example.com
  eximhook --config '/e/o t.toml' frozen auth bob@example.com
  eximhook --config '/e/o t.toml' view MESSAGE-ID
  eximhook --config '/e/o t.toml' release auth bob@example.com          # not spam: unblock, deliver the frozen mail
  eximhook --config '/e/o t.toml' purge auth bob@example.com --unblock  # spam: delete the frozen mail, then unblock
  eximhook --config '/e/o t.toml' purge auth bob@example.com            # spam: delete the frozen mail, keep the block
""",
    "shadow": """\
Subject: sender news@shop.example would be blocked (shadow mode)
From: root@example.net
To: abuse@example.net
Date: Tue, 14 Nov 2023 22:13:20 +0000
Message-ID: <eximhook.2fc83494debfd238743eac2907ad1d47@example.net>
Auto-Submitted: auto-generated
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: 7bit
MIME-Version: 1.0

sender news@shop.example would be blocked (shadow mode) because has caused 51 bounces during 1h (limit 50).

Namespace:   sender
Key:         news@shop.example
Recorded at: Tue, 14 Nov 2023 22:13:20 +0000
Counter:     bounces, 51 in all since it was last reset
Client IPs:  -
Last bounces (failed recipients):
  gone@example.org

The bounces counter runs in shadow mode: nothing was blocked or frozen.
If this sender should have been stopped, set mode = "enforce" for it in eximhook.toml.
  eximhook --config '/e/o t.toml' show sender news@shop.example
  eximhook --config '/e/o t.toml' top bounces
""",
    "manual": """\
Subject: relay user 192.0.2.7 blocked
From: root@example.net
To: abuse@example.net
Date: Tue, 14 Nov 2023 22:13:20 +0000
Message-ID: <eximhook.963befc575fd68a94ee625d0cf427603@example.net>
Auto-Submitted: auto-generated
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: 7bit
MIME-Version: 1.0

relay user 192.0.2.7 blocked by hand (admin:root): phished.

Namespace:   relay
Key:         192.0.2.7
Blocked at:  Tue, 14 Nov 2023 22:13:20 +0000
Counter:     -
Client IPs:  -
Last invalid recipients:
  -

Frozen messages (0 when this was sent): -

From now on everything this sender submits is accepted and frozen.
Look at the frozen mail, then decide:
  eximhook --config '/e/o t.toml' show relay 192.0.2.7
  eximhook --config '/e/o t.toml' frozen relay 192.0.2.7
  eximhook --config '/e/o t.toml' view MESSAGE-ID
  eximhook --config '/e/o t.toml' release relay 192.0.2.7          # not spam: unblock, deliver the frozen mail
  eximhook --config '/e/o t.toml' purge relay 192.0.2.7 --unblock  # spam: delete the frozen mail, then unblock
  eximhook --config '/e/o t.toml' purge relay 192.0.2.7            # spam: delete the frozen mail, keep the block
""",
}


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Date headers in UTC, as TODAY has them."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(("name", "block"), [("block", BLOCK), ("shadow", SHADOW), ("manual", MANUAL)])
def test_the_built_in_templates_are_todays_mail(utc: None, name: str, block: dict[str, Any]) -> None:
    frozen = ["1xVbMq-0004rw-1g", "1xVbMq-0004rw-2h"] if name == "block" else []
    msg = notify.compose(block, to="abuse@example.net", sender="root@example.net", command=COMMAND, frozen=frozen)
    assert msg.as_bytes() == TODAY[name].encode()


def test_a_login_block_shows_where_the_guesses_came_from_and_a_customer_speaks_of_its_members(utc: None) -> None:
    """A login block's key is the user name the guesses tried: its evidence is their
    client addresses. A customer's block freezes every member's mail, and says so."""
    login = dict(BLOCK, ns="login", key="bob@example.com", counter="authfail", rcpts=[])
    text = notify.compose(login, to="abuse@example.net", sender="root@example.net", command=COMMAND).get_content()
    assert "Last client addresses that tried it:\n  192.0.2.1\n  192.0.2.7\n" in text
    customer = dict(BLOCK, ns="customer", key="acme", counter="recipients", rcpts=["auth bob@example.com: 1x (3 rcpt)"])
    text = notify.compose(customer, to="abuse@example.net", sender="root@example.net", command=COMMAND,
                          members=[("auth", "bob@example.com", 6, True)]).get_content()
    assert "Crossed by:  its member user bob@example.com\n" in text and "  user bob@example.com: 6 (100 %)\n" in text
    assert "everything its members submit is accepted and frozen" in text and "this sender" not in text


def test_a_custom_template_fills_every_placeholder(tmp_path: Path, utc: None) -> None:
    import os

    path = tmp_path / "notify.tmpl"
    body = "\n".join(f"{name}=${{{name}}}" for name in sorted(templates.PLACEHOLDERS["notify"]))
    path.write_text(f"Subject: [abuse] $label $$key on $host\nx-queue: outbound\nReply-To: desk@example.net\n\n{body}\n"
                    "  * $evidence\n")
    msg = notify.compose(BLOCK, to="abuse@example.net", sender="root@example.net", command=COMMAND,
                         frozen=["1xVbMq-0004rw-1g"], template=templates.load(str(path), "notify"))
    host = os.uname().nodename
    assert msg["Subject"] == f"[abuse] user $key on {host}"
    assert (msg["x-queue"], msg["Reply-To"]) == ("outbound", "desk@example.net")
    assert list(msg.keys())[:6] == ["Subject", "From", "To", "Date", "Message-ID", "Auto-Submitted"]
    single = {
        "label": "user", "ns": "auth", "key": "bob@example.com", "counter": "invalid", "count": "6", "limit": "5",
        "period": "1h", "total": "7", "date": "Tue, 14 Nov 2023 22:13:20 +0000", "host": host,
        "summary": "user bob@example.com blocked because has sent mail to 6 invalid recipients during 1h (limit 5).",
        "reason": "limit", "by": "eximhook", "note": "-", "counted": "invalid, 7 in all since it was last reset",
        "ips": "192.0.2.1, 192.0.2.7",
        "evidence_title": "Last invalid recipients", "frozen": "1xVbMq-0004rw-1g", "frozen_count": "1",
        "command": "eximhook --config '/e/o t.toml'", "subject_args": "auth bob@example.com",
    }
    assert set(single) | (placeholders.LISTS & templates.PLACEHOLDERS["notify"]) == templates.PLACEHOLDERS["notify"], \
        "every placeholder tested"
    lines = msg.get_content().splitlines()
    filled = [line for line in lines if line.partition("=")[0] in single]
    assert filled == [f"{k}={v}" for k, v in sorted(single.items())]
    at = lines.index("evidence=n0@example.com")
    assert lines[at : at + 3] == ["evidence=n0@example.com", "n1@example.com", "n2@example.com"]
    assert lines[-3:] == ["  * n0@example.com", "  n1@example.com", "  n2@example.com"], "indented as its line"
    at = lines.index("commands=eximhook --config '/e/o t.toml' show auth bob@example.com")
    assert lines[at + 5] == "eximhook --config '/e/o t.toml' purge auth bob@example.com            # spam: delete " \
                            "the frozen mail, keep the block"


def test_the_owner_template_fills_every_placeholder(tmp_path: Path, utc: None) -> None:
    path = tmp_path / "owner.tmpl"
    names = sorted(templates.PLACEHOLDERS["owner"])
    path.write_text("Subject: $key\n\n" + "".join(f"{name}=${name}\n" for name in names))
    msg = notify.compose_owner(BLOCK, to="bob@example.com", sender="root@example.net", abuse="abuse@example.net",
                               template=templates.load(str(path), "owner"))
    values = dict(line.partition("=")[::2] for line in msg.get_content().splitlines())
    assert sorted(values) == names
    assert values["why"] == "has sent mail to 6 invalid recipients during 1h (limit 5)"
    assert (values["abuse"], values["key"], values["limit"]) == ("abuse@example.net", "bob@example.com", "5")
    assert msg["To"] == "bob@example.com" and msg["Message-ID"].startswith("<eximhook.owner.")
    manual = notify.compose_owner(MANUAL, to="noc@example.com", sender="root", abuse="postmaster")
    assert "because it was blocked by an administrator." in manual.get_content()
    assert "phished" not in manual.as_string() and "admin:root" not in manual.as_string(), "the admin's note is theirs"
    assert manual["Reply-To"] == "postmaster" and manual["Auto-Submitted"] == "auto-generated"


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        pytest.param("notify", "Subject: $user blocked\n\nbody\n", r"line 1: unknown placeholder \$user; known: \$by, ",
                     id="unknown-in-header"),
        pytest.param("notify", "Subject: x\n\nHi\n  ${nobody}\n", r"line 4: unknown placeholder \$nobody",
                     id="unknown-in-body"),
        pytest.param("owner", "Subject: x\n\n$commands\n", r"line 3: unknown placeholder \$commands; known: \$abuse",
                     id="owner-has-no-commands"),
        pytest.param("notify", "Subject: x\nFrom: evil@example.org\n\n", r"line 2: a template cannot set From",
                     id="from"),
        pytest.param("notify", "Subject: x\nAuto-Submitted: no\n\n", r"line 2: a template cannot set Auto-Submitted",
                     id="auto-submitted"),
        pytest.param("notify", "Subject: x\nBcc: evil@example.org\n\n", r"line 2: a template cannot set Bcc", id="bcc"),
        pytest.param("notify", "Subject: x\nsubject: y\n\n", r"line 2: a second Subject header", id="two-subjects"),
        pytest.param("notify", "Subject: x\nno header here\n\n", r"line 2: not a header line", id="not-a-header"),
        pytest.param("notify", "Subject: x\n continued\n\n", r"line 2: not a header line", id="folded"),
        pytest.param("notify", "Subject: $evidence\n\n", r"line 1: \$evidence is a list", id="list-in-header"),
        pytest.param("notify", "Subject: x\n\ncosts 5$ now\n", r"line 3: '\$' at column 8 starts no placeholder",
                     id="stray-dollar"),
        pytest.param("notify", "X-Queue: x\n\nbody\n", r"no Subject header", id="no-subject"),
        pytest.param("notify", "Subject: x\nbody, no blank line", r"line 2: not a header line", id="no-blank-line"),
        pytest.param("notify", "Subject: x", r"no blank line after the headers", id="headers-only"),
        pytest.param("notify", b"Subject: \xff\n\n", r"not UTF-8 \(byte 9\)", id="not-utf8"),
        pytest.param("notify", None, r"cannot read the notify template: No such file or directory", id="missing"),
    ],
)
def test_check_config_refuses_a_broken_template(tmp_path: Path, cli: Run, kind: str, text: str | bytes | None,
                                               message: str) -> None:
    path = tmp_path / f"{kind}.tmpl"
    if isinstance(text, str):
        path.write_text(text)
    elif text is not None:
        path.write_bytes(text)
    config = write_config(tmp_path, settings={f"{kind}.template": str(path)})
    code, out, err = cli("check-config", config_path=config)
    assert code == Exit.CONFIG and out == ""
    assert re.search(rf"^eximhook: error: {re.escape(str(path))}:? .*{message}", err), err
    with pytest.raises(ConfigError):
        templates.load(str(path), kind)


def test_check_config_names_the_templates(tmp_path: Path, cli: Run) -> None:
    path = tmp_path / "shadow.tmpl"
    path.write_text("Subject: would block $key\n\n$summary\n")
    code, out, _ = cli("check-config", config_path=write_config(tmp_path, settings={
        "notify.shadow_template": str(path)}))
    assert code == 0
    assert f"  notify template {templates.builtin_path('notify')} (built-in): ok\n" in out
    assert f"  shadow template {path}: ok\n" in out


def test_the_documented_example_is_a_valid_template(tmp_path: Path) -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    [example] = re.findall(r"```\n(Subject: \[abuse\].*?)```", docs, re.S)
    path = tmp_path / "example.tmpl"
    path.write_text(example)
    assert templates.load(str(path), "notify").headers[0] == ("Subject", "[abuse] $label $key blocked on $host")


def test_no_value_makes_a_line_that_ends_sendmails_input(tmp_path: Path) -> None:
    """sendmail without -i (the default command) ends the message at a line holding only
    a dot: a key of "." alone on a template's line must not cut the mail short."""
    path = tmp_path / "notify.tmpl"
    path.write_text("Subject: $key\n\n$key\n$evidence\nthe end\n")
    msg = notify.compose(dict(BLOCK, key=".", rcpts=[".", "x"]), to="abuse@example.net", sender="root",
                         command=["eximhook"], template=templates.load(str(path), "notify"))
    assert msg.get_content() == ". \n. \nx\nthe end\n"
