"""Crash safety with real processes and real kills: a hook killed at each stage of a
trip, a storm of random kills, notify killed inside its send window, and full
filesystems. Whatever dies, the next hook call or maintenance run brings every mirror
file to the store's state, and nothing is sent twice but the one documented copy."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from eximhook.errors import Exit
from eximhook.storage import cdb, mirror
from eximhook.storage.store import Store

from ..support.config import write_config
from ..support.fixtures import Run
from ..support.hooks import hook
from ..support.mailbox import messages
from ..support.marks import needs_root
from ..support.paths import EXIMHOOK
from ..support.waiting import wait_for

_CI = os.environ.get("CI") == "true"
needs_strace = pytest.mark.skipif(not _CI and shutil.which("strace") is None, reason="needs strace")


def mirror_matches_store(tmp_path: Path) -> list[str]:
    """Every mirror file at the store's generation with exactly its blocks, and no temp
    file left: the problems found (empty when all is well)."""
    with Store(str(tmp_path / "store")) as store:
        generation, blocks = store.generation(), store.blocks()
        seen = mirror.state(store, str(tmp_path / "mirror"))
    problems = [f"{name} at {g}, store at {generation}" for name, g in seen["files"].items() if g != generation]
    if seen["stamp"] != generation:
        problems.append(f"stamp at {seen['stamp']}, store at {generation}")
    problems += [f"temp file {p}" for p in seen["temp_files"]]
    if problems:  # a file missing or behind: no use reading what it holds
        return problems
    data = (tmp_path / "mirror" / mirror.CDB_FILE).read_bytes()
    listed = (tmp_path / "mirror" / "blocked_authenticated_users").read_bytes()
    for block in blocks:
        if cdb.get(data, f"{block['ns']}:{block['key']}".encode()) != b"1":
            problems.append(f"{block['key']} not in the cdb")
        if block["ns"] == "auth" and f'"{block["key"]}"'.encode() not in listed:
            problems.append(f"{block['key']} not in the lsearch file")
    return problems


# Where each kill lands in a tripping record-invalid (LIMIT 1, second call). The count
# goes to the counters, which never sync. Then the block: LMDB flushes the data pages
# (fdatasync 1) and only then writes the meta page that commits; the hook flushes the
# meta page too (fdatasync 2); the mirror rewrite writes and fsyncs three temp files,
# renames them one after another, then writes and renames the stamp (renameat: relative
# to a descriptor of the directory, _perms.replace_files).
STAGES = [
    pytest.param("fdatasync", 1, id="before-the-commit"),
    pytest.param("fdatasync", 2, id="after-the-commit"),
    pytest.param("fsync", 2, id="writing-the-temp-files"),
    pytest.param("renameat", 1, id="before-the-first-rename"),
    pytest.param("renameat", 2, id="after-the-auth-list"),
    pytest.param("renameat", 3, id="after-both-lists"),
    pytest.param("renameat", 4, id="before-the-stamp"),
]


@needs_strace
@pytest.mark.parametrize("repair", ["hook", "maintain"])
@pytest.mark.parametrize(("syscall", "nth"), STAGES)
def test_trip_killed_at_each_stage(tmp_path: Path, cli: Run, syscall: str, nth: int, repair: str) -> None:
    config = write_config(tmp_path, limit=1)
    assert cli("export", config_path=config)[0] == 0  # as install.sh does: store, mirror, config cache
    assert hook(config, "record-invalid", "auth", "bob").stdout == b"0"
    argv = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
            "-e", f"inject={syscall}:signal=KILL:when={nth}",
            sys.executable, "-IS", EXIMHOOK, "--config", str(config), "record-invalid", "auth", "bob"]
    killed = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={}, timeout=30, check=False)
    assert killed.returncode == -signal.SIGKILL or killed.returncode == 128 + signal.SIGKILL, killed
    assert killed.stdout == b"", "killed before its token"
    with Store(str(tmp_path / "store")) as store:
        committed = store.is_blocked("auth", "bob")
    assert committed == ((syscall, nth) != ("fdatasync", 1)), "the kill landed where the test says"
    if committed:
        assert mirror_matches_store(tmp_path), "the kill left the mirror behind, as it would in production"
    if repair == "hook":  # the bot's next invalid recipient: a blocked answer checks the mirror
        assert hook(config, "record-invalid", "auth", "bob").stdout == b"1"
    else:
        assert cli("maintain", config_path=config)[0] == 0
        if not committed:  # nothing to repair: the block died with its process
            assert hook(config, "record-invalid", "auth", "bob").stdout == b"1"
    assert mirror_matches_store(tmp_path) == []
    shown = json.loads(cli("show", "--json", "auth", "bob", config_path=config)[1])
    assert [e["event"] for e in shown["history"]].count("blocked") == 1


@pytest.mark.slow
def test_storm_of_random_kills(tmp_path: Path, cli: Run) -> None:
    """Hooks for 40 subjects, LIMIT 3, killed at random moments: a few hundred kills,
    then one maintenance run. Every block is mirrored, once, with one notification."""
    config = write_config(tmp_path, limit=3)
    assert cli("export", config_path=config)[0] == 0
    argv = [sys.executable, "-IS", EXIMHOOK, "--config", str(config), "record-invalid", "auth"]

    def worker(seed: int) -> None:
        rng, kills = random.Random(seed), 0
        while kills < 40:  # most hooks outlive their 0-40 ms (pytest-timeout bounds the whole)
            proc = subprocess.Popen([*argv, f"bot{rng.randrange(40)}"], stdout=subprocess.DEVNULL, env={})
            try:
                proc.wait(rng.uniform(0, 0.04))
            except subprocess.TimeoutExpired:
                proc.kill()
                kills += 1
            proc.wait()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    assert cli("maintain", config_path=config)[0] == 0
    assert mirror_matches_store(tmp_path) == []
    with Store(str(tmp_path / "store")) as store:
        blocks = {b["key"] for b in store.blocks()}
        history = store.history()
        queued = [i["block"]["key"] for i in store.outbox()]
    blocked_events = [e["key"] for e in history if e["event"] == "blocked"]
    notified = [e["key"] for e in history if e["event"] == "notified"]
    assert sorted(blocked_events) == sorted(blocks), "one block record and one audit event per block"
    assert sorted(notified + queued) == sorted(blocks), "one notification per block, sent or queued"


def test_notify_killed_inside_the_send_window(tmp_path: Path, mailbox: Path, cli: Run) -> None:
    """Killed after sendmail took the mail and before it was marked sent: shown as stuck,
    resent by the next run, one extra copy with the same Message-ID."""
    config = write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"',
                          settings={"exim.freeze_queued": False})
    for _ in range(6):
        hook(config, "record-invalid", "auth", "bob")
    (mailbox / "SLOW").touch()
    notify = subprocess.Popen([sys.executable, "-IS", EXIMHOOK, "--config", str(config), "notify"],
                              stdout=subprocess.DEVNULL, env={})
    wait_for("sendmail to take the mail", lambda: messages(mailbox), 20)
    notify.kill()
    notify.wait()
    subprocess.run(["pkill", "-f", f"{mailbox}/sendmail.sh"], check=False)
    (mailbox / "SLOW").unlink()
    assert len(messages(mailbox)) == 1
    code, out, _ = cli("list", config_path=config)
    assert out.splitlines()[1].split()[-1] == "stuck" and "its sender died; the next notify run resends it" in out
    assert "notification: stuck in sending since" in cli("show", "auth", "bob", config_path=config)[1]
    code, out, _ = cli("status", config_path=config)
    assert code == 1 and out.startswith("EXIMHOOK WARNING - ") and "stuck in sending" in out
    assert cli("notify", config_path=config)[1] == "1", "resent at once: its claimer is dead"
    first, second = messages(mailbox)
    assert first["Message-ID"] == second["Message-ID"] and first["Message-ID"].startswith("<eximhook.")
    assert cli("notify", config_path=config)[1] == "0"
    assert cli("list", config_path=config)[1].splitlines()[1].split()[-1] == "-", "none pending"


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="eximhook-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 65536)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0")
    os.close(fd)
    return path


@needs_root
def test_admin_commands_on_a_full_mirror_filesystem(tmp_path: Path, cli: Run) -> None:
    with tmpfs("256k") as full:
        config = write_config(tmp_path)
        config.write_text(config.read_text().replace(str(tmp_path / "mirror"), str(full)))
        assert cli("export", config_path=config)[0] == 0
        filler = fill(full)
        code, out, err = cli("export", config_path=config)
        assert code == Exit.IOERR and out == "" and err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"eximhook: error: cannot write {full}/") and err.count(str(full)) == 1
        assert "([store] mirror_dir): No space left on device" in err
        code, _, err = cli("block", "auth", "mallory", "--no-notify", config_path=config)
        assert code == Exit.IOERR and "auth 'mallory' is blocked in the store, but cannot write" in err
        code, out, _ = cli("status", config_path=config)
        assert code == 2 and "mirror behind the store" in out
        filler.unlink()
        assert cli("maintain", config_path=config)[0] == 0
        assert cli("status", config_path=config)[0] == 0
        assert b'"mallory"' in (full / "blocked_authenticated_users").read_bytes()


@needs_root
def test_store_on_a_full_filesystem_fails_open_and_alerts_once(tmp_path: Path, mailbox: Path, cli: Run) -> None:
    with tmpfs("1m") as full:
        config = write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"',
                              settings={"notify.alert_after": 0.5, "exim.freeze_queued": False,
                                        "serve.socket": str(tmp_path / "run" / "eximhook.sock")})
        config.write_text(config.read_text().replace(str(tmp_path / "store"), str(full / "store")))
        assert cli("export", config_path=config)[0] == 0
        filler = fill(full)
        answers = [hook(config, "record-invalid", "auth", f"user{i}") for i in range(3)]
        assert [(a.returncode, a.stdout) for a in answers] == [(Exit.UNAVAILABLE, b"0")] * 3, "open, no SIGBUS"
        assert "No space left on device" in (tmp_path / "eximhook.log").read_text()
        code, out, _ = cli("status", config_path=config)
        assert code == 2 and "the Exim user cannot do what the hooks do" in out and "counting fails open" in out
        assert cli("maintain", config_path=config)[0] == Exit.UNAVAILABLE
        assert messages(mailbox) == [], "not before [notify] alert_after"
        # maintenance runs again until the failure has lasted alert_after (0.5s), as
        # eximhook-maintain does every minute: then it alerts, once
        wait_for("the alert", lambda: cli("maintain", config_path=config)[0] == Exit.UNAVAILABLE
                 and messages(mailbox))
        for _ in range(3):
            assert cli("maintain", config_path=config)[0] == Exit.UNAVAILABLE
        [alert] = messages(mailbox)
        assert alert["Subject"].endswith("counting fails open") and "No space left on device" in alert.get_content()
        filler.unlink()
        assert cli("maintain", config_path=config)[0] == 0
        assert cli("maintain", config_path=config)[0] == 0
        assert [str(m["Subject"]).rsplit(" ", 2)[-2:] for m in messages(mailbox)] == [
            ["fails", "open"], ["works", "again"]]
        assert hook(config, "record-invalid", "auth", "user0").stdout == b"0"
        assert cli("status", config_path=config)[0] == 0
