"""Root never follows what the Exim user planted (issue 21, section 3).

Admin commands, maintain and the install run as root in directories the Exim user owns
(the spool, /var/log/exim4, /run/eximhook). Each test here is that user's attack: a
symlink (or a hard link) it owns, in a directory it owns, at a name root opens, pointing
at a file of root's, or at a name where root must not create anything. Then the real
CLI runs as root, and must refuse with one line naming the path, or write beside the
link; the file of root's stays as it was (content, mode, mtime), and nothing is made
where the link pointed.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..support.config import write_config
from ..support.marks import needs_root
from ..support.paths import EXIM_USER, EXIMHOOK

pytestmark = needs_root

SECRET = b"root's own file: # not for the Exim user\n"


@dataclass
class Scene:
    """The Exim user's spool (``spool``), root's file (``victim``), and where root must
    create nothing (``nowhere``: a name in a directory of root's)."""

    top: Path
    spool: Path
    victim: Path
    nowhere: Path
    config: Path

    def plant(self, link: Path, target: Path) -> None:
        """A symlink at ``link``, owned by the Exim user, as that user would make it."""
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)
        exim = pwd.getpwnam(EXIM_USER)
        os.lchown(link, exim.pw_uid, exim.pw_gid)

    def own(self, *paths: Path) -> None:
        """Give ``paths`` (directories root made) to the Exim user, as the install does."""
        exim = pwd.getpwnam(EXIM_USER)
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, exim.pw_uid, exim.pw_gid)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, EXIMHOOK, "--config", str(self.config), *args],
                              capture_output=True, text=True, check=False)


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    spool = tmp_path / "spool"
    victim = tmp_path / "victim"
    victim.write_bytes(SECRET)
    victim.chmod(0o600)
    os.utime(victim, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    config = write_config(tmp_path, settings={
        "store.path": str(spool / "eximhook"), "store.mirror_dir": str(spool), "log.file": str(spool / "eximhook.log"),
        "serve.socket": str(spool / "run" / "eximhook.sock"),
        "relaytest.networks": ["192.0.2.0/24"], "relaytest.mailbox": "relaytest@example.net",
        "relaytest.blocked_nets": str(spool / "blocked.nets"),
        # the queue cannot be frozen: `block` logs that, naming the key (the proof)
        "exim.binary": "/bin/false", "exim.exipick": "/bin/false"})
    s = Scene(tmp_path, spool, victim, tmp_path / "nologin", config)
    s.own(spool, spool / "eximhook", spool / "run")
    return s


def untouched(scene: Scene) -> None:
    st = scene.victim.stat()
    assert scene.victim.read_bytes() == SECRET
    assert (st.st_uid, st.st_mode & 0o7777, st.st_mtime_ns) == (0, 0o600, 1_000_000_000_000_000_000)
    assert not scene.nowhere.exists(), f"root made {scene.nowhere} through a link"


def refused(proc: subprocess.CompletedProcess[str], path: Path) -> None:
    """Exit 74 (a file eximhook will not write) and one line that names the path."""
    assert proc.returncode == 74, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "symlink" in lines[0], proc.stderr


def made_store(scene: Scene) -> None:
    """The store and counters as root made them before the Exim user struck."""
    proc = scene.run("block", "auth", "before", "--no-notify")
    assert proc.returncode == 0, proc.stderr


def log_a_key(scene: Scene, key: str) -> None:
    """Root blocks ``key``, and logs it (the queue cannot be frozen): the command works."""
    proc = scene.run("block", "auth", key)
    assert proc.returncode == 0, proc.stderr


def test_log_file_symlink_gets_no_line(scene: Scene) -> None:
    """The proof of the issue: a key that is shell code, logged by root, must not land in
    a file of root's that a shell might source. The command still works (the line goes to
    syslog instead), and the link stays a link."""
    log = scene.spool / "eximhook.log"
    log_a_key(scene, "$(touch /tmp/PWNED)")
    assert b"$(touch /tmp/pwned)" in log.read_bytes()  # where the line goes without a link
    log.unlink()
    scene.plant(log, scene.victim)
    log_a_key(scene, "$(touch /tmp/PWNED2)")
    assert log.is_symlink()
    untouched(scene)


def test_log_file_hard_link_gets_no_line(scene: Scene) -> None:
    """Where fs.protected_hardlinks is off, the Exim user can hard-link a file of root's
    into its directory: root must not append to a file with a second link either."""
    os.link(scene.victim, scene.spool / "eximhook.log")
    log_a_key(scene, "$(touch /tmp/PWNED)")
    assert scene.victim.read_bytes() == SECRET and scene.victim.stat().st_mode & 0o7777 == 0o600


def test_store_directory_symlink_is_refused(scene: Scene) -> None:
    """The store's directory itself, swapped for a link to a directory of root's: root
    would make data.mdb, lock.mdb and mirror.lock there, and hand them to the Exim user."""
    store = scene.spool / "eximhook"
    store.rmdir()
    elsewhere = scene.top / "root-dir"
    elsewhere.mkdir()
    scene.plant(store, elsewhere)
    proc = scene.run("block", "auth", "bob", "--no-notify")
    assert list(elsewhere.iterdir()) == []
    untouched(scene)
    refused(proc, store)


def test_data_mdb_symlink_makes_no_file(scene: Scene) -> None:
    """The issue's second proof: data.mdb -> a name of root's; opening the store as root
    created a 12 KiB root-owned file there (/etc/nologin would stop every login)."""
    data = scene.spool / "eximhook" / "data.mdb"
    scene.plant(data, scene.nowhere)
    proc = scene.run("block", "auth", "bob", "--no-notify")
    untouched(scene)
    refused(proc, data)


def test_data_mdb_symlink_to_an_empty_file_of_roots(scene: Scene) -> None:
    """LMDB takes an empty file for a new environment and writes one into it."""
    data = scene.spool / "eximhook" / "data.mdb"
    scene.victim.write_bytes(b"")
    scene.plant(data, scene.victim)
    proc = scene.run("export")
    assert scene.victim.read_bytes() == b""
    refused(proc, data)


def test_lock_mdb_symlink_and_status(scene: Scene) -> None:
    """``status`` (a monitoring check, as root) opens the store read-only, and LMDB
    creates a missing lock.mdb even then: through the link, before this issue."""
    made_store(scene)
    lock = scene.spool / "eximhook" / "lock.mdb"
    lock.unlink()
    scene.plant(lock, scene.nowhere)
    proc = scene.run("status")
    untouched(scene)
    assert proc.returncode == 2, proc.stdout  # CRITICAL: the store is unusable like this
    assert str(lock) in proc.stdout and "symlink" in proc.stdout


def test_counters_data_mdb_symlink_is_refused(scene: Scene) -> None:
    """The counters' directory is handed to the Exim user too; with their boot stamp
    left as it is (that user can read it), nothing wipes the planted link first."""
    made_store(scene)
    data = scene.spool / "eximhook" / "counters" / "data.mdb"
    data.unlink()
    scene.plant(data, scene.nowhere)
    proc = scene.run("block", "auth", "carol", "--no-notify")
    untouched(scene)
    refused(proc, data)


def test_counters_directory_symlink_is_refused(scene: Scene) -> None:
    made_store(scene)
    counters = scene.spool / "eximhook" / "counters"
    for f in counters.iterdir():
        f.unlink()
    counters.rmdir()
    elsewhere = scene.top / "root-dir"
    elsewhere.mkdir()
    scene.plant(counters, elsewhere)
    proc = scene.run("block", "auth", "carol", "--no-notify")
    assert list(elsewhere.iterdir()) == []
    refused(proc, counters)


def test_blocked_nets_symlink_is_not_copied(scene: Scene) -> None:
    """blocked.nets keeps the admin's lines, so root reads it before rewriting it, 0644:
    through a link that copied a file of root's into one every local user can read."""
    nets = scene.spool / "blocked.nets"
    scene.plant(nets, scene.victim)
    proc = scene.run("relaytest", "list")
    assert not any(SECRET in p.read_bytes() for p in scene.spool.rglob("*") if p.is_file() and not p.is_symlink())
    untouched(scene)
    refused(proc, nets)
    assert nets.is_symlink()


@pytest.mark.parametrize("name", ["blocked_authenticated_users", "blocked_subjects.cdb",
                                  "eximhook/mirror.generation", "eximhook/mirror.lock"])
def test_mirror_files_are_replaced_or_refused(scene: Scene, name: str) -> None:
    """Mirror files and their stamp are renamed over (a link is replaced, not followed),
    and the lock is refused. These held before issue 21 (temp file + rename; filelock
    3.20.1's O_NOFOLLOW): kept so that they stay so."""
    made_store(scene)
    path = scene.spool / name
    path.unlink()
    scene.plant(path, scene.victim)
    proc = scene.run("block", "auth", "dave", "--no-notify")
    if name.endswith(".lock"):  # the block is made; the mirror cannot be, and that is said
        assert proc.returncode == 74 and str(path) in proc.stderr and "symlink" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert not path.is_symlink()
    untouched(scene)


def test_health_state_symlink(scene: Scene) -> None:
    """``maintain`` removes or renames over health.json beside the socket (in the Exim
    user's /run/eximhook): a link there is removed, never written through."""
    made_store(scene)
    state = scene.spool / "run" / "health.json"
    scene.plant(state, scene.victim)
    proc = scene.run("maintain")
    assert proc.returncode == 0, proc.stderr
    assert not state.exists() and not state.is_symlink()
    untouched(scene)
