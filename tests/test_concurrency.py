"""Exactly once under concurrency, with real processes: 32 workers x 10 record-invalid
calls for one subject, LIMIT 100."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import Run, hook, write_config

pytestmark = pytest.mark.slow


def test_one_block_one_notification(tmp_path: Path, cli: Run) -> None:
    config = write_config(tmp_path, limit=100)

    def worker(n: int) -> list[bytes]:
        return [hook(config, "record-invalid", "auth", "bot", "--rcpt", f"w{n}-{i}@example.com",
                     "--ip", f"192.0.2.{n}").stdout for i in range(10)]

    with ThreadPoolExecutor(max_workers=32) as pool:
        outputs = [out for outs in pool.map(worker, range(32)) for out in outs]
    assert sorted(set(outputs)) == [b"0", b"1"], "each call printed exactly one token"
    assert outputs.count(b"0") == 100, "the 101st call trips, every later one sees the block"
    shown = json.loads(cli("show", "--json", "auth", "bot", config_path=config)[1])
    assert shown["counter"]["total"] == 320, "no event lost"
    assert [e["event"] for e in shown["history"]] == ["blocked"]
    assert shown["block"]["count"] == 101
    _code, out, _ = cli("list", "--json", config_path=config)
    assert len(json.loads(out)) == 1
    assert (tmp_path / "mirror" / "blocked_authenticated_users").read_text().count('"bot"') == 1
    assert cli("notify", config_path=config)[1] == "1"
    assert cli("notify", config_path=config)[1] == "0"


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
