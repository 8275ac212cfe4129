"""``[expiry]``: blocks that lift by themselves after their (injected) time, longer for
repeat offenders, lifted by ``eximhook maintain`` exactly once. Frozen mail in a real
queue holding a block: ``tests/e2e/test_expiry.py``."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from eximhook.backends.lmdb import settle
from eximhook.config.load import Config, load
from eximhook.engine import actions, expiry
from eximhook.engine.settle import make_known
from eximhook.errors import NotBlocked
from eximhook.log import Logger
from eximhook.model import schedule
from eximhook.model.records import Event
from eximhook.ops import health
from eximhook.serve.protocol import encode
from eximhook.storage.counters import Counters
from eximhook.storage.store import Store

from ..support.config import write_config
from ..support.fixtures import Run, Serve
from ..support.hooks import hook
from ..support.mailbox import messages

HOUR, DAY = 3600.0, 86400.0
T0 = 1_800_000_000.0


def expiring(tmp_path: Path, **settings: object) -> Config:
    """A config with [expiry] on (``settings`` over: after 1h, frozen mail not checked)."""
    base: dict[str, object] = {"expiry.after": "1h", "expiry.lift_frozen": True, "exim.freeze_queued": False}
    return load(str(write_config(tmp_path, settings=base | {f"expiry.{k}": v for k, v in settings.items()})))


def trip(cfg: Config, key: str, now: float) -> dict[str, Any]:
    """Block ``auth KEY`` at ``now`` as a hook does: count past the limit (5), settle."""
    log = Logger(cfg.log.file)
    with Store(cfg.store.path) as store, Counters(cfg.store.path) as counters:
        for _ in range(6):
            tally = counters.update(counters.event(Event("auth", key, cfg.policies["auth"]["invalid"]), now))
            outcome = settle(store, tally, now, expiry=cfg.expiry.schedule())
            make_known(store, cfg.store.mirror_dir, log, tally, outcome)
        block = store.get_block("auth", key)
    assert block is not None
    return block


def maintain(cfg: Config, now: float) -> tuple[int, list[str], int]:
    return health.maintain(cfg, Logger(cfg.log.file), ["eximhook"], now)


def block_of(cfg: Config, key: str) -> dict[str, Any] | None:
    with Store(cfg.store.path) as store:
        return store.get_block("auth", key)


def events(cfg: Config, key: str) -> list[dict[str, Any]]:
    with Store(cfg.store.path) as store:
        return store.history("auth", key)


def mirrored(cfg: Config, key: str) -> bool:
    return f'"{key}"'.encode() in (Path(cfg.store.mirror_dir) / "blocked_authenticated_users").read_bytes()


def test_a_block_lifts_at_its_time_not_before(tmp_path: Path) -> None:
    cfg = expiring(tmp_path)
    block = trip(cfg, "bob", T0)
    assert (block["offence"], block["expires"]) == (1, T0 + HOUR)
    assert maintain(cfg, T0 + HOUR - 1)[2] == 0 and block_of(cfg, "bob") is not None and mirrored(cfg, "bob")
    assert maintain(cfg, T0 + HOUR)[2] == 0
    assert block_of(cfg, "bob") is None and not mirrored(cfg, "bob")
    assert [(e["event"], e["by"], e["ts"]) for e in events(cfg, "bob")] == [
        ("blocked", "eximhook", T0), ("expired", expiry.LIFTER, T0 + HOUR)]
    with Counters(cfg.store.path) as counters:
        assert counters.get("auth", "bob").total == 0, "lifted as unblock lifts: the counters start from zero"
    assert "maintain: lifted the block on auth bob: it expired at" in Path(cfg.log.file or "").read_text()


def test_each_repeat_block_lasts_twice_as_long_up_to_max(tmp_path: Path) -> None:
    cfg = expiring(tmp_path, max="6h")
    now, lasted = T0, []
    for _ in range(5):
        block = trip(cfg, "bob", now)
        lasted.append((block["offence"], (block["expires"] - now) / HOUR))
        now = block["expires"]
        maintain(cfg, now)
        assert block_of(cfg, "bob") is None
    assert lasted == [(1, 1), (2, 2), (3, 4), (4, 6), (5, 6)]
    assert [e["event"] for e in events(cfg, "bob")] == ["blocked", "expired"] * 5


def test_forget_counts_from_the_last_lift(tmp_path: Path) -> None:
    """A subject free of blocks for [expiry] forget starts again at the first step;
    free counts from the end of a block, so a block longer than forget is no reset."""
    cfg = expiring(tmp_path, after="2d", forget="1d")
    first = trip(cfg, "bob", T0)
    maintain(cfg, first["expires"])
    second = trip(cfg, "bob", first["expires"] + DAY - 1)
    assert (second["offence"], second["expires"] - second["since"]) == (2, 4 * DAY)
    maintain(cfg, second["expires"])
    third = trip(cfg, "bob", second["expires"] + DAY)
    assert (third["offence"], third["expires"] - third["since"]) == (1, 2 * DAY)
    assert trip(cfg, "alice", T0)["offence"] == 1, "offences are per subject"


def test_an_admin_unblock_keeps_the_count(tmp_path: Path, cli: Run) -> None:
    cfg = expiring(tmp_path)
    trip(cfg, "bob", time.time())
    assert cli("unblock", "auth", "bob", config_path=Path(cfg.path))[0] == 0  # on the real clock
    assert trip(cfg, "bob", time.time())["offence"] == 2


def test_manual_blocks_last_until_an_admin_lifts_them(tmp_path: Path, cli: Run) -> None:
    cfg = expiring(tmp_path)
    config = Path(cfg.path)
    assert cli("block", "auth", "bob", "--no-notify", config_path=config)[0] == 0
    block = block_of(cfg, "bob")
    assert block is not None and block["offence"] == 1 and "expires" not in block
    maintain(cfg, block["since"] + 365 * DAY)
    assert block_of(cfg, "bob") is not None
    assert "  lasts until an admin lifts it: block 1 of this subject, made by hand" in cli(
        "show", "auth", "bob", config_path=config)[1]
    assert cli("list", config_path=config)[1].splitlines()[1].split()[-1] == "-"


def test_manual_blocks_lift_too_when_configured(tmp_path: Path, cli: Run) -> None:
    cfg = expiring(tmp_path, manual=True)
    assert cli("block", "auth", "bob", "--no-notify", config_path=Path(cfg.path))[0] == 0
    block = block_of(cfg, "bob")
    assert block is not None and block["expires"] == block["since"] + HOUR
    maintain(cfg, block["expires"])
    assert block_of(cfg, "bob") is None and events(cfg, "bob")[-1]["event"] == "expired"


def test_expiry_off_lifts_nothing(tmp_path: Path) -> None:
    """Off is the seeds' way: no offence, no lift time; and turning it off stops the
    lifts of blocks that were given a time while it was on."""
    cfg = load(str(write_config(tmp_path, settings={"exim.freeze_queued": False})))
    block = trip(cfg, "bob", T0)
    assert "offence" not in block and "expires" not in block
    trip(replace(cfg, expiry=replace(cfg.expiry, after=HOUR)), "alice", T0)
    maintain(cfg, T0 + 365 * DAY)
    assert block_of(cfg, "bob") is not None and block_of(cfg, "alice") is not None


def test_a_lift_leaves_a_block_made_since_alone(tmp_path: Path) -> None:
    """A maintain run that listed the old block lifts only a block that is still due:
    not the one the subject got right after another run lifted the old."""
    cfg = expiring(tmp_path)
    trip(cfg, "bob", T0)
    maintain(cfg, T0 + HOUR)
    trip(cfg, "bob", T0 + HOUR)
    with Store(cfg.store.path) as store, Counters(cfg.store.path) as counters, pytest.raises(NotBlocked):
        actions.unblock(store, counters, cfg.store.mirror_dir, "auth", "bob", T0 + HOUR, by=expiry.LIFTER,
                     event="expired", only=lambda block: schedule.due(block, T0 + HOUR))
    assert block_of(cfg, "bob") is not None and mirrored(cfg, "bob")


@pytest.mark.slow
def test_concurrent_maintain_runs_lift_each_block_once(tmp_path: Path) -> None:
    """Real processes, real clock: 20 blocks long due, 8 maintain runs at once."""
    cfg = expiring(tmp_path)
    keys = [f"user{i}" for i in range(20)]
    for key in keys:
        trip(cfg, key, time.time() - 2 * HOUR)
    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = list(pool.map(lambda _: hook(Path(cfg.path), "maintain"), range(8)))
    assert [r.returncode for r in runs] == [0] * 8, [r.stdout for r in runs]
    with Store(cfg.store.path) as store:
        assert store.blocks() == []
        lifts = [(e["key"], e["by"]) for e in store.history() if e["event"] == "expired"]
    assert sorted(lifts) == sorted((key, expiry.LIFTER) for key in keys), "one lift per block"
    assert (Path(cfg.store.mirror_dir) / "blocked_authenticated_users").read_text().count('"user') == 0


def test_a_queue_it_cannot_read_lifts_nothing(tmp_path: Path) -> None:
    """Without lift_frozen, a due block lifts only once its frozen mail is known to be
    gone: a queue listing failing is no answer, it is a problem (exit 75), logged."""
    cfg = expiring(tmp_path, lift_frozen=False)
    trip(cfg, "bob", T0)
    unreadable = replace(cfg.exim, binary="/nonexistent/exim4", exipick="/nonexistent/exipick")
    _sent, problems, code = maintain(replace(cfg, exim=unreadable), T0 + HOUR)
    assert code == 75 and problems == ["1 block(s) due to lift stay: cannot tell whether their frozen mail was "
                                       "reviewed: /nonexistent/exim4 not found: set [exim] in the config"]
    assert block_of(cfg, "bob") is not None
    assert "maintain: 1 block(s) due to lift stay" in Path(cfg.log.file or "").read_text()
    # an exim that names no version (so exipick lists the queue) and an exipick listing nothing
    empty_queue = replace(cfg, exim=replace(cfg.exim, binary="/bin/true", exipick="/bin/true"))
    assert maintain(empty_queue, T0 + HOUR)[2] == 0 and block_of(cfg, "bob") is None


def test_hooks_and_daemon_give_the_block_its_time(tmp_path: Path, serve: Serve) -> None:
    """The schedule reaches a block however it is made: the ${run} hook (through the
    config cache) and the daemon."""
    cfg = expiring(tmp_path, after="6h")
    config = Path(cfg.path)
    for _ in range(6):
        hook(config, "record-invalid", "auth", "bob")
    d = serve(config)
    for _ in range(6):
        d.request(encode("record-invalid", "auth", "carol"))
    d.stop()
    for key in ("bob", "carol"):
        block = block_of(cfg, key)
        assert block is not None and block["offence"] == 1 and block["expires"] == block["since"] + 6 * HOUR
        assert time.time() - 60 < block["since"] <= time.time()


def test_show_list_and_the_notification_say_when(tmp_path: Path, cli: Run, mailbox: Path) -> None:
    config = write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"',
                          settings={"expiry.after": "6h", "exim.freeze_queued": False})
    cfg = load(str(config))
    for _ in range(6):
        cli("record-invalid", "auth", "bob", config_path=config)
    block = block_of(cfg, "bob")
    assert block is not None
    when = expiry.when(block)
    assert when.endswith("(after 6h, block 1 of this subject)")
    out = cli("list", config_path=config)[1].splitlines()
    assert out[0].split()[-1] == "LIFTS" and out[1].split()[-1] == when.split()[0]
    assert f"  lifts by itself at {when}, if its frozen mail has been released or purged by then" in cli(
        "show", "auth", "bob", config_path=config)[1]
    assert json.loads(cli("list", "--json", config_path=config)[1])[0]["expires"] == block["expires"]
    cli("notify", config_path=config)
    [mail] = messages(mailbox)
    assert f"Lifts at:    {when}; eximhook show says if frozen mail holds it" in mail.get_content()
    off = write_config(tmp_path, settings={"exim.freeze_queued": False})
    assert "LIFTS" not in cli("list", config_path=off)[1]
    assert "but [expiry] after is off now: it lasts until an admin lifts it" in cli(
        "show", "auth", "bob", config_path=off)[1]


@pytest.mark.parametrize(
    ("offence", "hours"),
    [pytest.param(1, 6, id="first"), pytest.param(2, 12, id="second"), pytest.param(3, 24, id="third"),
     pytest.param(8, 720, id="capped"), pytest.param(100_000, 720, id="no-overflow")],
)
def test_duration(offence: int, hours: float) -> None:
    assert schedule.duration(6 * HOUR, 2.0, 30 * DAY, offence) == hours * HOUR
