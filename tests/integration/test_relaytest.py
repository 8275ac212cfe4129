"""Open-relay probing (seed 003) with real processes: claims racing from 8 processes,
and check-config as root telling what the Exim user cannot read."""

from __future__ import annotations

import grp
import multiprocessing
import os
from pathlib import Path

import pytest

from eximhook.config.load import load
from eximhook.relaytest import table
from eximhook.storage.store import Store

from ..support.fixtures import Run
from ..support.relaytest import DAY, NOW, relaytest_config


def _claim(path: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue[str | None]) -> None:
    with Store(path) as store:
        start.wait()
        out.put(table.claim(store, "192.0.2.9", NOW, 14 * DAY, 3600))


@pytest.mark.slow
def test_racing_processes_claim_a_host_once(tmp_path: Path) -> None:
    cfg = load(str(relaytest_config(tmp_path)))
    Store(cfg.store.path).close()  # the store made, as the fixture of the unit tests makes it
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(cfg.store.path, start, out)) for _ in range(8)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert len([r for r in results if r]) == 1


def test_check_config_reads_as_the_exim_user(tmp_path: Path, cli: Run) -> None:
    """check-config runs as root, which reads anything: the key and the contacts file
    must be readable by the user `relaytest receive` runs as (a trial found a 0600 key
    passing check-config, then every return deferred)."""
    (tmp_path / "contacts").write_text("192.0.2.0/24 noc@customer.example\n")
    config = relaytest_config(tmp_path, contacts=str(tmp_path / "contacts"))
    text = config.read_text().replace('user = "root"', 'user = "Debian-exim"')
    config.write_text(text)
    tmp_path.chmod(0o755)
    for name in ("relaytest.key", "contacts"):
        path = tmp_path / name
        os.chown(path, 0, grp.getgrnam("Debian-exim").gr_gid)
        path.chmod(0o640)
    code, _, err = cli("check-config", config_path=config)
    assert code == 0, err
    (tmp_path / "relaytest.key").chmod(0o600)
    code, _, err = cli("check-config", config_path=config)
    assert code == 78 and "cannot be read by Debian-exim" in err and "relaytest.key" in err
    (tmp_path / "relaytest.key").chmod(0o640)
    (tmp_path / "contacts").chmod(0o600)
    code, _, err = cli("check-config", config_path=config)
    assert code == 78 and "the contacts file cannot be read by Debian-exim" in err
