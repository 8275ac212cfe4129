"""The abuse desk's workflow, one command per decision, against a real Exim:
frozen, view, release, purge, --dry-run, freezing queued mail on a block."""

from __future__ import annotations

import email
import email.policy
import json
import os
from collections.abc import Iterator

import pytest

from ..support import harness as h
from ..support.marks import needs_exim, needs_root

pytestmark = [pytest.mark.e2e, needs_exim, needs_root]
PERL = 'x" or do { system("touch /tmp/eximhook-perl-pwned") } or "'


@pytest.fixture
def exim() -> Iterator[h.Exim]:
    server = h.make(["bob", "alice", "carol", PERL], limit=3)
    try:
        server.setup().start()
        yield server
    finally:
        h.cleanup(server)


def frozen(exim: h.Exim, *subject: str) -> list[dict[str, object]]:
    result = exim.eximhook("frozen", "--json", *subject)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def block_and_send(exim: h.Exim, user: str, subjects: list[str], **kw: object) -> None:
    assert exim.eximhook("block", "auth", user, "--no-notify").returncode == 0
    for subject in subjects:
        assert exim.send([f"alice@{h.DOMAIN}"], user=user, subject=subject, **kw) == {}  # type: ignore[arg-type]


def test_frozen_lists_exactly_the_subjects_mail(exim: h.Exim) -> None:
    block_and_send(exim, "bob", ["bob one", "bob two"])
    # carol is blocked too and forges bob's header: her mail is hers, not bob's
    block_and_send(exim, "carol", ["carol forged"], headers="X-Authenticated-As: bob\r\n")
    mine = frozen(exim, "auth", "bob")
    assert sorted(m["subject"] for m in mine) == ["bob one", "bob two"]  # type: ignore[type-var]
    assert {m["id"] for m in mine} | {m["id"] for m in frozen(exim, "auth", "carol")} == set(exim.queue(frozen=True))
    first = mine[0]
    assert first["recipients"] == [f"alice@{h.DOMAIN}"] and first["frozen_by_eximhook"] is True
    assert isinstance(first["age_s"], int) and isinstance(first["size"], int) and first["size"] > 100
    assert first["sender"] == "bob"  # control = submission/domain= leaves it unqualified
    table = exim.eximhook("frozen", "auth", "bob").stdout
    assert table.splitlines()[0].split() == ["ID", "AGE", "SIZE", "SENDER", "RCPTS", "SUBJECT", "BY-EXIMHOOK"]
    assert len(table.splitlines()) == 3
    assert exim.eximhook("frozen", "auth", "alice").stdout == "no frozen messages from auth alice\n"


def test_view_shows_the_message(exim: h.Exim) -> None:
    block_and_send(exim, "bob", ["look at me"])
    [msg] = frozen(exim, "auth", "bob")
    out = exim.eximhook("view", str(msg["id"])).stdout
    assert "Subject: look at me" in out and "hello" in out and "X-Authenticated-As: bob" in out
    bad = exim.eximhook("view", "../../etc/passwd")
    assert bad.returncode == 65 and "is not an Exim message id" in bad.stderr
    gone = exim.eximhook("view", "1xVbMq-0004rw-1g")
    assert gone.returncode == 1 and "no message 1xVbMq-0004rw-1g in the queue" in gone.stderr


def test_release_unblocks_and_delivers(exim: h.Exim) -> None:
    block_and_send(exim, "bob", ["false positive 1", "false positive 2"])
    dry = exim.eximhook("release", "--dry-run", "auth", "bob")
    assert dry.stdout.startswith("2 message(s) from auth bob would be released")
    assert len(frozen(exim, "auth", "bob")) == 2 and exim.eximhook("check-blocked", "auth", "bob").stdout == "1"
    out = exim.eximhook("release", "auth", "bob").stdout
    assert out.startswith("2 message(s) from auth bob released") and "block on auth bob lifted" in out
    h.wait_for("delivery", lambda: len([m for m in exim.maildir("alice") if b"false positive" in m]) == 2)
    assert exim.queue() == [] and exim.eximhook("check-blocked", "auth", "bob").stdout == "0"
    events = [e["event"] for e in json.loads(exim.eximhook("history", "--json", "auth", "bob").stdout)]
    assert events[-2:] == ["unblocked", "released"]


def test_purge_removes_and_keeps_the_block(exim: h.Exim) -> None:
    block_and_send(exim, "bob", ["spam 1", "spam 2"])
    ids = sorted(str(m["id"]) for m in frozen(exim, "auth", "bob"))
    assert exim.eximhook("purge", "--dry-run", "auth", "bob").returncode == 0
    assert sorted(exim.queue(frozen=True)) == ids
    out = exim.eximhook("purge", "auth", "bob").stdout
    assert out == f"2 message(s) from auth bob removed from the queue: {' '.join(ids)}\n" or sorted(
        out.split(": ")[1].split()) == ids
    assert exim.queue() == [] and exim.eximhook("check-blocked", "auth", "bob").stdout == "1"
    history = json.loads(exim.eximhook("history", "--json", "auth", "bob").stdout)
    assert history[-1]["event"] == "purged" and sorted(history[-1]["ids"]) == ids
    assert exim.send([f"alice@{h.DOMAIN}"], user="bob", subject="spam 3") == {}
    assert "block on auth bob lifted" in exim.eximhook("unblock", "--purge", "auth", "bob").stdout
    assert exim.queue() == [] and exim.eximhook("check-blocked", "auth", "bob").stdout == "0"


def test_queued_mail_is_frozen_when_the_block_comes(exim: h.Exim) -> None:
    assert exim.send([f"someone@{h.REMOTE}"], user="bob", subject="queued before") == {}
    queued = h.wait_for("the deferral", lambda: exim.queue(frozen=False))
    assert exim.queue(frozen=True) == []
    exim.send([f"nobody{i}@{h.DOMAIN}" for i in range(4)], user="bob", subject="the trip")
    note = h.wait_for("the notification", lambda: exim.maildir("abuse"))
    ids = {str(m["id"]) for m in frozen(exim, "auth", "bob")}
    assert set(queued) <= ids and len(ids) == 2  # type: ignore[arg-type]
    events = json.loads(exim.eximhook("history", "--json", "auth", "bob").stdout)
    assert [e["ids"] for e in events if e["event"] == "froze-queued"] == [queued]
    # the tripping message is still in its SMTP transaction when notify runs: the
    # notification lists what was in the queue then, now frozen
    body = email.message_from_bytes(note[0], policy=email.policy.default).get_content()  # type: ignore[index]
    assert f"Frozen messages (1 when this was sent): {queued[0]}" in body


def test_perl_key_runs_nothing(exim: h.Exim) -> None:
    exim.send([f"nobody{i}@{h.DOMAIN}" for i in range(4)], user=PERL, subject="perl")
    assert len(frozen(exim, "auth", PERL)) == 1
    for args in (["frozen", "auth", PERL], ["purge", "--dry-run", "auth", PERL], ["release", "auth", PERL]):
        assert exim.eximhook(*args).returncode == 0
    assert not os.path.exists("/tmp/eximhook-perl-pwned")
    assert exim.eximhook("check-blocked", "auth", PERL).stdout == "0"
