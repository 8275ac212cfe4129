"""``eximhook status`` reports each unhealthy state with the Nagios level and exit code
a monitoring system expects; ``--json`` says the same for scripts."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eximhook.config.load import load
from eximhook.hooks import FALLBACK_STAMP
from eximhook.model.records import block_record
from eximhook.ops import health
from eximhook.ops import status as checks
from eximhook.storage.store import Store

from ..support.config import write_config
from ..support.fixtures import Run, Serve
from ..support.hooks import hook
from ..support.marks import needs_root
from ..support.paths import EXIM_USER


def status(cli: Run, config: Path) -> tuple[int, str]:
    code, out, err = cli("status", config_path=config)
    assert err == "" and out.count("\n") == 1, "one line, as a Nagios plugin prints"
    return code, out


def test_all_well(tmp_path: Path, cli: Run) -> None:
    config = write_config(tmp_path)
    cli("export", config_path=config)
    code, out = status(cli, config)
    assert code == 0 and out.startswith("EXIMHOOK OK - store writable")
    assert "mirror at generation 0" in out and "outbox empty" in out and "serve not running" in out
    report = json.loads(cli("status", "--json", config_path=config)[1])
    assert report["level"] == "OK"
    assert [c["name"] for c in report["checks"]] == ["store", "mirror", "outbox", "spool", "counters", "serve"]


def test_mirror_behind_is_critical_and_temp_files_a_warning(tmp_path: Path, cli: Run) -> None:
    config = write_config(tmp_path)
    cli("export", config_path=config)
    with Store(str(tmp_path / "store")) as store:  # a block whose mirror rewrite died
        store.block(block_record("auth", "bob", 1.0, by="test", reason="manual"), 1.0, notify=False)
    code, out = status(cli, config)
    assert code == 2 and out.startswith("EXIMHOOK CRITICAL - ")
    assert "mirror behind the store (generation 1): blocked_authenticated_users at 0" in out
    assert cli("maintain", config_path=config)[0] == 0
    (tmp_path / "mirror" / "blocked_subjects.cdb.tmp.4242").write_bytes(b"half")
    code, out = status(cli, config)
    assert code == 1 and "1 temp file(s) left by a killed rewrite" in out
    cli("maintain", config_path=config)
    assert status(cli, config)[0] == 0 and not (tmp_path / "mirror" / "blocked_subjects.cdb.tmp.4242").exists()


def test_notification_failing_for_long_is_a_warning(tmp_path: Path, cli: Run, mailbox: Path) -> None:
    config = write_config(tmp_path, sendmail=f'"{mailbox}/sendmail.sh", "-f", "root"',
                          settings={"exim.freeze_queued": False})
    (mailbox / "FAIL").touch()
    for _ in range(6):
        hook(config, "record-invalid", "auth", "bob")
    cli("notify", config_path=config)
    cfg = load(str(config))
    [now] = [c for c in checks.status(cfg, time.time()) if c.name == "outbox"]
    assert now.level == checks.OK and now.data["items"][0]["state"] == "queued"
    [later] = [c for c in checks.status(cfg, time.time() + 700) if c.name == "outbox"]
    assert later.level == checks.WARNING and "auth bob: not sent since" in later.text
    assert "1 attempt(s); /" in later.text and "stand-in failure" in later.text


def test_daemon_down_after_a_fallback_is_a_warning(tmp_path: Path, cli: Run, serve: Serve) -> None:
    config = write_config(tmp_path)
    cli("export", config_path=config)
    daemon = serve(config)
    code, out = status(cli, config)
    assert code == 0 and "serve up (" in out
    daemon.stop()
    assert hook(config, "record-invalid", "auth", "bob", "--fallback").stdout == b"0"
    assert (tmp_path / "store" / FALLBACK_STAMP).exists()
    code, out = status(cli, config)
    assert code == 1 and "serve down" in out and "Exim fell back to the ${run} hook at" in out


@pytest.fixture
def spool_config() -> Iterator[Path]:
    """A config whose store and mirror live in a spool the Exim user owns, as
    /var/spool/exim4 is, checked as that user (pytest's tmp_path is root's)."""
    top = Path(tempfile.mkdtemp(prefix="eximhook-health-"))
    top.chmod(0o755)
    exim = pwd.getpwnam(EXIM_USER)
    (top / "spool").mkdir()
    os.chown(top / "spool", exim.pw_uid, exim.pw_gid)
    config = write_config(top, settings={"store.path": str(top / "spool" / "eximhook"),
                                         "store.mirror_dir": str(top / "spool"), "exim.user": EXIM_USER})
    config.chmod(0o644)
    yield config
    shutil.rmtree(top)


@needs_root
def test_store_only_root_can_write_is_critical(spool_config: Path, cli: Run) -> None:
    """Root's own write would pass: the probe writes as the Exim user, as the hooks do."""
    config = spool_config
    assert cli("export", config_path=config)[0] == 0
    assert status(cli, config)[0] == 0
    data = config.parent / "spool" / "eximhook" / "data.mdb"
    os.chown(data, 0, 0)
    data.chmod(0o600)
    code, out = status(cli, config)
    assert code == 2 and "the Exim user cannot do what the hooks do, so counting fails open" in out
    assert "Permission denied" in out


def test_a_broken_config_is_unknown(tmp_path: Path, cli: Run) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits.auth]\nlimit = 0\n")
    code, out, _ = cli("status", config_path=bad)
    assert code == 3 and out.startswith("EXIMHOOK UNKNOWN - ") and "limits.auth.limit" in out
    assert cli("status", "--bogus", config_path=bad)[0] == 3


@needs_root
def test_mirror_exim_cannot_read_is_critical(spool_config: Path, cli: Run) -> None:
    """Exim answers 451 to every RCPT whose lookup cannot open its file."""
    config = spool_config
    assert cli("export", config_path=config)[0] == 0
    cdb = config.parent / "spool" / "blocked_subjects.cdb"
    os.chown(cdb, 0, 0)
    cdb.chmod(0o600)
    code, out = status(cli, config)
    assert code == 2 and f"Exim cannot read {cdb}: Permission denied" in out


@needs_root
def test_store_in_a_root_directory_is_critical(tmp_path: Path, cli: Run) -> None:
    """[store] owner unset and the store's directory root's: root's own probe would pass
    while every hook fails open, so the probe runs as the Exim user."""
    top = Path(tempfile.mkdtemp(prefix="eximhook-rootstore-"))
    try:
        top.chmod(0o755)
        config = write_config(top, settings={"exim.user": EXIM_USER})
        assert cli("export", config_path=config)[0] == 0
        code, out = status(cli, config)
        assert code == 2 and "counting fails open" in out
        assert cli("maintain", config_path=config)[0] == 69
    finally:
        shutil.rmtree(top)


def test_status_makes_nothing(tmp_path: Path, cli: Run) -> None:
    config = write_config(tmp_path)
    code, out = status(cli, config)
    assert code == 2 and "there is no store" in out and "eximhook export makes it" in out
    assert not (tmp_path / "store").exists()


@needs_root
def test_status_as_another_user_cannot_tell(tmp_path: Path) -> None:
    import subprocess
    import sys

    from ..support.paths import EXIMHOOK

    top = Path(tempfile.mkdtemp(prefix="eximhook-nobody-"))
    try:
        top.chmod(0o755)
        config = write_config(top, settings={"exim.user": EXIM_USER})
        config.chmod(0o644)
        proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                               "-IS", EXIMHOOK, "--config", str(config), "status"], capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 3 and proc.stdout.startswith("EXIMHOOK UNKNOWN - ")
        assert f"run eximhook status as root or as {EXIM_USER}" in proc.stdout
    finally:
        shutil.rmtree(top)


@needs_root
def test_the_health_state_root_writes_stays_the_exim_users(spool_config: Path, cli: Run) -> None:
    """maintain runs as the Exim user (the timer) and as root (cron, by hand). A state
    root left as root:root 0640 could not be read by the next run as the Exim user,
    which started the episode over and alerted the abuse desk a second time."""
    import subprocess
    import sys

    run = spool_config.parent / "run"
    run.mkdir()
    exim = pwd.getpwnam(EXIM_USER)
    os.chown(run, exim.pw_uid, exim.pw_gid)
    top = spool_config.parent
    spool_config.write_text(spool_config.read_text().replace(f'"{top}/eximhook.sock"', f'"{run}/eximhook.sock"'))
    assert cli("export", config_path=spool_config)[0] == 0
    data = spool_config.parent / "spool" / "eximhook" / "data.mdb"
    os.chown(data, 0, 0)  # the store refuses the Exim user's writes: maintain records since when
    data.chmod(0o600)
    cli("maintain", config_path=spool_config)
    state = run / health.STATE_FILE
    assert (state.stat().st_uid, state.stat().st_gid) == (exim.pw_uid, exim.pw_gid)
    read = subprocess.run(["runuser", "-u", EXIM_USER, "--", sys.executable, "-I", "-c",
                           "import sys; from eximhook.ops import health; from eximhook.config.load import load; "
                           "print(health.read_state(load(sys.argv[1])) is not None)", str(spool_config)],
                          capture_output=True, text=True, check=False, cwd="/")
    assert read.stdout.strip() == "True", read.stdout + read.stderr
