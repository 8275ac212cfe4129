"""What contrib/install.sh leaves on the machine (CI runs it before the tests): eximhook
on root's PATH, the snippets of this checkout where README includes them from, a
logrotate entry, and no policy-rc.d of its own (one left behind would keep every later
apt-get upgrade from restarting services, Exim included)."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import pytest

from ..support.marks import needs_root
from ..support.paths import ROOT

pytestmark = needs_root


def test_no_policy_rc_d_of_ours_is_left_behind() -> None:
    path = Path("/usr/sbin/policy-rc.d")
    assert "eximhook install.sh" in (ROOT / "contrib" / "install.sh").read_text(), "the mark this test looks for"
    assert not path.exists() or "eximhook install.sh" not in path.read_text()


def test_eximhook_is_on_roots_path() -> None:
    link = Path("/usr/local/sbin/eximhook")
    assert link.is_symlink() and os.readlink(link) == "/opt/eximhook/bin/eximhook"


def test_the_snippets_are_this_checkouts() -> None:
    """The same files, but for the venv's EXIMHOOK_CMD in macros.conf (the checkout's
    default is the Debian package's interpreter and script)."""
    installed = Path("/usr/share/eximhook/exim-snippets")
    ours = sorted(p.name for p in (ROOT / "exim-snippets").iterdir())
    assert sorted(p.name for p in installed.iterdir()) == ours, "no stale file, no nested copy"
    others = [name for name in ours if name != "macros.conf"]
    _, mismatch, errors = filecmp.cmpfiles(ROOT / "exim-snippets", installed, others, shallow=False)
    assert (mismatch, errors) == ([], []), "run contrib/install.sh again: the installed snippets are older"
    package = "/usr/bin/python3 -IS /usr/sbin/eximhook "
    venv = "/opt/eximhook/bin/python3 -IS /opt/eximhook/bin/eximhook "
    macros = (ROOT / "exim-snippets" / "macros.conf").read_text()
    assert f"\nEXIMHOOK_CMD = {package}" in macros
    assert (installed / "macros.conf").read_text() == macros.replace(f"\nEXIMHOOK_CMD = {package}",
                                                                     f"\nEXIMHOOK_CMD = {venv}")


def test_logrotate_entry() -> None:
    entry = Path("/etc/logrotate.d/eximhook")
    assert entry.read_text() == (ROOT / "debian" / "eximhook.logrotate").read_text()


OFFLINE = r"""
set -eu
# what install.sh writes to, private to this namespace (which has no network at all)
for d in /etc /var/spool/exim4 /usr/local/sbin /usr/share/eximhook /opt/eximhook; do
  copy=$(mktemp -d -p /dev/shm); [ "$d" = /opt/eximhook ] || cp -a "$d/." "$copy/"
  mount -t tmpfs -o mode=0755 eximhook-offline "$d"
  cp -a "$copy/." "$d/"; rm -rf "$copy"
done
rm -f /etc/eximhook/eximhook.toml  # a first install: the config is written, with its mode
bash "$1/contrib/install.sh" --offline "$2"
echo "config mode $(stat -c '%a %U %G' /etc/eximhook/eximhook.toml)"
/opt/eximhook/bin/python3 -I -c \
  'import eximhook, lmdb, uvloop, prometheus_client; print("imports ok")'
/usr/local/sbin/eximhook check-config | head -1
"""


@pytest.mark.timeout(1300)  # its two installs have 600 s each
def test_install_from_a_wheelhouse_without_network(tmp_path: Path) -> None:
    """--download fills a wheelhouse (here, with the package index); --offline installs
    from it in a network namespace with no network at all: no pip self-upgrade, no
    index, nothing fetched; the config it writes is 0640 root:Debian-exim."""
    import subprocess

    wheels = tmp_path / "wheels"
    got = subprocess.run(["bash", str(ROOT / "contrib" / "install.sh"), "--download", str(wheels)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert got.returncode == 0, got.stderr[-2000:]
    assert any(p.name.startswith("eximhook-") for p in wheels.iterdir())
    out = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "bash", "-c", OFFLINE,
                          "bash", str(ROOT), str(wheels)], capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "imports ok" in out.stdout and "config /etc/eximhook/eximhook.toml: ok" in out.stdout
    # it may hold a Redis password: the Exim user reads it, other users do not
    assert "config mode 640 root Debian-exim" in out.stdout
