"""The spool-space guard: the threshold a block records, the cdb key the snippets read,
and one notification per episode of low space, from an injected free-space reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eximhook.config.load import load
from eximhook.engine.spool import check
from eximhook.errors import ConfigError
from eximhook.log import Logger
from eximhook.model.spool import LOW_KEY, Guard, threshold
from eximhook.storage import cdb
from eximhook.storage.store import Store

from ..support.config import write_config
from ..support.fixtures import Run


def low_key(tmp_path: Path) -> int:
    return int(cdb.get((tmp_path / "mirror" / "blocked_subjects.cdb").read_bytes(), LOW_KEY) or b"")


def test_a_block_records_the_free_space_and_its_threshold(tmp_path: Path, cli: Run) -> None:
    config = write_config(tmp_path, settings={"spool.directory": str(tmp_path), "spool.fraction": 0.25})
    free = Guard(str(tmp_path), 0, 0.5).free()
    assert free is not None and free > 0
    assert cli("block", "auth", "bob", "--no-notify", config_path=config)[0] == 0
    block = json.loads(cli("show", "--json", "auth", "bob", config_path=config)[1])["block"]
    assert abs(block["spool_free"] - free) < free * 0.05 + 1024, "the spool's free space when the block started"
    assert block["spool_low"] == int(0.25 * block["spool_free"])
    assert low_key(tmp_path) == block["spool_low"], "the mirror holds the threshold for the snippets"
    assert f"its mail is refused, not frozen, below {block['spool_low']} KiB or [spool] floor (0 KiB)" in cli(
        "show", "auth", "bob", config_path=config)[1]
    cli("unblock", "auth", "bob", config_path=config)
    assert low_key(tmp_path) == 0, "no block, no threshold"


def test_the_threshold_is_the_floor_or_the_highest_block() -> None:
    assert threshold([{"spool_low": 5}, {"spool_low": 7}, {}], 6) == 7
    assert threshold([{"spool_low": 5}], 10) == 10
    assert threshold([], 0) == 0


def test_an_edited_floor_reaches_the_mirror_at_the_next_maintain(tmp_path: Path, cli: Run) -> None:
    """The floor is the config's now, not the one when a block started: raised, blocked
    mail is refused; lowered again, it is frozen again (the trial of a new admin found
    a floor kept in each block record, so lowering it changed nothing)."""
    config = write_config(tmp_path, settings={"spool.directory": str(tmp_path), "spool.fraction": 0})
    cli("block", "auth", "bob", "--no-notify", config_path=config)
    assert low_key(tmp_path) == 0
    config = write_config(tmp_path, settings={"spool.directory": str(tmp_path), "spool.fraction": 0,
                                              "spool.floor": "2T"})
    cli("maintain", config_path=config)
    assert low_key(tmp_path) == 2 * 1024 ** 3
    config = write_config(tmp_path, settings={"spool.directory": str(tmp_path), "spool.fraction": 0})
    cli("maintain", config_path=config)
    assert low_key(tmp_path) == 0
    assert json.loads(cli("history", "--json", config_path=config)[1])[-1]["event"] == "spool-ok"


def test_low_space_is_told_once_per_episode(tmp_path: Path, cli: Run) -> None:
    config = write_config(tmp_path, settings={"spool.directory": str(tmp_path), "spool.floor": "1G",
                                                "spool.fraction": 0})
    cli("block", "auth", "bob", "--no-notify", config_path=config)
    cfg, log = load(str(config)), Logger(str(tmp_path / "eximhook.log"))
    guard = cfg.spool.guard()
    with Store(cfg.store.path) as store:
        plenty, short = 2 * 1024 ** 2, 1024 ** 2 - 1  # KiB: 2 GiB free, then just under the 1 GiB floor
        assert [check(store, guard, t, log, free=f) for t, f in
                enumerate([plenty, short, short, short, plenty, short])] == [False, True, False, False, False, True]
        kinds = [i["kind"] for i in store.outbox()]
        assert kinds.count("spool-low") == 2, "two episodes, two notifications; none while it stays low"
        events = [e["event"] for e in store.history() if e["event"].startswith("spool")]
        assert events == ["spool-low", "spool-ok", "spool-low"]
        assert store.spool_low_since() == 5.0


def test_the_notification_says_what_happened(tmp_path: Path, cli: Run, mailbox: Path) -> None:
    from ..support.mailbox import messages

    config = write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"',
                          settings={"spool.directory": str(tmp_path), "spool.floor": "1T"})
    cli("block", "auth", "b\nob", "--no-notify", config_path=config)
    assert cli("maintain", config_path=config)[0] == 0
    assert cli("maintain", config_path=config)[0] == 0
    [note] = messages(mailbox)
    assert "spool space low, blocked senders' mail is now refused" in note["Subject"]
    body = note.get_content()
    assert "below 1073741824 KiB" in body and "purge auth $'b\\x0aob'" in body, "paste-ready, on one line"


@pytest.mark.parametrize(("value", "kib"), [(0, 0), (2048, 2048), ("500M", 512000), ("2G", 2 * 1024 ** 2),
                                            ("1.5g", int(1.5 * 1024 ** 2)), ("100KiB", 100)])
def test_sizes(tmp_path: Path, value: object, kib: int) -> None:
    assert load(str(write_config(tmp_path, settings={"spool.floor": value}))).spool.floor == kib


@pytest.mark.parametrize(("setting", "value", "error"), [("spool.floor", "lots", "must be a size"),
                                                          ("spool.floor", -1, "must be a size"),
                                                          ("spool.fraction", 1, "fraction"),
                                                          ("spool.directory", "spool", "absolute path")])
def test_bad_settings(tmp_path: Path, setting: str, value: object, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load(str(write_config(tmp_path, settings={setting: value})))


def test_status_warns_while_the_spool_is_short(tmp_path: Path, cli: Run) -> None:
    config = write_config(tmp_path, settings={"spool.directory": str(tmp_path), "spool.floor": "1T"})
    cli("block", "auth", "bob", "--no-notify", config_path=config)
    cli("maintain", config_path=config)
    report = json.loads(cli("status", "--json", config_path=config)[1])
    [spool] = [c for c in report["checks"] if c["name"] == "spool"]
    assert spool["level"] == "WARNING" and "blocked subjects' mail is refused" in spool["text"]


def test_check_config_says_what_the_guards_do(tmp_path: Path, cli: Run) -> None:
    config = write_config(tmp_path, settings={"spool.floor": "2G", "expiry.after": "6h"})
    out = cli("check-config", config_path=config)[1]
    assert "spool guard: a blocked subject's mail is refused, not frozen, below 2097152 KiB free" in out
    assert "expiry: blocks by a limit lift after 6h, x2 for each repeat within 30d" in out
