"""Soft state bounded by design (issue 21), by the daemon: a password guesser cannot fill
the disk, the daemon sweeps quiet counters by itself and keeps the counters' budget."""

from __future__ import annotations

import json
import time
from pathlib import Path

from eximhook.model.evidence import CUT_END, EVIDENCE_BYTES, EVIDENCE_KEPT
from eximhook.model.policy import Policy
from eximhook.model.records import Event
from eximhook.serve.protocol import encode
from eximhook.storage.counters import Counters

from ..support.config import write_config
from ..support.fixtures import Run, Serve
from ..support.waiting import wait_for

DAY = 86400.0
INVALID = Policy("invalid", ((5, 3600.0),), "enforce")


# -- the proof of issue 21, through a live daemon --------------------------------------


def mdb_sizes(tmp_path: Path) -> int:
    return sum((tmp_path / "store" / sub / "data.mdb").stat().st_size for sub in ("", "counters"))


def guess(key: str, i: int) -> bytes:
    return encode("record", "ip", key, kind="authfail", evidence=f"guess{i}-".ljust(12000, "x"))


def test_a_password_guesser_cannot_fill_the_disk(tmp_path: Path, serve: Serve, cli: Run) -> None:
    """1,000 failed AUTHs with 12,000-byte user names from 100 /64s (10 each, under the
    limit): they grew the counters by 13 MB (8.5 GB for a /48); now by under 1 MB. At
    the limit, the block record holds the cut evidence."""
    d = serve(write_config(tmp_path))
    before = mdb_sizes(tmp_path)
    answers = {d.request(guess(f"2001:db8:{net:x}::{i + 1}", i)) for net in range(100) for i in range(10)}
    assert answers == {b"0"}
    assert mdb_sizes(tmp_path) - before < 1_000_000
    assert [d.request(guess("2001:db8:0::99", 10 + i)) for i in range(21)] == [b"0"] * 20 + [b"1"]
    block = json.loads(cli("show", "--json", "ip", "2001:db8:0::99")[1])["block"]
    assert block["count"] == 31 and all(x.endswith(CUT_END) and len(x) == EVIDENCE_BYTES for x in block["rcpts"])
    assert len(json.dumps(block)) < 2 * EVIDENCE_KEPT + 1024


def test_the_daemon_sweeps_by_itself(tmp_path: Path, serve: Serve) -> None:
    config = write_config(tmp_path, settings={"serve.check_interval": 0.2})
    with Counters(str(tmp_path / "store")) as counters:
        counters.update(counters.event(Event("auth", "gone", INVALID, evidence="x"), time.time() - 9 * DAY))
    d = serve(config)
    with Counters(str(tmp_path / "store")) as counters:
        wait_for("the daemon's sweep", lambda: counters.get("auth", "gone").total == 0)
    assert d.request(encode("ping")) == b"pong"


def test_the_daemon_keeps_the_budget(tmp_path: Path, serve: Serve, cli: Run) -> None:
    """The same through ``eximhook serve``: counting never fails for want of room (no
    fallback answer), the file stays within the budget, an earlier block stays."""
    config = write_config(tmp_path, settings={"store.counters_budget": "1M"})
    d = serve(config)
    assert [d.request(encode("record-invalid", "auth", "early")) for _ in range(6)] == [b"0"] * 5 + [b"1"]
    answers = {d.request(encode("record", "ip", f"2001:db8:{i:x}::1", kind="authfail", evidence="x" * 3000))
               for i in range(3000)}
    assert answers == {b"0"}
    assert (tmp_path / "store" / "counters" / "data.mdb").stat().st_size <= 1 << 20
    log = tmp_path / "eximhook.log"
    assert [line for line in log.read_text().splitlines() if "answered" in line] == [], "no count fell back"
    wait_for("the log line of the episode", lambda: "the counters reached their budget" in log.read_text())
    assert d.request(encode("check-blocked", "auth", "early")) == b"1"
    shown = json.loads(cli("show", "--json", "ip", "2001:db8:bb7::1", config_path=config)[1])
    assert shown["counters"]["authfail"]["total"] == 1, "the newest counted"
