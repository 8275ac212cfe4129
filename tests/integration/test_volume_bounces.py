"""Seed 004 through the daemon and the ${run} hooks, on one real store: volume per
message, bounces attributed through the Message-ID the sending subject's message was
remembered by, notifications that name what they can at once, and hostile senders."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eximhook.serve.protocol import encode

from ..support.config import write_config
from ..support.daemon import Daemon
from ..support.fixtures import Serve
from ..support.hooks import hook, outbox_drained
from ..support.mailbox import messages
from ..support.waiting import wait_for

ENFORCED = {"limits.auth.recipients.windows": [{"limit": 5, "period": "1h"}, {"limit": 8, "period": "1d"}],
            "limits.auth.recipients.mode": "enforce",
            "limits.auth.bounces.limit": 2, "limits.auth.bounces.mode": "enforce",
            "limits.sender.bounces.limit": 1, "limits.sender.bounces.mode": "enforce",
            "notify.hold": 60, "exim.freeze_queued": False}


@pytest.fixture
def seed004(tmp_path: Path, mailbox: Path, serve: Serve) -> tuple[Path, Daemon]:
    config = write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"',
                          settings=ENFORCED)
    return config, serve(config)


def shown(config: Path, ns: str, key: str) -> dict[str, object]:
    out = hook(config, "show", "--json", ns, "--", key)
    assert out.returncode == 0, out.stdout
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def total(config: Path, ns: str, key: str, counter: str) -> int:
    return int(shown(config, ns, key)["counters"][counter]["total"])  # type: ignore[index]


def message(d: Daemon, key: str, n: int, msg_id: str, mid: str = "", sender: str = "") -> bytes:
    return d.request(encode("message", "auth", key, n=str(n), id=msg_id, mid=mid, sender=sender))


def test_volume_trips_at_the_message_that_crosses_and_the_mail_names_it(
        seed004: tuple[Path, Daemon], mailbox: Path) -> None:
    config, d = seed004
    assert [message(d, "vera", 2, f"1xVbMq-0004rw-{i}a") for i in range(2)] == [b"0", b"0"]
    assert message(d, "vera", 2, "1xVbMq-0004rw-2a") == b"1", "6 > 5 in the hour: blocked"
    assert message(d, "vera", 1, "1xVbMq-0004rw-3a") == b"1", "and everything after it"
    # a message count knows its message: no [notify] hold (60 s here) to wait for a report
    [note] = wait_for("the notification", lambda: messages(mailbox), 10)  # type: ignore[misc]
    assert "has sent mail to 6 recipients during 1h (limit 5)" in note.get_content()
    assert "1xVbMq-0004rw-2a" in note.get_content()
    block = shown(config, "auth", "vera")["block"]
    assert (block["counter"], block["count"], block["limit"]) == ("recipients", 6, 5)  # type: ignore[index]
    windows = shown(config, "auth", "vera")["counters"]["recipients"]["windows"]  # type: ignore[index]
    assert [(w["period"], w["count"]) for w in windows] == [(3600, 7), (86400, 7)]
    wait_for("the outbox drained", lambda: outbox_drained(config), 10)
    assert len(messages(mailbox)) == 1


def test_a_bounce_counts_against_the_sender_and_the_subject_that_sent_it(
        seed004: tuple[Path, Daemon], mailbox: Path) -> None:
    config, d = seed004
    assert message(d, "walt", 3, "1xVbMq-0004rw-1b", mid="<one@mua>", sender="Walt@Example.NET") == b"0"
    assert message(d, "walt", 1, "1xVbMq-0004rw-1c", mid="<two@mua>", sender="other@example.net") == b"0"
    bounce = encode("bounce", key="walt@example.net", mid="<x@y> <one@mua>", failed="gone@dead.example")
    assert d.request(bounce) == b"0", "1 bounce: within both limits"
    assert total(config, "sender", "walt@example.net", "bounces") == 1
    assert total(config, "auth", "walt", "bounces") == 1, "References named walt's message"
    # the second bounce takes the address over its limit (1) and blocks it
    assert d.request(encode("bounce", key="walt@example.net", mid="<one@mua>")) == b"1"
    assert shown(config, "sender", "walt@example.net")["block"] is not None
    assert shown(config, "auth", "walt")["block"] is None
    # the third takes walt over his (2): the address being blocked already must not
    # keep the other subject of the same bounce from tripping
    assert d.request(encode("bounce", key="walt@example.net", mid="<one@mua>")) == b"1"
    assert shown(config, "auth", "walt")["block"]["counter"] == "bounces"  # type: ignore[index]
    assert d.request(encode("bounce", key="other@example.net", mid="<two@mua>")) == b"1", "walt is blocked"
    assert d.request(encode("bounce", key="stranger@example.net", mid="<never@seen>")) == b"0"
    assert total(config, "auth", "walt", "bounces") == 4
    assert total(config, "sender", "stranger@example.net", "bounces") == 1
    # a bounce freezes nothing and waits for nothing: both notifications go out at once
    # ([notify] hold is 60 s here)
    notes = wait_for("both notifications", lambda: len(messages(mailbox)) == 2, 10)
    assert notes
    assert sorted(str(m["Subject"]) for m in messages(mailbox)) == ["sender walt@example.net blocked",
                                                                   "user walt blocked"]


def test_a_report_from_another_mta_counts_only_for_a_message_we_sent(seed004: tuple[Path, Daemon]) -> None:
    """Anyone can send a delivery report over SMTP. One that names no message of ours
    (backscatter of spam that forged our user's address) counts nothing; one that does
    counts once per reporting network, and at most once per recipient the message had."""
    config, d = seed004

    def report(ip: str, mid: str = "<real@mua>") -> bytes:
        return d.request(encode("bounce", key="zoe@example.net", remote="1", mid=mid, ip=ip))

    assert report("192.0.2.1", "<forged@spam>") == b"0"
    assert d.request(encode("bounce", key="zoe@example.net", remote="1")) == b"0"
    assert shown(config, "sender", "zoe@example.net")["counters"]["bounces"]["total"] == 0  # type: ignore[index]
    assert message(d, "zoe", 2, "1xVbMq-0004rw-1f", mid="<real@mua>", sender="zoe@example.net") == b"0"
    assert report("192.0.2.1") == b"0", "counted: 1 of the address's limit of 1"
    assert report("192.0.2.99") == b"0", "the same network again: a forger's second report of it, not counted"
    assert total(config, "auth", "zoe", "bounces") == 1
    assert report("2001:db8:1::25") == b"1", "another network: counted; the address is over its limit"
    assert report("198.51.100.7") == b"1", "answered: the address is blocked"
    assert total(config, "auth", "zoe", "bounces") == 2, "two recipients: at most two bounces"
    assert total(config, "sender", "zoe@example.net", "bounces") == 2
    out = hook(config, "record-bounce", "zoe@example.net", "--remote", "--ip", "203.0.113.9", "--mid", "<real@mua>")
    assert out.stdout == b"1" and total(config, "auth", "zoe", "bounces") == 2, "the hook keeps to the same rules"
    # Exim's own bounce (not remote) is ours: it counts against the address, known message or not
    assert d.request(encode("bounce", key="amy@example.net", mid="<unknown@mua>")) == b"0"
    assert total(config, "sender", "amy@example.net", "bounces") == 1


def test_a_message_id_used_again_adds_its_recipients(seed004: tuple[Path, Daemon]) -> None:
    """A bot that sends every message with one Message-ID and sender cannot shrink the
    bounces they may cause to the last message's recipients."""
    config, d = seed004
    for i in range(4):
        assert message(d, "bo", 1, f"1xVbMq-0004rw-{i}j", mid="<same@bot>", sender="bo@example.net") == b"0"
    for _ in range(2):
        d.request(encode("bounce", key="bo@example.net", mid="<same@bot>"))
    assert total(config, "auth", "bo", "bounces") == 2


def test_shadow_mode_records_once_per_limit_setting(tmp_path: Path, serve: Serve) -> None:
    """A would-block is recorded (and audited) once per subject, counter and limit; an
    admin who raises the limit sees the trips at the new limit, not the old ones."""
    import os
    import signal

    config = write_config(tmp_path, settings={"limits.auth.recipients.limit": 3})
    d = serve(config)
    def events() -> list[str]:
        return [e["event"] for e in json.loads(hook(config, "history", "--json", "auth", "una").stdout)]

    for i in range(4):
        assert message(d, "una", 2, f"1xVbMq-0004rw-{i}g") == b"0", "shadow mode: never blocked"
    # nothing can block, so 0 is answered at once and the store thread records the
    # would-block behind it (Server._flush): wait for the record, then look at it
    wait_for("the would-block", events, 10)
    assert events() == ["would-block"]
    assert b"recipients>3/1h" in hook(config, "list", "--would-block").stdout
    config.write_text(config.read_text().replace("[limits.auth.recipients]\nlimit = 3",
                                                 "[limits.auth.recipients]\nlimit = 10"))
    os.kill(d.pid, signal.SIGHUP)
    wait_for("the new limit", lambda: "SIGHUP: config" in (tmp_path / "eximhook.log").read_text())
    listed = hook(config, "list", "--would-block").stdout
    assert b"una" not in listed, "the trip at the old limit is history, not a would-block under the new one"
    for i in range(2):
        message(d, "una", 2, f"1xVbMq-0004rw-{i}h")
    wait_for("the second would-block", lambda: len(events()) == 2, 10)
    assert b"recipients>10/1h" in hook(config, "list", "--would-block").stdout
    assert events() == ["would-block", "would-block"]


def test_the_hook_and_the_daemon_share_the_references(seed004: tuple[Path, Daemon]) -> None:
    """The ${run} fallback counts the same way, on the same store."""
    config, d = seed004
    out = hook(config, "record-message", "auth", "xena", "--count", "2", "--sender", "xena@example.net",
               "--mid", "<m@mua>", "--id", "1xVbMq-0004rw-1d", "--fallback")
    assert out.stdout == b"0"
    assert d.request(encode("bounce", key="xena@example.net", mid="<m@mua>")) == b"0"
    assert hook(config, "record-bounce", "xena@example.net", "--mid", "<m@mua>", "--fallback").stdout == b"1"
    assert total(config, "auth", "xena", "bounces") == 2
    assert shown(config, "sender", "xena@example.net")["block"] is not None


_EXAMPLES = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sender=st.binary(min_size=1, max_size=1500).filter(lambda b: b"\0" not in b),
       mid=st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b and b">" not in b and b"<" not in b))
def test_hostile_senders_and_message_ids(seed004: tuple[Path, Daemon], sender: bytes, mid: bytes) -> None:
    """Quotes, spaces, @, newlines, upper case, invalid UTF-8, kilobytes: each arrives
    as the same key, folded, through the daemon and through the hook's argv."""
    config, d = seed004
    n = next(_EXAMPLES)  # each example its own subjects: the daemon and store are the test's
    text = f"{n}:".encode() + sender
    ref = f"<{mid.decode('utf-8', 'surrogateescape')}>"
    sent = text.decode("utf-8", "surrogateescape")
    assert message(d, f"yuri{n}", 2, "1xVbMq-0004rw-1e", mid=ref, sender=sent) == b"0"
    assert d.request(encode("bounce", key=sent, mid=ref)) == b"0"
    assert hook(config, "record-bounce", sent, "--mid", ref).stdout == b"1", "the sender's limit is 1"
    key = text.lower().decode("utf-8", "surrogateescape")
    assert total(config, "sender", key, "bounces") == 2
    named = ref[1:-1].strip()  # an id of blanks names no message: nothing to remember or recall
    assert total(config, "auth", f"yuri{n}", "bounces") == (2 if named else 0)
