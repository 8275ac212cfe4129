"""Admin commands run as root; hooks as the Exim user, umask 077, no environment,
cwd = spool. Whatever root creates must stay usable by the hooks."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import needs_root, write_config
from .e2e.harness import EXIM_USER, EXIMHOOK

pytestmark = needs_root


@pytest.fixture
def spool() -> Iterator[Path]:
    # pytest's tmp_path is 0700 under root's tree: the Exim user could not enter it
    top = Path(tempfile.mkdtemp(prefix="eximhook-perm-"))
    top.chmod(0o755)
    spool = top / "spool"
    spool.mkdir()
    exim = pwd.getpwnam(EXIM_USER)
    os.chown(spool, exim.pw_uid, exim.pw_gid)
    yield top
    shutil.rmtree(top)


def as_exim(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["setpriv", f"--reuid={EXIM_USER}", f"--regid={EXIM_USER}", "--init-groups",
         sys.executable, "-IS", EXIMHOOK, "--config", str(config), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={}, cwd="/", umask=0o077, check=False)


def test_hooks_use_what_root_created(spool: Path) -> None:
    config = write_config(spool, limit=1).rename(spool / "eximhook.toml")
    config.write_text(config.read_text().replace(str(spool / "store"), str(spool / "spool/eximhook"))
                      .replace(str(spool / "mirror"), str(spool / "spool"))
                      .replace(str(spool / "eximhook.log"), str(spool / "spool/eximhook.log")))
    config.chmod(0o644)
    root = subprocess.run([sys.executable, EXIMHOOK, "--config", str(config), "block", "auth", "root-made",
                           "--no-notify"], capture_output=True, check=False)
    assert root.returncode == 0, root.stderr
    assert as_exim(config, "check-blocked", "auth", "root-made").stdout == b"1"
    assert as_exim(config, "record-invalid", "auth", "bob").stdout == b"0"
    proc = as_exim(config, "record-invalid", "auth", "bob")  # trips: rewrites the mirrors as the Exim user
    assert (proc.returncode, proc.stdout) == (0, b"1")
    assert b'"bob"' in (spool / "spool/blocked_authenticated_users").read_bytes()
    exim_uid = pwd.getpwnam(EXIM_USER).pw_uid
    made = [spool / "spool/eximhook" / f for f in ("data.mdb", "lock.mdb", "mirror.lock")]
    made += [spool / "spool" / f for f in ("blocked_authenticated_users", "blocked_relay_users",
                                           "blocked_subjects.cdb")]
    assert {p.name: p.stat().st_uid for p in made} == {p.name: exim_uid for p in made}
    root = subprocess.run([sys.executable, EXIMHOOK, "--config", str(config), "unblock", "auth", "bob"],
                          capture_output=True, check=False)
    assert root.returncode == 0, root.stderr
    assert as_exim(config, "check-blocked", "auth", "bob").stdout == b"0"
    assert (spool / "spool/blocked_authenticated_users").stat().st_uid == exim_uid


def test_log_file_root_creates_stays_writable_for_hooks(spool: Path) -> None:
    from eximhook._log import Logger

    log = spool / "spool" / "eximhook.log"
    Logger(str(log)).log("notice", "written by root")
    assert log.stat().st_uid == pwd.getpwnam(EXIM_USER).pw_uid
    proc = subprocess.run(["setpriv", f"--reuid={EXIM_USER}", f"--regid={EXIM_USER}", "--init-groups",
                           sys.executable, "-I", "-c",
                           f"import sys; sys.path[:0] = {sys.path!r}\n"
                           f"from eximhook._log import Logger; Logger({str(log)!r}).log('notice', 'by the hook')"],
                          capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().count("\n") == 2 and "by the hook" in log.read_text()


def test_a_hook_makes_the_log_file_readable_by_its_group(spool: Path) -> None:
    """A hook or the daemon (umask 077) that creates [log] file makes it 0640, so the
    group of Debian's /var/log/exim4 (adm) can read it, as logrotate's entry recreates it."""
    config = write_config(spool).rename(spool / "eximhook.toml")
    log = spool / "spool" / "hooks.log"
    config.write_text(config.read_text().replace(str(spool / "eximhook.log"), str(log)))
    config.chmod(0o644)
    assert as_exim(config, "record-invalid", "auth", "--bad-key-is-fine", "--nonsense").stdout == b"0"
    assert log.exists() and oct(log.stat().st_mode & 0o777) == oct(0o640)
    assert log.stat().st_uid == pwd.getpwnam(EXIM_USER).pw_uid
