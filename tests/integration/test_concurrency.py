"""Exactly once under concurrency, with real processes: 32 workers x 10 record-invalid
calls for one subject, LIMIT 100."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ..support.config import write_config
from ..support.fixtures import Run
from ..support.hooks import hook

pytestmark = pytest.mark.slow


def test_one_block_one_notification(tmp_path: Path, cli: Run) -> None:
    """(The deadline far away: a fallback answer under load would be a 0 for an event
    still counted.)"""
    config = write_config(tmp_path, limit=100, settings={"hooks.timeout": 15})

    def worker(n: int) -> list[bytes]:
        return [hook(config, "record-invalid", "auth", "bot", "--rcpt", f"w{n}-{i}@example.com",
                     "--ip", f"192.0.2.{n}").stdout for i in range(10)]

    with ThreadPoolExecutor(max_workers=32) as pool:
        outputs = [out for outs in pool.map(worker, range(32)) for out in outs]
    assert len(outputs) == 320 and set(outputs) <= {b"0", b"1"}, "each call printed exactly one token"
    # counting and settling are two transactions: a count among the first 100 may find
    # the block another process made in between, and answer 1 ("blocked now"); no count
    # past the 100th ever answers 0 (as test_serve.py's hooks and daemon on one store)
    assert outputs.count(b"0") <= 100, "the 101st call trips, every later one sees the block"
    shown = json.loads(cli("show", "--json", "auth", "bot", config_path=config)[1])
    assert shown["counter"]["total"] == 320, "no event lost"
    assert [e["event"] for e in shown["history"]] == ["blocked"]
    assert shown["block"]["count"] == 101
    _code, out, _ = cli("list", "--json", config_path=config)
    assert len(json.loads(out)) == 1
    assert (tmp_path / "mirror" / "blocked_authenticated_users").read_text().count('"bot"') == 1
    assert cli("notify", config_path=config)[1] == "1"
    assert cli("notify", config_path=config)[1] == "0"


def test_many_processes_open_and_close_the_store_at_once(tmp_path: Path) -> None:
    """As hooks do, 16 processes open and close the counters' environment 10 times each,
    all at once: each open works. LMDB 0.9.26-0.9.31 (Debian 13's is 0.9.31) destroy the
    lock file's mutexes at the last close, and a process opening meanwhile then fails
    every transaction with EINVAL (storage.env._one_at_a_time); there, without it, 4 rounds
    in 5 had such a failure."""
    code = ("import sys\nfrom eximhook.storage.counters import Counters\n"
            "for _ in range(10):\n    Counters(sys.argv[1], owner='root').close()\n")
    for n in range(5):
        procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"store{n}")], stderr=subprocess.PIPE)
                 for _ in range(16)]
        errors = [p.communicate(timeout=60)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 16, b"".join(errors).decode()[-2000:]


def test_concurrent_notify_sends_once(tmp_path: Path, cli: Run) -> None:
    box = tmp_path / "out"
    box.mkdir()
    script = tmp_path / "sendmail.sh"
    script.write_text(f'#!/bin/sh\ncat > "$(mktemp -p {box})"\n')
    script.chmod(0o755)
    config = write_config(tmp_path, limit=1, sendmail=f'"{script}"')
    for key in ("a", "b", "c"):
        for _ in range(2):
            hook(config, "record-invalid", "auth", key)
    with ThreadPoolExecutor(max_workers=8) as pool:
        sent = list(pool.map(lambda _: hook(config, "notify").stdout, range(8)))
    assert sum(int(s) for s in sent) == 3
    assert len(list(box.iterdir())) == 3


def test_trip_while_the_mirror_lock_is_held(tmp_path: Path, cli: Run) -> None:
    """The block is in the store and the answer is 1 even when the mirror rewrite
    cannot get its lock in time; `export` (run every minute by eximhook-maintain)
    brings the mirror up to date."""
    import subprocess
    import sys

    config = write_config(tmp_path, limit=1)
    assert hook(config, "record-invalid", "auth", "early").stdout == b"0"  # creates the store
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, signal\n"
         f"fd = os.open({str(tmp_path / 'store' / 'mirror.lock')!r}, os.O_RDWR | os.O_CREAT, 0o640)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"  # as eximhook (and filelock) take it
         "print('held', flush=True); signal.pause()"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        proc = hook(config, "record-invalid", "auth", "early")
        assert (proc.returncode, proc.stdout) == (0, b"1")
    finally:
        holder.kill()
        holder.wait()
    assert "could not rewrite the mirror files" in (tmp_path / "eximhook.log").read_text()
    mirror = tmp_path / "mirror" / "blocked_authenticated_users"
    assert not mirror.exists() or b'"early"' not in mirror.read_bytes()
    assert cli("export", config_path=config)[0] == 0
    assert b'"early"' in mirror.read_bytes()
