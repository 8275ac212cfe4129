"""A burst of blocks is one mail: once [notify] digest_after mails about one namespace's
blocks went out within digest_every, its next blocks wait and go out together, one
digest per digest_every at most; each block's notification exactly once, in a digest
or alone; a digest whose sender died is sent again whole, with the same Message-ID;
keys cannot inject headers or lines. The clock is a parameter: no test waits."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from eximhook.errors import ConfigError, Exit
from eximhook.model import placeholders
from eximhook.model.records import block_record
from eximhook.notify import mails, templates
from eximhook.notify import send as notify
from eximhook.storage import outbox
from eximhook.storage.store import Store

from ..support.config import write_config
from ..support.fixtures import Run
from ..support.mailbox import messages, sent

T0 = 1_700_000_000.0
BURST = (20, 60.0)  # the defaults: more than 20 mails of one namespace within a minute


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "store"))


def block(store: Store, ns: str, key: str, at: float, **more: Any) -> None:
    record = block_record(ns, key, at, by="eximhook", reason="limit", counter_name="authfail", limit=30,
                          period=3600.0, count=31)
    assert store.block({**record, **more}, at, True)


def send(store: Store, mailbox: Path, at: float, burst: tuple[int, float] | None = BURST,
         **more: Any) -> tuple[int, list[str]]:
    return notify.send_pending(store, to="abuse@example.net", sender="root@example.net",
                               sendmail=[f"{mailbox}/sendmail.sh", "-f", "root"], timeout=10, stale_after=300,
                               budget=20, command=["eximhook"], clock=lambda: at, burst=burst, **more)


def notified(store: Store) -> list[str]:
    """The key of each notified event, in order: a duplicate would show twice."""
    return [e["key"] for e in store.history() if e["event"] == "notified"]


def test_a_burst_is_twenty_mails_then_one_digest_a_minute(store: Store, mailbox: Path) -> None:
    for i in range(25):
        block(store, "ip", f"192.0.2.{i}", T0)
    assert send(store, mailbox, T0) == (20, []), "twenty on their own, at once"
    assert len(messages(mailbox)) == 20
    assert send(store, mailbox, T0 + 59) == (0, []), "the other five wait"
    assert outbox.next_digest(store) == T0 + 60
    assert send(store, mailbox, T0 + 60) == (5, []), "a minute after the first: one digest of five"
    digest = messages(mailbox)[-1]
    assert len(messages(mailbox)) == 21 and store.outbox() == []
    assert str(digest["Subject"]).startswith("5 clients blocked on ")
    text = digest.get_content()
    for i in range(20, 25):
        assert (f"client 192.0.2.{i} blocked because has failed SMTP AUTH 31 times during 1h (limit 30)."
                in text), "each with its key, counter, count and window"
        commands = f"      eximhook show ip 192.0.2.{i}\n      eximhook unblock ip 192.0.2.{i}\n"
        assert commands in text, "and its commands"
    # the burst goes on: what comes within the next minute waits for the next digest
    for i in range(3):
        block(store, "ip", f"198.51.100.{i}", T0 + 70)
    assert send(store, mailbox, T0 + 119) == (0, [])
    assert send(store, mailbox, T0 + 120) == (3, [])
    assert len(messages(mailbox)) == 22
    # quiet for a while: the next block is mailed on its own, at once
    block(store, "ip", "203.0.113.1", T0 + 400)
    assert send(store, mailbox, T0 + 400) == (1, [])
    assert str(messages(mailbox)[-1]["Subject"]) == "client 203.0.113.1 blocked"
    keys = notified(store)
    assert len(keys) == len(set(keys)) == 29, "every block's notification once"


def test_the_burst_counts_per_namespace_and_rations_only_the_desks_mails_about_limits(
        store: Store, mailbox: Path) -> None:
    """Another namespace is not held back by one in a burst; the owner's mail and a
    block by hand are never held for a digest."""
    for i in range(3):
        block(store, "ip", f"192.0.2.{i}", T0)
    block(store, "auth", "bob", T0)
    record = block_record("auth", "carol", T0, by="admin:root", reason="manual", note="phished")
    assert store.block(record, T0, True, owner="carol@example.com")
    assert send(store, mailbox, T0, burst=(1, 60.0)) == (4, [])
    mails = [(to, str(m["Subject"])) for to, m in sent(mailbox)]
    assert mails[0] == ("abuse@example.net", "client 192.0.2.0 blocked")
    assert ("abuse@example.net", "user bob blocked") in mails and ("abuse@example.net", "user carol blocked") in mails
    assert ("carol@example.com", "Outgoing mail stopped: user carol") in mails
    assert send(store, mailbox, T0 + 60, burst=(1, 60.0)) == (2, [])
    assert str(sent(mailbox)[-1][1]["Subject"]).startswith("2 clients blocked")


@pytest.mark.parametrize("later", [(1, 60.0), None], ids=["same-config", "digests-turned-off-since"])
def test_a_digest_whose_sender_died_is_sent_again_whole(store: Store, mailbox: Path,
                                                        later: tuple[int, float] | None) -> None:
    """As the outbox does for one mail: a sender killed after sendmail took the digest
    and before it marked it sent leaves a claim; the next run takes it over and sends
    the same entries again, with the same Message-ID, so the two fold into one (even
    if digests were turned off meanwhile)."""
    for i in range(4):
        block(store, "ip", f"192.0.2.{i}", T0)
    assert send(store, mailbox, T0, burst=(1, 60.0)) == (1, [])
    claimed = outbox.claim_next(store, T0 + 60, 300, burst=(1, 60.0))
    assert claimed is not None and claimed["kind"] == "digest" and len(claimed["items"]) == 3
    from eximhook.notify.digest import compose_digest

    first = compose_digest(claimed["items"], to="abuse@example.net", sender="root@example.net",
                           command=["eximhook"], burst=(1, 60.0), template=templates.builtin("digest"))
    assert mails.send(first, [f"{mailbox}/sendmail.sh", "-f", "root"], "abuse@example.net", 10) is None
    # ... and the sender dies here. Another block comes meanwhile: not in that digest.
    block(store, "ip", "192.0.2.99", T0 + 61)
    assert send(store, mailbox, T0 + 100, burst=(1, 60.0)) == (0, []), "the claim is fresh: its sender may live"
    assert send(store, mailbox, T0 + 60 + 301, burst=later) == (4, [])
    sent = messages(mailbox)
    assert sent[2]["Message-ID"] == first["Message-ID"]
    again = sent[2].get_content()
    assert [line for line in again.splitlines() if "192.0.2." in line] == [
        line for line in first.get_content().splitlines() if "192.0.2." in line]
    assert "192.0.2.99" not in again and "192.0.2.99" in sent[3].get_content()
    assert store.outbox() == []
    keys = notified(store)
    assert len(keys) == len(set(keys)) == 5, "marked sent once each"


def test_a_failed_digest_stays_queued_and_goes_once(store: Store, mailbox: Path) -> None:
    for i in range(3):
        block(store, "ip", f"192.0.2.{i}", T0)
    assert send(store, mailbox, T0, burst=(1, 60.0)) == (1, [])
    (mailbox / "FAIL").touch()
    sent, errors = send(store, mailbox, T0 + 60, burst=(1, 60.0))
    assert sent == 0 and len(errors) == 1 and "stand-in failure" in errors[0]
    assert [i["state"] for i in store.outbox()] == ["queued", "queued"]
    assert [i["attempts"] for i in store.outbox()] == [1, 1]
    (mailbox / "FAIL").unlink()
    assert send(store, mailbox, T0 + 120, burst=(1, 60.0)) == (2, [])
    assert len(messages(mailbox)) == 2 and store.outbox() == []
    events = [e["event"] for e in store.history() if e["event"].startswith("notif")]
    assert events.count("notified") == 3 and events.count("notify-failed") == 2


def test_hostile_keys_cannot_inject_headers_or_lines(store: Store, mailbox: Path) -> None:
    evil = ["evil\r\nBcc: victim@example.org\r\n\r\nbody", "x\n.\nRCPT TO:<victim@example.org>", "b" * 5000]
    block(store, "auth", "first", T0)
    for key in evil:
        block(store, "auth", key, T0)
    assert send(store, mailbox, T0, burst=(1, 60.0)) == (1, [])
    assert send(store, mailbox, T0 + 60, burst=(1, 60.0)) == (3, [])
    digest = messages(mailbox)[-1]
    assert digest["Bcc"] is None and str(digest["Subject"]).startswith("3 users blocked on ")
    text = digest.get_content()
    assert "user evil\\r\\nBcc: victim@example.org\\r\\n\\r\\nbody blocked because" in text
    assert "$'evil\\x0d\\x0aBcc: victim@example.org\\x0d\\x0a\\x0d\\x0abody'" in text, "the commands paste as they are"
    assert "\n.\n" not in text and "x\\n.\\nRCPT TO:<victim@example.org>" in text
    assert "b" * 121 not in text and "(a key of 5000 characters: eximhook list --ns auth shows it)" in text
    assert all(len(line) < 400 for line in text.splitlines()), "a long key is cut, not a line of kilobytes"


def test_eximhook_notify_digests_as_the_config_says(tmp_path: Path, mailbox: Path, cli: Run) -> None:
    """``eximhook notify`` (and so maintain and the daemon) rations as [notify] says;
    digest_after = 0 turns it off."""
    config = write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"',
                          settings={"notify.digest_after": 2, "notify.digest_every": "1h"})
    with Store(str(tmp_path / "store")) as store:
        for i in range(5):
            block(store, "ip", f"192.0.2.{i}", time.time())
    assert cli("notify", config_path=config)[:2] == (0, "2")
    assert cli("notify", config_path=config)[:2] == (0, "0")
    off = write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"',
                       settings={"notify.digest_after": 0})
    assert cli("notify", config_path=off)[:2] == (0, "3")
    assert [str(m["Subject"]) for m in messages(mailbox)] == [f"client 192.0.2.{i} blocked" for i in range(5)]


def test_a_custom_digest_template_is_checked_and_used(tmp_path: Path, mailbox: Path, cli: Run) -> None:
    path = tmp_path / "digest.tmpl"
    names = sorted(templates.PLACEHOLDERS["digest"])
    path.write_text("Subject: [burst] $count $what\nX-Queue: abuse\n\n" +
                    "".join(f"{n}=${n}\n" for n in names if n not in placeholders.LISTS) + "  * $blocks\n")
    config = write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"',
                          settings={"notify.digest_template": str(path), "notify.digest_after": 1})
    code, out, _ = cli("check-config", config_path=config)
    assert code == 0 and f"digest template {path}: ok" in out
    bad = tmp_path / "bad.tmpl"
    bad.write_text("Subject: $key\n\nbody\n")
    broken = write_config(tmp_path, settings={"notify.digest_template": str(bad)})
    code, _, err = cli("check-config", config_path=broken)
    assert code == Exit.CONFIG and "unknown placeholder $key" in err

    def template(kind: str) -> templates.Template:
        return templates.load(str(path) if kind == "digest" else None, kind)

    with Store(str(tmp_path / "store")) as store:
        for i in range(3):
            block(store, "ip", f"192.0.2.{i}", T0)
        send(store, mailbox, T0, burst=(1, 60.0), template=template)
        send(store, mailbox, T0 + 60, burst=(1, 60.0), template=template)
    digest = messages(mailbox)[-1]
    assert (str(digest["Subject"]), digest["X-Queue"]) == ("[burst] 2 clients", "abuse")
    assert "  * " + time.strftime("%H:%M:%S", time.localtime(T0)) + " client 192.0.2.1 blocked" in \
        digest.get_content()


def test_the_burst_state_is_bounded(store: Store, mailbox: Path) -> None:
    """What a namespace mailed lately: at most digest_after times, one record per namespace."""
    for i in range(50):
        block(store, "ip", f"192.0.2.{i}", T0 + i)
        send(store, mailbox, T0 + i, burst=(5, 10.0))
    state = store.read(lambda txn: json.loads(bytes(txn.get(b"digest\0ip", db=store.db(txn, b"meta")))))
    assert len(state["times"]) <= 5
    keys = store.read(lambda txn: [bytes(k) for k, _ in txn.cursor(db=store.db(txn, b"meta"))
                                   if bytes(k).startswith(b"digest")])
    assert keys == [b"digest\0ip"]


def test_a_config_check_refuses_a_negative_digest_after(tmp_path: Path) -> None:
    from eximhook.config.load import load

    with pytest.raises(ConfigError, match=r"notify\.digest_after must be a whole number"):
        load(str(write_config(tmp_path, settings={"notify.digest_after": -1})))
