"""``[expiry]`` against a real Exim: a block whose time has come stays while its
subject's frozen mail waits for review, and lifts once that mail is purged (or with
``lift_frozen``). The clock is injected: maintain runs in-process at the lift time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest

from eximhook.config.load import Config, load
from eximhook.log import Logger
from eximhook.ops import health

from ..support import harness as h
from ..support.marks import needs_exim, needs_root

pytestmark = [pytest.mark.e2e, needs_exim, needs_root]


@pytest.fixture
def exim() -> Iterator[h.Exim]:
    server = h.make(["bob", "carol"], limit=3, settings={"expiry.after": "1h"})
    try:
        server.setup().start()
        yield server
    finally:
        h.cleanup(server)


def maintain(cfg: Config, now: float) -> int:
    return health.maintain(cfg, Logger(cfg.log.file), ["eximhook"], now)[2]


def history(exim: h.Exim, key: str) -> list[dict[str, object]]:
    return json.loads(exim.eximhook("history", "--json", "auth", key).stdout)  # type: ignore[no-any-return]


def test_frozen_mail_holds_a_due_block_until_it_is_reviewed(exim: h.Exim) -> None:
    for user in ("bob", "carol"):
        exim.send(h.invalid(4), user=user, subject=f"spam from {user}")  # the 4th recipient blocks
        assert exim.eximhook("check-blocked", "auth", user).stdout == "1"
    frozen = {user: [m["id"] for m in json.loads(exim.eximhook("frozen", "--json", "auth", user).stdout)]
              for user in ("bob", "carol")}
    assert all(len(ids) == 1 for ids in frozen.values())
    cfg = load(str(exim.eximhook_conf))
    due = max(json.loads(exim.eximhook("show", "--json", "auth", u).stdout)["block"]["expires"] for u in frozen)

    assert maintain(cfg, due) == 0
    assert maintain(cfg, due + 60) == 0, "a minute later: still held, and not said again"
    for user, ids in frozen.items():
        assert exim.eximhook("check-blocked", "auth", user).stdout == "1"
        assert [e["ids"] for e in history(exim, user) if e["event"] == "expiry-held"] == [ids]
    assert exim.hook_log().count("frozen message(s) of it wait for review") == 2
    listed = exim.eximhook("list").stdout.splitlines()
    assert [row.split()[-1] for row in listed[1:3]] == ["held", "held"]
    assert "block on auth bob: was due to lift at" in listed[3]
    assert "held since" in exim.eximhook("show", "auth", "bob").stdout

    assert exim.eximhook("purge", "auth", "bob").returncode == 0  # reviewed: spam, gone; the block stays
    assert exim.eximhook("check-blocked", "auth", "bob").stdout == "1"
    assert maintain(cfg, due + 120) == 0
    assert exim.eximhook("check-blocked", "auth", "bob").stdout == "0"
    assert history(exim, "bob")[-1]["event"] == "expired"
    assert exim.eximhook("check-blocked", "auth", "carol").stdout == "1", "carol's mail waits still"

    assert maintain(replace(cfg, expiry=replace(cfg.expiry, lift_frozen=True)), due + 180) == 0
    assert exim.eximhook("check-blocked", "auth", "carol").stdout == "0"
    assert exim.queue(frozen=True) == frozen["carol"], "lifting the block thaws nothing"
